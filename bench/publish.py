"""Benchmark the origin: upload throughput, and what a fresh client downloads.

Run by hand: ``python bench/publish.py [--uploads 10000] [--concurrency 16]``.

(1) Publish N small artifacts through the HTTP API from C concurrent uploaders
against a real ``tufmesh origin serve`` process, and, in the same run, the same
number of bare HTTP requests (``GET /healthz``) at the same concurrency: the
ceiling of the HTTP stack on this machine. Prints uploads/s and the ratio.
Target (issue 3): >= 500 uploads/s on the 2-core machine.

(2) Build repositories holding 100,000 artifacts (with 256 and with 4,096 hash
bins), and count the metadata bytes python-tuf's own client downloads to fetch
one artifact from scratch.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import trio

from tufmesh.origin._config import OriginConfig
from tufmesh.origin._repository import Artifact, OriginRepository

TUFMESH = shutil.which("tufmesh", path=os.path.dirname(sys.executable)) or "tufmesh"


def _start(repo: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [TUFMESH, "origin", "serve", "--dir", str(repo), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().split(" on ")[-1].strip()


async def _request(stream: trio.SocketStream, head: bytes, body: bytes, buf: bytearray) -> int:
    """One HTTP/1.1 request on a keep-alive connection; return the status code.

    A load generator must cost the machine as little as possible (wrk-style):
    httpx spends about 1 ms of CPU per request here, which on a 2-core machine
    would be taken from the server being measured.
    """
    await stream.send_all(head + body)
    while b"\r\n\r\n" not in buf:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    header_end = buf.index(b"\r\n\r\n") + 4
    headers = bytes(buf[:header_end]).lower()
    length = int(headers.split(b"content-length:")[1].split(b"\r\n")[0])
    while len(buf) < header_end + length:
        buf += await stream.receive_some(65536)
    status = int(headers[9:12])
    del buf[: header_end + length]
    return status


async def _hammer(url: str, n: int, concurrency: int, token: str | None) -> float:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    counter = iter(range(n))

    async def worker() -> None:
        stream = await trio.open_tcp_stream(host, int(port))
        buf = bytearray()
        async with stream:
            for i in counter:
                if token is None:
                    head, body = f"GET /healthz HTTP/1.1\r\nhost: {host}\r\n\r\n".encode(), b""
                else:
                    body = i.to_bytes(8, "big") + os.urandom(512)
                    head = (
                        f"POST /api/v1/projects/bench/files/bench-{i}.tar.gz HTTP/1.1\r\n"
                        f"host: {host}\r\nauthorization: Bearer {token}\r\n"
                        f"content-length: {len(body)}\r\n\r\n"
                    ).encode()
                status = await _request(stream, head, body, buf)
                if status != 200:
                    raise SystemExit(f"request {i} failed with {status}")

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return time.perf_counter() - start


def upload_throughput(work: Path, uploads: int, concurrency: int) -> None:
    repo = work / "repo"
    subprocess.run([TUFMESH, "origin", "init", "--dir", str(repo)], check=True, capture_output=True)
    add = [TUFMESH, "origin", "project", "add", "--dir", str(repo), "bench"]
    token = subprocess.run(add, check=True, capture_output=True, text=True).stdout.split()[-1]
    proc, url = _start(repo)
    try:
        bare = trio.run(_hammer, url, uploads, concurrency, None)
        publish = trio.run(_hammer, url, uploads, concurrency, token)
        health = httpx.get(f"{url}/healthz").json()
    finally:
        proc.terminate()
        proc.wait()
    print(f"(1) {uploads} uploads of ~520 B, {concurrency} concurrent uploaders")
    print(f"    bare HTTP requests:  {uploads / bare:8.0f} req/s   (baseline, same run)")
    print(f"    published uploads:   {uploads / publish:8.0f} uploads/s  (target >= 500)")
    print(f"    ratio to bare HTTP:  {bare / publish:8.2f}")
    print(
        f"    commits: {health['commits']} ({uploads / health['commits']:.1f} uploads per commit)"
    )


class _CountingFetcher:
    def __init__(self) -> None:
        from tuf.ngclient import Urllib3Fetcher

        self.inner = Urllib3Fetcher()
        self.metadata_bytes = 0
        self.files: list[tuple[str, int]] = []

    def fetch(self, url: str) -> Iterator[bytes]:
        for piece in self.inner.fetch(url):
            if "/metadata/" in url:
                self.metadata_bytes += len(piece)
            yield piece

    def download_bytes(self, url: str, max_length: int) -> bytes:
        data = self.inner.download_bytes(url, max_length)
        if "/metadata/" in url:
            self.metadata_bytes += len(data)
            self.files.append((url.rsplit("/", 1)[-1], len(data)))
        return data

    def download_file(self, url: str, max_length: int):
        return self.inner.download_file(url, max_length)


def metadata_overhead(work: Path, artifacts: int, bins: int) -> None:
    repo_dir = work / f"repo-{bins}"
    repo = OriginRepository.create(repo_dir, OriginConfig(bins=bins))
    cid, manifest = repo.store.put_chunked(b"x")
    sha = hashlib.sha256(b"x").hexdigest()
    started = time.perf_counter()
    batch = 5000
    for first in range(0, artifacts, batch):
        repo.publish([
            Artifact(f"proj-{i % 5000}/proj-{i}-1.0.tar.gz", 1, sha, cid, manifest.cid, 1 << 20)
            for i in range(first, min(first + batch, artifacts))
        ])  # fmt: skip
    built = time.perf_counter() - started
    proc, url = _start(repo_dir)
    try:
        from tuf.ngclient import Updater

        fetcher = _CountingFetcher()
        updater = Updater(
            tempfile.mkdtemp(dir=work), f"{url}/metadata/", tempfile.mkdtemp(dir=work),
            f"{url}/targets/",
            fetcher=fetcher,  # type: ignore[arg-type]
            bootstrap=(repo_dir / "metadata" / "1.root.json").read_bytes(),
        )  # fmt: skip
        updater.refresh()
        info = updater.get_targetinfo("proj-77/proj-77-1.0.tar.gz")
        assert info is not None
    finally:
        proc.terminate()
        proc.wait()
    detail = ", ".join(f"{name.split('.', 1)[-1] if name[0].isdigit() else name} {size / 1024:.1f}"
                       for name, size in fetcher.files)  # fmt: skip
    print(f"(2) {artifacts} artifacts in {bins} bins (built in-process in {built:.1f} s):")
    print(f"    a fresh client downloads {fetcher.metadata_bytes / 1024:.1f} KiB of metadata")
    print(f"    for one artifact: {detail} (KiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--artifacts", type=int, default=100_000)
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {platform.platform()}"
    )
    work = Path(tempfile.mkdtemp(prefix="tufmesh-bench-"))
    try:
        upload_throughput(work, args.uploads, args.concurrency)
        for bins in (256, 4096):
            metadata_overhead(work, args.artifacts, bins)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
