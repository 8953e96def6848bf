"""The mirror daemon: a sync loop and an HTTP gateway (trio, hypercorn, starlette)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tufmesh.mirror._mirror import Mirror
from tufmesh.origin import ByteCounter, tree_routes

__all__ = ["build_mirror_app", "run_mirror"]


def build_mirror_app(mirror: Mirror) -> ByteCounter:
    """The mirror's gateway: the static TUF tree, ``/blobs``, ``/healthz``, ``/metrics``."""
    counter: ByteCounter

    async def healthz(request: Request) -> Response:
        state = mirror.state()
        last = state.get("last_sync", {})
        return JSONResponse(
            {
                "status": "ok" if not last.get("error") else "degraded",
                "snapshot_version": state.get("snapshot_version", 0),
                "artifacts": last.get("artifacts", 0),
                "last_error": last.get("error"),
                "bytes_served": counter.served,
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
            lines.append(f'tufmesh_mirror_bytes_fetched_total{{source="{source}"}} {count}')
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
        ]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    routes = [
        *tree_routes(mirror.tree, mirror.store),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    counter = ByteCounter(Starlette(routes=routes))
    return counter


async def run_mirror(
    mirror: Mirror,
    host: str,
    port: int,
    poll: float,
    *,
    on_ready: Callable[[str], Awaitable[None] | None] | None = None,
) -> None:
    """Serve the mirror's tree and re-sync every ``poll`` seconds, until cancelled."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None

    async def sync_forever() -> None:
        while True:
            await trio.to_thread.run_sync(mirror.sync)
            await trio.sleep(poll)

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, build_mirror_app(mirror), config)
        if on_ready is not None:
            result = on_ready(binds[0])
            if result is not None:
                await result
        nursery.start_soon(sync_forever)
