"""Projects that sign their own metadata (PEP 480; docs/adr/0022): the rules.

A claimed project has a role of its own, ``project-<name>``, delegated by the
offline ``targets`` role before the hash bins, for the paths ``<name>/*``
only, terminating (no bin is consulted for its paths, so the origin's online
keys cannot add to it) and signed by keys its developers hold. The origin
publishes the bytes they send if they pass :func:`parse_owned`, after the
repository's own checks (the blobs stored, immutability, quota); it never
signs them.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Final

from securesystemslib.signer import Key, SSlibKey
from securesystemslib.signer._utils import compute_default_keyid
from tuf.api.metadata import DelegatedRole, Delegations, Metadata, Targets

from tufmesh.errors import InvalidNameError, OwnedMetadataError
from tufmesh.origin._names import target_path

__all__ = [
    "CLAIM_FIELD",
    "MAX_LIFETIME",
    "PREFIX",
    "PROJECT_FIELD",
    "claim_statement",
    "key_material",
    "owned_delegation",
    "owned_pattern",
    "owned_project",
    "owned_role",
    "parse_owned",
]

#: ``project-<name>``: no name of the origin's own roles (``bins``, ``bin-…``)
#: can be mistaken for one.
PREFIX: Final = "project-"
#: The field of a claim's signed metadata that names the project, its keys
#: and threshold (docs/adr/0024): each holder's signature covers them, and a
#: claim's version is never taken as a release.
CLAIM_FIELD: Final = "x-tufmesh-claim"
#: The field of a release's signed metadata that names its project: keys two
#: projects share cannot have one's version taken as the other's (an empty
#: one names no path that would tell).
PROJECT_FIELD: Final = "x-tufmesh-project"
#: The longest a project's version may live: a year and a month. An older
#: version signed to live for ever could be served (withheld updates) for ever.
MAX_LIFETIME: Final = timedelta(days=396)


def owned_role(project: str) -> str:
    """The role that signs the artifacts of claimed ``project`` (normal form)."""
    return PREFIX + project


def owned_project(role: str) -> str | None:
    """The project whose own role ``role`` is, or None for the origin's roles."""
    return role.removeprefix(PREFIX) if role.startswith(PREFIX) else None


def claim_statement(project: str, keys: list[Key] | list[str], threshold: int) -> dict[str, Any]:
    """What a claim's signed metadata says of itself (:data:`CLAIM_FIELD`)."""
    ids = sorted(k if isinstance(k, str) else k.keyid for k in keys)
    return {"project": project, "keys": ids, "threshold": threshold}


def key_material(key: Key) -> bytes:
    """The public key itself, however it is written (hex in either case, PEM
    laid out otherwise, another signing scheme): two names of one key would
    count it twice toward a threshold."""
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_pem_public_key,
    )

    public = key.keyval.get("public")
    try:
        if not isinstance(public, str):
            raise TypeError("no public value")
        if key.keytype == "ed25519":
            return b"ed25519:" + bytes.fromhex(public)
        loaded = load_pem_public_key(public.encode())
        return loaded.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    except Exception:  # cryptography raises several kinds for what it cannot read
        raise OwnedMetadataError(
            f"key {key.keyid[:16]}... is not a public key that reads"
        ) from None


def owned_delegation(project: str, keys: list[Key], threshold: int) -> DelegatedRole:
    """The delegation ``targets`` makes to claimed ``project``."""
    for key in keys:
        # A key id is the hash of its key: one named otherwise (a request
        # naming the bins key's id beside another key) would replace that
        # key wherever targets names it.
        if not isinstance(key, SSlibKey) or key.keyid != compute_default_keyid(
            key.keytype, key.scheme, key.keyval
        ):
            raise OwnedMetadataError(
                f"{project}: key {key.keyid[:16]}... is not named by its own hash"
            )
    seen = {key_material(key) for key in keys}
    if len(seen) != len(keys):
        raise OwnedMetadataError(f"{project}: a key is given twice; each counts once")
    if not 1 <= threshold <= len(keys):
        raise OwnedMetadataError(
            f"{project}: a threshold of {threshold} with {len(keys)} key(s): it must be 1 .. "
            f"{len(keys)}"
        )
    return DelegatedRole(
        name=owned_role(project),
        keyids=[key.keyid for key in keys],
        threshold=threshold,
        terminating=True,
        paths=[owned_pattern(project)],
    )


def owned_pattern(project: str) -> str:
    """The paths of claimed ``project`` (normal form) in any case:
    ``demo-pkg/*`` is ``[dD][eE][mM][oO]-[pP][kK][gG]/*``. A stock TUF client
    asked for ``Demo-Pkg/f`` stops at this terminating delegation, instead of
    going on to the hash bins, where the origin's online keys could sign that
    path (the origin itself publishes normal paths only). Separators are not
    folded: no character class holding ``-`` reads the same in Python's
    fnmatch and in Go's filepath.Match (go-tuf), which refuses a class that
    starts with one, and so would skip the delegation altogether. A client
    asks for the normal name's separators (``demo-pkg``, not ``demo_pkg``)."""
    return "".join(f"[{c}{c.upper()}]" if c.isalpha() else c for c in project) + "/*"


def parse_owned(
    project: str,
    data: bytes,
    *,
    keys: dict[str, Key],
    delegation: DelegatedRole,
    version: int,
    now: datetime,
    limit: int,
    stale: str = "sign it anew from the published version",
    claim: dict[str, Any] | None = None,
) -> Metadata[Targets]:
    """The project's signed metadata in ``data``, if the origin may publish it:
    at most ``limit`` bytes (what clients read of a role), targets metadata
    signed by a threshold of the delegation's ``keys``, of ``version``, not
    expired nor living past :data:`MAX_LIFETIME`, without delegations of its
    own, naming only well-formed paths of ``project``; a claim's version
    saying ``claim`` of itself (:func:`claim_statement`), a release's saying
    nothing of the kind. Otherwise :class:`OwnedMetadataError`, saying why."""
    role = owned_role(project)
    if len(data) > limit:
        raise OwnedMetadataError(
            f"{role} metadata of {len(data):,} bytes is over the {limit:,} clients read"
        )
    try:
        md: Metadata[Any] = Metadata.from_bytes(data)
    except Exception as exc:  # DeserializationError, and python-tuf's own checks
        raise OwnedMetadataError(f"not TUF metadata: {exc}") from None
    if not isinstance(md.signed, Targets):
        raise OwnedMetadataError(f"{md.signed.type} metadata, not targets metadata for {role}")
    delegator = Targets(delegations=Delegations(keys=keys, roles={role: delegation}))
    try:
        delegator.verify_delegate(role, md.signed_bytes, md.signatures)
    except Exception:  # UnsignedMetadataError
        raise OwnedMetadataError(
            f"not signed by {delegation.threshold} of {project}'s keys "
            f"({', '.join(k[:12] for k in delegation.keyids)})"
        ) from None
    signed: Targets = md.signed
    if type(signed.version) is not int or signed.version != version:  # (True == 1)
        raise OwnedMetadataError(
            f"{role} version {signed.version}: the next one is {version} ({stale})"
        )
    if signed.expires <= now:
        raise OwnedMetadataError(f"{role} expired on {signed.expires:%Y-%m-%d %H:%M} UTC")
    if signed.expires > now + MAX_LIFETIME:
        raise OwnedMetadataError(
            f"{role} expires on {signed.expires:%Y-%m-%d}: more than {MAX_LIFETIME.days} days "
            "from now (an old version must not be servable for ever)"
        )
    fields = signed.unrecognized_fields
    said = fields.get(CLAIM_FIELD)
    if claim is not None and said != claim:
        raise OwnedMetadataError(
            f"the claim's signed metadata does not name its project, keys and threshold as "
            f"the request does (it says {str(said)[:200]}): the developers make it anew "
            "('tufmesh developer claim')"
        )
    if claim is None and CLAIM_FIELD in fields:
        raise OwnedMetadataError(
            f"a claim's {role} metadata is not a release: the maintainers carry a claim out "
            "('tufmesh origin project claim')"
        )
    if claim is None and fields.get(PROJECT_FIELD) != project:
        raise OwnedMetadataError(
            f"{role} metadata names another project than {project} "
            f"({PROJECT_FIELD}: {str(fields.get(PROJECT_FIELD))[:100]})"
        )
    if signed.delegations is not None:
        raise OwnedMetadataError(f"{role} delegates further: not supported")
    for path in signed.targets:
        name, _, filename = path.partition("/")
        try:
            if name != project or target_path(name, filename) != path:
                raise InvalidNameError("not a normalised path of the project")
        except InvalidNameError as exc:
            raise OwnedMetadataError(f"{role} names {path[:200]!r}: {exc}") from None
    return md
