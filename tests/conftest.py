from __future__ import annotations

from pathlib import Path

import pytest

from tufmesh.cas import BlobStore


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "store")
