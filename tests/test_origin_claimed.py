"""Projects that sign their own metadata (PEP 480, docs/adr/0022), as real
processes, with python-tuf's own client as the judge: once claimed, a
project's artifacts are published only by its developers' key, and the
origin's online keys can neither add to it nor change it."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from multiformats import CID
from securesystemslib.signer import CryptoSigner, Key, Signer
from securesystemslib.signer._utils import compute_default_keyid
from tuf.api.metadata import DelegatedRole, Metadata, TargetFile, Targets

import tufmesh.origin._repository as repository_module
from tests.helpers.origin import (
    add_project,
    init_repo,
    post,
    running,
    snapshot_version,
    static_server,
    tuf_download,
    tuf_updater,
    tufmesh,
)
from tufmesh.cas import Manifest
from tufmesh.client import Client, SourceHealth
from tufmesh.errors import (
    ArtifactRefusedError,
    ConflictError,
    MetadataRefusedError,
    NotInMetadataError,
    OriginError,
    OwnedMetadataError,
    PublishError,
    QuotaError,
    UsageError,
)
from tufmesh.mirror import Mirror
from tufmesh.origin import Artifact, OriginConfig, OriginRepository
from tufmesh.origin._developer import (
    DeveloperKey,
    Holders,
    SigningRequest,
    changes,
    check_files,
    claim_request,
    cosign,
    generate_key,
    load_key,
    next_version,
    published_version,
    read_claim,
    read_request,
    release_request,
    send_version,
    target_of,
)
from tufmesh.origin._owned import owned_delegation, parse_owned

#: What a release of project demo says of itself (its signed metadata names it).
_DEMO = {"x-tufmesh-project": "demo"}


def _publish(*args: str, token: str, key: Path | None = None, check: bool = True) -> str:
    env = {**os.environ, "TUFMESH_TOKEN": token}
    extra = ["--key", str(key)] if key is not None else []
    proc = tufmesh("publish", *args, *extra, check=check, env=env)
    return proc.stdout + proc.stderr


def _claimed_repo(tmp_path: Path, *extra: str) -> tuple[Path, str, Path, Path]:
    """A repository whose project ``demo`` published one artifact through the
    bins, then was claimed for a developer's key: (repo, token, key, artifact)."""
    repo = init_repo(tmp_path / "repo", *extra)
    token = add_project(repo, "demo")
    first = tmp_path / "demo-1.0.tar.gz"
    first.write_bytes(os.urandom(2_500_000))  # three chunks: a manifest too
    with running(repo) as server:
        assert "published demo/demo-1.0.tar.gz" in _publish(
            str(first), "--origin", server.url, "--project", "demo", token=token
        )
    key = tmp_path / "demo.pem"
    tufmesh("developer", "keygen", str(key))
    empty = tufmesh("developer", "keygen", "", check=False)  # was ". exists already"
    assert empty.returncode == 1 and "names no file: give the key a file name" in empty.stderr
    under = tufmesh("developer", "keygen", str(key / "k.pem"), check=False)  # under a file
    assert under.returncode == 1 and f"{key} is not a directory" in under.stderr, under.stderr
    request = tmp_path / "demo.claim.json"
    tufmesh("developer", "claim", "demo", str(first), "--key", str(key), "-o", str(request))
    twice = tufmesh("developer", "claim", "demo", str(first), "--key", str(key),
                    "-o", str(request), check=False)  # fmt: skip
    assert twice.returncode == 1 and "exists already (an earlier request?)" in twice.stderr
    assert "give -o FILE" in twice.stderr
    out = tufmesh("origin", "project", "claim", "--dir", str(repo), str(request)).stdout
    assert "\nclaimed demo: its artifacts (1) are signed by" in out
    assert f"next, with the root keys: tufmesh origin rotate --dir {repo} targets" in out
    # The ceremony run twice: in place, nothing to do (it told the developers
    # to make their request anew).
    version = snapshot_version(repo)
    again = tufmesh("origin", "project", "claim", "--dir", str(repo), str(request)).stdout
    assert "demo is claimed by this request already: nothing to do" in again
    assert snapshot_version(repo) == version
    status = tufmesh("origin", "status", "--dir", str(repo))
    assert "1 projects sign their own metadata" in status.stdout and "\n  demo " in status.stdout
    assert "warning: demo claimed since the targets keys last changed" in status.stderr
    return repo, token, key, first


def test_a_claimed_project_is_published_by_its_own_key_alone(tmp_path: Path) -> None:
    repo, token, key, first = _claimed_repo(tmp_path)
    second = tmp_path / "demo-2.0.tar.gz"
    second.write_bytes(os.urandom(1_500_000))
    with running(repo) as server:
        url = server.url
        warnings = httpx.get(f"{url}/healthz").json()["warnings"]  # monitoring hears of it too
        assert any(
            w.startswith("projects claimed since the targets keys last changed") for w in warnings
        )
        # The artifact published before the claim is now the project's own.
        assert tuf_download(url, repo, "demo/demo-1.0.tar.gz") == first.read_bytes()
        targets = json.loads(httpx.get(f"{url}/metadata/2.targets.json").content)["signed"]
        roles = targets["delegations"]["roles"]
        assert [r["name"] for r in roles] == ["project-demo", "bins"]
        # Every spelling PEP 503 folds into "demo" (with single separators).
        assert roles[0]["paths"] == ["[dD][eE][mM][oO]/*"] and roles[0]["terminating"] is True

        # Without the key, the upload is stored but not published.
        out = _publish(str(second), "--origin", url, "--project", "demo", token=token, check=False)
        assert "stored, not published: demo signs its own metadata" in out
        updater = tuf_updater(url, repo)
        updater.refresh()
        assert updater.get_targetinfo("demo/demo-2.0.tar.gz") is None

        # With it, one new version of the project's role names it.
        out = _publish(str(second), "--origin", url, "--project", "demo", token=token, key=key)
        assert "published demo/demo-2.0.tar.gz" in out and "project-demo v2" in out
        assert tuf_download(url, repo, "demo/demo-2.0.tar.gz") == second.read_bytes()
        entry = json.loads((repo / "uploads.log").read_text().splitlines()[-1])
        assert entry["role"] == "project-demo" and entry["version"] == 2
        # What the version did, by name (superseded versions are deleted):
        assert entry["added"] == ["demo/demo-2.0.tar.gz"] and entry["dropped"] == []
        # Sent again, a published file is published already, and its link is
        # the stored blob's (not a second copy of its bytes).
        out = _publish(str(second), "--origin", url, "--project", "demo", token=token, key=key)
        assert "published demo/demo-2.0.tar.gz" in out
        sha = hashlib.sha256(second.read_bytes()).hexdigest()
        link = repo / "targets" / "demo" / f"{sha}.{second.name}"
        blob = repo / "cas" / "blobs"
        assert link.stat().st_nlink >= 2 and any(
            p.stat().st_ino == link.stat().st_ino for p in blob.rglob("*") if p.is_file()
        )

        # Our own client lists both, through the project's role.
        client = Client(
            tmp_path / "c", (repo / "metadata" / "1.root.json").read_bytes(), [SourceHealth(url)]
        )
        with client:
            assert [t.path for t in client.artifacts("demo")] == [
                "demo/demo-1.0.tar.gz",
                "demo/demo-2.0.tar.gz",
            ]

        # The developers take an artifact back: gone, and its name never reused.
        tufmesh(
            "developer", "sign", "demo", "--origin", url, "--token", token, "--key", str(key),
            "--drop", "demo-2.0.tar.gz",
        )  # fmt: skip
        updater = tuf_updater(url, repo)
        updater.refresh()
        assert updater.get_targetinfo("demo/demo-2.0.tar.gz") is None
        assert updater.get_targetinfo("demo/demo-1.0.tar.gz") is not None
        out = _publish(
            str(second), "--origin", url, "--project", "demo", token=token, key=key, check=False
        )
        assert "was published and removed" in out
        # An origin serving an older version (from before the drop) as the
        # current one cannot have the developers' tool sign the drop away.
        older = Metadata[Targets].from_bytes((repo / "metadata/2.project-demo.json").read_bytes())
        with pytest.raises(PublishError, match="rolling the project back"):
            load_key(str(key)).sign_next("demo", older)
        # The snapshot names the role's hash as well as its version.
        snapshot = json.loads(httpx.get(f"{url}/metadata/timestamp.json").content)["signed"]
        version = snapshot["meta"]["snapshot.json"]["version"]
        meta = json.loads(httpx.get(f"{url}/metadata/{version}.snapshot.json").content)
        entry = meta["signed"]["meta"]["project-demo.json"]
        role = (repo / "metadata" / f"{entry['version']}.project-demo.json").read_bytes()
        assert entry["hashes"] == {"sha256": hashlib.sha256(role).hexdigest()}

        # A mirror replicates the project's role and its artifacts, and
        # python-tuf verifies them from the mirror's tree alone.
        replica = Mirror.create(tmp_path / "m", repo / "metadata" / "1.root.json", [url])
        report = replica.sync()
        assert report.error is None and report.artifacts == 1
    with static_server(tmp_path / "m" / "tree") as mirror_url:
        assert tuf_download(mirror_url, repo, "demo/demo-1.0.tar.gz") == first.read_bytes()


def test_the_origins_online_keys_cannot_publish_into_a_claimed_project(tmp_path: Path) -> None:
    repo, token, _key, _first = _claimed_repo(tmp_path)
    # Whoever holds the online keys (the origin broken into) signs a bin that
    # lists an artifact of the claimed project...
    evil = tmp_path / "demo-6.6.6.tar.gz"
    evil.write_bytes(b"malware")
    forged = _forge_into_bin(repo, evil, "demo")
    # (and under another spelling of the project's name, which the delegation's
    # pattern does not match: python-tuf looks in the bins for that path)
    spelled = _forge_into_bin(repo, evil, "Demo")
    with running(repo) as server:
        updater = tuf_updater(server.url, repo)
        updater.refresh()
        # ...and no client finds it: the project's delegation is terminating.
        assert updater.get_targetinfo(forged) is None
        assert updater.get_targetinfo(spelled) is None  # (the delegation folds case)
        assert updater.get_targetinfo("demo/demo-1.0.tar.gz") is not None
        client = Client(
            tmp_path / "c",
            (repo / "metadata" / "1.root.json").read_bytes(),
            [SourceHealth(server.url)],
        )
        with client:
            assert [t.path for t in client.artifacts()] == ["demo/demo-1.0.tar.gz"]
            # Ours asks for a name's normal form only, which is the project's.
            for path in (forged, spelled):
                with pytest.raises(NotInMetadataError):
                    client.target(path)
        # Nor can those keys sign the project's role itself.
        online = load_key(str(repo / "keys" / "bin-n.pem")).signer
        current = _published(server.url, "demo")
        current.signatures.clear()
        current.sign(online)
        answer = _send(
            server.url,
            token,
            next_version(current, [online], add=[target_of(evil, "demo")], project="demo"),
        )
        assert (
            answer.status_code == 400 and "not signed by 1 of demo's keys" in answer.json()["error"]
        )


def test_a_version_whose_committer_died_before_answering_may_be_published(
    tmp_path: Path,
) -> None:
    """The origin's answer when its committer stops mid-request (a 503 that
    says the outcome is unknown) was read as a refusal by the developer's
    side: "not published", and what the version dropped was not noted."""
    from tests.helpers.origin import TUFMESH, publish_as_committer_dies

    repo, token, key, _ = _claimed_repo(tmp_path)
    warm = add_project(repo, "warm")
    new = tmp_path / "demo-2.0.tar.gz"
    new.write_bytes(os.urandom(5000))
    command = [TUFMESH, "publish", str(new), "--project", "demo", "--token", token,
               "--key", str(key)]  # fmt: skip
    # (2 s once stored, awaiting its version: signed and sent meanwhile)
    publish = publish_as_committer_dies(repo, command, ("warm", warm), settle=2)
    err = publish.stderr
    assert publish.returncode == 1 and "Traceback" not in err, err
    assert "project-demo: sent, but the origin stopped before it could say whether" in err, err
    assert "1 of 1 files were not published (1 of them may be: see above)" in err, err


def test_the_origin_refuses_what_the_projects_key_did_not_sign_as_the_next_version(
    tmp_path: Path,
) -> None:
    # (2,500,000 bytes published: counted from the origin's start, not only
    # after the project's next publication, as they were)
    repo, token, key, first = _claimed_repo(tmp_path, "--project-quota", "7000000")
    signer = load_key(str(key)).signer
    other = tmp_path / "demo-3.0.tar.gz"
    other.write_bytes(os.urandom(5000))
    with running(repo) as server:
        url = server.url
        assert post(url, "demo", other.name, other.read_bytes(), token).status_code == 202
        # Stored and not yet signed, uploads count against the project's
        # quota all the same: a token alone cannot fill the origin's disk.
        bodies = [os.urandom(1_500_000) for _ in range(4)]
        answers = [post(url, "demo", f"big-{n}.tar.gz", body, token).status_code
                   for n, body in enumerate(bodies)]  # fmt: skip
        assert answers == [202, 202, 413, 413]
        # The same upload sent again (a retry) counts once.
        assert post(url, "demo", "big-0.tar.gz", bodies[0], token).status_code == 202
        # Other bytes under a staged name are on the disk too: both count.
        again = post(url, "demo", "big-0.tar.gz", os.urandom(1_600_000), token)
        assert again.status_code == 413 and "past its quota" in again.json()["error"]
        stored = [json.loads(line) for line in (repo / "uploads.log").read_text().splitlines()]
        assert [e["target"] for e in stored if "stored" in e].count("demo/big-0.tar.gz") == 2
        # Another key than the project's is refused before anything is sent.
        stranger_key = tmp_path / "stranger.pem"
        generate_key(stranger_key)
        out = _publish(str(other), "--origin", url, "--project", "demo", token=token,
                       key=stranger_key, check=False)  # fmt: skip
        assert "is it the project's key" in out
        assert len((repo / "uploads.log").read_text().splitlines()) == len(stored)
        current = _published(url, "demo")
        stranger = CryptoSigner.generate_ed25519()
        changed = target_of(first, "demo")
        changed.length += 1
        unknown = tmp_path / "never-uploaded.tar.gz"
        unknown.write_bytes(b"not on the origin")
        cases = {
            # a replay of the published version
            (400, "the next one is 2"): _raw(current),
            # another key's signature
            (400, "not signed by"): _resigned(current, stranger),
            # an artifact published before, changed
            (409, "immutable"): _with(current, signer, changed),
            # a name new to the repository that Windows takes for a device
            (400, "'demo/nul.tar.gz': file name 'nul.tar.gz' is a device's on Windows"): _with(
                current, signer, _renamed(target_of(other, "demo"), "demo/nul.tar.gz")
            ),
            # a path of another project
            (400, "not a normalised path of the project"): _with(
                current, signer, _renamed(target_of(other, "demo"), "other/demo-3.0.tar.gz")
            ),
            # an entry of the published artifact whose custom is not an object
            (409, "is published in chunks of"): _with(
                current,
                signer,
                TargetFile(changed.length - 1, changed.hashes, changed.path, {"custom": "x"}),
            ),
            # a chunk size the origin never writes
            (400, "chunk size 0 and its manifest disagree"): _with(
                current, signer, _chunked(target_of(other, "demo"), 0)
            ),
            # an artifact whose bytes the origin never received
            (400, "upload it first: "): _with(current, signer, target_of(unknown, "demo")),
            # expired
            (400, "expired"): _with(
                current, signer, expires=datetime.now(UTC) - timedelta(hours=1)
            ),
            # not metadata at all
            (400, "not TUF metadata"): b"{]",
        }
        cases[(413, "bytes clients read")] = b" " * 4_000_001
        for (status, reason), data in cases.items():
            answer = _send(url, token, data)
            assert answer.status_code == status and reason in answer.json()["error"], (
                reason,
                answer.text,
            )
        assert _send(
            url, "wrong-token", _with(current, signer, target_of(other, "demo"))
        ).status_code in (401, 403)
        # Refusals change nothing; the honest next version is published.
        assert (
            _send(url, token, _with(current, signer, target_of(other, "demo"))).status_code == 200
        )
        assert tuf_download(url, repo, "demo/demo-3.0.tar.gz") == other.read_bytes()


def test_a_projects_entries_must_describe_their_blobs_chunk_by_chunk(tmp_path: Path) -> None:
    """A developer's entry may name any stored blob as its manifest: one with
    the right header and other chunk digests was published, and every mirror
    and tufmesh client then refused the origin's honest chunks (a mirror
    publishes a version only whole: every project stopped replicating). A
    length of ``true`` (equal to 1 in Python) was taken for an entry "as the
    origin writes one", which strictly typed clients refuse."""
    repo, token, key, _ = _claimed_repo(tmp_path)
    signer = load_key(str(key)).signer
    big = tmp_path / "demo-4.0.tar.gz"
    big.write_bytes(os.urandom(3 << 20))
    one = tmp_path / "demo-5.0.tar.gz"
    one.write_bytes(b"Z")
    entry = target_of(big, "demo")
    custom = entry.unrecognized_fields["custom"]
    sha = hashlib.sha256(big.read_bytes()).digest()
    forged = Manifest(chunk_size=1 << 20, length=3 << 20, sha256=sha,
                      digests=tuple(os.urandom(32) for _ in range(3)))  # fmt: skip
    with running(repo) as server:
        url = server.url
        for name, body in [(big.name, big.read_bytes()), (one.name, b"Z"),
                           ("fake-0.bin", forged.encoded)]:  # fmt: skip
            assert post(url, "demo", name, body, token).status_code == 202
        current = _published(url, "demo")
        lying = TargetFile(entry.length, entry.hashes, entry.path,
                           {"custom": dict(custom, manifest=forged.cid)})  # fmt: skip
        boolean = target_of(one, "demo")
        boolean.length = True
        # Another project's upload (its bytes known to whoever can guess them).
        other_token = add_project(repo, "other")
        theirs = tmp_path / "theirs-1.0.tar.gz"
        theirs.write_bytes(os.urandom(2 << 20))
        assert post(url, "other", theirs.name, theirs.read_bytes(), other_token).is_success
        borrowed = target_of(theirs, "demo")
        for bad, said in [
            (lying, "its chunk manifest is not the one the origin made of its upload"),
            (boolean, "not an entry as the origin writes one"),
            (borrowed, "demo/theirs-1.0.tar.gz: not among demo's uploads"),
        ]:
            answer = _send(url, token, _with(current, signer, bad))
            assert answer.status_code == 400 and said in answer.json()["error"], answer.text
        assert _send(url, token, _with(current, signer, entry, target_of(one, "demo"))).is_success
        assert tuf_download(url, repo, "demo/demo-4.0.tar.gz") == big.read_bytes()
        root = (repo / "metadata" / "1.root.json").read_bytes()
        with Client(tmp_path / "c", root, [SourceHealth(url)]) as client:
            client.download("demo/demo-4.0.tar.gz", tmp_path / "got")
        assert (tmp_path / "got" / big.name).read_bytes() == big.read_bytes()


def test_a_ceremony_reads_the_blob_of_each_new_entry_for_its_chunks(tmp_path: Path) -> None:
    """With no server to say what it made of the uploads (a claim's ceremony,
    the origin stopped), a new entry's manifest is checked against its
    blob's bytes, and its CID must be written as the origin writes one."""
    origin = OriginRepository.create(tmp_path / "repo")
    signer = CryptoSigner.generate_ed25519()
    origin.claim("demo", [signer.public_key], 1, claim_request("demo", signer, []).data)
    body = os.urandom(3 << 20)
    manifest = origin.store.put_chunked(body)[1]
    forged = dataclasses.replace(manifest, digests=manifest.digests[::-1])
    origin.store.put(forged.encoded)
    (tmp_path / "demo-1.0.tar.gz").write_bytes(body)
    entry = target_of(tmp_path / "demo-1.0.tar.gz", "demo")
    current = Metadata[Targets].from_bytes(
        (tmp_path / "repo/metadata/1.project-demo.json").read_bytes()
    )
    custom = entry.unrecognized_fields["custom"]
    spelt = CID.decode(manifest.cid).encode("base58btc")  # the same CID, written otherwise
    for other, said in [(forged.cid, "digests are not its blob's chunks"),
                        (spelt, "not written as the origin writes one")]:  # fmt: skip
        bad = TargetFile(entry.length, entry.hashes, entry.path,
                         {"custom": dict(custom, manifest=other)})  # fmt: skip
        with pytest.raises(ArtifactRefusedError, match=said):
            origin.take_owned("demo", next_version(current, [signer], add=[bad], project="demo"))
    assert origin.take_owned("demo", next_version(current, [signer], add=[entry], project="demo"))


def test_a_claim_names_only_blobs_its_project_published(tmp_path: Path) -> None:
    """A claim listed an entry made from another project's public metadata:
    the ceremony read the blob, found it, and pinned it to the claiming
    project, whose later versions could then name it too."""
    origin = OriginRepository.create(tmp_path / "repo")
    theirs = _stored_artifact(origin, tmp_path, "other", "x-1.0.tar.gz", os.urandom(3000))
    ours = _stored_artifact(origin, tmp_path, "demo", "demo-1.0.tar.gz", b"one")
    origin.publish([theirs, ours])
    borrowed = TargetFile(theirs.length, {"sha256": theirs.sha256}, "demo/borrowed-1.0.tar.gz",
                          theirs.target_file().unrecognized_fields)  # fmt: skip
    signer = CryptoSigner.generate_ed25519()
    for listed, refused in [([ours.target_file(), borrowed], True), ([ours.target_file()], False)]:
        data = claim_request("demo", signer, listed).data
        if refused:
            with pytest.raises(ArtifactRefusedError, match="not a blob demo has published"):
                origin.claim("demo", [signer.public_key], 1, data)
        else:
            origin.claim("demo", [signer.public_key], 1, data)
    assert origin.find("demo/borrowed-1.0.tar.gz") is None


def test_a_claim_of_version_true_is_not_version_1(tmp_path: Path) -> None:
    """``True == 1`` in Python: a claim request of version ``true`` was
    carried out, and every snapshot after it named the project's role with a
    boolean version (and the origin wrote ``True.project-demo.json``)."""
    signer = CryptoSigner.generate_ed25519()
    delegation = owned_delegation("demo", [signer.public_key], 1)
    now = datetime.now(UTC)
    for version, refused in [(True, True), (1, False)]:
        md = Metadata(Targets(version=version, expires=now + timedelta(days=1),
                              unrecognized_fields=_DEMO))  # fmt: skip
        md.sign(signer)
        parse = functools.partial(
            parse_owned, "demo", md.to_bytes(), keys={signer.public_key.keyid: signer.public_key},
            delegation=delegation, version=1, now=now, limit=1 << 20,
        )  # fmt: skip
        if refused:
            with pytest.raises(OwnedMetadataError, match="version True: the next one is 1"):
                parse()
        else:
            assert parse().signed.version == 1


def test_a_claim_must_keep_what_the_project_published(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo")
    add_project(repo, "demo")
    origin = OriginRepository(repo)
    kept = _stored_artifact(origin, tmp_path, "demo", "demo-1.0.tar.gz", b"one")
    origin.publish([kept])
    key = tmp_path / "k.pem"
    generate_key(key)
    signer = load_key(str(key)).signer
    empty = claim_request("demo", signer, [])
    path = tmp_path / "claim.json"
    path.write_text(json.dumps(empty.to_dict()))
    project, keys, threshold, data = read_claim(path)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**empty.to_dict(), "metadata": "x"}))
    with pytest.raises(UsageError, match="is not a signing request"):
        read_claim(broken)
    root = tmp_path / "repo" / "metadata" / "1.root.json"  # another TUF file: said so
    with pytest.raises(UsageError, match=r"is not a signing request .*: it has no 'project'$"):
        read_claim(root)
    for text, kind in [("[1]", "array"), ("null", "null"), ('"x"', "string"), ("1.5", "number")]:
        broken.write_text(text)  # ("list indices must be integers or slices, not str")
        with pytest.raises(
            UsageError, match=rf"request .*: it holds a JSON {kind}, not an object$"
        ):
            read_claim(broken)
    with pytest.raises(
        OwnedMetadataError, match=r"leaves out what it has published: demo/demo-1\.0"
    ):
        origin.claim(project, keys, threshold, data)
    # A request signed by a key it does not name is refused too.
    stranger = CryptoSigner.generate_ed25519()
    forged = claim_request("demo", stranger, [origin.find("demo/demo-1.0.tar.gz")])  # type: ignore[list-item]
    with pytest.raises(OwnedMetadataError, match="not signed by"):
        origin.claim(project, keys, threshold, forged.data)
    # A key named by another key's id (the bins key's), or one of the
    # repository's own keys, is refused.
    bins_keyid = next(iter(origin._md["targets"].signed.delegations.roles["bins"].keyids))
    posing = Key.from_dict(bins_keyid, signer.public_key.to_dict())
    with pytest.raises(OwnedMetadataError, match="not named by its own hash"):
        origin.claim(project, [posing], 1, data)
    online = load_key(str(tmp_path / "repo" / "keys" / "bin-n.pem")).signer
    request = claim_request("demo", online, [origin.find("demo/demo-1.0.tar.gz")])  # type: ignore[list-item]
    with pytest.raises(OwnedMetadataError, match="one of the repository's own keys"):
        origin.claim(project, [online.public_key], 1, request.data)
    assert not origin.claimed("demo")
    good = claim_request("demo", signer, [origin.find("demo/demo-1.0.tar.gz")])  # type: ignore[list-item]
    origin.claim(project, keys, threshold, good.data)
    assert origin.claimed("demo") and origin.find("demo/demo-1.0.tar.gz") is not None
    assert [t.path for t in origin.artifacts()] == ["demo/demo-1.0.tar.gz"]  # once, not twice
    # The maintainers cannot remove it themselves any more; the bins path refuses it.
    with pytest.raises(OriginError, match="signs its own metadata"):
        origin.remove(["demo/demo-1.0.tar.gz"])
    again = _stored_artifact(origin, tmp_path, "demo", "demo-2.0.tar.gz", b"two")
    (result,) = origin.publish([again])
    assert isinstance(result, OriginError) and "signs its own metadata" in str(result)
    # Reloaded from disk, the same: the published chain holds the role.
    assert OriginRepository(repo).claimed("demo")
    assert (
        tufmesh(
            "origin",
            "project",
            "claim",
            "--dir",
            str(repo),
            str(tmp_path / "nope.json"),
            check=False,
        ).returncode
        != 0
    )


def test_a_lapsed_project_does_not_stop_listing_the_others(tmp_path: Path) -> None:
    repo, token, key, _first = _claimed_repo(tmp_path)
    other_token = add_project(repo, "other")
    signer = load_key(str(key)).signer
    with running(repo) as server:
        url = server.url
        # --key for a project that is not claimed: said, and the origin signs.
        lone = tmp_path / "other-1.0.tar.gz"
        lone.write_bytes(b"other")
        out = _publish(str(lone), "--origin", url, "--project", "other", token=other_token, key=key)
        assert "other is not claimed" in out and "published other/other-1.0.tar.gz" in out
        current = _published(url, "demo")
        soon = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
        assert _send(url, token, _with(current, signer, expires=soon)).status_code == 200
        import time

        time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 1.1)
        client = Client(
            tmp_path / "c", (repo / "metadata" / "1.root.json").read_bytes(), [SourceHealth(url)]
        )
        with client:
            assert [t.path for t in client.artifacts()] == ["other/other-1.0.tar.gz"]
            assert client.lapsed == ["project-demo"]
            with pytest.raises(MetadataRefusedError, match="expired"):
                client.target("demo/demo-1.0.tar.gz")
            # The repository's lapse, not the source's: it is not blamed.
            assert [s.failures for s in client.fetcher.sources] == [0]
        replica = Mirror.create(tmp_path / "m", repo / "metadata" / "1.root.json", [url])
        report = replica.sync()
        assert report.error is None and report.artifacts == 1 and report.lapsed == ["demo"]
        status = tufmesh("mirror", "status", "--dir", str(tmp_path / "m"), check=False).stdout
        assert "projects whose own metadata expired\tdemo" in status  # (and no daemon runs)
        home = str(tmp_path / "home")
        tufmesh("client", "init", str(repo / "metadata" / "1.root.json"), "--origin", url,
                "--home", home)  # fmt: skip
        listed = tufmesh("ls", "--home", home)
        assert listed.stdout.startswith("other/other-1.0.tar.gz")
        assert "demo signs its own metadata, and it expired" in listed.stderr
        # The developers sign again: listed again.
        tufmesh("developer", "sign", "demo", "--origin", url, "--token", token, "--key", str(key))
        with Client(
            tmp_path / "c", (repo / "metadata" / "1.root.json").read_bytes(), [SourceHealth(url)]
        ) as client:
            assert len(client.artifacts()) == 2 and client.lapsed == []


def test_the_pip_proxy_drops_a_project_whose_metadata_lapses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The proxy rebuilt its index only for a new snapshot, and a download
    refused for the lapse fell back to the copy it had verified before: a
    lapsed project's files stayed listed and served, while `ls` and `get`
    refused them (a review)."""
    from tufmesh.client import _proxy

    monkeypatch.setattr(_proxy, "REFRESH_EVERY", 0.0)  # (refreshed at each request)
    repo, token, key, _first = _claimed_repo(tmp_path)
    signer = load_key(str(key)).signer
    with running(repo) as server:
        url = server.url
        home = tmp_path / "home"
        tufmesh("client", "init", str(repo / "metadata" / "1.root.json"), "--origin", url,
                "--home", str(home))  # fmt: skip
        index = _proxy._Index(home)
        assert index.fetch("demo", "demo-1.0.tar.gz").is_file()  # verified, and kept
        soon = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=4)
        assert (
            _send(url, token, _with(_published(url, "demo"), signer, expires=soon)).status_code
            == 200
        )
        assert [f.filename for f in index.current().files("demo")] == ["demo-1.0.tar.gz"]
        time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 1.1)
        with pytest.raises(NotInMetadataError):
            index.current().files("demo")  # as `ls` lists it: not at all
        with pytest.raises(NotInMetadataError):
            index.fetch("demo", "demo-1.0.tar.gz")


# -- helpers ---------------------------------------------------------------------


def _published(url: str, project: str) -> Metadata[Targets]:
    with httpx.Client() as client:
        return published_version(client, url, project)


def _send(url: str, token: str, data: bytes) -> httpx.Response:
    return httpx.post(
        f"{url}/api/v1/projects/demo/metadata",
        content=data,
        headers={"authorization": f"Bearer {token}"},
        timeout=60,
    )


def _raw(md: Metadata[Targets]) -> bytes:
    return md.to_bytes()


def _resigned(current: Metadata[Targets], signer: Signer) -> bytes:
    md = Metadata(
        Targets(
            version=current.signed.version + 1,
            expires=current.signed.expires,
            targets=dict(current.signed.targets),
            unrecognized_fields=_DEMO,
        )
    )
    md.sign(signer)
    return md.to_bytes()


def _with(
    current: Metadata[Targets],
    signer: Signer,
    *targets: TargetFile,
    expires: datetime | None = None,
) -> bytes:
    listed = dict(current.signed.targets)
    listed.update({t.path: t for t in targets})
    md = Metadata(
        Targets(
            version=current.signed.version + 1,
            expires=expires or current.signed.expires,
            targets=listed,
            unrecognized_fields=_DEMO,
        )
    )
    md.sign(signer)
    return md.to_bytes()


def _chunked(target: TargetFile, size: int) -> TargetFile:
    custom = dict(target.unrecognized_fields["custom"], chunk_size=size)
    return TargetFile(target.length, target.hashes, target.path, {"custom": custom})


def _renamed(target: TargetFile, path: str) -> TargetFile:
    return TargetFile(target.length, target.hashes, path, target.unrecognized_fields)


def _stored_artifact(
    origin: OriginRepository, tmp_path: Path, project: str, name: str, body: bytes
) -> Artifact:
    origin.store.put(body)
    source = tmp_path / name
    source.write_bytes(body)
    return Artifact.from_target(target_of(source, project))


def _forge_into_bin(repo: Path, evil: Path, project: str) -> str:
    """Sign, with the online bin keys, a bin listing ``evil`` as ``project``'s."""
    origin = OriginRepository(repo)
    target = target_of(evil, "demo")
    if project != "demo":
        target = _renamed(target, f"{project}/{evil.name}")
    origin.store.put(evil.read_bytes())
    role = origin.succinct.get_role_for_target(target.path)
    with origin.edit_targets(role) as listed:
        listed.targets[target.path] = target
    origin._commit()
    return target.path


@pytest.mark.attack
@pytest.mark.parametrize("rotated", [False, True], ids=["claim-alone", "targets-keys-rotated"])
def test_a_claim_holds_for_new_clients_once_the_targets_keys_are_rotated(
    tmp_path: Path, rotated: bool
) -> None:
    """The targets version signed before a claim stays valid for its lifetime
    (a year): whoever holds the online keys can serve it again, with the
    claimed project's path forged into its hash bin, to a client that has
    never fetched a later one (a new install), and python-tuf takes it: the
    limit docs/adr/0022 states. Rotating the targets keys in the claim's
    ceremony (docs/maintainers.md) ends it: the root then names other keys,
    and every older targets version is signed by none of them."""
    from tuf.api.metadata import MetaFile, Snapshot, Timestamp
    from tuf.api.serialization.json import JSONSerializer
    from tuf.ngclient import Updater

    from tufmesh.origin._keys import generate_file_key

    directory = tmp_path / "repo"
    origin = OriginRepository.create(directory, OriginConfig(bins=16))
    first = tmp_path / "demo-1.0.tar.gz"
    first.write_bytes(os.urandom(5000))
    origin.store.put(first.read_bytes())
    assert origin.publish([Artifact.from_target(target_of(first, "demo"))]) == [2]
    before = origin._bytes["targets"]  # public: every client and mirror has it
    key = tmp_path / "demo.pem"
    generate_key(key)
    signer = load_key(str(key)).signer
    request = claim_request("demo", signer, [target_of(first, "demo")])
    origin.claim("demo", [signer.public_key], 1, request.data)
    origin = OriginRepository(directory)
    assert origin.unrotated_claims() == ["demo"]  # (origin status and serve warn)
    if rotated:
        origin.rotate("targets", [generate_file_key(directory, "targets-2")])
        origin = OriginRepository(directory)
        assert origin.unrotated_claims() == []
        with static_server(directory) as url:  # honest clients follow the rotation
            honest = Updater(str(tmp_path / "honest"), f"{url}/metadata/", str(tmp_path / "h"),
                             f"{url}/targets/",
                             bootstrap=(directory / "metadata" / "1.root.json").read_bytes())  # fmt: skip
            honest.refresh()
            info = honest.get_targetinfo("demo/demo-1.0.tar.gz")
            assert info is not None
            assert Path(honest.download_target(info)).read_bytes() == first.read_bytes()
    # The origin broken into: its online keys sign a bin that lists a file of
    # the claimed project, and a snapshot that names the older targets.
    evil = tmp_path / "demo-6.6.6.tar.gz"
    evil.write_bytes(b"malware")
    forged = target_of(evil, "demo")
    served = directory / "targets" / "demo" / f"{forged.hashes['sha256']}.{evil.name}"
    served.write_bytes(evil.read_bytes())
    metadata, serializer = directory / "metadata", JSONSerializer(compact=True)

    def sign(md: Metadata[Any], role: str) -> bytes:
        md.signed.version += 1
        md.signatures.clear()
        md.sign(load_key(str(directory / "keys" / f"{role}.pem")).signer)
        return md.to_bytes(serializer)

    bin_role = origin.succinct.get_role_for_target(forged.path)
    listing = Metadata[Targets].from_bytes(origin._bytes[bin_role])
    listing.signed.targets[forged.path] = forged
    listed = sign(listing, "bin-n")
    (metadata / f"{listing.signed.version}.{bin_role}.json").write_bytes(listed)
    old = Metadata[Targets].from_bytes(before).signed.version
    (metadata / f"{old}.targets.json").write_bytes(before)
    snapshot = Metadata[Snapshot].from_bytes(origin._bytes["snapshot"])
    snapshot.signed.meta["targets.json"] = MetaFile(version=old)
    snapshot.signed.meta[f"{bin_role}.json"] = MetaFile(version=listing.signed.version)
    snapshotted = sign(snapshot, "snapshot")
    (metadata / f"{snapshot.signed.version}.snapshot.json").write_bytes(snapshotted)
    timestamp = Metadata[Timestamp].from_bytes(origin._bytes["timestamp"])
    timestamp.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
    (metadata / "timestamp.json").write_bytes(sign(timestamp, "timestamp"))
    with static_server(directory) as url:
        fresh = Updater(str(tmp_path / "fresh"), f"{url}/metadata/", str(tmp_path / "dl"),
                        f"{url}/targets/",
                        bootstrap=(metadata / "1.root.json").read_bytes())  # fmt: skip
        if rotated:
            with pytest.raises(Exception, match="targets was signed by 0/1 keys"):
                fresh.refresh()
        else:
            fresh.refresh()
            info = fresh.get_targetinfo(forged.path)
            assert info is not None
            assert Path(fresh.download_target(info)).read_bytes() == b"malware"


def test_a_claim_is_noted_until_a_rotation_leaves_none_of_the_old_targets_keys_counting(
    tmp_path: Path,
) -> None:
    """The note of a claim that waits for the targets keys' rotation is cleared
    only by a rotation after which the old keys cannot make the threshold:
    one that kept a current key left every older targets version valid. A
    damaged note is said, and serves on."""
    from tufmesh.origin._keys import generate_file_key

    directory = tmp_path / "repo"
    origin = OriginRepository.create(directory, OriginConfig(bins=4))
    key = tmp_path / "demo.pem"
    generate_key(key)
    signer = load_key(str(key)).signer
    origin.claim("demo", [signer.public_key], 1, claim_request("demo", signer, []).data)
    origin = OriginRepository(directory)
    assert origin.unrotated_claims() == ["demo"]
    (old,) = origin.config.signers["targets"].items()
    kept = (old[1], origin._md["root"].signed.keys[old[0]])
    origin.rotate("targets", [kept, generate_file_key(directory, "targets-2")], threshold=1)
    origin = OriginRepository(directory)
    assert origin.unrotated_claims() == ["demo"]  # the old key still signs alone
    origin.rotate("targets", [generate_file_key(directory, "targets-3")])
    assert OriginRepository(directory).unrotated_claims() == []
    (directory / "claims-unrotated.json").write_text("{")
    status = tufmesh("origin", "status", "--dir", str(directory))
    assert "claims-unrotated.json" in status.stderr and "rotate them" in status.stderr


def test_a_new_key_for_a_claimed_project_whose_key_leaked(tmp_path: Path) -> None:
    repo, token, key, first = _claimed_repo(tmp_path)
    planted = tmp_path / "demo-6.6.6.tar.gz"
    planted.write_bytes(b"published with the leaked key")
    with running(repo) as server:
        _publish(str(planted), "--origin", server.url, "--project", "demo", token=token, key=key)
        # The developers make a new key and a request naming what the project
        # should hold, as the next version of its metadata.
        new = tmp_path / "keys" / "new.pem"  # (a directory made for it)
        tufmesh("developer", "keygen", str(new))
        twice = tufmesh("developer", "claim", "demo", str(first), str(first), "--key", str(new),
                        check=False)  # fmt: skip
        assert twice.returncode == 1 and "two files named demo-1.0.tar.gz" in twice.stderr
        request = tmp_path / "again.json"
        out = tufmesh(
            "developer", "claim", "demo", str(first), "--key", str(new), "-o", str(request),
            "--origin", server.url,
        ).stdout  # fmt: skip
        assert "version 3" in out
        claim = ["origin", "project", "claim", "--dir", str(repo), str(request)]
        serving = tufmesh(*claim, "--dry-run", "--remove-missing").stdout
        assert f"(with the origin stopped: one is serving {repo} now)" in serving
    # The dry run checks all the ceremony does, and shows the key id in full.
    refused = tufmesh(*claim, "--dry-run", check=False)
    assert refused.returncode == 1 and "--remove-missing" in refused.stderr
    assert load_key(str(new)).signer.public_key.keyid in refused.stdout
    shown = tufmesh(*claim, "--dry-run", "--remove-missing").stdout
    assert "would remove demo/demo-6.6.6.tar.gz" in shown and "one is serving" not in shown
    done = tufmesh(*claim, "--remove-missing").stdout
    assert "removed demo/demo-6.6.6.tar.gz" in done
    with running(repo) as server:
        url = server.url
        updater = tuf_updater(url, repo)
        updater.refresh()
        assert updater.get_targetinfo("demo/demo-6.6.6.tar.gz") is None
        assert tuf_download(url, repo, "demo/demo-1.0.tar.gz") == first.read_bytes()
        # The leaked key publishes nothing more; the new one does.
        late = tmp_path / "demo-7.0.tar.gz"
        late.write_bytes(b"seven")
        out = _publish(str(late), "--origin", url, "--project", "demo", token=token, key=key,
                       check=False)  # fmt: skip
        assert "is it the project's key" in out
        out = _publish(str(late), "--origin", url, "--project", "demo", token=token, key=new)
        assert "project-demo v4" in out
        assert tuf_download(url, repo, "demo/demo-7.0.tar.gz") == b"seven"


def test_the_developers_memory_of_versions_says_when_it_cannot_help(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    generate_key(key)
    developer = load_key(str(key))
    md = Metadata(Targets(version=1, unrecognized_fields=_DEMO))
    md.sign(developer.signer)
    developer.remember("demo", md.to_bytes())
    assert developer.sign_next("demo", md)  # the version it had published: fine
    deep = "[" * 5000 + "]" * 5000  # nested past Python's recursion limit
    for damaged in ("[]", '{"demo": 5}', '{"demo": {}}', '{"demo": {"version": "9"}}', "{", deep):
        developer.memory.write_text(damaged)
        with pytest.raises(UsageError, match=r"damaged|cannot read"):
            developer.sign_next("demo", md)


def test_a_drop_whose_commit_fails_leaves_the_name_to_drop_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    origin = OriginRepository.create(tmp_path / "repo")
    first = _stored_artifact(origin, tmp_path, "demo", "demo-1.0.tar.gz", b"one")
    second = _stored_artifact(origin, tmp_path, "demo", "demo-2.0.tar.gz", b"two")
    origin.publish([first, second])
    signer = CryptoSigner.generate_ed25519()
    request = claim_request("demo", signer, [first.target_file(), second.target_file()])
    origin.claim("demo", [signer.public_key], 1, request.data)
    current = Metadata[Targets].from_bytes(
        (tmp_path / "repo/metadata/1.project-demo.json").read_bytes()
    )
    dropping = next_version(current, [signer], drop=["demo/demo-2.0.tar.gz"], project="demo")

    def full_disk(self: OriginRepository) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(OriginRepository, "flush", full_disk)
        with pytest.raises(OSError, match="No space left"):
            origin.take_owned("demo", dropping)
    # Nothing recorded: the origin still starts ('unremoved' would stop it),
    # and the developers send the same version again.
    assert origin.removed() == {} and origin.unremoved == []
    assert origin.find("demo/demo-2.0.tar.gz") is not None
    assert origin.take_owned("demo", dropping)[0] == 2
    assert origin.find("demo/demo-2.0.tar.gz") is None
    assert list(origin.removed()) == ["demo/demo-2.0.tar.gz"]
    assert (
        not (tmp_path / "repo/targets/demo").joinpath(f"{second.sha256}.demo-2.0.tar.gz").exists()
    )


def test_a_projects_drop_leaves_bytes_stored_again_lately_to_gc(tmp_path: Path) -> None:
    """Another upload of the same bytes may be waiting for the committer: a
    project's drop deletes only bytes stored before the grace period, while a
    maintainers' claim (the origin stopped) deletes what it removes at once."""
    origin = OriginRepository.create(tmp_path / "repo")
    names = ["demo-1.0.tar.gz", "demo-2.0.tar.gz", "demo-3.0.tar.gz"]
    artifacts = [_stored_artifact(origin, tmp_path, "demo", n, n.encode()) for n in names]
    origin.publish(artifacts)
    signer = CryptoSigner.generate_ed25519()
    origin.claim("demo", [signer.public_key], 1,
                 claim_request("demo", signer, [a.target_file() for a in artifacts]).data)  # fmt: skip
    old = time.time() - 2 * origin.store.config.gc_grace_seconds
    for artifact in artifacts:  # published long ago
        os.utime(origin.store.path(artifact.cid), (old, old))
    origin.store.put(b"demo-2.0.tar.gz")  # uploaded again just now, not yet pinned
    current = Metadata[Targets].from_bytes(
        (tmp_path / "repo/metadata/1.project-demo.json").read_bytes()
    )
    drop = [f"demo/{n}" for n in names[:2]]
    origin.take_owned("demo", next_version(current, [signer], drop=drop, project="demo"))
    assert not origin.store.has(artifacts[0].cid)  # gone at once
    assert origin.store.has(artifacts[1].cid)  # left to gc: the other upload pins it
    origin.store.pin("project:other", [artifacts[1].cid])
    # A claim ceremony's removal is the maintainers' (a leaked key's
    # artifacts): gone at once, however lately stored.
    origin.store.put(b"demo-3.0.tar.gz")
    renewed = CryptoSigner.generate_ed25519()
    origin.claim("demo", [renewed.public_key], 1,
                 claim_request("demo", renewed, [], version=3).data, remove_missing=True)  # fmt: skip
    assert origin.find("demo/demo-3.0.tar.gz") is None
    assert not origin.store.has(artifacts[2].cid)


def test_a_projects_own_version_adds_no_name_in_other_case_only(tmp_path: Path) -> None:
    """Names that differ only in case are one file on macOS and Windows: the
    origin refuses them side by side in the hash bins, and in a project's own
    metadata too, beside a name it lists or one it drops."""
    origin = OriginRepository.create(tmp_path / "repo")
    first = _stored_artifact(origin, tmp_path, "demo", "demo-1.0.tar.gz", b"one")
    origin.publish([first])
    signer = CryptoSigner.generate_ed25519()
    request = claim_request("demo", signer, [first.target_file()])
    origin.claim("demo", [signer.public_key], 1, request.data)
    current = Metadata[Targets].from_bytes(
        (tmp_path / "repo/metadata/1.project-demo.json").read_bytes()
    )
    twin = _stored_artifact(origin, tmp_path, "demo", "Demo-1.0.tar.gz", b"other").target_file()
    beside = next_version(current, [signer], add=[twin], project="demo")
    with pytest.raises(ConflictError, match=r"demo/demo-1\.0\.tar\.gz is listed too, and names"):
        origin.take_owned("demo", beside)
    instead = next_version(current, [signer], add=[twin], drop=[first.path], project="demo")
    with pytest.raises(ConflictError, match=r"demo/demo-1\.0\.tar\.gz was published and removed"):
        origin.take_owned("demo", instead)
    assert origin.find(first.path) is not None and origin.find(twin.path) is None


@pytest.mark.attack
def test_a_versions_cost_to_the_committer_grows_with_its_blobs_not_its_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The committer, every project's, is held while it checks a project's
    version. A version of many names for one blob read and hashed its
    manifest once a name (8 MiB each: minutes a request), and a drop of many
    names walked the whole repository once a name. Now a blob is checked
    once a version, and a drop reads what its project publishes once; and
    the names a project drops, each kept for ever, are bounded."""
    origin = OriginRepository.create(tmp_path / "repo")
    signer = CryptoSigner.generate_ed25519()
    origin.claim("demo", [signer.public_key], 1, claim_request("demo", signer, []).data)
    body = os.urandom(3 << 20)
    one = _stored_artifact(origin, tmp_path, "demo", "demo-0.tar.gz", body)
    origin.store.put_chunked(body, chunk_size=one.chunk_size)  # its manifest too
    entry = one.target_file()
    names = [TargetFile(entry.length, dict(entry.hashes), f"demo/demo-{i}.tar.gz",
                        dict(entry.unrecognized_fields)) for i in range(200)]  # fmt: skip
    reads, walks = [], []
    read_manifest, artifacts = origin.store.read_manifest, OriginRepository.artifacts
    monkeypatch.setattr(
        origin.store, "read_manifest", lambda cid: reads.append(cid) or read_manifest(cid)
    )
    monkeypatch.setattr(
        OriginRepository, "artifacts", lambda self: walks.append(1) or artifacts(self)
    )
    current = Metadata[Targets].from_bytes(
        (tmp_path / "repo/metadata/1.project-demo.json").read_bytes()
    )
    assert origin.take_owned("demo", next_version(current, [signer], add=names, project="demo"))
    assert reads == [one.manifest]
    current = Metadata[Targets].from_bytes(
        (tmp_path / "repo/metadata/2.project-demo.json").read_bytes()
    )
    walks.clear()
    dropping = [t.path for t in names[1:]]
    drop = next_version(current, [signer], drop=dropping, project="demo")
    # Each dropped name is kept for ever: a project drops a bounded number.
    monkeypatch.setattr(repository_module, "MAX_DROPPED_NAMES", 198)
    with pytest.raises(QuotaError, match="would have dropped 199 names, past the 198"):
        origin.take_owned("demo", drop)
    monkeypatch.setattr(repository_module, "MAX_DROPPED_NAMES", 199)
    walks.clear()
    assert origin.take_owned("demo", drop)
    assert len(walks) == 1 and len(origin.removed()) == 199
    assert origin.store.has(one.cid)  # still named by demo-0
    # Past the bound, the maintainers' claim (the recovery after a key leaked:
    # the developers' new keys, what is to stay) may still drop.
    with pytest.raises(QuotaError, match="its maintainers can: 'origin project claim"):
        origin.take_owned("demo", next_version(
            Metadata[Targets].from_bytes((tmp_path / "repo/metadata/3.project-demo.json")
                                         .read_bytes()), [signer], drop=[one.path], project="demo"))  # fmt: skip
    renewed = CryptoSigner.generate_ed25519()
    again = claim_request("demo", renewed, [], version=4)
    assert origin.claim("demo", [renewed.public_key], 1, again.data, remove_missing=True,
                        dry_run=True) == [one.path]  # fmt: skip
    origin.claim("demo", [renewed.public_key], 1, again.data, remove_missing=True)
    assert origin.find(one.path) is None and len(origin.removed()) == 200
    # ...and what it drops does not count against the developers' own drops.
    monkeypatch.setattr(repository_module, "MAX_DROPPED_NAMES", 200)
    later = _stored_artifact(origin, tmp_path, "demo", "demo-later.tar.gz", b"later")
    current = Metadata[Targets].from_bytes(
        (tmp_path / "repo/metadata/4.project-demo.json").read_bytes()
    )
    origin.take_owned("demo", next_version(current, [renewed], add=[later.target_file()],
                                           project="demo"))  # fmt: skip
    current = Metadata[Targets].from_bytes(
        (tmp_path / "repo/metadata/5.project-demo.json").read_bytes()
    )
    assert origin.take_owned("demo", next_version(current, [renewed], drop=[later.path],
                                                  project="demo"))  # fmt: skip


def test_a_projects_own_version_is_durable_before_the_timestamp_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.helpers.durability import durability_trace

    origin = OriginRepository.create(tmp_path / "repo")
    signer = CryptoSigner.generate_ed25519()
    request = claim_request("demo", signer, [])
    origin.claim("demo", [signer.public_key], 1, request.data)
    release = _stored_artifact(origin, tmp_path, "demo", "demo-1.0.tar.gz", b"one")
    current = Metadata[Targets].from_bytes(
        (tmp_path / "repo/metadata/1.project-demo.json").read_bytes()
    )
    trace = durability_trace(monkeypatch)
    origin.take_owned(
        "demo", next_version(current, [signer], add=[release.target_file()], project="demo")
    )
    monkeypatch.undo()
    timestamp = str(origin.metadata_dir / "timestamp.json")
    (named,) = [i for i, (op, _, dst) in enumerate(trace) if op == "replace" and dst == timestamp]
    synced = {path for op, path, _ in trace[:named] if op == "fsync"}
    assert str(origin.metadata_dir / "2.project-demo.json") in synced
    assert str(origin.metadata_dir) in synced and str(origin.targets_dir / "demo") in synced
    # ...and what a client reads of it is what the developers signed, byte for byte.
    assert OriginRepository(origin.dir).find("demo/demo-1.0.tar.gz") == release.target_file()


def test_a_developer_key_may_live_in_a_kms_or_an_hsm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any securesystemslib signer URI, with its public key given: here a
    stand-in scheme for a KMS, whose private key this test holds."""
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_pem_private_key,
    )
    from securesystemslib.signer import SIGNER_FOR_URI_SCHEME

    pem = tmp_path / "held-by-the-kms.pem"
    generate_key(pem)
    private = load_pem_private_key(pem.read_bytes(), None)
    public = tmp_path / "public.pem"
    public.write_bytes(
        private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )

    class _Kms(CryptoSigner):
        @classmethod
        def from_priv_key_uri(cls, priv_key_uri, public_key, secrets_handler=None):  # type: ignore[no-untyped-def, override]
            return cls(load_pem_private_key(pem.read_bytes(), None), public_key)

    monkeypatch.setitem(SIGNER_FOR_URI_SCHEME, "testkms", _Kms)
    monkeypatch.setenv("TUFMESH_HOME", str(tmp_path / "home"))
    with pytest.raises(UsageError, match="--public-key"):
        load_key("testkms:projects/demo/keys/1")
    developer = load_key("testkms:projects/demo/keys/1", public)
    assert developer.signer.public_key == load_key(str(pem)).signer.public_key
    md = Metadata(Targets(version=1, unrecognized_fields=_DEMO))
    md.sign(developer.signer)
    developer.remember("demo", md.to_bytes())
    keyid = developer.signer.public_key.keyid
    assert (tmp_path / "home" / "developer" / f"{keyid}.versions.json").is_file()
    older = Metadata(
        Targets(
            version=1,
            targets={"demo/x": TargetFile(1, {"sha256": "00"}, "demo/x")},
            unrecognized_fields=_DEMO,
        )
    )
    older.sign(developer.signer)
    with pytest.raises(PublishError, match="another version"):
        developer.sign_next("demo", older)


def test_the_delegation_folds_case_and_reads_the_same_in_go() -> None:
    from tufmesh.origin._owned import owned_pattern

    pattern = owned_pattern("demo-pkg2")
    # No character class starts with '-': go-tuf's filepath.Match refuses those,
    # and would walk past the delegation to the bins.
    assert pattern == "[dD][eE][mM][oO]-[pP][kK][gG]2/*" and "[-" not in pattern
    role = DelegatedRole("project-demo-pkg2", [], 1, True, [pattern])
    for path in ("demo-pkg2/a", "Demo-Pkg2/a", "DEMO-PKG2/a"):
        assert role.is_delegated_path(path)
    for path in ("demo-pkg/a", "demo-pkg22/a", "demo-pkg2/sub/a", "xdemo-pkg2/a"):
        assert not role.is_delegated_path(path)


def test_a_republished_artifact_is_linked_to_the_blob_its_entry_names(tmp_path: Path) -> None:
    origin = OriginRepository.create(tmp_path / "repo")
    artifact = _stored_artifact(origin, tmp_path, "demo", "demo-1.0.tar.gz", b"one")
    origin.publish([artifact])
    link = origin.targets_dir / "demo" / f"{artifact.sha256}.demo-1.0.tar.gz"
    link.unlink()  # lost, say
    # Sent again with another blob's CID (the HTTP side is not trusted here):
    other = origin.store.put(b"evil bytes")
    (result,) = origin.publish([dataclasses.replace(artifact, cid=other, length=10)])
    assert isinstance(result, int)
    assert link.read_bytes() == b"one"
    assert other not in origin.store.pins().get("project:demo", set())


def test_developer_keys_named_oddly_or_paired_wrongly_are_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    odd = tmp_path / "x:y.pem"  # a file, not a signer URI of scheme "x"
    generate_key(odd)
    assert load_key("x:y.pem").memory == tmp_path / "x:y.pem.versions.json"
    other = tmp_path / "other.pem"
    generate_key(other)
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_pem_private_key,
    )

    public = tmp_path / "other.pub"
    public.write_bytes(
        load_pem_private_key(other.read_bytes(), None)
        .public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(UsageError, match="is not the public key of"):
        load_key("x:y.pem", public)


def test_a_keygen_never_replaces_a_file_and_one_cut_short_is_completed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another holder's public key where the new key's would go: kept, and no
    # key made (its .pub was replaced, and named the wrong key).
    bob = tmp_path / "bob.pem"
    generate_key(bob)
    theirs = bob.with_name("bob.pem.pub").read_bytes()
    bob.unlink()
    with pytest.raises(UsageError, match=r"bob\.pem\.pub exists already"):
        generate_key(bob)
    assert bob.with_name("bob.pem.pub").read_bytes() == theirs and not bob.exists()
    # A keygen cut short between its two files: run again, it writes the
    # public key of the key it kept (no command wrote it before).
    carol = tmp_path / "carol.pem"
    key = generate_key(carol)
    carol.with_name("carol.pem.pub").unlink()
    with pytest.raises(UsageError, match=r"exists already.*its public key was missing: wrote"):
        generate_key(carol)
    pem = carol.with_name("carol.pem.pub").read_bytes()
    assert load_key(str(carol), carol.with_name("carol.pem.pub")).signer.public_key == key
    with pytest.raises(UsageError, match=r"never overwritten$"):  # both there: said, untouched
        generate_key(carol)
    assert carol.with_name("carol.pem.pub").read_bytes() == pem
    # A public key that cannot be written: no key is left (a rerun made none).
    import tufmesh.origin._developer as developer_module

    create = developer_module._create

    def full_disk(path: Path, data: bytes, mode: int) -> None:
        if path.name.endswith(".pub"):
            raise OSError(28, "No space left on device")
        create(path, data, mode)

    monkeypatch.setattr(developer_module, "_create", full_disk)
    dave = tmp_path / "dave.pem"
    with pytest.raises(UsageError, match=r"cannot write .*dave\.pem\.pub: No space.*no key made"):
        generate_key(dave)
    assert not dave.exists()
    monkeypatch.undo()
    generate_key(dave)
    assert dave.exists() and dave.with_name("dave.pem.pub").exists()


def test_metadata_nested_past_the_recursion_limit_is_said_not_a_traceback(
    tmp_path: Path,
) -> None:
    """What an origin serves (or a hostile server at its URL) is read as any
    other malformed answer: one line, exit 1."""
    key = tmp_path / "demo.pem"
    generate_key(key)
    (tmp_path / "site" / "metadata").mkdir(parents=True)
    (tmp_path / "site" / "metadata" / "timestamp.json").write_text("[" * 5000 + "]" * 5000)
    with static_server(tmp_path / "site") as url:
        out = tufmesh("developer", "sign", "demo", "--origin", url, "--key", str(key),
                      "--token", "x", check=False)  # fmt: skip
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"{url} serves no TUF metadata that reads: JSON nested too deeply" in out.stderr


def test_a_project_whose_holders_sign_together(tmp_path: Path) -> None:
    """Three holders, two of whom must sign each version: one signs a release
    into a request, another checks it against their own files and sends it;
    one key alone publishes nothing, and a holder whose key did not sign the
    published version builds on it all the same (a threshold of the keys
    noted at the claim did)."""
    repo = init_repo(tmp_path / "repo")
    token = add_project(repo, "demo")
    first = tmp_path / "demo-1.0.tar.gz"
    first.write_bytes(os.urandom(300_000))
    with running(repo) as server:
        _publish(str(first), "--origin", server.url, "--project", "demo", token=token)
    a, b, c = (tmp_path / f"{name}.pem" for name in "abc")
    for key in (a, b, c):
        assert "wrote" in tufmesh("developer", "keygen", str(key)).stdout
    request = tmp_path / "demo.claim.json"
    out = tufmesh(
        "developer", "claim", "demo", str(first), "--key", str(a), "--holder", f"{b}.pub",
        "--holder", f"{c}.pub", "--threshold", "2", "-o", str(request),
    ).stdout  # fmt: skip
    assert "(2 of 3 must sign)" in out and "developer cosign" in out
    claim = ["origin", "project", "claim", "--dir", str(repo), str(request)]
    refused = tufmesh(*claim, check=False)
    assert refused.returncode != 0 and "not signed by 2 of demo's keys" in refused.stderr
    # A holder checks the listing against their own copy of the files.
    forged = tmp_path / "mine" / first.name
    forged.parent.mkdir()
    forged.write_bytes(b"other bytes")
    out = tufmesh("developer", "cosign", str(request), str(forged), "--key", str(b), check=False)
    assert out.returncode != 0 and "is not the artifact the request lists" in out.stderr
    for key in (b, c):
        out = tufmesh("developer", "cosign", str(request), str(first), "--key", str(key)).stdout
    assert "signed " in out and "3 signature(s), 2 needed" in out
    assert "claimed demo" in tufmesh(*claim).stdout

    second = tmp_path / "demo-2.0.tar.gz"
    second.write_bytes(os.urandom(200_000))
    with running(repo) as server:
        url = server.url
        # One holder's key publishes nothing: the release waits for another.
        out = _publish_in(tmp_path, str(second), "--origin", url, "--project", "demo",
                          token=token, key=a)  # fmt: skip
        assert "signed demo/demo-2.0.tar.gz: not yet published" in out
        pending = tmp_path / "demo-v2.request.json"
        assert "wrote demo-v2.request.json" in out and "signed by 1 key, 2 needed" in out
        # Another release on the same version: a request of its own, the
        # first one kept.
        other = tmp_path / "demo-2.1.tar.gz"
        other.write_bytes(os.urandom(1000))
        out = _publish_in(tmp_path, str(other), "--origin", url, "--project", "demo",
                          token=token, key=a)  # fmt: skip
        assert "wrote demo-v2-2.request.json" in out
        assert "demo/demo-2.0.tar.gz" in pending.read_text()
        # Sent with a file other than the one it lists, nothing is uploaded.
        wrong = tmp_path / "wrong" / second.name
        wrong.parent.mkdir()
        wrong.write_bytes(b"not the release")
        sent = tufmesh("developer", "send", str(pending), str(wrong), "--origin", url,
                       "--token", token, check=False)  # fmt: skip
        assert sent.returncode != 0 and "is not the artifact the request lists" in sent.stderr
        updater = tuf_updater(url, repo)
        updater.refresh()
        assert updater.get_targetinfo("demo/demo-2.0.tar.gz") is None
        sent = tufmesh("developer", "send", str(pending), "--origin", url, "--token", token,
                       check=False)  # fmt: skip
        assert sent.returncode != 0 and "is signed by 1 of demo's keys, 2 needed" in sent.stderr
        assert "nothing is sent" in sent.stderr
        # Sent past that check (by another client), the origin refuses it itself.
        with httpx.Client() as client:
            with pytest.raises(PublishError, match="not signed by 2 of demo's keys"):
                send_version(client, url, "demo", read_request(pending).data, token)
        # The second holder checks it against their own copy and sends it,
        # uploading the file again (the origin may have collected the first).
        out = tufmesh("developer", "cosign", str(pending), str(second), "--key", str(b),
                      "--origin", url, "--token", token).stdout  # fmt: skip
        assert "adds demo/demo-2.0.tar.gz" in out and "2 signature(s), 2 needed" in out
        assert "sent " in out and "project-demo v2" in out
        assert tuf_download(url, repo, "demo/demo-2.0.tar.gz") == second.read_bytes()
        # Sent again (its answer lost, say): said published, not refused.
        again = tufmesh("developer", "send", str(pending), "--origin", url, "--token", token)
        assert again.stdout.strip().endswith("already published: project-demo v2"), again.stdout
        # The third holder's key did not sign v2; two of the keys it noted at
        # the claim did, so it builds v3 on it: a drop, which the first holder
        # cosigns (nothing added: nothing to check but the listing).
        out = tufmesh("developer", "sign", "demo", "--origin", url, "--token", token,
                      "--key", str(c), "--drop", second.name, cwd=tmp_path).stdout  # fmt: skip
        assert "wrote demo-v3.request.json" in out
        pending = tmp_path / "demo-v3.request.json"
        cosigning = ["developer", "cosign", str(pending), "--key", str(a), "--origin", url]
        asked = tufmesh(*cosigning, "--token", token, check=False)
        assert asked.returncode != 0 and "give --yes to sign what it drops" in asked.stderr
        out = tufmesh(*cosigning, "--token", token, "--yes").stdout
        assert "drops demo/demo-2.0.tar.gz" in out and "project-demo v3" in out
        updater = tuf_updater(url, repo)
        updater.refresh()
        assert updater.get_targetinfo("demo/demo-2.0.tar.gz") is None
        assert tuf_download(url, repo, "demo/demo-1.0.tar.gz") == first.read_bytes()
        # A request sent once: cosigning it again is refused, and why.
        again = tufmesh("developer", "cosign", str(pending), "--key", str(b), "--origin", url,
                        check=False)  # fmt: skip
        assert again.returncode != 0 and "published already (project-demo v3)" in again.stderr
        stale = tufmesh("developer", "cosign", str(tmp_path / "demo-v2-2.request.json"),
                        "--key", str(b), "--origin", url, check=False)  # fmt: skip
        assert stale.returncode != 0 and "it is stale" in stale.stderr
        # The drop both signers noted (c once its request was written, a once
        # it cosigned); b, who signed no drop, none.
        for key, noted in ((a, True), (b, False), (c, True)):
            memory = json.loads(Path(f"{key}.versions.json").read_text())["demo"]
            assert (memory.get("dropped") == {"demo/demo-2.0.tar.gz": 3}) == noted, key
        # c has not seen v3 published: its drop may still be, and is kept;
        # a sent it (v3 noted as published): forgetting it costs nothing, as
        # a version older than v3 is refused all the same.
        kept = tufmesh("developer", "forget-drop", "demo", second.name, "--key", str(c),
                       check=False)  # fmt: skip
        assert kept.returncode == 1 and "may still be published" in kept.stderr, kept.stderr
        said = tufmesh("developer", "forget-drop", "demo", second.name, "--key", str(a)).stdout
        assert said == "forgot this key's drop of demo/demo-2.0.tar.gz\n"
        again = tufmesh("developer", "forget-drop", "demo", second.name, "--key", str(a),
                        check=False)  # fmt: skip
        assert again.returncode == 1 and "noted no drop of demo-2.0.tar.gz" in again.stderr
        # The project claimed again for a, c and a new key d (b's leaked): a
        # and c sign it, the maintainers carry it out.
        d = tmp_path / "d.pem"
        tufmesh("developer", "keygen", str(d))
        reclaim = tmp_path / "demo.reclaim.json"
        tufmesh("developer", "claim", "demo", str(first), "--key", str(a), "--holder", f"{c}.pub",
                "--holder", f"{d}.pub", "--threshold", "2", "--origin", url, "--replace-keys",
                "-o", str(reclaim))  # fmt: skip
        tufmesh("developer", "cosign", str(reclaim), str(first), "--key", str(c), "--origin", url,
                "--replace-keys")  # fmt: skip
    tufmesh("origin", "project", "claim", "--dir", str(repo), str(reclaim))
    with running(repo) as server:
        # b's tool noted a, b and c: two of them signed the new claim, so it
        # would build on it; it is no longer one of the project's keys.
        late = tmp_path / "demo-4.0.tar.gz"
        late.write_bytes(b"four")
        out = tufmesh("publish", str(late), "--origin", server.url, "--project", "demo",
                      "--key", str(b), "--token", token, check=False, cwd=tmp_path)  # fmt: skip
        assert out.returncode == 1 and "is not one of demo's keys now" in out.stderr, out.stderr
        assert not list(tmp_path.glob("demo-v5*.request.json"))


def _publish_in(cwd: Path, *args: str, token: str, key: Path) -> str:
    env = {**os.environ, "TUFMESH_TOKEN": token}
    proc = tufmesh("publish", *args, "--key", str(key), env=env, cwd=cwd)
    return proc.stdout + proc.stderr


def test_holders_sign_only_what_follows_a_version_their_keys_signed(tmp_path: Path) -> None:
    """The checks behind a cosignature, without an origin."""
    a, b, c = (CryptoSigner.generate_ed25519() for _ in range(3))
    holder = DeveloperKey(a, tmp_path / "a.versions.json")
    claim = claim_request("demo", a, [], holders=[b.public_key, c.public_key], threshold=2)
    assert claim.holders is not None and next(iter(claim.holders.keys)) == a.public_key.keyid
    with pytest.raises(UsageError, match="a threshold of 4 with 3 key"):
        claim_request("demo", a, [], holders=[b.public_key, c.public_key], threshold=4)
    # A key the claim does not name cannot sign it; a claim changed after it
    # was signed is refused.
    with pytest.raises(UsageError, match="not one of the request's keys"):
        cosign(claim, DeveloperKey(CryptoSigner.generate_ed25519(), tmp_path / "x.json"))
    changed = dataclasses.replace(claim, metadata=Metadata[Targets].from_bytes(claim.data))
    changed.metadata.signed.version = 7
    with pytest.raises(PublishError, match="changed after it was signed"):
        cosign(changed, DeveloperKey(b, tmp_path / "b.versions.json"))
    # A request whose threshold its keys cannot meet is not one (noted, it
    # would leave the holder's memory unreadable).
    for threshold in (0, 4, "2"):
        odd = tmp_path / "odd.json"
        odd.write_text(json.dumps({**claim.to_dict(), "threshold": threshold}))
        with pytest.raises(UsageError, match=r"is not a signing request.*a threshold of"):
            read_request(odd)
    # A key of more fields than a key has would carry them into the targets
    # metadata every client reads.
    for extra in ({"x-huge": 10**400}, {"keyval": {"public": "ab", "more": True}}):
        odd = tmp_path / "odd.json"
        request = claim.to_dict()
        request["keys"][1] = {**request["keys"][1], **extra}
        odd.write_text(json.dumps(request))
        with pytest.raises(UsageError, match=r"is not keytype, scheme and keyval\.public alone"):
            read_request(odd)
    # JSON nested past Python's recursion limit (a traceback, before).
    odd.write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(UsageError, match=r"is not a signing request.*nested too deeply"):
        read_request(odd)
    # Cosigning notes the project's keys beside the key.
    signed = cosign(claim, DeveloperKey(c, tmp_path / "c.versions.json"))
    assert set(signed.metadata.signatures) == {a.public_key.keyid, c.public_key.keyid}
    holder.note_holders("demo", claim.holders, 1)
    assert DeveloperKey(c, tmp_path / "c.versions.json").holders("demo") == claim.holders

    published = Metadata[Targets].from_bytes(signed.data)  # v1: signed by a and c
    # A base signed by b and c (not a): two of the noted keys, so a builds on it.
    by_others = Metadata[Targets].from_bytes(signed.data)
    by_others.signatures.clear()
    for signer in (b, c):
        by_others.sign(signer, append=True)
    holder.check("demo", by_others)
    # Signed by c alone: one of two, and not a's own: refused.
    by_one = Metadata[Targets].from_bytes(signed.data)
    by_one.signatures.clear()
    by_one.sign(c)
    with pytest.raises(PublishError, match="not signed by 2 of the 3 keys noted"):
        holder.check("demo", by_one)
    # Signed by a alone, where two must sign: a request a made, never
    # published, is no base either (it was, and was noted as published).
    by_mine = Metadata[Targets].from_bytes(signed.data)
    by_mine.signatures.clear()
    by_mine.sign(a)
    with pytest.raises(PublishError, match="a request some of them signed is not a published"):
        holder.check("demo", by_mine)

    artifact = tmp_path / "demo-1.0.tar.gz"
    artifact.write_bytes(b"one")
    entry = target_of(artifact, "demo")
    nxt = Metadata[Targets].from_bytes(holder.sign_next("demo", published, add=[entry]))
    assert changes(published, nxt) == ([entry], [])
    check_files([entry], [artifact], "demo")
    other = tmp_path / "other" / artifact.name
    other.parent.mkdir()
    other.write_bytes(b"two")
    with pytest.raises(PublishError, match="is not the artifact the request lists"):
        check_files([entry], [other], "demo")
    with pytest.raises(PublishError, match=r"not given: demo/demo-1\.0\.tar\.gz"):
        check_files([entry], [], "demo")
    # A version that skips one, or changes what was published, never follows.
    later = Metadata[Targets].from_bytes(next_version(nxt, [a], project="demo"))
    with pytest.raises(PublishError, match="it is stale"):
        changes(published, later)
    changed_entry = target_of(artifact, "demo")
    changed_entry.length += 1
    forged = Metadata[Targets].from_bytes(nxt.to_bytes())
    forged.signed.version += 1
    forged.signed.targets[entry.path] = changed_entry
    with pytest.raises(PublishError, match=r"changes demo/demo-1\.0\.tar\.gz"):
        changes(nxt, forged)
    # The memory of a key reads back; a damaged one is said. A version an
    # origin says it published, signed by fewer than the threshold, is not
    # noted as published.
    with pytest.raises(UsageError, match="fewer than 2 signatures of the keys noted"):
        holder.remember("demo", nxt.to_bytes())
    nxt.sign(b, append=True)
    holder.remember("demo", nxt.to_bytes())
    assert holder.holders("demo") == claim.holders
    holder.memory.write_text('{"demo": {"keys": {}, "threshold": 1}}')
    with pytest.raises(UsageError, match="damaged"):
        holder.holders("demo")


def test_no_holder_signs_back_in_what_its_key_signed_away(tmp_path: Path) -> None:
    """A holder noted only the version it built on, not the one it signed: a
    hostile origin served the version from before a drop again, after the
    drop was published, and every holder signed a release built on it,
    bringing the dropped artifact back, shown as neither added nor dropped.
    A drop that lost (another version of its number was published, listing
    the path) blocks nothing; nor does a request only shown, then refused."""
    a, b, c = (CryptoSigner.generate_ed25519() for _ in range(3))
    keys = [DeveloperKey(k, tmp_path / f"{n}.versions.json")
            for n, k in zip("abc", (a, b, c), strict=True)]  # fmt: skip
    alice, bob, carol = keys
    artifacts = []
    for name in ("demo-1.0.tar.gz", "demo-x.tar.gz"):
        (tmp_path / name).write_bytes(name.encode())
        artifacts.append(target_of(tmp_path / name, "demo"))
    claim = claim_request("demo", a, artifacts, holders=[b.public_key, c.public_key], threshold=2)
    for holder in keys[1:]:
        claim = cosign(claim, holder)
    alice.note_holders("demo", claim.holders, 1)  # (as 'developer claim' does)
    v1 = claim.metadata
    x = "demo/demo-x.tar.gz"
    # Alice proposes dropping demo-x (handed on as a request: noted, as
    # release() notes it); Bob, shown it, refuses: nothing is noted for him.
    drop = alice.sign_next("demo", v1, drop=[x])
    alice.signs_away("demo", v1, Metadata[Targets].from_bytes(drop))
    assert alice.dropped("demo") == {x: 2}
    # Forgotten now, it could be cosigned and sent later, and v1 served again.
    with pytest.raises(UsageError, match="may still be published: no version 2 or later"):
        alice.forget_dropped("demo", ["demo-x.tar.gz"])
    with pytest.raises(UsageError, match="no"):
        cosign(release_request("demo", drop), bob, v1, confirm=_refuse)
    assert bob.dropped("demo") == {}
    cosign(release_request("demo", drop), bob, v1)  # ...then signs it
    assert bob.dropped("demo") == {x: 2} and carol.dropped("demo") == {}
    # The drop is published (v2); the origin serves v1 again: neither of them
    # builds on it, nor signs Carol's release built on it; Carol, who signed
    # no drop, can.
    with pytest.raises(PublishError, match=r"without demo/demo-x\.tar\.gz, and the origin"):
        alice.sign_next("demo", v1)
    (tmp_path / "demo-2.0.tar.gz").write_bytes(b"two")
    two = target_of(tmp_path / "demo-2.0.tar.gz", "demo")
    back = release_request("demo", carol.sign_next("demo", v1, add=[two]))
    for holder in (alice, bob):
        with pytest.raises(PublishError, match="the origin is serving an older version"):
            cosign(back, holder, v1)
    # Another version of the drop's number that lists demo-x (Carol's v2,
    # signed by Bob and Carol): whether the drop lost to it, or the origin
    # serves it after the drop was published, the key cannot tell. Refused,
    # until Alice says her drop was not published.
    lost = Metadata[Targets].from_bytes(cosign(back, DeveloperKey(b, tmp_path / "b2.json"),
                                               v1).data)  # fmt: skip
    with pytest.raises(PublishError, match="If another version of its number won, say so"):
        alice.sign_next("demo", lost)
    assert json.loads(alice.memory.read_text())["demo"]["dropped"] == {x: 2}
    assert alice.forget_dropped("demo", ["demo-x.tar.gz", "demo-9.tar.gz"]) == [x]
    assert x in Metadata[Targets].from_bytes(alice.sign_next("demo", lost)).signed.targets


def _refuse(added: list[TargetFile], dropped: list[str]) -> None:
    raise UsageError("no")


def test_a_new_claim_shows_every_entry_it_lists_to_each_holder(tmp_path: Path) -> None:
    """A claim of a project claimed already was shown as what it changes from
    the version the origin serves, which nothing checks: an entry a hostile
    co-holder added, that a forged published version listed too, was never
    shown, nor needed a file or --yes."""
    a, b = CryptoSigner.generate_ed25519(), CryptoSigner.generate_ed25519()
    entries = []
    for name in ("demo-1.0.tar.gz", "demo-evil.tar.gz"):
        (tmp_path / name).write_bytes(name.encode())
        entries.append(target_of(tmp_path / name, "demo"))
    claim = claim_request("demo", a, entries, version=4, holders=[b.public_key], threshold=2)
    forged = Metadata(Targets(version=3, expires=datetime.now(UTC) + timedelta(days=30),
                              targets={t.path: t for t in entries}))  # fmt: skip
    shown: list[tuple[list[str], list[str]]] = []
    cosign(claim, DeveloperKey(b, tmp_path / "b.versions.json"), forged,
           confirm=lambda added, dropped: shown.append(([t.path for t in added], dropped)))  # fmt: skip
    assert shown == [(["demo/demo-1.0.tar.gz", "demo/demo-evil.tar.gz"], [])]


def test_a_claims_keys_are_signed_and_counted_once(tmp_path: Path) -> None:
    """What the review of ADR 24 found: a claim's keys and threshold outside
    its signatures (a cosigner's noted keys could be replaced), one key
    written twice counting twice, a claim's version taken as a release, a
    version that lives for ever, a base a holder checked and then forgot."""
    a, b, c = (CryptoSigner.generate_ed25519() for _ in range(3))
    claim = claim_request("demo", a, [], holders=[b.public_key, c.public_key], threshold=2)
    assert claim.holders is not None
    # Keys or threshold changed in the request, the signatures intact: refused.
    x = CryptoSigner.generate_ed25519()
    widened = dataclasses.replace(
        claim, holders=Holders({**claim.holders.keys, x.public_key.keyid: x.public_key}, 1)
    )
    bob = DeveloperKey(b, tmp_path / "b.versions.json")
    with pytest.raises(PublishError, match="does not name the project, keys and threshold"):
        cosign(widened, bob)
    assert bob.holders("demo") is None
    # One key written twice (its hex in capitals: another key id) is refused
    # by the tool and by the origin.
    shout = a.public_key.to_dict()
    shout["keyval"] = {"public": shout["keyval"]["public"].upper()}
    twice = Key.from_dict(compute_default_keyid(shout["keytype"], shout["scheme"],
                                                shout["keyval"]), dict(shout))  # fmt: skip
    with pytest.raises(UsageError, match=r"is named twice \(a holder's key is your own --key\)"):
        claim_request("demo", a, [], holders=[twice], threshold=2)
    with pytest.raises(OwnedMetadataError, match="a key is given twice"):
        owned_delegation("demo", [a.public_key, twice], 2)
    # A claim's version is not a release, for the tool nor the origin.
    origin = OriginRepository.create(tmp_path / "repo")
    signed = cosign(claim, bob)
    origin.claim("demo", list(claim.holders.keys.values()), 2, signed.data)
    published = Metadata[Targets].from_bytes(signed.data)
    again = claim_request(
        "demo", a, [], holders=[b.public_key, c.public_key], threshold=2, version=2
    )
    both = cosign(again, bob, published)
    with pytest.raises(PublishError, match="a claim's metadata, not a release"):
        changes(published, both.metadata)
    with pytest.raises(OwnedMetadataError, match="is not a release"):
        origin.take_owned("demo", both.data)
    # Nor may a version live past the origin's limit.
    alice = DeveloperKey(a, tmp_path / "a.versions.json")
    forever = Metadata[Targets].from_bytes(alice.sign_next("demo", published, days=3650))
    with pytest.raises(PublishError, match="past what the origin accepts"):
        changes(published, forever)
    forever.signatures.clear()
    for signer in (a, b):
        forever.sign(signer, append=True)
    with pytest.raises(OwnedMetadataError, match="more than 396 days from now"):
        origin.take_owned("demo", forever.to_bytes())
    # A release names its project: another project's is refused, by the
    # origin and by a holder's tool.
    elsewhere = Metadata[Targets].from_bytes(alice.sign_next("demo", published))
    assert elsewhere.signed.unrecognized_fields == {"x-tufmesh-project": "demo"}
    elsewhere.signed.unrecognized_fields["x-tufmesh-project"] = "other"
    elsewhere.signatures.clear()
    for signer in (a, b):
        elsewhere.sign(signer, append=True)
    with pytest.raises(OwnedMetadataError, match="names another project than demo"):
        origin.take_owned("demo", elsewhere.to_bytes())
    with pytest.raises(PublishError, match="is not demo's"):
        cosign(SigningRequest("demo", elsewhere), bob, published)
    # Nor is a base another project's, though the same keys signed it.
    other = Metadata[Targets].from_bytes(published.to_bytes())
    other.signed.unrecognized_fields["x-tufmesh-claim"]["project"] = "other"
    other.signatures.clear()
    other.sign(a)
    with pytest.raises(PublishError, match="is not demo's"):
        alice.check("demo", other)
    # A key put under another key's id in a request is refused when read (a
    # cosigner would have noted it as that key).
    path = tmp_path / "posing.json"
    posing = claim.to_dict()
    posing["keys"][1] = {**x.public_key.to_dict(), "keyid": b.public_key.keyid}
    path.write_text(json.dumps(posing))
    with pytest.raises(UsageError, match="not named by its own hash"):
        read_request(path)
    # An older claim than one a key signed is not signed again (its keys
    # would be noted again).
    carol = DeveloperKey(c, tmp_path / "c.versions.json")
    carol.note_holders("demo", claim.holders, 2)
    with pytest.raises(PublishError, match="it is stale"):
        cosign(claim, carol)
    # A base a holder built on is its floor from then on, sent or not.
    alice.note_holders("demo", claim.holders, 1)
    v2 = Metadata[Targets].from_bytes(alice.sign_next("demo", published))
    v2.sign(b, append=True)
    alice.sign_next("demo", v2)
    with pytest.raises(PublishError, match="rolling the project back"):
        alice.sign_next("demo", published)


def test_noted_keys_are_replaced_only_when_asked_and_never_by_the_repositorys_own(
    tmp_path: Path,
) -> None:
    """A claim naming other keys than a holder noted replaces them only with
    --replace-keys (the --yes that signs a listing unchecked was routine for
    a first claim, and took the new keys unasked); and one of the
    repository's own keys spelt otherwise (hex in capitals) is not a
    project's key (its online bins key and one co-holder met a threshold of 2)."""
    a, b, c = (tmp_path / f"{name}.pem" for name in "abc")
    for key in (a, b, c):
        tufmesh("developer", "keygen", str(key))
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    claim = ["developer", "claim", "demo", "--key", str(a), "--threshold", "2"]
    tufmesh(*claim, "--holder", f"{b}.pub", "-o", str(first))
    tufmesh("developer", "cosign", str(first), "--key", str(b))
    # Another claim, for other keys: a's own memory asks first too.
    refused = tufmesh(*claim, "--holder", f"{c}.pub", "-o", str(second), check=False)
    assert refused.returncode != 0 and "give --replace-keys" in refused.stderr
    assert not second.exists()
    tufmesh(*claim, "--holder", f"{c}.pub", "-o", str(second), "--replace-keys")
    tufmesh("developer", "cosign", str(second), "--key", str(c))
    # b is not in it; a is, and its noted keys are now the second claim's.
    bob = tufmesh("developer", "cosign", str(second), "--key", str(b), "--yes", check=False)
    assert bob.returncode != 0 and "is not one of the request's keys" in bob.stderr
    assert load_key(str(a)).holders("demo") == read_request(second).holders

    repo = OriginRepository.create(tmp_path / "repo", OriginConfig(bins=4))
    bins_key = load_key(str(tmp_path / "repo" / "keys" / "bin-n.pem")).signer.public_key
    shout = bins_key.to_dict()
    shout["keyval"] = {"public": shout["keyval"]["public"].upper()}
    posing = Key.from_dict(compute_default_keyid(shout["keytype"], shout["scheme"],
                                                 shout["keyval"]), dict(shout))  # fmt: skip
    signer = load_key(str(a)).signer
    request = claim_request("demo", signer, [], holders=[posing], threshold=2)
    with pytest.raises(OwnedMetadataError, match="one of the repository's own keys"):
        repo.claim("demo", [signer.public_key, posing], 2, request.data, dry_run=True)


def test_a_drop_whose_answer_is_lost_is_noted_all_the_same(tmp_path: Path) -> None:
    """A project of one key: the drop was sent and published, but the answer
    never came (the connection broke), and the key noted nothing: an origin
    serving the version from before the drop could have it sign the artifact
    back in. Sent and unanswered, it may be published: noted."""
    import socket
    import threading

    repo, token, key, _ = _claimed_repo(tmp_path)
    second = tmp_path / "demo-2.0.tar.gz"
    second.write_bytes(os.urandom(100_000))
    with running(repo) as server:
        _publish(str(second), "--origin", server.url, "--project", "demo", token=token, key=key)
        host, port = server.url.removeprefix("http://").split(":")
        listener = socket.create_server(("127.0.0.1", 0))

        def lose_answers() -> None:  # relays each request; a POST's answer is lost
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                with conn, socket.create_connection((host, int(port))) as upstream:
                    with contextlib.suppress(OSError):  # (a client gone: the next one)
                        relay(conn, upstream)

        def relay(conn: socket.socket, upstream: socket.socket) -> None:
            conn.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            fields = dict(line.lower().split(b":", 1) for line in head.split(b"\r\n")[1:])
            while len(body) < int(fields.get(b"content-length", b"0")):
                body += conn.recv(65536)
            # One request a connection: the answer then says so to the client.
            upstream.sendall(head + b"\r\nconnection: close\r\n\r\n" + body)
            answer = b""
            while piece := upstream.recv(65536):
                answer += piece
            if not head.startswith(b"POST "):
                conn.sendall(answer)

        threading.Thread(target=lose_answers, daemon=True).start()
        lossy = f"http://127.0.0.1:{listener.getsockname()[1]}"
        try:
            signed = tufmesh(
                "developer", "sign", "demo", "--origin", lossy, "--token", token,
                "--key", str(key), "--drop", second.name, check=False,
            )  # fmt: skip
        finally:
            listener.close()
        assert signed.returncode == 1 and "gave no answer" in signed.stderr, signed.stderr
        assert "it may be published" in signed.stderr
        updater = tuf_updater(server.url, repo)
        updater.refresh()
        assert updater.get_targetinfo("demo/demo-2.0.tar.gz") is None  # published indeed
    memory = json.loads(Path(f"{key}.versions.json").read_text())["demo"]
    assert memory.get("dropped") == {"demo/demo-2.0.tar.gz": 3}
