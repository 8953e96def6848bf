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
* it must not be expired, and not be older than the newest the node has seen
  (a replayed old timestamp is a rollback attempt). One signed at most
  :data:`RECENT` before the newest is refused without being held against
  its sender (``ignore``): an honest peer's message cache replays the last
  seconds' announcements to a node that has just started, or whose sync
  went ahead of the gossip, and each refusal cost that peer 99 points, two
  of them past the threshold below which it is sent no announcement.

An accepted announcement only tells a node *when* to refresh; what it then
trusts is decided by python-tuf, as always.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from tuf.api.metadata import Metadata, Root, Timestamp
from tuf.api.serialization.json import JSONSerializer

__all__ = ["MAX_ANNOUNCEMENT", "RECENT", "AnnouncementGate", "Verdict", "topic_for"]

#: python-tuf's default ``timestamp_max_length``.
MAX_ANNOUNCEMENT: Final = 16 * 1024
#: How long before the newest timestamp (judged by their expiry times: the
#: origin signs each for the same lifetime) an older one is refused as a
#: replay of the recent past, not against its sender. The origin announces
#: once a second at most and GossipSub caches replay the last 3 s; past this,
#: a replay is counted (its sender could otherwise send every old timestamp
#: of the day, each checked once a seen window).
RECENT: Final = timedelta(seconds=60)
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
    ignore: bool = False  # rejected as a recent replay: not the sender's fault


def topic_for(root: Root) -> str:
    """The gossip topic of a repository, named from its root keys."""
    keyids = ",".join(sorted(root.roles["root"].keyids))
    return f"tufmesh/{hashlib.sha256(keyids.encode()).hexdigest()[:16]}/timestamp"


class AnnouncementGate:
    """Checks announcements against a trusted root; remembers the newest version."""

    def __init__(self, root: Root, newest: int = 0, expires: datetime | None = None) -> None:
        self.root = root
        self.newest = newest
        #: When the newest timestamp expires (None: not known yet).
        self.expires = expires

    def hold(self, version: int, expires: datetime | None) -> None:
        """This node holds timestamp ``version``, expiring at ``expires``
        (after a sync): older announcements are stale from now on."""
        if version > self.newest or (version == self.newest and self.expires is None):
            self.newest, self.expires = version, expires

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
            # Both ways: one that expires after the newest was signed for a
            # longer lifetime (the origin's setting changed, or its clock
            # went back), perhaps days before.
            expires = md.signed.expires
            recent = self.expires is not None and self.expires - RECENT <= expires <= self.expires
            reason = f"old timestamp v{version} (have v{self.newest})"
            return Verdict(False, reason, version, ignore=recent)
        newer = version > self.newest
        self.hold(version, md.signed.expires)
        return Verdict(True, "ok", version, newer)


def _unrecognized(md: Metadata[Timestamp]) -> bool:
    """True if ``md`` has fields python-tuf keeps without reading them."""
    return bool(
        md.unrecognized_fields
        or md.signed.unrecognized_fields
        or md.signed.snapshot_meta.unrecognized_fields
        or any(sig.unrecognized_fields for sig in md.signatures.values())
    )
