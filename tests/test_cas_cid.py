from __future__ import annotations

import hashlib

import pytest
from multiformats import CID, multihash

from tufmesh.cas import cid_from_sha256, cid_of, parse_cid
from tufmesh.errors import InvalidCIDError, StoreError

HELLO = "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"


def test_cid_is_the_sha256_of_the_bytes() -> None:
    digest = hashlib.sha256(b"hello").digest()
    assert cid_of(b"hello") == HELLO == cid_from_sha256(digest)
    assert parse_cid(HELLO) == (HELLO, digest)


def test_other_multibase_spellings_are_normalised_to_base32() -> None:
    mh = multihash.wrap(hashlib.sha256(b"hello").digest(), "sha2-256")
    spelled = str(CID("base58btc", 1, "raw", mh))
    assert spelled != HELLO
    assert parse_cid(spelled)[0] == HELLO


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "empty"),
        ("bafy", "not a CID"),
        ("hello", "not a CID"),
        ("b" + "a" * 200, "too long"),
        ("QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG", "version 0"),
        (
            str(CID("base32", 1, "dag-pb", multihash.wrap(bytes(32), "sha2-256"))),
            "codec 'dag-pb'",
        ),
        (str(CID("base32", 1, "raw", multihash.digest(b"x", "sha2-512"))), "hash 'sha2-512'"),
        (HELLO[:-5], "not a CID"),
        # sha2-256 claiming a 33-byte digest (multiformats raises on reading it)
        ("bafkreiiaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "not a CID"),
        ("bafkreeaaaaaaaaaaaaaaaaaaaaaaaaaa", "truncated"),  # and a 16-byte one
    ],
)
def test_bad_cids_raise_the_stores_error_with_a_reason(text: str, complaint: str) -> None:
    with pytest.raises(InvalidCIDError, match=complaint) as info:
        parse_cid(text)
    assert isinstance(info.value, StoreError)


def test_digest_must_be_32_bytes() -> None:
    with pytest.raises(InvalidCIDError):
        cid_from_sha256(b"short")
