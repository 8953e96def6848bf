"""Crash safety and concurrency of the store, with real processes and threads."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.cas_writer import blob
from tufmesh.cas import BlobStore, cid_of

WRITER = Path(__file__).parent / "helpers" / "cas_writer.py"


@pytest.mark.slow
def test_sigkill_at_random_moments_never_leaves_a_bad_blob(tmp_path: Path) -> None:
    root = tmp_path / "store"
    rng = random.Random(20261125)
    acked: dict[str, int] = {}
    verified: set[str] = set()
    kills = 0
    for round_ in range(16):
        proc = subprocess.Popen(
            [sys.executable, str(WRITER), str(root), str(round_)],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(rng.uniform(0.15, 0.9))
        proc.kill()
        out, _ = proc.communicate(timeout=30)
        kills += proc.returncode == -9
        lines = [line.split() for line in out.splitlines()]
        for _, cid in lines:
            acked[cid] = round_
        if lines:  # the writer stored what the test expects it to
            index, cid = lines[-1]
            assert cid == cid_of(blob(round_, int(index)))

        store = BlobStore(root)  # reopening cleans up after the dead writer
        assert list((root / "tmp").iterdir()) == []
        held = set(store)
        assert set(acked) <= held
        for cid in held - verified:  # blobs are immutable: check each new one once
            store.verify(cid)
        verified |= held
    assert kills >= 13
    assert store.fsck().ok
    assert len(acked) > 13  # the writer made real progress between kills


def test_concurrent_puts_of_the_same_blob_from_processes(tmp_path: Path) -> None:
    root = tmp_path / "store"
    BlobStore(root)
    script = (
        "import sys; from tufmesh.cas import BlobStore; from tests.helpers.cas_writer import blob\n"
        "for _ in range(4): print(BlobStore(sys.argv[1]).put(blob(7, 0)), flush=True)\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(root)], stdout=subprocess.PIPE,
                         text=True, cwd=Path(__file__).parent.parent)
        for _ in range(4)
    ]  # fmt: skip
    outputs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    expected = cid_of(blob(7, 0))
    assert {cid for out in outputs for cid in out} == {expected}
    assert sum(len(out) for out in outputs) == 16
    store = BlobStore(root)
    assert list(store) == [expected]
    store.verify(expected)


def test_concurrent_puts_from_threads(store: BlobStore) -> None:
    datas = [bytes([i]) * (1 << 20) for i in range(6)]
    results: list[str] = []

    def worker(i: int) -> None:
        for _ in range(3):
            results.append(store.put(datas[i % 3]))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(set(results)) == sorted(cid_of(d) for d in datas[:3])
    assert store.fsck().ok
    assert list((store.root / "tmp").iterdir()) == []


def test_gc_racing_puts_and_pins_never_deletes_pinned_or_recent_blobs(store: BlobStore) -> None:
    # Old, unpinned blobs that gc should delete during the race...
    old = [store.put(f"old-{i}".encode()) for i in range(40)]
    for cid in old:
        store.path(cid).touch()
    past = time.time() - 3600
    import os

    for cid in old:
        os.utime(store.path(cid), (past, past))
    stop = threading.Event()
    pinned: list[str] = []
    recent: list[str] = []
    errors: list[BaseException] = []

    def putter(n: int) -> None:
        try:
            for i in range(60):
                if i % 4 == 0:
                    # Re-put an old blob and pin it: its grace period restarts.
                    cid = store.put(f"old-{(n * 60 + i) % 40}".encode())
                else:
                    cid = store.put(f"new-{n}-{i}".encode() * 100)
                if i % 2:
                    store.pin(f"set-{n}", [cid])
                    pinned.append(cid)
                else:
                    recent.append(cid)
        except BaseException as exc:
            errors.append(exc)

    def collector() -> None:
        while not stop.is_set():
            store.gc(grace_seconds=600)

    threads = [threading.Thread(target=putter, args=(n,)) for n in range(4)]
    gc_thread = threading.Thread(target=collector)
    gc_thread.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    gc_thread.join()
    assert errors == []
    held = set(store)
    assert set(pinned) <= held
    assert set(recent) <= held
    # ... and gc did delete the old blobs nobody re-put.
    reput = {cid_of(f"old-{(n * 60 + i) % 40}".encode()) for n in range(4) for i in range(0, 60, 4)}
    assert not (set(old) - reput) & held
