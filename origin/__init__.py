"""The origin: the TUF repository service that developers publish to.

``OriginRepository`` holds the metadata, keys and store of one repository and
publishes batches of artifacts (group commit); ``tufmesh origin serve`` runs
the HTTP service around it; ``upload`` is the developer's side of publishing.
"""

from __future__ import annotations

from tufmesh.origin._config import OriginConfig
from tufmesh.origin._names import check_filename, normalize_project, target_path
from tufmesh.origin._projects import ProjectRegistry
from tufmesh.origin._publish import upload
from tufmesh.origin._repository import Artifact, OriginRepository, RoleStatus
from tufmesh.origin._server import (
    ByteCounter,
    OriginService,
    ServiceConfig,
    build_app,
    serve,
    start_http,
    tree_routes,
)

__all__ = [
    "Artifact",
    "ByteCounter",
    "OriginConfig",
    "OriginRepository",
    "OriginService",
    "ProjectRegistry",
    "RoleStatus",
    "ServiceConfig",
    "build_app",
    "check_filename",
    "normalize_project",
    "serve",
    "start_http",
    "target_path",
    "tree_routes",
    "upload",
]
