"""Benchmark the client's download path against curl and against rate caps.

Run by hand: ``python bench/download.py [--size 256MiB] [--cap 40MiB]``.

(a) One origin (``tufmesh origin serve``), one 256 MiB artifact: ``tufmesh get``
    (chunked, every chunk BLAKE3-checked, python-tuf's SHA-256 check on the
    whole file) against ``curl -o`` of the same file from the same server, in the
    same run. Target: get / curl >= 0.8.
(b) Four sources, each a server of this script that caps its upload rate at
    ``--cap``: get's throughput against the sum of the caps. Target >= 0.85.
Peak RSS of the ``tufmesh get`` process is printed too (target < 150 MiB).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tufmesh._ui import format_size, parse_size
from tufmesh.cas import BlobStore

TUFMESH = shutil.which("tufmesh", path=os.path.dirname(sys.executable)) or "tufmesh"


class CappedServer:
    """Serves a repository tree and its blobs (with Range) at ``cap`` bytes/s in total."""

    def __init__(self, repo: Path, cap: float) -> None:
        store = BlobStore(repo / "cas")
        lock = threading.Lock()
        state = {"next": time.monotonic()}

        def pace(nbytes: int) -> None:
            # A token bucket shared by every connection of this server.
            with lock:
                start = max(state["next"], time.monotonic())
                state["next"] = start + nbytes / cap
            delay = start - time.monotonic()
            if delay > 0:
                time.sleep(delay)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # As production servers do: without it, the body's first write
            # waits for the ACK of the headers (Nagle against delayed ACK, 40 ms).
            disable_nagle_algorithm = True

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                kind, _, name = self.path.lstrip("/").partition("/")
                if kind == "blobs":
                    try:
                        path = store.path(name)
                    except Exception:
                        self.send_error(404)
                        return
                else:
                    path = repo / kind / name
                    if not path.is_file():
                        self.send_error(404)
                        return
                size = path.stat().st_size
                start, end = 0, size - 1
                ranged = self.headers.get("range")
                if ranged:
                    first, _, last = ranged[6:].partition("-")
                    start, end = int(first), min(int(last), size - 1)
                self.send_response(206 if ranged else 200)
                self.send_header("content-length", str(end - start + 1))
                self.end_headers()
                with open(path, "rb") as handle, contextlib.suppress(ConnectionError):
                    # ConnectionError: the client abandoned a copy it no longer needs.
                    handle.seek(start)
                    left = end - start + 1
                    while left:
                        piece = handle.read(min(left, 256 << 10))
                        pace(len(piece))
                        self.wfile.write(piece)
                        left -= len(piece)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _run(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _get(home: Path, out: Path, target: str) -> tuple[float, float, float]:
    """Run tufmesh get; return (seconds, seconds moving bytes, peak RSS in MiB)."""
    shutil.rmtree(out, ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    done = subprocess.run(
        [TUFMESH, "get", target, "-o", str(out), "--home", str(home), "--json"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    transfer = json.loads(done.stdout)["transfer_seconds"]
    return seconds, transfer, max(before, after) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256MiB")
    parser.add_argument("--cap", default="40MiB", help="Upload cap of each source in (b).")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    size, cap = parse_size(args.size), parse_size(args.cap)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    work = Path(tempfile.mkdtemp(prefix="tufmesh-bench-"))
    server = None
    capped: list[CappedServer] = []
    try:
        repo = work / "repo"
        subprocess.run(
            [TUFMESH, "origin", "init", "--dir", str(repo)], check=True, capture_output=True
        )
        add = [TUFMESH, "origin", "project", "add", "--dir", str(repo), "bench"]
        token = subprocess.run(add, check=True, capture_output=True, text=True).stdout.split()[-1]
        server = subprocess.Popen(
            [TUFMESH, "origin", "serve", "--dir", str(repo), "--port", "0"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert server.stdout is not None
        url = server.stdout.readline().split(" on ")[-1].strip()
        artifact = work / "bench-1.0.tar.gz"
        with open(artifact, "wb") as handle:
            block = os.urandom(1 << 20)
            for i in range(size >> 20):
                handle.write(i.to_bytes(8, "big") + block[8:])
        subprocess.run([TUFMESH, "publish", str(artifact), "--origin", url, "--project", "bench",
                        "--token", token], check=True, capture_output=True)  # fmt: skip
        root = repo / "metadata" / "1.root.json"
        home = work / "home"
        subprocess.run([TUFMESH, "client", "init", str(root), "--origin", url, "--home", str(home)],
                       check=True, capture_output=True)  # fmt: skip
        sha = subprocess.run(
            [TUFMESH, "ls", "bench", "--home", str(home)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()[2]
        target = "bench/bench-1.0.tar.gz"
        out = work / "out"

        best_curl = best_get = best_transfer = float("inf")
        rss = 0.0
        for _ in range(args.rounds):
            curl_out = work / "curl.bin"
            best_curl = min(best_curl, _run(["curl", "-s", "-o", str(curl_out),
                                             f"{url}/targets/bench/{sha}.bench-1.0.tar.gz"]))  # fmt: skip
            curl_out.unlink()
            seconds, transfer, peak = _get(home, out, target)
            best_get, rss = min(best_get, seconds), max(rss, peak)
            best_transfer = min(best_transfer, transfer)
        print(f"(a) {format_size(size)} from one origin, best of {args.rounds}")
        print(f"    curl -o:      {size / best_curl / (1 << 20):8.1f} MiB/s  (baseline, same run)")
        print(f"    tufmesh get:  {size / best_get / (1 << 20):8.1f} MiB/s")
        print(f"    ratio:        {best_curl / best_get:8.2f}  (target >= 0.8)")
        print(f"    (moving and checking bytes alone: {size / best_transfer / (1 << 20):.1f} MiB/s;"
              " the rest is start-up and metadata)")  # fmt: skip

        capped = [CappedServer(repo, cap) for _ in range(4)]
        home4 = work / "home4"
        cmd = [
            TUFMESH,
            "client",
            "init",
            str(root),
            "--origin",
            capped[0].url,
            "--home",
            str(home4),
        ]
        for extra in capped[1:]:
            cmd += ["--mirror", extra.url]
        subprocess.run(cmd, check=True, capture_output=True)
        seconds = transfer = float("inf")
        for _ in range(args.rounds):
            took, moved, peak = _get(home4, out, target)
            seconds, transfer, rss = min(seconds, took), min(transfer, moved), max(rss, peak)
        rate = size / seconds
        print(
            f"(b) four sources capped at {format_size(cap)}/s each (sum {format_size(4 * cap)}/s),"
            f" best of {args.rounds}"
        )
        print(f"    tufmesh get:  {rate / (1 << 20):8.1f} MiB/s")
        print(f"    ratio to the sum of the caps: {rate / (4 * cap):.2f}  (target >= 0.85)")
        moving = size / transfer
        print(f"    moving and checking bytes alone: {moving / (1 << 20):.1f} MiB/s, "
              f"{moving / (4 * cap):.2f} of the caps")  # fmt: skip
        print(f"peak RSS of tufmesh get: {rss:.1f} MiB  (target < 150 MiB)")
    finally:
        for c in capped:
            c.close()
        if server is not None:
            server.terminate()
            server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
