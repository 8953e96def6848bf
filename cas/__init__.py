"""The content-addressed blob store of tufmesh.

Blobs are named by CIDv1 (raw codec, SHA-256 multihash, base32); large blobs are
described by chunk manifests of BLAKE3 digests so that chunks can be verified on
arrival from any peer. See :class:`BlobStore` for the durability and
verification guarantees.
"""

from __future__ import annotations

from tufmesh.cas._cid import cid_from_sha256, cid_of, parse_cid
from tufmesh.cas._manifest import (
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    Manifest,
    ManifestBuilder,
    build_manifest,
)
from tufmesh.cas._store import (
    BlobStat,
    BlobStore,
    BlobWriter,
    ChunkAssembly,
    FsckReport,
    GcReport,
    Scrubber,
    Source,
    StoreConfig,
)

__all__ = [
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
