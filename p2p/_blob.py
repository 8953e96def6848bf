"""``/tufmesh/blob/1``: a byte range of a blob over a libp2p stream (sans-IO framing).

For peers with no reachable HTTP port. One request per stream:

* request: a 2-byte big-endian length, then that many bytes of JSON
  ``{"cid": ..., "offset": ..., "length": ...}`` (at most :data:`MAX_REQUEST`),
  plus ``"patient": true`` from a mirror that waited for its peers in vain
  (HTTP's ``X-Tufmesh-Mirror: patient``);
* response: a status byte (:data:`OK`, :data:`NOT_FOUND`, :data:`BAD_REQUEST`,
  :data:`BUSY`), an 8-byte big-endian length, then exactly that many bytes.
  ``BUSY``: the peer serves as many ranges as it will, or (an origin) gave
  this chunk to another mirror; the bytes, JSON ``{"refused": "busy" or
  "seeded", "retry": seconds}``, say which and when to ask again, as HTTP's
  503 with ``X-Tufmesh-Refused`` and ``Retry-After`` do (none: busy).

The lengths are the point: a py-libp2p stream whose peer dies mid-transfer
ends in a normal EOF, so without them a truncated chunk would look like a
short success. The receiver still verifies every chunk against the signed
manifest before it keeps it; the protocol only moves bytes.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Final

from tufmesh._json import loads
from tufmesh.errors import TufmeshError

__all__ = [
    "BAD_REQUEST",
    "BUSY",
    "HAVE_PROTOCOL",
    "MAX_QUERY",
    "MAX_RANGE",
    "MAX_RECORD",
    "MAX_REFUSAL",
    "MAX_REQUEST",
    "NOT_FOUND",
    "OK",
    "PROTOCOL",
    "BlobBusyError",
    "BlobRequest",
    "BlobStreamError",
    "decode_refusal",
    "decode_request",
    "encode_json",
    "encode_refusal",
    "encode_request",
    "json_size",
    "response_head",
]

PROTOCOL: Final = "/tufmesh/blob/1"
#: The have-query (ADR 11) over libp2p: a length-prefixed JSON request and
#: answer, as ``POST /have`` carries them over HTTP.
HAVE_PROTOCOL: Final = "/tufmesh/have/1"
#: Largest have-query answer, over HTTP or libp2p (a bitfield per blob: 64k
#: chunks of 1 MiB, 64 GiB, in 16 KiB of hex, and a few peers).
MAX_RECORD: Final = 64 * 1024
#: Largest have-query (it names a few blobs; a record answers 64 at most).
MAX_QUERY: Final = 8 * 1024
MAX_REQUEST: Final = 1024
#: Largest range served in one response (a span of chunks).
MAX_RANGE: Final = 16 << 20
OK, NOT_FOUND, BAD_REQUEST, BUSY = 0, 1, 2, 3
HEAD: Final = struct.Struct(">BQ")
_LENGTH: Final = struct.Struct(">H")


class BlobStreamError(TufmeshError):
    """A ``/tufmesh/blob/1`` exchange failed: refused, malformed, or cut short."""


class BlobBusyError(BlobStreamError):
    """The peer answered :data:`BUSY`: not a failure, ask again after ``retry`` s."""

    def __init__(self, reason: str = "busy", retry: float | None = None) -> None:
        super().__init__(f"the peer refused: {reason}")
        self.reason = reason
        self.retry = retry


@dataclass(frozen=True)
class BlobRequest:
    """One range of one blob."""

    cid: str
    offset: int
    length: int
    patient: bool = False


def encode_request(request: BlobRequest) -> bytes:
    """The request frame."""
    fields: dict[str, object] = {
        "cid": request.cid, "offset": request.offset, "length": request.length
    }  # fmt: skip
    if request.patient:
        fields["patient"] = True
    body = json.dumps(fields).encode()
    if len(body) > MAX_REQUEST:
        raise BlobStreamError("request too large")
    return _LENGTH.pack(len(body)) + body


def decode_request(frame: bytes) -> BlobRequest:
    """Parse a request frame (length prefix included); raise BlobStreamError if malformed."""
    if len(frame) < _LENGTH.size:
        raise BlobStreamError("truncated request")
    (size,) = _LENGTH.unpack_from(frame)
    if size > MAX_REQUEST or len(frame) != _LENGTH.size + size:
        raise BlobStreamError("bad request length")
    try:
        data = loads(frame[_LENGTH.size :])
        cid, offset, length = data["cid"], data["offset"], data["length"]
        patient = data.get("patient", False)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BlobStreamError("malformed request") from None
    valid_numbers = all(type(n) is int for n in (offset, length))
    if not isinstance(cid, str) or not valid_numbers or not 0 < length <= MAX_RANGE:
        raise BlobStreamError("invalid request")
    if not 0 <= offset < 1 << 62:  # os.pread takes a signed 64-bit offset
        raise BlobStreamError("invalid request")
    if type(patient) is not bool:
        raise BlobStreamError("invalid request")
    return BlobRequest(cid, offset, length, patient)


#: Largest refusal body read (its JSON is a few dozen bytes).
MAX_REFUSAL: Final = 256


def encode_refusal(reason: str, retry: float) -> bytes:
    """A :data:`BUSY` answer: why (``busy``/``seeded``), and when to ask again."""
    body = json.dumps({"refused": reason, "retry": round(retry, 3)}).encode()
    return response_head(BUSY, len(body)) + body


def decode_refusal(body: bytes) -> BlobBusyError:
    """The refusal a :data:`BUSY` answer's bytes carry (a busy one if unreadable)."""
    try:
        data = loads(body)
        reason, retry = data["refused"], data["retry"]
    except (ValueError, KeyError, TypeError):
        return BlobBusyError()
    if reason not in ("busy", "seeded") or type(retry) not in (int, float) or not retry >= 0:
        return BlobBusyError()
    return BlobBusyError(reason, float(retry))


def request_size(prefix: bytes) -> int:
    """Total frame size announced by the first two bytes of a request; one
    past :data:`MAX_REQUEST` is refused before its bytes are read."""
    length: int = _LENGTH.unpack_from(prefix)[0]
    if length > MAX_REQUEST:  # (as decode_request judges it)
        raise BlobStreamError(f"a request of {length} bytes: {MAX_REQUEST} at most")
    return _LENGTH.size + length


def encode_json(value: object, limit: int) -> bytes:
    """A length-prefixed JSON frame (4-byte length) of at most ``limit`` bytes."""
    body = json.dumps(value).encode()
    if len(body) > limit:
        raise BlobStreamError("frame too large")
    return struct.pack(">I", len(body)) + body


def json_size(prefix: bytes, limit: int) -> int:
    """The body size a 4-byte frame prefix announces (checked against ``limit``)."""
    (size,) = struct.unpack(">I", prefix)
    if size > limit:
        raise BlobStreamError(f"frame of {size} bytes; at most {limit}")
    return int(size)


def response_head(status: int, length: int) -> bytes:
    """The response's status byte and length."""
    return HEAD.pack(status, length)
