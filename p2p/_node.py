"""A libp2p node for announcements (the trio I/O shell around the gate).

Settings, each for a reason found by running py-libp2p 0.8.1
(shared/notes/py-libp2p-0.8.1.md):

* Noise only (a default host also accepts plaintext and secio peers), yamux
  only (mplex is 5-7x slower);
* ``max_connections_per_peer=1`` (else every dial waits a 250 ms
  happy-eyeballs sleep);
* GossipSub with a 1 s heartbeat (the default is 120 s) and its
  per-topic rate limiter off: it silently drops everything past 10
  messages a second, and our validator already rejects forgeries before
  they are relayed;
* the host is always closed explicitly (leaving ``run()`` leaves the listener
  accepting and leaks sockets).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import math
import os
import socket
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import trio

from tufmesh._durable import write_atomic
from tufmesh._json import loads
from tufmesh._shares import Pace, Shares, UploadFloor, counted_machine, machine_of
from tufmesh._ui import log
from tufmesh.errors import UsageError
from tufmesh.p2p._announce import AnnouncementGate, topic_for
from tufmesh.p2p._blob import (
    BAD_REQUEST,
    BUSY,
    HAVE_PROTOCOL,
    HEAD,
    MAX_QUERY,
    MAX_RECORD,
    MAX_REFUSAL,
    NOT_FOUND,
    OK,
    PROTOCOL,
    BlobBusyError,
    BlobRequest,
    BlobStreamError,
    decode_refusal,
    decode_request,
    encode_json,
    encode_refusal,
    encode_request,
    json_size,
    request_size,
    response_head,
)

if TYPE_CHECKING:
    from tuf.api.metadata import Root

    # Types only: the origin's package imports this one.
    from tufmesh.origin._seeding import SeedGate, Verdict


__all__ = ["PACED_PIECE", "P2PNode", "check_peer_address"]

#: With ``pace`` (the daemons always give one: it counts what they serve, and
#: keeps to ``--max-upload-rate`` if one is set), ranges go out in pieces of
#: this size, each paced: a piece waits for its turn and then goes at once,
#: so a 1 MiB chunk paced whole at 200 KiB/s came after 5 s of nothing, and
#: its requester, which judges the rate after 3 s, gave it up (and, after
#: three, banned an honest peer). Noise frames carry 64 KiB at most anyway.
#: Over HTTP too, under a rate only, where 64 KiB pieces still reach 250 MB/s.
PACED_PIECE: Final = 64 * 1024
#: Seconds a machine whose blob upload ran out of time is refused ("busy"):
#: four times the answer's own limit, so that a requester holding uploads
#: with a trickle of reads holds them a fifth of the time at most.
CUT_PAUSE: Final = 120.0
#: Machines paused at once at most.
MAX_PAUSED: Final = 4096
#: The longest wait a refusal names (what requesters honour at most).
_LONGEST_RETRY: Final = 10.0

#: Mesh degree as in go-libp2p's defaults scaled to small networks (D=6 there).
DEGREE: Final = 4
#: Bound on one ``/tufmesh/blob/1`` exchange (16 MiB at 64 MB/s would take 0.25 s).
_BLOB_TIMEOUT: Final = 30.0
#: Ranges answered at once, in all and to one peer; more are answered BUSY.
#: A range is read whole (a blob still arriving is served only where every
#: chunk of the range is verified), so this bounds the memory that readers
#: who never read can hold: 8 x 16 MiB at most, 2 x 16 MiB per peer.
MAX_ANSWERS: Final = 8
MAX_ANSWERS_PER_PEER: Final = 2
#: Incoming blob and have streams open at once, from one peer and in all:
#: past these a new one is closed unread (a peer cannot open thousands of
#: streams that each wait for a request). Peer identities cost nothing, so
#: the whole is large (a waiting stream costs a task and a few buffers) and
#: it is the share of one that is small.
MAX_STREAMS_PER_PEER: Final = 8
MAX_STREAMS: Final = 1024
#: ...and from one address (an IPv6 /64): identities cost nothing, addresses
#: do, so 128 identities on one machine cannot take every stream.
MAX_STREAMS_PER_HOST: Final = 128
#: Inbound connections one machine (an IPv4 address, an IPv6 /64) holds at
#: once, those still in their handshake included: py-libp2p takes 250 in all,
#: each raw TCP connection holding its place until its handshake's timeout,
#: and one host opening 25 silent connections a second kept every honest
#: peer out (a review, 2026-11-28).
MAX_INBOUND_PER_HOST: Final = 32
#: Seconds an inbound connection has to finish its handshake (py-libp2p: 10).
INBOUND_HANDSHAKE: Final = 5.0
#: Seconds between tries to reach the bootstrap peers a node has lost.
REDIAL: Final = 30.0
#: A request (at most a kilobyte, or a have-query's 8 KiB) must arrive within this.
_REQUEST_TIMEOUT: Final = 5.0
#: After its answer, a peer has this long to close its end of the stream (it
#: has at most a receive window of the answer left to read); then it is reset.
LINGER: Final = 10.0


def check_peer_address(address: str) -> str:
    """``address``, once checked to be a peer's multiaddr with its ID, as
    ``--bootstrap`` takes it (``/ip4/HOST/tcp/PORT/p2p/ID``)."""
    import multiaddr
    from libp2p.peer.peerinfo import info_from_p2p_addr

    try:
        info_from_p2p_addr(multiaddr.Multiaddr(address))
    except Exception:  # multiaddr and libp2p raise several kinds
        raise UsageError(
            f"not a peer's multiaddr (/ip4/HOST/tcp/PORT/p2p/ID): {address!r}"
        ) from None
    return address


async def _read_exactly(
    stream: Any, count: int, progress: Callable[[int], None] | None = None
) -> bytes:
    """``count`` bytes from a libp2p stream; a stream that ends early is an error.
    ``progress(n)`` is told of each piece as it comes.

    py-libp2p reports a peer that died mid-transfer as a normal end of stream:
    only the announced length tells a cut-off answer from a complete one."""
    from libp2p.network.stream.exceptions import StreamEOF

    data = bytearray()
    while len(data) < count:
        try:
            piece = await stream.read(count - len(data))
        except StreamEOF:
            piece = b""
        if not piece:
            raise BlobStreamError(f"the stream ended after {len(data)} of {count} bytes")
        data += piece
        if progress is not None:
            progress(len(piece))
    return bytes(data)


def _remote_ip(stream: Any) -> str | None:
    """The IP address at the far end of a stream's connection, or None where
    libp2p does not say."""
    try:
        return str(stream.get_remote_address()[0])
    except Exception:  # no address
        return None


def _host_of(stream: Any) -> str:
    """The address an incoming stream comes from (an IPv6 address's /64: one
    machine's share), or "?" where libp2p does not say."""
    ip = _remote_ip(stream)
    return "?" if ip is None else machine_of(ip)


async def _end_stream(stream: Any, *, whole: bool) -> None:
    """Close a stream whose exchange ended as the protocol says; reset one left
    midway (failed, or cancelled: a slow-retrieval cut, a lost endgame race).
    Closing needs a lock a cancelled task cannot take: such a stream was
    never closed, its sender kept sending (holding its answer slots), and the
    session kept every byte that came, for as long as the connection lived.

    A stream whose peer has not closed its end too is reset once closed: the
    session would otherwise keep it, and what the peer sends on it, for as
    long as the connection lives (a stream a peer keeps open after each
    exchange, one exchange after another)."""
    # Nothing more is read from it: what it holds or brings is dropped
    # (WindowedYamux._finalize_stream_locked).
    with contextlib.suppress(Exception):
        stream.muxed_stream.done_with = True
        stream.muxed_stream.conn.stream_buffers[stream.muxed_stream.stream_id].clear()
    with trio.CancelScope(shield=True), trio.move_on_after(1), contextlib.suppress(Exception):
        if whole:
            await stream.close()
            if not getattr(stream.muxed_stream, "recv_closed", True):
                await stream.reset()
        else:
            await stream.reset()


async def _peer_ends(stream: Any) -> bool:
    """Close our end of a stream this node has answered and wait, at most
    :data:`LINGER` seconds, for the peer's end (it has read the answer): True
    if it came. Anything more from the peer is a breach of the protocol."""
    with contextlib.suppress(Exception):
        # Closing waits for the session's write lock: shielded from the
        # answer's deadline, which cut it short with the end unsent (the
        # stream was then reset, and the peer lost the answer's tail).
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await stream.close()
        with trio.move_on_after(LINGER):
            try:
                return not await stream.read(1)
            except Exception:  # the end (EOF), or a reset: the peer is done
                return True
    return False


class _NoVerdicts:
    """py-libp2p's validation cache, keeping nothing. It kept each message's
    verdict for 300 s, past the 120 s in which the message counts as seen:
    an old timestamp, valid when first checked and replayed in between, was
    delivered and relayed unchecked (a verdict is the gate's at one moment:
    the newest version seen, the trusted root, the clock). Within the seen
    window a copy is dropped before any check anyway."""

    def get(self, msg_id: bytes) -> None:
        return None

    def put(self, msg_id: bytes, result: Any) -> None:
        pass

    def clear_expired(self) -> None:
        pass


#: Stale announcements (genuine, older than the newest) let off per peer at
#: once, then one every SEEN_TTL / LET_OFF seconds (about twice this in a
#: seen window): an honest peer's message cache replays a few seconds'
#: worth; past this, each is held against its sender as an invalid one
#: (every one is parsed and its signature checked, and any peer may send
#: every unexpired timestamp it kept, each again once the window has passed).
LET_OFF: Final = 16


def _inbound_machine(connection: Any) -> str | None:
    """The machine an inbound connection comes from, as
    :data:`MAX_INBOUND_PER_HOST` counts it (None: not counted)."""
    try:
        return counted_machine(str(connection.get_remote_address()[0]))
    except Exception:  # the transport does not say
        return None


def _layers(conn: Any) -> Iterator[Any]:
    """A libp2p connection and what it runs over, down to its socket's
    stream (SwarmConn, muxer, secure session, Noise framing, raw connection,
    TCP stream)."""
    for _ in range(8):
        yield conn
        conn = next(
            (
                getattr(conn, name)
                for name in ("muxed_conn", "secured_conn", "conn", "stream")
                if getattr(conn, name, None) is not None
            ),
            None,
        )
        if conn is None:
            return


class _OnDisconnect:
    """A libp2p network notifee that calls ``ended(conn)`` as a connection closes."""

    def __init__(self, ended: Callable[[Any], None]) -> None:
        self.ended = ended

    async def disconnected(self, network: Any, conn: Any) -> None:
        self.ended(conn)

    async def connected(self, network: Any, conn: Any) -> None:
        pass

    async def opened_stream(self, network: Any, stream: Any) -> None:
        pass

    async def closed_stream(self, network: Any, stream: Any) -> None:
        pass

    async def listen(self, network: Any, multiaddr: Any) -> None:
        pass

    async def listen_close(self, network: Any, multiaddr: Any) -> None:
        pass


class _Ignored(Exception):
    """Raised by the topic validator for a message to drop without a verdict:
    py-libp2p knows only accept (deliver, relay) and reject (drop, and score
    the sender down), and a recent replay is neither (:attr:`Verdict.ignore`)."""


def _guarded(pubsub: type[Any]) -> type[Any]:
    """py-libp2p's pubsub, with its gossip streams' reader guarded: a peer's
    bytes that do not parse as a protobuf RPC raised a ``DecodeError`` its
    handler does not catch, and six bytes from anyone ended the node, and
    with it the mirror's or the origin's service. Any error reading one
    peer's stream now ends that stream and that peer's pubsub state alone,
    and a message that makes py-libp2p raise is dropped, and scored against
    its sender, as is one whose envelope's signature fails. Its verdicts are
    not cached (:class:`_NoVerdicts`)."""
    from libp2p.pubsub.validators import signature_validator

    class GuardedPubsub(pubsub):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.validation_cache = _NoVerdicts()
            self.let_off = Pace(SEEN_TTL / LET_OFF, LET_OFF)  # stale ones, per peer

        async def push_msg(self, msg_forwarder: Any, msg: Any) -> None:
            # A message whose envelope's signature fails was dropped by
            # py-libp2p unscored (and not remembered): one peer could send
            # them for ever, each checked. It is scored now, as an invalid
            # message, and not marked seen (its data may be a genuine
            # announcement's, whose copies must still come through).
            # (After py-libp2p's own cheaper gates, in its order: a peer
            # scored below the publish threshold costs no check at all.)
            scorer = getattr(self.router, "scorer", None)
            if (
                self.strict_signing
                and msg_forwarder != self.my_id
                and not self.is_peer_blacklisted(msg_forwarder)
                and not self._is_msg_seen(msg)
                and (scorer is None or scorer.allow_publish(msg_forwarder, list(msg.topicIDs)))
            ):
                try:
                    signed = signature_validator(msg)
                except Exception:  # (a key that does not parse: below)
                    signed = True
                if not signed:
                    if scorer is not None:
                        for topic in set(msg.topicIDs) & set(self.topic_ids):
                            scorer.on_invalid_message(msg_forwarder, topic)
                    return
            # A message whose publisher is a hashed peer id and whose key
            # does not parse made py-libp2p's signature check raise, and the
            # error ended the pubsub service, and the node: it is dropped.
            try:
                await super().push_msg(msg_forwarder, msg)
            except _Ignored:
                # A replay of the recent past (an honest peer's cache): not
                # delivered, not relayed, not counted against its sender (but
                # past the pace of LET_OFF), and not checked again while it is
                # remembered as seen.
                self._mark_msg_seen(msg)
                scorer = getattr(self.router, "scorer", None)
                turn = self.let_off.delay(str(msg_forwarder), trio.current_time(), at_most=0.0)
                if scorer is not None and turn is None:
                    for topic in set(msg.topicIDs) & set(self.topic_ids):
                        scorer.on_invalid_message(msg_forwarder, topic)
            except Exception:  # (trio's Cancelled is no Exception: it goes through)
                if msg_forwarder == self.my_id:
                    raise  # our own announcement: the caller tries it again
                # Scored as an invalid message, as the gate's refusals are: an
                # honest peer checks a message before it relays one, so only
                # its maker sends it (unscored, it could be sent for ever).
                # Not one that failed once accepted (marked seen): that would
                # be no fault of the message's.
                scorer = getattr(self.router, "scorer", None)
                if scorer is not None and not self._is_msg_seen(msg):
                    for topic in set(msg.topicIDs) & set(self.topic_ids):
                        scorer.on_invalid_message(msg_forwarder, topic)

        async def stream_handler(self, stream: Any) -> None:
            try:
                await super().stream_handler(stream)
            except Exception:  # (trio's Cancelled is no Exception: it goes through)
                with contextlib.suppress(Exception):
                    await stream.reset()
                with contextlib.suppress(Exception):
                    self._handle_dead_peer(stream.muxed_conn.peer_id)

    return GuardedPubsub


def _by_content(router: type[Any]) -> type[Any]:
    """py-libp2p's GossipSub, without its equivocation check: a publisher
    whose sequence number came twice with other bytes had the second message
    delivered and marked seen, and then not relayed. With messages known by
    their bytes (:func:`message_id`), a peer that sent the newest timestamp
    under a number it had used before stopped it at that hop, and the
    origin's own copy, then already seen, went nowhere. What a message says
    is judged by the gate; who numbered it how does not matter."""

    class ByContent(router):  # type: ignore[misc]
        def _check_equivocation(self, msg: Any) -> bool:
            return True

    return ByContent


def _quiet_libp2p() -> None:
    """Keep py-libp2p's log off the service's stderr, unless LIBP2P_DEBUG asks
    for it: py-libp2p logs what it recovers from (a bootstrap peer that cannot
    be dialled, every 30 s) with no handler of its own, so Python's last resort
    printed it where operators read tufmesh's own lines."""
    log = logging.getLogger("libp2p")
    if not os.environ.get("LIBP2P_DEBUG") and not log.handlers:
        log.addHandler(logging.NullHandler())


def score_params() -> Any:
    """GossipSub v1.1 peer scoring with thresholds actually set.

    py-libp2p's thresholds default to minus infinity, i.e. scoring off. One
    invalid message weighs -99, so a peer that forwards a forgery drops below
    the gossip threshold (-100) on its second one, and below the publish
    (-200) and graylist (-250) thresholds on its third: its messages are then
    dropped unread, and its control messages ignored. (py-libp2p applies the
    publish threshold to what it receives, so the count of invalid messages
    stops at three: go-libp2p's -300 would never be reached.) The counter
    decays by 10% a heartbeat, so a peer that behaves recovers.

    Peer exchange is never accepted: the peers a PRUNE names are records any
    key signs, and at 0.0 (a new peer's score) one PRUNE had a node dial
    sixteen addresses of the sender's choosing, its loopback's services
    included. Our nodes send none (py-libp2p's ``do_px`` is off); they meet
    peers by their bootstrap addresses and those peers' meshes.
    """
    from libp2p.pubsub.score import ScoreParams, TopicScoreParams

    # py-libp2p *subtracts* weight x count for P4 (the spec adds a negative
    # weight), so the weight here is positive.
    return ScoreParams(
        p4_invalid_messages=TopicScoreParams(weight=99.0, cap=1000.0, decay=0.9),
        gossip_threshold=-100.0,
        publish_threshold=-200.0,
        graylist_threshold=-250.0,
        accept_px_threshold=math.inf,  # (no peer scores above 0: never)
    )


#: Seconds a message counts as seen after its last copy (py-libp2p's
#: default): copies within it are dropped unread.
SEEN_TTL = 120
#: Bytes a gossip message may hold beside its data: its publisher, number,
#: topic, signature and key take 193 with an Ed25519 identity (ours), 1,158
#: with an RSA-4096 one (the largest py-libp2p makes).
MAX_ENVELOPE: Final = 1280


def message_id(message: Any) -> bytes:
    """A gossip message's identity: its bytes, whoever published them.

    libp2p's default, the publisher and a sequence number, made every copy of
    the same signed timestamp that one peer publishes again a new message,
    validated, delivered and relayed by every node. Keyed by publisher and
    bytes, one peer's copies counted once, but a peer with many identities
    (free to make) had each copy validated and relayed by every node, and so
    did every mirror that re-announced the version it had completed: a
    flood of the whole network per mirror per release. A signed timestamp
    says the same whoever sends it, so now its copies are one message (for
    the seen-messages window, 120 s).
    """
    return hashlib.sha256(bytes(message.data)).digest()


class P2PNode:
    """A libp2p host that gossips and receives repository announcements."""

    def __init__(
        self,
        key_path: Path,
        topic: str,
        gate: AnnouncementGate,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        bootstrap: list[str] | None = None,
        on_announcement: Callable[[bytes], Awaitable[None] | None] | None = None,
        blob_source: Callable[[str, int, int], bytes | None] | None = None,
        have_source: Callable[[object, str | None], dict[str, Any]] | None = None,
        uploads: SeedGate | None = None,
        pace: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        """``blob_source(cid, offset, length)`` answers ``/tufmesh/blob/1`` requests
        with verified bytes (blocking: it runs in a worker thread), or None;
        ``have_source(query, address)`` answers ``/tufmesh/have/1`` have-queries
        (the parsed JSON, and the IP address it came from or None; it raises
        ValueError for one that is not). ``uploads``
        admits each range request as the HTTP server's gate admits a mirror's
        (the same object: its slots and its seeding hold over both), and
        ``await pace(n)`` before ``n`` bytes go out keeps them within the
        server's upload rate (``--max-upload-rate``, over both too)."""
        self.key_path = key_path
        self.topic = topic
        self.gate = gate
        self.listen = f"/ip4/{host}/tcp/{port}"
        self._address = (host, port)
        self.bootstrap = list(bootstrap or [])
        self._unreached: set[str] = set()  # bootstrap peers said to be out of reach
        self.on_announcement = on_announcement
        self.blob_source = blob_source
        self.have_source = have_source
        self.uploads = uploads
        self.pace = pace
        #: Set once running: lets other threads' trio loops call into this node.
        self.trio_token: trio.lowlevel.TrioToken | None = None
        self.rejected = 0
        self.accepted = 0
        self.ignored = 0  # refused, not against their senders (Verdict.ignore)
        self._pubsub: Any = None
        self._subscription: Any = None
        self._router: Any = None
        self._host: Any = None
        self.peer_id = ""
        self.addrs: list[str] = []
        self._answering = Shares(MAX_ANSWERS_PER_PEER, MAX_ANSWERS)  # blob ranges answered
        self._paused: dict[str, float] = {}  # host -> when its blob requests are heard again
        self._streams = Shares(MAX_STREAMS_PER_PEER, MAX_STREAMS)  # incoming streams open
        self._hosts = Shares(MAX_STREAMS_PER_HOST, MAX_STREAMS)  # ...by the address they come from

    def _cap_inbound(self, swarm: Any) -> None:
        """At most :data:`MAX_INBOUND_PER_HOST` inbound connections from one
        machine (this one's own not counted), for as long as each lasts, its
        handshake included: more are closed at once, before libp2p gives them
        one of its places.

        And a connection's place is given back when it ends: py-libp2p's
        handler of an inbound connection waits for the node to stop, not for
        the connection to end, and holds one of its 250 places till then
        (after 250 connections in the node's life, from anyone, it took no
        more: a review). The handler is cancelled once libp2p says the
        connection is gone."""
        handle = swarm._handle_inbound_connection  # (py-libp2p's, called per connection)
        held = Shares(MAX_INBOUND_PER_HOST, 1 << 30)  # (the whole: py-libp2p's own cap)
        handlers: dict[int, trio.CancelScope] = {}  # by id() of the connection's socket stream

        async def capped(connection: Any, address: Any) -> None:
            machine = _inbound_machine(connection)
            if machine is not None and held.full(machine) is not None:
                with contextlib.suppress(Exception):
                    await connection.close()
                return
            with contextlib.ExitStack() as stack, trio.CancelScope() as scope:
                if machine is not None:
                    stack.enter_context(held.hold(machine))
                handlers[id(connection)] = scope
                try:
                    await handle(connection, address)
                finally:
                    del handlers[id(connection)]

        def ended(conn: Any) -> None:
            for layer in _layers(conn):
                scope = handlers.get(id(layer))
                if scope is not None:
                    scope.cancel()

        swarm._handle_inbound_connection = capped
        swarm.register_notifee(_OnDisconnect(ended))

    def _identity(self) -> Any:
        """The node's key pair, made on first start (written whole or not at
        all: an empty file left by a crash stopped every later start)."""
        from libp2p import load_identity
        from libp2p.crypto.ed25519 import create_new_key_pair

        path = self.key_path
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, create_new_key_pair().private_key.serialize(), mode=0o600)
        try:
            return load_identity(str(path))
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
        except ValueError:
            raise UsageError(
                f"{path} is damaged (not a libp2p key): remove it and a new identity is made "
                "(peers that --bootstrap from this node then need its new address)"
            ) from None

    def _check_port_free(self) -> None:
        """Fail as a taken HTTP port does: libp2p listens with SO_REUSEPORT,
        so a second node on a port another already serves (a mirror started
        twice with one --p2p-port) shared it silently, and half the peers
        dialling the first reached the second, under another identity."""
        host, port = self._address
        if not port:
            return
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT only
            try:
                probe.bind((host, port))
            except OSError as exc:  # (said as is: the HTTP port is not the one taken)
                raise UsageError(
                    f"libp2p cannot listen on {self.listen} (--p2p-port): {exc.strerror}"
                ) from None

    async def run(
        self,
        *,
        # trio.TaskStatus[list[str]]: libp2p pulls in trio-typing, whose outdated
        # stubs shadow trio's own types and lack TaskStatus.
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run until cancelled; ``task_status.started`` gets the listening multiaddrs."""
        import multiaddr
        from libp2p import new_host
        from libp2p.crypto.x25519 import create_new_key_pair as create_x25519
        from libp2p.custom_types import TProtocol
        from libp2p.network.config import ConnectionConfig
        from libp2p.peer.peerinfo import info_from_p2p_addr
        from libp2p.pubsub.gossipsub import PROTOCOL_ID as GOSSIPSUB
        from libp2p.pubsub.gossipsub import GossipSub
        from libp2p.pubsub.pubsub import Pubsub
        from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
        from libp2p.security.noise.transport import Transport as NoiseTransport
        from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID
        from libp2p.tools.anyio_service import background_trio_service

        from tufmesh.p2p._muxer import install

        self._check_port_free()
        _quiet_libp2p()
        key_pair = self._identity()
        host = new_host(
            key_pair=key_pair,
            sec_opt={NOISE_ID: NoiseTransport(key_pair, noise_privkey=create_x25519().private_key)},
            muxer_opt={TProtocol(YAMUX_ID): install()},
            # A stream's protocol is agreed within 5 s (py-libp2p: 10 s).
            connection_config=ConnectionConfig(
                max_connections_per_peer=1,
                inbound_stream_protocol_negotiation_timeout=5,
                inbound_upgrade_timeout=INBOUND_HANDSHAKE,
            ),
        )
        self._cap_inbound(host.get_network())
        router = _by_content(GossipSub)(
            protocols=[GOSSIPSUB],
            degree=DEGREE,
            degree_low=DEGREE - 1,
            degree_high=DEGREE * 2,
            heartbeat_interval=1,
            # py-libp2p's "adaptive gossip" judges a mesh below its degree
            # unhealthy (every small network) and then sets the heartbeat to
            # 30-60 s, overriding the 1 s above without a word: mesh repair
            # and gossip to peers outside the mesh slowed thirty-fold.
            adaptive_gossip_enabled=False,
            spam_protection_enabled=False,
            score_params=score_params(),
        )
        self._router = router
        self._host = host
        pubsub = _guarded(Pubsub)(
            host, router, msg_id_constructor=message_id, seen_ttl=SEEN_TTL,
            sweep_interval=min(SEEN_TTL, 60),
        )  # fmt: skip
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(host.run([multiaddr.Multiaddr(self.listen)]))
            await stack.enter_async_context(background_trio_service(pubsub))
            await stack.enter_async_context(background_trio_service(router))

            async def close_host() -> None:
                # First thing on the way out, shielded, while the services
                # still run: leaving host.run() alone leaves the listener
                # accepting and the dialled sockets open.
                with trio.CancelScope(shield=True):
                    await host.close()

            stack.push_async_callback(close_host)
            await pubsub.wait_until_ready()
            pubsub.set_topic_validator(self.topic, self._validate, is_async_validator=False)
            self._subscription = await pubsub.subscribe(self.topic)
            for address in self.bootstrap:
                # A bootstrap peer that is down is not fatal: others, or
                # the HTTP poll, still bring new versions; it is said, once.
                await self._dial(host, info_from_p2p_addr(multiaddr.Multiaddr(address)), address)
            self._pubsub = pubsub
            if self.blob_source is not None:
                host.set_stream_handler(TProtocol(PROTOCOL), self._serve_blob)
            if self.have_source is not None:
                host.set_stream_handler(TProtocol(HAVE_PROTOCOL), self._serve_have)
            self.trio_token = trio.lowlevel.current_trio_token()
            self.addrs = [str(a) for a in host.get_addrs()]
            if not self.addrs:  # libp2p logs a listener that failed, and carries on
                raise OSError(
                    errno.EADDRNOTAVAIL, f"libp2p cannot listen on {self.listen} (--p2p-port)"
                )
            self.peer_id = str(host.get_id())
            task_status.started(self.addrs)
            async with trio.open_nursery() as tasks:
                tasks.start_soon(self._redial, host, info_from_p2p_addr)
                await self._deliver()
                tasks.cancel_scope.cancel()

    async def _deliver(self) -> None:
        """Hand each announcement to ``on_announcement`` until the node stops."""
        while True:
            # Only messages the gate accepted get here (it ran as the topic
            # validator, before delivery and before relaying).
            subscription = self._subscription
            try:
                message = await subscription.get()
            except trio.EndOfChannel:
                if subscription is self._subscription:
                    return  # closed, not moved: the node is stopping
                continue  # the topic moved (follow_root): read the new one
            if self.on_announcement is not None:
                result = self.on_announcement(bytes(message.data))
                if result is not None:
                    await result

    async def _redial(self, host: Any, info_from_p2p_addr: Any) -> None:
        """Dial again, now and then, the bootstrap peers this node is not
        connected to: a restarted origin is otherwise heard of again only
        when some peer dials us, and gossip waits for the HTTP poll."""
        import multiaddr

        while True:
            await trio.sleep(REDIAL)
            connected = {str(peer) for peer in host.get_connected_peers()}
            for address in self.bootstrap:
                info = info_from_p2p_addr(multiaddr.Multiaddr(address))
                if str(info.peer_id) not in connected:
                    await self._dial(host, info, address)

    async def _dial(self, host: Any, info: Any, address: str) -> None:
        """Dial a bootstrap peer; say once that it cannot be reached (an
        operator's typo, or a peer down), and when it is reached again."""
        reason = "no answer within 10 s"
        with trio.move_on_after(10):
            try:
                await host.connect(info)
            except Exception as exc:  # py-libp2p raises several kinds
                reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            else:
                if address in self._unreached:
                    self._unreached.discard(address)
                    log(f"p2p: reached bootstrap peer {address}")
                return
        if address not in self._unreached:
            self._unreached.add(address)
            log(
                f"p2p: cannot reach bootstrap peer {address} ({reason}); trying again every "
                f"{REDIAL:.0f} s"
            )

    @contextlib.contextmanager
    def _stream_slot(self, stream: Any) -> Iterator[str | None]:
        """The peer behind an incoming ``stream``, counted among the streams open
        while the block runs; None (not counted) past the caps."""
        peer = str(getattr(stream.muxed_conn, "peer_id", "?"))
        host = _host_of(stream)
        if self._streams.full(peer) is not None or self._hosts.full(host) is not None:
            yield None
            return
        with self._streams.hold(peer), self._hosts.hold(host):
            yield peer

    async def _serve_blob(self, stream: Any) -> None:
        """Answer one ``/tufmesh/blob/1`` request (a peer that goes away mid-answer
        is its own problem: nothing to report)."""
        await self._serve(stream, _BLOB_TIMEOUT, self._answer)

    async def _serve(
        self, stream: Any, deadline: float, answer: Callable[[Any, str], Awaitable[None]]
    ) -> None:
        """Run ``answer(stream, peer)`` on an incoming stream within ``deadline``
        seconds, in a slot of its peer's; then end the stream both ways."""
        answered = False
        with contextlib.suppress(Exception):
            try:
                with self._stream_slot(stream) as peer:
                    if peer is None:
                        return
                    with trio.move_on_after(deadline) as answering:
                        await answer(stream, peer)
                    if not answering.cancelled_caught:
                        answered = await _peer_ends(stream)
            finally:
                await _end_stream(stream, whole=answered)

    async def _answer(self, stream: Any, peer: str) -> None:
        try:
            with trio.fail_after(_REQUEST_TIMEOUT):
                prefix = await _read_exactly(stream, 2)
                size = request_size(prefix)
                request = decode_request(prefix + await _read_exactly(stream, size - 2))
        except BlobStreamError:
            await stream.write(response_head(BAD_REQUEST, 0))
            return
        uploads, chunk, now = self.uploads, (request.cid, request.offset), trio.current_time()
        # The machine counted against the slots and paused after a cut (None:
        # this machine's own, tools, tests, a demo; or one libp2p does not say).
        requester = counted_machine(_remote_ip(stream))
        paused = self._paused.get(requester, -math.inf) - now if requester else -math.inf
        verdict: Verdict = "busy"
        if paused > 0:
            await stream.write(encode_refusal("busy", min(paused, _LONGEST_RETRY)))
            return
        if self._answering.full(peer) is None:
            verdict = (
                uploads.admit(
                    chunk, now, patient=request.patient, size=request.length, requester=requester
                )
                if uploads is not None
                else "serve"
            )
        if verdict != "serve":
            await stream.write(
                encode_refusal(verdict, uploads.retry_after(now, verdict))
                if uploads is not None
                else response_head(BUSY, 0)
            )
            return
        sent = cut = False
        try:
            with self._answering.hold(peer):
                outcome = await self._send_range(
                    stream, request, None if uploads is None else uploads.floor
                )
            sent, cut = outcome == "sent", outcome == "cut"
        except trio.Cancelled:  # the answer's own time ran out (_BLOB_TIMEOUT)
            cut = True
            raise
        finally:
            if uploads is not None:
                uploads.done(chunk, trio.current_time(), completed=sent, requester=requester)
            if cut and requester is not None:
                self._pause(requester)

    def _pause(self, host: str) -> None:
        """Refuse ``host``'s blob requests for :data:`CUT_PAUSE` seconds: one of
        its uploads ran out of time. A requester that reads a trickle (a
        window update now and then, under py-libp2p's 5 s stalled-write
        limit) held a slot, and a 16 MiB range the whole upload budget, for
        the answer's 30 s, and asked again at once; an honest one that reads
        slower than its own floor gives up and resets its stream first."""
        now = trio.current_time()
        if len(self._paused) >= MAX_PAUSED:  # (hosts are capped; bounded all the same)
            self._paused = {h: t for h, t in self._paused.items() if t > now}
        if len(self._paused) < MAX_PAUSED:
            self._paused[host] = now + CUT_PAUSE

    async def _send_range(
        self,
        stream: Any,
        request: BlobRequest,
        floor_from: Callable[[float], UploadFloor] | None,
    ) -> Literal["sent", "missing", "cut"]:
        """Send the range, or NOT_FOUND; cut the moment it falls behind the
        floor ``floor_from(start)`` gives, counted once its bytes are read
        here (its requester, reading slower than its own slow-retrieval
        floor, has given up on it anyway; or it reads a trickle on purpose)."""
        assert self.blob_source is not None
        data = await trio.to_thread.run_sync(
            self.blob_source, request.cid, request.offset, request.length
        )
        floor = None if floor_from is None else floor_from(trio.current_time())
        if data is None or len(data) != request.length:
            await stream.write(response_head(NOT_FOUND, 0))
            return "missing"
        await stream.write(response_head(OK, len(data)))
        view = memoryview(data)
        step = (1 << 20) if self.pace is None else PACED_PIECE
        for sent in range(0, len(view), step):
            piece = bytes(view[sent : sent + step])
            if self.pace is not None:
                held = trio.current_time()
                await self.pace(len(piece))
                if floor is not None:  # (our own rate: not the requester's doing)
                    floor.paused(trio.current_time() - held)
            began = trio.current_time()
            due = math.inf if floor is None else floor.due(sent, len(piece), began)
            with trio.move_on_at(due) as sending:
                await stream.write(piece)
            if sending.cancelled_caught:
                return "cut"
        return "sent"

    async def _serve_have(self, stream: Any) -> None:
        """Answer one have-query (``/tufmesh/have/1``)."""
        await self._serve(stream, _REQUEST_TIMEOUT, self._answer_have)

    async def _answer_have(self, stream: Any, peer: str) -> None:
        size = json_size(await _read_exactly(stream, 4), MAX_QUERY)
        query = loads(await _read_exactly(stream, size))
        assert self.have_source is not None
        await stream.write(encode_json(self.have_source(query, _remote_ip(stream)), MAX_RECORD))

    async def query_have(
        self, address: str, query: dict[str, Any], timeout: float = _BLOB_TIMEOUT
    ) -> tuple[Any, str | None]:
        """The have-record (parsed JSON) with which the peer at ``address``
        answers ``query`` (``{"cids": [...], "from": URL, "newest": N}``),
        within ``timeout`` seconds from the dial to the last byte; and the IP
        address it came from (the connection's, which need not be the one
        ``address`` names: a peer already connected is asked over its
        connection), or None if libp2p does not say."""
        deadline = trio.current_time() + timeout
        with trio.fail_at(deadline):
            stream = await self._open(address, HAVE_PROTOCOL)
        whole = False
        try:
            with trio.fail_at(deadline):
                await stream.write(encode_json(query, MAX_QUERY))
                size = json_size(await _read_exactly(stream, 4), MAX_RECORD)
                body = await _read_exactly(stream, size)
                whole = True
            try:
                record = loads(body)
            except ValueError:
                raise BlobStreamError("the have-record is not JSON") from None
            return record, _remote_ip(stream)
        finally:
            await _end_stream(stream, whole=whole)

    async def _open(self, address: str, protocol: str) -> Any:
        """A new stream to the peer at ``address`` (dialling it only if not connected:
        a peer behind NAT is reached over the connection it opened to us)."""
        import multiaddr
        from libp2p.custom_types import TProtocol
        from libp2p.peer.peerinfo import info_from_p2p_addr

        if self._host is None:
            raise BlobStreamError("the p2p node is not running")
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(address))
            with trio.fail_after(_BLOB_TIMEOUT):
                network = self._host.get_network()
                listed = network.connections.get(info.peer_id)
                if not listed:
                    await self._host.connect(info)
                elif all(connection.is_closed for connection in listed):
                    # host.connect() trusts a connection still listed after it
                    # closed, and new_stream() then finds none: dial afresh.
                    self._host.get_peerstore().add_addrs(info.peer_id, info.addrs, 120)
                    for connection in (await network.dial_peer(info.peer_id))[:1]:
                        await connection.event_started.wait()
                return await self._host.new_stream(info.peer_id, [TProtocol(protocol)])
        except (Exception, trio.TooSlowError) as exc:  # libp2p raises many kinds
            raise BlobStreamError(f"cannot open a stream to {address}: {exc}") from None

    async def fetch_range(
        self,
        address: str,
        cid: str,
        offset: int,
        length: int,
        *,
        patient: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> bytes:
        """Bytes ``offset .. offset+length-1`` of blob ``cid`` from the peer at ``address``.

        Exactly ``length`` bytes or :class:`BlobStreamError` (a refusal:
        :class:`BlobBusyError`); not verified (the caller checks them against
        the signed manifest). ``patient``: see :class:`BlobRequest`.
        ``progress(n)`` is told of the range's bytes as they come (the
        slow-retrieval defence judges a peer by its rate, as over HTTP)."""
        stream = await self._open(address, PROTOCOL)
        whole = False
        try:
            with trio.move_on_after(_BLOB_TIMEOUT) as deadline:
                request = BlobRequest(cid, offset, length, patient)
                data = await self._exchange(stream, request, progress)
                whole = True
                return data
            assert deadline.cancelled_caught
            raise BlobStreamError(f"no answer within {_BLOB_TIMEOUT:g} s")
        except BlobBusyError:
            whole = True  # a refusal is a whole answer too
            raise
        finally:
            await _end_stream(stream, whole=whole)

    async def _exchange(
        self, stream: Any, request: BlobRequest, progress: Callable[[int], None] | None = None
    ) -> bytes:
        cid, offset, length = request.cid, request.offset, request.length
        try:
            await stream.write(encode_request(request))
            status, announced = HEAD.unpack(await _read_exactly(stream, HEAD.size))
            if status == NOT_FOUND:
                raise BlobStreamError(f"the peer does not hold {cid} bytes {offset}+{length}")
            if status == BUSY:
                if not announced:
                    raise BlobBusyError()
                if announced > MAX_REFUSAL:
                    raise BlobStreamError(f"a refusal of {announced} bytes")
                raise decode_refusal(await _read_exactly(stream, announced))
            if status != OK:
                raise BlobStreamError(f"the peer refused the request (status {status})")
            if announced != length:
                raise BlobStreamError(f"announced {announced} bytes for a {length}-byte range")
            return await _read_exactly(stream, length, progress)
        except BlobStreamError:
            raise
        except Exception as exc:  # a stream reset, or what else libp2p raises
            raise BlobStreamError(f"the exchange failed: {exc}") from None

    def _validate(self, peer: Any, message: Any) -> bool:
        # The envelope too: the topic is signed by the publisher, the key
        # field is not. A genuine timestamp in an envelope padded to just
        # under py-libp2p's 1 MiB was delivered and marked seen, and could
        # not be relayed (with the relay's own record it was over 1 MiB):
        # the origin's copy, arriving after, was dropped as seen.
        if list(message.topicIDs) != [self.topic] or (
            message.ByteSize() > len(message.data) + MAX_ENVELOPE
        ):
            self.rejected += 1
            return False
        verdict = self.gate.check(bytes(message.data))
        if verdict.accept:
            self.accepted += 1
        elif verdict.ignore:
            self.ignored += 1
            raise _Ignored  # dropped without a verdict (GuardedPubsub.push_msg)
        else:
            self.rejected += 1
        return verdict.accept

    async def follow_root(self, root: Root) -> None:
        """Trust ``root`` from now on (the repository rotated its root keys):
        check announcements against it, and move to the topic it names, where
        the origin announces once it runs with the new root."""
        self.gate.root = root
        topic = topic_for(root)
        if topic == self.topic or self._pubsub is None:
            self.topic = topic
            return
        old, self.topic = self.topic, topic
        self._pubsub.set_topic_validator(topic, self._validate, is_async_validator=False)
        self._subscription = await self._pubsub.subscribe(topic)
        await self._pubsub.unsubscribe(old)  # ends the old subscription's reads
        self._pubsub.remove_topic_validator(old)

    def peer_count(self) -> int:
        """Peers this node is connected to."""
        return len(self._host.get_network().connections) if self._host is not None else 0

    def mesh_size(self) -> int:
        """Peers in this node's gossip mesh for the repository's topic that it
        sends an announcement to at once (0 until its first heartbeats): a
        mesh peer scored below the gossip threshold stays in the mesh, and is
        sent nothing."""
        router = self._router
        if router is None:
            return 0
        topics = [self.topic]
        return sum(
            1
            for peer in router.mesh.get(self.topic, ())
            if router.scorer.allow_gossip(peer, topics)
            and not router.scorer.is_graylisted(peer, topics)
        )

    def score(self, peer_id: str) -> float:
        """This node's GossipSub score of ``peer_id`` on the repository's topic."""
        from libp2p.peer.id import ID

        return float(self._router.scorer.score(ID.from_base58(peer_id), [self.topic]))

    async def announce(self, data: bytes) -> None:
        """Publish ``data`` (a signed timestamp) to the repository's topic."""
        if self._pubsub is not None:
            await self._pubsub.publish(self.topic, data)
