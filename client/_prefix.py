"""python-tuf's whole-file check, run while the file is still being filled.

Chunks land in the ``.part`` file out of order. :class:`VerifiedPrefix` is a
read-only file object over it that hands out only the bytes of the verified
prefix, waiting for the next chunk when it gets there; python-tuf's own
``verify_length_and_hashes`` reads it in a thread during the download. By the
last chunk it has hashed almost everything, from the page cache, and the
check that decides whether the file gets its name is the library's, over the
bytes on disk, as before: only no longer after the download.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, cast

__all__ = ["VerifiedPrefix", "check_alongside"]


class VerifiedPrefix(io.RawIOBase):
    """The verified prefix of ``path`` (``length`` bytes once complete)."""

    def __init__(self, path: Path, length: int) -> None:
        super().__init__()
        self._path, self._length = path, length
        self._fd: int | None = None
        self._pos = 0
        self._prefix = 0
        self._pieces: dict[int, int] = {}  # verified, beyond the prefix: offset -> length
        self._cond = threading.Condition()
        self._ended = False

    def mark(self, offset: int, length: int) -> None:
        """Bytes ``offset .. offset+length-1`` are verified and written."""
        with self._cond:
            if offset >= self._prefix:
                self._pieces[offset] = max(length, self._pieces.get(offset, 0))
            while self._prefix in self._pieces:
                self._prefix += self._pieces.pop(self._prefix)
            self._cond.notify_all()

    def end(self) -> None:
        """No more chunks will come: a reader waiting for one fails (the
        download failed), one past the end finishes."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        if self._pos >= self._length:
            return 0
        with self._cond:
            while self._prefix <= self._pos and not self._ended:
                self._cond.wait()
            if self._prefix <= self._pos:
                raise OSError("the download did not complete")
            available = self._prefix - self._pos
        if self._fd is None:
            self._fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        view = memoryview(buffer).cast("B")[: min(len(buffer), available)]
        count = os.preadv(self._fd, [view], self._pos)
        if count == 0:
            raise OSError(f"{self._path} is shorter than its verified chunks")
        self._pos += count
        return count

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        super().close()


def check_alongside(
    check: Callable[[BinaryIO], None],
    path: Path,
    length: int,
    download: Callable[[Callable[[int, int], None]], Any],
) -> Any:
    """Run ``download(mark)`` while ``check`` reads the verified prefix in a thread.

    Returns what ``download`` returned once ``check`` has passed; raises what
    either raised (the download's failure first)."""
    reader = VerifiedPrefix(path, length)
    failure: list[BaseException] = []

    def run_check() -> None:
        try:
            check(cast(BinaryIO, reader))  # a raw binary reader: what check reads
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run_check, name="tuf-check", daemon=True)
    thread.start()
    try:
        result = download(reader.mark)
    finally:
        reader.end()  # no more chunks: a reader still waiting fails instead of hanging
        thread.join()
        reader.close()
    if failure:
        raise failure[0]
    return result
