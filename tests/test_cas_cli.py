"""``tufmesh cas``, run as the real console script in a subprocess."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tufmesh.cas import BlobStore, cid_of

TUFMESH = shutil.which("tufmesh", path=os.path.dirname(sys.executable)) or "tufmesh"


def run(store: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [TUFMESH, "cas", "--store", str(store), *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
    else:
        # Our errors: exit 1 and one line. Click's usage errors: exit 2, the
        # usage, then one line. Never a traceback.
        assert proc.returncode in (1, 2)
        assert "Traceback" not in proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert lines[-1].startswith("Error: "), proc.stderr
        assert proc.returncode == 2 or len(lines) == 1, proc.stderr
    return proc


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    paths = []
    for i, size in enumerate([0, 10, 3 * 1024 * 1024 + 5]):
        path = tmp_path / f"file{i}"
        path.write_bytes(os.urandom(size))
        paths.append(path)
    return paths


def test_put_get_ls_stat_verify_roundtrip(tmp_path: Path, files: list[Path]) -> None:
    store = tmp_path / "store"
    out = run(store, "put", *map(str, files)).stdout.split()
    assert out == [cid_of(f.read_bytes()) for f in files]
    big = out[2]
    got = tmp_path / "got"
    run(store, "get", big, "-o", str(got))
    assert got.read_bytes() == files[2].read_bytes()
    run(store, "get", out[1], "-o", str(got))  # a file there is replaced
    assert got.read_bytes() == files[1].read_bytes()
    # Anything else there (a fifo or a device, a link such as /dev/stdout)
    # was renamed over, not written to: it is refused and left as it was.
    fifo, link = tmp_path / "fifo", tmp_path / "link"
    os.mkfifo(fifo)
    link.symlink_to(got)
    for path in (fifo, link):  # (a directory: refused by the option already)
        refused = run(store, "get", big, "-o", str(path), ok=False)
        assert f"{path} is not a regular file, so not replaced by the blob" in refused.stderr
    assert fifo.is_fifo() and link.is_symlink() and got.read_bytes() == files[1].read_bytes()
    stdout = subprocess.run(
        [TUFMESH, "cas", "--store", str(store), "get", out[1]], capture_output=True, check=True
    ).stdout
    assert stdout == files[1].read_bytes()
    leader, terminal = os.openpty()  # to a terminal: refused, as curl does, not megabytes
    try:
        shown = subprocess.run([TUFMESH, "cas", "--store", str(store), "get", big],
                               stdout=terminal, stderr=subprocess.PIPE, text=True, timeout=60)  # fmt: skip
        os.set_blocking(leader, False)
        with contextlib.suppress(BlockingIOError):
            assert os.read(leader, 1 << 16) == b""
    finally:
        os.close(terminal)
        os.close(leader)
    assert shown.returncode == 1 and "is not for a terminal: -o FILE" in shown.stderr
    listing = [line.split("\t") for line in run(store, "ls").stdout.splitlines()]
    assert sorted(row[0] for row in listing) == sorted(out)
    assert {row[0]: int(row[1]) for row in listing}[big] == files[2].stat().st_size
    stat = run(store, "stat", big).stdout
    assert f"cid\t{big}" in stat and f"size\t{files[2].stat().st_size}" in stat
    assert run(store, "verify").stdout.count("ok\t") == 3


def test_corrupt_blob_get_fails_and_writes_nothing(tmp_path: Path, files: list[Path]) -> None:
    store = tmp_path / "store"
    cid = run(store, "put", str(files[2])).stdout.strip()
    path = BlobStore(store).path(cid)
    blob = bytearray(path.read_bytes())
    blob[12345] ^= 0x10
    path.write_bytes(blob)
    got = tmp_path / "got"
    proc = run(store, "get", cid, "-o", str(got), ok=False)
    assert "corrupt" in proc.stderr
    assert not got.exists()
    proc = subprocess.run([TUFMESH, "cas", "--store", str(store), "get", cid], capture_output=True)
    assert proc.returncode != 0 and proc.stdout == b""
    verify = run(store, "verify", cid, ok=False)
    # The way out names the store (run as said, it checked the default one).
    assert "CORRUPT" in verify.stdout and f"tufmesh cas --store {store} fsck" in verify.stderr
    fsck = subprocess.run(
        [TUFMESH, "cas", "--store", str(store), "fsck", "--quarantine"],
        capture_output=True,
        text=True,
    )
    assert fsck.returncode == 1 and f"CORRUPT\t{cid} (quarantined)" in fsck.stdout
    assert "checked 1 blobs, 0 B" not in fsck.stdout  # what it read, though moved aside since
    empty = subprocess.run([TUFMESH, "cas", "--store", "", "ls"], capture_output=True, text=True)
    assert empty.returncode == 2 and "--store: empty: give the store's directory" in empty.stderr
    assert run(store, "fsck").stdout.startswith("checked 0 blobs")


def test_pin_unpin_gc(tmp_path: Path, files: list[Path]) -> None:
    store = tmp_path / "store"
    a, b, c = run(store, "put", *map(str, files)).stdout.split()
    run(store, "pin", "release-1", a, b)
    assert "would delete 0 blobs" in run(store, "gc", "--dry-run").stdout  # all recent
    for grace in ("nan", "inf"):  # NaN passed the range check: every blob went
        refused = run(store, "gc", "--grace", grace, ok=False)
        assert refused.returncode == 2 and "is not a finite number" in refused.stderr
    assert len(list(BlobStore(store))) == 3
    dry = run(store, "gc", "--dry-run", "--grace", "0").stdout
    assert f"would delete\t{c}" in dry and a not in dry and b not in dry
    assert BlobStore(store).has(c)
    run(store, "unpin", "release-1", b)
    gone = run(store, "gc", "--grace", "0").stdout
    assert f"deleted\t{b}" in gone and f"deleted\t{c}" in gone
    assert list(BlobStore(store)) == [a]
    assert "release-1" in run(store, "ls").stdout


def test_manifest(tmp_path: Path, files: list[Path]) -> None:
    store = tmp_path / "store"
    out = dict(
        line.split("\t") for line in run(store, "manifest", str(files[2])).stdout.splitlines()
    )
    assert out["chunks"] == "4"
    assert out["blob"] == cid_of(files[2].read_bytes())
    assert BlobStore(store).read_manifest(out["manifest"]).count == 4
    small = run(store, "manifest", "--chunk-size", "1KiB", str(files[1])).stdout
    assert "chunks\t1" in small


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["put", "/nonexistent/file"], "cannot read"),
        (["put", "/dev/null"], "not a regular file"),  # a pipe there is read forever
        (["get", "not-a-cid"], "not a CID"),
        (["get", cid_of(b"absent")], "no blob"),
        (["stat", "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"], "CID version 0"),
        (["pin", "bad/name", cid_of(b"absent")], "bad pin-set name"),
        (["pin", "ok", cid_of(b"absent")], "not in the store"),
        (["unpin", "nothing"], "no pin set"),
        (["manifest", "/nonexistent/file"], "cannot read"),
        (["manifest", "--chunk-size", "lots", "/etc/hostname"], "not a size"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path: Path, args: list[str], message: str) -> None:
    BlobStore(tmp_path / "store")  # an empty store
    proc = run(tmp_path / "store", *args, ok=False)
    assert message in proc.stderr


def test_get_with_standard_output_closed_says_so(tmp_path: Path) -> None:
    cid = BlobStore(tmp_path / "store").put(b"data")
    proc = subprocess.run(
        [TUFMESH, "cas", "--store", str(tmp_path / "store"), "get", cid],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=60,
        preexec_fn=lambda: os.close(1),
    )  # fmt: skip
    assert (
        proc.returncode == 1
        and proc.stderr.strip() == "Error: no standard output to write to: -o FILE"
    )


def test_a_directory_that_is_not_a_store_is_left_alone(tmp_path: Path, files: list[Path]) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    proc = run(mine, "ls", ok=False)
    assert "is not a blob store" in proc.stderr
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    # put checks every file before it stores any
    store = tmp_path / "store"
    assert "cannot read" in run(store, "put", str(files[0]), "/nonexistent", ok=False).stderr
    assert not store.exists()  # (nothing stored: no store made either)


def test_put_checks_that_every_file_can_be_read_before_it_stores_any(
    tmp_path: Path, files: list[Path]
) -> None:
    """A file of mode 000 stats fine: put stored the files before it, then
    failed on it, half done. (As root, run without the capabilities that
    read any file, as an ordinary user is.)"""
    unreadable = tmp_path / "unreadable"
    unreadable.write_bytes(b"secret")
    unreadable.chmod(0)
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root, and no setpriv to drop the capability to read any file")
        as_user = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps",
                   "-all"]  # fmt: skip
    store = tmp_path / "store"
    proc = subprocess.run(
        [*as_user, TUFMESH, "cas", "--store", str(store), "put", str(files[0]), str(unreadable)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 1 and proc.stdout == "", proc
    assert f"cannot read {unreadable}: Permission denied" in proc.stderr
    assert not store.exists()


def test_version_and_help() -> None:
    from tufmesh import __version__

    out = subprocess.run([TUFMESH, "--version"], capture_output=True, text=True, check=True)
    assert __version__ in out.stdout
    helptext = subprocess.run([TUFMESH, "--help"], capture_output=True, text=True, check=True)
    assert "cas" in helptext.stdout and "demo" in helptext.stdout


@pytest.mark.slow
def test_demo_runs_and_verifies() -> None:
    proc = subprocess.run(
        [TUFMESH, "demo", "--size", "8MiB"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "every byte was verified, and the corrupt mirror was caught" in proc.stdout
    assert "identical bytes" in proc.stdout
    assert "rejected, mirror 3 banned" in proc.stdout
    # Mirror 3 served no chunk (perhaps its chunk manifest, verified): said so.
    assert "from mirror 3: no chunk accepted" in proc.stdout
    assert re.search(r"from mirror [12]: [0-9.]+ MiB \([0-9]+ chunks\)", proc.stdout)
    # Snapshots: the repository's first, the claim's, the targets keys'
    # rotation that ends the claim's ceremony, and the release.
    assert proc.stdout.count("holds snapshot v4") == 3
    assert "in project-example v2, snapshot v4" in proc.stdout
    assert "the targets keys are new" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    "how", ["SIGTERM to the demo", "Ctrl-C at its terminal", "its terminal closed"]
)
def test_an_interrupted_demo_cleans_up_and_says_so_once(tmp_path: Path, how: str) -> None:
    """SIGTERM (``timeout``, a service manager) stops the demo as Ctrl-C does:
    its processes stop and its directory goes (it used to stay behind). Ctrl-C
    at a terminal reaches the whole process group: the demo's own processes
    each said "stopped" or "Aborted!" too; now the demo alone says it."""
    import os
    import signal

    env = dict(os.environ, TMPDIR=str(tmp_path))
    proc = subprocess.Popen(
        [TUFMESH, "demo", "--size", "8MiB"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=env, text=True, start_new_session=True,  # its own group, as a terminal's job is
    )  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:  # until its processes run
        if "mirror 1" in line:
            break
    assert list(tmp_path.glob("tufmesh-demo-*"))
    if how == "SIGTERM to the demo":
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT if how.startswith("Ctrl-C") else signal.SIGHUP)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130  # interrupted, as the shell says it (it was 1)
    assert not list(tmp_path.glob("tufmesh-demo-*"))
    assert err.strip() == "Aborted!", err
    # ...and none of its processes outlives it for long (they run in sessions of
    # their own; one it was starting as it was stopped stops by itself).
    deadline = time.monotonic() + 10
    while alive := _processes_naming(tmp_path):
        assert time.monotonic() < deadline, alive
        time.sleep(0.2)


def _processes_naming(path: Path) -> list[str]:
    """The command lines of running processes that name ``path``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if str(path).encode() in (line := cmdline.read_bytes()):
                found.append(line.replace(b"\0", b" ").decode(errors="replace"))
    return found


@pytest.mark.parametrize(
    ("size", "said"), [("4MiB", "at least 8.0 MiB"), ("5GiB", "at most 4.0 GiB")]
)
def test_demo_refuses_a_small_or_a_huge_artifact(size: str, said: str) -> None:
    """Below eight chunks the download asked only two mirrors, never the corrupt
    third, and the demo failed ("NOT caught")."""
    proc = subprocess.run([TUFMESH, "demo", "--size", size], capture_output=True, text=True)
    assert proc.returncode == 1 and said in proc.stderr and "Traceback" not in proc.stderr


def _read_only_mount() -> list[str] | None:
    """A command prefix that runs what follows with ``$1`` bind-mounted
    read-only on ``$2`` in a mount namespace of its own; None where this
    machine allows no such namespace."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    script = 'mount --bind "$1" "$2" && mount -o remount,ro,bind "$2" && shift 2 && exec "$@"'
    prefix = [unshare, "-m" if os.geteuid() == 0 else "-rm", "sh", "-c", script, "sh"]
    probe = subprocess.run([*prefix, "/", "/mnt", "true"], capture_output=True, timeout=30)
    return prefix if probe.returncode == 0 else None


def test_a_store_it_may_not_write_is_read_and_never_changed(tmp_path: Path) -> None:
    """A store on a read-only mount (a backup, a monitoring user's view) could
    not be opened even to read: opening wrote its lock file and shards."""
    prefix = _read_only_mount()
    if prefix is None:
        pytest.skip("this machine allows no mount namespace (unshare -m)")
    store = BlobStore(tmp_path / "store")
    cid = store.put(b"kept")
    store.pin("release", [cid])
    (tmp_path / "ro").mkdir()
    before = sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*"))

    def ro(*args: str) -> subprocess.CompletedProcess[str]:
        command = [TUFMESH, "cas", "--store", str(tmp_path / "ro"), *args]
        return subprocess.run(
            [*prefix, str(store.root), str(tmp_path / "ro"), *command],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    listed = ro("ls")
    assert listed.returncode == 0 and listed.stdout.split() == [cid, "4", "release"], listed
    got = ro("get", cid)
    assert got.returncode == 0 and got.stdout == "kept", got
    checked = ro("fsck")
    assert checked.returncode == 0 and "0 corrupt" in checked.stdout, checked
    dry = ro("gc", "--dry-run", "--grace", "0")
    assert dry.returncode == 0, dry
    (tmp_path / "new").write_bytes(b"new")
    for refused in (("put", str(tmp_path / "new")), ("unpin", "release"), ("gc", "--grace", "0")):
        answer = ro(*refused)
        assert answer.returncode == 1 and "Traceback" not in answer.stderr, answer
        assert answer.stderr.strip().splitlines() == [
            f"Error: the store at {tmp_path / 'ro'} is read-only to this user: "
            "it can be read, not changed"
        ], answer.stderr
    assert sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*")) == before
    (store.root / "lock").unlink()  # and with no lock file, nor a way to make one
    listed = ro("ls")
    assert listed.returncode == 0 and listed.stdout.split() == [cid, "4", "release"], listed


def test_only_put_makes_a_store(tmp_path: Path) -> None:
    """A typo in --store made a whole new, empty store (1,026 directories)
    for a command that only reads."""
    typo = tmp_path / "typo"
    for command in (("ls",), ("fsck",), ("gc", "--dry-run")):
        proc = subprocess.run([TUFMESH, "cas", "--store", str(typo), *command],
                              capture_output=True, text=True)  # fmt: skip
        assert proc.returncode != 0 and "no blob store at" in proc.stderr, proc
        assert not typo.exists()
    for command in ("put", "manifest"):  # a file that is not there: nothing made either
        proc = subprocess.run([TUFMESH, "cas", "--store", str(typo), command,
                               str(tmp_path / "nosuch")], capture_output=True, text=True)  # fmt: skip
        assert proc.returncode == 1 and "cannot read" in proc.stderr, proc
        assert not typo.exists()
    (tmp_path / "f").write_bytes(b"x")
    made = subprocess.run([TUFMESH, "cas", "--store", str(typo), "put", str(tmp_path / "f")],
                          capture_output=True, text=True)  # fmt: skip
    assert made.returncode == 0 and (typo / "blobs").is_dir()
    home = tmp_path / "home"  # the default store too
    proc = subprocess.run([TUFMESH, "cas", "ls"], capture_output=True, text=True,
                          env={**os.environ, "TUFMESH_HOME": str(home)})  # fmt: skip
    assert proc.returncode == 1 and "no blob store at" in proc.stderr, proc
    assert not (home / "cas").exists()


def test_odd_arguments_and_outputs_are_one_line_or_work(tmp_path: Path) -> None:
    """A review's findings: a file named -h (taken for --help by the group,
    which then opened no store: a traceback), a 252-byte name of 63
    four-byte characters (its temporary name, cut at 64 characters, was 256
    bytes), an explicit CID not in the store (the rest went unchecked), a
    closed stdout (stored, said nothing, exit 0), a grace in minutes past
    a float's seconds ("inf seconds")."""
    store = tmp_path / "store"
    dash = tmp_path / "-h"
    dash.write_bytes(b"a file named -h")
    (cid,) = run(store, "put", "--", str(dash)).stdout.split()
    stat = run(store, "stat", "--", "-h", ok=False)
    assert stat.returncode == 1 and "-h" in stat.stderr  # not a CID: one line
    assert "Store FILES" in run(store, "put", "--help").stdout  # --help itself still helps
    long = tmp_path / ("\U0001f600" * 63)
    run(store, "get", cid, "-o", str(long))
    assert long.read_bytes() == b"a file named -h"
    other = run(store, "put", str(tmp_path / ("\U0001f600" * 63))).stdout.split()[0]
    absent = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
    checked = run(store, "verify", cid, absent, other, ok=False)
    assert checked.stdout.splitlines() == [f"ok\t{cid}", f"MISSING\t{absent}", f"ok\t{other}"]
    assert "1 of the blobs named not in the store" in checked.stderr
    for args in (["put", str(dash)], ["ls"], ["stat", cid], ["manifest", str(dash)]):
        closed = subprocess.run(
            [TUFMESH, "cas", "--store", str(tmp_path / "new"), *args],
            capture_output=False, stdout=None, stderr=subprocess.PIPE, text=True, timeout=60,
            stdin=subprocess.DEVNULL, pass_fds=(), close_fds=True,
            preexec_fn=lambda: os.close(1),
        )  # fmt: skip
        assert closed.returncode == 1, (args, closed.stderr)
        assert "no standard output" in closed.stderr or "no blob store" in closed.stderr
    assert not (tmp_path / "new").exists()  # nothing stored where nothing could be said
    huge = run(store, "gc", "--grace", "1e307", ok=False)
    assert huge.returncode == 2 and "1e+307 is not in the range" in huge.stderr, huge.stderr
