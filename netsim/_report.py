"""A simulation's result for machines (JSON), people (a table) and slides (a PNG)."""

from __future__ import annotations

import io
import json
import math
from typing import Any

from tufmesh._ui import format_size
from tufmesh.errors import UsageError
from tufmesh.netsim._scenario import Scenario
from tufmesh.netsim._sim import Result

__all__ = ["plot", "table", "to_json"]


def _seconds(value: float) -> float | None:
    """Rounded to the microsecond (stable JSON); None for never."""
    return None if math.isinf(value) else round(value, 6)


def _links(scenario: Scenario) -> str:
    """The link profile's name, or "custom" for a scenario file's own classes."""
    return "custom" if scenario.link_classes else scenario.links


def summary(result: Result) -> dict[str, Any]:
    """The headline figures."""
    size = result.scenario.size
    done = result.all_done
    return {
        "honest_mirrors": result.honest,
        "completed": sum(1 for t in result.completion if not math.isinf(t)),
        "completion_seconds": {
            "p50": _seconds(result.percentile(50)),
            "p90": _seconds(result.percentile(90)),
            "p99": _seconds(result.percentile(99)),
            "max": _seconds(done),
        },
        "origin_up_bytes_per_second": result.scenario.origin_rate,
        "lower_bound_seconds": _seconds(result.lower_bound),
        "churn_floor_seconds": _seconds(result.churn_floor),
        "ratio_to_bound": None if math.isinf(done) else round(done / result.lower_bound, 4),
        "origin_bytes": result.origin_bytes,
        "origin_bytes_per_release": round(result.origin_bytes / size, 4),
        "duplicate_bytes": result.duplicate_bytes,
        "duplicate_bytes_per_mirror_release": round(
            result.duplicate_bytes / (size * max(result.honest, 1)), 4
        ),
        "chunks_rejected": result.chunks_rejected,
        "corrupt_chunks_accepted": result.corrupt_accepted,
        "bans": result.bans,
        "hostile_peers_banned": result.banned_peers,
        "honest_peers_dropped": result.dropped,
        "announcement_last_seconds": _seconds(result.announce_last),
        "rejoined": result.rejoined,
        "rejoined_completed": result.rejoined_complete,
        "events": result.events,
    }


def to_json(result: Result) -> str:
    """The whole result: same scenario and seed, byte-identical output."""
    data = {
        "scenario": result.scenario.to_dict(),
        "summary": summary(result),
        "completion_seconds": [_seconds(t) for t in result.completion],
    }
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def table(result: Result) -> str:
    """A few aligned lines for a terminal."""
    s, sc = summary(result), result.scenario
    t = s["completion_seconds"]

    def sec(value: float | None) -> str:
        return "never" if value is None else f"{value:.2f} s"

    rows = [
        (
            "scenario",
            f"{sc.mirrors} mirrors ({s['honest_mirrors']} honest), {format_size(sc.size)} in "
            f"{sc.chunks} chunks, links {_links(sc)}, "
            f"seed {sc.seed}",
        ),
        ("completed", f"{s['completed']} of {s['honest_mirrors']} honest mirrors"),
        ("completion p50 / p90 / p99", f"{sec(t['p50'])} / {sec(t['p90'])} / {sec(t['p99'])}"),
        ("every honest mirror", sec(t["max"])),
        ("origin upload", f"{format_size(sc.origin_rate)}/s"),
        ("lower bound (no network does better)", sec(s["lower_bound_seconds"])),
        *(
            [("bound set by", "churn (mirrors away before any network could finish them)")]
            if result.churn_floor >= result.lower_bound
            else []
        ),
        (
            "ratio to the bound",
            f"{s['ratio_to_bound']:.2f}"
            if s["ratio_to_bound"] is not None
            else f"none: not every honest mirror completed within the horizon, {sc.horizon:g} s",
        ),
        ("origin served", f"{s['origin_bytes_per_release']} x the release"),
        ("duplicate bytes", f"{s['duplicate_bytes_per_mirror_release']} x per mirror"),
        (
            "chunks rejected / accepted bad",
            f"{s['chunks_rejected']} / {s['corrupt_chunks_accepted']}",
        ),
        (
            "hostile peers banned",
            f"{s['hostile_peers_banned']} of {sc.hostile} ({s['bans']} bans, each mirror's "
            f"counted); honest peers dropped: {s['honest_peers_dropped']}",
        ),
        ("last mirror told of the release", sec(s["announcement_last_seconds"])),
    ]
    if s["rejoined"]:
        rows.append(("rejoined, then completed", f"{s['rejoined']}, {s['rejoined_completed']}"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows) + "\n"


def pyplot() -> Any:
    """matplotlib's pyplot, drawing to files; a usage error if it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib: pip install 'tufmesh[plot]' (or matplotlib)"
        ) from None
    return plt


def plot(result: Result) -> bytes:
    """The completion-time CDF of honest mirrors against the lower bound, as a PNG."""
    plt = pyplot()
    times = [t for t in result.completion if not math.isinf(t)]
    n = max(result.honest, 1)
    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=110)
    axes.step(times, [(i + 1) / n for i in range(len(times))], where="post", label="simulated")
    axes.axvline(result.lower_bound, color="black", linestyle="--", label="lower bound")
    sc = result.scenario
    axes.set_title(
        f"{sc.mirrors} mirrors, {format_size(sc.size)}, links {_links(sc)}, seed {sc.seed}"
    )
    axes.set_xlabel("seconds since the release was committed")
    axes.set_ylabel("fraction of honest mirrors holding it")
    axes.set_ylim(0, 1.02)
    axes.legend(loc="lower right")
    figure.tight_layout()
    image = io.BytesIO()
    try:
        figure.savefig(image, format="png")
    finally:
        plt.close(figure)
    return image.getvalue()
