"""Super-seeding: the origin uploads each chunk about once, however many mirrors ask.

A sans-IO admission policy for mirrors' chunk requests (the origin's HTTP
server asks it; the network simulator runs the same code). A mirror marks
its requests (``X-Tufmesh-Mirror``); end users' requests are never refused.

* **seeded**: the chunk went to some mirror less than ``window`` seconds ago;
  it is spreading among the mirrors, so ask them. After the window it is
  served again, in case the mirror that got it left. A mirror that waited
  for its peers in vain (or has none) says so (``patient``) and is served.
* **busy**: ``slots`` chunk uploads are running already; retry in ``retry``
  seconds. A few fast uploads beat a thousand slow ones: every chunk then
  reaches the swarm soon, and a slow upload would be abandoned by the
  requester's slow-retrieval defence anyway.

Without it, every neighbourhood of mirrors fetches its own copy of each chunk
(netsim: 4x the release from the origin with 100 mirrors, and the origin's
link, not the mirrors', sets the pace).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = ["MIRROR_HEADER", "SeedGate"]

#: Request header by which a mirror asks for a chunk while replicating: ``1``,
#: or ``patient`` once its peers could not give it the chunk.
MIRROR_HEADER: Final = "x-tufmesh-mirror"

Verdict = Literal["serve", "busy", "seeded"]


@dataclass
class SeedGate:
    """Which mirror chunk requests the origin serves now."""

    slots: int = 4
    window: float = 30.0
    retry: float = 1.0
    _active: int = 0
    _served: dict[Hashable, float] = field(default_factory=dict)

    def admit(self, chunk: Hashable, now: float, *, patient: bool = False) -> Verdict:
        """Decide on a request for ``chunk``; after "serve", call :meth:`done` at its end."""
        served = self._served.get(chunk)
        if served is not None and now - served < self.window and not patient:
            return "seeded"
        if self._active >= self.slots:
            return "busy"
        self._active += 1
        self._served[chunk] = now
        if len(self._served) > 1 << 20:  # bound the memory; old entries matter least
            self._served = {k: t for k, t in self._served.items() if now - t < self.window}
        return "serve"

    def done(self, chunk: Hashable, *, completed: bool = True) -> None:
        """An admitted upload ended; if it did not complete, the chunk is not seeded."""
        self._active -= 1
        if not completed:
            self._served.pop(chunk, None)

    @property
    def active(self) -> int:
        """Uploads running now."""
        return self._active
