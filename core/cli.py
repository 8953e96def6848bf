"""The ``tufmesh`` command: one subcommand group per role.

Subcommands are imported when used, not at start-up: ``tufmesh get`` should not
pay for importing the HTTP server stack, nor ``tufmesh cas`` for python-tuf.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import signal
import sys
import threading
from typing import Any, NoReturn

import click

from tufmesh import __version__
from tufmesh._ui import Group, LostOutput

__all__ = ["cli", "main"]

#: name -> "module:attribute" of its click command.
_COMMANDS = {
    "cas": "tufmesh.cas._cli:cas",
    "client": "tufmesh.client._cli:client",
    "demo": "tufmesh._demo:demo",
    "get": "tufmesh.client._cli:get",
    "ls": "tufmesh.client._cli:ls",
    "mirror": "tufmesh.mirror._cli:mirror",
    "netsim": "tufmesh.netsim._cli:netsim",
    "origin": "tufmesh.origin._cli:origin",
    "developer": "tufmesh.origin._developer_cli:developer",
    "publish": "tufmesh.origin._developer_cli:publish",
}


class _LazyGroup(Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = _COMMANDS.get(name)
        if target is None:
            return None
        module, _, attribute = target.partition(":")
        command: Any = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tufmesh")
def cli() -> None:
    """tufmesh: a TUF-secured, content-addressed artifact repository with peer-to-peer mirrors."""


def main() -> NoReturn:
    """Console-script entry point."""
    # SIGTERM (a service manager, `timeout`, `kill`) stops a command as Ctrl-C
    # does: its clean-up runs (the demo's processes and directory, a
    # download's part file). The daemons take it over while they serve.
    signal.signal(signal.SIGTERM, _interrupt)
    # A closed terminal too: the demo's services run in sessions of their own,
    # and the hang-up reaches only the demo, which must stop them.
    signal.signal(signal.SIGHUP, _interrupt)
    if sys.stdout is None:  # started with it closed: what is said there fails the command
        sys.stdout = LostOutput()
    if sys.stderr is None:  # started with it closed (`2>&-`): what is said there goes nowhere
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (for the process's life)
    try:
        # NO_COLOR (no-color.org): click's styles go too, as rich's do.
        code = cli.main(standalone_mode=False, color=False if os.environ.get("NO_COLOR") else None)
    except click.exceptions.Abort:  # Ctrl-C (or SIGTERM): the shell's convention
        click.echo("Aborted!", err=True)
        _leave(130)
    except click.ClickException as exc:
        exc.show()
        _leave(exc.exit_code)
    except SystemExit as exc:
        _leave(exc.code)
    except OSError as exc:  # out of a command's own handling: writing its help failed (full disk)
        with contextlib.suppress(OSError):
            click.echo(f"Error: {exc.strerror or exc}", err=True)
        _leave(1)
    _leave(code if isinstance(code, int) else 0)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _end_now(signum: int, frame: object) -> None:
    os._exit(128 + signum)


def _leave(code: str | int | None) -> NoReturn:
    """Exit with ``code``, skipping the interpreter's teardown when nothing is left to finish.

    Freeing every object of every module one by one takes 30-40 ms once
    trio, python-tuf and cryptography are loaded: a seventh of a small
    ``tufmesh get``. Every command has closed its files and joined its work
    by now; the exit handlers (logging, weak-reference finalizers) still run.
    The exit is the usual one if a thread that must finish is still alive, or
    under a profiler or tracer (they report after the program ends).
    """
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    if any(t.is_alive() and not t.daemon for t in others) or sys.getprofile() or sys.gettrace():
        sys.exit(code)
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    # The command is over: a second signal (`timeout` sends SIGTERM to the
    # process and again to its group; an impatient second Ctrl-C) must not
    # raise inside the exit handlers, which print it as a traceback; it ends
    # the process at once (a handler or a flush may hang: never unkillable).
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _end_now)
    said = _flush()  # what the command said is out, whatever stops the exit handlers
    if isinstance(sys.stdout, LostOutput) and sys.stdout.said:
        with contextlib.suppress(OSError, ValueError):
            print("Error: standard output is closed: what this command said there is lost",
                  file=sys.stderr)  # fmt: skip
        said = False
    atexit._run_exitfuncs()
    if not (_flush() and said):
        code = code or 1
    os._exit(code or 0)


def _flush() -> bool:
    """Flush standard output and error; False if one could not be."""
    flushed = True
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # started with it closed
            continue
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            flushed = False
    return flushed
