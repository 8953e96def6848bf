"""Project and file names: what the origin accepts, and their normal forms.

Project names follow PEP 503/508: letters, digits, ``.``, ``_`` and ``-``,
starting and ending with a letter or digit, compared after normalisation
(lower case, runs of ``._-`` folded to one ``-``). File names are an allowlist,
not a denylist: anything that could escape a directory, confuse a URL or a
shell, or hide in a listing is refused before it reaches the store.
"""

from __future__ import annotations

import re
from typing import Final

from tufmesh.errors import InvalidNameError

__all__ = ["check_filename", "check_new_filename", "normalize_project", "target_path"]

_PROJECT: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_FOLD: Final = re.compile(r"[-_.]+")
#: Letters, digits and the punctuation real distribution names use
#: (``+`` local versions, ``!`` epochs, ``~`` Debian-style suffixes).
_FILENAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~!-]*")
#: Names Windows takes for devices, with any extension ("nul.tar.gz" too).
_DEVICES: Final = frozenset(
    ["CON", "PRN", "AUX", "NUL", *(f"{port}{n}" for port in ("COM", "LPT") for n in range(10))]
)
MAX_PROJECT_LENGTH: Final = 128
#: A published file is linked as ``targets/<project>/<sha256>.<filename>``:
#: 65 bytes of prefix within the 255 bytes a file name may have on Linux,
#: macOS and Windows filesystems.
MAX_FILENAME_BYTES: Final = 190


def normalize_project(name: str) -> str:
    """Return the PEP 503 normal form of a valid project name, or raise."""
    if not name or len(name) > MAX_PROJECT_LENGTH or not _PROJECT.fullmatch(name):
        raise InvalidNameError(
            f"bad project name {name[:80]!r}: use letters, digits, '.', '_' and '-', "
            f"starting and ending with a letter or digit, at most {MAX_PROJECT_LENGTH} characters"
        )
    return _FOLD.sub("-", name).lower()


def check_filename(name: str) -> str:
    """Return ``name`` if it is an acceptable artifact file name, else raise."""
    shown = repr(name[:80])
    if len(name.encode("utf-8", "surrogatepass")) > MAX_FILENAME_BYTES:
        raise InvalidNameError(f"file name {shown}... is over {MAX_FILENAME_BYTES} bytes")
    if any(sep in name for sep in "/\\"):
        raise InvalidNameError(f"file name {shown} contains a path separator")
    if ".." in name:
        raise InvalidNameError(f"file name {shown} contains '..'")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise InvalidNameError(f"file name {shown} contains a control character")
    if not _FILENAME.fullmatch(name):
        raise InvalidNameError(
            f"bad file name {shown}: use letters, digits and . _ + ~ ! -, "
            "starting with a letter or digit"
        )
    if name.lower().endswith(".part"):
        # A download keeps its verified chunks in NAME.part: an artifact of
        # that name would be taken for another's unfinished download.
        raise InvalidNameError(f"file name {shown} ends in '.part', a download's own suffix")
    return name


def check_new_filename(name: str) -> str:
    """:func:`check_filename`, and the rules for a name published from now on
    (names published before them stay readable, served and mirrored: ADR 25)."""
    check_filename(name)
    shown = repr(name[:80])
    if name.endswith("."):
        # Windows drops a trailing dot: "a-1.0.tar.gz." is "a-1.0.tar.gz" there,
        # another artifact's name (as names that differ only in case are).
        raise InvalidNameError(f"file name {shown} ends in '.', which Windows drops")
    if name.split(".", 1)[0].upper() in _DEVICES:
        raise InvalidNameError(
            f"file name {shown} is a device's on Windows (CON, NUL, COM1, ...), whatever "
            "follows its first dot"
        )
    return name


def target_path(project: str, filename: str) -> str:
    """The TUF target path of an artifact: ``<normalised project>/<filename>``."""
    return f"{normalize_project(project)}/{check_filename(filename)}"
