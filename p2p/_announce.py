"""Announcements: a signed ``timestamp.json``, gossiped when a new version exists.

The gate is the sans-IO core of the gossip validator: bytes in, a verdict out.
It runs on every node before a message is delivered *or relayed*, so a forged
or stale announcement dies at the first honest hop:

* size bound before parsing (python-tuf's own limit for a timestamp);
* it must parse as TUF timestamp metadata, written as the origin writes it
  (compact JSON, no fields the origin does not write): the signatures cover
  only the signed part, so padding, reordering, or a field python-tuf keeps
  unread made one genuine timestamp any number of "new" messages, each
  validated, delivered and relayed by every node;
* it must be signed by a threshold of the timestamp keys of the root the node
  trusts (the same check python-tuf makes), and by no other key (a
  stranger's signature beside them was another such variant);
* it must not be expired, and not be older than the newest the node has seen.
  An older one, genuine, is refused without being held against its sender
  (``ignore``, as GossipSub's specification advises for messages that are
  stale to the receiver alone): an honest peer's message cache replays the
  last seconds' announcements to a node that has just started, or whose
  sync went ahead of the gossip, and a peer that is behind itself (just
  restarted) relays what is new to it; each refusal cost such a peer 99
  points, two of them past the threshold below which it is sent no
  announcement. (The node lets off 16 a peer at once, then one every
  7.5 s, and holds the others against it: ``LET_OFF``.)

An accepted announcement only tells a node *when* to refresh; what it then
trusts is decided by python-tuf, as always.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from tuf.api.metadata import Metadata, Root, Timestamp
from tuf.api.serialization.json import JSONSerializer

__all__ = ["MAX_ANNOUNCEMENT", "AnnouncementGate", "Verdict", "topic_for"]

#: python-tuf's default ``timestamp_max_length``.
MAX_ANNOUNCEMENT: Final = 16 * 1024
#: How the origin writes a timestamp (``tufmesh.origin``), and so every
#: announcement of one.
_COMPACT: Final = JSONSerializer(compact=True)


@dataclass(frozen=True)
class Verdict:
    """Accept (deliver and relay) or reject (drop, and count against the sender,
    unless ``ignore``)."""

    accept: bool
    reason: str
    version: int = 0
    newer: bool = False  # accepted and newer than anything seen: refresh now
    ignore: bool = False  # rejected as stale to this node alone: not the sender's fault


def topic_for(root: Root) -> str:
    """The gossip topic of a repository, named from its root keys."""
    keyids = ",".join(sorted(root.roles["root"].keyids))
    return f"tufmesh/{hashlib.sha256(keyids.encode()).hexdigest()[:16]}/timestamp"


class AnnouncementGate:
    """Checks announcements against a trusted root; remembers the newest version."""

    def __init__(self, root: Root, newest: int = 0) -> None:
        self.root = root
        self.newest = newest

    def hold(self, version: int) -> None:
        """This node holds timestamp ``version`` (after a sync): older
        announcements are stale from now on."""
        self.newest = max(self.newest, version)

    def check(self, data: bytes, now: datetime | None = None) -> Verdict:
        """Judge one announcement (see the module docstring for the rules)."""
        if len(data) > MAX_ANNOUNCEMENT:
            return Verdict(False, f"{len(data)} bytes is over the {MAX_ANNOUNCEMENT}-byte limit")
        try:
            md = Metadata.from_bytes(data)
        except Exception:  # python-tuf raises several deserialisation errors
            return Verdict(False, "not TUF metadata")
        if not isinstance(md.signed, Timestamp):
            return Verdict(False, f"not a timestamp but {md.signed.type}")
        if md.to_bytes(_COMPACT) != data:
            return Verdict(False, "not written as the origin writes a timestamp (compact JSON)")
        if _unrecognized(md):
            return Verdict(False, "not written as the origin writes a timestamp (unknown fields)")
        if not set(md.signatures) <= set(self.root.roles["timestamp"].keyids):
            return Verdict(False, "signed by a key that is not a timestamp key")
        try:
            self.root.verify_delegate("timestamp", md.signed_bytes, md.signatures)
        except Exception as exc:  # UnsignedMetadataError and key errors
            return Verdict(False, f"not signed by the timestamp keys: {exc}")
        version = md.signed.version
        if md.signed.is_expired(now or datetime.now(UTC)):
            return Verdict(False, f"expired timestamp v{version}", version)
        if version < self.newest:
            return Verdict(
                False, f"old timestamp v{version} (have v{self.newest})", version, ignore=True
            )
        newer = version > self.newest
        self.hold(version)
        return Verdict(True, "ok", version, newer)


def _unrecognized(md: Metadata[Timestamp]) -> bool:
    """True if ``md`` has fields python-tuf keeps without reading them."""
    return bool(
        md.unrecognized_fields
        or md.signed.unrecognized_fields
        or md.signed.snapshot_meta.unrecognized_fields
        or any(sig.unrecognized_fields for sig in md.signatures.values())
    )
