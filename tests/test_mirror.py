"""Mirrors replicate from the origin and from each other, verified; clients use them."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import string
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from tuf.api.metadata import Metadata

from tests.helpers.log import log_lines
from tests.helpers.mirror import mirrors as helper_mirrors
from tests.helpers.origin import (
    TUFMESH,
    add_project,
    init_repo,
    post,
    running,
    static_server,
    tuf_download,
    tuf_updater,
    tufmesh,
)
from tests.helpers.tls import make_ca_and_cert, tls_proxy
from tufmesh._durable import SUPERSEDED_GRACE, hold_lock
from tufmesh._ui import format_size
from tufmesh.cas import cid_from_sha256
from tufmesh.client import Client
from tufmesh.errors import TufmeshError, UsageError
from tufmesh.mirror import Mirror
from tufmesh.mirror._mirror import MAX_SOURCES_KEPT, SyncReport
from tufmesh.mirror._server import build_mirror_app
from tufmesh.mirror._swarm import QUERY_TIMEOUT
from tufmesh.origin._server import ANNOUNCE_INTERVAL


@contextmanager
def mirror_process(
    directory: Path,
    root: Path,
    origin: str,
    *extra: str,
    env: dict[str, str] | None = None,
    log: list[str] | None = None,
) -> Iterator[str]:
    """A ``tufmesh mirror run`` process; its URL. ``log`` gets its stderr at the end."""
    args = [TUFMESH, "mirror", "run", "--dir", str(directory), "--root", str(root),
            "--origin", origin, "--http-port", "0", *extra]  # fmt: skip
    if "--poll" not in extra:
        args += ["--poll", "0.5"]
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **env} if env else None,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    try:
        assert "serving on" in line, line + (proc.stderr.read() if proc.poll() is not None else "")
        yield line.rsplit(" on ", 1)[1].strip()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
        if log is not None:
            log.append(err)


def wait_for(url: str, version: int, deadline: float = 60) -> dict:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        health = httpx.get(f"{url}/healthz").json()
        if health["snapshot_version"] >= version:
            return health
        time.sleep(0.2)
    raise AssertionError(f"{url} did not reach snapshot {version}: {health}")


def test_chain_of_mirrors_serves_verified_copies(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo")
    token = add_project(repo, "demo")
    root = repo / "metadata" / "1.root.json"
    body = os.urandom(3 * (1 << 20) + 12345)
    with running(repo) as origin:
        response = post(origin.url, "demo", "demo-1.0.tar.gz", body, token)
        version = response.json()["snapshot_version"]
        with mirror_process(tmp_path / "m1", root, origin.url) as m1:
            wait_for(m1, version)
            with mirror_process(tmp_path / "m2", root, origin.url, "--peer", m1) as m2:
                wait_for(m2, version)
                # python-tuf's own client, unmodified, trusts a mirror's tree.
                updater = tuf_updater(m2, repo)
                updater.refresh()
                info = updater.get_targetinfo("demo/demo-1.0.tar.gz")
                assert info is not None
                assert Path(updater.download_target(info)).read_bytes() == body
                # Our client, with the mirrors as its only sources.
                with Client(tmp_path / "client", root.read_bytes(), [m1, m2]) as client:
                    result = client.download("demo/demo-1.0.tar.gz", tmp_path / "out")
                assert result.path.read_bytes() == body
                assert {name for name, s in result.sources.items() if s.bytes} <= {m1, m2}
                # Mirror 2 took the blob from mirror 1: the origin uploaded it about once.
                served = httpx.get(f"{origin.url}/healthz").json()["bytes_served"]
                assert served <= 2 * len(body), f"origin served {served} for {len(body)}"
                # A new release reaches both mirrors.
                second = post(origin.url, "demo", "demo-2.0.tar.gz", b"two", token).json()
                wait_for(m1, second["snapshot_version"])
                wait_for(m2, second["snapshot_version"])
                metrics = httpx.get(f"{m2}/metrics").text
                assert "tufmesh_mirror_snapshot_version" in metrics
    for name in ("m1", "m2"):
        replica = Mirror(tmp_path / name)
        assert replica.store.fsck().ok
        assert replica.state()["snapshot_version"] >= second["snapshot_version"]
    # Stopped: what it held, and that no daemon serves it (exit 1 for monitoring).
    stopped = tufmesh("mirror", "status", "--dir", str(tmp_path / "m2"), check=False)
    assert stopped.returncode == 1 and "daemon\tnot running" in stopped.stdout, stopped
    assert "artifacts served\t2" in stopped.stdout
    daemon = hold_lock(tmp_path / "m2")  # from here on, as if a daemon ran there
    assert daemon is not None
    status = tufmesh("mirror", "status", "--dir", str(tmp_path / "m2")).stdout
    assert "snapshot version" in status and "artifacts served\t2" in status
    assert "not running" not in status
    typo = tufmesh("mirror", "status", "--dir", str(tmp_path / "m3"), check=False)
    assert typo.returncode == 1 and "is not a mirror's directory" in typo.stderr
    assert not (tmp_path / "m3").exists()  # asking created nothing
    (tmp_path / "m4").mkdir()  # a mirror in its first sync
    (tmp_path / "m4" / "mirror.json").write_bytes((tmp_path / "m2" / "mirror.json").read_bytes())
    first = tufmesh("mirror", "status", "--dir", str(tmp_path / "m4"), check=False)
    assert first.returncode == 1 and "first sync has not completed" in first.stderr
    assert "fetched" not in first.stderr
    (tmp_path / "m4" / "incoming").mkdir()  # a stopped sync's part file
    (tmp_path / "m4" / "incoming" / "x.part").write_bytes(os.urandom(1 << 20))
    first = tufmesh("mirror", "status", "--dir", str(tmp_path / "m4"), check=False)
    assert first.returncode == 1 and "1.0 MiB fetched, for the next run to resume" in first.stderr
    # With --p2p-port, the p2p layer writes the state within a second of the
    # start, before any sync ends: still a first sync (it showed a snapshot
    # version 0 and exit 0).
    p2p_only = {"p2p_peers": 2, "newest_announced": 3}
    (tmp_path / "m4" / "state.json").write_text(json.dumps(p2p_only))
    first = tufmesh("mirror", "status", "--dir", str(tmp_path / "m4"), check=False)
    assert first.returncode == 1 and "1.0 MiB fetched, for the next run to resume" in first.stderr
    # ...and after a run without it forgot that view (it left "{}": "damaged").
    Mirror(tmp_path / "m4").forget_network()
    first = tufmesh("mirror", "status", "--dir", str(tmp_path / "m4"), check=False)
    assert first.returncode == 1 and "1.0 MiB fetched, for the next run to resume" in first.stderr
    # A failed sync: what the mirror serves is still counted (it said 0).
    state = Mirror(tmp_path / "m2").state()
    failed = state | {"last_sync": {"artifacts": 0, "error": "the origin is down"}}
    (tmp_path / "m2" / "state.json").write_text(json.dumps(failed))
    after = tufmesh("mirror", "status", "--dir", str(tmp_path / "m2"), check=False)
    assert after.returncode == 1 and "artifacts served\t2" in after.stdout
    assert "last error\tthe origin is down" in after.stdout
    (tmp_path / "m2" / "state.json").write_text(json.dumps(state))
    # ...and so /healthz (from the state) counts what a failed sync leaves served.
    replica = Mirror(tmp_path / "m2")
    assert replica.state()["artifacts"] == 2
    replica.record(SyncReport(error="the origin is down"))
    assert replica.state()["artifacts"] == 2 and replica.state()["sync_failures"] == 1
    (tmp_path / "m2" / "state.json").write_text(json.dumps(state))
    # Entries of the wrong type (a hand edit): left out, the rest still shown.
    state = Mirror(tmp_path / "m2").state()
    state |= {"syncs": "many", "bytes_fetched_by_source": {"x": "lots"}, "last_sync_at": None}
    (tmp_path / "m2" / "state.json").write_text(json.dumps(state))
    mistyped = tufmesh("mirror", "status", "--dir", str(tmp_path / "m2"))
    assert "syncs\t0" in mistyped.stdout and "artifacts served\t2" in mistyped.stdout
    # The lag behind the network, as the p2p layer reports it; unknown with no peer.
    (tmp_path / "m2" / "state.json").write_text(json.dumps(Mirror(tmp_path / "m2").state()))
    held = Mirror(tmp_path / "m2").state()["timestamp_version"]
    Mirror(tmp_path / "m2").note_network(3, held + 2)
    lagging = tufmesh("mirror", "status", "--dir", str(tmp_path / "m2")).stdout
    assert "p2p peers\t3" in lagging
    assert "lag\t2 timestamp version(s) behind the newest announcement" in lagging
    Mirror(tmp_path / "m2").note_network(0, held + 2)
    alone = tufmesh("mirror", "status", "--dir", str(tmp_path / "m2")).stdout
    assert "p2p peers\t0" in alone and "lag\tunknown: no p2p peer" in alone
    (tmp_path / "m2" / "state.json").write_text("[]")
    damaged = tufmesh("mirror", "status", "--dir", str(tmp_path / "m2"), check=False)
    assert (
        damaged.returncode == 1 and "state.json cannot be read or is damaged" in damaged.stderr
    ), damaged.stderr
    # A mirror that has synced is refused another repository's root.
    other = init_repo(tmp_path / "other")
    with pytest.raises(UsageError, match="already mirrors the repository of another root"):
        Mirror.create(tmp_path / "m2", other / "metadata" / "1.root.json", [origin.url])
    # mirror.json as JSON of another shape (a hand edit): one line, not a TypeError.
    (tmp_path / "m2" / "state.json").write_text(json.dumps(state))
    for shape in ("[]", '{"sources": 5}', '{"sources": ["http://a"], "quota": "lots"}'):
        (tmp_path / "m2" / "mirror.json").write_text(shape)
        bad = tufmesh("mirror", "status", "--dir", str(tmp_path / "m2"), check=False)
        assert bad.returncode == 1 and "Traceback" not in bad.stderr, bad.stderr
        assert "mirror.json is damaged" in bad.stderr, bad.stderr
    os.close(daemon)


def test_a_sync_under_way_says_how_far_it_is(tmp_path: Path) -> None:
    """A first sync of a large repository takes hours, and 'mirror status'
    said only that it had not completed, with exit 1: monitoring saw a
    failure. Now it shows how far the sync is, and exits 0; within an
    artifact too (a large one stayed at 0% until it was whole)."""
    import itertools
    import threading

    from tufmesh.mirror._mirror import read_progress

    repo = init_repo(tmp_path / "repo")
    token = add_project(repo, "demo")
    lengths = [(3 << 20) + 1000, 200_000, 100_000]  # the first, four chunks at 1 s each
    seen: list[str] = []
    held: set[int] = set()
    with running(repo) as origin:
        for i, length in enumerate(lengths):
            post(origin.url, "demo", f"demo-{i}.tar.gz", os.urandom(length), token)
        with helper_mirrors(repo, "slow") as (slow,):  # 1 s a blob
            replica = Mirror.create(tmp_path / "m", repo / "metadata" / "1.root.json", [slow.url])
            daemon = hold_lock(tmp_path / "m")  # as the daemon holds it
            sync = threading.Thread(target=replica.sync)
            sync.start()
            deadline = time.monotonic() + 20
            while sync.is_alive() and time.monotonic() < deadline:
                status = tufmesh("mirror", "status", "--dir", str(tmp_path / "m"), check=False)
                if "first sync" in status.stdout:
                    assert status.returncode == 0, status.stderr
                    seen.append(status.stdout)
                if progress := read_progress(tmp_path / "m"):
                    held.add(progress["bytes_held"])
                time.sleep(0.2)
            sync.join()
    assert seen, "the sync was never seen under way"
    whole = {sum(c) for n in range(4) for c in itertools.combinations(lengths, n)}
    assert held - whole, held  # some part of an artifact was said
    # A sync's progress left by a daemon that stopped is not a sync under way.
    (tmp_path / "m" / "progress.json").write_text(json.dumps(json.loads(
        '{"snapshot_version": 4, "artifacts": 3, "held": 1, "bytes": 9, "bytes_held": 3, '
        '"started": 1, "updated": 2}')))  # fmt: skip
    assert "syncing" in tufmesh("mirror", "status", "--dir", str(tmp_path / "m")).stdout
    assert daemon is not None
    os.close(daemon)
    stopped = tufmesh("mirror", "status", "--dir", str(tmp_path / "m"), check=False).stdout
    assert "syncing" not in stopped and "daemon\tnot running" in stopped
    (tmp_path / "m" / "progress.json").unlink()
    assert "of 3 artifacts, " in seen[-1] and f"of {format_size(sum(lengths))}" in seen[-1]
    assert not (tmp_path / "m" / "progress.json").exists()  # over: said by the report
    done = tufmesh("mirror", "status", "--dir", str(tmp_path / "m"), check=False).stdout
    assert "syncing" not in done and "snapshot version" in done


@pytest.mark.attack
def test_a_corrupting_peer_cannot_poison_a_mirror(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo")
    token = add_project(repo, "demo")
    body = os.urandom(2 * (1 << 20) + 777)
    with running(repo) as origin:
        version = post(origin.url, "demo", "demo-1.0.tar.gz", body, token).json()[
            "snapshot_version"
        ]
        with helper_mirrors(repo, "bitflip") as (evil,):
            replica = Mirror.create(
                tmp_path / "m", repo / "metadata" / "1.root.json", [evil.url, origin.url]
            )
            report = replica.sync()
            assert report.error is None and report.snapshot_version == version
            assert evil.blob_requests > 0  # it was asked first, and lied
            assert report.bytes_by_source.get(evil.url, 0) == 0
            assert replica.store.fsck().ok  # nothing it sent was kept
            assert evil.url in report.bans and replica.state()["bans"] >= 1
            assert replica.store.read(_cid(repo)) == body
        # An honest sync afterwards changes nothing and still verifies.
        assert replica.sync().error is None


@pytest.mark.attack
@pytest.mark.parametrize(
    "behaviour", ["bitflip", "other", "trickle", "badlength", "busy", "busyafterone"]
)
def test_a_lying_neighbour_cannot_poison_a_replicating_daemon(
    tmp_path: Path, behaviour: str
) -> None:
    repo = init_repo(tmp_path / "repo")
    token = add_project(repo, "demo")
    root = repo / "metadata" / "1.root.json"
    body = os.urandom(3 * (1 << 20) + 5)
    log: list[str] = []
    with running(repo) as origin, helper_mirrors(repo, behaviour) as (liar,):
        # The liar's have-records claim every chunk: the daemon asks it first.
        with mirror_process(tmp_path / "m", root, origin.url, "--peer", liar.url, log=log) as url:
            wait_for(url, 1)
            version = post(origin.url, "demo", "demo-1.0.tar.gz", body, token).json()
            wait_for(url, version["snapshot_version"], deadline=60)
        state = Mirror(tmp_path / "m").state()
        assert liar.blob_requests > 0
        # "busyafterone" answers one request honestly (a chunk, or the manifest),
        # then "busy" for ever after.
        honest_once = behaviour == "busyafterone"
        assert state["bytes_fetched_by_source"].get(liar.url, 0) <= (1 << 20 if honest_once else 0)
        assert state["bans"] >= (not behaviour.startswith("busy"))  # refusing is not lying
        banned = f"mirror: banned {liar.url} for this sync: " in log[0]
        assert banned == (state["bans"] > 0), log[0]  # the operator is told
        replica = Mirror(tmp_path / "m")
        assert replica.store.fsck().ok and replica.store.read(_cid(repo)) == body


def test_an_https_origin_serves_mirrors_and_chunked_downloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Metadata and chunks over TLS, checked against the operator's CA; a
    source whose certificate is not trusted is refused, with the reason."""
    ca, cert, key = make_ca_and_cert(tmp_path)
    repo = init_repo(tmp_path / "repo")
    token = add_project(repo, "demo")
    root = repo / "metadata" / "1.root.json"
    body = os.urandom(3 * (1 << 20) + 99)
    with running(repo) as origin, tls_proxy(origin.url, cert, key) as https:
        version = post(origin.url, "demo", "demo-1.0.tar.gz", body, token).json()
        trusted = {"SSL_CERT_FILE": str(ca)}
        with mirror_process(tmp_path / "m", root, https, env=trusted) as m:
            wait_for(m, version["snapshot_version"])
        assert Mirror(tmp_path / "m").state()["bytes_fetched_by_source"][https] >= len(body)
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))
        with Client(tmp_path / "client", root.read_bytes(), [https]) as client:
            result = client.download("demo/demo-1.0.tar.gz", tmp_path / "out")
        assert result.path.read_bytes() == body
        assert result.sources[https].chunks == 4  # the chunked path, not one whole file
        monkeypatch.delenv("SSL_CERT_FILE")
        home = ["--home", str(tmp_path / "home")]
        tufmesh("client", "init", str(root), "--origin", https, *home)
        untrusted = tufmesh(
            "get", "demo/demo-1.0.tar.gz", "-o", str(tmp_path / "nope"), *home, check=False
        )
        assert untrusted.returncode == 1 and "certificate" in untrusted.stderr, untrusted.stderr
        assert not (tmp_path / "nope" / "demo-1.0.tar.gz").exists()


def test_a_mirror_refuses_a_wrong_root_and_says_when_syncs_fail(tmp_path: Path) -> None:
    repo, other, m = init_repo(tmp_path / "repo"), init_repo(tmp_path / "other"), tmp_path / "m"
    args = ["mirror", "run", "--dir", str(m), "--origin", "http://127.0.0.1:9", "--http-port", "0"]
    wrong = tufmesh(*args, "--root", str(repo / "metadata" / "1.targets.json"), check=False)
    assert wrong.returncode == 1, wrong.stderr
    assert "is not root metadata" in wrong.stderr and "Traceback" not in wrong.stderr
    assert not m.exists()
    # Another JSON file (the repository's config, say): what is wanted is said.
    config = tufmesh(*args, "--root", str(repo / "config.json"), check=False)
    assert config.returncode == 1 and "config.json is not TUF metadata (the repository's " \
        "1.root.json, from its maintainers)" in config.stderr, config.stderr  # fmt: skip
    root = str(repo / "metadata" / "1.root.json")
    for extra, said in [
        (["--peer", "notaurl"], "not an HTTP(S) URL: 'notaurl'"),
        (["--projects", ","], "no project named"),
        (["--dir", str(repo)], "holds a repository or a store"),  # the origin's own directory
        (["--bootstrap", "garbage"], "not a peer's multiaddr"),
        (["--bootstrap", "/ip4/127.0.0.1/tcp/1"], "not a peer's multiaddr"),  # no peer ID
    ]:
        bad = tufmesh(*args, "--root", root, *extra, check=False)
        assert bad.returncode == 1 and said in bad.stderr, bad.stderr
    assert not m.exists()
    # An origin that refuses connections: the daemon serves, and says once
    # (not at every poll) that its syncs fail.
    log = tmp_path / "mirror.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [TUFMESH, *args, "--root", str(repo / "metadata" / "1.root.json"), "--poll", "0.2"],
            stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while "sync failed" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        # A few more failed polls (each one would say so again, if it did).
        while Mirror(m).state().get("sync_failures", 0) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert Mirror(m).state()["sync_failures"] >= 4
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    failures = [line for line in log.read_text().splitlines() if "sync failed" in line]
    assert len(failures) == 1 and "127.0.0.1:9" in failures[0], log.read_text()
    # Its status says why, and exits 1 for a monitoring script.
    status = tufmesh("mirror", "status", "--dir", str(m), check=False)
    assert status.returncode == 1 and "last error" in status.stdout, status
    # The directory is set up for this root: another is refused, and, as no
    # sync ever completed nor fetched a blob, it says the directory holds
    # nothing (it said "already mirrors the repository of another root").
    again = tufmesh(*args, "--root", str(other / "metadata" / "1.root.json"), check=False)
    assert again.returncode == 1 and "holds nothing yet" in again.stderr, again.stderr
    # A first run whose port is taken leaves no directory tied to its root.
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        busy = tufmesh("mirror", "run", "--dir", str(tmp_path / "busy"), "--origin",
                       "http://127.0.0.1:9", "--http-port", port, "--root", root, check=False)  # fmt: skip
    assert busy.returncode == 1 and "Address already in use" in busy.stderr, busy.stderr
    assert not (tmp_path / "busy").exists()
    # Its own root file damaged: said so, not "another root".
    (m / "root.json").write_text("{")
    damaged = tufmesh(*args, "--root", str(repo / "metadata" / "1.root.json"), check=False)
    assert damaged.returncode == 1 and "root.json is damaged" in damaged.stderr, damaged.stderr


def test_a_full_disk_or_a_log_it_cannot_write_never_stops_a_mirror(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reviews found three ways a full disk ended the daemon, which must go on
    serving what it holds: its stderr (a log on the same disk) refused a log
    line; the p2p layer's peer count, rewritten in state.json as it changed;
    and a restart, which rewrote mirror.json unchanged ("No space left on
    device", at start)."""
    repo = init_repo(tmp_path / "repo")
    root, m = repo / "metadata" / "1.root.json", tmp_path / "m"
    args = [TUFMESH, "mirror", "run", "--dir", str(m), "--root", str(root), "--origin",
            "http://127.0.0.1:9", "--http-port", "0", "--poll", "0.2"]  # fmt: skip
    with open("/dev/full", "w") as full:  # every write: ENOSPC
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=full, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().rsplit(" on ", 1)[1].strip()
        deadline = time.monotonic() + 20
        while Mirror(m).state().get("sync_failures", 0) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)  # (its first failed sync logged a line: it ended there)
        assert proc.poll() is None and httpx.get(f"{url}/healthz").json()["status"] == "degraded"
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    import tufmesh.mirror._mirror as mirror_module

    def no_space(path: Path, data: bytes, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    before = (m / "mirror.json").stat().st_ino
    monkeypatch.setattr(mirror_module, "write_atomic", no_space)
    mirror = Mirror.create(m, root, ["http://127.0.0.1:9"])  # as it was: nothing written
    assert (m / "mirror.json").stat().st_ino == before
    mirror.note_network(3, 7)  # (left unwritten: never a stop)


def test_a_mirror_says_it_is_starting_until_its_first_sync_ends(tmp_path: Path) -> None:
    """/healthz said "ok", with nothing held, while the first sync waited on an
    origin that does not answer (or for hours, on a first big release)."""
    repo = init_repo(tmp_path / "repo")
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        origin = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with mirror_process(tmp_path / "m", repo / "metadata" / "1.root.json", origin) as url:
            health = httpx.get(f"{url}/healthz").json()
    assert health["status"] == "starting" and health["snapshot_version"] == 0, health


def test_a_run_without_p2p_forgets_an_earlier_runs_p2p_view(tmp_path: Path) -> None:
    """Run once with --p2p-port, then without: `mirror status` still gave the
    old libp2p address (nothing listened there) and "p2p peers 0"."""
    repo = init_repo(tmp_path / "repo")
    root = repo / "metadata" / "1.root.json"
    with running(repo) as origin:
        with mirror_process(tmp_path / "m", root, origin.url, "--p2p-port", "0") as url:
            wait_for(url, 1)
            status = tufmesh("mirror", "status", "--dir", str(tmp_path / "m")).stdout
            assert "p2p address\t/ip4/127.0.0.1/tcp/" in status and "p2p peers\t" in status
        with mirror_process(tmp_path / "m", root, origin.url) as url:
            wait_for(url, 1)
            status = tufmesh("mirror", "status", "--dir", str(tmp_path / "m")).stdout
    assert "snapshot version" in status, status
    assert "p2p address" not in status and "p2p peers" not in status, status
    assert not (tmp_path / "m" / "p2p.addr").exists()


def test_a_mirror_stopped_mid_sync_says_what_it_kept(tmp_path: Path) -> None:
    """Stopped during a (first) sync, it said only "stopped": the verified
    chunks it keeps for the next run went unsaid."""
    repo = init_repo(tmp_path / "repo")
    token = add_project(repo, "demo")
    log: list[str] = []
    with running(repo) as origin:
        assert post(origin.url, "demo", "big-1.tar.gz", os.urandom(6 << 20), token).is_success
        with helper_mirrors(repo, "slow") as (slow,):  # 1 s a chunk: a sync of seconds
            root = repo / "metadata" / "1.root.json"
            with mirror_process(tmp_path / "m", root, slow.url, log=log):
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and not any(
                    p.stat().st_blocks for p in (tmp_path / "m" / "incoming").glob("*.part")
                ):
                    time.sleep(0.2)
    (line,) = log_lines(log[0])  # after the time it was said
    assert line.startswith("mirror: the sync under way kept ") and " of verified chunks in " in line
    assert line.endswith(f"{tmp_path / 'm' / 'incoming'}: the next run resumes from them")


def test_a_mirror_directory_may_hold_the_root_file_first(tmp_path: Path) -> None:
    repo, m = init_repo(tmp_path / "repo"), tmp_path / "m"
    m.mkdir()
    (m / "1.root.json").write_bytes((repo / "metadata" / "1.root.json").read_bytes())
    (m / "tree").mkdir()  # and what a first run cut short left
    Mirror.create(m, m / "1.root.json", ["http://127.0.0.1:9"])
    assert (m / "mirror.json").is_file() and (m / "root.json").is_file()
    # A directory of someone's own files is not taken over.
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="holds files of its own"):
        Mirror.create(home, m / "1.root.json", ["http://127.0.0.1:9"])
    assert sorted(p.name for p in home.iterdir()) == ["notes.txt"]


def test_a_peer_reached_over_libp2p_only_is_a_neighbour_not_a_metadata_source(
    tmp_path: Path,
) -> None:
    repo = init_repo(tmp_path / "repo")
    root = repo / "metadata" / "1.root.json"
    peer = "libp2p:/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWH6aSgAE3gYqf1rijpXL8twWYh6h2cfFHFQbcYj4xwiNG"
    sources = [peer, "http://127.0.0.1:8/", "http://127.0.0.1:9"]
    replica = Mirror.create(tmp_path / "m", root, sources)
    assert replica.sources == [peer, "http://127.0.0.1:8", "http://127.0.0.1:9"]
    assert replica.http_sources == ["http://127.0.0.1:8", "http://127.0.0.1:9"]
    for bad in (["libp2p:/ip4/127.0.0.1/tcp/4001", "http://127.0.0.1:9"], [peer]):
        with pytest.raises(UsageError, match=r"multiaddr|HTTP"):  # no ID; no origin
            Mirror.create(tmp_path / "bad", root, bad)
    config = json.loads((tmp_path / "m" / "mirror.json").read_text())
    config["sources"] = [peer]  # by hand: no origin left
    (tmp_path / "m" / "mirror.json").write_text(json.dumps(config))
    with pytest.raises(TufmeshError, match="damaged"):
        _ = replica.http_sources


def test_leftovers_of_a_stop_and_a_crowd_of_sources_do_not_pile_up(tmp_path: Path) -> None:
    """A download left unfinished of a blob no longer wanted (removed at the
    origin, or outside a changed policy) stayed for ever, and every source a
    mirror ever fetched from stayed in its state, a metrics label each."""
    repo = init_repo(tmp_path / "repo")
    token = add_project(repo, "demo")
    root = repo / "metadata" / "1.root.json"
    with running(repo) as origin:
        post(origin.url, "demo", "demo-1.0.tar.gz", b"one", token)
        replica = Mirror.create(tmp_path / "m", root, [origin.url])
        stale = tmp_path / "m" / "incoming" / f"{cid_from_sha256(bytes(32))}.part"
        stale.write_bytes(b"half of something removed since")
        mine = tmp_path / "m" / "incoming" / "notes.txt"
        mine.write_text("not a download")
        report = replica.sync()
        assert report.artifacts == 1 and report.error is None
        assert not stale.exists() and mine.exists()
        total = sum(report.bytes_by_source.values())
        for crowd in range(2):  # the sum of those not named grows, never shrinks
            replica.record(
                SyncReport(bytes_by_source={f"http://10.{crowd}.0.{i}": i for i in range(1, 100)})
            )
            total += sum(range(1, 100))
            fetched = replica.state()["bytes_fetched_by_source"]
            assert len(fetched) == MAX_SOURCES_KEPT and sum(fetched.values()) == total
        status = tufmesh("mirror", "status", "--dir", str(tmp_path / "m"), check=False).stdout
        assert "sources banned\t0" in status


def test_a_restarted_mirror_catches_up(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo")
    token = add_project(repo, "demo")
    root = repo / "metadata" / "1.root.json"
    with running(repo) as origin:
        first = post(origin.url, "demo", "demo-1.0.tar.gz", b"one", token).json()
        with mirror_process(tmp_path / "m", root, origin.url) as url:
            wait_for(url, first["snapshot_version"])
        # While the mirror is down, two releases.
        post(origin.url, "demo", "demo-2.0.tar.gz", b"two", token)
        third = post(origin.url, "demo", "demo-3.0.tar.gz", b"three", token).json()
        with mirror_process(tmp_path / "m", root, origin.url) as url:
            wait_for(url, third["snapshot_version"])
            for bad in ("not-a-cid", "b" * 300):  # a clear 404, with or without a range
                for headers in ({}, {"range": "bytes=0-9"}):
                    reply = httpx.get(f"{url}/blobs/{bad}", headers=headers)
                    assert reply.status_code == 404 and "CID" in reply.text, reply.text
            with Client(tmp_path / "c", root.read_bytes(), [url]) as client:
                assert [t.path for t in client.artifacts("demo")] == [
                    "demo/demo-1.0.tar.gz",
                    "demo/demo-2.0.tar.gz",
                    "demo/demo-3.0.tar.gz",
                ]
                assert (
                    client.download("demo/demo-3.0.tar.gz", tmp_path / "o").path.read_bytes()
                    == b"three"
                )


def _cid(repo: Path) -> str:
    from tufmesh.origin import OriginRepository

    (target,) = OriginRepository(repo).artifacts()
    return target.custom["cid"]


def test_projects_and_quota_limit_what_a_mirror_keeps(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo")
    tokens = {name: add_project(repo, name) for name in ("kept", "other")}
    root = repo / "metadata" / "1.root.json"
    with running(repo) as origin:
        for name in ("a-1.tar.gz", "b-1.tar.gz", "c-1.tar.gz"):
            post(origin.url, "kept", name, os.urandom(100_000), tokens["kept"])
        post(origin.url, "other", "x-1.tar.gz", b"not wanted", tokens["other"])
        only = Mirror.create(tmp_path / "only", root, [origin.url], projects=["Kept"])
        assert only.served_timestamp() == 0
        assert only.sync().artifacts == 3
        # What its announcement gate is told it holds.
        timestamp = Metadata.from_file(str(repo / "metadata" / "timestamp.json")).signed
        assert only.served_timestamp() == timestamp.version
        # Woken with nothing new (anyone may wake a mirror): it stops at the
        # timestamp, and leaves its tree alone.
        served = (only.tree / "metadata" / "timestamp.json").stat().st_ino
        again = only.sync()
        assert again.artifacts == 3 and again.error is None and again.fetched == 0
        assert (only.tree / "metadata" / "timestamp.json").stat().st_ino == served
        # An artifact's blob quarantined, say: the next sync fetches it again.
        linked = next((only.tree / "targets").glob("*/*"))
        lost = cid_from_sha256(bytes.fromhex(linked.name.split(".", 1)[0]))
        only.store.path(lost).unlink()
        assert only.sync().fetched == 1 and only.store.has(lost)
        post(origin.url, "kept", "d-1.tar.gz", b"new", tokens["kept"])
        report = only.sync()
        assert report.artifacts == 4
        # One version's pins kept: the newest, complete one (gc reclaims the rest).
        pins = only.store.pins()
        assert [n for n in pins if n.startswith("snapshot-")] == [
            f"snapshot-{report.snapshot_version}"
        ]
        assert (only.tree / "metadata" / "timestamp.json").stat().st_ino != served
        capped = Mirror.create(tmp_path / "capped", root, [origin.url], quota=250_000)
        report = capped.sync()
        assert report.artifacts == 2 and report.over_quota == 3, report  # (it said nothing)
        assert report.over_quota_bytes == 100_000 + len(b"new") + len(b"not wanted")
        status = tufmesh("mirror", "status", "--dir", str(tmp_path / "capped"), check=False).stdout
        assert "left out by --quota\t3 artifact(s), 97.7 KiB" in status
        # A project nothing is published under (a typo?) is said, not just empty.
        typo = Mirror.create(tmp_path / "typo", root, [origin.url], projects=["Kept", "Kpet"])
        assert typo.sync().unknown_projects == ["kpet"]
        assert typo.sync().unknown_projects == ["kpet"]  # the next poll says so too
        status = tufmesh("mirror", "status", "--dir", str(tmp_path / "typo"), check=False).stdout
        assert "--projects with nothing published\tkpet" in status
        # A lower quota for the same version: its blobs go at once (they
        # stayed pinned until the origin published another version).
        for blob in capped.store:  # (fetched long ago: past the collector's grace)
            os.utime(capped.store.path(blob), (1, 1))
        capped = Mirror.create(tmp_path / "capped", root, [origin.url], quota=150_000)
        assert capped.sync().artifacts == 1
    assert {t.split("/")[0] for t in _published(only)} == {"kept"}
    assert len(_published(only)) == 4
    assert len(list(capped.store)) == 1 and len(_published(capped)) == 1


def test_a_mirror_drops_removed_artifacts_and_relinks_repaired_ones(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo")
    token = add_project(repo, "proj")
    root = repo / "metadata" / "1.root.json"
    with running(repo) as origin:
        post(origin.url, "proj", "evil-1.tar.gz", b"malware", token)
        post(origin.url, "proj", "good-1.tar.gz", b"fine", token)
        replica = Mirror.create(tmp_path / "mirror", root, [origin.url])
        assert replica.sync().artifacts == 2
    assert sorted(_published(replica)) == ["proj/evil-1.tar.gz", "proj/good-1.tar.gz"]
    tufmesh("origin", "remove", "--dir", str(repo), "proj/evil-1.tar.gz")
    with running(repo) as origin:
        replica = Mirror.create(tmp_path / "mirror", root, [origin.url])
        assert replica.sync().artifacts == 1
        # The removed artifact is no longer served, under any name.
        assert _published(replica) == ["proj/good-1.tar.gz"]
        # Bit rot in the served copy: fsck quarantines the blob, the next sync
        # fetches it again, and the served file is the good one, not the old
        # link to the corrupt bytes.
        (link,) = (replica.tree / "targets" / "proj").iterdir()
        cid = cid_from_sha256(bytes.fromhex(link.name.split(".", 1)[0]))
        os.chmod(link, 0o644)
        link.write_bytes(b"FINE")
        assert replica.store.fsck(quarantine=True).corrupt == [cid]
        assert replica.sync().fetched == 1
        assert link.read_bytes() == b"fine" and replica.store.has(cid)
    assert [p.name for p in (replica.tree / "targets" / "proj").iterdir()] == [link.name]


def test_a_running_mirror_finds_a_blob_its_disk_changed_and_fetches_it_again(
    tmp_path: Path,
) -> None:
    """Bytes changed on disk were served, and the mirror told its neighbours it
    held them, until each had banned it; /healthz said "ok" throughout."""
    repo = init_repo(tmp_path / "repo")
    token = add_project(repo, "proj")
    body = os.urandom(300_000)
    log: list[str] = []
    with running(repo) as origin:
        version = post(origin.url, "proj", "a-1.tar.gz", body, token).json()
        with mirror_process(tmp_path / "m", repo / "metadata" / "1.root.json", origin.url,
                            log=log) as url:  # fmt: skip
            wait_for(url, version["snapshot_version"])
            served = f"{url}/targets/proj/{hashlib.sha256(body).hexdigest()}.a-1.tar.gz"
            assert httpx.get(served).content == body
            blob = Mirror(tmp_path / "m").store.path(_cid(repo))
            with open(blob, "r+b") as handle:  # (the tree's file is the same inode)
                handle.seek(1000)
                handle.write(b"\xff" * 8)
            assert httpx.get(served).content != body
            end = time.monotonic() + 30
            while httpx.get(served).content != body:
                assert time.monotonic() < end, "never fetched again"
                time.sleep(0.2)
            assert httpx.get(f"{url}/healthz").json()["quarantined"] == 1
            assert "tufmesh_mirror_quarantined_total 1" in httpx.get(f"{url}/metrics").text
    said = f"mirror: 1 blob(s) corrupt on disk, quarantined, to be fetched again: {_cid(repo)}"
    assert said in log_lines(log[0]), log[0]
    assert len(list((tmp_path / "m" / "cas" / "quarantine").iterdir())) == 1


def test_a_blob_that_changes_after_its_download_is_not_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth behind the client's whole-file check: the store hashes
    a downloaded blob once more as it enters, against the CID it is kept
    under, so bytes changed in between (another process writing into
    incoming/, a disk error) are refused, not kept and served."""
    repo = init_repo(tmp_path / "repo")
    token = add_project(repo, "proj")
    root = repo / "metadata" / "1.root.json"
    download = Client.download

    def tampered(self: Client, *args: object, **kwargs: object) -> object:
        result = download(self, *args, **kwargs)  # type: ignore[arg-type]
        with open(result.path, "r+b") as handle:  # after python-tuf's check
            first = handle.read(1)
            handle.seek(0)
            handle.write(bytes([first[0] ^ 0xFF]))  # (b"X" was no change one time in 256)
        return result

    with running(repo) as origin:
        post(origin.url, "proj", "proj-1.tar.gz", os.urandom(3 << 20), token)
        replica = Mirror.create(tmp_path / "mirror", root, [origin.url])
        monkeypatch.setattr(Client, "download", tampered)
        report = replica.sync()
        assert report.error is not None and "hash" in report.error, report.error
        assert _published(replica) == []
        blobs = [cid for cid in replica.store if replica.store.stat(cid).size > 1 << 20]
        assert blobs == []  # the changed bytes were not kept under any name
        monkeypatch.undo()
        assert replica.sync().artifacts == 1 and _published(replica) == ["proj/proj-1.tar.gz"]


def _published(replica: Mirror) -> list[str]:
    return [
        f"{p.parent.name}/{p.name.split('.', 1)[1]}" for p in (replica.tree / "targets").glob("*/*")
    ]


@pytest.mark.slow
def test_a_neighbours_have_query_wakes_a_mirror_that_missed_the_announcement(
    tmp_path: Path,
) -> None:
    # m2 is not on the gossip mesh and polls every 300 s: only m1's have-queries,
    # which name the snapshot m1 is replicating, can tell it in time.
    repo = init_repo(tmp_path / "repo")
    token = add_project(repo, "demo")
    root = repo / "metadata" / "1.root.json"
    with running(repo, "--p2p-port", "0") as origin:
        origin_addr = (repo / "p2p.addr").read_text().strip()
        with mirror_process(tmp_path / "m2", root, origin.url, "--poll", "300") as m2:
            wait_for(m2, 1)
            with mirror_process(
                tmp_path / "m1", root, origin.url, "--poll", "300", "--peer", m2,
                "--p2p-port", "0", "--bootstrap", origin_addr,
            ) as m1:  # fmt: skip
                wait_for(m1, 1)
                meshed(origin.url, m1)
                published = post(origin.url, "demo", "demo-1.0.tar.gz", b"hinted", token).json()
                version = published["snapshot_version"]
                wait_for(m1, version, deadline=30)
                wait_for(m2, version, deadline=15)
                # python-tuf's own client, unmodified, gets the new artifact from m2.
                updater = tuf_updater(m2, repo)
                updater.refresh()
                info = updater.get_targetinfo("demo/demo-1.0.tar.gz")
                assert info is not None
                assert Path(updater.download_target(info)).read_bytes() == b"hinted"


def replay_announcement(
    tmp_path: Path, repo: Path, bootstrap: str, times: int, identities: int = 3
) -> None:
    """Announce the repository's current timestamp ``times`` times from each
    of ``identities`` nodes of our own (copies of one timestamp are one
    message, whoever publishes them)."""
    import trio
    from tuf.api.metadata import Metadata

    from tufmesh.p2p import AnnouncementGate, P2PNode, topic_for

    root = Metadata.from_bytes((repo / "metadata" / "1.root.json").read_bytes()).signed
    current = (repo / "metadata" / "timestamp.json").read_bytes()

    async def replay() -> None:
        nodes = [
            P2PNode(
                tmp_path / f"replayer-{i}.key",
                topic_for(root),
                AnnouncementGate(root),
                bootstrap=[bootstrap],
            )
            for i in range(identities)
        ]
        async with trio.open_nursery() as nursery:
            for node in nodes:
                await nursery.start(node.run)
            with trio.fail_after(10):
                while min(node.mesh_size() for node in nodes) < 1:  # the mesh forms
                    await trio.sleep(0.05)
            for _ in range(times):
                for node in nodes:
                    await node.announce(current)
                await trio.sleep(0.05)
            await trio.sleep(1.5)
            nursery.cancel_scope.cancel()

    trio.run(replay)
    gc.collect()  # py-libp2p's leaked sockets (see test_p2p_node), under the caller's filter


def meshed(origin: str, *mirrors: str) -> None:
    """Wait until the origin and each mirror have a gossip mesh (their first
    heartbeats graft it): an announcement goes out to mesh peers at once,
    and to the others only as gossip, heartbeats later."""
    give_up = time.monotonic() + 20
    while True:
        sizes = [httpx.get(f"{origin}/healthz").json()["p2p_mesh_peers"]]
        for mirror in mirrors:
            metrics = httpx.get(f"{mirror}/metrics").text
            sizes += [int(x.rsplit(" ", 1)[1]) for x in metrics.splitlines()
                      if x.startswith("tufmesh_mirror_p2p_mesh_peers ")]  # fmt: skip
        if len(sizes) == 1 + len(mirrors) and min(sizes) >= 1:
            return
        assert time.monotonic() < give_up, f"no gossip mesh within 20 s: {sizes}"
        time.sleep(0.1)


def _accepted(mirror: str) -> int:
    """The gossip announcements the mirror at URL ``mirror`` has accepted."""
    metrics = httpx.get(f"{mirror}/metrics").text
    line = next(x for x in metrics.splitlines() if x.startswith("tufmesh_mirror_announcements_"))
    assert 'verdict="accepted"' in line, line
    return int(line.rsplit(" ", 1)[1])


def _settled_syncs(directory: Path) -> int:
    """The mirror's sync count once it has not changed for 2 s (a second
    sync may follow the first soon: one that found its upstream behind)."""
    count, give_up = Mirror(directory).state()["syncs"], time.monotonic() + 20
    while time.monotonic() < give_up:
        time.sleep(2.0)
        count, before = Mirror(directory).state()["syncs"], count
        if count == before:
            break
    return int(count)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # see test_p2p_node
def test_announcements_over_libp2p_trigger_replication(tmp_path: Path) -> None:
    """m2 syncs from m1 (its --origin), and hears of a release over gossip,
    relayed by m1, before m1 holds it (the origin's upload is capped: m1
    takes seconds): m2 asks m1 again soon, not at its next poll."""
    repo = init_repo(tmp_path / "repo")
    token = add_project(repo, "demo")
    root = repo / "metadata" / "1.root.json"
    p2p = ("--p2p-port", "0", "--poll", "300")  # only an announcement can sync them in time
    with running(repo, "--p2p-port", "0", "--max-upload-rate", "1MiB") as origin:
        origin_addr = (repo / "p2p.addr").read_text().strip()
        assert "/p2p/" in origin_addr
        with mirror_process(
            tmp_path / "m1", root, origin.url, *p2p, "--bootstrap", origin_addr
        ) as m1:
            m1_addr = (tmp_path / "m1" / "p2p.addr").read_text().strip()
            wait_for(m1, 1)
            # m2 knows only m1 on the p2p side: the announcement is relayed to it.
            with mirror_process(tmp_path / "m2", root, m1, *p2p, "--bootstrap", m1_addr) as m2:
                wait_for(m2, 1)
                meshed(origin.url, m1, m2)
                syncs = Mirror(tmp_path / "m2").state()["syncs"]
                body = os.urandom(3 << 20)  # 3 s at the origin's rate
                published = post(origin.url, "demo", "demo-1.0.tar.gz", body, token).json()
                wait_for(m1, published["snapshot_version"], deadline=30)
                wait_for(m2, published["snapshot_version"], deadline=15)
                # It heard first: a sync found m1 behind, and another caught up.
                assert Mirror(tmp_path / "m2").state()["syncs"] - syncs >= 2
                metrics = httpx.get(f"{m2}/metrics").text
                assert "tufmesh_mirror_p2p_peers 1" in metrics
                assert 'tufmesh_mirror_announcements_total{verdict="rejected"} 0' in metrics
                assert 'tufmesh_mirror_announcements_total{verdict="accepted"} 0' not in metrics
                # The daemon records its p2p view for `mirror status` within a second.
                give_up = time.monotonic() + 10
                while True:
                    status = tufmesh("mirror", "status", "--dir", str(tmp_path / "m2")).stdout
                    if "p2p peers\t1" in status or time.monotonic() > give_up:
                        break
                    time.sleep(0.2)
                assert "p2p address\t/ip4/127.0.0.1/" in status and "p2p peers\t1" in status
                assert "lag\t0 timestamp version(s) behind" in status
                # Anyone may replay the current (validly signed) timestamp on the
                # topic: a mirror that serves it already does not sync for it,
                # and within the seen-messages window does not even check it,
                # from however many publishers it comes.
                syncs = _settled_syncs(tmp_path / "m2")
                accepted = _accepted(m2)
                replay_announcement(tmp_path, repo, m1_addr, times=20)
                assert Mirror(tmp_path / "m2").state()["syncs"] == syncs
                assert _accepted(m2) == accepted
                # A burst of commits is an announcement a second, not one each
                # (each floods the whole network).
                started = time.monotonic()
                for i in range(10):
                    burst = post(origin.url, "demo", f"demo-2.{i}.tar.gz", b"%d" % i, token)
                took = time.monotonic() - started
                wait_for(m2, burst.json()["snapshot_version"], deadline=15)
                assert 1 <= _accepted(m2) - accepted <= took / ANNOUNCE_INTERVAL + 2, took
        # The identity persists: the same peer ID after a restart.
        with mirror_process(tmp_path / "m1", root, origin.url, *p2p, "--bootstrap", origin_addr):
            again = (tmp_path / "m1" / "p2p.addr").read_text().strip()
        assert again.rsplit("/p2p/", 1)[1] == m1_addr.rsplit("/p2p/", 1)[1]


@pytest.mark.slow
def test_five_mirrors_in_a_random_graph_spare_the_origin(tmp_path: Path) -> None:
    import random

    repo = init_repo(tmp_path / "repo")
    token = add_project(repo, "demo")
    root = repo / "metadata" / "1.root.json"
    body = os.urandom(20 * (1 << 20))
    # The origin's upload is the scarce link tufmesh is built around; on
    # loopback it would outrun the have-records (0.25 s rounds) by far.
    with running(repo, "--p2p-port", "0", "--max-upload-rate", "10MiB") as origin:
        url = origin.url
        addrs = {"origin": (repo / "p2p.addr").read_text().strip()}
        urls: dict[str, str] = {}
        rng = random.Random(5)
        with contextlib.ExitStack() as stack:
            for n in range(5):
                name = f"m{n}"
                # Only the first mirror knows the origin's p2p address; the
                # others bootstrap to one or two earlier mirrors, chosen at random.
                earlier = [f"m{i}" for i in range(n)]
                known = (
                    rng.sample(earlier, min(len(earlier), rng.choice([1, 2]))) if n else ["origin"]
                )
                extra = ["--p2p-port", "0", "--poll", "60"]
                for peer in known:
                    extra += ["--bootstrap", addrs[peer]]
                    if peer != "origin":
                        extra += ["--peer", urls[peer]]
                urls[name] = stack.enter_context(mirror_process(tmp_path / name, root, url, *extra))
                addrs[name] = (tmp_path / name / "p2p.addr").read_text().strip()
            for name in urls:
                wait_for(urls[name], 1)
            meshed(url, *urls.values())
            version = post(url, "demo", "demo-1.0.tar.gz", body, token).json()["snapshot_version"]
            for name in urls:
                wait_for(urls[name], version, deadline=60)
            served = httpx.get(f"{url}/healthz").json()["bytes_served"]
            assert served <= 2 * len(body), f"origin served {served / len(body):.2f}x"
            with Client(tmp_path / "client", root.read_bytes(), list(urls.values())) as client:
                result = client.download("demo/demo-1.0.tar.gz", tmp_path / "out")
            assert result.path.read_bytes() == body
    for name in urls:
        assert Mirror(tmp_path / name).store.fsck().ok


@pytest.mark.slow
# py-libp2p leaves dialled sockets to the garbage collector (see test_p2p_node).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_mirror_without_a_reachable_http_port_trades_chunks_over_libp2p(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo")
    token = add_project(repo, "demo")
    root = repo / "metadata" / "1.root.json"
    body = os.urandom(8 << 20)
    # The origin's upload is scarce, so each mirror gets only its share of the
    # chunks from it and must take the rest from the other.
    with running(repo, "--p2p-port", "0", "--max-upload-rate", "2MiB") as origin:
        origin_addr = (repo / "p2p.addr").read_text().strip()
        p2p = ("--p2p-port", "0", "--poll", "300", "--bootstrap", origin_addr)
        with mirror_process(tmp_path / "m2", root, origin.url, *p2p, "--p2p-only") as m2:
            m2_addr = (tmp_path / "m2" / "p2p.addr").read_text().strip()
            # m1 asks m2 from the start (and its have-queries, naming the
            # release, wake m2 if the announcement has not): before, m1 heard
            # of m2 only from m2's own queries, and a late m2 left m1 to take
            # every chunk from the origin.
            with mirror_process(
                tmp_path / "m1", root, origin.url, *p2p, "--peer", f"libp2p:{m2_addr}"
            ) as m1:
                wait_for(m1, 1)
                wait_for(m2, 1)
                meshed(origin.url, m1, m2)
                version = post(origin.url, "demo", "demo-1.0.tar.gz", body, token).json()
                wait_for(m1, version["snapshot_version"], deadline=60)
                wait_for(m2, version["snapshot_version"], deadline=60)
    fetched = Mirror(tmp_path / "m1").state()["bytes_fetched_by_source"]
    over_libp2p = {source: n for source, n in fetched.items() if source.startswith("libp2p:")}
    assert over_libp2p and sum(over_libp2p.values()) > 0, fetched  # /tufmesh/blob/1 carried chunks
    for name in ("m1", "m2"):
        replica = Mirror(tmp_path / name)
        assert replica.store.fsck().ok and replica.store.read(_cid(repo)) == body


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_peer_on_a_slow_uplink_is_taken_at_its_pace_not_banned(tmp_path: Path) -> None:
    """m2 serves at most 200 KiB/s, over libp2p only: 5 s a 1 MiB chunk, past
    the 3 s slow-retrieval grace but three times the 64 KiB/s floor. It holds
    the release when m1 starts with it as its ``--peer libp2p:...``, so m1
    asks m2 first and m2 answers that it holds it all. m1 gave up and banned
    this honest peer: its chunks were paced whole (the second waited 5 s, then
    came at once), four uploads at once went at 50 KiB/s each, and libp2p
    bytes were counted only once a chunk was whole. (A mirror reached over
    libp2p only could not be a --peer at all: m1 heard of it only if it asked.)"""
    repo = init_repo(tmp_path / "repo")
    token = add_project(repo, "demo")
    root = repo / "metadata" / "1.root.json"
    body = os.urandom((2 << 20) + 1000)
    with running(repo, "--p2p-port", "0") as origin:
        version = post(origin.url, "demo", "demo-1.0.tar.gz", body, token).json()
        with mirror_process(
            tmp_path / "m2", root, origin.url, "--p2p-port", "0", "--p2p-only",
            "--max-upload-rate", "200KiB",
        ) as m2:  # fmt: skip
            wait_for(m2, version["snapshot_version"], deadline=60)
            m2_addr = (tmp_path / "m2" / "p2p.addr").read_text().strip()
            with mirror_process(
                tmp_path / "m1", root, origin.url, "--p2p-port", "0", "--peer", f"libp2p:{m2_addr}"
            ) as m1:
                wait_for(m1, version["snapshot_version"], deadline=60)
    state = Mirror(tmp_path / "m1").state()
    by_source = state["bytes_fetched_by_source"]
    from_m2 = sum(n for source, n in by_source.items() if source.startswith("libp2p:"))
    assert from_m2 >= 1 << 20, state  # a whole chunk at least, at m2's pace
    assert state["bans"] == 0, state
    assert Mirror(tmp_path / "m1").store.read(version["cid"]) == body


def _small_disk() -> list[str] | None:
    """A command prefix that runs what follows with a 12 MiB tmpfs mounted on
    ``$1``, in a mount namespace of its own; None where this machine allows none."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    script = 'mount -t tmpfs -o size=12m tmpfs "$1" && shift && exec "$@"'
    prefix = [unshare, "-m" if os.geteuid() == 0 else "-rm", "sh", "-c", script, "sh"]
    probe = subprocess.run([*prefix, "/mnt", "true"], capture_output=True, timeout=30)
    return prefix if probe.returncode == 0 else None


def test_a_full_disk_fails_a_sync_and_the_mirror_serves_on(tmp_path: Path) -> None:
    """A release bigger than the mirror's disk ended the daemon with a
    traceback and "cannot serve on ...: No space left on device"."""
    prefix = _small_disk()
    if prefix is None:
        pytest.skip("this machine allows no mount namespace (unshare -m)")
    repo = init_repo(tmp_path / "repo")
    token = add_project(repo, "demo")
    small, big = os.urandom(100_000), os.urandom(20 << 20)
    (tmp_path / "m").mkdir()
    with running(repo) as origin:
        version = post(origin.url, "demo", "small-1.0.tar.gz", small, token).json()
        args = [TUFMESH, "mirror", "run", "--dir", str(tmp_path / "m"), "--root",
                str(repo / "metadata" / "1.root.json"), "--origin", origin.url,
                "--http-port", "0", "--poll", "0.5"]  # fmt: skip
        proc = subprocess.Popen(
            [*prefix, str(tmp_path / "m"), *args], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().rsplit(" on ", 1)[1].strip()
            wait_for(url, version["snapshot_version"])
            post(origin.url, "demo", "big-1.0.tar.gz", big, token)
            end = time.monotonic() + 60
            while "No space left on device" not in str(
                health := httpx.get(f"{url}/healthz").json()
            ):
                assert time.monotonic() < end and proc.poll() is None, health
                time.sleep(0.2)
            assert health["status"] == "degraded", health
            assert health["artifacts"] == 1, health  # what it serves (it said 0)
            time.sleep(2)  # syncs go on failing, and the daemon on serving
            served = httpx.get(
                f"{url}/targets/demo/{hashlib.sha256(small).hexdigest()}.small-1.0.tar.gz"
            )
            assert proc.poll() is None and served.content == small
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err
    failures = [line for line in err.splitlines() if "sync failed" in line]
    assert failures and all("cannot write" in f and "No space left" in f for f in failures), err
    assert "(free space, or have the mirror keep fewer bytes: --quota SIZE)" in failures[0]


@pytest.mark.attack
def test_malformed_requests_get_answers_not_server_errors(tmp_path: Path) -> None:
    """Whatever a client sends (odd paths, ranges, headers, have-queries, uploads),
    the origin and a mirror answer it: no 5xx but a busy 503."""
    repo = init_repo(tmp_path / "repo")
    token = add_project(repo, "demo")
    root = repo / "metadata" / "1.root.json"
    rng = random.Random(5)
    alphabet = string.printable + "\u00b2\u0661\u00e9/%.."

    def junk(most: int) -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, most)))

    def raw(text: str) -> bytes:  # a header as a server decodes it: latin-1
        return text.encode("latin-1", "ignore")

    log: list[str] = []
    with running(repo) as origin:
        release = post(origin.url, "demo", "demo-1.0.tar.gz", os.urandom(3 << 20), token).json()
        with mirror_process(tmp_path / "m", root, origin.url, log=log) as url:
            wait_for(url, release["snapshot_version"])
            cid = _cid(repo)
            have = [b"", b"{", b"[]", b'{"cids": 5}', b'{"cids": [5, null], "from": 7}',
                    f'{{"cids": ["{cid}"], "from": "libp2p:/x", "snapshot": 1e300}}'.encode(),
                    b'{"cids": ["' + b"x" * 5000 + b'"]}', b"\xff\xfe", b"[" * 5000,
                    b'{"cids": [' + b'"x", ' * 300_000 + b'"x"]}']  # fmt: skip
            ranges = ["bytes=0-0", "bytes=0-18446744073709551616", "bytes=3145727-99999999999",
                      "bytes=00000000000000000000-1", "bytes=\u00b2-5"]  # fmt: skip
            requests: list[tuple[str, str, dict[str, object]]] = []
            for _ in range(150):
                where = rng.choice(["/metadata/", "/targets/demo/", "/blobs/", "/have", "/"])
                headers = {"range": raw(junk(12)), "x-tufmesh-mirror": rng.choice(["1", "patient"])}
                requests.append(("GET", where + junk(20), {"headers": headers}))
            requests += [("POST", "/have", {"content": body}) for body in have]
            requests += [("GET", f"/blobs/{cid}", {"headers": {"range": raw(r)}}) for r in ranges]
            for name in ("..", "%2e%2e", "x" * 300, "a b", "a\u00e9.whl"):
                auth = {"authorization": f"Bearer {token}"}
                requests.append(("POST", f"/api/v1/projects/demo/files/{name}", {"headers": auth}))
            # A connection each: a server may close one whose body it did not read.
            once = httpx.Limits(max_keepalive_connections=0)
            with httpx.Client(timeout=10, limits=once) as client:
                for base in (origin.url, url):
                    for method, path, options in requests:
                        try:
                            reply = client.request(method, base + path, **options)  # type: ignore[arg-type]
                        except (httpx.InvalidURL, httpx.LocalProtocolError, UnicodeError):
                            continue  # httpx will not send it: not a request a server sees
                        assert reply.status_code < 500 or reply.status_code == 503, (
                            method, path, options, reply.status_code, reply.text[:200],
                        )  # fmt: skip
                # Over 8 KiB, or nested too deep to parse: refused, by the mirror.
                for body, status in [(have[-1], 413), (b"[" * 5000, 400)]:
                    refused = client.post(f"{url}/have", content=body)
                    assert refused.status_code == status, (status, refused.text[:200])
            # A have-query whose body never finishes holds its connection for
            # QUERY_TIMEOUT, not for ever.
            host, port = url.removeprefix("http://").rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=10) as slow:
                slow.sendall(b"POST /have HTTP/1.1\r\nHost: m\r\nContent-Length: 8000\r\n\r\n{")
                started = time.monotonic()
                answer = slow.recv(200)
                assert answer.startswith(b"HTTP/1.1 408"), answer
                assert time.monotonic() - started < QUERY_TIMEOUT + 5
            # One whose asker hangs up mid-body (a have-query given up on).
            with socket.create_connection((host, int(port)), timeout=10) as gone:
                gone.sendall(b"POST /have HTTP/1.1\r\nHost: m\r\nContent-Length: 8000\r\n\r\n{")
            wait_for(url, release["snapshot_version"])  # still serving
    # ...and not one of these left a traceback in the mirror's log (a client
    # that hung up mid-query did: Starlette's ClientDisconnect).
    assert "Traceback" not in log[0], log[0]


def test_a_bug_in_a_sync_is_reported_and_the_daemon_keeps_serving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An exception no one expected (a bug of ours) ends one sync, not the
    daemon: /healthz and `mirror status` report it, its traceback is printed
    once, and the next sync runs."""
    import trio

    from tufmesh.mirror._server import run_mirror

    repo = init_repo(tmp_path / "repo")
    root = repo / "metadata" / "1.root.json"
    calls = []

    class Buggy(Mirror):
        def sync(self, swarm: object = None) -> object:  # type: ignore[override]
            calls.append(1)
            raise RuntimeError("a bug")

    replica = Mirror.create(tmp_path / "m", root, ["http://127.0.0.1:9"])
    buggy = Buggy(replica.dir)
    health: list[dict] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(
                lambda task_status: run_mirror(
                    buggy, "127.0.0.1", 0, 0.2, on_ready=task_status.started
                )
            )
            await trio.sleep(1.0)
            async with httpx.AsyncClient() as client:
                health.append((await client.get(f"{url}/healthz")).json())
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert len(calls) >= 3  # it went on syncing
    assert health[0]["status"] == "degraded"
    assert "internal error: RuntimeError: a bug" in (health[0]["last_error"] or "")
    assert capsys.readouterr().err.count("Traceback") == 1


def test_one_mirror_per_directory_and_a_stop_does_not_wait_for_a_sync(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo")
    token = add_project(repo, "demo")
    root = repo / "metadata" / "1.root.json"
    args = [TUFMESH, "mirror", "run", "--dir", str(tmp_path / "m"), "--root", str(root),
            "--http-port", "0", "--poll", "0.5"]  # fmt: skip
    with running(repo, "--max-upload-rate", "1MiB") as origin:
        post(origin.url, "demo", "demo-1.0.tar.gz", os.urandom(24 << 20), token)
        # A sync of 24 MiB at 1 MiB/s has 20 s to go after 2 s: a stop
        # (SIGTERM, then Ctrl-C) ends it at once, and the next run takes over.
        for stop in (signal.SIGTERM, signal.SIGINT):
            proc = subprocess.Popen(
                [*args, "--origin", origin.url],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert proc.stdout is not None and "serving on" in proc.stdout.readline()
            settings = (tmp_path / "m" / "mirror.json").read_bytes()
            second = subprocess.run(
                [*args, "--origin", "http://127.0.0.1:1", "--quota", "1", "--projects", "x"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert second.returncode == 1, second.stderr
            assert "another mirror is running in" in second.stderr
            assert "Traceback" not in second.stderr
            assert (tmp_path / "m" / "mirror.json").read_bytes() == settings  # untouched
            time.sleep(1.5)  # into the sync
            started = time.monotonic()
            proc.send_signal(stop)
            _, err = proc.communicate(timeout=60)
            assert time.monotonic() - started < 10, err
            assert "Traceback" not in err, err
    # What a stop mid-sync leaves is tidied at the next start: a download the
    # store already holds, an atomic write's temporary file; not a download
    # still to resume.
    replica = Mirror(tmp_path / "m")
    held = replica.store.put(b"already stored")
    leftovers = [tmp_path / "m" / "incoming" / held, tmp_path / "m" / ".state.json.tmp-1"]
    for path in leftovers:
        path.write_bytes(b"x")
    resumable = list((tmp_path / "m" / "incoming").glob("*.part"))
    assert resumable  # the 24 MiB download cut short
    with mirror_process(tmp_path / "m", root, "http://127.0.0.1:1"):
        assert not any(path.exists() for path in leftovers)
        assert all(path.exists() for path in resumable)


def test_signed_entries_cannot_name_files_outside_the_tree_or_other_blobs(
    tmp_path: Path,
) -> None:
    """A mirror names its copy of a target from the signed entry; a holder of a
    signing key (even the origin's online bin key) must not be able to make it
    write outside its tree, or serve one blob under another artifact's name."""
    from tuf.api.metadata import TargetFile

    from tufmesh.mirror._mirror import servable

    outside = tmp_path / "outside"
    outside.mkdir()
    mirror = Mirror(tmp_path / "mirror")
    for sub in ("tree/metadata", "tree/targets", "client"):
        (mirror.dir / sub).mkdir(parents=True, exist_ok=True)
    payload, other = b"import os  # an artifact the attacker published\n", b"the real artifact\n"
    cid = mirror.store.put(payload)
    sha = hashlib.sha256(payload).hexdigest()

    def entry(path: str, sha256: str, **custom: object) -> TargetFile:
        return TargetFile(
            len(payload),
            {"sha256": sha256},
            path,
            unrecognized_fields={"custom": {"cid": cid, **custom}},
        )

    bad = [
        entry("proj/pth", f"{outside}/evil"),  # an absolute digest
        entry("proj/pth", f"../../../{outside.name}/evil"),  # a relative one
        entry("../outside/x.whl", sha),  # a path out of the tree
        entry("proj/sub/x.whl", sha),  # a separator in the file name
        entry("Proj/x.whl", sha),  # not the project's normal form
        entry("proj/x.whl", hashlib.sha256(other).hexdigest()),  # not this blob
        entry("proj/x.whl", sha, manifest="../../etc"),  # a manifest that is no CID
    ]
    good = entry("proj/x.whl", sha)
    assert [servable(t) for t in bad] == [None] * len(bad)
    assert servable(good) is not None

    class Cache:
        metadata_dir = mirror.dir / "client"

    kept = [e for t in [*bad, good] if (e := servable(t)) is not None]
    mirror._publish(Cache(), kept)  # type: ignore[arg-type]
    assert list(outside.iterdir()) == []
    linked = sorted(p.relative_to(mirror.tree) for p in (mirror.tree / "targets").rglob("*"))
    assert linked == [Path("targets/proj"), Path(f"targets/proj/{sha}.x.whl")]
    assert (mirror.tree / "targets" / "proj" / f"{sha}.x.whl").read_bytes() == payload


def test_a_mirror_deletes_superseded_metadata_after_its_grace(tmp_path: Path) -> None:
    """A mirror wrote every version of the snapshot and of the bins it synced
    and deleted none: its metadata grew by two files a commit for ever (a
    soak: 762 files after 370 uploads, the origin's 648). A version replaced
    SUPERSEDED_GRACE ago or more now goes, as at the origin; root's chain
    stays, and a stock client still follows the mirror's tree."""
    meta = tmp_path / "m" / "tree" / "metadata"
    snapshots = lambda: _versions(meta, "snapshot")  # noqa: E731
    with _a_mirror_of_one_project(tmp_path) as (url, replica, token, repo):
        for i in range(3):
            assert post(url, "proj", f"a-{i}.tar.gz", bytes([i]) * 10, token).is_success
            assert replica.sync().error is None
        before = snapshots()
        assert len(before) == 3  # replaced just now: kept
        _written_before_the_grace(meta)
        assert post(url, "proj", "a-3.tar.gz", b"three", token).is_success
        assert replica.sync().error is None
    after = snapshots()
    assert after == [before[-1], after[-1]] and after[-1] > before[-1]
    assert (meta / "1.root.json").exists()
    with static_server(tmp_path / "m" / "tree") as url:
        assert tuf_download(url, repo, "proj/a-3.tar.gz") == b"three"
        assert tuf_download(url, repo, "proj/a-0.tar.gz") == bytes([0]) * 10


@pytest.mark.parametrize("moved_on", [False, True], ids=["served-later", "skipped"])
def test_a_version_a_stopped_sync_wrote_is_current_from_when_it_is_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moved_on: bool
) -> None:
    """A sync stopped before its timestamp (SIGTERM, a full disk) leaves the
    next version's files written, not served; the sync that serves them must
    date them then, or the version served until that moment went at once
    (its successor's file was old), under clients still reading it. And if
    the origin has moved on meanwhile, the version never served is dropped,
    for the same reason (its old file was taken as the served one's
    replacement)."""
    import tufmesh.mirror._mirror as mirror_module

    meta = tmp_path / "m" / "tree" / "metadata"
    snapshots = lambda: _versions(meta, "snapshot")  # noqa: E731
    with _a_mirror_of_one_project(tmp_path) as (url, replica, token, _):
        assert post(url, "proj", "a-0.tar.gz", b"zero", token).is_success
        assert replica.sync().error is None
        served = snapshots()[-1]
        assert post(url, "proj", "a-1.tar.gz", b"one", token).is_success
        real = mirror_module.write_atomic

        def full_at_the_timestamp(path: Path, data: bytes, **kwargs: Any) -> None:
            if path.name == "timestamp.json":
                raise OSError(28, "No space left on device")
            real(path, data, **kwargs)

        with monkeypatch.context() as patched:
            patched.setattr(mirror_module, "write_atomic", full_at_the_timestamp)
            with contextlib.suppress(OSError):
                replica.sync()
        unserved = snapshots()[-1]
        assert unserved > served  # written, not served
        _written_before_the_grace(meta)
        if moved_on:
            assert post(url, "proj", "a-2.tar.gz", b"two", token).is_success
        assert replica.sync().error is None
    assert served in snapshots()  # replaced just now: kept for the grace
    assert (unserved in snapshots()) is not moved_on


def _versions(metadata: Path, role: str) -> list[int]:
    """The versions of ``role`` in a TUF tree's ``metadata`` directory."""
    return sorted(int(p.name.split(".", 1)[0]) for p in metadata.glob(f"*.{role}.json"))


def _written_before_the_grace(metadata: Path) -> None:
    """Date every metadata file as written before the superseded grace."""
    old = time.time() - SUPERSEDED_GRACE - 1
    for p in metadata.glob("*.json"):
        os.utime(p, (old, old))


@contextmanager
def _a_mirror_of_one_project(tmp_path: Path) -> Iterator[tuple[str, Mirror, str, Path]]:
    """An origin serving project "proj", and a mirror of it in ``tmp_path/m``
    (synced by hand): (origin URL, mirror, upload token, repository)."""
    repo = init_repo(tmp_path / "repo")
    token = add_project(repo, "proj")
    with running(repo) as server:
        replica = Mirror.create(tmp_path / "m", repo / "metadata" / "1.root.json", [server.url])
        yield server.url, replica, token, repo


def test_metrics_escape_a_sources_name(tmp_path: Path) -> None:
    """A source's name went into /metrics as it is: a quote or a line break
    in it broke the exposition (and with it every scrape of the mirror)."""
    repo = init_repo(tmp_path / "repo")
    replica = Mirror.create(tmp_path / "m", repo / "metadata" / "1.root.json", ["http://o:1"])
    odd = 'libp2p:/ip4/192.0.2.1/tcp/1/p2p/Q"} 9\nevil 1\\'
    replica._update_state(lambda state: state.update(bytes_fetched_by_source={odd: 5}))

    async def metrics() -> str:
        transport = httpx.ASGITransport(app=build_mirror_app(replica))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
            return (await client.get("/metrics")).text

    said = trio.run(metrics)
    assert 'source="libp2p:/ip4/192.0.2.1/tcp/1/p2p/Q\\"} 9\\nevil 1\\\\"} 5\n' in said
    assert not any(line.startswith("evil") for line in said.splitlines())
