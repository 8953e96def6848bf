"""Blob names: CIDv1, raw codec, SHA-256 multihash, base32.

A blob's CID *is* its SHA-256 digest with a self-describing prefix, so the CID
and the ``sha256`` a TUF target carries are the same 32 bytes. This module is
the only place that knows the encoding; everything else passes CIDs around as
their canonical base32 strings. The canonical spelling is encoded and parsed
here directly (it is one fixed prefix); ``multiformats`` parses every other
spelling, so that foreign CIDs get precise errors.
"""

from __future__ import annotations

import base64
import hashlib
import re

from tufmesh.errors import InvalidCIDError

__all__ = ["cid_from_sha256", "cid_of", "parse_cid"]

_CODEC = "raw"
_HASH = "sha2-256"
# Longer than any CID we accept; bounds the work done on hostile input.
_MAX_CID_TEXT = 128
# The canonical spelling: multibase "b" + base32 of <v1><raw><sha2-256><32>digest.
# Parsing it needs no multiformats tables, and every request names a blob this way.
_PREFIX = bytes([0x01, 0x55, 0x12, 0x20])
_CANONICAL = re.compile(r"bafkrei[a-z2-7]{52}")


def cid_from_sha256(digest: bytes) -> str:
    """Return the canonical CID string for a SHA-256 digest."""
    if len(digest) != 32:
        raise InvalidCIDError(f"a SHA-256 digest is 32 bytes, not {len(digest)}")
    return "b" + base64.b32encode(_PREFIX + digest).decode().rstrip("=").lower()


def cid_of(data: bytes | bytearray | memoryview) -> str:
    """Return the CID of an in-memory blob."""
    return cid_from_sha256(hashlib.sha256(data).digest())


def parse_cid(text: str) -> tuple[str, bytes]:
    """Parse a CID string; return ``(canonical_cid, sha256_digest)``.

    Any multibase spelling of a CIDv1 with the raw codec and a SHA-256 multihash is
    accepted and normalised to base32. Everything else raises
    :class:`InvalidCIDError` with a message that says what is wrong.
    """
    if not isinstance(text, str) or not text:
        raise InvalidCIDError("empty CID")
    if len(text) > _MAX_CID_TEXT:
        raise InvalidCIDError(f"not a CID: {len(text)} characters is too long")
    if _CANONICAL.fullmatch(text):
        raw = base64.b32decode(text[1:].upper() + "======")
        # The last character carries 2 spare bits; they must be zero for the
        # spelling to be canonical (and round-trip), else fall through.
        if raw[:4] == _PREFIX and cid_from_sha256(raw[4:]) == text:
            return text, raw[4:]
    from multiformats import CID  # only for non-canonical spellings: it loads slowly

    try:
        cid = CID.decode(text)
    except Exception as exc:  # multiformats raises KeyError, ValueError and its own types
        raise InvalidCIDError(f"not a CID: {text!r} ({exc})") from None
    if cid.version != 1:
        raise InvalidCIDError(f"unsupported CID version {cid.version} in {text!r}: need CIDv1")
    if cid.codec.name != _CODEC:
        raise InvalidCIDError(f"unsupported codec {cid.codec.name!r} in {text!r}: need 'raw'")
    if cid.hashfun.name != _HASH:
        raise InvalidCIDError(f"unsupported hash {cid.hashfun.name!r} in {text!r}: need 'sha2-256'")
    try:
        digest = bytes(cid.raw_digest)
    except ValueError as exc:  # a multihash whose length is not its function's
        raise InvalidCIDError(f"not a CID: {text!r} ({exc})") from None
    if len(digest) != 32:
        raise InvalidCIDError(f"truncated SHA-256 digest in {text!r}")
    return cid_from_sha256(digest), digest
