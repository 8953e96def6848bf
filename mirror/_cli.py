"""``tufmesh mirror``: run and inspect a mirror."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from tufmesh._durable import hold_lock, is_held
from tufmesh._ui import (
    HOST,
    PORT,
    SIZE,
    Finite,
    Group,
    format_duration,
    format_size,
    log,
    p2p_line,
    run_service,
    upload_rate_option,
)
from tufmesh.errors import TufmeshError, UsageError
from tufmesh.mirror._mirror import LIBP2P, Mirror, read_progress
from tufmesh.mirror._server import run_mirror

__all__ = ["mirror"]


def dir_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The ``--dir`` option, with what it means to the command."""
    return click.option(
        "--dir",
        "mirror_dir",
        required=True,
        type=click.Path(file_okay=False, path_type=Path),
        help=help,
    )


@click.group(cls=Group)
def mirror() -> None:
    """Mirror a repository: replicate, verify, serve."""


@mirror.command()
@dir_option("The mirror's directory (created on first run).")
@click.option(
    "--root",
    "root_json",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The repository's trusted root (its 1.root.json, from its maintainers).",
)
@click.option("--origin", "origin_url", required=True, help="The origin's URL.")
@click.option("--peer", "peers", multiple=True,
              help="Another mirror's URL, or libp2p:MULTIADDR (repeatable).")  # fmt: skip
@click.option("--host", type=HOST, default="127.0.0.1", show_default=True,
              help="Where to listen, HTTP and libp2p (this machine only, by default).")  # fmt: skip
@click.option("--http-port", type=PORT, default=8081, show_default=True,
              help="0 picks a free port.")  # fmt: skip
@click.option("--poll", type=Finite(min=0.1, max=86400), default=60.0, show_default=True,
              help="Seconds between syncs.")  # fmt: skip
@click.option("--projects", default=None,
              help="Mirror only these projects (comma-separated).  [default: all]")  # fmt: skip
@click.option("--p2p-port", type=PORT, default=None,
              help="Join the peer-to-peer network here.  [default: not joined]")  # fmt: skip
@click.option("--bootstrap", multiple=True, help="A peer's multiaddr to dial (repeatable).")
@upload_rate_option
@click.option("--quota", type=SIZE, default=None,
              help="Keep at most this many bytes of artifacts.  [default: no limit]")  # fmt: skip
@click.option("--p2p-only", is_flag=True,
              help="Peers reach this mirror over libp2p (no reachable HTTP port).")  # fmt: skip
def run(
    mirror_dir: Path,
    root_json: Path,
    origin_url: str,
    peers: tuple[str, ...],
    host: str,
    http_port: int,
    poll: float,
    projects: str | None,
    quota: int | None,
    p2p_port: int | None,
    bootstrap: tuple[str, ...],
    max_upload_rate: int | None,
    p2p_only: bool,
) -> None:
    """Replicate from peers and the origin; serve the verified tree over HTTP."""
    if p2p_only and p2p_port is None:
        raise UsageError("--p2p-only needs --p2p-port")
    if p2p_port is not None and p2p_port == http_port != 0:
        raise UsageError(f"--p2p-port and --http-port are both {p2p_port}: give each its own")
    from tufmesh.p2p import check_peer_address

    bootstrap = tuple(check_peer_address(b) for b in bootstrap)
    if bootstrap and p2p_port is None:
        raise UsageError("--bootstrap needs --p2p-port (without it there is no libp2p node)")
    if any(p.startswith(LIBP2P) for p in peers) and p2p_port is None:
        raise UsageError("--peer libp2p:... needs --p2p-port (without it there is no libp2p node)")
    wanted = [p.strip() for p in projects.split(",") if p.strip()] if projects else None
    # The directory itself is locked, before anything in it is written: a
    # second run must not even rewrite the first one's settings.
    created = not mirror_dir.exists()
    mirror_dir.mkdir(parents=True, exist_ok=True)
    try:
        # (a second's wait: 'mirror status' probes the lock for an instant)
        if hold_lock(mirror_dir, wait=1.0) is None:  # held until the process ends
            raise UsageError(f"another mirror is running in {mirror_dir}")
        replica = Mirror.create(
            mirror_dir, root_json, [*peers, origin_url], projects=wanted, quota=quota
        )
    except BaseException:
        if created:  # a run refused (a wrong root, say) leaves nothing behind
            shutil.rmtree(mirror_dir, ignore_errors=True)
        raise
    replica.tidy()
    serving: list[str] = []

    def banner(url: str) -> str:
        serving.append(url)
        return f"mirror {mirror_dir} serving on {url}" + p2p_line(mirror_dir, p2p_port)

    try:
        run_service(
            lambda ready: run_mirror(
                replica,
                host,
                http_port,
                poll,
                on_ready=ready,
                p2p_port=p2p_port,
                bootstrap=list(bootstrap),
                max_upload_rate=max_upload_rate,
                p2p_only=p2p_only,
            ),
            banner=banner,
            where=f"{host}:{http_port}",
        )
        if kept := _fetched_so_far(mirror_dir / "incoming"):  # stopped mid-sync
            log(
                f"mirror: the sync under way kept {format_size(kept)} of verified chunks in "
                f"{mirror_dir / 'incoming'}: the next run resumes from them"
            )
    finally:  # (a failure, or a stop, Ctrl-C, before it served)
        if created and not serving:  # it never served (a port taken): nothing to keep
            shutil.rmtree(mirror_dir, ignore_errors=True)


def _fetched_so_far(incoming: Path) -> int:
    """Bytes on disk in a stopped sync's part files (sparse: their blocks)."""
    total = 0
    for part in incoming.glob("*.part"):
        with contextlib.suppress(OSError):
            stat = part.lstat()
            total += min(stat.st_blocks * 512, stat.st_size)
    return total


def _progress_line(progress: dict[str, Any]) -> str:
    """A sync under way: how far, for how long, and when it last said so."""
    total = progress["bytes"]
    share = f" ({100 * progress['bytes_held'] / total:.0f}%)" if total else ""
    now = time.time()
    return (
        f"snapshot version {progress['snapshot_version']}: {progress['held']} of "
        f"{progress['artifacts']} artifacts, {format_size(progress['bytes_held'])} of "
        f"{format_size(total)}{share}; for {format_duration(max(0, now - progress['started']))}, "
        f"said {format_duration(max(0, now - progress['updated']))} ago"
    )


@mirror.command()
@dir_option("The mirror's directory.")
def status(mirror_dir: Path) -> None:
    """Versions held, blobs and bytes, sources, last sync.

    Exits 1 when the last sync failed (/healthz says "degraded") or no daemon
    runs in the directory, so that a monitoring script need not parse the
    output.
    """
    # Only a directory a mirror has written to is opened: opening creates its store.
    replica = Mirror(mirror_dir) if (mirror_dir / "state.json").is_file() else None
    state = replica.state() if replica is not None else {}
    if replica is not None and not state:
        raise TufmeshError(
            f"{replica.state_file} cannot be read or is damaged; "
            "the mirror's next sync writes it again"
        )
    running = is_held(mirror_dir)
    # (a stopped daemon's sync may have left its progress: not under way)
    progress = read_progress(mirror_dir) if running else None
    if "last_sync" not in state:  # (the p2p layer writes the state before any sync ends)
        if not (mirror_dir / "mirror.json").is_file():
            raise TufmeshError(f"{mirror_dir} is not a mirror's directory (no mirror.json)")
        if progress is None and running:
            raise TufmeshError(
                f"{mirror_dir} is a mirror whose first sync has not begun to fetch artifacts "
                "yet (is its origin up?)"
            )
        if progress is None:
            kept = _fetched_so_far(mirror_dir / "incoming")
            so_far = f"; {format_size(kept)} fetched, for the next run to resume" if kept else ""
            raise TufmeshError(
                f"{mirror_dir} is a mirror whose first sync has not completed, and no "
                f"'tufmesh mirror run' runs in it{so_far}"
            )
        click.echo(f"mirror {mirror_dir}")
        click.echo(f"first sync	{_progress_line(progress)}")
        return  # on its way: not a failure
    assert replica is not None
    blobs = list(replica.store)
    size = sum(replica.store.stat(cid).size for cid in blobs)
    last = state.get("last_sync", {})
    click.echo(f"mirror {mirror_dir}")
    if not running:  # what follows is what it held when it stopped
        click.echo(f"daemon\tnot running (no 'tufmesh mirror run' in {mirror_dir})")
    click.echo(f"sources\t{', '.join(replica.sources)}")
    p2p = mirror_dir / "p2p.addr"
    if p2p.exists():
        click.echo(f"p2p address\t{p2p.read_text().strip()}")
    click.echo(f"snapshot version\t{state.get('snapshot_version', 0)}")
    targets = mirror_dir / "tree" / "targets"
    served = (
        sum(1 for path in targets.rglob("*") if path.is_file() and not path.name.startswith("."))
        if targets.is_dir()
        else 0
    )  # (a name starting with a dot: a link being made)
    click.echo(f"artifacts served\t{served}")
    click.echo(f"blobs\t{len(blobs)}, {format_size(size)}")
    click.echo(f"syncs\t{state.get('syncs', 0)} ({state.get('sync_failures', 0)} failed)")
    click.echo(
        f"sources banned\t{state.get('bans', 0)} ({state.get('failed_requests', 0)} requests "
        f"failed; blobs found corrupt on disk: {state.get('quarantined', 0)})"
    )
    if "last_sync_at" in state:
        click.echo(f"last sync\t{time.time() - state['last_sync_at']:.0f} s ago")
    if "p2p_peers" in state and running:  # (a stopped daemon's peers are gone)
        behind = max(0, state.get("newest_announced", 0) - state.get("timestamp_version", 0))
        click.echo(f"p2p peers\t{state['p2p_peers']}")
        if state["p2p_peers"]:
            click.echo(f"lag\t{behind} timestamp version(s) behind the newest announcement")
        else:
            click.echo("lag\tunknown: no p2p peer to hear announcements from (the poll still runs)")
    if progress is not None:
        click.echo(f"syncing\t{_progress_line(progress)}")
    if last.get("error"):
        click.echo(f"last error\t{last['error']}")
    if unknown := last.get("unknown_projects"):
        click.echo(f"--projects with nothing published\t{', '.join(map(str, unknown))}")
    if over := last.get("over_quota"):
        left = format_size(last.get("over_quota_bytes") or 0)
        click.echo(f"left out by --quota\t{over} artifact(s), {left}")
    if lapsed := last.get("lapsed"):
        click.echo(f"projects whose own metadata expired\t{', '.join(map(str, lapsed))}")
    for source, count in sorted(state.get("bytes_fetched_by_source", {}).items()):
        click.echo(f"fetched from {source}\t{format_size(count)}")
    if last.get("error") or not running:
        click.get_current_context().exit(1)
