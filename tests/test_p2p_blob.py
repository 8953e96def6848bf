"""``/tufmesh/blob/1`` between two real libp2p nodes, and its framing."""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path
from typing import Any

import pytest
import trio

import tufmesh.p2p._node as node_module
from tufmesh.cas import BlobStore
from tufmesh.origin import OriginConfig, OriginRepository
from tufmesh.p2p import AnnouncementGate, P2PNode, topic_for
from tufmesh.p2p._blob import (
    MAX_RANGE,
    OK,
    BlobBusyError,
    BlobRequest,
    BlobStreamError,
    decode_request,
    encode_request,
    response_head,
)
from tufmesh.p2p._node import MAX_ANSWERS_PER_PEER


def test_request_frames_round_trip_and_bad_ones_are_refused() -> None:
    request = BlobRequest("bafkrei" + "a" * 52, 1 << 20, 4096)
    assert decode_request(encode_request(request)) == request
    frame = encode_request(request)
    for bad in (
        frame[:-1],  # truncated
        frame + b"x",  # longer than announced
        b"\x00\x04null",
        encode_request(BlobRequest("x", -1, 10)),
        encode_request(BlobRequest("x", 0, 0)),
        encode_request(BlobRequest("x", 0, MAX_RANGE + 1)),
    ):
        with pytest.raises(BlobStreamError):
            decode_request(bad)


class Quitter(P2PNode):
    """A peer that announces a whole range, sends half of it, and hangs up."""

    async def _answer(self, stream: Any) -> None:
        await stream.write(response_head(OK, 4096))
        await stream.write(b"x" * 2048)


class Silent(P2PNode):
    """A peer that takes the stream and never answers."""

    async def _answer(self, stream: Any) -> None:
        with trio.CancelScope(shield=True):
            await trio.sleep(3)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # see test_p2p_node
def test_ranges_over_libp2p_and_a_peer_that_dies_mid_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_module, "_BLOB_TIMEOUT", 1.5)
    root = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4)).root()
    topic = topic_for(root)
    store = BlobStore(tmp_path / "cas")
    body = os.urandom(3 << 20)
    cid = store.put(body)

    async def main() -> None:
        server = P2PNode(tmp_path / "s.key", topic, AnnouncementGate(root),
                         blob_source=store.read_range)  # fmt: skip
        quitter = Quitter(tmp_path / "q.key", topic, AnnouncementGate(root),
                          blob_source=store.read_range)  # fmt: skip
        silent = Silent(tmp_path / "x.key", topic, AnnouncementGate(root),
                        blob_source=store.read_range)  # fmt: skip

        def slowly(cid: str, offset: int, length: int) -> bytes | None:
            time.sleep(1.0)
            return store.read_range(cid, offset, length)

        slow = P2PNode(tmp_path / "w.key", topic, AnnouncementGate(root), blob_source=slowly)
        client = P2PNode(tmp_path / "c.key", topic, AnnouncementGate(root))
        async with trio.open_nursery() as nursery:
            (server_addr, *_) = await nursery.start(server.run)
            (quitter_addr, *_) = await nursery.start(quitter.run)
            (silent_addr, *_) = await nursery.start(silent.run)
            (slow_addr, *_) = await nursery.start(slow.run)
            await nursery.start(client.run)
            got = await client.fetch_range(server_addr, cid, 1 << 20, 1 << 20)
            assert got == body[1 << 20 : 2 << 20]
            tail = await client.fetch_range(server_addr, cid, (3 << 20) - 10, 10)
            assert tail == body[-10:]
            with pytest.raises(BlobStreamError, match="does not hold"):
                await client.fetch_range(server_addr, cid, 3 << 20, 10)  # past the end
            with pytest.raises(BlobStreamError, match="does not hold"):
                await client.fetch_range(server_addr, "bafkrei" + "a" * 52, 0, 10)
            # A cut-off answer is an error, never a short success.
            with pytest.raises(BlobStreamError, match="ended after 2048 of 4096"):
                await client.fetch_range(quitter_addr, cid, 0, 4096)
            # Silence is an error of ours (not libp2p's, not trio's), in time.
            with pytest.raises(BlobStreamError, match="no answer within"):
                await client.fetch_range(silent_addr, cid, 0, 4096)
            # A peer that asks for more ranges at once than it may is told BUSY,
            # and what it is served stays bounded while it does not read.
            outcomes: list[object] = []

            async def ask() -> None:
                try:
                    outcomes.append(len(await client.fetch_range(slow_addr, cid, 0, 1 << 20)))
                except BlobStreamError as exc:
                    outcomes.append(type(exc))

            async with trio.open_nursery() as asking:
                for _ in range(MAX_ANSWERS_PER_PEER + 1):
                    asking.start_soon(ask)
            assert outcomes.count(BlobBusyError) == 1, outcomes
            assert outcomes.count(1 << 20) == MAX_ANSWERS_PER_PEER, outcomes
            nursery.cancel_scope.cancel()

    trio.run(main)
    gc.collect()  # collect the library's leaked sockets here, under this test's filter
