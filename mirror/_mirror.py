"""A mirror: replicates a repository through the TUF client workflow, then serves it.

Invariants:

* Everything a mirror keeps was verified first: metadata by python-tuf (the
  same :class:`~tufmesh.client.Client` end users run), every artifact chunk by
  its signed manifest and every blob by its CID again as it enters the store.
* A mirror publishes a snapshot version only when it holds every blob that
  version lists: blobs first, then versioned metadata, ``timestamp.json`` last.
  Anyone reading its tree sees a complete repository, old or new.
* Blobs are pinned per snapshot version; when a newer version is complete, the
  older pins go and garbage collection reclaims what only they held.

This first version replicates over HTTP from the origin and from other
mirrors; the peer-to-peer announcement and have-record layer (libp2p) comes
next and will drive the same ``sync``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from tuf.api.metadata import Metadata

from tufmesh._durable import (
    SUPERSEDED_GRACE,
    drop_never_served,
    fsync_dir,
    hard_link,
    prune_superseded,
    served_versions,
    write_atomic,
)
from tufmesh._ui import one_line
from tufmesh.cas import BlobStore, Scrubber, parse_cid
from tufmesh.cas._store import SCRUB_BYTES
from tufmesh.client import Client, SourceHealth
from tufmesh.client._home import check_url, read_root
from tufmesh.errors import InvalidCIDError, InvalidNameError, StoreError, TufmeshError, UsageError
from tufmesh.mirror._swarm import Swarm

__all__ = ["Mirror", "SyncReport"]

#: Sources whose fetched bytes ``state.json`` (and ``/metrics``) keeps by
#: name; the others are summed as :data:`OTHER_SOURCES`. Every neighbour a
#: mirror ever learnt stayed, a label each, for ever.
MAX_SOURCES_KEPT: Final = 64
OTHER_SOURCES: Final = "others"


@dataclass
class SyncReport:
    """What one synchronisation did."""

    snapshot_version: int = 0
    artifacts: int = 0
    fetched: int = 0
    bytes_by_source: dict[str, int] = field(default_factory=dict)
    #: Requests that failed or brought bad chunks; sources banned, with why.
    failed_requests: int = 0
    bans: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    #: Projects of ``--projects`` that nothing published belongs to (a typo?).
    unknown_projects: list[str] = field(default_factory=list)
    #: Claimed projects whose own metadata expired: not mirrored until their
    #: developers sign it again (docs/adr/0022).
    lapsed: list[str] = field(default_factory=list)
    #: Artifacts of the mirrored projects that ``--quota`` left out, and their bytes.
    over_quota: int = 0
    over_quota_bytes: int = 0


class Mirror:
    """The mirror in directory ``dir``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.store = BlobStore(directory / "cas")
        self.tree = directory / "tree"
        self.state_file = directory / "state.json"
        #: How far the sync under way is (:func:`read_progress`).
        self.progress_file = directory / "progress.json"
        self._state_lock = threading.Lock()  # syncs (a thread) and the daemon both update it
        # The last complete sync: (timestamp version, config) and its report.
        # A sync that finds both unchanged stops after the timestamp: anyone
        # may wake a mirror (a have-query naming a newer release), and a full
        # pass reads every bin, rewrites the tree and collects garbage.
        self._synced: tuple[tuple[int, str], SyncReport] | None = None
        #: The last sync's report, while the disk would not take it (full).
        self._unrecorded: dict[str, Any] | None = None
        self._scrubber = Scrubber(self.store)

    @classmethod
    def create(
        cls,
        directory: Path,
        root_json: Path,
        sources: list[str],
        *,
        projects: list[str] | None = None,
        quota: int | None = None,
    ) -> Mirror:
        """Set up (or re-point) a mirror trusting ``root_json``, fetching from ``sources``.

        ``projects`` limits it to those projects; ``quota`` caps the bytes of
        artifacts it keeps (the newest snapshot's artifacts, in path order,
        until the next would not fit).
        """
        root = read_root(root_json)
        urls = [*(_check_peer(s) for s in sources[:-1]), check_url(sources[-1])]
        if projects is not None and not projects:
            raise UsageError("no project named: give --projects a comma-separated list")
        if not (directory / "mirror.json").is_file():
            if _someone_elses(directory):
                raise UsageError(
                    f"{directory} holds a repository or a store, not a mirror's: give another --dir"
                )
            if _foreign(directory):
                raise UsageError(
                    f"{directory} holds files of its own and is not a mirror's: a mirror "
                    "writes cas/, tree/, client/ and more there; give an empty or new --dir"
                )
        anchor = directory / "root.json"
        if anchor.is_file() and anchor.read_bytes() != root:
            try:
                read_root(anchor)
            except UsageError:
                raise UsageError(
                    f"{anchor} is damaged: put the repository's root there again "
                    "(the one it was first given), or give a new --dir"
                ) from None
            held = (directory / "cas").is_dir() and next(iter(BlobStore(directory / "cas")), None)
            if not (directory / "tree" / "metadata" / "timestamp.json").exists() and not held:
                raise UsageError(
                    f"{directory} was set up for another root ({anchor}) and holds nothing "
                    "yet (no sync completed, no blob fetched): remove it, or give a new --dir"
                )
            raise UsageError(
                f"{directory} already mirrors the repository of another root ({anchor}); "
                "give that root, or a new --dir"
            )
        directory.mkdir(parents=True, exist_ok=True)
        for sub in ("tree/metadata", "tree/targets", "incoming", "client"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        if not anchor.exists():
            write_atomic(anchor, root)
        from tufmesh.origin import normalize_project

        config = {
            "sources": urls,
            "projects": sorted({normalize_project(p) for p in projects}) if projects else None,
            "quota": quota,
        }
        data = (json.dumps(config, indent=1) + "\n").encode()
        with contextlib.suppress(OSError):
            if (directory / "mirror.json").read_bytes() == data:
                return cls(directory)  # (a restart on a full disk: nothing to write)
        write_atomic(directory / "mirror.json", data)
        return cls(directory)

    def tidy(self) -> int:
        """Remove what a daemon stopped mid-sync left behind (call it holding
        the directory's lock): downloads of blobs the store already holds, and
        temporary files of atomic writes. Downloads still missing from the
        store stay: the next sync resumes them. Returns the files removed."""
        removed = 0
        for path in (self.dir / "incoming").iterdir():
            try:
                held = self.store.has(path.name.removesuffix(".part"))
            except StoreError:  # not named by a CID: not ours to judge
                continue
            if held:
                path.unlink()
                removed += 1
        self.progress_file.unlink(missing_ok=True)  # a sync's that was stopped
        for folder in (self.dir, self.tree / "metadata", *self.tree.glob("targets/*")):
            for path in folder.glob(".*.tmp-*"):
                path.unlink()
                removed += 1
        return removed

    def _config(self) -> dict[str, Any]:
        path = self.dir / "mirror.json"
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise TufmeshError(f"{self.dir} is not a mirror: {exc}") from None
        if not (
            isinstance(config, dict)
            and isinstance(config.get("sources"), list)
            and config["sources"]
            and all(isinstance(s, str) for s in config["sources"])
            and not config["sources"][-1].startswith(LIBP2P)  # (the origin)
            and _list_of_str_or_none(config.get("projects"))
            and (config.get("quota") is None or type(config.get("quota")) is int)
        ):
            raise TufmeshError(
                f"{path} is damaged (expected sources, projects and quota): 'tufmesh mirror "
                "run' with its --origin, --peer, --projects and --quota writes it again"
            )
        return config

    def wanted(self, targets: list[Any]) -> tuple[list[Any], list[Any]]:
        """The targets this mirror's policy keeps (its projects, within its
        quota), and those of its projects that the quota leaves out."""
        config = self._config()
        projects = config.get("projects")
        chosen = [t for t in targets if not projects or t.path.split("/", 1)[0] in projects]
        quota = config.get("quota")
        if quota is None:
            return chosen, []
        used = 0
        for n, target in enumerate(chosen):
            if used + target.length > quota:
                return chosen[:n], chosen[n:]
            used += target.length
        return chosen, []

    @property
    def sources(self) -> list[str]:
        """Where this mirror fetches from: other mirrors, then the origin (last).

        The origin is a fallback: asked for metadata and blobs only when no
        peer can serve them, so that it uploads each blob about once. A
        mirror named ``libp2p:MULTIADDR`` is reached by the daemon's libp2p
        node only (for chunks): no metadata is asked of it.
        """
        return list(self._config()["sources"])

    @property
    def http_sources(self) -> list[str]:
        """:attr:`sources` reached over HTTP (the origin among them): where metadata comes from."""
        return [s for s in self.sources if not s.startswith(LIBP2P)]

    def state(self) -> dict[str, Any]:
        """The last sync report and totals (``tufmesh mirror status``); an entry
        of the wrong type (a hand-edited or damaged file) is left out, and
        counted again from zero."""
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(state, dict):
            return {}
        kept: dict[str, Any] = {
            k: v for k, v in state.items() if isinstance(v, _STATE_TYPES.get(k, object))
        }
        fetched: dict[str, Any] = kept.get("bytes_fetched_by_source", {})
        if not all(type(count) is int for count in fetched.values()):
            del kept["bytes_fetched_by_source"]
        if self._unrecorded is not None:  # the newest sync, which the disk did not take
            kept["last_sync"] = self._unrecorded
        return kept

    def _update_state(
        self,
        change: Callable[[dict[str, Any]], None],
        report: SyncReport | None = None,
        *,
        noted: bool = False,
    ) -> None:
        """Apply ``change`` to ``state.json``. With ``report`` (a sync's), one the
        disk will not take is kept in memory instead, and said so in the
        report (under the same lock: another update must not write an older
        report back over a newer one). A ``noted`` change (what the p2p layer
        saw) the disk will not take is left unwritten: a full disk must not
        stop the mirror serving what it holds."""
        with self._state_lock:
            state = self.state()
            change(state)
            data = (json.dumps(state, indent=1) + "\n").encode()
            try:
                write_atomic(self.state_file, data, sync_dir=False)
            except OSError as exc:
                if noted:
                    return
                if report is None:
                    raise
                report.error = report.error or f"cannot record the sync: {one_line(exc)}"
                self._unrecorded = asdict(report)
            else:
                if report is not None:
                    self._unrecorded = None

    def sync(self, swarm: Swarm | None = None) -> SyncReport:
        """Bring the mirror up to the newest version any source serves.

        With ``swarm`` (the daemon), chunks come from whichever neighbour's
        have-record lists them, the origin serving only the rest, and this
        mirror serves each chunk to its neighbours as soon as it is verified.
        """
        started = time.monotonic()
        report = SyncReport()
        root = (self.dir / "root.json").read_bytes()
        fetched: Counter[str] = Counter()
        try:
            urls = self.http_sources
            if swarm is None:
                sources = [
                    SourceHealth(url, fallback=(url == urls[-1] and len(urls) > 1)) for url in urls
                ]
            else:
                # Metadata from the origin first: peers publish a version's
                # metadata only once they hold all of it, and chunks trade
                # among peers while it arrives. A few KiB per version.
                origin, *peers = urls[-1:] + urls[:-1]
                sources = [SourceHealth(origin)] + [SourceHealth(p, fallback=True) for p in peers]
            with Client(self.dir / "client", root, list(sources)) as client:
                client.refresh()
                seen = (
                    _version(client.metadata_dir / "timestamp.json"),
                    json.dumps(self._config(), sort_keys=True),
                )
                if self._synced is not None and self._synced[0] == seen and self._intact():
                    report.artifacts = self._synced[1].artifacts
                    report.snapshot_version = self._synced[1].snapshot_version
                    report.unknown_projects = self._synced[1].unknown_projects
                    report.lapsed = self._synced[1].lapsed
                    report.over_quota = self._synced[1].over_quota
                    report.over_quota_bytes = self._synced[1].over_quota_bytes
                else:
                    try:
                        self._replicate(client, swarm, report, fetched)
                    finally:
                        self.progress_file.unlink(missing_ok=True)
                    self._synced = (seen, report)
        except TufmeshError as exc:
            report.error = str(exc)
        except OSError as exc:  # our own disk: full, read-only, gone
            report.error = f"cannot write in {self.dir}: {one_line(exc)}"
        if report.error and os.strerror(errno.ENOSPC) in report.error:
            report.error += " (free space, or have the mirror keep fewer bytes: --quota SIZE)"
        report.bytes_by_source = dict(fetched)
        report.seconds = time.monotonic() - started
        self.record(report)
        return report

    def scrub(self, budget: int = SCRUB_BYTES) -> tuple[list[str], int]:
        """Check stored blobs against their names, about ``budget`` bytes (a
        blob is checked whole), on from where the last call stopped (pass after
        pass), and quarantine the corrupt and the unreadable ones: the next
        sync fetches them again and relinks the tree. Without it, a blob a disk
        or a slip had changed was served, and said held to every neighbour,
        until each of them had banned this mirror. Returns the blobs
        quarantined and the bytes read."""
        found, read = self._scrubber.step(budget)
        if found:

            def count(state: dict[str, Any]) -> None:
                state["quarantined"] = state.get("quarantined", 0) + len(found)

            with contextlib.suppress(OSError):  # (a full disk: the log still says it)
                self._update_state(count)
        return found, read

    def _intact(self) -> bool:
        """True if the store still holds every blob the last sync kept (one
        may have been quarantined or deleted since: the next sync fetches it)."""
        assert self._synced is not None
        held = self.store.pins().get(f"snapshot-{self._synced[1].snapshot_version}", frozenset())
        return all(self.store.has(cid) for cid in held)

    def _replicate(
        self, client: Client, swarm: Swarm | None, report: SyncReport, fetched: Counter[str]
    ) -> None:
        """Fetch the blobs the policy wants that the store lacks, then publish."""
        listed = client.artifacts()
        from tufmesh.origin._owned import owned_project

        report.lapsed = [p for role in client.lapsed if (p := owned_project(role)) is not None]
        entries = {t.path: e for t in listed if (e := servable(t)) is not None}
        targets, left_out = self.wanted([t for t in listed if t.path in entries])
        report.over_quota = len(left_out)
        report.over_quota_bytes = sum(t.length for t in left_out)
        published = {t.path.split("/", 1)[0] for t in listed}
        report.unknown_projects = sorted(set(self._config().get("projects") or ()) - published)
        # Before the downloads: on a full disk they fail, and the leftovers
        # of a stop are likely what fills it.
        self._drop_unwanted_downloads({entries[t.path].cid for t in targets})
        snapshot = _version(client.metadata_dir / "snapshot.json")
        if swarm is not None:
            swarm.syncing = snapshot
        progress = _Progress(self.progress_file, snapshot, targets)
        for target in targets:
            progress.note()
            cid, manifest_cid = entries[target.path].cid, entries[target.path].manifest
            if manifest_cid is not None and not self.store.has(manifest_cid):
                # Fetched (and checked against its signed CID) only when
                # missing: a sync must not re-download every manifest of a
                # repository it already holds.
                manifest = client.manifest(target)
                assert manifest is not None
                self.store.put(manifest.encoded, expect=manifest.cid)
            if self.store.has(cid):
                progress.held(target)
                continue
            incoming = self.dir / "incoming"
            replicating = swarm.replicating(cid, incoming / cid) if swarm else None
            try:
                result = client.download(
                    target.path, incoming, filename=cid, replicating=replicating,
                    progress=progress.arrived,
                )  # fmt: skip
                # The store hashes it once more on the way in: a blob is never
                # kept under a name its bytes do not have.
                self.store.put(result.path, expect=cid)
            finally:
                if swarm is not None:
                    swarm.end(cid)
            result.path.unlink()
            progress.held(target)
            report.fetched += 1
            for source, stats in result.sources.items():
                fetched[source] += stats.bytes
                report.failed_requests += stats.failures
                if stats.banned:
                    report.bans[source] = stats.banned
        report.artifacts = len(targets)
        report.snapshot_version = self._publish(client, [entries[t.path] for t in targets])

    def _drop_unwanted_downloads(self, wanted: set[str]) -> None:
        """Remove downloads left unfinished (a stop mid-sync) of blobs no longer
        wanted: removed at the origin, or outside a changed policy. They stayed
        for ever, each up to an artifact's size."""
        for path in (self.dir / "incoming").iterdir():
            name = path.name.removesuffix(".part")
            try:
                parse_cid(name)
            except InvalidCIDError:
                continue  # not a download of ours
            if name not in wanted:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def _publish(self, client: Client, entries: list[Servable]) -> int:
        """Write the verified metadata as a static TUF tree, timestamp last; pin and gc."""
        cache = client.metadata_dir
        metadata = self.tree / "metadata"
        served = served_versions(metadata) or {}
        versions: dict[str, int] = {}
        timestamp_bytes = b""
        for path in sorted(cache.glob("*.json")):
            data = path.read_bytes()
            md = Metadata.from_bytes(data)
            role = path.name.removesuffix(".json")
            versions[role] = md.signed.version
            if role == "timestamp":
                timestamp_bytes = data
            elif role == "root":
                write_atomic(metadata / "root.json", data, sync_dir=False)
                write_atomic(metadata / f"{md.signed.version}.root.json", data, sync_dir=False)
            else:
                out = metadata / f"{md.signed.version}.{role}.json"
                if not out.exists():
                    write_atomic(out, data, sync_dir=False)
                elif served.get(role) != md.signed.version:
                    # Written by a sync that never got to serve it (stopped,
                    # a full disk): its time must say it is current from now,
                    # or the version it replaces would go at once, not after
                    # the grace (see prune_superseded).
                    os.utime(out)
        drop_never_served(metadata, served, versions)
        for old_root in (cache / "root_history").glob("*.root.json"):
            out = metadata / old_root.name
            if not out.exists():
                write_atomic(out, old_root.read_bytes(), sync_dir=False)
        linked: set[Path] = set()
        for entry in entries:
            if not self.store.has(entry.cid):
                continue
            directory = self.tree / "targets" / entry.project
            directory.mkdir(parents=True, exist_ok=True)
            link = directory / f"{entry.sha256}.{entry.filename}"
            hard_link(self.store.path(entry.cid), link)
            linked.add(link)
        fsync_dir(metadata)
        write_atomic(metadata / "timestamp.json", timestamp_bytes)
        current = {r: v for r, v in versions.items() if r not in ("root", "timestamp")}
        prune_superseded(metadata, current, SUPERSEDED_GRACE)
        self._prune(linked)
        snapshot = versions.get("snapshot", 0)
        held = {
            cid
            for entry in entries
            for cid in (entry.cid, entry.manifest)
            if cid is not None and self.store.has(cid)
        }
        pinned = f"snapshot-{snapshot}"
        if held:
            self.store.pin(pinned, held)
        for name, cids in self.store.pins().items():
            if name == pinned and (kept_no_more := cids - held):
                # The same version kept with a lower --quota or fewer
                # --projects: what it no longer serves goes now, not only
                # once the origin publishes another version.
                self.store.unpin(name, kept_no_more)
            elif name.startswith("snapshot-") and name != pinned:
                self.store.unpin(name)
        self.store.gc()
        return snapshot

    def _prune(self, linked: set[Path]) -> None:
        """Remove the target links the published version does not list: an
        artifact the origin removed (a malicious upload, say) or one the
        policy no longer keeps. Its blob goes with the store's next gc."""
        targets = self.tree / "targets"
        if not targets.is_dir():
            return
        for project in list(targets.iterdir()):
            if not project.is_dir() or project.is_symlink():
                continue  # not a project's folder: not ours to judge
            for path in list(project.iterdir()):
                if path not in linked and not path.name.startswith("."):
                    path.unlink()
            if not any(project.iterdir()):
                project.rmdir()

    def served_timestamp(self) -> int:
        """The version of the timestamp this mirror serves (0 before its first sync)."""
        try:
            signed = json.loads((self.tree / "metadata" / "timestamp.json").read_bytes())["signed"]
            return int(signed["version"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def note_network(self, peers: int, newest_announced: int) -> None:
        """Remember what the p2p layer saw, for ``mirror status``."""
        self._update_state(
            lambda state: state.update(p2p_peers=peers, newest_announced=newest_announced),
            noted=True,
        )

    def forget_network(self) -> None:
        """A run without a p2p layer: what an earlier run's saw (its address,
        its peers) is no longer said as this mirror's."""
        (self.dir / "p2p.addr").unlink(missing_ok=True)
        keys = ("p2p_peers", "newest_announced")

        def forget(state: dict[str, Any]) -> None:
            for key in keys:
                state.pop(key, None)

        state = self.state()
        if set(keys) & state.keys():
            if state.keys() <= set(keys):  # no sync has ended: no state at all, as before one
                with self._state_lock:
                    self.state_file.unlink(missing_ok=True)
            else:
                self._update_state(forget, noted=True)

    def record(self, report: SyncReport) -> None:
        """Add a sync's outcome to the state ``mirror status`` and ``/healthz``
        read. A disk that cannot take it (full) only leaves the state as it
        was, and the report says so: the mirror goes on serving what it holds."""

        def update(state: dict[str, Any]) -> None:
            totals = Counter(state.get("bytes_fetched_by_source", {}))
            totals.update(report.bytes_by_source)
            if len(totals) > MAX_SOURCES_KEPT:  # neighbours come and go: the most, and the rest
                others = totals.pop(OTHER_SOURCES, 0)
                kept = dict(totals.most_common(MAX_SOURCES_KEPT - 1))
                kept[OTHER_SOURCES] = others + sum(totals.values()) - sum(kept.values())
                totals = Counter(kept)
            state.update(
                last_sync=asdict(report),
                last_sync_at=time.time(),
                bytes_fetched_by_source=dict(totals),
                syncs=state.get("syncs", 0) + 1,
                sync_failures=state.get("sync_failures", 0) + (report.error is not None),
                failed_requests=state.get("failed_requests", 0) + report.failed_requests,
                bans=state.get("bans", 0) + len(report.bans),
                snapshot_version=report.snapshot_version or state.get("snapshot_version", 0),
                timestamp_version=self.served_timestamp(),
                # What it serves: a failed sync leaves the last version served.
                artifacts=report.artifacts if report.error is None else state.get("artifacts", 0),
            )

        self._update_state(update, report)


#: The type of each entry of ``state.json``.
_STATE_TYPES: dict[str, type | tuple[type, ...]] = {
    "last_sync": dict,
    "last_sync_at": (int, float),
    "bytes_fetched_by_source": dict,
    "syncs": int,
    "sync_failures": int,
    "failed_requests": int,
    "bans": int,
    "quarantined": int,
    "snapshot_version": int,
    "timestamp_version": int,
    "artifacts": int,
    "p2p_peers": int,
    "newest_announced": int,
}


@dataclass(frozen=True)
class Servable:
    """A signed target as a mirror keeps and serves it."""

    cid: str
    manifest: str | None
    project: str
    filename: str
    sha256: str


class _Progress:
    """A sync's progress, written to ``progress.json`` (at most once a second)
    for ``mirror status``: a first sync of a large repository takes hours."""

    def __init__(self, path: Path, snapshot: int, targets: list[Any]) -> None:
        self.path = path
        now = time.time()
        self.state: dict[str, Any] = {
            "snapshot_version": snapshot,
            "artifacts": len(targets),
            "held": 0,
            "bytes": sum(t.length for t in targets),
            "bytes_held": 0,
            "started": now,
            "updated": 0.0,
        }
        self._arrived = 0  # bytes of the artifact being fetched, counted already
        self._write(now)

    def held(self, target: Any) -> None:
        """``target`` is in the store now."""
        self.state["held"] += 1
        self.state["bytes_held"] += target.length - self._arrived
        self._arrived = 0

    def arrived(self, count: int) -> None:
        """``count`` more verified bytes of the artifact being fetched (a large
        one stayed at 0% until it was whole, which looked like a stopped sync)."""
        self._arrived += count
        self.state["bytes_held"] += count
        self.note()

    def note(self) -> None:
        """Say how far the sync is, now and then (at most once a second)."""
        now = time.time()
        if now - self.state["updated"] >= 1.0:
            self._write(now)

    def _write(self, now: float) -> None:
        self.state["updated"] = now
        with contextlib.suppress(OSError):  # only a report: a full disk fails the sync anyway
            write_atomic(self.path, json.dumps(self.state).encode(), sync_dir=False)


def read_progress(directory: Path) -> dict[str, Any] | None:
    """How far the mirror's sync under way is, as it last said: None if no
    sync is fetching artifacts (or the file is unreadable)."""
    try:
        progress = json.loads((directory / "progress.json").read_text())
    except (OSError, ValueError):
        return None
    keys = ("snapshot_version", "artifacts", "held", "bytes", "bytes_held")
    if not isinstance(progress, dict) or not all(type(progress.get(k)) is int for k in keys):
        return None
    if not all(type(progress.get(k)) in (int, float) for k in ("started", "updated")):
        return None
    return progress


def servable(target: Any) -> Servable | None:
    """What a mirror may keep of ``target``, or None.

    A mirror names its copy ``targets/<project>/<sha256>.<filename>`` from the
    signed entry, and may hold the blob already (another target's), so the
    entry is never compared with the bytes on the way: its path must be a
    valid project and file name (no ``..``, no separators), and its SHA-256
    the blob's own (the CID's digest). A signing key, even the origin's,
    must not be able to name a file outside the tree or a blob that is not
    the artifact.
    """
    from tufmesh.origin._names import check_filename, normalize_project

    custom = target.custom if isinstance(target.custom, dict) else {}
    cid, manifest = custom.get("cid"), custom.get("manifest")
    hashes = target.hashes if isinstance(target.hashes, dict) else {}
    project, _, filename = str(target.path).partition("/")
    try:
        if not isinstance(cid, str) or not isinstance(manifest, str | None):
            return None
        canonical, digest = parse_cid(cid)
        if manifest is not None and parse_cid(manifest)[0] != manifest:
            return None
        if normalize_project(project) != project or check_filename(filename) != filename:
            return None
    except (InvalidCIDError, InvalidNameError):
        return None
    if canonical != cid or hashes.get("sha256") != digest.hex():
        return None
    return Servable(cid, manifest, project, filename, digest.hex())


def _version(path: Path) -> int:
    """The version of the verified metadata file ``path`` (0 if unreadable)."""
    try:
        return int(json.loads(path.read_bytes())["signed"]["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _foreign(directory: Path) -> list[str]:
    """What ``directory`` (no ``mirror.json`` yet) holds beyond what a mirror's
    first run, cut short, leaves, and the root file its operator put there."""
    try:
        names = [p.name for p in directory.iterdir()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    ours = {"tree", "incoming", "client", "root.json", "state.json", "p2p.key", "p2p.addr"}
    return [
        n
        for n in names
        if n not in ours and not n.endswith(".root.json") and not (n[0] == "." and ".tmp-" in n)
    ]


#: How a mirror reached over libp2p only is named among the sources.
LIBP2P = "libp2p:"


def _check_peer(peer: str) -> str:
    """A ``--peer``: an HTTP(S) URL, or ``libp2p:`` and a peer's multiaddr."""
    if not peer.startswith(LIBP2P):
        return check_url(peer)
    from tufmesh.p2p import check_peer_address

    return LIBP2P + check_peer_address(peer.removeprefix(LIBP2P))


def _list_of_str_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, list) and all(isinstance(v, str) for v in value))


def _someone_elses(directory: Path) -> bool:
    """True if ``directory`` holds what a mirror would share or write over: an
    origin's repository (``config.json``, ``cas/``) or a blob store (``blobs/``).

    A mirror makes its ``cas/`` only after ``mirror.json``, so a first run cut
    short before that is not mistaken for someone else's directory.
    """
    return any((directory / name).exists() for name in ("config.json", "cas", "blobs"))
