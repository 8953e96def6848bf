"""The same scenario as real processes on loopback: what the simulator is checked against.

One origin and N mirrors (``tufmesh origin serve`` and ``tufmesh mirror run``
processes), every node's upload capped at the same rate; mirrors bootstrap
to one or two earlier ones at random (only the first knows the origin's
libp2p address) and find the rest through have-queries. A release of random
bytes is published, and each mirror's ``/healthz`` is polled until it holds
it. Bounded: every wait has a deadline, and every process is stopped.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx

from tufmesh._procs import TUFMESH, health, service
from tufmesh._ui import format_size
from tufmesh.errors import TufmeshError, UsageError
from tufmesh.netsim._scenario import LinkClass, Scenario
from tufmesh.origin._config import OriginConfig

#: The largest release a real run publishes: what its origin accepts.
MAX_SIZE: Final = OriginConfig.max_upload_bytes

__all__ = ["RealRun", "matching_scenario", "run_real"]


@dataclass(frozen=True)
class RealRun:
    """What the real network did (times in seconds since the upload returned)."""

    mirrors: int
    size: int
    rate: float
    completion: list[float]  # per mirror, sorted
    origin_bytes: int
    announced: list[float]  # per mirror: when the announcement arrived (if it did)
    #: Fraction of the machine's CPU time busy while the release replicated
    #: (None where /proc/stat is missing): near 1, the machine, not the
    #: capped links, set the pace.
    cpu_busy: float | None = None

    @property
    def all_done(self) -> float:
        """Time until every mirror held the release."""
        return max(self.completion)


#: How long :func:`run_real` waits for every mirror, from the commit.
REAL_DEADLINE: Final = 600.0


def matching_scenario(mirrors: int, size: int, rate: float, seed: int = 1) -> Scenario:
    """The simulator's model of :func:`run_real`: loopback links, uploads capped at ``rate``."""
    if not 1 <= size <= MAX_SIZE:  # (the origin of the real run refuses a larger upload)
        raise UsageError(
            f"size must be 1 .. {format_size(MAX_SIZE)} (an origin's upload limit), not {size:,}"
        )
    if rate > 0 and size / rate > REAL_DEADLINE:  # (refused before a real run, not after it)
        raise UsageError(
            f"size {format_size(size)} takes {size / rate:,.0f} s at {format_size(rate)}/s at "
            f"least, past the {REAL_DEADLINE:g} s a real run is given: less size, or more rate"
        )
    loopback = LinkClass(1.0, (rate, rate), (1 << 30, 1 << 30), (0.0001, 0.0001))
    return Scenario(
        mirrors=mirrors,
        size=size,
        seed=seed,
        origin_up=rate,
        link_classes=(loopback,),
        degree=max(1, min(16, mirrors - 1)),  # peer exchange: on loopback everyone finds everyone
        links="custom",
    )


def run_real(
    mirrors: int,
    size: int,
    rate: float,
    *,
    seed: int = 1,
    deadline: float = REAL_DEADLINE,
    progress: Callable[[int, int], None] | None = None,
) -> RealRun:
    """Run the release over real processes; ``progress(done, mirrors)`` as they complete."""
    rng = random.Random(seed)  # noqa: S311 (a topology, not secrets)
    with tempfile.TemporaryDirectory(prefix="tufmesh-real-") as tmp:
        work = Path(tmp)
        repo = work / "repo"
        subprocess.run([*TUFMESH, "origin", "init", "--dir", str(repo)], check=True,
                       capture_output=True)  # fmt: skip
        add = [*TUFMESH, "origin", "project", "add", "--dir", str(repo), "release"]
        token = subprocess.run(add, check=True, capture_output=True, text=True).stdout.split()[-1]
        root = repo / "metadata" / "1.root.json"
        cap = ["--max-upload-rate", str(int(rate))]
        with contextlib.ExitStack() as stack:
            origin = stack.enter_context(service(
                ["origin", "serve", "--dir", str(repo), "--port", "0", "--p2p-port", "0", *cap],
                "origin", work / "origin.log",
            ))  # fmt: skip
            addrs = {"origin": (repo / "p2p.addr").read_text().strip()}
            urls: dict[str, str] = {}
            for i in range(mirrors):
                earlier = list(urls)
                known = rng.sample(earlier, min(len(earlier), rng.choice([1, 2]))) if i else []
                extra = ["--bootstrap", addrs[known[0]] if known else addrs["origin"]]
                for peer in known:
                    extra += ["--peer", urls[peer]]
                name = f"m{i}"
                urls[name] = stack.enter_context(service(
                    ["mirror", "run", "--dir", str(work / name), "--root", str(root), "--origin",
                     origin, "--http-port", "0", "--p2p-port", "0", "--poll", "120", *cap, *extra],
                    f"mirror {name}", work / f"{name}.log",
                ))  # fmt: skip
                addrs[name] = (work / name / "p2p.addr").read_text().strip()
            end = time.monotonic() + 60
            while any(int(health(u).get("snapshot_version", 0) or 0) < 1 for u in urls.values()):
                if time.monotonic() > end:
                    raise TufmeshError("the mirrors did not start within 60 s")
                time.sleep(0.2)
            time.sleep(3)  # the gossip mesh forms (1 s heartbeats)
            before = int(health(origin).get("bytes_served", 0) or 0)
            cpu_before = _cpu_times()
            # A direct upload: its response comes right after the commit.
            response = httpx.post(
                f"{origin}/api/v1/projects/release/files/release-1.0.tar.gz",
                content=_random_bytes(size),  # (made as sent, not held: up to 1 GiB)
                headers={"authorization": f"Bearer {token}", "content-length": str(size)},
                timeout=120,
            )
            if response.status_code != 200:
                raise TufmeshError(f"the upload failed: HTTP {response.status_code}")
            committed, committed_at = time.monotonic(), time.time()
            version = int(health(origin).get("snapshot_version", 0) or 0)
            done: dict[str, float] = {}
            end = committed + deadline
            while len(done) < mirrors and time.monotonic() < end:
                for name, url in urls.items():
                    if (
                        name not in done
                        and int(health(url).get("snapshot_version", 0) or 0) >= version
                    ):
                        done[name] = time.monotonic() - committed
                        if progress is not None:
                            progress(len(done), mirrors)
                time.sleep(0.05)
            cpu_after = _cpu_times()
            served = int(health(origin).get("bytes_served", 0) or 0) - before
            heard = []
            for url in urls.values():
                announced = health(url).get("announced")
                if isinstance(announced, dict):
                    heard.append(float(announced["at"]) - committed_at)
        if len(done) < mirrors:
            raise TufmeshError(f"only {len(done)} of {mirrors} mirrors completed in {deadline:g} s")
        busy = None
        if cpu_before and cpu_after and cpu_after[1] > cpu_before[1]:
            busy = (cpu_after[0] - cpu_before[0]) / (cpu_after[1] - cpu_before[1])
        return RealRun(mirrors, size, rate, sorted(done.values()), served, sorted(heard), busy)


def _random_bytes(size: int) -> Iterator[bytes]:
    """``size`` random bytes, a MiB at a time."""
    while size > 0:
        piece = os.urandom(min(size, 1 << 20))
        size -= len(piece)
        yield piece


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)
