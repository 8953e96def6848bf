"""Chunked, parallel, multi-source artifact downloads (the trio I/O shell).

The plan for one artifact: its blob CID, length and a verifier per chunk (the
BLAKE3 digests of the signed chunk manifest, or the whole blob's SHA-256 for a
blob of one chunk). :class:`~tufmesh.client._scheduler.ChunkScheduler` decides
which source serves which chunk; this module only moves bytes: HTTP Range
requests to ``/blobs/{cid}``, each chunk verified before it is written into the
``.part`` file at its offset. No unverified byte is ever written.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import trio

from tufmesh._durable import write_at
from tufmesh.cas import Manifest
from tufmesh.client._fetcher import FetchConfig
from tufmesh.client._http import HttpError, NotHeld, RangePool, Refused, TooLong
from tufmesh.client._scheduler import ChunkScheduler, SchedulerConfig, SourceStats
from tufmesh.errors import ChunkRejectedError, ClientError, SourcesFailedError, TufmeshError

__all__ = [
    "ChunkPlan",
    "own_file",
    "Replicating",
    "download_plan",
    "plan_for_manifest",
    "plan_for_whole_blob",
    "span_for",
]

#: How often the supervisor looks for slow requests and new work.
_TICK: Final = 0.1


@dataclass(frozen=True)
class ChunkPlan:
    """What to fetch: ``count`` chunks of blob ``cid``, each checked by ``verify``."""

    cid: str
    length: int
    chunk_size: int
    verify: Callable[[int, bytes | bytearray], None]  # raises ChunkRejectedError
    #: Manifest chunks per request (:func:`span_for`): what a source is said
    #: to have sent is counted in those.
    pieces: int = 1

    def pieces_in(self, index: int) -> int:
        """Manifest chunks in request ``index``."""
        return -(-self.span(index)[1] // max(1, self.chunk_size // self.pieces))

    @property
    def count(self) -> int:
        """Number of chunks."""
        return max(1, -(-self.length // self.chunk_size)) if self.length else 0

    def span(self, index: int) -> tuple[int, int]:
        """``(offset, length)`` of chunk ``index``."""
        offset = index * self.chunk_size
        return offset, min(self.chunk_size, self.length - offset)


class Replicating(Protocol):
    """A mirror's hooks into one download: its peers' have-records in, its own out."""

    @property
    def fallback(self) -> list[str]:
        """Sources asked only for chunks no peer holds (the origin)."""

    @property
    def me(self) -> str | None:
        """This mirror's name among its peers (its URL), for the designated-fetcher rule."""

    def started(self, plan: ChunkPlan, part: Path, have: set[int]) -> None:
        """The download of ``plan`` into ``part`` begins, ``have`` already verified."""

    def chunk(self, index: int) -> None:
        """Chunk ``index`` is verified and written (it may be served from now on)."""

    async def follow(self, scheduler: ChunkScheduler, poke: Callable[[], None]) -> None:
        """Feed ``scheduler`` new sources and have-records until cancelled; ``poke`` wakes it."""

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
        """Bytes from a source that is not an HTTP URL (a ``libp2p:`` peer);
        exactly ``length`` of them, or a :class:`TufmeshError`. ``progress(n)``
        is told of the bytes as they come (in the caller's loop)."""


def own_file(path: Path | int) -> bool:
    """True if ``path`` (or an open descriptor) is a regular file, not a link,
    of this user's, with no other name: what a download may read as its own
    or write into. A hard link or a file another user owns in a shared
    directory would let them read or change what was verified."""
    try:
        info = os.fstat(path) if isinstance(path, int) else os.lstat(path)
    except OSError:
        return False
    owner = os.geteuid() if hasattr(os, "geteuid") else info.st_uid
    return stat.S_ISREG(info.st_mode) and info.st_nlink == 1 and info.st_uid == owner


def plan_for_manifest(manifest: Manifest, span: int = 1) -> ChunkPlan:
    """Requests of ``span`` manifest chunks each, every chunk checked on its own.

    Fewer, larger requests cost a server far less per byte (each HTTP request
    has a fixed price); a span is accepted only if every chunk in it verifies.
    """
    size = manifest.chunk_size

    def verify(index: int, data: bytes | bytearray) -> None:
        first = index * span
        expected = min(span * size, manifest.length - first * size)
        if len(data) != expected:  # (each chunk is checked, but not what follows the last)
            raise ChunkRejectedError(f"{len(data)} bytes; expected {expected}")
        for j in range(min(span, manifest.count - first)):
            manifest.verify_chunk(first + j, memoryview(data)[j * size : (j + 1) * size])

    return ChunkPlan(manifest.blob_cid, manifest.length, size * span, verify, pieces=span)


def span_for(length: int, chunk_size: int, slots: int) -> int:
    """Chunks per request: up to 4 MiB, while leaving every source slot >= 4 requests."""
    by_size = max(1, (4 << 20) // chunk_size)
    by_parallelism = max(1, length // (chunk_size * slots * 4))
    return min(by_size, by_parallelism)


def _mirror_headers(scheduler: ChunkScheduler, source: str, index: int) -> dict[str, str]:
    """A mirror says so: an origin may then leave a chunk to the mirrors it already
    seeded (:mod:`tufmesh.origin._seeding`). End users are always served."""
    return {"X-Tufmesh-Mirror": "patient" if scheduler.patient(source, index) else "1"}


def plan_for_whole_blob(cid: str, length: int, sha256_hex: str) -> ChunkPlan:
    """One chunk, the whole blob, checked against its signed SHA-256."""

    def verify(index: int, data: bytes | bytearray) -> None:
        if len(data) != length:
            raise ChunkRejectedError(f"{len(data)} bytes; expected {length}")
        if hashlib.sha256(data).hexdigest() != sha256_hex:
            raise ChunkRejectedError("SHA-256 does not match the signed hash")

    return ChunkPlan(cid, length, max(length, 1), verify)


def _existing_part(part: Path) -> int | None:
    """A descriptor of the part file ``part``, None if there is none. Never
    through a link (another user's, in a shared directory), never into
    anything but a regular file of this user's."""
    try:
        return _open_own(part, 0)
    except FileNotFoundError:
        return None
    except OSError as exc:  # a link (ELOOP), a directory, another user's
        raise ClientError(f"cannot write {part}: {exc.strerror or exc}") from None


def _new_part(part: Path, length: int) -> int:
    """A descriptor of the part file ``part``, made ``length`` bytes long if
    missing (OSError if it cannot be: said as this download's own disk)."""
    fd = _open_own(part, os.O_CREAT)
    os.ftruncate(fd, length)
    return fd


def _open_own(path: Path, flags: int) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0) | flags, 0o644)
    if not own_file(fd):
        os.close(fd)
        raise OSError(errno.EPERM, "not a regular file of this user's")
    return fd


async def download_plan(
    plan: ChunkPlan,
    sources: list[str],
    part: Path,
    *,
    have: set[int] | None = None,
    fetch_config: FetchConfig | None = None,
    scheduler_config: SchedulerConfig | None = None,
    progress: Callable[[int], None] | None = None,
    clock: Callable[[], float] = trio.current_time,
    fallback: Sequence[str] = (),
    replicating: Replicating | None = None,
    on_verified: Callable[[int, int], None] | None = None,
) -> dict[str, SourceStats]:
    """Fill ``part`` (a file of ``plan.length`` bytes) with every verified chunk.

    ``on_verified(offset, length)`` is called for every range verified and
    written (and first for the ``have`` chunks).
    ``fallback`` sources are asked only for chunks no other source holds (see
    :class:`ChunkScheduler`). With ``replicating`` (a mirror), more sources
    join as their have-records arrive, and each verified chunk is reported.

    Returns what each source did. Raises :class:`SourcesFailedError`, naming
    each source's reason, when chunks are missing and no source is left.
    """
    fetch_config = fetch_config or FetchConfig()
    # The part file is made at the first verified chunk, not before: a download
    # that verifies nothing leaves nothing behind (a file as long as the
    # artifact, of holes). One there already is resumed.
    fd = _existing_part(part)
    if fd is None:
        have = set()  # (read from a part file another run has since renamed)
    scheduler = ChunkScheduler(
        plan.count,
        [*sources, *fallback],
        scheduler_config or SchedulerConfig(),
        have=set(have or ()),
        fallback=set(fallback),
        me=replicating.me if replicating is not None else None,
    )
    # A mirror asks the origin nothing before it has heard from its neighbours.
    scheduler.fallback_open = replicating is None
    pool = RangePool(fetch_config.connect_timeout, fetch_config.read_timeout)
    scopes: dict[tuple[str, int], trio.CancelScope] = {}
    wake = trio.Event()
    stalled = False
    unwritten: OSError | None = None  # our own disk failed (full, gone): the end of it

    def store(index: int, data: bytearray) -> None:
        nonlocal fd
        plan.verify(index, data)  # raises ChunkRejectedError: nothing is written
        if fd is None:
            fd = _new_part(part, plan.length)
        write_at(fd, data, plan.span(index)[0])

    # When a byte last arrived from anyone: an end user's download with none
    # for ``max_stall`` fails (sources that only ever say "busy" must not
    # keep it waiting for ever); a mirror's asks its fallback instead.
    progressed = clock()

    def arrived(source: str, index: int, count: int) -> None:
        nonlocal progressed
        progressed = clock()
        scheduler.received(source, index, count)

    async def fetch(source: str, index: int) -> None:
        nonlocal unwritten
        scope = scopes[(source, index)]
        try:
            with scope:
                try:
                    offset, length = plan.span(index)
                    if replicating is not None and not source.startswith("http"):
                        patient = scheduler.patient(source, index)
                        data = bytearray(
                            await replicating.fetch(
                                source,
                                plan.cid,
                                offset,
                                length,
                                patient=patient,
                                progress=lambda n: arrived(source, index, n),
                            )
                        )
                    else:
                        data = await pool.fetch(
                            source,
                            f"/blobs/{plan.cid}",
                            offset,
                            length,
                            plan.length,
                            lambda n: arrived(source, index, n),
                            _mirror_headers(scheduler, source, index) if replicating else None,
                        )
                    await trio.to_thread.run_sync(store, index, data)
                except (ChunkRejectedError, TooLong) as exc:
                    scheduler.rejected(source, index, str(exc))
                except NotHeld as exc:
                    if replicating is None and not scheduler.stats[source].chunks:
                        # A mirror of some projects only: asked no more for this
                        # artifact, and not counted against it (a failure each
                        # time ranked it last for everything it does hold).
                        scheduler.drop(source, str(exc))
                    else:  # one that has served some of it is replicating it still
                        scheduler.failed(source, index, str(exc))
                except Refused as exc:
                    seeded = exc.reason == "seeded"
                    until = clock() + exc.retry
                    scheduler.refused(source, index, until, seeded=seeded, reason=str(exc))
                except (HttpError, TufmeshError) as exc:  # TufmeshError: a libp2p source
                    scheduler.failed(source, index, str(exc))
                except OSError as exc:  # writing our own file: not the source's doing
                    unwritten = unwritten or exc
                    scheduler.failed(source, index, "not written here")
                    nursery.cancel_scope.cancel()
                except Exception as exc:  # whatever else a hostile answer trips: its fault
                    scheduler.failed(source, index, f"{type(exc).__name__}: {exc}")
                else:
                    scheduler.stats[source].pieces += plan.pieces_in(index)
                    if scheduler.verified(source, index, len(data), clock()):
                        if on_verified is not None:
                            on_verified(*plan.span(index))
                        if replicating is not None:
                            replicating.chunk(index)
                        if progress is not None:
                            progress(len(data))
        finally:
            if scopes.get((source, index)) is scope:
                del scopes[(source, index)]
            wake.set()

    def poke() -> None:
        wake.set()

    try:
        if fd is not None:
            os.ftruncate(fd, plan.length)
        if on_verified is not None:
            for index in sorted(scheduler.have):
                on_verified(*plan.span(index))
        async with trio.open_nursery() as nursery:
            if replicating is not None:
                replicating.started(plan, part, set(scheduler.have))
                nursery.start_soon(replicating.follow, scheduler, poke)
            while not scheduler.complete:
                now = clock()
                for source, index in scheduler.too_slow(now):
                    scheduler.failed(source, index, "too slow (slow-retrieval defence)")
                    if (scope := scopes.get((source, index))) is not None:
                        scope.cancel()
                running = set(scheduler.inflight())
                for key, scope in list(scopes.items()):
                    if key not in running:  # banned source, or a duplicate lost
                        scope.cancel()
                for source, index in scheduler.assign(now):
                    scopes[(source, index)] = trio.CancelScope()
                    nursery.start_soon(fetch, source, index)
                if scheduler.stuck and not scopes:
                    break
                if replicating is None and now - progressed >= scheduler.config.max_stall:
                    stalled = True
                    break
                wake = trio.Event()
                with trio.move_on_after(_TICK):
                    await wake.wait()
            nursery.cancel_scope.cancel()
        if fd is None and scheduler.complete:  # (nothing to fetch: an empty artifact)
            fd = _new_part(part, plan.length)
    except OSError as exc:  # the part file made: our own disk, or a link in the way
        unwritten = unwritten or exc
    finally:
        if fd is not None:
            os.close(fd)
        pool.close()
    if unwritten is not None:
        raise ClientError(f"cannot write {part}: {unwritten.strerror or unwritten}")
    if not scheduler.complete:
        reasons = "; ".join(f"{s}: {r}" for s, r in scheduler.reasons().items())
        stall = scheduler.config.max_stall
        failed = SourcesFailedError(
            f"no source sent a byte for {stall:g} s: {reasons}"
            if stalled
            else f"every source failed: {reasons}"
        )
        failed.stats = scheduler.stats  # the failures count in the sources' health too
        raise failed
    return scheduler.stats
