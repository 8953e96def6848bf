"""``tufmesh publish``: upload artifacts to an origin (the developer's side)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from tufmesh.errors import PublishError
from tufmesh.origin._names import check_filename, normalize_project

__all__ = ["upload"]

#: Uploads wait for the group commit that publishes them (a commit normally
#: takes well under a second), and, past the origin's cap on uploads at once,
#: for their turn with their body unsent: five minutes only bound a stuck origin.
_TIMEOUT = httpx.Timeout(connect=10.0, read=300.0, write=300.0, pool=10.0)
_PIECE = 1 << 20


def _pieces(path: Path, progress: Callable[[int], None] | None) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while piece := handle.read(_PIECE):
            if progress is not None:
                progress(len(piece))
            yield piece


def upload(
    client: httpx.Client,
    origin: str,
    project: str,
    path: Path,
    token: str,
    *,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Upload one file; return the origin's JSON answer or raise :class:`PublishError`."""
    filename = check_filename(path.name)
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
    try:
        response = client.post(
            url, content=_pieces(path, progress), headers=headers, timeout=_TIMEOUT
        )
    except httpx.HTTPError as exc:
        raise PublishError(f"{path.name}: cannot reach {origin}: {exc}") from None
    except OSError as exc:  # reading the file
        raise PublishError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        # Not an origin's answer (an HTML error page, say): its status says enough.
        body = {"error": response.reason_phrase or "not a tufmesh answer"}
    if response.status_code != 200:
        reason = " ".join(str(body.get("error", response.reason_phrase)).split())[:300]
        raise PublishError(f"{path.name}: refused by the origin ({response.status_code}): {reason}")
    if not {"target", "length", "sha256", "snapshot_version"} <= body.keys():
        raise PublishError(
            f"{path.name}: {origin} answered, but not as a tufmesh origin does: "
            "is --origin the origin's URL?"
        )
    return body
