"""The origin's TUF repository, built on python-tuf's ``Repository`` abstraction.

Role graph (docs/adr/0005)::

    root ──> targets ──> project-<name> ... (claimed projects, PEP 480:
                 │          before the bins, terminating, their developers' keys)
                 └─> bins ──(succinct, TAP 15)──> bin-00 .. bin-ff

root, targets and bins are signed with offline keys, once at init and then in
key ceremonies; bin-N, snapshot and timestamp with online keys, by this process;
a claimed project's role by its developers' keys, never here (docs/adr/0022).

Invariants:

* The published state is the chain ``timestamp.json`` -> snapshot -> each role
  version it lists. :meth:`OriginRepository.load` rebuilds memory from that chain
  and nothing else, so files written by a commit that crashed before its
  timestamp are simply unreferenced, and overwritten by the next commit.
* A commit writes every new role version, fsynced, before ``timestamp.json``;
  the timestamp is replaced atomically and fsynced last. An upload is
  acknowledged only after that, so an acknowledged upload survives a crash.
* Artifacts are immutable: a path that is published keeps its bytes forever
  (a different upload under the same path is a :class:`ConflictError`).
* A role name has exactly one delegator ("diamond" graphs are refused:
  python-tuf and go-tuf cache delegated roles by name, see
  shared/notes/threats.md, note 1).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Set
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal, TypeGuard, final

from securesystemslib.signer import Key, Signer
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    SuccinctRoles,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer
from tuf.repository import Repository

from tufmesh._durable import (
    SUPERSEDED_GRACE,
    fsync_dir,
    hard_link,
    prune_superseded,
    write_atomic,
)
from tufmesh.cas import MAX_CHUNK_SIZE, BlobStore, cid_from_sha256, parse_cid
from tufmesh.errors import (
    ArtifactRefusedError,
    BinFullError,
    BlobNotFoundError,
    ConflictError,
    InvalidNameError,
    OriginError,
    OwnedMetadataError,
    PinError,
    QuotaError,
    StoreError,
)
from tufmesh.origin._config import (
    BIN_N,
    DELEGATING_BINS,
    OFFLINE_ROLES,
    ONLINE_ROLES,
    ROLES,
    OriginConfig,
)
from tufmesh.origin._keys import generate_file_key, key_file, load_signer, public_key_from_uri
from tufmesh.origin._names import check_new_filename, target_path
from tufmesh.origin._owned import (
    claim_statement,
    key_material,
    owned_delegation,
    owned_project,
    owned_role,
    parse_owned,
)

__all__ = [
    "REFRESH_FRACTION",
    "Artifact",
    "OriginRepository",
    "RoleStatus",
    "check_single_delegator",
    "unrotated_claims",
]

Clock = Callable[[], datetime]


def unrotated_claims(repo_dir: Path) -> list[str]:
    """Projects claimed since the targets keys last changed. Until they
    change, the targets versions signed before each claim still verify:
    whoever holds the online keys can serve one again, with the project's
    paths in a bin, to a client that never fetched a later one
    (docs/maintainers.md, the claim's step 3)."""
    path = repo_dir / UNROTATED_CLAIMS
    try:
        names = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise OriginError(f"cannot read {path}: {exc}{_UNROTATED_HINT}") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise OriginError(f"{path} is not a list of project names{_UNROTATED_HINT}")
    return names


_COMPACT: Final = JSONSerializer(compact=True)
_PRETTY: Final = JSONSerializer(compact=False)
#: Re-sign an online role once less than this fraction of its lifetime remains.
REFRESH_FRACTION: Final = 0.25


#: An offline role closer than this to its expiry is warned of (``status``,
#: ``serve``): a ceremony needs its key holders, who need notice.
OFFLINE_WARNING: Final = timedelta(days=30)
#: Projects claimed since the targets keys last changed (``unrotated_claims``).
UNROTATED_CLAIMS: Final = "claims-unrotated.json"
_UNROTATED_HINT: Final = (
    " (if a project was claimed since the targets keys last changed, rotate them: "
    "'origin rotate targets' removes it; if none was, delete it)"
)
#: Names a claimed project's own versions may drop, in all: each is kept for
#: ever (never published again) in ``removed.json``, which every publication
#: reads. Names cost nothing (a one-byte blob backs thousands), so without a
#: bound a project's developers could grow it by megabytes a minute.
MAX_DROPPED_NAMES: Final = 10_000
#: Not a manifest's CID, nor None (a blob of one chunk has none).
_NONE: Final = object()


def cut_short_said(repo_dir: Path, role: str, keys: list[str]) -> str:
    """What to do about a rotation of ``role`` cut short (see
    :meth:`OriginRepository.cut_short_rotations`)."""
    still = (
        f"{role} is still signed by {', '.join(k[:12] for k in keys)}, which it replaced (it "
        "may have leaked)"
        if keys
        else "it replaced no key"
    )
    return (
        f"the rotation of {role} was cut short before its new keys were published: {still}: "
        f"run 'tufmesh origin rotate --dir {repo_dir} {role}' again"
    )


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Artifact:
    """One uploaded artifact, already in the store, waiting to be published."""

    path: str  # "<project>/<filename>"
    length: int
    sha256: str  # hex
    cid: str
    #: CID of the chunk manifest; None for a blob of one chunk, which is
    #: verified whole against its CID (docs/adr/0005).
    manifest: str | None
    chunk_size: int

    @classmethod
    def from_target(cls, target: TargetFile) -> Artifact:
        """The artifact ``target`` describes, if it is written exactly as
        :meth:`target_file` writes one (a developer's own entry, say), else
        :class:`OwnedMetadataError`: mirrors and clients read only these fields."""
        custom = target.unrecognized_fields.get("custom")
        if not isinstance(custom, dict):
            custom = {}
        cid, manifest, size = custom.get("cid"), custom.get("manifest"), custom.get("chunk_size")
        if (
            isinstance(cid, str)
            and isinstance(manifest, str | None)
            and type(size) is int
            and type(target.length) is int  # (True == 1: strict clients refuse a boolean)
            and isinstance(target.hashes.get("sha256"), str)
        ):
            artifact = cls(target.path, target.length, target.hashes["sha256"], cid, manifest, size)
            if artifact.target_file() == target:
                return artifact
        raise OwnedMetadataError(
            f"{target.path}: not an entry as the origin writes one (length, hashes with "
            "sha256 alone, custom with cid, chunk_size and, for more than one chunk, manifest)"
        )

    def target_file(self) -> TargetFile:
        """The TUF target entry: length, sha256, and the CIDs peers need in ``custom``."""
        custom: dict[str, Any] = {"cid": self.cid, "chunk_size": self.chunk_size}
        if self.manifest is not None:
            custom["manifest"] = self.manifest
        return TargetFile(
            length=self.length,
            hashes={"sha256": self.sha256},
            path=self.path,
            unrecognized_fields={"custom": custom},
        )


@dataclass(frozen=True)
class RoleStatus:
    """One line of ``origin status``."""

    role: str
    version: int
    expires: datetime
    threshold: int
    keyids: tuple[str, ...]
    signers: tuple[str, ...]
    online: bool


def check_single_delegator(delegators: dict[str, Targets]) -> None:
    """Refuse a delegation graph in which a role is delegated by two parents.

    ``delegators`` maps each delegating role's name to its signed Targets.
    """
    parent: dict[str, str] = {}
    for name, targets in delegators.items():
        if targets.delegations is None:
            continue
        children: Iterable[str]
        if targets.delegations.roles is not None:
            children = targets.delegations.roles
        elif targets.delegations.succinct_roles is not None:
            children = targets.delegations.succinct_roles.get_roles()
        else:
            children = ()
        for child in children:
            if child in parent and parent[child] != name:
                raise OriginError(
                    f"refusing a diamond delegation: {child!r} is delegated by both "
                    f"{parent[child]!r} and {name!r}"
                )
            parent[child] = name


@final
class OriginRepository(Repository):
    """The repository in ``REPO/``: metadata, keys, store, and the publish operation.

    Not thread-safe: one thread at a time may call the mutating methods
    (the server runs them one at a time; see ``_server.py``).
    """

    def __init__(
        self, repo: str | os.PathLike[str], *, clock: Clock | None = None, load: bool = True
    ) -> None:
        self.dir = Path(repo)
        self.config = OriginConfig.load(self.dir)
        self.store = BlobStore(self.dir / "cas")
        self.metadata_dir = self.dir / "metadata"
        self.targets_dir = self.dir / "targets"
        self.clock = clock or _utcnow
        self._signers: dict[str, list[Signer]] = {}
        self._missing: dict[str, list[str]] = {}  # why configured keys did not load
        self._broken: list[str] | None = None  # see ``broken``
        self._bytes: dict[str, bytes] = {}
        self._md: dict[str, Metadata[Any]] = {}
        self._pending: list[str] = []
        self._linked_dirs: set[Path] = set()
        if load:
            self.load()

    # -- creating ------------------------------------------------------------

    @classmethod
    def create(
        cls,
        repo: str | os.PathLike[str],
        config: OriginConfig | None = None,
        *,
        root_threshold: int = 1,
        signers: dict[str, list[tuple[str, Key | None]]] | None = None,
        clock: Clock | None = None,
    ) -> OriginRepository:
        """Create a new repository in the empty (or missing) directory ``repo``.

        ``signers`` maps a role to ``(uri, public key)`` pairs; roles not given
        get newly generated Ed25519 file keys under ``REPO/keys/`` (the root gets
        ``root_threshold`` of them). The public key may be None for ``file2:``
        URIs, whose key file holds it.
        """
        config = config or OriginConfig()
        config.check_limits()
        if root_threshold < 1:
            raise OriginError("the root threshold must be at least 1")
        path = Path(repo)
        if path.exists() and any(path.iterdir()):
            raise OriginError(f"{path} is not empty; refusing to create a repository there")
        created = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
        try:
            return cls._populate(path, config, root_threshold, signers, clock)
        except BaseException:
            # The directory was empty: all in it is this attempt's, half made
            # (a signer that would not load, a key that does not match).
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
            if created:
                path.rmdir()
            raise

    @classmethod
    def _populate(
        cls,
        path: Path,
        config: OriginConfig,
        root_threshold: int,
        signers: dict[str, list[tuple[str, Key | None]]] | None,
        clock: Clock | None,
    ) -> OriginRepository:
        """Write a new repository's keys, configuration and signed metadata."""
        bins = config.bins
        now = (clock or _utcnow)()

        given = dict(signers or {})
        keys: dict[str, list[tuple[str, Key]]] = {}
        for role in ROLES:
            if role in given:
                keys[role] = [
                    (uri, key if key is not None else public_key_from_uri(path, uri))
                    for uri, key in given[role]
                ]
                others = {r: [k.keyid for _, k in keys[r]] for r in keys}
                check_new_keys(path, role, keys[role], others=others)
            elif role == "root":
                keys[role] = [
                    generate_file_key(path, f"root-{i + 1}") for i in range(root_threshold)
                ]
            else:
                keys[role] = [generate_file_key(path, role)]
        if len(keys["root"]) < root_threshold:
            raise OriginError(
                f"root threshold {root_threshold} needs at least that many root keys, "
                f"got {len(keys['root'])}"
            )
        config = dataclasses.replace(
            config,
            signers={role: {key.keyid: uri for uri, key in pairs} for role, pairs in keys.items()},
        )
        config.save(path)

        def expires(role: str) -> datetime:
            return (now + config.expiry(role)).replace(microsecond=0)

        def keyids(role: str) -> list[str]:
            return [key.keyid for _, key in keys[role]]

        root = Root(expires=expires("root"), consistent_snapshot=True)
        for role in ("root", "targets", "snapshot", "timestamp"):
            for _, key in keys[role]:
                root.add_key(key, role)
        root.roles["root"].threshold = root_threshold

        targets = Targets(expires=expires("targets"))
        targets.delegations = Delegations(
            keys={key.keyid: key for _, key in keys[DELEGATING_BINS]},
            roles={
                DELEGATING_BINS: DelegatedRole(
                    name=DELEGATING_BINS,
                    keyids=keyids(DELEGATING_BINS),
                    threshold=1,
                    terminating=True,
                    paths=["*/*"],
                )
            },
        )
        bins_role = Targets(expires=expires(DELEGATING_BINS))
        succinct = SuccinctRoles(
            keyids=keyids(BIN_N),
            threshold=1,
            bit_length=bins.bit_length() - 1,
            name_prefix="bin",
        )
        bins_role.delegations = Delegations(
            keys={key.keyid: key for _, key in keys[BIN_N]}, succinct_roles=succinct
        )
        check_single_delegator({"targets": targets, DELEGATING_BINS: bins_role})

        (path / "metadata").mkdir()
        (path / "targets").mkdir()
        repo_obj = cls(path, clock=clock, load=False)
        repo_obj._stage("root", Metadata(root))
        repo_obj._stage("targets", Metadata(targets))
        repo_obj._stage(DELEGATING_BINS, Metadata(bins_role))
        for name in succinct.get_roles():
            repo_obj._stage(name, Metadata(Targets(expires=expires(name))))
        snapshot = Snapshot(expires=expires("snapshot"))
        snapshot.meta = dict(repo_obj.targets_infos)
        repo_obj._stage("snapshot", Metadata(snapshot))
        timestamp = Timestamp(expires=expires("timestamp"), snapshot_meta=repo_obj.snapshot_info)
        repo_obj._stage("timestamp", Metadata(timestamp))
        repo_obj.flush()
        return cls(path, clock=clock)

    # -- loading ------------------------------------------------------------

    def load(self) -> None:
        """(Re)build the in-memory state from the published chain on disk."""
        self._bytes.clear()
        self._md.clear()
        self._pending.clear()
        self._linked_dirs.clear()
        roots = sorted(
            int(version)
            for p in self.metadata_dir.glob("*.root.json")
            if (version := p.name.split(".", 1)[0]).isascii() and version.isdigit()
        )
        if not roots:
            raise OriginError(f"{self.metadata_dir} holds no root metadata")
        self._read("root", self.metadata_dir / f"{roots[-1]}.root.json")
        self._read("timestamp", self.metadata_dir / "timestamp.json")
        snapshot_version = self.timestamp_md.signed.snapshot_meta.version
        self._read("snapshot", self.metadata_dir / f"{snapshot_version}.snapshot.json")
        snapshot: Snapshot = self._md["snapshot"].signed
        for filename, meta in snapshot.meta.items():
            role = filename.removesuffix(".json")
            self._read(role, self.metadata_dir / f"{meta.version}.{filename}")
        self._broken = None
        self._used: Counter[str] | None = None  # per project, counted when first asked
        self._folded: dict[str, str] | None = None  # every path by its case-folded form

    @property
    def broken(self) -> list[str]:
        """Roles whose published version is not signed by the keys their
        delegator names now: what a ceremony cut short between the new root (or
        delegation) and the metadata it re-signs leaves behind. Clients refuse
        them; ``refresh`` re-signs the online ones, ``resign`` any. Checked once
        per load, when first asked (a signature check per role)."""
        if self._broken is None:
            self._broken = self._unverified()
        return self._broken

    def _unverified(self) -> list[str]:
        broken = []
        for role, md in self._md.items():
            if role == "root":
                continue
            delegator: Root | Targets = self._md[self._delegator(role)].signed
            try:
                delegator.verify_delegate(role, md.signed_bytes, md.signatures)
            except Exception:  # UnsignedMetadataError, or a role it no longer delegates
                broken.append(role)
        return sorted(broken)

    @staticmethod
    def _delegator(role: str) -> str:
        """The role that delegates to ``role`` (which signs its keys)."""
        if role in ("targets", "snapshot", "timestamp"):
            return "root"
        if role == DELEGATING_BINS or owned_project(role) is not None:
            return "targets"
        return DELEGATING_BINS

    def _read(self, role: str, path: Path) -> None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise OriginError(f"cannot read published metadata {path}: {exc.strerror}") from None
        try:
            md: Metadata[Any] = Metadata.from_bytes(data)
        except DeserializationError as exc:
            raise OriginError(
                f"published metadata {path} is damaged ({exc}): restore it from a backup"
            ) from None
        if md.signed.type != ("targets" if role not in ("root", "snapshot", "timestamp") else role):
            raise OriginError(f"published metadata {path} is not {role} metadata")
        self._bytes[role] = data
        self._md[role] = md

    @property
    def timestamp_md(self) -> Metadata[Timestamp]:
        """The current timestamp metadata."""
        return self._md["timestamp"]

    @property
    def succinct(self) -> SuccinctRoles:
        """The hash-bin delegation."""
        delegations = self._md[DELEGATING_BINS].signed.delegations
        assert delegations is not None and delegations.succinct_roles is not None
        succinct: SuccinctRoles = delegations.succinct_roles
        return succinct

    # -- the python-tuf Repository interface ----------------------------------

    def open(self, role: str) -> Metadata[Any]:
        """A private, editable copy of the current metadata of ``role``."""
        if role not in self._bytes:
            raise OriginError(f"no role {role!r} in this repository")
        return Metadata.from_bytes(self._bytes[role])

    def close(self, role: str, md: Metadata[Any]) -> None:
        """Bump the version and expiry, re-sign, and stage the new version for writing."""
        md.signed.version += 1
        md.signed.expires = (self.clock() + self.config.expiry(role)).replace(microsecond=0)
        self._stage(role, md)

    @property
    def targets_infos(self) -> dict[str, MetaFile]:
        """Version and length of every targets role (targets, bins, bin-N),
        for the snapshot. With its length signed, a client reads a role from
        a source only up to that length: a source padding or trickling it
        costs the role's size at the slow-retrieval floor, not python-tuf's
        5 MB bound for a targets file. (A version is signed once, so its
        length never changes: a new length comes with a new version.) A
        claimed project's role also has its hash: its developers may sign two
        different files of one version (one refused, then another), and a
        source must not serve the one the origin did not publish."""
        return {
            f"{role}.json": MetaFile(
                version=md.signed.version,
                length=len(self._bytes[role]),
                hashes=None
                if owned_project(role) is None
                else {"sha256": hashlib.sha256(self._bytes[role]).hexdigest()},
            )
            for role, md in self._md.items()
            if isinstance(md.signed, Targets)
        }

    @property
    def snapshot_info(self) -> MetaFile:
        """Version, length and hash of the current snapshot, for the timestamp.

        The hash lets clients detect a mix-and-match of snapshot versions.
        """
        data = self._bytes["snapshot"]
        return MetaFile(
            version=self._md["snapshot"].signed.version,
            length=len(data),
            hashes={"sha256": hashlib.sha256(data).hexdigest()},
        )

    # -- signing and writing ------------------------------------------------

    def _role_keys(self, role: str) -> tuple[list[str], int]:
        """Key ids and threshold that ``role`` must be signed with."""
        if role in ("root", "targets", "snapshot", "timestamp"):
            spec = self._md["root"].signed.roles[role]
            return list(spec.keyids), spec.threshold
        if self._delegator(role) == "targets":
            delegations = self._md["targets"].signed.delegations
            spec = delegations.roles[role]
            return list(spec.keyids), spec.threshold
        return list(self.succinct.keyids), self.succinct.threshold

    def _signers_for(self, role: str) -> list[Signer]:
        """The signers configured for ``role`` whose keys the role currently trusts."""
        label = BIN_N if role.startswith("bin-") else role
        if label not in self._signers:
            keyids, _ = self._role_keys(role)
            keys = self._public_keys()
            configured = self.config.signers.get(label, {})
            loaded, missing = [], []
            for keyid in keyids:
                if keyid in configured and keyid in keys:
                    try:
                        loaded.append(load_signer(self.dir, configured[keyid], keys[keyid]))
                    except OriginError as exc:  # a key not here: a threshold may do without
                        missing.append(str(exc))
            self._signers[label] = loaded
            self._missing[label] = missing
        return self._signers[label]

    def _enough_signers(self, role: str) -> list[Signer]:
        """The signers of ``role``, if they reach its threshold."""
        signers = self._signers_for(role)
        _, threshold = self._role_keys(role)
        if len(signers) < threshold:
            label = BIN_N if role.startswith("bin-") else role
            why = "; ".join(self._missing.get(label, []))
            del self._signers[label]  # loaded again next time: a KMS back, a key restored
            raise OriginError(
                f"cannot sign {role}: {len(signers)} of the {threshold} required keys are "
                "available here" + (f" ({why})" if why else "")
            )
        return signers

    def check_online_keys(self) -> None:
        """Raise :class:`OriginError` unless every online role can be signed here
        (a service that starts without them would let its metadata expire)."""
        for role in ("timestamp", "snapshot", self._bins()[0]):
            self._enough_signers(role)

    def _public_keys(self) -> dict[str, Key]:
        keys: dict[str, Key] = dict(self._md["root"].signed.keys)
        for role in ("targets", DELEGATING_BINS):
            if role in self._md and self._md[role].signed.delegations is not None:
                keys.update(self._md[role].signed.delegations.keys)
        return keys

    def _stage(self, role: str, md: Metadata[Any]) -> None:
        """Sign ``md`` with every available key of ``role`` and stage it for :meth:`flush`."""
        md.signatures.clear()
        self._md[role] = md  # root must be current for _role_keys of later roles
        for signer in self._enough_signers(role):
            _sign(md, signer, role)
        serializer = _PRETTY if role in ("root", "targets", DELEGATING_BINS) else _COMPACT
        self._bytes[role] = md.to_bytes(serializer)
        if role in ("root", "targets", DELEGATING_BINS):
            # Written at ceremonies only: parsed back as a client would before
            # it is written (python-tuf's checks, such as a key named twice).
            try:
                Metadata[Any].from_bytes(self._bytes[role])
            except Exception as exc:
                raise OriginError(f"the new {role} metadata would not parse: {exc}") from None
        if role not in self._pending:
            self._pending.append(role)

    def flush(self) -> None:
        """Write staged versions: delegated roles, snapshot, root, then timestamp last.

        Versioned files are unreferenced until the new timestamp names them, so
        they are written in place and made durable together (one journal commit
        for the lot instead of one per file); only then is ``timestamp.json``
        replaced atomically. A crash before that leaves at worst torn files that
        nothing references and the next commit overwrites.
        """
        if not self._pending:
            return
        written = []
        for role in self._pending:
            if role in ("timestamp", "root"):
                continue
            path = self.metadata_dir / f"{self._md[role].signed.version}.{role}.json"
            path.write_bytes(self._bytes[role])
            written.append(path)
        for path in written:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if "root" in self._pending:
            data = self._bytes["root"]
            version = self._md["root"].signed.version
            write_atomic(self.metadata_dir / f"{version}.root.json", data, sync_dir=False)
            write_atomic(self.metadata_dir / "root.json", data, sync_dir=False)
        for directory in (*self._linked_dirs, self.targets_dir, self.metadata_dir):
            fsync_dir(directory)
        self._linked_dirs.clear()
        if "timestamp" in self._pending:
            write_atomic(self.metadata_dir / "timestamp.json", self._bytes["timestamp"])
            self._prune({path.name.split(".", 1)[1].removesuffix(".json") for path in written})
        self._pending.clear()

    def _prune(self, roles: set[str]) -> int:
        """Delete the versions of ``roles`` (not root: clients walk its chain)
        that a newer one replaced :data:`SUPERSEDED_GRACE` seconds ago or more
        (:func:`prune_superseded`). Returns the files deleted."""
        current = {r: self._md[r].signed.version for r in roles if r != "root" and r in self._md}
        return prune_superseded(self.metadata_dir, current, SUPERSEDED_GRACE)

    # -- operations -----------------------------------------------------------

    def find(self, path: str) -> TargetFile | None:
        """The published target at ``path``, if any."""
        found: TargetFile | None = self._md[self._role_of(path)].signed.targets.get(path)
        return found

    def _role_of(self, path: str) -> str:
        """The role that lists ``path``: its project's own if claimed, else its bin."""
        owned = owned_role(path.split("/", 1)[0])
        return owned if owned in self._md else self.succinct.get_role_for_target(path)

    def claimed(self, project: str) -> bool:
        """Whether ``project`` signs its own metadata (docs/adr/0022)."""
        return owned_role(project) in self._md

    def holds_claim(self, project: str, keys: list[Key], threshold: int, data: bytes) -> bool:
        """Whether the claim request of ``keys``, ``threshold`` and role
        version ``data`` is in place already (a ceremony run twice)."""
        role = owned_role(project)
        if role not in self._md:
            return False
        keyids, held = self._role_keys(role)
        try:
            signed_bytes = Metadata.from_bytes(data).signed_bytes
        except Exception:  # not metadata: parse_owned says why
            return False
        return (set(keyids), held) == (
            {k.keyid for k in keys},
            threshold,
        ) and signed_bytes == self._md[role].signed_bytes

    def owned(self) -> dict[str, RoleStatus]:
        """Each claimed project's role: version, expiry, its developers' keys."""
        return {
            project: self._role_status(role, role)
            for role in self._md
            if (project := owned_project(role)) is not None
        }

    def _listing(self, role: str) -> bool:
        """Whether ``role`` lists artifacts (a bin, a claimed project's role)."""
        return role.startswith("bin-") or owned_project(role) is not None

    def publish(self, artifacts: list[Artifact]) -> list[int | OriginError]:
        """Publish a batch of stored artifacts in one new snapshot (group commit).

        Returns, per artifact, the snapshot version that holds it, or the error
        that refused it (a :class:`ConflictError` for a path already taken).
        Each artifact is checked again here, against the store, whatever the
        HTTP process said, and its blobs are pinned before any metadata names
        them. On any other failure the in-memory state is reloaded from disk
        and the exception propagates: nothing in the batch is published.
        """
        results: list[OriginError | None] = [None] * len(artifacts)
        used = self.project_bytes()
        folded = self.folded_paths()
        adding: Counter[str] = Counter()  # this batch's new bytes, per project
        by_bin: dict[str, dict[str, TargetFile]] = defaultdict(dict)
        sizes: dict[str, int] = {}  # each touched bin's signed size, as it will be
        accepted: list[Artifact] = []
        removed = self.removed()
        removed_folded = {path.casefold(): path for path in removed}
        linked: list[Path] = []  # this batch's new links, to undo if it fails
        try:
            for i, artifact in enumerate(artifacts):
                project = artifact.path.split("/", 1)[0]
                role = self.succinct.get_role_for_target(artifact.path)
                current = by_bin[role].get(artifact.path) or self.find(artifact.path)
                if current is None and self.claimed(project):
                    # (Sent again, a published artifact is linked again below.)
                    results[i] = ArtifactRefusedError(
                        f"{artifact.path}: {project} signs its own metadata (publish with its key)"
                    )
                    continue
                if current is None and artifact.path in removed:
                    results[i] = ConflictError(
                        f"{artifact.path} was published and removed; its name is not "
                        "used again (a client could take new bytes for the old ones)"
                    )
                    continue
                if current is not None:
                    if current.hashes.get("sha256") != artifact.sha256:
                        results[i] = ConflictError(
                            f"{artifact.path} is already published with different bytes "
                            f"(sha256 {current.hashes.get('sha256')}); artifacts are immutable"
                        )
                        continue
                    # Idempotent: same path, same bytes; its link (which a failure
                    # may have lost) made again to the blob its entry names.
                    published = Artifact.from_target(current)
                    accepted.append(published)
                    with contextlib.suppress(StoreError):  # not stored: nothing to link
                        self._link_target(published)
                    continue
                key = artifact.path.casefold()
                twin, was = folded.get(key), "is published"
                if twin is None:
                    twin, was = removed_folded.get(key), "was published and removed"
                if twin is not None:
                    results[i] = _case_twin(artifact.path, twin, was)
                    continue
                try:  # a name new to the repository: today's rules (checked here too)
                    check_new_filename(artifact.path.partition("/")[2])
                except InvalidNameError as exc:
                    results[i] = ArtifactRefusedError(f"{artifact.path!r}: {exc}")
                    continue
                target = artifact.target_file()
                if role not in sizes:
                    sizes[role] = len(self._bytes[role])  # load() read every bin
                grown = sizes[role] + _entry_size(target)
                try:
                    held = used[project] + adding[project]
                    if held + artifact.length > self.config.project_quota:
                        raise QuotaError(
                            f"{artifact.path}: {project} would hold "
                            f"{held + artifact.length:,} bytes of artifacts, past its quota "
                            f"of {self.config.project_quota:,}"
                        )
                    if grown > self.config.max_bin_bytes:
                        raise BinFullError(
                            f"{artifact.path}: its hash bin ({role}) is full: "
                            f"{self.config.max_bin_bytes:,} bytes, what TUF clients accept"
                        )
                    self._check(artifact)
                    if self._link_target(artifact):
                        linked.append(self._target_link(artifact))
                except OriginError as exc:
                    results[i] = exc  # this artifact only, not the batch
                    continue
                sizes[role] = grown
                adding[project] += artifact.length
                folded[artifact.path.casefold()] = artifact.path
                by_bin[role][artifact.path] = target
                accepted.append(artifact)
            # Pinned first: a blob that published metadata names is never
            # garbage, not even between this commit and the next.
            self._pin(accepted)
            for role, new in by_bin.items():
                if new:
                    with self.edit_targets(role) as targets:
                        targets.targets.update(new)
            if any(by_bin.values()):
                self._commit()
        except BaseException:
            self.load()
            self._undo(accepted, linked)
            raise
        used.update(adding)
        version = self._md["snapshot"].signed.version
        return [version if result is None else result for result in results]

    def folded_paths(self) -> dict[str, str]:
        """Every published path by its case-folded form: built from every bin
        once per load, then kept up to date (a failed commit loads again)."""
        if self._folded is None:
            self._folded = {
                path.casefold(): path
                for role, md in self._md.items()
                if self._listing(role)
                for path in md.signed.targets
            }
        return self._folded

    def project_bytes(self) -> Counter[str]:
        """Bytes of artifacts each project has published (for its quota):
        counted from every bin once per load, then kept up to date."""
        if self._used is None:
            self._used = Counter()
            for role, md in self._md.items():
                if self._listing(role):
                    for path, target in md.signed.targets.items():
                        self._used[path.split("/", 1)[0]] += target.length
        return self._used

    def _undo(self, accepted: list[Artifact], linked: list[Path]) -> None:
        """After a failed commit (memory reloaded from disk): take back the pins
        and links of what the published chain does not hold (its blobs would
        never be collected, and be served under a target name). The chain may
        hold all of it: a failure after the timestamp was replaced."""
        unpublished = [
            a
            for a in accepted
            if (found := self.find(a.path)) is None or found.hashes.get("sha256") != a.sha256
        ]
        blobs: dict[str, set[str]] = defaultdict(set)
        for artifact in unpublished:
            own = blobs[artifact.path.split("/", 1)[0]]
            own.update(cid for cid in (artifact.cid, artifact.manifest) if cid is not None)
        for project, cids in blobs.items():
            self._release(project, cids)
        for link in set(linked) & {self._target_link(a) for a in unpublished}:
            link.unlink(missing_ok=True)

    def _check(self, artifact: Artifact, *, blobs: bool = True, digests: bool = False) -> None:
        """Refuse an artifact whose name, hashes or blobs do not agree with the
        store (``blobs=False``: those were checked, for another path); with
        ``digests`` (an entry the origin did not write), also one whose
        manifest's chunk digests are not its blob's."""
        project, _, filename = artifact.path.partition("/")
        try:
            if target_path(project, filename) != artifact.path:
                raise InvalidNameError("not a normalised target path")
        except InvalidNameError as exc:
            raise ArtifactRefusedError(f"{artifact.path!r}: {exc}") from None
        chunks = -(-artifact.length // artifact.chunk_size) if artifact.chunk_size > 0 else 0
        if not 1 <= artifact.chunk_size <= MAX_CHUNK_SIZE or (
            artifact.manifest is None and chunks >= 2
        ):
            # (A blob of two chunks or more has a manifest: its chunks are
            # verified as they arrive, from any peer.)
            raise ArtifactRefusedError(
                f"{artifact.path}: chunk size {artifact.chunk_size} and its manifest disagree"
            )
        if not blobs:
            return
        try:
            canonical, digest = parse_cid(artifact.cid)
            if canonical != artifact.cid or digest.hex() != artifact.sha256:
                raise ArtifactRefusedError(f"{artifact.path}: its CID and sha256 disagree")
            if self.store.stat(canonical).size != artifact.length:
                raise ArtifactRefusedError(f"{artifact.path}: its length and its blob's disagree")
            if artifact.manifest is not None:
                if not _is_cid(artifact.manifest):  # (written otherwise: clients compare)
                    raise ArtifactRefusedError(
                        f"{artifact.path}: its manifest's CID is not written as the origin "
                        "writes one"
                    )
                manifest = self.store.read_manifest(artifact.manifest)
                if (manifest.sha256, manifest.length, manifest.chunk_size) != (
                    digest,
                    artifact.length,
                    artifact.chunk_size,
                ):
                    raise ArtifactRefusedError(
                        f"{artifact.path}: its chunk manifest is another blob's"
                    )
                if digests and self.store.manifest_of(canonical, manifest.chunk_size) != manifest:
                    # Every mirror and client would refuse the origin's honest
                    # chunks, and a mirror publishes a version only whole: one
                    # project's entry would stop every mirror's replication.
                    raise ArtifactRefusedError(
                        f"{artifact.path}: its chunk manifest's digests are not its blob's chunks"
                    )
        except BlobNotFoundError:
            # Deleted after its upload stored it (a gc past the grace period).
            raise ArtifactRefusedError(
                f"{artifact.path}: its blob vanished; upload again"
            ) from None
        except StoreError as exc:
            raise ArtifactRefusedError(f"{artifact.path}: {exc}") from None

    def _target_link(self, artifact: Artifact) -> Path:
        """``targets/<project>/<sha256>.<filename>``: where clients fetch it."""
        project, filename = artifact.path.split("/", 1)
        return self.targets_dir / project / f"{artifact.sha256}.{filename}"

    def _link_target(self, artifact: Artifact) -> bool:
        """Make the target's link (:meth:`_target_link`) a hard link to the blob;
        True if the link is new. One to another file is replaced (the store
        holds the bytes anew: fsck quarantined the file the link held)."""
        try:
            return self._link(artifact.cid, self._target_link(artifact)) == "made"
        except OSError as exc:
            raise OriginError(f"{artifact.path}: cannot link it: {exc.strerror}") from None

    def _link(self, cid: str, dest: Path) -> Literal["kept", "made", "replaced"]:
        """Make ``dest`` a link to blob ``cid`` (:func:`hard_link`); its directory
        is synced with the commit's (:meth:`flush`)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Past the filesystem's hard-link limit (65,000 on ext4: the same bytes
        # under as many names), a symlink still keeps one copy.
        outcome = hard_link(self.store.path(cid), dest)
        if outcome != "kept":
            self._linked_dirs.add(dest.parent)
        return outcome

    def repair_root_copy(self) -> list[str]:
        """Make ``root.json`` the newest root again if a ceremony stopped between
        the two writes of a new one (``N.root.json``, then the unversioned
        copy: served, and what the p2p topic and the announcement gate are
        built from). Only under the repository's lock (a ceremony's, the
        committer's): a reader racing a ceremony would write an old root back."""
        unversioned = self.metadata_dir / "root.json"
        try:
            if unversioned.read_bytes() == self._bytes["root"]:
                return []
        except FileNotFoundError:
            pass
        write_atomic(unversioned, self._bytes["root"])
        return ["metadata/root.json"]

    def tidy(self) -> list[str]:
        """Take back what a commit killed between its links and its timestamp
        left behind (a failure that raises is undone at once): target links
        and project pins that the published chain does not name; and make
        again the links of published artifacts that are lost or stale. Run
        before the first commit (the committer holds the repository's lock);
        returns what it changed. Deletes superseded metadata, as commits do."""
        links: dict[str, set[str]] = defaultdict(set)
        blobs: dict[str, set[str]] = defaultdict(set)
        removed = self.repair_root_copy()
        self._prune(set(self._md))  # (routine: what commits before a stop left)
        # A removal cut short after its commit left its artifact's files: its
        # blob was served by CID until the next collection. Finished first
        # (before the links and pins below go: they say which it was).
        if unfinished := self._removal_leftovers():
            self._unlink(unfinished, keep_recent=True)  # (not bytes stored again lately)
            removed += [f"finished removing {path}" for path in sorted(unfinished)]
        for target in self.artifacts():
            project, filename = target.path.split("/", 1)
            sha256 = target.hashes.get("sha256")
            if not is_sha256(sha256):
                continue  # not an entry the origin writes (a bin key's forgery): no link
            name = f"{sha256}.{filename}"
            links[project].add(name)
            custom = target.unrecognized_fields.get("custom")
            custom = custom if isinstance(custom, dict) else {}
            blobs[project].update(
                v for k in ("cid", "manifest") if isinstance(v := custom.get(k), str)
            )
            # And the other way: a link lost, or left holding a quarantined
            # file while the store holds the bytes anew, is made again.
            cid = custom.get("cid")
            if isinstance(cid, str):
                try:
                    outcome = self._link(cid, self.targets_dir / project / name)
                except StoreError:
                    continue  # its blob is not stored (quarantined, gone): nothing to link
                if outcome != "kept":
                    removed.append(f"relinked targets/{project}/{name}")
        for directory in self._linked_dirs:
            fsync_dir(directory)
        self._linked_dirs.clear()
        directories = self.targets_dir.iterdir() if self.targets_dir.is_dir() else iter(())
        for directory in sorted(directories):
            if directory.is_dir() and not directory.is_symlink():
                for link in sorted(directory.iterdir()):
                    if link.name not in links.get(directory.name, ()):
                        link.unlink()
                        removed.append(f"targets/{directory.name}/{link.name}")
        for name, cids in sorted(self.store.pins().items()):
            project = name.removeprefix("project:")
            stale = sorted(cids - blobs.get(project, set())) if name != project else []
            if stale:
                self.store.unpin(name, stale)
                removed += [f"pin {name} {cid}" for cid in stale]
        return removed

    def _removal_leftovers(self) -> dict[str, dict[str, Any]]:
        """Removal records (of artifacts no longer published) whose link is
        still here, or one of whose blobs its project still pins, or which
        is stored and pinned by nobody."""
        records = self.removed()
        if not records:
            return {}
        pins = self.store.pins()
        pinned = frozenset().union(*pins.values())
        published = self._published_cids()
        left = {}
        for path, record in records.items():
            sha256 = record.get("sha256")
            if not is_sha256(sha256) or self.find(path) is not None:
                continue  # (still published: a removal cut short before its commit)
            project, filename = path.split("/", 1)
            named = [c for c in record.get("blobs") or [cid_from_sha256(bytes.fromhex(sha256))]
                     if _is_cid(c)]  # fmt: skip
            # (pinned by its project for what it still publishes: not a leftover)
            ours = pins.get(f"project:{project}", frozenset()) - published[project]
            if (self.targets_dir / project / f"{sha256}.{filename}").exists() or any(
                c in ours or (c not in pinned and self.store.has(c)) for c in named
            ):
                left[path] = record
        return left

    def _pin(self, artifacts: Iterable[Artifact]) -> None:
        per_project: dict[str, set[str]] = defaultdict(set)
        for artifact in artifacts:
            blobs = per_project[artifact.path.split("/", 1)[0]]
            blobs.add(artifact.cid)
            if artifact.manifest is not None:
                blobs.add(artifact.manifest)
        for project, cids in per_project.items():
            self.store.pin(f"project:{project}", cids)

    def refresh(self, *, force: bool = False) -> list[str]:
        """Re-sign every online role with less than a quarter of its lifetime left.

        Returns the roles that got a new version. Offline roles are never
        re-signed here (see ``status`` for their expiry).
        """
        now = self.clock()
        refreshed = []
        broken = set(self.broken)  # roles a cut-short ceremony left unsigned
        try:
            for role in sorted(r for r in self._md if r.startswith("bin-")):
                if force or role in broken or self._stale(role, now):
                    with self.edit_targets(role):
                        pass
                    refreshed.append(role)
            snap_stale = force or "snapshot" in broken or self._stale("snapshot", now)
            if self.do_snapshot(force=snap_stale)[0]:
                refreshed.append("snapshot")
            ts_stale = force or "timestamp" in broken or self._stale("timestamp", now)
            if self.do_timestamp(force=ts_stale)[0]:
                refreshed.append("timestamp")
            self.flush()
            self._broken = [r for r in broken if r not in refreshed]
        except BaseException:
            self.load()
            raise
        return refreshed

    def keyids_in_use(self) -> set[str]:
        """Every key some role is delegated to now (root's roles, the bins
        delegation, the hash bins, the claimed projects' developers' keys)."""
        return set(self._public_keys())

    def unretired(self) -> list[str]:
        """Key ids the configuration names that no role does: a ceremony cut
        short after its metadata, before it retired the keys it replaced."""
        used = self.keyids_in_use()
        return sorted({k for keys in self.config.signers.values() for k in keys} - used)

    def retired_keys(self) -> set[str]:
        """Keys never to be named again: those rotations replaced (recorded
        in the configuration) and, for a repository older than that record,
        those an earlier root named that no role names now."""
        earlier: set[str] = set()
        for path in self.metadata_dir.glob("*.root.json"):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                earlier |= set(json.loads(path.read_bytes())["signed"]["keys"])
        return set(self.config.retired) | (earlier - self.keyids_in_use())

    def cut_short_rotations(self) -> dict[str, list[str]]:
        """Roles whose rotation stopped before its keys reached the metadata
        (killed, or failed): ``{role: the keys it was replacing, which still
        sign it}``, from the record the rotation keeps while under way
        (``config.json``, ``rotating``). Only the rotation run again finishes
        it: re-signing would keep keys that may have leaked."""
        found: dict[str, list[str]] = {}
        retired = set(self.config.retired)
        for role in ROLES:
            named = set(self._role_keys(self._bins()[0] if role == BIN_N else role)[0])
            if role in self.config.rotating:
                keys = set(self.config.rotating[role])
                if named != keys:  # (once it names them: finished, or only to sign)
                    found[role] = sorted(named - keys)
            # (one cut short by a version that kept no record: the configuration
            # names keys beside those the metadata names, one of which no role
            # names, and the metadata names keys that were replaced)
            elif (extra := set(self.config.signers.get(role, {})) - named) and (
                extra & set(self.unretired()) and named & retired
            ):
                found[role] = sorted(named & retired)
        return found

    def retire_signers(self) -> list[str]:
        """Drop from the configuration the keys no role names any more (after a
        rotation, or a ceremony finished by ``resign``); return their key ids.
        Not those of a rotation cut short: they say that it was."""
        cut_short = self.cut_short_rotations()
        pending = {k for role in cut_short for k in self.config.signers.get(role, {})}
        retired = sorted(set(self.unretired()) - pending)
        if self.config.rotating.keys() - cut_short.keys():  # (the record of finished ones)
            rotating = {r: k for r, k in self.config.rotating.items() if r in cut_short}
            self._use_signers(dataclasses.replace(self.config, rotating=rotating))
        if retired:
            used = self.keyids_in_use()
            kept = {
                role: {k: uri for k, uri in keys.items() if k in used}
                for role, keys in self.config.signers.items()
            }
            self._use_signers(dataclasses.replace(self.config, signers=kept))
        return retired

    @property
    def unremoved(self) -> list[str]:
        """Paths recorded as removed that the metadata still publishes: a
        removal cut short before its commit (running it again finishes it).
        Not a claimed project's: only its developers' next version drops it."""
        return sorted(
            path
            for path in self.removed()
            if self.find(path) is not None and not self.claimed(path.split("/", 1)[0])
        )

    def removed(self) -> dict[str, dict[str, Any]]:
        """Paths published once and removed since: ``{path: {"sha256", "removed"}}``."""
        return read_removed(self.dir)

    def restore(self, source: Path) -> list[str]:
        """Store again, from a copy of a published artifact's bytes (one
        ``tufmesh get`` fetched and verified from a mirror), its blob and
        chunk manifest, lost or quarantined as corrupt, and make its link
        under ``targets/`` again; return the paths of the artifacts those
        bytes are. Bytes that are no published artifact's are refused. Safe
        while the origin serves: the store takes concurrent writers, and a
        link is replaced atomically."""
        sha = hashlib.sha256()
        try:
            with open(source, "rb") as handle:
                while piece := handle.read(1 << 20):
                    sha.update(piece)
        except OSError as exc:
            raise OriginError(f"cannot read {source}: {exc.strerror or exc}") from None
        digest = sha.hexdigest()
        matches = [
            Artifact.from_target(t) for t in self.artifacts() if t.hashes.get("sha256") == digest
        ]
        if not matches:
            raise OriginError(
                f"{source}: no published artifact has these bytes (sha256 {digest[:16]}…)"
            )
        for artifact in matches:
            if artifact.manifest is None:
                self.store.put(source, expect=artifact.cid)
            else:
                _, manifest = self.store.put_chunked(
                    source, chunk_size=artifact.chunk_size, expect=artifact.cid
                )
                if manifest.cid != artifact.manifest:  # (chunks not as the origin cuts them)
                    raise OriginError(
                        f"{artifact.path}: its signed chunk manifest is not these bytes'"
                    )
            link = self._target_link(artifact)
            link.parent.mkdir(parents=True, exist_ok=True)
            hard_link(self.store.path(artifact.cid), link)
            fsync_dir(link.parent)
        return [artifact.path for artifact in matches]

    def remove(self, paths: Iterable[str]) -> int:
        """Take published artifacts out of the signed metadata (a malicious upload,
        after a token leaked): out of their bins, then their links, pins and (unless
        another project holds the same bytes) blobs gone, and their names never
        published again. A path removed already is cleaned up again (a removal
        cut short after its commit). Returns the snapshot version."""
        wanted = list(dict.fromkeys(paths))
        removed = self.removed()
        now = self.clock().isoformat(timespec="seconds")
        edited = False
        try:
            for path in wanted:
                target = self.find(path)
                if target is None:
                    if path in removed:
                        continue  # its metadata is gone already; clean up below
                    raise OriginError(f"{path} is not published")
                if self.claimed(path.split("/", 1)[0]):
                    raise OriginError(
                        f"{path}: its project signs its own metadata, which only its keys "
                        "change (or 'origin project claim' gives the project new keys)"
                    )
                with self.edit_targets(self.succinct.get_role_for_target(path)) as bin_role:
                    del bin_role.targets[path]
                removed[path] = _removal(target, now)
                edited = True
            if edited:
                # The record first: were the commit cut short, the names stay taken.
                self._record_removed(removed)
                self._commit()
        except BaseException:
            self.load()
            raise
        self._used = self._folded = None  # counted again when next asked
        self._unlink({path: removed[path] for path in wanted})
        return int(self._md["snapshot"].signed.version)

    def _record_removed(self, removed: dict[str, dict[str, Any]]) -> None:
        write_atomic(self.dir / "removed.json", (json.dumps(removed, indent=1) + "\n").encode())

    def _unlink(self, records: dict[str, dict[str, Any]], *, keep_recent: bool = False) -> None:
        """Drop removed artifacts' links in ``targets/`` (``records``: their
        removal records by path) and the pins and blobs of theirs that nothing
        else published in their project names (what a project publishes is
        read once, not once a path: a drop of thousands walked the whole
        repository for each). With ``keep_recent``, a blob written within the
        store's grace period is left to gc."""
        blobs: defaultdict[str, list[str]] = defaultdict(list)
        for path, record in records.items():
            project, filename = path.split("/", 1)
            sha256 = record.get("sha256")
            if not is_sha256(sha256):  # an entry the origin did not write: no link, no blob
                continue
            (self.targets_dir / project / f"{sha256}.{filename}").unlink(missing_ok=True)
            # A record without its blobs (written before they were recorded)
            # still names the artifact's own: its sha256 is its CID. An entry
            # signed with stolen online keys may name anything as its blobs.
            named = record.get("blobs") or [cid_from_sha256(bytes.fromhex(sha256))]
            blobs[project] += [cid for cid in named if _is_cid(cid)]
        for project, cids in blobs.items():
            for cid in self._release(project, dict.fromkeys(cids)):
                # Gone at once, not at the next gc; kept if another project pins it.
                with contextlib.suppress(PinError, BlobNotFoundError):
                    self.store.delete(cid, keep_recent=keep_recent)

    def _published_cids(self, project: str | None = None) -> defaultdict[str, set[str]]:
        """The blobs (artifacts and chunk manifests) each project publishes
        (only ``project``'s, if given)."""
        found: defaultdict[str, set[str]] = defaultdict(set)
        for target in self.artifacts():
            owner = target.path.split("/", 1)[0]
            custom = target.unrecognized_fields.get("custom")
            if (project is None or owner == project) and isinstance(custom, dict):
                # (an entry signed with stolen online keys may hold anything)
                cids = (custom.get("cid"), custom.get("manifest"))
                found[owner].update(c for c in cids if _is_cid(c))
        return found

    def _release(self, project: str, cids: Iterable[str]) -> list[str]:
        """Unpin, from ``project``'s pin set, those of ``cids`` that nothing
        published in the project names any more; return them."""
        still = self._published_cids(project)[project]
        unused = [cid for cid in cids if cid not in still]
        if unused:
            with contextlib.suppress(PinError):  # no pin set: nothing to unpin
                self.store.unpin(f"project:{project}", unused)
        return unused

    # -- claimed projects: metadata their developers sign (docs/adr/0022) -------

    def take_owned(
        self, project: str, data: bytes, uploads: Mapping[str, str | None] | None = None
    ) -> tuple[int, int]:
        """Publish claimed ``project``'s next metadata version, signed by its
        developers (``data``, as they sent it): the artifacts it adds must be
        stored, the ones it keeps unchanged, and the ones it drops are removed
        (their names never used again). With ``uploads`` (what the server
        stored for the project: blob to the manifest it made), each blob it
        adds must be one of them, or one the project publishes, with that
        manifest: nothing is hashed, and another project's blobs are not the
        developers' to name. Returns the role's version and the snapshot's."""
        role = owned_role(project)
        if role not in self._md:
            raise OwnedMetadataError(
                f"{project} is not claimed: the origin signs its artifacts (a ceremony, "
                "'origin project claim', hands it to its developers' keys)"
            )
        delegations = self._md["targets"].signed.delegations
        current: Targets = self._md[role].signed
        md = parse_owned(
            project,
            data,
            keys=delegations.keys,
            delegation=delegations.roles[role],
            version=current.version + 1,
            now=self.clock(),
            limit=self.config.max_bin_bytes,
        )
        self._adopt(project, md, data, dict(current.targets), uploads=uploads)
        return md.signed.version, int(self._md["snapshot"].signed.version)

    def claim(
        self,
        project: str,
        keys: list[Key],
        threshold: int,
        data: bytes,
        *,
        remove_missing: bool = False,
        dry_run: bool = False,
    ) -> list[str]:
        """A ceremony (the targets keys sign): delegate ``project``'s paths to
        ``keys`` before the bins, terminating, and publish the first version of
        its role, ``data``, signed by them. Every artifact the project has
        published must be in it, unchanged (they leave the bins), unless
        ``remove_missing``: those it leaves out are then removed (what a leaked
        key published, say). A project claimed already gets the new keys
        (``data`` then its next version). ``dry_run``: every check, no change;
        returns the paths the claim would remove."""
        role = owned_role(project)
        delegation = owned_delegation(project, keys, threshold)
        delegations = self._md["targets"].signed.delegations
        assert delegations is not None and delegations.roles is not None
        bin_n = self._md[DELEGATING_BINS].signed.delegations
        assert bin_n is not None
        # The repository's own keys, by the key itself: one spelt otherwise
        # (its hex in capitals) is another key id for the same key.
        bins_keys = [delegations.keys[k] for k in delegations.roles[DELEGATING_BINS].keyids]
        ours = {
            key_material(k)
            for k in [*self._md["root"].signed.keys.values(), *bin_n.keys.values(), *bins_keys]
        }
        for key in keys:
            if key_material(key) in ours:
                raise OwnedMetadataError(
                    f"{project}: key {key.keyid[:16]}... is one of the repository's own keys"
                )
            known = delegations.keys.get(key.keyid)
            if known is not None and known.to_dict() != key.to_dict():
                raise OwnedMetadataError(f"{project}: key {key.keyid[:16]}... is another key's id")
        if role in self._md:
            previous = dict(self._md[role].signed.targets)
            version = self._md[role].signed.version + 1
        else:
            previous = {t.path: t for t in self.artifacts() if t.path.startswith(f"{project}/")}
            version = 1
        md = parse_owned(
            project,
            data,
            keys={key.keyid: key for key in keys},
            delegation=delegation,
            version=version,
            now=self.clock(),
            limit=self.config.max_bin_bytes,
            stale="the developers make the request anew: 'tufmesh developer claim --origin URL'",
            claim=claim_statement(project, keys, threshold),
        )
        missing = sorted(set(previous) - set(md.signed.targets))
        if missing and not remove_missing:
            raise OwnedMetadataError(
                f"the project's metadata leaves out what it has published: {', '.join(missing)} "
                "(its developers list every published file in their request: 'tufmesh get' "
                "fetches those they lack; or, to remove those, claim with --remove-missing)"
            )
        if dry_run:  # the checks of _adopt, and the keys the ceremony signs with are here
            self._vet(project, md, previous, ceremony=True)
            self._enough_signers("targets")
            if version == 1 and previous:
                self._enough_signers(self.succinct.get_role_for_target(next(iter(previous))))
            return missing
        unrotated = self.unrotated_claims()
        self._note_unrotated([*unrotated, project])  # first, as a removal's record
        try:
            with self.edit_targets("targets") as targets:
                edited = targets.delegations
                assert edited is not None and edited.roles is not None
                old = edited.roles.pop(role, None)
                # Projects first, in the order claimed: the bins come last.
                claimed = {k: v for k, v in edited.roles.items() if k != DELEGATING_BINS}
                edited.roles = {
                    **claimed,
                    role: delegation,
                    DELEGATING_BINS: edited.roles[DELEGATING_BINS],
                }
                still = {k for r in edited.roles.values() for k in r.keyids}
                for keyid in old.keyids if old is not None else ():
                    if keyid not in still:
                        edited.keys.pop(keyid, None)
                edited.keys.update({key.keyid: key for key in keys})
            bins = {self.succinct.get_role_for_target(p) for p in previous}
            if version == 1:
                for name in sorted(bins):
                    with self.edit_targets(name) as listed:
                        for path in previous:
                            listed.targets.pop(path, None)
            self._adopt(project, md, data, previous, ceremony=True)
        except BaseException:
            self.load()
            # What reached the disk decides: a claim published before the
            # failure (a file left to unlink, a directory's sync) stays noted.
            if role not in self._md or set(self._role_keys(role)[0]) != {k.keyid for k in keys}:
                self._note_unrotated(unrotated)
            raise
        self._broken = None
        return ["targets", *(sorted(bins) if version == 1 else []), role, "snapshot", "timestamp"]

    def _adopt(
        self,
        project: str,
        md: Metadata[Targets],
        data: bytes,
        previous: dict[str, TargetFile],
        *,
        ceremony: bool = False,
        uploads: Mapping[str, str | None] | None = None,
    ) -> None:
        """Publish ``md`` (as ``data``) as the project's role: its new artifacts
        checked against the store, pinned and linked, those it drops recorded
        as removed, then a new snapshot and timestamp. Undone on failure."""
        role = owned_role(project)
        removed = self.removed()
        adding, dropped = self._vet(project, md, previous, ceremony=ceremony, uploads=uploads)
        now = self.clock().isoformat(timespec="seconds")
        recorded = dict(removed)  # as it was
        linked: list[Path] = []
        try:
            self._pin(adding)
            for artifact in adding:
                if self._link_target(artifact):
                    linked.append(self._target_link(artifact))
            for path in dropped:
                removed[path] = _removal(previous[path], now, dropped=not ceremony)
            if dropped:  # the record first, as for a removal
                self._record_removed(removed)
            self._md[role] = md
            self._bytes[role] = data
            if role not in self._pending:
                self._pending.append(role)
            if ceremony:
                self._finish_ceremony([])
            else:
                self._commit()
        except BaseException:
            self.load()
            self._undo(adding, linked)
            if dropped and all(self.find(path) is not None for path in dropped):
                with contextlib.suppress(OSError):  # else: a drop its developers repeat
                    self._record_removed(recorded)
            raise
        self._used = self._folded = None  # counted again when next asked
        # A project's own drop, unlike a maintainers' removal (a claim's, with
        # the origin stopped), races uploads: bytes stored again lately (by an
        # upload waiting for the committer or its developers' signature) are
        # left to gc.
        self._unlink({path: removed[path] for path in dropped}, keep_recent=not ceremony)

    def _vet(
        self,
        project: str,
        md: Metadata[Targets],
        previous: dict[str, TargetFile],
        *,
        ceremony: bool = False,
        uploads: Mapping[str, str | None] | None = None,
    ) -> tuple[list[Artifact], list[str]]:
        """Check a claimed project's new version against the repository before
        anything changes (what it adds stored, with the chunk manifest its
        bytes give: ``uploads`` says which, see :meth:`take_owned`, else
        they are read; what it keeps unchanged, removed names not reused, the
        quota); return what it adds and what it drops."""
        removed = self.removed()
        adding: list[Artifact] = []
        listed: defaultdict[str, list[str]] = defaultdict(list)
        for path in md.signed.targets:
            listed[path.casefold()].append(path)
        dropping = [p for p in previous if p not in md.signed.targets]  # removed by this one
        removed_folded = {path.casefold(): path for path in [*removed, *dropping]}
        if dropping and not ceremony:  # (the maintainers' claim may always drop: the recovery)
            dropped = sum(
                1
                for path, record in removed.items()
                if path.startswith(f"{project}/") and record.get("dropped") is True
            )
            if dropped + len(dropping) > MAX_DROPPED_NAMES:
                raise QuotaError(
                    f"{project} would have dropped {dropped + len(dropping):,} names, past the "
                    f"{MAX_DROPPED_NAMES:,} its own versions may drop (its maintainers can: "
                    "'origin project claim --remove-missing' with the developers' keys)"
                )
        total = sum(t.length for t in md.signed.targets.values())
        if total > self.config.project_quota:
            raise QuotaError(
                f"{project} would hold {total:,} bytes of artifacts, past its quota of "
                f"{self.config.project_quota:,}"
            )
        for path, target in md.signed.targets.items():
            if path in previous:
                if previous[path] != target:
                    raise ConflictError(_difference(path, previous[path], target))
                continue
            if path in removed:
                raise ConflictError(f"{path} was published and removed; its name is not used again")
            if twins := [p for p in listed[path.casefold()] if p != path]:
                raise _case_twin(path, twins[0], "is listed too")
            if (was := removed_folded.get(path.casefold())) is not None:
                raise _case_twin(path, was, "was published and removed")
            adding.append(Artifact.from_target(target))
        # The store last, once a blob and manifest: many entries naming one
        # large manifest held the committer (every project's) for minutes.
        checked: set[tuple[str, str, str | None, int, int]] = set()
        made = {} if uploads is None else _manifests_made(uploads, previous)
        # A claim lists what the project published; new artifacts come after
        # it, uploaded for the project: another project's blobs, named from
        # its public metadata, are not the claim's to pin.
        ours = self.store.pins().get(f"project:{project}", frozenset()) if ceremony else None
        for artifact in adding:
            if self.find(artifact.path) is None:  # a name new to the repository: today's rules
                try:
                    check_new_filename(artifact.path.split("/", 1)[1])
                except InvalidNameError as exc:
                    raise OwnedMetadataError(f"{artifact.path!r}: {exc}") from None
            blobs = (artifact.cid, artifact.sha256, artifact.manifest, artifact.length,
                     artifact.chunk_size)  # fmt: skip
            if ours is not None and artifact.cid not in ours:
                raise ArtifactRefusedError(
                    f"{artifact.path}: not a blob {project} has published (a claim lists what "
                    "the project published; new artifacts are released after it)"
                )
            try:
                if uploads is not None and made.get(artifact.cid, _NONE) != artifact.manifest:
                    raise ArtifactRefusedError(
                        f"{artifact.path}: not among {project}'s uploads"
                        if artifact.cid not in made
                        else f"{artifact.path}: its chunk manifest is not the one the origin "
                        "made of its upload (another chunk size, or other digests)"
                    )
                self._check(artifact, blobs=blobs not in checked, digests=uploads is None)
            except ArtifactRefusedError as exc:
                raise ArtifactRefusedError(
                    f"{exc} (upload it first: 'developer send REQUEST FILES' uploads the files "
                    "again; the origin keeps an upload 15 minutes, and not past a restart)"
                ) from None
            checked.add(blobs)
        return adding, dropping

    # -- ceremonies (offline roles; the origin must not be serving) ------------

    def resign(self, roles: Iterable[str]) -> list[str]:
        """New versions of ``roles`` with a fresh expiry, signed by their keys
        (offline roles before they expire; any role after a doubt), then a new
        snapshot and timestamp. Returns every role re-signed."""
        wanted = list(dict.fromkeys(roles))
        for role in wanted:
            if role not in ROLES:
                raise OriginError(f"no role {role!r}; roles: {', '.join(ROLES)}")
        cut_short = self.cut_short_rotations()
        if short := [role for role in wanted if role in cut_short]:
            raise OriginError(cut_short_said(self.dir, short[0], cut_short[short[0]]))
        done: list[str] = []
        try:
            for role in wanted:
                done += self._resign_role(role)
            self._finish_ceremony(done)
        except BaseException:
            self.load()
            raise
        self._broken = None
        return done

    def rotate(
        self, role: str, keys: list[tuple[str, Key]], threshold: int | None = None
    ) -> list[str]:
        """Replace every key of ``role`` by ``keys`` (signer URI and public key).

        The role that delegates to ``role`` gets a new version naming the new
        keys (root for root, targets, snapshot and timestamp; targets for
        bins; bins for bin-n), signed by its own keys (a new root by the old
        root keys and the new ones, as TUF clients require to follow it), then
        ``role`` itself is re-signed by the new keys, then the snapshot and the
        timestamp. The old keys sign nothing after this. Returns the roles re-signed.
        """
        if role not in ROLES:
            raise OriginError(f"no role {role!r}; roles: {', '.join(ROLES)}")
        if not keys:
            raise OriginError("a rotation needs at least one new key")
        sample = self._bins()[0] if role == BIN_N else role
        old_keyids, old_threshold = self._role_keys(sample)
        if threshold is None:
            if len(keys) < old_threshold:
                raise OriginError(
                    f"{role} has a threshold of {old_threshold}: give that many new keys, "
                    "or lower it explicitly (--threshold)"
                )
            threshold = old_threshold
        if not 1 <= threshold <= len(keys):
            raise OriginError(
                f"a threshold of {threshold} needs at least {threshold} keys "
                f"(--new-keys {threshold}, or {threshold} --signer), {len(keys)} given"
                if threshold > len(keys)
                else f"a threshold of {threshold}: it must be 1 or more"
            )
        if {key.keyid for _, key in keys} == set(old_keyids):
            raise OriginError(f"those are {role}'s keys already: nothing to rotate")
        others = {r: self._role_keys(self._bins()[0] if r == BIN_N else r)[0] for r in ROLES}
        check_new_keys(self.dir, role, keys, kept=set(old_keyids), others=others)
        if again := sorted({key.keyid for _, key in keys} & self.retired_keys()):
            raise OriginError(
                f"{role}: key {again[0][:16]}... was replaced at an earlier rotation, and a "
                "replaced key is never named again (it may have leaked: naming it would undo "
                "the recovery); give a new key"
            )
        old_root_signers = list(self._signers_for("root"))
        _, root_threshold = self._role_keys("root")
        # Every rotation but bins' and bin-n's writes a root, and clients follow
        # a new root only if the old root's threshold signed it.
        writes_root = role in ("root", "targets", "snapshot", "timestamp")
        if writes_root and len(old_root_signers) < root_threshold:
            why = "; ".join(self._missing.get("root", []))
            raise OriginError(
                f"cannot sign a new root: {len(old_root_signers)} of the {root_threshold} "
                f"root keys it needs are available here ({why})"
            )
        old_config = self.config
        new_ids = {key.keyid: uri for uri, key in keys}
        # Until the new metadata is on disk, the configuration names both the
        # old keys and the new, so that a crash leaves a repository its
        # configuration can sign.
        both = {**old_config.signers, role: {**old_config.signers.get(role, {}), **new_ids}}
        # The keys it replaces are recorded first, whether or not another role
        # shares them (they may have leaked), and whatever cuts it short.
        retired = sorted(set(old_config.retired) | (set(old_keyids) - set(new_ids)))
        rotating = {**old_config.rotating, role: sorted(new_ids)}  # (until it ends)
        self._use_signers(
            dataclasses.replace(old_config, signers=both, retired=retired, rotating=rotating)
        )
        done: list[str] = []
        try:
            delegator = self._replace_keys(role, [key for _, key in keys], threshold)
            done.append(delegator)
            if role == "root":
                # The old root's threshold signs the new root as well.
                md = self._md["root"]
                for signer in old_root_signers:
                    if signer.public_key.keyid not in md.signatures:
                        _sign(md, signer, "root")
                self._bytes["root"] = md.to_bytes(_PRETTY)
            elif role not in ("snapshot", "timestamp"):
                done += self._resign_role(role)
            self._finish_ceremony(done)
        except BaseException:
            # The configuration keeps naming the old keys and the new: once
            # published metadata names the new keys it must (or nothing could
            # sign that role), and before, the new keys beside a role signed
            # by the keys it replaces say that this rotation must be run again
            # (cut_short_rotations). The keys it began to replace stay retired.
            self.load()
            raise
        self._use_signers(
            dataclasses.replace(
                old_config,
                signers={**old_config.signers, role: new_ids},
                retired=retired,
                rotating={r: k for r, k in rotating.items() if r != role},  # (ended)
            )
        )
        kept = set(new_ids) & set(old_keyids)
        if role == "targets" and len(kept) < threshold:
            # Every targets version before it is signed by keys the root no
            # longer counts to the threshold (keeping enough old keys, a
            # "rotation" would leave them all valid).
            self._note_unrotated([])
        return done

    def unrotated_claims(self) -> list[str]:
        """Projects claimed since the targets keys last changed
        (:func:`unrotated_claims`)."""
        return unrotated_claims(self.dir)

    def _note_unrotated(self, names: list[str]) -> None:
        path = self.dir / UNROTATED_CLAIMS
        if names:
            write_atomic(path, (json.dumps(sorted(set(names))) + "\n").encode())
        elif path.exists():
            path.unlink()
            fsync_dir(self.dir)

    def _bins(self) -> list[str]:
        return list(self.succinct.get_roles())

    def _use_signers(self, config: OriginConfig) -> None:
        config.save(self.dir)
        self.config = config
        self._signers.clear()

    def _replace_keys(self, role: str, keys: list[Key], threshold: int) -> str:
        """Name ``keys`` as ``role``'s keys in its delegator; return the delegator."""
        if role in ("root", "targets", "snapshot", "timestamp"):
            with self.edit_root() as root:
                for keyid in list(root.roles[role].keyids):
                    root.revoke_key(keyid, role)
                for key in keys:
                    root.add_key(key, role)
                root.roles[role].threshold = threshold
            return "root"
        delegator = "targets" if role == DELEGATING_BINS else DELEGATING_BINS
        with self.edit_targets(delegator) as targets:
            delegations = targets.delegations
            assert delegations is not None
            spec: DelegatedRole | SuccinctRoles
            if role == DELEGATING_BINS:
                assert delegations.roles is not None
                spec = delegations.roles[DELEGATING_BINS]
            else:
                assert delegations.succinct_roles is not None
                spec = delegations.succinct_roles
            for keyid in spec.keyids:
                delegations.keys.pop(keyid, None)
            spec.keyids = [key.keyid for key in keys]
            spec.threshold = threshold
            for key in keys:
                delegations.keys[key.keyid] = key
        return delegator

    def _resign_role(self, role: str) -> list[str]:
        """A new version of ``role`` (every bin, for bin-n), signed by its keys now."""
        if role == "root":
            with self.edit_root():
                pass
            return ["root"]
        if role in ("snapshot", "timestamp"):
            return [role]  # every ceremony ends with both
        names = self._bins() if role == BIN_N else [role]
        for name in names:
            with self.edit_targets(name):
                pass
        return names if role != BIN_N else [BIN_N]

    def _commit(self, *, force: bool = False) -> None:
        """A new snapshot and timestamp over the edited roles, written (timestamp last)."""
        self.do_snapshot(force=force)
        self.do_timestamp(force=force)
        self.flush()

    def _finish_ceremony(self, done: list[str]) -> None:
        self._commit(force=True)
        done += [r for r in ("snapshot", "timestamp") if r not in done]

    def _stale(self, role: str, now: datetime) -> bool:
        lifetime = self.config.expiry(role)
        expires: datetime = self._md[role].signed.expires
        return expires - now < lifetime * REFRESH_FRACTION

    def stray_keys(self) -> list[str]:
        """Files under ``REPO/keys/`` that no role's signer names: retired by
        a rotation, or generated by a ceremony stopped midway (before it
        named them)."""
        named = {
            path.resolve()
            for keys in self.config.signers.values()
            for uri in keys.values()
            if (path := key_file(self.dir, uri)) is not None
        }
        directory = self.dir / "keys"
        if not directory.is_dir():
            return []
        return sorted(
            f"keys/{path.name}"
            for path in directory.iterdir()
            if path.is_file() and path.resolve() not in named
        )

    def offline_expiry(self, now: datetime | None = None) -> tuple[list[str], bool]:
        """Warnings for the offline roles, which only a ceremony re-signs, that
        have expired or expire within :data:`OFFLINE_WARNING`, and whether any
        has expired (clients then refuse every download)."""
        now = now or self.clock()
        warnings, expired = [], False
        for role in ("root", "targets", DELEGATING_BINS):
            expires: datetime = self._md[role].signed.expires
            sign = f"'tufmesh origin sign --dir {self.dir} {role}'"
            if expires <= now:
                expired = True
                warnings.append(
                    f"{role} expired on {expires:%Y-%m-%d %H:%M} UTC: clients refuse every "
                    f"download until it is signed again ({sign}, with its offline keys)"
                )
            elif expires - now < OFFLINE_WARNING:
                days = (expires - now).total_seconds() / 86400
                warnings.append(
                    f"{role} expires in {days:.0f} days ({expires:%Y-%m-%d}): hold a "
                    f"ceremony before then ({sign})"
                )
        return warnings, expired

    def offline_keys_here(self) -> list[str]:
        """A warning if an offline role's private key is a file on this host,
        in a repository meant for production (root's threshold 2 or more: a
        development one says what it is when it is made). Ceremonies run in
        place write new offline keys here, and bring old ones back to sign."""
        if self._role_keys("root")[1] < 2:
            return []
        here = sorted(
            f"{role} ({path.relative_to(self.dir) if path.is_relative_to(self.dir) else path})"
            for role in OFFLINE_ROLES
            for uri in self.config.signers.get(role, {}).values()
            if (path := key_file(self.dir, uri)) is not None and path.is_file()
        )
        if not here:
            return []
        return [
            f"offline keys on this host: {', '.join(here)}: whoever takes this host can sign "
            "with them; move them to where the offline keys are kept (docs/maintainers.md)"
        ]

    def next_refresh(self) -> datetime:
        """When the earliest online role becomes stale."""
        stale: list[datetime] = [
            self._md[role].signed.expires - self.config.expiry(role) * REFRESH_FRACTION
            for role in self._md
            if role in ONLINE_ROLES or role.startswith("bin-")
        ]
        return min(stale)

    def status(self) -> list[RoleStatus]:
        """Every role with its version, expiry, keys and signers."""
        rows = []
        for role in ("root", "targets", DELEGATING_BINS, "snapshot", "timestamp"):
            rows.append(self._role_status(role, role))
        bins = sorted(r for r in self._md if r.startswith("bin-"))
        # The row is the bin that expires first (its version, its expiry).
        soonest = min(bins, key=lambda r: self._md[r].signed.expires)
        row = self._role_status(soonest, BIN_N)
        label = f"bin-* ({len(bins)} bins: {soonest} expires first)"
        rows.insert(3, dataclasses.replace(row, role=label))
        return rows

    def _role_status(self, role: str, label: str) -> RoleStatus:
        keyids, threshold = self._role_keys(role)
        return RoleStatus(
            role=role,
            version=self._md[role].signed.version,
            expires=self._md[role].signed.expires,
            threshold=threshold,
            keyids=tuple(keyids),
            signers=tuple(self.config.signers.get(label, {}).values()),
            online=label in ONLINE_ROLES,
        )

    def artifacts(self) -> list[TargetFile]:
        """Every published artifact, sorted by path."""
        found = [
            target
            for role, md in self._md.items()
            if self._listing(role)
            for target in md.signed.targets.values()
        ]
        return sorted(found, key=lambda t: t.path)


def _difference(path: str, published: TargetFile, given: TargetFile) -> str:
    """Why ``given`` is not the entry ``published`` at ``path`` (immutable)."""
    if published.hashes != given.hashes or published.length != given.length:
        return (
            f"{path} is published with other bytes (sha256 {published.hashes.get('sha256')}, "
            f"{published.length:,} bytes); artifacts are immutable"
        )
    ours = published.unrecognized_fields.get("custom", {})
    theirs = given.unrecognized_fields.get("custom")
    theirs = theirs if isinstance(theirs, dict) else {}
    if ours.get("chunk_size") != theirs.get("chunk_size"):
        return (
            f"{path} is published in chunks of {ours.get('chunk_size')} bytes, not "
            f"{theirs.get('chunk_size')} (the entry was made with another chunk size)"
        )
    return f"{path} is published with other CIDs ({ours}); artifacts are immutable"


def read_removed(repo: Path) -> dict[str, dict[str, Any]]:
    """``REPO/removed.json``: the paths published once and removed since."""
    try:
        data: dict[str, dict[str, Any]] = json.loads((repo / "removed.json").read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise OriginError(f"cannot read {repo / 'removed.json'}: {exc}") from None
    return data


def _manifests_made(
    uploads: Mapping[str, str | None], previous: dict[str, TargetFile]
) -> dict[str, str | None]:
    """Blob to chunk manifest, for the blobs a claimed project may add: those
    stored for it (``uploads``: the manifest the origin made of each), and
    those it publishes (the manifest checked when each was added)."""
    made: dict[str, str | None] = {}
    for target in previous.values():
        with contextlib.suppress(OwnedMetadataError):
            artifact = Artifact.from_target(target)
            made[artifact.cid] = artifact.manifest
    made.update(uploads)
    return made


def _is_cid(value: object) -> TypeGuard[str]:
    """Whether ``value`` is a CID the store could hold."""
    try:
        return isinstance(value, str) and parse_cid(value)[0] == value
    except StoreError:  # InvalidCidError
        return False


def is_sha256(value: object) -> TypeGuard[str]:
    """Whether ``value`` is a SHA-256 as the origin writes one (64 hex digits)."""
    return isinstance(value, str) and len(value) == 64 and all(c in _HEX for c in value)


_HEX: Final = frozenset("0123456789abcdef")


def _case_twin(path: str, twin: str, was: str) -> ConflictError:
    """The refusal of ``path`` beside ``twin``, the same name in other case."""
    return ConflictError(
        f"{path}: {twin} {was}, and names that differ only in case are one file on macOS "
        "and Windows"
    )


def _removal(target: TargetFile, when: str, *, dropped: bool = False) -> dict[str, Any]:
    """The record of a removed artifact (``removed.json``): its sha256 and
    blobs, and whether a version of its project's own ``dropped`` it (those
    are bounded: :data:`MAX_DROPPED_NAMES`)."""
    custom = target.unrecognized_fields.get("custom")
    custom = custom if isinstance(custom, dict) else {}
    sha256 = target.hashes.get("sha256")
    record = {
        "sha256": sha256 if is_sha256(sha256) else None,
        "blobs": sorted({v for k in ("cid", "manifest") if isinstance(v := custom.get(k), str)}),
        "removed": when,
    }
    return {**record, "dropped": True} if dropped else record


def _entry_size(target: TargetFile) -> int:
    """Bytes ``target`` adds to its bin's compact JSON: ``"path":{...},``."""
    entry = json.dumps(target.to_dict(), separators=(",", ":"), sort_keys=True)
    return len(json.dumps(target.path)) + len(entry) + 2


def check_new_keys(
    repo: Path,
    role: str,
    keys: list[tuple[str, Key]],
    kept: Set[str] = frozenset(),
    others: Mapping[str, Iterable[str]] | None = None,
) -> None:
    """Refuse a key given twice (it would count twice towards a threshold, and
    python-tuf refuses the metadata), a key of an offline role for an online
    one or the reverse (``others``: the key ids of the other roles), and a
    new key that cannot sign here: one named in metadata without ever signing
    may be unusable or mispaired (a typo in a KMS URI), and the threshold
    would count it. ``kept``: key ids the role has already (they need not be
    here)."""
    seen: set[str] = set()
    for uri, key in keys:
        if key.keyid in seen:
            raise OriginError(
                f"{role}: key {key.keyid[:16]}... is given twice (again as {uri}); "
                "each key counts once towards a threshold"
            )
        seen.add(key.keyid)
    for other, keyids in (others or {}).items():
        across = (other in ONLINE_ROLES) != (role in ONLINE_ROLES)  # offline and online
        if across and (shared := seen & set(keyids)):
            offline = other if role in ONLINE_ROLES else role
            raise OriginError(
                f"{role}: key {min(shared)[:16]}... is {other}'s key too: {offline}'s keys "
                "must never be on the serving host, where the online roles' keys are "
                "(whoever takes the host would sign as it)"
            )
    failed = []
    for uri, key in keys:
        if key.keyid not in kept:
            try:
                load_signer(repo, uri, key)
            except OriginError as exc:
                failed.append(str(exc))
    if failed:
        raise OriginError(
            f"every new {role} key must sign at its ceremony, and these cannot here: "
            + "; ".join(failed)
        )


def _sign(md: Metadata[Any], signer: Signer, role: str) -> None:
    """Sign ``md`` with ``signer``, and check the signature with the public key
    the metadata names: a signer URI paired with another key's public key
    (a slip at a ceremony) made metadata that no client would accept, a new
    root included, and the origin published it."""
    signature = md.sign(signer, append=True)
    try:
        signer.public_key.verify_signature(signature, md.signed_bytes)
    except Exception:  # UnverifiedSignatureError, or a key type it cannot check
        keyid = signer.public_key.keyid
        raise OriginError(
            f"the signer given for {role} key {keyid[:16]} signs with another key: "
            "check that each --signer and its --public-key are a pair"
        ) from None
