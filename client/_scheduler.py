"""Which chunk to fetch from which source: a sans-IO state machine.

Fed events (a request finished, bytes arrived, a chunk verified or not) and the
current time; answers with the requests to start and the ones to abandon. No
I/O, no clock of its own, so it is tested (and simulated) with plain calls.

Policy:

* Every chunk is fetched from one source at a time; each usable source gets up
  to ``per_source`` requests, the fastest sources first (observed bytes per
  second, optimistic for a source not yet measured).
* Endgame: when no chunk is waiting, an idle source may duplicate a chunk that
  is in flight elsewhere (at most two copies); the first verified copy wins.
* A source that sends a chunk that fails verification is banned for the rest
  of the run (it lied; nothing it sends is worth the time). A source that
  fails ``max_failures`` times in a row (errors, timeouts, HTTP errors) is
  dropped too.
* Slow retrieval: a request that has been running longer than ``grace`` and
  delivers less than ``min_rate`` bytes per second is abandoned, its chunk
  goes back to the queue and the source is charged one failure. A per-read
  timeout alone does not stop a peer that sends a byte every 29 seconds.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Final

__all__ = ["ChunkScheduler", "SchedulerConfig", "SourceStats"]


@dataclass(frozen=True)
class SchedulerConfig:
    """Limits of a multi-source download, with the reason for each default."""

    #: Requests in flight per source: two hide one round trip per chunk.
    per_source: int = 2
    #: Below this rate a request is abandoned once ``grace`` has passed. 64 KiB/s
    #: is far below any link worth using, far above a trickle.
    min_rate: float = 64 * 1024
    #: Time a request gets before its rate is judged (connection set-up, TCP
    #: slow start).
    grace: float = 3.0
    #: Consecutive failures after which a source is dropped for this run.
    max_failures: int = 3
    #: Copies of one chunk in flight at most, in the endgame.
    max_copies: int = 2


@dataclass
class SourceStats:
    """What one source did during a download."""

    name: str
    bytes: int = 0
    busy_seconds: float = 0.0
    chunks: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    banned: str | None = None  # the reason, once banned
    last_error: str | None = None

    @property
    def rate(self) -> float | None:
        """Observed bytes per second, or None before the first chunk."""
        return self.bytes / self.busy_seconds if self.busy_seconds > 0 and self.chunks else None


@dataclass
class _Request:
    source: str
    index: int
    started: float
    received: int = 0


_UNMEASURED: Final = float("inf")  # try a source we know nothing about


@dataclass
class ChunkScheduler:
    """Plans the fetching of ``count`` chunks from ``sources``."""

    count: int
    sources: list[str]
    config: SchedulerConfig = field(default_factory=SchedulerConfig)
    have: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.stats = {name: SourceStats(name) for name in self.sources}
        self._waiting = deque(i for i in range(self.count) if i not in self.have)
        self._inflight: dict[tuple[str, int], _Request] = {}

    # -- queries -------------------------------------------------------------

    @property
    def complete(self) -> bool:
        """True when every chunk is verified."""
        return len(self.have) == self.count

    @property
    def usable(self) -> list[str]:
        """Sources not banned, fastest first."""
        alive = [s for s in self.sources if self.stats[s].banned is None]
        return sorted(alive, key=lambda s: -(self.stats[s].rate or _UNMEASURED))

    @property
    def stuck(self) -> bool:
        """True when chunks are missing and no source is left to ask."""
        return not self.complete and not self.usable

    def inflight(self) -> list[tuple[str, int]]:
        """Requests currently running, as ``(source, index)``."""
        return list(self._inflight)

    # -- decisions -------------------------------------------------------------

    def assign(self, now: float) -> list[tuple[str, int]]:
        """Requests to start now, as ``(source, index)``; the caller must start them."""
        started = []
        for source in self.usable:
            while self._load(source) < self.config.per_source:
                index = self._next_for(source)
                if index is None:
                    break
                self._inflight[(source, index)] = _Request(source, index, now)
                started.append((source, index))
        return started

    def _load(self, source: str) -> int:
        return sum(1 for s, _ in self._inflight if s == source)

    def _next_for(self, source: str) -> int | None:
        while self._waiting:
            index = self._waiting.popleft()
            if index not in self.have:
                return index
        # Endgame: duplicate the in-flight chunk with the fewest copies.
        copies: dict[int, int] = {}
        for s, index in self._inflight:
            copies[index] = copies.get(index, 0) + (1 if s != source else self.config.max_copies)
        candidates = [i for i, n in copies.items() if n < self.config.max_copies]
        return min(candidates, key=lambda i: (copies[i], i)) if candidates else None

    def too_slow(self, now: float) -> list[tuple[str, int]]:
        """Requests to abandon for being too slow; report each with :meth:`failed`."""
        slow = []
        for key, request in self._inflight.items():
            elapsed = now - request.started
            if elapsed > self.config.grace and request.received / elapsed < self.config.min_rate:
                slow.append(key)
        return slow

    # -- events ------------------------------------------------------------------

    def received(self, source: str, index: int, nbytes: int) -> None:
        """Bytes arrived for a running request (for the slow-retrieval check)."""
        request = self._inflight.get((source, index))
        if request is not None:
            request.received += nbytes

    def verified(self, source: str, index: int, nbytes: int, now: float) -> bool:
        """Chunk ``index`` from ``source`` verified. False if another copy won first."""
        request = self._inflight.pop((source, index), None)
        stats = self.stats[source]
        if request is not None:
            stats.busy_seconds += max(now - request.started, 1e-6)
        stats.bytes += nbytes
        stats.chunks += 1
        stats.consecutive_failures = 0
        if index in self.have:
            return False
        self.have.add(index)
        for key in [k for k in self._inflight if k[1] == index]:
            del self._inflight[key]  # endgame copies that lost: the caller abandons them
        return True

    def rejected(self, source: str, index: int, reason: str) -> None:
        """Chunk ``index`` from ``source`` failed verification: the source is banned."""
        self._inflight.pop((source, index), None)
        stats = self.stats[source]
        stats.failures += 1
        stats.last_error = reason
        stats.banned = f"sent a bad chunk ({reason})"
        self._requeue(index)
        for key in [k for k in self._inflight if k[0] == source]:
            del self._inflight[key]  # the caller abandons them when it sees the ban
            self._requeue(key[1])

    def failed(self, source: str, index: int, reason: str) -> None:
        """A request failed (network error, HTTP error, too slow): try elsewhere."""
        self._inflight.pop((source, index), None)
        stats = self.stats[source]
        stats.failures += 1
        stats.consecutive_failures += 1
        stats.last_error = reason
        if stats.consecutive_failures >= self.config.max_failures and stats.banned is None:
            stats.banned = f"failed {stats.consecutive_failures} times in a row ({reason})"
        self._requeue(index)

    def _requeue(self, index: int) -> None:
        if index not in self.have and index not in self._waiting:
            self._waiting.appendleft(index)

    def reasons(self) -> dict[str, str]:
        """Why each source stopped being useful (for the final error message)."""
        return {
            name: stats.banned or stats.last_error or "no answer"
            for name, stats in self.stats.items()
        }
