"""The ``tufmesh`` command: one subcommand group per role.

Subcommands are imported when used, not at start-up: ``tufmesh get`` should not
pay for importing the HTTP server stack, nor ``tufmesh cas`` for python-tuf.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from tufmesh import __version__
from tufmesh._ui import Group

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
    "publish": "tufmesh.origin._cli:publish",
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


def main() -> None:
    """Console-script entry point."""
    cli()
