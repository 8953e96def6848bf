"""``tufmesh origin ...``: the maintainers' commands."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import click

from tufmesh._durable import is_held
from tufmesh._ui import (
    HOST,
    PORT,
    SIZE,
    Group,
    format_duration,
    format_size,
    p2p_line,
    run_service,
    stdout_closed,
    upload_rate_option,
)
from tufmesh.errors import InvalidNameError, OriginError, UsageError
from tufmesh.origin._config import OFFLINE_ROLES, ROLES, OriginConfig
from tufmesh.origin._names import normalize_project
from tufmesh.origin._projects import ProjectRegistry
from tufmesh.origin._repository import OriginRepository, RoleStatus, cut_short_said
from tufmesh.origin._server import serve as serve_repository

__all__ = ["origin"]

T = TypeVar("T")

repo_option = click.option(
    "--dir",
    "repo_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The repository directory.",
)


def _pairs(values: tuple[str, ...], what: str) -> list[tuple[str, str]]:
    """``ROLE=VALUE`` options as pairs; one that does not parse is a usage error
    (exit 2, with the usage), as for any option."""
    pairs = []
    for value in values:
        role, sep, rest = value.partition("=")
        if not sep or not rest:
            raise click.BadParameter(f"takes ROLE=VALUE, not {value!r}", param_hint=what)
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
    help="Public key (PEM file) of a --signer ROLE=... that is not a file2: key "
    "(they pair in the order given).",
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

    from tufmesh.origin._keys import pair_public_keys

    defaults = OriginConfig()
    days = dict(defaults.expiry_days)
    for role, value in _pairs(expiry, "--expiry"):
        if role not in days:
            raise click.BadParameter(
                f"unknown role {role!r}; roles: {', '.join(days)}", param_hint="--expiry"
            )
        try:
            days[role] = float(value)
        except ValueError:
            raise click.BadParameter(
                f"{role}={value}: not a number of days", param_hint="--expiry"
            ) from None
    uris: dict[str, list[str]] = {}
    for role, uri in _pairs(signer, "--signer"):
        if role not in ROLES:
            raise click.BadParameter(
                f"unknown role {role!r}; roles: {', '.join(ROLES)}", param_hint="--signer"
            )
        uris.setdefault(role, []).append(uri)
    pems: dict[str, list[Path]] = {}
    for role, pem in _pairs(public_key, "--public-key"):
        if role not in uris:
            raise UsageError(f"--public-key {role}=... has no --signer {role}=... to go with")
        pems.setdefault(role, []).append(Path(pem))
    keys: dict[str, list[tuple[str, Key | None]]] = {}
    for role, named in uris.items():
        try:
            paired = pair_public_keys(repo_dir, named, pems.get(role, []))
        except OriginError as exc:
            raise UsageError(f"{role}: {exc}") from None
        keys[role] = list(zip(named, paired, strict=True))
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
@click.option("--host", type=HOST, default="127.0.0.1", show_default=True,
              help="Where to listen, HTTP and libp2p (this machine only, by default).")  # fmt: skip
@click.option("--port", type=PORT, default=8080, show_default=True, help="0 picks a free port.")
@click.option(
    "--p2p-port", type=PORT, default=None, help="Join the peer-to-peer network on this port."
)
@click.option("--bootstrap", multiple=True, help="A peer's multiaddr to dial (repeatable).")
@upload_rate_option
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
    for warning in repo.offline_expiry()[0] + repo.offline_keys_here():
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    _warn_unrotated(repo)
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
    for role, keys in repo.cut_short_rotations().items():
        raise OriginError(cut_short_said(repo.dir, role, keys))
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


def _warn_unrotated(repo: OriginRepository) -> None:
    """Say which claims still wait for the targets keys' rotation (the
    claim's ceremony, step 3 of docs/maintainers.md)."""
    try:
        claimed = repo.unrotated_claims()
    except OriginError as exc:  # a reminder: said, never a reason to stop serving
        click.secho(f"warning: {exc}", fg="yellow", err=True)
        return
    if claimed:
        click.secho(
            f"warning: {', '.join(claimed)} claimed since the targets keys last changed: "
            f"rotate them ('tufmesh origin rotate --dir {repo.dir} targets', with the root "
            "keys); until then the targets metadata from before each claim lets the online "
            "keys sign for the project to a client that never fetched a later one",
            fg="yellow",
            err=True,
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
    for warning in warnings + repo.offline_keys_here():
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    _warn_unrotated(repo)
    cut_short = repo.cut_short_rotations()
    for role, keys in cut_short.items():
        click.secho(f"error: {cut_short_said(repo_dir, role, keys)}", fg="red", err=True)
    pending = {k for role in cut_short for k in repo.config.signers[role]}
    if unretired := sorted(set(repo.unretired()) - pending):
        click.secho(
            f"warning: keys {', '.join(k[:12] for k in unretired)} are configured and no role "
            "names them (a ceremony cut short before it retired them): the next ceremony "
            f"('tufmesh origin sign --dir {repo_dir} ROLE') retires them; then destroy them",
            fg="yellow",
            err=True,
        )
    stray = repo.stray_keys()
    if stray:
        click.secho(
            f"warning: {', '.join(stray)} named by no role's signer (retired by a rotation, "
            "or made by a ceremony stopped midway): destroy once sure it is not needed",
            fg="yellow",
            err=True,
        )
    now = datetime.now(UTC)
    click.echo(f"repository {repo_dir}")
    rows = repo.status()
    width = max(34, *(len(row.role) for row in rows))
    click.echo(
        f"{'role':{width}} {'ver':>5} {'expires':25} {'':>12} {'thr':>3}  {'kind':8} keys (signers)"
    )
    from tufmesh.origin._keys import NOT_HERE, UNREADABLE, signer_kind

    unreadable, absent = [], []
    for row in rows:
        left = _human_delta((row.expires - now).total_seconds())
        kinds_here = [signer_kind(uri, repo.dir) for uri in row.signers]
        found = set(kinds_here)
        unreadable += [row.role] if UNREADABLE in found else []
        usable = sum(kind not in (UNREADABLE, NOT_HERE) for kind in kinds_here)
        short = row.online and usable < row.threshold and NOT_HERE in found
        absent += [row.role] if short else []
        kinds = ",".join(sorted(found)) or "none here"
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
    if unreadable:
        click.secho(
            f"warning: a key file of {', '.join(unreadable)} is no private key (damaged, or "
            "another file): nothing signs with it, and 'origin serve' refuses to start",
            fg="yellow",
            err=True,
        )
    if absent:
        click.secho(
            f"warning: {', '.join(absent)}: too few online keys here to sign (their files "
            "are not on this host): 'origin serve' refuses to start here",
            fg="yellow",
            err=True,
        )
    if expired or stale or unreadable or absent or repo.broken or cut_short:
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


def _by_role(repo: OriginRepository) -> dict[str, RoleStatus]:
    """``repo.status()`` by the role names commands take (the bins' row, the
    bin that expires first, as ``bin-n``)."""
    named = ((row.role.split(" ")[0], row) for row in repo.status())
    return {("bin-n" if name == "bin-*" else name): row for name, row in named}


def _report(repo: OriginRepository, done: list[str]) -> None:
    versions = {role: row.version for role, row in _by_role(repo).items()}
    shown = ", ".join(f"{r} v{versions[r]}" if r in versions else r for r in done)
    click.echo(f"signed {shown}")
    if "root" in done:  # the anchor clients are given: published apart, as at init
        first = repo.metadata_dir / f"{versions['root']}.root.json"
        digest = hashlib.sha256(first.read_bytes()).hexdigest()
        click.echo(f"  new trusted root: {first} (give this to new clients)")
        click.echo(f"  its sha256: {digest} (publish it apart, for them to check)")
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
    help="The public key of a --signer that is not a file2: key (they pair in the order given).",
)
@click.option(
    "--new-keys",
    type=click.IntRange(0, 64),
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
    """Replace the keys of ROLE by those given (a compromise, or a key holder leaving).

    The role that delegates to ROLE is re-signed naming the new keys (a new
    root is signed by the old root keys and the new ones), ROLE is re-signed
    by them, then the snapshot and the timestamp. Clients follow on their
    next update; the old keys sign nothing for ROLE that they will accept (a
    key another role shares stays that role's, and is said: rotate it too).
    """
    from tufmesh.origin._keys import generate_file_key, pair_public_keys

    repo = _ceremony(repo_dir)
    keys = list(zip(uris, pair_public_keys(repo_dir, uris, [Path(p) for p in pems]), strict=True))
    generated: list[Path] = []
    before = _by_role(repo)[role]
    old = before.keyids
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
    if generated and role in OFFLINE_ROLES:
        click.echo(
            f"  {role} is an offline role: move its new key file"
            f"{'s' if len(generated) > 1 else ''} off the serving host to where its keys are "
            "kept (it signs only at ceremonies; 'origin status' then says 'file, not here')"
        )
    _report(repo, done)
    now = _by_role(repo)
    after = now[role]
    if after.threshold < before.threshold:  # (only as --threshold said: said again)
        click.echo(f"  {role}'s threshold lowered from {before.threshold} to {after.threshold}")
    in_use = repo.keyids_in_use()  # a key may serve another role too: not retired then
    retired = [k for k in old if k not in in_use] + repo.retire_signers()
    _retired(repo, f"{role} ", retired, places)
    for keyid in dict.fromkeys(k for k in old if k in in_use):
        others = [name for name, row in now.items() if keyid in row.keyids]
        if others:  # (a leaked key that another role shares still signs for it)
            click.secho(
                f"warning: key {keyid[:12]} is no longer {role}'s, but still "
                f"{', '.join(others)}'s: if it leaked, rotate "
                f"{'those' if len(others) > 1 else 'that'} too ("
                + "; ".join(f"tufmesh origin rotate --dir {repo_dir} {o}" for o in others)
                + ")",
                fg="yellow",
                err=True,
            )


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


def _normal_target(path: str) -> str:
    """PROJECT/FILENAME with the project's name in its normal form (as
    `publish --project Example` publishes to example/): the file name as
    given, for a name published before a rule that now refuses it."""
    project, slash, filename = path.partition("/")
    if not slash or not filename:
        raise UsageError(f"{path!r}: give PROJECT/FILENAME, as `tufmesh ls` shows it")
    try:
        return f"{normalize_project(project)}/{filename}"
    except InvalidNameError as exc:
        raise UsageError(f"{path!r}: {exc}") from None


@origin.command()
@repo_option
@click.argument("paths", nargs=-1, required=True, metavar="PROJECT/FILENAME...")
def remove(repo_dir: Path, paths: tuple[str, ...]) -> None:
    """Take published artifacts out of the signed metadata (a malicious upload).

    With the origin stopped. Mirrors drop them at their next sync and clients
    no longer find them; their names are never published again. A removal
    cut short is finished by running it again.
    """
    paths = tuple(map(_normal_target, paths))
    repo = _ceremony(repo_dir)
    already = {p for p in paths if p in repo.removed() and repo.find(p) is None}
    version = _on_disk(lambda: repo.remove(paths))
    removed = repo.removed()
    for path in dict.fromkeys(paths):
        sha256 = removed[path].get("sha256")
        said = f"sha256 {sha256[:16]}…" if isinstance(sha256, str) else "(no sha256)"
        done = "removed already (its files cleaned up again):" if path in already else "removed"
        click.echo(f"{done} {path}  {said}")
    if already >= set(paths):
        click.echo(f"  the metadata is unchanged (snapshot v{version})")
    else:
        click.echo(f"  snapshot v{version}; start the origin again to serve it")


@origin.command()
@repo_option
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
def restore(repo_dir: Path, files: tuple[Path, ...]) -> None:
    """Store again published artifacts found corrupt on disk, from FILES.

    The origin quarantines a blob whose bytes no longer match its name, and
    then no longer serves it. Fetch each such artifact from a mirror (`tufmesh
    get` verifies it against the signed metadata) and give the files here;
    bytes that are no published artifact's are refused. The origin may be
    serving meanwhile.
    """
    OriginConfig.load(repo_dir)  # a clear error for a directory that is not one
    repo = OriginRepository(repo_dir)
    for path in files:
        restored = _on_disk(lambda: repo.restore(path))  # noqa: B023 (called at once)
        click.echo(f"restored {', '.join(restored)} from {path}")


@origin.group(cls=Group)
def project() -> None:
    """Register projects and manage their upload tokens."""


def _token_said() -> None:
    """Refuse, before any change, a command whose token nobody would see."""
    if stdout_closed():
        raise UsageError("no standard output to show the new upload token on")


@contextlib.contextmanager
def _new_token(header: str, unrecorded: str) -> Iterator[Callable[[str], None]]:
    """A function that says ``header`` and a new token on standard output,
    flushed, before the token counts: one that cannot be said (a pipe closed
    meanwhile, a full disk) changes nothing (it replaced a token, or
    registered a project, with a token nobody saw); one said and then not
    recorded is said not to work (``unrecorded``: what is true then)."""
    said = False

    def show(token: str) -> None:
        nonlocal said
        try:
            click.echo(header)
            click.echo(token)
            sys.stdout.flush()
        except (OSError, ValueError) as exc:
            why = getattr(exc, "strerror", None) or exc
            raise UsageError(
                f"cannot show the new upload token (standard output: {why}): nothing changed"
            ) from None
        said = True

    try:
        yield show
    except OSError as exc:
        if not said:
            raise
        raise OriginError(
            f"cannot record the new upload token ({exc.strerror or exc}): the one shown does "
            f"not work; {unrecorded}"
        ) from None


@project.command("add")
@repo_option
@click.argument("name")
def project_add(repo_dir: Path, name: str) -> None:
    """Register project NAME; print its upload token on the last line."""
    _token_said()
    OriginRepository(repo_dir, load=False)
    normal = normalize_project(name)
    also = "" if normal == name else f" (the normal form of {name})"
    said = f"registered project {normal}{also}; its upload token (shown once, keep it secret):"
    with _new_token(said, f"{normal} is not registered") as show:
        ProjectRegistry(repo_dir).add(name, show)


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
    keys, how many must sign, and the first version of the project's
    metadata, signed by that many of them and listing every artifact the
    project has published. From then on only those keys publish the
    project's artifacts, not the origin's online keys. A project claimed
    already gets the request's keys instead (its next version). Check the
    key ids with the developers first (--dry-run shows them). With the origin
    stopped.
    """
    from tuf.api.metadata import Metadata

    from tufmesh.origin._developer import Holders, read_claim

    project, keys, threshold, data = read_claim(request)
    if project not in ProjectRegistry(repo_dir).names():
        raise OriginError(f"no project {project} here ('origin project add' registers it)")
    listing = json.loads(data)["signed"].get("targets", {})
    signed = Holders({k.keyid: k for k in keys}, threshold).signed(Metadata.from_bytes(data))
    click.echo(f"{project}: {len(listing)} artifacts, threshold {threshold}, key ids:")
    for key in keys:
        click.echo(f"  {key.keyid}  {'signed' if key.keyid in signed else 'not signed'}")
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
        if is_held(repo_dir / "origin.lock"):
            click.echo(f"  (with the origin stopped: one is serving {repo_dir} now)")
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
    click.echo(
        f"next, with the root keys: tufmesh origin rotate --dir {repo_dir} targets (after "
        "this ceremony's other claims): until then the targets metadata from before the "
        f"claim, still valid, lets whoever holds the online keys sign for {project} to a "
        "client that never saw a later one (docs/maintainers.md)"
    )


@project.command("token-rotate")
@repo_option
@click.argument("name")
def project_token_rotate(repo_dir: Path, name: str) -> None:
    """Replace NAME's upload token; print the new one on the last line."""
    _token_said()
    OriginRepository(repo_dir, load=False)
    said = f"new upload token for {name} (the old one no longer works):"
    with _new_token(said, "the old one still works") as show:
        ProjectRegistry(repo_dir).rotate(name, show)
