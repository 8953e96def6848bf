"""The public surface of each package, pinned: changing it is a decision."""

from __future__ import annotations

import tufmesh.cas
import tufmesh.client
import tufmesh.errors
import tufmesh.origin


def test_cas_public_api() -> None:
    assert tufmesh.cas.__all__ == [
        "DEFAULT_CHUNK_SIZE",
        "MAX_CHUNK_SIZE",
        "BlobStat",
        "BlobStore",
        "BlobWriter",
        "ChunkAssembly",
        "FsckReport",
        "GcReport",
        "Manifest",
        "ManifestBuilder",
        "Scrubber",
        "Source",
        "StoreConfig",
        "build_manifest",
        "cid_from_sha256",
        "cid_of",
        "parse_cid",
    ]
    for name in tufmesh.cas.__all__:
        assert getattr(tufmesh.cas, name) is not None


def test_every_error_is_a_tufmesh_error() -> None:
    for name in tufmesh.errors.__all__:
        assert issubclass(getattr(tufmesh.errors, name), tufmesh.errors.TufmeshError)
    assert tufmesh.errors.__all__ == sorted(tufmesh.errors.__all__)


def test_origin_public_api() -> None:
    assert tufmesh.origin.__all__ == [
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


def test_client_public_api() -> None:
    assert tufmesh.client.__all__ == [
        "ChunkPlan",
        "ChunkScheduler",
        "Client",
        "ClientHome",
        "DownloadResult",
        "FetchConfig",
        "MultiSourceFetcher",
        "Replicating",
        "SchedulerConfig",
        "SourceHealth",
        "SourceStats",
        "chunk_mask",
        "set_bits",
    ]
