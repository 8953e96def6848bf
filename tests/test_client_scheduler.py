"""The chunk scheduler, sans I/O: events in, decisions out, time passed by hand."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tufmesh.client import ChunkScheduler, SchedulerConfig, chunk_mask, set_bits


def test_fills_every_source_then_finishes() -> None:
    s = ChunkScheduler(5, ["a", "b"], SchedulerConfig(per_source=2))
    started = s.assign(0.0)
    assert len(started) == 4 and {i for _, i in started} == {0, 1, 2, 3}
    assert {src for src, _ in started} == {"a", "b"}
    for source, index in started:
        assert s.verified(source, index, 100, 1.0)
    (last,) = s.assign(1.0)  # the last chunk
    assert last[1] == 4 and s.assign(1.2) == []  # too young to be worth a copy
    (copy,) = s.assign(1.6)  # a straggler: the endgame's second copy
    assert copy[1] == 4 and copy[0] != last[0]
    s.verified(last[0], 4, 100, 2.0)
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


def test_a_source_dropped_at_no_fault_that_then_lies_is_banned_for_it() -> None:
    """A "not held there" for one chunk dropped the source at no fault
    (``left``); a bad chunk it had in flight then was not said as a ban."""
    s = ChunkScheduler(4, ["partial", "honest"], SchedulerConfig(per_source=2))
    sent = [i for src, i in s.assign(0.0) if src == "partial"]
    s.drop("partial", "HTTP 404: not held there")
    assert s.stats["partial"].left and s.stats["partial"].banned
    s.rejected("partial", sent[1], "BLAKE3 mismatch")
    stats = s.stats["partial"]
    assert not stats.left and "bad chunk (BLAKE3 mismatch)" in (stats.banned or "")
    assert "partial" not in s.usable


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


def test_requests_to_one_source_share_its_slow_retrieval_floor() -> None:
    """Two requests to a mirror capped at twice the floor get the floor each
    when alone, half of it when together: slow only below their share."""
    s = ChunkScheduler(4, ["capped"], SchedulerConfig(per_source=2, grace=2.0, min_rate=1000))
    first, second = s.assign(0.0)
    for request in (first, second):
        s.received(*request, 1600)  # 533 B/s each: 1,066 B/s from the source
    assert s.too_slow(3.0) == []
    s.received(*first, 1000)
    s.verified(*first, 2600, 3.5)
    # Alone now (one in flight), the other must hold the whole floor.
    assert s.too_slow(4.0) == [second]  # 1,600 B in 4 s
    s.received(*second, 2500)
    assert s.too_slow(4.0) == []


def _slow_after(rates: dict[str, float], seconds: int = 4) -> set[str]:
    """The sources too slow after ``seconds``, each of its two requests in
    flight getting ``rates[source]`` bytes a second (floor 1,000 B/s)."""
    s = ChunkScheduler(
        16, list(rates), SchedulerConfig(per_source=2, grace=2.0, min_rate=1000, seed=1)
    )
    requests = s.assign(0.0)
    assert sorted(source for source, _ in requests) == sorted(2 * list(rates))
    slow: set[str] = set()
    for now in range(1, seconds + 1):
        for source, index in requests:
            s.received(source, index, int(rates[source]))
        slow |= {source for source, _ in s.too_slow(float(now))}
    return slow


def test_sources_sharing_a_slow_link_are_not_dropped_for_its_slowness() -> None:
    """ADR 27. Four honest sources behind this node's link of 3,200 B/s (400
    B/s a request, under each source's floor of 500): the link is slow, not
    they, and the download as a whole gets more than the floor. Before, all
    four were too slow at once, three times, and dropped: the more mirrors a
    client listed, the faster a link it needed."""
    assert _slow_after(dict.fromkeys("abcd", 400)) == set()
    # Judged so from the requests' start, not only from the first check: the
    # time before it was charged the whole floor (eight at 150 B/s: too slow).
    assert _slow_after(dict.fromkeys("abcdefgh", 150)) == set()
    # A trickler among them: a quarter of an even share, no less, is owed.
    assert _slow_after({"a": 400, "b": 400, "c": 400, "t": 40}) == {"t"}
    # On a fast link a trickler owes the whole floor, as when alone.
    assert _slow_after({"a": 100_000, "b": 100_000, "c": 100_000, "t": 450}) == {"t"}
    # A link (or a set of colluding tricklers) under the floor in all: slow,
    # every one, as a single source giving so little is.
    assert _slow_after(dict.fromkeys("abcd", 100)) == set("abcd")
    # A lone source is judged as before: its floor, shared by its requests.
    assert _slow_after({"a": 450}) == {"a"} and _slow_after({"a": 550}) == set()


def test_endgame_duplicates_and_first_copy_wins() -> None:
    s = ChunkScheduler(1, ["a", "b"], SchedulerConfig(per_source=1))
    first = s.assign(0.0)
    assert len(first) == 1  # a one-chunk artifact is not fetched twice...
    first += s.assign(0.5)  # ...unless its request straggles: an idle source duplicates
    assert len(first) == 2 and {i for _, i in first} == {0}
    assert s.verified(first[0][0], 0, 5, 1.0) is True
    assert s.inflight() == []  # the losing copy is dropped for the caller to cancel
    assert s.verified(first[1][0], 0, 5, 1.1) is False


@pytest.mark.parametrize("have", [set(), {0, 2}, {0, 1, 2}])
def test_resume_skips_chunks_already_verified(have: set[int]) -> None:
    s = ChunkScheduler(3, ["a"], SchedulerConfig(per_source=3), have=set(have))
    assert {i for _, i in s.assign(0.0)} == {0, 1, 2} - have
    assert s.complete == (have == {0, 1, 2})


# -- replication: partial sources, rarest first, the origin as fallback ----------


def test_rarest_chunk_first_among_what_a_peer_holds() -> None:
    s = ChunkScheduler(4, [], SchedulerConfig(per_source=1))
    s.add_source("p1", has={0, 1, 2})
    s.add_source("p2", has={0, 1})
    s.add_source("p3", has={3})
    # chunks 2 and 3 have one holder each, 0 and 1 two: p1 asks for its rarest
    started = dict(s.assign(0.0))
    assert started["p3"] == 3 and started["p1"] == 2 and started["p2"] in {0, 1}


def test_fallback_only_for_chunks_no_peer_holds_or_claims() -> None:
    s = ChunkScheduler(6, [], SchedulerConfig(per_source=4, per_fallback=4), fallback={"origin"})
    s.add_source("origin")
    s.add_source("origin")  # already known: ignored
    s.add_source("peer", has={0, 1})
    s.set_claims("neighbour", chunk_mask({2, 3}))
    started = s.assign(0.0)
    by_origin = {i for src, i in started if src == "origin"}
    assert by_origin == {4, 5}
    assert {i for src, i in started if src == "peer"} == {0, 1}
    assert set_bits(s.claims()) == [4, 5]
    # the neighbour's claims lapse (it finished, or went away): now the origin may serve them
    s.set_claims("neighbour", 0)
    for src, index in started:
        s.verified(src, index, 1, 1.0)
    assert {i for src, i in s.assign(1.0) if src == "origin"} == {2, 3}


def test_a_complete_peer_spares_the_origin_entirely() -> None:
    s = ChunkScheduler(3, [], SchedulerConfig(per_source=1, per_fallback=2), fallback={"origin"})
    s.add_source("origin")
    s.add_source("peer", has={0})
    assert {src for src, _ in s.assign(0.0)} == {"peer", "origin"}
    s.add_have("peer", {1, 2})  # the peer completed: it serves everything
    assert s.holds("peer") is None
    for src, index in s.inflight():
        s.verified(src, index, 1, 1.0)
    assert all(src == "peer" for src, _ in s.assign(1.0))


def test_a_banned_peer_stops_counting_as_a_holder() -> None:
    s = ChunkScheduler(2, [], SchedulerConfig(per_source=1), fallback={"origin"})
    s.add_source("origin")
    s.add_source("liar", has={0, 1})
    assert dict(s.assign(0.0)) == {"liar": 0}  # the origin waits: a peer holds both
    s.rejected("liar", 0, "BLAKE3 mismatch")
    s.add_have("liar", {0})  # what it says from now on is ignored
    assert dict(s.assign(1.0)) == {"origin": 0}
    assert not s.stuck


def test_stuck_only_when_no_usable_source_holds_a_missing_chunk() -> None:
    s = ChunkScheduler(2, [], SchedulerConfig(per_source=1))
    s.add_source("peer", has={0})
    ((src, index),) = s.assign(0.0)
    s.verified(src, index, 1, 0.5)
    assert s.stuck and s.assign(1.0) == []
    s.add_have("peer", {1})
    assert not s.stuck and s.assign(1.0) == [("peer", 1)]


def test_seeded_nodes_pick_different_first_chunks() -> None:
    firsts = set()
    for seed in range(8):
        s = ChunkScheduler(64, [], SchedulerConfig(per_source=1, seed=seed), fallback={"o"})
        s.add_source("o")
        firsts.add(s.assign(0.0)[0][1])
    assert len(firsts) >= 6  # the origin's first uploads are spread over the release


def test_designated_fetcher_asks_the_origin_only_for_its_own_chunks() -> None:
    from tufmesh.client._scheduler import weights

    count, names = 64, ["http://a", "http://b", "http://c"]
    fetched_from_origin: dict[str, set[int]] = {}
    for me in names:
        s = ChunkScheduler(
            count,
            [],
            SchedulerConfig(per_source=64, per_fallback=64, measured_requests=64),
            fallback={"o"},
            me=me,
        )
        s.add_source("o")
        for peer in names:
            if peer != me:
                s.add_source(peer, has=())  # neighbours, holding nothing yet
        s.assign(0.0)
        fetched_from_origin[me] = {i for src, i in s.inflight() if src == "o"}
    owners = {i: max(names, key=lambda n: weights(n, count)[i]) for i in range(count)}
    for me, chunks in fetched_from_origin.items():
        assert chunks == {i for i, owner in owners.items() if owner == me}
    # together they fetch each chunk from the origin exactly once
    assert sum(len(c) for c in fetched_from_origin.values()) == count
    # ...and share the work: the weights are not one name's (64 chunks among
    # three: about 21 each, and below 10 with odds under one in a thousand)
    assert all(len(c) >= 10 for c in fetched_from_origin.values()), fetched_from_origin


def _run(s: ChunkScheduler, refuses: set[str], until: float) -> tuple[float, dict[str, int]]:
    """Play a download: sources in ``refuses`` answer busy (ask again in 0.01 s:
    never resting when the next pick comes), the others deliver at once."""
    now, served = 0.0, {}
    while not s.complete and now < until:
        for src, index in s.assign(now):
            if src in refuses:
                s.refused(src, index, now + 0.01)
            else:
                served[src] = served.get(src, 0) + 1
                s.verified(src, index, 1, now)
        now += 0.5
    return now, served


@pytest.mark.parametrize("claim", [{0, 1, 2}, None], ids=["all-but-one", "all"])
def test_peers_that_only_say_busy_cannot_hold_a_download_hostage(claim: set[int] | None) -> None:
    """Neighbours claiming chunks and answering every request busy: the origin
    is not asked for chunks a peer holds (nor at all while a peer holding
    everything answers), so without a limit the download would wait for ever."""
    s = ChunkScheduler(4, [], SchedulerConfig(max_stall=30.0), fallback={"o"}, me="http://a")
    s.add_source("o")
    s.add_source("http://liar", has=claim)
    s.add_source("http://liar2", has=claim)
    s.add_source("http://honest", has={1})
    now, served = _run(s, {"http://liar", "http://liar2"}, until=100)
    assert s.complete and 30 <= now <= 35  # held up for max_stall, not for ever
    assert served == {"http://honest": 1, "o": 3}
    assert all(s.patient("o", i) is False for i in range(4))  # requests over: none left


def test_only_the_origin_seeds_a_peer_saying_so_rests_like_a_busy_one() -> None:
    """A neighbour that claimed every chunk and answered each request "seeded"
    (only the origin seeds) was asked again at once, hundreds of thousands
    of times, and kept the origin closed until max_stall, a minute a blob."""
    s = ChunkScheduler(4, [], SchedulerConfig(max_stall=60.0), fallback={"o"}, me="http://a")
    s.add_source("o")
    s.add_source("http://liar")  # holds everything, it says
    now, asked = 0.0, 0
    while not s.complete and now < 100:
        for src, index in s.assign(now):
            if src == "http://liar":
                asked += 1
                s.refused(src, index, now + 1.0, seeded=True)
            else:
                s.verified(src, index, 1, now)
        now += 0.01
    assert s.complete and now < 10  # after its patience, not max_stall
    assert asked < 20
    # From the origin, "seeded" still means: wait for the peers to hold it.
    s = ChunkScheduler(2, [], SchedulerConfig(), fallback={"o"}, me="http://a")
    s.add_source("o")
    s.add_source("http://b", has=())
    ((src, index),) = [a for a in s.assign(0.0) if a[0] == "o"]
    s.refused("o", index, 1.0, seeded=True)
    assert index not in {i for _, i in s.assign(0.5)}  # left to the peers for now


@pytest.mark.parametrize("has", [None, set(range(39))], ids=["all", "all-but-one"])
def test_a_slow_peer_that_serves_keeps_the_origin_out_and_one_that_refuses_does_not(
    has: set[int] | None,
) -> None:
    """A neighbour holding the chunks and serving each request slowly (5 s)
    is waited for: the origin is not loaded with what a peer serves. One that
    refuses every request but a chunk every 30 s (so that the stall rule,
    60 s without a chunk from a peer, never came) held the mirror to its pace
    (a review: 64 chunks in an hour), and so did one failing two requests in
    three after keeping each 10 s (a trickle the slow-retrieval floor cuts,
    its failures never three in a row), and one serving two chunks in a row
    each minute: the stall clock now runs at the floor's rate (a MiB is 16 s
    at 64 KiB/s), so the peers together must keep up the floor, and after
    the stall the origin serves the rest: here about half the floor, so the
    stall comes after about 2 minutes. (A peer at the floor, a MiB in 15 s,
    is served from: the slow-retrieval floor's own limit.)"""
    for mode in ("serves", "refuses", "fails", "bursts"):
        s = ChunkScheduler(40, [], SchedulerConfig(), fallback={"o"}, me="http://a")
        s.add_source("o")
        s.add_source("http://slow", has=has)
        s.add_source("http://other", has={39})
        now, served, pending, asked = 0.0, {"o": 0, "http://slow": 0, "http://other": 0}, [], 0
        while not s.complete and now < 2000:
            for src, index, due, ok in [p for p in pending if p[2] <= now]:
                if ok:
                    served[src] += 1
                    s.verified(src, index, 1 << 20, due)
                else:
                    s.failed(src, index, "too slow")
            pending = [p for p in pending if p[2] > now]
            for src, index in s.assign(now):
                if src != "http://slow":
                    pending.append((src, index, now + 0.1, True))
                elif (mode == "refuses" and int(now * 10) % 300) or (
                    mode == "bursts" and int(now * 10) % 600 not in (0, 1)
                ):
                    s.refused(src, index, now + 0.1)
                else:
                    asked += 1
                    delay = {"serves": 5.0, "fails": 10.0}.get(mode, 0.05)
                    pending.append((src, index, now + delay, mode != "fails" or asked % 3 == 0))
            now = round(now + 0.1, 1)
        assert s.complete and s.stats["http://slow"].banned is None
        if mode == "serves":
            assert served["http://slow"] >= 39 and served["o"] == 0, (now, served)
        else:
            assert now < 3 * 60 and served["o"] >= 35, (mode, now, served)


def test_an_idle_mirror_asks_the_origin_for_any_chunk_after_patience() -> None:
    config = SchedulerConfig(per_fallback=1, patience=0.5)
    s = ChunkScheduler(8, [], config, fallback={"o"}, me="http://a")
    s.add_source("o")
    s.add_source("http://b", has=())
    for _src, index in s.assign(0.0):
        s.verified("o", index, 1, 0.01)
    # b is the designated fetcher of the rest; it says nothing for a while
    while s.assign(0.1):
        for src, index in s.inflight():
            s.verified(src, index, 1, 0.1)
    assert s.assign(0.3) == []  # not yet: b may still deliver
    late = s.assign(0.7)
    assert len(late) == 1 and late[0][0] == "o"


def test_fallback_waits_for_the_first_have_round() -> None:
    s = ChunkScheduler(4, [], SchedulerConfig(per_fallback=2), fallback={"o"}, me="x")
    s.add_source("o")
    s.fallback_open = False
    assert s.assign(0.0) == []
    s.fallback_open = True
    assert len(s.assign(0.1)) == 2  # alone: it owns every chunk


# -- a model check: every pick is the rarest waiting chunk its source holds --------

_PEERS = ("p0", "p1", "p2")
_EVENT = st.tuples(
    st.sampled_from(["have", "verified", "failed", "refused", "rejected", "drop"]),
    st.sampled_from(_PEERS),
    st.frozensets(st.integers(0, 7), max_size=4),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_EVENT, max_size=40))
def test_every_pick_is_the_rarest_waiting_chunk_its_source_holds(
    events: list[tuple[str, str, frozenset[int]]],
) -> None:
    count = 8
    s = ChunkScheduler(count, [], SchedulerConfig(per_source=2, max_copies=1))
    for peer in _PEERS:
        s.add_source(peer, has=())
    held: dict[str, set[int]] = {p: set() for p in _PEERS}  # the model's have-records
    resting = dict.fromkeys(_PEERS, 0.0)  # a source that refused rests until then
    now = 0.0
    for kind, peer, chunks in events:
        now += 0.1
        running = [key for key in s.inflight() if key[0] == peer]
        if kind == "have":
            s.add_have(peer, chunks)
            held[peer] |= chunks
        elif kind == "drop":
            s.drop(peer, "left")
        elif running:
            source, index = running[0]
            if kind == "verified":
                s.verified(source, index, 1, now)
            elif kind == "failed":
                s.failed(source, index, "reset")
            elif kind == "refused":
                s.refused(source, index, now + 0.05)
                resting[source] = now + 0.05
            else:
                s.rejected(source, index, "bad chunk")
        # After every event: what the scheduler asks for, against the model.
        waiting = set(range(count)) - s.have - {i for _, i in s.inflight()}
        listened = [p for p in _PEERS if s.stats[p].banned is None]
        rarity = {i: sum(i in held[p] for p in listened) for i in range(count)}
        for source, index in s.assign(now):
            offer = waiting & held[source]
            assert index == min(offer, key=lambda i: (rarity[i], i))
            waiting.discard(index)
        for p in listened:  # and no source is left idle that could give a chunk
            load = sum(1 for source, _ in s.inflight() if source == p)
            if load < 2 and resting[p] <= now:
                assert not waiting & held[p]


def test_a_mirror_asks_each_peer_for_one_chunk_at_a_time() -> None:
    # An end user's download pipelines two requests per source; a mirror has
    # many peers and each of its requests takes one of a peer's upload slots.
    user = ChunkScheduler(8, [], SchedulerConfig(per_source=2, per_peer=1))
    mirror = ChunkScheduler(8, [], SchedulerConfig(per_source=2, per_peer=1), me="m0")
    for s in (user, mirror):
        s.add_source("p1", has=range(8))
        s.add_source("p2", has=range(4))
    assert sorted(src for src, _ in user.assign(0.0)) == ["p1", "p1", "p2", "p2"]
    assert sorted(src for src, _ in mirror.assign(0.0)) == ["p1", "p2"]


def test_a_mirror_keeps_few_requests_to_measured_peers_in_flight() -> None:
    # Peers that have delivered before get at most ``measured_requests`` at
    # once; a peer not yet measured is asked regardless (a withholding peer
    # must not hold one of the few places). An end user's download has no cap.
    peers = ["p1", "p2", "p3", "p4"]
    config = SchedulerConfig(measured_requests=2)
    mirror = ChunkScheduler(16, [], config, me="m0")
    user = ChunkScheduler(16, list(peers), config)
    for p in peers:
        mirror.add_source(p, has=range(16))
    for s in (mirror, user):
        first = s.assign(0.0)
        assert sorted({src for src, _ in first}) == peers
        for source, index in first:
            s.verified(source, index, 1000, 1.0)
    assert len(user.assign(1.0)) == 8  # two per source, as before
    again = mirror.assign(1.0)
    assert len(again) == 2  # all four measured now: two at a time
    mirror.add_source("p5", has=range(16))
    assert [src for src, _ in mirror.assign(1.0)] == ["p5"]  # a newcomer is tried at once
    source, index = again[0]
    mirror.failed(source, index, "reset")
    assert len(mirror.assign(1.5)) == 1  # a place freed, however the request ended


def test_a_mirror_at_its_cap_leaves_the_origin_alone() -> None:
    # The fallback counts against the cap from the start: its uplink is the
    # scarcest, and a mirror busy with its peers does not need it.
    mirror = ChunkScheduler(16, [], SchedulerConfig(measured_requests=1), fallback={"o"}, me="m0")
    mirror.add_source("o")
    mirror.add_source("p1", has=[0])
    first = sorted(mirror.assign(0.0))
    assert [src for src, _ in first] == ["o", "p1"]  # p1 not measured yet: not counted
    origin_chunk = first[0][1]
    mirror.verified("p1", 0, 1000, 1.0)
    mirror.add_have("p1", range(1, 16))
    assert mirror.assign(1.0) == []  # the origin's request fills the one place
    mirror.verified("o", origin_chunk, 1000, 1.5)
    assert [src for src, _ in mirror.assign(1.5)] == ["p1"]


@given(st.sets(st.integers(min_value=0, max_value=2000)))
def test_chunk_masks_round_trip(indices: set[int]) -> None:
    assert set_bits(chunk_mask(indices)) == sorted(indices)


def test_claims_past_the_blob_or_negative_are_ignored() -> None:
    s = ChunkScheduler(4, [], SchedulerConfig(per_fallback=4), fallback={"origin"})
    s.add_source("origin")
    s.set_claims("liar", chunk_mask({1, 64, 1000}))  # only chunk 1 is in the blob
    s.set_claims("other", -1)  # no chunk at all, not every chunk
    assert sorted(i for _, i in s.assign(0.0)) == [0, 2, 3]
    s.set_claims("liar", 0)  # its claim lapses: chunk 1 is the origin's to give again
    assert s.assign(0.0) == [("origin", 1)]


def test_a_banned_peers_claims_count_for_nothing() -> None:
    """Banned for a bad chunk, a peer's claims were cleared, and its next
    have-record (a quarter second later) claimed them again: the origin held
    back the chunks a banned liar said it would fetch."""
    s = ChunkScheduler(3, [], SchedulerConfig(per_source=1, per_fallback=4), fallback={"origin"})
    s.add_source("origin")
    s.add_source("liar", has={0})
    s.set_claims("liar", chunk_mask({1, 2}))
    assert s.assign(0.0) == [("liar", 0)]  # the origin waits for the claimed chunks
    s.rejected("liar", 0, "BLAKE3 mismatch")
    s.set_claims("liar", chunk_mask({1, 2}))  # its next record, after the ban
    assert sorted(i for src, i in s.assign(1.0) if src == "origin") == [0, 1, 2]


def test_the_weights_cache_is_bounded_by_weights_not_names() -> None:
    """Peers' names come from peers: a neighbour listing names by the
    thousand, for a blob of many chunks, grew the cache by 8 bytes a chunk a
    name (a 64 GiB blob: 512 KiB a name, 1.2 GiB for 2,000 names)."""
    from tufmesh.client import _scheduler
    from tufmesh.client._scheduler import weights

    count = 1 << 20
    first = weights("http://h0.example", count)
    for i in range(1, 5):
        weights(f"http://h{i}.example", count)
    held = sum(len(w) for w in _scheduler._WEIGHTS.values())
    assert held == _scheduler._WEIGHTS_HELD <= _scheduler._MAX_WEIGHTS_HELD
    assert weights("http://h0.example", count) == first  # recomputed, the same
