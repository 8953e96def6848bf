"""The ``tufmesh`` command: one subcommand group per role."""

from __future__ import annotations

import click

from tufmesh import __version__
from tufmesh._demo import demo
from tufmesh._ui import Group
from tufmesh.cas._cli import cas
from tufmesh.client._cli import client, get, ls
from tufmesh.origin._cli import origin, publish

__all__ = ["cli", "main"]


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tufmesh")
def cli() -> None:
    """tufmesh: a TUF-secured, content-addressed artifact repository with peer-to-peer mirrors."""


cli.add_command(cas)
cli.add_command(demo)
cli.add_command(origin)
cli.add_command(publish)
cli.add_command(client)
cli.add_command(get)
cli.add_command(ls)


def main() -> None:
    """Console-script entry point."""
    cli()
