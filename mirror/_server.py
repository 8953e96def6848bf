"""The mirror daemon: a sync loop and an HTTP gateway (trio, hypercorn, starlette)."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Final

import trio
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from tuf.api.metadata import Metadata, Root

from tufmesh._durable import write_atomic
from tufmesh._json import loads
from tufmesh._ui import log
from tufmesh.cas._store import SCRUB_INTERVAL
from tufmesh.errors import TufmeshError
from tufmesh.mirror._mirror import Mirror, SyncReport, read_progress
from tufmesh.mirror._swarm import (
    POLL,
    QUERY_TIMEOUT,
    UPLOAD_BYTES,
    UPLOAD_SLOTS,
    Swarm,
    read_at_most,
)
from tufmesh.origin import ByteCounter, start_http, tree_routes
from tufmesh.origin._seeding import SeedGate, slots_within
from tufmesh.origin._server import NoAnswer, scrub_forever
from tufmesh.p2p import AnnouncementGate, P2PNode, topic_for
from tufmesh.p2p._blob import MAX_QUERY

__all__ = ["build_mirror_app", "run_mirror"]


def upload_slots(max_upload_rate: float | None = None) -> SeedGate:
    """A mirror's upload slots: a few fast chunk uploads to other mirrors rather
    than many slow ones (ADR 12, 14); end users are never refused."""
    slots = slots_within(UPLOAD_SLOTS, max_upload_rate)
    return SeedGate(slots=slots, window=0.0, retry=POLL, max_bytes=UPLOAD_BYTES)


def build_mirror_app(
    mirror: Mirror,
    node: P2PNode | None = None,
    swarm: Swarm | None = None,
    heard: dict[int, float] | None = None,
    uploads: SeedGate | None = None,
) -> ByteCounter:
    """The mirror's gateway: the static TUF tree, ``/blobs``, ``/healthz``, ``/metrics``,
    and with ``swarm`` the have-records (``POST /have``) and chunks of blobs still arriving.
    ``uploads``: its upload slots, shared with its libp2p node."""
    counter: ByteCounter

    async def have(request: Request) -> Response:
        assert swarm is not None
        try:
            # The asker gives up after QUERY_TIMEOUT; a body trickling in longer
            # would only hold a connection.
            with trio.move_on_after(QUERY_TIMEOUT) as deadline:
                body = await read_at_most(request.stream(), MAX_QUERY)
        except ClientDisconnect:  # the asker gave up: nobody reads an answer
            return NoAnswer()
        except ValueError:
            return JSONResponse({"error": f"a have-query is {MAX_QUERY} bytes at most"}, 413)
        if deadline.cancelled_caught:
            return JSONResponse({"error": f"a have-query takes {QUERY_TIMEOUT} s at most"}, 408)
        try:
            asker = request.client.host if request.client is not None else None
            return JSONResponse(swarm.answer(loads(body), asker))
        except ValueError as exc:  # not JSON (or nested too deep), not a query
            return JSONResponse({"error": str(exc)}, 400)

    async def healthz(request: Request) -> Response:
        state = mirror.state()
        last = state.get("last_sync", {})
        return JSONResponse(
            {
                # "starting" until a first sync has ended (an origin out of
                # reach, a first release of hours): no sync has failed yet.
                "status": "starting" if not last else "ok" if not last.get("error") else "degraded",
                "snapshot_version": state.get("snapshot_version", 0),
                "artifacts": state.get("artifacts", 0),  # served (a failed sync said 0)
                "last_error": last.get("error"),
                "quarantined": state.get("quarantined", 0),
                # How far the sync under way is (mirror status), or None.
                "syncing": read_progress(mirror.dir),
                "bytes_served": counter.served,
                # When the newest announcement arrived (timestamp version, Unix time).
                "announced": ({"version": max(heard), "at": heard[max(heard)]} if heard else None),
            }
        )

    async def metrics(request: Request) -> Response:
        state = mirror.state()
        lag = time.time() - state["last_sync_at"] if "last_sync_at" in state else -1
        lines = [
            "# HELP tufmesh_mirror_bytes_served_total Response body bytes served.",
            "# TYPE tufmesh_mirror_bytes_served_total counter",
            f"tufmesh_mirror_bytes_served_total {counter.served}",
            "# HELP tufmesh_mirror_bytes_fetched_total Verified bytes fetched, by source.",
            "# TYPE tufmesh_mirror_bytes_fetched_total counter",
        ]
        for source, count in sorted(state.get("bytes_fetched_by_source", {}).items()):
            label = source.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
            lines.append(f'tufmesh_mirror_bytes_fetched_total{{source="{label}"}} {count}')
        lines += [
            "# HELP tufmesh_mirror_snapshot_version Snapshot version held complete.",
            "# TYPE tufmesh_mirror_snapshot_version gauge",
            f"tufmesh_mirror_snapshot_version {state.get('snapshot_version', 0)}",
            "# HELP tufmesh_mirror_seconds_since_sync Seconds since the last sync finished.",
            "# TYPE tufmesh_mirror_seconds_since_sync gauge",
            f"tufmesh_mirror_seconds_since_sync {lag:.1f}",
            "# HELP tufmesh_mirror_sync_failures_total Syncs that ended in an error.",
            "# TYPE tufmesh_mirror_sync_failures_total counter",
            f"tufmesh_mirror_sync_failures_total {state.get('sync_failures', 0)}",
            "# HELP tufmesh_mirror_failed_requests_total Chunk requests that failed or lied.",
            "# TYPE tufmesh_mirror_failed_requests_total counter",
            f"tufmesh_mirror_failed_requests_total {state.get('failed_requests', 0)}",
            "# HELP tufmesh_mirror_bans_total Sources banned during syncs.",
            "# TYPE tufmesh_mirror_bans_total counter",
            f"tufmesh_mirror_bans_total {state.get('bans', 0)}",
            "# HELP tufmesh_mirror_quarantined_total Stored blobs found corrupt, fetched again.",
            "# TYPE tufmesh_mirror_quarantined_total counter",
            f"tufmesh_mirror_quarantined_total {state.get('quarantined', 0)}",
        ]
        if node is not None:
            lines += [
                "# HELP tufmesh_mirror_p2p_peers Connected libp2p peers.",
                "# TYPE tufmesh_mirror_p2p_peers gauge",
                f"tufmesh_mirror_p2p_peers {node.peer_count()}",
                "# HELP tufmesh_mirror_p2p_mesh_peers Gossip mesh peers announcements go to.",
                "# TYPE tufmesh_mirror_p2p_mesh_peers gauge",
                f"tufmesh_mirror_p2p_mesh_peers {node.mesh_size()}",
                "# HELP tufmesh_mirror_announcements_total Gossip announcements judged.",
                "# TYPE tufmesh_mirror_announcements_total counter",
                f'tufmesh_mirror_announcements_total{{verdict="accepted"}} {node.accepted}',
                f'tufmesh_mirror_announcements_total{{verdict="rejected"}} {node.rejected}',
                f'tufmesh_mirror_announcements_total{{verdict="ignored"}} {node.ignored}',
            ]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    routes = [
        *tree_routes(
            mirror.tree,
            mirror.store,
            swarm.serve_range if swarm else None,
            uploads if uploads is not None else upload_slots(),
        ),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    if swarm is not None:
        routes.append(Route("/have", have, methods=["POST"]))
    counter = ByteCounter(Starlette(routes=routes))
    return counter


#: A neighbour's word that it holds a newer snapshot wakes the sync at most this
#: often (seconds): a liar costs a timestamp fetch per interval, no more.
HINT_INTERVAL: Final = 1.0
#: A sync that ends short of the newest version announced (the mirror it
#: syncs from does not hold it yet, or the sync failed) is tried again after
#: as long as it has been since the announcement, from ``CATCH_UP_FIRST`` to
#: ``CATCH_UP_MAX`` (1, 1, 2, 4, 8, 16, 30, 30... s), for ``CATCH_UP_FOR``:
#: some 25 syncs at most, an upstream's ten-minute sync followed within 30 s.
CATCH_UP_FIRST: Final = 1.0
CATCH_UP_MAX: Final = 30.0
CATCH_UP_FOR: Final = 600.0


def next_sync(poll: float, served: int, newest: int, heard_ago: float) -> float:
    """Seconds until the next sync: the poll, unless the mirror serves less
    than the ``newest`` version announced ``heard_ago`` seconds ago (see
    ``CATCH_UP_FIRST``), and never later than the poll. (Under steady
    publishing the mirror is always behind, and each announcement wakes it
    anyway.) Mirrors used to re-announce each version they completed, for
    those that sync from them; each copy then flooded the whole network
    (and now counts as the announcement it repeats): such a mirror asks its
    upstream again soon instead."""
    if newest <= served or heard_ago >= CATCH_UP_FOR:
        return poll
    return min(poll, max(CATCH_UP_FIRST, min(heard_ago, CATCH_UP_MAX)))


async def run_mirror(
    mirror: Mirror,
    host: str,
    port: int,
    poll: float,
    *,
    on_ready: Callable[[str], Awaitable[None] | None] | None = None,
    p2p_port: int | None = None,
    bootstrap: list[str] | None = None,
    max_upload_rate: float | None = None,
    p2p_only: bool = False,
) -> None:
    """Serve the mirror's tree and sync, until cancelled.

    With ``p2p_only``, the mirror tells its peers to reach it over libp2p
    (``/tufmesh/have/1`` and ``/tufmesh/blob/1``), not at its HTTP port.

    A sync runs every ``poll`` seconds, and at once when the peer-to-peer
    network (with ``p2p_port``) delivers a valid announcement of a new
    timestamp; the mirror's multiaddr is then written to ``DIR/p2p.addr``.
    """
    wake = trio.Event()
    node: P2PNode | None = None
    swarm: Swarm | None = None
    uploads = upload_slots(max_upload_rate)  # over HTTP and libp2p alike

    heard: dict[int, float] = {}  # timestamp version -> first heard (Unix time)
    heard_at = -math.inf  # ...and by trio's clock (the wall clock may step)

    hinted = -math.inf  # when a neighbour's have-query last woke the sync

    def newer(version: int) -> None:
        """A neighbour holds a newer snapshot (it says): sync now, once a second at most."""
        nonlocal hinted
        if trio.current_time() - hinted >= HINT_INTERVAL:
            hinted = trio.current_time()
            wake.set()

    # The timestamp version this mirror serves (since its last sync, or its last run).
    served: int = mirror.state().get("timestamp_version", 0)

    async def announced(data: bytes) -> None:
        """A valid announcement (the gate checked its signature): sync at once
        for a version not heard of before; for one heard of already (anyone
        may replay it, once the network's seen-messages window has passed),
        only while this mirror does not serve it yet, and once a second at
        most."""
        try:
            version = int(json.loads(data)["signed"]["version"])
        except (ValueError, KeyError, TypeError):  # the gate parsed it: not expected
            return
        nonlocal heard_at
        if version > max(heard, default=0):
            heard.clear()  # only the newest is read: one entry, not one per commit for ever
            heard[version] = time.time()
            heard_at = trio.current_time()
            wake.set()
        elif version > served:
            newer(version)

    async def sync_forever() -> None:
        nonlocal wake, served
        held = mirror.state().get("snapshot_version", 0)
        failing: str | None = None
        while True:
            wake = trio.Event()
            try:
                # Abandoned on cancellation (SIGTERM, Ctrl-C), not waited for: a
                # sync of a large release takes minutes, and what it leaves half
                # done (a .part file) the next run resumes. (trio-typing, which
                # libp2p pulls in, has stubs from before abandon_on_cancel.)
                report = await trio.to_thread.run_sync(
                    mirror.sync,
                    swarm,
                    abandon_on_cancel=True,  # type: ignore[call-arg,unused-ignore]
                )
            except Exception as exc:  # a bug of ours: say all of it (once), and keep serving
                report = SyncReport(error=f"internal error: {type(exc).__name__}: {exc}")
                if report.error != failing:
                    traceback.print_exc()
                mirror.record(report)  # so /healthz and `mirror status` say so
            for source, why in report.bans.items():
                log(f"mirror: banned {source} for this sync: {why}")
            if bool(report.error) != bool(failing):  # once, not at every poll nor new words
                note = f"sync failed: {report.error}" if report.error else "sync works again"
                log(f"mirror: {note}")
            failing = report.error
            if node is not None:
                with contextlib.suppress(Exception):  # gossip is an optimisation: polls remain
                    await node.follow_root(_trusted_root(mirror))  # root rotations
            held = max(held, report.snapshot_version)
            served = mirror.state().get("timestamp_version", served)
            if node is not None:
                node.gate.hold(mirror.served_timestamp())
            if swarm is not None:
                swarm.snapshot = held  # in its have-records from now on
            newest, ago = max(heard, default=0), trio.current_time() - heard_at
            with trio.move_on_after(next_sync(poll, served, newest, ago)):
                await wake.wait()

    def refetch(found: list[str]) -> None:
        log(
            f"mirror: {len(found)} blob(s) corrupt on disk, quarantined, to be fetched "
            f"again: {', '.join(found)}"
        )
        wake.set()

    async def in_thread(step: Callable[[], tuple[list[str], int]]) -> tuple[list[str], int]:
        return await trio.to_thread.run_sync(
            step,
            abandon_on_cancel=True,  # type: ignore[call-arg,unused-ignore]
        )

    async def note_network(node: P2PNode) -> None:
        """Keep ``mirror status`` current: record the p2p view when it changes."""
        noted = None
        while True:
            seen = (node.peer_count(), node.gate.newest)
            if seen != noted:
                await trio.to_thread.run_sync(mirror.note_network, *seen)
                noted = seen
            await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        if p2p_port is None:
            mirror.forget_network()
        else:
            root = _trusted_root(mirror)

            def blob_source(cid: str, offset: int, length: int) -> bytes | None:
                stored = mirror.store.read_range(cid, offset, length)
                if stored is None and swarm is not None:
                    return swarm.read_range(cid, offset, length)
                return stored

            # Announcements older than what it serves are stale to this mirror
            # from its start (relaying one, it would be scored down by its
            # up-to-date peers); the gate learns each version it then serves.
            gate = AnnouncementGate(root, newest=served)
            gate.hold(mirror.served_timestamp())
            node = P2PNode(
                mirror.dir / "p2p.key",
                topic_for(root),
                gate,
                host=host,
                port=p2p_port,
                bootstrap=bootstrap,
                on_announcement=announced,
                blob_source=blob_source,
                have_source=lambda query, asker: swarm.answer(query, asker) if swarm else {},
                uploads=uploads,  # HTTP's slots; its rate once the app is built
            )
            addrs = await nursery.start(node.run)
            write_atomic(mirror.dir / "p2p.addr", (addrs[0] + "\n").encode())
        sources = mirror.sources
        swarm = Swarm(
            peers=sources[:-1],
            origin=sources[-1],
            has_blob=mirror.store.has,
            node=node,
            on_newer=newer,
        )
        app = build_mirror_app(mirror, node, swarm, heard, uploads)
        if node is not None:
            node.pace = functools.partial(app.pace, piece=True)
        swarm.url = await start_http(nursery, app, host, port, max_upload_rate, on_ready)
        if p2p_only and node is not None:
            swarm.url = f"libp2p:{node.addrs[0]}"
        nursery.start_soon(sync_forever)
        # (SCRUB_BYTES per SCRUB_INTERVAL on average, however big the blobs)
        nursery.start_soon(functools.partial(
            scrub_forever, mirror.scrub, in_thread, refetch, "mirror",
            shortest=min(poll, SCRUB_INTERVAL), every=SCRUB_INTERVAL,
        ))  # fmt: skip
        if node is not None:
            nursery.start_soon(note_network, node)


def _trusted_root(mirror: Mirror) -> Root:
    """The newest root the mirror's verified client holds (else its first)."""
    for path in (mirror.dir / "client" / "root.json", mirror.dir / "root.json"):
        if path.exists():
            root: Root = Metadata[Root].from_bytes(path.read_bytes()).signed
            return root
    raise TufmeshError(f"{mirror.dir} has no trusted root")
