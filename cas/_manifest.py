"""Chunk manifests: the per-chunk BLAKE3 digests of a blob, in a canonical encoding.

A blob is cut into fixed-size chunks (the last one may be shorter; an empty blob
has no chunks). Its manifest records the chunk size, the total length, the
blob's SHA-256 and each chunk's BLAKE3 digest, so that a chunk fetched from any
peer can be checked on arrival, long before the whole blob is there. The
manifest is itself stored as a blob and named by its CID; the origin signs that
CID into the target's ``custom`` field, which is what makes every chunk digest
trustworthy.

Encoding, version 1 (all integers unsigned big-endian)::

    offset  size  field
    0       4     magic  b"TMCM"
    4       1     format version, 1
    5       1     chunk hash, 0x1e (the multicodec code of blake3)
    6       2     reserved, 0
    8       4     chunk size in bytes, 1 .. 2**30
    12      8     blob length in bytes
    20      32    SHA-256 of the whole blob
    52      32*n  BLAKE3-256 of chunk 0 .. n-1, n = ceil(length / chunk size)

There is exactly one encoding of any manifest: :meth:`Manifest.decode` rejects
anything that :meth:`Manifest.encode` would not have produced byte for byte.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Final, final

import blake3

from tufmesh.cas._cid import cid_from_sha256, cid_of
from tufmesh.errors import ChunkRejectedError, ManifestError

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAX_CHUNK_SIZE",
    "Manifest",
    "ManifestBuilder",
    "build_manifest",
]

#: 1 MiB: small enough that a slow peer holds up little and a 1 GiB release
#: needs a 32 KiB manifest; large enough that per-chunk overhead (a request,
#: a digest, a bookkeeping entry) stays well under 1% (docs/adr/0003).
DEFAULT_CHUNK_SIZE: Final = 1 << 20
MAX_CHUNK_SIZE: Final = 1 << 30
#: Manifests bigger than this are refused before parsing: 8 MiB lists
#: 262,144 chunks, i.e. 256 GiB at the default chunk size.
DEFAULT_MAX_MANIFEST_BYTES: Final = 8 << 20

_MAGIC: Final = b"TMCM"
_VERSION: Final = 1
_BLAKE3_CODE: Final = 0x1E
_HEADER: Final = struct.Struct(">4sBBHIQ32s")
_DIGEST: Final = 32
#: Chunks a manifest of at most DEFAULT_MAX_MANIFEST_BYTES can list.
MAX_MANIFEST_CHUNKS: Final = (DEFAULT_MAX_MANIFEST_BYTES - _HEADER.size) // _DIGEST


def _chunk_count(length: int, chunk_size: int) -> int:
    return -(-length // chunk_size)


def _check_chunk_size(chunk_size: int) -> None:
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ManifestError(f"chunk size {chunk_size} is outside 1 .. {MAX_CHUNK_SIZE}")


@final
@dataclass(frozen=True)
class Manifest:
    """The chunk digests of one blob. Immutable; build one with :func:`build_manifest`."""

    chunk_size: int
    length: int
    sha256: bytes
    digests: tuple[bytes, ...] = field(repr=False)

    def __post_init__(self) -> None:
        _check_chunk_size(self.chunk_size)
        if self.length < 0 or self.length >= 1 << 64:
            raise ManifestError(f"blob length {self.length} is out of range")
        if len(self.sha256) != 32:
            raise ManifestError("the blob SHA-256 must be 32 bytes")
        expected = _chunk_count(self.length, self.chunk_size)
        if len(self.digests) != expected:
            raise ManifestError(
                f"{len(self.digests)} chunk digests for a {self.length}-byte blob in "
                f"{self.chunk_size}-byte chunks; expected {expected}"
            )
        if any(len(d) != _DIGEST for d in self.digests):
            raise ManifestError("every chunk digest must be 32 bytes")

    @property
    def count(self) -> int:
        """Number of chunks."""
        return len(self.digests)

    @property
    def blob_cid(self) -> str:
        """CID of the blob this manifest describes."""
        return cid_from_sha256(self.sha256)

    @cached_property
    def encoded(self) -> bytes:
        """The canonical byte encoding (see the module docstring)."""
        header = _HEADER.pack(
            _MAGIC, _VERSION, _BLAKE3_CODE, 0, self.chunk_size, self.length, self.sha256
        )
        return header + b"".join(self.digests)

    @cached_property
    def cid(self) -> str:
        """CID of the manifest's own encoding: the name it is stored and signed under."""
        return cid_of(self.encoded)

    def chunk_span(self, index: int) -> tuple[int, int]:
        """Return ``(offset, length)`` of chunk ``index`` within the blob."""
        if not 0 <= index < self.count:
            raise ChunkRejectedError(f"chunk index {index} is outside 0 .. {self.count - 1}")
        offset = index * self.chunk_size
        return offset, min(self.chunk_size, self.length - offset)

    def verify_chunk(self, index: int, data: bytes | bytearray | memoryview) -> None:
        """Raise :class:`ChunkRejectedError` unless ``data`` is exactly chunk ``index``."""
        _, size = self.chunk_span(index)
        if len(data) != size:
            raise ChunkRejectedError(f"chunk {index} is {len(data)} bytes; expected {size}")
        if blake3.blake3(data).digest() != self.digests[index]:
            raise ChunkRejectedError(f"chunk {index} does not match its BLAKE3 digest")

    @staticmethod
    def encoded_size(length: int, chunk_size: int) -> int:
        """How many bytes the manifest of a ``length``-byte blob in chunks of
        ``chunk_size`` takes (known before it is fetched, from signed data)."""
        return _HEADER.size + _DIGEST * _chunk_count(length, chunk_size)

    @classmethod
    def decode(
        cls, data: bytes | bytearray | memoryview, *, max_size: int = DEFAULT_MAX_MANIFEST_BYTES
    ) -> Manifest:
        """Parse a canonical manifest; raise :class:`ManifestError` on anything else."""
        if len(data) > max_size:
            raise ManifestError(f"manifest of {len(data)} bytes exceeds the {max_size}-byte limit")
        if len(data) < _HEADER.size:
            raise ManifestError(f"manifest of {len(data)} bytes is shorter than its header")
        magic, version, code, reserved, chunk_size, length, sha = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise ManifestError("not a tufmesh chunk manifest (bad magic)")
        if version != _VERSION:
            raise ManifestError(f"unsupported manifest version {version}")
        if code != _BLAKE3_CODE:
            raise ManifestError(f"unsupported chunk hash code {code:#x}")
        if reserved != 0:
            raise ManifestError("reserved manifest field is not zero")
        _check_chunk_size(chunk_size)
        body = bytes(data[_HEADER.size :])
        count = _chunk_count(length, chunk_size)
        if len(body) != count * _DIGEST:
            raise ManifestError(
                f"manifest lists {len(body) / _DIGEST:g} chunk digests; "
                f"a {length}-byte blob in {chunk_size}-byte chunks has {count}"
            )
        digests = tuple(body[i : i + _DIGEST] for i in range(0, len(body), _DIGEST))
        return cls(chunk_size=chunk_size, length=length, sha256=sha, digests=digests)


@final
class ManifestBuilder:
    """Incremental manifest builder: feed the blob's bytes in pieces of any size."""

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        _check_chunk_size(chunk_size)
        self._chunk_size = chunk_size
        self._sha = hashlib.sha256()
        self._chunk = blake3.blake3()
        self._in_chunk = 0
        self._length = 0
        self._digests: list[bytes] = []

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed the next bytes of the blob."""
        view = memoryview(data)
        self._sha.update(view)
        self._length += len(view)
        while view:
            take = min(len(view), self._chunk_size - self._in_chunk)
            self._chunk.update(view[:take])
            self._in_chunk += take
            view = view[take:]
            if self._in_chunk == self._chunk_size:
                if len(self._digests) == MAX_MANIFEST_CHUNKS:  # this one past the limit
                    raise ManifestError(_too_many(self._chunk_size))
                self._digests.append(self._chunk.digest())
                self._chunk = blake3.blake3()
                self._in_chunk = 0

    @property
    def sha256(self) -> bytes:
        """SHA-256 of everything fed so far."""
        return self._sha.digest()

    def finish(self) -> Manifest:
        """Return the manifest of everything fed so far."""
        digests = list(self._digests)
        if self._in_chunk:
            digests.append(self._chunk.digest())
        if len(digests) > MAX_MANIFEST_CHUNKS:
            raise ManifestError(_too_many(self._chunk_size))
        return Manifest(
            chunk_size=self._chunk_size,
            length=self._length,
            sha256=self._sha.digest(),
            digests=tuple(digests),
        )


def _too_many(chunk_size: int) -> str:
    return (
        f"more than {MAX_MANIFEST_CHUNKS:,} chunks of {chunk_size:,} bytes: a manifest"
        " that no store would read back (a larger chunk size will do)"
    )


def build_manifest(
    pieces: Iterable[bytes | bytearray | memoryview], chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Manifest:
    """Build the manifest of the blob whose bytes are ``pieces``, in order."""
    builder = ManifestBuilder(chunk_size)
    for piece in pieces:
        builder.update(piece)
    return builder.finish()
