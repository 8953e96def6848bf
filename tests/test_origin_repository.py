"""The origin's repository core, in process: names, tokens, delegations, expiry."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tuf.api.exceptions import (
    DownloadHTTPError,
    ExpiredMetadataError,
    RepositoryError,
    UnsignedMetadataError,
)
from tuf.api.metadata import DelegatedRole, Delegations, Metadata, TargetFile, Targets
from tuf.ngclient import FetcherInterface, Updater

from tests.helpers.log import log_lines
from tests.helpers.origin import tufmesh
from tufmesh.cas import BlobStore
from tufmesh.errors import (
    AuthError,
    BinFullError,
    ConflictError,
    ForbiddenError,
    InvalidNameError,
    OriginError,
    QuotaError,
)
from tufmesh.origin._config import OriginConfig
from tufmesh.origin._keys import generate_file_key, load_signer
from tufmesh.origin._names import check_filename, check_new_filename, normalize_project
from tufmesh.origin._projects import ProjectRegistry
from tufmesh.origin._repository import Artifact, OriginRepository, check_single_delegator


class DirectoryFetcher(FetcherInterface):
    """Serves a repository's published tree from disk: the network, not our code."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _fetch(self, url: str) -> Iterator[bytes]:
        path = self.root / url.removeprefix("file:///")
        if not path.is_file():
            raise DownloadHTTPError(f"{url} not found", 404)
        yield path.read_bytes()


def updater_for(repo: OriginRepository, tmp: Path) -> Updater:
    (tmp / "meta").mkdir(parents=True, exist_ok=True)
    (tmp / "dl").mkdir(exist_ok=True)
    return Updater(
        str(tmp / "meta"),
        "file:///metadata/",
        str(tmp / "dl"),
        "file:///targets/",
        fetcher=DirectoryFetcher(repo.dir),
        bootstrap=(repo.metadata_dir / "1.root.json").read_bytes(),
    )


def stored(repo: OriginRepository, path: str, data: bytes) -> Artifact:
    cid, manifest = repo.store.put_chunked(data, chunk_size=repo.config.chunk_size)
    return Artifact(
        path, len(data), hashlib.sha256(data).hexdigest(), cid, manifest.cid, manifest.chunk_size
    )


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.mark.parametrize(
    ("name", "normal"),
    [("Django", "django"), ("zope.interface", "zope-interface"), ("A__b-.C", "a-b-c"), ("x", "x")],
)
def test_project_names_normalise_per_pep_503(name: str, normal: str) -> None:
    assert normalize_project(name) == normal


@pytest.mark.parametrize("name", ["", "-x", "x-", "a/b", "a b", "ü", "x" * 129, ".hidden"])
def test_bad_project_names(name: str) -> None:
    with pytest.raises(InvalidNameError):
        normalize_project(name)


@pytest.mark.parametrize(
    "name",
    ["a/b", "a\\b", "..", "a..b", ".x", "a\x00b", "a\nb", "a\x7fb", "é" * 200, "", "a b",
     "demo-1.0.tar.gz.part", "x.PART"],
)  # fmt: skip
def test_bad_filenames(name: str) -> None:
    with pytest.raises(InvalidNameError):
        check_filename(name)
    with pytest.raises(InvalidNameError):
        check_new_filename(name)


@pytest.mark.parametrize(
    "name", ["demo-1.0.tar.gz.", "CON", "nul.tar.gz", "Com1.zip", "lpt9", "aux.1.0.whl"]
)
def test_names_one_file_on_windows_with_another_or_a_device_are_new_no_more(name: str) -> None:
    """Refused for names published from now on; one published before is
    still a name the repository reads, serves and mirrors (ADR 25)."""
    with pytest.raises(InvalidNameError):
        check_new_filename(name)
    assert check_filename(name) == name


def test_good_filenames() -> None:
    for name in ["demo-1.0.tar.gz", "pkg-1!2.0+local-py3-none-any.whl", "x_1~rc1.zip",
                 "console-1.0.tar.gz", "com10.zip", "nul_x-1.0.tar.gz", "lpt-1.0.whl"]:  # fmt: skip
        assert check_filename(name) == name


def test_tokens_are_hashed_and_scoped(tmp_path: Path) -> None:
    registry = ProjectRegistry(tmp_path)
    token_a, token_b = registry.add("Proj-A"), registry.add("proj_b")
    assert token_a not in (tmp_path / "projects.json").read_text()
    registry.authorize("proj-a", token_a)
    with pytest.raises(ForbiddenError, match="'proj-b' only"):
        registry.authorize("proj-a", token_b)
    with pytest.raises(AuthError, match="unknown"):
        registry.authorize("proj-a", "tufmesh_guess")
    with pytest.raises(AuthError, match="missing"):
        registry.authorize("proj-a", None)
    new_a = registry.rotate("PROJ.A")
    with pytest.raises(AuthError):
        registry.authorize("proj-a", token_a)
    registry.authorize("proj-a", new_a)
    # Another process (here: another registry object) sees changes at once.
    ProjectRegistry(tmp_path).rotate("proj-b")
    with pytest.raises(AuthError):
        registry.authorize("proj-b", token_b)


@pytest.mark.parametrize(
    "damage", ["[]", "{}", '{"projects": []}', '{"projects": {"a": 5}}', '{"projects": {"a": {}}}']
)
def test_a_damaged_project_registry_is_named_not_a_crash(tmp_path: Path, damage: str) -> None:
    (tmp_path / "projects.json").write_text(damage)
    for use in (
        lambda r: r.names(),
        lambda r: r.add("new"),
        lambda r: r.rotate("a"),
        lambda r: r.authorize("a", "tufmesh_x"),
    ):
        with pytest.raises(OriginError, match=r"projects\.json is damaged: expected"):
            use(ProjectRegistry(tmp_path))
    assert (tmp_path / "projects.json").read_text() == damage  # left for its owner to mend


def test_diamond_delegations_are_refused() -> None:
    def delegating(*children: str) -> Targets:
        roles = {
            c: DelegatedRole(name=c, keyids=[], threshold=1, terminating=False, paths=["*"])
            for c in children
        }
        targets = Targets()
        targets.delegations = Delegations(keys={}, roles=roles)
        return targets

    check_single_delegator({"targets": delegating("a", "b"), "a": delegating("c")})
    with pytest.raises(OriginError, match=r"diamond.*'release'"):
        check_single_delegator(
            {
                "targets": delegating("a", "b"),
                "a": delegating("release"),
                "b": delegating("release"),
            }
        )


def test_create_validates_its_options(tmp_path: Path) -> None:
    with pytest.raises(OriginError, match="power of two"):
        OriginRepository.create(tmp_path / "r1", OriginConfig(bins=100))
    with pytest.raises(OriginError, match="at least 1"):
        OriginRepository.create(tmp_path / "r2", root_threshold=0)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(OriginError, match="not empty"):
        OriginRepository.create(tmp_path / "full")


def test_signer_uris_and_root_threshold(tmp_path: Path) -> None:
    elsewhere = tmp_path / "hsm-standin"
    elsewhere.mkdir()
    uri, key = generate_file_key(elsewhere, "my-timestamp")
    absolute = "file2:" + str(elsewhere / "keys" / "my-timestamp.pem")
    repo = OriginRepository.create(
        tmp_path / "repo", OriginConfig(bins=4), root_threshold=2,
        signers={"timestamp": [(absolute, key)]},
    )  # fmt: skip
    assert uri.startswith("file2:keys/")
    root = repo.root()
    assert root.roles["root"].threshold == 2 and len(root.roles["root"].keyids) == 2
    assert root.roles["timestamp"].keyids == [key.keyid]
    assert not (repo.dir / "keys" / "timestamp.pem").exists()
    assert len(repo.timestamp_md.signatures) == 1 and len(repo._md["root"].signatures) == 2


def test_publish_is_immutable_and_idempotent_within_a_batch(tmp_path: Path) -> None:
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    one = stored(repo, "p/a-1.tar.gz", b"one")
    other = stored(repo, "p/a-1.tar.gz", b"other")
    second = stored(repo, "p/b-1.tar.gz", b"two")
    results = repo.publish([one, other, second, one])
    assert results[0] == results[2] == results[3] == 2
    assert isinstance(results[1], OriginError) and "immutable" in str(results[1])
    again = repo.publish([one])
    assert again == [2]  # nothing new: no new snapshot
    assert isinstance(repo.publish([other])[0], OriginError)
    reloaded = OriginRepository(repo.dir)
    assert reloaded.find("p/a-1.tar.gz").hashes["sha256"] == one.sha256  # type: ignore[union-attr]
    assert [t.path for t in reloaded.artifacts()] == ["p/a-1.tar.gz", "p/b-1.tar.gz"]
    assert repo.store.pins()["project:p"] >= {one.cid, one.manifest, second.cid}
    # A name in other case only is one file on macOS and Windows: refused,
    # beside a published one or one of its own batch.
    upper, lower, twin = (stored(repo, f"p/{name}-1.tar.gz", data) for name, data in
                          (("B", b"three"), ("c", b"four"), ("C", b"five")))  # fmt: skip
    results = repo.publish([upper, lower, twin])
    assert isinstance(results[0], ConflictError) and "p/b-1.tar.gz is published" in str(results[0])
    assert (
        results[1] == 3
        and "p/c-1.tar.gz is published, and names that differ only in "
        "case are one file on macOS and Windows"
        in str(results[2])
    )
    assert OriginRepository(repo.dir).find("p/B-1.tar.gz") is None


def test_a_commits_files_are_durable_before_the_timestamp_names_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every versioned file of a commit (bin, snapshot) and the link to its
    blob are on disk before ``timestamp.json`` is replaced: after a power cut,
    a timestamp never names a file that is not there."""
    from tests.helpers.durability import durability_trace

    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    artifact = stored(repo, "p/a-1.tar.gz", b"one")
    before = set(repo.metadata_dir.iterdir())
    trace = durability_trace(monkeypatch)
    repo.publish([artifact])
    monkeypatch.undo()
    timestamp = str(repo.metadata_dir / "timestamp.json")
    (named,) = [i for i, (op, _, dst) in enumerate(trace) if op == "replace" and dst == timestamp]
    synced = {path for op, path, _ in trace[:named] if op == "fsync"}
    written = {str(p) for p in set(repo.metadata_dir.iterdir()) - before if p.name[0].isdigit()}
    assert written and written <= synced  # the new N.bin-x.json and N.snapshot.json...
    assert str(repo.metadata_dir) in synced  # ...and their directory entries
    assert str(repo.targets_dir / "p") in synced  # the artifact's link too


def test_crash_before_timestamp_leaves_previous_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    repo.publish([stored(repo, "p/a-1.tar.gz", b"one")])
    import tufmesh.origin._repository as module  # the module that writes

    real = module.write_atomic

    def crash_on_timestamp(path: Path, data: bytes, **kwargs: bool) -> None:
        if path.name == "timestamp.json":
            raise OSError("disk gone")
        real(path, data, **kwargs)

    monkeypatch.setattr(module, "write_atomic", crash_on_timestamp)
    with pytest.raises(OSError, match="disk gone"):
        repo.publish([stored(repo, "p/b-1.tar.gz", b"two")])
    monkeypatch.undo()
    # In memory and on disk, the repository is what it was before the batch.
    assert repo.find("p/b-1.tar.gz") is None
    reopened = OriginRepository(repo.dir)
    assert reopened.find("p/b-1.tar.gz") is None and reopened.find("p/a-1.tar.gz") is not None
    updater = updater_for(reopened, tmp_path)
    updater.refresh()
    assert updater.get_targetinfo("p/a-1.tar.gz") is not None
    # And the next commit publishes over the unreferenced files.
    assert reopened.publish([stored(reopened, "p/b-1.tar.gz", b"two")]) == [3]
    updater = updater_for(reopened, tmp_path / "again")
    updater.refresh()
    assert updater.get_targetinfo("p/b-1.tar.gz") is not None


def test_online_roles_are_re_signed_before_expiry(tmp_path: Path) -> None:
    # A repository whose metadata was signed a week ago: a client today sees
    # an expired timestamp (a freeze), until the refresher re-signs it.
    week_ago = Clock(datetime.now(UTC) - timedelta(days=7, hours=1))
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4), clock=week_ago)
    repo.publish([stored(repo, "p/a-1.tar.gz", b"one")])
    (tmp_path / "stale").mkdir()
    with pytest.raises(ExpiredMetadataError):
        updater_for(repo, tmp_path / "stale").refresh()

    assert repo.refresh() == []  # nothing is stale at the repository's own time
    week_ago.now += timedelta(days=5)  # 2 days left of 7: not yet stale
    refreshed = repo.refresh()
    assert "timestamp" in refreshed  # 1-day timestamp: long expired
    assert "snapshot" not in refreshed and not any(r.startswith("bin-") for r in refreshed)
    week_ago.now += timedelta(days=1)  # 1 day left of 7: under a quarter
    refreshed = repo.refresh()
    assert {"snapshot", "timestamp", "bin-0", "bin-1", "bin-2", "bin-3"} <= set(refreshed)
    week_ago.now = datetime.now(UTC)
    repo.refresh()
    (tmp_path / "fresh").mkdir()
    updater = updater_for(OriginRepository(repo.dir), tmp_path / "fresh")
    updater.refresh()
    info = updater.get_targetinfo("p/a-1.tar.gz")
    assert info is not None and Path(updater.download_target(info)).read_bytes() == b"one"
    assert repo.next_refresh() > datetime.now(UTC) + timedelta(hours=12)


def test_same_bytes_beyond_the_hard_link_limit_fall_back_to_a_symlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))

    def too_many_links(src: object, dst: object) -> None:
        raise OSError(errno.EMLINK, "Too many links")

    monkeypatch.setattr(os, "link", too_many_links)
    artifact = stored(repo, "p/a-1.tar.gz", b"shared bytes")
    assert repo.publish([artifact]) == [2]
    link = repo.targets_dir / "p" / f"{artifact.sha256}.a-1.tar.gz"
    assert link.is_symlink() and link.read_bytes() == b"shared bytes"
    updater = updater_for(repo, tmp_path)
    updater.refresh()
    info = updater.get_targetinfo("p/a-1.tar.gz")
    assert info is not None and Path(updater.download_target(info)).read_bytes() == b"shared bytes"


def test_serving_process_re_signs_on_its_timer(tmp_path: Path) -> None:
    import trio
    import trio.testing

    from tufmesh.origin import OriginService
    from tufmesh.origin._signer import LocalCommitter

    mock = trio.testing.MockClock(autojump_threshold=0)
    base = datetime.now(UTC)

    def clock() -> datetime:  # the repository's time follows trio's virtual time
        return base + timedelta(seconds=mock.current_time())

    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4), clock=clock)

    async def inline(fn, *args):  # no threads: virtual time sees every step
        return fn(*args)

    service = OriginService(repo.dir, LocalCommitter(repo, run_sync=inline), run_sync=inline)
    seen: list[tuple[int, datetime]] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.run_refresher)
            for _ in range(30):  # a month, looked at once a day
                await trio.sleep(86400)
                timestamp = repo.timestamp_md.signed
                seen.append((timestamp.version, timestamp.expires))
                assert timestamp.expires > clock(), "the timestamp expired while serving"
                assert repo.snapshot().expires > clock()
                for role in ("bin-0", "bin-3"):
                    assert repo.targets(role).expires > clock()
            nursery.cancel_scope.cancel()

    trio.run(main, clock=mock)
    versions = [version for version, _ in seen]
    assert versions == sorted(versions) and versions[-1] >= 30  # re-signed at least daily


def test_a_commit_with_shorter_lifetimes_is_re_signed_in_time(tmp_path: Path) -> None:
    """The refresher slept until the roles it knew of were due (an hour at
    most), and a commit did not wake it: once the bins' lifetime was lowered
    in config.json, a bin signed with it expired while the refresher slept,
    and python-tuf refused the repository (a review). Nor do failed commits,
    which change nothing, put the plan off (the next review)."""
    import trio
    import trio.testing

    from tufmesh.origin import OriginService
    from tufmesh.origin._signer import LocalCommitter

    mock = trio.testing.MockClock(autojump_threshold=0)
    base = datetime.now(UTC)

    def clock() -> datetime:
        return base + timedelta(seconds=mock.current_time())

    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4), clock=clock)
    repo.config.expiry_days["bin-n"] = 20 / 1440  # twenty minutes, from now on
    publish, calls = repo.publish, []

    def failing_after_one(artifacts: list[Artifact]) -> list[int]:  # a disk that then fills
        calls.append(artifacts)
        if len(calls) > 1:
            raise OriginError("cannot write the snapshot: no space left")
        return publish(artifacts)

    repo.publish = failing_after_one  # type: ignore[method-assign]

    async def inline(fn, *args):  # no threads: virtual time sees every step
        return fn(*args)

    service = OriginService(repo.dir, LocalCommitter(repo, run_sync=inline), run_sync=inline)
    service.config = type(service.config)(max_refresh_sleep=7200)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.run_refresher)
            nursery.start_soon(service.run_committer)
            await trio.sleep(60)  # the refresher sleeps: nothing is due for days
            await service.submit(stored(repo, "p/a-1.tar.gz", b"one"))
            for i in range(12):  # an hour, looked at every five minutes
                await trio.sleep(300)
                with pytest.raises(OriginError, match="no space left"):
                    await service.submit(stored(repo, f"p/a-{i + 2}.tar.gz", b"%d" % i))
                for role in ("bin-0", "bin-1", "bin-2", "bin-3"):
                    assert repo.targets(role).expires > clock(), f"{role} expired while serving"
            nursery.cancel_scope.cancel()

    trio.run(main, clock=mock)


def test_healthz_is_degraded_while_re_signing_is_overdue(tmp_path: Path) -> None:
    """/healthz looked at the timestamp alone: a bin expired while the
    refresher slept, and it said "ok" (a review)."""
    import httpx
    import trio

    from tufmesh.origin._server import build_app

    signed = Clock(datetime.now(UTC) - timedelta(hours=1))
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4), clock=signed)
    repo.config.expiry_days["bin-n"] = 1 / 24  # an hour, from now on
    repo.publish([stored(repo, "p/a-1.tar.gz", b"one")])  # a bin due 15 minutes ago
    service = _service_for(repo)

    async def health() -> Any:
        transport = httpx.ASGITransport(app=build_app(service))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://origin") as client:
            return (await client.get("/healthz")).json()

    said = trio.run(health)
    assert said["status"] == "degraded"
    assert any("due to be re-signed" in warning for warning in said["warnings"])
    signed.now = datetime.now(UTC)
    trio.run(service.committer.refresh)  # (what the refresher does)
    assert trio.run(health)["status"] == "ok"


def test_a_failed_re_signing_is_retried_and_the_origin_keeps_running(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A signer out of reach for a while (here: a day) must not stop the origin."""
    import trio
    import trio.testing

    from tufmesh.origin import OriginService
    from tufmesh.origin._signer import LocalCommitter

    mock = trio.testing.MockClock(autojump_threshold=0)
    base = datetime.now(UTC)

    def clock() -> datetime:
        return base + timedelta(seconds=mock.current_time())

    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4), clock=clock)

    async def inline(fn, *args):  # no threads: virtual time sees every step
        return fn(*args)

    class Flaky(LocalCommitter):
        async def refresh(self) -> None:
            if 3600 < mock.current_time() < 3 * 86400:
                raise OriginError("cannot sign timestamp: the KMS timed out")
            await super().refresh()

    service = OriginService(repo.dir, Flaky(repo, run_sync=inline), run_sync=inline)
    service.config = type(service.config)(max_refresh_sleep=7200)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.run_refresher)
            await trio.sleep(3 * 86400 + 120)
            assert repo.timestamp_md.signed.expires > clock()  # re-signed once it could
            nursery.cancel_scope.cancel()

    trio.run(main, clock=mock)
    # retried once a minute through the outage (from its first try, up to 2 h
    # after it began), not in a busy loop and not given up
    assert (3 * 86400 - 7200) / 60 <= service.refresh_failures <= (3 * 86400 - 3600) / 60 + 10
    err = capfd.readouterr().err
    assert err.count("re-signing failed") == 1 and "the KMS timed out" in err
    assert "re-signing works again" in err


def test_versions_are_served_only_once_the_published_timestamp_names_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit that fails before its timestamp leaves N.snapshot.json and
    N.bin-k.json behind, which the next commit writes again with other bytes:
    served (as immutable) meanwhile, a cache would keep the wrong ones."""
    import httpx
    import trio
    from starlette.applications import Starlette

    from tufmesh.origin import _repository
    from tufmesh.origin._server import tree_routes

    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    repo.publish([stored(repo, "p/a-1.whl", b"first")])
    published = repo.snapshot().version
    role = repo.succinct.get_role_for_target("p/b-1.whl")
    transport = httpx.ASGITransport(app=Starlette(routes=tree_routes(repo.dir, repo.store)))

    def get(name: str) -> httpx.Response:
        async def ask() -> httpx.Response:
            async with httpx.AsyncClient(transport=transport, base_url="http://origin") as http:
                return await http.get(f"/metadata/{name}")

        return trio.run(ask)

    real = _repository.write_atomic

    def full_disk(path: Path, data: bytes, **options: object) -> None:
        if path.name == "timestamp.json":
            raise OSError(28, "No space left on device")
        real(path, data, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(_repository, "write_atomic", full_disk)
    bin_left = f"{repo.targets(role).version + 1}.{role}.json"
    failed = stored(repo, "p/b-1.whl", b"second")
    with pytest.raises(OSError, match="No space"):
        repo.publish([failed])
    monkeypatch.setattr(_repository, "write_atomic", real)
    # Nothing of the failed batch is kept: not its pins (its blobs would never
    # be collected), not its link (served under a target name).
    assert {failed.cid, failed.manifest}.isdisjoint(repo.store.pins()["project:p"])
    assert not (repo.dir / "targets" / "p" / f"{failed.sha256}.b-1.whl").exists()
    assert (repo.dir / "targets" / "p").is_dir() and len(repo.store.pins()["project:p"]) == 2
    left = f"{published + 1}.snapshot.json"
    assert (repo.dir / "metadata" / left).exists()  # written, never named
    assert (repo.dir / "metadata" / bin_left).exists()
    for name in (left, bin_left, f"{published + 5}.snapshot.json"):
        assert get(name).status_code == 404, name
    current = get(f"{published}.snapshot.json")
    assert current.status_code == 200 and "immutable" in current.headers["cache-control"]
    assert get("timestamp.json").status_code == get("1.root.json").status_code == 200

    repo = OriginRepository(repo.dir)  # the origin restarts
    repo.publish([stored(repo, "p/c-1.whl", b"third")])
    named = get(left)
    assert named.status_code == 200 and named.content == (repo.dir / "metadata" / left).read_bytes()
    # A failed read (here: the new snapshot briefly gone) is not remembered.
    repo.publish([stored(repo, "p/d-1.whl", b"fourth")])
    snapshot = repo.dir / "metadata" / f"{repo.snapshot().version}.snapshot.json"
    snapshot.rename(snapshot.with_suffix(".away"))
    assert get(f"1.{role}.json").status_code == 404
    snapshot.with_suffix(".away").rename(snapshot)
    assert get(f"1.{role}.json").status_code == 200


def test_a_failure_after_the_timestamp_keeps_what_it_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The timestamp replaced, then its directory's fsync fails: the batch is
    published, and must keep its pins (or gc deletes it) and its link."""
    from tufmesh.origin import _repository

    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    artifact = stored(repo, "p/a-1.whl", b"published after all")
    real = _repository.write_atomic

    def late_failure(path: Path, data: bytes, **options: object) -> None:
        real(path, data, **options)  # type: ignore[arg-type]
        if path.name == "timestamp.json":
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(_repository, "write_atomic", late_failure)
    with pytest.raises(OSError, match="Input/output"):
        repo.publish([artifact])
    monkeypatch.setattr(_repository, "write_atomic", real)
    link = repo.dir / "targets" / "p" / f"{artifact.sha256}.a-1.whl"
    assert repo.find(artifact.path) is not None
    assert {artifact.cid, artifact.manifest} <= repo.store.pins()["project:p"]
    assert link.exists()
    link.unlink()  # as an older version of this code did: a retry brings it back
    assert repo.publish([artifact]) == [repo.snapshot().version] and link.exists()


def test_a_hash_bin_never_grows_past_what_clients_accept(tmp_path: Path) -> None:
    """One project publishing many names that hash into another's bin would make
    the bin larger than a TUF client fetches, and the other's artifacts
    unresolvable: uploads that would pass the limit are refused instead."""
    limit = 64 * 1024
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4, max_bin_bytes=limit))
    victim = "victim/v-1.whl"
    role = repo.succinct.get_role_for_target(victim)
    assert repo.publish([stored(repo, victim, b"the victim's artifact")]) == [2]
    blob = stored(repo, "attacker/x-0.whl", b"x")  # one blob under many names
    names = (f"attacker/x-{i}.whl" for i in range(100_000))
    aimed = [n for n in names if repo.succinct.get_role_for_target(n) == role][:400]
    results = []
    for start in range(0, len(aimed), 100):
        batch = [dataclasses.replace(blob, path=name) for name in aimed[start : start + 100]]
        results += repo.publish(batch)
    refused = [r for r in results if isinstance(r, OriginError)]
    assert 0 < len(refused) < len(aimed) and all(isinstance(r, BinFullError) for r in refused)
    assert refused == results[len(results) - len(refused) :]  # once full, full
    signed = repo.metadata_dir / f"{repo.targets(role).version}.{role}.json"
    assert limit - 1000 < signed.stat().st_size <= limit
    info = updater_for(repo, tmp_path / "client").get_targetinfo(victim)
    assert info is not None and info.length == len(b"the victim's artifact")
    other = next(f"victim/v-{i}.whl" for i in range(2, 99) if repo.succinct.get_role_for_target(
        f"victim/v-{i}.whl") != role)  # fmt: skip
    assert isinstance(repo.publish([stored(repo, other, b"elsewhere")])[0], int)


def test_a_project_cannot_publish_past_its_quota(tmp_path: Path) -> None:
    """A token's holder (a leaked token) could publish without end and fill
    the origin's disk; other projects are not touched by its quota."""
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4, project_quota=1000))
    first = stored(repo, "greedy/a-1.whl", b"a" * 600)
    assert repo.publish([first]) == [2]
    batch = [stored(repo, "greedy/b-1.whl", b"b" * 300), stored(repo, "greedy/c-1.whl", b"c" * 300)]
    ok, refused = repo.publish(batch)  # the second of one batch counts the first
    assert ok == 3 and isinstance(refused, QuotaError) and "greedy would hold 1,200" in str(refused)
    assert repo.publish([first]) == [3]  # the same artifact again: nothing new
    assert repo.publish([stored(repo, "other/x-1.whl", b"x" * 900)]) == [4]
    again = OriginRepository(repo.dir)  # counted afresh from the signed bins
    assert isinstance(again.publish([stored(again, "greedy/d-1.whl", b"d" * 200)])[0], QuotaError)
    assert again.publish([stored(again, "greedy/e-1.whl", b"e" * 100)]) == [5]


def test_superseded_metadata_goes_after_its_grace_and_clients_still_follow(
    tmp_path: Path,
) -> None:
    """Each commit wrote a new version of the bins it touched and of the
    snapshot, and none was deleted: a token holder's empty uploads, one
    commit each, grew the metadata without bound whatever the quota. A
    version replaced SUPERSEDED_GRACE ago or more is now deleted (root's
    chain stays), at the next commit that touches its role or at start."""
    import tufmesh.origin._repository as repository

    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    path = "proj/a-1.tar.gz"
    for i in range(4):  # four commits
        assert isinstance(repo.publish([stored(repo, f"proj/a-{i}.tar.gz", bytes([i]))])[0], int)
    versions = lambda name: sorted(  # noqa: E731
        int(p.name.split(".", 1)[0]) for p in repo.metadata_dir.glob(f"*.{name}.json")
    )
    assert len(versions("snapshot")) >= 5  # all kept: replaced just now
    old = time.time() - repository.SUPERSEDED_GRACE - 1
    for p in repo.metadata_dir.glob("*.json"):
        os.utime(p, (old, old))  # as if written before the grace
    assert isinstance(repo.publish([stored(repo, "proj/b-1.tar.gz", b"b")])[0], int)
    snapshot = repo._md["snapshot"].signed.version
    # The versions replaced long ago went; the one replaced now stays.
    assert versions("snapshot") == [snapshot - 1, snapshot]
    assert len(versions("root")) == 1 and (repo.metadata_dir / "1.root.json").exists()
    touched = repo.succinct.get_role_for_target("proj/b-1.tar.gz")
    assert len(versions(touched)) <= 2
    # At start, every role's (here: the bins no commit touched since).
    untouched = [r for r in repo.succinct.get_roles() if r != touched]
    for p in repo.metadata_dir.glob("*.json"):
        os.utime(p, (old, old))
    OriginRepository(repo.dir).tidy()
    assert all(len(versions(r)) == 1 for r in untouched)
    assert versions("snapshot") == [snapshot]
    # A stock client, new or with old metadata, follows.
    updater = updater_for(OriginRepository(repo.dir), tmp_path / "client")
    updater.refresh()
    assert updater.get_targetinfo(path) is not None


def test_an_entry_the_origin_does_not_write_cannot_stop_it_from_starting(tmp_path: Path) -> None:
    """An entry with no SHA-256 (signed with a leaked online bin key) made the
    committer's start-up tidy a KeyError: the origin could not start, and so
    not serve the recovery (``origin remove`` of that entry)."""
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    odd, odder = "proj/odd-1.whl", "proj/odder-1.whl"
    with repo.edit_targets(repo.succinct.get_role_for_target(odd)) as targets:
        targets.targets[odd] = TargetFile(1, {"sha512": "00" * 64}, odd)
    with repo.edit_targets(repo.succinct.get_role_for_target(odder)) as targets:
        targets.targets[odder] = TargetFile(
            1, {"sha256": "../x"}, odder, unrecognized_fields={"custom": None}
        )
    repo._commit()
    OriginRepository(repo.dir).tidy()  # no KeyError, no AttributeError
    said = tufmesh("origin", "remove", "--dir", str(repo.dir), odd, odder).stdout
    assert f"removed {odd}  (no sha256)" in said and f"removed {odder}  (no sha256)" in said
    fresh = OriginRepository(repo.dir)
    assert fresh.find(odd) is None and fresh.find(odder) is None


def _service_for(repo: OriginRepository) -> Any:
    """An origin's service on ``repo``, its store work done inline (so that
    virtual time sees every step), with the repository as its committer."""
    from tufmesh.origin import OriginService
    from tufmesh.origin._signer import LocalCommitter

    async def inline(fn: Any, *args: Any) -> Any:
        return fn(*args)

    return OriginService(repo.dir, LocalCommitter(repo, run_sync=inline), run_sync=inline)


def _run_for(loop: Any, seconds: float) -> None:
    """Run one of the service's ``loop``s (forever) for ``seconds`` of virtual time."""
    import trio
    import trio.testing

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(loop)
            await trio.sleep(seconds)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_the_serving_origin_collects_what_no_published_artifact_pins(tmp_path: Path) -> None:
    """An upload the committer refused (its path taken with other bytes) or a
    failed batch leaves a stored blob no metadata names: it must not stay for ever."""
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    kept = stored(repo, "p/kept-1.whl", b"published")
    repo.publish([kept])
    refused = stored(repo, "p/kept-1.whl", b"other bytes, same name")
    assert isinstance(repo.publish([refused])[0], OriginError)
    fresh = repo.store.put(b"an upload waiting for its commit")
    hour_ago = time.time() - 3600
    for cid in (kept.cid, refused.cid, refused.manifest):
        os.utime(repo.store.path(cid), (hour_ago, hour_ago))

    service = _service_for(repo)
    # Refused and staged bytes count against the quota while on the disk:
    # what the collection deleted stops counting, what it kept does not.
    # Refused bytes that something published pins (kept's, sent again under a
    # name in other case) are never collected: they stop counting too.
    service.refused["p"] = {refused.cid: 22, fresh: 32, kept.cid: 9}
    service.staged["q"] = {fresh: ("f-1.whl", 32, None)}

    _run_for(service.run_collector, service.config.gc_interval + 1)
    assert service.refused == {"p": {fresh: 32}} and service.staged == {
        "q": {fresh: ("f-1.whl", 32, None)}
    }
    assert service.held("p") == service.committer.used.get("p", 0) + 32
    assert service.collected == 2
    assert not repo.store.has(refused.cid) and not repo.store.has(refused.manifest)
    assert repo.store.has(kept.cid) and repo.store.has(kept.manifest) and repo.store.has(fresh)


def test_the_serving_origin_quarantines_a_blob_gone_bad_and_restore_stores_it_again(
    tmp_path: Path,
) -> None:
    """A blob whose bytes the disk changed was served for ever (every mirror
    that fetched a chunk of it banned the origin for its sync): the origin's
    scrub quarantines it, /healthz says so, and 'origin restore' stores it
    again from a verified copy, link and all."""
    import httpx
    import trio

    from tufmesh.origin._server import build_app

    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    body = os.urandom((2 << 20) + 1000)  # three chunks: a manifest too
    artifact = stored(repo, "p/a-1.tar.gz", body)
    repo.publish([artifact])
    link = repo.targets_dir / "p" / f"{artifact.sha256}.a-1.tar.gz"
    damaged = bytearray(body)
    damaged[12345] ^= 0x10
    repo.store.path(artifact.cid).write_bytes(damaged)  # the served link's bytes too

    service = _service_for(repo)
    _run_for(service.run_scrubber, service.config.scrub_interval + 1)
    assert service.lost() == [artifact.cid] and not repo.store.has(artifact.cid)
    assert _service_for(repo).lost() == [artifact.cid]  # and after a restart (or an fsck)

    async def health() -> Any:
        transport = httpx.ASGITransport(app=build_app(service))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://origin") as client:
            blob = await client.get(f"/blobs/{artifact.cid}")
            target = await client.get(f"/targets/p/{link.name}")  # the link: the same file
            return (blob.status_code, target.status_code), (await client.get("/healthz")).json()

    status, said = trio.run(health)
    assert status == (404, 404) and said["status"] == "degraded"  # no longer served
    assert said["quarantined"] == [artifact.cid] and "origin restore" in said["warnings"][-1]
    assert repo.store.has(artifact.manifest)  # intact: kept
    elsewhere = tmp_path / "other.tar.gz"
    elsewhere.write_bytes(b"no published artifact's bytes")
    refused = tufmesh("origin", "restore", "--dir", str(repo.dir), str(elsewhere), check=False)
    assert refused.returncode == 1 and "no published artifact has these bytes" in refused.stderr
    copy = tmp_path / "a-1.tar.gz"  # as 'tufmesh get' fetched it from a mirror, verified
    copy.write_bytes(body)
    said = tufmesh("origin", "restore", "--dir", str(repo.dir), str(copy)).stdout
    assert said == f"restored p/a-1.tar.gz from {copy}\n"
    assert service.lost() == [] and repo.store.read(artifact.cid) == body
    assert link.read_bytes() == body  # the link no longer holds the quarantined copy
    status, said = trio.run(health)
    assert status == (200, 200) and said["status"] == "ok" and said["quarantined"] == []
    # An operator's 'cas fsck --quarantine' while the origin serves is said at
    # once too (it was only after a restart).
    other = stored(repo, "p/b-1.tar.gz", os.urandom(5000))
    repo.publish([other])
    repo.store.path(other.cid).write_bytes(b"changed by the disk")
    assert BlobStore(repo.store.root).fsck(quarantine=True).corrupt == [other.cid]
    pins, failures = service.store.pins, [OSError(5, "Input/output error")]

    def pins_once_failing() -> Any:
        if failures:
            raise failures.pop()
        return pins()

    service.store.pins = pins_once_failing  # a disk that fails once
    status, said = trio.run(health)
    assert (
        said["quarantined"] == [] and "cannot read the store's quarantine" in said["warnings"][-1]
    )
    status, said = trio.run(health)  # said the next time, not lost
    assert said["status"] == "degraded" and said["quarantined"] == [other.cid]


def test_a_committer_whose_origin_died_says_so_in_a_line(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The serving process killed mid-commit: the committer finished the
    commit, and printed a BrokenPipeError's traceback as it answered (a review)."""
    import io

    from tufmesh.origin._signer import _serve_requests

    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    read, write = os.pipe()
    os.close(read)  # the origin's end, gone
    with open(write, "wb") as stdout:
        _serve_requests(repo, io.BytesIO(b""), stdout)
    err = capfd.readouterr().err
    assert "the serving process is gone" in err and "Traceback" not in err


def test_the_committer_process_reports_each_refusal_as_its_kind(tmp_path: Path) -> None:
    """What `serve` uses: the kind of a refusal decides the HTTP status (409, 507)."""
    import trio

    from tufmesh.origin._signer import SignerProcess

    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=2, max_bin_bytes=65536))
    first = stored(repo, "p/taken-1.whl", b"first")
    repo.publish([first])
    batch = [stored(repo, "p/taken-1.whl", b"other bytes")]
    batch += [stored(repo, f"p/f-{i}.whl", b"%d" % i) for i in range(500)]

    async def main() -> list[int | OriginError]:
        signer = await SignerProcess.start(repo.dir)
        try:
            return await signer.publish(batch)
        finally:
            await signer.aclose()

    results = trio.run(main)
    assert type(results[0]) is ConflictError
    full = [r for r in results[1:] if isinstance(r, OriginError)]
    assert full and all(type(r) is BinFullError and "is full" in str(r) for r in full)


def test_a_vanished_blob_fails_its_upload_only(tmp_path: Path) -> None:
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    kept = stored(repo, "p/kept-1.tar.gz", b"kept")
    gone = stored(repo, "p/gone-1.tar.gz", b"gone")
    repo.store.delete(gone.cid)
    results = repo.publish([kept, gone])
    assert results[0] == 2
    assert isinstance(results[1], OriginError) and "vanished" in str(results[1])
    assert repo.find("p/gone-1.tar.gz") is None and repo.find("p/kept-1.tar.gz") is not None


def test_the_committer_checks_each_artifact_against_the_store(tmp_path: Path) -> None:
    """The HTTP process describes an artifact; the committer signs only what agrees
    with the store, whatever it was told, and refuses the rest one by one."""
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    good = stored(repo, "p/good-1.tar.gz", b"good" * 1000)
    other = stored(repo, "p/other-1.tar.gz", b"other")
    lies = {
        "sha256 of other bytes": dataclasses.replace(good, path="p/a-1", sha256=other.sha256),
        "another length": dataclasses.replace(good, path="p/b-1", length=good.length + 1),
        "another blob's manifest": dataclasses.replace(other, path="p/c-1", manifest=good.manifest),
        "a name never normalised": dataclasses.replace(good, path="P_x/d-1"),
        "a path-like file name": dataclasses.replace(good, path="p/../etc"),
        "an unknown blob": dataclasses.replace(good, path="p/e-1", cid="bafkrei" + "a" * 52),
    }
    results = repo.publish([good, *lies.values()])
    assert results[0] == 2
    for (lie, artifact), result in zip(lies.items(), results[1:], strict=True):
        assert isinstance(result, OriginError), lie
        assert artifact.path in str(result), (lie, result)
    assert [t.path for t in repo.artifacts()] == ["p/good-1.tar.gz"]


def test_blobs_are_pinned_before_metadata_names_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    artifact = stored(repo, "p/a-1.tar.gz", b"one" * 1000)
    import tufmesh.origin._repository as module

    real = module.write_atomic
    pinned_at_timestamp: list[frozenset[str]] = []

    def watch(path: Path, data: bytes, **kwargs: bool) -> None:
        if path.name == "timestamp.json":
            pinned_at_timestamp.append(repo.store.pins().get("project:p", frozenset()))
        real(path, data, **kwargs)

    monkeypatch.setattr(module, "write_atomic", watch)
    assert repo.publish([artifact]) == [2]
    assert pinned_at_timestamp == [frozenset({artifact.cid, artifact.manifest})]


def test_the_longest_names_publish(tmp_path: Path) -> None:
    """Names at the limits fit the store's pin sets and the targets directory."""
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    project = "p" * 128
    filename = check_filename("f" * 190)
    artifact = stored(repo, f"{project}/{filename}", b"x" * 3000)
    assert repo.publish([artifact]) == [2]
    assert repo.store.pins()[f"project:{project}"] == {artifact.cid, artifact.manifest}
    with pytest.raises(InvalidNameError, match="over 190 bytes"):
        check_filename("f" * 191)


def test_concurrent_project_edits_keep_every_change(tmp_path: Path) -> None:
    """Maintainers' commands in separate processes: no add and no token rotation is lost."""
    repo = tmp_path / "repo"
    repo.mkdir()
    leaked = ProjectRegistry(repo).add("victim")
    script = (
        "import sys; from pathlib import Path;"
        "from tufmesh.origin._projects import ProjectRegistry;"
        "r = ProjectRegistry(Path(sys.argv[1]));"
        "[r.add(f'{sys.argv[2]}-{i}') for i in range(100)] if sys.argv[2] != 'rotate' "
        "else [r.rotate('victim') for _ in range(100)]"
    )
    workers = [
        subprocess.Popen([sys.executable, "-c", script, str(repo), name])
        for name in ("a", "b", "c", "rotate")
    ]
    assert all(worker.wait(timeout=60) == 0 for worker in workers)
    registry = ProjectRegistry(repo)
    assert len(registry.names()) == 301
    with pytest.raises(AuthError):
        registry.authorize("victim", leaked)


def test_a_signer_that_needs_a_pin_asks_the_terminal_only(tmp_path: Path) -> None:
    """A signer that needs a secret (an ``hsm:`` key's PIN) gets a way to ask for
    it; with no terminal to ask on, it fails, and never reads stdin."""
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from securesystemslib.signer import SIGNER_FOR_URI_SCHEME, CryptoSigner
        from tufmesh.origin._keys import generate_file_key, load_signer

        class Pin(CryptoSigner):
            @classmethod
            def from_priv_key_uri(cls, uri, public_key, secrets_handler=None):
                secrets_handler("PIN")

        SIGNER_FOR_URI_SCHEME["pin"] = Pin
        _, key = generate_file_key(Path(sys.argv[1]), "k")
        load_signer(Path(sys.argv[1]), "pin:x", key)
        """
    )
    asked = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        input="123456\n", capture_output=True, text=True, start_new_session=True, timeout=60,
    )  # fmt: skip
    assert asked.returncode == 1
    assert "pin:x needs its PIN, and there is no terminal to ask on" in asked.stderr, asked.stderr


def timestamp_ahead(repo: OriginRepository, versions: int, signers: dict[str, Any]) -> bytes:
    """The published timestamp, ``versions`` ahead, signed by ``signers`` (a leaked key's)."""
    md = Metadata.from_bytes((repo.metadata_dir / "timestamp.json").read_bytes())
    md.signed.version += versions
    md.signatures.clear()
    for signer in signers.values():
        md.sign(signer, append=True)
    return md.to_bytes()


def test_rotating_each_role_is_followed_by_an_unmodified_tuf_client(tmp_path: Path) -> None:
    """After each rotation python-tuf's client, holding metadata from before,
    updates and downloads; metadata signed by a rotated-out key is refused."""
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4), root_threshold=2)
    first = stored(repo, "p/a-1.tar.gz", b"one" * 1000)
    assert repo.publish([first]) == [2]
    client = updater_for(repo, tmp_path / "client")
    client.refresh()
    for role in ["timestamp", "snapshot", "bin-n", "bins", "targets", "root"]:
        old = {k: load_signer(repo.dir, uri, repo._public_keys()[k])
               for k, uri in repo.config.signers[role].items()}  # fmt: skip
        if role == "timestamp":
            # The leaked key signed a far-future version, and the client took it
            # (fast-forward): after the rotation it must still accept the real,
            # lower versions (TUF's recovery: metadata of a rotated key is dropped).
            real = (repo.metadata_dir / "timestamp.json").read_bytes()
            (repo.metadata_dir / "timestamp.json").write_bytes(timestamp_ahead(repo, 100, old))
            updater_for(repo, tmp_path / "client").refresh()
            (repo.metadata_dir / "timestamp.json").write_bytes(real)
        new = [generate_file_key(repo.dir, f"{role}-new{i}") for i in (1, 2)]
        done = repo.rotate(role, new, threshold=2 if role == "root" else 1)
        assert role in done and {"snapshot", "timestamp"} <= set(done)
        assert set(repo.config.signers[role]) == {key.keyid for _, key in new}
        # Reloaded from disk, the repository signs with the new keys only.
        repo = OriginRepository(repo.dir)
        artifact = stored(repo, f"p/after-{role}-1.tar.gz", role.encode() * 100)
        assert isinstance(repo.publish([artifact])[0], int)
        client = updater_for(repo, tmp_path / "client")  # the same cache as before
        client.refresh()
        for path in ("p/a-1.tar.gz", artifact.path):
            assert client.get_targetinfo(path) is not None, (role, path)
        # What the old key signs now is refused.
        if role == "timestamp":
            (repo.metadata_dir / "timestamp.json").write_bytes(timestamp_ahead(repo, 1, old))
            with pytest.raises(UnsignedMetadataError):
                updater_for(repo, tmp_path / "client").refresh()
            repo.resign(["timestamp"])  # a fresh, validly signed one
    root = repo._md["root"].signed
    # v1, then one version per rotation of a key it names: timestamp, snapshot, targets, root.
    assert root.version == 5 and root.roles["root"].threshold == 2


def test_offline_roles_are_re_signed_by_a_ceremony(tmp_path: Path) -> None:
    clock = Clock(datetime.now(UTC))
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4), clock=clock)
    before = {r: repo._md[r].signed.expires for r in ("root", "targets", "bins")}
    clock.now += timedelta(days=300)  # a year's lifetime nearly gone
    done = repo.resign(["root", "targets", "bins"])
    assert done == ["root", "targets", "bins", "snapshot", "timestamp"]
    for role, expires in before.items():
        assert repo._md[role].signed.expires > expires + timedelta(days=299)
    client = updater_for(OriginRepository(repo.dir), tmp_path / "c")
    client.refresh()
    with pytest.raises(OriginError, match="no role"):
        repo.resign(["nope"])


def test_a_removed_artifact_leaves_the_metadata_and_its_name_stays_taken(tmp_path: Path) -> None:
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    bad = stored(repo, "p/evil-1.tar.gz", b"malware" * 500)
    twin = stored(repo, "p/twin-1.tar.gz", b"malware" * 500)  # the same bytes, another name
    good = stored(repo, "p/good-1.tar.gz", b"fine" * 500)
    other = stored(repo, "q/evil-1.tar.gz", b"malware" * 500)  # another project's copy
    assert repo.publish([bad, twin, good, other]) == [2, 2, 2, 2]
    link = repo.targets_dir / "p" / f"{bad.sha256}.evil-1.tar.gz"
    assert link.exists()
    assert repo.remove(["p/evil-1.tar.gz"]) == 3
    client = updater_for(repo, tmp_path / "client")
    client.refresh()
    assert client.get_targetinfo("p/evil-1.tar.gz") is None
    for kept in ("p/twin-1.tar.gz", "p/good-1.tar.gz", "q/evil-1.tar.gz"):
        assert client.get_targetinfo(kept) is not None
    assert not link.exists()
    assert bad.cid in repo.store.pins()["project:p"]  # its twin still needs the bytes
    repo.remove(["p/twin-1.tar.gz"])
    assert bad.cid not in repo.store.pins()["project:p"]
    assert bad.cid in repo.store.pins()["project:q"]
    # The name is never published again, with other bytes or the same.
    for again in (stored(repo, "p/evil-1.tar.gz", b"benign"), bad):
        (result,) = repo.publish([again])
        assert isinstance(result, ConflictError) and "removed" in str(result)
    (result,) = repo.publish([stored(repo, "p/Evil-1.tar.gz", b"benign")])  # nor in other case
    assert isinstance(result, ConflictError) and "p/evil-1.tar.gz was published and removed" in str(
        result
    )
    with pytest.raises(OriginError, match="not published"):
        repo.remove(["p/never-1.tar.gz"])
    assert set(OriginRepository(repo.dir).removed()) == {"p/evil-1.tar.gz", "p/twin-1.tar.gz"}


def test_a_client_fast_forwarded_by_leaked_online_keys_follows_once_they_are_rotated(
    tmp_path: Path,
) -> None:
    """The online keys leaked together (one host): the attacker pushed the
    timestamp, the snapshot and a bin far ahead, and a client took them.
    Once the maintainers rotate timestamp, snapshot and bin-n (docs/
    maintainers.md), the client takes the real, lower versions again (TUF's
    fast-forward recovery: a root with new timestamp or snapshot keys makes
    the client drop the metadata they signed)."""
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    path = "p/a-1.tar.gz"
    assert repo.publish([stored(repo, path, b"one" * 1000)]) == [2]
    updater_for(repo, tmp_path / "client").refresh()
    leaked = {role: repo._signers_for(role if role != "bin-n" else repo._role_of(path))
              for role in ("timestamp", "snapshot", "bin-n")}  # fmt: skip
    metadata, ahead = repo.metadata_dir, 100
    real = (metadata / "timestamp.json").read_bytes()

    def forge(md: Metadata[Any], role: str) -> Metadata[Any]:
        md.signed.version += ahead
        md.signatures.clear()
        for signer in leaked[role]:
            md.sign(signer, append=True)
        return md

    bin_role = repo._role_of(path)
    snapshot = Metadata.from_bytes(real).signed.snapshot_meta.version
    listing = Metadata.from_bytes((metadata / f"{snapshot}.snapshot.json").read_bytes())
    bin_version = listing.signed.meta[f"{bin_role}.json"].version
    forged = [metadata / f"{bin_version + ahead}.{bin_role}.json",
              metadata / f"{snapshot + ahead}.snapshot.json"]  # fmt: skip

    def described(meta: Any, data: bytes) -> None:  # (its length and hash, if named)
        meta.version += ahead
        meta.length = len(data) if meta.length is not None else None
        meta.hashes = {"sha256": hashlib.sha256(data).hexdigest()} if meta.hashes else None

    bin_md = Metadata.from_bytes((metadata / f"{bin_version}.{bin_role}.json").read_bytes())
    forged[0].write_bytes(data := forge(bin_md, "bin-n").to_bytes())
    described(listing.signed.meta[f"{bin_role}.json"], data)
    forged[1].write_bytes(data := forge(listing, "snapshot").to_bytes())
    timestamp = Metadata.from_bytes(real)
    described(timestamp.signed.snapshot_meta, data)
    (metadata / "timestamp.json").write_bytes(forge(timestamp, "timestamp").to_bytes())
    taken = updater_for(repo, tmp_path / "client")
    taken.refresh()
    assert taken.get_targetinfo(path) is not None  # (the forged bin, loaded)
    for file in forged:
        file.unlink()
    (metadata / "timestamp.json").write_bytes(real)
    stuck = updater_for(repo, tmp_path / "client")
    with pytest.raises(RepositoryError) as stuck_on:  # before the recovery
        stuck.refresh()
    assert "version" in str(stuck_on.value), stuck_on.value  # (a rollback, to it)
    for role in ("timestamp", "snapshot", "bin-n"):
        repo.rotate(role, [generate_file_key(repo.dir, f"{role}-new")])
    client = updater_for(OriginRepository(repo.dir), tmp_path / "client")
    client.refresh()
    info = client.get_targetinfo(path)
    assert info is not None and Path(client.download_target(info)).read_bytes() == b"one" * 1000


def test_a_root_rotation_without_the_old_root_keys_is_refused(tmp_path: Path) -> None:
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4), root_threshold=2)
    (repo.dir / "keys" / "root-2.pem").unlink()  # one root key holder is absent
    repo = OriginRepository(repo.dir)
    with pytest.raises(OriginError, match="1 of the 2 root keys"):
        repo.rotate(
            "root", [generate_file_key(repo.dir, "new-1"), generate_file_key(repo.dir, "new-2")]
        )
    assert repo._md["root"].signed.version == 1
    assert repo.rotate("bin-n", [generate_file_key(repo.dir, "bins-new")])  # no root needed


def fill_disk_at(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """The disk fills up as the repository writes the file ``name``."""
    _fill_disk_when(monkeypatch, lambda path: path.name == name)


def fill_disk_in_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up as the repository writes any metadata (its
    configuration, outside ``metadata/``, is written)."""
    _fill_disk_when(monkeypatch, lambda path: path.parent.name == "metadata")


def _fill_disk_when(monkeypatch: pytest.MonkeyPatch, full: Callable[[Path], bool]) -> None:
    import tufmesh.origin._repository as module

    real = module.write_atomic

    def full_disk(path: Path, data: bytes, **kwargs: bool) -> None:
        if full(path):
            raise OSError(28, "No space left on device")
        real(path, data, **kwargs)

    monkeypatch.setattr(module, "write_atomic", full_disk)


@pytest.mark.parametrize("role", ["root", "targets", "bins", "bin-n", "timestamp"])
def test_a_rotation_cut_short_leaves_a_repository_that_can_finish_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, role: str
) -> None:
    """The disk fails as the new timestamp is written (the last write): whatever
    reached the disk, the configuration can sign it, the repository says which
    roles clients would refuse, and signing them again (the origin does so by
    itself for the online ones) gives metadata python-tuf's client accepts."""
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    assert repo.publish([stored(repo, "p/a-1.tar.gz", b"one" * 100)]) == [2]
    fill_disk_at(monkeypatch, "timestamp.json")
    new = [generate_file_key(repo.dir, f"{role}-new")]
    old_keyids = set(repo.config.signers[role])
    with pytest.raises(OSError, match="No space"):
        repo.rotate(role, new)
    monkeypatch.undo()
    reopened = OriginRepository(repo.dir)
    # The new key is kept wherever published metadata names it already.
    named = reopened._role_keys(reopened._bins()[0] if role == "bin-n" else role)[0]
    assert set(named) <= set(reopened.config.signers[role])
    # For a monitoring check: clients refuse a role the keys named do not sign.
    status = tufmesh("origin", "status", "--dir", str(repo.dir), check=False)
    cut_short = reopened.cut_short_rotations()  # (its keys not yet in what clients read)
    failed = bool(reopened.broken or cut_short)
    assert (status.returncode == 1) == failed, (reopened.broken, status.stderr)
    offline = [r for r in reopened.broken if r in ("targets", "bins")]
    if offline:  # an origin will not serve what clients would refuse, and says why
        refused = tufmesh("origin", "serve", "--dir", str(repo.dir), "--port", "0", check=False)
        assert refused.returncode == 1, refused
        assert f"run 'tufmesh origin sign --dir {repo.dir} {offline[0]}'" in refused.stderr
        reopened.resign(offline)
    reopened.refresh()  # what `origin serve` does as it starts
    assert reopened.broken == []
    # Once the new key is named, the old one is named by nothing: retired.
    published = new[0][1].keyid in reopened.keyids_in_use()
    # The old key, still configured, is named by nothing: said, until retired.
    warned = tufmesh("origin", "status", "--dir", str(repo.dir), check=False).stderr
    assert ("no role names them" in warned) == published, warned
    assert set(reopened.retire_signers()) == (old_keyids if published else set())
    # The old keys were recorded as replaced before anything reached the disk:
    # a rotation cut short cannot leave them free to be named again.
    assert old_keyids <= set(OriginRepository(repo.dir).config.retired)
    warned = tufmesh("origin", "status", "--dir", str(repo.dir), check=False).stderr
    assert "no role names them" not in warned
    assert set(reopened.config.signers[role]) == (
        {new[0][1].keyid} if published else old_keyids | {new[0][1].keyid}
    )
    assert bool(cut_short) == (not published)  # ...then 'origin rotate' again (as below)
    client = updater_for(OriginRepository(repo.dir), tmp_path / "client")
    client.refresh()
    assert client.get_targetinfo("p/a-1.tar.gz") is not None


@pytest.mark.parametrize("role", ["targets", "bin-n", "timestamp"])
def test_a_rotation_cut_short_before_its_keys_are_published_is_finished_only_by_rotating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, role: str
) -> None:
    """The configuration is written, no metadata yet (a kill, a full disk): the
    role is still signed by the keys it began to replace, which may have
    leaked. status exited 0 and told the maintainer to run 'origin sign',
    which re-signed the role with its old key for another year, and retired
    the new one. Now status fails, serve and sign refuse, and the rotation
    run again finishes it."""
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    assert repo.publish([stored(repo, "p/a-1.tar.gz", b"one" * 100)]) == [2]
    client = updater_for(repo, tmp_path / "client")
    client.refresh()
    old = set(repo.config.signers[role])
    fill_disk_in_metadata(monkeypatch)
    with pytest.raises(OSError, match="No space"):
        repo.rotate(role, [generate_file_key(repo.dir, f"{role}-new")])
    monkeypatch.undo()
    said = f"the rotation of {role} was cut short before its new keys were published"
    again = f"run 'tufmesh origin rotate --dir {repo.dir} {role}' again"
    status = tufmesh("origin", "status", "--dir", str(repo.dir), check=False)
    assert status.returncode == 1 and said in status.stderr and again in status.stderr
    assert "retires them" not in status.stderr  # (it told them to destroy the new key)
    served = tufmesh("origin", "serve", "--dir", str(repo.dir), "--port", "0", check=False)
    assert served.returncode == 1 and said in served.stderr, served.stderr
    signed = tufmesh("origin", "sign", "--dir", str(repo.dir), role, check=False)
    assert signed.returncode == 1 and said in signed.stderr, signed.stderr
    tufmesh("origin", "sign", "--dir", str(repo.dir), "root")  # another role: signed...
    assert said in tufmesh("origin", "status", "--dir", str(repo.dir), check=False).stderr
    done = tufmesh("origin", "rotate", "--dir", str(repo.dir), role)  # ...and this finishes it
    assert "cut short" not in done.stderr, done.stderr
    reopened = OriginRepository(repo.dir)
    assert reopened.cut_short_rotations() == {}
    assert not set(reopened.config.signers[role]) & old
    reopened.refresh()
    assert tufmesh("origin", "status", "--dir", str(repo.dir)).returncode == 0
    client = updater_for(reopened, tmp_path / "client")  # one that trusted the old keys
    client.refresh()
    assert client.get_targetinfo("p/a-1.tar.gz") is not None


def test_a_rotation_that_only_drops_a_key_is_said_cut_short_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys {A, B} to {A} (B leaked) adds no key: a rotation cut short was told
    apart by a new key the metadata did not name, and this one was not (a
    review): status exited 0, and 'origin sign' kept B for another year."""
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    a, b = generate_file_key(repo.dir, "targets-a"), generate_file_key(repo.dir, "targets-b")
    repo.rotate("targets", [a, b], threshold=1)
    fill_disk_in_metadata(monkeypatch)
    with pytest.raises(OSError, match="No space"):
        repo.rotate("targets", [a])
    monkeypatch.undo()
    said = f"still signed by {b[1].keyid[:12]}, which it replaced"
    status = tufmesh("origin", "status", "--dir", str(repo.dir), check=False)
    assert status.returncode == 1 and said in status.stderr, status.stderr
    signed = tufmesh("origin", "sign", "--dir", str(repo.dir), "targets", check=False)
    assert signed.returncode == 1 and said in signed.stderr, signed.stderr
    tufmesh("origin", "rotate", "--dir", str(repo.dir), "targets", "--signer", a[0])
    assert tufmesh("origin", "status", "--dir", str(repo.dir)).returncode == 0
    assert OriginRepository(repo.dir).config.rotating == {}


def test_a_rotation_cut_short_without_its_record_or_adding_keys_is_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A configuration from before the record of rotations under way (its
    own rotation cut short): told by the keys it names beside the published
    ones, some replaced. And one that only adds a key names none replaced
    (it said "still signed by , which it replaced")."""
    for name, adding in (("old", False), ("adding", True), ("mixed", False)):
        repo = OriginRepository.create(tmp_path / name, OriginConfig(bins=4))
        current = next(iter(repo.config.signers["targets"].items()))
        keys = [generate_file_key(repo.dir, "targets-new")]
        if adding:
            keys.append((current[1], repo._public_keys()[current[0]]))
        if name == "mixed":  # (and another role's key among the new ones)
            bins = next(iter(repo.config.signers["bins"].items()))
            keys.append((bins[1], repo._public_keys()[bins[0]]))
        fill_disk_in_metadata(monkeypatch)
        with pytest.raises(OSError, match="No space"):
            repo.rotate("targets", keys)
        monkeypatch.undo()
        if not adding:  # as a version without the record left it (the test it fell back on)
            config = json.loads((repo.dir / "config.json").read_text())
            del config["rotating"]
            (repo.dir / "config.json").write_text(json.dumps(config))
        status = tufmesh("origin", "status", "--dir", str(repo.dir), check=False)
        assert status.returncode == 1 and "the rotation of targets was cut short" in status.stderr
        said = "it replaced no key" if adding else f"still signed by {current[0][:12]}"
        assert said in status.stderr, status.stderr
        signed = tufmesh("origin", "sign", "--dir", str(repo.dir), "targets", check=False)
        assert signed.returncode == 1 and "cut short" in signed.stderr, signed.stderr
    # Not a healthy one that only looks alike: a role whose key another role's
    # rotation replaced (shared), with another role's key configured beside
    # its own by hand.
    repo = OriginRepository.create(tmp_path / "shared", OriginConfig(bins=4))
    snapshot = next(iter(repo.config.signers["snapshot"].items()))
    repo.rotate("timestamp", [(snapshot[1], repo._public_keys()[snapshot[0]])])
    repo = OriginRepository(repo.dir)
    repo.rotate("snapshot", [generate_file_key(repo.dir, "snapshot-new")])
    config = json.loads((repo.dir / "config.json").read_text())
    config["signers"]["timestamp"].update(config["signers"]["bin-n"])
    (repo.dir / "config.json").write_text(json.dumps(config))
    assert OriginRepository(repo.dir).cut_short_rotations() == {}


def test_a_rotation_never_lowers_a_threshold_unasked(tmp_path: Path) -> None:
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4), root_threshold=2)
    with pytest.raises(OriginError, match="threshold of 2"):
        repo.rotate("root", [generate_file_key(repo.dir, "only-one")])
    same = [(uri, repo._public_keys()[k]) for k, uri in repo.config.signers["timestamp"].items()]
    with pytest.raises(OriginError, match="already"):
        repo.rotate("timestamp", same)
    assert repo.rotate("root", [generate_file_key(repo.dir, "lone")], threshold=1)


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


@pytest.mark.parametrize("role", ["root", "bins", "bin-n"])
def test_a_key_given_twice_is_refused_and_nothing_changes(tmp_path: Path, role: str) -> None:
    """Twice the same key (here by two spellings of its file) looked like 2 of
    2 and was one; for bins and bin-n it published metadata python-tuf cannot
    parse (duplicate key ids), and every command then called it damaged."""
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    before = _files(repo.dir / "metadata"), _files(repo.dir)
    uri, key = generate_file_key(repo.dir, "new")
    again = "file2:" + str(repo.dir / "keys" / "new.pem")
    with pytest.raises(OriginError, match="given twice"):
        repo.rotate(role, [(uri, key), (again, key)], threshold=2)
    assert (_files(repo.dir / "metadata"), _files(repo.dir)) == before
    assert not OriginRepository(repo.dir).broken
    with pytest.raises(OriginError, match="given twice"):
        OriginRepository.create(tmp_path / "other", signers={role: [(uri, key), (again, key)]})
    assert not (tmp_path / "other").exists()


def test_a_new_key_that_cannot_sign_here_is_refused(tmp_path: Path) -> None:
    """A new root key whose signer does not load (a typo in its URI) was named
    in root unsigned: 2 of 3 keys, of which only 2 could ever sign."""
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    before = _files(repo.dir / "metadata"), _files(repo.dir)
    good = [generate_file_key(repo.dir, f"new-{i}") for i in (1, 2)]
    _, key = generate_file_key(tmp_path, "typo")
    typo = ("file2:/nowhere/typo.pem", key)
    with pytest.raises(OriginError, match=r"must sign at its ceremony.*no key file"):
        repo.rotate("root", [*good, typo], threshold=2)
    assert (_files(repo.dir / "metadata"), _files(repo.dir)) == before
    with pytest.raises(OriginError, match="must sign at its ceremony"):
        OriginRepository.create(tmp_path / "other", signers={"root": [*good, typo]})
    assert repo.rotate("root", good, threshold=2)  # the keys that can sign, still


def test_a_root_rotation_stopped_between_its_two_writes_is_finished_at_load(
    tmp_path: Path,
) -> None:
    """``N.root.json`` is written, then ``root.json``: a kill in between left
    the origin serving the old root as ``root.json``, and building its p2p
    topic and announcement gate from it."""
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    repo.rotate("root", [generate_file_key(repo.dir, "new")])
    metadata = repo.dir / "metadata"
    (metadata / "root.json").write_bytes((metadata / "1.root.json").read_bytes())
    OriginRepository(repo.dir)  # a reader (status) does not write: it holds no lock
    assert (metadata / "root.json").read_bytes() == (metadata / "1.root.json").read_bytes()
    assert OriginRepository(repo.dir).tidy() == ["metadata/root.json"]  # the committer, at start
    assert (metadata / "root.json").read_bytes() == (metadata / "2.root.json").read_bytes()


def test_offline_roles_near_or_past_their_expiry_are_warned_of(tmp_path: Path) -> None:
    """Nothing re-signs root, targets and bins but a ceremony: a year on, an
    origin served on, silently, metadata every client refused."""
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    now = repo.clock()
    assert repo.offline_expiry(now) == ([], False)
    soon, expired = repo.offline_expiry(now + timedelta(days=350))
    assert not expired and [w.split()[:2] for w in soon] == [
        ["root", "expires"], ["targets", "expires"], ["bins", "expires"],
    ]  # fmt: skip
    late, expired = repo.offline_expiry(now + timedelta(days=400))
    assert expired and all("expired on" in w and "origin sign" in w for w in late)


def test_a_removal_cut_short_is_finished_by_running_it_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    bad = stored(repo, "p/evil-1.tar.gz", b"malware" * 500)
    assert repo.publish([bad]) == [2]

    def killed(*args: object) -> None:
        raise KeyboardInterrupt  # as if killed after its commit, before the cleanup

    monkeypatch.setattr(OriginRepository, "_unlink", killed)
    with pytest.raises(KeyboardInterrupt):
        repo.remove(["p/evil-1.tar.gz"])
    monkeypatch.undo()
    assert repo.store.has(bad.cid)  # still there, still pinned
    again = OriginRepository(repo.dir)
    assert again.remove(["p/evil-1.tar.gz"]) == 3  # nothing new to sign
    assert not repo.store.has(bad.cid) and not repo.store.has(bad.manifest)  # gone at once
    assert not (repo.targets_dir / "p" / f"{bad.sha256}.evil-1.tar.gz").exists()
    # Not run again, the origin finishes it as it starts (its tidy): the blob
    # was served by CID until the next collection, and nothing said so.
    worse = stored(repo, "p/worse-1.tar.gz", b"worse" * 500)
    assert isinstance(OriginRepository(repo.dir).publish([worse])[0], int)
    monkeypatch.setattr(OriginRepository, "_unlink", killed)
    with pytest.raises(KeyboardInterrupt):
        OriginRepository(repo.dir).remove(["p/worse-1.tar.gz"])
    monkeypatch.undo()
    for cid in (worse.cid, worse.manifest):  # (past the store's grace: not bytes stored lately)
        os.utime(repo.store.path(cid), (1, 1))
    assert "finished removing p/worse-1.tar.gz" in OriginRepository(repo.dir).tidy()
    assert not repo.store.has(worse.cid) and not repo.store.has(worse.manifest)
    assert OriginRepository(repo.dir).tidy() == []  # (once)
    # A removal whose bytes the project still publishes under another name is
    # no leftover (it was said finished again at every start).
    twins = [stored(repo, f"p/{name}-1.tar.gz", b"twin" * 500) for name in ("x", "y")]
    assert all(isinstance(v, int) for v in OriginRepository(repo.dir).publish(twins))
    OriginRepository(repo.dir).remove(["p/x-1.tar.gz"])
    assert OriginRepository(repo.dir).tidy() == [] and repo.store.has(twins[1].cid)


def test_a_removal_cut_short_before_its_commit_is_reported_and_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    bad = stored(repo, "p/evil-1.tar.gz", b"malware" * 500)
    assert repo.publish([bad]) == [2]
    fill_disk_at(monkeypatch, "timestamp.json")
    with pytest.raises(OSError, match="No space"):
        repo.remove(["p/evil-1.tar.gz"])
    monkeypatch.undo()
    reopened = OriginRepository(repo.dir)
    assert reopened.unremoved == ["p/evil-1.tar.gz"]  # `status` warns, `serve` refuses
    refused = tufmesh("origin", "serve", "--dir", str(repo.dir), "--port", "0", check=False)
    assert refused.returncode == 1 and "origin remove" in refused.stderr, refused.stderr
    reopened.remove(["p/evil-1.tar.gz"])
    assert reopened.unremoved == [] and not reopened.store.has(bad.cid)


def test_a_removal_recorded_without_its_blobs_still_deletes_the_bytes(tmp_path: Path) -> None:
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    bad = stored(repo, "p/evil-1.tar.gz", b"malware")  # one chunk: the blob alone
    assert repo.publish([bad]) == [2]
    with pytest.MonkeyPatch.context() as patch:  # the removal's cleanup never ran
        patch.setattr(OriginRepository, "_unlink", lambda *args: None)
        repo.remove(["p/evil-1.tar.gz"])
    record = json.loads((repo.dir / "removed.json").read_text())
    del record["p/evil-1.tar.gz"]["blobs"]  # as written before blobs were recorded
    (repo.dir / "removed.json").write_text(json.dumps(record))
    OriginRepository(repo.dir).remove(["p/evil-1.tar.gz"])
    assert not repo.store.has(bad.cid)


def test_a_removal_of_an_entry_naming_no_cid_as_its_blob_finishes(tmp_path: Path) -> None:
    """An entry signed with stolen online keys named ``x`` as its CID: each
    ``origin remove`` (the recovery's step) failed after its commit, the
    same way every time, and left the other blobs of the removal."""
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    bad = stored(repo, "p/evil-1.tar.gz", b"malware")
    assert repo.publish([bad]) == [2]
    with pytest.MonkeyPatch.context() as patch:  # the removal's cleanup never ran
        patch.setattr(OriginRepository, "_unlink", lambda *args: None)
        repo.remove(["p/evil-1.tar.gz"])
    record = json.loads((repo.dir / "removed.json").read_text())
    record["p/evil-1.tar.gz"]["blobs"] = ["x", 7, bad.cid]  # as the entry named them
    (repo.dir / "removed.json").write_text(json.dumps(record))
    OriginRepository(repo.dir).remove(["p/evil-1.tar.gz"])
    assert not repo.store.has(bad.cid)
    # Nor does another entry of the project whose custom is no object, or
    # names a list as its CID, stop a removal after its commit.
    again = OriginRepository(repo.dir)
    good = stored(again, "p/good-1.tar.gz", b"good")
    assert again.publish([good]) == [4]
    for path, custom in [("p/odd-1.tar.gz", ["x"]), ("p/odd-2.tar.gz", {"cid": ["x"]})]:
        with again.edit_targets(again.succinct.get_role_for_target(path)) as targets:
            targets.targets[path] = TargetFile(1, {"sha256": "ab" * 32}, path, {"custom": custom})
    again._commit()  # (what stolen online keys could sign)
    OriginRepository(repo.dir).remove(["p/good-1.tar.gz"])
    assert not repo.store.has(good.cid)


def test_a_full_disk_is_a_507_with_a_reason_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The store's disk fills mid-upload: the uploader is told, in one line,
    and the origin's log says so in one line (it was a 500 and a traceback)."""
    import errno

    import httpx
    import trio

    import tufmesh.cas._store as store_module
    from tufmesh.origin import OriginService
    from tufmesh.origin._projects import ProjectRegistry
    from tufmesh.origin._server import build_app
    from tufmesh.origin._signer import LocalCommitter

    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    token = ProjectRegistry(repo.dir).add("p")
    service = OriginService(repo.dir, LocalCommitter(repo))
    transport = httpx.ASGITransport(app=build_app(service))
    written = store_module._write_all

    def full(fd: int, data: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    async def upload(body: bytes) -> httpx.Response:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.run_committer)
            async with httpx.AsyncClient(transport=transport, base_url="http://origin") as http:
                answer = await http.post(
                    "/api/v1/projects/p/files/p-1.0.tar.gz", content=body,
                    headers={"authorization": f"Bearer {token}"},
                )  # fmt: skip
            nursery.cancel_scope.cancel()
        return answer

    monkeypatch.setattr(store_module, "_write_all", full)
    answer = trio.run(upload, os.urandom(3 << 20))
    assert answer.status_code == 507 and "disk is full" in answer.json()["error"]
    assert log_lines(capsys.readouterr().err) == [
        "origin: cannot store an upload: No space left on device"
    ]
    assert list(repo.store) == [] and not list((repo.dir / "cas" / "tmp").iterdir())
    monkeypatch.setattr(store_module, "_write_all", written)
    assert trio.run(upload, b"fine").status_code == 200  # and it works again once there is room


def test_a_failed_publication_tells_the_uploader_nothing_of_the_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The committer's reason names key files, KMS keys and paths: it goes to
    the operator's log, and the uploader gets a 500 that says where to look.
    Once the key is back the next upload is published: a failed load was
    remembered, and only a restart of the origin undid it (a KMS that was
    unreachable for a moment stopped every commit and re-signing)."""
    import httpx
    import trio

    from tufmesh.origin import OriginService
    from tufmesh.origin._projects import ProjectRegistry
    from tufmesh.origin._server import build_app
    from tufmesh.origin._signer import LocalCommitter

    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    token = ProjectRegistry(repo.dir).add("p")
    service = OriginService(repo.dir, LocalCommitter(repo))
    transport = httpx.ASGITransport(app=build_app(service))
    key = repo.dir / "keys" / "bin-n.pem"
    good = key.read_bytes()

    async def upload(name: str) -> httpx.Response:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.run_committer)
            async with httpx.AsyncClient(transport=transport, base_url="http://origin") as http:
                answer = await http.post(
                    f"/api/v1/projects/p/files/{name}", content=b"bytes",
                    headers={"authorization": f"Bearer {token}"},
                )  # fmt: skip
            nursery.cancel_scope.cancel()
        return answer

    key.write_text("not a key")
    answer = trio.run(upload, "p-1.0.tar.gz")
    assert answer.status_code == 500
    assert answer.json() == {"error": "publishing failed; the origin's log says why"}
    (line,) = log_lines(capsys.readouterr().err)
    assert line.startswith("origin: publishing p/p-1.0.tar.gz failed: cannot sign bin-")
    assert "keys/bin-n.pem" in line
    key.write_bytes(good)
    assert trio.run(upload, "p-1.0.tar.gz").status_code == 200


@pytest.mark.parametrize("checked", [True, False], ids=["file-key", "unchecked-signer"])
@pytest.mark.parametrize("role", ["root", "timestamp", "bin-n"])
def test_a_signer_paired_with_another_keys_public_key_publishes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, role: str, checked: bool
) -> None:
    """A ceremony's slip: the signer URI of one key, the public key of another.
    A file key's loader refuses the pair; a KMS or HSM signer need not, and the
    metadata named the one key and was signed by the other: no client would
    follow it (a new root: every client stuck), and it was published."""
    from securesystemslib.signer import Key, Signature, Signer

    import tufmesh.origin._repository as module

    class Unchecked(Signer):
        """What a KMS signer may be: it signs with its key, whatever it is told."""

        def __init__(self, inner: Signer, public_key: Key) -> None:
            self.inner, self.named = inner, public_key

        @property
        def public_key(self) -> Key:
            return self.named

        def sign(self, payload: bytes) -> Signature:
            return Signature(self.named.keyid, self.inner.sign(payload).signature)

        @classmethod
        def from_priv_key_uri(cls, *args: object, **kwargs: object) -> Signer:
            raise NotImplementedError

    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    assert repo.publish([stored(repo, "p/a-1.tar.gz", b"one")]) == [2]
    before = sorted(p.name for p in (repo.dir / "metadata").iterdir())
    timestamp = (repo.dir / "metadata" / "timestamp.json").read_bytes()
    uri, held = generate_file_key(repo.dir, "held")
    _, other = generate_file_key(repo.dir, "named")
    if not checked:
        real = module.load_signer

        def unchecked(repo_dir: Path, signer_uri: str, public_key: Key) -> Signer:
            if signer_uri != uri:
                return real(repo_dir, signer_uri, public_key)
            return Unchecked(real(repo_dir, signer_uri, held), public_key)

        monkeypatch.setattr(module, "load_signer", unchecked)
    expected = "private key does not match" if checked else "signs with another key: check that"
    with pytest.raises(OriginError, match=expected):
        repo.rotate(role, [(uri, other)])
    monkeypatch.undo()
    assert sorted(p.name for p in (repo.dir / "metadata").iterdir()) == before
    assert (repo.dir / "metadata" / "timestamp.json").read_bytes() == timestamp
    reopened = OriginRepository(repo.dir)
    assert other.keyid not in reopened.keyids_in_use() and reopened.broken == []
    assert reopened.publish([stored(reopened, "p/b-1.tar.gz", b"two")]) == [3]
    client = updater_for(OriginRepository(repo.dir), tmp_path / "client")
    client.refresh()
    assert client.get_targetinfo("p/b-1.tar.gz") is not None


def test_uploads_in_flight_are_capped_per_project_and_the_rest_wait_their_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token holder's thousand parallel uploads each held a temp file and a
    megabyte of buffer. Past the cap an upload waits, its body unread, and
    past the wait it is told to come back; other projects are not held up."""
    import httpx
    import trio

    import tufmesh.origin._server as server
    from tufmesh.origin import OriginService
    from tufmesh.origin._projects import ProjectRegistry
    from tufmesh.origin._signer import LocalCommitter

    monkeypatch.setattr(server, "MAX_PROJECT_UPLOADS", 2)
    monkeypatch.setattr(server, "MAX_UPLOADS", 3)
    monkeypatch.setattr(server, "UPLOAD_WAIT", 1.0)
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    tokens = {name: ProjectRegistry(repo.dir).add(name) for name in ("p", "q", "r")}
    service = OriginService(repo.dir, LocalCommitter(repo))
    transport = httpx.ASGITransport(app=server.build_app(service))
    release = trio.Event()
    answers: dict[str, int] = {}

    async def body(name: str, held: bool) -> AsyncIterator[bytes]:
        yield name.encode()
        if held:
            await release.wait()
        yield b" bytes"

    async def upload(http: httpx.AsyncClient, project: str, name: str, held: bool) -> None:
        answer = await http.post(
            f"/api/v1/projects/{project}/files/{name}", content=body(name, held),
            headers={"authorization": f"Bearer {tokens[project]}"},
        )  # fmt: skip
        answers[name] = answer.status_code
        if answer.status_code == 503:
            assert answer.headers["retry-after"]
            busy = answer.json()["error"]
            if project == "p":
                assert "too many uploads of p at once (at most 2)" in busy
            else:  # the origin's own cap: every project's uploads count
                assert "too many uploads at once (at most 3)" in busy

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.run_committer)
            async with httpx.AsyncClient(transport=transport, base_url="http://origin") as http:
                async with trio.open_nursery() as uploads:
                    for i in range(2):  # the project's two slots, held
                        uploads.start_soon(upload, http, "p", f"p-{i}.tar.gz", True)
                    await trio.sleep(0.2)
                    uploads.start_soon(upload, http, "p", "p-late.tar.gz", False)
                    await upload(http, "q", "q-1.tar.gz", False)  # another project: at once
                    assert answers == {"q-1.tar.gz": 200}
                    await trio.sleep(1.5)
                    assert answers["p-late.tar.gz"] == 503  # waited its second, in vain
                    # The third slot in all, held: another project's upload waits too.
                    uploads.start_soon(upload, http, "q", "q-held.tar.gz", True)
                    await trio.sleep(0.2)
                    await upload(http, "r", "r-1.tar.gz", False)
                    assert answers["r-1.tar.gz"] == 503
                    # One that waits less than that gets the slot freed meanwhile.
                    uploads.start_soon(upload, http, "p", "p-next.tar.gz", False)
                    await trio.sleep(0.3)
                    release.set()
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert answers == {
        "q-1.tar.gz": 200, "p-late.tar.gz": 503, "r-1.tar.gz": 503, "q-held.tar.gz": 200,
        "p-0.tar.gz": 200, "p-1.tar.gz": 200, "p-next.tar.gz": 200,
    }  # fmt: skip
    published = OriginRepository(repo.dir)
    assert (
        published.find("p/p-next.tar.gz") is not None and published.find("p/p-late.tar.gz") is None
    )


def test_an_upload_sent_at_a_trickle_is_cut_and_frees_its_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body sent a byte every few seconds held its upload slot for ever
    (a token's holder, all its project's): past the grace, one slower than
    the floor is cut with a 408, for an artifact and for signed metadata,
    and the slot serves the next upload."""
    import httpx
    import trio

    import tufmesh.origin._server as server
    from tufmesh.origin import OriginService
    from tufmesh.origin._projects import ProjectRegistry
    from tufmesh.origin._signer import LocalCommitter

    monkeypatch.setattr(server, "MAX_PROJECT_UPLOADS", 1)
    monkeypatch.setattr(server, "UPLOAD_GRACE", 0.5)
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    token = ProjectRegistry(repo.dir).add("p")
    service = OriginService(repo.dir, LocalCommitter(repo))
    transport = httpx.ASGITransport(app=server.build_app(service))
    headers = {"authorization": f"Bearer {token}"}

    async def trickle() -> AsyncIterator[bytes]:
        yield b"x"
        await trio.sleep(30)  # (what a byte every few seconds amounts to)
        yield b"y"

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.run_committer)
            async with httpx.AsyncClient(transport=transport, base_url="http://origin") as http:
                for route in ("files/a-1.tar.gz", "metadata"):
                    with trio.fail_after(5):
                        answer = await http.post(
                            f"/api/v1/projects/p/{route}", content=trickle(), headers=headers
                        )
                    assert answer.status_code == 408, answer.text
                    assert "slower than 16 KiB/s after 0.5 s" in answer.json()["error"]
                answer = await http.post(
                    "/api/v1/projects/p/files/b-1.tar.gz", content=b"whole", headers=headers
                )
                assert answer.status_code == 200, answer.text  # the slot is free
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_what_a_killed_commit_linked_and_pinned_is_taken_back_at_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill -9 between a commit's links and pins and its timestamp: the
    link was served (immutable) for an artifact never published, and the pin
    kept its bytes from the collector for ever."""
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    kept = stored(repo, "p/a-1.tar.gz", b"one" * 100)
    assert repo.publish([kept]) == [2]
    lost = stored(repo, "p/b-1.tar.gz", b"two" * 100)
    other = stored(repo, "q/c-1.tar.gz", b"three" * 100)
    fill_disk_at(monkeypatch, "timestamp.json")
    monkeypatch.setattr(OriginRepository, "_undo", lambda *args: None)  # killed: no undo
    with pytest.raises(OSError, match="No space"):
        repo.publish([lost, other])
    monkeypatch.undo()
    assert (repo.dir / "targets" / "p" / f"{lost.sha256}.b-1.tar.gz").exists()
    reopened = OriginRepository(repo.dir)
    assert reopened.find("p/b-1.tar.gz") is None
    tidied = reopened.tidy()
    assert f"targets/p/{lost.sha256}.b-1.tar.gz" in tidied
    assert f"targets/q/{other.sha256}.c-1.tar.gz" in tidied
    assert f"pin project:p {lost.cid}" in tidied and f"pin project:q {other.cid}" in tidied
    assert sorted(p.name for p in (repo.dir / "targets").rglob("*") if p.is_file()) == [
        f"{kept.sha256}.a-1.tar.gz"
    ]
    assert reopened.store.pins() == {"project:p": frozenset({kept.cid, kept.manifest})}
    assert reopened.tidy() == []  # nothing more
    reopened.store.gc(grace_seconds=0)
    assert not reopened.store.has(lost.cid) and reopened.store.has(kept.cid)
    # The name is free: it was never published.
    again = stored(reopened, "p/b-1.tar.gz", b"two" * 100)
    assert reopened.publish([again]) == [3]
    client = updater_for(OriginRepository(repo.dir), tmp_path / "client")
    client.refresh()
    assert client.get_targetinfo("p/b-1.tar.gz") is not None


def test_a_target_whose_blob_fsck_quarantined_is_linked_again_to_the_bytes_stored_anew(
    tmp_path: Path,
) -> None:
    """fsck moves a corrupt blob aside; the target's hard link kept the corrupt
    file, and an upload of the same bytes (or a start) never linked it again:
    every client failed on that artifact for good."""
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    data = os.urandom(3000)
    artifact = stored(repo, "p/a-1.tar.gz", data)
    assert repo.publish([artifact]) == [2]
    link = repo.dir / "targets" / "p" / f"{artifact.sha256}.a-1.tar.gz"
    with open(repo.store.path(artifact.cid), "r+b") as blob:  # the disk flips a bit
        blob.write(bytes([data[0] ^ 1]))
    assert link.read_bytes() != data  # the same file
    assert repo.store.fsck(quarantine=True).quarantined == [artifact.cid]
    # The developer uploads it again: an idempotent success, and the link heals.
    assert repo.publish([stored(repo, "p/a-1.tar.gz", data)]) == [2]
    assert link.read_bytes() == data
    # Or the bytes come back by other means (a restore): the next start heals.
    with open(repo.store.path(artifact.cid), "r+b") as blob:
        blob.write(bytes([data[0] ^ 1]))
    repo.store.fsck(quarantine=True)
    repo.store.put(data)
    assert OriginRepository(repo.dir).tidy() == [f"relinked targets/p/{artifact.sha256}.a-1.tar.gz"]
    assert link.read_bytes() == data
    updater = updater_for(OriginRepository(repo.dir), tmp_path / "client")
    updater.refresh()
    info = updater.get_targetinfo("p/a-1.tar.gz")
    assert info is not None
    info.verify_length_and_hashes(link.read_bytes())


def test_a_big_upload_past_the_cap_waits_its_turn_on_a_real_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over a real connection the waiting uploader's own write stalls (its
    body is not read): it must resume once a slot frees, not time out."""
    import httpx
    import trio

    import tufmesh.origin._server as server
    from tufmesh.origin import OriginService
    from tufmesh.origin._projects import ProjectRegistry
    from tufmesh.origin._signer import LocalCommitter

    monkeypatch.setattr(server, "MAX_PROJECT_UPLOADS", 1)
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    token = ProjectRegistry(repo.dir).add("p")
    service = OriginService(repo.dir, LocalCommitter(repo))
    big = os.urandom(16 << 20)  # far past the socket buffers
    release = trio.Event()
    answers: dict[str, int] = {}

    async def held() -> AsyncIterator[bytes]:
        yield b"first"
        await release.wait()

    async def upload(http: httpx.AsyncClient, name: str, body: object) -> None:
        answer = await http.post(f"/api/v1/projects/p/files/{name}", content=body,  # type: ignore[arg-type]
                                 headers={"authorization": f"Bearer {token}"})  # fmt: skip
        answers[name] = answer.status_code

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.run_committer)
            app = server.build_app(service)
            url = await server.start_http(nursery, app, "127.0.0.1", 0, None, None)
            timeout = httpx.Timeout(30.0)
            async with httpx.AsyncClient(base_url=url, timeout=timeout) as http:
                async with trio.open_nursery() as uploads:
                    uploads.start_soon(upload, http, "p-0.tar.gz", held())
                    await trio.sleep(0.3)
                    uploads.start_soon(upload, http, "p-big.tar.gz", big)
                    await trio.sleep(2.0)
                    assert answers == {}  # the big one waits, its body unread
                    release.set()
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert answers == {"p-0.tar.gz": 200, "p-big.tar.gz": 200}
    found = OriginRepository(repo.dir).find("p/p-big.tar.gz")
    assert found is not None and found.length == len(big)


@pytest.mark.parametrize("case", ["small", "big", "dropped"])
def test_publish_asks_again_a_busy_origin_or_a_dropped_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """Past the cap and its wait, an upload was refused for good, and a big
    one never even read its refusal: hypercorn waited for room on the queue
    its unread body had filled, and the uploader's write with it, until the
    5-minute timeout. Now every refusal is read, `publish` asks again after
    the Retry-After (also when a connection drops mid-upload: through a proxy
    that cuts the first one), and its progress starts over."""
    import httpx
    import trio

    import tufmesh.origin._server as server
    from tufmesh.origin import OriginService
    from tufmesh.origin._projects import ProjectRegistry
    from tufmesh.origin._publish import upload
    from tufmesh.origin._signer import LocalCommitter

    monkeypatch.setattr(server, "MAX_PROJECT_UPLOADS", 1)
    monkeypatch.setattr(server, "UPLOAD_WAIT", 0.5)
    monkeypatch.setattr(server, "UPLOAD_RETRY_AFTER", 1)
    monkeypatch.setattr("tufmesh.origin._publish._BROKEN_WAIT", 1.0)
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    token = ProjectRegistry(repo.dir).add("p")
    service = OriginService(repo.dir, LocalCommitter(repo))
    size = 10 if case == "small" else 16 << 20
    artifact = tmp_path / "p-1.0.tar.gz"
    artifact.write_bytes(os.urandom(size))
    release = trio.Event()
    said: list[str] = []
    progress: list[int] = []

    async def held(http: httpx.AsyncClient) -> None:
        async def body() -> AsyncIterator[bytes]:
            yield b"first"
            await release.wait()

        answer = await http.post("/api/v1/projects/p/files/p-0.tar.gz", content=body(),
                                 headers={"authorization": f"Bearer {token}"})  # fmt: skip
        assert answer.status_code == 200

    async def cutting_proxy(to: str, task_status: Any) -> None:
        """Relays to the origin, but cuts the first connection 1 MiB in."""
        port = int(to.rsplit(":", 1)[1])
        first = True

        async def relay(client: trio.SocketStream) -> None:
            nonlocal first
            cut, first = first, False
            async with client, await trio.open_tcp_stream("127.0.0.1", port) as origin:

                async def pipe(a: trio.SocketStream, b: trio.SocketStream, limit: int) -> None:
                    moved = 0
                    while moved < limit and (data := await a.receive_some(65536)):
                        await b.send_all(data)
                        moved += len(data)
                    nursery.cancel_scope.cancel()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(pipe, client, origin, 1 << 20 if cut else 1 << 40)
                    nursery.start_soon(pipe, origin, client, 1 << 40)

        await trio.serve_tcp(relay, 0, host="127.0.0.1", task_status=task_status)

    def publish(url: str) -> dict[str, object]:
        with httpx.Client() as client:
            return upload(client, url, "p", artifact, token, progress=progress.append,
                          on_retry=said.append)  # fmt: skip

    async def release_after_first_refusal() -> None:
        while not said:
            await trio.sleep(0.05)
        release.set()

    async def main() -> dict[str, object]:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.run_committer)
            url = await server.start_http(
                nursery, server.build_app(service), "127.0.0.1", 0, None, None
            )
            async with httpx.AsyncClient(base_url=url, timeout=30.0) as http:
                if case == "dropped":
                    release.set()  # no rush at the origin: the network fails
                    listeners = await nursery.start(cutting_proxy, url)
                    url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
                else:
                    nursery.start_soon(held, http)
                    await trio.sleep(0.3)
                    nursery.start_soon(release_after_first_refusal)
                answer = await trio.to_thread.run_sync(publish, url)
            nursery.cancel_scope.cancel()
        return answer

    answer = trio.run(main)
    assert answer["target"] == "p/p-1.0.tar.gz" and answer["length"] == size
    if case == "dropped":
        assert len(said) == 1 and "the connection broke mid-upload" in said[0], said
    else:
        busy = "p-1.0.tar.gz: busy: too many uploads of p at once (at most 1); asking again in 1 s"
        assert said and set(said) == {busy}, said
    assert sum(progress) == size  # what a failed attempt had sent was taken back
    found = OriginRepository(repo.dir).find("p/p-1.0.tar.gz")
    assert found is not None and found.length == size


def test_a_busy_answers_wait_is_read_in_seconds_within_reason() -> None:
    import httpx

    from tufmesh.origin._publish import _retry_after

    def wait(named: str) -> float:  # (as a server's bytes: "²" is 0xB2 in Latin-1)
        head = [(b"retry-after", named.encode("latin-1"))]
        return _retry_after(httpx.Response(503, headers=head))

    assert (wait("7"), wait("0"), wait("3600")) == (7.0, 1.0, 60.0)
    # Not seconds (a date, "²" which isdigit() takes and float() does not): 5 s.
    assert {wait("Wed, 21 Oct 2026 07:28:00 GMT"), wait("²"), wait("-3"), wait("")} == {5.0}


def test_an_artifacts_own_refusal_is_said_to_its_uploader_across_the_pipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unlike a failed commit's reason (the operator's), what is wrong with
    one artifact is its uploader's to know: "upload again" must reach them."""
    import httpx
    import trio

    from tufmesh.errors import ArtifactRefusedError
    from tufmesh.origin import OriginService
    from tufmesh.origin._projects import ProjectRegistry
    from tufmesh.origin._server import build_app
    from tufmesh.origin._signer import LocalCommitter, _result_from_json, _result_to_json

    said = ArtifactRefusedError("p/p-1.0.tar.gz: its blob vanished; upload again")
    crossed = _result_from_json(_result_to_json(said))  # the committer process's pipe
    assert isinstance(crossed, ArtifactRefusedError) and str(crossed) == str(said)
    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    token = ProjectRegistry(repo.dir).add("p")
    service = OriginService(repo.dir, LocalCommitter(repo))

    def vanished(self: OriginRepository, artifact: Artifact) -> None:
        raise said

    monkeypatch.setattr(OriginRepository, "_check", vanished)

    async def upload() -> httpx.Response:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.run_committer)
            transport = httpx.ASGITransport(app=build_app(service))
            async with httpx.AsyncClient(transport=transport, base_url="http://origin") as http:
                answer = await http.post(
                    "/api/v1/projects/p/files/p-1.0.tar.gz", content=b"bytes",
                    headers={"authorization": f"Bearer {token}"},
                )  # fmt: skip
            nursery.cancel_scope.cancel()
        return answer

    answer = trio.run(upload)
    assert answer.status_code == 500 and answer.json()["error"] == str(said)
