"""Benchmark the simulator itself: wall-clock time and memory at internet scale.

Run by hand: ``python bench/netsim.py [--quick]``.

Two runs, each in its own process (so that peak RSS is its own): 1,000
mirrors and a 1 GiB release in 1 MiB chunks (targets: under 60 s), and 10,000
mirrors with 16 MiB chunks (under 5 minutes); both under 4 GiB, both on a
homogeneous network, where the time to full replication should be within
1.3x of the lower bound. ``--quick`` runs a tenth of each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

RUN = """
import json, resource, sys, time
from tufmesh.netsim import Scenario, simulate
mirrors, size, chunk = (int(a) for a in sys.argv[1:4])
started = time.perf_counter()
result = simulate(Scenario(mirrors=mirrors, size=size, chunk_size=chunk, links="homogeneous"))
print(json.dumps({
    "wall": time.perf_counter() - started,
    "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "ratio": result.all_done / result.lower_bound,
    "all_done": result.all_done, "bound": result.lower_bound,
    "origin": result.origin_bytes / size, "events": result.events,
}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="A tenth of the mirrors.")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    scale = 10 if args.quick else 1
    runs = [
        (1000 // scale, 1 << 30, 1 << 20, 60.0),
        (10_000 // scale, 1 << 30, 16 << 20, 300.0),
    ]
    for mirrors, size, chunk, target in runs:
        out = subprocess.run(
            [sys.executable, "-c", RUN, str(mirrors), str(size), str(chunk)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        r = json.loads(out)
        print(
            f"{mirrors} mirrors, {size >> 20} MiB in {chunk >> 20} MiB chunks: "
            f"wall {r['wall']:.1f} s (target < {target:.0f} s), peak RSS {r['rss_mib']:.0f} MiB "
            f"(target < 4096), {r['events']} events"
        )
        print(
            f"  every mirror after {r['all_done']:.1f} s; lower bound {r['bound']:.1f} s; "
            f"ratio {r['ratio']:.2f} (target <= 1.3); origin {r['origin']:.2f} x the release"
        )


if __name__ == "__main__":
    main()
