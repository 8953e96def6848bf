"""The range client against canned (and hostile) responses on a real socket."""

from __future__ import annotations

import gc
import ssl
import warnings
from pathlib import Path

import pytest
import trio

from tests.helpers.tls import make_ca_and_cert
from tufmesh.client._http import HttpError, RangePool, Refused, TooLong

BODY = bytes(range(256)) * 4  # 1 KiB


async def serve_once(
    responses: list[bytes],
    tls: ssl.SSLContext | None = None,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def handler(plain: trio.SocketStream) -> None:
        stream: trio.abc.Stream = plain
        if tls is not None:
            stream = trio.SSLStream(plain, tls, server_side=True, https_compatible=True)
            try:
                await stream.do_handshake()
            except trio.BrokenResourceError:
                return  # the client did not trust us
        for response in responses:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                request += chunk
            await stream.send_all(response)
        await stream.aclose()

    task_status.started(port)
    await trio.serve_listeners(handler, listeners)


def fetch(
    responses: list[bytes], count: int = 1, length: int = 16, tls: ssl.SSLContext | None = None
) -> list[object]:
    results: list[object] = []
    scheme = "https" if tls is not None else "http"

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_once, responses, tls)
            pool = RangePool(connect_timeout=2, read_timeout=2)
            for _ in range(count):
                try:
                    results.append(
                        bytes(
                            await pool.fetch(
                                f"{scheme}://127.0.0.1:{port}",
                                "/blobs/x",
                                0,
                                length,
                                1024,
                                lambda n: None,
                            )
                        )
                    )
                except (HttpError, TooLong) as exc:
                    results.append(exc)
            pool.close()
            nursery.cancel_scope.cancel()

    trio.run(main)
    return results


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 206 Partial Content\r\ncontent-length: %d\r\n%s\r\n" % (len(body), extra) + body
    )


def test_keep_alive_reuses_one_connection() -> None:
    assert fetch([ok(BODY[:16]), ok(BODY[:16])], count=2) == [BODY[:16], BODY[:16]]


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (ok(BODY[:32]), TooLong),  # announces more than asked
        (b"HTTP/1.1 206 OK\r\n\r\n" + BODY, TooLong),  # no length, streams on
        (b"HTTP/1.1 206 OK\r\ncontent-length: 16\r\n\r\n" + BODY[:8], HttpError),  # short
        (b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", HttpError),
        (b"HTTP/1.1 206 OK\r\ntransfer-encoding: chunked\r\n\r\n10\r\n", HttpError),
        (b"SSH-2.0-OpenSSH\r\n\r\n", HttpError),
        (b"HTTP/1.1 206 OK\r\nx: " + b"a" * 20000 + b"\r\n\r\n", HttpError),  # head too large
        (b"", HttpError),  # closes at once
        # 5,000 digits: int() raised its own ValueError, quoted to the user
        (b"HTTP/1.1 206 OK\r\ncontent-length: " + b"9" * 5000 + b"\r\n\r\n", HttpError),
        (b"HTTP/1.1 " + b"2" * 5000 + b" OK\r\ncontent-length: 16\r\n\r\n", HttpError),
    ],
)
def test_hostile_responses_raise_only_our_errors(response: bytes, error: type) -> None:
    (result,) = fetch([response])
    assert isinstance(result, error), result
    assert "digits" not in str(result)  # (Python's own words, not ours)


@pytest.mark.parametrize(
    ("retry_after", "honoured"),
    [(b"2.5", 2.5), (b"nan", 1.0), (b"-1e9", 1.0), (b"inf", 10.0), (b"1e300", 10.0)],
)
def test_a_refusal_is_honoured_within_bounds(retry_after: bytes, honoured: float) -> None:
    """A busy refusal's Retry-After of NaN or a negative number had a client
    ask again at once, in a loop; one of "inf", never."""
    refusal = (
        b"HTTP/1.1 503 Service Unavailable\r\nx-tufmesh-refused: busy\r\n"
        b"retry-after: " + retry_after + b"\r\ncontent-length: 0\r\n\r\n"
    )
    (result,) = fetch([refusal])
    assert isinstance(result, Refused) and result.retry == honoured, result


def test_https_ranges_are_checked_against_the_trusted_cas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca, cert, key = make_ca_and_cert(tmp_path)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    (untrusted,) = fetch([ok(BODY[:16])], tls=server)
    assert isinstance(untrusted, HttpError) and "TLS certificate not trusted" in str(untrusted)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    # Both answers on one kept-alive TLS connection (the server's one handler).
    assert fetch([ok(BODY[:16]), ok(BODY[16:32])], count=2, tls=server) == [BODY[:16], BODY[16:32]]


BUSY = b"HTTP/1.1 503 Busy\r\nx-tufmesh-refused: busy\r\nretry-after: 1\r\ncontent-length: 5\r\n\r\nbusy\n"


@pytest.mark.parametrize("tls", [False, True])
def test_a_refusal_keeps_the_connection_for_the_next_request(
    tls: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server answers on one connection only: a second answer proves reuse
    (over TLS, a handshake saved per refusal)."""
    context = None
    if tls:
        ca, cert, key = make_ca_and_cert(tmp_path)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    refused, served = fetch([BUSY, ok(BODY[:16])], count=2, tls=context)
    assert isinstance(refused, Refused) and refused.retry == 1.0
    assert served == BODY[:16]


def test_a_connection_cancelled_while_it_opens_leaves_no_socket_behind() -> None:
    """A request cancelled mid-handshake (an endgame duplicate that lost, a
    download that ended) closes its socket at once, not at garbage collection."""

    async def main() -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]

        async def mute(stream: trio.SocketStream) -> None:
            await trio.sleep_forever()  # takes the connection, never says a word

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, mute, listeners)
            pool = RangePool(connect_timeout=30, read_timeout=30)
            with trio.move_on_after(0.3):
                await pool.fetch(f"https://127.0.0.1:{port}", "/x", 0, 1, 1, lambda n: None)
            pool.close()
            nursery.cancel_scope.cancel()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trio.run(main)
        gc.collect()
    leaks = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaks, [str(w.message) for w in leaks]


def test_a_name_the_resolver_cannot_take_is_a_connection_failure() -> None:
    """A host name IDNA cannot encode (a label past 63 characters) raised
    UnicodeError out of the download, past the handling of a source's
    failures."""

    async def main() -> None:
        pool = RangePool(connect_timeout=5, read_timeout=5)
        with pytest.raises(HttpError, match="cannot connect"):
            await pool.fetch(f"http://{'a' * 64}.example", "/x", 0, 1, 1, lambda n: None)
        pool.close()

    trio.run(main)


def test_tls_failures_are_said_in_words() -> None:
    """https:// to a plain HTTP port said '[SSL: WRONG_VERSION_NUMBER] wrong
    version number (_ssl.c:1006)'."""
    from tufmesh.client._http import tls_reason

    said = tls_reason("[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)")
    assert said == "TLS failed: it does not speak TLS there (an http:// URL?)"
    untrusted = tls_reason("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    assert untrusted == "TLS failed: its certificate is not trusted here"
    assert tls_reason("handshake failure") == "TLS failed (handshake failure)"
