"""Projects and their upload tokens: ``REPO/projects.json``.

Tokens are 256-bit random strings shown once; only their SHA-256 is stored (a
salt or a slow hash buys nothing for secrets with that much entropy). A token
authorises uploads to exactly one project.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, final

from tufmesh._durable import locked, write_atomic
from tufmesh.errors import AuthError, ForbiddenError, OriginError
from tufmesh.origin._names import normalize_project

__all__ = ["ProjectRegistry"]

_TOKEN_PREFIX: Final = "tufmesh_"  # noqa: S105 - a prefix that makes leaked tokens greppable


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@final
class ProjectRegistry:
    """The registered projects of one repository. Re-reads the file when it changes."""

    def __init__(self, repo: Path) -> None:
        self._path = repo / "projects.json"
        self._stamp: tuple[int, int] | None = None
        self._projects: dict[str, dict[str, Any]] = {}

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            self._stamp, self._projects = None, {}
            return self._projects
        stamp = (st.st_mtime_ns, st.st_ino)
        if stamp != self._stamp:
            try:
                data = json.loads(self._path.read_text())
            except (OSError, ValueError) as exc:
                raise OriginError(f"cannot read {self._path}: {exc}") from None
            projects = data.get("projects") if isinstance(data, dict) else None
            if not isinstance(projects, dict) or not all(
                isinstance(entry, dict) and isinstance(entry.get("token_sha256"), str)
                for entry in projects.values()
            ):
                raise OriginError(
                    f"{self._path} is damaged: expected "
                    '{"projects": {NAME: {"token_sha256": ..., ...}, ...}}'
                )
            self._projects = projects
            self._stamp = stamp
        return self._projects

    @contextlib.contextmanager
    def _editing(self) -> Iterator[dict[str, dict[str, Any]]]:
        """The projects, read afresh and written back, under a lock that two
        maintainers' commands (an add and a token rotation) take in turn."""
        with locked(self._path.with_name("projects.lock")):
            self._stamp = None
            projects = dict(self._load())
            yield projects
            body = json.dumps({"projects": projects}, indent=2, sort_keys=True) + "\n"
            write_atomic(self._path, body.encode())
            self._stamp = None

    def names(self) -> list[str]:
        """Registered project names (normalised), sorted."""
        return sorted(self._load())

    def info(self, name: str) -> dict[str, Any]:
        """What is recorded about a project (creation and rotation times)."""
        project = self._load().get(normalize_project(name))
        if project is None:
            raise OriginError(f"no project {name!r}")
        return {k: v for k, v in project.items() if k != "token_sha256"}

    def add(self, name: str, shown: Callable[[str], None] | None = None) -> str:
        """Register a project; return its new upload token (given first to
        ``shown``: if that raises, nothing is registered)."""
        normal = normalize_project(name)
        with self._editing() as projects:
            if normal in projects:
                raise OriginError(f"project {normal!r} already exists")
            token = _TOKEN_PREFIX + secrets.token_urlsafe(32)
            if shown is not None:
                shown(token)
            now = datetime.now(UTC).isoformat(timespec="seconds")
            projects[normal] = {"token_sha256": _digest(token), "created": now}
        return token

    def rotate(self, name: str, shown: Callable[[str], None] | None = None) -> str:
        """Replace a project's token; the old one stops working at once (the
        new one given first to ``shown``: if that raises, nothing changes)."""
        normal = normalize_project(name)
        with self._editing() as projects:
            if normal not in projects:
                raise OriginError(f"no project {normal!r}")
            token = _TOKEN_PREFIX + secrets.token_urlsafe(32)
            if shown is not None:
                shown(token)
            rotated = datetime.now(UTC).isoformat(timespec="seconds")
            entry = projects[normal] | {"token_sha256": _digest(token), "rotated": rotated}
            projects[normal] = entry
        return token

    def authorize(self, project: str, token: str | None) -> None:
        """Raise unless ``token`` may upload to ``project`` (normalised).

        :class:`AuthError` for a missing or unknown token, :class:`ForbiddenError`
        for a token of another project.
        """
        if not token:
            raise AuthError("missing upload token (Authorization: Bearer <token>)")
        digest = _digest(token)
        owner = None
        for name, entry in self._load().items():
            if hmac.compare_digest(entry["token_sha256"], digest):
                owner = name
        if owner is None:
            raise AuthError("unknown upload token")
        if owner != project:
            raise ForbiddenError(f"this token may upload to {owner!r} only, not to {project!r}")
