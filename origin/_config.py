"""The origin's configuration: ``REPO/config.json``, written by ``origin init``.

Expiry defaults are PEP 458's suggestions; every online role is re-signed by the
serving process once less than a quarter of its lifetime remains.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

from tufmesh._durable import write_atomic
from tufmesh.cas import MAX_CHUNK_SIZE
from tufmesh.cas._manifest import DEFAULT_MAX_MANIFEST_BYTES, MAX_MANIFEST_CHUNKS
from tufmesh.errors import OriginError

__all__ = [
    "BIN_N",
    "DELEGATING_BINS",
    "OFFLINE_ROLES",
    "ONLINE_ROLES",
    "ROLES",
    "OriginConfig",
]

#: The role that delegates to the hash bins (PEP 458's "bins"): signed once at
#: init with an offline key; project roles (PEP 480) will be delegated beside it.
DELEGATING_BINS: Final = "bins"
#: The label under which the succinct hash-bin roles ``bin-00`` .. share a key.
BIN_N: Final = "bin-n"
ROLES: Final = ("root", "targets", DELEGATING_BINS, BIN_N, "snapshot", "timestamp")
ONLINE_ROLES: Final = frozenset({BIN_N, "snapshot", "timestamp"})
OFFLINE_ROLES: Final = frozenset(ROLES) - ONLINE_ROLES
FORMAT: Final = 1
#: The shortest and the longest lifetime a role's metadata may be given, in days.
MIN_EXPIRY_DAYS: Final = 1 / (24 * 60)
MAX_EXPIRY_DAYS: Final = 36_500


def _default_expiry_days() -> dict[str, float]:
    return {
        "root": 365,
        "targets": 365,
        DELEGATING_BINS: 365,
        BIN_N: 7,
        "snapshot": 7,
        "timestamp": 1,
    }


#: The largest a hash bin may be set to grow: python-tuf's default
#: ``targets_max_length`` (5,000,000 bytes), less room for a few signatures.
MAX_BIN_BYTES: Final = 4_500_000


@dataclass(frozen=True)
class OriginConfig:
    """Repository settings."""

    #: Number of hash bins (a power of two). 256 suits up to ~25,000
    #: artifacts, about 100 per bin; see docs/adr/0005 for choosing it.
    bins: int = 256
    expiry_days: dict[str, float] = field(default_factory=_default_expiry_days)
    #: Largest accepted upload. 1 GiB: PyPI's default project limit is 100 MiB
    #: per file, with exceptions up to about 1 GiB.
    max_upload_bytes: int = 1 << 30
    #: Chunk size of the manifests of new artifacts (docs/adr/0003).
    chunk_size: int = 1 << 20
    #: role -> {keyid: signer URI}; only the keys this host can use appear.
    signers: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Largest signed hash bin. TUF clients refuse a targets role past a
    #: limit (python-tuf: 5,000,000 bytes) and then resolve nothing in it, so a
    #: bin is never allowed to grow that far: an upload that would is refused
    #: (one project filling a bin with many files would otherwise make every
    #: other project in it uninstallable). About 15,000 artifacts per bin.
    max_bin_bytes: int = 4_000_000
    #: The most bytes of artifacts one project may publish: a token's holder
    #: (a leaked token, say) cannot fill the origin's disk. PyPI's default
    #: project limit is 10 GB.
    project_quota: int = 10 << 30
    #: Key ids a rotation replaced: never named again (one may have leaked,
    #: and naming it again would undo the recovery).
    retired: list[str] = field(default_factory=list)
    #: role -> the key ids a rotation under way names for it: recorded as it
    #: begins, cleared as it ends. One left over is a rotation cut short
    #: (killed, or failed), which only the rotation run again finishes.
    rotating: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # config.json is edited by hand: a wrong type was a traceback at the
        # first upload (a 500 each), or in status, sign and serve.
        for name in ("bins", "max_upload_bytes", "chunk_size", "max_bin_bytes", "project_quota"):
            value = getattr(self, name)
            if type(value) is not int:
                raise OriginError(f"{name} must be a whole number, not {value!r}")
        bins = self.bins
        if bins < 2 or bins > 1 << 16 or bins & (bins - 1):
            raise OriginError(f"the number of bins must be a power of two, 2 .. 65536, not {bins}")
        if not isinstance(self.expiry_days, dict):
            raise OriginError(f"expiry_days must map each role to days, not {self.expiry_days!r}")
        if not isinstance(self.signers, dict) or not all(
            isinstance(role, str)
            and isinstance(keys, dict)
            and all(isinstance(k, str) and isinstance(uri, str) for k, uri in keys.items())
            for role, keys in self.signers.items()
        ):
            raise OriginError("signers must map each role to {key id: signer URI}")
        if not isinstance(self.retired, list) or not all(isinstance(k, str) for k in self.retired):
            raise OriginError("retired must list key ids")
        if not isinstance(self.rotating, dict) or not all(
            isinstance(keys, list) and all(isinstance(k, str) for k in keys)
            for keys in self.rotating.values()
        ):
            raise OriginError("rotating must map roles to lists of key ids")
        if not 1 <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise OriginError(f"chunk size {self.chunk_size} is outside 1 .. {MAX_CHUNK_SIZE}")
        missing = set(_default_expiry_days()) - set(self.expiry_days)
        if missing:
            raise OriginError(f"no expiry for {', '.join(sorted(missing))} (expiry_days)")
        for role, days in self.expiry_days.items():
            # A lifetime of nothing expires at once (clients then refuse the
            # metadata as a freeze attack); a century is past any key's life.
            if not (isinstance(days, int | float) and MIN_EXPIRY_DAYS <= days <= MAX_EXPIRY_DAYS):
                raise OriginError(
                    f"expiry of {role}: {days!r} days is outside "
                    f"one minute .. {MAX_EXPIRY_DAYS:,} days"
                )

    def check_limits(self) -> None:
        """Refuse upload limits a new repository could not serve (checked at
        creation: a repository made before a rule was added still opens)."""
        if not 64 * 1024 <= self.max_bin_bytes <= MAX_BIN_BYTES:
            raise OriginError(
                f"a hash bin's limit must be 65,536 .. {MAX_BIN_BYTES:,} bytes (what TUF "
                f"clients accept, less room for signatures), not {self.max_bin_bytes:,}"
            )
        if self.project_quota < 1:
            raise OriginError(
                f"the project quota must be at least 1 byte, not {self.project_quota}"
            )
        if self.max_upload_bytes < 1:
            raise OriginError(
                f"the upload limit must be at least 1 byte, not {self.max_upload_bytes}"
            )
        # The largest upload's manifest must fit what clients and mirrors accept.
        chunks = -(-self.max_upload_bytes // self.chunk_size)
        if chunks > MAX_MANIFEST_CHUNKS:
            least = -(-self.max_upload_bytes // MAX_MANIFEST_CHUNKS)
            raise OriginError(
                f"chunk size {self.chunk_size} would give a {self.max_upload_bytes}-byte upload "
                f"a manifest of {chunks:,} chunks, past the {DEFAULT_MAX_MANIFEST_BYTES:,} bytes "
                f"clients accept: at least {least} bytes with this upload limit"
            )

    def expiry(self, role: str) -> timedelta:
        """Lifetime of a new version of ``role`` (any ``bin-*`` role uses ``bin-n``)."""
        key = BIN_N if role.startswith("bin-") else role
        return timedelta(days=self.expiry_days[key])

    def save(self, repo: Path) -> None:
        """Write ``REPO/config.json``."""
        body = {"format": FORMAT, **asdict(self)}
        write_atomic(repo / "config.json", (json.dumps(body, indent=2) + "\n").encode())

    @classmethod
    def load(cls, repo: Path) -> OriginConfig:
        """Read ``REPO/config.json``."""
        path = repo / "config.json"
        try:
            body: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            for name, what in (("mirror.json", "a mirror's directory"),
                               ("config.toml", "a client's home")):  # fmt: skip
                if (repo / name).exists():
                    raise OriginError(
                        f"{repo} is {what}, not an origin's repository: give --dir the origin's"
                    ) from None
            raise OriginError(
                f"{repo} is not a tufmesh repository (no config.json); "
                "create one with 'tufmesh origin init --dir REPO'"
            ) from None
        except (OSError, ValueError) as exc:
            raise OriginError(f"cannot read {path}: {exc}") from None
        if not isinstance(body, dict) or body.pop("format", None) != FORMAT:
            raise OriginError(f"{path}: unsupported config format")
        try:
            return cls(**body)
        except (TypeError, OriginError) as exc:
            raise OriginError(f"{path}: {exc}") from None
