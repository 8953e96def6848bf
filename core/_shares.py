"""Things in progress, counted per key and in all, each count against a cap:
the uploads of a project at the origin, the streams and the answers of a
libp2p peer."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterator
from typing import Literal

__all__ = ["Shares", "is_loopback", "machine_of"]


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
