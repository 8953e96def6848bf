"""The origin as real processes, checked by python-tuf's own client."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)
from tuf.api.metadata import Metadata, Root

from tests.helpers.log import log_lines
from tests.helpers.origin import (
    TUFMESH,
    add_project,
    committer_of,
    init_repo,
    post,
    publish_as_committer_dies,
    running,
    snapshot_version,
    start_server,
    tuf_download,
    tuf_updater,
    tufmesh,
)
from tufmesh.cas import BlobStore
from tufmesh.errors import OriginError
from tufmesh.mirror import Mirror
from tufmesh.origin import Artifact, OriginConfig, OriginRepository
from tufmesh.origin._keys import generate_file_key, pair_public_keys, public_key_from_pem
from tufmesh.origin._names import MAX_FILENAME_BYTES


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return init_repo(tmp_path / "repo")


class _Quiet(http.server.BaseHTTPRequestHandler):
    """A stand-in server's handler: logs nothing, answers with :meth:`reply`."""

    def log_message(self, *args: object) -> None:
        pass

    def reply(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def _served_by(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """A stdlib HTTP server on 127.0.0.1 answering with ``handler``: its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_publish_then_stock_python_tuf_downloads(repo: Path, tmp_path: Path) -> None:
    token = add_project(repo, "Demo_Pkg")
    artifact = tmp_path / "demo_pkg-1.0.tar.gz"
    artifact.write_bytes(os.urandom(2_500_000))
    with running(repo) as server:
        out = tufmesh(
            "publish", str(artifact), "--origin", server.url, "--project", "demo-pkg",
            env={**os.environ, "TUFMESH_TOKEN": token},
        ).stdout  # fmt: skip
        assert out.startswith("published demo-pkg/demo_pkg-1.0.tar.gz")
        # Who published what, and when: after a token leaks, what came with it.
        (entry,) = [json.loads(line) for line in (repo / "uploads.log").read_text().splitlines()]
        assert entry["target"] == "demo-pkg/demo_pkg-1.0.tar.gz" and entry["from"] == "127.0.0.1"
        assert entry["token"] == hashlib.sha256(token.encode()).hexdigest()[:12]
        assert entry["sha256"] == hashlib.sha256(artifact.read_bytes()).hexdigest()
        secret = tmp_path / "signing.pem"  # (dist/* in the directory of the key)
        secret.write_bytes(b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI\n")
        pgp = tmp_path / "release.asc"
        pgp.write_bytes(b"\xef\xbb\xbf\n-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBF\n")
        fifo = tmp_path / "pipe-1.0.tar"  # (opened to look for a key, it would wait)
        os.mkfifo(fifo)
        for path, given, said in [
            (secret, token, "signing.pem is a private key, not an artifact"),
            (pgp, token, "release.asc is a private key, not an artifact"),
            (fifo, token, "pipe-1.0.tar: not a regular file"),
            (tmp_path / "missing.tar.gz", token, "missing.tar.gz: no such file"),
            (tmp_path, token, ": not a regular file"),
            (artifact, " ", "--token: an upload token is one line"),
        ]:
            bad = tufmesh("publish", str(path), "--origin", server.url, "--project", "demo-pkg",
                          "--token", given, check=False)  # fmt: skip
            assert bad.returncode == 1 and said in bad.stderr, bad.stderr
        assert (
            tuf_download(server.url, repo, "demo-pkg/demo_pkg-1.0.tar.gz") == artifact.read_bytes()
        )
        updater = tuf_updater(server.url, repo)
        updater.refresh()
        info = updater.get_targetinfo("demo-pkg/demo_pkg-1.0.tar.gz")
        assert info is not None
        custom = info.custom
        assert custom["chunk_size"] == 1 << 20
        # The signed custom fields name the blob and its manifest, served with Range.
        blob = httpx.get(f"{server.url}/blobs/{custom['cid']}", headers={"range": "bytes=10-19"})
        assert blob.status_code == 206 and blob.content == artifact.read_bytes()[10:20]
        # Header bytes decode as latin-1: 0xB2 is "²", a digit to str.isdigit only.
        for odd in (
            b"bytes=\xb2-5",
            b"bytes=0-\xb2",
            "bytes=\u0661-\u0662".encode(),
            b"bytes=0-1,\xb2",
        ):
            for mirror in ({}, {"x-tufmesh-mirror": "1"}):
                reply = httpx.get(
                    f"{server.url}/blobs/{custom['cid']}", headers={"range": odd, **mirror}
                )
                assert reply.status_code < 500, (odd, reply.status_code)
        manifest = BlobStore(repo / "cas").read_manifest(custom["manifest"])
        assert manifest.blob_cid == custom["cid"] and manifest.count == 3
        health = httpx.get(f"{server.url}/healthz").json()
        assert health["status"] == "ok" and health["published"] == 1
    # The published tree is the standard TUF layout with consistent snapshots.
    names = {p.name for p in (repo / "metadata").iterdir()}
    assert {
        "1.root.json",
        "timestamp.json",
        "2.snapshot.json",
        "1.targets.json",
        "1.bins.json",
    } <= names
    sha = info.hashes["sha256"]
    linked = repo / "targets" / "demo-pkg" / f"{sha}.demo_pkg-1.0.tar.gz"
    blob_path = BlobStore(repo / "cas").path(custom["cid"])
    assert linked.stat().st_ino == blob_path.stat().st_ino  # no second copy of the bytes


def test_the_longest_file_names_are_served_to_stock_clients(repo: Path) -> None:
    """A target's link is ``<sha256>.<filename>``: the server checked the
    whole link against the file name's 190-byte limit, so names of 126-190
    bytes were published and signed and never served to a stock client."""
    token = add_project(repo, "proj")
    names = ["b" * 125, "b" * 126, "a" * (MAX_FILENAME_BYTES - 7) + ".tar.gz"]
    with running(repo) as server:
        for name in names:
            assert post(server.url, "proj", name, name.encode(), token).is_success
        for name in names:
            assert tuf_download(server.url, repo, f"proj/{name}") == name.encode()
        sha = hashlib.sha256(names[0].encode()).hexdigest()
        for odd in (names[0], f"{sha}{names[0]}", f"{sha[:-1]}.{names[0]}", f"{sha}.", f"{sha}.."):
            assert httpx.get(f"{server.url}/targets/proj/{odd}").status_code == 404, odd


def test_concurrent_uploads_are_group_committed(repo: Path) -> None:
    tokens = {name: add_project(repo, name) for name in ("alpha", "beta", "gamma")}
    bodies = {i: os.urandom(random.randrange(1, 200_000)) for i in range(50)}
    with running(repo) as server:
        before = snapshot_version(repo)

        together = threading.Barrier(50)  # all at once, as a busy origin sees them

        def send(i: int) -> httpx.Response:
            project = ("alpha", "beta", "gamma")[i % 3]
            together.wait()
            return post(server.url, project, f"{project}-{i}.tar.gz", bodies[i], tokens[project])

        with ThreadPoolExecutor(max_workers=50) as pool:
            responses = list(pool.map(send, range(50)))
        assert [r.status_code for r in responses] == [200] * 50
        targets = [r.json()["target"] for r in responses]
        assert len(set(targets)) == 50
        commits = snapshot_version(repo) - before
        print(f"{commits} snapshots for 50 uploads")
        # Without group commit, 50. Here 6-17 on two idle cores, 28 once while
        # the machine was loaded: a bound well under one per upload.
        assert 1 <= commits <= 35, f"{commits} snapshots for 50 uploads"
        updater = tuf_updater(server.url, repo)
        updater.refresh()
        for i, target in enumerate(targets):
            info = updater.get_targetinfo(target)
            assert info is not None and info.length == len(bodies[i])
            assert Path(updater.download_target(info)).read_bytes() == bodies[i]


def chunked(url: str, project: str, filename: str, body: bytes, token: str) -> httpx.Response:
    """An upload that declares no length (chunked transfer encoding)."""
    return httpx.post(
        f"{url}/api/v1/projects/{project}/files/{filename}", content=iter([body]),
        headers={"authorization": f"Bearer {token}"}, timeout=60,
    )  # fmt: skip


def test_refusals_publish_nothing_and_leave_only_garbage(repo: Path) -> None:
    token_a = add_project(repo, "proj-a")
    token_b = add_project(repo, "proj-b")
    store = BlobStore(repo / "cas")
    with running(repo) as server:
        assert post(server.url, "proj-a", "a-1.0.tar.gz", b"original", token_a).status_code == 200
        version, blobs = snapshot_version(repo), set(store)
        cases = [
            ("missing token", post(server.url, "proj-a", "a-2.tar.gz", b"x", None), 401),
            ("wrong token", post(server.url, "proj-a", "a-2.tar.gz", b"x", "tufmesh_nope"), 401),
            ("other project", post(server.url, "proj-a", "a-2.tar.gz", b"x", token_b), 403),
            # (another length: refused unread; the same length: stored, then refused)
            ("immutable", post(server.url, "proj-a", "a-1.0.tar.gz", b"changed", token_a), 409),
            ("same length", post(server.url, "proj-a", "a-1.0.tar.gz", b"ORIGINAL", token_a), 409),
            # (no length: read up to the published one; past it, the same refusal)
            (
                "no length",
                chunked(server.url, "proj-a", "a-1.0.tar.gz", b"longer one", token_a),
                409,
            ),
            ("bad project", post(server.url, "-bad-", "a-2.tar.gz", b"x", token_a), 400),
            ("dotdot", post(server.url, "proj-a", "a..tar.gz", b"x", token_a), 400),
            ("hidden", post(server.url, "proj-a", ".hidden", b"x", token_a), 400),
            ("control", post(server.url, "proj-a", "a%01b.tar.gz", b"x", token_a), 400),
            ("backslash", post(server.url, "proj-a", "a%5Cb.tar.gz", b"x", token_a), 400),
            ("too long", post(server.url, "proj-a", "a" * 256, b"x", token_a), 400),
            ("too long to link", post(server.url, "proj-a", "a" * 191, b"x", token_a), 400),
        ]
        for name, response, status in cases:
            assert response.status_code == status, (name, response.text)
            assert response.json()["error"], name
            if status == 409:  # (it said "upload over the 8-byte limit" without a length)
                assert response.json()["error"].endswith("artifacts are immutable"), name
            assert snapshot_version(repo) == version, name
        # The refused bytes of the 409 stay in the store unpinned (deleting them
        # at once would race an upload of the same bytes), and gc removes them;
        # meanwhile they count against the project's quota.
        pinned = frozenset().union(*store.pins().values())
        assert blobs <= pinned and set(store) - blobs
        assert not (set(store) - blobs) & pinned
        store.gc(grace_seconds=0)
        assert set(store) == blobs
        same = post(server.url, "proj-a", "a-1.0.tar.gz", b"original", token_a)
        assert same.status_code == 200  # idempotent
        assert (
            same.json()["sha256"]
            == post(server.url, "proj-a", "a-1.0.tar.gz", b"original", token_a).json()["sha256"]
        )
        assert snapshot_version(repo) == version
        # An honest upload still works after all that.
        assert post(server.url, "proj-b", "b-1.0.tar.gz", b"fine", token_b).status_code == 200
        assert tuf_download(server.url, repo, "proj-b/b-1.0.tar.gz") == b"fine"


def test_a_project_past_its_quota_is_refused_in_one_line(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo", "--project-quota", "100KiB")
    token = add_project(repo, "greedy")
    (tmp_path / "a.whl").write_bytes(os.urandom(60_000))
    (tmp_path / "b.whl").write_bytes(os.urandom(60_000))
    with running(repo) as server:
        publish = ("publish", "--origin", server.url, "--project", "greedy", "--token", token)
        tufmesh(*publish, str(tmp_path / "a.whl"))
        version, blobs = snapshot_version(repo), set(BlobStore(repo / "cas"))
        # Refused before its body is read: the bytes of uploads past a quota
        # no longer wait on the origin's disk for the collector.
        refused = tufmesh(*publish, str(tmp_path / "b.whl"), check=False)
        assert refused.returncode == 1 and "greedy has 42,400 bytes of its quota left" in (
            refused.stderr
        )
        assert "Traceback" not in refused.stderr and snapshot_version(repo) == version
        assert set(BlobStore(repo / "cas")) == blobs
        # Without a length, read up to the quota: refused in the same words.
        body = (tmp_path / "b.whl").read_bytes()
        unsized = chunked(server.url, "greedy", "b.whl", body, token)
        assert unsized.status_code == 413, unsized.text
        assert unsized.json()["error"] == "greedy has 42,400 bytes of its quota left"
        assert set(BlobStore(repo / "cas")) == blobs  # (what it read was not kept)
        # The same bytes again (a retry whose answer was lost): published, as before.
        again = post(server.url, "greedy", "a.whl", (tmp_path / "a.whl").read_bytes(), token)
        assert again.status_code == 200 and snapshot_version(repo) == version
        # Other bytes of the same length under the published name: each is
        # stored, then refused, and waits for the collector; they count
        # against the quota meanwhile (they filled the disk unbounded).
        statuses = [
            post(server.url, "greedy", "a.whl", os.urandom(60_000), token).status_code
            for _ in range(3)
        ]
        assert statuses == [409, 413, 413], statuses
        other = post(server.url, "greedy", "c.whl", b"small", token)
        assert other.status_code == 413 and "quota" in other.json()["error"]
        # The list of projects damaged while serving: a refusal that says so,
        # not a server error with a traceback in the log.
        (repo / "projects.json").write_text("garbage")
        for _ in range(3):
            damaged = post(server.url, "greedy", "a.whl", b"x", token)
            assert damaged.status_code == 503 and "list of projects" in damaged.json()["error"]
    assert server.stderr.count("refusing uploads: cannot read") == 1, server.stderr  # said once
    assert "Traceback" not in server.stderr


def test_size_limit(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo", "--max-upload", "64KiB")
    token = add_project(repo, "big")
    store = BlobStore(repo / "cas")
    with running(repo) as server:
        version, blobs = snapshot_version(repo), set(store)
        declared = post(server.url, "big", "big-1.bin", os.urandom(70_000), token)
        assert declared.status_code == 413

        def chunked():  # no Content-Length: the limit is enforced while streaming
            for _ in range(20):
                yield os.urandom(8192)

        streamed = httpx.post(
            f"{server.url}/api/v1/projects/big/files/big-2.bin", content=chunked(),
            headers={"authorization": f"Bearer {token}"},
        )  # fmt: skip
        assert streamed.status_code == 413
        assert snapshot_version(repo) == version and set(store) == blobs
        assert list((repo / "cas" / "tmp").iterdir()) == []
        assert post(server.url, "big", "big-3.bin", b"small", token).status_code == 200


@pytest.mark.slow
def test_kill_9_during_uploads_loses_no_acknowledged_upload(repo: Path) -> None:
    token = add_project(repo, "crash")
    acked: dict[str, bytes] = {}
    server = start_server(repo)
    stop = threading.Event()

    def uploader(n: int) -> None:
        i = 0
        while not stop.is_set():
            body = os.urandom(random.randrange(1000, 300_000))
            name = f"crash-{n}-{i}.bin"
            try:
                response = post(server.url, "crash", name, body, token)
            except httpx.HTTPError:
                return
            if response.status_code == 200:
                acked[f"crash/{name}"] = body
            i += 1

    threads = [threading.Thread(target=uploader, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    server.kill()
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert len(acked) > 5
    assert BlobStore(repo / "cas").fsck().ok
    with running(repo) as restarted:
        updater = tuf_updater(restarted.url, repo)
        updater.refresh()
        for target, body in acked.items():
            info = updater.get_targetinfo(target)
            assert info is not None, f"acknowledged {target} is missing"
            assert Path(updater.download_target(info)).read_bytes() == body
        # What the commit cut short linked, and never published, is taken back.
        published = {
            f"{t.path.split('/')[0]}/{t.hashes['sha256']}.{t.path.split('/', 1)[1]}"
            for t in OriginRepository(repo).artifacts()
        }
        linked = {str(p.relative_to(repo / "targets")) for p in (repo / "targets").rglob("*.bin")}
        assert linked == published
        # The restarted origin accepts new uploads on top of the recovered state.
        assert post(restarted.url, "crash", "after-1.bin", b"after", token).status_code == 200
        assert tuf_download(restarted.url, repo, "crash/after-1.bin") == b"after"


def test_status_warns_of_offline_roles_near_expiry_and_fails_past_it(tmp_path: Path) -> None:
    soon = tmp_path / "soon"
    tufmesh("origin", "init", "--dir", str(soon), "--expiry", "targets=10")
    status = tufmesh("origin", "status", "--dir", str(soon))
    assert "warning: targets expires in 10 days" in status.stderr
    late = tmp_path / "late"  # made 400 days ago, never signed since
    a_while_ago = datetime.now(UTC) - timedelta(days=400)
    OriginRepository.create(late, OriginConfig(bins=4), clock=lambda: a_while_ago)
    status = tufmesh("origin", "status", "--dir", str(late), check=False)
    assert status.returncode == 1 and "warning: bins expired on" in status.stderr
    assert "bin-*" in status.stdout  # the table still
    with running(late) as origin:  # it serves (the online roles re-signed), and says so
        health = httpx.get(f"{origin.url}/healthz").json()
    assert health["status"] == "degraded" and len(health["warnings"]) == 3, health
    # An origin that has not served for two days: its timestamp has expired.
    idle = tmp_path / "idle"
    two_days_ago = datetime.now(UTC) - timedelta(days=2)
    OriginRepository.create(idle, OriginConfig(bins=4), clock=lambda: two_days_ago)
    status = tufmesh("origin", "status", "--dir", str(idle), check=False)
    assert status.returncode == 1 and "timestamp expired: clients refuse" in status.stderr
    # Offline keys taken off the host are said to be elsewhere, not "file".
    (soon / "keys" / "targets.pem").rename(tmp_path / "targets.pem")
    row = next(r for r in tufmesh("origin", "status", "--dir", str(soon)).stdout.splitlines()
               if r.startswith("targets "))  # fmt: skip
    assert row.endswith("(file, not here)"), row
    # A damaged key file was listed as "file", with exit 0, while serve refused it.
    (soon / "keys" / "timestamp.pem").write_text("garbage")
    status = tufmesh("origin", "status", "--dir", str(soon), check=False)
    row = next(r for r in status.stdout.splitlines() if r.startswith("timestamp "))
    assert status.returncode == 1 and row.endswith("(file, UNREADABLE)"), row
    assert "warning: a key file of timestamp is no private key" in status.stderr
    assert "too few online keys here" not in status.stderr
    # An online key not on the host: said (exit 1), as serve refuses to start.
    (soon / "keys" / "snapshot.pem").rename(tmp_path / "snapshot.pem")
    status = tufmesh("origin", "status", "--dir", str(soon), check=False)
    assert status.returncode == 1 and "warning: snapshot: too few online keys here" in status.stderr


def test_status_and_projects_cli(repo: Path) -> None:
    add_project(repo, "Some.Project")
    listing = tufmesh("origin", "project", "list", "--dir", str(repo)).stdout
    assert listing.startswith("some-project\tcreated ")
    rotated = tufmesh("origin", "project", "token-rotate", "--dir", str(repo), "some_project")
    assert rotated.stdout.splitlines()[-1].startswith("tufmesh_")
    status = tufmesh("origin", "status", "--dir", str(repo))
    assert "named by no role" not in status.stderr
    (repo / "keys" / "bin-n-1.pem").write_bytes((repo / "keys" / "bin-n.pem").read_bytes())
    stray = tufmesh("origin", "status", "--dir", str(repo)).stderr  # a rotation killed midway
    assert "warning: keys/bin-n-1.pem named by no role's signer" in stray
    (repo / "keys" / "bin-n-1.pem").unlink()
    status = status.stdout
    for role in ("root", "targets", "bins", "bin-* (16 bins", "snapshot", "timestamp"):
        assert role in status
    assert "offline" in status and "online" in status and "(file)" in status
    again = tufmesh("origin", "project", "add", "--dir", str(repo), "some-project", check=False)
    assert again.returncode == 1 and "already exists" in again.stderr
    bad = tufmesh("origin", "status", "--dir", str(repo / "nope"), check=False)
    assert bad.returncode == 1 and "not a tufmesh repository" in bad.stderr
    assert "Traceback" not in bad.stderr + again.stderr
    config = json.loads((repo / "config.json").read_text())
    assert config["bins"] == 16


def test_one_repository_has_one_committer(repo: Path) -> None:
    token = add_project(repo, "solo")
    with running(repo) as first:
        second = tufmesh("origin", "serve", "--dir", str(repo), "--port", "0", check=False)
        assert second.returncode == 1
        assert "another origin is serving" in second.stderr and "Traceback" not in second.stderr
        # The signing keys live in the committer process, not the HTTP one.
        children = subprocess.run(
            ["ps", "-o", "args=", "--ppid", str(first.proc.pid)], capture_output=True, text=True
        ).stdout
        assert "tufmesh.origin._signer" in children
        assert post(first.url, "solo", "solo-1.tar.gz", b"ok", token).status_code == 200


def test_port_in_use_is_one_clear_line(repo: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = tufmesh("origin", "serve", "--dir", str(repo), "--port", str(port), check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"Error: cannot serve on 127.0.0.1:{port}: Address already in use"


@pytest.mark.parametrize(
    ("option", "said"),
    [
        (["--chunk-size", "0"], "chunk size 0 is outside 1 .. 1073741824"),
        (["--chunk-size", "2GiB"], "chunk size 2147483648 is outside"),
        (["--chunk-size", "1.5"], "not a whole number of bytes: '1.5'"),
        (["--chunk-size", "4KiB"], "past the 8,388,608 bytes clients accept: at least 4097 bytes"),
        (["--max-upload", "0"], "the upload limit must be at least 1 byte, not 0"),
        (["--expiry", "root=-1"], "expiry of root: -1.0 days is outside one minute .. 36,500 days"),
        (["--expiry", "timestamp=0"], "expiry of timestamp: 0.0 days is outside"),
        (["--expiry", "timestamp=1e9"], "expiry of timestamp: 1000000000.0 days is outside"),
        (["--expiry", "timestamp=nan"], "expiry of timestamp: nan days is outside"),
        # An option that does not parse: exit 2 and the usage (it was exit 1).
        (["--expiry", "timestamp"], "Invalid value for --expiry: takes ROLE=VALUE, not"),
        (["--expiry", "time=1"], "Invalid value for --expiry: unknown role 'time'"),
        (["--expiry", "root=soon"], "Invalid value for --expiry: root=soon: not a number"),
        (["--signer", "rot=file2:x"], "Invalid value for --signer: unknown role 'rot'"),
    ],
)
def test_init_refuses_settings_that_would_break_the_repository(
    tmp_path: Path, option: list[str], said: str
) -> None:
    proc = tufmesh("origin", "init", "--dir", str(tmp_path / "r"), *option, check=False)
    assert proc.returncode in (1, 2) and said in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()


def test_ports_and_upload_caps_out_of_range_are_usage_errors(repo: Path, tmp_path: Path) -> None:
    serve = ["origin", "serve", "--dir", str(repo)]
    run = ["mirror", "run", "--dir", str(tmp_path / "m"), "--origin", "http://127.0.0.1:9",
           "--root", str(repo / "metadata" / "1.root.json")]  # fmt: skip
    port = "is not in the range 0<=x<=65535"
    # An upload cap below what every downloader gives up on (it was taken: 1 B/s).
    cap = "at least 128.0 KiB a second"
    for args, said in (
        ([*serve, "--port", "70000"], port),
        ([*serve, "--p2p-port", "-1"], port),
        ([*run, "--http-port", "-1"], port),
        ([*serve, "--max-upload-rate", "1"], cap),
        ([*run, "--max-upload-rate", "100KiB"], cap),
    ):
        proc = tufmesh(*args, check=False)
        assert proc.returncode == 2 and said in proc.stderr, args
    assert not (tmp_path / "m").exists()


def test_origin_seeds_each_chunk_to_one_mirror_at_a_time(repo: Path) -> None:
    token = add_project(repo, "demo")
    with running(repo) as origin:
        body = os.urandom(3 << 20)
        cid = post(origin.url, "demo", "demo-1.0.tar.gz", body, token).json()["cid"]
        url = f"{origin.url}/blobs/{cid}"
        first = {"Range": "bytes=0-1048575", "X-Tufmesh-Mirror": "1"}
        got = httpx.get(url, headers=first)
        assert got.status_code == 206 and got.content == body[: 1 << 20]
        # a second mirror asking for the same chunk is sent to its peers ...
        again = httpx.get(url, headers=first)
        assert again.status_code == 503 and again.headers["x-tufmesh-refused"] == "seeded"
        assert float(again.headers["retry-after"]) > 0
        # ... unless its peers could not help; another chunk is served at once;
        patient = httpx.get(url, headers={**first, "X-Tufmesh-Mirror": "patient"})
        assert patient.status_code == 206 and patient.content == body[: 1 << 20]
        other = httpx.get(url, headers={**first, "Range": "bytes=1048576-2097151"})
        assert other.status_code == 206 and other.content == body[1 << 20 : 2 << 20]
        # and end users are never refused.
        for _ in range(2):
            user = httpx.get(url, headers={"Range": "bytes=0-1048575"})
            assert user.status_code == 206 and user.content == body[: 1 << 20]


def _external_key(folder: Path, name: str) -> tuple[str, Path]:
    """A key as an HSM or KMS ceremony hands it over: a signer URI and a public PEM."""
    uri, _ = generate_file_key(folder, name)
    private = load_pem_private_key((folder / "keys" / f"{name}.pem").read_bytes(), None)
    pem = folder / f"{name}.pub.pem"
    pem.write_bytes(
        private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    return "file2:" + str(folder / uri.removeprefix("file2:")), pem


def test_init_with_signer_uris_and_their_public_keys(tmp_path: Path) -> None:
    """The key ceremony's command (docs/maintainers.md): keys held elsewhere, given
    as signer URIs with their public keys; root verifies with python-tuf."""
    ceremony = tmp_path / "ceremony"
    ceremony.mkdir()
    (uri1, pem1), (uri2, pem2) = (_external_key(ceremony, f"root-{i}") for i in (1, 2))
    repo = tmp_path / "repo"
    tufmesh(
        "origin", "init", "--dir", str(repo), "--bins", "4", "--root-threshold", "2",
        "--signer", f"root={uri1}", "--public-key", f"root={pem1}",
        "--signer", f"root={uri2}", "--public-key", f"root={pem2}",
    )  # fmt: skip
    root = Metadata[Root].from_file(str(repo / "metadata" / "1.root.json"))
    root.signed.verify_delegate(Root.type, root.signed_bytes, root.signatures)  # threshold 2
    role = root.signed.roles[Root.type]
    assert role.threshold == 2 and len(role.keyids) == 2
    assert not list((repo / "keys").glob("root*"))  # no root key generated here

    for bad in (tmp_path / "missing.pem", ceremony / "keys" / "root-1.pem"):  # a private key
        other = tmp_path / f"other-{bad.name}"
        proc = tufmesh(
            "origin", "init", "--dir", str(other),
            "--signer", f"root={uri1}", "--public-key", f"root={bad}", check=False,
        )  # fmt: skip
        assert proc.returncode == 1, proc.stderr
        assert f"cannot read public key {bad}: " in proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    # A relative file2: path is under the repository: said, where it was looked for.
    relative = tufmesh("origin", "init", "--dir", str(tmp_path / "rel"), "--signer",
                       "root=file2:ceremony/keys/root-1.pem", check=False)  # fmt: skip
    assert relative.returncode == 1 and "a relative path is the repository's" in relative.stderr
    assert f"({tmp_path / 'rel'}/ceremony/keys/root-1.pem: " in relative.stderr, relative.stderr
    mismatch = tufmesh(
        "origin", "init", "--dir", str(tmp_path / "mismatch"),
        "--signer", f"root={uri1}", "--public-key", f"root={pem2}", check=False,
    )  # fmt: skip
    assert mismatch.returncode == 1 and "is not that of a file2: key given" in mismatch.stderr
    assert not (tmp_path / "mismatch").exists()  # nothing half made: init can run again
    # A file2: key's public key is read from its file: one given anyway is a
    # check of it, whatever the order (by position, pem2 went with uri1).
    tufmesh(
        "origin", "init", "--dir", str(tmp_path / "either"), "--root-threshold", "2",
        "--signer", f"root={uri1}", "--signer", f"root={uri2}", "--public-key", f"root={pem2}",
    )  # fmt: skip
    # The others' public keys go, in order, with the signers that need one.
    one, two = public_key_from_pem(pem1), public_key_from_pem(pem2)
    assert pair_public_keys(tmp_path, [uri1, "gcpkms:k"], [pem1, pem2]) == [one, two]
    assert pair_public_keys(tmp_path, ["gcpkms:k", uri1], [pem2]) == [two, one]
    with pytest.raises(OriginError, match="give the public key of gcpkms:l"):
        pair_public_keys(tmp_path, [uri1, "gcpkms:k", "gcpkms:l"], [pem2])


def test_rotating_a_key_other_roles_share_says_they_still_trust_it(tmp_path: Path) -> None:
    """One key for the three online roles (allowed): 'rotate timestamp' after
    it leaked said nothing of snapshot and bin-n, which went on trusting it."""
    keys = tmp_path / "keys-elsewhere"
    keys.mkdir()
    uri, _ = _external_key(keys, "online")
    repo = tmp_path / "repo"
    tufmesh("origin", "init", "--dir", str(repo), "--bins", "4",
            *(f"--signer={role}={uri}" for role in ("snapshot", "timestamp", "bin-n")))  # fmt: skip
    said = []
    for role, still in [("timestamp", "bin-n, snapshot's: if it leaked, rotate those too"),
                        ("snapshot", "bin-n's: if it leaked, rotate that too"), ("bin-n", None)]:  # fmt: skip
        rotated = tufmesh("origin", "rotate", "--dir", str(repo), role)
        said.append(rotated.stderr)
        if still is None:
            assert "warning" not in rotated.stderr and "retired bin-n keys" in rotated.stdout
        else:
            assert f"is no longer {role}'s, but still {still}" in rotated.stderr, rotated.stderr
    assert f"(tufmesh origin rotate --dir {repo} bin-n; tufmesh origin rotate --dir " in said[0]
    # Replaced for a role, a shared key is never given back to it (nor to any).
    back = tufmesh("origin", "rotate", "--dir", str(repo), "timestamp", "--signer", uri,
                   check=False)  # fmt: skip
    assert back.returncode == 1 and "was replaced at an earlier rotation" in back.stderr


def test_key_rotation_and_re_signing_ceremonies_from_the_cli(repo: Path, tmp_path: Path) -> None:
    """A leaked timestamp key is replaced with the origin stopped; clients that
    trusted the old one follow; re-signing the offline roles works the same way."""
    token = add_project(repo, "proj")
    with running(repo) as server:
        assert post(server.url, "proj", "a-1.tar.gz", b"before", token).status_code == 200
        cache = tmp_path / "client"
        tuf_updater(server.url, repo, cache).refresh()  # trusts the old timestamp key
        busy = tufmesh("origin", "rotate", "--dir", str(repo), "timestamp", check=False)
        assert busy.returncode == 1 and "stop it first" in busy.stderr, busy.stderr
    rotated = tufmesh("origin", "rotate", "--dir", str(repo), "timestamp").stdout
    assert "generated keys/timestamp-1.pem" in rotated and "destroy them" in rotated
    # A replaced key is never named again: it may have leaked (it was, silently).
    old_key = f"file2:{repo / 'keys' / 'timestamp.pem'}"
    again = tufmesh("origin", "rotate", "--dir", str(repo), "timestamp", "--signer", old_key,
                    check=False)  # fmt: skip
    assert again.returncode == 1 and "was replaced at an earlier rotation" in again.stderr
    # A repository older than that record: an earlier root's keys count too.
    config = json.loads((repo / "config.json").read_text())
    del config["retired"]
    (repo / "config.json").write_text(json.dumps(config))
    again = tufmesh("origin", "rotate", "--dir", str(repo), "timestamp", "--signer", old_key,
                    check=False)  # fmt: skip
    assert again.returncode == 1 and "was replaced at an earlier rotation" in again.stderr
    signed = tufmesh("origin", "sign", "--dir", str(repo), "root", "targets", "bins").stdout
    assert "signed root v3, targets v2, bins v2, snapshot" in signed, signed
    # The new anchor for new clients, as init gives the first: file and sha256.
    newest = repo / "metadata" / "3.root.json"
    assert f"new trusted root: {newest} (give this to new clients)" in signed, signed
    assert f"its sha256: {hashlib.sha256(newest.read_bytes()).hexdigest()}" in signed
    status = tufmesh("origin", "status", "--dir", str(repo)).stdout
    assert "timestamp" in status
    with running(repo) as server:
        assert post(server.url, "proj", "b-1.tar.gz", b"after", token).status_code == 200
        updater = tuf_updater(server.url, repo, cache)
        updater.refresh()  # follows root v2 (the new timestamp key) and v3
        assert updater.get_targetinfo("proj/b-1.tar.gz") is not None
        assert tuf_download(server.url, repo, "proj/a-1.tar.gz") == b"before"
    bad = tufmesh("origin", "rotate", "--dir", str(repo), "nope", check=False)
    assert bad.returncode == 2 and "nope" in bad.stderr
    unreachable = tufmesh(
        "origin", "rotate", "--dir", str(repo), "bins", "--signer", "gcpkms:x", check=False
    )
    assert unreachable.returncode == 1 and "Traceback" not in unreachable.stderr
    # Root to two new keys, both needed; then one key alone would lower that.
    doubled = tufmesh("origin", "rotate", "--dir", str(repo), "root", "--new-keys", "2",
                      "--threshold", "2").stdout  # fmt: skip
    assert "generated keys/root-2.pem" in doubled and "generated keys/root-3.pem" in doubled
    assert "root is an offline role: move its new key files off the serving host" in doubled
    assert "offline role" not in rotated  # (the timestamp's key stays: it signs online)
    assert "retired root keys" in doubled
    said = doubled.split("retired root keys")[1]  # where the key to destroy is
    assert f"{repo}/keys/root-" in said and ".pem" in said, doubled
    # Meant for production now (a root threshold of 2), with offline keys on
    # the serving host: said by status and serve (and /healthz), not only "file".
    warned = tufmesh("origin", "status", "--dir", str(repo)).stderr
    assert "warning: offline keys on this host: " in warned and "root (keys/root-2.pem)" in warned
    for kept in ("root-2.pem", "root-3.pem"):  # moved to where offline keys are kept
        (repo / "keys" / kept).rename(tmp_path / kept)
    warned = tufmesh("origin", "status", "--dir", str(repo)).stderr
    assert "targets (keys/targets.pem)" in warned and "root (" not in warned, warned
    for kept in ("root-2.pem", "root-3.pem"):
        (tmp_path / kept).rename(repo / "keys" / kept)
    weaker = tufmesh("origin", "rotate", "--dir", str(repo), "root", check=False)
    assert weaker.returncode == 1 and "threshold of 2" in weaker.stderr
    assert not (repo / "keys" / "root-4.pem").exists()  # the unused new key is not left behind
    short = tufmesh("origin", "rotate", "--dir", str(repo), "targets", "--threshold", "3",
                    check=False)  # fmt: skip
    assert short.returncode == 1 and "a threshold of 3 needs at least 3 keys" in short.stderr
    with running(repo) as server:
        updater = tuf_updater(server.url, repo, cache)
        updater.refresh()  # root v4: signed by the old root key and both new ones
        warnings = httpx.get(f"{server.url}/healthz").json()["warnings"]
        assert any(w.startswith("offline keys on this host: ") for w in warnings), warnings
        assert updater.get_targetinfo("proj/b-1.tar.gz") is not None
    # A threshold lowered (as --threshold says) is said.
    lowered = tufmesh("origin", "rotate", "--dir", str(repo), "root", "--new-keys", "1",
                      "--threshold", "1").stdout  # fmt: skip
    assert "root's threshold lowered from 2 to 1" in lowered, lowered


def test_removing_a_malicious_upload_from_the_cli(repo: Path, tmp_path: Path) -> None:
    token = add_project(repo, "proj")
    with running(repo) as server:
        assert post(server.url, "proj", "evil-1.tar.gz", b"malware", token).status_code == 200
        assert post(server.url, "proj", "good-1.tar.gz", b"fine", token).status_code == 200
    # The project's name as `publish --project` takes it ("not published" before).
    removed = tufmesh("origin", "remove", "--dir", str(repo), "Proj/evil-1.tar.gz").stdout
    assert "removed proj/evil-1.tar.gz" in removed and "start the origin again" in removed
    for bad in ("evil-1.tar.gz", "proj/", "pro j/evil-1.tar.gz"):
        refused = tufmesh("origin", "remove", "--dir", str(repo), bad, check=False)
        assert refused.returncode == 1 and refused.stderr.startswith(f"Error: {bad!r}: ")
    again = tufmesh("origin", "remove", "--dir", str(repo), "proj/evil-1.tar.gz").stdout
    assert "removed already (its files cleaned up again): proj/evil-1.tar.gz" in again
    assert "the metadata is unchanged" in again
    missing = tufmesh("origin", "remove", "--dir", str(repo), "proj/nope", check=False)
    assert missing.returncode == 1 and "not published" in missing.stderr
    with running(repo) as server:
        updater = tuf_updater(server.url, repo)
        updater.refresh()
        assert updater.get_targetinfo("proj/evil-1.tar.gz") is None
        assert tuf_download(server.url, repo, "proj/good-1.tar.gz") == b"fine"
        again = post(server.url, "proj", "evil-1.tar.gz", b"other bytes", token)
        assert again.status_code == 409 and "removed" in again.json()["error"]


def test_a_key_two_roles_share_is_not_retired_with_one_of_them(tmp_path: Path) -> None:
    generate_file_key(tmp_path, "shared")  # outside the repository: init wants it empty
    shared = f"file2:{tmp_path / 'keys' / 'shared.pem'}"
    repo = tmp_path / "repo"
    tufmesh("origin", "init", "--dir", str(repo), "--bins", "4",
            "--signer", f"targets={shared}", "--signer", f"bins={shared}")  # fmt: skip
    out = tufmesh("origin", "rotate", "--dir", str(repo), "targets").stdout
    assert "retired" not in out, out  # bins still signs with it
    out = tufmesh("origin", "rotate", "--dir", str(repo), "bins").stdout
    assert "retired bins keys" in out, out  # now nothing names it
    assert str(tmp_path / "keys" / "shared.pem") in out, out  # ...and where it is


def test_an_offline_roles_key_is_never_an_online_roles_key(tmp_path: Path) -> None:
    """A rotation or an init could give the timestamp a root key, or root the
    online keys: ``origin serve`` loads the online roles' keys, and whoever
    took the serving host could then sign new roots."""
    repo = init_repo(tmp_path / "repo")
    before = sorted(p.name for p in (repo / "metadata").iterdir())
    for role, signers in [
        ("timestamp", ["file2:keys/root-1.pem"]),
        ("snapshot", ["file2:keys/bins.pem"]),
        ("root", ["file2:keys/snapshot.pem", "file2:keys/timestamp.pem"]),
        ("targets", ["file2:keys/bin-n.pem"]),
    ]:
        args = [a for uri in signers for a in ("--signer", uri)]
        done = tufmesh("origin", "rotate", "--dir", str(repo), role, *args, check=False)
        assert done.returncode == 1, (role, done.stdout)
        assert "key too" in done.stderr and "must never be on the serving host" in done.stderr
        assert "Traceback" not in done.stderr
    assert sorted(p.name for p in (repo / "metadata").iterdir()) == before
    # Between offline roles, or between online ones, a key may be shared.
    assert "signed" in tufmesh("origin", "rotate", "--dir", str(repo), "snapshot",
                               "--signer", "file2:keys/timestamp.pem").stdout  # fmt: skip
    generate_file_key(tmp_path, "shared")
    shared = f"file2:{tmp_path / 'keys' / 'shared.pem'}"
    done = tufmesh("origin", "init", "--dir", str(tmp_path / "other"),
                   "--signer", f"root={shared}", "--signer", f"timestamp={shared}",
                   check=False)  # fmt: skip
    assert done.returncode == 1 and "timestamp: key" in done.stderr, done.stderr
    assert "root's key too" in done.stderr


def test_a_repository_that_cannot_be_served_is_refused_in_one_line(
    repo: Path, tmp_path: Path
) -> None:
    import shutil

    def refused(directory: Path, said: str, *commands: str) -> None:
        for command in commands:
            proc = tufmesh("origin", command, "--dir", str(directory), *(
                ["--port", "0"] if command == "serve" else []), check=False)  # fmt: skip
            assert proc.returncode == 1, proc.stdout + proc.stderr
            assert said in proc.stderr and "Traceback" not in proc.stderr, proc.stderr

    # An online key gone: serving would let the metadata expire unsigned.
    keyless = tmp_path / "keyless"
    shutil.copytree(repo, keyless)
    (keyless / "keys" / "timestamp.pem").unlink()
    refused(keyless, "cannot sign timestamp: 0 of the 1 required keys", "serve")
    refused(keyless, f"no key file at {keyless / 'keys' / 'timestamp.pem'}", "serve")
    # Published metadata damaged on disk: named, not a traceback.
    damaged = tmp_path / "damaged"
    shutil.copytree(repo, damaged)
    (damaged / "metadata" / "timestamp.json").write_text("garbage")
    refused(damaged, "timestamp.json is damaged", "serve", "status")
    (damaged / "metadata" / "timestamp.json").write_bytes(
        (repo / "metadata" / "1.snapshot.json").read_bytes()
    )
    refused(damaged, "timestamp.json is not timestamp metadata", "status")
    (damaged / "config.json").write_text("[]")
    refused(damaged, "config.json: unsupported config format", "status")
    # A setting left out by hand: named by both (serve's committer said KeyError).
    config = tmp_path / "config"
    shutil.copytree(repo, config)
    settings = json.loads((config / "config.json").read_text())
    del settings["expiry_days"]["timestamp"]
    (config / "config.json").write_text(json.dumps(settings))
    refused(config, "no expiry for timestamp", "serve", "status")
    # Settings of the wrong type by hand: a traceback in status, sign and
    # serve, or a server answering every upload 500.
    for key, value, said in (
        ("signers", [], "signers must map each role to {key id: signer URI}"),
        ("signers", {"root": {"k": 5}}, "signers must map each role"),
        ("max_upload_bytes", "x", "max_upload_bytes must be a whole number, not 'x'"),
        ("project_quota", None, "project_quota must be a whole number, not None"),
        ("bins", 3, "the number of bins must be a power of two"),
    ):
        wrong = {**json.loads((repo / "config.json").read_text()), key: value}
        (config / "config.json").write_text(json.dumps(wrong))
        refused(config, said, "serve", "status")
    # The list of projects damaged: serve refused every upload with a traceback.
    projects = tmp_path / "projects"
    shutil.copytree(repo, projects)
    (projects / "projects.json").write_text("garbage")
    refused(projects, "cannot read", "serve")
    refused(projects, "projects.json", "serve")


def test_ctrl_c_and_a_busy_p2p_port_stop_an_origin_in_one_line(repo: Path) -> None:
    import signal
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = tufmesh("origin", "serve", "--dir", str(repo), "--port", "0",
                       "--p2p-port", str(port), check=False)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().endswith(
        f"libp2p cannot listen on /ip4/127.0.0.1/tcp/{port} (--p2p-port): Address already in use"
    )
    # Ctrl-C at a terminal reaches the origin and its committer (one process group).
    server = subprocess.Popen(
        [TUFMESH, "origin", "serve", "--dir", str(repo), "--port", "0", "--p2p-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    assert server.stdout is not None and "serving" in server.stdout.readline()
    # The address to --bootstrap from is said, not only written to p2p.addr.
    said = server.stdout.readline()
    assert said == f"libp2p {(repo / 'p2p.addr').read_text().strip()}  (for --bootstrap)\n"
    # Bound to every address (--host 0.0.0.0), it says the zeros are to be replaced.
    from tufmesh._ui import p2p_line

    every = repo.parent / "every"
    every.mkdir()
    (every / "p2p.addr").write_text("/ip4/0.0.0.0/tcp/4001/p2p/12D3KooWx\n")
    assert p2p_line(every, 4001).endswith(
        "(for --bootstrap, with this host's address for the zeros)"
    )
    os.killpg(server.pid, signal.SIGINT)
    _, err = server.communicate(timeout=60)
    assert err.strip().endswith("stopped") and "Traceback" not in err, err


@pytest.mark.attack
def test_uploads_at_once_cannot_store_past_their_projects_quota(tmp_path: Path) -> None:
    """The quota was checked once, before an upload's turn, counting neither
    the uploads of the project being read meanwhile nor, after a restart,
    what it held: 48 uploads at once stored 45 MB against a quota of 3 MiB,
    each refused only once stored (a review's count)."""
    repo = init_repo(tmp_path / "repo", "--project-quota", "3MiB")
    token = add_project(repo, "gamma")
    bodies = [os.urandom(1_000_000) for _ in range(12)]
    store = BlobStore(repo / "cas")

    def upload(i: int) -> int:
        return post(server.url, "gamma", f"g{i}-1.tar.gz", bodies[i], token).status_code

    with running(repo) as server:
        before = set(store)
        with ThreadPoolExecutor(len(bodies)) as pool:
            answers = list(pool.map(upload, range(len(bodies))))
        assert sorted(answers) == [200] * 3 + [413] * 9, answers
        published = answers.index(200)
        stored = sum(store.stat(cid).size for cid in set(store) - before)
        assert stored < 3_100_000, stored  # three bodies and their manifests, no more
    with running(repo) as server:  # a project at its quota, after a restart: refused unread
        before = set(store)
        late = post(server.url, "gamma", "late-1.tar.gz", os.urandom(500_000), token)
        assert late.status_code == 413, late.text
        assert late.json()["error"] == "gamma has 145,728 bytes of its quota left"
        assert set(store) == before

        def slowly(project: str, name: str, body: bytes, token: str, sized: bool = True) -> int:
            """An upload whose body takes a second and a half to arrive."""

            def pieces() -> Iterator[bytes]:
                for at in range(0, len(body), -(-len(body) // 3)):
                    time.sleep(0.5)
                    yield body[at : at + -(-len(body) // 3)]

            headers = {"authorization": f"Bearer {token}"}
            if sized:
                headers["content-length"] = str(len(body))
            url = f"{server.url}/api/v1/projects/{project}/files/{name}"
            return httpx.post(url, content=pieces(), headers=headers, timeout=60).status_code

        # Other bytes under a published name, sent at once: each is read,
        # stored, then refused (409), and waits for the collector; they
        # reserved nothing, and all were read past the quota.
        with ThreadPoolExecutor(4) as pool:
            resent = list(pool.map(lambda _: slowly("gamma", f"g{published}-1.tar.gz",
                                                    os.urandom(1_000_000), token), range(4)))  # fmt: skip
        assert sorted(resent) == [409, 409, 409, 503], resent  # (the last: ask again later)
        # A body without a length reserves what arrives, not its project's
        # whole quota: another upload of the project is read meanwhile.
        delta = add_project(repo, "delta")
        with ThreadPoolExecutor(1) as pool:
            small = pool.submit(slowly, "delta", "tiny-1.tar.gz", b"tiny", delta, False)
            time.sleep(0.3)
            d1 = os.urandom(2_000_000)
            assert post(server.url, "delta", "d-1.tar.gz", d1, delta).status_code == 200
            assert small.result() == 200
        # The same bytes again (a retry) count once: read meanwhile, they do
        # not make a new upload the quota allows one past it.
        with ThreadPoolExecutor(1) as pool:
            retry = pool.submit(slowly, "delta", "d-1.tar.gz", d1, delta)
            time.sleep(0.3)
            fresh = post(server.url, "delta", "e-1.tar.gz", os.urandom(500_000), delta)
            assert fresh.status_code == 200, fresh.text
            assert retry.result() == 200


def test_uploads_refused_after_their_bodies_count_against_the_quota(tmp_path: Path) -> None:
    """An upload into a full hash bin is read and stored, then refused by the
    committer (507). Only refusals of a published name were counted against
    the project's quota until the collector deletes their bytes: a token
    holder could store a gigabyte a request for ever. Now every refusal of a
    stored body counts, and once a quota's worth waits for the collector,
    uploads are refused before their bodies are read."""

    repo_dir = tmp_path / "repo"
    config = OriginConfig(bins=2, max_bin_bytes=64 * 1024, project_quota=(3 << 20) + (1 << 16))
    repo = OriginRepository.create(repo_dir, config)
    tiny = []
    for i in range(800):  # more than the two bins hold
        data = f"{i}".encode()
        cid, manifest = repo.store.put_chunked(data, chunk_size=config.chunk_size)
        tiny.append(Artifact(f"evil/f{i}-1.tar.gz", len(data), hashlib.sha256(data).hexdigest(),
                             cid, manifest.cid, manifest.chunk_size))  # fmt: skip
    full = {str(r).split("(")[1].split(")")[0] for r in repo.publish(tiny) if "is full" in str(r)}
    assert full == {"bin-0", "bin-1"}, full
    token = add_project(repo_dir, "evil")
    answers = []
    with running(repo_dir) as origin:
        for i in range(6):  # (names longer than any room a full bin has left)
            body, name = os.urandom(1 << 20), f"{'x' * 100}{i}-1.tar.gz"
            answers.append(post(origin.url, "evil", name, body, token).status_code)
    assert answers == [507, 507, 507, 413, 413, 413], answers  # 3 MiB stored, then unread


def test_publish_to_what_is_not_an_origin_is_one_line(repo: Path, tmp_path: Path) -> None:
    class NotAnOrigin(_Quiet):
        def do_POST(self) -> None:  # a proxy's or a web site's page
            self.rfile.read(int(self.headers["content-length"]))
            if self.path.endswith(".whl"):  # an error page of many lines
                self.send_error(501, explain="line one\nline two\n" * 5)
                return
            self.reply(b"<html>welcome</html>" if self.path.endswith(".tar.gz") else b"[1, 2]")

    artifact = tmp_path / "x-1.0.tar.gz"
    artifact.write_bytes(b"x")
    odd = tmp_path / "x-1.0.zip"
    odd.write_bytes(b"y")
    wheel = tmp_path / "x-1.0-py3-none-any.whl"
    wheel.write_bytes(b"z")
    with _served_by(NotAnOrigin) as url:
        proc = tufmesh("publish", str(artifact), str(odd), str(wheel), "--origin", url,
                       "--project", "x", "--token", "t", check=False)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("not as a tufmesh origin does") == 2, proc.stderr
    # An error page is its status, not its HTML.
    assert (
        "refused by the origin (501): Not Implemented (not an origin's answer: is --origin the "
        "origin's URL?)" in proc.stderr
    ), proc.stderr
    assert "<" not in proc.stderr and "line two" not in proc.stderr, proc.stderr
    for bad in ("http://[::1", "http://127.0.0.1:99999", "ftp://x"):
        proc = tufmesh("publish", str(artifact), "--origin", bad, "--project", "x",
                       "--token", "t", check=False)  # fmt: skip
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "URL" in proc.stderr, proc.stderr
    # A bad --project is said once, before anything is sent (it was said once a file).
    bad = tufmesh("publish", str(artifact), str(odd), "--origin", "http://127.0.0.1:1",
                  "--project", "pro ject", "--token", "t", check=False)  # fmt: skip
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1, bad.stderr
    assert bad.stderr.startswith("Error: --project: bad project name 'pro ject'"), bad.stderr
    untokened = tufmesh("publish", str(artifact), "--origin", "http://127.0.0.1:1",
                        "--project", "x", check=False,
                        env={k: v for k, v in os.environ.items() if k != "TUFMESH_TOKEN"})  # fmt: skip
    assert untokened.returncode == 1 and "TUFMESH_TOKEN" in untokened.stderr, untokened.stderr
    # The token in clear to another machine is said (the missing file stops
    # the command before anything is sent: no connection leaves this host).
    for origin, warned in [("http://192.0.2.1:8080", True), ("https://192.0.2.1", False),
                           ("http://localhost:1", False), ("http://[::1]:1", False)]:  # fmt: skip
        proc = tufmesh("publish", str(tmp_path / "missing-1.0.tar.gz"), "--origin", origin,
                       "--project", "x", "--token", "t", check=False)  # fmt: skip
        assert proc.returncode == 1 and "no such file" in proc.stderr, proc.stderr
        assert ("unencrypted" in proc.stderr) == warned, (origin, proc.stderr)


def test_project_add_says_the_name_it_registered(repo: Path) -> None:
    out = tufmesh("origin", "project", "add", "--dir", str(repo), "De_mo").stdout
    assert out.startswith("registered project de-mo (the normal form of De_mo);")


def test_an_upload_cut_short_leaves_no_traceback_and_no_file(repo: Path) -> None:
    import socket

    token = add_project(repo, "cut")
    server = start_server(repo)
    try:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as conn:
            conn.sendall(
                b"POST /api/v1/projects/cut/files/cut-1.0.tar.gz HTTP/1.1\r\n"
                b"host: x\r\nauthorization: Bearer " + token.encode() + b"\r\n"
                b"content-length: 9000000\r\n\r\n" + b"x" * 300_000
            )
            time.sleep(0.5)
        time.sleep(0.5)
        assert post(server.url, "cut", "cut-2.0.tar.gz", b"whole", token).status_code == 200
        deadline = time.monotonic() + 10
        while list((repo / "cas" / "tmp").iterdir()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not list((repo / "cas" / "tmp").iterdir())  # the cut upload's bytes are gone
    finally:
        server.proc.send_signal(signal.SIGTERM)
        _, err = server.proc.communicate(timeout=30)
    assert "Traceback" not in err and "ClientDisconnect" not in err, err


def test_uploads_under_way_stop_when_their_token_is_replaced(repo: Path) -> None:
    """The token was checked before the body only: an upload under way when a
    leaked token was rotated still published after the rotation, and uploads
    trickling at the minimum rate held the project's slots for hours, so that
    the new token's uploads got no answer."""
    import select
    import socket

    token = add_project(repo, "leak")
    with running(repo) as server:
        host, port = server.url.removeprefix("http://").split(":")

        def begin(name: str, length: int) -> socket.socket:
            conn = socket.create_connection((host, int(port)))
            conn.sendall(
                f"POST /api/v1/projects/leak/files/{name} HTTP/1.1\r\nhost: x\r\n"
                f"authorization: Bearer {token}\r\ncontent-length: {length}\r\n\r\n".encode()
                + b"x" * 100_000
            )
            return conn

        def answer(conn: socket.socket) -> bytes:
            conn.settimeout(10)
            data = b""
            while b"}" not in data:  # (every answer here is one short JSON object)
                more = conn.recv(65536)
                assert more, data
                data += more
            return data

        trickling = begin("leak-1.0.tar.gz", 90_000_000)
        finishing = begin("leak-2.0.tar.gz", 200_000)
        rotated = tufmesh("origin", "project", "token-rotate", "--dir", str(repo), "leak")
        new = rotated.stdout.splitlines()[-1]
        finishing.sendall(b"y" * 100_000)  # its last bytes, after the rotation
        said = answer(finishing)
        assert said.startswith(b"HTTP/1.1 401 "), said
        assert b"it was replaced while this upload was sent" in said, said
        deadline = time.monotonic() + 10
        while not select.select([trickling], [], [], 0.2)[0]:  # still reading: send on
            assert time.monotonic() < deadline, "the upload under way was never stopped"
            trickling.sendall(b"z" * 16_384)
        said = answer(trickling)
        assert said.startswith(b"HTTP/1.1 401 ") and b"replaced" in said, said
        trickling.close()
        finishing.close()
        # Neither was published: the new token may use both names for other bytes.
        for name in ("leak-1.0.tar.gz", "leak-2.0.tar.gz"):
            assert post(server.url, "leak", name, b"other bytes", new).status_code == 200
        assert post(server.url, "leak", "leak-3.0.tar.gz", b"old", token).status_code == 401


def test_a_name_published_before_a_naming_rule_is_still_served(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """File names that Windows takes for a device (con.tar.gz) are refused
    from now on; one published before the rule was hidden by `tufmesh ls`,
    404 at /targets/ and refused by `get`, though still signed."""
    import tufmesh.origin._repository as repository_module

    token = add_project(repo, "old")
    published = OriginRepository(repo)
    body = os.urandom(3 << 20)
    cid, manifest = published.store.put_chunked(body, chunk_size=published.config.chunk_size)
    artifact = Artifact("old/con.tar.gz", len(body), hashlib.sha256(body).hexdigest(), cid,
                        manifest.cid, manifest.chunk_size)  # fmt: skip
    refused = published.publish([artifact])[0]  # (the committer checks new names itself)
    assert isinstance(refused, OriginError) and "device's on Windows" in str(refused)
    with monkeypatch.context() as before_the_rule:  # (as an origin published it then)
        before_the_rule.setattr(repository_module, "check_new_filename", lambda name: name)
        assert published.publish([artifact]) == [2]
    home = tmp_path / "home"
    with running(repo) as server:
        assert tuf_download(server.url, repo, "old/con.tar.gz") == body
        tufmesh("client", "init", str(repo / "metadata" / "1.root.json"), "--origin",
                server.url, "--home", str(home))  # fmt: skip
        assert "old/con.tar.gz\t" in tufmesh("ls", "old", "--home", str(home)).stdout
        tufmesh("get", "old/con.tar.gz", "-o", str(tmp_path / "out"), "--home", str(home))
        assert (tmp_path / "out" / "con.tar.gz").read_bytes() == body
        replica = Mirror.create(tmp_path / "m", repo / "metadata" / "1.root.json", [server.url])
        assert replica.sync().artifacts == 1
        # A new such name is refused.
        refused = post(server.url, "old", "nul.tar.gz", b"x", token)
        assert refused.status_code == 400 and "device's on Windows" in refused.json()["error"]


def test_a_repository_made_before_a_limit_was_added_still_opens(repo: Path) -> None:
    # init now refuses chunks too small for the upload limit's manifest; a
    # repository created with them before must still be served and managed.
    config = json.loads((repo / "config.json").read_text())
    config["chunk_size"] = 4096
    (repo / "config.json").write_text(json.dumps(config))
    assert "timestamp" in tufmesh("origin", "status", "--dir", str(repo)).stdout
    add_project(repo, "old")


def test_bootstrap_without_a_p2p_port_is_refused_not_ignored(repo: Path, tmp_path: Path) -> None:
    peer = "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWH6aSgAE3gYqf1rijpXL8twWYh6h2cfFHFQbcYj4xwiNG"
    for args in (
        ["origin", "serve", "--dir", str(repo), "--port", "0", "--bootstrap", peer],
        ["mirror", "run", "--dir", str(tmp_path / "m"), "--origin", "http://127.0.0.1:9",
         "--root", str(repo / "metadata" / "1.root.json"), "--bootstrap", peer],
        ["mirror", "run", "--dir", str(tmp_path / "m"), "--origin", "http://127.0.0.1:9",
         "--root", str(repo / "metadata" / "1.root.json"), "--peer", f"libp2p:{peer}"],
    ):  # fmt: skip
        proc = tufmesh(*args, check=False)
        assert proc.returncode == 1 and "needs --p2p-port" in proc.stderr, args
    # One port for both: said as such, not as a port some other program took.
    same = tufmesh("mirror", "run", "--dir", str(tmp_path / "m"), "--origin", "http://127.0.0.1:9",
                   "--root", str(repo / "metadata" / "1.root.json"), "--http-port", "18099",
                   "--p2p-port", "18099", check=False)  # fmt: skip
    assert same.returncode == 1 and "are both 18099: give each its own" in same.stderr
    assert not (tmp_path / "m").exists()
    # A name that is not PROJECT/FILENAME says what is wanted.
    home = tmp_path / "home"
    tufmesh("client", "init", str(repo / "metadata" / "1.root.json"), "--origin",
            "http://127.0.0.1:9", "--home", str(home))  # fmt: skip
    bare = tufmesh("get", "example-1.0.tar.gz", "--home", str(home), check=False)
    assert bare.returncode == 1 and "give PROJECT/FILENAME" in bare.stderr, bare.stderr


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # test_p2p_node
def test_a_commit_made_with_no_peer_in_the_mesh_is_announced_once_one_joins(
    repo: Path, tmp_path: Path
) -> None:
    """Announced while the origin had no peer in its gossip mesh (just
    started, or every mirror gone a while), a new timestamp reached nobody and
    was never announced again: mirrors heard of the release at their poll."""
    import gc

    import trio

    from tufmesh.p2p import AnnouncementGate, P2PNode, topic_for

    token = add_project(repo, "demo")
    root = Metadata[Root].from_file(str(repo / "metadata" / "1.root.json")).signed
    heard: list[int] = []
    with running(repo, "--p2p-port", "0") as server:
        address = (repo / "p2p.addr").read_text().strip()
        post(server.url, "demo", "demo-1.0.tar.gz", b"1.0", token)
        # Past the 3 s in which GossipSub offers a message to peers that were
        # not in the mesh when it was published (a mirror back a little later).
        time.sleep(3.5)
        version = json.loads((repo / "metadata" / "timestamp.json").read_bytes())["signed"][
            "version"
        ]

        async def main() -> None:
            node = P2PNode(tmp_path / "n.key", topic_for(root), AnnouncementGate(root),
                           on_announcement=lambda d: heard.append(json.loads(d)["signed"]["version"]),
                           bootstrap=[address])  # fmt: skip
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                with trio.move_on_after(10):
                    while version not in heard:
                        await trio.sleep(0.1)
                nursery.cancel_scope.cancel()

        trio.run(main)
        gc.collect()
    assert heard == [version]


def test_a_bootstrap_peer_that_is_down_is_said_once_not_logged_by_libp2p(repo: Path) -> None:
    """py-libp2p logged each failed dial ("Failed to open TCP stream: ...",
    every 30 s) on the service's stderr, where operators read tufmesh's lines;
    with that gone, nothing said that a --bootstrap peer (a typo?) was out
    of reach. Now one line says so."""
    peer = "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWH6aSgAE3gYqf1rijpXL8twWYh6h2cfFHFQbcYj4xwiNG"
    with running(repo, "--p2p-port", "0", "--bootstrap", peer) as server:
        time.sleep(1.5)  # the dial at start has failed by now
    (line,) = log_lines(server.stderr)
    assert line.startswith(f"p2p: cannot reach bootstrap peer {peer} ("), server.stderr
    assert line.endswith("trying again every 30 s"), server.stderr


def test_publish_checks_the_origin_answered_for_the_bytes_it_sent(tmp_path: Path) -> None:
    """`publish` printed whatever sha256 the origin answered: an origin (or a
    proxy before it) that published other bytes went unnoticed."""

    class LyingOrigin(_Quiet):
        def do_POST(self) -> None:
            length = int(self.headers["content-length"])
            self.rfile.read(length)
            target = "x/" + self.path.rsplit("/", 1)[1]
            self.reply(json.dumps({"target": target, "length": length, "sha256": "ab" * 32,
                                   "snapshot_version": 7}).encode())  # fmt: skip

    artifact = tmp_path / "x-1.0.tar.gz"
    artifact.write_bytes(b"the developer's bytes")
    with _served_by(LyingOrigin) as url:
        proc = tufmesh("publish", str(artifact), "--origin", url, "--project", "x",
                       "--token", "t", check=False)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    sent = hashlib.sha256(artifact.read_bytes()).hexdigest()
    assert "answered for other bytes than were sent" in proc.stderr, proc.stderr
    assert f"sent sha256 {sent}" in proc.stderr and "published" not in proc.stdout


def test_a_file_written_to_while_it_is_published_is_refused_in_a_line(repo: Path) -> None:
    """A file that grew or shrank while `publish` sent it ended in a
    traceback (h11: too much or too little data for the Content-Length)."""
    from tufmesh.errors import PublishError
    from tufmesh.origin._publish import upload

    token = add_project(repo, "grow")
    with running(repo) as server, httpx.Client() as client:
        for change, name in [("grow", "grow-1.0.tar.gz"), ("shrink", "grow-2.0.tar.gz"),
                             ("rewrite", "grow-3.0.tar.gz")]:  # fmt: skip
            path = repo.parent / name
            path.write_bytes(os.urandom(3 << 20))

            def written_to(_: int, path: Path = path, change: str = change) -> None:
                if change == "grow":
                    with open(path, "ab") as handle:
                        handle.write(b"more")
                elif change == "shrink":
                    os.truncate(path, 1 << 20)
                else:  # in place, its length the same (it was published as sent)
                    with open(path, "r+b") as handle:
                        handle.write(os.urandom(1 << 20))
                    os.utime(path, ns=(0, time.time_ns() + 10**9))

            with pytest.raises(PublishError, match="changed while it was being sent") as caught:
                upload(client, server.url, "grow", path, token, progress=written_to)
            how = "written to meanwhile" if change == "rewrite" else f"no longer {3 << 20:,} bytes"
            assert how in str(caught.value), caught.value
            # Nothing was published: the name takes other bytes.
            assert post(server.url, "grow", name, b"whole", token).status_code == 200


def test_ctrl_c_during_publish_says_what_was_not_published(tmp_path: Path) -> None:
    """Ctrl-C mid-upload said only "Aborted!": not which files were sent."""
    import signal
    import socket

    files = [tmp_path / name for name in ("a-1.tar.gz", "b-1.tar.gz")]
    for path in files:
        path.write_bytes(os.urandom(32 << 20))
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never reads
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        proc = subprocess.Popen(
            [TUFMESH, "publish", "--origin", url, "--project", "p", "--token", "t",
             *map(str, files)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(2)  # its first upload fills the socket's buffers, and waits
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "interrupted: a-1.tar.gz may or may not be published" in err, err
    assert "not sent: b-1.tar.gz" in err, err


def test_an_origin_whose_committer_dies_stops_for_its_supervisor(repo: Path) -> None:
    """The committer killed (the OOM killer, kill -9): the origin answered
    every upload with a 500 and /healthz "ok" while its timestamp went
    unsigned toward expiry, a live process to its supervisor. It stops now."""
    import signal

    server = start_server(repo)
    try:
        os.kill(committer_of(server), signal.SIGKILL)
        server.proc.wait(timeout=20)
    finally:
        server.stop()
    assert server.proc.returncode == 1, server.stderr
    assert "the committer process exited (status -9)" in server.stderr, server.stderr
    assert "Traceback" not in server.stderr


def test_an_upload_whose_committer_died_before_answering_may_be_published(
    repo: Path, tmp_path: Path
) -> None:
    """The committer gone mid-commit (after it wrote the new timestamp, say):
    the upload was answered 500 "publishing failed", and `tufmesh publish`
    said it was not published, though it may have been (a review found seven
    so); rebuilt bytes sent under that name were then refused for good. Now
    the answer is a 503 that says so, publish says it may be published, and
    run again once the origin is back, it publishes it."""
    token = add_project(repo, "proj")
    artifact = tmp_path / "a-1.tar.gz"
    artifact.write_bytes(os.urandom(10_000))
    command = [TUFMESH, "publish", str(artifact), "--project", "proj", "--token", token]
    publish = publish_as_committer_dies(repo, command, ("proj", token), settle=0.5)
    err = publish.stderr
    assert publish.returncode == 1 and "Traceback" not in err, err
    said = "the origin stopped before it could say whether proj/a-1.tar.gz is published: it may be"
    assert said in err, err  # (its 503, and its retry's refused connection)
    assert "it may be published (the same command again publishes it, or says it is)" in err
    assert "1 of 1 files were not published (1 of them may be: see above)" in err, err
    with running(repo) as server:
        again = tufmesh(*command[1:], "--origin", server.url)
    assert "published proj/a-1.tar.gz" in again.stdout, again.stdout


def test_a_projects_publications_are_paced_past_a_burst(repo: Path) -> None:
    """One commit per small upload rewrote a bin of up to 4 MB each time: a
    token could write metadata faster than superseded versions go. Past
    PUBLISH_BURST, a project's uploads wait their turn, one a second; other
    projects' do not."""
    from tufmesh.origin._server import PUBLISH_BURST, PUBLISH_INTERVAL

    token, other = add_project(repo, "busy"), add_project(repo, "calm")
    extra = 3
    with running(repo) as server, httpx.Client(timeout=60) as client:

        def send(project: str, token: str, n: int) -> int:
            url = f"{server.url}/api/v1/projects/{project}/files/f-{n}.whl"
            headers = {"authorization": f"Bearer {token}"}
            return client.post(url, content=str(n).encode(), headers=headers).status_code

        started = time.monotonic()
        assert [send("busy", token, n) for n in range(PUBLISH_BURST)] == [200] * PUBLISH_BURST
        burst = time.monotonic() - started
        assert send("calm", other, 0) == 200
        started = time.monotonic()
        assert [send("busy", token, PUBLISH_BURST + n) for n in range(extra)] == [200] * extra
        paced = time.monotonic() - started
    # The n-th publication of a project goes no sooner than (n - burst)
    # intervals after the first: here the last, extra intervals after.
    assert burst + paced >= extra * PUBLISH_INTERVAL - 0.05, (burst, paced)


def test_a_service_raises_its_limit_on_open_files(tmp_path: Path) -> None:
    """Started with the 1,024 open files many systems give a service, the
    origin asks for its hard limit (65,536 at most): a connection its client
    closed at once can stay held until the idle timeout (a race in
    hypercorn), and 1,024 ran out at a few dozen such requests a second."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(soft, 256)

    def lowered() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))

    repo = init_repo(tmp_path / "repo")
    proc = subprocess.Popen(
        [TUFMESH, "origin", "serve", "--dir", str(repo), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL, preexec_fn=lowered,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and "serving" in proc.stdout.readline()
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        (line,) = [row for row in limits.splitlines() if row.startswith("Max open files")]
        said = line.split()[3]
        wanted = 1 << 16 if hard == resource.RLIM_INFINITY else min(hard, 1 << 16)
        assert int(said) == max(low, wanted), line
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
