"""A mirror for tests: serves a repository directory over HTTP, honestly or not.

Each ``Behaviour`` names one way a mirror can lie or stall. The server is a
real HTTP server on 127.0.0.1 (stdlib, threads); every response it streams is
bounded in size and time, so a test never hangs on it.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal

from tufmesh.cas import BlobStore

Behaviour = Literal[
    "honest", "bitflip", "other", "truncate", "endless", "trickle", "404", "500",
    "rollback", "freeze", "slow", "badlength", "busy", "busyafterone", "manifesttrickle",
    "manifestpadded", "seeded", "headtrickle", "continue", "slowroot", "slowtimestamp",
    "latetimestamp", "rangeflip", "trailers", "gzipnull", "slow404", "heldend", "stallblobs",
    "shortlength",
]  # fmt: skip
ENDLESS_CAP = 64 << 20
#: A gzip member of nothing: it decodes to no bytes at all.
_EMPTY_GZIP = gzip.compress(b"")


class Mirror:
    """A mirror of ``repo`` at ``url``; ``metadata_overrides`` replace files by
    name, ``blob_overrides`` blobs by CID."""

    def __init__(
        self, repo: Path, behaviour: Behaviour = "honest", host: str = "127.0.0.1"
    ) -> None:
        self.repo = repo
        self.behaviour = behaviour
        self.store = BlobStore(repo / "cas")
        self.metadata_overrides: dict[str, bytes] = {}
        self.target_overrides: dict[str, bytes] = {}  # by PROJECT/SHA256.NAME
        self.blob_overrides: dict[str, bytes] = {}
        self.blob_requests = 0
        self.blob_asked: list[float] = []  # when each blob request came (time.monotonic)
        self.blob_bytes = 0
        self.late_bytes = 0  # "latetimestamp": what it could write before the client hung up
        self.late_done = threading.Event()
        #: When set: chunk (ranged blob) requests wait until it is (30 s at most).
        self.hold_chunks: threading.Event | None = None
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                mirror.handle(self)

            def do_POST(self) -> None:
                mirror.have(self)

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        self.server = Server((host, 0), Handler)
        self.server.daemon_threads = True
        named = f"[{host}]" if ":" in host else host
        self.url = f"http://{named}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- serving ---------------------------------------------------------------

    def _file(self, path: str) -> bytes | None:
        kind, _, name = path.lstrip("/").partition("/")
        if kind == "metadata" and name in self.metadata_overrides:
            return self.metadata_overrides[name]
        if kind == "targets" and name in self.target_overrides:
            return self.target_overrides[name]
        if kind in ("metadata", "targets"):
            target = (self.repo / kind / name).resolve()
            if self.repo.resolve() in target.parents and target.is_file():
                return target.read_bytes()
            return None
        if kind == "blobs":
            if name in self.blob_overrides:
                return self.blob_overrides[name]
            try:
                return self.store.read(name, verify=False)
            except Exception:
                return None
        return None

    def have(self, request: BaseHTTPRequestHandler) -> None:
        """A have-record: an honest one, or (any other behaviour) "I hold everything"."""
        import json

        length = min(int(request.headers.get("content-length", 0)), 1 << 16)
        asked = json.loads(request.rfile.read(length) or b"{}").get("cids", [])
        if self.behaviour == "honest":
            blobs = {cid: "all" for cid in asked if self.store.has(cid)}
        else:
            blobs = dict.fromkeys(asked, "all")  # the most attractive lie
        body = json.dumps({"blobs": blobs, "peers": []}).encode()
        request.send_response(200)
        request.send_header("content-type", "application/json")
        request.send_header("content-length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        behaviour = self.behaviour
        path = request.path
        if behaviour in ("headtrickle", "continue"):
            # Every answer's head never ends: a byte a second, or one "100
            # Continue" after another (each trips no per-read timeout).
            piece = b"H" if behaviour == "headtrickle" else b"HTTP/1.1 100 Continue\r\n\r\n"
            deadline = time.monotonic() + 30
            with contextlib.suppress(OSError):
                request.wfile.write(b"HTTP/1.1 200 OK\r\n" if behaviour == "headtrickle" else b"")
                while time.monotonic() < deadline:
                    request.wfile.write(piece)
                    request.wfile.flush()
                    time.sleep(1.0 if behaviour == "headtrickle" else 0.01)
            request.close_connection = True
            return
        is_blob = path.startswith("/blobs/")
        if is_blob:
            self.blob_requests += 1
            self.blob_asked.append(time.monotonic())
        if behaviour in ("404", "500"):
            request.send_error(int(behaviour))
            return
        if is_blob and (
            behaviour == "busy"
            or (behaviour == "seeded" and request.headers.get("range"))
            or (behaviour == "busyafterone" and self.blob_requests > 1)
        ):
            # A refusal that is never a failure, for as long as it may ask
            # ("seeded": ask your peers, at once, for every chunk; the
            # manifest, a whole blob, it serves).
            request.send_response(503)
            request.send_header("x-tufmesh-refused", "seeded" if behaviour == "seeded" else "busy")
            request.send_header("retry-after", "0" if behaviour == "seeded" else "60")
            request.send_header("content-length", "0")
            request.end_headers()
            return
        if behaviour == "badlength" and is_blob:
            request.send_response(206)
            request.send_header("content-length", "x")
            request.end_headers()
            return
        data = self._file(path)
        if data is None and behaviour == "slowroot" and path.endswith(".root.json"):
            # The next root, which does not exist: megabytes of it, just above
            # the slow-retrieval floor (100 KiB/s), until 30 s have passed.
            request.send_response(200)
            request.end_headers()
            deadline = time.monotonic() + 30
            with contextlib.suppress(OSError):
                while time.monotonic() < deadline:
                    request.wfile.write(b"x" * 10240)
                    request.wfile.flush()
                    time.sleep(0.1)
            request.close_connection = True
            return
        if data is None and behaviour in ("trailers", "gzipnull") and path.endswith(".root.json"):
            # The next root, which does not exist: a body whose reads never
            # return (each line within any read timeout), for 30 s: a chunked
            # body's one byte and then endless trailer lines, or empty gzip
            # members (each decodes to nothing) one after another.
            trailers = behaviour == "trailers"
            request.send_response(200)
            request.send_header(*(("transfer-encoding", "chunked") if trailers
                                  else ("content-encoding", "gzip")))  # fmt: skip
            request.end_headers()
            deadline = time.monotonic() + 30
            with contextlib.suppress(OSError):
                request.wfile.write(b"1\r\nx\r\n0\r\n" if trailers else b"")
                while time.monotonic() < deadline:
                    request.wfile.write(b"x-more: 1\r\n" if trailers else _EMPTY_GZIP)
                    request.wfile.flush()
                    time.sleep(0.5)
            request.close_connection = True
            return
        if data is None and behaviour == "slow404":
            time.sleep(5.0)  # "not here", past the 3 s grace, within the 10 s head deadline
        if data is None:
            request.send_error(404)
            return
        if behaviour == "heldend" and not is_blob:
            # Metadata whole at once, with no length, and then the connection
            # held, just within the 10 s read timeout: the end never comes.
            request.send_response(200)
            request.end_headers()
            with contextlib.suppress(OSError):
                request.wfile.write(data)
                request.wfile.flush()
                time.sleep(9.0)
            request.close_connection = True
            return
        start, end = 0, len(data) - 1
        ranged = request.headers.get("range")
        if ranged and ranged.startswith("bytes="):
            first, _, last = ranged[6:].partition("-")
            start, end = int(first), min(int(last), len(data) - 1)
        body = data[start : end + 1]
        if is_blob:
            if behaviour == "bitflip" or (behaviour == "rangeflip" and ranged):  # (chunks only)
                flipped = bytearray(body)
                flipped[len(flipped) // 2] ^= 0x01
                body = bytes(flipped)
            elif behaviour == "other":
                body = (b"another artifact entirely " * (len(body) // 26 + 1))[: len(body)]
        if behaviour == "slow" and is_blob:
            time.sleep(1.0)
        if self.hold_chunks is not None and is_blob and ranged:
            self.hold_chunks.wait(30)
        if behaviour == "stallblobs" and is_blob:
            time.sleep(20.0)  # no answer at all: the client gives up first
            request.close_connection = True
            return
        if behaviour == "slowtimestamp" and path.endswith("/timestamp.json"):
            time.sleep(8.0)  # under the read timeout: a slow source, not a dead one
        if behaviour == "latetimestamp" and path.endswith("/timestamp.json"):
            # Past the 2 s a client waits for other sources once one has
            # answered (within its 3 s slow-retrieval grace), a timestamp that
            # never ends (up to 64 MiB), as fast as the client reads.
            time.sleep(2.5)
            request.send_response(200)
            request.end_headers()
            with contextlib.suppress(OSError):
                while self.late_bytes < ENDLESS_CAP:
                    request.wfile.write(b" " * 65536)
                    self.late_bytes += 65536
            request.close_connection = True
            self.late_done.set()
            return
        status = 206 if ranged else 200
        if behaviour == "manifestpadded" and is_blob and not ranged:
            # A whole blob (a manifest) followed by 8 MiB more, at 128 KiB/s:
            # above the slow-retrieval floor, so only a cap on length stops it.
            request.send_response(status)
            request.send_header("content-length", str(len(body) + (8 << 20)))
            request.end_headers()
            with contextlib.suppress(OSError):
                request.wfile.write(body)
                deadline = time.monotonic() + 70
                while time.monotonic() < deadline:
                    request.wfile.write(b"\0" * 8192)
                    request.wfile.flush()
                    time.sleep(1 / 16)
            return
        if behaviour == "endless" and is_blob:
            request.send_response(status)
            request.send_header("content-type", "application/octet-stream")
            request.end_headers()
            with contextlib.suppress(OSError):
                sent = 0
                while sent < ENDLESS_CAP:
                    request.wfile.write(b"\0" * 65536)
                    sent += 65536
            return
        if behaviour == "shortlength" and is_blob and ranged:
            body = body[: len(body) // 2]  # and says so: a range answered in part
        request.send_response(status)
        request.send_header("content-length", str(len(body)))
        if ranged:
            request.send_header("content-range", f"bytes {start}-{end}/{len(data)}")
        request.end_headers()
        with contextlib.suppress(OSError):
            if behaviour == "truncate" and is_blob:
                request.wfile.write(body[: len(body) // 2])
                request.wfile.flush()
                request.close_connection = True
                return
            # "manifesttrickle": a whole blob (a manifest) a byte a second, ranges honestly.
            if behaviour == "trickle" or (
                behaviour == "manifesttrickle" and is_blob and not ranged
            ):
                deadline = time.monotonic() + 30
                for i in range(len(body)):
                    if time.monotonic() > deadline:
                        return
                    request.wfile.write(body[i : i + 1])
                    request.wfile.flush()
                    time.sleep(1.0)
                return
            request.wfile.write(body)
            self.blob_bytes += len(body) if is_blob else 0


@contextlib.contextmanager
def mirrors(repo: Path, *behaviours: Behaviour) -> Iterator[list[Mirror]]:
    started = [Mirror(repo, b) for b in behaviours]
    try:
        yield started
    finally:
        for mirror in started:
            mirror.close()


def resign_timestamp(repo: Path, *, version_delta: int, expires_in_days: float) -> bytes:
    """A timestamp signed with the repository's real key: older, or expired."""
    from datetime import UTC, datetime, timedelta

    from securesystemslib.signer import Signer
    from tuf.api.metadata import Metadata
    from tuf.api.serialization.json import JSONSerializer

    md = Metadata.from_bytes((repo / "metadata" / "timestamp.json").read_bytes())
    md.signed.version += version_delta
    md.signed.expires = (datetime.now(UTC) + timedelta(days=expires_in_days)).replace(microsecond=0)
    root = Metadata.from_bytes((repo / "metadata" / "1.root.json").read_bytes())
    keyid = root.signed.roles["timestamp"].keyids[0]
    signer = Signer.from_priv_key_uri(
        f"file2:{repo / 'keys' / 'timestamp.pem'}", root.signed.keys[keyid]
    )
    md.signatures.clear()
    md.sign(signer)
    return md.to_bytes(JSONSerializer(compact=True))


__all__ = ["Behaviour", "Mirror", "mirrors", "resign_timestamp"]
