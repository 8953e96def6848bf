from __future__ import annotations

import hashlib
import random

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tufmesh.cas import BlobStore, Manifest, build_manifest, cid_of
from tufmesh.errors import ChunkRejectedError, DigestMismatchError, ManifestError

blobs = st.binary(min_size=0, max_size=4096)
chunk_sizes = st.integers(min_value=1, max_value=700)


def chunks_of(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_manifest_records_blake3_per_chunk_and_whole_sha256() -> None:
    data = bytes(range(256)) * 10
    manifest = build_manifest([data], chunk_size=1000)
    assert manifest.count == 3
    assert manifest.length == 2560
    assert manifest.sha256 == hashlib.sha256(data).digest()
    assert manifest.blob_cid == cid_of(data)
    assert manifest.digests[2] == blake3.blake3(data[2000:]).digest()
    assert manifest.chunk_span(2) == (2000, 560)


def test_encoding_is_documented_layout() -> None:
    data = b"x" * 10
    encoded = build_manifest([data], chunk_size=4).encoded
    assert encoded[:4] == b"TMCM"
    assert encoded[4:8] == b"\x01\x1e\x00\x00"
    assert int.from_bytes(encoded[8:12], "big") == 4
    assert int.from_bytes(encoded[12:20], "big") == 10
    assert encoded[20:52] == hashlib.sha256(data).digest()
    assert len(encoded) == 52 + 3 * 32


def test_empty_blob_has_no_chunks() -> None:
    manifest = build_manifest([], chunk_size=16)
    assert manifest.count == 0
    assert Manifest.decode(manifest.encoded) == manifest


@given(data=blobs, size=chunk_sizes, cut=st.integers(min_value=1, max_value=97))
def test_any_piece_boundaries_give_the_same_manifest(data: bytes, size: int, cut: int) -> None:
    whole = build_manifest([data], chunk_size=size)
    pieces = build_manifest(chunks_of(data, cut), chunk_size=size)
    assert pieces == whole
    assert Manifest.decode(whole.encoded) == whole
    assert whole.count == len(chunks_of(data, size))


@settings(max_examples=60, deadline=None)
@given(data=blobs, size=chunk_sizes, seed=st.integers(0, 2**32))
def test_chunks_in_any_order_reassemble_to_the_same_cid(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, size: int, seed: int
) -> None:
    store = BlobStore(tmp_path_factory.mktemp("s"))
    manifest = build_manifest([data], chunk_size=size)
    order = list(enumerate(chunks_of(data, size)))
    random.Random(seed).shuffle(order)
    with store.assemble(manifest) as assembly:
        for index, chunk in order:
            assert not assembly.complete
            assert assembly.add(index, chunk)
        assert assembly.missing() == []
        cid = assembly.commit()
    assert cid == cid_of(data)
    assert store.read(cid) == data


@given(
    data=st.binary(min_size=1, max_size=2048),
    size=chunk_sizes,
    where=st.integers(0),
    bit=st.integers(0, 7),
)
def test_any_single_flipped_bit_in_any_chunk_is_rejected(
    data: bytes, size: int, where: int, bit: int
) -> None:
    manifest = build_manifest([data], chunk_size=size)
    chunks = chunks_of(data, size)
    index = where % len(chunks)
    bad = bytearray(chunks[index])
    bad[where % len(bad)] ^= 1 << bit
    with pytest.raises(ChunkRejectedError):
        manifest.verify_chunk(index, bad)
    manifest.verify_chunk(index, chunks[index])  # the honest chunk still passes


def test_wrong_length_or_index_is_rejected() -> None:
    manifest = build_manifest([b"abcdefgh"], chunk_size=4)
    with pytest.raises(ChunkRejectedError, match="bytes"):
        manifest.verify_chunk(0, b"abc")
    with pytest.raises(ChunkRejectedError, match="outside"):
        manifest.verify_chunk(2, b"abcd")
    with pytest.raises(ChunkRejectedError):
        manifest.verify_chunk(1, b"abcd")  # chunk 0's bytes at index 1


def test_assembly_refuses_bad_chunk_and_stores_nothing_until_complete(store: BlobStore) -> None:
    data = b"0123456789" * 5
    manifest = build_manifest([data], chunk_size=8)
    with store.assemble(manifest) as assembly:
        with pytest.raises(ChunkRejectedError):
            assembly.add(0, b"X" * 8)
        assert not assembly.has(0)
        assert assembly.add(0, data[:8])
        assert not assembly.add(0, data[:8])  # duplicate: accepted once
        with pytest.raises(ChunkRejectedError, match="missing"):
            assembly.commit()
    assert list(store) == []
    assert list((store.root / "tmp").iterdir()) == []


def test_inconsistent_manifest_stores_nothing(store: BlobStore) -> None:
    data = b"abcdefgh"
    honest = build_manifest([data], chunk_size=4)
    lying = Manifest(honest.chunk_size, honest.length, bytes(32), honest.digests)
    with store.assemble(lying) as assembly:
        assembly.add(0, data[:4])
        assembly.add(1, data[4:])
        with pytest.raises(DigestMismatchError):
            assembly.commit()
    assert list(store) == []


def _header(**fields: int | bytes) -> bytes:
    values = {"magic": b"TMCM", "version": 1, "code": 0x1E, "reserved": 0,
              "chunk": 4, "length": 4, "sha": bytes(32)} | fields  # fmt: skip
    return (
        values["magic"]
        + bytes([values["version"], values["code"]])
        + values["reserved"].to_bytes(2, "big")
        + values["chunk"].to_bytes(4, "big")
        + values["length"].to_bytes(8, "big")
        + values["sha"]
    )


@pytest.mark.parametrize(
    ("blob", "complaint"),
    [
        (b"", "shorter than its header"),
        (_header(magic=b"XXXX") + bytes(32), "magic"),
        (_header(version=2) + bytes(32), "version"),
        (_header(code=0x12) + bytes(32), "chunk hash"),
        (_header(reserved=1) + bytes(32), "reserved"),
        (_header(chunk=0), "chunk size"),
        (_header(), "lists 0 chunk digests"),
        (_header() + bytes(64), "lists 2 chunk digests"),
        (_header() + bytes(33), "chunk digests"),
        (_header() + bytes(32 * 1000), "exceeds"),
    ],
)
def test_non_canonical_manifests_are_refused(blob: bytes, complaint: str) -> None:
    with pytest.raises(ManifestError, match=complaint):
        Manifest.decode(blob, max_size=4096)


@given(st.binary(max_size=300))
def test_decoder_accepts_or_raises_manifest_error_only(blob: bytes) -> None:
    try:
        manifest = Manifest.decode(blob)
    except ManifestError:
        return
    assert manifest.encoded == blob


def test_a_span_of_chunks_is_taken_only_at_its_exact_length() -> None:
    """A download asks for several chunks at once and checks each; bytes
    after the last chunk of a span were checked by nothing (the callers cut
    answers at the span's length; the check no longer relies on them)."""
    from tufmesh.client._download import plan_for_manifest

    data = bytes(range(250)) * 4  # 1,000 bytes: chunks of 64, spans of 3 (192), the last 40
    plan = plan_for_manifest(build_manifest([data], chunk_size=64), span=3)
    assert plan.count == 6
    # What a source sent is counted in the manifest's chunks, not in requests
    # (`get --json` said 10 "chunks" of a 29-chunk artifact from one source).
    assert [plan.pieces_in(i) for i in range(plan.count)] == [3, 3, 3, 3, 3, 1]
    for index in range(plan.count):
        offset, length = plan.span(index)
        honest = data[offset : offset + length]
        plan.verify(index, honest)
        for bad in (honest + b"\0", honest[:-1], honest + data[:64]):
            with pytest.raises(ChunkRejectedError):
                plan.verify(index, bad)
