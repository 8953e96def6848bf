"""A minimal HTTP/1.1 range client for the bulk data path.

httpx reads 64 KiB at a time and copies every piece; on our machines that
caps a download at about 0.3 GB/s (shared/notes/http-throughput.md). This
client does only what chunk fetching needs: ``GET`` with a ``Range`` on a
keep-alive connection, the body read with ``recv_into`` straight into the
chunk's buffer. It trusts nothing it reads: the head is bounded (16 KiB, as
h11), the status and length must be exactly what was asked for, and a body
longer than asked is an error, never read further. ``https://`` sources get
TLS with the system's trust store and hostname checks (``SSL_CERT_FILE``
names another CA bundle); their bytes then come through the TLS layer's
buffers, plain ``http://`` ones straight from the socket.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import trio

__all__ = ["HttpError", "RangePool", "Refused", "TooLong", "tls_context", "tls_reason"]

#: Largest response head accepted (h11's default limit).
MAX_HEAD: Final = 16 * 1024
#: A status code: three digits (int() refuses 5,000 with its own message).
_STATUS: Final = re.compile(rb"[0-9]{3}")
#: Longest ``Retry-After`` of a refusal honoured, in seconds: what our own
#: servers ask for at most (the seeding gate's ``MAX_RETRY``).
MAX_RETRY: Final = 10.0


class HttpError(Exception):
    """The source failed: connection, timeout, status, or a short body."""


def tls_context() -> ssl.SSLContext:
    """The one trust store of every HTTPS connection tufmesh makes (chunks,
    metadata, have-queries, uploads): the system's CAs, or the bundle
    ``SSL_CERT_FILE`` names (httpx's own default would be certifi's)."""
    return ssl.create_default_context()


class Refused(HttpError):
    """The source declined the request for now (an origin seeding mirrors): not a failure."""

    def __init__(self, reason: str, retry: float) -> None:
        # Honoured up to MAX_RETRY, whoever said it: a peer cannot park us for
        # long; NaN or a negative wait is no answer (1 s, not asked at once).
        retry = min(max(retry, 0.05), MAX_RETRY) if retry >= 0 else 1.0
        super().__init__(f"refused ({reason}); retry in {retry:g} s")
        self.reason = reason
        self.retry = retry


class NotHeld(HttpError):
    """The source does not hold the blob (404): a mirror of some projects
    only, or one still replicating it; not a failure of the source."""


class _Stale(HttpError):
    """A connection closed before any response: on a pooled one, retry once."""


class TooLong(Exception):
    """The source sent more than the range asked for: it lies (or streams forever)."""


@dataclass
class _Conn:
    sock: trio.socket.SocketType
    tls: trio.SSLStream | None = None
    leftover: bytearray = field(default_factory=bytearray)

    async def send_all(self, data: bytes) -> None:
        if self.tls is not None:
            await self.tls.send_all(data)
            return
        view = memoryview(data)
        while view:  # trio sockets have no sendall
            view = view[await self.sock.send(view) :]

    async def recv_into(self, view: memoryview) -> int:
        if self.tls is None:
            return await self.sock.recv_into(view)
        data = await self.tls.receive_some(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.sock.close()


@dataclass
class RangePool:
    """Keep-alive connections per source; ``fetch`` reads one range into a buffer."""

    connect_timeout: float
    read_timeout: float
    _idle: dict[str, list[_Conn]] = field(default_factory=dict)
    _tls: ssl.SSLContext | None = None

    async def _connect(self, scheme: str, host: str, port: int) -> _Conn:
        with trio.move_on_after(self.connect_timeout):
            try:  # IPv4 or IPv6, each address in the resolver's order
                found = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
            except (OSError, UnicodeError) as exc:  # (a name IDNA cannot encode)
                raise HttpError(f"cannot connect: {_reason(exc)}") from None
            failure = HttpError(f"cannot connect: no address for {host}")
            for family, kind, proto, _, address in found:
                try:
                    sock = trio.socket.socket(family, kind, proto)
                except OSError as exc:  # (an IPv6 address where IPv6 is off)
                    failure = HttpError(f"cannot connect: {_reason(exc)}")
                    continue
                try:
                    return await self._handshake(scheme, host, sock, address)
                except (OSError, trio.BrokenResourceError) as exc:
                    sock.close()
                    failure = HttpError(f"cannot connect: {_reason(exc)}")
                except BaseException:  # cancelled (a duplicate lost): no socket left open
                    sock.close()
                    raise
            raise failure
        raise HttpError("timed out connecting")

    async def _handshake(
        self, scheme: str, host: str, sock: trio.socket.SocketType, address: Any
    ) -> _Conn:
        await sock.connect(address)
        sock.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, 1)
        conn = _Conn(sock)
        if scheme == "https":
            if self._tls is None:
                self._tls = tls_context()
            conn.tls = trio.SSLStream(
                trio.SocketStream(sock), self._tls, server_hostname=host, https_compatible=True
            )
            await conn.tls.do_handshake()
        return conn

    async def _recv_into(self, conn: _Conn, view: memoryview) -> int:
        with trio.move_on_after(self.read_timeout):
            try:
                return await conn.recv_into(view)
            except (OSError, trio.BrokenResourceError) as exc:
                raise HttpError(f"connection failed: {_reason(exc)}") from None
        raise HttpError("timed out")

    async def fetch(
        self,
        base: str,
        path: str,
        offset: int,
        length: int,
        whole_length: int,
        on_bytes: Callable[[int], None],
        headers: dict[str, str] | None = None,
    ) -> bytearray:
        """``GET base+path`` bytes ``offset .. offset+length-1``; return exactly those bytes."""
        url = urlsplit(base)
        host = url.hostname or "127.0.0.1"
        port = url.port or (443 if url.scheme == "https" else 80)
        key = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # (an IPv6 address)
        pool = self._idle.setdefault(f"{url.scheme}://{key}", [])
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        head = (
            f"GET {url.path.rstrip('/')}{path} HTTP/1.1\r\nHost: {key}\r\n"
            f"Range: bytes={offset}-{offset + length - 1}\r\n{extra}\r\n"
        ).encode()
        exchange = (head, offset, length, whole_length, on_bytes)
        if pool:
            try:
                return await self._exchange(pool.pop(), pool, *exchange)
            except _Stale:
                pass  # the server closed an idle connection: not the source's fault
        return await self._exchange(await self._connect(url.scheme, host, port), pool, *exchange)

    async def _exchange(
        self,
        conn: _Conn,
        pool: list[_Conn],
        head: bytes,
        offset: int,
        length: int,
        whole_length: int,
        on_bytes: Callable[[int], None],
    ) -> bytearray:
        """Send one request on ``conn``; return it to ``pool`` if it can be reused."""
        reusable = False
        try:
            try:
                await conn.send_all(head)
            except (OSError, trio.BrokenResourceError) as exc:
                raise HttpError(f"connection failed: {_reason(exc)}") from None
            status, version, headers = await self._read_head(conn)
            whole = status == 200 and offset == 0 and length == whole_length
            declared_text = headers.get(b"content-length")
            if declared_text is not None and not (
                declared_text.isdigit() and len(declared_text) <= 20
            ):  # (past 4,300 digits, int() raises its own ValueError)
                raise HttpError(f"bad Content-Length {declared_text[:40]!r}")
            declared = int(declared_text) if declared_text is not None else None
            refused = headers.get(b"x-tufmesh-refused")
            if status == 503 and refused in (b"busy", b"seeded"):
                try:
                    retry = float(headers.get(b"retry-after", b"1"))
                except ValueError:
                    retry = 1.0
                if declared is not None and declared <= MAX_HEAD:
                    # Read the (empty or short) answer through: the connection
                    # serves the next request, with no new handshake.
                    await self._skip(conn, declared)
                    reusable = _keep_alive(version, headers)
                raise Refused(refused.decode(), retry)
            if status == 404:
                raise NotHeld("HTTP 404: not held there")
            if status != 206 and not whole:
                raise HttpError(f"HTTP {status}")
            if declared is not None and declared > length:
                raise TooLong(f"announced {declared} bytes for a {length}-byte range")
            if declared is not None and declared < length:
                raise HttpError(f"announced {declared} bytes for a {length}-byte range")
            body = bytearray(length + 1)  # one spare byte catches a longer body
            view = memoryview(body)
            got = min(len(conn.leftover), length + 1)
            view[:got] = conn.leftover[:got]
            del conn.leftover[:got]
            if got:
                on_bytes(got)
            while got <= length and (declared is None or got < declared):
                count = await self._recv_into(conn, view[got:])
                if not count:
                    break
                got += count
                on_bytes(count)
            if got > length:
                raise TooLong(f"sent more than the {length} bytes asked for")
            if got < length:
                raise HttpError(f"connection closed after {got} of {length} bytes")
            reusable = declared is not None and _keep_alive(version, headers)
            view.release()
            del body[length:]
            return body
        finally:
            if reusable and not conn.leftover:
                pool.append(conn)
            else:
                conn.close()

    async def _skip(self, conn: _Conn, count: int) -> None:
        """Read and drop ``count`` bytes of a body."""
        taken = min(count, len(conn.leftover))
        del conn.leftover[:taken]
        count -= taken
        scratch = memoryview(bytearray(min(count, 65536) or 1))
        while count:
            got = await self._recv_into(conn, scratch[: min(count, len(scratch))])
            if not got:
                raise HttpError("connection closed in a refusal's body")
            count -= got

    async def _read_head(self, conn: _Conn) -> tuple[int, bytes, dict[bytes, bytes]]:
        buffer = conn.leftover
        chunk = bytearray(65536)
        while b"\r\n\r\n" not in buffer:
            if len(buffer) > MAX_HEAD:
                raise HttpError("response head too large")
            count = await self._recv_into(conn, memoryview(chunk))
            if not count:
                raise _Stale("connection closed before a response")
            buffer += chunk[:count]
        end = buffer.index(b"\r\n\r\n")
        lines = bytes(buffer[:end]).split(b"\r\n")
        del buffer[: end + 4]
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not _STATUS.fullmatch(parts[1]):
            raise HttpError("not an HTTP/1.x response")
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if sep:
                headers[name.strip().lower()] = value.strip().lower()
        if headers.get(b"transfer-encoding", b"identity") != b"identity":
            raise HttpError("chunked responses are not accepted for ranges")
        return int(parts[1]), parts[0], headers

    def close(self) -> None:
        """Close every idle connection (TLS ones without a goodbye: nothing is
        sent on them after the last response anyway)."""
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()


def _keep_alive(version: bytes, headers: dict[bytes, bytes]) -> bool:
    """Whether the server keeps the connection open after this response."""
    keep = headers.get(b"connection")
    return keep == b"keep-alive" if version == b"HTTP/1.0" else keep != b"close"


def tls_reason(text: str) -> str:
    """A TLS failure (as ``ssl``, urllib3 or httpx say it), in a few words."""
    if "WRONG_VERSION_NUMBER" in text.upper():  # TLS spoken to a server that does not
        return "TLS failed: it does not speak TLS there (an http:// URL?)"
    if "CERTIFICATE_VERIFY_FAILED" in text.upper():
        return "TLS failed: its certificate is not trusted here"
    return f"TLS failed ({text})"


def _reason(exc: BaseException) -> str:
    """What went wrong with a connection, in a few words (TLS errors hide
    theirs in ``__cause__``)."""
    while isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return tls_reason(str(exc.reason or exc))
    if isinstance(exc, OSError):
        return str(exc.strerror or exc)
    return str(exc) or type(exc).__name__
