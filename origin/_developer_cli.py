"""``tufmesh publish`` and ``tufmesh developer ...``: the developers' commands."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any, Final

import click
import httpx
from tuf.api.metadata import TargetFile

from tufmesh._shares import is_loopback
from tufmesh._ui import SIZE, Group, format_size, progress_bar
from tufmesh.errors import InvalidNameError, TufmeshError, UnansweredError, UsageError
from tufmesh.origin._developer import DeveloperKey, SigningRequest
from tufmesh.origin._names import check_filename, check_new_filename, normalize_project
from tufmesh.origin._owned import owned_role
from tufmesh.origin._publish import upload

__all__ = ["developer", "publish"]

files_argument = click.argument("files", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
replace_keys_option = click.option(
    "--replace-keys",
    is_flag=True,
    help="Replace the project's keys noted beside KEY by the claim's, if other (else asked).",
)
#: What an upload's bar says once the file is sent (the origin answers once it
#: has stored it, and published it unless the project signs its own).
SENT: Final = "sent; waiting for the origin's answer"

key_option = click.option(
    "--key",
    envvar="TUFMESH_KEY",
    required=True,
    help="Your signing key (the project's) [env TUFMESH_KEY].",
)
public_key_option = click.option(
    "--public-key",
    envvar="TUFMESH_PUBLIC_KEY",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The public key (PEM) of a --key that is a KMS or HSM signer URI "
    "(gcpkms:..., hsm:...) [env TUFMESH_PUBLIC_KEY].",
)


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
    if origin_url.startswith("http://") and not is_loopback(host):
        click.echo(
            f"warning: the upload token goes to {host} unencrypted (http://): "
            "use https:// unless the network between is yours",
            err=True,
        )
    failures = unsure = 0
    if token is None:
        raise UsageError(
            "an upload token is needed: --token, or TUFMESH_TOKEN in the environment "
            "(`tufmesh origin project add` printed it)"
        )
    token = token.strip()
    if not token or not token.isprintable() or not token.isascii():
        raise UsageError("--token: an upload token is one line of printable text")
    try:
        project = normalize_project(project)
    except InvalidNameError as exc:  # (once, not once a file)
        raise UsageError(f"--project: {exc}") from None
    _artifact_files(files)
    for path in files:  # check every name before sending anything
        if not path.exists():
            raise UsageError(f"cannot read {path}: no such file")
        if not path.is_file():
            raise UsageError(f"cannot read {path}: not a regular file")
        check_new_filename(path.name)
    from tufmesh.client._http import tls_context
    from tufmesh.origin._developer import load_key

    developer = load_key(key, public_key) if key is not None else None
    stored: list[tuple[Path, dict[str, Any]]] = []  # for the project's own keys to sign
    with httpx.Client(verify=tls_context()) as client:
        if developer is not None:
            developer = _ready_to_sign(client, origin_url, project, developer)
        for done, path in enumerate(files):
            try:
                size = os.stat(path).st_size
                with progress_bar(f"publish {path.name}", size, then=SENT) as advance:
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
                unsure += isinstance(exc, UnansweredError)
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
            failed, unsent = _sign_stored(client, origin_url, project, token, developer, stored)
            failures, unsure = failures + failed, unsure + unsent
    if failures:
        maybe = f" ({unsure} of them may be: see above)" if unsure else ""
        raise click.ClickException(f"{failures} of {len(files)} files were not published{maybe}")


def _artifact_files(files: tuple[Path, ...]) -> None:
    """Refuse two files of one name (an artifact's name is its path in the
    project), and a private key among them: ``dist/*`` or ``keys/*`` where
    the key lives would publish it to the world."""
    seen: dict[str, Path] = {}
    for path in files:
        if path.name in seen:
            raise UsageError(
                f"{seen[path.name]} and {path}: two files named {path.name} (or one given "
                "twice); a project's artifacts have distinct names"
            )
        seen[path.name] = path
        if not path.is_file():
            continue  # (said as such below: a FIFO must not be opened, it would wait)
        try:
            with open(path, "rb") as handle:
                head = handle.read(4096)
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
        # A text file of keys (PEM, OpenSSH, PGP, openssl's PKCS#12 dump)
        # holding a private one; an archive that holds one starts otherwise.
        text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
        if text.startswith((b"-----BEGIN ", b"Bag Attributes")) and b"PRIVATE KEY" in head:
            raise UsageError(f"{path} is a private key, not an artifact: nothing is signed or sent")


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
) -> tuple[int, int]:
    """Sign the next version of the claimed project's metadata listing the
    ``stored`` files (their entries computed here, from the files) and send
    it; print a line per file; return the failures (all of them, or none),
    and how many of them may be published all the same."""
    from tufmesh.origin._developer import release, target_at

    project = normalize_project(project)
    try:
        adding = []
        for path, answer in stored:
            target = target_at(path, project, answer["chunk_size"], f"{origin_url}'s answer")
            if target.hashes["sha256"] != answer["sha256"]:
                raise UsageError(f"{path} changed while it was uploaded: publish it again")
            adding.append(target)
        answer = release(client, origin_url, project, developer, token, add=adding)
        if "request" in answer:
            _hand_on(answer, developer, origin_url, [p for p, _ in stored])
            return 0, 0
    except TufmeshError as exc:
        click.echo(f"error: {exc}", err=True)
        return len(stored), len(stored) if isinstance(exc, UnansweredError) else 0
    except OSError as exc:  # a file gone or unreadable since its upload
        click.echo(f"error: cannot read {exc.filename}: {exc.strerror}", err=True)
        return len(stored), 0
    # (A version the origin published already, sent again, has no snapshot.)
    snapshot = f", snapshot v{answer['snapshot_version']}" if "snapshot_version" in answer else ""
    for target in adding:
        click.echo(
            f"published {target.path}  {format_size(target.length)}  "
            f"sha256 {target.hashes['sha256'][:16]}…  {answer['role']} v{answer['version']}"
            f"{snapshot}"
        )
    if "warning" in answer:
        click.echo(f"warning: {answer['warning']}", err=True)
    return 0, 0


def _hand_on(
    answer: dict[str, Any], developer: DeveloperKey, origin_url: str, files: list[Path]
) -> None:
    """Write a release the project's other holders must sign too (what it
    drops noted once it is written), and say how."""
    from tufmesh.origin._developer import write_request

    request: SigningRequest = answer["request"]
    needed: int = answer["needed"]
    path = Path(f"{request.project}-v{request.version}.request.json")
    for n in range(2, 1000):  # another release on the same version: both kept
        if not path.exists():
            break
        path = Path(f"{request.project}-v{request.version}-{n}.request.json")
    write_request(path, request, new=True)
    developer.signs_away(request.project, answer["base"], request.metadata)
    signed = len(request.metadata.signatures)
    for file in files:
        click.echo(f"signed {request.project}/{file.name}: not yet published")
    names = " ".join(shlex.quote(str(f)) for f in files) or "[FILES]"
    click.echo(
        f"wrote {path}: {owned_role(request.project)} v{request.version}, signed by {signed} key, "
        f"{needed} needed. Each other holder checks it against their own copy of the files "
        f"and signs it; the last one sends it:\n"
        f"  tufmesh developer cosign {shlex.quote(str(path))} {names} --origin {origin_url} "
        "--key KEY --token TOKEN"
    )
    if files:
        click.echo(
            "  (the origin keeps the uploads 15 minutes; a holder who gives the files "
            "uploads them again as it sends)"
        )


def _show(request: SigningRequest, added: list[TargetFile], dropped: list[str]) -> None:
    """What signing ``request`` vouches for."""
    md = request.metadata
    if request.holders is not None:
        holders = request.holders
        click.echo(
            f"claim of {request.project} for {len(holders.keys)} keys, {holders.threshold} of "
            f"which must sign (version {md.signed.version}, expires "
            f"{md.signed.expires:%Y-%m-%d}):"
        )
        for keyid in holders.keys:
            signed = "signed" if keyid in md.signatures else "not yet signed"
            click.echo(f"  key {keyid}  {signed}")
    else:
        click.echo(
            f"{owned_role(request.project)} v{md.signed.version} (expires "
            f"{md.signed.expires:%Y-%m-%d}), signed by {len(md.signatures)} key(s) so far:"
        )
    for target in added:
        click.echo(
            f"  {'lists' if request.holders is not None else 'adds'} {target.path}  "
            f"{format_size(target.length)}  sha256 {target.hashes.get('sha256')}"
        )
    for path in dropped:
        click.echo(f"  drops {path}")


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
    click.echo(f"wrote {keyfile}.pub: the public key, for a claim's other holders (--holder)")


@developer.command("claim")
@click.argument("project")
@files_argument
@key_option
@public_key_option
@click.option(
    "--holder",
    "holders",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Another holder's public key (PEM), to sign the project's metadata too. Repeatable.",
)
@click.option(
    "--threshold",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="How many of the keys must sign each version of the project's metadata.",
)
@replace_keys_option
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the request [default: PROJECT.claim.json, PROJECT in its normal form].",
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
    holders: tuple[Path, ...],
    threshold: int,
    replace_keys: bool,
) -> None:
    """Write the request to claim PROJECT for KEY (and each --holder's key),
    listing FILES: every artifact the project has published (the origin
    refuses a claim that leaves one out or differs, unless its maintainers
    remove those; 'tufmesh get' fetches those you lack). With --threshold
    above 1, each other holder signs it too ('developer cosign'). Hand the
    request to the maintainers."""
    from tufmesh.origin._developer import (
        claim_request,
        claimed_version,
        load_key,
        target_of,
        write_request,
    )
    from tufmesh.origin._keys import public_key_from_pem

    _artifact_files(files)
    output = output or Path(f"{normalize_project(project)}.claim.json")
    if output.exists():  # (said before anything is noted of this claim)
        raise UsageError(
            f"{output} exists already (an earlier request?): remove it, or give -o FILE"
        )
    developer = load_key(key, public_key)
    try:
        others = [public_key_from_pem(path) for path in holders]
    except TufmeshError as exc:
        raise UsageError(str(exc)) from None
    project = normalize_project(project)
    version = 1
    if origin_url is not None:
        from tufmesh.client._home import check_url
        from tufmesh.client._http import tls_context

        with httpx.Client(verify=tls_context()) as client:
            current = claimed_version(client, check_url(origin_url), project)
        version = 1 if current is None else current + 1
    targets = [target_of(f, project, chunk_size) for f in files]
    request = claim_request(
        project, developer.signer, targets, version=version, holders=others, threshold=threshold
    )
    assert request.holders is not None
    developer.fresh_claim(project, version)
    _replacing(developer, request, replace_keys)
    write_request(output, request, new=True)
    developer.note_holders(project, request.holders, version)
    keys = list(request.holders.keys)
    click.echo(
        f"wrote {output}: {project}, {len(files)} artifacts, version {version}, for key"
        f"{'s' if len(keys) > 1 else ''} {', '.join(keys)}"
        + (f" ({threshold} of {len(keys)} must sign)" if len(keys) > 1 else "")
    )
    if len(keys) > 1:
        click.echo(
            f"  each other holder signs it ('tufmesh developer cosign {shlex.quote(str(output))} "
            "FILES --key KEY'), even past the threshold (a holder who has not builds only on "
            "versions their own key signs); then hand it to the maintainers ('tufmesh origin "
            "project claim'), with the key ids"
        )
    else:
        click.echo("  hand it to the maintainers ('tufmesh origin project claim'), with the key id")


@developer.command("sign")
@click.argument("project")
@click.option("--origin", "origin_url", required=True, help="Origin URL.")
@click.option(
    "--token", envvar="TUFMESH_TOKEN", required=True, help="Upload token [env TUFMESH_TOKEN]."
)
@key_option
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
    if "request" in answer:
        _hand_on(answer, developer, origin_url, [])
        return
    for path in paths:
        click.echo(f"dropped {path}")
    _published(answer, "signed")


@developer.command("forget-drop")
@click.argument("project")
@click.argument("filenames", metavar="FILENAME...", nargs=-1, required=True)
@key_option
@public_key_option
@click.option(
    "--force", is_flag=True, help="Forget a drop that may still be published (never signed)."
)
def developer_forget_drop(
    project: str, filenames: tuple[str, ...], key: str, public_key: Path | None, force: bool
) -> None:
    """Say that KEY's drop of PROJECT's FILENAMEs lost (another version of
    its number won): KEY signs versions that list them again. Refused while
    the drop may still be published (no version of its number or later seen
    published), unless --force: its request could be signed and sent later,
    and the version before it served again for KEY to sign them back in."""
    from tufmesh.origin._developer import load_key

    developer = load_key(key, public_key)
    project = normalize_project(project)
    names = list(dict.fromkeys(check_filename(name) for name in filenames))
    gone = developer.forget_dropped(project, names, force=force)
    for path in gone:
        click.echo(f"forgot this key's drop of {path}")
    if missing := [n for n in names if f"{project}/{n}" not in gone]:
        raise UsageError(f"this key noted no drop of {', '.join(missing)} in {project}")


@developer.command("cosign")
@click.argument("request_file", metavar="REQUEST", type=click.Path(dir_okay=False, path_type=Path))
@files_argument
@key_option
@public_key_option
@click.option(
    "--origin",
    "origin_url",
    help="Origin URL (a release: its published version is checked, and the request sent).",
)
@click.option(
    "--token",
    envvar="TUFMESH_TOKEN",
    help="Upload token: send the release once it carries enough signatures [env TUFMESH_TOKEN].",
)
@click.option(
    "--yes",
    is_flag=True,
    help="Sign what it drops, or what it lists without FILES to check it against.",
)
@replace_keys_option
def developer_cosign(
    request_file: Path,
    files: tuple[Path, ...],
    key: str,
    public_key: Path | None,
    origin_url: str | None,
    token: str | None,
    yes: bool,
    replace_keys: bool,
) -> None:
    """Add KEY's signature to REQUEST, a claim or a release that the
    project's keys sign together, once checked: FILES, your own copy of the
    artifacts it lists (a claim) or adds (a release), must be exactly those,
    byte for byte; a release must follow the published version. A release
    that then carries enough signatures is sent (with --token; FILES are
    uploaded first)."""
    from tufmesh.client._home import check_url
    from tufmesh.client._http import tls_context
    from tufmesh.origin._developer import (
        cosign,
        load_key,
        published_holders,
        published_version,
        read_request,
        write_request,
    )

    request = read_request(request_file)
    developer = load_key(key, public_key)
    _artifact_files(files)
    claiming = request.holders is not None

    def confirm(added: list[TargetFile], dropped: list[str]) -> None:
        _show(request, added, dropped)
        if claiming:
            _replacing(developer, request, replace_keys)
        _vouch(request, added, dropped, files, yes)

    if claiming and request.version == 1:  # a first claim: nothing published to follow
        _claim_signed(request_file, cosign(request, developer, confirm=confirm))
        return
    if origin_url is None:
        raise UsageError(
            f"{request_file} is checked against the project's published version: give --origin URL"
        )
    origin_url = check_url(origin_url)
    with httpx.Client(verify=tls_context()) as client:
        current = published_version(client, origin_url, request.project)
        signed = cosign(request, developer, current, confirm=confirm)
        if claiming:  # a project claimed already, for new keys
            _claim_signed(request_file, signed)
            return
        write_request(request_file, signed)
        published = published_holders(client, origin_url, request.project)
        count, needed = len(published.signed(signed.metadata)), published.threshold
        click.echo(f"signed {request_file}: {count} signature(s), {needed} needed")
        names = " ".join(shlex.quote(str(f)) for f in files) or "FILES"
        if count < needed:
            click.echo(
                f"  the next holder: tufmesh developer cosign {shlex.quote(str(request_file))} "
                f"FILES --origin {origin_url} --key KEY"
            )
            return
        if token is None:
            click.echo(
                "  send it (with the upload token): tufmesh developer send "
                f"{shlex.quote(str(request_file))} {names} --origin {origin_url}"
            )
            return
        _send(client, origin_url, request_file, signed, files, token, developer)


def _claim_signed(request_file: Path, signed: SigningRequest) -> None:
    """Write a claim signed once more, and say what comes next."""
    from tufmesh.origin._developer import write_request

    write_request(request_file, signed)
    holders = signed.holders
    assert holders is not None  # a claim's request names its keys
    count, needed = len(holders.signed(signed.metadata)), holders.threshold
    click.echo(f"signed {request_file}: {count} signature(s), {needed} needed")
    missing = len(holders.keys) - count
    if count < needed:
        click.echo(
            f"  the next holder: tufmesh developer cosign {shlex.quote(str(request_file))} "
            "FILES --key KEY"
        )
    elif missing:
        click.echo(
            f"  hand it to the maintainers ('tufmesh origin project claim'); the {missing} "
            "holder(s) who have not signed it build only on versions their own key signs"
        )
    else:
        click.echo("  hand it to the maintainers ('tufmesh origin project claim')")


def _replacing(developer: DeveloperKey, request: SigningRequest, replace: bool) -> None:
    """A claim naming other keys than those this key noted for the project
    replaces them: said, and confirmed (``--replace-keys``, or asked; never
    by the ``--yes`` that signs a listing unchecked)."""
    noted = developer.holders(request.project)
    assert request.holders is not None
    if noted is None or noted == request.holders:
        return
    gone = sorted(set(noted.keys) - set(request.holders.keys))
    new = sorted(set(request.holders.keys) - set(noted.keys))
    click.echo(
        f"  it replaces the keys noted for {request.project} ({noted.threshold} of "
        f"{len(noted.keys)}) by these ({request.holders.threshold} of "
        f"{len(request.holders.keys)}): new {', '.join(k[:12] for k in new) or 'none'}; "
        f"gone {', '.join(k[:12] for k in gone) or 'none'}"
    )
    _confirm(replace, "Replace the project's keys noted here?", "--replace-keys")


def _confirm(given: bool, question: str, flag: str) -> None:
    """Go on if ``given`` (the ``flag``), or if the terminal's user says so."""
    if given:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"give {flag} (nothing is signed)")
    click.confirm(question, abort=True)


@developer.command("send")
@click.argument("request_file", metavar="REQUEST", type=click.Path(dir_okay=False, path_type=Path))
@files_argument
@click.option("--origin", "origin_url", required=True, help="Origin URL.")
@click.option(
    "--token", envvar="TUFMESH_TOKEN", required=True, help="Upload token [env TUFMESH_TOKEN]."
)
def developer_send(
    request_file: Path, files: tuple[Path, ...], origin_url: str, token: str
) -> None:
    """Send REQUEST, a release its holders have signed, to the origin, after
    uploading FILES (the artifacts it adds: the origin keeps an upload 15
    minutes before it must be signed)."""
    from tufmesh.client._home import check_url
    from tufmesh.client._http import tls_context
    from tufmesh.origin._developer import check_files, published_holders, read_request

    request = read_request(request_file)
    if request.holders is not None:
        raise UsageError(
            f"{request_file} is a claim: the maintainers carry it out ('tufmesh origin project "
            "claim')"
        )
    _artifact_files(files)
    check_files(_listed(request, files), files, request.project)
    origin_url = check_url(origin_url)
    with httpx.Client(verify=tls_context()) as client:
        # Short of the threshold, nothing is uploaded (the origin would refuse it after).
        holders = published_holders(client, origin_url, request.project)
        if (count := len(holders.signed(request.metadata))) < holders.threshold:
            raise UsageError(
                f"{request_file} is signed by {count} of {request.project}'s keys, "
                f"{holders.threshold} needed: another holder cosigns it first "
                f"('tufmesh developer cosign {shlex.quote(str(request_file))} FILES --key KEY "
                f"--origin {origin_url}'); nothing is sent"
            )
        _send(client, origin_url, request_file, request, files, token, None)


def _vouch(
    request: SigningRequest,
    added: list[TargetFile],
    dropped: list[str],
    files: tuple[Path, ...],
    yes: bool,
) -> None:
    """Check ``files`` against the entries ``request`` adds; what they do not
    cover (entries without files, artifacts dropped) needs the signer's word:
    ``--yes``, or asked."""
    from tufmesh.origin._developer import check_files

    listed = _listed(request, files)
    check_files(listed, files, request.project)
    if files:
        click.echo(f"  checked: each of the {len(files)} file(s) given is the artifact listed")
    unchecked = [t.path for t in added if t not in listed]
    if unchecked:
        click.echo(f"  not checked (no file given): {', '.join(unchecked)}")
    if unchecked or dropped:
        _confirm(
            yes,
            "Sign what it drops, and what no file given checks?",
            "--yes to sign what it drops, or what no file given checks",
        )


def _listed(request: SigningRequest, files: tuple[Path, ...]) -> list[TargetFile]:
    """The entries of ``request`` that ``files`` are (by name); a file it does
    not list is refused."""
    targets = request.metadata.signed.targets
    listed = []
    for path in files:
        name = f"{request.project}/{check_filename(path.name)}"
        if name not in targets:
            raise UsageError(f"{path.name} is not in the request: nothing is signed or sent")
        listed.append(targets[name])
    return listed


def _send(
    client: httpx.Client,
    origin_url: str,
    request_file: Path,
    request: SigningRequest,
    files: tuple[Path, ...],
    token: str,
    developer: DeveloperKey | None,
) -> None:
    """Upload ``files`` (stored, awaiting the version), then send the release."""
    from tufmesh.origin._developer import publish_version

    token = token.strip()
    for path in files:
        with progress_bar(f"upload {path.name}", os.stat(path).st_size, then=SENT) as advance:
            upload(client, origin_url, request.project, path, token, progress=advance)
    answer = publish_version(client, origin_url, request.project, request.data, token, developer)
    for path in files:
        click.echo(f"published {request.project}/{path.name}")
    _published(answer, f"sent {request_file}:")


def _published(answer: dict[str, Any], done: str) -> None:
    """Say what the origin published (``answer``), after ``done``."""
    if "warning" in answer:
        click.echo(f"warning: {answer['warning']}", err=True)
    if answer.get("already"):
        click.echo(f"already published: {answer['role']} v{answer['version']}")
        return
    click.echo(
        f"{done} {answer['role']} v{answer['version']}, snapshot v{answer['snapshot_version']}"
    )
