"""The HTTP server's connection limits, on a real socket: what a client that
holds connections open, or sends an endless request head, costs the server."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from starlette.applications import Starlette

from tufmesh._shares import Shares
from tufmesh.cas import BlobStore
from tufmesh.origin._server import ByteCounter, start_http, tree_routes

Connect = Callable[..., Awaitable[trio.SocketStream]]


def _serve(
    tmp_path: Path,
    client: object,
    *,
    mib: int = 1,
    send_timeout: float = 60.0,
    idle_timeout: float = 1.0,
    downloads: Shares | None = None,
) -> None:
    """Run ``await client(connect, cid)`` against a tree server (a 1 s idle
    timeout) that holds ``metadata/timestamp.json`` and blob ``cid`` (``mib``
    MiB). ``connect(small=True)`` opens a connection with a small receive
    buffer (a client that reads nothing then holds the server's send);
    ``connect(source=ADDRESS)`` one from that loopback address."""
    (tmp_path / "metadata").mkdir()
    (tmp_path / "metadata" / "timestamp.json").write_bytes(b"{}")
    store = BlobStore(tmp_path / "cas")
    cid = store.put(bytes(range(256)) * 4096 * mib)
    app = ByteCounter(Starlette(routes=tree_routes(tmp_path, store)))
    if downloads is not None:
        app.downloads = downloads

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            url = await start_http(
                nursery, app, "127.0.0.1", 0, None, None, idle_timeout=idle_timeout,
                send_timeout=send_timeout,
            )  # fmt: skip
            host, port = url.removeprefix("http://").rsplit(":", 1)
            streams: list[trio.SocketStream] = []

            async def connect(*, small: bool = False, source: str = "") -> trio.SocketStream:
                sock = trio.socket.socket()
                if small:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                if source:
                    await sock.bind((source, 0))
                await sock.connect((host, int(port)))
                streams.append(trio.SocketStream(sock))
                return streams[-1]

            try:
                await client(connect, cid)  # type: ignore[operator]
            finally:
                for stream in streams:
                    await stream.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)


async def _closed_within(stream: trio.SocketStream, seconds: float) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    with trio.fail_after(seconds):
        while piece := await stream.receive_some():
            data += piece
    return data


def test_connections_held_open_are_capped_per_client_and_in_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every connection holds a file descriptor, which a mirror shares with its
    store, its sync and its peers: one client's few thousand unfinished
    requests (each cut only after the idle timeout, and opened again) stopped
    a mirror's syncing as well as its serving. A client now holds
    MAX_CONNECTIONS_PER_HOST at once and everyone MAX_CONNECTIONS; past
    them a connection is answered 503 and closed. (127.0.0.2 and up stand
    for other machines here; this machine's own count in the whole only.)"""
    import tufmesh.origin._server as server_module

    monkeypatch.setattr(server_module, "MAX_CONNECTIONS_PER_HOST", 4)
    monkeypatch.setattr(server_module, "MAX_CONNECTIONS", 10)
    monkeypatch.setattr(
        server_module,
        "counted_machine",
        lambda address: None if address == "127.0.0.1" else address,
    )
    head = b"GET /metadata/timestamp.json HTTP/1.1\r\nHost: m\r\n"

    async def answer(connect: Connect, source: str) -> bytes:
        stream = await connect(source=source)
        await stream.send_all(head + b"Connection: close\r\n\r\n")
        return await _closed_within(stream, 5)

    async def client(connect: Connect, cid: str) -> None:
        held = [await connect(source="127.0.0.2") for _ in range(4)]
        for stream in held:  # a request begun, never finished
            await stream.send_all(head)
        assert (await answer(connect, "127.0.0.2")).startswith(b"HTTP/1.1 503")
        for source in ("127.0.0.3", "127.0.0.1"):  # the others are served
            assert (await answer(connect, source)).startswith(b"HTTP/1.1 200")
        more = [await connect(source=f"127.0.0.{n}") for n in range(10, 16)]
        for stream in more:
            await stream.send_all(head)
        for source in ("127.0.0.3", "127.0.0.1"):  # ten held: everyone waits
            assert (await answer(connect, source)).startswith(b"HTTP/1.1 503")
        for stream in more:
            await stream.aclose()
        with trio.fail_after(5):
            while not (await answer(connect, "127.0.0.1")).startswith(b"HTTP/1.1 200"):
                await trio.sleep(0.05)

    _serve(tmp_path, client, idle_timeout=30.0)


def test_a_download_given_up_midway_stops_counting_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that resets its connection while an answer is being sent (a
    download given up: Ctrl-C, a lost race) held its place among the
    connections counted against its address until hypercorn's idle timeout
    (30 s): the answer's end started the idle timer again."""
    import struct

    import tufmesh.origin._server as server_module

    monkeypatch.setattr(server_module, "MAX_CONNECTIONS_PER_HOST", 4)
    monkeypatch.setattr(server_module, "counted_machine", lambda address: address)
    big = bytes(8 << 20)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(big)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": big})

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            url = await start_http(nursery, ByteCounter(app), "127.0.0.1", 0, None, None)
            port = int(url.rsplit(":", 1)[1])

            async def get(*, give_up: bool) -> bytes:
                sock = trio.socket.socket()
                await sock.bind(("127.0.0.2", 0))
                await sock.connect(("127.0.0.1", port))
                stream = trio.SocketStream(sock)
                close = b"" if give_up else b"Connection: close\r\n"  # (kept alive, by default)
                await stream.send_all(b"GET /big HTTP/1.1\r\nHost: m\r\n" + close + b"\r\n")
                if give_up:
                    await trio.sleep(0.2)  # the answer under way, none of it read
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    await stream.aclose()  # a reset
                    return b""
                try:
                    return await _closed_within(stream, 10)
                finally:
                    await stream.aclose()

            for _ in range(3):
                for _ in range(4):
                    await get(give_up=True)
                with trio.fail_after(5):
                    while not (await get(give_up=False)).startswith(b"HTTP/1.1 200"):
                        await trio.sleep(0.1)
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_connection_is_closed_after_the_idle_timeout_with_or_without_a_request(
    tmp_path: Path,
) -> None:
    """Without the close, one request per connection held a socket of the
    server's for ever: Starlette's file responses cancelled hypercorn's idle
    timer as they ended (see ``ByteCounter``)."""

    async def client(connect: Connect, cid: str) -> None:
        silent = await connect()
        # Others ask once (a metadata file; a blob's range, the big-file
        # path), keep the connection alive, and then say nothing.
        kept = [await connect() for _ in range(2)]
        await kept[0].send_all(b"GET /metadata/timestamp.json HTTP/1.1\r\nHost: o\r\n\r\n")
        await kept[1].send_all(
            f"GET /blobs/{cid} HTTP/1.1\r\nHost: o\r\nRange: bytes=0-9\r\n\r\n".encode()
        )
        start = trio.current_time()
        assert await _closed_within(silent, 5) == b""
        metadata, blob = [await _closed_within(stream, 5) for stream in kept]
        assert metadata.startswith(b"HTTP/1.1 200") and metadata.endswith(b"\r\n\r\n{}")
        assert blob.startswith(b"HTTP/1.1 206") and blob.endswith(b"\r\n\r\n" + bytes(range(10)))
        assert trio.current_time() - start >= 0.9
        # The server still answers new connections.
        fresh = await connect()
        await fresh.send_all(
            b"GET /metadata/timestamp.json HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n"
        )
        assert (await _closed_within(fresh, 5)).startswith(b"HTTP/1.1 200")

    _serve(tmp_path, client)


async def _get(stream: trio.SocketStream, cid: str) -> None:
    await stream.send_all(f"GET /blobs/{cid} HTTP/1.1\r\nHost: o\r\n\r\n".encode())


async def _drain(stream: trio.SocketStream, seconds: float) -> int:
    """Bytes read until the server closes or resets the connection."""
    got = 0
    with trio.fail_after(seconds):
        try:
            while piece := await stream.receive_some():
                got += len(piece)
        except trio.BrokenResourceError:  # reset: what the kernel's timeout sends
            pass
    return got


def test_a_client_that_asks_and_never_reads_is_dropped(tmp_path: Path) -> None:
    """Hypercorn has no send timeout: a client that asked for a blob and read
    nothing held the server's socket and a chunk of its memory for ever (300
    of them held 1.3 GB). The kernel now drops it (TCP_USER_TIMEOUT)."""

    async def client(connect: Connect, cid: str) -> None:
        stream = await connect(small=True)
        await _get(stream, cid)
        await trio.sleep(4)  # reading nothing, twice the send timeout
        got = await _drain(stream, 10)
        assert 0 < got < 8 << 20, got  # not the whole 16 MiB: cut off

    _serve(tmp_path, client, mib=16, send_timeout=2.0)


def test_downloads_at_once_are_capped_and_metadata_is_never_refused(tmp_path: Path) -> None:
    """Each download a client does not read holds up to a chunk of the
    server's memory: past the cap, downloads are asked to wait (503, in a
    second); metadata, small, is still served."""

    async def client(connect: Connect, cid: str) -> None:
        held = [await connect(small=True) for _ in range(4)]
        for stream in held:
            await _get(stream, cid)
        await trio.sleep(0.5)
        extra = await connect()
        await _get(extra, cid)
        with trio.fail_after(5):
            answer = await extra.receive_some()
        assert answer.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in answer.lower()
        metadata = await connect()
        await metadata.send_all(b"GET /metadata/timestamp.json HTTP/1.1\r\nHost: o\r\n\r\n")
        with trio.fail_after(5):
            assert (await metadata.receive_some()).startswith(b"HTTP/1.1 200")
        for stream in held:
            await stream.aclose()
        await trio.sleep(0.5)  # their answers end with their connections
        fresh = await connect()
        await _get(fresh, cid)
        with trio.fail_after(5):
            assert (await fresh.receive_some()).startswith(b"HTTP/1.1 200")

    _serve(tmp_path, client, mib=16, downloads=Shares(per_key=2, total=4))


def test_one_address_gets_its_share_and_this_machine_only_the_total() -> None:
    """Per address (an IPv6 /64, an IPv4 client of a dual-stack bind as
    itself): 2 here. Loopback clients (a reverse proxy in front speaks for
    everyone) count in the total only."""

    async def main() -> None:
        release = trio.Event()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await release.wait()
            await send({"type": "http.response.body", "body": b"x"})

        counter = ByteCounter(app, downloads=Shares(per_key=2, total=5))
        statuses: dict[str, list[int]] = {}

        async def get(address: str, path: str = "/blobs/x") -> None:
            async def send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    statuses.setdefault(address, []).append(message["status"])

            scope = {"type": "http", "method": "GET", "path": path, "client": (address, 1)}
            await counter(scope, None, send)

        async with trio.open_nursery() as nursery:
            for address in ("203.0.113.5", "::ffff:203.0.113.5", "203.0.113.5",
                            "2001:db8::1", "2001:db8::2", "2001:db8::3",
                            "127.0.0.1", "127.0.0.1", "127.0.0.1"):  # fmt: skip
                nursery.start_soon(get, address)
                await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(get, "198.51.100.1", "/metadata/timestamp.json")  # not counted
            await trio.testing.wait_all_tasks_blocked()
            release.set()
        assert statuses == {
            "203.0.113.5": [200, 503],
            "::ffff:203.0.113.5": [200],
            "2001:db8::1": [200],
            "2001:db8::2": [200],
            "2001:db8::3": [503],
            "127.0.0.1": [200, 503, 503],  # the total: 5 held already
            "198.51.100.1": [200],
        }, statuses

    trio.run(main)


def test_an_endless_request_head_is_cut_off_at_16_kib(tmp_path: Path) -> None:
    async def client(connect: Connect, cid: str) -> None:
        stream = await connect()
        await stream.send_all(b"GET /metadata/timestamp.json HTTP/1.1\r\nHost: o\r\n")
        sent = 0
        try:
            with trio.fail_after(5):
                while sent < 1 << 20:  # a megabyte of headers, if it were let in
                    await stream.send_all(b"X-Padding: " + b"a" * 1000 + b"\r\n")
                    sent += 1013
        except trio.BrokenResourceError:
            pass  # the server closed the connection under us
        answer = await _closed_within(stream, 5)
        assert sent < 1 << 20
        assert answer == b"" or answer.startswith(b"HTTP/1.1 4")

    _serve(tmp_path, client)


def test_http2_connections_say_the_same_bounds(tmp_path: Path) -> None:
    """Hypercorn answers HTTP/2 with prior knowledge on the same port: it said
    header lists of 64 KiB, and 100 streams (unread answers) per connection."""
    import h2.config
    import h2.connection
    import h2.events
    import h2.settings

    async def client(connect: Connect, cid: str) -> None:
        stream = await connect()
        h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        h2c.initiate_connection()
        await stream.send_all(h2c.data_to_send())
        with trio.fail_after(5):
            while True:
                events = h2c.receive_data(await stream.receive_some())
                changed = [e for e in events if isinstance(e, h2.events.RemoteSettingsChanged)]
                if changed:
                    break
        said = {code: setting.new_value for code, setting in changed[0].changed_settings.items()}
        assert said[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] == 8
        assert said[h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE] == 16 * 1024

    _serve(tmp_path, client)


def test_an_http2_body_that_comes_after_its_answer_stops_nothing(tmp_path: Path) -> None:
    """A request answered before its body came (any GET, a refusal): over
    HTTP/2 the body's next frame raised KeyError in hypercorn, which ended
    the whole server. Now it is dropped, the connection serves on, and the
    stream is reset: acknowledging its data credited it, and a client could
    pour half a gigabyte into it in 3 s."""
    import h2.config
    import h2.connection
    import h2.events

    def head(path: str) -> list[tuple[str, str]]:
        return [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "x")]

    async def until(stream: trio.SocketStream, h2c: h2.connection.H2Connection,
                    wanted: type, stream_id: int) -> h2.events.Event:  # fmt: skip
        with trio.fail_after(5):
            while True:
                data = await stream.receive_some()
                assert data, "the server hung up"
                for event in h2c.receive_data(data):
                    if isinstance(event, h2.events.DataReceived):
                        h2c.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    if isinstance(event, wanted) and event.stream_id == stream_id:  # type: ignore[attr-defined]
                        return event
                await stream.send_all(h2c.data_to_send())

    async def client(connect: Connect, cid: str) -> None:
        stream = await connect()
        h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        h2c.initiate_connection()
        h2c.send_headers(1, head("/metadata/timestamp.json"))  # a body to follow
        await stream.send_all(h2c.data_to_send())
        await until(stream, h2c, h2.events.StreamEnded, 1)  # answered already
        sent, reset = 0, False
        with trio.move_on_after(2):
            while not reset:
                window = min(h2c.local_flow_control_window(1), 16384)
                if window > 0:
                    h2c.send_data(1, b"x" * window)
                    sent += window
                    await stream.send_all(h2c.data_to_send())
                    continue
                for event in h2c.receive_data(await stream.receive_some()):
                    reset = reset or isinstance(event, h2.events.StreamReset)
                await stream.send_all(h2c.data_to_send())
        assert reset and sent <= 1 << 20, sent  # the first window at most, then a reset
        h2c.send_headers(3, head("/metadata/timestamp.json"), end_stream=True)
        await stream.send_all(h2c.data_to_send())
        answer = await until(stream, h2c, h2.events.ResponseReceived, 3)
        assert dict(answer.headers)[b":status"] == b"200"  # type: ignore[attr-defined]

    _serve(tmp_path, client)


_H2_STALLED = """
import sys, tempfile, trio
from pathlib import Path
import h2.config, h2.connection
from starlette.applications import Starlette
from tufmesh.cas import BlobStore
from tufmesh.origin._server import ByteCounter, start_http, tree_routes

root = Path(tempfile.mkdtemp())
(root / "metadata").mkdir()
store = BlobStore(root / "cas")
cid = store.put(bytes(range(256)) * 4096)  # 1 MiB: past HTTP/2's first 64 KiB window
app = ByteCounter(Starlette(routes=tree_routes(root, store)))

async def main():
    async with trio.open_nursery() as nursery:
        url = await start_http(nursery, app, "127.0.0.1", 0, None, None)
        host, port = url.removeprefix("http://").rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        client.send_headers(1, [(":method", "GET"), (":path", f"/blobs/{cid}"),
                                (":scheme", "http"), (":authority", "o")], end_stream=True)
        await stream.send_all(client.data_to_send())
        with trio.move_on_after(1):  # read, and never open the window again
            while await stream.receive_some():
                pass
        nursery.cancel_scope.cancel()  # the server stops
    print("stopped")

trio.run(main)
"""


def test_a_client_that_never_opens_its_http2_window_cannot_hold_the_server_up() -> None:
    """The end of a response was sent shielded from cancellation, with no
    deadline: over HTTP/2 a client that acknowledges no data held it, and
    the server could not stop (for ever)."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _H2_STALLED], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "stopped", proc.stderr[-2000:]


def test_a_refusal_is_said_in_the_origins_words_or_its_statuss() -> None:
    """A mirror's URL given as --origin answered 404 with no reason phrase
    (hypercorn sends none): 'refused by the origin (404): ' said nothing."""
    import httpx

    from tufmesh.origin._publish import refusal

    hint = "(not an origin's answer: is --origin the origin's URL?)"
    bare = httpx.Response(404, text="Not Found", extensions={"reason_phrase": b""})
    assert refusal(bare) == f"Not Found {hint}"
    assert (
        refusal(httpx.Response(599, extensions={"reason_phrase": b""})) == f"no reason given {hint}"
    )
    # A server's failure (an origin's bug too) is not a wrong URL.
    failed = refusal(httpx.Response(500, text="Internal Server Error"))
    assert failed == "Internal Server Error (the server failed: its log may say why)"
    said = httpx.Response(403, json={"error": "the token is not\nfor this project"})
    assert refusal(said) == "the token is not for this project"
