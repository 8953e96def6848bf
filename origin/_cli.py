"""``tufmesh origin ...`` for maintainers and ``tufmesh publish`` for developers."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click
import httpx

from tufmesh._ui import (
    PORT,
    SIZE,
    Group,
    format_duration,
    format_size,
    p2p_line,
    progress_bar,
    run_service,
)
from tufmesh.cas import MAX_CHUNK_SIZE
from tufmesh.cas._manifest import MAX_MANIFEST_CHUNKS
from tufmesh.errors import OriginError, PublishError, TufmeshError, UsageError
from tufmesh.origin._config import OFFLINE_ROLES, ROLES, OriginConfig
from tufmesh.origin._developer import DeveloperKey
from tufmesh.origin._names import check_filename, normalize_project
from tufmesh.origin._projects import ProjectRegistry
from tufmesh.origin._publish import upload
from tufmesh.origin._repository import OriginRepository
from tufmesh.origin._server import serve as serve_repository

__all__ = ["developer", "origin", "publish"]

T = TypeVar("T")

public_key_option = click.option(
    "--public-key",
    envvar="TUFMESH_PUBLIC_KEY",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The public key (PEM) of a --key that is a KMS or HSM signer URI "
    "(gcpkms:..., hsm:...) [env TUFMESH_PUBLIC_KEY].",
)

repo_option = click.option(
    "--dir",
    "repo_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The repository directory.",
)


def _pairs(values: tuple[str, ...], what: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        role, sep, rest = value.partition("=")
        if not sep or not rest:
            raise UsageError(f"{what} takes ROLE=VALUE, not {value!r}")
        pairs.append((role, rest))
    return pairs


def _human_delta(seconds: float) -> str:
    return ("in " if seconds >= 0 else "EXPIRED ") + format_duration(abs(seconds))


@click.group(cls=Group)
def origin() -> None:
    """The repository service: create, serve, inspect; manage projects."""


@origin.command()
@repo_option
@click.option("--bins", type=int, default=256, show_default=True, help="Hash bins (a power of 2).")
@click.option(
    "--root-threshold",
    type=int,
    default=1,
    show_default=True,
    help="Root keys that must sign a new root (production: 2 or more, held apart).",
)
@click.option(
    "--expiry",
    multiple=True,
    metavar="ROLE=DAYS",
    help=f"Lifetime of a role's metadata; roles: {', '.join(ROLES)}.",
)
@click.option(
    "--signer",
    multiple=True,
    metavar="ROLE=URI",
    help="Use this securesystemslib signer URI for ROLE instead of a new file key (repeatable).",
)
@click.option(
    "--public-key",
    multiple=True,
    metavar="ROLE=PEM",
    help="Public key (PEM file) of the matching --signer; needed for non-file signers.",
)
@click.option(
    "--max-upload", type=SIZE, default="1GiB", show_default=True, help="Largest upload accepted."
)
@click.option(
    "--chunk-size",
    type=SIZE,
    default="1MiB",
    show_default=True,
    help="Chunk size of new artifacts' manifests (docs/adr/0003).",
)
@click.option(
    "--project-quota",
    type=SIZE,
    default="10GiB",
    show_default=True,
    help="The most bytes of artifacts one project may publish.",
)
def init(
    repo_dir: Path,
    bins: int,
    root_threshold: int,
    expiry: tuple[str, ...],
    signer: tuple[str, ...],
    public_key: tuple[str, ...],
    max_upload: int,
    chunk_size: int,
    project_quota: int,
) -> None:
    """Create a new repository in an empty directory."""
    from securesystemslib.signer import Key

    from tufmesh.origin._keys import public_key_from_pem

    defaults = OriginConfig()
    days = dict(defaults.expiry_days)
    for role, value in _pairs(expiry, "--expiry"):
        if role not in days:
            raise UsageError(f"unknown role {role!r} in --expiry; roles: {', '.join(days)}")
        try:
            days[role] = float(value)
        except ValueError:
            raise UsageError(f"--expiry {role}={value}: not a number of days") from None
    keys: dict[str, list[tuple[str, Key | None]]] = {}
    for role, uri in _pairs(signer, "--signer"):
        if role not in ROLES:
            raise UsageError(f"unknown role {role!r} in --signer; roles: {', '.join(ROLES)}")
        keys.setdefault(role, []).append((uri, None))
    for role, pem in _pairs(public_key, "--public-key"):
        slots = [i for i, (_, key) in enumerate(keys.get(role, [])) if key is None]
        if not slots:
            raise UsageError(f"--public-key {role}=... has no --signer {role}=... to go with")
        try:
            key = public_key_from_pem(Path(pem))
        except OriginError as exc:
            raise UsageError(str(exc)) from None
        keys[role][slots[0]] = (keys[role][slots[0]][0], key)
    config = OriginConfig(
        bins=bins,
        expiry_days=days,
        max_upload_bytes=max_upload,
        chunk_size=chunk_size,
        project_quota=project_quota,
    )
    repo = OriginRepository.create(repo_dir, config, root_threshold=root_threshold, signers=keys)
    click.echo(f"created repository {repo_dir}")
    click.echo(f"  {bins} hash bins, consistent snapshots, root threshold {root_threshold}")
    first = repo.metadata_dir / "1.root.json"
    digest = hashlib.sha256(first.read_bytes()).hexdigest()
    click.echo(f"  trusted root: {first} (give this to clients)")
    click.echo(f"  its sha256: {digest} (publish it apart, for them to check)")
    generated = sorted((repo_dir / "keys").glob("*.pem")) if (repo_dir / "keys").exists() else []
    if generated:
        click.echo(
            f"  generated keys: {', '.join(p.name for p in generated)} in {repo_dir / 'keys'}"
        )
    offline = sorted(
        {p.stem.split("-")[0] for p in generated if p.stem.startswith(("root", "targets", "bins"))}
    )
    if root_threshold < 2 or offline:
        why = [f"{', '.join(offline)} keys are files here"] if offline else []
        why += [f"a root threshold of {root_threshold}"] if root_threshold < 2 else []
        click.secho(
            f"warning: this is a development repository ({'; '.join(why)}). In production, "
            "root, targets and bins keys stay offline (hardware keys, a key ceremony, see "
            "docs/maintainers.md) and root needs a threshold of at least 2.",
            fg="yellow",
            err=True,
        )


@origin.command()
@repo_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Where to listen, HTTP and libp2p (this machine only, by default).")  # fmt: skip
@click.option("--port", type=PORT, default=8080, show_default=True, help="0 picks a free port.")
@click.option(
    "--p2p-port", type=PORT, default=None, help="Join the peer-to-peer network on this port."
)
@click.option("--bootstrap", multiple=True, help="A peer's multiaddr to dial (repeatable).")
@click.option(
    "--max-upload-rate", type=SIZE, default=None, help="Cap on bytes served per second (0: none)."
)
def serve(
    repo_dir: Path,
    host: str,
    port: int,
    p2p_port: int | None,
    bootstrap: tuple[str, ...],
    max_upload_rate: int | None,
) -> None:
    """Serve the repository over HTTP (metadata, targets, blobs, uploads)."""
    from tufmesh.p2p import check_peer_address

    repo = OriginRepository(repo_dir)  # fail fast, as one line, on a bad directory
    _refuse_broken(repo)
    ProjectRegistry(repo_dir).names()  # a damaged projects.json: said now, not at each upload
    for warning in repo.offline_expiry()[0]:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    bootstrap = tuple(check_peer_address(b) for b in bootstrap)
    if bootstrap and p2p_port is None:
        raise UsageError("--bootstrap needs --p2p-port (without it there is no libp2p node)")
    run_service(
        lambda ready: serve_repository(
            repo_dir,
            host,
            port,
            on_ready=ready,
            p2p_port=p2p_port,
            p2p_bootstrap=list(bootstrap),
            max_upload_rate=max_upload_rate,
        ),
        banner=lambda url: f"serving {repo_dir} on {url}" + p2p_line(repo_dir, p2p_port),
        where=f"{host}:{port}",
    )


def _refuse_broken(repo: OriginRepository) -> None:
    """Refuse to serve offline roles that clients would refuse (the online ones
    the committer re-signs as it starts)."""
    offline = [r for r in repo.broken if r in OFFLINE_ROLES]
    if offline:
        raise OriginError(
            f"{', '.join(offline)} not signed by the keys now named for it (a ceremony "
            f"cut short?): run 'tufmesh origin sign --dir {repo.dir} {' '.join(offline)}'"
        )
    if repo.unremoved:
        raise OriginError(
            f"{', '.join(repo.unremoved)} recorded as removed but still published (a removal "
            f"cut short): run 'tufmesh origin remove --dir {repo.dir} "
            f"{' '.join(repo.unremoved)}' again"
        )


@origin.command()
@repo_option
def status(repo_dir: Path) -> None:
    """Roles, versions, keys, thresholds and expiries."""
    repo = OriginRepository(repo_dir)
    if repo.unremoved:
        click.secho(
            f"warning: {', '.join(repo.unremoved)} recorded as removed but still published: "
            "run 'origin remove' again",
            fg="yellow",
            err=True,
        )
    if repo.broken:
        click.secho(
            f"warning: {', '.join(repo.broken)} not signed by the keys now named for them: "
            "clients refuse them until they are signed again ('origin sign', or 'origin "
            "serve' for the online roles)",
            fg="yellow",
            err=True,
        )
    warnings, expired = repo.offline_expiry()
    for warning in warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    now = datetime.now(UTC)
    click.echo(f"repository {repo_dir}")
    rows = repo.status()
    width = max(34, *(len(row.role) for row in rows))
    click.echo(
        f"{'role':{width}} {'ver':>5} {'expires':25} {'':>12} {'thr':>3}  {'kind':8} keys (signers)"
    )
    from tufmesh.origin._keys import signer_kind

    for row in rows:
        left = _human_delta((row.expires - now).total_seconds())
        kinds = ",".join(sorted({signer_kind(uri, repo.dir) for uri in row.signers})) or "none here"
        mode = "online" if row.online else "offline"
        keyids = ", ".join(k[:12] for k in row.keyids)
        click.echo(
            f"{row.role:{width}} {row.version:>5} {row.expires.isoformat():25} {left:>12} "
            f"{row.threshold:>3}  {mode:8} {keyids} ({kinds})"
        )
    artifacts = repo.artifacts()
    total = sum(t.length for t in artifacts)
    click.echo(f"{len(artifacts)} artifacts, {format_size(total)}")
    owned = repo.owned()
    if owned:
        click.echo(f"{len(owned)} projects sign their own metadata (project-<name>):")
    for name, row in sorted(owned.items()):
        expires = row.expires
        left = _human_delta((expires - now).total_seconds())
        keyids = ", ".join(k[:12] for k in row.keyids)
        click.echo(
            f"  {name:{width - 2}} {row.version:>5} {expires.isoformat():25} {left:>12} "
            f"{row.threshold:>3}  {'own':8} {keyids} (the developers')"
        )
        if expires - now < timedelta(days=30):
            # Theirs to sign, not the maintainers': the other projects are served on.
            click.secho(
                f"warning: {name}'s own metadata {'expired' if expires <= now else 'expires'} "
                f"on {expires:%Y-%m-%d}: clients find none of its artifacts after that until "
                "its developers sign it again ('tufmesh developer sign')",
                fg="yellow",
                err=True,
            )
    stale = [row.role for row in rows if row.expires <= now]  # the online ones too
    if stale and not expired:
        click.secho(
            f"warning: {', '.join(stale)} expired: clients refuse them (is the origin serving? "
            "it re-signs them)",
            fg="yellow",
            err=True,
        )
    if expired or stale:
        sys.exit(1)  # for a monitoring check: the repository serves nothing a client takes


def _ceremony(repo_dir: Path) -> OriginRepository:
    """The repository, locked against an origin serving it (and a second ceremony)."""
    from tufmesh.origin._signer import _lock_repository

    OriginConfig.load(repo_dir)  # a clear error for a directory that is not one
    try:
        _lock_repository(repo_dir)  # held until this command exits
    except OriginError:
        raise OriginError(
            f"an origin is serving {repo_dir}: stop it first (it would go on signing "
            "with what it loaded), then start it again after the ceremony"
        ) from None
    repo = OriginRepository(repo_dir)  # loaded under the lock: nobody commits meanwhile
    repo.repair_root_copy()
    return repo


def _report(repo: OriginRepository, done: list[str]) -> None:
    versions = {row.role.split(" ")[0]: row.version for row in repo.status()}
    versions["bin-n"] = versions["bin-*"]  # the newest of the bins
    shown = ", ".join(f"{r} v{versions[r]}" if r in versions else r for r in done)
    click.echo(f"signed {shown}")
    click.echo(
        f"  timestamp v{repo.timestamp_md.signed.version}; start the origin again to serve it"
    )


@origin.command()
@repo_option
@click.argument("roles", nargs=-1, required=True)
def sign(repo_dir: Path, roles: tuple[str, ...]) -> None:
    """Re-sign ROLES with a fresh expiry (a ceremony for root, targets, bins).

    Needs the roles' keys (file keys under REPO/keys, or their signer URIs
    in config.json reachable here) and the origin stopped.
    """
    repo = _ceremony(repo_dir)
    _report(repo, _on_disk(lambda: repo.resign(roles)))
    places = _signer_uris(repo)
    _retired(repo, "", repo.retire_signers(), places)  # e.g. a rotation this ceremony finished


@origin.command()
@repo_option
@click.argument("role", type=click.Choice(ROLES))
@click.option(
    "--signer", "uris", multiple=True, metavar="URI", help="A new key's signer URI (repeatable)."
)
@click.option(
    "--public-key",
    "pems",
    multiple=True,
    metavar="PEM",
    type=click.Path(dir_okay=False),
    help="The public key of the matching --signer; needed for non-file signers.",
)
@click.option(
    "--new-keys",
    type=click.IntRange(min=0),
    default=None,
    help="Also generate this many Ed25519 file keys under REPO/keys "
    "[default: one, if no --signer].",
)
@click.option(
    "--threshold",
    type=click.IntRange(min=1),
    default=None,
    help="Keys that must sign ROLE [default: as before].",
)
def rotate(
    repo_dir: Path, role: str, uris: tuple[str, ...], pems: tuple[str, ...],
    new_keys: int | None, threshold: int | None,
) -> None:  # fmt: skip
    """Replace every key of ROLE (a compromise, or a key holder leaving).

    The role that delegates to ROLE is re-signed naming the new keys (a new
    root is signed by the old root keys and the new ones), ROLE is re-signed
    by them, then the snapshot and the timestamp. Clients follow on their
    next update; the old keys sign nothing that they will accept.
    """
    from tufmesh.origin._keys import generate_file_key, public_key_from_pem, public_key_from_uri

    if len(pems) > len(uris):
        raise UsageError("each --public-key goes with a --signer")
    repo = _ceremony(repo_dir)
    keys = []
    for i, uri in enumerate(uris):
        key = (
            public_key_from_pem(Path(pems[i])) if i < len(pems)
            else public_key_from_uri(repo_dir, uri)
        )  # fmt: skip
        keys.append((uri, key))
    generated: list[Path] = []
    label = "bin-*" if role == "bin-n" else role
    old = next(row.keyids for row in repo.status() if row.role.split(" ")[0] == label)
    places = _signer_uris(repo)  # where the old keys are, to say so once they are retired
    try:
        for _ in range(new_keys if new_keys is not None else 0 if uris else 1):
            n = 1
            while (repo_dir / "keys" / f"{role}-{n}.pem").exists():
                n += 1
            generated.append(repo_dir / "keys" / f"{role}-{n}.pem")
            keys.append(_on_disk(lambda: generate_file_key(repo_dir, generated[-1].stem)))
        done = _on_disk(lambda: repo.rotate(role, keys, threshold))
    except BaseException:
        # A key the configuration does not name (the rotation never reached the
        # disk) is no key at all: leave no stray one behind.
        named = OriginConfig.load(repo_dir).signers.get(role, {}).values()
        for path in generated:
            if f"keys/{path.name}" not in " ".join(named):
                path.unlink(missing_ok=True)
        raise
    for path in generated:
        click.echo(f"generated keys/{path.name}")
    _report(repo, done)
    in_use = repo.keyids_in_use()  # a key may serve another role too: not retired then
    retired = [k for k in old if k not in in_use] + repo.retire_signers()
    _retired(repo, f"{role} ", retired, places)


def _retired(repo: OriginRepository, what: str, keyids: list[str], uris: dict[str, str]) -> None:
    """Say which keys no role names any more, and where each is (``uris``: the
    signer URIs by key id, as configured before they were retired)."""
    if keyids:
        click.echo(
            f"  retired {what}keys {', '.join(k[:12] for k in dict.fromkeys(keyids))}: no role "
            "names them any more; destroy them:"
        )
        for keyid in dict.fromkeys(keyids):
            uri = uris.get(keyid, "")
            from tufmesh.origin._keys import key_file

            where = key_file(repo.dir, uri) if uri else None
            click.echo(f"    {keyid[:12]}  {where or uri or '(not configured here)'}")


def _signer_uris(repo: OriginRepository) -> dict[str, str]:
    """Every configured signer URI, by key id."""
    return {k: uri for keys in repo.config.signers.values() for k, uri in keys.items()}


def _on_disk(operation: Callable[[], T]) -> T:
    """Run a ceremony's ``operation``; a failing disk is one line, not a traceback."""
    try:
        return operation()
    except OSError as exc:
        raise OriginError(f"the ceremony stopped: {exc.strerror or exc}") from None


@origin.command()
@repo_option
@click.argument("paths", nargs=-1, required=True, metavar="PROJECT/FILENAME...")
def remove(repo_dir: Path, paths: tuple[str, ...]) -> None:
    """Take published artifacts out of the signed metadata (a malicious upload).

    With the origin stopped. Mirrors drop them at their next sync and clients
    no longer find them; their names are never published again. A removal
    cut short is finished by running it again.
    """
    repo = _ceremony(repo_dir)
    version = _on_disk(lambda: repo.remove(paths))
    removed = repo.removed()
    for path in dict.fromkeys(paths):
        sha256 = removed[path].get("sha256")
        said = f"sha256 {sha256[:16]}…" if isinstance(sha256, str) else "(no sha256)"
        click.echo(f"removed {path}  {said}")
    click.echo(f"  snapshot v{version}; start the origin again to serve it")


@origin.group(cls=Group)
def project() -> None:
    """Register projects and manage their upload tokens."""


@project.command("add")
@repo_option
@click.argument("name")
def project_add(repo_dir: Path, name: str) -> None:
    """Register project NAME; print its upload token on the last line."""
    OriginRepository(repo_dir, load=False)
    token = ProjectRegistry(repo_dir).add(name)
    normal = normalize_project(name)
    also = "" if normal == name else f" (the normal form of {name})"
    click.echo(f"registered project {normal}{also}; its upload token (shown once, keep it secret):")
    click.echo(token)


@project.command("list")
@repo_option
def project_list(repo_dir: Path) -> None:
    """List registered projects."""
    OriginRepository(repo_dir, load=False)
    registry = ProjectRegistry(repo_dir)
    for name in registry.names():
        info = registry.info(name)
        rotated = f"  token rotated {info['rotated']}" if "rotated" in info else ""
        click.echo(f"{name}\tcreated {info['created']}{rotated}")


@project.command("claim")
@repo_option
@click.argument("request", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--remove-missing",
    is_flag=True,
    help="Remove the project's published artifacts the request leaves out (what a leaked "
    "key published, say) instead of refusing it.",
)
@click.option("--dry-run", is_flag=True, help="Show what the request asks, change nothing.")
def project_claim(repo_dir: Path, request: Path, remove_missing: bool, dry_run: bool) -> None:
    """Hand a project to its developers' keys (a ceremony: the targets keys sign).

    REQUEST is what 'tufmesh developer claim' wrote: the developers' public
    key and the first version of the project's metadata, signed by it and
    listing every artifact the project has published. From then on only that
    key publishes the project's artifacts, not the origin's online keys. A
    project claimed already gets the request's key instead (its next version).
    Check the key id with the developers first (--dry-run shows it). With the
    origin stopped.
    """
    from tufmesh.origin._developer import read_claim

    project, keys, threshold, data = read_claim(request)
    if project not in ProjectRegistry(repo_dir).names():
        raise OriginError(f"no project {project} here ('origin project add' registers it)")
    listing = json.loads(data)["signed"].get("targets", {})
    click.echo(f"{project}: {len(listing)} artifacts, threshold {threshold}, key ids:")
    for key in keys:
        click.echo(f"  {key.keyid}")
    if _on_disk(lambda: OriginRepository(repo_dir).holds_claim(project, keys, threshold, data)):
        click.echo(f"{project} is claimed by this request already: nothing to do")
        return
    if dry_run:  # every check of the ceremony, nothing signed
        missing = _on_disk(
            lambda: OriginRepository(repo_dir).claim(
                project, keys, threshold, data, remove_missing=remove_missing, dry_run=True
            )
        )
        for path in missing:
            click.echo(f"would remove {path}")
        click.echo("the request passes every check; run again without --dry-run to claim")
        return
    repo = _ceremony(repo_dir)
    before = {t.path for t in repo.artifacts() if t.path.startswith(f"{project}/")}
    done = _on_disk(
        lambda: repo.claim(project, keys, threshold, data, remove_missing=remove_missing)
    )
    for path in sorted(before - set(listing)):
        click.echo(f"removed {path}")
    click.echo(
        f"claimed {project}: its artifacts ({len(listing)}) are signed by "
        f"{', '.join(k.keyid[:12] for k in keys)} (threshold {threshold}) from now on"
    )
    _report(repo, done)


@project.command("token-rotate")
@repo_option
@click.argument("name")
def project_token_rotate(repo_dir: Path, name: str) -> None:
    """Replace NAME's upload token; print the new one on the last line."""
    OriginRepository(repo_dir, load=False)
    token = ProjectRegistry(repo_dir).rotate(name)
    click.echo(f"new upload token for {name} (the old one no longer works):")
    click.echo(token)


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--origin", "origin_url", required=True, help="Origin URL, e.g. http://127.0.0.1:8080"
)
@click.option("--project", required=True, help="Project to publish to.")
@click.option("--token", envvar="TUFMESH_TOKEN", help="Upload token [env TUFMESH_TOKEN].")
@click.option(
    "--key",
    envvar="TUFMESH_KEY",
    help="The project's own signing key (a PEM file, or a signer URI with --public-key) if "
    "the project is claimed: the files are published in one new version of its metadata, "
    "signed here [env TUFMESH_KEY].",
)
@public_key_option
def publish(
    files: tuple[Path, ...],
    origin_url: str,
    project: str,
    token: str | None,
    key: str | None,
    public_key: Path | None,
) -> None:
    """Publish FILES to a project on an origin; one line per file."""
    from tufmesh.client._home import check_url

    origin_url = check_url(origin_url)
    host = httpx.URL(origin_url).host
    if origin_url.startswith("http://") and not _loopback(host):
        click.echo(
            f"warning: the upload token goes to {host} unencrypted (http://): "
            "use https:// unless the network between is yours",
            err=True,
        )
    failures = 0
    if token is None:
        raise UsageError(
            "an upload token is needed: --token, or TUFMESH_TOKEN in the environment "
            "(`tufmesh origin project add` printed it)"
        )
    token = token.strip()
    if not token or not token.isprintable() or not token.isascii():
        raise UsageError("--token: an upload token is one line of printable text")
    _distinct_names(files)
    for path in files:  # check every name before sending anything
        if not path.exists():
            raise UsageError(f"cannot read {path}: no such file")
        if not path.is_file():
            raise UsageError(f"cannot read {path}: not a regular file")
        check_filename(path.name)
    from tufmesh.client._http import tls_context
    from tufmesh.origin._developer import load_key

    developer = load_key(key, public_key) if key is not None else None
    stored: list[tuple[Path, dict[str, Any]]] = []  # for the project's own keys to sign
    with httpx.Client(verify=tls_context()) as client:
        if developer is not None:
            developer = _ready_to_sign(client, origin_url, project, developer)
        for done, path in enumerate(files):
            try:
                with progress_bar(f"publish {path.name}", os.stat(path).st_size) as advance:
                    answer = upload(
                        client, origin_url, project, path, token,
                        progress=advance, on_retry=lambda why: click.echo(why, err=True),
                    )  # fmt: skip
            except KeyboardInterrupt:
                rest = ", ".join(p.name for p in files[done + 1 :])
                waiting = ", ".join(p.name for p, _ in stored)
                click.echo(
                    f"interrupted: {path.name} may or may not be published (the same command "
                    "again publishes it, or says it is)"
                    + (f"; stored, not yet signed: {waiting}" if waiting else "")
                    + (f"; not sent: {rest}" if rest else ""),
                    err=True,
                )
                raise
            except TufmeshError as exc:
                failures += 1
                click.echo(f"error: {exc}", err=True)
                continue
            if "signed_by" in answer:
                if developer is None:
                    failures += 1
                    click.echo(
                        f"error: {path.name}: stored, not published: {normalize_project(project)} "
                        "signs its own metadata (publish with --key)",
                        err=True,
                    )
                else:
                    stored.append((path, answer))
                continue
            click.echo(
                f"published {answer['target']}  {format_size(answer['length'])}  "
                f"sha256 {answer['sha256'][:16]}…  snapshot v{answer['snapshot_version']}"
            )
        if stored and developer is not None:
            failures += _sign_stored(client, origin_url, project, token, developer, stored)
    if failures:
        raise click.ClickException(f"{failures} of {len(files)} files were not published")


def _distinct_names(files: tuple[Path, ...]) -> None:
    """Refuse two files of one name: an artifact's name is its path in the project."""
    seen: dict[str, Path] = {}
    for path in files:
        if path.name in seen:
            raise UsageError(
                f"{seen[path.name]} and {path}: two files named {path.name} (or one given "
                "twice); a project's artifacts have distinct names"
            )
        seen[path.name] = path


def _ready_to_sign(
    client: httpx.Client, origin_url: str, project: str, developer: DeveloperKey
) -> DeveloperKey | None:
    """``developer`` if it can sign the project's next version (checked before
    anything is uploaded: a wrong key costs nothing), None if the project is
    not claimed (said: the origin signs its artifacts)."""
    from tufmesh.origin._developer import claimed_version, published_version

    project = normalize_project(project)
    if claimed_version(client, origin_url, project) is None:
        click.echo(
            f"warning: {project} is not claimed: the origin signs its artifacts, --key is not used",
            err=True,
        )
        return None
    developer.check(project, published_version(client, origin_url, project))
    return developer


def _sign_stored(
    client: httpx.Client,
    origin_url: str,
    project: str,
    token: str,
    developer: DeveloperKey,
    stored: list[tuple[Path, dict[str, Any]]],
) -> int:
    """Sign the next version of the claimed project's metadata listing the
    ``stored`` files (their entries computed here, from the files) and send
    it; print a line per file; return the failures (all of them, or none)."""
    from tufmesh.origin._developer import release, target_of

    project = normalize_project(project)
    try:
        adding = []
        for path, answer in stored:
            size = answer["chunk_size"]
            # (One a manifest holds for this file: a hostile origin answering
            # 1 would have a digest computed for every byte.)
            if (
                type(size) is not int
                or not 0 < size <= MAX_CHUNK_SIZE
                or -(-path.stat().st_size // size) > MAX_MANIFEST_CHUNKS
            ):
                raise PublishError(f"{origin_url} answered a chunk size of {size!r}")
            target = target_of(path, project, size)
            if target.hashes["sha256"] != answer["sha256"]:
                raise UsageError(f"{path} changed while it was uploaded: publish it again")
            adding.append(target)
        answer = release(client, origin_url, project, developer, token, add=adding)
    except TufmeshError as exc:
        click.echo(f"error: {exc}", err=True)
        return len(stored)
    except OSError as exc:  # a file gone or unreadable since its upload
        click.echo(f"error: cannot read {exc.filename}: {exc.strerror}", err=True)
        return len(stored)
    for target in adding:
        click.echo(
            f"published {target.path}  {format_size(target.length)}  "
            f"sha256 {target.hashes['sha256'][:16]}…  {answer['role']} v{answer['version']}, "
            f"snapshot v{answer['snapshot_version']}"
        )
    if "warning" in answer:
        click.echo(f"warning: {answer['warning']}", err=True)
    return 0


def _loopback(host: str) -> bool:
    """True for a name or address of this machine's loopback interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.group(cls=Group)
def developer() -> None:
    """A project's own signing key: claim the project, re-sign its metadata.

    A claimed project's artifacts are signed by its developers' key, so that
    not even the origin's online keys can publish or change them (PEP 480;
    'tufmesh publish --key' publishes to it).
    """


@developer.command("keygen")
@click.argument("keyfile", type=click.Path(dir_okay=False, path_type=Path))
def developer_keygen(keyfile: Path) -> None:
    """Make a new Ed25519 signing key in KEYFILE (mode 0600; keep it secret, and a copy)."""
    from tufmesh.origin._developer import generate_key

    key = generate_key(keyfile)
    click.echo(f"wrote {keyfile}: key id {key.keyid}")
    click.echo("  keep a copy offline, and keep it secret: it publishes the project's artifacts")


@developer.command("claim")
@click.argument("project")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--key", envvar="TUFMESH_KEY", required=True, help="The project's signing key.")
@public_key_option
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the request [default: PROJECT.claim.json].",
)
@click.option(
    "--chunk-size",
    type=SIZE,
    default="1MiB",
    show_default=True,
    help="The origin's chunk size ('chunk_size' in its config.json; 1 MiB unless set at init).",
)
@click.option(
    "--origin",
    "origin_url",
    help="The origin, for a project claimed already (a new key after one was lost or "
    "leaked): the request is then the next version of its metadata.",
)
def developer_claim(
    project: str,
    files: tuple[Path, ...],
    key: str,
    public_key: Path | None,
    output: Path | None,
    chunk_size: int,
    origin_url: str | None,
) -> None:
    """Write the request to claim PROJECT for KEY, listing FILES: every
    artifact the project has published (the origin refuses a claim that
    leaves one out or differs, unless its maintainers remove those; 'tufmesh
    get' fetches those you lack). Hand the request to the maintainers."""
    from tufmesh.origin._developer import claim_request, claimed_version, load_key, target_of

    _distinct_names(files)
    developer = load_key(key, public_key)
    project = normalize_project(project)
    version = 1
    if origin_url is not None:
        from tufmesh.client._home import check_url
        from tufmesh.client._http import tls_context

        with httpx.Client(verify=tls_context()) as client:
            current = claimed_version(client, check_url(origin_url), project)
        version = 1 if current is None else current + 1
    targets = [target_of(f, project, chunk_size) for f in files]
    request = claim_request(project, developer.signer, targets, version=version)
    output = output or Path(f"{project}.claim.json")
    try:
        with open(output, "x", encoding="utf-8") as handle:
            json.dump(request, handle, indent=1)
            handle.write("\n")
    except FileExistsError:
        raise UsageError(f"{output} exists already") from None
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror}") from None
    click.echo(
        f"wrote {output}: {project}, {len(files)} artifacts, version {version}, for key "
        f"{developer.signer.public_key.keyid}"
    )
    click.echo("  hand it to the maintainers ('tufmesh origin project claim'), with the key id")


@developer.command("sign")
@click.argument("project")
@click.option("--origin", "origin_url", required=True, help="Origin URL.")
@click.option("--token", envvar="TUFMESH_TOKEN", required=True, help="Upload token.")
@click.option("--key", envvar="TUFMESH_KEY", required=True, help="The project's signing key.")
@public_key_option
@click.option(
    "--drop",
    "drops",
    multiple=True,
    metavar="FILENAME",
    help="Take an artifact out (its name is never published again). Repeatable.",
)
def developer_sign(
    project: str,
    origin_url: str,
    token: str,
    key: str,
    public_key: Path | None,
    drops: tuple[str, ...],
) -> None:
    """Sign PROJECT's metadata anew (a fresh year's expiry), dropping any
    --drop artifacts, and send it to the origin."""
    from tufmesh.client._home import check_url
    from tufmesh.client._http import tls_context
    from tufmesh.origin._developer import load_key, release

    origin_url = check_url(origin_url)
    developer = load_key(key, public_key)
    project = normalize_project(project)
    paths = [f"{project}/{check_filename(name)}" for name in drops]
    with httpx.Client(verify=tls_context()) as client:
        answer = release(client, origin_url, project, developer, token.strip(), drop=paths)
    for path in paths:
        click.echo(f"dropped {path}")
    if "warning" in answer:
        click.echo(f"warning: {answer['warning']}", err=True)
    click.echo(
        f"signed {answer['role']} v{answer['version']}, snapshot v{answer['snapshot_version']}"
    )
