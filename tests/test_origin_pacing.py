"""The upload cap (ByteCounter): big bodies are paced, small ones skip the queue."""

from __future__ import annotations

import trio
import trio.testing

from tufmesh.origin import ByteCounter


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
        # Four 1 MiB chunks queue up: they leave at 0, 1, 2, 3 s.
        await counter({"sizes": [1 << 20] * 4}, None, send)
        assert [round(t) for t, _ in sent] == [0, 1, 2, 3]
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
