"""The origin's seeding gate, sans I/O."""

from __future__ import annotations

from tufmesh.origin._seeding import SeedGate


def test_each_chunk_once_per_window_and_a_few_at_a_time() -> None:
    gate = SeedGate(slots=2, window=10.0)
    assert gate.admit("a", 0.0) == "serve"
    assert gate.admit("a", 1.0) == "seeded"  # someone has it: ask the peers
    assert gate.admit("a", 1.0, patient=True) == "serve"  # the peers could not help
    assert gate.admit("b", 1.0) == "busy"  # two uploads running
    gate.done("a")
    assert gate.admit("b", 2.0) == "serve" and gate.active == 2
    gate.done("a")
    gate.done("b")
    assert gate.admit("a", 11.5) == "serve"  # the window passed: served again
    assert gate.active == 1


def test_an_upload_that_did_not_complete_does_not_count_as_seeded() -> None:
    gate = SeedGate(slots=1)
    assert gate.admit("a", 0.0) == "serve"
    gate.done("a", completed=False)
    assert gate.admit("a", 0.1) == "serve"
