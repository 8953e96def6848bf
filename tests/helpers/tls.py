"""HTTPS in front of a test server: a throwaway CA, and a TLS proxy on 127.0.0.1.

The proxy is a process of its own (``python tls.py UPSTREAM_PORT CERT KEY``,
trio's TLS streams); it prints its port, forwards each connection to the
upstream port on 127.0.0.1, and exits by itself after ``LIFETIME`` seconds.
Clients trust the CA through ``SSL_CERT_FILE``, as an operator's would.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

LIFETIME = 300.0


def make_ca_and_cert(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 it signed: ``(ca, cert, key)`` PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tufmesh test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@contextmanager
def tls_proxy(upstream_url: str, cert: Path, key: Path) -> Iterator[str]:
    """``https://127.0.0.1:PORT`` forwarding to ``upstream_url`` (``http://127.0.0.1:N``)."""
    upstream = upstream_url.rsplit(":", 1)[1].strip("/")
    proc = subprocess.Popen(
        [sys.executable, __file__, upstream, str(cert), str(key)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield f"https://127.0.0.1:{int(proc.stdout.readline())}"
    finally:
        proc.kill()
        proc.communicate(timeout=30)


async def _pipe(source: trio.abc.ReceiveStream, sink: trio.abc.SendStream) -> None:
    try:
        while data := await source.receive_some(65536):
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await sink.aclose()


async def _serve(upstream: int, context: ssl.SSLContext) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(listeners[0].socket.getsockname()[1], flush=True)

    async def handle(client: trio.SocketStream) -> None:
        tls = trio.SSLStream(client, context, server_side=True, https_compatible=True)
        try:
            await tls.do_handshake()
            server = await trio.open_tcp_stream("127.0.0.1", upstream)
        except (trio.BrokenResourceError, OSError):
            await client.aclose()  # a client that does not trust us, or talks plain HTTP
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_pipe, tls, server)
            nursery.start_soon(_pipe, server, tls)

    with trio.move_on_after(LIFETIME):
        await trio.serve_listeners(handle, listeners)


if __name__ == "__main__":
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(sys.argv[2], sys.argv[3])
    trio.run(_serve, int(sys.argv[1]), context)
