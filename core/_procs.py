"""tufmesh services as child processes: the demo's and the real-network runner's."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tufmesh.errors import TufmeshError

__all__ = ["STOP_WITH", "TUFMESH", "health", "service"]

#: The ``tufmesh`` command of this very installation (no PATH lookup).
TUFMESH = [sys.executable, "-c", "from tufmesh.cli import main; main()"]
#: The environment variable naming the process a service stops with (``run_service``).
STOP_WITH = "TUFMESH_STOP_WITH"


@contextlib.contextmanager
def service(args: list[str], what: str, log: Path | None = None) -> Iterator[str]:
    """Start ``tufmesh ARGS`` (a server); yield the URL it prints; stop it on exit.

    Its standard error goes to ``log`` if given (else it is inherited). It runs
    in a session of its own: a Ctrl-C at the terminal reaches the command that
    started it, which stops it (each one also saying "stopped" was noise). It
    also stops by itself if this process goes first (killed, or interrupted
    while starting it)."""
    env = {**os.environ, STOP_WITH: str(os.getpid())}  # see run_service
    with open(log, "w") if log is not None else contextlib.nullcontext() as err:
        proc = subprocess.Popen(
            [*TUFMESH, *args], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
            stderr=err, text=True, start_new_session=True, env=env,
        )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if " on http" not in line:
            detail = f": {log.read_text()[-500:]}" if log is not None else ""
            raise TufmeshError(f"the {what} did not start{detail}")
        yield line.rsplit(" on ", 1)[1].strip()
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def health(url: str) -> dict[str, Any]:
    """A service's ``/healthz`` answer ({} if it does not answer)."""
    import httpx

    try:
        body: dict[str, Any] = httpx.get(f"{url}/healthz", timeout=5).json()
        return body
    except (httpx.HTTPError, ValueError):
        return {}
