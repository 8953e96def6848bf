"""The content-addressed blob store.

Invariants (each one is tested):

* A blob is stored under ``blobs/<shard>/<cid>`` only after its bytes were hashed,
  written to a temporary file in ``tmp/``, fsynced, and atomically renamed; the
  directory is fsynced after the rename. A crash at any moment leaves either no
  blob or the exact blob under its name (the recipe of git, go-ds-flatfs, restic).
* Every temporary file is held under an exclusive ``flock`` by its writer. When a
  store opens, it removes the temporary files nobody holds: the leftovers of
  writers that died. A live writer in another process is never disturbed.
* Bytes offered under an expected CID that they do not hash to are never stored.
* Reads that verify, ``verify`` and ``fsck`` detect a blob whose bytes no longer
  match its name; such a blob is never returned as good.
* Garbage collection deletes only blobs in no pin set and older than the grace
  period. It holds the store lock exclusively; pinning takes the same lock and
  publishing a blob takes it shared, so a blob that was just written, or
  rewritten by a second put of the same bytes, is always inside the grace period.
* A store this process may not write (a read-only mount, another user's)
  opens for reading: every read works, every write is refused up front.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import math
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG
from typing import IO, BinaryIO, Final, TypeAlias, final

from tufmesh._durable import fsync_dir, locked, name_start, read_exactly, write_at
from tufmesh.cas._cid import cid_from_sha256, parse_cid
from tufmesh.cas._manifest import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_MANIFEST_BYTES,
    Manifest,
    ManifestBuilder,
)
from tufmesh.errors import (
    BlobNotFoundError,
    ChunkRejectedError,
    CorruptBlobError,
    DigestMismatchError,
    ManifestError,
    PinError,
    StoreError,
)

__all__ = [
    "BlobStat",
    "BlobStore",
    "BlobWriter",
    "ChunkAssembly",
    "FsckReport",
    "GcReport",
    "Source",
    "StoreConfig",
]

#: What ``put`` accepts: bytes in memory, a file path, or an iterable of byte chunks.
Source: TypeAlias = bytes | bytearray | memoryview | str | os.PathLike[str] | Iterable[bytes]
Progress = Callable[[int], None]

#: Pin sets are directories: up to 200 characters (the origin's are
#: ``project:<name>``, with names of up to 128).
_PIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._:@+-]{0,199}")
_TMP_PREFIX: Final = "put-"


@dataclass(frozen=True)
class StoreConfig:
    """Tunables of a :class:`BlobStore`, with the reason for each default."""

    #: Read/write buffer. 4 MiB: syscall and hashing overhead per buffer is then
    #: far below the cost of the bytes (shared/notes/http-throughput.md measured
    #: 64 KiB buffers at an eighth of the throughput).
    buffer_size: int = 4 << 20
    #: fsync files and directories. Only tests of unrelated logic turn it off.
    fsync: bool = True
    #: Blobs written this recently are never garbage-collected, so a put that
    #: races a gc (and pins right after) cannot lose its blob. 15 minutes covers
    #: the slowest upload-then-pin sequence we expect, with a wide margin.
    gc_grace_seconds: float = 15 * 60


@dataclass(frozen=True)
class BlobStat:
    """Size and modification time of a stored blob."""

    cid: str
    size: int
    mtime: float


@dataclass
class FsckReport:
    """What :meth:`BlobStore.fsck` found."""

    checked: int = 0
    bytes_checked: int = 0
    corrupt: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    strays: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every blob matched its name and nothing stray was found."""
        return not self.corrupt and not self.strays


@dataclass
class GcReport:
    """What :meth:`BlobStore.gc` deleted (or, in a dry run, would delete)."""

    dry_run: bool
    deleted: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    kept_pinned: int = 0
    kept_recent: int = 0


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _regular(path: Path) -> bool:
    """A regular file, not followed through a link."""
    try:
        return S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    """The same file, unchanged: inode numbers are reused (a put right after a
    blob was deleted can get the corrupt copy's number), and a put's file is
    stamped with the time it is published. (Not the change time: a hard link
    made or removed, as served trees do, changes it.)"""
    fields = ("st_dev", "st_ino", "st_size", "st_mtime_ns")
    return all(getattr(a, f) == getattr(b, f) for f in fields)


# Below this size a piece is hashed inline; above it, hashing runs on a second
# core while this thread writes (hashlib and blake3 release the GIL), which
# turns hash + write into max(hash, write).
_PARALLEL_MIN: Final = 256 << 10


def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="tufmesh-hash")


_hash_pool = _pool()


def _new_hash_pool() -> None:
    """A forked child has no pool threads, but the pool counted them as idle:
    its next put waited for ever. It gets a pool of its own."""
    global _hash_pool
    _hash_pool = _pool()


os.register_at_fork(after_in_child=_new_hash_pool)


def _hash_and_write(
    update: Callable[[memoryview], object], fd: int, piece: bytes | bytearray | memoryview
) -> None:
    view = memoryview(piece)
    if len(view) < _PARALLEL_MIN:
        update(view)
        _write_all(fd, view)
        return
    hashing = _hash_pool.submit(update, view)
    try:
        _write_all(fd, view)
    finally:
        hashing.result()  # the buffer is reused after we return


#: The alphabet of CIDv1 names in base32 (lower case, no padding).
_BASE32: Final = "abcdefghijklmnopqrstuvwxyz234567"
_SHARDS: Final = frozenset(a + b for a in _BASE32 for b in _BASE32)


def _shard(cid: str) -> str:
    # The leading characters of a raw/sha2-256 CIDv1 are constant ("bafkrei");
    # like go-ds-flatfs "next-to-last/2", shard on characters near the end.
    return cid[-3:-1]


@final
class BlobStore:
    """A directory of immutable blobs named by CIDv1 (raw, sha2-256, base32).

    Safe to share between threads and processes. See the module docstring for
    the invariants it keeps.
    """

    def __init__(self, root: str | os.PathLike[str], config: StoreConfig | None = None) -> None:
        self.root = Path(root)
        self.config = config or StoreConfig()
        self._blobs = self.root / "blobs"
        self._tmp = self.root / "tmp"
        self._pins = self.root / "pins"
        self._quarantine = self.root / "quarantine"
        lock = self.root / "lock"
        parts = (self.root, self._blobs, self._tmp, self._pins, self._quarantine, lock)
        there = [path for path in parts if path.exists()]
        existing = self._blobs.is_dir()
        # Another user's store is used as it is: what we made in it (root
        # listing it, say) its owner could not write into.
        ours = not existing or os.stat(self._blobs).st_uid == os.geteuid()
        #: False for a store this process may only read (judged by what is
        #: there: a part missing, such as tmp/, is made again in a store of our own).
        self.writable = not existing or (
            all(os.access(path, os.W_OK) for path in there) and (ours or there == list(parts))
        )
        if not (self.writable and ours):
            return  # nothing to make, and leftovers are their writer's to remove
        try:
            for path in (self.root, self._blobs, self._tmp, self._pins, self._quarantine):
                path.mkdir(parents=True, exist_ok=True)
            lock.touch(exist_ok=True)
            if not set(os.listdir(self._blobs)) >= _SHARDS:
                self._make_shards()
        except OSError as exc:
            raise StoreError(f"cannot open store at {self.root}: {exc.strerror}") from None
        self.remove_leftovers()

    def _make_shards(self) -> None:
        """Every shard directory, made durable at once (for a new store, and
        one made before shards were made up front): made on demand, a shard
        another writer had just made could hold a blob whose name outlived a
        power cut while the shard's own entry did not (the other writer's
        fsync of ``blobs/`` still to come)."""
        for shard in sorted(_SHARDS):
            (self._blobs / shard).mkdir(exist_ok=True)
        if self.config.fsync:
            fsync_dir(self._blobs)
            fsync_dir(self.root)

    def __repr__(self) -> str:
        return f"BlobStore({str(self.root)!r})"

    # -- writing ------------------------------------------------------------

    def put(
        self, source: Source, *, expect: str | None = None, progress: Progress | None = None
    ) -> str:
        """Store a blob; return its CID.

        ``source`` is bytes, a file path (``str`` or path-like), or an iterable
        of byte chunks (streamed in constant memory). With ``expect``, bytes
        that do not hash to that CID raise :class:`DigestMismatchError` and
        nothing is stored. ``progress`` is called with the size of each piece written.
        """
        cid, _ = self._write(source, expect=expect, chunk_size=None, progress=progress)
        return cid

    def put_chunked(
        self,
        source: Source,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        expect: str | None = None,
        progress: Progress | None = None,
    ) -> tuple[str, Manifest]:
        """Store a blob and its chunk manifest in one pass; return ``(cid, manifest)``.

        The manifest is stored as a blob of its own, under ``manifest.cid``.
        """
        cid, manifest = self._write(source, expect=expect, chunk_size=chunk_size, progress=progress)
        assert manifest is not None
        return cid, manifest

    def _write(
        self,
        source: Source,
        *,
        expect: str | None,
        chunk_size: int | None,
        progress: Progress | None,
    ) -> tuple[str, Manifest | None]:
        with self.writer(chunk_size=chunk_size) as writer:
            for piece in self._pieces(source):
                writer.write(piece)
                if progress is not None:
                    progress(len(piece))
            return writer.commit(expect=expect, min_manifest_chunks=0)  # as put_chunked says

    def writer(self, *, chunk_size: int | None = None) -> BlobWriter:
        """Start writing one blob piece by piece (for callers that are fed bytes).

        With ``chunk_size``, :meth:`BlobWriter.commit` also stores the chunk
        manifest. Use as a context manager: unless committed, nothing is stored.
        """
        return BlobWriter(self, chunk_size)

    def _pieces(self, source: Source) -> Iterator[memoryview | bytes]:
        if isinstance(source, bytes | bytearray | memoryview):
            view = memoryview(source).cast("B")
            for offset in range(0, len(view), self.config.buffer_size):
                yield view[offset : offset + self.config.buffer_size]
        elif isinstance(source, str | os.PathLike):
            try:
                handle = open(source, "rb", buffering=0)  # noqa: SIM115
            except OSError as exc:
                raise StoreError(f"cannot read {os.fspath(source)}: {exc.strerror}") from None
            with handle:
                yield from _read_pieces(handle, self.config.buffer_size)
        else:
            for piece in source:
                if not isinstance(piece, bytes | bytearray | memoryview):
                    raise TypeError(f"a put stream yields bytes, not {type(piece).__name__}")
                yield piece

    @contextlib.contextmanager
    def _temp_file(self) -> Iterator[tuple[int, Path]]:
        """Create a temporary file in ``tmp/`` held under ``flock``; remove it unless published."""
        self._check_writable()
        while True:
            path = self._tmp / f"{_TMP_PREFIX}{os.getpid()}-{secrets.token_hex(8)}"
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            # A store opening in another process may have removed the file
            # between its creation and our lock; then start over.
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        try:
            yield fd, path
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _publish(self, tmp: Path, cid: str) -> None:
        """Rename a fully written, fsynced temporary file to its blob name."""
        final_path = self._path(cid)
        with self._lock(shared=True):
            if not final_path.parent.is_dir():
                final_path.parent.mkdir(exist_ok=True)
                if self.config.fsync:
                    fsync_dir(self._blobs)
            # A copy linked elsewhere too (a published artifact's target link)
            # and intact is kept: replacing it broke that link, which the
            # origin relinked at its next start, saying so. Its age starts
            # now all the same.
            with contextlib.suppress(OSError, StoreError):  # (unreadable: replaced)
                if final_path.stat().st_nlink > 1 and self._hash(cid, None)[1]:
                    os.utime(final_path)
                    tmp.unlink()
                    return
            # Its age starts now (gc's grace period counts from the mtime: a
            # writer committed long after its last write was "old" at once).
            # Replacing an existing copy heals a corrupt one.
            os.utime(tmp)
            os.replace(tmp, final_path)
            if self.config.fsync:
                fsync_dir(final_path.parent)

    def remove_leftovers(self) -> list[str]:
        """Remove temporary files left by writers that died; return their names."""
        self._check_writable()
        removed = []
        for path in self._tmp.iterdir():
            if not path.name.startswith(_TMP_PREFIX):
                continue  # not a writer's (a FIFO there hung every open)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:  # gone, a link, ...
                continue
            if not S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)  # a live writer holds it
                continue
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    path.unlink()
                    removed.append(path.name)
            except FileNotFoundError:
                pass
            finally:
                os.close(fd)
        return removed

    # -- reading ------------------------------------------------------------

    def _path(self, cid: str) -> Path:
        return self._blobs / _shard(cid) / cid

    def _existing(self, cid: str) -> tuple[str, Path]:
        canonical, _ = parse_cid(cid)
        path = self._path(canonical)
        if not _regular(path):
            raise BlobNotFoundError(f"no blob {canonical} in the store")
        return canonical, path

    def has(self, cid: str) -> bool:
        """True if a blob is stored under ``cid`` (raises on a malformed CID)."""
        return _regular(self._path(parse_cid(cid)[0]))

    def stat(self, cid: str) -> BlobStat:
        """Size and modification time of a stored blob."""
        canonical, path = self._existing(cid)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise BlobNotFoundError(f"no blob {canonical} in the store") from None
        return BlobStat(canonical, st.st_size, st.st_mtime)

    def path(self, cid: str) -> Path:
        """Filesystem path of a stored blob, for zero-copy serving (sendfile).

        The bytes there are *not* verified; serve them only where the reader
        verifies (a TUF client, a chunk check against a signed manifest).
        """
        return self._existing(cid)[1]

    def open(self, cid: str, *, verify: bool = False) -> BinaryIO:
        """Open a blob for reading.

        With ``verify``, the returned reader hashes what it reads and raises
        :class:`CorruptBlobError` when it reaches the end of a corrupt blob, so
        a caller must read to the end before trusting anything it read.
        """
        canonical, path = self._existing(cid)
        try:
            handle = open(path, "rb", buffering=0)  # noqa: SIM115
        except FileNotFoundError:
            raise BlobNotFoundError(f"no blob {canonical} in the store") from None
        if not verify:
            return handle
        return _VerifyingReader(handle, canonical)  # type: ignore[return-value]

    def read(self, cid: str, *, verify: bool = True) -> bytes:
        """Return a whole blob; verified against its name unless ``verify=False``."""
        canonical, path = self._existing(cid)
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # deleted (gc, fsck) since we looked
            raise BlobNotFoundError(f"no blob {canonical} in the store") from None
        if verify and cid_from_sha256(hashlib.sha256(data).digest()) != canonical:
            raise CorruptBlobError(f"blob {canonical} is corrupt: its bytes no longer match")
        return data

    def read_range(self, cid: str, offset: int, length: int) -> bytes | None:
        """Bytes ``offset .. offset+length-1`` of a stored blob, not verified (the
        reader checks them against a signed manifest); None if not stored or short."""
        if not 0 <= offset < 1 << 62 or length < 0:
            return None  # os.pread takes a signed 64-bit offset
        try:
            path = self._existing(cid)[1]
        except StoreError:
            return None
        return read_exactly(path, offset, length)

    def read_manifest(self, cid: str) -> Manifest:
        """Load and verify the chunk manifest stored under ``cid`` (refused
        unread if it is bigger than a manifest may be: the CID may name any blob)."""
        size = self.stat(cid).size
        if size > DEFAULT_MAX_MANIFEST_BYTES:
            raise ManifestError(
                f"manifest of {size} bytes exceeds the {DEFAULT_MAX_MANIFEST_BYTES}-byte limit"
            )
        return Manifest.decode(self.read(cid))

    def manifest_of(self, cid: str, chunk_size: int) -> Manifest:
        """The chunk manifest of stored blob ``cid`` in ``chunk_size`` chunks,
        built from its bytes as they are on disk: what a manifest written
        elsewhere must equal to describe the blob (its ``sha256`` tells the
        blob's bytes from its name, if they went bad)."""
        builder = ManifestBuilder(chunk_size)
        with self.open(cid) as handle:
            for piece in _read_pieces(handle, self.config.buffer_size):
                builder.update(piece)
        return builder.finish()

    def export(
        self, cid: str, dest: str | os.PathLike[str], *, progress: Progress | None = None
    ) -> int:
        """Copy a blob to ``dest``, verified; return its size.

        The copy is written beside ``dest`` and renamed into place only when its
        hash matches, so a corrupt blob leaves no file at ``dest``.
        """
        canonical, path = self._existing(cid)
        dest = Path(dest)
        try:
            kind = os.lstat(dest).st_mode
        except FileNotFoundError:
            kind = None
        except OSError as exc:
            raise StoreError(f"cannot write {dest}: {exc.strerror}") from None
        if kind is not None and not S_ISREG(kind):
            # Renamed over, a device (/dev/full), a link (/dev/stdout) or a
            # directory would be replaced by a plain file, not written to.
            raise StoreError(f"{dest} is not a regular file, so not replaced by the blob")
        # (its name shortened: the longest name the destination takes must do)
        tmp = dest.with_name(f".{name_start(dest)}.{secrets.token_hex(4)}.part")
        sha = hashlib.sha256()
        try:
            src = open(path, "rb", buffering=0)  # noqa: SIM115 (closed below, with out)
        except OSError as exc:
            raise StoreError(f"cannot read blob {canonical}: {exc.strerror}") from None
        try:
            with src, open(tmp, "xb", buffering=0) as out:
                offset = 0
                for piece in _read_pieces(src, self.config.buffer_size):
                    # The very bytes hashed are written: a copy of the range
                    # from the file again (in the kernel, faster) could take
                    # bytes changed meanwhile, through a served tree's hard
                    # link, into a copy that was then called verified.
                    _hash_and_write(sha.update, out.fileno(), piece)
                    offset += len(piece)
                    if progress is not None:
                        progress(len(piece))
                if cid_from_sha256(sha.digest()) != canonical:
                    raise CorruptBlobError(
                        f"blob {canonical} is corrupt: its bytes no longer match; nothing written"
                    )
                # No fsync: this is the user's copy, not the store's; like curl
                # or cp, durability is left to the page cache.
                size = offset  # (positional copies leave the file offset at 0)
            os.replace(tmp, dest)
        except OSError as exc:
            raise StoreError(f"cannot write {dest}: {exc.strerror}") from None
        finally:
            with contextlib.suppress(OSError):  # (gone; or never made: its error said)
                tmp.unlink()
        return size

    def verify(self, cid: str, *, progress: Progress | None = None) -> None:
        """Raise :class:`CorruptBlobError` unless the blob's bytes still match its name."""
        canonical, intact, _ = self._hash(cid, progress)
        if not intact:
            raise CorruptBlobError(f"blob {canonical} is corrupt: its bytes no longer match")

    def quarantine_if_corrupt(self, cid: str) -> bool:
        """Verify one blob and, if its bytes no longer match or cannot be read
        (a bad sector: EIO), move it to quarantine (as ``fsck --quarantine``
        does); True if it was corrupt. A blob gone meanwhile is not. Any other
        failure to read it (too many open files, no memory) raises: the blob
        may well be intact, and the origin's copy is the only one."""
        path = self._path(parse_cid(cid)[0])
        try:
            _, intact, status = self._hash(cid, None)
        except BlobNotFoundError:
            return False
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            try:  # unreadable: as good as corrupt, and never served right
                status, intact = os.lstat(path), False
            except OSError:
                return False
        return not intact and self._quarantine_file(path, status)

    def _hash(self, cid: str, progress: Progress | None) -> tuple[str, bool, os.stat_result]:
        """The canonical CID, whether the bytes match it, and the status of the
        file read (for fsck: a blob stored again meanwhile is another file)."""
        canonical, path = self._existing(cid)
        sha = hashlib.sha256()
        try:
            handle = open(path, "rb", buffering=0)  # noqa: SIM115 (closed below)
        except FileNotFoundError:  # deleted (gc, fsck) since we looked
            raise BlobNotFoundError(f"no blob {canonical} in the store") from None
        with handle:
            status = os.fstat(handle.fileno())
            for piece in _read_pieces(handle, self.config.buffer_size):
                sha.update(piece)
                if progress is not None:
                    progress(len(piece))
        return canonical, cid_from_sha256(sha.digest()) == canonical, status

    def __iter__(self) -> Iterator[str]:
        """Yield the CID of every stored blob (in no particular order)."""
        for cid, _ in self._scan():
            yield cid

    def __contains__(self, cid: object) -> bool:
        return isinstance(cid, str) and self.has(cid)

    def _scan(self, strays: list[str] | None = None) -> Iterator[tuple[str, Path]]:
        for shard in sorted(self._blobs.iterdir()):
            if not shard.is_dir():
                if strays is not None:
                    strays.append(str(shard.relative_to(self.root)))
                continue
            for path in shard.iterdir():
                name = path.name
                try:
                    canonical, _ = parse_cid(name)
                except StoreError:
                    canonical = ""
                try:
                    regular = S_ISREG(os.lstat(path).st_mode)
                except FileNotFoundError:
                    continue
                # A link (to a corrupt file, to /dev/zero) or a directory under
                # a blob's name is not a blob: a stray, quarantined by fsck.
                if canonical != name or _shard(name) != shard.name or not regular:
                    if strays is not None:
                        strays.append(str(path.relative_to(self.root)))
                    continue
                yield name, path

    # -- deleting, checking -------------------------------------------------

    def delete(self, cid: str, *, keep_recent: bool = False) -> bool:
        """Delete one blob and return True. A pinned blob is refused with
        :class:`PinError`. With ``keep_recent``, a blob written (or written
        again) within the grace period is kept, as gc keeps it, and False
        returned: another writer may have stored the same bytes and be about
        to pin them."""
        canonical, path = self._existing(cid)
        with self._lock(shared=False):
            holders = self._holders(canonical)
            if holders:
                raise PinError(f"blob {canonical} is pinned by {', '.join(sorted(holders))}")
            try:
                cutoff = time.time() - self.config.gc_grace_seconds
                if keep_recent and path.stat().st_mtime > cutoff:
                    return False
                path.unlink()
            except FileNotFoundError:
                raise BlobNotFoundError(f"no blob {canonical} in the store") from None
            if self.config.fsync:
                fsync_dir(path.parent)
        return True

    def fsck(self, *, quarantine: bool = False, progress: Progress | None = None) -> FsckReport:
        """Verify every blob; report (and optionally move to quarantine) the
        corrupt ones and the stray files (names that are not a blob's)."""
        report = FsckReport()
        for cid, path in list(self._scan(report.strays)):
            try:
                _, intact, status = self._hash(cid, progress)
            except BlobNotFoundError:
                continue  # deleted while we were looking
            if not intact:
                report.corrupt.append(cid)
                if quarantine and self._quarantine_file(path, status):
                    report.quarantined.append(cid)
            report.checked += 1
            report.bytes_checked += status.st_size  # (what was read: the file may be moved now)
        if quarantine:
            for stray in report.strays:
                try:
                    status = os.lstat(self.root / stray)
                except FileNotFoundError:
                    continue
                if self._quarantine_file(self.root / stray, status):
                    report.quarantined.append(stray)
        return report

    def _quarantine_file(self, path: Path, corrupt: os.stat_result) -> bool:
        """Move ``path`` aside if it is still the ``corrupt`` file (or stray):
        a blob stored again meanwhile (healed) is a good copy, and stays."""
        with self._lock(shared=False):  # no put renames a copy in meanwhile
            try:
                if not _same_file(os.lstat(path), corrupt):
                    return False
                # The shard's name too (two strays may share a name), and the time.
                moved = f"{path.parent.name}-{path.name}.{time.time_ns()}"
                os.replace(path, self._quarantine / moved)
            except FileNotFoundError:
                return False
            if self.config.fsync:
                fsync_dir(path.parent)
                fsync_dir(self._quarantine)
        return True

    # -- pins and garbage collection ----------------------------------------

    def _lock(self, *, shared: bool) -> contextlib.AbstractContextManager[None]:
        if not shared:  # taken to change the store
            self._check_writable()
        return locked(self.root / "lock", shared=shared)

    def _check_writable(self) -> None:
        if not self.writable:
            raise StoreError(
                f"the store at {self.root} is read-only to this user: it can be read, not changed"
            )

    @staticmethod
    def _check_pin_name(name: str) -> None:
        if not _PIN_NAME.fullmatch(name):
            raise PinError(
                f"bad pin-set name {name!r}: use 1-200 of A-Z a-z 0-9 . _ : @ + -, "
                "not starting with . + : @ or -"
            )

    # Pin sets are directories, ``pins/<name>/<cid>`` an empty file per pinned
    # blob: pinning and unpinning cost one file operation per CID, however
    # large the set grows, and a crash leaves each CID either pinned or not.

    def _pin_sets(self) -> list[str]:
        return [p.name for p in self._pins.iterdir() if _PIN_NAME.fullmatch(p.name) and p.is_dir()]

    def _read_pins(self) -> dict[str, frozenset[str]]:
        return {
            name: frozenset(p.name for p in (self._pins / name).iterdir())
            for name in self._pin_sets()
        }

    def _holders(self, cid: str) -> list[str]:
        return sorted(name for name in self._pin_sets() if (self._pins / name / cid).exists())

    def quarantined(self) -> set[str]:
        """The CIDs of the blobs moved to quarantine (by fsck or a scrub), in
        whatever state they were found; stray files are not named."""
        found = set()
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self._quarantine):
                # "<shard>-<cid>.<when>", as _quarantine_file names a blob
                shard, dash, rest = entry.name.partition("-")
                cid = rest.rpartition(".")[0]
                with contextlib.suppress(StoreError):
                    if dash and len(shard) == 2 and parse_cid(cid)[0] == cid:
                        found.add(cid)
        return found

    def pins(self) -> dict[str, frozenset[str]]:
        """Every pin set: name to the CIDs it holds."""
        with self._lock(shared=True):
            return self._read_pins()

    def pin(self, name: str, cids: Iterable[str]) -> None:
        """Add blobs to the pin set ``name`` (created if new). Each must be stored."""
        self._check_pin_name(name)
        wanted = {parse_cid(cid)[0] for cid in cids}
        with self._lock(shared=False):
            missing = sorted(cid for cid in wanted if not self._path(cid).is_file())
            if missing:
                raise BlobNotFoundError(f"cannot pin blobs not in the store: {', '.join(missing)}")
            directory = self._pins / name
            if not directory.is_dir():
                directory.mkdir()
                if self.config.fsync:
                    fsync_dir(self._pins)
            added = False
            for cid in wanted:
                entry = directory / cid
                if not entry.exists():
                    entry.touch()
                    added = True
            if added and self.config.fsync:
                fsync_dir(directory)

    def unpin(self, name: str, cids: Iterable[str] | None = None) -> None:
        """Remove blobs from the pin set ``name``; with no ``cids``, remove the whole set."""
        self._check_pin_name(name)
        with self._lock(shared=False):
            directory = self._pins / name
            if not directory.is_dir():
                raise PinError(f"no pin set named {name!r}")
            if cids is None:
                shutil.rmtree(directory)
            else:
                for canonical in [parse_cid(cid)[0] for cid in cids]:  # all checked first
                    (directory / canonical).unlink(missing_ok=True)
                if not any(directory.iterdir()):
                    directory.rmdir()
            if self.config.fsync:
                if directory.exists():
                    fsync_dir(directory)
                fsync_dir(self._pins)

    def gc(self, *, dry_run: bool = False, grace_seconds: float | None = None) -> GcReport:
        """Delete every blob that is in no pin set and older than the grace period."""
        grace = self.config.gc_grace_seconds if grace_seconds is None else grace_seconds
        if not 0 <= grace < math.inf:  # (NaN compares false: it deleted everything)
            raise StoreError(
                f"a grace period of {grace!r} seconds: give a finite number, 0 or more"
            )
        report = GcReport(dry_run=dry_run)
        with self._lock(shared=dry_run):  # a dry run changes nothing
            pinned = frozenset().union(*self._read_pins().values())
            cutoff = time.time() - grace
            touched: set[Path] = set()
            for cid, path in list(self._scan()):
                if cid in pinned:
                    report.kept_pinned += 1
                    continue
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                if st.st_mtime > cutoff:
                    report.kept_recent += 1
                    continue
                if not dry_run:
                    try:
                        path.unlink()
                    except FileNotFoundError:
                        continue
                    touched.add(path.parent)
                report.deleted.append(cid)
                report.bytes_freed += st.st_size
            if self.config.fsync:
                for directory in touched:
                    fsync_dir(directory)
        return report

    # -- assembling from chunks ---------------------------------------------

    def assemble(self, manifest: Manifest) -> ChunkAssembly:
        """Start assembling the blob ``manifest`` describes from chunks in any order."""
        return ChunkAssembly(self, manifest)


#: Bytes of stored blobs a daemon's scrub step checks, one step every
#: :data:`SCRUB_INTERVAL` seconds at most: 1.6 MiB/s, a pass over 100 GiB in
#: about 18 hours.
SCRUB_BYTES: Final = 16 << 20
SCRUB_INTERVAL: Final = 10.0


@final
class Scrubber:
    """Checks a store's blobs against their names a little at a time, pass
    after pass, and quarantines the corrupt and the unreadable ones (a disk's
    bit rot, a slip of an operator's): what a daemon (a mirror, the origin)
    runs now and then, so that a blob gone bad stops being served, and said
    held, long before anyone runs ``fsck``."""

    def __init__(self, store: BlobStore) -> None:
        self.store = store
        self._pending: list[str] = []  # the current pass's blobs yet to check, last first

    def step(self, budget: int) -> tuple[list[str], int]:
        """Check about ``budget`` bytes of blobs (a blob is checked whole), on
        from where the last step stopped, starting a new pass when one ends
        (at most one new pass a step); return the blobs quarantined and the
        bytes read."""
        found: list[str] = []
        read = 0
        refilled = False
        while read < budget:
            if not self._pending:
                if refilled:
                    break  # the whole store, within the budget
                self._pending, refilled = sorted(self.store, reverse=True), True
                continue
            cid = self._pending.pop()
            try:
                read += max(self.store.stat(cid).size, 1)
                if self.store.quarantine_if_corrupt(cid):
                    found.append(cid)
            except (OSError, StoreError):  # gone since the pass began, or not movable
                continue
        return found, read


def _read_pieces(handle: IO[bytes], size: int) -> Iterator[memoryview]:
    """Yield views of one reused buffer; each view is valid until the next one."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    while True:
        count = handle.readinto(view)  # type: ignore[attr-defined]
        if not count:
            return
        yield view[:count]


@final
class _VerifyingReader:
    """A raw reader that hashes as it goes and raises at the end if the blob is corrupt."""

    def __init__(self, handle: IO[bytes], cid: str) -> None:
        self._handle = handle
        self._cid = cid
        self._sha = hashlib.sha256()
        #: Bytes still to read before the blob's length at open: the read that
        #: reaches it is checked, so a caller that reads exactly that many
        #: bytes (and never sees the end) cannot take a corrupt blob as good.
        self._left = os.fstat(handle.fileno()).st_size
        self._unchecked = True  # bytes hashed since the last check (or none read yet)
        self._corrupt = False

    def _account(self, data: bytes | memoryview) -> None:
        """Hash ``data``; when the blob's length is reached, and at the end
        (an empty read of a non-empty request), check the whole. A corrupt
        blob raises at every read from then on."""
        if data:
            self._sha.update(data)
            self._left -= len(data)
            self._unchecked = True
        if (not data or self._left <= 0) and self._unchecked and not self._corrupt:
            self._unchecked = False
            self._corrupt = cid_from_sha256(self._sha.digest()) != self._cid
        if self._corrupt:
            raise CorruptBlobError(f"blob {self._cid} is corrupt: its bytes no longer match")

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            data = self._handle.read()
            self._account(data)
            self._account(b"")  # the end, whatever was checked before
            return data
        if size == 0:
            return b""  # asks for nothing: not the end of the blob
        data = self._handle.read(size)
        self._account(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        if not len(buffer):
            return 0
        count = self._handle.readinto(buffer)  # type: ignore[attr-defined]
        self._account(memoryview(buffer)[:count])
        return int(count)

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> _VerifyingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@final
class BlobWriter:
    """Writes one blob from pieces fed to :meth:`write`; see :meth:`BlobStore.writer`."""

    def __init__(self, store: BlobStore, chunk_size: int | None) -> None:
        self._store = store
        self._builder = ManifestBuilder(chunk_size) if chunk_size is not None else None
        self._sha = hashlib.sha256()
        self._update = self._builder.update if self._builder is not None else self._sha.update
        self._cleanup = contextlib.ExitStack()
        self._fd, self._tmp = self._cleanup.enter_context(store._temp_file())
        self.size = 0
        self._done = False

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes to the blob."""
        if self._done:
            raise StoreError("this blob writer is closed")
        _hash_and_write(self._update, self._fd, data)
        self.size += len(data)

    def commit(
        self, *, expect: str | None = None, min_manifest_chunks: int = 1
    ) -> tuple[str, Manifest | None]:
        """Store the blob (and its manifest, if chunked); return ``(cid, manifest)``.

        With ``expect``, bytes that do not hash to that CID raise
        :class:`DigestMismatchError` and nothing is stored. The manifest is
        stored only if it lists at least ``min_manifest_chunks`` chunks (a
        one-chunk manifest says nothing the blob's own CID does not).
        """
        if self._done:
            raise StoreError("this blob writer is closed")
        expected = parse_cid(expect)[0] if expect is not None else None
        try:
            if self._store.config.fsync:
                os.fsync(self._fd)
            digest = self._builder.sha256 if self._builder is not None else self._sha.digest()
            cid = cid_from_sha256(digest)
            if expected is not None and cid != expected:
                raise DigestMismatchError(f"bytes hash to {cid}, not the expected {expected}")
            manifest = self._builder.finish() if self._builder is not None else None
            if manifest is not None and manifest.count >= min_manifest_chunks:
                # The manifest first: whoever finds the blob can find its chunks.
                self._store.put(manifest.encoded, expect=manifest.cid)
            self._store._publish(self._tmp, cid)
        finally:
            self.abort()
        return cid, manifest

    def abort(self) -> None:
        """Discard what was written (a no-op after :meth:`commit`)."""
        if not self._done:
            self._done = True
            self._cleanup.close()


@final
class ChunkAssembly:
    """Builds one blob from chunks arriving in any order, verifying each on arrival.

    Use as a context manager; the partial file is removed unless :meth:`commit`
    stored the blob. Chunks are verified against the manifest's BLAKE3 digests
    as they land; the blob is stored only when every chunk is present and the
    whole file's SHA-256 matches the manifest.
    """

    def __init__(self, store: BlobStore, manifest: Manifest) -> None:
        self.manifest = manifest
        self._store = store
        self._have = bytearray(manifest.count)
        self._missing = manifest.count
        self._cleanup = contextlib.ExitStack()
        self._fd, self._tmp = self._cleanup.enter_context(store._temp_file())
        self._done = False
        try:
            os.ftruncate(self._fd, manifest.length)
        except OSError as exc:  # past what the file system holds (ext4: 16 TiB)
            self.close()
            raise StoreError(
                f"cannot hold a blob of {manifest.length} bytes: {exc.strerror}"
            ) from None

    def __enter__(self) -> ChunkAssembly:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Discard the partial file (a no-op after :meth:`commit`)."""
        if not self._done:
            self._done = True
            self._cleanup.close()

    @property
    def complete(self) -> bool:
        """True when every chunk has arrived and verified."""
        return self._missing == 0

    def missing(self) -> list[int]:
        """Indexes of the chunks still needed."""
        return [i for i, have in enumerate(self._have) if not have]

    def has(self, index: int) -> bool:
        """True if chunk ``index`` has arrived and verified."""
        self.manifest.chunk_span(index)
        return bool(self._have[index])

    def add(self, index: int, data: bytes | bytearray | memoryview) -> bool:
        """Verify and write chunk ``index``; return False if it was already here.

        Raises :class:`ChunkRejectedError` (and writes nothing) if the bytes are
        not that chunk.
        """
        if self._done:
            raise StoreError("this assembly is closed")
        self.manifest.verify_chunk(index, data)
        if self._have[index]:
            return False
        write_at(self._fd, data, self.manifest.chunk_span(index)[0])
        self._have[index] = 1
        self._missing -= 1
        return True

    def commit(self) -> str:
        """Check the whole blob's SHA-256 and store it; return its CID."""
        if self._done:
            raise StoreError("this assembly is closed")
        if not self.complete:
            raise ChunkRejectedError(f"{self._missing} chunks are still missing")
        sha = hashlib.sha256()
        with open(self._fd, "rb", buffering=0, closefd=False) as handle:
            handle.seek(0)
            for piece in _read_pieces(handle, self._store.config.buffer_size):
                sha.update(piece)
        cid = cid_from_sha256(sha.digest())
        if cid != self.manifest.blob_cid:
            raise DigestMismatchError(
                f"chunks verified but the whole blob hashes to {cid}, "
                f"not {self.manifest.blob_cid}: the manifest is inconsistent"
            )
        if self._store.config.fsync:
            os.fsync(self._fd)
        self._store._publish(self._tmp, cid)
        self.close()
        return cid
