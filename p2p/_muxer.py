"""py-libp2p 0.8.1's yamux session with its receive window enforced.

Yamux gives each stream a receive window: a peer may send that many bytes
before the receiver has read them and said so. py-libp2p's session appends
whatever arrives to the stream's buffer and, past the window, only logs
"peer exceeded receive window": a peer that ignores flow control can fill a
mirror's memory through one stream nobody reads (a stream already answered,
or one not yet given to a protocol). go-yamux ends such a session
(``ErrRecvWindowExceeded``), and so does this one: the frame is dropped and
the connection closed. A stream then holds at most its window unread.

py-libp2p makes its sessions itself: its muxer negotiation builds a
``Yamux`` for the yamux protocol whatever class the host was given for it, so
:func:`install` points that name at this class. (py-libp2p is pinned; this
reads its session's internals: the test
``test_a_peer_that_sends_past_the_window_is_disconnected`` is the check.)

Before yamux, and before a connection is even encrypted, multistream-select
agrees on its protocols: each message a length prefix, a protocol id and a
newline. py-libp2p read whatever length the peer claimed, with no limit: one
TCP connection that claimed 512 MiB and sent it grew a mirror by 260 MiB
before any handshake, six by 3 GiB. :func:`install` also bounds that read
(:data:`MAX_NEGOTIATION`), for connections and for every stream opened on
them (``test_a_huge_negotiation_message_is_refused`` is the check).

A frame goes out whole or the connection ends. py-libp2p's session encrypts
a frame (spending one Noise nonce) and then waits for the TCP connection's
lock: a task cancelled there (a fetch given up by the slow-retrieval cut or
a lost endgame race, an upload cut at its deadline) dropped the frame after
its nonce was spent, or left half of it on the wire. The peer's next
decryption failed and it closed the connection, with every other stream and
the gossip on it; an honest peer lost that way three times was banned. Here
the wait for the session's write lock can still be cancelled, but the frame,
once taken, is written in a shielded scope, bounded by :data:`FRAME_LIMIT`
(``test_fetches_given_up_at_any_moment_leave_the_connection_whole``).

A peer's streams are bounded before they reach a protocol. py-libp2p
accepts every stream a peer opens and starts a task to negotiate its
protocol, with no limit: our per-peer stream caps count streams that have
reached our handlers, so one peer that opened thousands and never negotiated
grew a mirror by 20,000 tasks and 250 MB. A session here resets a new stream
while the peer already has :data:`MAX_INBOUND_STREAMS` open on it
(``test_streams_that_never_negotiate_are_bounded_per_connection``).
"""

from __future__ import annotations

import contextlib
from typing import Any, Final

import trio
from libp2p.exceptions import ParseError
from libp2p.io.exceptions import IOException
from libp2p.protocol_muxer.exceptions import MultiselectCommunicatorError
from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator
from libp2p.stream_muxer import muxer_multistream
from libp2p.stream_muxer.exceptions import MuxedConnUnavailable
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream
from libp2p.utils.varint import read_varint_prefixed_bytes_limited

__all__ = ["FRAME_LIMIT", "MAX_INBOUND_STREAMS", "MAX_NEGOTIATION", "WindowedYamux", "install"]

#: The longest multistream-select message read: a protocol id (ours are under
#: 32 bytes; the longest py-libp2p speaks, under 64) and its newline.
MAX_NEGOTIATION: Final = 1024

#: The longest a frame's write may take once begun (a frame is at most 64
#: KiB); a peer that reads slower than that loses its connection, which a
#: frame cut short would have cost it anyway.
FRAME_LIMIT: Final = 10.0

#: Streams a peer may have open on one connection that it opened: an honest
#: one has at most eight blob or have exchanges (the node's own per-peer
#: cap), its gossip stream and an identify or ping at a time.
MAX_INBOUND_STREAMS: Final = 32


class _Window(bytearray):
    """One stream's receive buffer, which refuses bytes past the stream's window."""

    def __init__(self, session: WindowedYamux, stream_id: int, data: bytes | bytearray) -> None:
        super().__init__(data)
        self.session = session
        self.stream_id = stream_id

    def extend(self, data: Any) -> None:
        # The session extends a stream's buffer and then takes the bytes off
        # its window: here the window is still what the peer was granted.
        stream = self.session.streams.get(self.stream_id)
        if stream is not None and len(data) > stream.recv_window:
            self.session.exceeded(self.stream_id, len(data) - stream.recv_window)
            return
        if getattr(stream, "done_with", False):
            return  # nobody will read it (_finalize_stream_locked)
        super().extend(data)


class _Buffers(dict[int, bytearray]):
    """The session's buffers by stream id, each a :class:`_Window`."""

    def __init__(self, session: WindowedYamux) -> None:
        super().__init__()
        self.session = session

    def __setitem__(self, stream_id: int, data: bytearray) -> None:
        super().__setitem__(stream_id, _Window(self.session, stream_id, data))


class _Admission:
    """The session's channel of new streams, which turns away a stream past the
    peer's :data:`MAX_INBOUND_STREAMS` (and one reset as it opened) before a
    task is started for it."""

    def __init__(self, session: WindowedYamux, channel: Any) -> None:
        self.session = session
        self.channel = channel

    async def send(self, stream: Any) -> None:
        if stream.closed:  # reset as it opened: nothing to negotiate
            return
        theirs = sum(
            not other.is_initiator and not other.closed for other in self.session.streams.values()
        )
        if theirs > MAX_INBOUND_STREAMS:
            self.session.refused_streams += 1
            await stream.reset()  # (and what it brought is dropped: _finalize_stream_locked)
            return
        await self.channel.send(stream)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.channel, name)


class WindowedYamux(Yamux):
    """A yamux session that closes its connection to a peer that sends a stream
    more than its receive window, writes each frame whole, and bounds the
    streams a peer opens."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stream_buffers = _Buffers(self)
        self.violation: str | None = None
        self.refused_streams = 0
        self.new_stream_send_channel = _Admission(self, self.new_stream_send_channel)  # type: ignore[assignment]
        self._broken = False  # a frame was cut short: nothing more may be written

    def _finalize_stream_locked(self, stream: Any, *, fully_closed: bool) -> None:
        # A stream reset (by either end), or one we are done with, is over:
        # what it holds unread is nobody's. py-libp2p kept it until its
        # sweeper came, 60-90 s later, so a peer opening streams with a
        # window of data each and resetting them (or opening them past the
        # cap), or answering ours with a window more than the answer, held
        # that much of a mirror's memory. Kept: an answer to a stream of ours
        # that came whole before the peer's reset (the one that ends a
        # lingering stream), still read to its end.
        done = getattr(stream, "done_with", False)
        if done or (stream.reset_received and not (stream.is_initiator and stream.recv_closed)):
            self.stream_buffers.pop(stream.stream_id, None)
        super()._finalize_stream_locked(stream, fully_closed=fully_closed)

    def exceeded(self, stream_id: int, excess: int) -> None:
        """The peer sent stream ``stream_id`` ``excess`` bytes past its window:
        the frame is dropped, and the session ends after it."""
        if self.violation is None:
            self.violation = f"stream {stream_id}: {excess} bytes past its receive window"
        self.event_shutting_down.set()  # the session's loop stops after this frame

    async def _write_frame(self, data: bytes) -> None:
        async with self._write_lock:  # cancelling this wait costs nothing
            if self._broken:  # (every writer queued behind the one cut short)
                raise MuxedConnUnavailable("the connection was closed: a frame could not be sent")
            with trio.CancelScope(shield=True):
                with trio.move_on_after(FRAME_LIMIT) as limit:
                    await self.secured_conn.write(data)
                if limit.cancelled_caught:  # part of the frame may be on the wire
                    # Close the socket (no lock: a close() under way holds the
                    # streams' lock while it waits to write); the session's
                    # read loop then fails and cleans up.
                    self._broken = True
                    self.event_shutting_down.set()
                    with trio.move_on_after(1), contextlib.suppress(Exception):
                        await self.secured_conn.close()
                    raise MuxedConnUnavailable(f"a frame not written within {FRAME_LIMIT:g} s")
        await trio.lowlevel.checkpoint()

    async def handle_incoming(self) -> None:
        try:
            await super().handle_incoming()
        finally:
            if self.violation is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await self._cleanup_on_error()


async def _read_negotiation(self: MultiselectCommunicator) -> str:
    """One multistream-select message, refused past :data:`MAX_NEGOTIATION`
    bytes before any of it is read (py-libp2p's own read has no limit)."""
    try:
        data = await read_varint_prefixed_bytes_limited(self.read_writer, MAX_NEGOTIATION)
        if not data.endswith(b"\n"):
            raise ParseError("a multistream-select message without its newline")
        return data[:-1].decode()
    except (ParseError, IOException, UnicodeDecodeError) as error:  # IOException: too large
        raise MultiselectCommunicatorError("fail to read from multiselect communicator") from error


_yamux_reset: Final = YamuxStream.reset


async def _reset(self: YamuxStream) -> None:
    """py-libp2p's reset of a stream, marked as one we are done with: we reset
    only what we will read no more of (our code, or py-libp2p's own, as when
    a stream's protocol is not agreed), so what it holds or brings is dropped."""
    self.done_with = True  # type: ignore[attr-defined]
    await _yamux_reset(self)


def install() -> type[WindowedYamux]:
    """Have py-libp2p make every yamux session a :class:`WindowedYamux`, bound
    every multistream-select message it reads, and drop what a stream we
    reset holds."""
    muxer_multistream.Yamux = WindowedYamux  # type: ignore[misc]
    MultiselectCommunicator.read = _read_negotiation  # type: ignore[method-assign]
    YamuxStream.reset = _reset  # type: ignore[method-assign]
    return WindowedYamux
