from __future__ import annotations

import errno
import math
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.durability import durability_trace
from tufmesh.cas import BlobStore, Scrubber, StoreConfig, cid_of
from tufmesh.errors import (
    BlobNotFoundError,
    CorruptBlobError,
    DigestMismatchError,
    InvalidCIDError,
    ManifestError,
    PinError,
    StoreError,
)

DATA = os.urandom(3 * 1024 * 1024 + 17)
CID = cid_of(DATA)


def corrupt(store: BlobStore, cid: str, offset: int = 100) -> None:
    path = store.path(cid)
    blob = bytearray(path.read_bytes())
    blob[offset % len(blob)] ^= 0x04
    path.write_bytes(blob)


def age(store: BlobStore, cid: str, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(store.path(cid), (old, old))


def test_put_from_bytes_path_and_stream_give_the_same_cid(store: BlobStore, tmp_path: Path) -> None:
    file = tmp_path / "f"
    file.write_bytes(DATA)
    stream = (DATA[i : i + 65536] for i in range(0, len(DATA), 65536))
    assert store.put(DATA) == store.put(file) == store.put(str(file)) == store.put(stream) == CID
    assert list(store) == [CID]
    assert store.read(CID) == DATA


def test_blob_layout_is_sharded_by_cid(store: BlobStore) -> None:
    store.put(DATA)
    assert store.path(CID) == store.root / "blobs" / CID[-3:-1] / CID


def test_has_stat_open_delete(store: BlobStore) -> None:
    assert not store.has(CID)
    assert CID not in store
    store.put(DATA)
    assert store.has(CID)
    assert CID in store
    info = store.stat(CID)
    assert (info.cid, info.size) == (CID, len(DATA))
    assert abs(info.mtime - time.time()) < 60
    with store.open(CID) as handle:
        assert handle.read(5) == DATA[:5]
    store.delete(CID)
    assert not store.has(CID)
    with pytest.raises(BlobNotFoundError, match="no blob"):
        store.delete(CID)


@pytest.mark.parametrize("op", ["stat", "read", "verify", "open", "path", "delete"])
def test_unknown_blob_raises_not_found(store: BlobStore, op: str) -> None:
    with pytest.raises(BlobNotFoundError, match=CID):
        getattr(store, op)(CID)


@pytest.mark.parametrize("op", ["has", "stat", "read", "verify", "open", "delete"])
def test_malformed_cid_raises_invalid_cid(store: BlobStore, op: str) -> None:
    with pytest.raises(InvalidCIDError):
        getattr(store, op)("not-a-cid")


def test_put_with_expected_cid(store: BlobStore) -> None:
    assert store.put(DATA, expect=CID) == CID
    other = cid_of(b"other")
    with pytest.raises(DigestMismatchError, match=other):
        store.put(b"not other", expect=other)
    assert list(store) == [CID]
    assert list((store.root / "tmp").iterdir()) == []


def test_put_of_missing_file_is_a_store_error(store: BlobStore, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot read"):
        store.put(tmp_path / "missing")
    assert list((store.root / "tmp").iterdir()) == []


def test_put_chunked_stores_blob_and_manifest(store: BlobStore) -> None:
    cid, manifest = store.put_chunked(DATA, chunk_size=1 << 20)
    assert cid == CID == manifest.blob_cid
    assert manifest.count == 4
    assert store.read_manifest(manifest.cid) == manifest
    assert sorted(store) == sorted([CID, manifest.cid])


def test_a_stored_blobs_manifest_is_built_from_its_bytes_on_disk(store: BlobStore) -> None:
    data = os.urandom(5000)
    cid, manifest = store.put_chunked(data, chunk_size=1024)
    assert store.manifest_of(cid, 1024) == manifest
    assert store.manifest_of(cid, 4096) == store.put_chunked(data, chunk_size=4096)[1]
    store.path(cid).chmod(0o644)
    with open(store.path(cid), "r+b") as handle:  # a bit gone bad in chunk 2
        handle.seek(2500)
        handle.write(bytes([data[2500] ^ 1]))
    bad = store.manifest_of(cid, 1024)
    assert bad.digests[2] != manifest.digests[2] and bad.sha256 != manifest.sha256
    assert bad.digests[:2] + bad.digests[3:] == manifest.digests[:2] + manifest.digests[3:]


def test_put_chunked_stores_only_manifests_it_reads_back(store: BlobStore) -> None:
    """put_chunked says the manifest is stored: an empty blob's was not (its
    CID named nothing), and one past MAX_MANIFEST_CHUNKS was stored and its
    CID returned, then refused by read_manifest (and built chunk by chunk in
    memory meanwhile)."""
    from tufmesh.cas._manifest import MAX_MANIFEST_CHUNKS

    _, empty = store.put_chunked(b"")
    assert empty.count == 0 and store.read_manifest(empty.cid) == empty
    _, most = store.put_chunked(bytes(MAX_MANIFEST_CHUNKS), chunk_size=1)
    assert store.read_manifest(most.cid).count == MAX_MANIFEST_CHUNKS
    held = set(store)
    with pytest.raises(ManifestError, match="larger chunk size"):
        store.put_chunked(bytes(MAX_MANIFEST_CHUNKS + 1), chunk_size=1)
    assert set(store) == held and list((store.root / "tmp").iterdir()) == []


@pytest.mark.parametrize("failing", ["fsync", "replace", "write"])
def test_io_failure_during_put_stores_nothing(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EIO, "injected I/O error")

    monkeypatch.setattr(os, failing, fail)
    with pytest.raises(OSError, match="injected"):
        store.put(DATA)
    monkeypatch.undo()
    assert list(store) == []
    assert list((store.root / "tmp").iterdir()) == []
    assert store.put(DATA) == CID  # and an honest put works afterwards


def test_verify_and_verified_reads_detect_corruption(store: BlobStore, tmp_path: Path) -> None:
    store.put(DATA)
    store.verify(CID)
    corrupt(store, CID, offset=len(DATA) - 1)
    with pytest.raises(CorruptBlobError, match=CID):
        store.verify(CID)
    with pytest.raises(CorruptBlobError):
        store.read(CID)
    with pytest.raises(CorruptBlobError), store.open(CID, verify=True) as handle:
        while handle.read(65536):
            pass
    out = tmp_path / "out"
    with pytest.raises(CorruptBlobError, match="nothing written"):
        store.export(CID, out)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
    # Unverified access still exists for serving to peers that verify.
    assert len(store.read(CID, verify=False)) == len(DATA)


def test_verified_reader_passes_good_blob(store: BlobStore) -> None:
    store.put(DATA)
    with store.open(CID, verify=True) as handle:
        assert handle.read() == DATA
    buf = bytearray(len(DATA) + 1)
    with store.open(CID, verify=True) as handle:
        n = handle.readinto(buf)
        assert handle.readinto(buf) == 0
    assert buf[:n] == DATA


def test_empty_reads_are_not_the_end_and_a_corrupt_blob_stays_corrupt(store: BlobStore) -> None:
    store.put(DATA)
    with store.open(CID, verify=True) as handle:
        assert handle.read(0) == b"" and handle.readinto(bytearray()) == 0
        assert handle.read() == DATA  # the check at the end passes
    corrupt(store, CID, offset=0)
    with store.open(CID, verify=True) as handle:
        assert handle.read(0) == b""
        with pytest.raises(CorruptBlobError):
            while handle.read(65536):
                pass
        with pytest.raises(CorruptBlobError):  # caught, read on: still corrupt
            handle.read(1)


def test_a_verified_read_of_exactly_the_blobs_length_is_checked(store: BlobStore) -> None:
    """A caller that reads the blob's length and stops never sees the end: the
    read that reaches the length is the one checked."""
    store.put(DATA)
    with store.open(CID, verify=True) as handle:
        assert handle.read(len(DATA)) == DATA
    corrupt(store, CID, offset=5)
    with store.open(CID, verify=True) as handle:
        assert len(handle.read(len(DATA) - 1)) == len(DATA) - 1
        with pytest.raises(CorruptBlobError):
            handle.read(1)
    with store.open(CID, verify=True) as handle, pytest.raises(CorruptBlobError):
        handle.readinto(bytearray(len(DATA)))
    # Bytes appended since the blob was opened are checked at the end too.
    store.put(DATA)  # heals the copy
    with store.open(CID, verify=True) as handle:
        assert handle.read(len(DATA)) == DATA
        with open(store.path(CID), "ab") as grow:
            grow.write(b"tail")
        with pytest.raises(CorruptBlobError):
            while handle.read(65536):
                pass
    store.put(DATA)
    with store.open(CID, verify=True) as handle:  # the same, read to the end at once
        assert handle.read(len(DATA)) == DATA
        with open(store.path(CID), "ab") as grow:
            grow.write(b"EVIL")
        with pytest.raises(CorruptBlobError):
            handle.read()


def test_put_heals_a_corrupt_copy(store: BlobStore) -> None:
    store.put(DATA)
    corrupt(store, CID)
    store.put(DATA)
    store.verify(CID)


def test_a_linked_intact_copy_is_kept_and_a_corrupt_one_healed(
    store: BlobStore, tmp_path: Path
) -> None:
    """Storing bytes held already replaced the file: a published artifact's
    hard link (the origin's targets/, a mirror's tree) was broken at each
    upload of the same bytes, and relinked at the next start."""
    cid = store.put(DATA)
    link = tmp_path / "link"
    os.link(store.path(cid), link)
    old = time.time() - 3600
    os.utime(store.path(cid), (old, old))
    assert store.put(DATA) == cid
    assert os.path.samefile(link, store.path(cid))  # the same file, still linked
    assert store.path(cid).stat().st_mtime > old + 1800  # ...its age starting now
    store.path(cid).chmod(0o644)
    with open(store.path(cid), "r+b") as handle:  # gone bad on disk
        handle.write(b"X")
    store.put(DATA)
    assert not os.path.samefile(link, store.path(cid)) and store.read(cid) == DATA


def test_fsck_reports_and_quarantines(store: BlobStore) -> None:
    good = store.put(b"good")
    store.put(DATA)
    corrupt(store, CID)
    (store.root / "blobs" / "zz").mkdir(exist_ok=True)
    (store.root / "blobs" / "zz" / "junk").write_bytes(b"x")
    report = store.fsck()
    assert report.checked == 2
    assert report.corrupt == [CID]
    assert report.strays == ["blobs/zz/junk"]
    assert not report.ok
    assert store.has(CID)
    (store.root / "blobs" / "yy").mkdir(exist_ok=True)
    (store.root / "blobs" / "yy" / "junk").write_bytes(b"y")  # the same name: both kept
    report = store.fsck(quarantine=True)
    assert report.quarantined == [CID, "blobs/yy/junk", "blobs/zz/junk"]  # strays too
    assert len(list((store.root / "quarantine").iterdir())) == 3
    assert not store.has(CID)
    assert store.has(good)
    assert store.fsck().ok


def test_one_blob_is_checked_and_quarantined_if_corrupt(store: BlobStore) -> None:
    good = store.put(b"good")
    store.put(DATA)
    assert not store.quarantine_if_corrupt(CID) and store.has(CID)
    corrupt(store, CID)
    assert store.quarantine_if_corrupt(CID) and not store.has(CID)
    assert not store.quarantine_if_corrupt(CID)  # gone: nothing to do
    assert not store.quarantine_if_corrupt(good) and store.has(good)
    assert len(list((store.root / "quarantine").iterdir())) == 1


def test_gc_refuses_a_grace_period_that_is_no_number(store: BlobStore) -> None:
    store.put(DATA)
    for grace in (math.nan, math.inf, -1.0):
        with pytest.raises(StoreError, match="grace period"):
            store.gc(grace_seconds=grace)
    assert store.has(CID)


def test_a_scrubber_checks_a_little_at_a_time_pass_after_pass(store: BlobStore) -> None:
    blobs = sorted(store.put(bytes([i]) * 1000) for i in range(3))
    scrubber = Scrubber(store)
    assert scrubber.step(1500) == ([], 2000)  # two blobs, checked whole
    corrupt(store, blobs[0])  # checked already in this pass: found in the next
    assert scrubber.step(1500) == ([blobs[0]], 2000)  # the third, then the next pass
    assert not store.has(blobs[0]) and store.has(blobs[1])
    # The rest of that pass, then at most one whole pass more.
    assert scrubber.step(10_000) == ([], 4000)


def test_a_blob_that_cannot_be_read_is_quarantined_too(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad sector (EIO on read) is as good as corrupt: a mirror's scrub
    that let the error through stopped the whole daemon."""
    import builtins
    import errno

    store.put(DATA)
    bad = store.path(CID)
    real_open = builtins.open

    failure = errno.EMFILE

    def failing_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(file) == bad:
            raise OSError(failure, os.strerror(failure), str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", failing_open)
    # Too many open files says nothing of the blob: it stays (the origin's
    # copy is the only one), and a scrub passes over it for now.
    with pytest.raises(OSError, match="Too many open files"):
        store.quarantine_if_corrupt(CID)
    assert Scrubber(store).step(1 << 20) == ([], len(DATA)) and store.has(CID)
    failure = errno.EIO
    assert store.quarantine_if_corrupt(CID) and not store.has(CID)


def test_fsck_does_not_quarantine_a_copy_stored_again_while_it_looked(store: BlobStore) -> None:
    """A put of the same bytes between fsck's hash and its move heals the blob:
    fsck moved whatever was at the name by then, the good copy."""
    store.put(DATA)
    corrupt(store, CID)

    def stored_again(_n: int) -> None:
        if store.path(CID).read_bytes() != DATA:
            store.put(DATA)  # another writer heals it mid-check

    report = store.fsck(quarantine=True, progress=stored_again)
    assert report.corrupt == [CID] and report.quarantined == []
    store.verify(CID)
    assert not list((store.root / "quarantine").iterdir())


def test_a_blob_deleted_while_it_is_read_is_not_found_not_an_oserror(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gc or fsck removing a blob between the look and the open let a bare
    FileNotFoundError out, and one such blob stopped a whole fsck."""
    store.put(DATA)
    real = BlobStore._existing

    def then_gone(self: BlobStore, cid: str) -> tuple[str, Path]:
        found = real(self, cid)
        found[1].unlink()
        return found

    monkeypatch.setattr(BlobStore, "_existing", then_gone)
    for read in (store.read, store.verify):
        store.put(DATA)
        with pytest.raises(BlobNotFoundError):
            read(CID)
    store.put(DATA)
    assert store.fsck().checked == 0  # gone meanwhile: skipped, not a crash


def test_a_manifest_too_big_to_be_one_is_refused_unread(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any blob's CID may be named as a manifest (the committer reads the one
    an upload names): a release of gigabytes was read into memory whole."""
    big = store.put(bytes(9 << 20))
    monkeypatch.setattr(store, "read", lambda *args, **kwargs: pytest.fail("read whole"))
    with pytest.raises(ManifestError, match="exceeds the 8388608-byte limit"):
        store.read_manifest(big)


def test_read_range_past_any_file_is_none(store: BlobStore) -> None:
    store.put(DATA)
    assert store.read_range(CID, 1 << 63, 10) is None  # os.pread: OverflowError
    assert store.read_range(CID, -1, 10) is None
    assert store.read_range(CID, 0, 10) == DATA[:10]


def test_leftover_temp_files_are_removed_on_open(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    (store.root / "tmp" / "put-1-dead").write_bytes(b"partial")
    assert BlobStore(tmp_path).root == store.root
    assert list((tmp_path / "tmp").iterdir()) == []


def test_live_writers_temp_file_survives_another_open(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)

    def stream() -> object:
        yield b"first half "
        # Another process (here: another store object) opens the store mid-put.
        assert BlobStore(tmp_path).remove_leftovers() == []
        yield b"second half"

    assert store.read(store.put(stream())) == b"first half second half"


def test_pins(store: BlobStore) -> None:
    a, b = store.put(b"a"), store.put(b"b")
    store.pin("snapshot-1", [a, b])
    store.pin("project:foo", [a])
    assert store.pins() == {"snapshot-1": {a, b}, "project:foo": {a}}
    store.unpin("snapshot-1", [b])
    assert store.pins()["snapshot-1"] == {a}
    store.unpin("project:foo")
    assert "project:foo" not in store.pins()
    with pytest.raises(PinError, match="no pin set"):
        store.unpin("project:foo")
    with pytest.raises(InvalidCIDError):  # checked before any is unpinned
        store.unpin("snapshot-1", [a, "not-a-cid"])
    assert store.pins()["snapshot-1"] == {a}
    with pytest.raises(BlobNotFoundError, match="cannot pin"):
        store.pin("x", [cid_of(b"absent")])
    for bad in ["", ".hidden", "a/b", "-x", "x" * 201, "a b"]:
        with pytest.raises(PinError, match="bad pin-set name"):
            store.pin(bad, [a])


def test_pinned_blob_cannot_be_deleted(store: BlobStore) -> None:
    a = store.put(b"a")
    store.pin("keep", [a])
    with pytest.raises(PinError, match="pinned by keep"):
        store.delete(a)
    assert store.has(a)


def test_gc_deletes_only_unpinned_blobs_past_grace(store: BlobStore) -> None:
    pinned, old, recent = store.put(b"pinned"), store.put(b"old"), store.put(b"recent")
    store.pin("keep", [pinned])
    age(store, pinned, 3600)
    age(store, old, 3600)
    dry = store.gc(dry_run=True)
    assert (dry.deleted, dry.kept_pinned, dry.kept_recent) == ([old], 1, 1)
    assert store.has(old)
    report = store.gc()
    assert report.deleted == [old] and report.bytes_freed == 3
    assert sorted(store) == sorted([pinned, recent])
    assert store.gc(grace_seconds=0).deleted == [recent]
    assert list(store) == [pinned]


def test_second_put_of_old_blob_restarts_its_grace_period(store: BlobStore) -> None:
    cid = store.put(b"blob")
    age(store, cid, 3600)
    store.put(b"blob")
    assert store.gc().deleted == []


def test_config_without_fsync_still_works(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, StoreConfig(fsync=False, buffer_size=7))
    assert store.read(store.put(DATA[:1000])) == DATA[:1000]


def test_unopenable_store_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StoreError, match="cannot open store"):
        BlobStore(tmp_path / "file" / "store")


def test_writer_streams_pieces_and_stores_only_on_commit(store: BlobStore) -> None:
    with store.writer(chunk_size=1 << 20) as writer:
        for offset in range(0, len(DATA), 100_000):
            writer.write(DATA[offset : offset + 100_000])
        assert writer.size == len(DATA)
        assert list(store) == []  # nothing under a name before commit
        cid, manifest = writer.commit()
    assert cid == CID and manifest is not None and store.has(manifest.cid)
    with store.writer() as writer:
        writer.write(b"abandoned")
    assert set(store) == {CID, manifest.cid}
    assert list((store.root / "tmp").iterdir()) == []
    with store.writer(chunk_size=1 << 20) as writer:
        writer.write(b"small")
        cid, manifest = writer.commit(min_manifest_chunks=2)
    assert manifest is not None and manifest.count == 1 and not store.has(manifest.cid)
    with pytest.raises(StoreError, match="closed"):
        writer.write(b"more")


@pytest.mark.parametrize("how", ["put", "assemble"])
def test_a_blobs_bytes_are_durable_before_its_name_and_its_name_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The ordering a crash test cannot see (a killed process loses nothing
    the kernel holds): fsync the file, rename it, fsync its directory."""
    from tufmesh.cas import build_manifest

    store = BlobStore(tmp_path / "store")
    data = os.urandom(3 * 4096 + 5)
    trace = durability_trace(monkeypatch)
    if how == "put":
        cid = store.put(data)
    else:
        chunks = [data[i : i + 4096] for i in range(0, len(data), 4096)]
        with store.assemble(build_manifest(chunks, chunk_size=4096)) as assembly:
            for index in reversed(range(len(chunks))):
                assembly.add(index, chunks[index])
            cid = assembly.commit()
    final = str(store.path(cid))
    (renamed,) = [i for i, (op, _, dst) in enumerate(trace) if op == "replace" and dst == final]
    temporary = trace[renamed][1]
    assert ("fsync", temporary, "") in trace[:renamed]  # the bytes, then the name
    assert ("fsync", os.path.dirname(final), "") in trace[renamed + 1 :]  # then the name's entry


def test_export_writes_to_the_longest_name_the_file_system_takes(
    store: BlobStore, tmp_path: Path
) -> None:
    """The temporary name beside the destination is shortened: it was the
    destination's and 15 characters more, past 255 for a 250-character name."""
    out = tmp_path / ("n" * 255)
    assert store.export(store.put(DATA), out) == len(DATA)
    assert out.read_bytes() == DATA


@pytest.mark.parametrize("refusal", [errno.EXDEV, errno.EOPNOTSUPP])
def test_export_copies_through_a_buffer_where_the_kernel_will_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refusal: int
) -> None:
    """copy_file_range between two file systems fails with EXDEV on some
    kernels (a store on ext4, the output on a tmpfs /tmp): the export copies
    through a buffer instead, verified as ever."""
    store = BlobStore(tmp_path / "store")
    data = os.urandom((9 << 20) + 3)
    cid = store.put(data)

    def refuse(*args: object) -> int:
        raise OSError(refusal, os.strerror(refusal))

    monkeypatch.setattr(os, "copy_file_range", refuse)
    assert store.export(cid, tmp_path / "out") == len(data)
    assert (tmp_path / "out").read_bytes() == data


def test_a_put_between_gcs_look_and_its_delete_is_not_lost(tmp_path: Path) -> None:
    """The one interleaving a race test rarely hits: gc has judged a blob old
    and unpinned, and a put of the same bytes lands before gc deletes it. The
    store's lock makes the put wait for the gc, so the put's blob stays."""
    import threading

    store = BlobStore(tmp_path / "store")
    data = b"an old blob uploaded again"
    cid = store.put(data)
    old = time.time() - 3600
    os.utime(store.path(cid), (old, old))
    put = threading.Thread(target=store.put, args=(data,))
    scan = store._scan

    def racing_scan():  # type: ignore[no-untyped-def]
        for found, path in scan():

            class Racing(type(path)):  # type: ignore[misc]
                def stat(self, **kwargs):  # type: ignore[no-untyped-def]
                    looked = super().stat(**kwargs)
                    put.start()  # the upload arrives now...
                    put.join(timeout=0.5)  # ...and finishes, unless it must wait
                    return looked

            yield found, Racing(path)

    store._scan = racing_scan  # type: ignore[method-assign]
    store.gc(grace_seconds=60)
    put.join(timeout=30)
    assert store.has(cid) and store.read(cid) == data


def test_a_failed_atomic_write_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk in the middle of write_atomic left its temp file for ever."""
    from tufmesh._durable import write_atomic

    target = tmp_path / "state.json"
    write_atomic(target, b"old")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        write_atomic(target, b"new")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
    assert target.read_bytes() == b"old"


def test_a_new_store_has_every_shard_and_they_are_durable_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Made on demand, a shard another writer had just made (its fsync of
    blobs/ still to come) could lose a blob to a power cut after put returned."""
    trace = durability_trace(monkeypatch)
    store = BlobStore(tmp_path / "store")
    shards = sorted(p.name for p in (store.root / "blobs").iterdir())
    assert len(shards) == 32 * 32 and shards[0] == "22" and shards[-1] == "zz"
    assert ("fsync", str(store.root / "blobs"), "") in trace
    cid = store.put(DATA)
    assert store.path(cid).parent.name in shards
    # A store made before shards were made up front gets the missing ones
    # when it opens, durable at once too.
    empty = [shard for shard in shards if shard != store.path(cid).parent.name][:100]
    for shard in empty:
        (store.root / "blobs" / shard).rmdir()
    trace.clear()
    again = BlobStore(tmp_path / "store")
    assert sorted(p.name for p in (again.root / "blobs").iterdir()) == shards
    assert ("fsync", str(store.root / "blobs"), "") in trace
    assert again.read(cid) == DATA
    # Not in another user's store, though (root reading it left it shards
    # its owner could not write into); and a store missing its tmp/ is
    # still its owner's to write (tmp/ is made again).
    (store.root / "blobs" / empty[0]).rmdir()
    shutil.rmtree(store.root / "tmp")
    (store.root / "lock").unlink()
    real = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: real + 1)
    other = BlobStore(tmp_path / "store")  # nothing is made in another user's store
    assert other.read(cid) == DATA and not other.writable
    for made in ("blobs/" + empty[0], "tmp", "lock"):
        assert not (store.root / made).exists(), made
    monkeypatch.setattr(os, "geteuid", lambda: real)
    assert BlobStore(tmp_path / "store").put(b"again") == cid_of(b"again")


def test_a_link_or_a_directory_under_a_blobs_name_is_a_stray(store: BlobStore) -> None:
    """A link (to other bytes, to /dev/zero) was read and served as the blob,
    and never quarantined; a directory made fsck say all was clean, failed
    every put of those bytes, and stopped gc for good."""
    elsewhere = store.root.parent / "evil"
    elsewhere.write_bytes(b"evil bytes")
    link = store._path(CID)  # (no blob there yet: where it would be)
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(elsewhere)
    assert not store.has(CID) and store.read_range(CID, 0, 4) is None
    other = cid_of(b"other")
    folder = store._path(other)
    folder.parent.mkdir(exist_ok=True)
    folder.mkdir()
    os.utime(folder, (0, 0))  # well past the grace period
    assert store.gc(grace_seconds=0).deleted == []  # it goes on, and stops at nothing
    report = store.fsck(quarantine=True)
    assert sorted(report.strays) == sorted(str(p.relative_to(store.root)) for p in (link, folder))
    assert store.put(DATA) == CID and store.put(b"other") == other
    assert store.read(CID) == DATA and elsewhere.read_bytes() == b"evil bytes"


def test_a_fifo_in_tmp_does_not_hang_opening_the_store(store: BlobStore) -> None:
    os.mkfifo(store.root / "tmp" / "put-1-fifo")
    (store.root / "tmp" / "notes").mkdir()
    assert BlobStore(store.root).put(b"x") == cid_of(b"x")  # (it used to block for ever)


def test_a_blob_is_young_from_its_commit_not_its_last_write(store: BlobStore) -> None:
    """gc's grace period counts from a blob's mtime, which was its last write:
    a writer committed long after it was collectable at once."""
    writer = store.writer()
    writer.write(b"slowly")
    os.utime(writer._tmp, (1, 1))  # written long ago
    cid, _ = writer.commit()
    assert store.gc(grace_seconds=60).deleted == [] and store.has(cid)


def test_a_forked_child_can_still_put() -> None:
    """The hash pool's threads do not survive a fork, but it counted them as
    idle: the child's next put of more than 256 KiB waited for ever."""
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        store = BlobStore(Path(directory) / "s")
        store.put(os.urandom(1 << 20))  # the pool has threads now
        pid = os.fork()
        if pid == 0:  # the child: exit without pytest's clean-up
            code = 1
            try:
                signal.alarm(20)  # a hang ends in SIGALRM
                store.put(os.urandom(1 << 20))
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
