"""Benchmark replication: one origin, N mirrors, every node's upload capped at R.

Run by hand: ``python bench/propagation.py [--mirrors 10] [--size 64MiB] [--rate 16MiB]``.

Mirrors form a random graph (each bootstraps to, and replicates from, one or
two earlier mirrors; only the first knows the origin); new versions are
announced over libp2p gossip. Prints the time until every mirror holds the
release divided by the lower bound for peer-to-peer distribution,
max(F/u_origin, N*F/(u_origin + sum of mirror uploads)) (target <= 1.5), the
origin's bytes served divided by F (target <= 1.5), and when the first and
the last mirror completed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tufmesh._ui import format_size, parse_size

TUFMESH = shutil.which("tufmesh", path=os.path.dirname(sys.executable)) or "tufmesh"


@contextlib.contextmanager
def server(args: list[str]) -> Iterator[str]:
    proc = subprocess.Popen([TUFMESH, *args], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().rsplit(" on ", 1)[1].strip()
    finally:
        proc.terminate()
        proc.communicate(timeout=60)


def version_of(url: str) -> int:
    try:
        return int(httpx.get(f"{url}/healthz", timeout=5).json()["snapshot_version"])
    except httpx.HTTPError:
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirrors", type=int, default=10)
    parser.add_argument("--size", default="64MiB")
    parser.add_argument("--rate", default="16MiB", help="Upload cap of every node, per second.")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    size, rate, n = parse_size(args.size), parse_size(args.rate), args.mirrors
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    work = Path(tempfile.mkdtemp(prefix="tufmesh-bench-"))
    rng = random.Random(args.seed)
    try:
        repo = work / "repo"
        subprocess.run(
            [TUFMESH, "origin", "init", "--dir", str(repo)], check=True, capture_output=True
        )
        add = [TUFMESH, "origin", "project", "add", "--dir", str(repo), "bench"]
        token = subprocess.run(add, check=True, capture_output=True, text=True).stdout.split()[-1]
        root = repo / "metadata" / "1.root.json"
        cap = ["--max-upload-rate", str(rate)]
        with contextlib.ExitStack() as stack:
            origin = stack.enter_context(server(
                ["origin", "serve", "--dir", str(repo), "--port", "0", "--p2p-port", "0", *cap]
            ))  # fmt: skip
            addrs = {"origin": (repo / "p2p.addr").read_text().strip()}
            urls: dict[str, str] = {}
            for i in range(n):
                name = f"m{i}"
                earlier = list(urls)
                known = (
                    rng.sample(earlier, min(len(earlier), rng.choice([1, 2]))) if i else ["origin"]
                )
                extra = []
                for peer in known:
                    extra += ["--bootstrap", addrs[peer]]
                    if peer != "origin":
                        extra += ["--peer", urls[peer]]
                urls[name] = stack.enter_context(server(
                    ["mirror", "run", "--dir", str(work / name), "--root", str(root), "--origin",
                     origin, "--http-port", "0", "--p2p-port", "0", "--poll", "120", *cap, *extra]
                ))  # fmt: skip
                addrs[name] = (work / name / "p2p.addr").read_text().strip()
            while any(version_of(u) < 1 for u in urls.values()):
                time.sleep(0.2)
            time.sleep(3)  # gossip mesh
            artifact = work / "bench-1.0.tar.gz"
            artifact.write_bytes(os.urandom(size))
            before = httpx.get(f"{origin}/healthz").json()["bytes_served"]
            start = time.monotonic()
            subprocess.run([TUFMESH, "publish", str(artifact), "--origin", origin, "--project", "bench",
                            "--token", token], check=True, capture_output=True)  # fmt: skip
            committed = time.monotonic()
            version = httpx.get(f"{origin}/healthz").json()["snapshot_version"]
            done: dict[str, float] = {}
            deadline = committed + 600
            while len(done) < n and time.monotonic() < deadline:
                for name, url in urls.items():
                    if name not in done and version_of(url) >= version:
                        done[name] = time.monotonic() - committed
                time.sleep(0.1)
            served = httpx.get(f"{origin}/healthz").json()["bytes_served"] - before
            for name in urls:
                state = json.loads((work / name / "state.json").read_text())
                fetched = state.get("bytes_fetched_by_source", {})
                peers = sum(v for k, v in fetched.items() if k != origin)
                print(f"  {name}: done {done.get(name, -1):6.2f} s, from peers "
                      f"{format_size(peers)}, from origin {format_size(fetched.get(origin, 0))}")  # fmt: skip
        bound = max(size / rate, n * size / (rate + n * rate))
        last = max(done.values()) if len(done) == n else float("inf")
        print(f"{n} mirrors, {format_size(size)}, every upload capped at {format_size(rate)}/s")
        print(f"  upload to the origin took {committed - start:.2f} s (not capped)")
        print(f"  first mirror complete after {min(done.values()):.2f} s, last after {last:.2f} s")
        print(f"  lower bound {bound:.2f} s; ratio {last / bound:.2f}  (target <= 1.5)")
        print(f"  origin served {served / size:.2f} x the artifact  (target <= 1.5)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
