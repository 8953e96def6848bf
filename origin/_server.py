"""The origin's HTTP service: the static TUF tree, blobs with Range, and uploads.

Uploads are group-committed: every upload streams into the store on its own,
then waits in one queue; a single committer takes everything waiting, publishes
it as one new version of the affected bins, snapshot and timestamp, and only
then answers each upload. While one batch is being signed and written, the
next one gathers, so the number of snapshot versions grows with the number of
commits, not of uploads.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import math
import os
import re
import socket
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, final

import trio
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from tufmesh._durable import served_versions, write_atomic
from tufmesh._shares import Pace, Shares, UploadFloor, counted_machine, is_loopback, machine_of
from tufmesh._ui import log
from tufmesh.cas import BlobStore, BlobWriter, Scrubber, cid_from_sha256, parse_cid
from tufmesh.cas._store import SCRUB_BYTES, SCRUB_INTERVAL
from tufmesh.errors import (
    ArtifactRefusedError,
    AuthError,
    BinFullError,
    CommitterGoneError,
    ConflictError,
    ForbiddenError,
    InvalidNameError,
    OriginError,
    OwnedMetadataError,
    QuotaError,
    StoreError,
    TufmeshError,
)
from tufmesh.origin._config import OriginConfig
from tufmesh.origin._names import check_filename, check_new_filename, normalize_project
from tufmesh.origin._owned import owned_role
from tufmesh.origin._projects import ProjectRegistry
from tufmesh.origin._publish import OUTCOME_HEADER
from tufmesh.origin._repository import Artifact, is_sha256, read_removed, unrotated_claims
from tufmesh.origin._seeding import MIRROR_HEADER, SeedGate, slots_within
from tufmesh.origin._signer import CommitState, Committer, RunSync, SignerProcess
from tufmesh.p2p import PACED_PIECE, AnnouncementGate, P2PNode, topic_for

__all__ = [
    "ByteCounter",
    "OriginService",
    "ServiceConfig",
    "build_app",
    "serve",
    "start_http",
    "tree_routes",
]

_IMMUTABLE: Final = "public, max-age=31536000, immutable"


def _changes(
    repo_dir: Path, role: str, version: int, data: bytes | bytearray
) -> tuple[dict[str, list[str]], list[str]]:
    """The paths ``data`` (``role``'s ``version``, just published) adds to and
    drops from the version before it (on disk still: superseded versions are
    kept a while), for the audit log; and the blobs it names."""
    targets = json.loads(data)["signed"]["targets"]
    cids = [
        custom["cid"]
        for target in targets.values()
        if isinstance(custom := target.get("custom"), dict) and isinstance(custom.get("cid"), str)
    ]  # (an entry kept from the bins may have none)
    now = set(targets)
    try:
        before_data = (repo_dir / "metadata" / f"{version - 1}.{role}.json").read_bytes()
        before = set(json.loads(before_data)["signed"]["targets"])
    except (OSError, ValueError, KeyError, TypeError):  # the first version, or gone already
        before = set()
    return {"added": sorted(now - before), "dropped": sorted(before - now)}, cids


#: An online role this long past its re-signing time makes /healthz degraded.
REFRESH_OVERDUE: Final = timedelta(minutes=5)

#: The committer's refusals of a stored upload, each with its answer's status.
_REFUSALS: Final = (
    (ConflictError, 409),
    (BinFullError, 507),  # Insufficient Storage: the repository needs more bins
    (QuotaError, 413),  # the project's, not this upload's, size
    (ArtifactRefusedError, 500),  # this artifact's own trouble: its uploader's to know
)
_METADATA_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.json")


@dataclass(frozen=True)
class ServiceConfig:
    """Limits of the HTTP service, with the reason for each default."""

    #: Bytes handed to the store per thread hop while an upload streams in.
    #: 1 MiB keeps thread switches under 0.1% of the time at disk speed.
    upload_buffer: int = 1 << 20
    #: Uploads published in one commit at most; bounds the work (and the
    #: latency) of one commit. 1,000 small artifacts commit in well under 1 s.
    max_batch: int = 1000
    #: Uploads waiting for a commit; beyond this, uploaders wait (backpressure).
    max_queue: int = 10_000
    #: Never sleep longer than this between expiry checks (so a clock jump
    #: or a changed config is noticed within the hour).
    max_refresh_sleep: float = 3600.0
    #: A failed re-signing is retried at most this long after the last try.
    max_refresh_retry: float = 60.0
    #: How often the store's garbage is collected: blobs no published
    #: artifact pins (uploads refused by the committer, a failed batch's,
    #: removed artifacts'), once past the store's grace period.
    gc_interval: float = 3600.0
    #: Seconds between two steps of the store's scrub (``SCRUB_BYTES`` each).
    scrub_interval: float = SCRUB_INTERVAL


#: Where a file gone before its answer started can be found now (or None).
_Again = Callable[[], Path | None] | None


class _BigFileResponse(FileResponse):
    """A file response; with ``again``, a file that is gone before the answer
    starts (a blob still arriving, stored meanwhile) is served from the path
    ``again`` then gives, if any."""

    # Starlette's default 64 KiB chunks serve at an eighth of nginx's speed;
    # 4 MiB chunks come close to it (shared/notes/http-throughput.md), 1 MiB
    # not far behind. Each answer a client does not read holds one in memory
    # (300 such held 1.3 GB with 4 MiB): 1 MiB, as chunks are.
    chunk_size = 1 << 20

    def __init__(self, *args: Any, again: _Again = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.again = again

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.again is None:  # nowhere else to look: Starlette's own answer
            await super().__call__(scope, receive, send)
            return
        started = False

        async def watched(message: Any) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await super().__call__(scope, receive, watched)
        except (RuntimeError, FileNotFoundError):  # Starlette: "File at path ... does not exist"
            path = self.again() if not started else None
            if path is None:
                raise
            self.path, self.again = path, None
            await super().__call__(scope, receive, send)

    @contextlib.asynccontextmanager
    async def _open_file(self) -> AsyncIterator[Any]:
        # Starlette opens the file after it has sent the head: gone by then
        # (stored meanwhile), the same bytes are where ``again`` says.
        import anyio

        try:
            file = await anyio.open_file(self.path, mode="rb")
        except FileNotFoundError:
            path = self.again() if self.again is not None else None
            if path is None:
                raise
            file = await anyio.open_file(path, mode="rb")
        try:
            yield file
        finally:
            with anyio.CancelScope(shield=True):
                await file.aclose()


@dataclass
class _Pending:
    artifact: Artifact
    done: trio.Event = field(default_factory=trio.Event)
    result: int | BaseException | None = None


#: The origin announces a new timestamp at most this often (seconds): a
#: burst of commits (70 a second in bench/publish.py) is one announcement a
#: second, each a flood of the whole network, not one a commit.
ANNOUNCE_INTERVAL: Final = 1.0
#: ...and gives one up after this long (sent again after the interval).
ANNOUNCE_TIMEOUT: Final = 5.0


@final
class OriginService:
    """The running origin: uploads, one committer, one expiry refresher."""

    def __init__(
        self,
        repo_dir: Path,
        committer: Committer,
        config: ServiceConfig | None = None,
        *,
        run_sync: RunSync = trio.to_thread.run_sync,
    ) -> None:
        """``run_sync`` runs blocking store work; tests pass an inline one so that
        virtual time (``trio.testing.MockClock``) sees every step."""
        self.dir = Path(repo_dir)
        self.committer = committer
        self.config = config or ServiceConfig()
        self.run_sync = run_sync
        self.repo_config = OriginConfig.load(self.dir)
        self.store = BlobStore(self.dir / "cas")
        self.projects = ProjectRegistry(self.dir)
        self._send, self._receive = trio.open_memory_channel[_Pending](self.config.max_queue)
        self.commits = 0
        self.published = 0
        self.refresh_failures = 0
        self.refresh_failing = False  # the last attempt to re-sign failed
        self.collected = 0  # blobs deleted as garbage
        #: Published artifacts' blobs found corrupt on disk and quarantined
        #: (by the scrub, or by fsck before a start): no longer served, until
        #: 'origin restore' stores them again.
        self.quarantined: set[str] = set()
        self._moved: set[str] = set()  # what the store's quarantine held when last read
        self.quarantined |= self.newly_quarantined()
        #: Bytes stored for claimed projects and not yet in their signed
        #: metadata: counted against their quota until the developers' next
        #: version, or the next collection, which deletes what is left.
        #: (Per project, CID -> (file name, length, the chunk manifest made of
        #: it: a version may add only these, or what the project publishes):
        #: the same bytes sent again count once, other bytes under the same
        #: name twice, as both are on the disk.)
        self.staged: defaultdict[str, dict[str, tuple[str, int, str | None]]] = defaultdict(dict)
        #: Bytes of uploads stored and then refused (other bytes under a
        #: published or removed name): on the disk until the next collection,
        #: and counted against their project's quota until then.
        self.refused: defaultdict[str, dict[str, int]] = defaultdict(dict)  # CID -> length
        #: Bytes the uploads being read may still store, per project (each
        #: reserves its length, or its limit, as it gets its turn): uploads at
        #: once cannot together read past a project's quota.
        self.reading: Counter[str] = Counter()
        #: Bytes being read under published names (another upload's, or the
        #: same bytes again): refused, they count as ``refused`` does.
        self.resending: Counter[str] = Counter()
        #: Why projects.json cannot be read, once said (None: it can).
        self.projects_damaged: str | None = None
        self.counter: ByteCounter | None = None
        #: Mirrors' chunk requests, over HTTP and libp2p alike (ADR 12).
        self.uploads = SeedGate()
        #: With --p2p-port: announces each new timestamp (:meth:`run_announcer`).
        self.p2p: P2PNode | None = None
        self._announced = 0
        self._committed = trio.Event()  # the timestamp may have changed
        self._replan = trio.Event()  # ...and so may the roles' expiries: the refresher's

    def published_entry(self, project: str, filename: str) -> tuple[str, int] | None:
        """The sha256 and length of ``project/filename`` if it is published (its
        link is in the tree: ``targets/<project>/<sha256>.<filename>``)."""
        try:
            with os.scandir(self.dir / "targets" / project) as entries:
                for entry in entries:
                    if entry.name[64:] == f".{filename}":
                        return entry.name[:64], entry.stat().st_size
        except OSError:
            pass
        return None

    def removed_names(self) -> set[str]:
        """The paths published once and removed since (``REPO/removed.json``,
        which the committer writes): never published again."""
        try:
            return set(read_removed(self.dir))
        except OriginError:  # damaged: the committer refuses at signing
            return set()

    def held(self, project: str, besides: str | None = None) -> int:
        """Bytes ``project`` holds, as its quota counts them: published (as
        known from its last publication), stored awaiting its developers'
        signature, and stored then refused (until the next collection); but
        for what is stored under file name ``besides`` (before an upload's
        body: the same bytes sent again count once)."""
        used = self.committer.used.get(project, 0) + self.wasted(project)
        return used + sum(n for name, n, _ in self.staged[project].values() if name != besides)

    @contextlib.contextmanager
    def reserving(
        self, project: str, nbytes: int, *, resent: bool = False
    ) -> Iterator[Callable[[int], None]]:
        """Count ``nbytes`` against ``project``'s quota while an upload is
        read (in ``resending``, for a published name); the function it gives
        counts more (what a body without a length brings, as it arrives)."""
        counter = self.resending if resent else self.reading
        total = nbytes
        counter[project] += nbytes

        def more(extra: int) -> None:
            nonlocal total
            total += extra
            counter[project] += extra

        try:
            yield more
        finally:
            counter[project] -= total
            if not counter[project]:
                del counter[project]

    def wasted(self, project: str) -> int:
        """Bytes of ``project``'s uploads stored and then refused, on the disk
        until the collector deletes them."""
        return sum(self.refused[project].values())

    def refuse(self, project: str, cid: str, length: int) -> None:
        """Count a stored upload refused (unless it is staged already: the
        same blob awaits its developers' signature, and counts as that)."""
        if cid not in self.staged[project]:
            self.refused[project][cid] = length

    def audit(self, entry: dict[str, Any]) -> None:
        """Append one publication to ``REPO/uploads.log`` (a JSON object a line:
        when, from which address, with which token, what): after a token
        leaked, what was published with it, and since when. A log that cannot
        be written is said, and the publication stands (it is signed already)."""
        try:
            with open(self.dir / "uploads.log", "a", encoding="utf-8") as uploads:
                uploads.write(json.dumps(entry, sort_keys=True) + "\n")
        except OSError as exc:
            log(f"origin: cannot write uploads.log: {exc.strerror}")

    async def submit(self, artifact: Artifact) -> int:
        """Publish ``artifact`` (already stored); return the snapshot version holding it."""
        pending = _Pending(artifact)
        await self._send.send(pending)
        await pending.done.wait()
        if isinstance(pending.result, BaseException):
            raise pending.result
        assert pending.result is not None
        return pending.result

    async def run_committer(self) -> None:
        """Publish queued uploads in batches, forever."""
        while True:
            batch = [await self._receive.receive()]
            while len(batch) < self.config.max_batch:
                try:
                    batch.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            results: list[int | BaseException]
            try:
                results = list(await self.committer.publish([p.artifact for p in batch]))
            except OriginError as exc:  # a disk or signer failure fails this batch only
                results = [exc] * len(batch)
            self.commits += 1
            self._committed.set()
            self._replan.set()
            for pending, result in zip(batch, results, strict=True):
                pending.result = result
                if not isinstance(result, BaseException):
                    self.published += 1
                pending.done.set()

    async def run_refresher(self) -> None:
        """Re-sign online roles before a quarter of their lifetime remains, forever.

        A failure (a signer out of reach, a full disk) is said once and retried,
        1 s later, then twice as long each time up to ``max_refresh_retry``: it
        must not stop the origin, whose metadata would then surely expire.

        Each commit plans again: it signs roles with today's lifetimes, which
        may be shorter than those the plan was made for (``expiry_days``
        lowered in ``config.json``): a bin of a one-minute life expired while
        the refresher slept its hour (a review).
        """
        failing: str | None = None
        warned: tuple[str, ...] = self.committer.state.warnings  # said at start already
        retry = 1.0
        while True:
            try:
                await self.committer.refresh()
            except OriginError as exc:
                if str(exc) != failing:
                    failing = str(exc)
                    log(f"origin: re-signing failed, retrying: {exc}")
                self.refresh_failures += 1
                self.refresh_failing = True
                await trio.sleep(retry)
                retry = min(retry * 2, self.config.max_refresh_retry)
                continue
            self.refresh_failing = False
            if failing is not None:
                log("origin: re-signing works again")
                failing, retry = None, 1.0
            self._committed.set()
            state = self.committer.state
            if state.warnings != warned:  # an offline role nearer its end: said once
                warned = state.warnings
                for warning in warned:
                    log(f"origin: warning: {warning}")
            await self._until_due()

    async def _until_due(self) -> None:
        """Sleep until the committer's state says a role is due (or for
        ``max_refresh_sleep``), planned again after each commit that changed
        it (a failed one leaves the plan as it was)."""
        latest = trio.current_time() + self.config.max_refresh_sleep
        state: CommitState | None = None
        deadline = latest
        while True:
            self._replan = trio.Event()
            if self.committer.state is not state:
                state = self.committer.state
                due = (state.next_refresh - state.now).total_seconds()
                deadline = min(trio.current_time() + max(due, 1.0), latest)
            wait = deadline - trio.current_time()
            if wait <= 0:
                return
            with trio.move_on_after(wait) as sleeping:
                await self._replan.wait()
            if sleeping.cancelled_caught:
                return

    async def run_collector(self) -> None:
        """Collect the store's garbage every ``gc_interval``, forever."""
        while True:
            await trio.sleep(self.config.gc_interval)
            try:
                report = await self.run_sync(self.store.gc)
            except (OSError, TufmeshError) as exc:  # a full or failing disk: next time
                log(f"origin: collecting garbage failed: {exc}")
                continue
            self.collected += len(report.deleted)
            # What it deleted stops counting; what it kept (younger than its
            # grace, or stored while it ran) is still on the disk, and counts.
            gone = set(report.deleted)
            _forget(self.staged, gone)
            _forget(self.refused, gone)
            # A refused upload of bytes something published pins (the same
            # file under a name in other case, say) is on the disk anyway and
            # never collected: it stops counting too (else until a restart).
            with contextlib.suppress(OSError, TufmeshError):
                pins = await self.run_sync(self.store.pins)
                _forget(self.refused, set().union(*pins.values()))

    async def run_scrubber(self) -> None:
        """Check the store a little at a time, forever (:func:`scrub_forever`).
        Served, a blob gone bad had every mirror that fetched a chunk of it
        ban the origin for the rest of its sync, and every client fail on it,
        until an operator ran fsck."""
        scrubber = Scrubber(self.store)

        def found(cids: list[str]) -> None:
            self.quarantined.update(cids)
            log(
                f"origin: {len(cids)} blob(s) corrupt on disk, quarantined and no longer "
                f"served: {', '.join(cids)}; fetch their artifacts from a mirror "
                "('tufmesh get') and store them again ('tufmesh origin restore')"
            )

        interval = self.config.scrub_interval
        await scrub_forever(
            functools.partial(scrubber.step, SCRUB_BYTES), self.run_sync, found, "origin",
            shortest=interval, every=interval,
        )  # fmt: skip

    def newly_quarantined(self) -> set[str]:
        """Published blobs that anyone's fsck (before the start, or while the
        origin serves) moved to the store's quarantine since the last call.
        Reads the disk, and may wait for the store's lock: not on the loop."""
        moved = self.store.quarantined()
        new = moved - self._moved
        pinned = frozenset().union(*self.store.pins().values()) if new else frozenset()
        self._moved = moved  # (once the pins were read: a failure leaves them new)
        return new & pinned

    def lost(self) -> list[str]:
        """The quarantined blobs not stored again since."""
        self.quarantined = {cid for cid in self.quarantined if not self.store.has(cid)}
        return sorted(self.quarantined)

    async def run_announcer(self) -> None:
        """Announce each new timestamp over ``p2p``, the newest only, and
        ANNOUNCE_INTERVAL apart at least: a burst of commits is one
        announcement a second, not one each (each floods the whole network).
        With no peer in its gossip mesh yet (just started, or every mirror
        gone a while) the origin waits for one: published then, the
        announcement would reach nobody, and a copy is never published again
        (its bytes are its identity: it is seen already)."""
        while True:
            await self._committed.wait()
            self._committed = trio.Event()
            version = self.committer.state.timestamp_version
            if self.p2p is None or version == self._announced:
                continue
            sent = False
            # Best effort (mirrors also poll), and never held up for long.
            with trio.move_on_after(ANNOUNCE_TIMEOUT), contextlib.suppress(Exception):
                if self.p2p.mesh_size():
                    await self.p2p.announce((self.dir / "metadata" / "timestamp.json").read_bytes())
                    sent = True
            if sent:
                self._announced = version
            else:
                self._committed.set()  # tried again after the interval
            await trio.sleep(ANNOUNCE_INTERVAL)


async def scrub_forever(
    step: Callable[[], tuple[list[str], int]],
    run_sync: RunSync,
    found: Callable[[list[str]], None],
    who: str,
    *,
    shortest: float,
    every: float,
) -> None:
    """A daemon's scrub (the origin's, a mirror's): one ``step`` (a
    :class:`Scrubber`'s, of ``SCRUB_BYTES``) every ``every`` seconds on
    average however big the blobs, ``shortest`` apart at least, in
    ``run_sync``; ``found`` hears of the blobs quarantined. A failure is said
    once on stderr (``who``: the daemon) and never ends the daemon."""
    read = 0
    failing: str | None = None
    while True:
        await trio.sleep(max(shortest, read / SCRUB_BYTES * every))
        try:
            quarantined, read = await run_sync(step)
        except Exception as exc:  # never the daemon's end: say it once, try again later
            quarantined, read = [], SCRUB_BYTES
            if str(exc) != failing:
                failing = str(exc)
                log(f"{who}: checking the store failed: {exc}")
        if quarantined:
            found(quarantined)


class _Published:
    """Which versioned metadata files the current ``timestamp.json`` reaches.

    A commit writes ``N.snapshot.json`` and ``N.bin-k.json`` before the
    timestamp that names them, and a commit that fails in between leaves them
    unnamed, for the next commit to write again with other bytes. Served
    before they are named (a client may guess N), they would be cached as
    immutable (by a CDN too) and then fail every client behind that cache.
    So a versioned role file is served only up to the version the published
    snapshot names (roots: always; they are written atomically, by ceremonies).
    """

    def __init__(self, metadata_dir: Path) -> None:
        self.dir = metadata_dir
        self._seen: tuple[int, int, int] | None = None
        self._versions: dict[str, int] = {}

    def reachable(self, name: str) -> bool:
        version, dot, role = name.removesuffix(".json").partition(".")
        if not dot or not version.isdigit() or role == "root":
            return True  # timestamp.json, root.json, N.root.json
        self._refresh()
        return int(version) <= self._versions.get(role, 0)

    def _refresh(self) -> None:
        try:
            stat = (self.dir / "timestamp.json").stat()
        except OSError:
            self._seen, self._versions = None, {}
            return
        seen: tuple[int, int, int] | None = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if seen == self._seen:
            return
        versions = served_versions(self.dir)
        if versions is None:
            seen = None  # not (yet) a complete tree, or a failed read: again next time
        self._seen, self._versions = seen, versions or {}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _outcome_unknown(what: str) -> JSONResponse:
    """The committer stopped before it answered (the origin stops too): what
    it was asked may be published. A 503 (not a 500, which said it was not):
    the same bytes sent again, once the origin is back, are answered as
    published, or published."""
    return _error(
        503,
        f"the origin stopped before it could say whether {what} is published: it may be; "
        "send the same again once the origin is back (the same bytes are answered as "
        "published, or published)",
        headers={"retry-after": str(UPLOAD_RETRY_AFTER), OUTCOME_HEADER: "unknown"},
    )


class NoAnswer(Response):
    """What a client that has hung up gets: nothing. (An answer raced
    hypercorn closing the connection, which shuts the socket's sending side
    meanwhile: a BusyResourceError and a traceback in the log.)"""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        return


def tree_routes(
    root: Path,
    store: BlobStore,
    partial: Callable[[str, int, int], Path | None] | None = None,
    gate: SeedGate | None = None,
) -> list[Route]:
    """GET/HEAD for a published tree: ``metadata/``, ``targets/``, and ``blobs/{cid}``.

    Shared by the origin and the mirrors: the same static TUF layout, so that
    any TUF client (and any static web server) can stand in for either. A
    mirror passes ``partial``: for a blob still arriving, the file holding
    the verified bytes ``start..end`` (a Range request only), else None. The
    origin passes ``gate``: its mirrors' chunk requests are admitted by it
    (super-seeding, :mod:`tufmesh.origin._seeding`).
    """
    metadata_dir = (root / "metadata").resolve()
    targets_dir = (root / "targets").resolve()

    def file(
        path: Path,
        media_type: str | None,
        cache: str,
        again: _Again = None,
    ) -> Response:
        headers = {"cache-control": cache}
        return _BigFileResponse(path, media_type=media_type, headers=headers, again=again)

    published = _Published(metadata_dir)

    async def metadata(request: Request) -> Response:
        name = request.path_params["name"]
        if not _METADATA_NAME.fullmatch(name):
            return _error(404, "no such metadata")
        path = metadata_dir / name
        if not path.is_file() or not published.reachable(name):
            return _error(404, f"no metadata {name}")
        # Versioned files never change; the unversioned ones must be re-fetched.
        unversioned = name in ("timestamp.json", "root.json")
        return file(path, "application/json", "no-cache" if unversioned else _IMMUTABLE)

    async def targets(request: Request) -> Response:
        project, name = request.path_params["project"], request.path_params["name"]
        try:
            if normalize_project(project) != project:
                raise InvalidNameError("not normalised")
            # A link's name: the sha256, a dot, the artifact's file name.
            sha256, dot, filename = name.partition(".")
            if not (is_sha256(sha256) and dot):
                raise InvalidNameError("not <sha256>.<filename>")
            check_filename(filename)
        except InvalidNameError:
            return _error(404, "no such target")
        path = targets_dir / project / name
        if not path.is_file():
            return _error(404, f"no target {project}/{name}")
        # The link holds the blob's file: one the store quarantined (its
        # bytes gone bad on disk) is not served, until stored again.
        sha256, dot, _ = name.partition(".")
        if dot and is_sha256(sha256) and not store.has(cid_from_sha256(bytes.fromhex(sha256))):
            return _error(404, f"{project}/{name}: its blob is not in the store now")
        return file(path, None, _IMMUTABLE)

    async def blob(request: Request) -> Response:
        span = _single_range(request.headers.get("range"))
        try:
            cid, _ = parse_cid(request.path_params["cid"])
        except StoreError as exc:
            return _error(404, str(exc))
        path: Path | None
        again = None
        try:
            path = store.path(cid)
        except StoreError as exc:
            # A blob still arriving (a mirror): the range, if every chunk in it
            # is verified. A file gone meanwhile completed: asked again, it is stored.
            if partial is None or span is None:
                return _error(404, str(exc))
            arriving = functools.partial(partial, cid, span[0], span[1])
            path = arriving()
            if path is None or not path.is_file():
                return _error(404, str(exc))
            if "if-range" in request.headers:
                # A failed If-Range turns a range request into the whole file,
                # unverified chunks and all.
                return _error(404, f"{cid} is still arriving: ranges only, without If-Range")
            # If it completes meanwhile: renamed (the partial's next path),
            # then stored (by then no longer partial).
            again = lambda: arriving() or _stored(store, cid)  # noqa: E731
        if (
            gate is not None
            and span is not None
            and MIRROR_HEADER in request.headers
            and request.method == "GET"  # a HEAD sends nothing: it seeds nothing
        ):
            # The gate is charged what will be sent, not what was asked for
            # (bytes=0-99999999999999999999 held a slot and the byte budget
            # for ever); a range past the end is Starlette's 416, ungated.
            try:
                size = min(span[1] + 1, path.stat().st_size) - span[0]
            except OSError:
                size = 0  # gone meanwhile: ``again`` or a 404 will say
            if size > 0:
                patient = request.headers[MIRROR_HEADER] == "patient"
                requester = counted_machine(request.client.host if request.client else None)
                return _gated(gate, (cid, span[0]), size, path, patient, requester, again)
        return file(path, "application/octet-stream", _IMMUTABLE, again)

    return [
        Route("/metadata/{name}", metadata, methods=["GET", "HEAD"]),
        Route("/targets/{project}/{name}", targets, methods=["GET", "HEAD"]),
        Route("/blobs/{cid}", blob, methods=["GET", "HEAD"]),
    ]


def _stored(store: BlobStore, cid: str) -> Path | None:
    """Where the store holds ``cid``, or None."""
    try:
        return store.path(cid)
    except StoreError:
        return None


def _gated(
    gate: SeedGate,
    chunk: tuple[str, int],
    size: int,
    path: Path,
    patient: bool,
    requester: str | None,
    again: _Again,
) -> Response:
    """A mirror's request for ``size`` bytes of a chunk from the machine
    ``requester`` (None: not counted), as the seeding gate decides."""
    now = trio.current_time()
    verdict = gate.admit(chunk, now, patient=patient, size=size, requester=requester)
    if verdict != "serve":
        retry = gate.retry_after(now, verdict)
        headers = {"x-tufmesh-refused": verdict, "retry-after": f"{retry:.3g}"}
        return JSONResponse({"error": f"refused: {verdict}"}, 503, headers=headers)
    return _GatedResponse(
        path,
        media_type="application/octet-stream",
        headers={"cache-control": _IMMUTABLE},
        on_end=lambda completed: gate.done(
            chunk, trio.current_time(), completed=completed, requester=requester
        ),
        floor=gate.floor,
        again=again,
    )


class _GatedResponse(_BigFileResponse):
    """A file response that reports its end to the gate: sent whole, or not,
    or fallen behind its floor (its slot then goes to others: a requester
    that does not read, or reads a trickle, must not hold one for ever; the
    send itself cannot be cut, hypercorn shields it).

    ``floor(start)`` says when each piece must be out
    (:class:`~tufmesh._shares.UploadFloor`, as over libp2p): the answer is
    overdue once the piece on its way (or, between pieces, the pieces begun
    so far) is due. A requester that stops reading loses its slot within one
    piece's time past its grace, however long the range it asked for."""

    def __init__(
        self, *args: Any, on_end: Callable[[bool], None], floor: Callable[[float], UploadFloor],
        **kwargs: Any,
    ) -> None:  # fmt: skip
        super().__init__(*args, **kwargs)
        self.on_end = on_end
        self.floor = floor
        self._ended = False
        self._begun = 0  # body bytes handed to the server so far
        self._piece: tuple[int, int, float] | None = None  # (after, size, began) on its way

    def _end(self, completed: bool) -> None:
        if not self._ended:
            self._ended = True
            self.on_end(completed)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        floor = self.floor(trio.current_time())
        moved = trio.Event()  # set when a piece starts or ends (then replaced)

        def move(piece: tuple[int, int, float] | None) -> None:
            nonlocal moved
            self._piece = piece
            moved.set()
            moved = trio.Event()

        async def counting(message: Any) -> None:
            if message["type"] != "http.response.body":
                await send(message)
                return
            began, sent, size = trio.current_time(), self._begun, len(message.get("body", b""))
            self._begun += size
            move((sent, size, began))
            await send(message)
            move(None)

        async def overdue() -> None:
            while True:
                piece, changed = self._piece, moved
                due = floor.due(self._begun) if piece is None else floor.due(*piece)
                with trio.move_on_at(due) as waiting:
                    await changed.wait()
                if waiting.cancelled_caught:
                    break  # nothing moved by when it was due
            self._end(False)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(overdue)
                await super().__call__(scope, receive, counting)
                self._end(True)
                nursery.cancel_scope.cancel()
        finally:
            self._end(False)


#: A number in a header, in ASCII digits (str.isdigit also takes "²", which
#: int() refuses: a Range header byte 0xB2 was a 500).
_DIGITS: Final = re.compile(r"[0-9]{1,20}")
#: One closed byte range.
_RANGE: Final = re.compile(r"bytes=[ \t]*([0-9]{1,20})-([0-9]{1,20})[ \t]*")


def _single_range(header: str | None) -> tuple[int, int] | None:
    """``(start, end)`` of a ``Range: bytes=start-end`` header, else None."""
    match = _RANGE.fullmatch(header) if header is not None else None
    if match is None or int(match[1]) > int(match[2]):
        return None
    return int(match[1]), int(match[2])


#: How long the end of a response may wait, shielded from cancellation (ByteCounter).
_END_WAIT: Final = 5.0
#: Downloads (GET, HEAD) answered at once for one client address (an IPv6
#: /64), and for all: more are refused (503, ask again in a second). Each
#: holds up to a chunk in memory while its client reads, for as long as the
#: client lets it (a client that reads nothing is dropped after
#: ``SEND_TIMEOUT``; one that reads a byte now and then is not).
MAX_DOWNLOADS_PER_HOST: Final = 64
MAX_DOWNLOADS: Final = 512
#: A connection whose client takes none of the data sent for this long is
#: dropped by the kernel (``TCP_USER_TIMEOUT``, which Linux applies to a closed
#: receive window too). Hypercorn has no send timeout: a client that asked
#: and never read held its answer's memory and a socket for ever.
SEND_TIMEOUT: Final = 60.0
#: Response bodies below this size skip the upload pacing queue (ByteCounter)...
_SMALL: Final = 64 * 1024
#: ...as long as, among themselves, they keep within the rate after a burst
#: of this many seconds' worth of it.
_SMALL_BURST: Final = 0.5


@dataclass
class ByteCounter:
    """An ASGI wrapper that counts the response body bytes an app sends.

    With ``max_rate`` (bytes per second), it also paces them: one token bucket
    for the whole server, so a volunteer's upload link is never saturated.
    """

    app: Any
    served: int = 0
    max_rate: float | None = None
    downloads: Shares = field(default_factory=lambda: Shares(MAX_DOWNLOADS_PER_HOST, MAX_DOWNLOADS))
    _next: float = 0.0  # when the bytes counted so far will have left, at max_rate
    _small_next: float = -math.inf  # the same for the small bodies alone

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        unread = _has_body(scope)  # a request body not yet read to its end

        async def receiving() -> Any:
            nonlocal unread
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                unread = False
            return message

        closing = False

        async def forward(message: Any) -> None:
            """``send``, until hypercorn closes the connection under it: when
            the client leaves, hypercorn shuts the socket down (``send_eof``)
            outside its send lock, and a send at that moment raised
            BusyResourceError out of the app (a traceback in the log, where a
            send on the closed socket that follows is quietly dropped). Both
            mean the same: nobody reads the rest."""
            nonlocal closing
            if closing:
                return
            try:
                await send(message)
            except trio.BusyResourceError:
                closing = True

        async def counting(message: Any) -> None:
            if message["type"] != "http.response.body":
                await forward(message)
                return
            body = message.get("body", b"")
            split = bool(self.max_rate) and len(body) > PACED_PIECE
            if split:
                # Paced piece by piece, so that the body flows (see PACED_PIECE),
                # every piece in the queue (a short last one too: as a small
                # body of its own it skipped the queue, and ranges of 128 KiB
                # less a byte went at twice the rate).
                view = memoryview(body)
                *pieces, last = (
                    view[i : i + PACED_PIECE] for i in range(0, len(view), PACED_PIECE)
                )
                for piece in pieces:
                    await self.pace(len(piece), piece=True)
                    await forward(
                        {"type": "http.response.body", "body": bytes(piece), "more_body": True}
                    )
                body = bytes(last)
                message = {**message, "body": body}
            await self.pace(len(body), piece=split)
            if message.get("more_body", False):
                await forward(message)
                return
            # Hypercorn ends the exchange inside the last send: it tells the
            # app the client is gone, and only then starts the connection's
            # idle timer. Starlette's file and streaming responses cancel
            # their send on that news, and the timer never started: a client
            # could hold the connection open for ever after one request. So
            # the bytes go first, as any others, and the end alone is shielded,
            # for a while (it can wait on a client that reads nothing more).
            if body:
                await forward({**message, "more_body": True})
            end = {"type": "http.response.body", "body": b"", "more_body": False}
            with trio.CancelScope(deadline=trio.current_time() + _END_WAIT, shield=True):
                if not unread:
                    await forward(end)
                    return
                # An answer before the body was read (a refusal): hypercorn
                # then closes the connection, but first hands the app the news
                # on the queue its unread body fills, and waits for room there
                # for ever (the uploader's write with it). Room is made here.
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_discard, receiving)
                    await forward(end)
                    nursery.cancel_scope.cancel()

        if scope.get("type") != "http" or scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receiving, counting)
            return
        path = scope.get("path", "")
        if not path.startswith(_BIG_ANSWERS):  # metadata, health: small, and never refused
            await self.app(scope, receiving, counting)
            return
        client = scope.get("client")
        address = str(client[0]) if client else "?"
        host = machine_of(address)
        # A client on this machine (a reverse proxy in front, which speaks
        # for everyone; the operator's own tools) counts in the total only.
        if self.downloads.total_full() or (self.downloads.full(host) and not is_loopback(address)):
            await _refuse_busy(send)
            return
        with self.downloads.hold(host):
            await self.app(scope, receiving, counting)

    async def pace(self, size: int, *, piece: bool = False) -> None:
        """Count ``size`` bytes about to be sent (over HTTP, or over libp2p by
        the same server), and wait for their turn within ``max_rate``. A
        ``piece`` of something bigger always waits in the queue."""
        self.served += size
        if self.max_rate and size:
            now, seconds = trio.current_time(), size / self.max_rate
            start = max(self._next, now)
            self._next = start + seconds
            if size >= _SMALL or piece:
                await trio.sleep(start - now)
                return
            # A small body (metadata, a have-record, an error) does not queue
            # behind the chunks being paced; it still spends its share of the
            # budget, so the average rate holds. Small bodies among themselves
            # keep to the rate after a short burst: else ranges of 64 KiB less
            # a byte went out unpaced, and held back everyone's chunks.
            self._small_next = max(self._small_next, now - _SMALL_BURST) + seconds
            await trio.sleep(max(self._small_next - now, 0.0))


#: The answers the download caps count: blobs and artifacts (and the local
#: index's files), whose bodies are big.
_BIG_ANSWERS: Final = ("/blobs/", "/targets/", "/files/")


async def _refuse_busy(send: Any) -> None:
    """Answer 503 busy, to be asked again in a second."""
    headers = [(b"retry-after", b"1"), (b"x-tufmesh-refused", b"busy"), (b"content-length", b"0")]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _has_body(scope: Any) -> bool:
    """Whether an HTTP request comes with a body (a GET's is empty)."""
    if scope.get("type") != "http":
        return False
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


async def _discard(receive: Callable[[], Awaitable[Any]]) -> None:
    """Read and drop what is left of a request, until the client is gone."""
    while (await receive())["type"] != "http.disconnect":
        pass


#: Uploads in flight at once, per project and in all: each holds a temp
#: file and a megabyte of buffer. Past these an upload waits its turn, its
#: body unread (it queues: the uploader's write waits too, so this stays
#: below `tufmesh publish`'s 5-minute timeouts), then gets a 503, and
#: `publish` asks again after :data:`UPLOAD_RETRY_AFTER`.
MAX_PROJECT_UPLOADS: Final = 16
MAX_UPLOADS: Final = 64
UPLOAD_WAIT: Final = 240.0
#: What a busy answer says to wait before asking again, in seconds.
UPLOAD_RETRY_AFTER: Final = 5
#: How often an upload's token is checked again while its body arrives, in
#: seconds: a token replaced (leaked) stops its uploads under way, and their
#: slots, at once, not after uploads that may last hours.
REAUTHORIZE: Final = 1.0
#: An upload's body (an artifact, a project's signed metadata) must come at
#: this rate at least once :data:`UPLOAD_GRACE` has passed, or it is cut
#: (408): sent at a trickle (a byte every few seconds), one held its upload
#: slot for ever, and a token's holder all 16 of its project's.
MIN_UPLOAD_RATE: Final = 16 * 1024
UPLOAD_GRACE: Final = 10.0


async def _take_body(
    request: Request, take: Callable[[bytes], Awaitable[Response | None]]
) -> Response | None:
    """Feed ``request``'s body to ``take``, a piece at a time (an answer from
    ``take`` ends it early, and is returned); a 408 once the body falls
    behind :data:`MIN_UPLOAD_RATE` (the time ``take`` spends is ours, not the
    sender's)."""
    floor = UploadFloor(trio.current_time(), MIN_UPLOAD_RATE, UPLOAD_GRACE)
    received = 0
    with trio.CancelScope(deadline=floor.due(1)) as pace:
        # Closed at once on an early answer (413, 507), not at garbage collection.
        async with contextlib.aclosing(request.stream()) as body:
            async for piece in body:
                received += len(piece)
                pace.deadline, began = math.inf, trio.current_time()
                answer = await take(piece)
                if answer is not None:
                    return answer
                floor.paused(trio.current_time() - began)
                pace.deadline = floor.due(received + 1)
    if pace.cancelled_caught:
        return _error(
            408,
            f"the upload came slower than {MIN_UPLOAD_RATE // 1024} KiB/s after "
            f"{UPLOAD_GRACE:g} s, and was cut",
        )
    return None


#: Publications (uploads and signed project metadata) per project: this many
#: at once, then one a second. Each is a commit, which writes a new version
#: of a bin (up to 4 MB) and of the snapshot: many small uploads filled the
#: disk faster than superseded versions go (ten minutes after). Past the
#: pace a publication waits (up to UPLOAD_WAIT), then is told to ask again.
PUBLISH_BURST: Final = 60
PUBLISH_INTERVAL: Final = 1.0


def build_app(service: OriginService) -> ByteCounter:
    """The ASGI application of one origin (counting the bytes it serves)."""
    store = service.store
    repo_config = service.repo_config
    uploading = Shares(MAX_PROJECT_UPLOADS, MAX_UPLOADS)  # uploads in flight, per project
    publishing = Pace(PUBLISH_INTERVAL, PUBLISH_BURST)  # commits, per project

    async def _paced(project: str) -> Response | None:
        """Wait for ``project``'s turn to publish, or the answer refusing it."""
        wait = publishing.delay(project, time.monotonic(), at_most=UPLOAD_WAIT)
        if wait is None:
            busy = f"{project} publishes more than one file a second; ask again later"
            return _error(503, busy, headers={"retry-after": str(UPLOAD_RETRY_AFTER)})
        if wait:  # (no checkpoint when it is its turn: the upload goes on as before)
            await trio.sleep(wait)
        return None

    turns = trio.lowlevel.ParkingLot()  # uploads waiting for one of them to end

    reading_quarantine = trio.Lock()

    async def healthz(request: Request) -> Response:
        state = service.committer.state
        # degraded: clients refuse what is served (an expired offline role, or
        # a timestamp the refresher could not re-sign in time), or soon will.
        now = datetime.now(UTC)
        stale = state.timestamp_expires <= now
        warnings = list(state.warnings)
        # Online roles left past their re-signing (a refresher that slept
        # through it, a clock that jumped): clients may be refusing a bin.
        overdue = state.next_refresh + REFRESH_OVERDUE <= now
        if overdue:
            warnings.append(
                f"online roles due to be re-signed at {state.next_refresh:%Y-%m-%d %H:%M:%S} "
                "UTC are not yet"
            )
        if not reading_quarantine.locked():  # (one read at a time; the others say what is known)
            async with reading_quarantine:
                try:
                    service.quarantined |= await service.run_sync(service.newly_quarantined)
                except (OSError, TufmeshError) as exc:  # said, and the rest of the answer given
                    warnings.append(f"cannot read the store's quarantine: {exc}")
        lost = service.lost()
        try:
            unrotated = bool(unrotated_claims(service.dir))
        except OriginError:  # a damaged record of them: said by 'origin status'
            unrotated = True
        if unrotated:  # (which projects, and where the repository is, are not said here)
            warnings.append(
                "projects claimed since the targets keys last changed wait for their "
                "rotation ('tufmesh origin status' names them)"
            )
        if lost:
            warnings.append(
                f"{len(lost)} blob(s) found corrupt on disk, quarantined, not served: "
                "'tufmesh origin restore' stores them again"
            )
        degraded = state.expired or stale or overdue or service.refresh_failing or lost
        return JSONResponse(
            {
                "status": "degraded" if degraded else "ok",
                "warnings": warnings,
                "quarantined": lost,
                "timestamp_version": state.timestamp_version,
                "snapshot_version": state.snapshot_version,
                "timestamp_expires": state.timestamp_expires.isoformat(),
                "commits": service.commits,
                "published": service.published,
                "bytes_served": service.counter.served if service.counter else 0,
                **({"p2p_mesh_peers": service.p2p.mesh_size()} if service.p2p else {}),
            }
        )

    def _admit(
        request: Request, limit: int, too_big: str
    ) -> tuple[str, str | None, str | None] | Response:
        """A publishing request's project (normalised), token and declared
        length, or the answer refusing it: a bad project name, a token that
        may not publish to it, a declared body over ``limit``."""
        try:
            project = normalize_project(request.path_params["project"])
        except InvalidNameError as exc:
            return _error(400, str(exc))
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        if (refused := _authorize(project, token)) is not None:
            return refused
        declared = request.headers.get("content-length")
        if declared is not None and (not _DIGITS.fullmatch(declared) or int(declared) > limit):
            return _error(413, too_big)
        return project, token, declared

    def _authorize(project: str, token: str | None, *, again: bool = False) -> Response | None:
        """None if ``token`` may publish to ``project``, else the answer
        refusing it. ``again``: asked while its body arrives and before it is
        published, for a token replaced meanwhile (``project token-rotate``)
        stops at once, not after an upload that may last hours."""
        try:
            service.projects.authorize(project, token)
        except ForbiddenError as exc:
            return _error(403, str(exc))
        except AuthError as exc:
            why = f"{exc}: it was replaced while this upload was sent" if again else str(exc)
            return _error(401, why, headers={"www-authenticate": "Bearer"})
        except OriginError as exc:  # projects.json damaged while serving: said once
            if str(exc) != service.projects_damaged:
                service.projects_damaged = str(exc)
                log(f"origin: refusing uploads: {exc}")
            return _error(503, "the origin cannot read its list of projects; its log says why")
        service.projects_damaged = None
        return None

    async def _audit(request: Request, token: str | None, entry: dict[str, Any]) -> None:
        """Log a publication with when, from where and with which token (a prefix
        of its hash): ``uploads.log`` (:meth:`OriginService.audit`)."""
        client = request.scope.get("client")
        entry = {
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "from": client[0] if client else None,
            "token": hashlib.sha256(token.encode()).hexdigest()[:12] if token else None,
            **entry,
        }
        await trio.to_thread.run_sync(service.audit, entry)

    async def upload(request: Request) -> Response:
        try:
            filename = check_new_filename(request.path_params["filename"])
        except InvalidNameError as exc:
            return _error(400, str(exc))
        limit = repo_config.max_upload_bytes
        admitted = _admit(request, limit, f"upload over the {limit}-byte limit")
        if isinstance(admitted, Response):
            return admitted
        project, token, declared = admitted
        over: Response = _error(413, f"upload over the {limit}-byte limit")  # (no length said)
        quota = repo_config.project_quota

        # A project near its quota (what it holds, and what its uploads being
        # read may store) is refused before the body is read, and read no
        # further than its quota allows: the commit checks again, but bytes it
        # refuses would wait on the disk for the collector, as many as a
        # token's holder cares to send.
        def fitted(limit: int, over: Response) -> tuple[int, Response, Response | None]:
            """The upload's limit within its project's quota, the answer past
            it, and the refusal to give now, unread, if it is refused."""
            held = service.held(project, besides=filename) + service.reading[project]
            left = quota - held
            if left >= limit:
                return limit, over, None
            over = _error(413, f"{project} has {max(left, 0):,} bytes of its quota left")
            unread = left <= 0 or (declared is not None and int(declared) > left)
            return left, over, over if unread else None

        def resent_refused() -> Response | None:
            """Other bytes under a published name are stored, then refused:
            they wait for the collector, and count meanwhile, as those being
            read do (the same bytes again cost nothing, but that is known
            only once read)."""
            wasted = service.wasted(project)
            if wasted + limit > quota:
                return _error(
                    413,
                    f"{project} has {wasted:,} bytes of refused uploads waiting for the origin's "
                    f"next collection (within the hour): with this one's {limit:,}, past its "
                    f"quota of {quota:,}",
                )
            if wasted + service.resending[project] + limit > quota:
                busy = f"{project} has too many uploads under published names read at once"
                return _error(503, busy, headers={"retry-after": str(UPLOAD_RETRY_AFTER)})
            return None

        published = service.published_entry(project, filename)
        if published is not None:
            # Only the same bytes again (a retry whose answer was lost) can
            # publish here, answered as before at no cost: no more bytes are
            # read than the published length, and another length is refused
            # unread.
            limit = published[1]
            if (refused := resent_refused()) is not None:
                return refused
            over = _error(
                409,
                f"{project}/{filename} is already published with different bytes (sha256 "
                f"{published[0]}); artifacts are immutable",
            )
            if declared is not None and int(declared) != published[1]:
                return over
        else:
            limit, over, refusal = fitted(limit, over)
            if refusal is not None:
                return refusal

        if (refused := await _paced(project)) is not None:
            return refused
        with trio.move_on_after(UPLOAD_WAIT):
            while uploading.full(project):
                await turns.park()
        if cap := uploading.full(project):
            busy = (
                f"too many uploads of {project} at once (at most {MAX_PROJECT_UPLOADS})"
                if cap == "key"
                else f"too many uploads at once (at most {MAX_UPLOADS})"
            )
            return _error(503, busy, headers={"retry-after": str(UPLOAD_RETRY_AFTER)})
        # Again, now that it has its turn: others were read meanwhile.
        if published is None:
            limit, over, refusal = fitted(limit, over)
        else:
            refusal = resent_refused()
        if refusal is not None:
            return refusal
        # Its length is reserved (its limit, a published name's); a body
        # without a length reserves what arrives, as it arrives (it may be
        # small, and would hold its project's whole quota).
        growing = declared is None and published is None
        reserved = 0 if growing else limit if declared is None else min(limit, int(declared))
        try:
            reserving = service.reserving(project, reserved, resent=published is not None)
            with uploading.hold(project), reserving as more:

                def arrived(nbytes: int) -> Response | None:
                    more(nbytes)
                    if service.held(project, besides=filename) + service.reading[project] > quota:
                        return _error(413, f"{project}'s uploads would pass its quota")
                    return None

                return await _publish(
                    request, project, filename, limit, over, token, arrived if growing else None
                )
        finally:
            turns.unpark_all()

    async def _publish(
        request: Request,
        project: str,
        filename: str,
        limit: int,
        over: Response,
        token: str | None,
        arrived: Callable[[int], Response | None] | None = None,
    ) -> Response:
        """Store the body (``over``: the answer to one longer than ``limit``;
        ``arrived``: told of each piece, the answer refusing it, if any) and
        publish it (or stage it, for a claimed project)."""
        path = f"{project}/{filename}"
        outcome = await _store_body(request, limit, over, project, token, arrived)
        if isinstance(outcome, Response):
            return outcome
        cid, manifest, length = outcome
        if (refused := _authorize(project, token, again=True)) is not None:
            service.refuse(project, cid, length)  # (for the collector, as any refused upload)
            return refused
        artifact = Artifact(
            path=path,
            length=length,
            sha256=parse_cid(cid)[1].hex(),
            cid=cid,
            manifest=manifest,
            chunk_size=repo_config.chunk_size,
        )
        found = service.published_entry(project, filename)
        published = found[0] if found is not None else None
        if project in service.committer.state.claimed and published != artifact.sha256:
            # (The same bytes sent again go on to the committer, which links
            # them again, as for any project.)
            answer = _stored(artifact, published)
            if answer.status_code == 202:
                entry = {"target": path, "sha256": artifact.sha256, "length": length}
                await _audit(request, token, {**entry, "stored": "awaiting its signed metadata"})
            return answer
        try:
            version = await service.submit(artifact)
        except CommitterGoneError:
            return _outcome_unknown(path)
        except OriginError as exc:
            status = next((code for kind, code in _REFUSALS if isinstance(exc, kind)), None)
            if status is None:
                # The origin's own trouble. The detail (a key's path, a KMS
                # key's name) is the operator's, not every token holder's.
                log(f"origin: publishing {path} failed: {exc}")
                return _error(500, "publishing failed; the origin's log says why")
            # Its blobs stay, unpinned, for the hourly collector (deleting them
            # here would race an upload of the same bytes about to pin them),
            # counted against the project's quota until then: whatever the
            # refusal (a full bin once let a token holder store without end).
            service.refuse(project, cid, length)
            return _error(status, str(exc))
        entry = {"target": path, "sha256": artifact.sha256, "length": length}
        await _audit(request, token, {**entry, "snapshot_version": version})
        return JSONResponse(
            {
                "target": path,
                "length": length,
                "sha256": artifact.sha256,
                "cid": cid,
                "manifest": manifest,
                "snapshot_version": version,
            }
        )

    def _stored(artifact: Artifact, published: str | None) -> Response:
        """The answer to an upload to a claimed project (``published``: the
        sha256 its path has, if any): stored, and published only once its
        developers sign a version of the project's metadata that names it
        (docs/adr/0022)."""
        project, filename = artifact.path.split("/", 1)
        staged = service.staged[project]
        if artifact.path in service.removed_names() or published is not None:
            service.refuse(project, artifact.cid, artifact.length)
            if published is None:
                return _error(
                    409, f"{artifact.path} was published and removed; its name is not used again"
                )
            return _error(
                409,
                f"{artifact.path} is already published with different bytes (sha256 "
                f"{published}); artifacts are immutable",
            )
        # Counted as stored (uploads at once each passed the check before
        # their bodies): past the quota, its bytes wait for the collector.
        held = service.held(project) + (0 if artifact.cid in staged else artifact.length)
        if held > repo_config.project_quota:
            service.refuse(project, artifact.cid, artifact.length)
            return _error(
                413,
                f"{project} would hold {held:,} bytes of artifacts and uploads awaiting "
                f"its signature, past its quota of {repo_config.project_quota:,}",
            )
        staged[artifact.cid] = (filename, artifact.length, artifact.manifest)
        body = {
            "target": artifact.path,
            "length": artifact.length,
            "sha256": artifact.sha256,
            "cid": artifact.cid,
            "manifest": artifact.manifest,
            "chunk_size": artifact.chunk_size,
            "signed_by": owned_role(project),
        }
        return JSONResponse(body, status_code=202)

    async def owned_metadata(request: Request) -> Response:
        """A claimed project's next metadata version, signed by its developers."""
        limit = repo_config.max_bin_bytes
        admitted = _admit(request, limit, f"metadata over the {limit:,} bytes clients read")
        if isinstance(admitted, Response):
            return admitted
        project, token, _ = admitted
        if (refused := await _paced(project)) is not None:
            return refused
        # One slot of the project's uploads: as many bodies held at once, no more.
        if uploading.full(project):
            busy = f"too many uploads of {project} at once"
            return _error(503, busy, headers={"retry-after": str(UPLOAD_RETRY_AFTER)})
        try:
            with uploading.hold(project):
                return await _take_owned(request, project, token, limit)
        finally:
            turns.unpark_all()

    async def _take_owned(
        request: Request, project: str, token: str | None, limit: int
    ) -> Response:
        data = bytearray()

        async def take(piece: bytes) -> Response | None:
            data.extend(piece)
            if len(data) > limit:
                return _error(413, f"metadata over the {limit:,} bytes clients read")
            return None

        try:
            if (early := await _take_body(request, take)) is not None:
                return early
        except ClientDisconnect:
            return NoAnswer()
        if (refused := _authorize(project, token, again=True)) is not None:
            return refused
        try:
            uploads = {cid: made for cid, (_, _, made) in service.staged[project].items()}
            version, snapshot = await service.committer.take_owned(project, bytes(data), uploads)
        except OwnedMetadataError as exc:
            return _error(400, str(exc))
        except ConflictError as exc:
            return _error(409, str(exc))
        except QuotaError as exc:
            return _error(413, str(exc))
        except ArtifactRefusedError as exc:
            return _error(400, str(exc))
        except CommitterGoneError:
            return _outcome_unknown(owned_role(project))
        except OriginError as exc:
            log(f"origin: publishing {project}'s metadata failed: {exc}")
            return _error(500, "publishing failed; the origin's log says why")
        service.commits += 1
        # (Metadata of up to 4 MB, read again: not in the event loop.)
        changes, cids = await trio.to_thread.run_sync(
            _changes, service.dir, owned_role(project), version, data
        )
        staged = service.staged[project]
        for cid in cids:  # published now: no longer staged
            staged.pop(cid, None)
        service._committed.set()
        service._replan.set()  # (signed with today's lifetimes, as a commit)
        entry: dict[str, Any] = {"role": owned_role(project), "version": version}
        entry["sha256"] = hashlib.sha256(data).hexdigest()
        # What it added and dropped, by name: superseded versions are deleted
        # after a while, and after a key leaked the log must say what it did.
        entry.update(changes)
        await _audit(request, token, {**entry, "snapshot_version": snapshot})
        return JSONResponse(
            {"role": owned_role(project), "version": version, "snapshot_version": snapshot}
        )

    async def _store_body(
        request: Request,
        limit: int,
        over: Response,
        project: str,
        token: str | None,
        arrived: Callable[[int], Response | None] | None = None,
    ) -> tuple[str, str | None, int] | Response:
        def store_all(first: bytes, writer: BlobWriter | None = None) -> BlobWriter:
            writer = writer or store.writer(chunk_size=repo_config.chunk_size)
            try:
                writer.write(first)
            except BaseException:
                writer.abort()  # a new one is not the caller's to abort yet
                raise
            return writer

        writer: BlobWriter | None = None
        buffer = bytearray()
        size = 0
        recheck = trio.current_time() + REAUTHORIZE

        async def take(piece: bytes) -> Response | None:
            nonlocal size, writer, recheck
            size += len(piece)
            if size > limit:
                return over
            if arrived is not None and (refused := arrived(len(piece))) is not None:
                return refused
            if trio.current_time() >= recheck:  # (a stat of projects.json, unless changed)
                recheck = trio.current_time() + REAUTHORIZE
                if (refused := _authorize(project, token, again=True)) is not None:
                    return refused
            buffer.extend(piece)
            if len(buffer) >= service.config.upload_buffer:
                data = bytes(buffer)
                buffer.clear()
                writer = await trio.to_thread.run_sync(store_all, data, writer)
            return None

        try:
            if (early := await _take_body(request, take)) is not None:
                return early

            def finish(rest: bytes, writer: BlobWriter | None) -> tuple[str, str | None]:
                # A small upload is stored in this one thread hop, start to end.
                cid, manifest = store_all(rest, writer).commit(min_manifest_chunks=2)
                assert manifest is not None
                return cid, manifest.cid if manifest.count >= 2 else None

            rest = bytes(buffer)
            buffer.clear()
            cid, manifest_cid = await trio.to_thread.run_sync(finish, rest, writer)
        except ClientDisconnect:  # the developer's side gave up: nothing to publish
            return NoAnswer()  # the developer's side is gone
        except OSError as exc:  # the store's disk: say so, in a line, to both sides
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                log(f"origin: cannot store an upload: {exc.strerror}")
                return _error(507, "the origin's disk is full; try again later")
            log(f"origin: cannot store an upload: {exc}")
            return _error(500, f"the origin cannot store the upload ({exc.strerror})")
        finally:
            if writer is not None:
                writer.abort()
        return cid, manifest_cid, size

    routes = [
        *tree_routes(service.dir, store, gate=service.uploads),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/api/v1/projects/{project}/files/{filename}", upload, methods=["POST", "PUT"]),
        Route("/api/v1/projects/{project}/metadata", owned_metadata, methods=["POST", "PUT"]),
    ]
    service.counter = ByteCounter(Starlette(routes=routes))
    return service.counter


async def serve(
    repo_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    on_ready: Callable[[str], Awaitable[None] | None] | None = None,
    service_config: ServiceConfig | None = None,
    p2p_port: int | None = None,
    p2p_bootstrap: list[str] | None = None,
    max_upload_rate: float | None = None,
) -> None:
    """Serve the repository in ``repo_dir`` until cancelled.

    The signing keys and metadata writes live in a committer process of their
    own (see ``_signer.py``); this process parses HTTP and streams blobs. With
    ``p2p_port``, the origin also joins the peer-to-peer network and announces
    every new timestamp there (its multiaddr is written to ``REPO/p2p.addr``).
    """
    committer = await SignerProcess.start(repo_dir)
    try:
        service = OriginService(repo_dir, committer, service_config)
        service.uploads.slots = slots_within(service.uploads.slots, max_upload_rate)
        await committer.refresh()  # anything stale is re-signed before the first request
        app = build_app(service)
        async with trio.open_nursery() as nursery:
            if p2p_port is not None:
                node = await _start_p2p(
                    nursery,
                    service,
                    host,
                    p2p_port,
                    p2p_bootstrap or [],
                    functools.partial(app.pace, piece=True),
                )
                service.p2p = node
                nursery.start_soon(service.run_announcer)
            nursery.start_soon(_stop_with_committer, committer)
            nursery.start_soon(service.run_committer)
            nursery.start_soon(service.run_refresher)
            nursery.start_soon(service.run_collector)
            nursery.start_soon(service.run_scrubber)
            await start_http(nursery, app, host, port, max_upload_rate, on_ready)
    finally:
        with trio.CancelScope(shield=True):
            await committer.aclose()


def _forget(counts: dict[str, dict[str, Any]], gone: set[str]) -> None:
    """Drop the blobs in ``gone`` from per-project counts keyed by CID."""
    for project, blobs in list(counts.items()):
        for cid in gone.intersection(blobs):
            del blobs[cid]
        if not blobs:
            del counts[project]


async def _stop_with_committer(committer: SignerProcess) -> None:
    """Stop the origin if its committer exits: it could then neither publish
    nor re-sign the timestamp, which would expire while /healthz said "ok" and
    a supervisor saw a live process (the committer killed: OOM, kill -9)."""
    code = await committer.wait()
    await trio.sleep(1)  # a stop of both (SIGTERM to the group) cancels this first
    raise OriginError(
        f"the committer process exited (status {code}): the origin stops with it, for its "
        "supervisor to start both again"
    )


async def _start_p2p(
    nursery: trio.Nursery,
    service: OriginService,
    host: str,
    port: int,
    bootstrap: list[str],
    pace: Callable[[int], Awaitable[None]],
) -> P2PNode:
    from tuf.api.metadata import Metadata

    repo_dir = service.dir
    root = Metadata.from_bytes((repo_dir / "metadata" / "root.json").read_bytes()).signed
    node = P2PNode(
        repo_dir / "p2p.key",
        topic_for(root),
        AnnouncementGate(root),
        host=host,
        port=port,
        bootstrap=bootstrap,
        blob_source=BlobStore(repo_dir / "cas").read_range,
        uploads=service.uploads,  # the seeding gate and the upload rate of HTTP's
        pace=pace,
    )
    addrs = await nursery.start(node.run)
    write_atomic(repo_dir / "p2p.addr", (addrs[0] + "\n").encode())
    return node


def _guard_http2() -> None:
    """Mend hypercorn's HTTP/2 (h2c, spoken on the same port) before serving.

    Answered before its body had come (a refusal, a 401), an HTTP/2 request
    left hypercorn 0.18 a stream it had dropped, and the next DATA frame for
    it raised KeyError, which ended the whole server: one request, no token
    needed, stopped an origin or a mirror (hypercorn issue 329). Such a
    stream is now reset, and its data acknowledged and dropped."""
    import h2.errors
    import h2.events
    import h2.exceptions
    import hypercorn.protocol
    from hypercorn.protocol.h2 import H2Protocol

    made_by_wrapper = vars(hypercorn.protocol)  # ProtocolWrapper's H2Protocol is this one
    if getattr(made_by_wrapper["H2Protocol"], "_tufmesh_guarded", False):
        return

    class GuardedH2Protocol(H2Protocol):
        _tufmesh_guarded = True

        async def _handle_events(self, events: list[h2.events.Event]) -> None:
            # One at a time: a stream comes to exist mid-batch.
            for event in events:
                if isinstance(event, h2.events.DataReceived) and (
                    event.stream_id not in self.streams
                ):
                    # Reset first (RFC 9113 8.1: the answer is complete), so
                    # that the acknowledgement credits the connection only,
                    # not a stream the client could then feed for ever.
                    with contextlib.suppress(h2.exceptions.ProtocolError):
                        self.connection.reset_stream(event.stream_id, h2.errors.ErrorCodes.NO_ERROR)
                    self.connection.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                    await self._flush()
                    continue
                await super()._handle_events([event])

    made_by_wrapper["H2Protocol"] = GuardedH2Protocol


#: Connections held open at once from one client address (an IPv6 /64), and
#: in all: past these a new connection is answered 503 and closed. Each holds
#: a file descriptor, which the process shares with its store, its sync and
#: its peers; unbounded, one client's few thousand idle connections stopped a
#: mirror's syncing as well as its serving. The whole is also kept to half
#: the process's limit on open files. This machine's own connections (a
#: reverse proxy in front, the operator's tools) count in the whole only.
MAX_CONNECTIONS_PER_HOST: Final = 64
MAX_CONNECTIONS: Final = 4096
#: The answer a connection past those caps gets before it is closed, within
#: this many seconds.
_TOO_MANY_LINGER: Final = 0.5
_TOO_MANY: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 21\r\n\r\ntoo many connections\n"
)


def connection_shares() -> Shares:
    """The caps on connections held open at once (:data:`MAX_CONNECTIONS`)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    total = MAX_CONNECTIONS if soft == resource.RLIM_INFINITY else min(MAX_CONNECTIONS, soft // 2)
    return Shares(MAX_CONNECTIONS_PER_HOST, max(total, 1))


def _guard_connections() -> None:
    """Have hypercorn's trio worker count the connections it holds against the
    caps its config carries (``connections``, a :class:`Shares`), and close
    one past them at once."""
    import hypercorn.trio.run
    from hypercorn.events import Updated
    from hypercorn.trio.tcp_server import TCPServer

    served_by = vars(hypercorn.trio.run)  # serve() makes its connections' servers from this
    if getattr(served_by["TCPServer"], "_tufmesh_guarded", False):
        return

    class CountedTCPServer(TCPServer):
        _tufmesh_guarded = True

        async def run(self) -> None:
            shares: Shares | None = getattr(self.config, "connections", None)
            if shares is None:
                await super().run()
                return
            stream: Any = self.stream  # a trio.SocketStream (no TLS here), typed as TLS's
            try:
                address = stream.socket.getpeername()[0]
            except (OSError, AttributeError, IndexError):
                address = None
            machine = counted_machine(address)
            full = shares.total_full() if machine is None else shares.full(machine) is not None
            if full:
                # Said, then the request read and dropped for a moment (closed
                # with it unread, the connection is reset, and the answer lost).
                with trio.move_on_after(_TOO_MANY_LINGER), contextlib.suppress(Exception):
                    await stream.send_all(_TOO_MANY)
                    await stream.send_eof()
                    dropped = 0
                    while dropped < 1 << 16 and (piece := await stream.receive_some(1 << 14)):
                        dropped += len(piece)
                with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await stream.aclose()
                return
            with shares.hold(machine or "local"):
                await super().run()

        async def _read_data(self) -> None:
            await super()._read_data()
            # The client has closed: hypercorn 0.18's connection went on
            # waiting for its idle timer (30 s), and would count till then;
            # and so when an answer under way ends after (a download given
            # up), as the answer's end starts the timer again.
            self._client_gone = True
            await self.idle_task.stop()

        async def protocol_send(self, event: Any) -> None:
            if getattr(self, "_client_gone", False) and isinstance(event, Updated) and event.idle:
                return  # nobody to wait for
            await super().protocol_send(event)

    served_by["TCPServer"] = CountedTCPServer


async def start_http(
    nursery: trio.Nursery,
    app: ByteCounter,
    host: str,
    port: int,
    max_rate: float | None,
    on_ready: Callable[[str], Awaitable[None] | None] | None,
    *,
    idle_timeout: float = 30.0,
    send_timeout: float = SEND_TIMEOUT,
) -> str:
    """Start serving ``app`` (hypercorn, trio worker) in ``nursery``; return its URL.

    A connection with no request running is closed after ``idle_timeout`` s,
    one whose client takes none of the data sent after ``send_timeout`` s."""
    from hypercorn.config import Config, Sockets
    from hypercorn.trio import serve as hypercorn_serve

    class _Config(Config):
        def create_sockets(self) -> Sockets:
            sockets = super().create_sockets()
            option: int | None = getattr(socket, "TCP_USER_TIMEOUT", None)  # Linux only
            if option is not None:
                for sock in sockets.insecure_sockets:  # (the sockets it accepts inherit it)
                    sock.setsockopt(socket.IPPROTO_TCP, option, int(send_timeout * 1000))
            return sockets

    _guard_http2()
    _guard_connections()
    config = _Config()
    config.connections = connection_shares()  # type: ignore[attr-defined]
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = "-"  # an exception that escapes the app, on stderr...
    config.loglevel = "ERROR"  # ...and nothing else
    # Bodies stream to the store; this only bounds request heads (h11 default 16 KiB).
    config.h11_max_incomplete_size = 16 * 1024
    # Hypercorn also speaks HTTP/2 here (h2c): it says the same bound on
    # headers (advice: the h2 library does not enforce it), and allows a few
    # streams per connection, not a hundred unread answers per socket.
    config.h2_max_header_list_size = 16 * 1024
    config.h2_max_concurrent_streams = 8
    # Also closes a connection that sends no request at all. (Hypercorn's
    # read_timeout is not for this: it runs during responses too, and would
    # cut every honest download that takes longer.)
    config.keep_alive_timeout = idle_timeout
    app.max_rate = max_rate
    binds = await nursery.start(hypercorn_serve, app, config)
    if on_ready is not None:
        result = on_ready(binds[0])
        if result is not None:
            await result
    return str(binds[0])
