"""Benchmark replication: one origin, N mirrors, every node's upload capped at R.

Run by hand: ``python bench/propagation.py [--mirrors 10] [--size 64MiB] [--rate 16MiB]``.

Real processes on 127.0.0.1 (tufmesh.netsim._real: mirrors bootstrap to one
or two earlier mirrors at random, announcements over libp2p gossip, chunks
traded by have-records). Prints the time until every mirror holds the
release divided by the lower bound for peer-to-peer distribution,
max(F/u_origin, N*F/(u_origin + sum of mirror uploads)) (target <= 1.5), the
origin's bytes served divided by F (target <= 1.5), the announcement latency
from the commit to the last mirror's receipt, and what the simulator predicts
for the same scenario.
"""

from __future__ import annotations

import argparse
import os
import platform

from tufmesh._ui import format_size, parse_size
from tufmesh.errors import UsageError
from tufmesh.netsim import simulate
from tufmesh.netsim._real import matching_scenario, run_real


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
    try:  # its checks, before the real run
        scenario = matching_scenario(n, size, rate, args.seed)
    except UsageError as exc:
        raise SystemExit(f"error: {exc}") from None
    real = run_real(n, size, rate, seed=args.seed)
    sim = simulate(scenario)
    bound = sim.lower_bound
    print(f"{n} mirrors, {format_size(size)}, every upload capped at {format_size(rate)}/s")
    print(
        f"  first mirror complete after {real.completion[0]:.2f} s, last after {real.all_done:.2f} s"
    )
    print(f"  lower bound {bound:.2f} s; ratio {real.all_done / bound:.2f}  (target <= 1.5)")
    print(f"  origin served {real.origin_bytes / size:.2f} x the release  (target <= 1.5)")
    if real.announced:
        print(
            f"  announcement: first mirror {real.announced[0] * 1000:+.0f} ms, last "
            f"{real.announced[-1] * 1000:+.0f} ms from the upload's response (it is "
            "announced at the commit: a mirror may hear of it before the uploader does)"
        )
    if real.cpu_busy is not None:
        print(f"  the machine's CPU was {real.cpu_busy:.0%} busy meanwhile")
    print(
        f"  simulator, same scenario: last {sim.all_done:.2f} s "
        f"({(sim.all_done - real.all_done) / real.all_done:+.0%}), origin "
        f"{sim.origin_bytes / size:.2f} x"
    )


if __name__ == "__main__":
    main()
