"""Benchmark the simulator itself: wall-clock time and memory at internet scale.

Run by hand: ``python bench/netsim.py [--quick]``.

Two runs, each in its own process (so that peak RSS is its own): 1,000
mirrors and a 1 GiB release in 1 MiB chunks (targets: under 60 s), and 10,000
mirrors with 16 MiB chunks (under 5 minutes); both under 4 GiB, both on a
homogeneous network, where the time to full replication should be within
1.3x of the lower bound. ``--quick`` runs a tenth of each.

``--sweep`` instead prints the design table of docs/results.md: 1,000 mirrors
and 256 MiB, one change at a time from the defaults.

``--compiled`` also runs each scenario on a copy of the package whose hot
modules (the scheduler, the seeding gate, the simulator) mypyc has compiled
to C (it needs mypy, from the test extras, and a C compiler), and prints the
speed-up against the plain run just before it; the results must be the same.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUN = """
import json, resource, sys, time
from tufmesh.netsim import Scenario, simulate
mirrors, size, chunk = (int(a) for a in sys.argv[1:4])
started = time.perf_counter()
result = simulate(Scenario(mirrors=mirrors, size=size, chunk_size=chunk, links="homogeneous"))
import tufmesh.netsim._sim as sim
print(json.dumps({
    "compiled": not sim.__file__.endswith(".py"),
    "wall": time.perf_counter() - started,
    "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "ratio": result.all_done / result.lower_bound,
    "all_done": result.all_done, "bound": result.lower_bound,
    "origin": result.origin_bytes / size, "events": result.events,
}))
"""


#: What --compiled compiles: where a simulation spends its time.
HOT = ("tufmesh/client/_scheduler.py", "tufmesh/origin/_seeding.py", "tufmesh/netsim/_sim.py")


def compiled_copy(into: Path) -> Path:
    """The package laid out in ``into`` as installed, its hot modules compiled
    (a copy: mypyc writes its extension modules next to the sources)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.helpers.layout import installed_layout

    installed_layout(into, copy=True)
    built = subprocess.run(
        [sys.executable, "-m", "mypyc", *HOT], cwd=into, capture_output=True, text=True
    )
    if built.returncode != 0:
        tail = (built.stderr or built.stdout).strip().splitlines()[-5:]
        sys.exit(
            "--compiled needs mypy (pip install -e '.[test]') and a C compiler; mypyc said:\n  "
            + "\n  ".join(tail)
        )
    return into


def run(mirrors: int, size: int, chunk: int, path: Path | None = None) -> dict:
    """One simulation in a process of its own (``path``: import tufmesh from there)."""
    env = dict(os.environ, PYTHONPATH=str(path)) if path is not None else None
    out = subprocess.run(
        [sys.executable, "-c", RUN, str(mirrors), str(size), str(chunk)],
        capture_output=True, text=True, check=True, env=env,
    ).stdout  # fmt: skip
    return json.loads(out)


#: The sweep: one change at a time from 1,000 mirrors, 256 MiB, 1 MiB chunks.
SWEEP = {
    "chunk 1 MiB": {},
    "chunk 4 MiB": {"chunk_size": 4 << 20},
    "chunk 16 MiB": {"chunk_size": 16 << 20},
    "degree 4": {"degree": 4},
    "degree 16": {"degree": 16},
    "no upload slots": {"upload_slots": 0, "upload_bytes": 0},
    "mixed links": {"links": "mixed"},
    "home links": {"links": "home"},
    "10% hostile": {"malicious": 0.1},
    "30% hostile": {"malicious": 0.3},
    "25% churn": {"churn": 0.25, "downtime": 10.0},
}


def sweep() -> None:
    """Print the design table, a row per change."""
    from tufmesh.netsim import Scenario, simulate

    print("| scenario | p50 | every mirror | bound | ratio | origin | bans | wall |")
    print("|---|---|---|---|---|---|---|---|")
    for name, changes in SWEEP.items():
        started = time.perf_counter()
        r = simulate(Scenario(mirrors=1000, size=256 << 20, **changes))  # type: ignore[arg-type]
        print(
            f"| {name} | {r.percentile(50):.1f} | {r.all_done:.1f} | {r.lower_bound:.1f} "
            f"| {r.all_done / r.lower_bound:.2f} | {r.origin_bytes / (256 << 20):.2f} "
            f"| {r.bans} | {time.perf_counter() - started:.0f} s |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="A tenth of the mirrors.")
    parser.add_argument("--sweep", action="store_true", help="The design table instead.")
    parser.add_argument("--compiled", action="store_true", help="Also with mypyc (see above).")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    if args.sweep:
        sweep()
        return
    scale = 10 if args.quick else 1
    runs = [
        (1000 // scale, 1 << 30, 1 << 20, 60.0),
        (10_000 // scale, 1 << 30, 16 << 20, 300.0),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        compiled = compiled_copy(Path(tmp)) if args.compiled else None
        for mirrors, size, chunk, target in runs:
            r = run(mirrors, size, chunk)
            print(
                f"{mirrors} mirrors, {size >> 20} MiB in {chunk >> 20} MiB chunks: "
                f"wall {r['wall']:.1f} s (target < {target:.0f} s), "
                f"peak RSS {r['rss_mib']:.0f} MiB (target < 4096), {r['events']} events"
            )
            print(
                f"  every mirror after {r['all_done']:.1f} s; lower bound {r['bound']:.1f} s; "
                f"ratio {r['ratio']:.2f} (target <= 1.3); origin {r['origin']:.2f} x the release"
            )
            if compiled is not None:
                c = run(mirrors, size, chunk, compiled)
                same = all(c[k] == r[k] for k in ("events", "all_done", "origin"))
                assert c["compiled"] and same, c
                print(
                    f"  compiled with mypyc: wall {c['wall']:.1f} s (target < {target:.0f} s), "
                    f"{r['wall'] / c['wall']:.2f}x as fast, peak RSS {c['rss_mib']:.0f} MiB, "
                    "the same result"
                )


if __name__ == "__main__":
    main()
