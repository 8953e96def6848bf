"""The local package index (PEP 503/691) that pip installs through, verified."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import subprocess
import sys
import time
import traceback
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from tuf.api.metadata import TargetFile

from tests.helpers.log import log_lines
from tests.helpers.mirror import mirrors
from tests.helpers.origin import TUFMESH, add_project, init_repo, post, running, tufmesh
from tufmesh.client._proxy import JSON_TYPE, ProjectIndex, wants_json
from tufmesh.errors import NotInMetadataError, TufmeshError


def _target(path: str, body: bytes) -> TargetFile:
    return TargetFile(len(body), {"sha256": hashlib.sha256(body).hexdigest()}, path)


def test_pages_list_each_projects_files_with_their_signed_hashes() -> None:
    index = ProjectIndex(
        [_target("b-proj/b-1.0.tar.gz", b"b"), _target("a/a-2.0.whl", b"2"),
         _target("a/a-1.0.whl", b"1"), _target("toplevel-file", b"x")]
    )  # fmt: skip
    assert sorted(index.projects) == ["a", "b-proj"]
    page = index.project_page("B_Proj", as_json=False)  # PEP 503 normalisation
    digest = hashlib.sha256(b"b").hexdigest()
    assert f'<a href="../../files/b-proj/b-1.0.tar.gz#sha256={digest}">b-1.0.tar.gz</a>' in page
    data = index.project_page("a", as_json=True)
    assert '"filename": "a-1.0.whl"' in data and data.index("a-1.0") < data.index("a-2.0")
    assert '"api-version": "1.0"' in index.root_page(as_json=True)
    assert 'href="a/"' in index.root_page(as_json=False)
    for missing in ("c", "not a name!"):
        with pytest.raises(NotInMetadataError):
            index.project_page(missing, as_json=False)
    assert wants_json(f"{JSON_TYPE}, text/html;q=0.1") and not wants_json("text/html")
    assert not wants_json("") and not wants_json("*/*")


def _wheel(name: str, version: str) -> tuple[str, bytes]:
    """A minimal pure-Python wheel: ``name`` with ``VALUE = 42``, and 2.5 MiB
    of data (three chunks: the download takes them from several sources)."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"VALUE = 42\n",
        f"{name}/data.bin": os.urandom(5 << 19),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = ""
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += f"{path},sha256={digest},{len(data)}\n"
    files[f"{dist}/RECORD"] = (record + f"{dist}/RECORD,,\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)
    return f"{name}-{version}-py3-none-any.whl", buffer.getvalue()


@pytest.mark.slow
def test_pip_installs_through_the_proxy_and_a_lying_mirror_changes_nothing(
    tmp_path: Path,
) -> None:
    repo = init_repo(tmp_path / "repo")
    token = add_project(repo, "tinypkg")
    filename, wheel = _wheel("tinypkg", "1.0")
    home = tmp_path / "home"
    with running(repo) as origin, mirrors(repo, "bitflip") as (liar,):
        assert post(origin.url, "tinypkg", filename, wheel, token).status_code == 200
        root = str(repo / "metadata" / "1.root.json")
        # The lying mirror first: it flips a bit in every chunk it serves.
        tufmesh("client", "init", root, "--origin", origin.url, "--mirror", liar.url,
                "--home", str(home))  # fmt: skip
        proxy = subprocess.Popen(
            [TUFMESH, "client", "proxy", "--home", str(home), "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert proxy.stdout is not None
            line = proxy.stdout.readline()
            assert line.startswith("index on "), line + proxy.stderr.read()
            assert "(pip install --isolated --index-url " in line  # no other index mixed in
            index = line.split()[2]
            page = httpx.get(f"{index}tinypkg/", headers={"accept": JSON_TYPE})
            assert page.headers["content-type"] == JSON_TYPE
            (entry,) = page.json()["files"]
            assert entry["hashes"]["sha256"] == hashlib.sha256(wheel).hexdigest()
            assert httpx.get(f"{index}nosuchproject/").status_code == 404
            base = index.removesuffix("simple/")
            assert httpx.get(f"{base}files/tinypkg/other-1.0.whl").status_code == 404
            # A page whose site's name was re-pointed at 127.0.0.1 (DNS
            # rebinding) names its site: refused; localhost is fine.
            for named, status in (("attacker.example", 421), ("localhost:1", 200)):
                answer = httpx.get(f"{index}tinypkg/", headers={"host": named})
                assert answer.status_code == status, named
            # A web page's own requests (an image, a fetch) say where they
            # come from: refused before anything is downloaded; pip and a
            # user's own browser tab say nothing of the kind, or "none".
            wheel_url = f"{base}files/tinypkg/{filename}"
            for said in ({"sec-fetch-site": "cross-site"}, {"sec-fetch-site": "same-site"},
                         {"origin": "https://attacker.example"}, {"origin": "null"}):  # fmt: skip
                answer = httpx.get(wheel_url, headers=said)
                assert answer.status_code == 403, said
            assert liar.blob_requests == 0 and not (home / "proxy").exists()
            own = httpx.get(f"{index}tinypkg/", headers={"sec-fetch-site": "none"})
            assert own.status_code == 200
            # However loopback is spelt (the check was judged by the text).
            with subprocess.Popen(
                [TUFMESH, "client", "proxy", "--home", str(home), "--port", "0",
                 "--host", "127.1"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            ) as other:  # fmt: skip
                assert other.stdout is not None
                spelt = other.stdout.readline().split()[2]
                answer = httpx.get(f"{spelt}tinypkg/", headers={"host": "attacker.example"})
                other.terminate()
            assert answer.status_code == 421
            installed = subprocess.run(
                [sys.executable, "-m", "pip", "install", "--isolated", "--index-url", index,
                 "--target",
                 str(tmp_path / "site"), "--no-deps", "--no-cache-dir",
                 "--disable-pip-version-check", "tinypkg"],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert installed.returncode == 0, installed.stdout + installed.stderr
        finally:
            proxy.terminate()
            _, err = proxy.communicate(timeout=30)
    assert (tmp_path / "site" / "tinypkg" / "__init__.py").read_text() == "VALUE = 42\n"
    assert liar.blob_requests > 0  # asked, caught, and banned: pip got the signed bytes
    assert (home / "proxy" / "tinypkg" / filename).read_bytes() == wheel
    assert "Traceback" not in err, err
    # ...and the proxy says so, as `get` does (it said nothing: pip shows no reason).
    banned = [line for line in log_lines(err) if line.startswith(f"proxy: {liar.url} was banned")]
    assert len(banned) == 1 and "bad chunk" in banned[0], err


def _proxy(home: Path, *extra: str, log: list[str] | None = None) -> Iterator[str]:
    """A proxy process for ``home``: its index URL (``log``: gets its stderr)."""
    proxy = subprocess.Popen(
        [TUFMESH, "client", "proxy", "--home", str(home), "--port", "0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proxy.stdout is not None
        line = proxy.stdout.readline()
        assert line.startswith("index on "), line + (proxy.stderr.read() if proxy.stderr else "")
        yield line.split()[2]
    finally:
        proxy.terminate()
        _, err = proxy.communicate(timeout=30)
        assert "Traceback" not in err, err
        if log is not None:
            log.append(err)


def test_pages_answer_while_downloads_wait_and_waiters_share_a_failure(tmp_path: Path) -> None:
    """Files and pages shared trio's 40 worker threads, and a file request
    held its thread while it waited for another's download of the same file:
    45 requests for a file whose only source never answers kept pip's pages
    waiting past pip's 15 s, and each request tried the whole download again
    in turn, one after another. Now pages have threads of their own, and
    the requests that waited for a download that failed fail with it."""
    repo = init_repo(tmp_path / "repo")
    token = add_project(repo, "tinypkg")
    home = tmp_path / "home"
    with running(repo) as origin, mirrors(repo, "stallblobs") as (stalling,):
        body = os.urandom(3 << 20)
        assert post(origin.url, "tinypkg", "tinypkg-1.0.tar.gz", body, token).status_code == 200
        tufmesh("client", "init", str(repo / "metadata" / "1.root.json"), "--origin",
                stalling.url, "--home", str(home))  # fmt: skip
        said: list[str] = []
        with contextlib.contextmanager(_proxy)(home, log=said) as index:
            url = index.removesuffix("simple/") + "files/tinypkg/tinypkg-1.0.tar.gz"
            with ThreadPoolExecutor(45) as pool:
                asked = [pool.submit(httpx.get, url, timeout=180) for _ in range(45)]
                time.sleep(1.0)
                page = httpx.get(f"{index}tinypkg/", timeout=10)
                assert page.status_code == 200 and "tinypkg-1.0.tar.gz" in page.text
                answers = [f.result().status_code for f in asked]
    assert answers == [502] * 45
    # Why, in the proxy's log (pip shows the status alone).
    failed = [line for line in log_lines(said[0]) if "/files/tinypkg/tinypkg-1.0.tar.gz: " in line]
    assert failed and all(line.startswith("proxy: ") for line in failed), said[0]
    assert "every source failed" in failed[0], failed[0]
    # One download's requests, not 45 downloads': the last ones waited
    # for a thread, not only for the download, and share its failure too.
    assert 0 < stalling.blob_requests <= 12, stalling.blob_requests


def test_the_cache_keeps_the_files_served_last_within_its_size(tmp_path: Path) -> None:
    """Every file fetched stayed in the proxy's cache, unfinished downloads
    too: any page a browser showed could fill the disk with the repository."""
    from tufmesh.client._proxy import _Index

    repo = init_repo(tmp_path / "repo")
    token = add_project(repo, "tinypkg")
    home = tmp_path / "home"
    bodies = {f"tinypkg-1.{i}.tar.gz": os.urandom(400_000) for i in range(4)}
    with running(repo) as origin:
        for name, body in bodies.items():
            assert post(origin.url, "tinypkg", name, body, token).status_code == 200
        tufmesh("client", "init", str(repo / "metadata" / "1.root.json"),
                "--origin", origin.url, "--home", str(home))  # fmt: skip
        index = _Index(home, cache_size=1_000_000)  # two of them
        cache = home / "proxy" / "tinypkg"
        cache.mkdir(parents=True)
        stale = cache / "tinypkg-1.3.tar.gz.part"
        stale.write_bytes(b"x" * 100_000)  # a download cut short long ago
        os.utime(stale, (1, 1))
        names = list(bodies)
        for name in [names[0], names[1], names[0], names[2]]:
            assert index.fetch("tinypkg", name).read_bytes() == bodies[name]
        # names[1] was served longest ago; the part file went first.
        assert sorted(p.name for p in cache.iterdir()) == [names[0], names[2]]
        assert index.fetch("tinypkg", names[1]).read_bytes() == bodies[names[1]]
        assert sorted(p.name for p in cache.iterdir()) == [names[1], names[2]]
        # A file being sent is not evicted by another request's fetch (it was,
        # between the fetch and the answer: a 500, or a body cut short).
        sent = index.fetch("tinypkg", names[3], hold=True)
        index.fetch("tinypkg", names[0])
        index.fetch("tinypkg", names[1])
        assert sent.exists()
        index.release(sent)
        index.fetch("tinypkg", names[2])
        assert not sent.exists()


def test_requests_that_waited_share_a_failure_as_copies(tmp_path: Path) -> None:
    """Every waiter raised the one exception again: its traceback grew by
    each one's frames, which it kept alive."""
    from tufmesh.client._proxy import _Index
    from tufmesh.errors import ClientError

    index = _Index(tmp_path / "home")
    asked = time.monotonic()
    with pytest.raises(ClientError) as first, index._downloading("p/f", asked):
        raise ClientError("every source failed")
    raised = []
    for _ in range(50):
        with pytest.raises(ClientError) as shared, index._downloading("p/f", asked):
            pytest.fail("a waiter downloads again")  # pragma: no cover
        raised.append(shared.value)
    assert all(str(e) == "every source failed" for e in raised)
    assert len({id(e) for e in raised} | {id(first.value)}) == 51
    depth = lambda e: len(list(traceback.walk_tb(e.__traceback__)))  # noqa: E731
    assert max(depth(e) for e in raised) < 5
    # A request that came after the failure downloads again.
    with index._downloading("p/f", time.monotonic()):
        pass


def test_the_index_follows_new_releases_and_outlives_a_short_outage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The proxy's client refreshed once (python-tuf refreshes an Updater
    once): new releases never appeared, nor did removals, and expiry was
    never checked again. With every source down, the last index stays while
    its timestamp has not expired."""
    from tufmesh.client import _proxy

    monkeypatch.setattr(_proxy, "REFRESH_EVERY", 0.0)
    repo = init_repo(tmp_path / "repo")
    token = add_project(repo, "tinypkg")
    home = tmp_path / "home"
    with running(repo) as origin:
        post(origin.url, "tinypkg", "tinypkg-1.0.tar.gz", b"one", token)
        tufmesh("client", "init", str(repo / "metadata" / "1.root.json"), "--origin", origin.url,
                "--home", str(home))  # fmt: skip
        index = _proxy._Index(home)
        assert [f.filename for f in index.current().files("tinypkg")] == ["tinypkg-1.0.tar.gz"]
        post(origin.url, "tinypkg", "tinypkg-1.1.tar.gz", b"two", token)
        listed = [f.filename for f in index.current().files("tinypkg")]
        assert listed == ["tinypkg-1.0.tar.gz", "tinypkg-1.1.tar.gz"]
        assert index.fetch("tinypkg", "tinypkg-1.1.tar.gz").read_bytes() == b"two"
    # The origin is gone: the last index, still unexpired, is served.
    assert len(index.current().files("tinypkg")) == 2


def test_a_cached_file_is_served_while_no_source_answers(tmp_path: Path) -> None:
    """The index's pages outlive the sources while its timestamp holds, and
    so do the files the proxy verified before: each is checked again against
    the signed entry. Every request for a file refreshed first, and with no
    source answering it failed (502), though the copy was there."""
    from tufmesh.client._proxy import _Index

    repo = init_repo(tmp_path / "repo")
    token = add_project(repo, "tinypkg")
    filename, wheel = _wheel("tinypkg", "1.0")
    home = tmp_path / "home"
    with running(repo) as origin:
        assert post(origin.url, "tinypkg", filename, wheel, token).status_code == 200
        tufmesh("client", "init", str(repo / "metadata" / "1.root.json"),
                "--origin", origin.url, "--home", str(home))  # fmt: skip
        index = _Index(home)
        cached = index.fetch("tinypkg", filename)
        assert cached.read_bytes() == wheel
    index.refreshed -= 60  # (refreshed long ago: it tries the sources again)
    assert index.fetch("tinypkg", filename) == cached
    cached.write_bytes(b"changed on the disk")  # not the signed bytes: not served
    with pytest.raises(TufmeshError):
        index.fetch("tinypkg", filename)
