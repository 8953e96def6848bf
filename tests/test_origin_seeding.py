"""The origin's seeding gate, sans I/O, and the Range parsing that feeds it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tufmesh.origin._seeding import MAX_RETRY, MAX_SEEDED, SeedGate, slots_within
from tufmesh.origin._server import _single_range


def test_each_chunk_once_per_window_and_a_few_at_a_time() -> None:
    gate = SeedGate(slots=2, window=10.0)
    assert gate.admit("a", 0.0) == "serve"
    assert gate.admit("a", 1.0) == "seeded"  # someone has it: ask the peers
    assert gate.admit("a", 1.0, patient=True) == "serve"  # the peers could not help
    assert gate.admit("b", 1.0) == "busy"  # two uploads running
    gate.done("a", 1.5)
    assert gate.admit("b", 2.0) == "serve" and gate.active == 2
    gate.done("a", 2.5)
    gate.done("b", 3.0)
    assert gate.admit("a", 11.5) == "serve"  # the window passed: served again
    assert gate.active == 1


def test_what_the_gate_remembers_is_bounded_by_its_window_and_a_count() -> None:
    """Each chunk served was remembered (a range of its requester's choosing,
    a few hundred bytes each) up to a million entries: a mirror's gate, which
    seeds nothing, kept 260 MB for 1-byte ranges asked one after another."""
    mirror = SeedGate(slots=1, window=0.0)
    for i in range(1000):
        assert mirror.admit(("cid", i), i * 0.001) == "serve"
        mirror.done(("cid", i), i * 0.001)
    assert len(mirror._served) == 0
    origin = SeedGate(slots=1, window=10.0)
    for i in range(MAX_SEEDED + 100):  # all within the window
        origin.admit(("cid", i), 1.0)
        origin.done(("cid", i), 1.0)
    assert len(origin._served) == MAX_SEEDED  # the oldest forgotten
    assert origin.admit(("cid", 0), 1.0) == "serve"
    origin.done(("cid", 0), 1.0)
    assert origin.admit(("cid", MAX_SEEDED + 99), 1.0) == "seeded"
    origin.admit("late", 20.0)  # the window passed for all the others
    assert list(origin._served) == ["late"]


def test_an_upload_that_did_not_complete_does_not_count_as_seeded() -> None:
    gate = SeedGate(slots=1)
    assert gate.admit("a", 0.0) == "serve"
    gate.done("a", 0.05, completed=False)
    assert gate.admit("a", 0.1) == "serve"


def test_busy_says_when_the_oldest_upload_should_end() -> None:
    gate = SeedGate(slots=2, window=0.0, retry=0.25)
    assert gate.admit("a", 0.0) == "serve" and gate.admit("b", 0.0) == "serve"
    assert gate.admit("c", 0.1) == "busy"
    assert gate.retry_after(0.1) == 0.25  # nothing measured yet: the default
    gate.done("a", 4.0)  # uploads take 4 s here
    assert gate.admit("c", 4.0) == "serve"  # runs from 4.0 to about 8.0
    assert gate.admit("d", 5.0) == "busy"
    # "b" (started at 0.0) is overdue: the shortest wait; once it ends, "c" sets it.
    assert gate.retry_after(5.0) == 0.25
    gate.done("b", 5.5)
    assert gate.admit("d", 5.5) == "serve"
    took = 0.75 * 4.0 + 0.25 * 5.5  # a moving average of the uploads' durations
    assert gate.retry_after(6.0) == 4.0 + took - 6.0  # "c" started at 4.0
    gate.done("c", 8.0, completed=False)  # an abandoned upload is not a measurement
    assert gate.retry_after(8.0) == 5.5 + took - 8.0  # "d" is the oldest now


def test_busy_never_asks_for_a_wait_longer_than_max_retry() -> None:
    gate = SeedGate(slots=1, window=0.0, retry=0.25)
    assert gate.admit("a", 0.0) == "serve"
    gate.done("a", 100.0)
    assert gate.admit("b", 100.0) == "serve" and gate.admit("c", 100.0) == "busy"
    assert gate.retry_after(100.0) == MAX_RETRY


def test_a_byte_budget_lets_one_big_upload_run_alone() -> None:
    gate = SeedGate(slots=4, window=0.0, max_bytes=8)
    assert gate.admit("big", 0.0, size=16) == "serve"  # one upload may always run
    assert gate.admit("small", 0.0, size=1) == "busy"  # over the budget
    gate.done("big", 1.0)
    assert [gate.admit(c, 1.0, size=2) for c in "abcde"] == ["serve"] * 4 + ["busy"]  # slots
    gate.done("a", 2.0)
    gate.done("b", 2.0)
    assert gate.admit("f", 2.0, size=5) == "busy"  # 4 + 5 bytes: over
    assert gate.admit("g", 2.0, size=4) == "serve"  # 4 + 4: within


def test_one_machine_holds_half_the_slots_at_most() -> None:
    """A machine that read its answers slowly could hold every upload slot:
    every other mirror was told busy. It now holds half of them (at least
    one); requests not counted (None: this machine's own) only fill slots."""
    gate = SeedGate(slots=4, window=0.0)
    assert [gate.admit(c, 0.0, requester="hog") for c in "abc"] == ["serve", "serve", "busy"]
    assert gate.admit("c", 0.0, requester="mirror") == "serve"
    assert gate.admit("d", 0.0, requester=None) == "serve"  # four running: the slots are full
    assert gate.admit("e", 0.0, requester="another") == "busy"
    gate.done("a", 1.0, requester="hog")
    assert gate.admit("e", 1.0, requester="hog") == "serve"  # its own count went down
    for slots, per_machine in ((1, 1), (2, 1), (3, 1), (8, 4)):
        small = SeedGate(slots=slots, window=0.0)
        verdicts = [small.admit(i, 0.0, requester="hog") for i in range(slots)]
        assert verdicts.count("serve") == per_machine, slots
    assert "hog" not in gate._by_requester or gate._by_requester["hog"] == 2
    for chunk in "bce":
        gate.done(chunk, 2.0, requester={"c": "mirror"}.get(chunk, "hog"))
    gate.done("d", 2.0)
    assert gate.active == 0 and gate._by_requester == {}  # nothing kept for machines gone


def test_one_machine_cannot_take_every_upload_slot_over_http(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over real sockets: a machine (127.0.0.2 here, each loopback address a
    machine of its own) that asks for chunks and never reads holds two of
    four slots; a third request is told busy, another machine (127.0.0.3)
    is served, and once the stalled answers end their slots are the
    machine's again."""
    import httpx
    import trio
    from starlette.applications import Starlette

    import tufmesh._shares as shares
    from tufmesh.cas import BlobStore
    from tufmesh.origin._server import ByteCounter, start_http, tree_routes

    monkeypatch.setattr(shares, "is_loopback", lambda host: False)
    store = BlobStore(tmp_path / "cas")
    cid = store.put(os.urandom(32 << 20))
    (tmp_path / "metadata").mkdir()
    gate = SeedGate(window=0.0, min_rate=1024, grace=60.0)  # a mirror's; none falls behind
    app = ByteCounter(Starlette(routes=tree_routes(tmp_path, store, gate=gate)))

    async def ask(host: str, port: int, source: str, start: int) -> trio.SocketStream:
        stream = await trio.open_tcp_stream(host, port, local_address=source)
        await stream.send_all(
            f"GET /blobs/{cid} HTTP/1.1\r\nHost: o\r\nx-tufmesh-mirror: 1\r\n"
            f"Range: bytes={start}-{(32 << 20) - 1}\r\n\r\n".encode()
        )
        return stream

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            url = await start_http(nursery, app, "127.0.0.1", 0, None, None)
            host, port = url.removeprefix("http://").rsplit(":", 1)
            stalled = [await ask(host, int(port), "127.0.0.2", i) for i in range(2)]
            try:
                with trio.fail_after(10):
                    while gate.active < 2:
                        await trio.sleep(0.05)
                third = await ask(host, int(port), "127.0.0.2", 2)
                stalled.append(third)
                with trio.fail_after(10):
                    head = await third.receive_some(1024)
                assert head.startswith(b"HTTP/1.1 503") and b"busy" in head, head
                assert gate.active == 2
                transport = httpx.AsyncHTTPTransport(local_address="127.0.0.3")
                async with httpx.AsyncClient(base_url=url, transport=transport) as http:
                    chunk = {"range": "bytes=0-1023", "x-tufmesh-mirror": "1"}
                    served = await http.get(f"/blobs/{cid}", headers=chunk)
                    assert served.status_code == 206 and len(served.content) == 1024
            finally:
                for stream in stalled:  # else the server's shutdown waits for them
                    await stream.aclose()
            with trio.fail_after(10):
                while gate.active:  # the server sees them gone
                    await trio.sleep(0.05)
            transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
            async with httpx.AsyncClient(base_url=url, transport=transport) as http:
                chunk = {"range": "bytes=0-1023", "x-tufmesh-mirror": "1"}
                served = await http.get(f"/blobs/{cid}", headers=chunk)
                assert served.status_code == 206 and len(served.content) == 1024
            with trio.fail_after(10):
                while gate.active:  # its end reaches the gate after its last byte
                    await trio.sleep(0.05)
            assert gate._by_requester == {}
            nursery.cancel_scope.cancel()

    trio.run(main)


@given(
    st.text(max_size=40) | st.from_regex(r"bytes=[ \t]*[0-9]{1,3}-[0-9]{1,3}[ \t]*", fullmatch=True)
)
def test_a_range_header_is_one_closed_ascii_range_or_none(header: str) -> None:
    """What decides whether a mirror's request is gated never raises (it was a 500)."""
    span = _single_range(header)
    if span is not None:
        assert header.isascii() and 0 <= span[0] <= span[1]


def test_range_headers() -> None:
    assert _single_range("bytes=10-19") == (10, 19)
    assert _single_range(" bytes=10-19") is None
    for header in (
        "bytes=\u00b2-5",
        "bytes=0-\u00b2",
        "bytes=\u0661-\u0662",
        "bytes=5-2",
        "bytes=-5",
        "bytes=0-1,3-4",
    ):
        assert _single_range(header) is None, header


def test_requesters_that_do_not_read_lose_their_upload_slots(tmp_path: Path) -> None:
    """Four connections asking for chunks as a mirror and never reading held the
    origin's four slots for ever: every real mirror was told busy. Past its
    deadline (the requesters' own slow-retrieval floor) a slot goes to others."""
    import httpx
    import trio
    from starlette.applications import Starlette

    from tufmesh.cas import BlobStore
    from tufmesh.origin._server import ByteCounter, start_http, tree_routes

    store = BlobStore(tmp_path / "cas")
    cid = store.put(os.urandom(32 << 20))
    (tmp_path / "metadata").mkdir()
    gate = SeedGate(min_rate=10 << 20, grace=0.5)  # 32 MiB: cut after 3.7 s
    app = ByteCounter(Starlette(routes=tree_routes(tmp_path, store, gate=gate)))
    mirror = {"x-tufmesh-mirror": "1"}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            url = await start_http(nursery, app, "127.0.0.1", 0, None, None)
            host, port = url.removeprefix("http://").rsplit(":", 1)
            stalled = []
            try:
                # The first asks past the end: the gate was charged what was
                # asked for (a deadline of 10^13 s), not what is sent.
                for i, end in enumerate(["99999999999999999999", (32 << 20) - 1, 1 << 20, 1 << 21]):
                    stream = await trio.open_tcp_stream(host, int(port))
                    stalled.append(stream)  # never read
                    await stream.send_all(
                        f"GET /blobs/{cid} HTTP/1.1\r\nHost: o\r\nx-tufmesh-mirror: 1\r\n"
                        f"Range: bytes={i}-{end}\r\n\r\n".encode()
                    )
                with trio.fail_after(10):
                    while gate.active < 4:
                        await trio.sleep(0.05)
                async with httpx.AsyncClient(base_url=url) as http:
                    chunk = {"range": "bytes=0-1023", **mirror}
                    busy = await http.get(f"/blobs/{cid}", headers=chunk)
                    assert busy.status_code == 503
                    await trio.sleep(gate.floor(0).due(32 << 20))
                    served = await http.get(f"/blobs/{cid}", headers=chunk)
                    assert served.status_code == 206 and len(served.content) == 1024
            finally:
                for stream in stalled:  # else the server's shutdown waits for them
                    await stream.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)


def _gated_end(path: Path, gate: SeedGate, send: Any) -> tuple[float, bool]:
    """When (virtual time) and how the gate hears of the end of an answer of
    ``path`` (its whole range) to a requester whose reading ``send`` plays."""
    import trio
    import trio.testing

    from tufmesh.origin._server import _GatedResponse

    ended: list[tuple[float, bool]] = []

    async def receive() -> dict:  # type: ignore[type-arg]
        await trio.sleep_forever()
        raise AssertionError

    async def main() -> None:
        told = trio.Event()

        def on_end(completed: bool) -> None:
            ended.append((trio.current_time(), completed))
            told.set()

        response = _GatedResponse(path, on_end=on_end, floor=gate.floor)
        scope = {"type": "http", "method": "GET", "headers": [(b"range", b"bytes=0-")]}
        with trio.move_on_after(600):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(response, scope, receive, send)
                await told.wait()
                nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0.05))
    (end,) = ended
    return end


def test_a_requester_that_stops_reading_loses_its_slot_by_what_it_was_sent(
    tmp_path: Path,
) -> None:
    """The deadline follows the pieces begun, not the range asked for: a
    requester that stops reading a whole-blob range after its first piece
    loses the slot when two pieces are due, not when the whole blob would be
    (virtual time; the server's side of one answer)."""
    import trio

    from tufmesh.origin._server import _BigFileResponse

    piece = _BigFileResponse.chunk_size
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(3 * piece))
    gate = SeedGate(min_rate=1 << 20, grace=0.5)
    bodies: list[float] = []

    async def send(message: dict) -> None:  # type: ignore[type-arg]
        if message["type"] == "http.response.body":
            bodies.append(trio.current_time())
            if len(bodies) == 2:
                await trio.sleep_forever()  # the requester stops reading

    at, completed = _gated_end(path, gate, send)
    assert len(bodies) == 2 and not completed
    assert at == pytest.approx(gate.floor(0).due(2 * piece), abs=0.2)  # not 3 pieces' time


def _cut_at(read: Callable[[float], float], buffered: int, size: int = 16 << 20) -> float | None:
    """When an upload of ``size`` bytes, in 64 KiB pieces, is cut by its
    UploadFloor (None: never), its requester having read ``read(t)`` bytes
    by ``t`` and the buffers between taking ``buffered`` unread."""
    floor, piece, now, sent = SeedGate().floor(0.0), 64 << 10, 0.0, 0
    while sent < size:
        due = floor.due(sent, piece, now)
        while read(now) < sent + piece - buffered:  # the write waits for room
            now += 0.01
            if now > due:
                return due
        sent += piece
    return None


def test_an_upload_floor_cuts_a_trickle_and_no_requester_that_keeps_its_floor() -> None:
    """The sans-IO rule both HTTP and libp2p uploads keep (UploadFloor)."""
    floor = SeedGate().floor(100.0)
    rate, grace, piece = floor.min_rate, floor.grace, 64 << 10
    assert floor.due(0) == 100.0 + grace  # nothing sent: the grace
    assert floor.due(1 << 20) == 100.0 + grace + (1 << 20) / rate  # from the start
    # A piece on its way is due by the whole's rule, or 8 times its share
    # of the floor after it began, whichever comes first.
    assert floor.due(1 << 20, piece, 101.0) == 101.0 + grace + 8 * piece / rate
    assert floor.due(0, piece, 100.0) == 100.0 + grace + piece / rate
    floor.paused(10.0)  # our own upload rate held it back: not the requester's doing
    assert floor.due(1 << 20) == 110.0 + grace + (1 << 20) / rate
    # A trickle of 1 KiB/s behind a 2 MiB window: cut after 11 s (before,
    # it held the upload to the answer's end, 30 s over libp2p).
    cut = _cut_at(lambda t: 1024 * t, 2 << 20)
    assert cut is not None and cut < 12.0, cut
    # Requesters that keep their own floor (what they read since their start,
    # judged after the grace), and stall no piece past py-libp2p's own 5 s,
    # are never cut, whatever the buffers hold: one at the floor, one at
    # twice it, one fast that then pauses 4 s, one fast that then falls to
    # the floor. (A first rule took what went out before the first wait for
    # unread, and cut the last two.)
    for read in (
        lambda t: t * rate,
        lambda t: 2 * t * rate,
        lambda t: min(t, 0.25) * (2 << 20) + max(0.0, t - 4.25) * (2 << 20),
        lambda t: min(t, 0.5) * (2 << 20) + max(0.0, t - 0.5) * rate,
    ):
        for buffered in (0, 256 << 10, 2 << 20, 4 << 20):
            assert _cut_at(read, buffered) is None, buffered


def test_a_head_request_seeds_nothing(tmp_path: Path) -> None:
    """A HEAD as a mirror went through the gate and counted as a completed
    upload: a liar could mark every chunk seeded without taking a byte, and
    honest mirrors were told to ask the peers for chunks nobody held."""
    import httpx
    import trio
    from starlette.applications import Starlette

    from tufmesh.cas import BlobStore
    from tufmesh.origin._server import tree_routes

    store = BlobStore(tmp_path / "cas")
    cid = store.put(os.urandom(1 << 20))
    gate = SeedGate()
    app = Starlette(routes=tree_routes(tmp_path, store, gate=gate))
    chunk = {"range": "bytes=0-1023", "x-tufmesh-mirror": "1"}

    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://o") as http:
            head = await http.head(f"/blobs/{cid}", headers=chunk)
            assert head.status_code == 206 and head.content == b""
            first = await http.get(f"/blobs/{cid}", headers=chunk)
            assert first.status_code == 206 and len(first.content) == 1024
            again = await http.get(f"/blobs/{cid}", headers=chunk)  # the gate works
            assert again.status_code == 503 and again.headers["x-tufmesh-refused"] == "seeded"

    trio.run(main)


def test_an_uplink_capped_low_runs_fewer_uploads_each_above_the_floor() -> None:
    """Four uploads sharing 200 KiB/s went at 50 KiB/s each, under every
    requester's 64 KiB/s slow-retrieval floor: each gets twice the floor."""
    assert slots_within(4, None) == 4
    assert slots_within(4, 200 << 10) == 1
    assert slots_within(4, 256 << 10) == 2
    assert slots_within(4, 1) == 1  # one always runs
    assert slots_within(4, 100 << 20) == 4


def test_publications_are_paced_per_project_after_a_burst() -> None:
    """A commit per small upload rewrote a bin of up to 4 MB: a project's
    publications go at once up to a burst, then one an interval."""
    from tufmesh._shares import Pace

    pace = Pace(interval=1.0, burst=3)
    assert [pace.delay("a", 0.0, at_most=10) for _ in range(5)] == [0.0, 0.0, 0.0, 1.0, 2.0]
    assert pace.delay("b", 0.0, at_most=10) == 0.0  # another project's own pace
    assert pace.delay("a", 0.0, at_most=2.5) is None  # 3 s away: refused, nothing taken
    assert pace.delay("a", 0.5, at_most=10) == 2.5
    assert pace.delay("a", 100.0, at_most=10) == 0.0  # the bucket filled up again meanwhile
