"""What a simulation runs: the network, the release, the adversary (plain data).

A scenario is a TOML file or command-line flags; every field has a default
that runs. Link profiles are mixes of link classes, each drawn uniformly
between its bounds, so that "home" is not one link but a spread of them.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, Final

from tufmesh._ui import parse_size
from tufmesh.errors import UsageError
from tufmesh.mirror._swarm import UPLOAD_BYTES, UPLOAD_SLOTS

__all__ = ["PROFILES", "LinkClass", "Scenario", "load_scenario"]

MBIT: Final = 125_000  # bytes per second in one megabit per second


@dataclass(frozen=True)
class LinkClass:
    """A kind of link: upload and download (bytes/s) and one-way latency (s), as ranges."""

    weight: float
    up: tuple[float, float]
    down: tuple[float, float]
    latency: tuple[float, float]


#: Named mixes of link classes.
PROFILES: Final[dict[str, list[LinkClass]]] = {
    # Every mirror alike: 16 MiB/s up, fast down (the loopback benchmarks).
    "homogeneous": [LinkClass(1.0, (16 << 20, 16 << 20), (1 << 30, 1 << 30), (0.0002, 0.0002))],
    # Servers in datacentres: 0.5-1 Gbit/s symmetric, 2-20 ms.
    "datacentre": [
        LinkClass(1.0, (500 * MBIT, 1000 * MBIT), (500 * MBIT, 1000 * MBIT), (0.002, 0.02))
    ],
    # Volunteers at home: 10-40 Mbit/s up, 50-300 down, 10-40 ms.
    "home": [LinkClass(1.0, (10 * MBIT, 40 * MBIT), (50 * MBIT, 300 * MBIT), (0.01, 0.04))],
    # The network we expect: a fifth in datacentres, the rest at home.
    "mixed": [
        LinkClass(0.2, (500 * MBIT, 1000 * MBIT), (500 * MBIT, 1000 * MBIT), (0.002, 0.02)),
        LinkClass(0.8, (10 * MBIT, 40 * MBIT), (50 * MBIT, 300 * MBIT), (0.01, 0.04)),
    ],
}

BEHAVIOURS: Final = ("corrupt", "withhold", "trickle")


@dataclass(frozen=True)
class Scenario:
    """One experiment. Sizes in bytes, rates in bytes per second, times in seconds."""

    mirrors: int = 100
    size: int = 64 << 20
    chunk_size: int = 1 << 20
    seed: int = 1
    links: str = "homogeneous"
    #: The origin's upload (None: the fastest upload of any link class).
    origin_up: float | None = None
    #: Neighbours each mirror asks for have-records (a random graph).
    degree: int = 8
    #: Chunk uploads a mirror runs at once for other mirrors (0: no limit).
    upload_slots: int = UPLOAD_SLOTS
    #: ...and bytes of them at most (0: no limit; one upload may always run).
    upload_bytes: int = UPLOAD_BYTES
    #: GossipSub mesh degree and per-hop processing time (announcements).
    gossip_degree: int = 4
    gossip_hop: float = 0.002
    #: Round trips between an announcement and the first chunk request
    #: (timestamp, snapshot, targets, bin, manifest: from the origin).
    metadata_rtts: int = 5
    #: Each honest mirror leaves once with this probability, at a random time
    #: mid-replication if it is still incomplete then, and comes back after
    #: ``downtime`` seconds.
    churn: float = 0.0
    downtime: float = 20.0
    #: Fraction of mirrors that are hostile, and how (cycled through the list).
    malicious: float = 0.0
    behaviours: tuple[str, ...] = BEHAVIOURS
    #: Simulated seconds after which a run gives up.
    horizon: float = 3600.0
    #: Custom link classes (a scenario file's ``[[link]]`` tables) replace ``links``.
    link_classes: tuple[LinkClass, ...] = field(default=())

    def __post_init__(self) -> None:
        # The same checks for a scenario file as for the flags: a wrong type
        # or a value that would divide by zero, spin or exhaust memory.
        if isinstance(self.mirrors, int) and self.mirrors < 1:
            raise UsageError("a scenario needs at least one mirror")
        for name, (kind, low, high) in _LIMITS.items():
            value = getattr(self, name)
            if value is None and name == "origin_up":
                continue
            _check(name, value, kind, low, high)
        if self.chunks > MAX_CHUNKS:
            raise UsageError(
                f"{self.chunks} chunks: at most {MAX_CHUNKS:,} (a larger chunk size, or less size)"
            )
        if self.mirrors * self.chunks > MAX_CELLS:
            raise UsageError(
                f"{self.mirrors:,} mirrors x {self.chunks:,} chunks: at most {MAX_CELLS:,} "
                "(each mirror keeps a record per chunk and per neighbour; a larger chunk "
                "size, or fewer mirrors)"
            )
        if not 0 <= self.malicious < 1:
            raise UsageError("malicious must be in [0, 1)")
        for link in self.link_classes:
            _check("a link's weight", link.weight, float, 1e-9, 1e6)  # (their sum finite)
            for what, bounds, least in (("up", link.up, 1.0), ("down", link.down, 1.0),
                                        ("latency", link.latency, 0.0)):  # fmt: skip
                for value in bounds:
                    _check(f"a link's {what}", value, float, least, 1e15 if least else 60.0)
                if bounds[0] > bounds[1]:
                    raise UsageError(f"a link's {what} range {list(bounds)} runs backwards")
        if self.hostile >= self.mirrors:
            raise UsageError(f"{self.malicious:g} of {self.mirrors} mirrors leaves none honest")
        if not isinstance(self.links, str):
            raise UsageError(f"links must be a profile's name, not {self.links!r}")
        if not self.link_classes and self.links not in PROFILES:
            raise UsageError(f"unknown link profile {self.links!r}; one of {', '.join(PROFILES)}")
        if self.malicious and not self.behaviours:
            raise UsageError("malicious mirrors need at least one behaviour")
        for behaviour in self.behaviours:
            if not isinstance(behaviour, str) or behaviour not in BEHAVIOURS:
                raise UsageError(f"unknown behaviour {behaviour!r}; one of {', '.join(BEHAVIOURS)}")

    @property
    def classes(self) -> list[LinkClass]:
        """The link classes mirrors are drawn from."""
        return list(self.link_classes) or PROFILES[self.links]

    @property
    def hostile(self) -> int:
        """Malicious mirrors: the fraction of the mirrors, halves rounded up
        (0.5 of 3 mirrors and 0.5 of 5 are 2 and 3, not 2 and 2)."""
        # (in decimal: 0.29 * 50 is 14.499999999999998 in binary floating point)
        share = Decimal(repr(self.malicious)) * self.mirrors
        return int(share.quantize(Decimal(1), rounding=ROUND_HALF_UP))

    @property
    def origin_rate(self) -> float:
        """The origin's upload: ``origin_up``, or the fastest upload of any link class."""
        return self.origin_up or max(c.up[1] for c in self.classes)

    @property
    def chunks(self) -> int:
        """Chunks in the release."""
        return -(-self.size // self.chunk_size)

    def to_dict(self) -> dict[str, Any]:
        """The scenario as plain data (for the JSON report)."""
        data = dataclasses.asdict(self)
        data["behaviours"] = list(self.behaviours)
        data["link_classes"] = [dataclasses.asdict(c) for c in self.link_classes]
        return data

    def replace(self, **changes: Any) -> Scenario:
        """A copy with ``changes`` (None values ignored: unset command-line flags)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


_SIZES: Final = ("size", "chunk_size", "origin_up", "upload_bytes")

#: Chunks in a release at most: each mirror's scheduler keeps a few lists of
#: that length.
MAX_CHUNKS: Final = 65_536
#: Mirrors x chunks at most: 110-900 bytes each (1,000 mirrors and 1,024
#: chunks take 251 MiB, 10,000 mirrors and 256 chunks 2.2 GiB), so at most
#: about 15 GiB.
MAX_CELLS: Final = 1 << 24

#: Each numeric setting's type and bounds.
_LIMITS: Final[dict[str, tuple[type, float, float]]] = {
    "mirrors": (int, 1, 100_000),
    "size": (int, 1, 1 << 40),
    "chunk_size": (int, 1, 1 << 30),
    "seed": (int, 0, (1 << 64) - 1),  # (random.Random takes -n for n)
    "origin_up": (float, 1.0, 1e15),
    "degree": (int, 1, 64),
    "upload_slots": (int, 0, 1024),
    "upload_bytes": (int, 0, 1 << 40),
    "gossip_degree": (int, 1, 64),
    "gossip_hop": (float, 0.0, 60.0),
    "metadata_rtts": (int, 0, 100),
    "churn": (float, 0.0, 1.0),
    "downtime": (float, 0.0, 86_400.0),
    "malicious": (float, 0.0, 1.0),
    "horizon": (float, 1.0, 1e7),
}


def _check(name: str, value: object, kind: type, low: float, high: float) -> None:
    """``value`` is a ``kind`` (an int for a float too) between ``low`` and ``high``."""
    kinds = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        what = "an integer" if kind is int else "a number"
        raise UsageError(f"{name} must be {what}, not {value!r}")
    if not low <= value <= high:  # also catches nan
        if math.isfinite(high):
            bounds = f"{_number(low)} .. {_number(high)}"
        else:
            bounds = f"at least {_number(low)}"
        raise UsageError(f"{name} must be {bounds}, not {value!r}")


def _number(value: float) -> str:
    """``1,099,511,627,776``, ``0.5``: no exponents in a message."""
    if isinstance(value, int) or (math.isfinite(value) and value == int(value)):
        return f"{int(value):,}"  # (an int as it is: a float rounds 2**64 - 1 up)
    return f"{value:,}"


def load_scenario(path: Path) -> Scenario:
    """Read a scenario file (TOML); sizes and rates may be written ``"64MiB"``."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a scenario file (TOML text)") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: {exc}") from None
    data.pop("description", None)
    # (link_classes is what [[link]] tables become: not a setting of its own)
    known = {f.name for f in dataclasses.fields(Scenario)} - {"link_classes"}
    links = data.pop("link", None)
    if links is not None and not (
        isinstance(links, list) and all(isinstance(c, dict) for c in links)
    ):
        raise UsageError(f"{path}: links are [[link]] tables (each with up, down and latency)")
    for c in links or ():
        if extra := set(c) - {"weight", "up", "down", "latency"}:
            raise UsageError(f"{path}: a [[link]] has no setting {', '.join(sorted(extra))}")
    unknown = set(data) - known
    if unknown:
        raise UsageError(f"{path}: unknown settings {', '.join(sorted(unknown))}")
    try:
        for name in _SIZES:
            if isinstance(data.get(name), str):
                data[name] = parse_size(data[name])
        if "behaviours" in data:
            if not isinstance(data["behaviours"], list):
                raise UsageError(f"behaviours is a list, such as {list(BEHAVIOURS)}")
            data["behaviours"] = tuple(data["behaviours"])
        if links:
            data["link_classes"] = tuple(
                LinkClass(
                    float(c.get("weight", 1.0)),
                    _range(c["up"]),
                    _range(c["down"]),
                    _range(c["latency"], size=False),
                )
                for c in links
            )
        return Scenario(**data)
    except KeyError as exc:
        raise UsageError(f"{path}: a [[link]] needs {exc.args[0]}") from None
    except (TypeError, ValueError, AttributeError, UsageError) as exc:
        raise UsageError(f"{path}: {exc}") from None


def _range(value: Any, *, size: bool = True) -> tuple[float, float]:
    """``[low, high]`` or one value; sizes may be strings like ``"2MiB"``."""
    items = value if isinstance(value, list) else [value, value]
    if len(items) != 2:
        raise UsageError(f"a range is [low, high] or one value, not {value!r}")
    low, high = (_value(v, size=size) for v in items)
    return low, high


def _value(value: Any, *, size: bool) -> float:
    if size and isinstance(value, str):
        return float(parse_size(value))
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"{value!r} is not a number" + (" or a size" if size else ""))
    return float(value)
