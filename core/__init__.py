"""tufmesh: a reference community artifact repository.

The components live in subpackages: ``tufmesh.cas`` (the content-addressed blob
store), ``tufmesh.origin`` (the repository service), ``tufmesh.client``,
``tufmesh.mirror``, ``tufmesh.p2p`` and ``tufmesh.netsim``. Every error any of
them raises on purpose derives from :class:`tufmesh.errors.TufmeshError`.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
