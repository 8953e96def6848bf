"""python-tuf's whole-file check over the verified prefix, while chunks land out of order."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest
from tuf.api.exceptions import LengthOrHashMismatchError
from tuf.api.metadata import TargetFile

from tufmesh.client._prefix import VerifiedPrefix, check_alongside


def _fill_out_of_order(path: Path, body: bytes, mark, size: int = 1000) -> None:
    with open(path, "r+b") as handle:
        for offset in reversed(range(0, len(body), size)):  # last chunk first
            handle.seek(offset)
            handle.write(body[offset : offset + size])
            handle.flush()
            mark(offset, min(size, len(body) - offset))


def test_the_check_reads_only_verified_bytes_and_passes(tmp_path: Path) -> None:
    body = os.urandom(10_500)
    part = tmp_path / "a.part"
    part.write_bytes(b"\0" * len(body))  # the download's ftruncate
    info = TargetFile.from_data("p/a", body)
    result = check_alongside(
        info.verify_length_and_hashes, part, len(body),
        lambda mark: _fill_out_of_order(part, body, mark) or "stats",
    )  # fmt: skip
    assert result == "stats"


def test_a_wrong_file_fails_the_check(tmp_path: Path) -> None:
    body = os.urandom(5000)
    part = tmp_path / "a.part"
    part.write_bytes(b"\0" * len(body))
    info = TargetFile.from_data("p/a", body)
    wrong = bytes(b ^ 1 for b in body)
    with pytest.raises(LengthOrHashMismatchError):
        check_alongside(
            info.verify_length_and_hashes, part, len(body),
            lambda mark: _fill_out_of_order(part, wrong, mark),
        )  # fmt: skip


def test_a_failed_download_ends_the_check_instead_of_hanging(tmp_path: Path) -> None:
    part = tmp_path / "a.part"
    part.write_bytes(b"\0" * 3000)
    info = TargetFile.from_data("p/a", b"x" * 3000)

    def download(mark) -> None:
        mark(0, 1000)  # one chunk, then every source fails
        raise RuntimeError("every source failed")

    with pytest.raises(RuntimeError, match="every source failed"):
        check_alongside(info.verify_length_and_hashes, part, 3000, download)


def test_the_reader_waits_for_the_prefix(tmp_path: Path) -> None:
    body = os.urandom(3000)
    part = tmp_path / "a.part"
    part.write_bytes(body)
    reader = VerifiedPrefix(part, len(body))
    digest: list[str] = []
    thread = threading.Thread(
        target=lambda: digest.append(hashlib.file_digest(reader, "sha256").hexdigest())
    )
    thread.start()
    reader.mark(2000, 1000)
    reader.mark(1000, 1000)
    thread.join(0.2)
    assert thread.is_alive()  # chunk 0 is missing: nothing past it is read
    reader.mark(0, 1000)
    thread.join(5)
    assert digest == [hashlib.sha256(body).hexdigest()]
    assert reader.seek(0, 2) == 3000 and reader.tell() == 3000
    reader.close()
