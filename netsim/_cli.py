"""``tufmesh netsim``: simulate a release replicating over thousands of mirrors."""

from __future__ import annotations

import contextlib
import functools
import os
import stat
import sys
import time
from importlib import resources
from pathlib import Path

import click

from tufmesh._durable import write_atomic
from tufmesh._ui import SIZE, Finite, Group, check_upload_rate, format_size, progress_bar
from tufmesh.errors import UsageError

__all__ = ["netsim"]


def _shipped() -> dict[str, str]:
    """Scenario files that come with tufmesh, by name."""
    folder = resources.files("tufmesh.netsim") / "scenarios"
    return {
        entry.name.removesuffix(".toml"): entry.read_text()
        for entry in folder.iterdir()
        if entry.name.endswith(".toml")
    }


@click.group(cls=Group)
def netsim() -> None:
    """Simulate the mirror network at internet scale, with the real replication logic."""


@netsim.command("scenarios")
def scenarios() -> None:
    """List the scenarios that come with tufmesh (use them with run --scenario NAME)."""
    for name, text in sorted(_shipped().items()):
        first = next((line for line in text.splitlines() if line.startswith("description")), "")
        description = first.partition("=")[2].strip().strip('"')
        click.echo(f"{name}\t{description}")


def _file_path(ctx: click.Context, param: click.Parameter, value: str | None) -> Path | None:
    """An output file's path; one that ends in a slash names a directory, not
    a file (a Path would drop the slash, and write a file of that name)."""
    if value is not None and value.endswith(("/", os.sep)):
        raise click.BadParameter(f"{value!r} names a directory: give a file's name")
    return None if value is None else Path(value)


@netsim.command("run")
@click.option("--scenario", "scenario_ref", help="A scenario file, or a shipped scenario's name.")
@click.option("--mirrors", type=click.IntRange(1, 100_000), help="Mirrors [default: 100].")
@click.option("--size", type=SIZE, help="Size of the release [default: 64MiB].")
@click.option("--chunk-size", type=SIZE, help="Chunk size [default: 1MiB].")
@click.option(
    "--seed", type=click.IntRange(0), help="Random seed: same seed, same result [default: 1]."
)
@click.option("--links", help="Link profile: homogeneous, datacentre, home, mixed.")
@click.option("--origin-up", type=SIZE, help="The origin's upload, per second.")
@click.option("--degree", type=click.IntRange(1, 64), help="Have-record neighbours [default: 8].")
@click.option("--churn", type=Finite(0, 1),
              help="Chance that an honest mirror leaves once, mid-release.")  # fmt: skip
@click.option("--malicious", type=Finite(0, 0.99), help="Fraction of hostile mirrors.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), callback=_file_path,
              help="Write the result as JSON.")  # fmt: skip
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), callback=_file_path,
              help="Draw the completion-time CDF (PNG, needs matplotlib).")  # fmt: skip
@click.option("--quiet", "-q", is_flag=True, help="No table on standard output.")
def run(
    scenario_ref: str | None,
    json_path: Path | None,
    plot_path: Path | None,
    quiet: bool,
    **settings: object,
) -> None:
    """Run one scenario: flags override the scenario file's settings."""
    from tufmesh.netsim._report import plot, pyplot, table, to_json
    from tufmesh.netsim._scenario import Scenario, load_scenario
    from tufmesh.netsim._sim import simulate

    if scenario_ref is None:
        scenario = Scenario()
    elif Path(scenario_ref).is_file():
        scenario = load_scenario(Path(scenario_ref))
    elif scenario_ref in (shipped := _shipped()):
        folder = resources.files("tufmesh.netsim") / "scenarios"
        with resources.as_file(folder / f"{scenario_ref}.toml") as path:
            scenario = load_scenario(path)
    else:
        names = ", ".join(sorted(shipped))
        raise UsageError(f"no scenario file {scenario_ref!r}, and no shipped one ({names})")
    if settings.get("links") is not None:
        settings["link_classes"] = ()  # a profile named on the command line wins over [[link]]
    try:
        scenario = scenario.replace(**settings)
    except UsageError as exc:
        flags = [name for name, value in settings.items() if value is not None]
        raise _as_flag(exc, flags) from None
    for output in (json_path, plot_path):  # before the run, not after it
        if output is not None:
            _check_output(output)
    if plot_path is not None:
        pyplot()
    started = time.perf_counter()
    honest = scenario.mirrors - scenario.hostile
    with progress_bar("honest mirrors complete", honest, items=True) as advance:
        done = 0

        def progress(completed: int, honest: int) -> None:
            nonlocal done
            advance(completed - done)
            done = completed

        try:
            result = simulate(scenario, progress)
        except MemoryError:
            raise UsageError(
                f"out of memory for {scenario.mirrors:,} mirrors x {scenario.chunks:,} chunks: "
                "a larger chunk size, or fewer mirrors"
            ) from None
    wall = time.perf_counter() - started
    # Each output whole or not at all (the old one kept), the image drawn
    # first; and before the table, which a closed pipe (`| head`) cuts short.
    outputs = [(plot_path, plot(result))] if plot_path is not None else []
    if json_path is not None:
        outputs.insert(0, (json_path, to_json(result).encode()))
    for path, data in outputs:
        _write_output(path, data)
    if not quiet:
        click.echo(table(result), nl=False)
        click.echo(f"simulated in {wall:.1f} s ({result.events} events)")


def _as_flag(exc: UsageError, names: list[str]) -> UsageError:
    """``exc`` naming the setting as the command-line flag that set it, if one
    of ``names`` did ("size must be..." -> "--size must be...")."""
    message = str(exc)
    for name in names:
        if message.startswith(f"{name} "):
            message = f"--{name.replace('_', '-')}{message[len(name) :]}"
    return UsageError(message)


def _check_output(path: Path) -> None:
    """Refuse, before a run, an output ``path`` that cannot be written."""
    if path.name in ("", ".", ".."):
        raise UsageError(f"cannot write {str(path)!r}: it names no file")
    if _own_descriptor(path) is not None:  # /dev/stdout: open already
        return
    if _written_through(path):  # (a pipe, a device)
        if not os.access(path, os.W_OK):
            raise UsageError(f"cannot write {path}: not a file this user may write")
        return
    parent = path.resolve().parent  # (a link to a file: the file's directory)
    if not (parent.is_dir() and os.access(parent, os.W_OK)):
        raise UsageError(f"cannot write {path}: {parent} is not a writable directory")


def _own_descriptor(path: Path) -> int | None:
    """Our standard output or error, if ``path`` names it however it is
    spelt (``/dev/stdout``, ``/proc/self/fd/1``, a link, the file it was
    redirected to): written at that descriptor, not opened again, so that a
    file the shell opened (``>``, ``>>``) keeps its offset and what it held,
    and the table written after does not overwrite the JSON."""
    try:
        target = os.stat(path)
    except OSError:
        return None
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            mine = os.fstat(fd)
            if (mine.st_dev, mine.st_ino) == (target.st_dev, target.st_ino):
                return fd
    return None


def _written_through(path: Path) -> bool:
    """True if ``path`` is, or links to, something other than a file or a
    directory (a pipe, a device): written to, never replaced."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _write_output(path: Path, data: bytes) -> None:
    """Write a result: a file is replaced whole (or kept, on failure), through
    a symbolic link to it; our own stdout is written at its descriptor; a pipe
    or a device is written to."""
    try:
        if (fd := _own_descriptor(path)) is not None:
            if (stream := sys.stdout if fd == 1 else sys.stderr) is not None:
                stream.flush()
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        elif _written_through(path):
            with open(path, "wb") as handle:
                handle.write(data)
        else:
            write_atomic(path.resolve(), data)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None


@netsim.command("validate")
@click.option(
    "--mirrors",
    type=click.IntRange(1, 30),
    default=5,
    show_default=True,
    help="Mirror processes to start (and to simulate).",
)
@click.option("--size", type=SIZE, default="16MiB", show_default=True, help="Size of the release.")
@click.option("--rate", type=SIZE, default="4MiB", show_default=True,
              callback=functools.partial(check_upload_rate, uncapped=False),
              help="Every node's upload cap, per second.")  # fmt: skip
@click.option(
    "--seed",
    type=click.IntRange(0),
    default=1,
    show_default=True,
    help="The simulation's random seed (the real run's graph is drawn with it too).",
)
def validate(mirrors: int, size: int, rate: int, seed: int) -> None:
    """Run a release over real processes on 127.0.0.1 and in the simulator; compare."""
    from tufmesh.netsim._real import matching_scenario, run_real
    from tufmesh.netsim._sim import simulate

    try:  # its checks, before the real run
        scenario = matching_scenario(mirrors, size, rate, seed)
    except UsageError as exc:
        raise _as_flag(exc, ["mirrors", "size", "seed"]) from None
    click.echo(
        f"a release of {format_size(size)} to an origin and {mirrors} mirrors, real processes "
        "on 127.0.0.1, then the same in the simulator...",
        err=True,
    )
    with progress_bar("real mirrors complete", mirrors, items=True) as advance:
        done = 0

        def progress(completed: int, total: int) -> None:
            nonlocal done
            advance(completed - done)
            done = completed

        real = run_real(mirrors, size, rate, seed=seed, progress=progress)
    simulated = simulate(scenario)
    rows = [
        ("every mirror holds it", real.all_done, simulated.all_done, "s"),
        ("first mirror holds it", real.completion[0], simulated.completion[0], "s"),
        ("origin bytes / release", real.origin_bytes / size, simulated.origin_bytes / size, "x"),
    ]
    click.echo(f"{'':<24}{'real':>10}{'simulated':>12}{'difference':>12}")
    for name, measured, predicted, unit in rows:
        diff = (predicted - measured) / measured if measured else 0.0
        click.echo(f"{name:<24}{measured:>9.2f}{unit}{predicted:>11.2f}{unit}{diff:>+12.0%}")
    click.echo(f"lower bound: {simulated.lower_bound:.2f} s")
    click.echo("(the real origin's bytes count its metadata too; the simulated, chunks only)")
