"""Shared command-line plumbing: error reporting, sizes, progress bars.

Every expected error (a :class:`~tufmesh.errors.TufmeshError`) becomes one line
on stderr and exit status 1; click's own usage errors keep exit status 2.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Final

import click

from tufmesh._procs import STOP_WITH
from tufmesh.errors import TufmeshError, UsageError

__all__ = [
    "HOST",
    "LostOutput",
    "stdout_closed",
    "PORT",
    "SIZE",
    "Finite",
    "Group",
    "one_line",
    "data_home",
    "fail_on_errors",
    "check_upload_rate",
    "format_size",
    "log",
    "p2p_line",
    "parse_size",
    "progress_bar",
    "run_service",
    "upload_rate_option",
]

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1 << 10,
    "m": 1000**2, "mb": 1000**2, "mib": 1 << 20,
    "g": 1000**3, "gb": 1000**3, "gib": 1 << 30,
    "t": 1000**4, "tb": 1000**4, "tib": 1 << 40,
    # link rates: bits
    "kbit": 125, "mbit": 125_000, "gbit": 125_000_000,
}  # fmt: skip
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def parse_size(text: str) -> int:
    """Parse ``"1MiB"``, ``"512k"``, ``"1.5GB"`` or ``"4096"`` into bytes."""
    match = _SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise UsageError(f"not a size: {text!r} (try 4096, 512KiB, 1MiB, 2GB, 100Mbit)")
    value = float(match.group(1)) * _UNITS[unit]
    if (value < 1 and value != 0) or (_UNITS[unit] == 1 and value != int(value)):
        raise UsageError(f"not a whole number of bytes: {text!r}")
    return int(value)


class _SizeType(click.ParamType):  # type: ignore[type-arg,unused-ignore]
    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except UsageError as exc:
            self.fail(str(exc), param, ctx)


SIZE = _SizeType()


class Finite(click.FloatRange):
    """A float option within a range, never NaN or infinite: NaN passes every
    range check (it compares false with everything), and a grace period of
    NaN seconds let 'cas gc' delete every unpinned blob, however new."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):  # (before the range: "inf is not in 0<=x<=...")
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


#: A TCP port option (0: any free port).
PORT = click.IntRange(0, 65535)


class _HostType(click.ParamType):  # type: ignore[type-arg,unused-ignore]
    name = "host"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if not text.strip():  # (an unset shell variable): the server would take every address
            self.fail("empty: give an address (0.0.0.0 for every address)", param, ctx)
        return text


#: A ``--host`` to listen on: never empty, which would mean every address.
HOST = _HostType()


def check_upload_rate(
    ctx: click.Context, param: click.Parameter, value: int | None, *, uncapped: bool = True
) -> int | None:
    """An option's upload cap (bytes a second; 0 or None: none, if
    ``uncapped``), if downloads can bear it: one upload at twice the
    downloaders' floor (``slots_within``)."""
    from tufmesh.origin._seeding import MIN_RATE

    if not value and uncapped:
        return value
    if (value or 0) < 2 * MIN_RATE:
        none = ", or 0 for no cap" if uncapped else ""
        raise click.BadParameter(
            f"at least {format_size(2 * MIN_RATE)} a second{none}: every download "
            f"slower than {format_size(MIN_RATE)} a second is given up by its downloader"
        )
    return value


#: The ``--max-upload-rate`` of the origin and of mirrors.
upload_rate_option = click.option(
    "--max-upload-rate",
    type=SIZE,
    default=None,
    callback=check_upload_rate,
    help="Cap on bytes served per second.  [default: none]",
)


def log(line: str) -> None:
    """One line of a service's log on stderr, after the time it happened (UTC,
    to the second): an operator reading the log days later, or beside
    another service's, knows when a sync failed or a peer was banned."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with contextlib.suppress(OSError, ValueError):  # (a full disk, a closed pipe: a log
        print(f"{stamp} {line}", file=sys.stderr, flush=True)  # line never stops a service)


def format_size(size: float) -> str:
    """Human-readable binary size: ``1.5 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """``seconds`` (not negative) as people read it: 42s, 3.5m, 2.0h, 364.9d."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


@contextlib.contextmanager
def fail_on_errors() -> Iterator[None]:
    """Turn expected errors into one clear line and exit status 1."""
    try:
        yield
    except BrokenPipeError:
        # The reader (``| head``) has what it wanted: click's own handling
        # ends the command quietly (status 1), not "Error: Broken pipe".
        raise
    except (TufmeshError, OSError) as exc:
        raise click.ClickException(one_line(exc)) from None
    except BaseExceptionGroup as group:  # raised through a trio nursery
        if group.subgroup(KeyboardInterrupt) is not None:
            raise click.Abort from None  # Ctrl-C: "Aborted!", as anywhere else
        expected, unexpected = group.split((TufmeshError, OSError))
        if expected is None or unexpected is not None:
            raise
        first: BaseException = expected
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise click.ClickException(one_line(first)) from None


def one_line(exc: BaseException) -> str:
    """What to say of an expected error: an OSError (a directory that cannot be
    written, a full disk) by its reason and the file it concerns."""
    if isinstance(exc, OSError) and exc.strerror:
        if exc.filename2:  # a rename, a link
            return f"{exc.strerror}: {exc.filename} -> {exc.filename2}"
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc)


class Group(click.Group):
    """A click group whose commands report :class:`TufmeshError` as one line."""

    def invoke(self, ctx: click.Context) -> Any:
        with fail_on_errors():
            return super().invoke(ctx)


def data_home() -> Path:
    """Where tufmesh keeps state by default: ``$TUFMESH_HOME`` or the XDG data
    dir (a relative ``$XDG_DATA_HOME`` is ignored, as the XDG specification
    says: it would be a new directory wherever a command is run)."""
    if home := os.environ.get("TUFMESH_HOME"):
        return Path(home)
    xdg = os.environ.get("XDG_DATA_HOME", "")
    if not os.path.isabs(xdg):
        xdg = os.path.join(os.path.expanduser("~"), ".local/share")
    return Path(xdg) / "tufmesh"


@contextlib.contextmanager
def progress_bar(
    description: str, total: int | None, *, items: bool = False, then: str | None = None
) -> Iterator[Callable[[int], None]]:
    """Yield an ``advance(n)`` callback that draws a bar on a terminal, else nothing.

    ``n`` counts bytes, or things done (``"37/100"``) with ``items``; ``then``
    is said once all is done (what is awaited next: a full bar that stays is
    no answer)."""
    if not sys.stderr.isatty():
        yield lambda _n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Column
    from rich.text import Text

    class Rate(ProgressColumn):
        """Bytes a second in the units of the sizes beside it (rich's own says MB/s)."""

        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            said = "?" if speed is None else f"{format_size(int(speed))}/s"
            return Text(said, "progress.data.speed")

    columns = (
        (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        if items
        else (  # on a narrow terminal the description is cut, not the figures
            TextColumn("{task.description}", table_column=Column(no_wrap=True, max_width=40)),
            BarColumn(bar_width=20),
            DownloadColumn(binary_units=True, table_column=Column(no_wrap=True)),
            Rate(table_column=Column(no_wrap=True)),
            TimeRemainingColumn(table_column=Column(no_wrap=True)),
        )
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: int) -> None:
            bar.advance(task, n)
            if then is not None and total is not None:
                done = bar.tasks[0].completed >= total
                bar.update(task, description=f"{description}: {then}" if done else description)

        yield advance


def run_service(
    start: Callable[[Callable[[str], None]], Awaitable[None]],
    *,
    banner: Callable[[str], str],
    where: str,
) -> None:
    """Run a server until SIGTERM or Ctrl-C; report start-up failures as one line.

    ``start(ready)`` runs the service and calls ``ready(url)`` once it listens;
    ``banner(url)`` is printed then (tests and the demo read that line).
    """
    import signal

    import trio

    serving = False

    async def main() -> None:
        def ready(url: str) -> None:
            nonlocal serving
            serving = True
            # To stderr if stdout is closed: a service so started is not failed for it.
            click.echo(banner(url), err=stdout_closed())

        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()

                async def stop_with_parent(parent: int) -> None:
                    # Started by a command (the demo) that went first: its
                    # clean-up cannot stop us any more, so we stop.
                    while os.getppid() == parent:
                        await trio.sleep(0.5)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(stop_on_signal)
                parent = os.environ.get(STOP_WITH, "")
                if parent.isdigit():
                    nursery.start_soon(stop_with_parent, int(parent))
                await start(ready)
                nursery.cancel_scope.cancel()

    more_files()
    try:
        trio.run(main)
    except KeyboardInterrupt:
        log("stopped")
    except (OSError, BaseExceptionGroup) as exc:
        if isinstance(exc, BaseExceptionGroup) and exc.subgroup(KeyboardInterrupt) is not None:
            log("stopped")  # Ctrl-C, delivered inside a nursery
            return
        # Binding fails inside the server's nursery, so it arrives grouped.
        failed, _ = exc.split(OSError) if isinstance(exc, BaseExceptionGroup) else (exc, None)
        if failed is None:
            raise
        first: BaseException = failed
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        reason = one_line(first)
        if serving:  # not a failure to listen: a file it could not write, say
            raise TufmeshError(f"stopped: {reason}") from None
        raise TufmeshError(f"cannot serve on {where}: {reason}") from None


#: The open files a service asks for at most (see :func:`more_files`).
MAX_FILES: Final = 1 << 16


def more_files() -> None:
    """Raise this process's soft limit on open files towards its hard limit
    (as Go does for every program), to :data:`MAX_FILES` at most: a service
    holds a socket per connection, and one whose client closed it right after
    an answer can stay held until the idle timeout (30 s; a race in hypercorn
    0.18, for one request in two to fifteen of such clients), so the 1,024 that
    many systems start services with runs out at a few dozen such requests a
    second. Where the limit cannot be raised, it stays."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_FILES)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def p2p_line(directory: Path, p2p_port: int | None) -> str:
    """A second banner line: the libp2p address others ``--bootstrap`` from."""
    if p2p_port is None:
        return ""
    try:
        address = (directory / "p2p.addr").read_text().strip()
    except OSError:
        return ""
    if address.startswith(("/ip4/0.0.0.0/", "/ip6/::/")):  # (bound to every address)
        return f"\nlibp2p {address}  (for --bootstrap, with this host's address for the zeros)"
    return f"\nlibp2p {address}  (for --bootstrap)"


class LostOutput(io.TextIOBase):
    """Standard output, for a process started with it closed (``>&-``): what
    a command says there is lost (counted, not kept), and the command then
    fails (a script that ran `origin project add` so exited 0, its one-time
    token said to nobody)."""

    said = 0  # characters written

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.said += len(text)
        return len(text)


def stdout_closed() -> bool:
    """True if the process started with standard output closed."""
    return sys.stdout is None or isinstance(sys.stdout, LostOutput)
