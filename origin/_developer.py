"""The developers' side of a claimed project (docs/adr/0022): their key, the
claim they hand to the maintainers, and each new version of the project's
metadata, signed here and sent to the origin.

Nothing here trusts the origin: every entry signed is computed from the
developer's own file, and a new version is built only on a published one that
the project's own key signed (so an origin serving a forged "current"
version cannot have it endorsed) and that is not older than the last version
this key had published (kept beside the key file: an origin serving an old
version, from before an artifact was dropped, cannot have it revived).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import httpx
from securesystemslib.signer import SIGNER_FOR_URI_SCHEME, CryptoSigner, Key, Signer
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from tufmesh._durable import write_atomic
from tufmesh._ui import data_home
from tufmesh.cas import DEFAULT_CHUNK_SIZE, ManifestBuilder, cid_from_sha256
from tufmesh.errors import OriginError, PublishError, UsageError
from tufmesh.origin._keys import load_signer, public_key_from_pem, public_key_from_uri
from tufmesh.origin._names import check_filename, normalize_project
from tufmesh.origin._owned import owned_role
from tufmesh.origin._repository import Artifact

__all__ = [
    "EXPIRY_DAYS",
    "DeveloperKey",
    "claim_request",
    "claimed_version",
    "generate_key",
    "load_key",
    "next_version",
    "published_version",
    "read_claim",
    "release",
    "send_version",
    "target_of",
]

#: A project's metadata lives a year unless its developers say otherwise:
#: each publication signs it anew, and a project that publishes nothing for a
#: year re-signs it (``tufmesh developer sign``).
EXPIRY_DAYS: Final = 365
_PIECE: Final = 1 << 20
_TIMEOUT: Final = httpx.Timeout(30.0)


def generate_key(path: Path) -> Key:
    """A new Ed25519 key in PEM file ``path`` (made anew, mode 0600, its
    directory too if missing, mode 0700); its public key."""
    signer = CryptoSigner.generate_ed25519()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"{path} exists already: a key is never overwritten") from None
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(signer.private_bytes)
        handle.flush()
        os.fsync(handle.fileno())
    return signer.public_key


@dataclass(frozen=True)
class DeveloperKey:
    """A developer's signing key, and what it last had published per project
    (``KEYFILE.versions.json``)."""

    signer: Signer
    memory: Path

    def _versions(self) -> dict[str, dict[str, Any]]:
        try:
            versions = json.loads(self.memory.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read {self.memory}: {exc}") from None
        if not isinstance(versions, dict) or not all(
            isinstance(v, dict)
            and type(v.get("version")) is int
            and isinstance(v.get("sha256"), str)
            for v in versions.values()
        ):
            raise UsageError(
                f"{self.memory} is damaged: restore it, or remove it to start afresh (it "
                "only keeps an origin from rolling a project back under this key)"
            )
        return versions

    def sign_next(
        self,
        project: str,
        current: Metadata[Targets],
        *,
        add: Iterable[TargetFile] = (),
        drop: Iterable[str] = (),
        days: int = EXPIRY_DAYS,
    ) -> bytes:
        """:func:`next_version`, after :meth:`check`."""
        self.check(project, current)
        return next_version(current, [self.signer], add=add, drop=drop, days=days)

    def check(self, project: str, current: Metadata[Targets]) -> None:
        """Refuse ``current`` unless this key signed it, and it is not older
        than the last version this key had published for ``project``."""
        _signed_by(current, [self.signer])
        last = self._versions().get(project)
        if last is not None:
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
        """Note ``data`` (signed metadata) as the project's newest published version."""
        md: Metadata[Any] = Metadata.from_bytes(data)
        versions = self._versions()
        versions[project] = {
            "version": md.signed.version,
            "sha256": hashlib.sha256(md.signed_bytes).hexdigest(),
        }
        try:
            self.memory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomic(self.memory, (json.dumps(versions, indent=1) + "\n").encode())
        except OSError as exc:
            raise UsageError(f"cannot write {self.memory}: {exc.strerror}") from None


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


def _signed(md: Metadata[Targets], signers: Iterable[Signer]) -> bytes:
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


def claim_request(
    project: str,
    signer: Signer,
    targets: list[TargetFile],
    days: int = EXPIRY_DAYS,
    *,
    version: int = 1,
) -> dict[str, Any]:
    """What the developers of ``project`` hand its maintainers to claim it: their
    public key and the first version of the project's metadata under it
    (``version``: 1, or the next of a project claimed already), signed,
    listing every artifact the project has published (their own files'
    entries: the origin refuses a claim that leaves one out or differs)."""
    project = normalize_project(project)
    md = Metadata(Targets(version=version, expires=_expiry(days)))
    for target in targets:
        md.signed.targets[target.path] = target
    signed = json.loads(_signed(md, [signer]))
    return {
        "project": project,
        "keys": [{"keyid": signer.public_key.keyid, **signer.public_key.to_dict()}],
        "threshold": 1,
        "metadata": signed,
    }


def read_claim(path: Path) -> tuple[str, list[Key], int, bytes]:
    """Project, keys, threshold and signed metadata of a claim request file."""
    try:
        request = json.loads(path.read_bytes())
        project = normalize_project(request["project"])
        keys = [Key.from_dict(k.pop("keyid"), k) for k in request["keys"]]
        threshold = int(request["threshold"])
        data = json.dumps(request["metadata"]).encode()
        if not isinstance(Metadata.from_bytes(data).signed, Targets):
            raise ValueError("its metadata is not targets metadata")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError, AttributeError, DeserializationError) as exc:
        raise UsageError(
            f"{path} is not a claim request ('tufmesh developer claim'): {exc}"
        ) from None
    return project, keys, threshold, data


def _get(client: httpx.Client, url: str) -> bytes:
    try:
        response = client.get(url, timeout=_TIMEOUT)
    except httpx.HTTPError as exc:
        raise PublishError(f"cannot reach {url}: {exc}") from None
    if response.status_code != 200:
        raise PublishError(f"{url}: {response.status_code} {response.reason_phrase}")
    return response.content


def claimed_version(client: httpx.Client, origin: str, project: str) -> int | None:
    """The version of the project's own metadata in the origin's current
    snapshot; None if the project is not claimed. Not verified here."""
    base = f"{origin.rstrip('/')}/metadata/"
    try:
        timestamp = json.loads(_get(client, base + "timestamp.json"))
        snapshot_version = int(timestamp["signed"]["meta"]["snapshot.json"]["version"])
        snapshot = json.loads(_get(client, f"{base}{snapshot_version}.snapshot.json"))
        meta = snapshot["signed"]["meta"].get(f"{owned_role(project)}.json")
        return None if meta is None else int(meta["version"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PublishError(f"{origin} serves no TUF metadata that reads: {exc}") from None


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
) -> bytes:
    """The version after ``current``, signed by ``signers``: ``add`` listed,
    ``drop`` (paths) no longer, a fresh expiry. ``current`` must carry the
    signatures of ``signers`` (the project's own keys), or nothing is signed:
    the origin could otherwise have its developers endorse what it forged."""
    _signed_by(current, signers)
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
    signed = Targets(version=current.signed.version + 1, expires=_expiry(days), targets=targets)
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
    except httpx.HTTPError as exc:
        raise PublishError(f"cannot reach {origin}: {exc}") from None
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code != 200 or not isinstance(body, dict) or "version" not in body:
        reason = body.get("error") if isinstance(body, dict) else None
        raise PublishError(
            f"{owned_role(project)}: refused by the origin ({response.status_code}): "
            f"{reason or response.reason_phrase}"
        )
    return body


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
    """Sign and send the project's next version (``add`` listed, ``drop`` not),
    built on the one the origin publishes, and remember it once accepted."""
    current = published_version(client, origin, project)
    data = key.sign_next(project, current, add=add, drop=drop)
    answer = send_version(client, origin, project, data, token)
    try:
        key.remember(project, data)
    except UsageError as exc:  # published all the same: said, not failed
        answer["warning"] = f"{exc} (the version is published; the next one will not know it)"
    return answer


def _signed_by(current: Metadata[Targets], signers: list[Signer]) -> None:
    """Refuse to build on ``current`` unless each of ``signers`` signed it: the
    origin could otherwise have its developers endorse what it forged."""
    for signer in signers:
        signature = current.signatures.get(signer.public_key.keyid)
        try:
            if signature is None:
                raise ValueError("unsigned")
            signer.public_key.verify_signature(signature, current.signed_bytes)
        except Exception:
            raise PublishError(
                f"the published version {current.signed.version} is not signed by key "
                f"{signer.public_key.keyid[:12]}: is it the project's key (was the project "
                "claimed again for a new one)? If it is, the origin may be serving a forged "
                "version (ask its maintainers); nothing is signed"
            ) from None
