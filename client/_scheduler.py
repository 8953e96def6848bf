"""Which chunk to fetch from which source: a sans-IO state machine.

Fed events (a request finished, bytes arrived, a chunk verified or not, a
source announced what it holds) and the current time; answers with the
requests to start and the ones to abandon. No I/O, no clock of its own, so it
is tested with plain calls, and the network simulator (``tufmesh.netsim``)
runs this very code for thousands of simulated mirrors.

The same scheduler serves an end user's download (every source holds the
whole artifact) and a mirror's replication (peers hold some chunks and say
which in their have-records; the origin is the fallback).

Policy:

* Every chunk is fetched from one source at a time; each usable source gets up
  to ``per_source`` requests (a mirror's peers: ``per_peer``), the fastest
  sources first (observed bytes per second, optimistic for a source not yet
  measured). A mirror keeps at most ``measured_requests`` in flight to the
  fallback and the peers that have delivered before: as many as its own
  upload slots.
* Rarest first: among the chunks a source can give, the one the fewest known
  sources hold, so that scarce chunks spread before common ones. Ties go in
  index order for a download (the file fills from the front) or in a random
  order per node for replication (``seed``), so that mirrors fetch different
  chunks from the origin and then trade them.
* Fallback sources (the origin, for a mirror) are asked only for chunks no
  other usable source holds and no neighbour says it is already fetching from
  the fallback (``claims``). With ``me`` (a mirror's own name), a node asks
  the fallback only for the chunks it is the designated fetcher of among its
  neighbours (rendezvous hashing: the highest ``weight(name, chunk)`` wins),
  or for any chunk once no peer has anything for it (idle). Every chunk has a
  designated fetcher (the local maxima of its weight), so the origin uploads
  each chunk about once per neighbourhood, and the mirrors trade the rest.
* A source may refuse a request without failing (an origin that is busy, or
  that seeded the chunk to another mirror: :mod:`tufmesh.origin._seeding`):
  the source rests until the time it named, a seeded chunk is left to the
  peers, and nobody is charged a failure.
* Endgame: when no chunk is waiting, an idle source may duplicate a chunk that
  has been in flight elsewhere for ``endgame_after`` seconds (at most
  ``max_copies``); the first verified copy wins.
* A source that sends a chunk that fails verification is banned for the rest
  of the run (it lied; nothing it sends is worth the time). A source that
  fails ``max_failures`` times in a row (errors, timeouts, HTTP errors) is
  dropped too.
* Slow retrieval: a request that has been running longer than ``grace`` and
  has delivered less than its share of ``min_rate`` bytes per second (the
  floor divided among the requests in flight to its source, over the
  request's life) is abandoned, its chunk goes back to the queue and the
  source is charged one failure. A per-read timeout alone does not stop a
  peer that sends a byte every 29 seconds. Where this node's own link is
  what is slow (every request in flight gets little), a request owes no more
  than a quarter of an even share of what the link delivers, and never less
  than an even share of the floor: the download as a whole must still get
  ``min_rate``, but honest sources are not dropped for sharing a slow link
  (ADR 27).
"""

from __future__ import annotations

import math
import random
import zlib
from array import array
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Final

__all__ = ["ChunkScheduler", "SchedulerConfig", "SourceStats", "chunk_mask", "set_bits"]


@dataclass(frozen=True)
class SchedulerConfig:
    """Limits of a multi-source download, with the reason for each default."""

    #: Requests in flight per source: two hide one round trip per chunk.
    per_source: int = 2
    #: ...per peer, for a mirror (``me`` given): one. A mirror has many sources
    #: and needs no pipelining per source, and each request it makes takes
    #: one of a neighbour's few upload slots, which other mirrors wait for
    #: (netsim, 1,000 mirrors: mixed links 1.94x -> 1.66x the bound, origin
    #: 1.29x -> 1.00x the release; ADR 17).
    per_peer: int = 1
    #: ...and, for a mirror, at most this many in flight at once to the
    #: fallback and to the peers that have delivered a chunk before: as many
    #: as a mirror has upload slots (ADR 19). Asking every neighbour at once
    #: had more requests refused than served, and the accepted ones shared
    #: the downlink, so each chunk arrived, and was relayed on, later (netsim,
    #: 500 mirrors, mixed links: 1.67x -> 1.54x the bound). A peer not yet
    #: measured is not counted: one that withholds would hold a place for the
    #: whole ``grace``.
    measured_requests: int = 4
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
    #: A chunk is duplicated in the endgame only once its request has run this
    #: long: a straggler is worth a second copy, a request about to finish is
    #: not (without it, every one-chunk artifact was fetched twice).
    endgame_after: float = 0.5
    #: Requests in flight to each fallback source (the origin, for a mirror).
    per_fallback: int = 1
    #: A mirror with nothing in flight waits this long for its neighbours'
    #: have-records before it asks the fallback for a chunk it is not the
    #: designated fetcher of, or that the origin seeded elsewhere (eight
    #: have-query rounds; netsim: shorter waits make the origin re-serve
    #: seeded chunks, 1.05-1.14x the release instead of 1.00-1.03x).
    patience: float = 2.0
    #: With the peers this far behind, the fallback is asked for any missing
    #: chunk, one after another, whatever the peers claim to hold, until they
    #: catch up: peers that claim chunks and never serve them (busy for ever;
    #: one liar or a stream of new ones) must not hold a download hostage,
    #: since the fallback is otherwise not asked for chunks a peer holds.
    #: Behind is measured at the floor's rate: each chunk from a peer moves
    #: the stall clock on by what its bytes take at ``min_rate``, never past
    #: now, so the peers together must keep up the floor (a review: one
    #: claiming chunks and serving one a minute, or two in a row, between
    #: refusals held a mirror to its pace, a chunk a minute). In an honest
    #: network a replicating mirror gets a chunk from a peer every second or
    #: so. An end user's download with no byte from any source for this long
    #: fails, naming each source's answer.
    max_stall: float = 60.0
    #: Random tie-break between equally rare chunks (replication); None keeps
    #: index order (a download fills the file from the front).
    seed: int | None = None


@dataclass(slots=True)
class SourceStats:
    """What one source did during a download."""

    name: str
    bytes: int = 0
    busy_seconds: float = 0.0
    chunks: int = 0  # (requests: a downloader's may span several manifest chunks)
    pieces: int = 0  # manifest chunks verified (the downloader counts them)
    failures: int = 0
    consecutive_failures: int = 0
    banned: str | None = None  # the reason, once banned (or dropped: ``left``)
    left: bool = False  # dropped through no fault of its own (gone; does not hold it)
    last_error: str | None = None

    @property
    def rate(self) -> float | None:
        """Observed bytes per second, or None before the first chunk."""
        return self.bytes / self.busy_seconds if self.busy_seconds > 0 and self.chunks else None


@dataclass(slots=True)
class _Request:
    source: str
    index: int
    started: float
    received: int = 0
    #: Bytes it should have received by the last slow-retrieval check: its
    #: share of its source's floor (``min_rate``), or of the link (ADR 27),
    #: since it started.
    owed: float = 0.0
    counted: bool = False  # against ``measured_requests``


_UNMEASURED: Final = float("inf")  # try a source we know nothing about


@dataclass
class ChunkScheduler:
    """Plans the fetching of ``count`` chunks from ``sources``.

    Every source named at construction holds every chunk; :meth:`add_source`
    adds one that holds some (a peer still replicating), updated by
    :meth:`add_have` as its have-records arrive.
    """

    count: int
    sources: list[str]
    config: SchedulerConfig = field(default_factory=SchedulerConfig)
    have: set[int] = field(default_factory=set)
    fallback: set[str] = field(default_factory=set)
    #: This node's name among its peers (a mirror's URL); None: no designation.
    me: str | None = None

    def __post_init__(self) -> None:
        self.sources = list(self.sources)
        self.stats = {name: SourceStats(name) for name in self.sources}
        self._waiting = set(chunk_indices(self.count))
        self._waiting -= self.have  # in place: a set of half the size
        self._inflight: dict[tuple[str, int], _Request] = {}
        self._counted = 0  # requests in flight against ``measured_requests``
        self._load: dict[str, int] = dict.fromkeys(self.sources, 0)  # requests per source
        self._copies = [0] * self.count  # requests per chunk
        # What each source that holds some chunks holds: a byte per chunk (a
        # set of a thousand ints costs 32 KiB, and a thousand simulated mirrors
        # with eight neighbours each then spill out of the CPU's cache), and
        # how many of them.
        self._has: dict[str, bytearray | None] = dict.fromkeys(self.sources)
        self._held: dict[str, int] = {}
        # For each usable source that holds some chunks: its record, and the
        # waiting chunks among them (what it can be asked for), kept up to date
        # as chunks start, land and go back to the queue; for each chunk, how
        # many of these sources hold it (its rarity), and how many hold all.
        self._live: dict[str, bytearray] = {}
        self._avail: dict[str, set[int]] = {}
        self._rarity = [0] * self.count
        self._full = sum(1 for s in self.sources if s not in self.fallback)
        # Each neighbour's claims (a bitmask: bit i, chunk i), and per chunk
        # how many neighbours claim it.
        self._claims: dict[str, int] = {}
        self._claimed = [0] * self.count
        self._every = (1 << self.count) - 1
        self._have_mask = chunk_mask(self.have)
        self._mine = weights(self.me, self.count) if self.me is not None else None
        self._best_peer = _NO_WEIGHTS * self.count  # highest weight among live peers
        self._designated: set[int] | None = None  # cache of the chunks this node owns
        self._designated_mask = 0  # ...as a bitmask
        #: A mirror keeps the fallback closed until its first round of have-queries.
        self.fallback_open = True
        self._idle_since: float | None = None
        self._now = 0.0
        self._slow_checked: float | None = None  # the last call of too_slow
        self._arrived = 0  # bytes received for any request (the link's view: too_slow)
        self._arrived_checked = 0  # ...as of the last call of too_slow
        self._order: list[str] | None = None  # usable sources, cached
        # The fallback and the sources that have delivered a chunk: a mirror's
        # requests to them count against ``measured_requests`` (a set, so that
        # a pick need not read every source's statistics).
        self._measured = set(self.fallback)
        # Peers known to have nothing this node still needs (until they
        # report more, or a chunk goes back to the queue): assign skips them.
        self._dry: set[str] = set()
        self._claims_cache: int | None = None
        self._resting: dict[str, float] = {}
        self._patient = False  # the next fallback pick comes from the idle rule
        # Fallback requests made by the idle rule (the origin serves them even
        # if it seeded the chunk elsewhere: ``patient``).
        self._patient_requests: set[tuple[str, int]] = set()
        self._seeded: set[int] = set()  # chunks the fallback gave to someone else
        self._delivered: dict[str, float] = {}  # when each source last delivered a chunk
        self._progress: float | None = None  # the stall clock (see max_stall), from the start
        indices = chunk_indices(self.count)
        if self.config.seed is None:
            rank = list(indices)
        else:
            shuffler = random.Random(self.config.seed)  # noqa: S311 (spreading load, not secrets)
            rank = [indices[i] for i in shuffler.sample(range(self.count), self.count)]
        # The tie-break order among equally rare chunks.
        self._rank = rank

    # -- queries -------------------------------------------------------------

    @property
    def complete(self) -> bool:
        """True when every chunk is verified."""
        return len(self.have) == self.count

    @property
    def usable(self) -> list[str]:
        """Sources not banned, fastest first, fallbacks last."""
        if self._order is None:
            stats, fallback = self.stats, self.fallback
            alive = [s for s in self.sources if stats[s].banned is None]
            self._order = sorted(
                alive, key=lambda s: (s in fallback, -(stats[s].rate or _UNMEASURED))
            )
        return self._order

    @property
    def stuck(self) -> bool:
        """True when chunks are missing and no usable source holds any of them."""
        if self.complete:
            return False
        missing = set(range(self.count)) - self.have
        return not any(
            has is None or any(has[i] for i in missing)
            for s, has in self._has.items()
            if self.stats[s].banned is None
        )

    @property
    def running(self) -> int:
        """Requests in flight."""
        return len(self._inflight)

    def inflight(self) -> list[tuple[str, int]]:
        """Requests currently running, as ``(source, index)``."""
        return list(self._inflight)

    def holds(self, source: str) -> set[int] | None:
        """What ``source`` is known to hold (None: everything)."""
        has = self._has.get(source)
        return None if has is None else set(_held_indices(has))

    def claims(self) -> int:
        """Chunks this node fetches from a fallback, now or later as their
        designated fetcher (its have-record says so: neighbours leave them to
        it), as a bitmask: bit i for chunk i."""
        if self._claims_cache is None:
            fallback = self.fallback
            fetching = chunk_mask(index for source, index in self._inflight if source in fallback)
            if self._mine is not None:
                self.designated()
                fetching |= self._designated_mask & ~self._have_mask
            self._claims_cache = fetching
        return self._claims_cache

    def designated(self) -> set[int]:
        """Chunks this node is the designated fallback fetcher of among its peers."""
        if self._designated is None:
            mine, best = self._mine or _NO_WEIGHTS[:0], self._best_peer
            self._designated = {i for i in chunk_indices(len(mine)) if mine[i] > best[i]}
            self._designated_mask = chunk_mask(self._designated)
        return self._designated

    # -- sources and have-records ------------------------------------------------

    def add_source(self, name: str, has: Iterable[int] | None = None) -> None:
        """A new source (a peer met while replicating), holding ``has`` (None: all)."""
        if name in self._has:
            return
        self.sources.append(name)
        self.stats[name] = SourceStats(name)
        self._load[name] = 0
        self._order = None
        self._has[name] = None
        if self._mine is not None and name not in self.fallback:
            self._best_peer = _highest(self._best_peer, weights(name, self.count))
            self._designated = self._claims_cache = None
            self._dry -= self.fallback
        if has is None:
            self._full += name not in self.fallback
        else:
            self._has[name] = self._live[name] = bytearray(self.count)
            self._held[name] = 0
            self._avail[name] = set()
            self.add_have(name, has)

    def add_have(self, source: str, indices: Iterable[int]) -> None:
        """``source`` now holds chunks ``indices`` (from its have-record)."""
        has = self._has.get(source)
        if has is None or self.stats[source].banned is not None:
            return  # unknown, already holds everything, or not listened to
        self._dry.discard(source)
        count, rarity = self.count, self._rarity
        waiting, avail = self._waiting, self._avail[source]
        held = self._held[source]
        for index in indices:
            if 0 <= index < count and not has[index]:
                has[index] = 1
                held += 1
                rarity[index] += 1
                if index in waiting:
                    avail.add(index)
        self._held[source] = held
        if held == count:  # complete: cheaper as a full holder
            self._forget(source)
            self._has[source] = None
            self._full += 1

    def set_claims(self, source: str, claims: int) -> None:
        """``source`` says it will fetch the chunks of bitmask ``claims`` (bit i:
        chunk i) from a fallback, or is doing so (bits past the blob are ignored).
        A banned source's claims count for nothing, as its have-records."""
        stats = self.stats.get(source)
        if stats is not None and stats.banned is not None:
            claims = 0
        claims = claims & self._every if claims > 0 else 0
        old = self._claims.pop(source, 0)
        if claims:
            self._claims[source] = claims
        if claims == old:
            return
        claimed = self._claimed
        for index in set_bits(claims & ~old):
            claimed[index] += 1
        for index in set_bits(old & ~claims):
            claimed[index] -= 1
        self._dry -= self.fallback

    def _designate(self) -> None:
        """Recompute the best peer weights (after a peer left)."""
        best = _NO_WEIGHTS * self.count
        for source in self.sources:
            if source not in self.fallback and self.stats[source].banned is None:
                best = _highest(best, weights(source, self.count))
        self._best_peer = best
        self._designated = self._claims_cache = None
        self._dry -= self.fallback

    def _forget(self, source: str) -> None:
        """Take ``source``'s chunks out of the rarity counts (banned or complete)."""
        has = self._has.get(source)
        if has is None:
            if source not in self.fallback:
                self._full -= 1
        else:
            rarity = self._rarity
            for index in _held_indices(has):
                rarity[index] -= 1
            del self._avail[source], self._live[source]
            del self._held[source]
        self._dry -= self.fallback
        self.set_claims(source, 0)

    # -- decisions -------------------------------------------------------------

    def assign(self, now: float) -> list[tuple[str, int]]:
        """Requests to start now, as ``(source, index)``; the caller must start them."""
        started = []
        if self._inflight:
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = now
        self._now = now
        order = self.usable
        if self._progress is None:
            self._progress = now
            if self._slow_checked is None:  # too_slow's first interval: from here
                self._slow_checked = now
        elif now - self._progress >= self.config.max_stall:  # _stalled(), inline: hot
            # The fallback first, ahead of the peers that claim what it lacks.
            self._dry -= self.fallback
            order = sorted(order, key=lambda source: source not in self.fallback)
        dry, resting, load, fallback = self._dry, self._resting, self._load, self.fallback
        per_fallback = self.config.per_fallback
        per_source = self.config.per_source if self.me is None else self.config.per_peer
        capped, cap, measured = self.me is not None, self.config.measured_requests, self._measured
        for source in order:
            if source in dry:
                continue
            if resting and source in resting:
                if resting[source] > now:
                    continue
                del resting[source]  # rested enough
            # A mirror's requests to the fallback and to measured peers count.
            counted = capped and source in measured
            if counted and self._counted >= cap:
                continue
            limit = per_fallback if source in fallback else per_source
            while load[source] < limit:
                index = self._next_for(source)
                if index is None:
                    break
                self._start(source, index, now, counted)
                started.append((source, index))
                if counted and self._counted >= cap:
                    break
        return started

    def _start(self, source: str, index: int, now: float, counted: bool) -> None:
        if source in self.fallback:
            self._claims_cache = None
            if self._patient:
                self._patient_requests.add((source, index))
                self._patient = False
        self._inflight[(source, index)] = _Request(source, index, now, counted=counted)
        self._counted += counted
        self._load[source] += 1
        self._copies[index] += 1
        self._unwait(index)

    def _next_for(self, source: str) -> int | None:
        waiting = self._waiting
        candidates: Collection[int]
        if source in self.fallback:
            if not self.fallback_open or not waiting:
                return None
            if self._full and not self._stalled() and self._full_serves():
                return None  # a peer holds everything: it serves, not the origin
            candidates = self._for_fallback()
        else:
            candidates = waiting if self._has[source] is None else self._avail[source]
        if candidates:
            return _rarest(candidates, self._rarity, self._rank)
        if waiting or source in self.fallback:
            if waiting and (source not in self.fallback or self._inflight):
                # Nothing to give until it says more, a chunk is requeued, or
                # (a fallback) claims, designations or the idle state change.
                self._dry.add(source)
            return None  # none this source can give (a fallback never duplicates)
        return self._endgame(source)

    def _full_serves(self) -> bool:
        """True unless every peer holding everything is resting after refusing us
        and has delivered nothing for ``patience``: an "all" that is not being
        honoured (a busy answer forever, perhaps after one chunk) must not keep
        the fallback closed."""
        if not self._resting:
            return True
        resting, now = self._resting, self._now
        recent = now - self.config.patience
        return any(
            has is None
            and self.stats[s].banned is None
            and (resting.get(s, 0) <= now or self._delivered.get(s, -1.0) >= recent)
            for s, has in self._has.items()
            if s not in self.fallback
        )

    def _stalled(self) -> bool:
        """True when no peer has delivered a chunk for ``max_stall``."""
        return self._progress is not None and self._now - self._progress >= self.config.max_stall

    def _unwait(self, index: int) -> None:
        """Chunk ``index`` left the queue (started or verified): nobody offers it."""
        if index in self._waiting:
            self._waiting.discard(index)
            if self._rarity[index]:
                for avail in self._avail.values():
                    avail.discard(index)

    def _for_fallback(self) -> list[int]:
        """Chunks to ask a fallback for: no peer holds them, no neighbour claims
        them, and (for a mirror) this node is their designated fetcher, unless it
        has been idle past its patience."""
        rarity, claimed = self._rarity, self._claimed
        if self._stalled():
            # What the peers claim is not reaching us: any missing chunk.
            self._patient = True
            return list(self._waiting)
        if self._mine is None:
            pool = self._waiting - self._seeded
            return [i for i in pool if not rarity[i] and not claimed[i]]
        idle = self._idle_since is not None and self._now - self._idle_since >= self.config.patience
        if idle and not self._inflight:
            # Nothing from anyone for a while: any chunk no peer holds, claimed
            # or not (a claimant may be lying, or gone).
            self._patient = True
            return [i for i in self._waiting if not rarity[i]]
        pool = (self.designated() & self._waiting) - self._seeded
        return [i for i in pool if not rarity[i] and not claimed[i]]

    def _endgame(self, source: str) -> int | None:
        """Duplicate the in-flight chunk with the fewest copies that ``source`` holds."""
        has = self._has[source]
        best = None
        young = self._now - self.config.endgame_after
        for (s, index), request in self._inflight.items():
            if s == source or self._copies[index] >= self.config.max_copies:
                continue
            if request.started > young:
                continue  # it may well finish before a copy would
            if has is not None and not has[index]:
                continue
            if (source, index) in self._inflight:
                continue
            if best is None or self._copies[index] < self._copies[best]:
                best = index
        return best

    def too_slow(self, now: float) -> list[tuple[str, int]]:
        """Requests to abandon for being too slow; report each with :meth:`failed`.
        Called now and then: each call accrues, to every request, its share
        of its source's floor since the last call. Requests in flight to one
        source share its floor: two to a mirror whose uplink is capped at
        twice the floor get the floor each, and are not slow. And all of
        them share this node's link (ADR 27): none owes more than a quarter of
        an even share of what arrived since the last call, or less than an
        even share of the floor."""
        slow = []
        last, self._slow_checked = self._slow_checked, now
        arrived, self._arrived_checked = self._arrived - self._arrived_checked, self._arrived
        grace, min_rate, load = self.config.grace, self.config.min_rate, self._load
        inflight = self._inflight
        even = math.inf  # (no view of the link before a first interval: nothing in flight)
        if last is not None and now > last:
            even = max(min_rate, arrived / (now - last) / 4) / max(len(inflight), 1)
        for key, request in inflight.items():
            since = request.started if last is None or last < request.started else last
            request.owed += (now - since) * min(min_rate / load[key[0]], even)
            if now - request.started > grace and request.received < request.owed:
                slow.append(key)
        return slow

    # -- events ------------------------------------------------------------------

    def received(self, source: str, index: int, nbytes: int) -> None:
        """Bytes arrived for a running request (for the slow-retrieval check)."""
        self._arrived += nbytes
        request = self._inflight.get((source, index))
        if request is not None:
            request.received += nbytes

    def patient(self, source: str, index: int) -> bool:
        """True for a fallback request made after waiting for the peers in vain
        (it tells the origin so: the origin then serves even a seeded chunk)."""
        return (source, index) in self._patient_requests

    def _finish(self, source: str, index: int) -> _Request | None:
        self._patient_requests.discard((source, index))
        request = self._inflight.pop((source, index), None)
        if request is not None:
            if source in self.fallback:
                self._claims_cache = None
            self._load[source] -= 1
            self._counted -= request.counted
            if not self._inflight:
                self._dry -= self.fallback  # idle now: patience may run out
            self._copies[index] -= 1
        return request

    def verified(self, source: str, index: int, nbytes: int, now: float) -> bool:
        """Chunk ``index`` from ``source`` verified. False if another copy won first."""
        request = self._finish(source, index)
        stats = self.stats[source]
        if request is not None:
            stats.busy_seconds += max(now - request.started, 1e-6)
        stats.bytes += nbytes
        stats.chunks += 1
        self._measured.add(source)
        stats.consecutive_failures = 0
        self._delivered[source] = now
        if stats.chunks % 8 == 1:
            self._order = None  # re-rank by rate now and then
        if index in self.have:
            return False
        if self._designated is None or index in self._designated:
            self._claims_cache = None
        self.have.add(index)
        self._have_mask |= 1 << index
        if source not in self.fallback:  # the stall clock, at the floor's rate (max_stall)
            behind = now - self.config.max_stall
            since = behind if self._progress is None else max(self._progress, behind)
            self._progress = min(now, since + nbytes / self.config.min_rate)
        self._unwait(index)
        if self._copies[index]:
            for key in [k for k in self._inflight if k[1] == index]:
                self._finish(*key)  # endgame copies that lost: the caller abandons them
        return True

    def rejected(self, source: str, index: int, reason: str) -> None:
        """Chunk ``index`` from ``source`` failed verification: the source is banned."""
        self._finish(source, index)
        stats = self.stats[source]
        stats.failures += 1
        stats.last_error = reason
        if stats.left:  # dropped first ("not held there"), and it lied all the same
            stats.left, stats.banned = False, f"sent a bad chunk ({reason})"
        self._ban(source, f"sent a bad chunk ({reason})")
        self._requeue(index)

    def failed(self, source: str, index: int, reason: str) -> None:
        """A request failed (network error, HTTP error, too slow): try elsewhere."""
        self._finish(source, index)
        stats = self.stats[source]
        stats.failures += 1
        stats.consecutive_failures += 1
        stats.last_error = reason
        if stats.consecutive_failures >= self.config.max_failures:
            self._ban(source, f"failed {stats.consecutive_failures} times in a row ({reason})")
        self._requeue(index)

    def refused(
        self, source: str, index: int, until: float, *, seeded: bool = False, reason: str = ""
    ) -> None:
        """``source`` declined chunk ``index`` without failing; ask it again at ``until``.

        ``seeded``: it gave the chunk to another mirror, so this one (a mirror:
        ``me`` given) waits for its peers to hold it (or for its patience to
        run out). Only the fallback (the origin) seeds, and nobody seeds an end
        user: from anyone else, and for one, it is a busy answer (a source
        saying so must not be asked again at once, for ever: a neighbour that
        claimed every chunk and said "seeded" to each request kept a mirror's
        fallback closed, and was asked again at once, until the stall rule).
        """
        self._finish(source, index)
        if reason:
            self.stats[source].last_error = reason
        if seeded and self.me is not None and source in self.fallback:
            self._seeded.add(index)
        else:
            self._resting[source] = until
        self._requeue(index)

    def drop(self, source: str, reason: str) -> None:
        """``source`` left (a peer that went away), or does not hold what is
        asked (a mirror of some projects): stop asking it, at no fault."""
        stats = self.stats.get(source)
        if stats is not None and stats.banned is None:
            stats.left = True
        self._ban(source, reason)

    def _ban(self, source: str, reason: str) -> None:
        stats = self.stats.get(source)
        if stats is None or stats.banned is not None:
            return  # never a source, or banned already
        stats.banned = reason
        self._order = None
        self._forget(source)
        if self._mine is not None and source not in self.fallback:
            self._designate()
        for key in [k for k in self._inflight if k[0] == source]:
            self._finish(*key)  # the caller abandons them when it sees the ban
            self._requeue(key[1])

    def _requeue(self, index: int) -> None:
        if index not in self.have and not self._copies[index]:
            if index not in self._waiting:
                self._waiting.add(index)
                for source in self._holders(index):
                    self._avail[source].add(index)
            if self._dry:  # sources holding it have something to give again
                self._dry -= self.fallback
                self._dry.difference_update(self._holders(index))

    def _holders(self, index: int) -> list[str]:
        """The usable sources holding some chunks that hold chunk ``index``."""
        if not self._rarity[index]:
            return []
        return [source for source, has in self._live.items() if has[index]]

    def reasons(self) -> dict[str, str]:
        """Why each source stopped being useful (for the final error message)."""
        return {
            name: stats.banned or stats.last_error or "no answer"
            for name, stats in self.stats.items()
        }


def chunk_mask(indices: Iterable[int]) -> int:
    """The bitmask of chunks ``indices``: bit i for chunk i (have-records carry these)."""
    mask = 0
    for index in indices:
        mask |= 1 << index
    return mask


def set_bits(mask: int) -> list[int]:
    """The chunks of bitmask ``mask`` (not negative), lowest first."""
    digits = bin(mask)[:1:-1]  # least significant first, without the "0b"
    indices = []
    index = digits.find("1")
    while index >= 0:
        indices.append(index)
        index = digits.find("1", index + 1)
    return indices


def _held_indices(has: bytearray) -> list[int]:
    """The chunks a byte-per-chunk record marks as held, lowest first."""
    indices = []
    index = has.find(1)
    while index >= 0:
        indices.append(index)
        index = has.find(1, index + 1)
    return indices


def _rarest(candidates: Collection[int], rarity: list[int], rank: list[int]) -> int:
    """The candidate with the fewest holders, the lowest ``rank`` among equals
    (a loop: there are few, often one). Ranks are below ``len(rank)``."""
    best = -1
    lowest = 0
    count = len(rank)
    for index in candidates:
        key = rarity[index] * count + rank[index]
        if best < 0 or key < lowest:
            best, lowest = index, key
    return best


def _highest(a: array[int], b: array[int]) -> array[int]:
    """The element-wise maximum of two arrays of weights."""
    return array("q", [x if x > y else y for x, y in zip(a, b, strict=True)])


#: Weights are CRC-32s, kept in arrays: a thousand of them as Python ints take
#: 40 KiB, and a simulation of a thousand mirrors has a thousand names.
_NO_WEIGHTS: Final = array("q", [-1])
_WEIGHTS: dict[tuple[str, int], array[int]] = {}
_WEIGHTS_HELD = 0  # the weights in _WEIGHTS, all names together
#: 32 MiB of weights: a simulated network of 1,000 mirrors and 1,024 chunks
#: holds a quarter of it.
_MAX_WEIGHTS_HELD: Final = 4 << 20
_INDICES: dict[int, tuple[int, ...]] = {}


def chunk_indices(count: int) -> tuple[int, ...]:
    """``0..count-1``, the same int objects for every scheduler of ``count`` chunks.

    Sets of chunk indices are compared and probed across schedulers (a peer's
    have-record against this node's queue); CPython compares ints above 256
    by value, a slower path of every probe, unless they are the same object.
    """
    indices = _INDICES.get(count)
    if indices is None:
        if len(_INDICES) > 16:  # a handful of blobs replicate at once
            _INDICES.clear()
        indices = _INDICES[count] = tuple(range(count))
    return indices


def weights(name: str, count: int) -> array[int]:
    """Rendezvous weights of ``name`` for chunks ``0..count-1`` (the same on every node)."""
    key = (name, count)
    cached = _WEIGHTS.get(key)
    if cached is None:
        seed = zlib.crc32(name.encode() + b"/")
        cached = array("q", [zlib.crc32(b"%d" % i, seed) for i in range(count)])
        # Bounded by weights held, not names: peers' names come from peers,
        # and a 64 GiB blob's 65,536 chunks weigh 512 KiB a name.
        global _WEIGHTS_HELD
        if _WEIGHTS_HELD + count > _MAX_WEIGHTS_HELD:
            _WEIGHTS.clear()
            _WEIGHTS_HELD = 0
        _WEIGHTS[key] = cached
        _WEIGHTS_HELD += count
    return cached
