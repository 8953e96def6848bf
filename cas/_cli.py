"""``tufmesh cas``: operate a content-addressed store from the shell."""

from __future__ import annotations

import datetime
import functools
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG
from typing import Concatenate, Final, ParamSpec, TypeVar

import click

from tufmesh._ui import SIZE, Finite, Group, data_home, format_size, progress_bar, stdout_closed
from tufmesh.cas._store import BlobStore
from tufmesh.errors import BlobNotFoundError, CorruptBlobError, UsageError

__all__ = ["cas"]

P = ParamSpec("P")
T = TypeVar("T")


def _file_size(path: str) -> int:
    """The size of regular file ``path``, if this process may read it."""
    try:  # opened, not only stat'ed: a file of mode 000 stats fine
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # (a FIFO: no wait)
        try:
            info = os.fstat(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    if not S_ISREG(info.st_mode):  # a pipe would be read forever, a directory not at all
        raise UsageError(f"cannot read {path}: not a regular file")
    return info.st_size


def _store_path(value: str | None) -> Path | None:
    if value is not None and not value.strip():  # ("$UNSET": it was the directory here)
        raise click.BadParameter("empty: give the store's directory", param_hint="--store")
    return None if value is None else Path(value)


@click.group(cls=Group)
@click.option(
    "--store",
    "store_dir",
    type=click.Path(file_okay=False),
    envvar="TUFMESH_STORE",
    default=None,
    callback=lambda ctx, param, value: _store_path(value),
    help="Store directory [env TUFMESH_STORE; default: the tufmesh data dir's cas/].",
)
@click.pass_context
def cas(ctx: click.Context, store_dir: Path | None) -> None:
    """The content-addressed blob store: put, get, verify, pin, gc."""
    # Opened by the command, once its arguments parsed: `--help` needs no
    # store (a check of the command line for it took a file named -h for it).
    ctx.obj = _StoreAt(store_dir or data_home() / "cas", ctx.invoked_subcommand)


@dataclass(frozen=True)
class _StoreAt:
    """The store a command works on, opened when the command runs."""

    root: Path
    command: str | None

    def open(self) -> BlobStore:
        if stdout_closed() and self.command in _SAYS:
            # (started with it closed, `>&-`: it stored, said nothing, exit 0)
            raise UsageError("no standard output to write the result to")
        root = self.root
        if root.is_dir() and not (root / "blobs").is_dir() and any(root.iterdir()):
            raise UsageError(
                f"{root} is not a blob store (no blobs/ in it): give a store or a new dir"
            )
        if self.command not in ("put", "manifest") and not (root / "blobs").is_dir():
            # Only storing makes a store: a typo in --store made a whole new one,
            # and so did a first `cas ls` (the default store, 1,026 directories).
            raise UsageError(f"no blob store at {root} ('tufmesh cas put' makes one)")
        return BlobStore(root)


def pass_store(command: Callable[Concatenate[BlobStore, P], T]) -> Callable[P, T]:
    """Give ``command`` the store, opened (the group said which)."""

    @functools.wraps(command)
    def with_store(*args: P.args, **kwargs: P.kwargs) -> T:
        where = click.get_current_context().find_object(_StoreAt)
        assert where is not None
        return command(where.open(), *args, **kwargs)

    return with_store


#: The commands whose result is what they print.
_SAYS: Final = frozenset(["put", "manifest", "ls", "stat", "verify", "fsck", "gc"])


def _fsck_again(store: BlobStore) -> str:
    """The command that quarantines what is wrong in ``store`` (the default
    store unless named: the hint, run as said, checked the wrong one)."""
    return f"tufmesh cas --store {shlex.quote(str(store.root))} fsck --quarantine"


@cas.command()
@click.argument("files", nargs=-1, required=True)
@click.pass_obj
def put(where: _StoreAt, files: tuple[str, ...]) -> None:
    """Store FILES; print one CID per line."""
    sizes = [_file_size(path) for path in files]  # all readable before any is stored
    store = where.open()  # (then only: a missing file made an empty store)
    for path, size in zip(files, sizes, strict=True):
        with progress_bar(f"put {Path(path).name}", size) as advance:
            cid = store.put(path, progress=advance)
        click.echo(cid)


@cas.command()
@click.argument("cid")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to this file."
)
@pass_store
def get(store: BlobStore, cid: str, output: Path | None) -> None:
    """Write blob CID, verified, to a file or to stdout.

    A corrupt blob exits non-zero and writes nothing.
    """
    if output is not None:
        with progress_bar(f"get {cid[:16]}…", store.stat(cid).size) as advance:
            store.export(cid, output, progress=advance)
        return
    if stdout_closed():  # started with it closed
        raise UsageError("no standard output to write to: -o FILE")
    if sys.stdout.isatty():  # as curl does: bytes meant for a file, not a screen
        raise UsageError(f"blob {cid} is not for a terminal: -o FILE, or redirect the output")
    store.verify(cid)  # all of it before the first byte goes out
    with store.open(cid, verify=True) as handle:
        out = sys.stdout.buffer
        while chunk := handle.read(4 << 20):
            out.write(chunk)


@cas.command("ls")
@pass_store
def ls_(store: BlobStore) -> None:
    """List blobs: CID, size in bytes, pin sets."""
    holders: dict[str, list[str]] = {}
    for name, cids in store.pins().items():
        for cid in cids:
            holders.setdefault(cid, []).append(name)
    for cid in sorted(store):
        try:
            size = store.stat(cid).size
        except BlobNotFoundError:
            continue  # gone since it was listed (a gc, an fsck, of another process)
        click.echo(f"{cid}\t{size}\t{','.join(sorted(holders.get(cid, [])))}".rstrip())


@cas.command()
@click.argument("cid")
@pass_store
def stat(store: BlobStore, cid: str) -> None:
    """Show a blob's size, time stored and pin sets."""
    info = store.stat(cid)
    when = datetime.datetime.fromtimestamp(info.mtime, datetime.UTC).isoformat(timespec="seconds")
    pinned = sorted(name for name, cids in store.pins().items() if info.cid in cids)
    click.echo(f"cid\t{info.cid}")
    click.echo(f"size\t{info.size} ({format_size(info.size)})")
    click.echo(f"stored\t{when}")
    click.echo(f"pins\t{', '.join(pinned) or '-'}")


@cas.command()
@click.argument("cids", nargs=-1)
@pass_store
def verify(store: BlobStore, cids: tuple[str, ...]) -> None:
    """Check that blobs (default: all) still match their names."""
    bad = missing = 0
    for cid in cids or sorted(store):
        try:
            store.verify(cid)
        except CorruptBlobError:
            bad += 1
            click.echo(f"CORRUPT\t{cid}")
        except BlobNotFoundError:
            if not cids:
                continue  # gone since it was listed (a gc, an fsck, of another process)
            missing += 1
            click.echo(f"MISSING\t{cid}")
        else:
            click.echo(f"ok\t{cid}")
    if bad:
        raise click.ClickException(f"{bad} corrupt blob(s); run '{_fsck_again(store)}'")
    if missing:
        raise click.ClickException(f"{missing} of the blobs named not in the store")


@cas.command()
@click.option(
    "--quarantine", is_flag=True, help="Move corrupt blobs and stray files to quarantine/."
)
@pass_store
def fsck(store: BlobStore, quarantine: bool) -> None:
    """Verify the whole store and report corrupt blobs and stray files."""
    total = sum(_size(store, cid) for cid in store)
    with progress_bar("fsck", total) as advance:
        report = store.fsck(quarantine=quarantine, progress=advance)
    for kind, names in (("CORRUPT", report.corrupt), ("STRAY", report.strays)):
        for name in names:
            moved = " (quarantined)" if name in report.quarantined else ""
            click.echo(f"{kind}\t{name}{moved}")
    click.echo(
        f"checked {report.checked} blobs, {format_size(report.bytes_checked)}: "
        f"{len(report.corrupt)} corrupt, {len(report.strays)} stray"
    )
    if not report.ok:
        if not quarantine:
            click.echo(f"run '{_fsck_again(store)}' to move them aside", err=True)
        raise click.exceptions.Exit(1)


@cas.command()
@click.argument("name")
@click.argument("cids", nargs=-1, required=True)
@pass_store
def pin(store: BlobStore, name: str, cids: tuple[str, ...]) -> None:
    """Add blobs to the pin set NAME; pinned blobs survive gc."""
    store.pin(name, cids)


@cas.command()
@click.argument("name")
@click.argument("cids", nargs=-1)
@pass_store
def unpin(store: BlobStore, name: str, cids: tuple[str, ...]) -> None:
    """Remove blobs (default: all) from the pin set NAME."""
    store.unpin(name, cids or None)


@cas.command()
@click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")
@click.option(
    "--grace",
    type=Finite(min=0, max=10**9),  # (minutes: more overflowed to "inf seconds")
    default=None,
    help="Keep blobs stored in the last N minutes [default: 15].",
)
@pass_store
def gc(store: BlobStore, dry_run: bool, grace: float | None) -> None:
    """Delete blobs that are in no pin set (and older than the grace period)."""
    report = store.gc(dry_run=dry_run, grace_seconds=None if grace is None else grace * 60)
    verb = "would delete" if dry_run else "deleted"
    for cid in report.deleted:
        click.echo(f"{verb}\t{cid}")
    click.echo(
        f"{verb} {len(report.deleted)} blobs, {format_size(report.bytes_freed)}; "
        f"kept {report.kept_pinned} pinned, {report.kept_recent} recent"
    )


@cas.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--chunk-size", type=SIZE, default="1MiB", show_default=True, help="Chunk size.")
@click.pass_obj
def manifest(where: _StoreAt, file: str, chunk_size: int) -> None:
    """Store FILE with its chunk manifest; print the manifest's CID and chunk count."""
    size = _file_size(file)
    store = where.open()  # (then only: a missing file made an empty store)
    with progress_bar(f"chunk {Path(file).name}", size) as advance:
        cid, built = store.put_chunked(file, chunk_size=chunk_size, progress=advance)
    click.echo(f"manifest\t{built.cid}")
    click.echo(f"chunks\t{built.count}")
    click.echo(f"chunk-size\t{built.chunk_size}")
    click.echo(f"blob\t{cid}")


def _size(store: BlobStore, cid: str) -> int:
    """A blob's size; 0 if it went meanwhile (a gc, an fsck of another process)."""
    try:
        return store.stat(cid).size
    except BlobNotFoundError:
        return 0
