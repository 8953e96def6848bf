"""``tufmesh publish``: upload artifacts to an origin (the developer's side)."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any, Final, NoReturn
from urllib.parse import quote

import httpx

from tufmesh._json import loads
from tufmesh.errors import PublishError, UnansweredError
from tufmesh.origin._names import check_new_filename, normalize_project

__all__ = ["refusal", "status_phrase", "upload"]

#: Uploads wait for the group commit that publishes them (a commit normally
#: takes well under a second), and, past the origin's cap on uploads at once,
#: for their turn with their body unsent: five minutes only bound a stuck origin.
_TIMEOUT = httpx.Timeout(connect=10.0, read=300.0, write=300.0, pool=10.0)
_PIECE = 1 << 20
#: A busy origin (past its cap on uploads at once: a 503) is asked again
#: after the wait it names, up to this many times; so is one whose connection
#: broke mid-upload. Asking again is safe: an upload is idempotent (the same
#: bytes under the same name publish once, and the answer is the same).
RETRIES: Final = 3
_BROKEN_WAIT: Final = 5.0
_LONGEST_WAIT: Final = 60.0
#: Said by a 503 whose upload may be published all the same (the origin's
#: committer stopped before it answered): asked again, the same bytes are
#: answered as published, or published.
OUTCOME_HEADER: Final = "x-tufmesh-outcome"
#: The connection broke after it was made: the origin, or a proxy before it,
#: dropped it (as a busy origin does to a big upload it never read).
_BROKEN: Final = (httpx.WriteError, httpx.ReadError, httpx.RemoteProtocolError)


def _pieces(
    path: Path, size: int, digest: Any, progress: Callable[[int], None] | None
) -> Iterator[bytes]:
    """The ``size`` bytes of ``path``, hashed into ``digest`` as they are read;
    :class:`PublishError` if the file is longer or shorter now (written to
    while it was sent: what the origin got is not what the file holds)."""
    with open(path, "rb") as handle:
        before = os.fstat(handle.fileno())
        left = size
        while True:
            piece = handle.read(min(_PIECE, left)) if left else b""
            left -= len(piece)
            # Checked before the last piece goes: with every byte of its
            # length sent, the origin would publish what it got. Written to in
            # place, its length the same, it has a new modification time.
            resized = (not piece and left) or (not left and handle.read(1))
            if resized or (not left and _changed(before, os.fstat(handle.fileno()))):
                how = f"it is no longer {size:,} bytes" if resized else "written to meanwhile"
                raise PublishError(
                    f"{path.name} changed while it was being sent ({how}); nothing was "
                    "published: send it again once it is written"
                )
            if not piece:
                return
            digest.update(piece)
            if progress is not None:
                progress(len(piece))
            yield piece


def _changed(before: os.stat_result, after: os.stat_result) -> bool:
    """Whether a file was written to between two looks at it."""
    return (before.st_mtime_ns, before.st_ctime_ns, before.st_size) != (
        after.st_mtime_ns,
        after.st_ctime_ns,
        after.st_size,
    )


def upload(
    client: httpx.Client,
    origin: str,
    project: str,
    path: Path,
    token: str,
    *,
    progress: Callable[[int], None] | None = None,
    on_retry: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Upload one file; return the origin's JSON answer or raise :class:`PublishError`.

    ``progress(n)`` is called with each piece sent (negative: what a retry
    sends again); ``on_retry(why)`` before each wait to ask again."""
    filename = check_new_filename(path.name)
    project = normalize_project(project)
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise PublishError(f"cannot read {path}: {exc.strerror}") from None
    url = f"{origin.rstrip('/')}/api/v1/projects/{quote(project)}/files/{quote(filename)}"
    headers = {
        "authorization": f"Bearer {token}",
        "content-length": str(size),
        "content-type": "application/octet-stream",
    }
    retries = 0
    unsure: str | None = None  # why it may be published though no answer said so
    while True:
        sent = 0

        def counted(n: int) -> None:
            nonlocal sent
            sent += n
            if progress is not None:
                progress(n)

        digest = hashlib.sha256()
        try:
            response = client.post(
                url, content=_pieces(path, size, digest, counted), headers=headers,
                timeout=_TIMEOUT,
            )  # fmt: skip
        except _BROKEN as exc:
            if sent == size:  # all of it sent: the origin may have published it
                unsure = f"the connection broke before the origin answered ({exc})"
            if retries == RETRIES:
                _give_up(path, origin, unsure, f"cannot reach {origin}: {exc}")
            wait, why = _BROKEN_WAIT, f"the connection broke mid-upload ({exc})"
        except httpx.HTTPError as exc:
            _give_up(path, origin, unsure, f"cannot reach {origin}: {exc}")
        except OSError as exc:  # reading the file
            raise PublishError(f"cannot read {path}: {exc.strerror or exc}") from None
        else:
            if response.headers.get(OUTCOME_HEADER) == "unknown":
                unsure = refusal(response)
            if response.status_code == 503 and retries == RETRIES:
                _give_up(path, origin, unsure, f"refused by the origin (503): {refusal(response)}")
            if response.status_code != 503:
                answer = _answer(response, path, origin)
                if (answer["sha256"], answer["length"]) != (digest.hexdigest(), size):
                    raise PublishError(
                        f"{path.name}: {origin} answered for other bytes than were sent "
                        f"(sha256 {str(answer['sha256'])[:64]}, {str(answer['length'])[:20]} "
                        f"bytes; sent sha256 {digest.hexdigest()}, {size} bytes): do not trust "
                        "this origin's answer; tell its maintainers"
                    )
                return answer
            wait, why = _retry_after(response), f"busy: {refusal(response)}"
        if progress is not None and sent:
            progress(-sent)
        if on_retry is not None:
            on_retry(f"{path.name}: {why}; asking again in {wait:.0f} s")
        time.sleep(wait)
        retries += 1


def _body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = loads(response.content)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def refusal(response: httpx.Response) -> str:
    """Why the origin refused, in a line: in its own words, or else (a
    server's failure; not an origin's answer: a mirror's 404, a proxy's
    error page) the status's."""
    error = _body(response).get("error")
    if error is not None:
        return " ".join(str(error).split())[:300]
    if response.status_code == 500:  # the server failed, whoever it is: no wrong URL
        return f"{status_phrase(response)} (the server failed: its log may say why)"
    return f"{status_phrase(response)} (not an origin's answer: is --origin the origin's URL?)"


def status_phrase(response: httpx.Response) -> str:
    """The words of a response's status (HTTP/1.1 servers may send none)."""
    try:
        return response.reason_phrase or HTTPStatus(response.status_code).phrase
    except ValueError:  # a status of nobody's
        return "no reason given"


def _retry_after(response: httpx.Response) -> float:
    """The wait a busy answer names (in seconds only), within reason."""
    named = response.headers.get("retry-after", "")
    wait = float(named) if named.isascii() and named.isdigit() else _BROKEN_WAIT
    return min(max(wait, 1.0), _LONGEST_WAIT)


def _give_up(path: Path, origin: str, unsure: str | None, why: str) -> NoReturn:
    """Raise what the last attempt to publish ``path`` came to: it may be
    published if an earlier one was ``unsure`` (:class:`UnansweredError`)."""
    if unsure is not None:
        raise UnansweredError(
            f"{path.name}: sent, but {unsure}; then {why}: it may be published (the same "
            "command again publishes it, or says it is)"
        )
    raise PublishError(f"{path.name}: {why}")


def _answer(response: httpx.Response, path: Path, origin: str) -> dict[str, Any]:
    """The origin's JSON answer to a finished upload, or :class:`PublishError`."""
    body = _body(response)
    # 202: stored, for a claimed project's developers to sign (docs/adr/0022).
    if response.status_code not in (200, 202):
        raise PublishError(
            f"{path.name}: refused by the origin ({response.status_code}): {refusal(response)}"
        )
    expected = {"target", "length", "sha256"} | (
        {"signed_by", "chunk_size"} if "signed_by" in body else {"snapshot_version"}
    )
    if not expected <= body.keys():
        raise PublishError(
            f"{path.name}: {origin} answered, but not as a tufmesh origin does: "
            "is --origin the origin's URL?"
        )
    return body
