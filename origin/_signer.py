"""The committer: the one place that holds the online keys and writes metadata.

``tufmesh origin serve`` runs it as a separate process (privilege separation,
as in OpenSSH): the process that parses HTTP from the internet never holds a
signing key, and signing runs on its own core instead of fighting the HTTP
process for its GIL. The two talk over a pipe in length-prefixed JSON frames,
one request and one answer at a time::

    {"op": "publish", "artifacts": [{...}, ...]}
        -> {"results": [3, {"conflict": "..."}], "state": {...}}
    {"op": "refresh"}
        -> {"refreshed": ["timestamp"], "state": {...}}

Any failure is answered as ``{"error": "..."}``. The committer holds an
exclusive lock on ``REPO/origin.lock`` for its whole life, so two origins can
never write one repository, not even an old committer finishing its last
commit while a restarted origin starts a new one.

:class:`LocalCommitter` runs the same operations in-process (tests, tools).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import signal
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Final, Protocol

import trio

from tufmesh._durable import hold_lock
from tufmesh._json import loads
from tufmesh._ui import log
from tufmesh.errors import (
    ArtifactRefusedError,
    BinFullError,
    CommitterGoneError,
    ConflictError,
    OriginError,
    OwnedMetadataError,
    QuotaError,
)
from tufmesh.origin._repository import Artifact, OriginRepository

__all__ = ["CommitState", "Committer", "LocalCommitter", "SignerProcess", "main"]

RunSync = Callable[..., Awaitable[Any]]
_ENTRY: Final = "from tufmesh.origin._signer import main; main()"
_FRAME: Final = struct.Struct(">I")
#: A batch of 1,000 artifacts is ~500 KiB of JSON; 64 MiB bounds a frame
#: before it is read, far above anything legitimate.
MAX_FRAME: Final = 64 << 20
#: How long a new committer waits for an old one (finishing its last commit
#: after its origin died; a commit of 1,000 uploads takes under a second) to
#: let go of the repository, before saying another origin is serving it.
LOCK_WAIT: Final = 5.0


@dataclass(frozen=True)
class CommitState:
    """What the HTTP side knows of the repository after the latest operation."""

    timestamp_version: int
    snapshot_version: int
    timestamp_expires: datetime
    next_refresh: datetime
    now: datetime
    #: Offline roles near or past their expiry (only a ceremony re-signs them).
    warnings: tuple[str, ...] = ()
    expired: bool = False
    #: Projects that sign their own metadata (docs/adr/0022).
    claimed: tuple[str, ...] = ()

    @classmethod
    def of(cls, repo: OriginRepository) -> CommitState:
        timestamp = repo.timestamp_md.signed
        now = repo.clock()
        warnings, expired = repo.offline_expiry(now)
        warnings += repo.offline_keys_here()
        return cls(
            timestamp_version=timestamp.version,
            snapshot_version=timestamp.snapshot_meta.version,
            timestamp_expires=timestamp.expires,
            next_refresh=repo.next_refresh(),
            now=now,
            warnings=tuple(warnings),
            expired=expired,
            claimed=tuple(sorted(repo.owned())),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            k: v.isoformat() if isinstance(v, datetime) else v
            for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> CommitState:
        dates = ("timestamp_expires", "next_refresh", "now")
        fields: dict[str, Any] = {
            k: datetime.fromisoformat(v) if k in dates else v for k, v in body.items()
        }
        fields["warnings"] = tuple(fields.get("warnings", ()))
        fields["claimed"] = tuple(fields.get("claimed", ()))
        return cls(**fields)


class Committer(Protocol):
    """Publishes batches and refreshes expiring roles, one operation at a time."""

    state: CommitState
    #: Bytes of artifacts of each project a publication has touched since the
    #: start (for the quota's check before an upload is read).
    used: dict[str, int]

    async def publish(self, artifacts: list[Artifact]) -> list[int | OriginError]: ...

    async def refresh(self) -> list[str]: ...

    async def take_owned(
        self, project: str, data: bytes, uploads: dict[str, str | None]
    ) -> tuple[int, int]:
        """Publish a claimed project's own signed metadata, adding only blobs
        of ``uploads`` or of the project (see :meth:`OriginRepository.take_owned`)."""
        ...


class LocalCommitter:
    """Runs the repository in this process; ``run_sync`` runs its blocking work."""

    def __init__(self, repo: OriginRepository, run_sync: RunSync = trio.to_thread.run_sync) -> None:
        self.repo = repo
        self.run_sync = run_sync
        self.state = CommitState.of(repo)
        self.used: dict[str, int] = dict(repo.project_bytes())
        self._lock = trio.Lock()  # one operation at a time, as in the committer process

    async def publish(self, artifacts: list[Artifact]) -> list[int | OriginError]:
        def publish() -> tuple[list[int | OriginError], dict[str, int]]:
            return self.repo.publish(artifacts), _used(self.repo, artifacts)

        async with self._lock:
            done: tuple[list[int | OriginError], dict[str, int]] = await self.run_sync(publish)
            self.state = CommitState.of(self.repo)
        results, used = done
        self.used.update(used)
        return results

    async def refresh(self) -> list[str]:
        async with self._lock:
            refreshed: list[str] = await self.run_sync(self.repo.refresh)
            self.state = CommitState.of(self.repo)
        return refreshed

    async def take_owned(
        self, project: str, data: bytes, uploads: dict[str, str | None]
    ) -> tuple[int, int]:
        def take() -> tuple[tuple[int, int], int]:
            taken = self.repo.take_owned(project, data, uploads)
            return taken, self.repo.project_bytes()[project]

        async with self._lock:
            done: tuple[tuple[int, int], int] = await self.run_sync(take)
            self.state = CommitState.of(self.repo)
        versions, used = done
        self.used[project] = used
        return versions


#: The refusals that cross the pipe as their own kind (the HTTP status differs).
_KINDS: Final[dict[str, type[OriginError]]] = {
    "conflict": ConflictError,
    "bin_full": BinFullError,
    "quota": QuotaError,
    "refused": ArtifactRefusedError,
    "owned": OwnedMetadataError,
}


def _used(repo: OriginRepository, artifacts: list[Artifact]) -> dict[str, int]:
    """The bytes each project of ``artifacts`` now holds."""
    counted = repo.project_bytes()
    return {project: counted[project] for project in {a.path.split("/")[0] for a in artifacts}}


def _result_to_json(result: int | OriginError) -> int | dict[str, str]:
    if isinstance(result, int):
        return result
    kind = next((k for k, cls in _KINDS.items() if isinstance(result, cls)), "error")
    return {kind: str(result)}


def _result_from_json(result: int | dict[str, str]) -> int | OriginError:
    if isinstance(result, int):
        return result
    for kind, cls in _KINDS.items():
        if kind in result:
            return cls(result[kind])
    return OriginError(result["error"])


def _encode(body: dict[str, Any]) -> bytes:
    data = json.dumps(body, separators=(",", ":")).encode()
    return _FRAME.pack(len(data)) + data


def _decode_length(header: bytes) -> int:
    length: int = _FRAME.unpack(header)[0]
    if length > MAX_FRAME:
        raise OriginError(f"committer frame of {length} bytes exceeds {MAX_FRAME}")
    return length


class SignerProcess:
    """The committer in a child process; see the module docstring."""

    def __init__(self, process: trio.Process, state: CommitState) -> None:
        self._process = process
        self.state = state
        self.used: dict[str, int] = {}
        self._lock = trio.Lock()

    @classmethod
    async def start(cls, repo_dir: Path) -> SignerProcess:
        process = await trio.lowlevel.open_process(
            # -I: no current directory, PYTHONPATH or user site on the path of
            # the process that holds the keys; it imports the installed tufmesh.
            [sys.executable, "-I", "-c", _ENTRY, str(repo_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        signer = cls(process, state=None)  # type: ignore[arg-type]
        hello = await signer._receive()
        if "error" in hello:
            await signer.aclose()
            raise OriginError(hello["error"])
        signer.state = CommitState.from_json(hello["state"])
        signer.used = dict(hello.get("used", {}))
        return signer

    async def _receive(self) -> dict[str, Any]:
        stdout = self._process.stdout
        assert stdout is not None
        header = await self._read_exactly(stdout, _FRAME.size)
        body = await self._read_exactly(stdout, _decode_length(header))
        reply: dict[str, Any] = loads(body)
        return reply

    @staticmethod
    async def _read_exactly(stream: trio.abc.ReceiveStream, count: int) -> bytes:
        data = bytearray()
        while len(data) < count:
            chunk = await stream.receive_some(count - len(data))
            if not chunk:  # (asked, and gone before its answer: it may have done it)
                raise CommitterGoneError("the committer process exited; see its error output")
            data += chunk
        return bytes(data)

    async def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        async with self._lock:
            stdin = self._process.stdin
            assert stdin is not None
            try:
                await stdin.send_all(_encode(request))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise OriginError("the committer process exited; see its error output") from None
            reply = await self._receive()
        if "error" in reply:
            raise OriginError(reply["error"])
        self.state = CommitState.from_json(reply["state"])
        return reply

    async def publish(self, artifacts: list[Artifact]) -> list[int | OriginError]:
        request = {"op": "publish", "artifacts": [dataclasses.asdict(a) for a in artifacts]}
        reply = await self._call(request)
        self.used.update(reply.get("used", {}))
        return [_result_from_json(r) for r in reply["results"]]

    async def refresh(self) -> list[str]:
        refreshed: list[str] = (await self._call({"op": "refresh"}))["refreshed"]
        return refreshed

    async def take_owned(
        self, project: str, data: bytes, uploads: dict[str, str | None]
    ) -> tuple[int, int]:
        request = {
            "op": "owned",
            "project": project,
            "data": base64.b64encode(data).decode(),
            "uploads": uploads,
        }
        reply = await self._call(request)
        if "refused" in reply:
            refusal = _result_from_json(reply["refused"])
            assert isinstance(refusal, OriginError)
            raise refusal
        self.used.update(reply.get("used", {}))
        return reply["version"], reply["snapshot_version"]

    async def wait(self) -> int:
        """Wait for the committer to exit; its exit status."""
        code: int = await self._process.wait()
        return code

    async def aclose(self) -> None:
        """Close the pipe; the committer finishes what it is doing and exits."""
        if self._process.stdin is not None:
            await self._process.stdin.aclose()
        with trio.move_on_after(30) as scope:
            await self._process.wait()
        if scope.cancelled_caught:
            self._process.kill()
            await self._process.wait()


def _lock_repository(repo_dir: Path) -> int:
    fd = hold_lock(repo_dir / "origin.lock", wait=LOCK_WAIT)
    if fd is None:
        raise OriginError(f"another origin is serving {repo_dir} (it holds origin.lock)")
    return fd


def _serve_requests(repo: OriginRepository, stdin: BinaryIO, stdout: BinaryIO) -> None:
    def send(body: dict[str, Any]) -> None:
        stdout.write(_encode(body))
        stdout.flush()

    try:
        _answer_requests(repo, stdin, send)
    except BrokenPipeError:
        # The serving process died (killed, out of memory) while we worked:
        # what it asked is done (and published, if it was a commit); a
        # restarted origin reads it from the repository.
        log("origin: committer: the serving process is gone; stopping")
        with contextlib.suppress(OSError):  # (nor a second error as the buffer flushes at exit)
            os.dup2(os.open(os.devnull, os.O_WRONLY), stdout.fileno())


def _answer_requests(
    repo: OriginRepository, stdin: BinaryIO, send: Callable[[dict[str, Any]], None]
) -> None:
    # What each project holds, for its quota from the first upload on (it was
    # known only after a project's next publication: a restarted origin read
    # a whole upload of a project at its quota before refusing it).
    send({"state": CommitState.of(repo).to_json(), "used": dict(repo.project_bytes())})
    while True:
        header = stdin.read(_FRAME.size)
        if len(header) < _FRAME.size:
            return  # the origin closed the pipe (or died): we are done
        try:
            request = loads(stdin.read(_decode_length(header)))
            if request["op"] == "publish":
                artifacts = [Artifact(**a) for a in request["artifacts"]]
                results = repo.publish(artifacts)
                answer: dict[str, Any] = {
                    "results": [_result_to_json(r) for r in results],
                    "used": _used(repo, artifacts),
                }
            elif request["op"] == "refresh":
                answer = {"refreshed": repo.refresh()}
            elif request["op"] == "owned":
                project = request["project"]
                try:
                    version, snapshot = repo.take_owned(
                        project, base64.b64decode(request["data"]), request["uploads"]
                    )
                    answer = {"version": version, "snapshot_version": snapshot}
                except (ConflictError, QuotaError, ArtifactRefusedError, OwnedMetadataError) as exc:
                    answer = {"refused": _result_to_json(exc)}  # the developers' to know
                answer["used"] = {project: repo.project_bytes()[project]}
            else:
                raise OriginError(f"unknown committer operation {request['op']!r}")
            answer["state"] = CommitState.of(repo).to_json()
        except Exception as exc:  # answered, not fatal: the repository reloaded itself
            answer = {"error": f"publishing failed: {exc}"}
        send(answer)


def main() -> None:
    """Entry point of the committer process (``SignerProcess.start`` runs it)."""
    # Ctrl-C at the origin's terminal reaches this process too: the origin
    # stops it by closing the pipe, between two commits.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    repo_dir = Path(sys.argv[1])
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but frames may reach the pipe
    try:
        _lock_repository(repo_dir)
        repo = OriginRepository(repo_dir)
        repo.check_online_keys()
        tidied = repo.tidy()
        if tidied:
            log(
                f"origin: tidied {len(tidied)} target links and pins that the published "
                f"metadata disagreed with ({', '.join(tidied[:3])}"
                f"{', ...' if len(tidied) > 3 else ''})"
            )
    except (OriginError, OSError) as exc:  # a read-only repository, say: one line
        reason = str(exc) if isinstance(exc, OriginError) else f"{exc.strerror}: {exc.filename}"
        stdout.write(_encode({"error": reason}))
        stdout.flush()
        sys.exit(1)
    _serve_requests(repo, stdin, stdout)
