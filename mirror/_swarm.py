"""Have-records: which chunks each mirror holds while a version replicates.

A mirror asks each neighbour, :data:`POLL` seconds after its last answer
while it fetches a blob, which chunks of that blob it holds (``POST /have``), and answers the
same question for its own blobs, complete or still arriving. The answers
feed the :class:`~tufmesh.client.ChunkScheduler` as sources and have-records;
chunks then flow from whichever neighbour holds them, before any of them has
the whole version, and the origin serves only what no neighbour holds or is
already fetching from it (the ``claims``).

Neighbours are the configured peers plus every mirror that asked us and
every mirror our neighbours name (peer exchange), up to :data:`MAX_NEIGHBOURS`.
A have-record is a hint, never trusted: a peer that claims chunks it does not
have costs a failed request; one that sends bad bytes is banned by the
scheduler, because every chunk is checked against the signed manifest.

Why neighbour queries rather than a Kademlia DHT or gossip: docs/adr/0011.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import random
import re
import socket
import threading
import time
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import trio

from tufmesh._durable import read_exactly
from tufmesh._json import loads
from tufmesh._shares import is_loopback, machine_of
from tufmesh.client import ChunkPlan, ChunkScheduler, set_bits
from tufmesh.client._http import Refused, tls_context
from tufmesh.errors import TufmeshError
from tufmesh.p2p._blob import MAX_RECORD, BlobBusyError

if TYPE_CHECKING:
    import httpx

__all__ = [
    "MAX_NEIGHBOURS",
    "MAX_PER_MACHINE",
    "MAX_UNVERIFIED",
    "POLL",
    "UPLOAD_BYTES",
    "UPLOAD_SLOTS",
    "Partial",
    "Swarm",
    "parse_record",
    "read_at_most",
]

#: Seconds between two have-queries to a neighbour while replicating.
POLL: Final = 0.25
#: Neighbours asked at most; peer exchange keeps the set at this size.
MAX_NEIGHBOURS: Final = 16
#: Neighbours not heard from yet (named as a have-query's sender, or in a
#: neighbour's peer list) hold this many places at most: addresses that never
#: answer cannot crowd out the neighbours that do (docs/threat-model.md).
MAX_UNVERIFIED: Final = 4
#: ...of which those named by one machine (the have-query's asker, or the
#: neighbour whose peer list named them) hold this many, the first named
#: (till they expire: the latest would let one machine have the mirror ask
#: any number of addresses of its choosing): names are free, so one machine
#: naming made-up ones must not hold every place a new neighbour could take.
#: Unanswered names of one machine hold MAX_PER_MACHINE places, and give
#: way to a name that machine gives itself.
MAX_UNVERIFIED_PER_MACHINE: Final = 2
#: ...and each for this long (seconds) unless it answers: asked for records
#: only while this mirror replicates, a name that never answers held its
#: place between releases.
UNVERIFIED_TTL: Final = 60.0
#: Neighbours learnt (not configured) on one machine at most (an IPv6 /64, or
#: a host name): addresses that answer cost an attacker ports, which are
#: free, so without it one host could fill every place (an eclipse: the
#: mirror then fetches everything from the origin). Loopback is not counted.
#: A neighbour's machine is the address its answer came from, not the one
#: its URL names: names are free too (one naming another's machine twice
#: kept that machine out), and a libp2p address is reached over whatever
#: connection its peer id has open. So only neighbours that have answered
#: count here.
MAX_PER_MACHINE: Final = 2
#: A have-query's whole answer must arrive within this (a per-read timeout
#: alone lets a neighbour that sends a byte a second hold its queries forever).
QUERY_TIMEOUT: Final = 2.0
#: A neighbour that fails this many queries in a row is forgotten.
MAX_QUERY_FAILURES: Final = 3
#: Chunk uploads a mirror runs at once for other mirrors; more wait (503 busy).
#: netsim, 1,000 mirrors: 4 slots took 16 MiB chunks from 2.1x to 1.6x the
#: bound and home links from 1.7x to 1.4x, and ended the honest peers'
#: slow-retrieval bans (an uplink split 16 ways trickles).
UPLOAD_SLOTS: Final = 4
#: ...and at most this many bytes of them, so that a big chunk leaves at the
#: uplink's full speed and its receiver can pass it on sooner (store and
#: forward: a hop takes uploads x chunk / uplink). netsim, 1,000 mirrors, one
#: upload at a time was best for 16 MiB chunks (1.37x the bound, against 1.60x
#: with four), two for 4 MiB (1.44x against 1.57x), four for 1 MiB.
UPLOAD_BYTES: Final = 8 << 20


async def in_loop(token: trio.lowlevel.TrioToken, function: Any, *args: Any) -> Any:
    """``await function(*args)`` in the trio loop of ``token`` (another
    thread's), from this loop. Cancelled here, it is cancelled there too: a
    libp2p peer that never answers costs the slow-retrieval limit, not the
    call's own 30 s timeouts, and does not hold a worker thread meanwhile."""
    scope = trio.CancelScope()

    async def call() -> Any:
        with scope:
            return await function(*args)
        raise TufmeshError("cancelled")  # only once the caller has gone

    try:
        # trio-typing's outdated stubs (see P2PNode.run) lack abandon_on_cancel.
        return await trio.to_thread.run_sync(  # type: ignore[call-arg]
            lambda: trio.from_thread.run(call, trio_token=token), abandon_on_cancel=True
        )
    except trio.Cancelled:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(scope.cancel)
        raise


@dataclass
class Partial:
    """A blob being assembled: where its verified chunks are, and which."""

    paths: tuple[Path, ...]  # the .part file, then its name once complete
    chunk_size: int
    length: int
    count: int
    mask: int = 0  # bit i: chunk i verified and written
    claims: int = 0  # bit i: chunk i, fetched from the origin by this mirror (its scheduler says)

    def covers(self, start: int, end: int) -> bool:
        """True when every chunk overlapping bytes ``start..end`` (inclusive) is held."""
        if not 0 <= start <= end < self.length:
            return False
        first, last = start // self.chunk_size, end // self.chunk_size
        wanted = ((1 << (last - first + 1)) - 1) << first
        return self.mask & wanted == wanted


@dataclass
class _Neighbour:
    failures: int = 0
    answered: bool = False  # a have-query of ours has succeeded
    seen: str | None = None  # the machine its last answer came from (None: loopback)
    named_by: str | None = None  # the machine that named it (None: loopback, or configured)
    learnt: float = 0.0  # when (time.monotonic())
    #: The nearest its address may be (its namer's reach, see ``_reach``): a
    #: host name is checked where it resolves, at each query.
    nearest: int = 0


@dataclass
class Swarm:
    """This mirror's view of its neighbours, and of its own partial blobs.

    Shared by the gateway (which answers have-queries and serves verified
    chunks of partial blobs) and the replication running in a worker thread;
    the state they share is replaced whole, never mutated in place.
    """

    url: str | None = None
    peers: list[str] = field(default_factory=list)
    origin: str | None = None
    has_blob: Any = None  # Callable[[str], bool]: the store holds it complete
    #: The daemon's libp2p node: neighbours named ``libp2p:MULTIADDR`` are
    #: asked over ``/tufmesh/have/1`` and fetched from over ``/tufmesh/blob/1``.
    node: Any = None
    #: The newest snapshot version this mirror holds complete (and serves).
    snapshot: int = 0
    #: The snapshot version being replicated now (0: none); have-queries name
    #: it, so that a neighbour that missed the announcement learns of it.
    syncing: int = 0
    #: Called with a newer snapshot version that a neighbour's have-query
    #: names: the daemon then syncs at once. A hint, never trust: the sync
    #: verifies everything, and the daemon limits how often a hint wakes it.
    #: It reaches a mirror whose gossip peers are all silent liars.
    on_newer: Callable[[int], None] | None = None
    #: ``(host, port)`` -> the IP addresses a host name resolves to (None: the system's resolver).
    resolve: Callable[[str, int], Awaitable[list[str]]] | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._neighbours: dict[str, _Neighbour] = {}
        # Per machine, when it named each neighbour not heard from yet that is
        # still within UNVERIFIED_TTL (forgotten or not: one that failed and
        # went must not free its place for the next name at once).
        self._named: dict[str, list[float]] = {}
        self._partial: dict[str, Partial] = {}
        for peer in self.peers:
            self.learn(peer)

    # -- neighbours -------------------------------------------------------------

    def learn(self, url: object, named_by: str | None = None, namer: str | None = None) -> None:
        """Add ``url`` as a neighbour, if it looks like one and there is room
        (``named_by``: the machine that named it, as :func:`_machine_at` says;
        ``namer``: its IP address, None if not known)."""
        if not isinstance(url, str) or not url.startswith(("http://", "https://", "libp2p:/")):
            return
        url = url.rstrip("/")
        if url.startswith("http") and url not in self.peers and not _ORIGIN_URL.fullmatch(url):
            return  # one heard of is scheme://host:port: no path, query or user to aim our POSTs
        if url in (self.url, self.origin) or len(url) > 200 or self._is_me(url):
            return
        if url not in self.peers and _unroutable(url):
            return  # no mirror is there (a cloud's metadata service is: 169.254.169.254)
        if (
            named_by is not None
            and url.startswith("libp2p:")
            and url.split("/")[1:2]
            not in (
                ["ip4"],
                ["ip6"],
            )
        ):
            return  # a learnt libp2p address names an IP address (a name is resolved unchecked)
        if named_by is not None and _reach(_host(url)) < _reach(namer):
            # A machine on the internet names this one's loopback, or a private
            # network's address: no mirror of its own is there, but a service
            # that trusts its network may be (our POSTs would be its requests).
            return
        with self._lock:
            if url in self._neighbours or len(self._neighbours) >= MAX_NEIGHBOURS:
                return
            if url in self.peers:
                self._neighbours[url] = _Neighbour()
                return
            now = time.monotonic()
            unverified = [
                u
                for u, neighbour in self._neighbours.items()
                if u not in self.peers and not neighbour.answered
            ]
            for u in unverified:
                if now - self._neighbours[u].learnt >= UNVERIFIED_TTL:
                    del self._neighbours[u]
            unverified = [u for u in unverified if u in self._neighbours]
            named: list[float] = []
            if named_by == "?":
                return  # named by a machine we cannot tell: nobody's budget to count it in
            if named_by is not None:
                named = [t for t in self._named.get(named_by, ()) if now - t < UNVERIFIED_TTL]
                if len(named) >= MAX_UNVERIFIED_PER_MACHINE:
                    return  # the names it gave first hold their places, till they expire
            machine = _machine(url)
            if machine is not None:
                on = [u for u in unverified if _machine(u) == machine]
                if len(on) >= MAX_PER_MACHINE:
                    # Others' names for a machine give way to its own.
                    theirs = [u for u in on if self._neighbours[u].named_by != machine]
                    if named_by != machine or not theirs:
                        return
                    del self._neighbours[theirs[0]]
                    unverified.remove(theirs[0])
            if len(unverified) < MAX_UNVERIFIED and self._room_on(machine):
                nearest = _reach(namer) if named_by is not None else LOOPBACK
                self._neighbours[url] = _Neighbour(named_by=named_by, learnt=now, nearest=nearest)
                if named_by is not None:
                    self._named[named_by] = [*named, now]
                    if len(self._named) > 4 * MAX_NEIGHBOURS:  # (bounded: the expired go)
                        self._named = {
                            k: v for k, v in self._named.items() if now - v[-1] < UNVERIFIED_TTL
                        }

    def _is_me(self, url: str) -> bool:
        """True if ``url`` names this mirror by another address: one bound to
        loopback or to every address (``--host 0.0.0.0``) is on this
        machine's loopback at its own port too; a libp2p address of its own
        peer ID is its own, whatever the address."""
        if url.startswith("libp2p:/"):
            mine = getattr(self.node, "peer_id", "") or (
                self.url.rsplit("/p2p/", 1)[-1] if self.url and "/p2p/" in self.url else ""
            )
            return bool(mine) and url.rsplit("/p2p/", 1)[-1] == mine
        if self.url is None or not url.startswith("http") or not self.url.startswith("http"):
            return False
        me, other = urlsplit(self.url), urlsplit(url)
        try:
            if (me.scheme, me.port) != (other.scheme, other.port):
                return False
        except ValueError:  # (a port out of range)
            return False
        mine = me.hostname or ""
        return (_reach(mine) == LOOPBACK or _unspecified(mine)) and (
            _reach(other.hostname or "") == LOOPBACK  # (however spelt: 127.1, localhost.)
        )

    def _room_on(self, machine: str | None, besides: str | None = None) -> bool:
        """Whether a learnt neighbour (other than ``besides``) may be on
        ``machine``: where an answer came from, or else what a URL names."""
        if machine is None:
            return True
        same = 0
        for url, neighbour in self._neighbours.items():
            if url != besides and url not in self.peers and neighbour.answered:
                same += neighbour.seen == machine
        return same < MAX_PER_MACHINE

    def neighbours(self) -> list[str]:
        """The neighbours asked for have-records."""
        with self._lock:
            return list(self._neighbours)

    def _answered(self, url: str, address: str | None = None) -> bool:
        """A query succeeded, its answer from IP ``address`` (None: not known):
        the neighbour's failures were not in a row. False if it is learnt and
        that machine holds its share of places already: it is forgotten."""
        seen = _machine_at(address) if address else _machine(url)
        with self._lock:
            neighbour = self._neighbours.get(url)
            if neighbour is None:
                return True
            if url not in self.peers and not self._room_on(seen, besides=url):
                del self._neighbours[url]
                return False
            given = self._named.get(neighbour.named_by or "", [])
            if not neighbour.answered and neighbour.learnt in given:
                given.remove(neighbour.learnt)  # heard from: no longer held against its namer
            neighbour.failures = 0
            neighbour.answered = True
            neighbour.seen = seen
            return True

    async def _pinned(self, url: str) -> tuple[str, str | None]:
        """Where to send a query for ``url``: ``(url, None)``, or for a learnt
        neighbour named by a host name, the URL of an address the name
        resolves to now, with the name (the Host, and the TLS server name).
        Raises :class:`_NearerError` if any address is nearer to us than the
        machine that named it (a name it owns may resolve to our loopback or
        private network: a POST there would be its request to a service that
        trusts its network); the query then goes to the address checked, not
        to whatever the name resolves to at connect time (DNS rebinding)."""
        with self._lock:
            neighbour = self._neighbours.get(url)
        split = urlsplit(url)
        host = split.hostname or ""
        if neighbour is None or neighbour.nearest == LOOPBACK or _ip(host) is not None:
            return url, None  # (an address was judged when learnt)
        port = split.port or (443 if split.scheme == "https" else 80)
        addresses = await (self.resolve or _resolve)(host, port)
        if not addresses:
            raise ValueError(f"{host} resolves to no address")  # a failed query
        near = [a for a in addresses if _reach(a) < neighbour.nearest or _nowhere(a)]
        if near:
            raise _NearerError(
                f"{host} resolves to {near[0]}, nearer to us than the machine that named it"
                if not _nowhere(near[0])
                else f"{host} resolves to {near[0]}, where no mirror is"
            )
        ip = ipaddress.ip_address(addresses[0])
        at = f"[{ip}]" if ip.version == 6 else str(ip)
        return f"{split.scheme}://{at}:{port}", split.netloc

    def _forget(self, url: str) -> None:
        with self._lock:
            if url not in self.peers:
                self._neighbours.pop(url, None)

    def _failed(self, url: str) -> bool:
        """Count a failed query; True when the neighbour is forgotten."""
        with self._lock:
            neighbour = self._neighbours.get(url)
            if neighbour is None:
                return True
            neighbour.failures += 1
            if neighbour.failures >= MAX_QUERY_FAILURES and url not in self.peers:
                del self._neighbours[url]
                return True
            return False

    # -- our own blobs (the gateway's side) ------------------------------------------

    def begin(self, cid: str, partial: Partial) -> None:
        """A blob starts arriving (its verified chunks become servable)."""
        self._partial = {**self._partial, cid: partial}

    def end(self, cid: str) -> None:
        """The blob is in the store (or abandoned): stop serving it as partial."""
        self._partial = {k: v for k, v in self._partial.items() if k != cid}

    def partial(self, cid: str) -> Partial | None:
        """The blob ``cid`` if it is arriving."""
        return self._partial.get(cid)

    def serve_range(self, cid: str, start: int, end: int) -> Path | None:
        """The file holding verified bytes ``start..end`` of arriving blob ``cid``."""
        partial = self._partial.get(cid)
        if partial is None or not partial.covers(start, end):
            return None
        return next((p for p in partial.paths if p.exists()), None)

    def read_range(self, cid: str, offset: int, length: int) -> bytes | None:
        """Verified bytes of an arriving blob (for ``/tufmesh/blob/1``), else None."""
        path = self.serve_range(cid, offset, offset + length - 1)
        return None if path is None else read_exactly(path, offset, length)

    @property
    def newest(self) -> int:
        """The newest snapshot version this mirror knows of (held or replicating)."""
        return max(self.snapshot, self.syncing)

    def query(self, cid: str) -> dict[str, Any]:
        """Our have-query for ``cid``: who we are, and the newest snapshot we know."""
        return {"cids": [cid], "from": self.url, "newest": self.newest}

    def answer(self, query: object, address: str | None = None) -> dict[str, Any]:
        """Our answer to a neighbour's have-query (over HTTP or libp2p), which
        came from IP ``address`` (None: not known).

        Raises ValueError if ``query`` is not one."""
        if not isinstance(query, dict) or not isinstance(query.get("cids"), list):
            raise ValueError('expected {"cids": [...], "from": URL, "newest": N}')
        newest = query.get("newest")
        if type(newest) is int and newest > self.newest and self.on_newer is not None:
            self.on_newer(newest)
        named_by = _machine_at(address) if address is not None else "?"
        asker = _seen_at(query.get("from"), address)
        return self.record(query["cids"], asker, named_by, address)

    def record(
        self,
        cids: list[str],
        asker: object = None,
        named_by: str | None = None,
        namer: str | None = None,
    ) -> dict[str, Any]:
        """Our have-record for ``cids`` (learning ``asker``, named by machine
        ``named_by`` at IP ``namer``, as a neighbour)."""
        self.learn(asker, named_by, namer)
        blobs: dict[str, Any] = {}
        for cid in cids[:64]:
            if not isinstance(cid, str):
                continue
            partial = self._partial.get(cid)
            if partial is not None:
                size = (partial.count + 7) // 8
                blobs[cid] = {
                    "have": partial.mask.to_bytes(size, "little").hex(),
                    "claims": partial.claims.to_bytes(size, "little").hex(),
                }
            elif self.has_blob is not None and _holds(self.has_blob, cid):
                blobs[cid] = "all"
        # Not the asker itself: a mirror bound to every address, learnt at the
        # address its queries come from, knows itself by no other name.
        peers = [p for p in self.neighbours() if not _same_peer(p, asker)]
        random.shuffle(peers)
        return {"snapshot": self.snapshot, "blobs": blobs, "peers": peers[:8]}

    # -- replication (the download's side) ------------------------------------------------

    def replicating(self, cid: str, dest: Path) -> _BlobReplication:
        """The hooks for downloading blob ``cid`` to ``dest`` (``dest.part`` meanwhile)."""
        return _BlobReplication(self, cid, dest)

    async def follow(self, cid: str, scheduler: ChunkScheduler, poke: Any = None) -> None:
        """Keep ``scheduler`` fed with our neighbours' have-records for ``cid``, until cancelled.

        Each neighbour is asked every :data:`POLL` seconds after its last
        answer, on its own: one that answers slowly, or never (for up to
        :data:`QUERY_TIMEOUT` a query), delays only its own records.
        """

        asked: set[str] = set()
        first: set[str] = set()  # neighbours whose first answer (or failure) is due
        opens = trio.current_time() + QUERY_TIMEOUT

        async def ask(url: str) -> None:
            while True:
                kept = await self._query(client, url, cid, scheduler)
                first.discard(url)
                if poke is not None:
                    poke()
                if not kept:
                    asked.discard(url)  # forgotten; asked again if learnt again
                    return
                await trio.sleep(POLL)

        async with have_client() as client, trio.open_nursery() as nursery:
            while True:
                for url in self.neighbours():
                    if url not in asked:
                        asked.add(url)
                        first.add(url)
                        nursery.start_soon(ask, url)
                if not scheduler.fallback_open and (not first or trio.current_time() >= opens):
                    scheduler.fallback_open = True  # every first answer is in
                partial = self._partial.get(cid)
                if partial is not None:
                    partial.claims = scheduler.claims()
                if poke is not None:
                    poke()
                await trio.sleep(POLL)

    async def on_node(self, function: Any, *args: Any) -> Any:
        """Run ``function(*args)`` (a coroutine of the libp2p node) in the
        daemon's trio loop, from a download's own loop in a worker thread."""
        if self.node is None or self.node.trio_token is None:
            raise TufmeshError("no libp2p node to reach libp2p peers with")
        return await in_loop(self.node.trio_token, function, *args)

    async def _query(self, client: Any, url: str, cid: str, scheduler: ChunkScheduler) -> bool:
        """Ask ``url`` for its have-record and feed it to ``scheduler``; False
        once the neighbour is forgotten (too many failures in a row)."""
        body = self.query(cid)
        try:
            if url.startswith("libp2p:"):
                address = url.removeprefix("libp2p:")
                answer = await self.on_node(self.node.query_have, address, body, QUERY_TIMEOUT)
                # Where libp2p does not say, not where the address claims: one
                # machine's share for all such neighbours ("?" is no address).
                answer = (answer[0], answer[1] or "?")
            else:
                with trio.fail_after(QUERY_TIMEOUT):
                    target, name = await self._pinned(url)
                    answer = await _post_json(client, f"{target}/have", body, MAX_RECORD, name)
            record, source = answer
            peers, entry = _check_record(record, cid)
        except _NearerError as exc:  # never asked: forgotten at once
            self._forget(url)
            scheduler.drop(url, str(exc))
            return False
        except Exception as exc:  # no answer, or not a have-record: a failed query
            if self._failed(url):
                scheduler.drop(url, f"have-queries failed ({exc})")
                return False
            return True
        if not self._answered(url, source):
            scheduler.drop(url, "its machine holds its share of neighbours already")
            return False
        for peer in peers[:8]:
            self.learn(peer, _machine_at(source) if source is not None else "?", source)
        has, claims = parse_record(entry, scheduler.count)
        if has is None and entry == "all":
            scheduler.add_source(url)
            scheduler.add_have(url, range(scheduler.count))
        elif has is not None:
            scheduler.add_source(url, has=())
            scheduler.add_have(url, has)
            scheduler.set_claims(url, claims)
        return True


def _same_peer(url: str, other: object) -> bool:
    """True if ``url`` and ``other`` name one mirror: the same URL, or libp2p
    addresses of one peer ID."""
    if not isinstance(other, str):
        return False
    if url.rstrip("/") == other.rstrip("/"):
        return True
    return (
        url.startswith("libp2p:/")
        and other.startswith("libp2p:/")
        and (url.rsplit("/p2p/", 1)[-1] == other.rsplit("/p2p/", 1)[-1] and "/p2p/" in url)
    )


def _machine(url: str) -> str | None:
    """The machine a neighbour's URL (``http://host:port``, ``libp2p:/ip4/...``)
    is on, as :data:`MAX_PER_MACHINE` counts it; None for loopback."""
    return _machine_at(_host(url))


def _host(url: str) -> str:
    """The host a neighbour's URL names (``http://host:port``, ``libp2p:/ip4/host/...``)."""
    if url.startswith("libp2p:"):
        parts = url.split("/")
        return parts[2] if len(parts) > 2 else ""
    return urlsplit(url).hostname or ""


def _unroutable(url: str) -> bool:
    """True if ``url`` names a link-local, multicast or unspecified address
    (however spelt: 2852039166 is 169.254.169.254)."""
    return _nowhere(_host(url))


def _nowhere(host: str) -> bool:
    """True if ``host`` is a link-local, multicast or unspecified address: no
    mirror is there (a cloud's metadata service is at 169.254.169.254, and
    0.0.0.0 reaches this machine's loopback); False for a name."""
    ip = _ip(host)
    return ip is not None and (ip.is_link_local or ip.is_multicast or ip.is_unspecified)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address ``host`` is written as, however spelt: ``127.1``,
    ``2130706433`` and ``0x7f000001`` are 127.0.0.1 to the resolver that
    connects to them, and so here; None for a name."""
    host = host.rstrip(".")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except (OSError, ValueError):
            return None
    if ip.version == 6:  # an IPv4 address inside: judged as that one
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):  # (not :: nor ::1)
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


#: IPv6 prefixes whose last 32 bits are an IPv4 address a resolver or
#: gateway may reach: NAT64's well-known prefix, and the old IPv4-compatible form.
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE: Final = ipaddress.IPv6Network("::/96")


def _unspecified(host: str) -> bool:
    """True for 0.0.0.0 and ::, what a socket bound to every address names."""
    ip = _ip(host)
    return ip is not None and ip.is_unspecified


#: How far an address reaches, nearest first: an asker may name addresses
#: as far from us as it is, or farther, never nearer.
LOOPBACK, PRIVATE, PUBLIC = range(3)


def _reach(host: str | None) -> int:
    """Where ``host`` is: this machine, a network not routed on the internet
    (RFC 1918, unique-local, shared, documentation ranges), or the internet;
    PUBLIC for a name, which may resolve anywhere, and for None (not known)."""
    if host is None:
        return PUBLIC
    name = host.rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return LOOPBACK
    ip = _ip(host)
    if ip is None:
        return PUBLIC
    return LOOPBACK if ip.is_loopback else PUBLIC if ip.is_global else PRIVATE


def _seen_at(url: object, address: str | None) -> object:
    """An asker's own URL, its host 0.0.0.0 or :: (a mirror bound to every
    address knows no better) replaced by ``address``, the IP its query came
    from: there, and only there, it can be reached."""
    if not isinstance(url, str) or address is None:
        return url
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return url
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if url.startswith("libp2p:/"):
        parts = url.split("/")
        if len(parts) > 2 and parts[1] in ("ip4", "ip6") and _unspecified(parts[2]):
            parts[1:3] = [f"ip{ip.version}", str(ip)]
            return "/".join(parts)
        return url
    if not _ORIGIN_URL.fullmatch(url.rstrip("/")):
        return url
    split = urlsplit(url)
    if not _unspecified(split.hostname or ""):
        return url
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    try:
        port = f":{split.port}" if split.port is not None else ""
    except ValueError:
        return url
    return f"{split.scheme}://{host}{port}"


def _machine_at(host: str) -> str | None:
    """The machine of ``host`` (an IP address, or a name: counted as itself)
    as :data:`MAX_PER_MACHINE` counts it; None for loopback."""
    if is_loopback(host):
        return None
    machine = machine_of(host)
    return host.lower() if machine == "?" else machine  # (a name: counted as itself)


#: What a learned HTTP neighbour may look like: scheme, host (a name, IPv4 or
#: [IPv6]) and port, nothing else.
_ORIGIN_URL: Final = re.compile(r"https?://(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def have_client() -> httpx.AsyncClient:
    """The HTTP client of have-queries. No proxy from the environment: a
    neighbour's machine is counted by the address its answer came from, and
    a proxy's would be every neighbour's."""
    import httpx  # (imported when needed: it costs every command's start-up)

    timeout = httpx.Timeout(QUERY_TIMEOUT)
    return httpx.AsyncClient(timeout=timeout, verify=tls_context(), trust_env=False)


async def read_at_most(pieces: AsyncIterable[bytes], limit: int) -> bytearray:
    """All of ``pieces`` (a body as it arrives), or ValueError once past ``limit``
    bytes: a peer that sends without end costs one exchange, not our memory."""
    data = bytearray()
    async for piece in pieces:
        data += piece
        if len(data) > limit:
            raise ValueError(f"over {limit} bytes")
    return data


class _NearerError(ValueError):
    """A learnt neighbour's name resolves nearer to us than its namer is."""


async def _resolve(host: str, port: int) -> list[str]:
    """The IP addresses ``host`` resolves to (none if it does not)."""
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return [str(info[4][0]).partition("%")[0] for info in infos]


async def _post_json(
    client: Any, url: str, body: object, limit: int, name: str | None = None
) -> tuple[object, str | None]:
    """POST ``body`` and parse the JSON answer, reading ``limit`` bytes at most;
    with the IP address the answer came from (None if not known). ``name``:
    the host (and port) ``url``'s address stands for, said as the Host and,
    over TLS, as the server name the certificate must be for.

    The bytes counted are the bytes that arrive: no content coding is asked
    for or accepted, so a small gzip bomb cannot unpack past the limit."""
    headers = {"accept-encoding": "identity"}
    extensions = {}
    if name is not None:
        headers["host"] = name
        extensions["sni_hostname"] = urlsplit(f"//{name}").hostname or name
    async with client.stream(
        "POST", url, json=body, headers=headers, extensions=extensions
    ) as response:
        if response.status_code != 200:
            raise ValueError(f"HTTP {response.status_code}")
        coding = response.headers.get("content-encoding", "identity").strip().lower()
        if coding != "identity":
            raise ValueError(f"answered with Content-Encoding {coding[:40]!r}")
        source = _address_of(response.extensions.get("network_stream"))  # (while open)
        data = await read_at_most(response.aiter_raw(), limit)
    return loads(data), source


def _address_of(stream: Any) -> str | None:
    """The IP address at the far end of an HTTP response's connection."""
    try:
        return str(stream.get_extra_info("server_addr")[0])
    except Exception:  # no stream, or its transport does not say
        return None


def _check_record(record: object, cid: str) -> tuple[list[object], object]:
    """The peers a have-record names and its entry for ``cid``, or ValueError
    if it is not a have-record (every field a peer sends is checked here)."""
    if not isinstance(record, dict):
        raise ValueError("not a have-record")
    peers, blobs = record.get("peers", []), record.get("blobs", {})
    if not isinstance(peers, list) or not isinstance(blobs, dict):
        raise ValueError("not a have-record: 'peers' must be a list, 'blobs' an object")
    return peers, blobs.get(cid)


def _holds(has_blob: Any, cid: str) -> bool:
    try:
        return bool(has_blob(cid))
    except TufmeshError:  # not a CID
        return False


def parse_record(entry: object, count: int) -> tuple[set[int] | None, int]:
    """``(chunks held, chunks claimed as a bitmask)`` from one blob's have-record entry.

    ``(None, 0)`` for "all" and for anything malformed (the caller tells them
    apart); chunks past the blob are dropped.
    """
    if not isinstance(entry, dict):
        return None, 0
    try:
        have = int.from_bytes(bytes.fromhex(str(entry.get("have", ""))), "little")
        claims = int.from_bytes(bytes.fromhex(str(entry.get("claims", ""))), "little")
    except (ValueError, TypeError):
        return None, 0
    every = (1 << count) - 1
    return set(set_bits(have & every)), claims & every


@dataclass
class _BlobReplication:
    """One blob's download, as the swarm sees it (:class:`tufmesh.client.Replicating`)."""

    swarm: Swarm
    cid: str
    dest: Path

    @property
    def fallback(self) -> list[str]:
        return [self.swarm.origin] if self.swarm.origin else []

    @property
    def me(self) -> str | None:
        return self.swarm.url

    async def fetch(
        self,
        source: str,
        cid: str,
        offset: int,
        length: int,
        *,
        patient: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> bytes:
        """Bytes of blob ``cid`` from a ``libp2p:`` source, over ``/tufmesh/blob/1``
        (a refusal is a :class:`Refused`, as over HTTP); ``progress(n)`` is
        called here, in this loop, as the bytes come into the node's."""
        address = source.removeprefix("libp2p:")
        here = trio.lowlevel.current_trio_token()

        def arrived(count: int) -> None:  # in the node's loop: told to this one
            if progress is not None:
                with contextlib.suppress(trio.RunFinishedError):
                    here.run_sync_soon(progress, count)

        fetch = functools.partial(self.swarm.node.fetch_range, patient=patient, progress=arrived)
        try:
            data: bytes = await self.swarm.on_node(fetch, address, cid, offset, length)
        except BlobBusyError as exc:
            raise Refused(exc.reason, exc.retry if exc.retry is not None else POLL) from None
        return data

    def started(self, plan: ChunkPlan, part: Path, have: set[int]) -> None:
        mask = sum(1 << i for i in have)
        partial = Partial((part, self.dest), plan.chunk_size, plan.length, plan.count, mask)
        self.swarm.begin(self.cid, partial)

    def chunk(self, index: int) -> None:
        partial = self.swarm.partial(self.cid)
        if partial is not None:
            partial.mask |= 1 << index  # one int replaced: readers see before or after

    async def follow(self, scheduler: ChunkScheduler, poke: Any) -> None:
        await self.swarm.follow(self.cid, scheduler, poke)
