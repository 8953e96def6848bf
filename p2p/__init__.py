"""The peer-to-peer layer: signed announcements over libp2p gossip.

``AnnouncementGate`` (sans I/O) decides which announcements are delivered and
relayed; ``P2PNode`` runs a libp2p host with a persistent Ed25519 identity,
Noise and yamux only, and GossipSub on the repository's topic.
"""

from __future__ import annotations

from tufmesh.p2p._announce import (
    MAX_ANNOUNCEMENT,
    AnnouncementGate,
    Verdict,
    topic_for,
)
from tufmesh.p2p._node import PACED_PIECE, P2PNode, check_peer_address

__all__ = [
    "MAX_ANNOUNCEMENT",
    "PACED_PIECE",
    "AnnouncementGate",
    "P2PNode",
    "Verdict",
    "check_peer_address",
    "topic_for",
]
