"""Soak the services: one origin and two mirrors under a steady trickle of uploads.

Run by hand: ``python bench/soak.py [--minutes 14] [--uploads 840]``.

Real processes on 127.0.0.1: ``origin serve`` and two ``mirror run`` (the
second bootstraps from the first over libp2p), and one upload a second (1
KiB to 64 KiB, each its own commit) until either bound is reached; every
20th upload is fetched back through the mirrors alone and checked. Every
minute it prints each process's resident memory and open files, and the
metadata files in the origin's tree and each mirror's. What an operator
running them for weeks needs to know: nothing may grow without bound but the
artifacts themselves. Superseded metadata goes 10 minutes after it was
replaced, so a run shorter than that shows only growth; past it, the
metadata files should stop growing (the current version of each role, and
the versions of the last 10 minutes). Resident memory is compared between
the third minute and the end, per commit.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import platform
import random
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from tufmesh._procs import TUFMESH, health, service
from tufmesh.origin import upload


def _children(pid: int) -> dict[int, str]:
    """Every process below ``pid`` (pid: its command line)."""
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            names[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    below, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in below:
                below[child] = names.get(child, "")
                frontier.append(child)
    return below


def _sample(pid: int) -> tuple[int, int]:
    """Resident memory (KiB) and open files of process ``pid`` (0, 0 if gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
        return rss, len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return 0, 0


def _label(cmdline: str) -> str | None:
    if " origin serve " in cmdline:
        return "origin"
    if "origin._signer" in cmdline:
        return "committer"
    if " mirror run " in cmdline:
        return "m2" if "/m2 " in cmdline else "m1"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=14.0)
    parser.add_argument("--uploads", type=int, default=840)
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    rng = random.Random(1)
    with (
        tempfile.TemporaryDirectory(prefix="tufmesh-soak-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        repo = work / "repo"
        run = lambda *a: subprocess.run([*TUFMESH, *a], check=True, capture_output=True, text=True)  # noqa: E731
        run("origin", "init", "--dir", str(repo), "--bins", "16")
        token = run("origin", "project", "add", "--dir", str(repo), "soak").stdout.split()[-1]
        root = repo / "metadata" / "1.root.json"
        origin = stack.enter_context(service(
            ["origin", "serve", "--dir", str(repo), "--port", "0", "--p2p-port", "0"],
            "origin", work / "origin.log",
        ))  # fmt: skip
        mirrors: list[str] = []
        for name in ("m1", "m2"):
            boot = (work / "m1" / "p2p.addr") if mirrors else (repo / "p2p.addr")
            peers = ["--peer", mirrors[0]] if mirrors else []
            mirrors.append(stack.enter_context(service(
                ["mirror", "run", "--dir", str(work / name), "--root", str(root), "--origin",
                 origin, "--http-port", "0", "--p2p-port", "0", "--bootstrap",
                 boot.read_text().strip(), *peers],
                f"mirror {name}", work / f"{name}.log",
            )))  # fmt: skip
        home = work / "client"
        run("client", "init", str(root), "--origin", mirrors[0], "--mirror", mirrors[1],
            "--home", str(home))  # fmt: skip
        trees = {"origin": repo / "metadata", "m1": work / "m1" / "tree" / "metadata",
                 "m2": work / "m2" / "tree" / "metadata"}  # fmt: skip
        rows: list[dict[str, object]] = []
        started = time.monotonic()

        def sample(now: float, commits: int) -> dict[str, object]:
            """Each process's memory and open files, each tree's metadata files; printed."""
            row: dict[str, object] = {"min": (now - started) / 60, "commits": commits}
            for pid, cmdline in _children(os.getpid()).items():
                label = _label(cmdline)
                if label is not None:
                    row[label] = _sample(pid)
            for label, tree in trees.items():
                row[f"{label} files"] = sum(1 for _ in tree.iterdir())
            print(
                f"{row['min']:5.1f} min {commits:4d} commits  "
                + "  ".join(
                    f"{k} {v[0] / 1024:.1f} MiB/{v[1]} fds" if isinstance(v, tuple) else f"{k} {v}"
                    for k, v in row.items()
                    if k not in ("min", "commits")
                ),
                flush=True,
            )
            return row

        end = started + args.minutes * 60
        next_sample, uploads, checked, failed = started, 0, 0, 0
        digests: dict[str, str] = {}
        with httpx.Client() as client:
            while uploads < args.uploads and time.monotonic() < end:
                now = time.monotonic()
                if now >= next_sample:
                    rows.append(sample(now, uploads))
                    next_sample += 60
                body = os.urandom(int(1024 * 64 ** rng.random()))
                path = work / f"soak-{uploads:05d}.bin"
                path.write_bytes(body)
                upload(client, origin, "soak", path, token)
                digests[path.name] = hashlib.sha256(body).hexdigest()
                uploads += 1
                if uploads % 20 == 0:
                    older = f"soak-{uploads - 10:05d}.bin"
                    out = work / "got"
                    got = subprocess.run(
                        [*TUFMESH, "get", f"soak/{older}", "-o", str(out), "--home", str(home)],
                        capture_output=True, text=True, check=False,
                    )  # fmt: skip
                    ok = got.returncode == 0 and (
                        hashlib.sha256((out / older).read_bytes()).hexdigest() == digests[older]
                    )
                    checked, failed = checked + 1, failed + (not ok)
                path.unlink()
                time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
        rows.append(sample(time.monotonic(), uploads))  # the end
        for url in (origin, *mirrors):
            if not health(url):
                print(f"{url} no longer answers")
    print(f"{uploads} commits in {(time.monotonic() - started) / 60:.1f} min; "
          f"{checked - failed} of {checked} downloads through the mirrors verified")  # fmt: skip
    warm = next((r for r in rows if float(r["min"]) >= 3), None)  # type: ignore[arg-type]
    last = rows[-1] if rows else None
    if warm is not None and last is not None and last is not warm:
        commits = int(last["commits"]) - int(warm["commits"])  # type: ignore[call-overload]
        for label in ("origin", "committer", "m1", "m2"):
            a, b = warm.get(label), last.get(label)
            if isinstance(a, tuple) and isinstance(b, tuple) and commits:
                print(f"{label}: {(b[0] - a[0]) / commits:+.1f} KiB resident per commit "
                      f"after the third minute ({a[0] / 1024:.1f} -> {b[0] / 1024:.1f} MiB)")  # fmt: skip
        for label in trees:
            print(f"{label}: metadata files {warm[f'{label} files']} -> {last[f'{label} files']}")


if __name__ == "__main__":
    main()
