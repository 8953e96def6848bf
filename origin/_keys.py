"""Signing keys: every key is a securesystemslib signer URI.

A file key (``file2:keys/root-1.pem``), a cloud KMS key (``gcpkms:...``,
``awskms:...``) and an HSM (``hsm:``) are one code path. Relative ``file2:``
paths are resolved against the repository directory, so a repository can be
moved as a whole.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final
from urllib.parse import urlparse

from cryptography.exceptions import UnsupportedAlgorithm
from securesystemslib.signer import CryptoSigner, Key, Signer, SSlibKey

from tufmesh._durable import fsync_dir
from tufmesh.errors import OriginError

__all__ = [
    "generate_file_key",
    "load_signer",
    "pair_public_keys",
    "public_key_from_pem",
    "public_key_from_uri",
    "signer_kind",
]


def generate_file_key(repo: Path, name: str) -> tuple[str, Key]:
    """Create an Ed25519 key in ``REPO/keys/NAME.pem``; return its URI and public key."""
    signer = CryptoSigner.generate_ed25519()
    keys = repo / "keys"
    if not keys.is_dir():
        keys.mkdir(mode=0o700, exist_ok=True)
        fsync_dir(repo)
    path = keys / f"{name}.pem"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(signer.private_bytes)
        handle.flush()
        os.fsync(handle.fileno())
    # Its name too, before metadata naming its key is written: a power cut
    # must not keep a root naming a key whose file is gone.
    fsync_dir(keys)
    return f"file2:keys/{name}.pem", signer.public_key


def _resolve(repo: Path, uri: str) -> str:
    parsed = urlparse(uri)
    if parsed.scheme == "file2" and not os.path.isabs(parsed.path):
        return f"file2:{repo / parsed.path}"
    return uri


def key_file(repo: Path, uri: str) -> Path | None:
    """The file a ``file2:`` signer URI names (relative ones under ``repo``);
    None for a key that lives elsewhere (a KMS, an HSM)."""
    parsed = urlparse(_resolve(repo, uri))
    return Path(parsed.path) if parsed.scheme == "file2" else None


def public_key_from_uri(repo: Path, uri: str) -> Key:
    """Derive the public key of a ``file2:`` private key (other schemes need it given)."""
    resolved = _resolve(repo, uri)
    parsed = urlparse(resolved)
    if parsed.scheme != "file2":
        raise OriginError(f"give the public key of {uri} (only file2: keys can be read here)")
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        private = load_pem_private_key(Path(parsed.path).read_bytes(), None)
        return SSlibKey.from_crypto(private.public_key())
    except OSError as exc:
        where = "" if resolved == uri else f" ({parsed.path}: a relative path is the repository's)"
        raise OriginError(f"cannot read private key {uri}{where}: {exc.strerror or exc}") from None
    except TypeError:  # a password was needed
        raise OriginError(f"cannot read private key {uri}: it is encrypted") from None
    except (ValueError, UnsupportedAlgorithm):  # (its text links to cryptography's FAQ)
        raise OriginError(
            f"cannot read private key {uri}: not a PEM private key "
            "(a file that starts '-----BEGIN PRIVATE KEY-----')"
        ) from None


def public_key_from_pem(path: Path) -> Key:
    """The public key in PEM file ``path`` (of a KMS or HSM key, given at init)."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise OriginError(f"cannot read public key {path}: {exc.strerror}") from None
    try:
        return SSlibKey.from_crypto(load_pem_public_key(data))
    except (ValueError, UnsupportedAlgorithm):  # (its text links to cryptography's FAQ)
        raise OriginError(
            f"cannot read public key {path}: not a PEM public key "
            "(a file that starts '-----BEGIN PUBLIC KEY-----')"
        ) from None


def pair_public_keys(repo: Path, uris: Sequence[str], pems: Sequence[Path]) -> list[Key]:
    """The public key of each signer in ``uris``: a ``file2:`` key's read from
    its file, the others' from ``pems``, in order. A PEM that is a ``file2:``
    key's own public key is taken as a check of it, not paired with the next
    signer (pairing by position alone paired it with the wrong one)."""
    keys = [public_key_from_uri(repo, uri) if key_file(repo, uri) else None for uri in uris]
    own = {key.keyid for key in keys if key is not None}
    for pem in pems:
        key = public_key_from_pem(pem)
        if key.keyid in own:
            continue
        slot = next((i for i, held in enumerate(keys) if held is None), None)
        if slot is None:
            needed = "no other signer needs one" if own else "no signer needs one"
            raise OriginError(
                f"public key {pem} is not that of a file2: key given, and {needed} "
                "(a file2: key's own public key is read from its file)"
            )
        keys[slot] = key
    for uri, held in zip(uris, keys, strict=True):
        if held is None:
            raise OriginError(f"give the public key of {uri} (only file2: keys can be read here)")
    return [key for key in keys if key is not None]


def load_signer(repo: Path, uri: str, public_key: Key) -> Signer:
    """Load the signer behind ``uri`` for ``public_key``.

    A signer that needs a secret (an ``hsm:`` key's PIN) asks for it on the
    terminal when it signs; with no terminal it fails, never reading stdin
    (the committer's stdin is its pipe). The KMS schemes need their
    securesystemslib extras installed (``securesystemslib[gcpkms]``, ...).
    """

    def ask(secret: str) -> str:
        try:
            os.close(os.open("/dev/tty", os.O_RDWR))
        except OSError:
            raise OriginError(
                f"{uri} needs its {secret}, and there is no terminal to ask on"
            ) from None
        return getpass.getpass(f"{secret} for {uri}: ")

    path = key_file(repo, uri)
    if path is not None and not path.is_file():
        # (securesystemslib's own message for this is hard to read)
        raise OriginError(f"cannot load signer {uri}: no key file at {path}")
    try:
        return Signer.from_priv_key_uri(_resolve(repo, uri), public_key, ask)
    except Exception as exc:
        raise OriginError(f"cannot load signer {uri}: {exc}") from None


#: A file key that is on this host but is no private key (damaged, or another file).
UNREADABLE: Final = "file, UNREADABLE"
#: A file key whose file is not on this host (an offline key, as it should be).
NOT_HERE: Final = "file, not here"


def signer_kind(uri: str, repo: Path | None = None) -> str:
    """A short description of where a key lives, from its URI scheme (with
    ``repo``: a file key whose file is not on this host says so)."""
    scheme = urlparse(uri).scheme
    if repo is not None and (path := key_file(repo, uri)) is not None:
        try:
            here = path.is_file()
        except OSError:  # a directory this user may not read
            here = False
        if not here:
            return NOT_HERE
        try:
            public_key_from_uri(repo, uri)
        except OriginError:
            return UNREADABLE
    return {
        "file2": "file",
        "gcpkms": "GCP KMS",
        "awskms": "AWS KMS",
        "azurekms": "Azure Key Vault",
        "hsm": "HSM",
        "hv": "HashiCorp Vault",
    }.get(scheme, scheme or "unknown")
