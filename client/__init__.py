"""The client: verified, multi-source downloads for end users.

python-tuf's ``Updater`` decides what is trusted; :class:`Client` decides where
bytes come from (every configured source, healthiest first, failing over) and
fetches artifacts in verified chunks from several sources at once.
"""

from __future__ import annotations

from tufmesh.client._client import Client, DownloadResult
from tufmesh.client._download import ChunkPlan, Replicating
from tufmesh.client._fetcher import FetchConfig, MultiSourceFetcher, SourceHealth
from tufmesh.client._home import ClientHome
from tufmesh.client._scheduler import (
    ChunkScheduler,
    SchedulerConfig,
    SourceStats,
    chunk_mask,
    set_bits,
)

__all__ = [
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
