"""What a crash test cannot see: the order of fsyncs and renames (a killed
process loses nothing the kernel already holds; a power cut does)."""

from __future__ import annotations

import os

import pytest


def durability_trace(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    """Record every fsync (of the path the descriptor names) and every rename."""
    trace: list[tuple[str, str, str]] = []
    fsync, replace = os.fsync, os.replace

    def traced_fsync(fd: int) -> None:
        trace.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"), ""))
        fsync(fd)

    def traced_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        trace.append(("replace", os.fspath(src), os.fspath(dst)))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", traced_fsync)
    monkeypatch.setattr(os, "replace", traced_replace)
    return trace
