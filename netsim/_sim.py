"""A deterministic discrete-event simulation of one release replicating.

Every mirror runs the real :class:`~tufmesh.client.ChunkScheduler`, configured
as the mirror daemon configures it (its URL as its name, the origin as the
fallback, a random chunk order, the fallback closed until the first round of
have-queries). The simulator only plays the network around it:

* **Links** are flows, not packets. Each node's uplink and downlink are
  shared equally among the transfers crossing them (processor sharing, with
  one virtual clock per link); a transfer ends once both its sender's uplink
  and its receiver's downlink have carried its bytes, plus one round trip.
* **Announcements** travel the GossipSub mesh (``gossip_degree`` random
  peers, per-hop latency plus processing); hostile nodes do not relay them. A
  mirror then spends ``metadata_rtts`` round trips on metadata and starts.
* **Have-records** are read from each neighbour every
  :data:`~tufmesh.mirror._swarm.POLL` seconds plus the slowest neighbour's
  round trip (the daemon asks each neighbour on its own, POLL after its
  answer: the same on homogeneous links, and a little sooner for the near
  neighbours of a mixed network); a neighbour that does not answer three
  rounds in a row is dropped. A query names the release, so a
  neighbour that has not heard of it (its gossip peers are liars) starts.
* **Chunks** are checked with the real manifest code: each chunk has a small
  stand-in content with a real BLAKE3 digest, and a hostile sender's chunk is
  a corrupted copy that must fail it.
* **Adversaries** claim to hold everything and then corrupt, withhold, or
  trickle (1 KiB/s); **churn** takes mirrors offline mid-release (their
  transfers fail) and brings them back with the chunks they had verified.

Same scenario and seed, same events in the same order, same result: one
seeded random generator, ties in time broken by a sequence number.
"""

from __future__ import annotations

import gc
import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from tufmesh.cas import build_manifest
from tufmesh.client import ChunkScheduler, SchedulerConfig
from tufmesh.errors import ChunkRejectedError, UsageError
from tufmesh.mirror._server import next_sync
from tufmesh.mirror._swarm import MAX_QUERY_FAILURES, POLL
from tufmesh.netsim._scenario import Scenario
from tufmesh.origin._seeding import SeedGate, slots_within

__all__ = ["Result", "simulate"]

ORIGIN: Final = "origin"
#: How often a mirror checks its requests for slow retrieval (the daemon: 0.1 s;
#: the check bites only after the scheduler's 3 s grace, so 1 s is close enough).
TICK: Final = 1.0
#: A trickling sender's rate.
TRICKLE: Final = 1024.0
#: The poll a mirror falls back on when no announcement reaches it.
FALLBACK_POLL: Final = 60.0

# Event kinds.
_START, _ROUND, _LINK, _DELIVER, _TICK, _LEAVE, _JOIN, _REFUSED = range(8)


class _Link:
    """One direction of one node's link, shared equally by its transfers."""

    __slots__ = ("cap", "heap", "n", "next_at", "t", "v", "version")

    def __init__(self, cap: float) -> None:
        self.cap = cap
        self.n = 0  # transfers crossing it
        self.v = 0.0  # bytes each of them has been given so far (virtual time)
        self.t = 0.0
        # The transfers whose last byte it must report, by virtual finish: an
        # uplink's all, a downlink's those whose uplink is already done.
        self.heap: list[tuple[float, int, _Flow]] = []
        self.version = 0
        self.next_at = math.inf  # when the queued wake-up fires

    def advance(self, now: float) -> None:
        if self.n:
            self.v += self.cap / self.n * (now - self.t)
        self.t = now

    def carried(self) -> float:
        """The virtual finish up to which a transfer counts as carried: within
        a millionth of a byte per megabyte, so that float rounding never leaves
        one a hair short, forever rescheduled at "now"."""
        return self.v + 1e-3 + self.v * 1e-12


class _Flow:
    __slots__ = (
        "counted", "dead", "dst", "index", "kind", "reported", "sides", "size", "src", "started",
        "tags",
    )  # fmt: skip

    def __init__(
        self, src: _Node, dst: _Node, index: int, size: int, kind: str, now: float
    ) -> None:
        self.src, self.dst, self.index, self.size, self.kind = src, dst, index, size, kind
        self.started = now
        self.tags = [0.0, 0.0]  # virtual finish on the uplink, on the downlink
        self.sides = 0  # links that have carried every byte
        self.counted = False
        self.dead = False
        self.reported = 0  # bytes told to the receiver's scheduler


@dataclass(eq=False, slots=True)
class _Node:
    name: str
    up: _Link
    down: _Link
    latency: float
    behaviour: str | None = None  # hostile: corrupt, withhold, trickle
    neighbours: list[_Node] = field(default_factory=list)
    online: bool = True
    scheduler: ChunkScheduler | None = None
    log: list[int] = field(default_factory=list)  # verified chunks, in order
    seen: dict[str, int] = field(default_factory=dict)  # neighbour -> log entries read
    silent: dict[str, int] = field(default_factory=dict)  # neighbour -> rounds unanswered
    flows: dict[tuple[str, int], _Flow] = field(default_factory=dict)  # requests in flight
    # ...and those a source declined, whose answer is on its way (no flow):
    # every request the scheduler has in flight is one or the other.
    declined: int = 0
    # Uploads in progress (a dict: in the order they started, never in the
    # order of object addresses, which differ from run to run).
    serving: dict[_Flow, None] = field(default_factory=dict)
    started: float | None = None
    done: float | None = None
    ticking: bool = False
    rounds: int = 0  # bumped on leave, so stale rounds die
    received: int = 0
    announced: float = math.inf
    gate: SeedGate | None = None  # who it serves now (the origin: seeding; mirrors: slots)
    round_time: float = POLL  # a have-query round: the poll, plus its slowest round trip
    # A round reads only the neighbours whose have-record changed since it
    # last read them (what it would read of the others is what it read
    # before): each node counts the changes of its own record, and remembers
    # the count of each neighbour's it read last (compared at the reader's
    # round, not pushed to every neighbour at each change: a change touched
    # eight other nodes' objects, rarely still in the CPU's cache). Every
    # ninth round, and while a neighbour is offline, it reads them all.
    version: int = 0
    read: list[int] = field(default_factory=list)  # per neighbour, in order
    dirty: bool = True  # read them all next round
    quiet: int = 0  # rounds since the last full read


@dataclass
class Result:
    """What a simulation measured (times in simulated seconds since the commit)."""

    scenario: Scenario
    completion: list[float]  # per honest mirror, sorted; inf if it never completed
    lower_bound: float
    #: What churn alone adds to the bound (0: nothing): see :func:`churn_floor`.
    churn_floor: float
    origin_bytes: int
    duplicate_bytes: int
    chunks_rejected: int
    corrupt_accepted: int
    bans: int  # hostile sources a mirror banned (once per mirror, per start)
    banned_peers: int  # hostile peers some mirror banned
    dropped: int  # honest ones it stopped asking (gone, unreachable)
    events: int
    announce_last: float
    honest: int
    rejoined_complete: int
    rejoined: int

    @property
    def all_done(self) -> float:
        """Time until every honest mirror holds the release."""
        return max(self.completion) if self.completion else 0.0

    def percentile(self, p: float) -> float:
        """Completion time below which ``p`` percent of honest mirrors finished."""
        ordered = self.completion
        return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def lower_bound(origin_up: float, ups: list[float], downs: list[float], size: int) -> float:
    """max(F/u_origin, F/d_min, N*F/(u_origin + sum u_i)): no schedule beats it."""
    n = len(ups)
    return max(size / origin_up, size / min(downs), n * size / (origin_up + sum(ups)))


def churn_floor(size: int, downtime: float, leaving: list[tuple[float, float]]) -> float:
    """The latest completion churn forces: a mirror made to leave (at ``t``, of
    ``(t, downlink)`` in ``leaving``) before its own downlink could have brought
    it the release is incomplete then however well the rest go, and cannot
    hold it before ``size / downlink + downtime``."""
    return max((size / down + downtime for t, down in leaving if t < size / down), default=0.0)


def simulate(scenario: Scenario, progress: Callable[[int, int], None] | None = None) -> Result:
    """Run ``scenario``; ``progress(done, honest)`` is called as mirrors complete."""
    # A run holds millions of long-lived containers (have-records, heaps) and
    # makes no garbage cycles while it runs; the cyclic collector would only
    # rescan them, again and again (a seventh of a 1,000-mirror, 1 GiB run).
    # The cycles of the finished run are collected once it is enabled again.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _Simulation(scenario, progress).run()
    finally:
        if collecting:
            gc.enable()


class _Simulation:
    def __init__(self, sc: Scenario, progress: Callable[[int, int], None] | None) -> None:
        self.sc = sc
        self.progress = progress
        self.rng = random.Random(sc.seed)  # noqa: S311 (a simulation, not secrets)
        self.queue: list[tuple[float, int, int, Any]] = []
        self.seq = 0
        self.now = 0.0
        self.count = sc.chunks
        self.chunk = [min(sc.chunk_size, sc.size - i * sc.chunk_size) for i in range(self.count)]
        # Stand-in chunk contents with a real manifest: the verification path runs.
        self.contents = [i.to_bytes(8, "big") for i in range(self.count)]
        self.manifest = build_manifest(self.contents, chunk_size=8)
        self.origin_bytes = 0
        self.rejected = 0
        self.corrupt_accepted = 0
        self.bans = 0
        self.banned_peers: set[str] = set()
        self.dropped = 0
        self.events = 0
        self.rejoined: set[str] = set()
        self.rejoined_complete = 0

        self.refusals = 0
        self._build()

    # -- set-up ------------------------------------------------------------------

    def _draw(self) -> tuple[float, float, float]:
        classes = self.sc.classes
        link = self.rng.choices(classes, weights=[c.weight for c in classes])[0]
        return (
            self.rng.uniform(*link.up),
            self.rng.uniform(*link.down),
            self.rng.uniform(*link.latency),
        )

    def _build(self) -> None:
        sc, rng = self.sc, self.rng
        up, down, latency = self._draw()
        self.origin = _Node(ORIGIN, _Link(sc.origin_rate), _Link(down), latency)
        hostile = sc.hostile
        self.mirrors: list[_Node] = []
        for i in range(sc.mirrors):
            up, down, latency = self._draw()
            behaviour = sc.behaviours[i % len(sc.behaviours)] if i < hostile else None
            self.mirrors.append(_Node(f"m{i}", _Link(up), _Link(down), latency, behaviour))
        rng.shuffle(self.mirrors)  # hostile nodes anywhere in the graph
        self.by_name = {n.name: n for n in [self.origin, *self.mirrors]}
        self.origin.gate = SeedGate()  # the origin's, as its HTTP server runs it
        for node in self.mirrors:
            if node.behaviour is None and sc.upload_slots:
                node.gate = SeedGate(
                    slots=slots_within(sc.upload_slots, node.up.cap),  # as for --max-upload-rate
                    window=0.0,
                    retry=POLL,
                    max_bytes=sc.upload_bytes or None,
                )
        self.honest = [n for n in self.mirrors if n.behaviour is None]
        # Have-record neighbours: a random graph of the given degree.
        graph = self._random_graph(self.mirrors, min(sc.degree, sc.mirrors - 1))
        for node in self.mirrors:
            node.neighbours = graph[node.name]
            slowest = max((p.latency for p in node.neighbours), default=0.0)
            node.round_time = POLL + 2 * (node.latency + slowest)
        self._announce()
        leaving: list[tuple[float, float]] = []
        for node in self.honest:
            if rng.random() < sc.churn:
                leaving.append((self._leave_time(node), node.down.cap))
                self._at(leaving[-1][0], _LEAVE, node)
            self._at(node.announced + self._metadata_time(node), _START, node)
        self.bound = lower_bound(
            self.origin.up.cap,
            [n.up.cap for n in self.honest],
            [n.down.cap for n in self.honest],
            sc.size,
        )
        self.churn_floor = churn_floor(sc.size, sc.downtime, leaving)
        if max(self.bound, self.churn_floor) > sc.horizon:
            raise UsageError(
                f"no network could finish within the horizon ({sc.horizon:g} s): the lower "
                f"bound is {max(self.bound, self.churn_floor):,.0f} s (faster links, or a "
                "longer horizon: 'horizon' in a --scenario file)"
            )

    def _random_graph(self, nodes: list[_Node], degree: int) -> dict[str, list[_Node]]:
        """Each node links to ``degree`` random others (links are mutual)."""
        edges: dict[str, list[_Node]] = {n.name: [] for n in nodes}
        for node in nodes:
            wanted = degree - len(edges[node.name])
            if wanted <= 0:
                continue
            for other in self.rng.sample(nodes, min(len(nodes), degree * 2 + 1)):
                if wanted <= 0:
                    break
                if other is node or other in edges[node.name]:
                    continue
                edges[node.name].append(other)
                edges[other.name].append(node)
                wanted -= 1
        return edges

    def _announce(self) -> None:
        """When each mirror hears the announcement: shortest paths over the mesh."""
        sc = self.sc
        mesh = self._random_graph(self.mirrors, min(sc.gossip_degree, sc.mirrors - 1))
        first = self.rng.sample(self.mirrors, min(sc.gossip_degree, sc.mirrors))
        heap = [
            (self.origin.latency + m.latency + sc.gossip_hop, i, m) for i, m in enumerate(first)
        ]
        heapq.heapify(heap)
        seq = len(heap)
        while heap:
            t, _, node = heapq.heappop(heap)
            if t >= node.announced:
                continue
            node.announced = t
            if node.behaviour is not None:
                continue  # hostile nodes do not relay
            for other in mesh[node.name]:
                arrival = t + node.latency + other.latency + sc.gossip_hop
                if arrival < other.announced:
                    seq += 1
                    heapq.heappush(heap, (arrival, seq, other))
        for node in self.mirrors:
            if math.isinf(node.announced):  # cut off from the mesh: the poll finds it
                node.announced = self.rng.uniform(0, FALLBACK_POLL)

    def _metadata_time(self, node: _Node) -> float:
        """From hearing of a release to the first chunk request: the metadata's round trips."""
        return self.sc.metadata_rtts * 2 * (node.latency + self.origin.latency)

    def _leave_time(self, node: _Node) -> float:
        size = self.sc.size
        rough = size / max(node.down.cap, 1.0) + size / max(node.up.cap, 1.0)
        return self.rng.uniform(0, max(rough, 1.0))

    # -- the event loop ----------------------------------------------------------------

    def _at(self, t: float, kind: int, subject: Any) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (t, self.seq, kind, subject))

    def run(self) -> Result:
        handlers: dict[int, Callable[[Any], bool]] = {
            _START: self._start,
            _ROUND: self._round,
            _LINK: self._link_event,
            _DELIVER: self._deliver,
            _TICK: self._tick,
            _LEAVE: self._leave,
            _JOIN: self._join,
            _REFUSED: self._refused,
        }
        remaining = len(self.honest)
        queue = self.queue
        while queue and remaining:
            t, _, kind, subject = heapq.heappop(queue)
            if t > self.sc.horizon:
                break
            self.now = t
            self.events += 1
            if handlers[kind](subject):
                remaining -= 1
                if self.progress is not None:
                    self.progress(len(self.honest) - remaining, len(self.honest))
        return self._result()

    # -- mirrors -------------------------------------------------------------------

    def _new_scheduler(self, node: _Node) -> ChunkScheduler:
        config = SchedulerConfig(seed=self.rng.getrandbits(64))
        scheduler = ChunkScheduler(
            self.count, [], config, have=set(node.log), fallback={ORIGIN}, me=node.name
        )
        scheduler.add_source(ORIGIN)
        scheduler.fallback_open = False
        return scheduler

    def _start(self, node: _Node) -> bool:
        if not node.online or node.scheduler is not None:
            return False
        node.started = self.now
        node.scheduler = self._new_scheduler(node)
        node.declined = 0
        node.dirty = True
        self._touch(node)
        self._at(self.now, _ROUND, (node, node.rounds))
        return False

    @staticmethod
    def _touch(node: _Node) -> None:
        """``node``'s have-record changed: its neighbours' next rounds read it."""
        node.version += 1

    def _round(self, subject: tuple[_Node, int]) -> bool:
        """One round of have-queries (what the daemon's ``Swarm.follow`` does)."""
        node, rounds = subject
        scheduler = node.scheduler
        if rounds != node.rounds or scheduler is None or node.done is not None:
            return False
        neighbours = node.neighbours
        if node.dirty or node.quiet >= 8:
            node.dirty, node.quiet = False, 0
            node.read = [p.version for p in neighbours]
            self._read_neighbours(node, scheduler, neighbours)
        else:
            node.quiet += 1
            read, peers = node.read, []
            for i, peer in enumerate(neighbours):
                if peer.version != read[i]:
                    read[i] = peer.version
                    peers.append(peer)
            if peers:
                self._read_neighbours(node, scheduler, peers)
        scheduler.fallback_open = True
        self._pump(node)
        if not node.flows and not node.declined and scheduler.stuck:
            return self._given_up(node)
        self._at(self.now + node.round_time, _ROUND, subject)
        return False

    def _given_up(self, node: _Node) -> bool:
        """Every source of ``node`` dropped: its download gives up ("every
        source failed") and its mirror syncs again when the daemon would, with
        a new scheduler, its neighbours asked afresh (what it holds kept)."""
        self._count_bans(node)
        node.scheduler = None
        node.rounds += 1
        node.seen.clear()
        node.silent.clear()
        wait = next_sync(FALLBACK_POLL, 0, 1, self.now - node.announced)
        self._at(self.now + wait + self._metadata_time(node), _START, node)
        return False

    def _read_neighbours(self, node: _Node, scheduler: ChunkScheduler, peers: list[_Node]) -> None:
        silent, seen_by = node.silent, node.seen
        for peer in peers:
            name = peer.name
            if not peer.online:
                node.dirty = True  # count the silent rounds
                silent[name] = count = silent.get(name, 0) + 1
                if count == MAX_QUERY_FAILURES:
                    scheduler.drop(name, "have-queries failed")
                continue
            if silent.get(name):
                silent[name] = 0
            if peer.scheduler is None and peer.behaviour is None:
                self._hint(node, peer)
            seen = seen_by.get(name)
            if seen is None:  # the first answer
                if peer.behaviour is not None:
                    scheduler.add_source(name)  # it claims to hold everything
                    seen_by[name] = 0
                    continue
                if peer.scheduler is None and not peer.log:
                    continue  # it has not started: nothing to say about this blob
                scheduler.add_source(name, has=())
                self._touch(node)  # a new neighbour: its own designations changed
                seen = seen_by[name] = 0
            elif peer.behaviour is not None:
                continue
            log = peer.log
            if len(log) > seen:
                scheduler.add_have(name, log[seen:])
                seen_by[name] = len(log)
            peer_scheduler = peer.scheduler
            if peer_scheduler is not None and peer.done is None:
                scheduler.set_claims(name, peer_scheduler.claims())
            else:
                scheduler.set_claims(name, 0)

    def _hint(self, node: _Node, peer: _Node) -> None:
        """``node``'s have-query names the release: ``peer``, if it has not heard
        of it yet (a gossip mesh of liars), syncs at once (``Swarm.on_newer``)."""
        heard = self.now + node.latency + peer.latency
        if heard < peer.announced and peer.done is None:
            peer.announced = heard
            self._at(heard + self._metadata_time(peer), _START, peer)

    def _pump(self, node: _Node) -> None:
        """Start the requests the scheduler asks for."""
        scheduler = node.scheduler
        assert scheduler is not None
        for _ in range(8):  # refused connections fail at once; a few retries
            refused = []
            for source, index in scheduler.assign(self.now):
                peer = self.by_name[source]
                if not peer.online:
                    refused.append((source, index))
                    continue
                self._open(peer, node, index)
            for source, index in refused:
                scheduler.failed(source, index, "connection refused")
            if not refused:
                break
        if node.flows and not node.ticking:
            node.ticking = True
            self._at(self.now + TICK, _TICK, node)

    def _open(self, src: _Node, dst: _Node, index: int) -> None:
        if src is self.origin:
            self._touch(dst)  # its claims changed
        if src.gate is not None:
            assert dst.scheduler is not None
            patient = dst.scheduler.patient(src.name, index)
            verdict = src.gate.admit(
                index, self.now, patient=patient, size=self.chunk[index], requester=dst.name
            )
            if verdict != "serve":
                self.refusals += 1
                dst.declined += 1
                rtt = 2 * (src.latency + dst.latency)
                retry = src.gate.retry_after(self.now, verdict)
                self._at(self.now + rtt, _REFUSED, (dst, dst.scheduler, src, index, verdict, retry))
                return
        kind = src.behaviour or "honest"
        flow = _Flow(src, dst, index, self.chunk[index], kind, self.now)
        dst.flows[(src.name, index)] = flow
        src.serving[flow] = None
        if kind in ("honest", "corrupt"):
            self._join_links(flow)
        elif kind == "trickle":
            self._at(
                self.now + flow.size / TRICKLE + 2 * (src.latency + dst.latency), _DELIVER, flow
            )

    # -- links ------------------------------------------------------------------

    def _join_links(self, flow: _Flow) -> None:
        """Start ``flow`` on its sender's uplink and its receiver's downlink.

        The uplink watches it (a wake-up when it has carried every byte); the
        downlink only once the uplink is done (:meth:`_link_event`): where the
        downlink is the faster side, as it usually is, it needs no events."""
        now = self.now
        up, down = flow.src.up, flow.dst.down
        down.advance(now)
        down.n += 1
        flow.tags[1] = down.v + flow.size
        up.advance(now)
        up.n += 1
        flow.tags[0] = tag = up.v + flow.size
        self.seq += 1
        heapq.heappush(up.heap, (tag, self.seq, flow))
        # Everyone else on the link now finishes later: the wake-up already
        # queued comes early (it re-plans), unless this flow ends first.
        if now + flow.size * up.n / up.cap < up.next_at:
            self._reschedule(up)
        flow.counted = True

    def _leave_links(self, flow: _Flow, replanned: _Link | None = None) -> None:
        """Take ``flow`` off both its links; each re-plans its next wake-up, but
        ``replanned``, whose caller does that once it is done."""
        if not flow.counted:
            return
        flow.counted = False
        for link in (flow.src.up, flow.dst.down):
            link.advance(self.now)
            link.n -= 1
            if link is not replanned:
                self._reschedule(link)

    def _reschedule(self, link: _Link) -> None:
        heap = link.heap
        while heap and heap[0][2].dead:
            heapq.heappop(heap)
        link.version += 1
        link.next_at = math.inf
        if heap and link.n:
            wait = max(0.0, heap[0][0] - link.v) * link.n / link.cap
            if self.now + wait <= self.now:  # below the clock's resolution: done now
                wait = 1e-9 * max(1.0, self.now)
            link.next_at = self.now + wait
            self._at(link.next_at, _LINK, (link, link.version))

    def _link_event(self, subject: tuple[_Link, int]) -> bool:
        link, version = subject
        if version != link.version:
            return False
        link.advance(self.now)
        heap = link.heap
        finished = []
        done = link.carried()
        while heap and heap[0][0] <= done:
            flow = heapq.heappop(heap)[2]
            if not flow.dead:
                finished.append(flow)
        for flow in finished:
            flow.sides += 1
            if flow.sides == 1:  # the uplink carried it; has the downlink?
                down = flow.dst.down
                down.advance(self.now)
                if flow.tags[1] > down.carried():
                    self.seq += 1
                    heapq.heappush(down.heap, (flow.tags[1], self.seq, flow))
                    self._reschedule(down)
                    continue
                flow.sides = 2
            # Both links carried it: the last byte is on its way.
            self._leave_links(flow, replanned=link)
            rtt = 2 * (flow.src.latency + flow.dst.latency)
            self._at(self.now + rtt, _DELIVER, flow)
        self._reschedule(link)
        return False

    def _progress(self, flow: _Flow) -> int:
        """Bytes of ``flow`` the receiver has so far."""
        if flow.kind == "trickle":
            return int((self.now - flow.started) * TRICKLE)
        if flow.kind == "withhold" or not flow.counted:
            return 0 if flow.kind == "withhold" else flow.size
        done = flow.size
        for side, link in enumerate((flow.src.up, flow.dst.down)):
            link.advance(self.now)
            done = min(done, int(flow.size - max(0.0, flow.tags[side] - link.v)))
        return max(0, done)

    def _cancel(self, flow: _Flow) -> None:
        """Abandon a transfer; the bytes it moved are wasted."""
        if flow.dead:
            return
        moved = self._progress(flow)
        flow.dead = True  # before its links re-plan: they drop it
        self._leave_links(flow)
        self._end(flow, moved, completed=False)

    def _end(self, flow: _Flow, moved: int, *, completed: bool) -> None:
        """``flow`` is over, delivered or not, ``moved`` bytes having reached its receiver."""
        flow.dead = True
        flow.src.serving.pop(flow, None)
        flow.dst.flows.pop((flow.src.name, flow.index), None)
        flow.dst.received += moved
        if flow.src.gate is not None:
            flow.src.gate.done(flow.index, self.now, completed=completed, requester=flow.dst.name)
        if flow.src is self.origin:
            self.origin_bytes += moved
            self._touch(flow.dst)

    # -- arrivals and failures --------------------------------------------------------

    def _refused(self, subject: tuple[_Node, ChunkScheduler, _Node, int, str, float]) -> bool:
        """The answer to a request a source declined (busy, or seeded elsewhere)."""
        node, scheduler, src, index, verdict, retry = subject
        if node.scheduler is not scheduler or node.done is not None:
            return False  # the mirror restarted or finished meanwhile
        node.declined -= 1
        scheduler.refused(src.name, index, self.now + retry, seeded=verdict == "seeded")
        if src is self.origin:
            self._touch(node)  # its claims changed (a peer's refusal changes nothing they read)
        self._pump(node)  # the source rests until then; the next round's pump asks again
        return False

    def _deliver(self, flow: _Flow) -> bool:
        if flow.dead:
            return False
        self._end(flow, flow.size, completed=True)
        node, source = flow.dst, flow.src.name
        scheduler = node.scheduler
        if scheduler is None:
            return False
        data = self.contents[flow.index]
        if flow.kind != "honest":
            data = bytes(b ^ 0xFF for b in data)  # what a hostile sender sends
        try:
            self.manifest.verify_chunk(flow.index, data)
        except ChunkRejectedError as exc:
            self.rejected += 1
            scheduler.rejected(source, flow.index, str(exc))
            self._drop_stale(node)
            self._pump(node)
            return False
        if data != self.contents[flow.index]:
            self.corrupt_accepted += 1  # must never happen
        if scheduler.verified(source, flow.index, flow.size, self.now):
            node.log.append(flow.index)
            self._touch(node)
        self._drop_stale(node)
        if scheduler.complete:
            return self._complete(node)
        self._pump(node)
        return False

    def _complete(self, node: _Node) -> bool:
        node.done = self.now
        for flow in list(node.flows.values()):
            self._cancel(flow)
        self._count_bans(node)
        if node.name in self.rejoined:
            self.rejoined.discard(node.name)
            self.rejoined_complete += 1
        return True

    def _drop_stale(self, node: _Node) -> None:
        """Cancel transfers the scheduler gave up (a banned source, a lost duplicate)."""
        scheduler = node.scheduler
        assert scheduler is not None
        if scheduler.running == len(node.flows) + node.declined:
            return  # nothing given up (the common case: skip the comparison)
        running = set(scheduler.inflight())
        for key in [k for k in node.flows if k not in running]:
            self._cancel(node.flows[key])

    def _count_bans(self, node: _Node) -> None:
        """Add the sources ``node``'s scheduler banned (at completion, or when it
        leaves): hostile ones to the bans, honest ones (gone, unreachable) apart."""
        if node.scheduler is not None:
            for name, stats in node.scheduler.stats.items():
                if stats.banned is not None:
                    if self.by_name[name].behaviour is None:
                        self.dropped += 1
                    else:
                        self.bans += 1
                        self.banned_peers.add(name)

    def _tick(self, node: _Node) -> bool:
        """The slow-retrieval check of the daemon's download loop."""
        node.ticking = False
        scheduler = node.scheduler
        if scheduler is None or node.done is not None or not node.online:
            return False
        for (source, index), flow in node.flows.items():
            moved = self._progress(flow)
            scheduler.received(source, index, moved - flow.reported)
            flow.reported = moved
        for source, index in scheduler.too_slow(self.now):
            scheduler.failed(source, index, "too slow (slow-retrieval defence)")
            slow = node.flows.get((source, index))
            if slow is not None:
                self._cancel(slow)
        self._drop_stale(node)
        self._pump(node)
        return False

    # -- churn -------------------------------------------------------------------------

    def _leave(self, node: _Node) -> bool:
        if node.done is not None or not node.online:
            return False
        node.online = False
        node.rounds += 1
        self._touch(node)
        for flow in list(node.flows.values()):
            self._cancel(flow)
        for flow in list(node.serving):
            requester = flow.dst
            self._cancel(flow)
            if requester.scheduler is not None and requester.done is None:
                requester.scheduler.failed(flow.src.name, flow.index, "connection reset")
                self._drop_stale(requester)
                self._pump(requester)
        self._count_bans(node)
        node.scheduler = None
        self._at(self.now + self.sc.downtime, _JOIN, node)
        return False

    def _join(self, node: _Node) -> bool:
        node.online = True
        self._touch(node)
        self.rejoined.add(node.name)
        node.seen.clear()  # a restarted daemon asks its neighbours afresh
        self._at(self.now + self._metadata_time(node), _START, node)
        return False

    # -- the outcome ---------------------------------------------------------------------

    def _result(self) -> Result:
        sc = self.sc
        honest = self.honest
        completion = sorted(n.done if n.done is not None else math.inf for n in honest)
        for node in honest:
            if node.done is None:
                self._count_bans(node)
        duplicate = sum(n.received for n in honest) - sum(
            sum(self.chunk[i] for i in set(n.log)) for n in honest
        )
        return Result(
            scenario=sc,
            completion=completion,
            lower_bound=max(self.bound, self.churn_floor),
            churn_floor=self.churn_floor,
            origin_bytes=self.origin_bytes,
            duplicate_bytes=max(0, duplicate),
            chunks_rejected=self.rejected,
            corrupt_accepted=self.corrupt_accepted,
            bans=self.bans,
            banned_peers=len(self.banned_peers),
            dropped=self.dropped,
            events=self.events,
            announce_last=max(n.announced for n in honest) if honest else 0.0,
            honest=len(honest),
            rejoined_complete=self.rejoined_complete,
            rejoined=self.rejoined_complete + len(self.rejoined),
        )
