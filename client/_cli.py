"""``tufmesh client``, ``tufmesh get`` and ``tufmesh ls`` for end users."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Set
from pathlib import Path
from typing import TYPE_CHECKING, Final

import click

if TYPE_CHECKING:
    import httpx  # (imported where used: `tufmesh --help` need not load it)

from tufmesh._json import loads
from tufmesh._ui import HOST, PORT, SIZE, Group, data_home, format_size, progress_bar, run_service
from tufmesh.client._client import Client, part_path
from tufmesh.client._download import own_file
from tufmesh.client._home import ClientHome
from tufmesh.errors import NotInMetadataError, TufmeshError, UsageError

__all__ = ["client", "get", "ls"]

home_option = click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Client home.  [default: $TUFMESH_HOME/client or the XDG data dir]",
)


def _home(path: Path | None) -> ClientHome:
    return ClientHome(path or data_home() / "client")


@click.group(cls=Group)
def client() -> None:
    """Set up this machine's client: trusted root and sources."""


@client.command()
@click.argument("root_json", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--origin", "origin_url", required=True, help="The origin's URL.")
@click.option("--mirror", "mirrors", multiple=True, help="A mirror's URL (repeatable).")
@home_option
def init(root_json: Path, origin_url: str, mirrors: tuple[str, ...], home: Path | None) -> None:
    """Trust ROOT_JSON and fetch from the origin and mirrors."""
    from tufmesh.client._home import check_sources, read_root

    path = _home(home).path
    anchor = path / "root.json"
    before = anchor.read_bytes() if anchor.is_file() else None
    try:
        earlier = _home(home).sources() if before is not None else []
    except TufmeshError:  # a damaged configuration: replaced, as asked
        earlier = []
    # A typo in a URL, or the wrong root.json, is better found now than at the
    # first get; and before a trust anchor is replaced.
    urls = check_sources([origin_url, *mirrors])
    unreachable = _unreachable(urls, read_root(root_json))
    if all(_ANOTHER in (why := unreachable.get(url, "")) or _NOT_ROOT in why for url in urls):
        raise UsageError(
            f"no source serves the repository of {root_json}: "
            + "; ".join(f"{url} {unreachable[url]}" for url in urls)
            + ". Nothing is set up"
        )
    made = ClientHome.create(path, root_json, urls)
    click.echo(f"client set up in {made.path}: {len(made.sources())} source(s)")
    digest = hashlib.sha256(made.trusted_root).hexdigest()
    click.echo(f"trusted root sha256 {digest}: check it against the one the maintainers publish")
    dropped = [url for url in earlier if url not in made.sources()]
    if dropped:
        click.echo(f"sources no longer used (init lists them all): {', '.join(dropped)}")
    if before is not None and before != anchor.read_bytes():
        click.echo(f"the trusted root was replaced by {root_json}, and the cached metadata cleared")
    for url, reason in unreachable.items():
        click.echo(f"warning: {url} {reason}", err=True)


#: What ``client init`` says of a source of another repository than its root's...
_ANOTHER: Final = "serves another repository"
#: ...and of one whose answer for that root cannot be read as one.
_NOT_ROOT: Final = "does not serve the root trusted here"
#: How long ``client init`` looks at its sources, all at once.
PROBE_SECONDS: Final = 5.0


def _unreachable(urls: list[str], trusted_root: bytes) -> dict[str, str]:
    """What is wrong with each of ``urls`` that serves no TUF metadata right
    now, or another repository's (a short look at each, at once: the status
    of its timestamp, and its copy of the trusted root's version, at most a
    root's size of it; a source still answering after :data:`PROBE_SECONDS`
    is left to it)."""
    import httpx

    from tufmesh.client._http import tls_context, tls_reason

    trusted = json.loads(trusted_root)["signed"]  # (a root client init has checked)
    reasons: dict[str, str | None] = {}

    def probe(url: str) -> None:
        def get(name: str) -> contextlib.AbstractContextManager[httpx.Response]:
            return httpx.stream(
                "GET", f"{url}/metadata/{name}", timeout=3.0, verify=tls_context(),
                headers={"accept-encoding": "identity"},
            )  # fmt: skip

        try:
            with get("timestamp.json") as answer:
                if answer.status_code == 404:  # it answers: not with TUF metadata
                    reasons[url] = (
                        "serves no TUF metadata (HTTP 404 for /metadata/timestamp.json): is "
                        "it a tufmesh origin's or mirror's URL?"
                    )
                    return
                if answer.status_code != 200:
                    status = answer.status_code
                    reasons[url] = f"does not answer now (HTTP {status} for its timestamp)"
                    return
            version = trusted["version"]
            with get(f"{version}.root.json") as answer:
                body = bytearray()
                for piece in answer.iter_raw():
                    body += piece
                    if len(body) > ROOT_LIMIT:
                        break
                if answer.status_code == 200 and (why := _not_the_root(answer, body, trusted)):
                    reasons[url] = why.replace("ROOT", f"its root v{version}")
                    return
            reasons[url] = None
        except httpx.HTTPError as exc:
            text = str(exc) or type(exc).__name__
            if "SSL" in text:
                reasons[url] = "cannot be asked now: " + tls_reason(text)
                return
            reason = re.sub(r"^\[Errno -?\d+\] ", "", text).lower()  # "connection refused"
            reasons[url] = f"does not answer now ({reason})"

    threads = [threading.Thread(target=probe, args=(url,), daemon=True) for url in urls]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + PROBE_SECONDS
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    late = f"does not answer now (no answer within {PROBE_SECONDS:.0f} s)"
    return {url: reason for url in urls if (reason := reasons.get(url, late)) is not None}


def _not_the_root(answer: httpx.Response, body: bytearray, trusted: object) -> str | None:
    """Why ``body``, a source's answer for the trusted root's version, is not
    that root (ROOT in the words: the file), or None if it is. Only a root
    that reads, and differs, is another repository's: an answer that cannot
    be read says so, not that the user's root.json is wrong."""
    encoding = answer.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        return f"{_NOT_ROOT}: ROOT came in {encoding[:40]!r}, which was not asked for"
    if len(body) > ROOT_LIMIT:
        return f"{_NOT_ROOT}: ROOT is over {ROOT_LIMIT:,} bytes"
    signed = _signed_part(body)
    if signed is None:
        return f"{_NOT_ROOT}: ROOT is not TUF metadata"
    if signed != trusted:
        return f"{_ANOTHER}: ROOT is not the one trusted here (a wrong URL, or the wrong root.json)"
    return None


#: The most of a source's root read (python-tuf's bound for a root).
ROOT_LIMIT: Final = 512_000


def _signed_part(data: bytes | bytearray) -> object:
    """The ``signed`` part of a metadata file, or None if it has none."""
    try:
        document = loads(data)
    except ValueError:  # (or nested past the recursion limit)
        return None
    return document.get("signed") if isinstance(document, dict) else None


@client.command()
@click.option("--host", type=HOST, default="127.0.0.1", show_default=True,
              help="Where to listen (this machine only, by default).")  # fmt: skip
@click.option("--port", type=PORT, default=3141, show_default=True, help="HTTP port (0: any).")
@click.option("--cache-size", type=SIZE, default="4GiB", show_default=True,
              help="Verified files kept for pip; the least recently served go first.")  # fmt: skip
@home_option
def proxy(host: str, port: int, cache_size: int, home: Path | None) -> None:
    """Serve a package index (PEP 503, 691) for pip and uv; every file verified first."""
    from tufmesh.client._proxy import serve_proxy

    path = _home(home)
    path.sources()  # not set up, or a bad config: one line, before anything listens
    run_service(
        lambda ready: serve_proxy(path.path, host, port, cache_size=cache_size, on_ready=ready),
        banner=lambda url: (
            f"index on {url}/simple/  (pip install --isolated --index-url {url}/simple/ ...)"
        ),
        where=f"{host}:{port}",
    )


@client.command()
@home_option
def sources(home: Path | None) -> None:
    """List sources with their last observed latency, throughput and failures."""
    for health in _home(home).health():
        latency = f"{health.latency * 1000:.0f} ms" if health.latency is not None else "-"
        rate = f"{format_size(health.throughput)}/s" if health.throughput else "-"
        error = f"  last error: {health.last_error}" if health.last_error else ""
        click.echo(
            f"{health.url}\tlatency {latency}\tthroughput {rate}\tfailures {health.failures}{error}"
        )


@click.command()
@click.argument("targets", nargs=-1, required=True)
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    help="Directory to write into [default: current directory].",
)
@click.option(
    "--replace",
    is_flag=True,
    help="Replace a file of the same name that is not the artifact (a damaged copy).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per artifact on stdout.")
@home_option
def get(
    targets: tuple[str, ...],
    output: Path,
    replace: bool,
    quiet: bool,
    as_json: bool,
    home: Path | None,
) -> None:
    """Download PROJECT/FILENAME artifacts, verified, into a directory."""
    # Made by the download itself, once the artifact is known: nothing is
    # left behind for a name that is not in the metadata.
    ancestor = output
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK):
        raise UsageError(f"cannot write into {output}: {ancestor} is not a writable directory")
    saved_as: dict[str, str] = {}
    for target in targets:  # the second would replace the first, both said saved
        # (in any case: Foo.whl and foo.whl are one file on macOS and Windows)
        name = target.rsplit("/", 1)[-1]
        other = saved_as.setdefault(name.casefold(), target)
        if other != target:
            raise UsageError(
                f"{other} and {target} would both be saved as {output / name}: get them into "
                "different directories (-o)"
            )
    banned: set[str] = set()  # (said as they are banned)
    with Client.from_home(_home(home)) as downloader, _failures_said(downloader, banned):
        for target in targets:
            length = downloader.target(target).length
            in_use = len(downloader.fetcher.ordered())
            label = f"get {target} from {in_use} source{'s' if in_use != 1 else ''}"
            verified = [0]  # bytes in place and verified, resumed ones too
            try:
                with progress_bar(label, length) as advance:
                    progress = functools.partial(_counted, verified, None if quiet else advance)
                    result = downloader.download(target, output, progress=progress, replace=replace)
            except BaseException as exc:
                interrupted = isinstance(exc, (KeyboardInterrupt, click.exceptions.Abort)) or (
                    isinstance(exc, BaseExceptionGroup)
                    and exc.subgroup(KeyboardInterrupt) is not None
                )
                part = part_path(output / target.rsplit("/", 1)[-1])
                if own_file(part):  # (none, or one in the way: the error says so)
                    with contextlib.suppress(OSError):
                        stat = part.lstat()  # as long as the artifact, sparse: count its blocks
                        kept = format_size(min(stat.st_blocks * 512, stat.st_size))
                        # (nothing verified: nothing to say. A part file is made at the
                        # first verified chunk; one there before, with none, is left as
                        # it is: it may be the user's, or another run's.)
                        if verified[0]:
                            click.echo(
                                f"{'interrupted' if interrupted else 'failed'}: the chunks "
                                f"verified so far are kept in {part} ({kept} on disk); the same "
                                "command resumes from them (or delete it)",
                                err=True,
                            )
                raise
            used = {name: s.bytes for name, s in result.sources.items() if s.bytes}
            for name, stats in result.sources.items():
                if stats.banned and not stats.left:  # its bytes refused: worth reporting
                    click.echo(f"warning: {name} was banned: {stats.banned}", err=True)
                    banned.add(name)
            if as_json:
                click.echo(
                    json.dumps(
                        {
                            "target": result.target,
                            "path": str(result.path),
                            "length": result.length,
                            "cached": result.cached,
                            "transfer_seconds": round(result.transfer_seconds, 4),
                            "bytes_by_source": used,  # (a chunk manifest's bytes included)
                            "chunks_by_source": {  # (the manifest's, not requests)
                                name: s.pieces for name, s in result.sources.items() if s.pieces
                            },
                            "banned": {
                                name: s.banned
                                for name, s in result.sources.items()
                                if s.banned and not s.left
                            },
                        }
                    )
                )
            elif not quiet:
                how = "already here, verified" if result.cached else _sources_line(used)
                click.echo(f"{result.path}  {format_size(result.length)}  {how}")


@contextlib.contextmanager
def _failures_said(client: Client, banned: Set[str] = frozenset()) -> Iterator[None]:
    """Warn of each source that failed during the command (but those
    ``banned``, said apart): a source that never answers costs every command
    its timeouts, and nothing else would say which."""
    before = {source.url: source.failures for source in client.fetcher.sources}
    said = ""  # (an error naming a source says why already: not said twice)
    try:
        yield
    except TufmeshError as exc:
        said = str(exc)
        raise
    finally:
        for source in client.fetcher.sources:
            failed = source.failures > before.get(source.url, 0) and source.last_error
            if failed and source.url not in banned and f"{source.url}: " not in said:
                click.echo(f"warning: {source.url} failed: {source.last_error}", err=True)


def _counted(total: list[int], advance: Callable[[int], None] | None, n: int) -> None:
    """Add ``n`` bytes to ``total[0]`` and to the progress bar (if shown)."""
    total[0] += n
    if advance is not None:
        advance(n)


def _sources_line(used: dict[str, int]) -> str:
    if not used:
        return "verified (no bytes to fetch)"
    total = sum(used.values())
    parts = [f"{name} {100 * n / total:.0f}%" for name, n in sorted(used.items())]
    return "verified; from " + ", ".join(parts)


@click.command("ls")
@click.argument("project", required=False)
@home_option
def ls(project: str | None, home: Path | None) -> None:
    """List the artifacts the signed metadata knows: path, length, sha256."""
    from tufmesh.origin._names import normalize_project
    from tufmesh.origin._owned import owned_project

    with Client.from_home(_home(home)) as downloader, _failures_said(downloader):
        listed = downloader.artifacts(project)
        lapsed = [p for role in downloader.lapsed if (p := owned_project(role)) is not None]
    for target in listed:
        click.echo(f"{target.path}\t{target.length}\t{target.hashes.get('sha256', '')}")
    for name in lapsed:
        if project is None or normalize_project(project) == name:
            click.echo(
                f"warning: {name} signs its own metadata, and it expired: its artifacts are "
                "not listed until its developers sign it again",
                err=True,
            )
    if not listed:
        where = f" of project {project!r}" if project else ""
        raise NotInMetadataError(f"no artifacts{where} in the signed metadata")
