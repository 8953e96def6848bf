"""``tufmesh-conformance``: the client-under-test CLI of the TUF conformance suite.

Implements ``init``, ``refresh`` and ``download`` as tuf-conformance's
CLIENT-CLI.md defines them, with the same :class:`Client` (fetcher, failover,
verification and download code) as ``tufmesh get``, the given URLs being its
only source. Exit status 0 on success, 1 on any failure.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from urllib.parse import quote

import click

from tufmesh.client._client import Client
from tufmesh.client._fetcher import SourceHealth
from tufmesh.errors import TufmeshError

__all__ = ["main"]


def _client(metadata_dir: Path, metadata_url: str, target_base_url: str | None) -> Client:
    root = (metadata_dir / "root.json").read_bytes()
    source = SourceHealth(
        metadata_url, metadata_url=metadata_url, targets_url=target_base_url or metadata_url
    )
    client = Client(metadata_dir, root, [source])
    client.artifact_paths = False  # any TUF repository's target names
    return client


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
# (needed by every subcommand, and checked there: `SUBCOMMAND --help` needs none)
@click.option("--metadata-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--metadata-url", default=None)
@click.option("--target-name", "target_names", multiple=True)
@click.option("--target-base-url", default=None)
@click.option("--target-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.pass_context
def conformance(
    ctx: click.Context,
    metadata_dir: Path | None,
    metadata_url: str | None,
    target_names: tuple[str, ...],
    target_base_url: str | None,
    target_dir: Path | None,
) -> None:
    """TUF conformance client-under-test."""
    ctx.obj = {
        "metadata_dir": metadata_dir,
        "metadata_url": metadata_url,
        "target_names": target_names,
        "target_base_url": target_base_url,
        "target_dir": target_dir,
    }


@conformance.command()
@click.argument("trusted_root", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_obj
def init(obj: dict[str, object], trusted_root: Path) -> None:
    """Trust TRUSTED_ROOT (no requests are made)."""
    metadata_dir = _metadata_dir(obj)
    metadata_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(trusted_root, metadata_dir / "root.json")


@conformance.command()
@click.pass_obj
def refresh(obj: dict[str, object]) -> None:
    """Update the top-level metadata."""
    with _client(_metadata_dir(obj), _need(obj, "metadata_url"), None) as client:
        client.refresh()


@conformance.command()
@click.pass_obj
def download(obj: dict[str, object]) -> None:
    """Download every --target-name, in order, into --target-dir."""
    target_dir = obj["target_dir"]
    if not isinstance(target_dir, Path):
        raise click.UsageError("download needs --target-dir")
    with _client(
        _metadata_dir(obj),
        _need(obj, "metadata_url"),
        _need(obj, "target_base_url"),
    ) as client:
        for name in obj["target_names"]:  # type: ignore[attr-defined]
            client.download(name, target_dir, filename=quote(name, safe=""))


def _metadata_dir(obj: dict[str, object]) -> Path:
    value = obj["metadata_dir"]
    if not isinstance(value, Path):
        raise click.UsageError("--metadata-dir is required")
    return value


def _need(obj: dict[str, object], key: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise click.UsageError(f"--{key.replace('_', '-')} is required")
    return value


def main() -> None:
    """Console-script entry point: exit 0 on success, 1 on any failure."""
    try:
        conformance(standalone_mode=False)
    except (TufmeshError, OSError, click.ClickException) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:  # any failure of the client is a failed run, exit 1
        click.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
