"""Metadata from many sources, through python-tuf's own fetcher interface.

python-tuf's ``Updater`` decides what to trust; this fetcher only decides where
to get bytes from. The Updater is given the placeholder base URL
``tufmesh:///metadata/``; for each file it asks for, the fetcher tries the
sources in order (healthiest first) and returns the first complete answer.
Which source served which file is recorded, so that when python-tuf rejects a
file (bad signature, expired, rolled back) the caller can set that source
aside and refresh again from the others (see ``_client.py``).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import queue
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Final

import urllib3
from tuf.api.exceptions import DownloadError, DownloadHTTPError
from tuf.ngclient import FetcherInterface

from tufmesh.client._http import tls_reason
from tufmesh.errors import SourcesFailedError

__all__ = [
    "METADATA_BASE",
    "FetchConfig",
    "MultiSourceFetcher",
    "SourceHealth",
    "done_with",
    "failure_reason",
    "new_pool",
    "pieces",
]

METADATA_BASE: Final = "tufmesh:///metadata/"
TARGET_BASE: Final = "tufmesh:///targets/"
#: How long the other sources' timestamps are waited for once one has come:
#: one that replays an older one is outvoted by a faster honest source, and a
#: silent one costs a refresh this much, not its timeouts.
NEWEST_GRACE: Final = 2.0


@dataclass(frozen=True)
class FetchConfig:
    """Network limits of the client, with the reason for each default."""

    #: A source that does not accept a connection in 5 s on a LAN or the
    #: internet is better skipped; another one is asked.
    connect_timeout: float = 5.0
    #: Longest silence within a response before giving up on that source.
    read_timeout: float = 10.0
    #: Largest metadata file read from any source, before python-tuf applies
    #: its own per-role limits (its largest default, targets, is 5 MB).
    max_metadata_bytes: int = 8 << 20
    #: A response slower than this after ``grace`` seconds is abandoned
    #: (slow retrieval: a byte every few seconds never trips a read timeout).
    min_rate: float = 64 * 1024
    grace: float = 3.0
    #: A response's status line and headers (a few hundred bytes) must have
    #: come by then: sent a byte every few seconds, or after endless "100
    #: Continue" answers, they would trip no read timeout, and hold the
    #: metadata refresh for ever.
    head_timeout: float = 10.0


@dataclass
class SourceHealth:
    """Observed behaviour of one source, kept across runs."""

    url: str
    #: Seconds to a metadata answer, last observed: to its end for a small
    #: one, to its first byte for one of over 64 KiB (its throughput then).
    latency: float | None = None
    throughput: float | None = None  # bytes per second, last observed
    failures: int = 0
    last_error: str | None = None
    #: A plain TUF repository (the conformance CLI's case) has its metadata and
    #: targets wherever it says, and no ``/blobs/``; a tufmesh origin or mirror
    #: has all three under its URL.
    metadata_url: str | None = None
    targets_url: str | None = None
    #: Asked only after every other source (a mirror's origin: it should
    #: upload each blob about once, however many mirrors there are).
    fallback: bool = False

    @property
    def serves_blobs(self) -> bool:
        """True for a tufmesh origin or mirror (chunked downloads by CID)."""
        return self.metadata_url is None

    def base(self, kind: str) -> str:
        """Base URL, ending in ``/``, of ``metadata`` or ``targets``."""
        explicit = self.metadata_url if kind == "metadata" else self.targets_url
        return (explicit or f"{self.url}/{kind}").rstrip("/") + "/"

    def score(self) -> tuple[bool, int, float]:
        """Sort key: fallbacks last, then fewer failures, then lower latency."""
        latency = self.latency if self.latency is not None else 1.0
        return (self.fallback, self.failures, latency)


def done_with(response: urllib3.BaseHTTPResponse, *, whole: bool) -> None:
    """Give the connection back only if its body was read to the end (else a
    stale body would be read as the next response): close it otherwise."""
    if whole:
        response.release_conn()
    else:
        response.close()


def pieces(
    response: urllib3.BaseHTTPResponse, config: FetchConfig, started: float
) -> Iterator[bytes]:
    """The body as it arrives, one receive at a time (``stream()`` would wait
    for 64 KiB, so a source trickling a byte a second would never look slow),
    or :class:`DownloadError` once, after ``config.grace`` seconds from
    ``started``, it comes slower than ``config.min_rate`` (slow retrieval).

    The bytes are taken as sent: a ``Content-Encoding`` nobody asked for is
    refused, not decoded. A watchdog keeps the floor between pieces too: a
    read that brings nothing new (a chunked body's endless trailer lines,
    empty gzip members, the last byte sent and the connection held) never
    returned, and held the refresh for ever, each line within the read
    timeout; it is cut once the body falls behind the floor."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise DownloadError(f"a body in {encoding[:40]!r}, which was not asked for")
    watch = _Floor(response, config, started)
    try:
        while True:
            try:
                piece = response.read1(1 << 16, decode_content=False)
            except Exception:
                if watch.close():
                    raise watch.slow() from None
                raise
            if not piece:
                break
            watch.got += len(piece)
            now = time.monotonic()
            if now > watch.due():  # the same floor as the watchdog's
                raise watch.slow(now)
            yield piece
        if watch.close():  # the end came as it was cut: not a whole body
            raise watch.slow()
    finally:
        watch.close()


class _Floor:
    """A body's slow-retrieval floor, kept by a thread while its reader waits:
    once the bytes so far fall behind it, the socket is shut down under the
    reader, whose read then ends (as :class:`_HeadDeadline` does for heads)."""

    def __init__(
        self, response: urllib3.BaseHTTPResponse, config: FetchConfig, started: float
    ) -> None:
        self.got = 0  # body bytes so far (the reader's count)
        self.config, self.started = config, started
        connection = getattr(response, "connection", None)
        self._sock = getattr(connection, "answer_sock", None)
        if connection is not None:
            connection.floor = self  # stopped before the pool takes the connection back
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._cut = False
        threading.Thread(target=self._watch, daemon=True).start()

    def due(self) -> float:
        """When the body is too slow, unless more comes: past the grace, under
        ``min_rate`` since its start."""
        return self.started + max(self.config.grace, self.got / self.config.min_rate)

    def _watch(self) -> None:
        while not self._done.wait(max(0.0, self.due() - time.monotonic()) + 0.01):
            if time.monotonic() > self.due():  # nothing came that moved it
                with self._lock:
                    if not self._done.is_set() and self._sock is not None:
                        self._cut = True
                        with contextlib.suppress(Exception):  # OSError; not a socket
                            socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
                return

    def close(self) -> bool:
        """Stop watching; True if the body was cut for falling behind."""
        with self._lock:
            self._done.set()
        return self._cut

    def slow(self, now: float | None = None) -> DownloadError:
        elapsed = (now or time.monotonic()) - self.started
        return DownloadError(f"too slow: {self.got / elapsed:.0f} B/s")


def new_pool(config: FetchConfig) -> urllib3.PoolManager:
    """A connection pool with the timeouts of ``config`` (the response head's
    included), no retries, no redirects."""
    timeout = urllib3.Timeout(connect=config.connect_timeout, read=config.read_timeout)
    manager = urllib3.PoolManager(timeout=timeout, retries=False)
    manager.pool_classes_by_scheme = {
        scheme: _with_head_deadline(pool, config.head_timeout)
        for scheme, pool in manager.pool_classes_by_scheme.items()
    }
    return manager


class _HeadDeadline:
    """A connection whose response head must arrive within ``head_timeout``:
    past it, a timer shuts the socket down under the reading thread, whose
    read then fails (urllib3 has per-read timeouts only)."""

    head_timeout: float
    sock: socket.socket | None
    #: The socket of the answer being read (http.client forgets ``sock`` once
    #: the head says the connection closes after it): :class:`_Floor` cuts it.
    answer_sock: socket.socket | None = None
    #: The watchdog of the body being read, if any.
    floor: _Floor | None = None

    def getresponse(self) -> Any:
        answered, late = threading.Event(), threading.Event()
        sock = self.sock  # this request's socket, not whatever the connection has later
        self.answer_sock = sock

        def cut() -> None:
            if sock is not None and not answered.is_set():
                late.set()
                with contextlib.suppress(Exception):  # OSError; not a socket (a TLS proxy)
                    # The plain socket's shutdown, under a TLS one too: the TLS
                    # object stays the reading thread's, which sees the end.
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)

        timer = threading.Timer(self.head_timeout, cut)
        timer.daemon = True
        timer.start()
        try:
            return super().getresponse()  # type: ignore[misc]
        except Exception as exc:
            if late.is_set():  # our cut, not the server's hang-up (urllib3 says timed out)
                raise TimeoutError(f"no answer within {self.head_timeout:g} s") from exc
            raise
        finally:
            answered.set()
            timer.cancel()


def _with_head_deadline(pool: type[Any], head_timeout: float) -> type[Any]:
    """``pool`` (an urllib3 connection pool class) with :class:`_HeadDeadline`
    connections, each of whose body watchdogs (:class:`_Floor`) is stopped
    before the connection goes back to the pool: urllib3 puts it back in the
    read that reaches the body's end, and a watchdog firing then cut the
    socket of the next request on it."""
    connection = type(
        f"Deadline{pool.ConnectionCls.__name__}",
        (_HeadDeadline, pool.ConnectionCls),
        {"head_timeout": head_timeout},
    )

    def _put_conn(self: Any, conn: Any) -> None:
        floor = getattr(conn, "floor", None)
        if floor is not None:
            conn.floor = None
            if floor.close():  # cut meanwhile: not to be used again as it is
                conn.close()
        pool._put_conn(self, conn)

    return type(
        f"Deadline{pool.__name__}", (pool,), {"ConnectionCls": connection, "_put_conn": _put_conn}
    )


@dataclass
class MultiSourceFetcher(FetcherInterface):
    """Fetches each metadata URL from the first source that answers it."""

    sources: list[SourceHealth]
    config: FetchConfig = field(default_factory=FetchConfig)
    excluded: set[str] = field(default_factory=set)
    #: file name -> the source URL that served it, for blaming rejections.
    served_by: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.last_source: str | None = None
        self._limit: int | None = None  # python-tuf's bound for the file being fetched
        #: The timestamps that lost to a newer one in the last fetch of it:
        #: python-tuf never sees them, so the client checks their signatures
        #: itself (:meth:`Client._check_outvoted`).
        self.outvoted: list[tuple[SourceHealth, bytes]] = []
        # urllib3, not httpx: python-tuf imports it anyway, and httpx would add
        # 55 ms to every `tufmesh get` start-up (docs/results.md).
        self._pool = new_pool(self.config)

    @property
    def pool(self) -> urllib3.PoolManager:
        """The keep-alive connections, shared with the manifest fetch."""
        return self._pool

    def close(self) -> None:
        """Close the connection pool."""
        self._pool.clear()

    def ordered(self) -> list[SourceHealth]:
        """Sources to try, healthiest first, without the excluded ones."""
        return sorted(
            (s for s in self.sources if s.url not in self.excluded), key=SourceHealth.score
        )

    @contextlib.contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        """python-tuf's download, whose ``max_length`` (a role's own bound: 512
        KB for a root, 16 KB for a timestamp, or the length its parent signed)
        bounds what is read from each source, not only what it accepts."""
        self._limit = max_length
        try:
            with super().download_file(url, max_length) as file:
                yield file
        finally:
            self._limit = None

    def _fetch(self, url: str) -> Iterator[bytes]:
        if url.startswith(METADATA_BASE):
            kind, name = "metadata", url.removeprefix(METADATA_BASE)
        elif url.startswith(TARGET_BASE):
            kind, name = "targets", url.removeprefix(TARGET_BASE)
        else:
            raise DownloadError(f"not a tufmesh URL: {url}")
        if kind == "targets":
            return self._stream_target(name)
        reasons: dict[str, str] = {}
        if name == "timestamp.json":
            # From every source at once (fallbacks only if none answers), the
            # newest wins. Taking the first answer, one mirror replaying the
            # previous, still valid timestamp hid every newer release from its
            # clients until it expired, and nobody was to blame for it.
            ordered = self.ordered()
            self.outvoted = []
            for group in (
                [s for s in ordered if not s.fallback],
                [s for s in ordered if s.fallback],
            ):
                newest = self._newest(kind, name, group, reasons, outvoted=self.outvoted)
                if newest is not None:
                    # The same bytes as the winner's verify as they do: no
                    # second check of them (every source, as a rule).
                    self.outvoted = [(s, d) for s, d in self.outvoted if d != newest[1]]
                    return self._served(name, *newest)
        else:
            ordered = self.ordered()
            for i, source in enumerate(ordered):
                try:
                    data = self._get(source, f"{source.base(kind)}{name}", self._limit)
                except (urllib3.exceptions.HTTPError, DownloadError) as exc:
                    reasons[source.url] = failure_reason(exc)
                    if reasons[source.url] == _NOT_FOUND and ordered[i + 1 :]:
                        # Not on the healthiest source that answered (python-tuf
                        # asks for root N+1 at every refresh): the others are
                        # heard, each within its own timeouts (a source that
                        # hides a new root must not be taken at its word), at
                        # once, not one after another, the fallbacks (a
                        # mirror's origin) last. The first that serves it wins:
                        # a versioned file's name fixes its version, and
                        # python-tuf checks what it is.
                        rest = ordered[i + 1 :]
                        for group in (
                            [s for s in rest if not s.fallback],
                            [s for s in rest if s.fallback],
                        ):
                            first = self._newest(kind, name, group, reasons, first=True)
                            if first is not None:
                                return self._served(name, *first)
                        break
                    continue
                return self._served(name, source, data)
        listing = "; ".join(f"{u}: {r}" for u, r in reasons.items()) or "no sources"
        if _NOT_FOUND in reasons.values():
            # A source says it does not exist and none served it: that is an
            # answer (python-tuf asks for root N+1 until it gets a 404). A
            # source that hides a file that exists is outvoted by any that has
            # it, since every source is asked before we get here.
            hint = (
                ": is each a tufmesh origin's or mirror's URL?"
                if name == "timestamp.json"  # (every repository has one)
                else ""
            )
            raise DownloadHTTPError(f"{name}: not found on any source ({listing}){hint}", 404)
        raise SourcesFailedError(f"cannot fetch metadata ({name}) from any source: {listing}")

    def _newest(
        self,
        kind: str,
        name: str,
        sources: list[SourceHealth],
        reasons: dict[str, str],
        *,
        first: bool = False,
        outvoted: list[tuple[SourceHealth, bytes]] | None = None,
    ) -> tuple[SourceHealth, bytes] | None:
        """The answer with the highest signed version among ``sources``, asked
        at once: the others get :data:`NEWEST_GRACE` seconds after the first
        good answer (a slow or silent source must not slow every refresh;
        its request ends in the background, by its own timeouts); or, with
        ``first``, the first good answer, each source heard until then within
        its own timeouts. The answers that lost go to ``outvoted``."""
        answers: queue.SimpleQueue[tuple[int, SourceHealth, bytes | BaseException]] = (
            queue.SimpleQueue()
        )

        bound = self._limit  # now: the requests past the grace end after the download

        def ask(rank: int, source: SourceHealth) -> None:
            try:
                answers.put((rank, source, self._get(source, f"{source.base(kind)}{name}", bound)))
            except BaseException as exc:
                answers.put((rank, source, exc))

        asked = time.monotonic()
        for rank, source in enumerate(sources):
            threading.Thread(target=ask, args=(rank, source), daemon=True).start()
        newest: tuple[int, int, SourceHealth, bytes] | None = None
        deadline = math.inf
        unheard = set(range(len(sources)))
        for _ in sources:
            try:
                wait = None if deadline == math.inf else max(0.0, deadline - time.monotonic())
                rank, source, data = answers.get(timeout=wait)
            except queue.Empty:
                # The grace is over: the others are not waited for, and rank
                # behind those that answered (their latency is that long at least).
                late = time.monotonic() - asked
                for silent in (sources[i] for i in unheard):
                    silent.latency = max(silent.latency or 0.0, late)
                break
            unheard.discard(rank)
            if isinstance(data, urllib3.exceptions.HTTPError | DownloadError):
                reasons[source.url] = failure_reason(data)
            elif isinstance(data, Exception):  # unforeseen: still that source's alone
                source.failures += 1
                source.last_error = reasons[source.url] = str(data) or type(data).__name__
            elif isinstance(data, BaseException):
                raise data
            else:
                answer = (_signed_version(data), -rank, source, data)
                if newest is None or answer[:2] > newest[:2]:
                    newest, answer = answer, newest  # the healthiest among equals
                if outvoted is not None and answer is not None:
                    outvoted.append((answer[2], answer[3]))
                if first:
                    break
                deadline = min(deadline, time.monotonic() + NEWEST_GRACE)
        return None if newest is None else (newest[2], newest[3])

    def _served(self, name: str, source: SourceHealth, data: bytes) -> Iterator[bytes]:
        """``data``, the answer of ``source`` for ``name`` (blamed on it if
        python-tuf refuses it)."""
        self.served_by[name] = source.url
        self.last_source = source.url
        return iter([data])

    def _stream_target(self, name: str) -> Iterator[bytes]:
        """Stream an artifact from the first source that answers 200.

        python-tuf's ``download_file`` counts the bytes against the signed
        length as they come and checks the hashes at the end.
        """
        reasons: dict[str, str] = {}
        for source in self.ordered():
            response = None
            try:
                response = self._pool.request(
                    "GET", f"{source.base('targets')}{name}", preload_content=False, redirect=False
                )
                if response.status != 200:
                    reasons[source.url] = f"HTTP {response.status}"
                    continue
                self.last_source = source.url
                # python-tuf bounds the length; we, the rate
                try:
                    yield from pieces(response, self.config, time.monotonic())
                except DownloadError as exc:
                    raise DownloadError(f"{source.url}: {exc}") from None
                done_with(response, whole=True)
                response = None
                return
            except urllib3.exceptions.HTTPError as exc:
                reasons[source.url] = str(exc) or type(exc).__name__
                if self.last_source == source.url:
                    raise DownloadError(f"{source.url} failed mid-transfer: {exc}") from None
            finally:
                if response is not None:
                    done_with(response, whole=False)
        listing = "; ".join(f"{u}: {r}" for u, r in reasons.items()) or "no sources"
        if all(r == "HTTP 404" for r in reasons.values()) and reasons:
            raise DownloadHTTPError(f"{name}: not found on any source ({listing})", 404)
        raise SourcesFailedError(f"every source failed for {name}: {listing}")

    def _get(self, source: SourceHealth, url: str, bound: int | None) -> bytes:
        """The body of ``url`` from ``source``, read up to ``bound`` (python-tuf's
        bound for the file) if it is below our own."""
        started = time.monotonic()
        try:
            response = self._pool.request("GET", url, preload_content=False, redirect=False)
            if response.status != 200:
                done_with(response, whole=False)
                took = source.latency = time.monotonic() - started
                if response.status != 404 or took > self.config.grace:
                    # A "not found" is no fault, unless it was held back: one
                    # 9 s late held every run those 9 s (past the grace, as
                    # any answer's body would be cut).
                    source.failures += 1
                    late = f" after {took:.1f} s" if took > self.config.grace else ""
                    source.last_error = f"HTTP {response.status}{late}"
                raise DownloadHTTPError(f"HTTP {response.status}", response.status)
            limit, cut = self.config.max_metadata_bytes, False
            if bound is not None and bound < limit:
                # One byte past python-tuf's bound is enough for it to refuse
                # the file (and us to blame its source, as for a bad one).
                limit, cut = bound, True
            body, first = read_body(response, limit, self.config, started, cut=cut)
        except (urllib3.exceptions.HTTPError, DownloadError) as exc:
            if not isinstance(exc, DownloadHTTPError):
                source.failures += 1
                source.last_error = failure_reason(exc)
            raise
        elapsed = time.monotonic() - started
        if len(body) > 65536:  # a big one's time is its transfer's too
            source.latency = (first or time.monotonic()) - started
            if elapsed > 0:
                source.throughput = len(body) / elapsed
        else:  # a small one's, to its end (one sent at once, then held, is slow)
            source.latency = elapsed
        return bytes(body)


_NOT_FOUND: Final = "HTTP 404"


def failure_reason(exc: urllib3.exceptions.HTTPError | DownloadError) -> str:
    """Why a source did not serve a metadata file, in a few words."""
    if isinstance(exc, DownloadHTTPError):
        return f"HTTP {exc.status_code}"
    if isinstance(exc, urllib3.exceptions.NameResolutionError):
        return "cannot resolve its host name"
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        # Not urllib3's text, which names its connection class and host again.
        cause = exc.__cause__
        if isinstance(cause, OSError) and cause.strerror:
            return f"cannot connect ({cause.strerror.lower()})"
        return "cannot connect"
    if isinstance(exc, urllib3.exceptions.ProtocolError) and len(exc.args) > 1:
        cause = exc.args[1]  # ("Connection aborted.", the error)
        if isinstance(cause, ConnectionError) and cause.strerror:
            return f"the connection broke ({cause.strerror.lower()})"
        if isinstance(cause, http.client.RemoteDisconnected):
            return "the connection was closed without an answer"
        if isinstance(cause, http.client.IncompleteRead):  # (urllib3's: a count, not bytes)
            got = cause.partial if isinstance(cause.partial, int) else len(cause.partial)
            return f"the connection was closed after {got:,} bytes of the answer"
        if isinstance(cause, http.client.HTTPException):  # (more than 100 headers, say)
            return f"a malformed answer ({str(cause)[:100] or type(cause).__name__})"
    if isinstance(exc, urllib3.exceptions.SSLError):
        return tls_reason(str(exc))
    if isinstance(exc, urllib3.exceptions.TimeoutError):
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, TimeoutError) and str(cause).startswith("no answer"):
            return str(cause)  # the response head's deadline
        timeout = getattr(getattr(exc, "pool", None), "timeout", None)
        read = getattr(timeout, "read_timeout", None)
        return f"no answer within {read:g} s" if isinstance(read, int | float) else "timed out"
    return str(exc) or type(exc).__name__


def _signed_version(data: bytes) -> int:
    """The version a metadata file says it is, unverified (-1 if unreadable):
    only to choose which answer python-tuf then checks."""
    try:
        version = json.loads(data)["signed"]["version"]
    except Exception:  # any garbage, such as JSON nested past the recursion limit
        return -1
    return version if type(version) is int else -1


def read_body(
    response: urllib3.BaseHTTPResponse,
    limit: int,
    config: FetchConfig,
    started: float,
    *,
    cut: bool = False,
) -> tuple[bytearray, float | None]:
    """The whole body of ``response`` and when its first byte came, or
    :class:`DownloadError` once it is over ``limit`` bytes (with ``cut``: its
    first ``limit + 1`` bytes then) or, after the grace
    period, slower than ``min_rate`` (the slow-retrieval defence of every
    body whose length nothing signed)."""
    whole = False
    try:
        first = None
        body = bytearray()
        for piece in pieces(response, config, started):
            first = first or time.monotonic()
            body += piece
            if len(body) > limit:
                if cut:
                    del body[limit + 1 :]
                    return body, first
                raise DownloadError(f"more than {limit} bytes (endless data?)")
        whole = True
    finally:
        done_with(response, whole=whole)
    return body, first
