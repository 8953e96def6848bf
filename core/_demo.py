"""``tufmesh demo``: the main job, shown end to end on this machine.

On 127.0.0.1, in a temporary directory: an origin and three mirrors run as
separate processes (the second mirror knows the first, the third the second,
and they trade chunks with every mirror they meet, the origin serving only
what no mirror holds; the origin announces each new version over libp2p
gossip, which is what makes the mirrors sync); the project's developers
hold its signing key (a claimed project, PEP 480: not even the origin's keys
can publish to it), and an artifact is published, signed with it; once
every mirror holds it, one mirror's copy is corrupted on purpose, and ``tufmesh get`` downloads the
artifact from the three mirrors alone, verifying every chunk: the corrupt
mirror is caught and banned, the bytes come from the honest ones. python-tuf's
stock client then downloads it from a mirror too. Everything is shut down on
exit, also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

import click

from tufmesh._procs import TUFMESH, health, service
from tufmesh._ui import SIZE, format_size, progress_bar
from tufmesh.errors import TufmeshError, UsageError

__all__ = ["demo"]


def _step(text: str) -> None:
    click.secho(f"==> {text}", bold=True)


@click.command()
@click.option("--size", type=SIZE, default="24MiB", show_default=True, help="Artifact size.")
@click.option("--keep", is_flag=True, help="Keep the demo directory instead of deleting it.")
def demo(size: int, keep: bool) -> None:
    """Run an origin, three mirrors and a verified download on this machine."""
    if size < _MIN_SIZE:
        raise UsageError(
            f"--size: the demo takes at least {format_size(_MIN_SIZE)}: eight 1 MiB chunks, "
            "so that the download asks every mirror, the corrupt one too"
        )
    if size > _MAX_SIZE:
        raise UsageError(f"--size: the demo takes at most {format_size(_MAX_SIZE)}")
    work = Path(tempfile.mkdtemp(prefix="tufmesh-demo-"))
    try:
        _run(work, size)
    finally:
        if keep:
            click.echo(f"\nkept {work}")
        else:
            # Not cut short by another Ctrl-C: a half-deleted demo would leave
            # its keys behind.
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                # The origin's committer finishes its last commit after the
                # origin stops: what it writes meanwhile is removed next round.
                for _ in range(50):
                    shutil.rmtree(work, ignore_errors=True)
                    if not work.exists():
                        break
                    time.sleep(0.1)
            finally:
                signal.signal(signal.SIGINT, previous)


#: Eight chunks at least: the download asks each source for two at a time.
_MIN_SIZE: Final = 8 << 20
#: Five copies of it go on disk (the origin, three mirrors, the download).
_MAX_SIZE: Final = 4 << 30


def _write_random(path: Path, size: int) -> None:
    """``size`` reproducible random bytes (16 MiB at a time: one call for
    gigabytes overflows, and would hold them all in memory)."""
    rng = random.Random(2026)  # noqa: S311 - demo data
    with open(path, "wb") as out, progress_bar("    write it", size) as advance:
        for start in range(0, size, 16 << 20):
            piece = rng.randbytes(min(16 << 20, size - start))
            out.write(piece)
            advance(len(piece))


def _run(work: Path, size: int) -> None:
    import httpx
    from tuf.ngclient import Updater

    from tufmesh.cas import BlobStore
    from tufmesh.origin import OriginConfig, OriginRepository, ProjectRegistry, upload
    from tufmesh.origin._developer import (
        claim_request,
        generate_key,
        load_key,
        release,
        target_of,
    )
    from tufmesh.origin._keys import generate_file_key

    _step("create a repository: root, targets, bins -> 16 hash bins, snapshot, timestamp")
    repo = OriginRepository.create(work / "repo", OriginConfig(bins=16))
    token = ProjectRegistry(repo.dir).add("example")
    root = repo.metadata_dir / "1.root.json"
    click.echo(f"    trusted root: {root}")
    _step("project 'example' is claimed for its developers' own key (PEP 480)")
    generate_key(work / "example.pem")
    developer = load_key(str(work / "example.pem"))
    request = claim_request("example", developer.signer, [])
    key = developer.signer.public_key
    repo.claim("example", [key], 1, request.data)
    # The ceremony's last step: the targets version from before the claim,
    # signed by these keys, would otherwise still verify (docs/maintainers.md).
    repo.rotate("targets", [generate_file_key(repo.dir, "targets-2")])
    click.echo(
        f"    targets delegates example/* to key {key.keyid[:12]}, before "
        "the hash bins: the origin's own keys cannot publish to it (and the "
        "targets keys are new, so no targets version from before says otherwise)"
    )

    with contextlib.ExitStack() as stack:
        _step("start the origin and three mirrors, each its own process")
        serve = ["origin", "serve", "--dir", str(repo.dir), "--port", "0", "--p2p-port", "0"]
        logs = work / "logs"  # the services' own messages (kept with --keep)
        logs.mkdir()
        origin = stack.enter_context(service(serve, "origin", logs / "origin.log"))
        p2p = (repo.dir / "p2p.addr").read_text().strip()
        click.echo(f"    origin    {origin}  p2p {p2p}")
        mirrors: list[str] = []
        for n in range(3):
            directory = work / f"mirror-{n + 1}"
            upstream = ["--peer", mirrors[-1]] if mirrors else []
            # Each mirror hears announcements from the one before it (gossip
            # relays them); the 10 s poll is only a fallback.
            args = ["mirror", "run", "--dir", str(directory), "--root", str(root),
                    "--origin", origin, *upstream, "--http-port", "0", "--poll", "10",
                    "--p2p-port", "0", "--bootstrap", p2p]  # fmt: skip
            mirror = service(args, f"mirror {n + 1}", logs / f"mirror-{n + 1}.log")
            mirrors.append(stack.enter_context(mirror))
            p2p = (directory / "p2p.addr").read_text().strip()
            via = f"peer: mirror {n}; origin as the fallback" if n else "origin as the fallback"
            click.echo(f"    mirror {n + 1}  {mirrors[-1]}  ({via})")
        time.sleep(2)  # the gossip mesh forms on 1 s heartbeats

        _step(f"publish a {format_size(size)} artifact, signed with the developers' key")
        artifact = work / "example-1.0.tar.gz"
        _write_random(artifact, size)
        with httpx.Client() as client:
            with progress_bar("    upload it", size, then="sent; the origin stores it") as bar:
                # stored, not published: the developers' signature publishes it
                answer = upload(client, origin, "example", artifact, token, progress=bar)
            adding = [target_of(artifact, "example")]
            sent = release(client, origin, "example", developer, token, add=adding)
        version = int(sent["snapshot_version"])
        click.echo(
            f"    {answer['target']} in {sent['role']} v{sent['version']}, snapshot v{version}, "
            f"cid {answer['cid']}"
        )

        _step("wait until every mirror holds it, verified (announced over libp2p gossip)")
        published_at = time.monotonic()
        deadline = published_at + 120
        said = []
        with progress_bar("    mirrors holding it", len(mirrors), items=True) as holding:
            for n, url in enumerate(mirrors, 1):
                while int(health(url).get("snapshot_version", 0) or 0) < version:
                    if time.monotonic() > deadline:
                        raise TufmeshError(f"mirror {n} did not replicate in time")
                    time.sleep(0.2)
                elapsed = time.monotonic() - published_at
                after = f"{elapsed:.1f} s after publishing"
                said.append(f"    mirror {n} holds snapshot v{version} ({after})")
                holding(1)
        for line in said:
            click.echo(line)

        _step("corrupt mirror 3's copy: a flipped bit in every chunk, as a malicious mirror would")
        blob = BlobStore(work / "mirror-3" / "cas").path(answer["cid"])
        with open(blob, "r+b") as handle:
            for offset in range(min(1000, size - 1), size, 1 << 20):
                handle.seek(offset)
                byte = handle.read(1)
                handle.seek(offset)
                handle.write(bytes([byte[0] ^ 0x01]))

        _step("tufmesh get, from the three mirrors only")
        home = work / "client"
        # The download asks its sources two chunks at a time each, the fastest
        # first: with eight chunks or more (_MIN_SIZE), all three are asked.
        init = ["client", "init", str(root), "--home", str(home), "--origin", mirrors[2]]
        for url in mirrors[:2]:
            init += ["--mirror", url]
        subprocess.run([*TUFMESH, *init], check=True, capture_output=True)
        out = work / "downloads"
        # Its progress bar and warnings to a terminal; its JSON answer to us.
        to_terminal = sys.stderr.isatty()
        got = subprocess.run(
            [*TUFMESH, "get", answer["target"], "-o", str(out), "--home", str(home), "--json"],
            stdout=subprocess.PIPE, stderr=None if to_terminal else subprocess.PIPE, text=True,
        )  # fmt: skip
        if got.returncode != 0:
            raise TufmeshError(f"tufmesh get failed: {(got.stderr or 'as it said').strip()}")
        result = json.loads(got.stdout)
        same = (out / artifact.name).read_bytes() == artifact.read_bytes()
        click.echo(f"    {out / artifact.name}: {'identical' if same else 'DIFFERENT'} bytes")
        for n, url in enumerate(mirrors, 1):
            sent = result["bytes_by_source"].get(url, 0)
            chunks = result["chunks_by_source"].get(url, 0)
            if chunks:
                share = f"{format_size(sent)} ({chunks} chunks)"
            elif sent:  # the manifest, checked against its signed CID
                share = f"no chunk accepted (its chunk manifest, {format_size(sent)}, verified)"
            else:
                share = "no chunk accepted"
            click.echo(f"    from mirror {n}: {share}")
        caught = "bad chunk" in (result["banned"].get(mirrors[2]) or "")
        verdict = "rejected, mirror 3 banned" if caught else "NOT caught"
        click.echo(f"    mirror 3's corrupt chunks: {verdict}")

        _step("python-tuf's stock client downloads it from mirror 2 as well")
        updater = Updater(str(work / "tuf-cache"), f"{mirrors[1]}/metadata/", str(out),
                          f"{mirrors[1]}/targets/", bootstrap=root.read_bytes())  # fmt: skip
        (work / "tuf-cache").mkdir(exist_ok=True)
        updater.refresh()
        info = updater.get_targetinfo(answer["target"])
        stock = (
            info is not None
            and Path(updater.download_target(info, str(out / "stock.tar.gz"))).read_bytes()
            == artifact.read_bytes()
        )
        click.echo(f"    {'verified and identical' if stock else 'FAILED'}")

        served = int(health(origin).get("bytes_served", 0) or 0)
        click.echo(f"\n    the origin served {format_size(served)} in all "
                   f"({served / size:.1f}x the artifact)")  # fmt: skip
        if not (same and caught and stock):
            raise click.ClickException("the demo did not behave as expected")
    click.secho("\ndemo finished: every byte was verified, and the corrupt mirror was caught",
                fg="green")  # fmt: skip
