"""Things in progress, counted per key and in all, each count against a cap:
the uploads of a project at the origin, the streams and the answers of a
libp2p peer."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["Shares", "UploadFloor", "counted_machine", "is_loopback", "machine_of"]


def is_loopback(host: str) -> bool:
    """True for a name or address of this machine's loopback interface
    (``localhost``, 127.0.0.0/8, ::1, and IPv4's as a dual-stack socket
    gives them: ::ffff:127.0.0.1)."""
    if host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def machine_of(address: str) -> str:
    """The key under which ``address`` (an IP address) is counted: itself, or
    for IPv6 its /64, one machine's share (a single host gets 2**64 of them);
    "?" for anything that is not an IP address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "?"
    if ip.version == 6 and ip.ipv4_mapped is not None:  # an IPv4 client of a dual-stack bind
        return str(ip.ipv4_mapped)
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def counted_machine(address: str | None) -> str | None:
    """The machine a request from ``address`` is counted against, or None for
    one not counted: this machine's own (a reverse proxy in front, which
    speaks for everyone; the operator's tools, a demo, tests) or one whose
    address the transport does not say."""
    if address is None or is_loopback(address):
        return None
    machine = machine_of(address)
    return None if machine == "?" else machine


class Shares:
    """At most ``per_key`` at once for one key, ``total`` for all keys together."""

    def __init__(self, per_key: int, total: int) -> None:
        self.per_key = per_key
        self.total = total
        self._counts: dict[str, int] = {}
        self._all = 0

    def full(self, key: str) -> Literal["key", "total"] | None:
        """The cap one more for ``key`` would pass, or None."""
        if self._counts.get(key, 0) >= self.per_key:
            return "key"
        if self._all >= self.total:
            return "total"
        return None

    def total_full(self) -> bool:
        """Whether one more for any key would pass the cap for all."""
        return self._all >= self.total

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """Count one for ``key`` while the block runs (the caller checked :meth:`full`)."""
        self._counts[key] = self._counts.get(key, 0) + 1
        self._all += 1
        try:
            yield
        finally:
            self._all -= 1
            self._counts[key] -= 1
            if not self._counts[key]:
                del self._counts[key]


class Pace:
    """At most ``burst`` at once, then one every ``interval`` seconds, per key
    (the generic cell rate algorithm: one timestamp a key, no timers)."""

    def __init__(self, interval: float, burst: int) -> None:
        self.interval = interval
        self.burst = burst
        self._next: dict[str, float] = {}  # when a key's bucket is empty again

    def delay(self, key: str, now: float, *, at_most: float) -> float | None:
        """Seconds ``key``'s next one must wait (its turn then taken), or None
        if that is more than ``at_most`` (nothing taken: refused)."""
        due = max(self._next.get(key, now), now)
        wait = max(0.0, due - now - (self.burst - 1) * self.interval)
        if wait > at_most:
            return None
        self._next[key] = due + self.interval
        if len(self._next) > 1 << 16:  # (keys are projects; bounded all the same)
            self._forget(now)
        return wait

    def _forget(self, now: float) -> None:
        """Drop the keys whose bucket is full again (they wait for nothing)."""
        self._next = {k: t for k, t in self._next.items() if t > now}


#: A piece on its way may take this many times its share of the floor (and
#: the grace): the rule that catches a trickle once buffers are full.
PIECE_SLACK: Final = 8


@dataclass(slots=True)
class UploadFloor:
    """When each piece of one admitted upload must be out (over HTTP or
    libp2p), for it to be cut the moment it falls behind its requester's
    slow-retrieval floor.

    The requester keeps its own floor from its start: ``min_rate`` bytes a
    second after ``grace``. So the first ``n`` bytes sent are due by then,
    and a requester that keeps its floor never falls behind that. Alone,
    that let a requester that reads a trickle hold the upload (and so, for
    a 16 MiB range, the whole upload budget) for the answer's 30 s over
    libp2p: the 2 MiB yamux window it grants take that much at once, unread,
    and buy it 32 s. Nothing we see tells those bytes from bytes read (a
    first version that took them for unread cut fast readers that paused:
    two reviews found it), so each piece on its way is also due
    ``grace + PIECE_SLACK`` times its share of the floor after it began:
    11 s for a 64 KiB piece. A reader that stalls longer than that on one
    piece is already given up by py-libp2p (a write that waits 5 s for a
    window fails); over HTTP, whose pieces are 1 MiB, the bound is 131 s.
    Time we held the upload back (``--max-upload-rate``) is not the
    requester's: :meth:`paused` (over libp2p; over HTTP the pace is inside
    the send, and gives each upload twice the floor, ADR 14).
    """

    start: float
    min_rate: float
    grace: float

    def due(self, sent: int, size: int = 0, began: float | None = None) -> float:
        """When the first ``sent + size`` bytes must be out: a piece of ``size``
        bytes begun at ``began`` after the first ``sent`` (None: no piece on its way)."""
        whole = self.start + self.grace + (sent + size) / self.min_rate
        if began is None:
            return whole
        return min(whole, began + self.grace + PIECE_SLACK * size / self.min_rate)

    def paused(self, seconds: float) -> None:
        """We held the upload back for ``seconds`` (our upload rate): its clock waits."""
        self.start += seconds
