"""netsim: the mirror network at internet scale, simulated with the real scheduler.

:func:`simulate` runs a :class:`Scenario` (thousands of mirrors on links drawn
from profiles, churn, hostile nodes) in virtual time, every mirror driven by
the same :class:`~tufmesh.client.ChunkScheduler` the mirror daemon runs.
"""

from __future__ import annotations

from tufmesh.netsim._scenario import PROFILES, LinkClass, Scenario, load_scenario
from tufmesh.netsim._sim import Result, lower_bound, simulate

__all__ = [
    "PROFILES",
    "LinkClass",
    "Result",
    "Scenario",
    "load_scenario",
    "lower_bound",
    "simulate",
]
