"""The client against a real origin and hostile mirrors, all on 127.0.0.1."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.durability import durability_trace
from tests.helpers.mirror import Mirror, mirrors, resign_timestamp
from tests.helpers.origin import (
    TUFMESH,
    Server,
    add_project,
    init_repo,
    post,
    running,
    start_server,
    static_server,
    tufmesh,
)
from tufmesh.client import Client, ClientHome, FetchConfig, SchedulerConfig, SourceHealth
from tufmesh.client._client import part_path
from tufmesh.client._fetcher import METADATA_BASE, MultiSourceFetcher
from tufmesh.errors import (
    ClientError,
    MetadataRefusedError,
    NotInMetadataError,
    SourcesFailedError,
    TufmeshError,
)

BIG = "demo/demo-1.0.tar.gz"  # 6.5 chunks
SMALL = "demo/demo-0.1.tar.gz"  # one chunk, no manifest
FAST = {
    "fetch_config": FetchConfig(read_timeout=3.0, grace=1.0),
    "scheduler_config": SchedulerConfig(grace=1.0),
}


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    repo = init_repo(tmp_path_factory.mktemp("origin") / "repo")
    token = add_project(repo, "demo")
    server = start_server(repo)
    contents = {BIG: os.urandom(6 * (1 << 20) + 500_000), SMALL: os.urandom(100_000)}
    for target, body in contents.items():
        response = post(server.url, "demo", target.split("/")[1], body, token)
        assert response.status_code == 200, response.text
    server.contents = contents  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.stop()


def client_for(origin: Server, tmp_path: Path, *sources: str, name: str = "client") -> Client:
    metadata = tmp_path / name
    root = (origin.repo / "metadata" / "1.root.json").read_bytes()
    return Client(metadata, root, list(sources), **FAST)


def liar_first(origin: Server, tmp_path: Path, liar: str) -> Client:
    """A client that asks ``liar`` first: the origin, its other source, has an
    old failure."""
    root = (origin.repo / "metadata" / "1.root.json").read_bytes()
    return Client(tmp_path / "c", root, [liar, SourceHealth(origin.url, failures=1)], **FAST)


def download_within(client: Client, origin: Server, tmp_path: Path, seconds: float) -> Any:
    """Download the big artifact, check its bytes, and that it took under ``seconds``."""
    started = time.monotonic()
    result = client.download(BIG, tmp_path / "out")
    assert time.monotonic() - started < seconds
    assert result.path.read_bytes() == origin.contents[BIG]  # type: ignore[attr-defined]
    return result


def test_honest_multi_source_download(
    origin: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trace = durability_trace(monkeypatch)
    with mirrors(origin.repo, "honest", "honest") as (a, b):
        with client_for(origin, tmp_path, origin.url, a.url, b.url) as client:
            result = client.download(BIG, tmp_path / "out")
        assert result.path.read_bytes() == origin.contents[BIG]  # type: ignore[attr-defined]
        # The file is on disk before it has its name, and the name after:
        # a power cut never leaves the name on bytes that are not the artifact.
        part, dest = str(part_path(result.path)), str(result.path)
        named = trace.index(("replace", part, dest))
        assert ("fsync", part, "") in trace[:named], trace
        assert ("fsync", str(tmp_path / "out"), "") in trace[named:], trace
        served = {name: s.bytes for name, s in result.sources.items()}
        assert all(served.get(url, 0) > 0 for url in (origin.url, a.url, b.url)), served
        assert not (tmp_path / "out" / "demo-1.0.tar.gz.part").exists()


def test_a_source_on_ipv6_serves_chunks(origin: Server, tmp_path: Path) -> None:
    """Chunks were fetched over IPv4 sockets only (and the Host header named
    an IPv6 address without brackets): a source at [::1], or at a name with
    only IPv6 addresses, served metadata and never a chunk."""
    try:
        mirror = Mirror(origin.repo, host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        with client_for(origin, tmp_path, mirror.url) as client:
            result = client.download(BIG, tmp_path / "out")
        assert result.path.read_bytes() == origin.contents[BIG]  # type: ignore[attr-defined]
        assert result.sources[mirror.url].chunks == 7 == mirror.blob_requests - 1  # + manifest
    finally:
        mirror.close()


def test_one_chunk_artifact_and_listing(origin: Server, tmp_path: Path) -> None:
    with client_for(origin, tmp_path, origin.url) as client:
        result = client.download(SMALL, tmp_path)
        assert result.path.read_bytes() == origin.contents[SMALL]  # type: ignore[attr-defined]
        listed = {t.path: t.length for t in client.artifacts("demo")}
        assert listed == {BIG: len(origin.contents[BIG]), SMALL: 100_000}  # type: ignore[attr-defined]
        assert client.artifacts("other") == []
        with pytest.raises(NotInMetadataError, match="not in the signed metadata"):
            client.download("demo/missing-1.0.tar.gz", tmp_path)


CHUNK_ATTACKS = [
    "bitflip", "other", "truncate", "endless", "trickle", "404", "500", "badlength", "rangeflip",
    "shortlength",
]  # fmt: skip


@pytest.mark.attack
@pytest.mark.parametrize("behaviour", CHUNK_ATTACKS)
def test_a_lying_or_stalling_mirror_cannot_stop_or_corrupt_a_download(
    origin: Server, tmp_path: Path, behaviour: str
) -> None:
    out = tmp_path / "out"
    with mirrors(origin.repo, behaviour) as (liar,):  # type: ignore[arg-type]
        # With an honest source beside it: the download completes, verified.
        started = time.monotonic()
        with client_for(origin, tmp_path, liar.url, origin.url, name="c1") as client:
            result = client.download(BIG, out)
        # A little time wasted, not the liar's choice of how much (its trickle
        # and its endless body would each hold a reader for 30 s).
        assert time.monotonic() - started < 20
        assert result.path.read_bytes() == origin.contents[BIG]  # type: ignore[attr-defined]
        stats = result.sources[liar.url]
        assert stats.chunks == 0  # not one chunk of the liar's was accepted
        if behaviour in ("bitflip", "other", "endless", "rangeflip"):
            assert "bad chunk" in (stats.banned or "")  # banned at the first lie
        if behaviour == "shortlength":  # said as it is: not "connection closed after..."
            assert "announced 524288 bytes for a 1048576-byte range" in (stats.last_error or "")
        health = {h.url: h for h in client.fetcher.sources}[liar.url]
        if behaviour == "404":
            # A mirror of some projects only says it does not hold this one:
            # asked no more for it, and not ranked last for what it does hold.
            assert "not held there" in (stats.banned or "") and stats.failures == 0
            assert health.failures == 0
        else:
            assert health.failures >= 1  # remembered for the next run's source order
        result.path.unlink()
        # With no honest source: a clear failure, and nothing at the target path.
        with client_for(origin, tmp_path, liar.url, name="c2") as client:
            with pytest.raises(ClientError) as info:
                client.download(BIG, out)
            # A download that failed is remembered as the one that succeeded is.
            health = {h.url: h for h in client.fetcher.sources}[liar.url]
            assert (health.failures == 0) == (behaviour == "404"), health
        assert liar.url in str(info.value)
        assert not (out / "demo-1.0.tar.gz").exists()
    # And an honest update succeeds afterwards.
    with client_for(origin, tmp_path, origin.url, name="c3") as client:
        assert client.download(BIG, out).path.read_bytes() == origin.contents[BIG]  # type: ignore[attr-defined]


@pytest.mark.attack
@pytest.mark.parametrize(
    "behaviour", ["headtrickle", "continue", "slowroot", "trailers", "gzipnull"]
)
def test_a_response_head_that_never_ends_costs_seconds(
    origin: Server, tmp_path: Path, behaviour: str
) -> None:
    """Every answer's head sent a byte a second, or as endless "100 Continue"
    lines: no read ever times out; or the next root, which does not exist,
    as megabytes just above the slow-retrieval floor, or as a body whose
    reads never return (endless trailer lines, empty gzip members: these
    held every run for ever). The client asks every source for the next
    root (the origin's 404 is not enough), so even listed after the origin
    the liar is asked; it may cost the head deadline, the slow-retrieval
    grace, or the time of a root's 512 KB (python-tuf's bound, not ours of
    8 MiB), not the download."""
    config = FetchConfig(read_timeout=3.0, grace=1.0, head_timeout=2.0)
    root = (origin.repo / "metadata" / "1.root.json").read_bytes()
    with mirrors(origin.repo, behaviour) as (liar,):  # type: ignore[arg-type]
        started = time.monotonic()
        with Client(tmp_path / "c", root, [origin.url, liar.url], fetch_config=config) as client:
            result = client.download(BIG, tmp_path / "out")
        assert time.monotonic() - started < 20  # the liar holds its answers 30 s
    assert result.path.read_bytes() == origin.contents[BIG]  # type: ignore[attr-defined]


def test_a_body_watchdog_never_cuts_the_next_request_on_its_connection() -> None:
    """urllib3 gives a connection back to its pool in the read that reaches
    the body's end: the body's slow-retrieval watchdog, still running while
    its reader held the last piece, then cut the socket of the next request
    on that connection, and counted a whole body too slow."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tufmesh.client._fetcher import new_pool, pieces

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            time.sleep(1.0 if self.path == "/next" else 0)
            self.send_response(200)
            self.send_header("content-length", "100")
            self.end_headers()
            self.wfile.write(b"x" * 100)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    config = FetchConfig(grace=0.2, min_rate=1000.0)  # due 0.2 s after the start
    pool, outcomes, held = new_pool(config), {}, threading.Event()

    def first() -> None:
        started = time.monotonic()
        try:
            for _ in pieces(pool.request("GET", f"{url}/first", preload_content=False),
                            config, started):  # fmt: skip
                held.set()
                time.sleep(0.5)  # its reader busy with the last piece
            outcomes["first"] = "whole"
        except Exception as exc:
            outcomes["first"] = repr(exc)

    def then() -> None:
        held.wait(5)
        try:  # on the connection the first gave back
            outcomes["next"] = pool.request("GET", f"{url}/next").status
        except Exception as exc:
            outcomes["next"] = repr(exc)

    threads = [threading.Thread(target=first), threading.Thread(target=then)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    server.shutdown()
    server.server_close()
    assert outcomes == {"first": "whole", "next": 200}
    assert pool.connection_from_url(url).num_connections == 1  # it was the same one
    pool.clear()


@pytest.mark.attack
def test_a_source_slow_to_answer_costs_a_run_seconds_and_is_ranked_behind(
    origin: Server, tmp_path: Path
) -> None:
    """A source that sent each metadata file at once and held the connection
    9 s (no length: the end never came, within the read timeout) cost a fresh
    run 48 s, and still ranked first, its latency measured to the first
    byte: a small answer is now cut once it falls behind the floor (3 s),
    counted a failure and named, and the source ranks behind. One that took
    9 s to say "not found" of the next root went unsaid, and ranked first
    again after its fast answers: now such a 404 is a failure (5 s here:
    past the 3 s grace is enough). (It is still
    heard out at every run, within the head deadline: a source that hides a
    new root must not be believed over one that is slow to serve it.)"""
    root = (origin.repo / "metadata" / "1.root.json").read_bytes()
    with mirrors(origin.repo, "heldend", "slow404") as (held, slow):
        for liar in (held, slow):
            health = [SourceHealth(liar.url), SourceHealth(origin.url)]  # the liar first
            took = []
            for run in ("first", "next"):
                with Client(tmp_path / liar.behaviour / run, root, health) as client:
                    started = time.monotonic()
                    result = client.download(BIG, tmp_path / liar.behaviour / run / "out")
                    took.append(time.monotonic() - started)
                assert result.path.read_bytes() == origin.contents[BIG]  # type: ignore[attr-defined]
            assert health[0].score() > health[1].score(), health  # ranked behind
            said = "too slow" if liar is held else "HTTP 404 after 5"
            assert health[0].failures >= 1 and said in str(health[0].last_error), health
            assert took[0] < 20 and took[1] < (6 if liar is held else 10), (liar.behaviour, took)


@pytest.mark.attack
@pytest.mark.parametrize("behaviour", ["seeded", "busy"])
def test_a_source_that_only_refuses_neither_holds_a_download_nor_hangs_one(
    origin: Server, tmp_path: Path, behaviour: str
) -> None:
    """A source that refuses every chunk ("seeded", which only mirrors are
    told, or "busy" for ever, the manifest too): with the origin beside it
    the download completes from the origin; alone, it fails (once no byte
    has come for ``max_stall``, or at the manifest), saying why, and leaves
    nothing under the name."""
    patient = {**FAST, "scheduler_config": SchedulerConfig(grace=1.0, max_stall=3.0)}
    root = (origin.repo / "metadata" / "1.root.json").read_bytes()
    out = tmp_path / "out"
    with mirrors(origin.repo, behaviour) as (liar,):  # type: ignore[arg-type]
        with Client(tmp_path / "c1", root, [liar.url, origin.url], **patient) as client:
            result = client.download(BIG, out)
        assert result.path.read_bytes() == origin.contents[BIG]  # type: ignore[attr-defined]
        assert result.sources[liar.url].chunks == 0
        assert liar.blob_requests < 50  # rested after each refusal, not asked in a loop
        result.path.unlink()
        started = time.monotonic()
        with Client(tmp_path / "c2", root, [liar.url], **patient) as client:
            said = "no source sent a byte for 3 s" if behaviour == "seeded" else "HTTP 503"
            with pytest.raises(SourcesFailedError, match=said):
                client.download(BIG, out)
        assert time.monotonic() - started < 30
        assert not (out / "demo-1.0.tar.gz").exists()


@pytest.mark.attack
def test_a_write_error_that_only_the_sync_reports_is_one_line(
    origin: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsync reports late write errors (a full disk, a quota, NFS): a
    ClientError saying where, not a traceback; the name is not taken."""
    import errno

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    with client_for(origin, tmp_path, origin.url) as client:
        with pytest.raises(
            ClientError, match=r"cannot write .*demo-1\.0\.tar\.gz: Input/output error"
        ):
            client.download(BIG, tmp_path / "out")
    assert not (tmp_path / "out" / "demo-1.0.tar.gz").exists()


def test_a_mirror_that_trickles_the_manifest_costs_seconds_and_its_rank(
    origin: Server, tmp_path: Path
) -> None:
    """Metadata and chunks served well, the manifest a byte a second: the
    manifest (whose length nothing signs) gets the slow-retrieval defence too,
    and the failure is remembered (its good chunks do not make up for it), so
    the next run asks that mirror after the origin."""
    with mirrors(origin.repo, "manifesttrickle") as (liar,):
        with liar_first(origin, tmp_path, liar.url) as client:
            result = download_within(client, origin, tmp_path, 20)
            health = {h.url: h for h in client.fetcher.sources}
            assert result.sources[liar.url].chunks > 0  # its chunks were good
            assert health[liar.url].failures == 1, health[liar.url]
            assert "manifest" in (health[liar.url].last_error or "")
            assert health[origin.url].failures == 0  # a clean run forgave its old one
            assert client.fetcher.ordered()[0].url == origin.url


def test_a_mirror_that_pads_the_manifest_is_cut_at_its_signed_length(
    origin: Server, tmp_path: Path
) -> None:
    """The manifest, then 8 MiB more at twice the slow-retrieval floor: read
    to the 8 MiB cap, it cost a minute per such source. Its length follows
    from the artifact's signed length and chunk size: one byte past it, the
    source is blamed, and the origin serves it."""
    with mirrors(origin.repo, "manifestpadded") as (liar,):
        with liar_first(origin, tmp_path, liar.url) as client:
            download_within(client, origin, tmp_path, 20)
            health = {h.url: h for h in client.fetcher.sources}
            assert "manifest does not match its signed CID" in (health[liar.url].last_error or "")


@pytest.mark.attack
@pytest.mark.parametrize(
    ("attack", "message"),
    [
        ("rollback", "rollback detected"),
        ("freeze", "freeze attack"),
        ("oversized", "metadata too long"),
    ],
)
def test_stale_metadata_from_a_mirror_is_refused(
    origin: Server, tmp_path: Path, attack: str, message: str
) -> None:
    old = (origin.repo / "metadata" / "timestamp.json").read_bytes()
    token = add_project(origin.repo, f"{attack}-proj")
    assert post(origin.url, f"{attack}-proj", "x-1.tar.gz", b"x", token).status_code == 200
    with client_for(origin, tmp_path, origin.url, name="seen") as client:
        client.target(BIG)  # this client has seen the newest timestamp
    with mirrors(origin.repo, "honest") as (liar,):
        liar.metadata_overrides["timestamp.json"] = {
            "rollback": old,
            "freeze": resign_timestamp(origin.repo, version_delta=1, expires_in_days=-1),
            "oversized": old + b" " * 20_000,  # over python-tuf's limit for a timestamp
        }[attack]
        with client_for(origin, tmp_path, liar.url, origin.url, name="seen") as client:
            assert client.download(BIG, tmp_path / "ok").path.read_bytes() == origin.contents[BIG]  # type: ignore[attr-defined]
            # The newest timestamp of all wins: the older one (or the cut
            # one) is outvoted, the expired newer one refused and blamed.
            assert (liar.url in client.fetcher.excluded) == (attack == "freeze")
        with client_for(origin, tmp_path, liar.url, name="seen") as client:
            with pytest.raises(MetadataRefusedError, match=message):
                client.download(BIG, tmp_path / "no")
        # A damaged cached root costs no protection: the client starts from
        # its trust anchor and keeps the newest timestamp it has seen.
        for damaged in ("root.json", "root_history/1.root.json"):
            (tmp_path / "seen" / damaged).unlink()
            (tmp_path / "seen" / damaged).write_text("garbage")
            with client_for(origin, tmp_path, liar.url, name="seen") as client:
                with pytest.raises(MetadataRefusedError, match=message):
                    client.download(BIG, tmp_path / "no")
        assert not (tmp_path / "no" / "demo-1.0.tar.gz").exists()


@pytest.mark.attack
def test_a_mirror_replaying_the_previous_timestamp_hides_no_release(tmp_path: Path) -> None:
    """The previous timestamp, validly signed and not expired, served by the
    healthiest source: the client still sees the release published since
    (it asks every source for the timestamp, and takes the newest)."""
    repo = init_repo(tmp_path / "repo")
    token = add_project(repo, "demo")
    root = (repo / "metadata" / "1.root.json").read_bytes()
    with running(repo) as server, mirrors(repo, "honest") as (replayer,):
        assert post(server.url, "demo", "demo-1.0.tar.gz", b"one", token).status_code == 200
        replayer.metadata_overrides["timestamp.json"] = (
            repo / "metadata" / "timestamp.json"
        ).read_bytes()
        assert post(server.url, "demo", "demo-2.0.tar.gz", b"two", token).status_code == 200
        with Client(tmp_path / "c", root, [replayer.url, server.url], **FAST) as client:
            assert client.fetcher.ordered()[0].url == replayer.url  # asked first
            result = client.download("demo/demo-2.0.tar.gz", tmp_path / "out")
        assert result.path.read_bytes() == b"two"


@pytest.mark.attack
def test_a_mirror_that_pads_the_targets_roles_is_refused_at_their_signed_length(
    origin: Server, tmp_path: Path
) -> None:
    """The snapshot signs each targets role's length: a role with a megabyte
    of blanks after it (its signature still valid: it covers the signed part)
    was read to python-tuf's 5 MB bound and accepted. Now it is cut one
    byte past its length, refused, and its source blamed; the origin's copy
    is used."""
    import json

    snapshot = json.loads((origin.repo / "metadata" / "timestamp.json").read_bytes())
    version = snapshot["signed"]["meta"]["snapshot.json"]["version"]
    meta = json.loads((origin.repo / "metadata" / f"{version}.snapshot.json").read_bytes())
    roles = meta["signed"]["meta"]
    assert roles and all(isinstance(entry.get("length"), int) for entry in roles.values())
    with mirrors(origin.repo, "honest") as (liar,):
        for name, entry in roles.items():
            real = (origin.repo / "metadata" / f"{entry['version']}.{name}").read_bytes()
            assert len(real) == entry["length"]
            liar.metadata_overrides[f"{entry['version']}.{name}"] = real + b" " * (1 << 20)
        with liar_first(origin, tmp_path, liar.url) as client:
            download_within(client, origin, tmp_path, 20)
            health = {h.url: h for h in client.fetcher.sources}
            assert health[liar.url].failures >= 1, health[liar.url]


@pytest.mark.attack
def test_a_timestamp_nested_past_the_recursion_limit_stops_no_refresh(
    origin: Server, tmp_path: Path
) -> None:
    """A mirror answering ``[[[[...`` for the timestamp: reading its version
    raised RecursionError, which ended every refresh ("cannot fetch metadata
    from any source") with nobody blamed, for every client listing it."""
    with mirrors(origin.repo, "honest") as (liar,):
        liar.metadata_overrides["timestamp.json"] = b"[" * 3000
        with client_for(origin, tmp_path, liar.url, origin.url) as client:
            assert client.download(BIG, tmp_path / "out").path.read_bytes() == origin.contents[BIG]  # type: ignore[attr-defined]


def test_two_downloads_into_one_place_do_not_trip_over_each_other(
    origin: Server, tmp_path: Path
) -> None:
    """Two `tufmesh get` of one artifact into one directory at once: both end
    with the verified file (they write the same verified bytes into one part
    file, and whichever renames it second finds the file there), never with
    "No such file or directory"."""
    import threading

    outcomes: list[object] = []
    with mirrors(origin.repo, "slow") as (slow,):  # a second per chunk: they overlap

        def get(name: str) -> None:
            root = (origin.repo / "metadata" / "1.root.json").read_bytes()
            try:
                with Client(tmp_path / name, root, [slow.url]) as client:  # default patience
                    outcomes.append(client.download(BIG, tmp_path / "out").path.read_bytes())
            except ClientError as exc:
                outcomes.append(str(exc))

        threads = [threading.Thread(target=get, args=(f"c{i}",)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    big = origin.contents[BIG]  # type: ignore[attr-defined]
    assert outcomes == [big, big], outcomes
    assert (tmp_path / "out" / "demo-1.0.tar.gz").read_bytes() == big


def test_a_download_whose_part_file_another_finished_first_ends_with_its_file(
    origin: Server, tmp_path: Path
) -> None:
    """Another get of the same file into the same place, started later on a
    faster source, renames the part file first: the first ended in "No such
    file or directory" (its whole-file check opened the part file by name at
    its first chunk) though the file was there and verified."""
    big = origin.contents[BIG]  # type: ignore[attr-defined]
    root = (origin.repo / "metadata" / "1.root.json").read_bytes()
    outcome: list[object] = []
    with mirrors(origin.repo, "honest") as (held,):
        held.hold_chunks = threading.Event()

        def first() -> None:
            try:
                with Client(tmp_path / "c1", root, [held.url]) as client:
                    outcome.append(client.download(BIG, tmp_path / "out").path.read_bytes())
            except Exception as exc:
                outcome.append(exc)

        thread = threading.Thread(target=first)
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while len(held.blob_asked) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(held.blob_asked) >= 2  # its manifest read: its chunks held
            with Client(tmp_path / "c2", root, [origin.url]) as client:
                assert client.download(BIG, tmp_path / "out").path.read_bytes() == big
        finally:
            held.hold_chunks.set()
            thread.join(timeout=60)
    assert outcome == [big], outcome


def test_a_slow_source_costs_a_refresh_seconds_not_its_timeouts(
    origin: Server, tmp_path: Path
) -> None:
    """The timestamp is asked of every source at once: once one has answered,
    the others get two seconds (a source 8 s slow was waited for, at every
    refresh, one source after another)."""
    root = (origin.repo / "metadata" / "1.root.json").read_bytes()
    with mirrors(origin.repo, "slowtimestamp") as (slow,):
        with Client(tmp_path / "c", root, [slow.url, origin.url]) as client:
            started = time.monotonic()
            client.refresh()
            assert time.monotonic() - started < 6
            assert client.fetcher.served_by["timestamp.json"] == origin.url


@contextlib.contextmanager
def black_hole() -> Iterator[str]:
    """A source that accepts connections and never says a word: its URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop, held = threading.Event(), []

    def hold() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for conn in [*held, listener]:
            conn.close()


def test_a_silent_source_costs_a_refresh_its_deadline_once_and_is_named(
    origin: Server, tmp_path: Path
) -> None:
    """A source that accepts and never answers cost every refresh the grace
    for the timestamp and then, for the next root, which the other source
    had said does not exist, its whole head deadline, with each such source
    asked one after another; and nothing said which source it was. The rest
    are asked at once now (each still heard within its own deadline: see the
    next test), and ls and get name a source that failed."""
    from tufmesh.client._fetcher import NEWEST_GRACE

    root = (origin.repo / "metadata" / "1.root.json").read_bytes()
    config = FetchConfig(head_timeout=3.0)
    with black_hole() as silent, black_hole() as mute:
        health = [SourceHealth(origin.url), SourceHealth(silent), SourceHealth(mute)]
        with Client(tmp_path / "c", root, health, fetch_config=config) as client:
            started = time.monotonic()
            client.refresh()
            took = time.monotonic() - started
            assert client.fetcher.served_by["timestamp.json"] == origin.url
        assert health[1].last_error == health[2].last_error == "no answer within 3 s"
    assert took < NEWEST_GRACE + 3.0 + 2.5, took  # the two deadlines at once, not in a row
    home = tmp_path / "home"
    refused = "http://127.0.0.1:1"  # nobody there
    tufmesh("client", "init", str(origin.repo / "metadata" / "1.root.json"),
            "--origin", origin.url, "--mirror", refused, "--home", str(home))  # fmt: skip
    listed = tufmesh("ls", "demo", "--home", str(home))
    assert f"warning: {refused} failed: cannot connect (connection refused)" in listed.stderr


@pytest.mark.attack
def test_sources_that_never_answer_cost_a_manifest_a_second_each(
    origin: Server, tmp_path: Path
) -> None:
    """The chunk manifest was asked of one source after another, each given
    its whole read timeout: three silent mirrors listed first cost 30 s
    before the first chunk (a review: 36.9 s for 3 MiB). Now the next source
    is asked once the last has had a second, and the first good answer wins."""
    from tufmesh.client._client import HEDGE

    root = (origin.repo / "metadata" / "1.root.json").read_bytes()
    with mirrors(origin.repo, "stallblobs", "stallblobs", "stallblobs") as silent:
        health = [SourceHealth(m.url) for m in silent] + [SourceHealth(origin.url, failures=1)]
        with Client(tmp_path / "c", root, health) as client:  # (a 10 s read timeout)
            started = time.monotonic()
            manifest = client.manifest(client.target(BIG))
        asked = [m.blob_asked[0] - started for m in silent]
    assert manifest is not None and manifest.length == len(origin.contents[BIG])  # type: ignore[attr-defined]
    assert max(asked) < 3 * HEDGE + 2.0, asked  # a second apart, not 10 s
    # Each is still counted once its own read timeout passes (they stayed first).
    deadline = time.monotonic() + 30
    while any(h.failures == 0 for h in health[:3]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(h.last_error == "chunk manifest: no answer within 10 s" for h in health[:3])
    # Alone, a silent source fails in words, not urllib3's ("DeadlineHTTPConnection
    # Pool(host=...): Read timed out. (read timeout=3.0)"), and so a truncating one.
    for behaviour, said in [("stallblobs", "no answer within 3 s"),
                            ("truncate", "the connection was closed after ")]:  # fmt: skip
        with mirrors(origin.repo, behaviour) as (alone,):
            with Client(tmp_path / behaviour, root, [alone.url], **FAST) as client:
                with pytest.raises(SourcesFailedError) as failed:
                    client.manifest(client.target(BIG))
        assert f"for the chunk manifest: {alone.url}: {said}" in str(failed.value), failed.value


@pytest.mark.attack
def test_a_source_that_says_not_found_does_not_hide_what_a_slower_one_has(
    tmp_path: Path,
) -> None:
    """python-tuf asks for root N+1 at every refresh and takes "not found"
    for "no newer root". A fast mirror that hides a new root (a 404) must not
    be believed over a slower source that serves it, however slow (within
    its deadlines) or however often it has failed before; and once one has
    served it, a silent one is not waited for."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    newer = b'{"signed": {"_type": "root", "version": 2}, "signatures": []}'

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hides = self.server.server_address[1] == hiding.server_address[1]
            if hides or self.path != "/metadata/2.root.json":
                self.send_response(404)
                self.end_headers()
                return
            time.sleep(2.5)  # past the 2 s the newest timestamp waits, within the deadlines
            self.send_response(200)
            self.send_header("content-length", str(len(newer)))
            self.end_headers()
            self.wfile.write(newer)

        def log_message(self, *args: object) -> None:
            pass

    hiding = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    slow = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    for server in (hiding, slow):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with black_hole() as silent:
            for failures in (0, 5):
                fast = SourceHealth(f"http://127.0.0.1:{hiding.server_address[1]}", latency=0.001)
                behind = SourceHealth(f"http://127.0.0.1:{slow.server_address[1]}",
                                      failures=failures)  # fmt: skip
                fetcher = MultiSourceFetcher([fast, behind, SourceHealth(silent)])
                started = time.monotonic()
                try:
                    assert fetcher.ordered()[0] is fast  # asked first, and says 404
                    got = b"".join(fetcher._fetch(f"{METADATA_BASE}2.root.json"))
                finally:
                    fetcher.close()
                assert got == newer, failures
                assert time.monotonic() - started < 2.5 + 3  # not the silent one's 10 s
    finally:
        for server in (hiding, slow):
            server.shutdown()
            server.server_close()


@pytest.mark.attack
def test_a_timestamp_past_the_grace_is_still_read_only_to_its_bound(
    origin: Server, tmp_path: Path
) -> None:
    """A source that answers the timestamp after the grace is no longer waited
    for, but its request goes on in the background: it must keep python-tuf's
    16 KB bound for a timestamp, not fall back to the 48 MiB this client
    allows any metadata file once the refresh has moved on."""
    root = (origin.repo / "metadata" / "1.root.json").read_bytes()
    config = FetchConfig(read_timeout=5.0, max_metadata_bytes=48 << 20)
    with mirrors(origin.repo, "latetimestamp") as (late,):
        with Client(tmp_path / "c", root, [late.url, origin.url], fetch_config=config) as client:
            client.refresh()
            assert client.fetcher.served_by["timestamp.json"] == origin.url
            assert late.late_done.wait(20), "the late timestamp is still being read"
    # What the client read, plus what the kernel's buffers took for it before
    # it hung up (a few MiB on loopback): far below the 48 MiB it would read.
    assert late.late_bytes < 24 << 20, late.late_bytes


def test_an_unforeseen_error_with_one_source_is_that_sources_failure(origin: Server) -> None:
    """The timestamp is asked of every source at once, each in its own
    thread: an exception nobody foresaw, in one source's request, counts
    against that source; the others' answers still win."""

    class OneBroken(MultiSourceFetcher):
        def _get(self, source: SourceHealth, url: str, bound: int | None) -> bytes:
            if source.url == broken.url:
                raise RuntimeError("a bug")
            return super()._get(source, url, bound)

    broken = SourceHealth("http://127.0.0.1:9")
    fetcher = OneBroken([broken, SourceHealth(origin.url)])
    try:
        data = b"".join(fetcher._fetch(f"{METADATA_BASE}timestamp.json"))
    finally:
        fetcher.close()
    assert data == (origin.repo / "metadata" / "timestamp.json").read_bytes()
    assert fetcher.served_by["timestamp.json"] == origin.url
    assert (broken.failures, broken.last_error) == (1, "a bug")


def test_a_mix_of_versions_is_named_as_such(origin: Server, tmp_path: Path) -> None:
    """A source serving an older snapshot under the newer one's name was said
    in python-tuf's words alone: "Observed hash ... does not match expected
    hash ...", naming no file and no reason."""
    import json

    metadata = origin.repo / "metadata"
    older = json.loads((metadata / "timestamp.json").read_bytes())["signed"]["meta"]
    old_version = older["snapshot.json"]["version"]
    token = add_project(origin.repo, "mixed")
    assert post(origin.url, "mixed", "mixed-1.tar.gz", b"x", token).status_code == 200
    newer = json.loads((metadata / "timestamp.json").read_bytes())["signed"]["meta"]
    new_version = newer["snapshot.json"]["version"]
    with mirrors(origin.repo, "honest") as (mixer,):
        mixer.metadata_overrides[f"{new_version}.snapshot.json"] = (
            metadata / f"{old_version}.snapshot.json"
        ).read_bytes()
        with client_for(origin, tmp_path, mixer.url) as client:
            with pytest.raises(ClientError) as info:
                client.refresh()
    assert "served metadata that is not the version signed for it" in str(info.value)
    assert "mix-and-match" in str(info.value), info.value


def test_every_source_down_names_each_reason(origin: Server, tmp_path: Path) -> None:
    with client_for(origin, tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:1") as client:
        with pytest.raises(SourcesFailedError) as info:
            client.download(BIG, tmp_path)
    assert "127.0.0.1:9" in str(info.value) and "127.0.0.1:1" in str(info.value)


def test_a_get_that_verified_nothing_says_one_line_and_keeps_no_part(
    origin: Server, tmp_path: Path
) -> None:
    """A get whose only source lied about every chunk said three lines: "the
    chunks verified so far are kept in X.part (0 B on disk)", the source's
    failure, and the error naming that failure again. And a file of the
    user's in the way, which the error says to move, is left where it is."""
    home, out = tmp_path / "home", tmp_path / "out"
    with mirrors(origin.repo, "rangeflip") as (liar,):
        tufmesh("client", "init", str(origin.repo / "metadata" / "1.root.json"),
                "--origin", liar.url, "--home", str(home))  # fmt: skip
        failed = tufmesh("get", BIG, "-o", str(out), "--home", str(home), check=False)
        assert failed.returncode == 1, failed.stderr
        assert failed.stderr.count("\n") == 1 and failed.stderr.startswith("Error: ")
        assert liar.url in failed.stderr
        part = out / "demo-1.0.tar.gz.part"
        assert not part.exists()  # made at the first verified chunk: none was
        part.write_text("my notes")  # the user's, in the way
        failed = tufmesh("get", BIG, "-o", str(out), "--home", str(home), check=False)
    assert failed.returncode == 1 and "is in the way" in failed.stderr, failed.stderr
    assert part.read_text() == "my notes"


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_cli_get_resumes_after_kill_and_caches(
    origin: Server, tmp_path: Path, stop: signal.Signals
) -> None:
    home = tmp_path / "home"
    out = tmp_path / "out"
    with mirrors(origin.repo, "slow", "honest") as (slow, honest):
        tufmesh("client", "init", str(origin.repo / "metadata" / "1.root.json"),
                "--origin", slow.url, "--home", str(home))  # fmt: skip
        proc = subprocess.Popen(
            [TUFMESH, "get", BIG, "-o", str(out), "--home", str(home), "--quiet"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        part = out / "demo-1.0.tar.gz.part"
        deadline = time.monotonic() + 20
        # Each blob request takes the slow mirror 1 s: the manifest, then 7
        # chunks two at a time. Kill once the first chunks are in place.
        while slow.blob_requests < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        proc.send_signal(stop)
        _, err = proc.communicate(timeout=60)
        assert part.exists() and not (out / "demo-1.0.tar.gz").exists()
        if stop == signal.SIGINT:  # Ctrl-C: it says what it kept, and how to go on
            assert proc.returncode == 130
            assert f"interrupted: the chunks verified so far are kept in {part} (" in err, err
        ClientHome(home).save_sources([honest.url])
        done = tufmesh("get", BIG, "-o", str(out), "--home", str(home), "--json")
        import json

        answer = json.loads(done.stdout)
        assert (out / "demo-1.0.tar.gz").read_bytes() == origin.contents[BIG]  # type: ignore[attr-defined]
        assert 0 < honest.blob_requests < 7 + 1  # manifest + only the missing chunks
        assert sum(answer["bytes_by_source"].values()) < len(origin.contents[BIG])  # type: ignore[attr-defined]
        assert 0 < sum(answer["chunks_by_source"].values()) < 7  # only the missing ones
        before = honest.blob_requests
        again = json.loads(
            tufmesh("get", BIG, "-o", str(out), "--home", str(home), "--json").stdout
        )
        assert again["cached"] is True and honest.blob_requests == before
        listing = tufmesh("ls", "demo", "--home", str(home)).stdout
        assert f"{BIG}\t{len(origin.contents[BIG])}\t" in listing  # type: ignore[attr-defined]
        sources = tufmesh("client", "sources", "--home", str(home)).stdout
        assert honest.url in sources and "failures 0" in sources
        missing = tufmesh("get", "demo/nope-1.tar.gz", "--home", str(home), check=False)
        assert missing.returncode == 1
        assert missing.stderr.strip() == "Error: demo/nope-1.tar.gz is not in the signed metadata"


def test_get_into_a_path_in_the_way_is_one_clear_line(origin: Server, tmp_path: Path) -> None:
    home = tmp_path / "home"
    tufmesh("client", "init", str(origin.repo / "metadata" / "1.root.json"),
            "--origin", origin.url, "--home", str(home))  # fmt: skip
    (tmp_path / "out" / "demo-0.1.tar.gz").mkdir(parents=True)  # a directory where the file goes
    (tmp_path / "a-file").write_bytes(b"")
    for output, said in [
        (tmp_path / "out", "is in the way: not a regular file"),
        (tmp_path / "a-file", "is a file"),
        (tmp_path / "a-file" / "below", "cannot write into"),
    ]:
        proc = tufmesh("get", SMALL, "-o", str(output), "--home", str(home), check=False)
        assert proc.returncode in (1, 2) and said in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "out").glob("*.part"))
    missing = tufmesh("get", "demo/nope-1.0.tar.gz", "-o", str(tmp_path / "new"),
                      "--home", str(home), check=False)  # fmt: skip
    assert missing.returncode == 1 and not (tmp_path / "new").exists()
    # Two artifacts of one file name (other projects): the second replaced the
    # first, and both were said saved. Refused before anything is fetched.
    twins = tufmesh("get", SMALL, "other/" + SMALL.split("/")[1], "-o", str(tmp_path / "new"),
                    "--home", str(home), check=False)  # fmt: skip
    assert twins.returncode == 1 and "would both be saved as" in twins.stderr, twins.stderr
    cased = tufmesh("get", "a/Foo-1.whl", "b/foo-1.whl", "-o", str(tmp_path / "new"),
                    "--home", str(home), check=False)  # fmt: skip
    assert cased.returncode == 1 and "would both be saved as" in cased.stderr  # macOS: one file
    assert not (tmp_path / "new").exists()


def test_get_keeps_a_file_of_the_users_and_names_a_banned_mirror(
    origin: Server, tmp_path: Path
) -> None:
    """A file of the user's at the artifact's name, with other bytes, was
    replaced without a word; a mirror that sent a bad chunk was banned
    without one (only --json said so)."""
    home = tmp_path / "home"
    out = tmp_path / "out"
    out.mkdir()
    name = BIG.rsplit("/", 1)[-1]
    (out / name).write_bytes(b"my own build\n")
    with mirrors(origin.repo, "bitflip") as (liar,):
        tufmesh("client", "init", str(origin.repo / "metadata" / "1.root.json"), "--origin",
                origin.url, "--mirror", liar.url, "--home", str(home))  # fmt: skip
        ClientHome(home).save_health([SourceHealth(liar.url), SourceHealth(origin.url, failures=1)])
        kept = tufmesh("get", BIG, "-o", str(out), "--home", str(home), check=False)
        assert kept.returncode == 1, kept.stderr
        assert f"{out / name} exists and is not {BIG} as signed" in kept.stderr
        assert (out / name).read_bytes() == b"my own build\n" and liar.blob_requests == 0
        got = tufmesh("get", BIG, "-o", str(out), "--home", str(home), "--replace")
    assert (out / name).read_bytes() == origin.contents[BIG]  # type: ignore[attr-defined]
    assert f"warning: {liar.url} was banned: " in got.stderr, got.stderr
    assert "bad chunk" in got.stderr and f"warning: {liar.url} failed" not in got.stderr  # once


def test_a_mirror_of_some_projects_is_no_fault_and_an_old_error_clears(
    origin: Server, tmp_path: Path
) -> None:
    """A mirror that does not hold an artifact (a mirror of some projects)
    was reported as "banned: HTTP 404" and kept that as its last error, as
    was any error of a source that has served cleanly since."""
    home = tmp_path / "home"
    with mirrors(origin.repo, "404", "honest") as (partial, good):
        tufmesh("client", "init", str(origin.repo / "metadata" / "1.root.json"), "--origin",
                origin.url, "--mirror", partial.url, "--mirror", good.url,
                "--home", str(home))  # fmt: skip
        ClientHome(home).save_health(
            [SourceHealth(partial.url), SourceHealth(origin.url, failures=1),
             SourceHealth(good.url, failures=2, last_error="cannot connect: refused")]
        )  # fmt: skip
        got = tufmesh("get", BIG, "-o", str(tmp_path / "out"), "--home", str(home))
        assert partial.blob_requests > 0 and good.blob_requests > 0
        assert "warning" not in got.stderr, got.stderr
        health = {h.url: h for h in ClientHome(home).health()}
        assert health[partial.url].last_error is None and health[partial.url].failures == 0
        # A clean run forgives one failure; the reason goes with the last one.
        assert health[good.url].failures == 1
        assert health[good.url].last_error == "cannot connect: refused"
        (tmp_path / "out" / BIG.rsplit("/", 1)[1]).unlink()
        tufmesh("get", BIG, "-o", str(tmp_path / "out"), "--home", str(home))
    health = {h.url: h for h in ClientHome(home).health()}
    assert health[good.url].failures == 0 and health[good.url].last_error is None


def test_a_home_whose_health_cannot_be_written_still_lists_and_downloads(
    origin: Server, tmp_path: Path
) -> None:
    """Health is a hint: a home where it cannot be written (here a directory
    at its name, as unwritable to root as to anyone) made `get` exit 1 after
    its download, `ls` print nothing, and the pip proxy answer 500s."""
    home = tmp_path / "home"
    tufmesh("client", "init", str(origin.repo / "metadata" / "1.root.json"),
            "--origin", origin.url, "--home", str(home))  # fmt: skip
    (home / "health.json").unlink()
    (home / "health.json").mkdir()
    listed = tufmesh("ls", "--home", str(home))
    assert SMALL in listed.stdout and listed.stderr == ""
    got = tufmesh("get", SMALL, "-o", str(tmp_path / "out"), "--home", str(home))
    assert "Error" not in got.stderr  # (and exit 0: tufmesh() checks)
    assert (tmp_path / "out" / SMALL.rsplit("/", 1)[1]).read_bytes() == origin.contents[SMALL]  # type: ignore[attr-defined]


def test_a_hand_edited_health_or_config_neither_breaks_nor_steers_the_client(
    origin: Server, tmp_path: Path
) -> None:
    """health.json was read field by field into the client: a count that is
    text ended every later get in a traceback (after its download), a
    latency that is text every 'client sources', and a metadata_url there
    sent every metadata request elsewhere, for good. And a source named
    twice in config.toml was asked as two."""
    home = tmp_path / "home"
    tufmesh("client", "init", str(origin.repo / "metadata" / "1.root.json"),
            "--origin", origin.url, "--home", str(home))  # fmt: skip
    with socket.socket() as silent:  # a server that never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        elsewhere = f"http://127.0.0.1:{silent.getsockname()[1]}/m"
        (home / "health.json").write_text(json.dumps([
            {"url": origin.url, "latency": "x", "throughput": float("inf"), "failures": "z",
             "last_error": 5, "metadata_url": elsewhere, "fallback": True},
        ]))  # fmt: skip
        (home / "config.toml").write_text(
            f'sources = ["{origin.url}", "{origin.url}/", "{origin.url}"]\n'
        )
        listed = tufmesh("client", "sources", "--home", str(home))
        assert listed.stdout.count(origin.url) == 1, listed.stdout
        for run in range(2):  # (and the file it then writes reads back)
            got = tufmesh("get", SMALL, "-o", str(tmp_path / f"out{run}"), "--home", str(home))
            assert f"verified; from {origin.url} 100%" in got.stdout, (got.stdout, got.stderr)
    saved = json.loads((home / "health.json").read_text())
    assert [set(entry) for entry in saved] == [
        {"url", "latency", "throughput", "failures", "last_error"}
    ], saved
    # Not a list at all, or nested past the recursion limit; and the metadata
    # cache deleted (to reset it): made again.
    for run, damaged in enumerate(["null", "[" * 100_000]):
        (home / "health.json").write_text(damaged)
        shutil.rmtree(home / "metadata")
        got = tufmesh("get", SMALL, "-o", str(tmp_path / f"again{run}"), "--home", str(home))
        assert f"verified; from {origin.url} 100%" in got.stdout, (got.stdout, got.stderr)


def test_a_home_that_cannot_be_written_is_said_so(origin: Server, tmp_path: Path) -> None:
    """python-tuf writes its metadata cache at every run: a read-only home
    failed with "Read-only file system: .../metadata/tmpsic1a4t9"."""
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("needs unshare -m as root (a read-only bind mount)")
    home = tmp_path / "home"
    tufmesh("client", "init", str(origin.repo / "metadata" / "1.root.json"),
            "--origin", origin.url, "--home", str(home))  # fmt: skip
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
    listed = subprocess.run(
        [unshare, "-m", "sh", "-c", script, "sh", str(home), TUFMESH, "ls", "--home", str(home)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if "mount:" in listed.stderr:
        pytest.skip(f"no read-only bind mount here: {listed.stderr.strip()}")
    assert listed.returncode == 1, listed
    assert f"this client's home {home} cannot be written" in listed.stderr, listed.stderr


def test_get_never_writes_through_a_link_at_the_part_file(origin: Server, tmp_path: Path) -> None:
    # In a shared directory another user may plant NAME.part: a link to a
    # file of ours must not be overwritten, a dangling one must not be created.
    home = tmp_path / "home"
    tufmesh("client", "init", str(origin.repo / "metadata" / "1.root.json"),
            "--origin", origin.url, "--home", str(home))  # fmt: skip
    out = tmp_path / "shared"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    name = SMALL.rsplit("/", 1)[-1]
    part = out / f"{name}.part"
    for plant in ("link", "dangling link", "hard link", "directory", "file of mine"):
        if plant == "file of mine":  # not a download of it (another length): not overwritten
            part.write_bytes(b"precious\n")
        elif plant == "link":
            part.symlink_to(victim)
        elif plant == "dangling link":
            part.symlink_to(tmp_path / "nowhere")
        elif plant == "hard link":  # a regular file, but the victim's too
            os.link(victim, part)
        else:
            part.mkdir()
        proc = tufmesh("get", SMALL, "-o", str(out), "--home", str(home), check=False)
        assert proc.returncode == 1 and "is in the way" in proc.stderr, (plant, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert victim.read_bytes() == b"precious\n" and not (tmp_path / "nowhere").exists()
        assert plant != "file of mine" or part.read_bytes() == b"precious\n"
        assert not (out / name).exists()
        if plant != "file of mine":
            part.rmdir() if plant == "directory" else part.unlink()
    assert "not a download of" in proc.stderr
    part.unlink()
    # A link at the artifact's own name to a file with the right bytes is no
    # cached copy (its owner could change it): the link is replaced by a copy
    # of the download, not written through.
    lookalike = tmp_path / "lookalike"
    lookalike.write_bytes(origin.contents[SMALL])  # type: ignore[attr-defined]
    (out / name).symlink_to(lookalike)
    got = tufmesh("get", SMALL, "-o", str(out), "--home", str(home), "--json").stdout
    assert '"cached": false' in got
    assert not (out / name).is_symlink()
    assert (out / name).read_bytes() == origin.contents[SMALL]  # type: ignore[attr-defined]
    # Other bytes behind a link, or in a file with other names too, are not
    # replaced unasked (the file stays as it was), and with --replace only
    # the name is.
    (out / name).unlink()
    os.link(victim, out / name)  # the user's own file, by two names
    kept = tufmesh("get", SMALL, "-o", str(out), "--home", str(home), check=False)
    assert kept.returncode == 1 and "is no file of this user's alone" in kept.stderr
    (out / name).unlink()
    (out / name).symlink_to(victim)
    kept = tufmesh("get", SMALL, "-o", str(out), "--home", str(home), check=False)
    assert kept.returncode == 1 and "is no file of this user's alone" in kept.stderr
    tufmesh("get", SMALL, "-o", str(out), "--home", str(home), "--replace")
    assert not (out / name).is_symlink() and victim.read_bytes() == b"precious\n"


@contextlib.contextmanager
def _hostile_http(kind: str) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 that answers each request with a head sent
    a byte a second ("dribble") or a 200 whose body never ends ("endless"),
    for at most 30 s; yields its URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def answer(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)
            deadline = time.monotonic() + 30
            if kind == "dribble":
                for byte in b"HTTP/1.1 200 OK\r\n" + b"x-pad: " + b"a" * 100:
                    if stop.is_set() or time.monotonic() > deadline:
                        return
                    conn.sendall(bytes([byte]))
                    time.sleep(1.0)
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\n\r\n")
                while not stop.is_set() and time.monotonic() < deadline:
                    conn.sendall(b"\0" * 65536)

    def serve() -> None:
        with listener:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()


def test_a_client_home_is_never_another_roles_directory(origin: Server, tmp_path: Path) -> None:
    """An origin's repository given as --home: init wrote into it, an 'ls'
    put another root at its metadata/root.json, and a second init with
    another root deleted every file of its published metadata."""
    root = str(origin.repo / "metadata" / "1.root.json")
    published = sorted(p.name for p in (origin.repo / "metadata").iterdir())
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "mirror.json").write_text("{}")
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    for home, said in ((origin.repo, "is an origin's repository, not a client home"),
                       (origin.repo / "metadata", "is a directory of published TUF metadata"),
                       (mirror, "is a mirror's directory, not a client home"),
                       (stray, "holds other files and no client")):  # fmt: skip
        made = tufmesh("client", "init", root, "--origin", origin.url, "--home", str(home),
                       check=False)  # fmt: skip
        assert made.returncode == 1 and said in made.stderr, made.stderr
        assert not (home / "config.toml").exists()
    assert sorted(p.name for p in (origin.repo / "metadata").iterdir()) == published
    listed = tufmesh("ls", "--home", str(origin.repo), check=False)
    assert listed.returncode == 1 and "is an origin's repository" in listed.stderr
    assert sorted(p.name for p in (origin.repo / "metadata").iterdir()) == published
    # The client's own trust anchor damaged: said so, not every source blamed.
    home = tmp_path / "home"
    tufmesh("client", "init", root, "--origin", origin.url, "--home", str(home))
    (home / "root.json").write_text('{"signed": ')
    damaged = tufmesh("ls", "--home", str(home), check=False)
    assert damaged.returncode == 1 and "this client's trust anchor is damaged" in damaged.stderr
    assert "client init" in damaged.stderr and origin.url not in damaged.stderr
    (home / "root.json").unlink()  # ...or gone: init, as said, sets it up again
    tufmesh("client", "init", root, "--origin", origin.url, "--home", str(home))
    assert tufmesh("ls", "--home", str(home)).returncode == 0


def test_client_init_again_with_another_root_starts_over(origin: Server, tmp_path: Path) -> None:
    # The wrong repository's root, which no source serves: refused at once
    # (not first at a get, as a bad signature), and nothing set up or replaced.
    home = tmp_path / "home"
    other = init_repo(tmp_path / "other")
    other_root = str(other / "metadata" / "1.root.json")
    made = tufmesh("client", "init", other_root, "--origin", origin.url, "--home", str(home),
                   check=False)  # fmt: skip
    assert made.returncode == 1 and made.stderr == (
        f"Error: no source serves the repository of {other_root}: {origin.url} serves another "
        "repository: its root v1 is not the one trusted here (a wrong URL, or the wrong "
        "root.json). Nothing is set up\n"
    )
    assert not home.exists()
    # A client (a mirror's, a home's set up before) asking it anyway is told
    # as much, not only "bad signature", which reads as an attack.
    with Client(tmp_path / "c", Path(other_root).read_bytes(), [origin.url], **FAST) as client:
        with pytest.raises(ClientError, match="another repository's: a wrong URL, or the wrong"):
            client.artifacts()
    # A home of the other repository, its metadata cached; init with the
    # right root must replace it, cache and all.
    with running(other) as served:
        tufmesh("client", "init", other_root, "--origin", served.url, "--home", str(home))
        empty = tufmesh("ls", "--home", str(home), check=False)  # verified, and empty
        assert "no artifacts in the signed metadata" in empty.stderr, empty.stderr
        assert (home / "metadata" / "timestamp.json").exists()
    refused = tufmesh("client", "init", other_root, "--origin", origin.url, "--home", str(home),
                      check=False)  # fmt: skip
    assert (
        refused.returncode == 1
        and (home / "root.json").read_bytes() == Path(other_root).read_bytes()
    )
    tufmesh("client", "init", str(origin.repo / "metadata" / "1.root.json"),
            "--origin", origin.url, "--home", str(home))  # fmt: skip
    listing = tufmesh("ls", "demo", "--home", str(home)).stdout
    assert f"{SMALL}\t100000\t" in listing
    nothing = tufmesh("ls", "nosuch", "--home", str(home), check=False)
    assert nothing.returncode == 1 and nothing.stdout == ""
    assert "no artifacts of project 'nosuch' in the signed metadata" in nothing.stderr
    # The same root again keeps the cache (and its rollback protection).
    cached = (home / "metadata" / "timestamp.json").read_bytes()
    mirror = "http://127.0.0.1:1"  # nobody there: said at once, a typo is found early
    warned = tufmesh("client", "init", str(origin.repo / "metadata" / "1.root.json"),
                     "--origin", origin.url, "--mirror", mirror, "--home", str(home))  # fmt: skip
    assert warned.stderr == f"warning: {mirror} does not answer now (connection refused)\n"
    assert (home / "metadata" / "timestamp.json").read_bytes() == cached
    # init lists every source: one left out is said to be dropped.
    again = tufmesh("client", "init", str(origin.repo / "metadata" / "1.root.json"),
                    "--origin", origin.url, "--home", str(home)).stdout  # fmt: skip
    assert f"sources no longer used (init lists them all): {mirror}" in again
    with static_server(tmp_path) as plain:  # a web server, but no tufmesh source
        named = tufmesh("client", "init", str(origin.repo / "metadata" / "1.root.json"),
                        "--origin", origin.url, "--mirror", plain, "--home", str(home))  # fmt: skip
    assert f"warning: {plain} serves no TUF metadata (HTTP 404 for" in named.stderr, named.stderr
    assert "is it a tufmesh origin's or mirror's URL?" in named.stderr
    tls = origin.url.replace("http://", "https://")  # TLS to a plain HTTP port
    named = tufmesh("client", "init", str(origin.repo / "metadata" / "1.root.json"),
                    "--origin", origin.url, "--mirror", tls, "--home", str(home))  # fmt: skip
    assert f"warning: {tls} cannot be asked now: TLS failed: it does not speak TLS there (an " \
        "http:// URL?)" in named.stderr, named.stderr  # fmt: skip
    listed = tufmesh("ls", "--home", str(home))
    assert f"warning: {tls} failed: TLS failed: it does not speak TLS there" in listed.stderr
    # A source that answers forever (its head a byte a second, or an endless
    # body): init looks at each for a few seconds, reads no body, and goes on.
    with _hostile_http("dribble") as dribbler, _hostile_http("endless") as endless:
        started = time.monotonic()
        looked = tufmesh("client", "init", str(origin.repo / "metadata" / "1.root.json"),
                         "--origin", origin.url, "--mirror", dribbler, "--mirror", endless,
                         "--home", str(home))  # fmt: skip
        assert time.monotonic() - started < 15
        assert looked.stderr.splitlines() == [
            f"warning: {dribbler} does not answer now (no answer within 5 s)",
            # (its endless body, gzip, which S3 or a CDN may send unasked: not said
            # to be another repository's, blaming the user's root.json)
            f"warning: {endless} does not serve the root trusted here: its root v1 came in "
            "'gzip', which was not asked for",
        ]


def test_a_source_of_another_repository_is_named_though_another_is_newer(
    origin: Server, tmp_path: Path
) -> None:
    """A source whose timestamp loses to a newer one is never seen by
    python-tuf: one that serves another repository (a mistyped URL), asked
    for nothing else, went unsaid at every command after init's warning. Its
    timestamp is checked against the trusted root's keys, and it is named;
    one merely behind is not."""
    other = init_repo(tmp_path / "other")  # timestamp v1: older than the origin's
    old = (origin.repo / "metadata" / "timestamp.json").read_bytes()
    token = add_project(origin.repo, "newer")
    assert post(origin.url, "newer", "newer-1.tar.gz", b"x", token).status_code == 200
    root = (origin.repo / "metadata" / "1.root.json").read_bytes()
    with running(other) as wrong, mirrors(origin.repo, "honest", "honest") as (behind, junk):
        behind.metadata_overrides["timestamp.json"] = old
        junk.metadata_overrides["timestamp.json"] = b" " * 4096  # (said "signed by other keys")
        # An old failure each: the origin serves everything but the timestamp.
        sources = [SourceHealth(origin.url), SourceHealth(wrong.url, failures=1),
                   SourceHealth(behind.url, failures=1), SourceHealth(junk.url, failures=1)]  # fmt: skip
        with Client(tmp_path / "c", root, sources, **FAST) as client:
            assert client.target(SMALL).length == 100_000
            health = {h.url: h for h in client.fetcher.sources}
        assert health[wrong.url].failures == 2 and health[behind.url].failures == 1
        assert health[junk.url].last_error == "served a timestamp that is not TUF metadata"
        assert health[wrong.url].last_error == (
            "served a timestamp this repository's keys did not sign (another repository's, "
            "or one signed by keys since replaced)"
        )
        home = str(tmp_path / "home")
        tufmesh("client", "init", str(origin.repo / "metadata" / "1.root.json"), "--origin",
                origin.url, "--mirror", wrong.url, "--home", home)  # fmt: skip
        listed = tufmesh("ls", "demo", "--home", home)
        assert f"{SMALL}\t100000\t" in listed.stdout
        assert listed.stderr.startswith(f"warning: {wrong.url} failed: "), listed.stderr


def test_client_init_names_a_source_whose_root_is_nested_past_the_limit(
    origin: Server, tmp_path: Path
) -> None:
    """Its probe of each source's root read JSON nested 100,000 deep: a
    traceback from the probe's thread, then "no answer within 5 s"."""
    with mirrors(origin.repo, "honest") as (deep,):
        deep.metadata_overrides["1.root.json"] = b"[" * 100_000 + b"]" * 100_000
        done = tufmesh("client", "init", str(origin.repo / "metadata" / "1.root.json"),
                       "--origin", origin.url, "--mirror", deep.url,
                       "--home", str(tmp_path / "home"))  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    # (unreadable, not another repository's: the user's root.json is not blamed)
    said = f"warning: {deep.url} does not serve the root trusted here: its root v1 is not TUF"
    assert said in done.stderr, done.stderr


@contextlib.contextmanager
def _one_slow_link(upstream: str, ports: int, rate: float) -> Iterator[list[str]]:
    """``ports`` proxies on 127.0.0.1 to ``upstream`` (host:port) whose
    answers all share one link of ``rate`` bytes a second: a user's own slow
    downlink, under mirrors of any speed. Their URLs."""
    host, port = upstream.rsplit(":", 1)
    lock, stop = threading.Lock(), threading.Event()
    clock = [time.monotonic()]  # when the link is next free
    opened: list[socket.socket] = []

    def carry(src: socket.socket, dst: socket.socket, shared: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(2048):
                if shared:
                    with lock:
                        clock[0] = max(clock[0], time.monotonic()) + len(data) / rate
                        due = clock[0]
                    time.sleep(max(0.0, due - time.monotonic()))
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def serve(listener: socket.socket) -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection((host, int(port)))
            opened.extend((client, server))
            for args in ((client, server, False), (server, client, True)):
                threading.Thread(target=carry, args=args, daemon=True).start()

    listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(ports)]
    for listener in listeners:
        threading.Thread(target=serve, args=(listener,), daemon=True).start()
    try:
        yield [f"http://127.0.0.1:{listener.getsockname()[1]}" for listener in listeners]
    finally:
        stop.set()
        for sock in listeners + opened:
            sock.close()


def test_mirrors_sharing_a_users_slow_link_are_not_dropped_for_it(tmp_path: Path) -> None:
    """ADR 27. Four mirrors behind a link of 48 KiB/s, with a floor of 16 KiB/s:
    each of the eight requests in flight gets 6 KiB/s, under its mirror's
    share of the floor (8 KiB/s), though the download as a whole gets three
    times the floor. Before, every mirror was too slow at once, three times,
    and dropped, and the download failed: the more mirrors listed, the faster
    a link a user needed."""
    repo = init_repo(tmp_path / "repo", "--chunk-size", "32KiB")
    token = add_project(repo, "demo")
    body = os.urandom(320 * 1024)  # ten chunks
    with running(repo) as origin:
        assert post(origin.url, "demo", "demo-2.0.tar.gz", body, token).status_code == 200
        root = (repo / "metadata" / "1.root.json").read_bytes()
        config = SchedulerConfig(min_rate=16 * 1024, grace=1.0)
        with _one_slow_link(origin.url.removeprefix("http://"), 4, 48 * 1024) as urls:
            with Client(tmp_path / "c", root, urls, scheduler_config=config) as client:
                got = client.download("demo/demo-2.0.tar.gz", tmp_path / "out")
        assert got.path.read_bytes() == body
        sources = client.fetcher.sources
        assert all(s.failures == 0 for s in sources), [(s.url, s.last_error) for s in sources]


@pytest.mark.attack
def test_a_plain_tuf_repository_that_trickles_its_targets_is_given_up(
    origin: Server, tmp_path: Path
) -> None:
    """A plain TUF repository's targets stream whole (no chunks, no /blobs/):
    a byte a second is still abandoned after the grace period."""
    with mirrors(origin.repo, "trickle") as (slow,):
        source = SourceHealth(
            slow.url, metadata_url=f"{origin.url}/metadata", targets_url=f"{slow.url}/targets"
        )
        root = (origin.repo / "metadata" / "1.root.json").read_bytes()
        started = time.monotonic()
        with Client(tmp_path / "plain", root, [source], **FAST) as client:
            with pytest.raises(ClientError, match="too slow"):
                client.download(SMALL, tmp_path / "out")
        assert time.monotonic() - started < 15  # the helper trickles for 30 s
    assert not (tmp_path / "out" / SMALL.rsplit("/", 1)[1]).exists()


def test_a_plain_tuf_sources_corrupt_artifact_is_said_to_be_one(
    origin: Server, tmp_path: Path
) -> None:
    """Its hash mismatch was said as metadata's: "no source served metadata
    that verifies: ... a version of another snapshot (mix-and-match)"."""
    body = origin.contents[SMALL]  # type: ignore[attr-defined]
    name = f"demo/{hashlib.sha256(body).hexdigest()}.{SMALL.rsplit('/', 1)[1]}"
    root = (origin.repo / "metadata" / "1.root.json").read_bytes()
    # And one longer than signed, or none at all, were said as metadata's too:
    # "no source served metadata that verifies: .../metadata: metadata too
    # long", "cannot fetch metadata from any source: ...: not found".
    for served, said in [
        (bytes([body[0] ^ 1]) + body[1:], "no source served the artifact's signed bytes: "
         ".*served the artifact with other bytes than the signed ones"),
        (body + b"more", "no source served the artifact's signed bytes: .*served more than "
         "the artifact's signed length \\(100,000 bytes\\)"),
        (None, f"cannot fetch {SMALL} from any source: .*not found"),
    ]:  # fmt: skip
        with mirrors(origin.repo, "honest") as (liar,):
            if served is not None:
                liar.target_overrides[name] = served
            targets = f"{liar.url}/targets" if served is not None else f"{liar.url}/nothing"
            source = SourceHealth(
                liar.url, metadata_url=f"{origin.url}/metadata", targets_url=targets
            )
            with Client(tmp_path / "plain", root, [source], **FAST) as client:
                with pytest.raises(ClientError, match=said):
                    client.download(SMALL, tmp_path / "out")


def test_the_private_directories_of_killed_downloads_are_removed(
    origin: Server, tmp_path: Path
) -> None:
    """A whole-file download writes in a directory of its own in the
    destination (python-tuf opens the path by name); one killed (kill -9)
    left it there for good. The next removes those no process holds, and
    only those."""
    from tufmesh._durable import hold_lock

    out = tmp_path / "out"
    out.mkdir()
    killed, running_now, young = (
        out / f".tufmesh-{n}" for n in ("abcd1234", "efgh5678", "x_y_z_01")
    )
    users = out / ".tufmesh-my-notes"  # not one of ours: a '-' is not tempfile's
    for directory in (killed, running_now, young, users):
        directory.mkdir()
        (directory / "f").write_bytes(b"bytes")
        if directory is not young:  # (one just made may not be locked yet)
            os.utime(directory, (1, 1))
    lock = hold_lock(running_now)  # a download running there
    assert lock is not None
    try:
        source = SourceHealth(
            origin.url, metadata_url=f"{origin.url}/metadata", targets_url=f"{origin.url}/targets"
        )
        root = (origin.repo / "metadata" / "1.root.json").read_bytes()
        with Client(tmp_path / "plain", root, [source], **FAST) as client:
            got = client.download(SMALL, out)
    finally:
        os.close(lock)
    assert got.path.read_bytes() == origin.contents[SMALL]  # type: ignore[attr-defined]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [got.path.name, running_now.name, young.name, users.name]
    )


def test_conformance_cli(origin: Server, tmp_path: Path) -> None:
    exe = TUFMESH + "-conformance"
    meta, targets = tmp_path / "meta", tmp_path / "targets"
    common = ["--metadata-dir", str(meta)]
    urls = ["--metadata-url", f"{origin.url}/metadata", "--target-base-url", f"{origin.url}/targets",
            "--target-dir", str(targets)]  # fmt: skip

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)

    assert run(*common, "init", str(origin.repo / "metadata" / "1.root.json")).returncode == 0
    assert (meta / "root.json").exists()
    assert run(*common, "--metadata-url", f"{origin.url}/metadata", "refresh").returncode == 0
    assert {"timestamp.json", "snapshot.json", "targets.json"} <= {p.name for p in meta.iterdir()}
    done = run(*common, *urls, "--target-name", SMALL, "--target-name", BIG, "download")
    assert done.returncode == 0, done.stderr
    from urllib.parse import quote

    for name in (SMALL, BIG):
        assert (targets / quote(name, safe="")).read_bytes() == origin.contents[name]  # type: ignore[attr-defined]
    missing = run(*common, *urls, "--target-name", "demo/absent-1.tar.gz", "download")
    assert missing.returncode == 1 and "not in the signed metadata" in missing.stderr
    unreachable = run(*common, "--metadata-url", "http://127.0.0.1:9/metadata", "refresh")
    assert unreachable.returncode == 1
    # A subcommand's help needs no --metadata-dir (it said it was missing), and
    # a subcommand without one says so.
    for command in ("init", "refresh", "download"):
        helped = run(command, "--help")
        assert helped.returncode == 0 and helped.stdout.startswith("Usage: "), helped.stderr
        unsaid = run(*urls[2:], command, *(["root.json"] if command == "init" else []))
        assert unsaid.returncode == 1 and "--metadata-dir is required" in unsaid.stderr


def test_conformance_cli_on_any_tuf_repository(tmp_path: Path) -> None:
    """Target names of any shape, as the TUF conformance suite uses them: not
    only tufmesh's ``<project>/<filename>``."""
    from datetime import UTC, datetime, timedelta

    from securesystemslib.signer import CryptoSigner
    from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp

    signer = CryptoSigner.generate_ed25519()
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    files = {"target_file.txt": b"one", "path/to/a/target_file.txt": b"two"}
    root = Root(expires=expires, consistent_snapshot=False)
    for role in ("root", "targets", "snapshot", "timestamp"):
        root.add_key(signer.public_key, role)
    targets = Targets(expires=expires)
    for name, data in files.items():
        targets.targets[name] = TargetFile.from_data(name, data, ["sha256"])
        (tmp_path / "repo" / "targets" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "repo" / "targets" / name).write_bytes(data)
    snapshot = Snapshot(expires=expires, meta={"targets.json": MetaFile(1)})
    timestamp = Timestamp(expires=expires, snapshot_meta=MetaFile(1))
    (tmp_path / "repo" / "metadata").mkdir()
    for name, signed in (("root", root), ("targets", targets), ("snapshot", snapshot),
                         ("timestamp", timestamp)):  # fmt: skip
        md = Metadata(signed)
        md.sign(signer)
        md.to_file(str(tmp_path / "repo" / "metadata" / f"{name}.json"))
    exe = TUFMESH + "-conformance"
    meta, out = tmp_path / "meta", tmp_path / "out"
    common = ["--metadata-dir", str(meta)]
    with static_server(tmp_path / "repo") as url:
        urls = ["--metadata-url", f"{url}/metadata", "--target-base-url", f"{url}/targets",
                "--target-dir", str(out)]  # fmt: skip
        init = [exe, *common, "init", str(tmp_path / "repo" / "metadata" / "root.json")]
        assert subprocess.run(init, capture_output=True, timeout=120).returncode == 0
        names = [arg for name in files for arg in ("--target-name", name)]
        done = subprocess.run(
            [exe, *common, *urls, *names, "download"], capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 0, done.stderr
    from urllib.parse import quote

    for name, data in files.items():
        assert (out / quote(name, safe="")).read_bytes() == data


def test_unusable_urls_and_a_bad_config_are_one_line(origin: Server, tmp_path: Path) -> None:
    home = tmp_path / "home"
    root = str(origin.repo / "metadata" / "1.root.json")
    for bad in ("http://[::1", "http://127.0.0.1:99999", "http://x:0", "http://", "file:///etc",
                f"{origin.url} ", f"{origin.url}\t"):  # fmt: skip
        proc = tufmesh("client", "init", root, "--origin", bad, "--home", str(home), check=False)
        assert proc.returncode == 1 and "URL" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    # (A pasted trailing space was taken, and every sync of a mirror then
    # failed on the host name.)
    spaced = tufmesh("mirror", "run", "--dir", str(tmp_path / "m"), "--root", root,
                     "--origin", f"{origin.url} ", check=False)  # fmt: skip
    assert spaced.returncode == 1 and "a space or a control character" in spaced.stderr
    # A URL with a typo in its path: every source says there is no timestamp.
    with Client(tmp_path / "c", Path(root).read_bytes(), [f"{origin.url}/typo"], **FAST) as client:
        with pytest.raises(TufmeshError, match="is each a tufmesh origin's or mirror's URL"):
            client.artifacts()
    # A client's home given as an origin's is named as such, not as "no repository".
    tufmesh("client", "init", root, "--origin", origin.url, "--home", str(home))
    named = tufmesh("origin", "status", "--dir", str(home), check=False)
    assert named.returncode == 1 and f"{home} is a client's home, not an origin's" in named.stderr
    # A password in a URL would be shown in messages and metrics, and a
    # mirror shares its peers' URLs with whoever asks: refused, and not said.
    with_password = origin.url.replace("http://", "http://op:s3cret@")
    proc = tufmesh(
        "client", "init", root, "--origin", with_password, "--home", str(home), check=False
    )
    assert proc.returncode == 1 and "user name or password is refused" in proc.stderr
    assert "s3cret" not in proc.stderr
    proc = tufmesh("mirror", "run", "--dir", str(tmp_path / "m"), "--root", root, "--origin",
                   origin.url, "--peer", with_password, check=False)  # fmt: skip
    assert proc.returncode == 1 and "user name or password is refused" in proc.stderr
    made = tufmesh("client", "init", root, "--origin", origin.url, "--home", str(home))
    # The root it now trusts, for its user to check against the maintainers' word.
    digest = hashlib.sha256(Path(root).read_bytes()).hexdigest()
    assert f"trusted root sha256 {digest}" in made.stdout
    config = home / "config.toml"
    for text in ("sources = [1, 2]\n", 'sources = "http://x"\n', ""):
        config.write_text(text)
        proc = tufmesh("ls", "demo", "--home", str(home), check=False)
        assert proc.returncode == 1 and f"bad {config}" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    assert "it names no sources ('tufmesh client init' writes them)" in proc.stderr  # not 'sources'


def test_a_damaged_metadata_cache_heals_and_a_new_root_is_said(
    origin: Server, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    root = str(origin.repo / "metadata" / "1.root.json")
    made = tufmesh("client", "init", root, "--origin", origin.url, "--mirror", origin.url + "/",
                   "--home", str(home)).stdout  # fmt: skip
    assert "1 source(s)" in made  # the same URL once
    tufmesh("ls", "demo", "--home", str(home))
    (home / "metadata" / "root.json").write_text("garbage")  # a damaged disk
    listing = tufmesh("ls", "demo", "--home", str(home), check=False)
    assert listing.returncode == 0 and SMALL in listing.stdout, listing.stderr
    other = init_repo(tmp_path / "other")
    with running(other) as served:
        again = tufmesh("client", "init", str(other / "metadata" / "1.root.json"),
                        "--origin", served.url, "--home", str(home)).stdout  # fmt: skip
    assert "the trusted root was replaced" in again


def test_a_listing_does_not_descend_below_a_hash_bin(tmp_path: Path) -> None:
    """A bin (its key online, and compromised) delegates to further roles:
    the listing loaded and kept every one (65,536 at most, megabytes each),
    and the pip proxy was killed for memory. tufmesh's bins delegate
    nothing: a listing reads none of them (here one that does not exist,
    which failed the whole listing)."""
    from securesystemslib.signer import CryptoSigner
    from tuf.api.metadata import DelegatedRole, Delegations, TargetFile

    from tufmesh.origin import OriginRepository

    repo_dir = init_repo(tmp_path / "repo")
    repo = OriginRepository(repo_dir)
    placed = "demo/placed-1.whl"
    role = repo.succinct.get_role_for_target(placed)
    key = CryptoSigner.generate_ed25519().public_key
    with repo.edit_targets(role) as targets:
        targets.targets[placed] = TargetFile(1, {"sha256": "00" * 32}, placed)
        ghost = DelegatedRole("ghost", [key.keyid], 1, False, paths=["demo/*"])
        targets.delegations = Delegations({key.keyid: key}, roles={"ghost": ghost})
    repo._commit()
    with running(repo_dir) as origin, client_for(origin, tmp_path, origin.url) as client:
        assert [t.path for t in client.artifacts()] == [placed]


def test_a_bins_entries_count_only_for_the_paths_delegated_to_it(tmp_path: Path) -> None:
    """A bin lists a path that hashes to another bin (its key is online, and
    compromised): the listing must not take it, as python-tuf's own lookup
    does not (mirrors replicate what the listing names)."""
    from tuf.api.metadata import TargetFile

    from tufmesh.origin import OriginRepository

    repo_dir = init_repo(tmp_path / "repo")
    repo = OriginRepository(repo_dir)
    stray, placed = "demo/stray-1.whl", "demo/placed-1.whl"
    right = repo.succinct.get_role_for_target(stray)
    wrong = next(r for r in repo.succinct.get_roles() if r != right)
    for role, path in ((wrong, stray), (repo.succinct.get_role_for_target(placed), placed)):
        with repo.edit_targets(role) as targets:
            targets.targets[path] = TargetFile(1, {"sha256": "00" * 32}, path)
    repo._commit()
    with running(repo_dir) as origin, client_for(origin, tmp_path, origin.url) as client:
        assert [t.path for t in client.artifacts()] == [placed]
        with pytest.raises(NotInMetadataError):
            client.target(stray)  # python-tuf's walk, the reference
        assert client.target(placed).path == placed


@pytest.mark.attack
def test_a_bin_that_delegates_to_itself_cannot_hang_the_listing(tmp_path: Path) -> None:
    """A holder of the online bin key has a bin delegate to itself: the
    listing (ls, the pip proxy, every mirror) went round for ever, its memory
    growing; python-tuf's own lookup keeps a visited set. An entry with a CID
    but no SHA-256 was a KeyError traceback in get: python-tuf's own download
    takes it (here it finds no such file, and nothing is kept)."""
    from tuf.api.metadata import DelegatedRole, Delegations, TargetFile

    from tufmesh.origin import OriginRepository

    repo_dir = init_repo(tmp_path / "repo")
    repo = OriginRepository(repo_dir)
    bins = repo._md["bins"].signed.delegations
    assert bins is not None and bins.succinct_roles is not None
    keyids = bins.succinct_roles.keyids
    odd = "demo/odd-1.whl"
    role = repo.succinct.get_role_for_target(odd)
    with repo.edit_targets(role) as targets:
        targets.delegations = Delegations(
            keys={k: bins.keys[k] for k in keyids},
            roles={role: DelegatedRole(role, list(keyids), 1, False, paths=["*"])},
        )
        targets.targets[odd] = TargetFile(
            10, {"sha512": "00" * 64}, odd, unrecognized_fields={"custom": {"cid": "b" + "a" * 58}}
        )
    repo._commit()
    root = (repo_dir / "metadata" / "1.root.json").read_bytes()
    # (a static copy of the tree: the origin's own committer refuses such an entry)
    with static_server(repo_dir) as url, Client(tmp_path / "c", root, [url], **FAST) as client:
        listed: list[list[TargetFile]] = []
        walker = threading.Thread(target=lambda: listed.append(client.artifacts()), daemon=True)
        walker.start()
        walker.join(30)
        assert listed, "the listing did not end"
        assert [t.path for t in listed[0]] == [odd]
        with pytest.raises(ClientError, match="not found on any source"):
            client.download(odd, tmp_path / "out")  # (no such file: python-tuf asked)
    assert not (tmp_path / "out" / "odd-1.whl").exists()


@pytest.mark.attack
@pytest.mark.parametrize(
    ("claims", "error"),
    [("this artifact", "does not verify"), ("its own blob", "describes another blob")],
)
def test_chunks_that_match_a_signed_manifest_of_other_bytes_are_not_kept(
    tmp_path: Path, claims: str, error: str
) -> None:
    """A holder of the online bin key signs an entry whose manifest lists the
    chunks of other bytes, and a mirror serves those bytes. A manifest that
    claims the artifact's own SHA-256 and length: every chunk verifies
    against it, and python-tuf's check of the whole file refuses the result.
    One that names the blob it really describes is refused before any chunk.
    Nothing is written under the artifact's name."""
    import blake3

    from tufmesh.cas import Manifest
    from tufmesh.origin import OriginRepository

    repo = init_repo(tmp_path / "repo")
    token = add_project(repo, "demo")
    real, fake = os.urandom(3 * (1 << 20) + 77), os.urandom(3 * (1 << 20) + 77)
    with running(repo) as server:
        assert post(server.url, "demo", "demo-1.0.tar.gz", real, token).status_code == 200
    origin = OriginRepository(repo)
    role = origin.succinct.get_role_for_target(BIG)
    entry = origin.find(BIG)
    assert entry is not None
    size = entry.custom["chunk_size"]
    forged = Manifest(
        chunk_size=size,
        length=len(real),
        sha256=bytes.fromhex(entry.hashes["sha256"])
        if claims == "this artifact"
        else hashlib.sha256(fake).digest(),
        digests=tuple(
            blake3.blake3(fake[i : i + size]).digest() for i in range(0, len(fake), size)
        ),
    )
    origin.store.put(forged.encoded)
    with origin.edit_targets(role) as targets:
        targets.targets[BIG].unrecognized_fields["custom"]["manifest"] = forged.cid
    origin._commit()
    del origin  # its lock, before the server takes it
    out = tmp_path / "out"
    with running(repo) as server, mirrors(repo, "honest") as (liar,):
        liar.blob_overrides[entry.custom["cid"]] = fake  # what it serves as the artifact
        root = (repo / "metadata" / "1.root.json").read_bytes()
        with Client(tmp_path / "client", root, [liar.url], **FAST) as client:
            with pytest.raises(ClientError, match=error):
                client.download(BIG, out)
        assert not (out / "demo-1.0.tar.gz").exists()
        # The origin serves the real bytes, which fail the forged manifest: a
        # wrong signed entry is an error, never the wrong file.
        with Client(tmp_path / "client", root, [server.url], **FAST) as client:
            with pytest.raises(ClientError):
                client.download(BIG, out)
        assert not (out / "demo-1.0.tar.gz").exists()


def test_a_source_that_cannot_be_reached_is_said_so_in_plain_words(tmp_path: Path) -> None:
    """It was "DeadlineHTTPConnection(host='127.0.0.1', port=9): Failed to
    establish a new connection: [Errno 111] Connection refused"."""
    repo = init_repo(tmp_path / "repo")
    root = (repo / "metadata" / "1.root.json").read_bytes()
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        with Client(tmp_path / "c", root, [url], **FAST) as client:
            with pytest.raises(SourcesFailedError) as failed:
                client.refresh()
    assert f"{url}: cannot connect (connection refused)" in str(failed.value)
    assert "HTTPConnection" not in str(failed.value)
