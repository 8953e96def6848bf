"""``tufmesh demo``: the main job, shown end to end on this machine.

It creates a repository, serves it from a separate ``tufmesh origin serve``
process on 127.0.0.1, publishes an artifact through the upload API, downloads
it with python-tuf's stock client (which verifies every signature and hash),
then tampers with the origin's copy and shows that the client refuses it, and
that chunks fetched by range are checked one by one against the signed
manifest. It grows into the full network demo (mirrors, peer-to-peer) as those
components land.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import httpx

from tufmesh._ui import SIZE, format_size
from tufmesh.cas import Manifest
from tufmesh.errors import ChunkRejectedError, TufmeshError

__all__ = ["demo"]


def _step(text: str) -> None:
    click.secho(f"==> {text}", bold=True)


@click.command()
@click.option("--size", type=SIZE, default="24MiB", show_default=True, help="Artifact size.")
@click.option("--keep", is_flag=True, help="Keep the demo directory instead of deleting it.")
def demo(size: int, keep: bool) -> None:
    """Run a self-contained demonstration in a temporary directory."""
    work = Path(tempfile.mkdtemp(prefix="tufmesh-demo-"))
    server: subprocess.Popen[str] | None = None
    try:
        server = _run(work, size)
    finally:
        if server is not None and server.poll() is None:
            server.terminate()
            server.communicate(timeout=30)
        if keep:
            click.echo(f"\nkept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _start_origin(repo: Path) -> tuple[subprocess.Popen[str], str]:
    exe = shutil.which("tufmesh", path=os.path.dirname(sys.executable)) or "tufmesh"
    server = subprocess.Popen(
        [exe, "origin", "serve", "--dir", str(repo), "--port", "0"],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert server.stdout is not None
    line = server.stdout.readline()
    if " on http" not in line:
        server.kill()
        raise TufmeshError("the origin did not start")
    return server, line.rsplit(" on ", 1)[1].strip()


def _run(work: Path, size: int) -> subprocess.Popen[str]:
    from tuf.api.exceptions import LengthOrHashMismatchError
    from tuf.ngclient import Updater

    from tufmesh.origin import OriginConfig, OriginRepository, ProjectRegistry, upload

    _step("create a repository: root, targets, bins -> 16 hash bins, snapshot, timestamp")
    repo = OriginRepository.create(work / "repo", OriginConfig(bins=16))
    token = ProjectRegistry(repo.dir).add("example")
    click.echo(f"    {repo.dir}, trusted root {repo.metadata_dir / '1.root.json'}")

    _step("serve it from its own process")
    server, url = _start_origin(repo.dir)
    click.echo(f"    tufmesh origin serve on {url}")

    _step(f"publish a {format_size(size)} artifact through the upload API")
    artifact = work / "example-1.0.tar.gz"
    artifact.write_bytes(random.Random(2026).randbytes(size))  # noqa: S311 - demo data
    with httpx.Client() as client:
        answer = upload(client, url, "example", artifact, token)
    click.echo(f"    {answer['target']}: snapshot v{answer['snapshot_version']}")
    click.echo(f"    cid {answer['cid']}")
    click.echo(f"    chunk manifest {answer['manifest']}")

    _step("download it with python-tuf's stock client: every signature and hash checked")
    root = (repo.metadata_dir / "1.root.json").read_bytes()
    downloads = work / "downloads"
    downloads.mkdir()

    def updater() -> Updater:
        cache = Path(tempfile.mkdtemp(dir=work))
        return Updater(
            str(cache), f"{url}/metadata/", str(downloads), f"{url}/targets/", bootstrap=root
        )

    client_updater = updater()
    client_updater.refresh()
    info = client_updater.get_targetinfo(answer["target"])
    assert info is not None
    started = time.perf_counter()
    path = Path(client_updater.download_target(info, str(downloads / artifact.name)))
    elapsed = time.perf_counter() - started
    same = path.read_bytes() == artifact.read_bytes()
    rate = format_size(size / max(elapsed, 1e-9))
    click.echo(f"    {path.name}: {'identical' if same else 'DIFFERENT'} bytes, {rate}/s")

    _step("fetch one chunk by range and check it against the signed manifest")
    manifest = Manifest.decode(httpx.get(f"{url}/blobs/{info.custom['manifest']}").content)
    if manifest.cid != info.custom["manifest"]:
        raise TufmeshError("the manifest does not match its signed CID")
    offset, length = manifest.chunk_span(1)
    span = {"range": f"bytes={offset}-{offset + length - 1}"}
    chunk = bytearray(httpx.get(f"{url}/blobs/{info.custom['cid']}", headers=span).content)
    manifest.verify_chunk(1, chunk)
    click.echo(f"    chunk 1 of {manifest.count}: {format_size(length)}, BLAKE3 matches")
    chunk[7] ^= 0x01
    try:
        manifest.verify_chunk(1, chunk)
        click.echo("    a chunk with one flipped bit: ACCEPTED")
        refused_chunk = False
    except ChunkRejectedError:
        click.echo("    a chunk with one flipped bit: rejected")
        refused_chunk = True

    _step("tamper with the origin's copy and download again")
    blob = repo.store.path(info.custom["cid"])
    with open(blob, "r+b") as handle:
        handle.seek(size // 2)
        byte = handle.read(1)
        handle.seek(size // 2)
        handle.write(bytes([byte[0] ^ 0x80]))
    path.unlink()
    tampered_updater = updater()
    tampered_updater.refresh()
    refused = False
    try:
        tampered_updater.download_target(info, str(downloads / artifact.name))
    except LengthOrHashMismatchError as exc:
        refused = True
        click.echo(f"    refused: {exc}")
    written = (downloads / artifact.name).exists()
    click.echo(f"    file written: {'yes' if written else 'no'}")

    if not same or written or not refused or not refused_chunk:
        raise click.ClickException("the demo did not behave as expected")
    click.secho("\ndemo finished: every byte was verified, and tampering was caught", fg="green")
    return server
