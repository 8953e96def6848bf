"""The client: python-tuf decides trust, tufmesh decides where bytes come from.

Invariants:

* Every metadata file goes through python-tuf's ``Updater``; a file it rejects
  is blamed on the source that served it, which is set aside for this run,
  and the refresh starts again from the others (bounded: once per source).
* An artifact is written under its final name only after python-tuf's own
  length and SHA-256 check passed on the complete file; partial data lives in
  ``NAME.part`` and only ever holds verified chunks, so a resumed download
  continues from them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import trio
import urllib3
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import (
    DelegatedRole,
    Metadata,
    Root,
    SuccinctRoles,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError
from tuf.ngclient import Updater, UpdaterConfig

from tufmesh._durable import fsync_dir, hold_lock
from tufmesh.cas import Manifest, cid_of
from tufmesh.cas._manifest import DEFAULT_MAX_MANIFEST_BYTES, MAX_CHUNK_SIZE
from tufmesh.client._download import (
    ChunkPlan,
    Replicating,
    download_plan,
    own_file,
    plan_for_manifest,
    plan_for_whole_blob,
    span_for,
)
from tufmesh.client._fetcher import (
    METADATA_BASE,
    TARGET_BASE,
    FetchConfig,
    MultiSourceFetcher,
    SourceHealth,
    done_with,
    failure_reason,
    read_body,
)
from tufmesh.client._home import ClientHome
from tufmesh.client._prefix import check_alongside
from tufmesh.client._scheduler import SchedulerConfig, SourceStats
from tufmesh.errors import (
    ChunkRejectedError,
    ClientError,
    ManifestError,
    MetadataRefusedError,
    NotInMetadataError,
    SourcesFailedError,
    TufmeshError,
)

__all__ = ["Client", "DownloadResult"]

#: Root versions a client follows from its trust anchor: a rotation a week
#: for a century.
MAX_ROOT_ROTATIONS: Final = 6000

T = TypeVar("T")

#: Roles a listing walks at most, hash bins included (an origin's bins are
#: 2**14 at most): a delegation to itself, or to 2**32 bins, must end.
MAX_ROLES: Final = 1 << 16


@dataclass
class DownloadResult:
    """One artifact fetched (or found in place)."""

    target: str
    path: Path
    length: int
    cached: bool = False
    sources: dict[str, SourceStats] = field(default_factory=dict)
    #: Wall-clock seconds spent fetching and checking bytes (not metadata).
    transfer_seconds: float = 0.0


#: The private directories of whole-file downloads: this, then tempfile's 8
#: characters (of a-z, 0-9 and _).
_PRIVATE: Final = ".tufmesh-"
#: One younger than this is never taken for abandoned (it may not be locked yet).
_PRIVATE_GRACE: Final = 60.0


@contextlib.contextmanager
def _private_directory(dest_dir: Path) -> Iterator[Path]:
    """A new directory of this download's own in ``dest_dir``, locked while
    it is in use; first, those of downloads killed before they could remove
    theirs (their lock went with them) are removed."""
    for stale in dest_dir.glob(f"{_PRIVATE}????????"):
        if re.fullmatch("[a-z0-9_]{8}", stale.name.removeprefix(_PRIVATE)):
            _remove_if_abandoned(stale)
    with tempfile.TemporaryDirectory(prefix=_PRIVATE, dir=dest_dir) as private:
        try:
            lock = hold_lock(Path(private))
        except OSError:  # (NFS emulates flock by write locks: none on a directory)
            lock = None  # (and no other run can lock it to remove it either)
        try:
            yield Path(private)
        finally:
            if lock is not None:
                os.close(lock)


def _remove_if_abandoned(path: Path) -> None:
    """Remove ``path``, a private directory of a download, if it is this
    user's, past its grace, and no process holds its lock."""
    try:
        info = path.lstat()
    except OSError:
        return
    young = time.time() - info.st_mtime < _PRIVATE_GRACE
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or young:
        return
    with contextlib.suppress(OSError):
        lock = hold_lock(path)
        if lock is not None:  # nobody's: its download was killed
            try:
                shutil.rmtree(path, ignore_errors=True)  # (never through a link: fd-based)
            finally:
                os.close(lock)


class _ArtifactMismatchError(tuf_errors.RepositoryError):
    """An artifact whose bytes are not the ones signed (a source set aside,
    as for metadata refused)."""


def _explain(exc: BaseException) -> str:
    if isinstance(exc, _ArtifactMismatchError):
        return f"served the artifact with other bytes than the signed ones ({exc})"
    if isinstance(exc, tuf_errors.ExpiredMetadataError):
        return f"metadata expired ({exc}): this may be a freeze attack"
    if isinstance(exc, tuf_errors.BadVersionNumberError):
        return f"rollback detected ({exc})"
    if isinstance(exc, tuf_errors.UnsignedMetadataError):
        # Most often a source of another repository: say so, as client init does.
        return (
            f"bad signature ({exc}): not this repository's keys' (another repository's: a "
            "wrong URL, or the wrong root.json? or forged)"
        )
    if isinstance(exc, tuf_errors.DownloadLengthMismatchError):
        return f"metadata too long ({exc})"
    if isinstance(exc, tuf_errors.LengthOrHashMismatchError):
        # (python-tuf's words name neither the file nor what it means)
        return (
            f"served metadata that is not the version signed for it ({exc}): a version of "
            "another snapshot (mix-and-match), or an old one"
        )
    return str(exc) or type(exc).__name__


class Client:
    """Fetches metadata and artifacts from a client home's sources."""

    def __init__(
        self,
        metadata_dir: Path,
        trusted_root: bytes,
        sources: Sequence[str | SourceHealth],
        *,
        fetch_config: FetchConfig | None = None,
        scheduler_config: SchedulerConfig | None = None,
        home: ClientHome | None = None,
    ) -> None:
        self.metadata_dir = metadata_dir
        self.trusted_root = trusted_root
        self.fetch_config = fetch_config or FetchConfig()
        self.scheduler_config = scheduler_config or SchedulerConfig()
        self.home = home
        health = home.health() if home is not None else []
        known = {h.url: h for h in health}
        self.fetcher = MultiSourceFetcher(
            [s if isinstance(s, SourceHealth) else known.get(s, SourceHealth(s)) for s in sources],
            self.fetch_config,
        )
        self._updater: Updater | None = None
        #: Paths are tufmesh's ``<project>/<filename>`` (False for any TUF
        #: repository: the conformance client's).
        self.artifact_paths = True
        #: Roles the last listing left out: expired delegated roles (a claimed
        #: project whose developers let its metadata lapse, docs/adr/0022).
        self.lapsed: list[str] = []
        #: ...and when the first of the roles it listed expires (Unix time):
        #: a listing kept past then lists a project whose metadata lapsed.
        self.listed_until = math.inf
        # Each source's failures when the current run began: one that failed
        # anywhere since (metadata, manifest, chunks) is not forgiven.
        self._failures_before = {h.url: h.failures for h in self.fetcher.sources}

    @classmethod
    def from_home(cls, home: ClientHome, **kwargs: Any) -> Client:
        """A client for a home made by ``tufmesh client init``, which it
        writes (python-tuf keeps its metadata there, verified)."""
        sources = home.sources()
        cache = home.metadata_dir if home.metadata_dir.exists() else home.path  # (made if gone)
        if not os.access(cache, os.W_OK):  # (a read-only mount: root too)
            raise ClientError(
                f"this client's home {home.path} cannot be written (its verified metadata is "
                "kept there): give one of your own, --home DIR or TUFMESH_HOME, and "
                "'tufmesh client init' it"
            )
        return cls(home.metadata_dir, home.trusted_root, sources, home=home, **kwargs)

    def close(self) -> None:
        """Remember source health; close connections."""
        if self.home is not None:
            self.home.save_health(self.fetcher.sources)
        self.fetcher.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- metadata ----------------------------------------------------------------

    def _new_updater(self) -> Updater:
        # Always from the trust anchor: python-tuf verifies the newer roots it
        # has cached (root_history/) again, one by one, then asks the sources
        # for the rest; a damaged cached root is passed over, not trusted. The
        # cached timestamp and snapshot stay, the floor against a rollback:
        # starting afresh from a damaged root.json had let any old version in.
        # python-tuf walks at most max_root_rotations roots past its bootstrap
        # (256 by default): from the anchor, that would be a lifetime's cap.
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        return Updater(
            str(self.metadata_dir),
            METADATA_BASE,
            None,
            TARGET_BASE,
            fetcher=self.fetcher,
            config=UpdaterConfig(max_root_rotations=MAX_ROOT_ROTATIONS),
            bootstrap=self.trusted_root,
        )

    def _with_failover(self, operation: Callable[[Updater], T]) -> T:
        """Run ``operation`` on a refreshed updater; on a TUF rejection, blame and retry."""
        rejections: list[str] = []
        artifacts_only = True  # (every rejection an artifact's bytes: said so)
        expired: str | None = None
        for _ in range(len(self.fetcher.sources) + 1):
            try:
                if self._updater is None:
                    updater = self._new_updater()
                    updater.refresh()
                    self._updater = updater
                    self._check_outvoted()
                try:
                    return operation(self._updater)
                except tuf_errors.ExpiredMetadataError as exc:
                    # A delegated role, after a verified refresh: python-tuf
                    # checks its version (and hash) against the snapshot
                    # before its expiry, so it is the file that snapshot
                    # names, expired (a claimed project's developers let it
                    # lapse), not a source's forgery: the others are asked
                    # (one may hold a newer snapshot), none is blamed.
                    rejections.append(self._blame(exc, counted=False))
                    expired = f"{exc}: the repository has not signed it again in time"
                    self._updater = None
            except (tuf_errors.RepositoryError, tuf_errors.DownloadLengthMismatchError) as exc:
                # Refused by python-tuf (a bad signature, a rollback, a file
                # longer than its role may be): the source that served it is
                # set aside and the others asked.
                rejections.append(self._blame(exc))
                artifacts_only = artifacts_only and isinstance(exc, _ArtifactMismatchError)
                self._updater = None
            except SourcesFailedError:
                raise
            except tuf_errors.DownloadError as exc:
                raise SourcesFailedError(f"cannot fetch metadata from any source: {exc}") from None
            if not self.fetcher.ordered():
                break
        if expired is not None:
            raise MetadataRefusedError(expired)
        what = "the artifact's signed bytes" if artifacts_only else "metadata that verifies"
        raise MetadataRefusedError(f"no source served {what}: " + "; ".join(rejections))

    def _check_outvoted(self) -> None:
        """Blame each source whose timestamp lost to a newer one and is not
        signed by this repository's timestamp keys: python-tuf never saw it,
        and a source serving another repository (a mistyped URL) or forging
        went unsaid for as long as another source was newer. An older
        timestamp that verifies is a source behind, not at fault."""
        outvoted, self.fetcher.outvoted = self.fetcher.outvoted, []
        if not outvoted:
            return
        try:  # the root python-tuf has just verified and kept
            root = Metadata[Root].from_file(str(self.metadata_dir / "root.json")).signed
        except (OSError, tuf_errors.RepositoryError, DeserializationError):
            return
        for source, data in outvoted:
            try:
                answer = Metadata[Timestamp].from_bytes(data)
            except (DeserializationError, ValueError, RecursionError):
                source.failures += 1  # (not said to be signed by other keys: it is not read)
                source.last_error = "served a timestamp that is not TUF metadata"
                continue
            try:
                if answer.signed.type != Timestamp.type:
                    raise tuf_errors.RepositoryError(f"a {answer.signed.type}")
                root.verify_delegate(Timestamp.type, answer.signed_bytes, answer.signatures)
            except (tuf_errors.RepositoryError, ValueError):
                source.failures += 1
                source.last_error = (
                    "served a timestamp this repository's keys did not sign (another "
                    "repository's, or one signed by keys since replaced)"
                )

    def _blame(self, exc: BaseException, *, counted: bool = True) -> str:
        source = self.fetcher.last_source
        if source is not None:
            self.fetcher.excluded.add(source)
            for health in self.fetcher.sources:
                if health.url == source and counted:
                    health.failures += 1
                    health.last_error = _explain(exc)
        return f"{source or 'a source'}: {_explain(exc)}"

    def refresh(self) -> None:
        """Bring the top-level metadata up to date (the TUF client workflow)."""
        self._with_failover(lambda updater: None)

    def target(self, path: str) -> TargetFile:
        """The signed target entry for ``path``, looked up under its normal
        form (``Demo_Pkg/f`` is ``demo-pkg/f``): another spelling would miss a
        claimed project's delegation and fall through to the hash bins, where
        the origin's online keys could sign it (docs/adr/0022)."""
        if self.artifact_paths:
            path = _normal(path)
        info = self._with_failover(lambda u: u.get_targetinfo(path))
        if info is None:
            raise NotInMetadataError(f"{path} is not in the signed metadata")
        return info

    def artifacts(self, project: str | None = None) -> list[TargetFile]:
        """Every artifact the signed metadata lists (of one project, if given)."""

        def walk(updater: Updater) -> list[TargetFile]:
            found: dict[str, TargetFile] = {}
            # python-tuf has no public listing call; _load_targets is its own
            # verified loader for a delegated role (signature, version, expiry).
            # A role's entries count only for the paths delegated to it (and to
            # every role above it), the first in TUF's pre-order walk winning,
            # as get_targetinfo resolves them: a bin's key cannot add paths
            # that belong to another bin, and none of the paths a terminating
            # delegation names (a claimed project's) count in a later role.
            # A tufmesh hash bin delegates nothing: the walk does not descend
            # below one. The bins' keys are online; roles they delegated to
            # (65,536 at most, each a few megabytes) were each loaded and
            # kept, and one listing could take gigabytes: the pip proxy was
            # killed for memory, and its pages waited meanwhile.
            Check = Callable[[str], bool]
            stack: list[tuple[str, str, tuple[Check, ...]]] = [("targets", "root", ())]
            bins: set[str] = set()
            lapsed = []
            until = math.inf
            visited: set[str] = set()  # as python-tuf's search: a role once (a cycle ends)
            while stack:
                role, parent, checks = stack.pop()
                if role in visited:
                    continue
                visited.add(role)
                if len(visited) > MAX_ROLES:
                    raise ClientError(
                        f"the signed metadata delegates to more than {MAX_ROLES:,} roles: not "
                        "listed (a repository's bins, or its metadata, are amiss)"
                    )
                if role == "targets" and self.artifact_paths:
                    checks = (_is_normal,)  # as the origin writes paths, no other spelling
                try:
                    targets: Targets = updater._load_targets(role, parent)
                except tuf_errors.ExpiredMetadataError:
                    if parent != "targets" or role == "bins":
                        raise
                    lapsed.append(role)  # its own paths only: the others list on
                    continue
                until = min(until, targets.expires.timestamp())
                for path, target in targets.targets.items():
                    if path not in found and all(check(path) for check in checks):
                        found[path] = target
                if role in bins:
                    continue
                delegations = targets.delegations
                children: list[tuple[str, Check]] = []
                if delegations is not None and delegations.succinct_roles is not None:
                    succinct = delegations.succinct_roles
                    if succinct.number_of_bins > MAX_ROLES:
                        raise ClientError(
                            f"{role} delegates to {succinct.number_of_bins:,} hash bins: more "
                            f"than the {MAX_ROLES:,} roles a listing walks"
                        )
                    children.extend(
                        (name, _bin_check(succinct, name)) for name in succinct.get_roles()
                    )
                    if self.artifact_paths:
                        bins.update(name for name, _ in children)
                elif delegations is not None:
                    ended: list[DelegatedRole] = []  # earlier terminating siblings
                    for name, child in (delegations.roles or {}).items():
                        children.append((name, _after(child, tuple(ended))))
                        if child.terminating:
                            ended.append(child)
                stack.extend((name, role, (*checks, check)) for name, check in reversed(children))
            self.lapsed, self.listed_until = lapsed, until
            return list(found.values())

        everything = self._with_failover(walk)
        if project is not None:
            from tufmesh.origin import normalize_project

            prefix = normalize_project(project) + "/"
            everything = [t for t in everything if t.path.startswith(prefix)]
        return sorted(everything, key=lambda t: t.path)

    # -- artifacts -----------------------------------------------------------------

    def download(
        self,
        path: str,
        dest_dir: Path,
        *,
        filename: str | None = None,
        progress: Callable[[int], None] | None = None,
        replicating: Replicating | None = None,
        replace: bool = True,
    ) -> DownloadResult:
        """Fetch artifact ``path`` into ``dest_dir/<filename>`` (default: its base name).

        With ``replicating`` (a mirror), chunks come from the peers its
        have-records name, and the fallback sources serve only what no peer
        holds (see :class:`ChunkScheduler`). A file already there that is not
        the artifact is replaced, or with ``replace=False`` refused (a
        :class:`ClientError` before anything is fetched).
        """
        info = self.target(path)
        try:
            dest_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ClientError(f"cannot write into {dest_dir}: {exc.strerror or exc}") from None
        dest = dest_dir / (filename or path.rsplit("/", 1)[-1])
        if os.path.lexists(dest) and not dest.is_file():  # a directory, a dangling link...
            raise ClientError(f"{dest} is in the way: not a regular file, so not replaced")
        if os.path.lexists(dest):
            # Only a file of this user's alone is a cached copy (not a link, nor
            # a file another user may change); one that holds the artifact's
            # bytes otherwise is replaced by a copy, and other bytes only if
            # asked.
            alone = own_file(dest)
            if holds(dest, info):
                if alone:
                    return DownloadResult(path, dest, info.length, cached=True)
            elif not replace:
                raise ClientError(
                    f"{dest} exists and is not {path} as signed: move it away, or replace it "
                    "(--replace)"
                    if alone
                    else f"{dest} exists, is not {path} as signed, and is no file of this "
                    "user's alone (a link, a file with other names, or another user's): move "
                    "it away, or replace it (--replace)"
                )
        part = part_path(dest)
        if os.path.lexists(part) and not own_file(part):
            # A link there would have the download write wherever it points; a
            # file of another user's (a shared directory) they could change.
            raise ClientError(
                f"{part} is in the way: not a regular file of this user's, so not written to"
            )
        if os.path.lexists(part) and os.lstat(part).st_size not in (0, info.length):
            # A download's part file is as long as the artifact from the
            # start (empty only if cut short as it was made): one of another
            # length is no download of it, and its bytes are not ours to
            # overwrite.
            raise ClientError(
                f"{part} is in the way: not a download of {path} (of another length); move it away"
            )
        cid = info.custom.get("cid") if isinstance(info.custom, dict) else None
        usable = [s for s in self.fetcher.ordered() if s.serves_blobs]
        # Fallback sources join only if the others cannot finish the download.
        preferred = [s.url for s in usable if not s.fallback]
        everyone = [s.url for s in usable]
        started = time.perf_counter()

        def chunks(mark: Callable[[int, int], None]) -> dict[str, SourceStats]:
            assert isinstance(cid, str)
            if replicating is not None:
                return self._download_chunks(
                    info, cid, [], part, progress, mark,
                    fallback=replicating.fallback, replicating=replicating,
                )  # fmt: skip
            try:
                return self._download_chunks(info, cid, preferred or everyone, part, progress, mark)
            except SourcesFailedError:
                if not preferred or preferred == everyone:
                    raise
                return self._download_chunks(info, cid, everyone, part, progress, mark)

        try:
            if _chunked(info) and (replicating is not None or everyone):
                # python-tuf's own length and SHA-256 check reads the verified
                # prefix of the file as the chunks land (_prefix.py).
                stats = check_alongside(info.verify_length_and_hashes, part, info.length, chunks)
            else:
                # python-tuf opens the path it writes by name: a directory of
                # our own, not one anybody may plant a link in.
                with _private_directory(dest_dir) as private:
                    whole = private / dest.name
                    stats = self._download_whole(info, whole, progress)
                    with open(whole, "rb") as handle:
                        info.verify_length_and_hashes(handle)  # python-tuf's own check
                    os.replace(whole, part)
        except tuf_errors.LengthOrHashMismatchError as exc:
            raise ClientError(f"{path}: the assembled file does not verify: {exc}") from None
        except FileNotFoundError as exc:
            # The check reads the part file by name: another download of the
            # same file into the same place may have renamed it, done, first.
            return self._finished_elsewhere(path, dest, info, exc)
        durable = replicating is None  # a mirror's store keeps (and syncs) its own copy
        try:
            if durable:
                # On disk before it has its name: after a power cut, the name
                # must not hold zeros that other programs would take as it.
                fd = os.open(part, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            os.replace(part, dest)
            if durable:
                fsync_dir(dest_dir)
        except FileNotFoundError as exc:
            return self._finished_elsewhere(path, dest, info, exc)
        except OSError as exc:  # a sync's late write error (a full disk, a quota, NFS)
            raise ClientError(f"cannot write {dest}: {exc.strerror or exc}") from None
        elapsed = time.perf_counter() - started
        return DownloadResult(path, dest, info.length, sources=stats, transfer_seconds=elapsed)

    @staticmethod
    def _finished_elsewhere(
        path: str, dest: Path, info: TargetFile, gone: FileNotFoundError
    ) -> DownloadResult:
        """The part file ``gone``: another download of the same file into the
        same place finished (and renamed it) first, and its file is the answer,
        if it verifies."""
        if not own_file(dest):
            raise gone
        with open(dest, "rb") as existing:
            try:
                info.verify_length_and_hashes(existing)
            except tuf_errors.LengthOrHashMismatchError as exc:
                raise ClientError(f"{dest} changed under this download: {exc}") from None
        return DownloadResult(path, dest, info.length, cached=True)

    def _download_chunks(
        self,
        info: TargetFile,
        cid: str,
        sources: list[str],
        part: Path,
        progress: Callable[[int], None] | None,
        on_verified: Callable[[int, int], None] | None = None,
        *,
        fallback: list[str] | None = None,
        replicating: Replicating | None = None,
    ) -> dict[str, SourceStats]:
        custom = info.custom
        manifest_stats: dict[str, SourceStats] = {}
        if "manifest" in custom:
            manifest, manifest_stats = self._fetch_manifest(
                custom["manifest"], [*sources, *(fallback or [])], _manifest_size(info)
            )
            if manifest.blob_cid != cid or manifest.length != info.length:
                raise ClientError(f"{info.path}: the signed manifest describes another blob")
            slots = len(sources) * self.scheduler_config.per_source
            # Replication trades single chunks: have-records are per chunk.
            span = 1 if replicating else span_for(info.length, manifest.chunk_size, slots)
            plan = plan_for_manifest(manifest, span)
        else:
            plan = plan_for_whole_blob(cid, info.length, info.hashes["sha256"])
        config = self.scheduler_config
        if replicating is not None and config.seed is None:
            # Each mirror its own chunk order: they fetch different chunks
            # from the origin, then trade them.
            config = dataclasses.replace(config, seed=int.from_bytes(os.urandom(8)))
        have = _verified_chunks(part, plan)
        if progress is not None and have:
            progress(sum(plan.span(i)[1] for i in have))
        try:
            stats = trio.run(
                lambda: download_plan(
                    plan,
                    sources,
                    part,
                    have=have,
                    fetch_config=self.fetch_config,
                    scheduler_config=config,
                    progress=progress,
                    fallback=fallback or (),
                    replicating=replicating,
                    on_verified=on_verified,
                )
            )
        except SourcesFailedError as exc:
            if exc.stats is not None:
                self._record(exc.stats)
            raise
        for name, extra in manifest_stats.items():  # the manifest's bytes count too
            stats[name].bytes += extra.bytes
        self._record(stats)
        return stats

    def _download_whole(
        self, info: TargetFile, part: Path, progress: Callable[[int], None] | None
    ) -> dict[str, SourceStats]:
        """A plain TUF repository: python-tuf fetches ``targets/`` through our fetcher."""

        def fetch(updater: Updater) -> str:
            # Failures of the artifact, not of metadata, said as such: a source
            # that served other bytes or more of them is set aside and the
            # others asked; none that served it at all ends the download.
            try:
                return updater.download_target(info, str(part), TARGET_BASE)
            except tuf_errors.LengthOrHashMismatchError as exc:
                raise _ArtifactMismatchError(str(exc)) from None
            except tuf_errors.DownloadLengthMismatchError:
                raise _ArtifactMismatchError(
                    f"served more than the artifact's signed length ({info.length:,} bytes)"
                ) from None
            except tuf_errors.DownloadError as exc:
                said = f"cannot fetch {info.path} from any source: {exc}"
                raise SourcesFailedError(said) from None

        self._with_failover(fetch)
        if progress is not None:
            progress(info.length)
        source = self.fetcher.last_source or "?"
        return {source: SourceStats(source, bytes=info.length, chunks=1)}

    def manifest(self, info: TargetFile) -> Manifest | None:
        """The verified chunk manifest a target's signed ``custom`` names, if any."""
        manifest_cid = info.custom.get("manifest") if isinstance(info.custom, dict) else None
        if not isinstance(manifest_cid, str):
            return None
        sources = [s.url for s in self.fetcher.ordered() if s.serves_blobs]
        return self._fetch_manifest(manifest_cid, sources, _manifest_size(info))[0]

    def _fetch_manifest(
        self, manifest_cid: str, sources: list[str], size: int | None
    ) -> tuple[Manifest, dict[str, SourceStats]]:
        holder: dict[str, bytes] = {}

        def verify(index: int, data: bytes | bytearray) -> None:
            if cid_of(data) != manifest_cid:
                raise ChunkRejectedError("manifest does not match its signed CID")
            holder["data"] = bytes(data)

        # Its CID is signed, and so, through the artifact's length and chunk
        # size, is its length: a source sending more is cut one byte past it.
        probe = ChunkPlan(manifest_cid, 0, 1, verify)

        def blame(source: str, reason: str) -> None:
            for health in self.fetcher.sources:
                if health.url == source:  # remembered: the next run asks it later
                    health.failures += 1
                    health.last_error = f"chunk manifest: {reason}"

        stats = _fetch_whole(probe, size, sources, self.fetcher.pool, self.fetcher.config, blame)
        try:
            return Manifest.decode(holder["data"]), stats
        except (KeyError, ManifestError) as exc:
            raise ClientError(f"bad chunk manifest {manifest_cid}: {exc}") from None

    def _record(self, stats: dict[str, SourceStats]) -> None:
        for health in self.fetcher.sources:
            stat = stats.get(health.url)
            if stat is None:
                continue
            if stat.rate is not None and stat.bytes >= 1 << 20:  # tiny files say nothing
                health.throughput = stat.rate
            clean = health.failures == self._failures_before.get(health.url, 0)
            if stat.chunks and not stat.failures and clean:
                if health.failures:
                    health.failures -= 1  # a clean run forgives an old failure, one at a time
                if not health.failures:
                    health.last_error = None  # ...and once all are, their reason
            health.failures += stat.failures
            self._failures_before[health.url] = health.failures
            if (stat.banned and not stat.left) or stat.last_error:
                health.last_error = (None if stat.left else stat.banned) or stat.last_error


def _chunked(info: TargetFile) -> bool:
    """Whether ``info`` is an entry tufmesh fetches by chunks from its sources:
    a CID and a SHA-256, and a chunk manifest unless it is one chunk. Any
    other (a plain TUF repository's, or one no origin of ours writes: a blob
    of gigabytes with no manifest would be fetched as one chunk, in memory)
    goes through python-tuf's own streaming download."""
    custom = info.custom if isinstance(info.custom, dict) else {}
    return (
        isinstance(custom.get("cid"), str)
        and isinstance(info.hashes.get("sha256"), str)
        and ("manifest" in custom or info.length <= MAX_CHUNK_SIZE)
    )


def _manifest_size(info: TargetFile) -> int | None:
    """The size of the chunk manifest ``info`` names, from its signed length
    and chunk size; None if its ``custom`` says no chunk size."""
    chunk_size = info.custom.get("chunk_size") if isinstance(info.custom, dict) else None
    if type(chunk_size) is not int or not 0 < chunk_size <= MAX_CHUNK_SIZE:
        return None
    return Manifest.encoded_size(info.length, chunk_size)


def _fetch_whole(
    plan: ChunkPlan,
    size: int | None,
    sources: list[str],
    pool: urllib3.PoolManager,
    config: FetchConfig,
    blame: Callable[[str, str], None],
) -> dict[str, SourceStats]:
    """Fetch a small blob (a manifest) of ``size`` bytes, or of at most
    :data:`DEFAULT_MAX_MANIFEST_BYTES` if unknown, from the first good source;
    ``blame(source, reason)`` each one that fails on the way.

    Sources are asked in turn, the next as soon as the last failed or
    :data:`HEDGE` seconds have passed without its answer, the first good
    answer wins: a source that answers nothing costs a second, not its read
    timeout (silent sources listed first cost 10 s each, in turn)."""
    reasons: dict[str, str] = {}
    won: list[SourceStats] = []
    running = 0
    changed = threading.Condition()

    def attempt(source: str) -> None:
        nonlocal running
        try:
            stat = _fetch_from(source, plan, size, pool, config)
        except Exception as exc:  # (whatever a hostile answer trips: its failure)
            if isinstance(exc, urllib3.exceptions.HTTPError | tuf_errors.DownloadError):
                reason = failure_reason(exc)
            else:
                reason = str(exc) or type(exc).__name__
            with changed:
                reasons[source] = reason
                # (not held there, busy: no fault). One that fails after another
                # won is blamed too: a silent source stayed first for ever.
                if getattr(exc, "fault", True):
                    blame(source, reason)
        else:
            with changed:
                won.append(stat)
        finally:
            with changed:
                running -= 1
                changed.notify_all()

    def settled() -> bool:  # (called holding the lock)
        return bool(won) or running == 0

    with changed:
        for source in sources:
            if won:
                break
            running += 1
            threading.Thread(target=attempt, args=(source,), daemon=True).start()
            changed.wait_for(settled, timeout=HEDGE)
        changed.wait_for(settled)
        if won:
            return {won[0].name: won[0]}
    listing = "; ".join(f"{s}: {r}" for s, r in reasons.items())
    raise SourcesFailedError(f"every source failed for the chunk manifest: {listing}")


#: Seconds a source has to answer before the next is asked for a manifest too.
HEDGE: Final = 1.0


class _NotHeld(Exception):
    """A source's answer other than the blob (``fault``: not a 404 or a 503)."""

    def __init__(self, reason: str, *, fault: bool) -> None:
        super().__init__(reason)
        self.fault = fault


def _fetch_from(
    source: str, plan: ChunkPlan, size: int | None, pool: urllib3.PoolManager, config: FetchConfig
) -> SourceStats:
    """The small blob of ``plan`` from ``source``, verified (:func:`_fetch_whole`)."""
    started = time.monotonic()
    response = pool.request(
        "GET", f"{source}/blobs/{plan.cid}", preload_content=False, redirect=False
    )
    if response.status != 200:
        done_with(response, whole=False)
        # (not held there; busy: no fault)
        raise _NotHeld(f"HTTP {response.status}", fault=response.status not in (404, 503))
    if size is None or size > DEFAULT_MAX_MANIFEST_BYTES:
        body, _ = read_body(response, DEFAULT_MAX_MANIFEST_BYTES, config, started)
    else:  # one byte more fails the CID check, and blames its source
        body, _ = read_body(response, size, config, started, cut=True)
    plan.verify(0, bytes(body))
    return SourceStats(source, bytes=len(body), chunks=1)


def holds(path: Path, info: TargetFile) -> bool:
    """Whether what ``path`` holds now (through a link, too) is the artifact."""
    try:
        with open(path, "rb") as existing:
            info.verify_length_and_hashes(existing)
    except (OSError, tuf_errors.LengthOrHashMismatchError):
        return False
    return True


def _verified_chunks(part: Path, plan: ChunkPlan) -> set[int]:
    """Chunks of an interrupted download that are already in place and verify."""
    try:
        if part.stat().st_size != plan.length:
            return set()
    except FileNotFoundError:
        return set()
    have = set()
    with open(part, "rb") as handle:
        for index in range(plan.count):
            offset, length = plan.span(index)
            handle.seek(offset)
            try:
                plan.verify(index, handle.read(length))
            except (ChunkRejectedError, TufmeshError):
                continue
            have.add(index)
    return have


def _normal(path: str) -> str:
    """``path`` with its project name in normal form; NotInMetadataError if it
    is no artifact path at all."""
    from tufmesh.origin._names import target_path

    project, _, filename = path.partition("/")
    try:
        return target_path(project, filename)
    except TufmeshError:
        raise NotInMetadataError(
            f"{path[:200]!r} is not an artifact path: give PROJECT/FILENAME "
            "('tufmesh ls PROJECT' lists them)"
        ) from None


def _is_normal(path: str) -> bool:
    try:
        return _normal(path) == path
    except NotInMetadataError:
        return False


def _after(role: DelegatedRole, ended: tuple[DelegatedRole, ...]) -> Callable[[str], bool]:
    """Whether a path is ``role``'s to list: delegated to it, and to no
    terminating delegation before it (TUF's search stops at that one)."""
    return lambda path: (
        role.is_delegated_path(path)
        and not any(earlier.is_delegated_path(path) for earlier in ended)
    )


def _bin_check(succinct: SuccinctRoles, name: str) -> Callable[[str], bool]:
    """Whether a path is delegated to hash bin ``name``."""
    return lambda path: succinct.get_role_for_target(path) == name


def part_path(dest: Path) -> Path:
    """Where a download to ``dest`` keeps its verified chunks until it completes."""
    return dest.with_name(dest.name + ".part")
