"""The upload cap (ByteCounter): big bodies are paced, small ones skip the queue."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tufmesh.origin import ByteCounter
from tufmesh.p2p import PACED_PIECE


def test_big_bodies_are_paced_and_small_ones_are_not_held_back() -> None:
    sent: list[tuple[float, int]] = []

    async def app(scope: object, receive: object, send) -> None:  # type: ignore[no-untyped-def]
        for size in scope["sizes"]:  # type: ignore[index]
            await send({"type": "http.response.body", "body": b"x" * size})

    counter = ByteCounter(app, max_rate=1 << 20)  # 1 MiB/s

    async def send(message: dict) -> None:
        if message["body"]:  # (a response's end is a message of its own)
            sent.append((trio.current_time(), len(message["body"])))

    async def main() -> None:
        # Four 1 MiB chunks queue up: they flow, a 64 KiB piece every 1/16 s
        # from 0 s, the first byte of each chunk at 0, 1, 2, 3 s.
        await counter({"sizes": [1 << 20] * 4}, None, send)
        assert [size for _, size in sent] == [PACED_PIECE] * 64
        assert [t for t, _ in sent] == pytest.approx([i / 16 for i in range(64)])
        # A metadata file sent now is not held behind the queue ...
        before = trio.current_time()
        await counter({"sizes": [4096]}, None, send)
        assert sent[-1][0] == before
        # ... but it spent its share: the next chunk waits for it too.
        await counter({"sizes": [1 << 20]}, None, send)
        assert sent[-1][0] >= before + 1 + 4096 / (1 << 20) - 1e-9

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert counter.served == 5 * (1 << 20) + 4096


def test_small_bodies_cannot_bypass_the_cap_together() -> None:
    """Ranges of 64 KiB less a byte went out unpaced: 10 MiB in no time past
    a 1 MiB/s cap, and the next honest chunk then waited out their debt."""
    times: list[float] = []

    async def app(scope: object, receive: object, send) -> None:  # type: ignore[no-untyped-def]
        await send({"type": "http.response.body", "body": b"x" * scope["size"]})  # type: ignore[index]

    counter = ByteCounter(app, max_rate=1 << 20)

    async def send(message: dict) -> None:  # type: ignore[type-arg]
        if message["body"]:
            times.append(trio.current_time())

    async def main() -> None:
        start = trio.current_time()
        for _ in range(160):
            await counter({"size": (64 << 10) - 1}, None, send)
        took = trio.current_time() - start
        # The rate, after a burst of half a second's worth.
        assert 160 * ((64 << 10) - 1) / (1 << 20) - 0.5 - 0.01 <= took <= 10.0
        # The first few went at once (metadata is not held back).
        assert times[:4] == [start] * 4

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_answers_sent_at_once_share_the_rate_from_their_first_byte() -> None:
    """Two 1 MiB answers at 1 MiB/s: the second's first bytes come within a
    sixteenth of a second, and both end near 2 s. Paced whole, the second
    waited its turn, 1 s of nothing (5 s at 200 KiB/s: its requester, which
    judges the rate after 3 s, gave it up), and then came at once."""
    first_byte: dict[str, float] = {}
    last_byte: dict[str, float] = {}

    async def app(scope: object, receive: object, send) -> None:  # type: ignore[no-untyped-def]
        await send({"type": "http.response.body", "body": b"x" * (1 << 20)})

    counter = ByteCounter(app, max_rate=1 << 20)

    async def main() -> None:
        start = trio.current_time()

        async def answer(name: str) -> None:
            async def send(message: dict) -> None:  # type: ignore[type-arg]
                if message["body"]:
                    first_byte.setdefault(name, trio.current_time() - start)
                    last_byte[name] = trio.current_time() - start

            await counter({}, None, send)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer, "a")
            nursery.start_soon(answer, "b")
        assert max(first_byte.values()) <= 1 / 16 + 1e-9, first_byte
        assert min(last_byte.values()) >= 1.8, last_byte  # each at about half the rate
        assert max(last_byte.values()) == pytest.approx(2 - 1 / 16)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_body_just_over_a_piece_cannot_send_its_tail_outside_the_queue() -> None:
    """A body of 128 KiB less a byte was sent as a 64 KiB piece and a tail
    under 64 KiB, which as a small body of its own skipped the queue: 200
    such ranges at once went out at twice the cap."""
    size = (128 << 10) - 1
    sent: list[tuple[float, int]] = []

    async def app(scope: object, receive: object, send) -> None:  # type: ignore[no-untyped-def]
        await send({"type": "http.response.body", "body": b"x" * size})

    counter = ByteCounter(app, max_rate=1 << 20)

    async def send(message: dict) -> None:  # type: ignore[type-arg]
        sent.append((trio.current_time(), len(message["body"])))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(200):
                nursery.start_soon(counter, {}, None, send)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    by_five = sum(n for t, n in sent if t <= 5.0)
    assert by_five <= (5 + 0.5) * (1 << 20) + PACED_PIECE, by_five / (1 << 20)


def test_a_send_racing_hypercorns_close_ends_the_answer_quietly() -> None:
    """When the client leaves, hypercorn shuts the socket down outside its send
    lock: a send at that moment raised BusyResourceError out of the app, a
    traceback in the server's log. It ends the answer, as a closed socket does."""
    tried: list[dict] = []

    async def app(scope: object, receive: object, send) -> None:  # type: ignore[no-untyped-def]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x" * 10, "more_body": True})
        await send({"type": "http.response.body", "body": b"y" * 10})

    async def send(message: dict) -> None:
        tried.append(message)
        if message["type"] == "http.response.body":
            raise trio.BusyResourceError("another task is currently sending data")

    trio.run(ByteCounter(app), {"type": "websocket"}, None, send)
    assert [m["type"] for m in tried] == ["http.response.start", "http.response.body"]
