"""Test helpers: a real ``tufmesh origin serve`` process and python-tuf as verifier."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from tuf.ngclient import Updater

TUFMESH = shutil.which("tufmesh", path=os.path.dirname(sys.executable)) or "tufmesh"


def tufmesh(*args: str, check: bool = True, **kwargs: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [TUFMESH, *args], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def init_repo(path: Path, *extra: str) -> Path:
    tufmesh("origin", "init", "--dir", str(path), "--bins", "16", *extra)
    return path


def add_project(repo: Path, name: str) -> str:
    return tufmesh("origin", "project", "add", "--dir", str(repo), name).stdout.splitlines()[-1]


@dataclass
class Server:
    url: str
    repo: Path
    proc: subprocess.Popen[str]
    stderr: str = ""  # what it said, once stopped

    def kill(self) -> None:
        self.proc.kill()
        self.stderr = self.proc.communicate(timeout=30)[1] or ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.stderr = self.proc.communicate(timeout=30)[1] or ""
            except subprocess.TimeoutExpired:
                self.kill()
        else:
            self.stderr = self.proc.communicate(timeout=30)[1] or ""


def start_server(repo: Path, *extra: str) -> Server:
    proc = subprocess.Popen(
        [TUFMESH, "origin", "serve", "--dir", str(repo), "--port", "0", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "serving" not in line:
        proc.kill()
        raise AssertionError(
            f"origin did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}"
        )
    return Server(url=line.split(" on ")[-1].strip(), repo=repo, proc=proc)


@contextmanager
def running(repo: Path, *extra: str) -> Iterator[Server]:
    server = start_server(repo, *extra)
    try:
        yield server
    finally:
        server.stop()


def committer_of(server: Server) -> int:
    """The process ID of a serving origin's committer (its one child)."""
    tasks = Path(f"/proc/{server.proc.pid}/task").glob("*/children")
    (committer,) = (int(pid) for task in tasks for pid in task.read_text().split())
    return committer


def publish_as_committer_dies(
    repo: Path, publish: list[str], warm: tuple[str, str], settle: float
) -> subprocess.CompletedProcess[str]:
    """Run ``publish`` (a ``tufmesh publish`` command line, its ``--origin``
    added) against an origin of ``repo`` whose committer, once it has
    published a first upload to ``warm`` (project, token: its re-signing as
    it starts is done), is stopped, then killed ``settle`` seconds after the
    upload is stored: given the upload, it never answers. The origin stops
    with it, and is waited for."""
    from tufmesh.cas import BlobStore

    store = BlobStore(repo / "cas")
    server = start_server(repo)
    try:
        committer = committer_of(server)
        project, token = warm
        assert post(server.url, project, "warm-1.tar.gz", b"warm", token).status_code == 200
        os.kill(committer, signal.SIGSTOP)
        blobs = len(list(store))
        with subprocess.Popen([*publish, "--origin", server.url], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) as proc:  # fmt: skip
            deadline = time.monotonic() + 30
            while len(list(store)) == blobs and time.monotonic() < deadline:
                time.sleep(0.05)  # stored: then given to the committer
            time.sleep(settle)
            os.kill(committer, signal.SIGKILL)
            out, err = proc.communicate(timeout=60)
        server.proc.wait(timeout=20)
    finally:
        server.stop()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def post(url: str, project: str, filename: str, body: bytes, token: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.post(
        f"{url}/api/v1/projects/{project}/files/{filename}", content=body, headers=headers,
        timeout=60,
    )  # fmt: skip


def tuf_updater(url: str, repo: Path, cache: Path | None = None) -> Updater:
    """python-tuf's own client, unmodified, trusting the repository's first root
    (and what it cached in ``cache`` before, if given)."""
    root = (repo / "metadata" / "1.root.json").read_bytes()
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    return Updater(
        str(cache or tempfile.mkdtemp()),
        f"{url}/metadata/",
        tempfile.mkdtemp(),
        f"{url}/targets/",
        bootstrap=root,
    )


def tuf_download(url: str, repo: Path, target: str) -> bytes:
    updater = tuf_updater(url, repo)
    updater.refresh()
    info = updater.get_targetinfo(target)
    assert info is not None, f"{target} is not in the signed metadata"
    return Path(updater.download_target(info)).read_bytes()


def snapshot_version(repo: Path) -> int:
    import json

    return json.loads((repo / "metadata" / "timestamp.json").read_text())["signed"]["meta"][
        "snapshot.json"
    ]["version"]


@contextmanager
def static_server(directory: Path) -> Iterator[str]:
    """A plain static web server of ``directory`` on 127.0.0.1 (as nginx or S3
    would serve a published tree); its URL."""
    handler = functools.partial(_Quiet, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass
