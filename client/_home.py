"""The client's home: trusted root, sources, observed source health, metadata cache.

Layout (default ``$TUFMESH_HOME/client`` or the XDG data dir)::

    root.json      the root this client was initialised with (its trust anchor)
    config.toml    sources = ["http://origin...", "http://mirror..."]
    health.json    last observed latency, throughput and failures per source
    metadata/      python-tuf's verified metadata cache
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import tomllib
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import httpx
from tuf.api.metadata import Metadata, Root

from tufmesh._durable import write_atomic
from tufmesh._json import loads
from tufmesh.client._fetcher import SourceHealth
from tufmesh.errors import ClientError, UsageError

__all__ = ["ClientHome", "check_url", "read_root"]


def check_url(url: object) -> str:
    """``url`` without a trailing slash, once checked to be a usable HTTP(S) URL."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise UsageError(f"not an HTTP(S) URL: {url!r}")
    if any(c.isspace() or not c.isprintable() for c in url):  # (a pasted trailing space)
        raise UsageError(f"not a usable URL: {url!r} (a space or a control character in it)")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise UsageError(f"not a usable URL: {url!r} ({exc})") from None
    if not parsed.host or (parsed.port is not None and not 0 < parsed.port < 65536):
        raise UsageError(f"not a usable URL: {url!r} (no host, or a port past 65535)")
    if parsed.userinfo:
        # URLs are shown in messages and metrics, and a mirror tells its
        # neighbours its peers' URLs: a password in one went to anybody.
        raise UsageError(
            f"a URL with a user name or password is refused (the one for {parsed.host})"
        )
    return url.rstrip("/")


def _observed(value: object) -> float | None:
    """``value`` if it is a measure (a finite number, not negative), else None."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) if math.isfinite(value) and value >= 0 else None
    return None


def check_sources(sources: Iterable[object]) -> list[str]:
    """``sources`` as checked URLs (:func:`check_url`), each once, in order."""
    urls = list(dict.fromkeys(check_url(u) for u in sources))
    if not urls:
        raise UsageError("give at least one source (--origin URL)")
    return urls


def read_root(path: Path) -> bytes:
    """The bytes of ``path``, once checked to be root metadata signed by its own keys.

    A first root is trusted on first use (a client's, a mirror's); checking
    at least this catches a wrong, truncated or edited file now, not at the
    first download.
    """
    try:
        data = path.read_bytes()
        root = Metadata[Root].from_bytes(data)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except Exception:  # python-tuf raises several deserialization errors
        raise UsageError(
            f"{path} is not TUF metadata (the repository's 1.root.json, from its maintainers)"
        ) from None
    if not isinstance(root.signed, Root):
        raise UsageError(f"{path} is not root metadata")
    try:
        root.signed.verify_delegate("root", root.signed_bytes, root.signatures)
    except Exception as exc:
        raise UsageError(f"{path} is not signed by its own root keys: {exc}") from None
    return data


#: Files by which a directory is another role's, never a client home: a
#: client's init wrote into it, and the next init with another root cleared
#: its ``metadata/`` (an origin's published metadata, all of it).
_FOREIGN: dict[str, str] = {
    "mirror.json": "a mirror's directory",
    "config.json": "an origin's repository",
    "cas": "a directory holding a blob store",
    "timestamp.json": "a directory of published TUF metadata",
}
#: What a client home holds (the pip proxy's cache too): a directory of these
#: alone is one, even half made (an init cut short) or missing its root.
_OWN: frozenset[str] = frozenset({"root.json", "config.toml", "health.json", "metadata", "proxy"})


def _foreign(path: Path) -> str | None:
    """What ``path`` is, if it is another role's directory."""
    for name, what in _FOREIGN.items():
        if (path / name).exists():
            return what
    return None


class ClientHome:
    """One client's state directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.metadata_dir = path / "metadata"

    @classmethod
    def create(cls, path: Path, root_json: Path, sources: list[str]) -> ClientHome:
        """Initialise a home trusting ``root_json`` and fetching from ``sources``."""
        root_bytes = read_root(root_json)
        urls = check_sources(sources)
        if (what := _foreign(path)) is not None:
            raise UsageError(f"{path} is {what}, not a client home: give --home another directory")
        try:
            stray = path.is_dir() and {p.name for p in path.iterdir()} - _OWN
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
        if stray:
            raise UsageError(
                f"{path} holds other files and no client: give --home a new or empty directory"
            )
        path.mkdir(parents=True, exist_ok=True)
        anchor = path / "root.json"
        if anchor.is_file() and anchor.read_bytes() != root_bytes:
            # Another trust anchor: the metadata cached under the old one
            # (python-tuf trusts its cached root over the bootstrap) must go.
            shutil.rmtree(path / "metadata", ignore_errors=True)
        (path / "metadata").mkdir(exist_ok=True)
        write_atomic(anchor, root_bytes)
        home = cls(path)
        home.save_sources(urls)
        home.save_health([SourceHealth(u) for u in urls])
        return home

    def _require(self) -> None:
        if (what := _foreign(self.path)) is not None:
            raise ClientError(
                f"{self.path} is {what}, not a client home: give --home a client's directory"
            )
        if not (self.path / "root.json").is_file():
            raise ClientError(
                f"no client set up in {self.path}; run 'tufmesh client init ROOT_JSON --origin URL'"
            )

    @property
    def trusted_root(self) -> bytes:
        """The root this client was initialised with, checked to be one (a
        damaged file was taken for every source's bad metadata)."""
        self._require()
        try:
            return read_root(self.path / "root.json")
        except UsageError as exc:
            raise ClientError(
                f"this client's trust anchor is damaged ({exc}): run 'tufmesh client init' "
                "again with the root.json its repository's maintainers publish"
            ) from None

    def sources(self) -> list[str]:
        """Configured source URLs, in configured order."""
        self._require()
        try:
            config = tomllib.loads((self.path / "config.toml").read_text())
            sources = config.get("sources")
            if sources is None:
                raise ValueError("it names no sources ('tufmesh client init' writes them)")
            if not isinstance(sources, list):
                raise ValueError("sources must be a list of URLs")
            return check_sources(sources)  # (each once: a hand-edited list may repeat one)
        except (OSError, ValueError, KeyError, TypeError, UsageError) as exc:
            raise ClientError(f"bad {self.path / 'config.toml'}: {exc}") from None

    def save_sources(self, urls: list[str]) -> None:
        """Write ``config.toml``."""
        body = "# Where this client fetches metadata and artifacts; every byte is verified.\n"
        body += "sources = [\n" + "".join(f"  {json.dumps(u)},\n" for u in urls) + "]\n"
        write_atomic(self.path / "config.toml", body.encode())

    def health(self) -> list[SourceHealth]:
        """Observed health of each configured source: what was observed
        only, each of the right type (a value of another, hand-edited or
        damaged, is left out; where and how a source is asked is never
        taken from this file)."""
        known: dict[str, SourceHealth] = {}
        with contextlib.suppress(OSError, ValueError):  # a hint: losing it costs nothing
            entries = loads((self.path / "health.json").read_text())  # (too deep: ValueError)
            for entry in entries if isinstance(entries, list) else []:
                if isinstance(entry, dict) and isinstance(url := entry.get("url"), str):
                    failures, error = entry.get("failures"), entry.get("last_error")
                    known[url] = SourceHealth(
                        url,
                        latency=_observed(entry.get("latency")),
                        throughput=_observed(entry.get("throughput")),
                        failures=failures if type(failures) is int and failures >= 0 else 0,
                        last_error=error if isinstance(error, str) else None,
                    )
        return [known.get(url, SourceHealth(url)) for url in self.sources()]

    def save_health(self, health: list[SourceHealth]) -> None:
        """Remember what was observed of each source, if the home can be
        written (health is a hint)."""
        observed = ("url", "latency", "throughput", "failures", "last_error")
        entries = [{k: v for k, v in asdict(h).items() if k in observed} for h in health]
        body = json.dumps(entries, indent=1)
        with contextlib.suppress(OSError):
            write_atomic(self.path / "health.json", (body + "\n").encode(), sync_dir=False)
