"""Durable file writes, shared by every component that keeps state on disk.

The recipe of git, go-ds-flatfs and restic: write a temporary file in the same
directory, fsync it, rename it over the target, fsync the directory. After a
crash, the path holds the old bytes or the new ones, never a mix.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import json
import os
import threading
import time
from collections import defaultdict
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Final, Literal

__all__ = [
    "SUPERSEDED_GRACE",
    "drop_never_served",
    "fsync_dir",
    "hard_link",
    "hold_lock",
    "locked",
    "prune_superseded",
    "read_exactly",
    "served_versions",
    "write_at",
    "write_atomic",
]


@contextlib.contextmanager
def locked(path: Path, *, shared: bool = False) -> Iterator[None]:
    """Hold an advisory lock on ``path`` (created if missing) across processes:
    the one way a read-modify-write of a shared file keeps every change.
    A lock file this process may not write (a read-only mount, another
    user's) is still locked: ``flock`` needs no write access; and where it
    may not even be made, a reader (``shared``) goes on unlocked: nobody
    who may write there has opened it since it went."""
    fd: int | None
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if not shared:
                raise exc from None
            fd = None
    if fd is None:  # (outside the except: errors of the block are not chained to it)
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def hold_lock(path: Path, *, wait: float = 0.0) -> int | None:
    """Take the exclusive lock on ``path`` (a directory, or a file created if
    missing) for as long as the returned descriptor stays open (the process's
    life: one daemon per directory); None if another process still holds it
    after ``wait`` seconds."""
    if path.is_dir():
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    else:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.05)


def is_held(path: Path) -> bool:
    """Whether another process holds the lock :func:`hold_lock` takes on
    ``path`` (a daemon runs there). Asks for a shared lock and lets it go at
    once: a daemon starting that instant waits for it (``hold_lock``'s wait)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (creations, renames, unlinks) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, sync_dir: bool = True, mode: int = 0o666) -> None:
    """Write ``path`` so that it holds either the old or the new bytes, durably
    (a new file with ``mode``, less the umask: 0o600 for a secret).

    With ``sync_dir=False`` the caller fsyncs the directory itself, once for
    many files (see :func:`fsync_dir`).
    """
    tmp = _temp_name(path)
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk, say: no temp file left for ever
        raise
    if sync_dir:
        fsync_dir(path.parent)


def _temp_name(path: Path) -> Path:
    """A temporary name beside ``path``, this thread's own (and within the
    255 bytes a name may have, however long ``path``'s own is)."""
    return path.with_name(f".{name_start(path)}.tmp-{os.getpid()}-{threading.get_ident()}")


def name_start(path: Path) -> str:
    """The first 64 bytes of ``path``'s name, for a temporary name beside it
    within the 255 bytes a name may have (64 characters may be 256 bytes)."""
    return os.fsdecode(os.fsencode(path.name)[:64])


def hard_link(source: Path, link: Path) -> Literal["kept", "made", "replaced"]:
    """Make ``link`` name the file that ``source`` names, atomically: "kept"
    if it did, "made" if it was missing, "replaced" if it named another file
    (the store holds the bytes anew: a quarantined blob fetched or uploaded
    again, the old link still holding the corrupt copy). Past the
    filesystem's limit of hard links to one file, a relative symlink."""
    try:
        if os.path.samestat(os.stat(link), os.stat(source)):
            return "kept"
        outcome: Literal["made", "replaced"] = "replaced"
    except FileNotFoundError:  # no link (or a dangling symlink)
        outcome = "replaced" if os.path.islink(link) else "made"
    temp = _temp_name(link)
    temp.unlink(missing_ok=True)
    try:
        os.link(source, temp)
    except OSError as exc:
        if exc.errno != errno.EMLINK:
            raise
        os.symlink(os.path.relpath(source, link.parent), temp)
    os.replace(temp, link)
    return outcome


def read_exactly(path: str | os.PathLike[str], offset: int, length: int) -> bytes | None:
    """Bytes ``offset .. offset+length-1`` of ``path``; None if it is missing or shorter."""
    try:
        with open(path, "rb", buffering=0) as handle:
            data = os.pread(handle.fileno(), length, offset)
    except OSError:
        return None
    return data if len(data) == length else None


def write_at(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` of ``fd`` (``pwrite`` may write less)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


#: Seconds a superseded version of a role's metadata stays (see prune_superseded).
SUPERSEDED_GRACE: Final = 600.0


def prune_superseded(directory: Path, current: dict[str, int], grace: float) -> int:
    """Delete the versions ``N.ROLE.json`` in TUF metadata ``directory`` of the
    roles of ``current`` (role: its current version; never give root, whose
    chain clients walk) that a newer one replaced ``grace`` seconds ago or
    more: the newer file's time of writing says when (one read of the
    directory for them all: it holds every bin).

    Every commit writes a new version of each bin it touches and of the
    snapshot: kept, they grew without bound (600 empty uploads by one token:
    41.5 MB at the origin, quadratically, and as much on every mirror). A
    client or mirror mid-update reads what the timestamp it read names:
    versions stay for the grace after a newer one is published, and one
    deleted under a slow reader is fetched anew at its next refresh.
    Returns the files deleted."""
    versions: dict[str, list[int]] = defaultdict(list)
    for role, number, _ in _role_versions(directory, current):
        versions[role].append(number)
    cutoff = time.time() - grace
    deleted = 0
    for role, numbers in versions.items():
        for older, newer in itertools.pairwise(sorted(numbers)):
            if older >= current[role]:
                break
            try:
                replaced_at = (directory / f"{newer}.{role}.json").stat().st_mtime
                if replaced_at <= cutoff:  # (the next one kept says when it was replaced)
                    (directory / f"{older}.{role}.json").unlink(missing_ok=True)
                    deleted += 1
            except OSError:  # gone meanwhile, or a disk that refuses: next time
                continue
    return deleted


def drop_never_served(directory: Path, served: dict[str, int], current: dict[str, int]) -> int:
    """Delete the versions of each role in ``served`` (what a tree serves
    now) newer than it and older than ``current``'s (what it is about to
    serve): written by a sync that stopped before serving them, and skipped
    since. No timestamp ever named them, so no reader wants them; left, the
    older file's replacement would look as old as they are to
    :func:`prune_superseded`, which would delete the version served until
    now at once, not after the grace. Returns the files deleted."""
    deleted = 0
    for role, number, path in _role_versions(directory, served.keys() & current.keys()):
        if served[role] < number < current[role]:
            path.unlink(missing_ok=True)
            deleted += 1
    return deleted


def _role_versions(directory: Path, roles: Collection[str]) -> Iterator[tuple[str, int, Path]]:
    """``(role, version, path)`` of each ``N.ROLE.json`` in ``directory`` whose
    role is one of ``roles`` (none read if there are none)."""
    for path in directory.iterdir() if roles else ():
        number, _, rest = path.name.partition(".")
        role = rest.removesuffix(".json")
        if role in roles and number.isascii() and number.isdigit():
            yield role, int(number), path


def served_versions(metadata_dir: Path) -> dict[str, int] | None:
    """The version of each role a TUF tree serves now (its ``timestamp.json``'s
    snapshot, and the roles that snapshot names), or None if it cannot be
    read. Not verified: for a tree of one's own, written once verified."""
    try:
        timestamp = json.loads((metadata_dir / "timestamp.json").read_bytes())
        snapshot = int(timestamp["signed"]["meta"]["snapshot.json"]["version"])
        listed = json.loads((metadata_dir / f"{snapshot}.snapshot.json").read_bytes())
        versions = {
            str(file).removesuffix(".json"): int(meta["version"])
            for file, meta in listed["signed"]["meta"].items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return {**versions, "snapshot": snapshot}
