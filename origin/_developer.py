"""The developers' side of a claimed project (docs/adr/0022, 0024): their
keys, the claim they hand to the maintainers, and each new version of the
project's metadata, signed here and sent to the origin.

Nothing here trusts the origin: every entry signed is computed from the
developer's own file, and a new version is built only on a published one that
this key signed, or a threshold of the project's keys as this key's holder
noted them when the claim was made (so an origin serving a forged "current"
version cannot have it endorsed), and that is not older than the last version
this key had published (kept beside the key file: an origin serving an old
version, from before an artifact was dropped, cannot have it revived).

A project may need several of its holders' keys to sign (a threshold): one
holder signs a new version into a signing request (a file), the others each
check it and add their signature (:func:`cosign`), and the last one sends it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import httpx
from cryptography.exceptions import UnsupportedAlgorithm
from securesystemslib.signer import SIGNER_FOR_URI_SCHEME, CryptoSigner, Key, Signer, SSlibKey
from securesystemslib.signer._utils import compute_default_keyid
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from tufmesh._durable import fsync_dir, write_atomic
from tufmesh._json import loads
from tufmesh._ui import data_home
from tufmesh.cas import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, ManifestBuilder, cid_from_sha256
from tufmesh.cas._manifest import MAX_MANIFEST_CHUNKS
from tufmesh.errors import OriginError, PublishError, UnansweredError, UsageError
from tufmesh.origin._keys import load_signer, public_key_from_pem, public_key_from_uri
from tufmesh.origin._names import check_filename, normalize_project
from tufmesh.origin._owned import (
    CLAIM_FIELD,
    MAX_LIFETIME,
    PROJECT_FIELD,
    claim_statement,
    key_material,
    owned_role,
)
from tufmesh.origin._publish import OUTCOME_HEADER, refusal, status_phrase
from tufmesh.origin._repository import Artifact

__all__ = [
    "EXPIRY_DAYS",
    "DeveloperKey",
    "Holders",
    "SigningRequest",
    "changes",
    "check_files",
    "claim_request",
    "cosign",
    "claimed_version",
    "generate_key",
    "load_key",
    "next_version",
    "publish_version",
    "published_version",
    "published_holders",
    "read_claim",
    "read_request",
    "release",
    "release_request",
    "send_version",
    "target_at",
    "target_of",
    "write_request",
]

#: A project's metadata lives a year unless its developers say otherwise:
#: each publication signs it anew, and a project that publishes nothing for a
#: year re-signs it (``tufmesh developer sign``).
EXPIRY_DAYS: Final = 365
_PIECE: Final = 1 << 20
_TIMEOUT: Final = httpx.Timeout(30.0)


def generate_key(path: Path) -> Key:
    """A new Ed25519 key in PEM file ``path`` (made anew, mode 0600, its
    directory too if missing, mode 0700), its public key in ``path.pub``
    (what the project's other holders are given: ``developer claim
    --holder``); its public key. Neither file is ever replaced; a ``path``
    without its ``path.pub`` (a keygen cut short) gets it."""
    if not path.name or path.name in (".", ".."):
        raise UsageError(f"{str(path)!r} names no file: give the key a file name (example.pem)")
    public = path.with_name(path.name + ".pub")
    if os.path.lexists(public) and not os.path.lexists(path):
        raise UsageError(
            f"{public} exists already (another key's public key?): a key is never "
            "overwritten; choose another name"
        )
    signer = CryptoSigner.generate_ed25519()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:  # (a file where a directory of the path should be)
        raise UsageError(f"cannot write {path}: {path.parent} is not a directory") from None
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    try:
        _create(path, signer.private_bytes, 0o600)
    except FileExistsError:
        said = f"{path} exists already: a key is never overwritten"
        if not os.path.lexists(public):
            with contextlib.suppress(OSError, ValueError, TypeError, UnsupportedAlgorithm):
                _create(public, _public_pem(path.read_bytes()), 0o644)
                said += f" (its public key was missing: wrote {public})"
        raise UsageError(said) from None
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    try:
        _create(public, _public_pem(signer.private_bytes), 0o644)
    except OSError as exc:  # no key made: the one just written was never used
        path.unlink(missing_ok=True)
        raise UsageError(f"cannot write {public}: {exc.strerror}; no key made") from None
    fsync_dir(path.parent)
    return signer.public_key


def _create(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to a new file ``path`` (FileExistsError if there is
    one), durably; no file left if writing fails."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _public_pem(private_pem: bytes) -> bytes:
    """The public key, in PEM, of the unencrypted PEM private key ``private_pem``."""
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_pem_private_key,
    )

    public = load_pem_private_key(private_pem, None).public_key()
    return public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class Holders:
    """A project's keys and how many of them must sign its metadata."""

    keys: dict[str, Key]
    threshold: int

    def signed(self, md: Metadata[Targets]) -> set[str]:
        """The ids of the keys among these whose signature of ``md`` is good."""
        good = set()
        for keyid, signature in md.signatures.items():
            key = self.keys.get(keyid)
            if key is None:
                continue
            try:
                key.verify_signature(signature, md.signed_bytes)
            except Exception:  # noqa: S112 (a bad signature counts for nothing)
                continue
            good.add(keyid)
        return good

    def to_dict(self) -> dict[str, Any]:
        return {
            "keys": {keyid: key.to_dict() for keyid, key in self.keys.items()},
            "threshold": self.threshold,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Holders:
        """Raises ValueError (or KeyError, TypeError) unless ``data`` is one."""
        return cls.checked(list(data["keys"].items()), data["threshold"])

    @classmethod
    def checked(cls, keys: list[tuple[Any, Any]], threshold: Any) -> Holders:
        """The holders of ``keys`` (key id, key dict), once each key is named
        by its own hash, none twice however it is written, and ``threshold``
        is one they can meet; ValueError (or KeyError, TypeError) otherwise."""
        held: dict[str, Key] = {}
        materials = set()
        for keyid, fields in keys:
            # Only what a key is: anything else would go, as given, into the
            # targets metadata every client reads (a number of 400 digits, say).
            value = fields.get("keyval") if isinstance(fields, dict) else None
            if (
                not isinstance(value, dict)
                or set(fields) != {"keytype", "scheme", "keyval"}
                or set(value) != {"public"}
                or not all(isinstance(fields[f], str) for f in ("keytype", "scheme"))
                or not isinstance(value["public"], str)
            ):
                raise ValueError(
                    f"key {str(keyid)[:16]}... is not keytype, scheme and keyval.public alone"
                )
            key = Key.from_dict(keyid, dict(fields))
            if not isinstance(key, SSlibKey) or keyid != compute_default_keyid(
                key.keytype, key.scheme, key.keyval
            ):
                raise ValueError(f"key {str(keyid)[:16]}... is not named by its own hash")
            material = _material(key)
            if keyid in held or material in materials:
                raise ValueError(f"key {keyid[:16]}... is named twice")
            held[keyid] = key
            materials.add(material)
        if type(threshold) is not int or not 1 <= threshold <= len(held):
            raise ValueError(f"a threshold of {threshold!r} with {len(held)} key(s)")
        return cls(held, threshold)


@dataclass(frozen=True)
class DeveloperKey:
    """A developer's signing key, and per project what it last had published
    and the project's keys as they were when it was claimed
    (``KEYFILE.versions.json``)."""

    signer: Signer
    memory: Path

    def _versions(self) -> dict[str, dict[str, Any]]:
        try:
            versions = loads(self.memory.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read {self.memory}: {exc}") from None
        if not isinstance(versions, dict) or not all(map(_remembered, versions.values())):
            raise UsageError(
                f"{self.memory} is damaged: restore it, or remove it to start afresh (it "
                "keeps an origin from rolling a project back under this key, and notes the "
                "project's other keys)"
            )
        return versions

    def holders(self, project: str) -> Holders | None:
        """The project's keys and threshold, as noted when its claim was made
        or cosigned with this key; None if never."""
        return _holders(self._versions().get(project, {}))

    def fresh_claim(self, project: str, version: int) -> None:
        """Refuse a claim of ``project`` older than one this key signed (one
        replayed, to have the keys it named noted again)."""
        claimed = self._versions().get(project, {}).get("claim", 0)
        if version < claimed:
            raise PublishError(
                f"this claim is version {version}; this key signed a newer claim of "
                f"{project}, version {claimed}: it is stale, nothing is signed (a new claim "
                "is the next version: 'developer claim --origin URL')"
            )

    def note_holders(self, project: str, holders: Holders, version: int) -> None:
        """Note ``holders`` as the project's keys: those of a claim, of
        ``version``, that this key signs (:meth:`fresh_claim`)."""
        self.fresh_claim(project, version)
        versions = self._versions()
        versions.setdefault(project, {}).update(holders.to_dict(), claim=version)
        self._save(versions)

    def _save(self, versions: dict[str, dict[str, Any]]) -> None:
        try:
            self.memory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomic(self.memory, (json.dumps(versions, indent=1) + "\n").encode())
        except OSError as exc:
            raise UsageError(f"cannot write {self.memory}: {exc.strerror}") from None

    def sign_next(
        self,
        project: str,
        current: Metadata[Targets],
        *,
        add: Iterable[TargetFile] = (),
        drop: Iterable[str] = (),
        days: int = EXPIRY_DAYS,
    ) -> bytes:
        """:func:`next_version`, after :meth:`check` (and :meth:`floor`) and
        :meth:`keeps_dropped`; the caller notes what it drops once it is
        handed on (:meth:`signs_away`)."""
        self.check(project, current)
        self.floor(project, current)
        data = next_version(current, [self.signer], add=add, drop=drop, days=days, project=project)
        self.keeps_dropped(project, current, Metadata[Targets].from_bytes(data))
        return data

    def dropped(self, project: str) -> dict[str, int]:
        """The paths this key signed a version of ``project`` without, that its
        base listed: path to that version."""
        return dict(self._versions().get(project, {}).get("dropped", {}))

    def keeps_dropped(
        self, project: str, base: Metadata[Targets], proposed: Metadata[Targets]
    ) -> None:
        """Refuse ``proposed``, built on ``base`` (a checked published version),
        if it lists a path this key signed a version without, and ``base`` is
        not newer than that version. The version a key signs need not be the
        one it noted as published: the holder who proposes a drop, and one
        who cosigns without sending it, noted only its base. A hostile origin
        could then serve that base again, after the drop, to every holder (or
        another version of the drop's number, signed in a release that lost),
        and have them sign the dropped artifact back in, shown as neither
        added nor dropped. Whether the drop was published, the key cannot
        tell: its holder says so (:meth:`forget_dropped`) if it was not. A
        newer base is the holders' own word, and the origin never publishes
        a dropped name again."""
        since = self.dropped(project)
        version = base.signed.version
        if again := sorted(p for p in proposed.signed.targets if since.get(p, 0) >= version):
            names = " ".join(p.split("/", 1)[1] for p in again)
            raise PublishError(
                f"this key signed version {since[again[0]]} of {project} without "
                f"{', '.join(again)}, and the origin serves version {version}, which lists it: "
                "nothing is signed. If that drop was published, the origin is serving an "
                "older version (ask its maintainers). If another version of its number won, "
                f"say so: 'tufmesh developer forget-drop {project} {names} --key KEY'; if it "
                "still awaits signatures, its holders sign it or it stays"
            )

    def forget_dropped(
        self, project: str, filenames: Iterable[str], *, force: bool = False
    ) -> list[str]:
        """Forget that this key signed ``project``'s ``filenames`` away (its
        holder says those drops were never published); return the paths.
        Refused, unless ``force``, for a drop whose version may still be
        published: no version of its number or later has been seen published
        (forgotten, it could be cosigned and sent later, and the version
        before it served again, for this key to sign the artifact back in)."""
        versions = self._versions()
        entry = versions.get(project, {})
        noted = dict(entry.get("dropped", {}))
        seen = entry.get("version", 0)
        paths = list(dict.fromkeys(f"{project}/{name}" for name in filenames))
        if not force and (live := [p for p in paths if noted.get(p, 0) > seen]):
            raise UsageError(
                f"this key's drop of {', '.join(live)} (version {noted[live[0]]}) may still be "
                f"published: no version {noted[live[0]]} or later has been seen (the origin "
                f"served v{seen}). Forget it only if its request will never be signed "
                "(--force)"
            )
        gone = [p for p in paths if noted.pop(p, None)]
        if gone:
            entry["dropped"] = noted
            self._save(versions)
        return gone

    def signs_away(
        self, project: str, base: Metadata[Targets], proposed: Metadata[Targets]
    ) -> None:
        """Note the paths ``proposed``, a release built on ``base`` (a checked
        published version) that this key signs, drops (best effort, as
        :meth:`floor`): called once it is signed, never for a request only
        shown (one refused, or not good, must not block what it dropped)."""
        if dropping := set(base.signed.targets) - set(proposed.signed.targets):
            versions = self._versions()
            entry = versions.setdefault(project, {})
            noted = dict(entry.get("dropped", {}))
            version = proposed.signed.version
            noted.update({p: max(version, noted.get(p, 0)) for p in dropping})
            entry["dropped"] = dict(sorted(noted.items()))
            with contextlib.suppress(UsageError):
                self._save(versions)

    def floor(self, project: str, current: Metadata[Targets]) -> None:
        """Note ``current``, a published version this key has checked, as the
        oldest it builds on from now on (best effort: a key kept where nothing
        can be written, a CI secret, keeps only what it noted before)."""
        last = self._versions().get(project, {})
        if last.get("version", 0) < current.signed.version:
            with contextlib.suppress(UsageError):
                self.remember(project, current.to_bytes())

    def check(self, project: str, current: Metadata[Targets]) -> None:
        """Refuse ``current`` unless a threshold of the project's keys noted
        here signed it (or, none noted, this key did), and unless it is not
        older than the last version this key had published for ``project``.
        This key's signature alone is not enough where several must sign: a
        request it signed that never met the threshold, served as the
        published version, was built on, and noted as published."""
        last = self._versions().get(project, {})
        noted = _holders(last)
        mine = Holders({self.signer.public_key.keyid: self.signer.public_key}, 1)
        if len((noted or mine).signed(current)) < (noted or mine).threshold:
            signed_by = (
                f"{noted.threshold} of the {len(noted.keys)} keys noted when the project was "
                "claimed (a request some of them signed is not a published version)"
                if noted is not None
                else f"key {self.signer.public_key.keyid[:12]}"
            )
            raise PublishError(
                f"the published version {current.signed.version} is not signed by {signed_by}: "
                "is it the project's key (was the project claimed again for new keys)? If it "
                "is, the origin may be serving a forged version (ask its maintainers); nothing "
                "is signed. (Where several keys sign, a holder builds on the others' versions "
                "once it has cosigned the claim.)"
            )
        _names(current, project, "the published version")
        if "version" in last:
            digest = hashlib.sha256(current.signed_bytes).hexdigest()
            version = current.signed.version
            if version < last["version"] or (
                version == last["version"] and digest != last["sha256"]
            ):
                which = "an older version" if version < last["version"] else "another version"
                raise PublishError(
                    f"the origin serves {which} of {owned_role(project)} (v{version}) than the "
                    f"one this key had published (v{last['version']}, noted in {self.memory}): "
                    "not signing on top of it (the origin may be rolling the project back; "
                    "ask its maintainers)"
                )

    def remember(self, project: str, data: bytes) -> None:
        """Note ``data`` (signed metadata) as the project's newest published
        version, if a threshold of the keys noted for the project signed it
        (an origin that says it published a version signed by fewer is not
        believed: the version noted is the one the next must follow)."""
        md: Metadata[Any] = Metadata.from_bytes(data)
        versions = self._versions()
        holders = _holders(versions.get(project, {}))
        if holders is not None and len(holders.signed(md)) < holders.threshold:
            raise UsageError(
                f"{owned_role(project)} v{md.signed.version} carries fewer than "
                f"{holders.threshold} signatures of the keys noted for {project}: not noted "
                "as published"
            )
        versions.setdefault(project, {}).update(
            version=md.signed.version, sha256=hashlib.sha256(md.signed_bytes).hexdigest()
        )
        self._save(versions)


def _holders(entry: dict[str, Any]) -> Holders | None:
    """The keys noted in a project's entry of a key's memory, if any."""
    return Holders.from_dict(entry) if "keys" in entry else None


def _remembered(entry: Any) -> bool:
    """Whether ``entry`` reads as a project's entry in a key's memory."""
    if not isinstance(entry, dict):
        return False
    if ("version" in entry or "sha256" in entry) and not (
        type(entry.get("version")) is int and isinstance(entry.get("sha256"), str)
    ):
        return False
    if "keys" in entry or "threshold" in entry:
        try:
            Holders.from_dict(entry)
        except Exception:  # securesystemslib raises several kinds for a bad key
            return False
    if "claim" in entry and type(entry["claim"]) is not int:
        return False
    dropped = entry.get("dropped", {})
    if not isinstance(dropped, dict) or not all(type(v) is int for v in dropped.values()):
        return False
    return bool(entry)


def load_key(key: str, public_key: Path | None = None) -> DeveloperKey:
    """A developer's key: a PEM file's path or ``file2:`` URI (what it had
    published noted beside it), or any securesystemslib signer URI, a KMS key
    or an HSM (``gcpkms:...``, ``hsm:``), with its public key in PEM file
    ``public_key`` (noted under the data directory, by key id)."""
    scheme = key.split(":", 1)[0]
    if scheme not in SIGNER_FOR_URI_SCHEME:  # a file's name, a colon in it or not
        scheme, key = "file2", f"file2:{key}"
    try:
        given = public_key_from_pem(public_key) if public_key is not None else None
        if scheme == "file2":
            path = Path(key.removeprefix("file2:")).absolute()
            uri = f"file2:{path}"
            known = public_key_from_uri(Path.cwd(), uri)
            if given is not None and given != known:
                raise UsageError(f"{public_key} is not the public key of {path}")
            signer = load_signer(Path.cwd(), uri, known)
            return DeveloperKey(signer, path.with_name(path.name + ".versions.json"))
        if given is None:
            raise UsageError(f"{key}: give its public key too (--public-key PEM)")
        signer = load_signer(Path.cwd(), key, given)
    except OriginError as exc:
        raise UsageError(str(exc)) from None
    return DeveloperKey(signer, data_home() / "developer" / f"{given.keyid}.versions.json")


def target_of(path: Path, project: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> TargetFile:
    """The entry the origin writes for ``path`` published to ``project``,
    computed from the file itself (its sha256, CID and chunk manifest)."""
    builder = ManifestBuilder(chunk_size)
    try:
        with open(path, "rb") as handle:
            while piece := handle.read(_PIECE):
                builder.update(piece)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    manifest = builder.finish()
    artifact = Artifact(
        path=f"{normalize_project(project)}/{check_filename(path.name)}",
        length=manifest.length,
        sha256=manifest.sha256.hex(),
        cid=cid_from_sha256(manifest.sha256),
        manifest=manifest.cid if manifest.count >= 2 else None,
        chunk_size=chunk_size,
    )
    return artifact.target_file()


def _expiry(days: int) -> datetime:
    return (datetime.now(UTC) + timedelta(days=days)).replace(microsecond=0)


def _signed(md: Metadata[Targets], signers: Iterable[Signer], *, keep: bool = False) -> bytes:
    """``md`` signed by ``signers`` (``keep``: beside the signatures it has)."""
    if not keep:
        md.signatures.clear()
    for signer in signers:
        signature = md.sign(signer, append=True)
        try:  # a KMS or HSM key given with another key's public key
            signer.public_key.verify_signature(signature, md.signed_bytes)
        except Exception:
            raise UsageError(
                f"key {signer.public_key.keyid[:12]} signs with another key: check that "
                "--key and --public-key are a pair"
            ) from None
    return md.to_bytes(JSONSerializer(compact=False))


@dataclass(frozen=True)
class SigningRequest:
    """A version of a project's metadata on its way to a threshold of its
    keys' signatures: a claim's first version (``holders``: the keys it
    delegates to) or a release's next version (``holders`` None)."""

    project: str
    metadata: Metadata[Targets]
    holders: Holders | None = None

    @property
    def data(self) -> bytes:
        """The metadata as the origin is sent it."""
        return self.metadata.to_bytes(JSONSerializer(compact=False))

    @property
    def version(self) -> int:
        return self.metadata.signed.version

    def to_dict(self) -> dict[str, Any]:
        request: dict[str, Any] = {"project": self.project}
        if self.holders is not None:
            keys = self.holders.keys.items()
            request["keys"] = [{"keyid": keyid, **key.to_dict()} for keyid, key in keys]
            request["threshold"] = self.holders.threshold
        request["metadata"] = json.loads(self.data)
        return request


def claim_request(
    project: str,
    signer: Signer,
    targets: list[TargetFile],
    days: int = EXPIRY_DAYS,
    *,
    version: int = 1,
    holders: Iterable[Key] = (),
    threshold: int = 1,
) -> SigningRequest:
    """What the developers of ``project`` hand its maintainers to claim it:
    their public keys (``signer``'s and the other ``holders``', of which
    ``threshold`` must sign) and the first version of the project's metadata
    under them (``version``: 1, or the next of a project claimed already),
    signed by ``signer``, listing every artifact the project has published
    (their own files' entries: the origin refuses a claim that leaves one out
    or differs). Each other holder then adds a signature (:func:`cosign`)."""
    project = normalize_project(project)
    holders = list(holders)
    try:
        named = [(k.keyid, k.to_dict()) for k in [signer.public_key, *holders]]
        checked = Holders.checked(named, threshold)
    except ValueError as exc:
        mine = _material(signer.public_key)
        own = " (a holder's key is your own --key)" if any(
            _material(k) == mine for k in holders
        ) else ""  # fmt: skip
        raise UsageError(f"{exc}{own}: each holder counts once, and the threshold is one "
                         "they can meet") from None  # fmt: skip
    statement = claim_statement(project, list(checked.keys), threshold)
    md = Metadata(
        Targets(
            version=version,
            expires=_expiry(days),
            unrecognized_fields={CLAIM_FIELD: statement},
        )
    )
    for target in targets:
        md.signed.targets[target.path] = target
    _signed(md, [signer])
    return SigningRequest(project, md, checked)


def release_request(project: str, data: bytes) -> SigningRequest:
    """The request for the other holders to sign ``data``, a release's version."""
    return SigningRequest(normalize_project(project), Metadata[Targets].from_bytes(data))


def write_request(path: Path, request: SigningRequest, *, new: bool = False) -> None:
    """Write ``request`` to ``path`` (``new``: refuse to replace a file)."""
    body = (json.dumps(request.to_dict(), indent=1) + "\n").encode()
    try:
        if new:
            with open(path, "xb") as handle:
                handle.write(body)
        else:
            write_atomic(path, body)
    except FileExistsError:
        raise UsageError(f"{path} exists already") from None
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None


#: JSON's names for what a document may be, by the Python type it reads as.
_JSON_KINDS: Final[dict[type, str]] = {
    list: "array", str: "string", int: "number", float: "number", bool: "true or false",
    type(None): "null",
}  # fmt: skip


def read_request(path: Path) -> SigningRequest:
    """The signing request in file ``path`` (a claim's or a release's)."""
    try:
        request = loads(path.read_bytes())
        if not isinstance(request, dict):
            kind = _JSON_KINDS.get(type(request), "value")
            raise ValueError(f"it holds a JSON {kind}, not an object")
        project = normalize_project(request["project"])
        holders = None
        if "keys" in request:
            keys = [
                (k["keyid"], {f: v for f, v in k.items() if f != "keyid"}) for k in request["keys"]
            ]
            holders = Holders.checked(keys, request["threshold"])
        md: Metadata[Any] = Metadata.from_bytes(json.dumps(request["metadata"]).encode())
        if not isinstance(md.signed, Targets):
            raise ValueError("its metadata is not targets metadata")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError, AttributeError, DeserializationError) as exc:
        # (a KeyError's text is the bare name of the field that is missing)
        reason = f"it has no {exc.args[0]!r}" if isinstance(exc, KeyError) and exc.args else exc
        raise UsageError(
            f"{path} is not a signing request (what 'tufmesh developer claim' writes, or "
            f"'publish --key' for a project several keys sign): {reason}"
        ) from None
    return SigningRequest(project, md, holders)


def read_claim(path: Path) -> tuple[str, list[Key], int, bytes]:
    """Project, keys, threshold and signed metadata of a claim request file."""
    request = read_request(path)
    if request.holders is None:
        raise UsageError(f"{path} is a release's signing request, not a claim request")
    holders = request.holders
    return request.project, list(holders.keys.values()), holders.threshold, request.data


def cosign(
    request: SigningRequest,
    key: DeveloperKey,
    current: Metadata[Targets] | None = None,
    *,
    confirm: Callable[[list[TargetFile], list[str]], None] | None = None,
) -> SigningRequest:
    """``request`` with ``key``'s signature added, once checked: every
    signature it carries is a good one of the project's keys (the claim's,
    or those noted when it was claimed), and a release's version follows
    ``current``, the published one, as :meth:`DeveloperKey.check` requires
    of any base. Then ``confirm(added, dropped)`` (entries, paths: what
    :func:`changes` finds, or a first claim's listing) has the signer's
    word, or raises; and only then is it signed."""
    keyid = key.signer.public_key.keyid
    holders = request.holders
    signed = request.metadata.signed
    if holders is not None:  # a claim: it names the keys, and so does what they sign
        if keyid not in holders.keys:
            raise UsageError(
                f"key {keyid[:12]} is not one of the request's keys "
                f"({', '.join(k[:12] for k in holders.keys)})"
            )
        said = signed.unrecognized_fields.get(CLAIM_FIELD)
        if said != claim_statement(request.project, list(holders.keys), holders.threshold):
            raise PublishError(
                "the claim's signed metadata does not name the project, keys and threshold "
                "the request does: it was changed after it was made; nothing is signed"
            )
        key.fresh_claim(request.project, request.version)
        _lifetime(signed.expires, datetime.now(UTC))
        # Every entry is vouched for: what the origin serves as the published
        # version (a project claimed already, for new keys) is not checked, and
        # an entry it also listed was neither added nor dropped, never shown.
        added = list(signed.targets.values())
        dropped = [] if current is None else changes(current, request.metadata, claim=True)[1]
    else:
        if current is None:
            raise UsageError("a release is checked against the published version")
        key.check(request.project, current)
        if request.metadata.signed_bytes == current.signed_bytes:
            raise PublishError(
                f"the request is published already ({owned_role(request.project)} "
                f"v{request.version}): nothing to sign"
            )
        added, dropped = changes(current, request.metadata)
        _names(request.metadata, request.project, "the request")
        key.keeps_dropped(request.project, current, request.metadata)
        holders = key.holders(request.project)
    if holders is not None:
        good = holders.signed(request.metadata)
        if set(request.metadata.signatures) - good - {keyid}:
            raise PublishError(
                f"the request carries signatures that are not good ones of {request.project}'s "
                "keys: it was changed after it was signed, or is not for these keys; nothing "
                "is signed"
            )
    if confirm is not None:
        confirm(added, dropped)
    md = Metadata[Targets].from_bytes(request.data)
    md.signatures.pop(keyid, None)  # this key's, made anew (a bad one is not kept)
    if request.holders is None:
        assert current is not None  # (a release was refused above without it)
        key.signs_away(request.project, current, md)
    _signed(md, [key.signer], keep=True)
    if request.holders is not None:
        key.note_holders(request.project, request.holders, request.version)
    else:
        assert current is not None  # (a release was refused above without it)
        key.floor(request.project, current)
    return SigningRequest(request.project, md, request.holders)


def changes(
    current: Metadata[Targets],
    proposed: Metadata[Targets],
    now: datetime | None = None,
    *,
    claim: bool = False,
) -> tuple[list[TargetFile], list[str]]:
    """What ``proposed`` adds to ``current`` and drops from it (entries,
    paths), if it may follow it: the next version, neither expired nor
    living past the origin's limit, delegating nothing, every published
    entry it keeps unchanged, and a release unless ``claim``."""
    signed, base = proposed.signed, current.signed
    now = now or datetime.now(UTC)
    if not claim and CLAIM_FIELD in signed.unrecognized_fields:
        raise PublishError("the request is a claim's metadata, not a release: nothing is signed")
    _lifetime(signed.expires, now)
    if signed.version != base.version + 1:
        raise PublishError(
            f"the request is version {signed.version} and the published version is "
            f"{base.version}: it is stale (or the origin is behind); sign a new one"
        )
    if signed.delegations is not None:
        raise PublishError("the request delegates to other keys: not supported")
    for path, entry in base.targets.items():
        known = signed.targets.get(path)
        if known is not None and known != entry:
            raise PublishError(f"the request changes {path}, published already: refused")
    added = [t for path, t in signed.targets.items() if path not in base.targets]
    dropped = [path for path in base.targets if path not in signed.targets]
    return added, dropped


def check_files(entries: Iterable[TargetFile], files: Iterable[Path], project: str) -> None:
    """Refuse unless ``files`` are exactly the artifacts ``entries`` describe,
    each entry computed again from its file, at the entry's chunk size."""
    listed = {t.path: t for t in entries}
    given = {f"{normalize_project(project)}/{check_filename(f.name)}": f for f in files}
    if set(listed) != set(given):
        missing = sorted(set(listed) - set(given))
        extra = sorted(set(given) - set(listed))
        raise PublishError(
            "the files given are not those the request lists"
            + (f"; not given: {', '.join(missing)}" if missing else "")
            + (f"; not listed: {', '.join(extra)}" if extra else "")
        )
    for path, entry in listed.items():
        custom = entry.unrecognized_fields.get("custom")
        size = custom.get("chunk_size") if isinstance(custom, dict) else None
        file = given[path]
        if target_at(file, project, size, f"the request's entry for {path}") != entry:
            raise PublishError(
                f"{file} is not the artifact the request lists as {path} (sha256 "
                f"{entry.hashes.get('sha256')}): nothing is signed"
            )


def target_at(path: Path, project: str, chunk_size: object, whose: str) -> TargetFile:
    """:func:`target_of` at a chunk size that ``whose`` named (the origin's
    answer, a request's entry), once it is one a manifest of this file can
    have: a hostile 1 would have a digest computed for every byte."""
    size = chunk_size
    if (
        type(size) is not int
        or not 0 < size <= MAX_CHUNK_SIZE
        or -(-_file_size(path) // size) > MAX_MANIFEST_CHUNKS
    ):
        raise PublishError(f"{whose} names a chunk size of {size!r}: none a manifest holds")
    return target_of(path, project, size)


def _lifetime(expires: datetime, now: datetime) -> None:
    """Refuse a request that has expired, or that would live past what the origin accepts."""
    if expires <= now:
        raise PublishError(f"the request expired on {expires:%Y-%m-%d %H:%M} UTC")
    if expires > now + MAX_LIFETIME:
        raise PublishError(
            f"the request expires on {expires:%Y-%m-%d}, past what the origin accepts"
        )


def _names(md: Metadata[Targets], project: str, what: str) -> None:
    """Refuse ``md`` unless it is ``project``'s: a release naming it, or its
    claim, and every path its own (a version of another project the same key
    signs must not pass for this one's)."""
    fields = md.signed.unrecognized_fields
    claim = fields.get(CLAIM_FIELD)
    named = claim.get("project") if isinstance(claim, dict) else fields.get(PROJECT_FIELD)
    if named != project or any(not p.startswith(f"{project}/") for p in md.signed.targets):
        raise PublishError(
            f"{what} (v{md.signed.version}) is not {project}'s (it names "
            f"{str(named)[:100]}): nothing is signed"
        )


def _material(key: Key) -> bytes:
    try:
        return key_material(key)
    except OriginError as exc:
        raise UsageError(str(exc)) from None


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def _get(client: httpx.Client, url: str) -> bytes:
    try:
        response = client.get(url, timeout=_TIMEOUT)
    except httpx.HTTPError as exc:
        raise PublishError(f"cannot reach {url}: {exc}") from None
    if response.status_code != 200:
        raise PublishError(f"{url}: {response.status_code} {status_phrase(response)}")
    return response.content


def _published_meta(client: httpx.Client, origin: str) -> dict[str, Any]:
    """The origin's current snapshot's ``meta``: each role's version. Not verified."""
    base = f"{origin.rstrip('/')}/metadata/"
    try:
        timestamp = loads(_get(client, base + "timestamp.json"))
        snapshot_version = int(timestamp["signed"]["meta"]["snapshot.json"]["version"])
        snapshot = loads(_get(client, f"{base}{snapshot_version}.snapshot.json"))
        meta = snapshot["signed"]["meta"]
        if not isinstance(meta, dict):
            raise TypeError("its snapshot's meta is not an object")
        return meta
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PublishError(f"{origin} serves no TUF metadata that reads: {exc}") from None


def claimed_version(client: httpx.Client, origin: str, project: str) -> int | None:
    """The version of the project's own metadata in the origin's current
    snapshot; None if the project is not claimed. Not verified here."""
    meta = _published_meta(client, origin).get(f"{owned_role(project)}.json")
    try:
        return None if meta is None else int(meta["version"])
    except (ValueError, KeyError, TypeError) as exc:
        raise PublishError(f"{origin} serves no TUF metadata that reads: {exc}") from None


def published_holders(client: httpx.Client, origin: str, project: str) -> Holders:
    """The project's keys and how many must sign, as the origin's current
    targets metadata delegates them. Not verified here: they only say whether
    a version has the signatures to be sent now or goes to the other holders
    first; the origin checks the signatures, and clients check them again."""
    base = f"{origin.rstrip('/')}/metadata/"
    try:
        version = int(_published_meta(client, origin)["targets.json"]["version"])
        delegations = loads(_get(client, f"{base}{version}.targets.json"))["signed"]["delegations"]
        for role in delegations["roles"]:
            if role["name"] == owned_role(project):
                keys = [(k, delegations["keys"][k]) for k in role["keyids"]]
                return Holders.checked(keys, role["threshold"])
    except Exception as exc:  # whatever the origin serves: said, not a traceback
        raise PublishError(f"{origin} serves no TUF metadata that reads: {exc}") from None
    raise PublishError(f"{project} is not claimed on {origin}")


def published_version(client: httpx.Client, origin: str, project: str) -> Metadata[Targets]:
    """The project's metadata the origin publishes now (its role's version in
    the origin's current snapshot). Not verified here: see :func:`next_version`."""
    version = claimed_version(client, origin, project)
    if version is None:
        raise PublishError(
            f"{project} is not claimed on {origin}: its maintainers claim it for your key "
            "('tufmesh developer claim' makes the request)"
        )
    role = owned_role(project)
    url = f"{origin.rstrip('/')}/metadata/{version}.{quote(role, '')}.json"
    try:
        md: Metadata[Any] = Metadata.from_bytes(_get(client, url))
    except DeserializationError as exc:
        raise PublishError(f"{url} is not TUF metadata: {exc}") from None
    if not isinstance(md.signed, Targets):
        raise PublishError(f"{origin} serves {md.signed.type} metadata as {role}")
    return md


def next_version(
    current: Metadata[Targets],
    signers: list[Signer],
    *,
    add: Iterable[TargetFile] = (),
    drop: Iterable[str] = (),
    days: int = EXPIRY_DAYS,
    project: str,
) -> bytes:
    """The version after ``current``, signed by ``signers``: ``add`` listed,
    ``drop`` (paths) no longer, a fresh expiry, naming ``project``.
    The caller checks ``current`` first (:meth:`DeveloperKey.check`, as
    :meth:`DeveloperKey.sign_next` does): the origin could otherwise have
    its developers endorse what it forged."""
    targets = dict(current.signed.targets)
    for target in add:
        known = targets.get(target.path)
        if known is not None and known != target:
            raise PublishError(
                f"{target.path} is published with other bytes (sha256 "
                f"{known.hashes.get('sha256')}); artifacts are immutable"
            )
        targets[target.path] = target
    for path in drop:
        if targets.pop(path, None) is None:
            raise UsageError(f"{path} is not in the project's metadata")
    named = {PROJECT_FIELD: normalize_project(project)}
    signed = Targets(
        version=current.signed.version + 1,
        expires=_expiry(days),
        targets=targets,
        unrecognized_fields=named,
    )
    return _signed(Metadata(signed), signers)


def send_version(
    client: httpx.Client, origin: str, project: str, data: bytes, token: str
) -> dict[str, Any]:
    """Send a signed version of the project's metadata to the origin; its answer."""
    url = f"{origin.rstrip('/')}/api/v1/projects/{quote(project)}/metadata"
    try:
        response = client.post(
            url,
            content=data,
            headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
            timeout=httpx.Timeout(connect=10.0, read=300.0, write=60.0, pool=10.0),
        )
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # nothing was sent
        raise PublishError(f"cannot reach {origin}: {exc}") from None
    except httpx.HTTPError as exc:
        raise UnansweredError(
            f"{owned_role(project)}: sent, but {origin} gave no answer ({exc}): it may be "
            "published; the same command again says whether it is"
        ) from None
    try:
        body = loads(response.content)
    except ValueError:
        body = {}
    if response.status_code != 200 or not isinstance(body, dict) or "version" not in body:
        if response.status_code == 400:  # (as the next version: perhaps sent before)
            done = _published_already(client, origin, project, data)
            if done is not None:
                return done  # sent before (its answer lost, or the command run again)
        if response.headers.get(OUTCOME_HEADER) == "unknown":  # (its committer stopped)
            raise UnansweredError(
                f"{owned_role(project)}: sent, but {refusal(response)}: it may be published; "
                "the same command again says whether it is"
            )
        raise PublishError(
            f"{owned_role(project)}: refused by the origin ({response.status_code}): "
            f"{refusal(response)}"
        )
    return body


def _published_already(
    client: httpx.Client, origin: str, project: str, data: bytes
) -> dict[str, Any] | None:
    """The answer for ``data`` if the origin publishes exactly it now (its
    signed part: the signatures may differ), else None."""
    try:
        sent = Metadata.from_bytes(data).signed.to_dict()
        published = published_version(client, origin, project).signed.to_dict()
    except (PublishError, DeserializationError, ValueError, KeyError, TypeError):
        return None
    if published != sent:
        return None
    return {"role": owned_role(project), "version": sent["version"], "already": True}


def release(
    client: httpx.Client,
    origin: str,
    project: str,
    key: DeveloperKey,
    token: str,
    *,
    add: Iterable[TargetFile] = (),
    drop: Iterable[str] = (),
) -> dict[str, Any]:
    """Sign the project's next version (``add`` listed, ``drop`` not), built
    on the one the origin publishes, and send it (remembered once accepted);
    or, if the project needs more signatures than this key's, the answer's
    ``request`` is the :class:`SigningRequest` for its other holders, built
    on ``base``: once it is handed on, :meth:`DeveloperKey.signs_away`."""
    current = published_version(client, origin, project)
    holders = published_holders(client, origin, project)
    if key.signer.public_key.keyid not in holders.keys:
        raise PublishError(
            f"key {key.signer.public_key.keyid[:12]} is not one of {project}'s keys now (the "
            "project was claimed again for others'): nothing is signed"
        )
    data = key.sign_next(project, current, add=add, drop=drop)
    if holders.threshold > 1:  # handed on as a request: the caller notes its drops once written
        request = release_request(project, data)
        return {"request": request, "needed": holders.threshold, "base": current}
    try:
        answer = publish_version(client, origin, project, data, token, key)
    except UnansweredError:  # it may be published: what it drops is noted all the same
        key.signs_away(project, current, Metadata[Targets].from_bytes(data))
        raise
    key.signs_away(project, current, Metadata[Targets].from_bytes(data))  # (not if refused)
    return answer


def publish_version(
    client: httpx.Client,
    origin: str,
    project: str,
    data: bytes,
    token: str,
    key: DeveloperKey | None = None,
) -> dict[str, Any]:
    """Send ``data``, the project's signed next version, to the origin; its
    answer. ``key``, if given, remembers it once accepted."""
    answer = send_version(client, origin, project, data, token)
    try:
        if key is not None:
            key.remember(project, data)
    except UsageError as exc:  # published all the same: said, not failed
        answer["warning"] = f"{exc} (the version is published; the next one will not know it)"
    return answer
