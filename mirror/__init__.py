"""Mirrors: replicate a repository, verifying everything against TUF, and serve it."""

from __future__ import annotations

from tufmesh.mirror._mirror import Mirror, SyncReport
from tufmesh.mirror._server import build_mirror_app, run_mirror

__all__ = ["Mirror", "SyncReport", "build_mirror_app", "run_mirror"]
