"""The announcement gate, sans I/O: a table of forged, stale and honest messages."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Root
from tuf.api.serialization.json import JSONSerializer

from tufmesh.origin import OriginConfig, OriginRepository
from tufmesh.p2p import AnnouncementGate, topic_for


@pytest.fixture
def repo(tmp_path: Path) -> OriginRepository:
    return OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))


def timestamp(repo: OriginRepository, *, version: int | None = None, expires_days: float = 1,
              signer: CryptoSigner | None = None) -> bytes:  # fmt: skip
    from securesystemslib.signer import Signer

    md = Metadata.from_bytes((repo.metadata_dir / "timestamp.json").read_bytes())
    if version is not None:
        md.signed.version = version
    md.signed.expires = (datetime.now(UTC) + timedelta(days=expires_days)).replace(microsecond=0)
    root = repo.root()
    keyid = root.roles["timestamp"].keyids[0]
    md.signatures.clear()
    md.sign(
        signer
        or Signer.from_priv_key_uri(
            f"file2:{repo.dir / 'keys' / 'timestamp.pem'}", root.keys[keyid]
        )
    )
    return md.to_bytes(JSONSerializer(compact=True))


def test_honest_announcements_are_accepted_newest_first(repo: OriginRepository) -> None:
    gate = AnnouncementGate(repo.root())
    first = gate.check(timestamp(repo, version=5))
    assert first.accept and first.newer and first.version == 5
    again = gate.check(timestamp(repo, version=5))
    assert again.accept and not again.newer  # a duplicate: harmless, no refresh


@pytest.mark.attack
@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong key", "not a timestamp key"),
        ("older", "old timestamp"),
        ("expired", "expired"),
        ("oversized", "limit"),
        ("garbage", "not TUF metadata"),
        ("root instead", "not a timestamp"),
        # Genuine and signed, but padded: each padding was a "new" message.
        ("padded", "not written as the origin writes a timestamp"),
        ("pretty", "not written as the origin writes a timestamp"),
        # Genuine and signed, compact, but with what python-tuf keeps unread:
        # each such variant was a new message, accepted and relayed.
        ("extra field", "unknown fields"),
        ("extra signed field", "unknown fields"),
        ("extra meta field", "unknown fields"),
        ("extra signature field", "unknown fields"),
        ("a stranger's signature too", "not a timestamp key"),
    ],
)
def test_forged_or_stale_announcements_are_rejected(
    repo: OriginRepository, case: str, reason: str
) -> None:
    gate = AnnouncementGate(repo.root(), newest=10)
    data = {
        "wrong key": lambda: timestamp(repo, version=11, signer=CryptoSigner.generate_ed25519()),
        "older": lambda: timestamp(repo, version=9),
        "expired": lambda: timestamp(repo, version=11, expires_days=-1),
        "oversized": lambda: b"{" + b" " * 20000 + b"}",
        "garbage": lambda: b"not json",
        "root instead": lambda: (repo.metadata_dir / "1.root.json").read_bytes(),
        "padded": lambda: timestamp(repo, version=11) + b" ",
        "pretty": lambda: Metadata.from_bytes(timestamp(repo, version=11)).to_bytes(
            JSONSerializer(compact=False)
        ),
        "extra field": lambda: variant(repo, lambda md: md.unrecognized_fields),
        "extra signed field": lambda: variant(repo, lambda md: md.signed.unrecognized_fields),
        "extra meta field": lambda: variant(
            repo, lambda md: md.signed.snapshot_meta.unrecognized_fields
        ),
        "extra signature field": lambda: variant(
            repo, lambda md: next(iter(md.signatures.values())).unrecognized_fields
        ),
        "a stranger's signature too": lambda: stranger_signed(repo),
    }[case]()
    verdict = gate.check(data)
    assert not verdict.accept and reason in verdict.reason
    assert gate.newest == 10  # nothing learnt from a rejected message
    assert gate.check(timestamp(repo, version=11)).newer  # and an honest one still works


def variant(repo: OriginRepository, fields: Callable[[Metadata[Any]], dict[str, Any]]) -> bytes:
    """A genuine timestamp (v11) with one more field where ``fields`` says,
    written as the origin writes (compact): the signature still holds."""
    md = Metadata.from_bytes(timestamp(repo, version=11))
    fields(md)["x"] = 1
    return md.to_bytes(JSONSerializer(compact=True))


def stranger_signed(repo: OriginRepository) -> bytes:
    """A genuine timestamp (v11) that a key of no role has signed too."""
    md = Metadata.from_bytes(timestamp(repo, version=11))
    md.sign(CryptoSigner.generate_ed25519(), append=True)
    return md.to_bytes(JSONSerializer(compact=True))


def test_a_genuine_older_timestamp_is_refused_but_not_held_against_its_sender(
    repo: OriginRepository,
) -> None:
    """A node that has just started, or whose sync went ahead of the gossip,
    is sent the last seconds' announcements by its honest peers' caches, and
    a peer that is behind relays what is new to it: stale to this node
    alone, each is ignored, not rejected (which cost the sender 99 points).
    A forged or expired one is rejected whatever its version."""
    gate = AnnouncementGate(repo.root(), newest=10)
    recent = gate.check(timestamp(repo, version=9))
    assert not recent.accept and recent.ignore and "old timestamp" in recent.reason
    older = gate.check(timestamp(repo, version=3, expires_days=0.1))  # signed long before
    assert not older.accept and older.ignore
    expired = gate.check(timestamp(repo, version=8, expires_days=-1))
    assert not expired.accept and not expired.ignore
    forged = bytearray(timestamp(repo, version=7))
    forged[forged.index(b'"sig":"') + 7] ^= 1
    assert not gate.check(bytes(forged)).ignore
    gate.hold(12)
    assert gate.newest == 12 and gate.check(timestamp(repo, version=11)).ignore
    gate.hold(11)  # an older sync changes nothing
    assert gate.newest == 12


def test_topic_is_named_by_the_root_keys(repo: OriginRepository, tmp_path: Path) -> None:
    other = OriginRepository.create(tmp_path / "other", OriginConfig(bins=4))
    assert topic_for(repo.root()) != topic_for(other.root())
    assert topic_for(repo.root()) == topic_for(
        Metadata[Root].from_bytes((repo.metadata_dir / "1.root.json").read_bytes()).signed
    )
