"""``tufmesh demo``: the main job, shown end to end on this machine.

Today it exercises the content-addressed store: store a file with its chunk
manifest, fetch it back verified, assemble it from shuffled chunks, and catch a
flipped bit. It grows into the full network demo (origin, mirrors, verified
download) as those components land.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import click

from tufmesh._ui import SIZE, format_size
from tufmesh.cas import BlobStore
from tufmesh.errors import ChunkRejectedError, CorruptBlobError

__all__ = ["demo"]


def _step(text: str) -> None:
    click.secho(f"==> {text}", bold=True)


@click.command()
@click.option("--size", type=SIZE, default="24MiB", show_default=True, help="Demo file size.")
@click.option("--keep", is_flag=True, help="Keep the demo directory instead of deleting it.")
def demo(size: int, keep: bool) -> None:
    """Run a short, self-contained demonstration in a temporary directory."""
    work = Path(tempfile.mkdtemp(prefix="tufmesh-demo-"))
    try:
        _run(work, size)
    finally:
        if keep:
            click.echo(f"\nkept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _run(work: Path, size: int) -> None:
    store = BlobStore(work / "cas")
    artifact = work / "example-1.0.tar.gz"
    artifact.write_bytes(random.Random(2026).randbytes(size))  # noqa: S311 - demo data

    _step(f"store a {format_size(size)} artifact with its chunk manifest")
    started = time.perf_counter()
    cid, manifest = store.put_chunked(artifact)
    elapsed = time.perf_counter() - started
    click.echo(f"    blob CID      {cid}")
    click.echo(f"    manifest CID  {manifest.cid}")
    click.echo(
        f"    {manifest.count} chunks of {format_size(manifest.chunk_size)}, "
        f"stored at {format_size(size / max(elapsed, 1e-9))}/s"
    )

    _step("read it back, verified against its CID")
    copy = work / "copy.tar.gz"
    store.export(cid, copy)
    same = copy.read_bytes() == artifact.read_bytes()
    click.echo(f"    {copy.name}: {'identical' if same else 'DIFFERENT'} bytes")

    _step("rebuild it from chunks arriving in random order, each checked on arrival")
    data = artifact.read_bytes()
    order = list(range(manifest.count))
    random.Random(1).shuffle(order)  # noqa: S311 - a repeatable arrival order
    store.delete(cid)
    with store.assemble(store.read_manifest(manifest.cid)) as assembly:
        tampered = bytearray(data[: manifest.chunk_size])
        tampered[7] ^= 0x01
        rejected = 0
        try:
            assembly.add(0, tampered)
        except ChunkRejectedError:
            rejected += 1
        for index in order:
            offset, length = manifest.chunk_span(index)
            assembly.add(index, data[offset : offset + length])
        rebuilt = assembly.commit()
    click.echo(f"    a chunk with one flipped bit: rejected ({rejected} of 1)")
    click.echo(f"    {manifest.count} genuine chunks: accepted, whole blob {rebuilt}")

    _step("flip one bit in the stored blob and try to read it")
    blob_path = store.path(cid)
    with open(blob_path, "r+b") as handle:
        handle.seek(size // 2)
        byte = handle.read(1)
        handle.seek(size // 2)
        handle.write(bytes([byte[0] ^ 0x80]))
    out = work / "should-not-exist"
    try:
        store.export(cid, out)
    except CorruptBlobError as exc:
        click.echo(f"    refused: {exc}")
    click.echo(f"    output file written: {'yes' if out.exists() else 'no'}")
    report = store.fsck(quarantine=True)
    click.echo(f"    fsck: {len(report.corrupt)} corrupt blob quarantined")

    if not same or out.exists() or rebuilt != cid or os.path.exists(blob_path):
        raise click.ClickException("the demo did not behave as expected")
    click.secho("\ndemo finished: every byte was verified", fg="green")
