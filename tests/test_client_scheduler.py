"""The chunk scheduler, sans I/O: events in, decisions out, time passed by hand."""

from __future__ import annotations

import pytest

from tufmesh.client import ChunkScheduler, SchedulerConfig


def test_fills_every_source_then_finishes() -> None:
    s = ChunkScheduler(5, ["a", "b"], SchedulerConfig(per_source=2))
    started = s.assign(0.0)
    assert len(started) == 4 and {i for _, i in started} == {0, 1, 2, 3}
    assert {src for src, _ in started} == {"a", "b"}
    for source, index in started:
        assert s.verified(source, index, 100, 1.0)
    last = s.assign(1.0)  # the last chunk, and in the endgame a second copy of it
    assert {i for _, i in last} == {4} and len(last) == 2
    s.verified(last[0][0], 4, 100, 2.0)
    assert s.complete and s.assign(2.0) == [] and s.inflight() == []


def test_bad_chunk_bans_the_source_and_requeues_its_work() -> None:
    s = ChunkScheduler(4, ["liar", "honest"], SchedulerConfig(per_source=2))
    started = s.assign(0.0)
    liar_chunks = [i for src, i in started if src == "liar"]
    s.rejected("liar", liar_chunks[0], "BLAKE3 mismatch")
    assert "bad chunk" in (s.stats["liar"].banned or "")
    assert s.usable == ["honest"]
    assert all(src == "honest" for src, _ in s.inflight())
    for src, index in list(s.inflight()):
        s.verified(src, index, 10, 1.0)
    while not s.complete:
        for src, index in s.assign(1.0):
            assert src == "honest"
            s.verified(src, index, 10, 1.0)
    assert s.stats["liar"].chunks == 0


def test_repeated_failures_drop_a_source_and_stuck_is_reported() -> None:
    s = ChunkScheduler(2, ["flaky"], SchedulerConfig(per_source=1, max_failures=3))
    for attempt in range(3):
        ((src, index),) = s.assign(float(attempt))
        s.failed(src, index, "HTTP 500")
    assert s.stats["flaky"].banned is not None and s.stuck
    assert s.reasons()["flaky"].startswith("failed 3 times in a row")


def test_slow_requests_are_abandoned_after_grace() -> None:
    s = ChunkScheduler(
        1, ["trickle", "fast"], SchedulerConfig(per_source=1, grace=2.0, min_rate=1000)
    )
    ((src, index),) = [x for x in s.assign(0.0) if x[0] == "trickle"] or [s.inflight()[0]]
    s.received(src, index, 10)
    assert s.too_slow(1.0) == []  # inside the grace period
    assert (src, index) in s.too_slow(3.0)  # 10 bytes in 3 s
    s.failed(src, index, "too slow")
    assert index not in s.have


def test_endgame_duplicates_and_first_copy_wins() -> None:
    s = ChunkScheduler(1, ["a", "b"], SchedulerConfig(per_source=1))
    first = s.assign(0.0)
    assert len(first) == 2 and {i for _, i in first} == {0}  # idle source duplicates
    assert s.verified(first[0][0], 0, 5, 1.0) is True
    assert s.inflight() == []  # the losing copy is dropped for the caller to cancel
    assert s.verified(first[1][0], 0, 5, 1.1) is False


@pytest.mark.parametrize("have", [set(), {0, 2}, {0, 1, 2}])
def test_resume_skips_chunks_already_verified(have: set[int]) -> None:
    s = ChunkScheduler(3, ["a"], SchedulerConfig(per_source=3), have=set(have))
    assert {i for _, i in s.assign(0.0)} == {0, 1, 2} - have or s.complete
