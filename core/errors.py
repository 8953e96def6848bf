"""The one exception hierarchy of tufmesh.

Every error that tufmesh raises on purpose is a :class:`TufmeshError`; the CLI
turns each into one line on stderr and a non-zero exit. Anything else that
escapes is a bug.

::

    TufmeshError
     ├── UsageError              bad input from a person: a path, a name, a size
     ├── OriginError             the repository service (tufmesh.origin)
     │    ├── InvalidNameError    a project or file name that is not allowed
     │    ├── ConflictError       a different artifact already has that path
     │    ├── BinFullError        its hash bin is as large as clients accept (HTTP 507)
     │    ├── AuthError           a missing or unknown upload token (HTTP 401)
     │    │    └── ForbiddenError  a token for another project (HTTP 403)
     │    ├── TooLargeError       an upload over the size limit
     │    ├── CommitterGoneError  the committer exited mid-request: it may have published
     │    └── PublishError        an upload the origin refused (seen by `tufmesh publish`)
     │         └── UnansweredError  sent, no answer came: it may be published
     ├── ClientError             the downloader (tufmesh.client)
     │    ├── NotInMetadataError  no such artifact in the signed metadata
     │    ├── MetadataRefusedError  every source's metadata failed TUF (expired: maybe a
     │    │                       freeze attack; older version: a rollback)
     │    └── SourcesFailedError  every source failed; also a tuf DownloadError
     └── StoreError              the content-addressed store (tufmesh.cas)
          ├── InvalidCIDError     not a CIDv1 / raw / sha2-256 identifier
          ├── BlobNotFoundError   no blob under that CID
          ├── DigestMismatchError bytes offered under a CID they do not hash to
          ├── CorruptBlobError    a stored blob no longer matches its name
          ├── ManifestError       a chunk manifest that does not parse or fit
          ├── ChunkRejectedError  a chunk whose digest does not match its manifest
          └── PinError            bad pin-set name, or a pin that would break a rule
"""

from __future__ import annotations

from typing import Any

from tuf.api.exceptions import DownloadError

__all__ = [
    "ArtifactRefusedError",
    "AuthError",
    "BinFullError",
    "BlobNotFoundError",
    "ChunkRejectedError",
    "ClientError",
    "CommitterGoneError",
    "ConflictError",
    "CorruptBlobError",
    "DigestMismatchError",
    "ForbiddenError",
    "InvalidCIDError",
    "InvalidNameError",
    "ManifestError",
    "MetadataRefusedError",
    "NotInMetadataError",
    "OriginError",
    "OwnedMetadataError",
    "PinError",
    "PublishError",
    "SourcesFailedError",
    "StoreError",
    "TooLargeError",
    "TufmeshError",
    "UnansweredError",
    "UsageError",
]


class TufmeshError(Exception):
    """Base of every error tufmesh raises on purpose."""


class UsageError(TufmeshError):
    """Bad input from a person: a missing file, a malformed name or size."""


class StoreError(TufmeshError):
    """An operation on the content-addressed store failed."""


class InvalidCIDError(StoreError, ValueError):
    """A string is not a CID this store can name a blob with."""


class BlobNotFoundError(StoreError, KeyError):
    """No blob is stored under the CID."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "blob not found"


class DigestMismatchError(StoreError):
    """Bytes offered under an expected CID hash to something else; nothing was stored."""


class CorruptBlobError(StoreError):
    """A stored blob's bytes no longer hash to its name (bit rot or tampering)."""


class ManifestError(StoreError, ValueError):
    """A chunk manifest is malformed or does not describe the blob at hand."""


class ChunkRejectedError(StoreError):
    """A chunk does not match the digest its manifest records for that index."""


class PinError(StoreError):
    """A pin-set name is invalid, or pinning would name a blob that is not stored."""


class OriginError(TufmeshError):
    """The repository service refused or failed an operation."""


class CommitterGoneError(OriginError):
    """The committer process exited while it had a request: what it was asked
    may be published (it may have written the new timestamp before it went)."""


class InvalidNameError(OriginError, ValueError):
    """A project or file name that tufmesh does not allow."""


class ConflictError(OriginError):
    """A different artifact is already published under that path; artifacts are immutable."""


class BinFullError(OriginError):
    """The artifact's hash bin is as large as TUF clients accept (``max_bin_bytes``)."""


class QuotaError(OriginError):
    """Publishing the artifact would take its project past its quota (``project_quota``)."""


class ArtifactRefusedError(OriginError):
    """One artifact of a commit does not agree with the store (its blob gone
    meanwhile, its hashes another blob's): said to its uploader, unlike a
    failure of the commit itself, whose reason is the operator's."""


class OwnedMetadataError(OriginError):
    """A project's own signed metadata (docs/adr/0022) that the origin does not
    publish: not signed by the project's keys, another role's, not the next
    version, expired, or naming what the project may not."""


class AuthError(OriginError):
    """A missing or unknown upload token."""


class ForbiddenError(AuthError):
    """A valid upload token, for another project."""


class TooLargeError(OriginError):
    """An upload larger than the origin's size limit."""


class PublishError(OriginError):
    """An upload that the origin refused, as reported to ``tufmesh publish``."""


class UnansweredError(PublishError):
    """Sent, but no answer came (the connection broke after the request
    went out): the origin may have published it."""


class ClientError(TufmeshError):
    """A download could not be completed safely."""


class NotInMetadataError(ClientError):
    """The artifact is not in the signed metadata."""


class MetadataRefusedError(ClientError):
    """No source served metadata that verifies (expired, rolled back, badly signed)."""


class SourcesFailedError(ClientError, DownloadError):
    """Every source failed; the message lists each source's reason."""

    #: What each source did before the download gave up (a chunk download's
    #: ``SourceStats`` by source), for the client's memory of its sources.
    stats: dict[str, Any] | None = None
