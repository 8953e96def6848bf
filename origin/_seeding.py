"""Super-seeding: the origin uploads each chunk about once, however many mirrors ask.

A sans-IO admission policy for mirrors' chunk requests (the origin's HTTP
server asks it; the network simulator runs the same code). A mirror marks
its requests (``X-Tufmesh-Mirror``); end users' requests are never refused.

* **seeded**: the chunk went to some mirror less than ``window`` seconds ago;
  it is spreading among the mirrors, so ask them. After the window it is
  served again, in case the mirror that got it left. A mirror that waited
  for its peers in vain (or has none) says so (``patient``) and is served.
* **busy**: ``slots`` chunk uploads are running already, or half of them
  (at least one) for the requester's machine: one machine cannot hold every
  slot by reading its answers slowly (an honest mirror asks a source for one
  chunk at a time). A few fast uploads beat a thousand slow ones: every
  chunk then reaches the swarm soon, and a slow upload would be abandoned by
  the requester's slow-retrieval defence anyway. The answer says when to
  ask again (:meth:`retry_after`): when the oldest running upload should
  end, judged by how long uploads have taken, and never sooner than
  ``retry`` seconds. Asking again every ``retry``
  seconds while a 16 MiB chunk takes 4 s to send is pure noise (netsim:
  28 refused requests per chunk delivered across 2,000 mirrors).

Without it, every neighbourhood of mirrors fetches its own copy of each chunk
(netsim: 4x the release from the origin with 100 mirrors, and the origin's
link, not the mirrors', sets the pace).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Final, Literal

from tufmesh._shares import UploadFloor

__all__ = ["MIRROR_HEADER", "SeedGate", "slots_within"]

#: Request header by which a mirror asks for a chunk while replicating: ``1``,
#: or ``patient`` once its peers could not give it the chunk.
MIRROR_HEADER: Final = "x-tufmesh-mirror"

Verdict = Literal["serve", "busy", "seeded"]

#: The longest a busy gate asks a requester to wait (an estimate can be wrong).
MAX_RETRY: Final = 10.0
#: The slow-retrieval floor of every requester (the client's and the mirrors'
#: schedulers): a request slower than this after its grace is abandoned.
MIN_RATE: Final = 64 * 1024
#: Chunks remembered as seeded at most (those served within the window, the
#: oldest forgotten first): an origin sending 1 GiB/s in 1 MiB chunks serves
#: 30,720 in a 30 s window. Requests for ranges of their own choosing would
#: otherwise grow the memory by a few hundred bytes each.
MAX_SEEDED: Final = 1 << 16


def slots_within(slots: int, upload_rate: float | None) -> int:
    """``slots``, or fewer if an uplink capped at ``upload_rate`` bytes a second
    could not give each upload twice the requesters' slow-retrieval floor. Four
    uploads sharing 200 KiB/s went at 50 KiB/s each: every requester gave them
    up as too slow, and after three, banned an honest peer."""
    if not upload_rate:
        return slots
    return max(1, min(slots, int(upload_rate // (2 * MIN_RATE))))


@dataclass(slots=True)
class SeedGate:
    """Which mirror chunk requests the origin serves now."""

    slots: int = 4
    window: float = 30.0
    retry: float = 1.0
    #: Bytes of uploads running at once at most (one upload always may run).
    max_bytes: int | None = None
    #: An admitted upload must be taken at this rate at least, after ``grace``
    #: (the requester's own slow-retrieval floor): a requester that reads
    #: slower, or not at all, would otherwise hold a slot for ever.
    min_rate: float = MIN_RATE
    grace: float = 3.0
    # chunk -> when it was last seeded, oldest first (only while ``window``)
    _served: OrderedDict[Hashable, float] = field(default_factory=OrderedDict)
    # chunk -> (start, size) of each upload of it running now
    _running: dict[Hashable, list[tuple[float, int]]] = field(default_factory=dict)
    # the start of each running upload, oldest first (admitted in time order)
    _starts: list[float] = field(default_factory=list)
    _active: int = 0
    _by_requester: dict[Hashable, int] = field(default_factory=dict)  # uploads per machine
    _bytes: int = 0
    _took: float | None = None  # a completed upload's duration (moving average)

    def admit(
        self,
        chunk: Hashable,
        now: float,
        *,
        patient: bool = False,
        size: int = 0,
        requester: Hashable | None = None,
    ) -> Verdict:
        """Decide on a request for ``chunk`` (``size`` bytes) from the machine
        ``requester`` (None: not counted, this machine's own); after "serve",
        call :meth:`done` at its end, with the same ``requester``."""
        served = self._served.get(chunk)
        if served is not None and now - served < self.window and not patient:
            return "seeded"
        if self._active >= self.slots:
            return "busy"
        if self._active and self.max_bytes is not None and self._bytes + size > self.max_bytes:
            return "busy"
        if requester is not None:
            held = self._by_requester.get(requester, 0)
            if held >= self.per_requester:
                return "busy"
            self._by_requester[requester] = held + 1
        self._active += 1
        self._bytes += size
        if self.window > 0:  # (a gate without one seeds nothing: nothing to keep)
            self._seed(chunk, now)
        self._running.setdefault(chunk, []).append((now, size))
        self._starts.append(now)
        return "serve"

    def _seed(self, chunk: Hashable, now: float) -> None:
        """Note ``chunk`` as seeded ``now``, and forget what is past the window."""
        served = self._served
        served[chunk] = now
        served.move_to_end(chunk)
        while served:
            oldest, at = next(iter(served.items()))
            if now - at < self.window and len(served) <= MAX_SEEDED:
                break
            del served[oldest]

    def done(
        self,
        chunk: Hashable,
        now: float,
        *,
        completed: bool = True,
        requester: Hashable | None = None,
    ) -> None:
        """An admitted upload ended; if it did not complete, the chunk is not seeded."""
        self._active -= 1
        if requester is not None:
            held = self._by_requester.pop(requester, 0) - 1
            if held > 0:
                self._by_requester[requester] = held
        uploads = self._running.get(chunk)
        start, size = uploads.pop(0) if uploads else (None, 0)
        self._bytes -= size
        if uploads == []:
            del self._running[chunk]
        if start is not None:
            self._starts.remove(start)
        if not completed:
            self._served.pop(chunk, None)
        elif start is not None:
            took = now - start
            self._took = took if self._took is None else 0.75 * self._took + 0.25 * took

    def floor(self, start: float) -> UploadFloor:
        """When the pieces of an upload admitted at ``start`` must be out: it is
        cut (and its slot freed) the moment it falls behind."""
        return UploadFloor(start, self.min_rate, self.grace)

    def retry_after(self, now: float, verdict: Verdict = "busy") -> float:
        """Seconds after which a request refused with ``verdict`` should be asked
        again: a busy gate estimates when a slot frees; a seeded chunk, ``retry``."""
        if verdict != "busy" or self._took is None or not self._starts:
            return self.retry
        return min(max(self._starts[0] + self._took - now, self.retry), MAX_RETRY)

    @property
    def per_requester(self) -> int:
        """Uploads one machine may hold at once: half the slots, at least one."""
        return max(1, self.slots // 2)

    @property
    def active(self) -> int:
        """Uploads running now."""
        return self._active
