"""Benchmark the content-addressed store against the machine's own limits.

Run by hand: ``python bench/cas.py [--size 512MiB] [--dir DIR]``.

The baseline, measured in the same run on the same bytes, is what any store must
at least do: SHA-256 over the bytes plus a plain file copy (``shutil.copyfile``,
which uses the kernel's copy_file_range). A durable store also fsyncs, so the
baseline is printed both with and without an fsync of the copy; the targets
(issue 2) are put >= 0.8x and verified get >= 0.8x of the baseline, and peak RSS
under 100 MiB for a 512 MiB blob.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tufmesh._ui import parse_size
from tufmesh.cas import BlobStore

BUF = 4 << 20


def _make_file(path: Path, size: int) -> None:
    block = os.urandom(BUF)
    with open(path, "wb") as out:
        written = 0
        while written < size:
            n = min(BUF, size - written)
            # Vary each block so nothing dedupes or compresses.
            out.write(written.to_bytes(8, "big") + block[8:n] if n > 8 else block[:n])
            written += n
        out.flush()
        os.fsync(out.fileno())


def _drop(path: Path) -> None:
    # Best effort: ask the kernel to drop cached pages, so reads are not free.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _sha_file(path: Path) -> bytes:
    sha = hashlib.sha256()
    buf = bytearray(BUF)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as handle:
        while n := handle.readinto(view):
            sha.update(view[:n])
    return sha.digest()


def _copy_fsync(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    fd = os.open(dst, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="512MiB")
    parser.add_argument("--dir", default=None, help="Where to write (default: a temp dir).")
    parser.add_argument("--rounds", type=int, default=3, help="Best of N.")
    args = parser.parse_args()
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="tufmesh-bench-", dir=args.dir))
    try:
        src = work / "blob.bin"
        _make_file(src, size)
        store = BlobStore(work / "cas")
        best: dict[str, float] = {}

        def record(name: str, seconds: float) -> None:
            best[name] = min(best.get(name, float("inf")), seconds)

        dst = work / "copy.bin"
        for _ in range(args.rounds):
            _drop(src)
            record("sha256", _timed(lambda: _sha_file(src)))
            _drop(src)
            record("copy", _timed(lambda: shutil.copyfile(src, dst)))
            dst.unlink()
            _drop(src)
            record("copy+fsync", _timed(lambda: _copy_fsync(src, dst)))
            dst.unlink()
            for cid in list(store):
                store.delete(cid)
            _drop(src)
            started = time.perf_counter()
            cid = store.put(src)
            record("put", time.perf_counter() - started)
            out = work / "out.bin"
            _drop(store.path(cid))
            started = time.perf_counter()
            store.export(cid, out)
            record("get", time.perf_counter() - started)
            out.unlink()

        mib = size / (1 << 20)
        base = best["sha256"] + best["copy"]
        base_sync = best["sha256"] + best["copy+fsync"]
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, {platform.platform()}"
        )
        print(f"blob: {mib:.0f} MiB, best of {args.rounds}")
        for name in ("sha256", "copy", "copy+fsync", "put", "get"):
            print(f"  {name:11s} {best[name]:7.3f} s  {mib / best[name]:8.1f} MiB/s")
        print(f"baseline sha256 + copy:        {mib / base:8.1f} MiB/s")
        print(f"baseline sha256 + copy+fsync:  {mib / base_sync:8.1f} MiB/s")
        print(f"put / baseline:         {base / best['put']:.2f}x  (target >= 0.8)")
        print(f"put / baseline(fsync):  {base_sync / best['put']:.2f}x")
        print(f"verified get / baseline: {base / best['get']:.2f}x  (target >= 0.8)")
        print(f"peak RSS: {rss:.1f} MiB  (target < 100 MiB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
