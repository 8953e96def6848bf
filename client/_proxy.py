"""A local package index (PEP 503 and 691) over the verified client: pip and uv
install from it, and every byte they get was checked against TUF first.

``tufmesh client proxy`` serves, on 127.0.0.1:

* ``/simple/`` and ``/simple/<project>/``: the projects and their files, from
  the signed metadata (HTML by default, JSON for
  ``Accept: application/vnd.pypi.simple.v1+json``), each link carrying the
  file's signed SHA-256, which pip checks again;
* ``/files/<project>/<filename>``: the artifact, downloaded by the client from
  any of its sources, in parallel, verified (chunks against the signed
  manifest, the whole against the signed length and hashes) before a byte
  of it is sent.

:class:`ProjectIndex` is the sans-IO core (metadata in, pages out); the
server around it is a thin trio shell. Listing a project walks every hash
bin (a project's files are spread over all of them), so the index is built
once per snapshot version and then answered from memory.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import html
import json
import os
import stat
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from tuf.api.metadata import Metadata, TargetFile, Timestamp

from tufmesh._shares import is_loopback
from tufmesh._ui import log
from tufmesh.client._client import holds
from tufmesh.client._download import own_file
from tufmesh.errors import NotInMetadataError, TufmeshError
from tufmesh.origin._names import normalize_project

__all__ = ["JSON_TYPE", "ProjectIndex", "serve_proxy"]

#: PEP 691's JSON form of the simple API (version 1.0 of it).
JSON_TYPE: Final = "application/vnd.pypi.simple.v1+json"
HTML_TYPE: Final = "application/vnd.pypi.simple.v1+html"
#: The metadata is refreshed at most this often (seconds): pip asks for one
#: page per requirement, and a refresh is a round trip to every source.
REFRESH_EVERY: Final = 10.0
#: Verified files kept for pip (bytes): the least recently served go first.
CACHE_SIZE: Final = 4 << 30
#: Worker threads for pages, and apart for files: files held every thread
#: trio has (40) while their downloads waited on a dead source, and pip's
#: pages waited meanwhile, past pip's 15 s timeout.
PAGE_THREADS: Final = 4
FILE_THREADS: Final = 8


@dataclass(frozen=True)
class IndexFile:
    """One artifact, as an index lists it."""

    filename: str
    #: Its signed entry (a cached copy is checked against it while no source answers).
    target: TargetFile

    @property
    def sha256(self) -> str:
        digest: str = self.target.hashes["sha256"]
        return digest


class ProjectIndex:
    """The simple API's pages for a set of signed artifacts (sans I/O)."""

    def __init__(self, artifacts: Iterable[TargetFile]) -> None:
        projects: dict[str, list[IndexFile]] = {}
        for target in artifacts:
            project, _, filename = target.path.partition("/")
            sha256 = target.hashes.get("sha256")
            if not filename or "/" in filename or not isinstance(sha256, str):
                continue  # not an artifact of a project (tufmesh paths are project/file)
            projects.setdefault(project, []).append(IndexFile(filename, target))
        self.projects = {
            name: sorted(files, key=lambda f: f.filename) for name, files in projects.items()
        }

    def files(self, project: str) -> list[IndexFile]:
        """The files of ``project`` (any spelling PEP 503 normalises to it)."""
        try:
            name = normalize_project(project)
        except TufmeshError:
            raise NotInMetadataError(f"no project {project!r}") from None
        if name not in self.projects:
            raise NotInMetadataError(f"no project {project!r} in the signed metadata")
        return self.projects[name]

    def root_page(self, *, as_json: bool) -> str:
        """``/simple/``: every project."""
        names = sorted(self.projects)
        if as_json:
            return _json({"meta": {"api-version": "1.0"}, "projects": [{"name": n} for n in names]})
        links = "".join(f'<a href="{html.escape(n)}/">{html.escape(n)}</a><br/>\n' for n in names)
        return _page("Simple index", links)

    def project_page(self, project: str, *, as_json: bool) -> str:
        """``/simple/<project>/``: its files, each with its signed SHA-256."""
        files = self.files(project)
        name = normalize_project(project)
        if as_json:
            entries = [
                {
                    "filename": f.filename,
                    "url": _file_url(name, f),
                    "hashes": {"sha256": f.sha256},
                }
                for f in files
            ]
            return _json({"meta": {"api-version": "1.0"}, "name": name, "files": entries})
        links = "".join(
            f'<a href="{html.escape(_file_url(name, f))}">{html.escape(f.filename)}</a><br/>\n'
            for f in files
        )
        return _page(f"Links for {name}", links)


def _file_url(project: str, file: IndexFile) -> str:
    """The file's link from its project page, with its hash for pip to check."""
    return f"../../files/{project}/{file.filename}#sha256={file.sha256}"


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html><head><meta name="pypi:repository-version" content="1.0">'
        f"<title>{html.escape(title)}</title></head>\n<body><h1>{html.escape(title)}</h1>\n"
        f"{body}</body></html>\n"
    )


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True) + "\n"


def wants_json(accept: str) -> bool:
    """Whether an ``Accept`` header asks for PEP 691's JSON (before HTML)."""
    offered = [part.split(";")[0].strip() for part in accept.split(",")]
    for kind in offered:
        if kind == JSON_TYPE:
            return True
        if kind in (HTML_TYPE, "text/html"):
            return False
    return False


class _Index:
    """The index of the newest verified metadata, refreshed now and then, for
    the server's requests (any thread). Each refresh and each download has a
    client of its own (a client is not made for threads, and python-tuf
    refreshes an ``Updater`` once): a download does not hold up the pages."""

    def __init__(self, home: Path, cache_size: int = CACHE_SIZE) -> None:
        from tufmesh.client._home import ClientHome

        self.home = ClientHome(home)
        self.cache = home / "proxy"
        self.cache_size = cache_size
        self.lock = threading.Lock()
        self._files: dict[str, threading.Lock] = {}  # a lock per artifact fetched
        # The last failure of each artifact's download: requests that waited
        # for that download share it, instead of each trying again in turn.
        self._failed: dict[str, tuple[float, TufmeshError]] = {}
        self._serving: dict[Path, int] = {}  # files being sent, held from eviction
        self.index: ProjectIndex | None = None
        self.snapshot = -1
        self.expires = 0.0  # the index's timestamp expiry (Unix time)
        self.listed_until = 0.0  # ...and the first expiry of the roles it lists
        self.refreshed = -REFRESH_EVERY

    def _client(self) -> Any:
        from tufmesh.client._client import Client

        return Client.from_home(self.home)

    def current(self) -> ProjectIndex:
        """The index of the newest signed metadata (refreshed now and then). If
        no source answers, the last index is kept while its timestamp and the
        roles it lists have not expired (a client with that metadata would
        still trust it). A role that expires (a claimed project whose
        developers let it lapse) takes its artifacts out, as `ls` leaves them out."""
        with self.lock:
            now = time.monotonic()
            fresh = time.time() < self.listed_until
            if self.index is not None and now - self.refreshed < REFRESH_EVERY and fresh:
                return self.index
            try:
                with self._client() as client:
                    client.refresh()
                    # The timestamp just verified names the snapshot version.
                    data = (client.metadata_dir / "timestamp.json").read_bytes()
                    timestamp: Timestamp = Metadata[Timestamp].from_bytes(data).signed
                    version = timestamp.snapshot_meta.version
                    if version != self.snapshot or self.index is None or not fresh:
                        self.index = ProjectIndex(client.artifacts())
                        self.snapshot, self.listed_until = version, client.listed_until
                    self.expires = timestamp.expires.timestamp()
            except TufmeshError:
                if self.index is None or time.time() >= min(self.expires, self.listed_until):
                    raise
            self.refreshed = now
            return self.index

    def fetch(
        self, project: str, filename: str, asked: float | None = None, *, hold: bool = False
    ) -> Path:
        """The verified artifact, downloaded into the proxy's cache if need be.
        If a download of it that ended after ``asked`` (``time.monotonic()``:
        when the request came; default now) failed, its error. With ``hold``,
        the file is kept from eviction until :meth:`release` (while it is
        sent: another request's eviction deleted files between their fetch
        and their answer, a 500 or a body cut short)."""
        index = self.current()
        entry = next((f for f in index.files(project) if f.filename == filename), None)
        if entry is None:
            raise NotInMetadataError(f"no file {filename!r} of {project!r} in the signed metadata")
        name = normalize_project(project)
        with self._downloading(f"{name}/{filename}", asked), self._client() as client:
            try:
                result = client.download(f"{name}/{filename}", self.cache / name)
                path = Path(result.path)
                for source, stats in result.sources.items():
                    if stats.banned and not stats.left:  # (said, as `get` says it)
                        log(f"proxy: {source} was banned: {stats.banned}")
            except NotInMetadataError:
                raise
            except TufmeshError:
                # No source answers: a copy verified before is served while the
                # index that lists it holds (its timestamp not expired: what
                # current() keeps), as the index's pages are, if it is still
                # the signed bytes and this user's file alone.
                cached = self.cache / name / filename
                if own_file(cached) and holds(cached, entry.target):
                    path = cached
                else:
                    raise
            os.utime(path)  # served now: the last to go
            if hold:
                with self.lock:
                    key = path.resolve()
                    self._serving[key] = self._serving.get(key, 0) + 1
        self._evict(keep=path)
        return path

    def release(self, path: Path) -> None:
        """``path``, held by :meth:`fetch`, is sent (or its answer given up)."""
        with self.lock:
            key = path.resolve()
            held = self._serving.pop(key, 0) - 1
            if held > 0:
                self._serving[key] = held

    def _evict(self, keep: Path) -> None:
        """Delete the least recently served files (unfinished downloads too)
        until the cache holds ``cache_size`` bytes at most, but ``keep`` and
        what is being downloaded now. Without a bound, any page a browser
        showed could have the proxy fetch the whole repository to the disk."""
        keep, files = keep.resolve(), []
        with contextlib.suppress(OSError):
            for project in self.cache.resolve().iterdir():
                for path in project.iterdir():
                    with contextlib.suppress(OSError):
                        info = path.lstat()
                        if stat.S_ISREG(info.st_mode):
                            files.append((info.st_mtime, info.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.cache_size:
                break
            artifact = f"{path.parent.name}/{path.name.removesuffix('.part')}"
            with self.lock:
                lock = self._files.get(artifact)
                if path == keep or path in self._serving or (lock is not None and lock.locked()):
                    continue  # served or written now
                with contextlib.suppress(OSError):
                    path.unlink()
                    total -= size

    @contextlib.contextmanager
    def _downloading(self, path: str, asked: float | None) -> Iterator[None]:
        """One download of ``path`` at a time (pip may ask twice at once): two
        shared one part file, and the second could find it renamed under it.
        A request that waited for a download that failed fails with it."""
        if asked is None:
            asked = time.monotonic()
        with self.lock:
            lock = self._files.setdefault(path, threading.Lock())
        with lock:
            failed = self._failed.get(path)
            if failed is not None and failed[0] >= asked:
                # A copy: raising the one object again in every waiter grew
                # its traceback by each one's frames, and kept them alive.
                raise copy.copy(failed[1]) from None
            try:
                yield
            except TufmeshError as exc:
                now = time.monotonic()
                with self.lock:  # (what is older than any request waiting now goes)
                    for stale in [p for p, (t, _) in self._failed.items() if t < now - 600]:
                        del self._failed[stale]
                    self._failed[path] = (now, copy.copy(exc))
                raise
            self._failed.pop(path, None)


async def serve_proxy(
    home: Path,
    host: str = "127.0.0.1",
    port: int = 3141,
    *,
    cache_size: int = CACHE_SIZE,
    on_ready: Callable[[str], Awaitable[None] | None] | None = None,
) -> None:
    """Serve the index of the client set up in ``home`` until cancelled."""
    import trio
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, PlainTextResponse, Response
    from starlette.routing import Route

    from tufmesh.origin._server import ByteCounter, start_http

    class Held(FileResponse):
        """A file held from eviction while it is sent, however its answer ends."""

        def __init__(self, path: Path, release: Callable[[], None]) -> None:
            super().__init__(path, media_type="application/octet-stream")
            self.release = release

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                self.release()

    index = _Index(home, cache_size)
    pages, files = trio.CapacityLimiter(PAGE_THREADS), trio.CapacityLimiter(FILE_THREADS)

    def refused(request: Request, exc: TufmeshError) -> Response:
        status = 404 if isinstance(exc, NotInMetadataError) else 502
        if status == 502:  # (pip shows the status, not the body: the reason is said here)
            log(f"proxy: {request.url.path}: {exc}")
        return PlainTextResponse(f"{exc}\n", status)

    async def page(request: Request) -> Response:
        as_json = wants_json(request.headers.get("accept", ""))
        project = request.path_params.get("project")
        try:
            current = await trio.to_thread.run_sync(index.current, limiter=pages)
            body = (
                current.root_page(as_json=as_json)
                if project is None
                else current.project_page(project, as_json=as_json)
            )
        except TufmeshError as exc:
            return refused(request, exc)
        kind = JSON_TYPE if as_json else "text/html; charset=utf-8"
        return Response(body, media_type=kind, headers={"vary": "Accept"})

    async def file(request: Request) -> Response:
        project, filename = request.path_params["project"], request.path_params["filename"]
        try:
            asked = time.monotonic()  # a download failing after it fails this request too
            fetch = functools.partial(index.fetch, project, filename, asked, hold=True)
            path = await trio.to_thread.run_sync(fetch, limiter=files)
        except TufmeshError as exc:
            return refused(request, exc)
        return Held(path, functools.partial(index.release, path))

    app = Starlette(
        routes=[
            Route("/simple/", page, methods=["GET", "HEAD"]),
            Route("/simple/{project}/", page, methods=["GET", "HEAD"]),
            Route("/files/{project}/{filename}", file, methods=["GET", "HEAD"]),
        ]
    )
    served: Any = LocalOnly(ByteCounter(app), check_host=await _binds_loopback(host))
    async with trio.open_nursery() as nursery:
        await start_http(nursery, served, host, port, None, on_ready)


async def _binds_loopback(host: str) -> bool:
    """True if ``host`` names this machine's loopback only, however spelt
    (``127.1``, a name the hosts file maps to 127.0.1.1): judged by the text
    alone, ``--host 127.1`` bound to 127.0.0.1 without the check below."""
    import trio

    if is_loopback(host):
        return True
    try:
        found = await trio.socket.getaddrinfo(host, None)
    except OSError:
        return False  # (the bind fails too, and says so)
    return bool(found) and all(is_loopback(str(info[4][0])) for info in found)


class LocalOnly:
    """ASGI: answer programs, not web pages of other sites; with ``check_host``
    (a proxy on loopback), only requests that name this machine in their ``Host``.

    A proxy on 127.0.0.1 is out of other machines' reach, not of a web page
    in the user's browser. The page's own requests (an image, a script, a
    ``fetch``) say where they come from (``Sec-Fetch-Site``, ``Origin``),
    which pip and uv never send: without the check, any page could have the
    proxy download any artifact, though not read it. And a name the page's
    site controls can be re-pointed at 127.0.0.1 (DNS rebinding): the page's
    requests are then its own site's, and read their answers, but name that
    site in ``Host``.
    """

    def __init__(self, app: Any, *, check_host: bool = True) -> None:
        self.app = app
        self.check_host = check_host

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            site = headers.get(b"sec-fetch-site", b"none")
            if b"origin" in headers or site not in (b"none", b"same-origin"):
                await _refuse(send, 403, b"this index answers programs, not web pages\n")
                return
            if self.check_host:
                named = headers.get(b"host", b"").decode("latin-1")
                try:
                    local = is_loopback(urlsplit(f"//{named}").hostname or "")
                except ValueError:  # not a host[:port]
                    local = False
                if not local:
                    body = b"this index answers requests for 127.0.0.1 or localhost only\n"
                    await _refuse(send, 421, body)
                    return
        await self.app(scope, receive, send)


async def _refuse(send: Any, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
