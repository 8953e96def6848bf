"""Have-records and partial blobs: the Swarm's own logic, and its queries to a hostile neighbour."""

from __future__ import annotations

import contextlib
import gzip
import json
import math
import resource
import socket
import threading
import time
import types
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from tufmesh.client import ChunkScheduler, chunk_mask
from tufmesh.mirror._swarm import (
    MAX_NEIGHBOURS,
    MAX_QUERY_FAILURES,
    MAX_UNVERIFIED,
    QUERY_TIMEOUT,
    UNVERIFIED_TTL,
    Partial,
    Swarm,
    _post_json,
    have_client,
    parse_record,
    read_at_most,
)
from tufmesh.p2p._blob import MAX_RECORD


def test_partial_covers_only_ranges_of_verified_chunks(tmp_path: Path) -> None:
    p = Partial((tmp_path / "x.part",), chunk_size=10, length=35, count=4, mask=0b1011)
    assert p.covers(0, 19) and p.covers(30, 34) and p.covers(5, 5)
    assert not p.covers(15, 25)  # chunk 2 missing
    assert not p.covers(30, 35)  # past the end
    assert not p.covers(-1, 3) and not p.covers(9, 8)


def test_serve_range_names_the_file_only_when_covered(tmp_path: Path) -> None:
    part = tmp_path / "blob.part"
    part.write_bytes(b"\0" * 40)
    swarm = Swarm(url="http://me")
    swarm.begin("cid", Partial((part, tmp_path / "blob"), 10, 40, 4, mask=0b0001))
    assert swarm.serve_range("cid", 0, 9) == part
    assert swarm.serve_range("cid", 0, 10) is None
    assert swarm.serve_range("other", 0, 9) is None
    swarm.end("cid")
    assert swarm.serve_range("cid", 0, 9) is None


def test_a_blob_still_arriving_is_served_only_where_verified(tmp_path: Path) -> None:
    """Over HTTP too: a range of unverified chunks is a 404, and so is an
    If-Range, which would turn the request into the whole file."""
    from starlette.applications import Starlette

    from tufmesh.cas import BlobStore, cid_of
    from tufmesh.origin._server import tree_routes

    (tmp_path / "tree" / "metadata").mkdir(parents=True)
    verified, unverified = b"A" * 1024, b"stale bytes of an earlier run".ljust(1024, b"?")
    cid = cid_of(verified + b"B" * 1024)
    part = tmp_path / f"{cid}.part"
    part.write_bytes(verified + unverified)  # chunk 0 verified, chunk 1 not
    swarm = Swarm()
    swarm.begin(cid, Partial((part, tmp_path / cid), 1024, 2048, 2, mask=0b01))
    routes = tree_routes(tmp_path / "tree", BlobStore(tmp_path / "cas"), swarm.serve_range)
    transport = httpx.ASGITransport(app=Starlette(routes=routes))

    async def ask(span: str, if_range: str | None = None) -> httpx.Response:
        headers = {"Range": span} | ({"If-Range": if_range} if if_range else {})
        async with httpx.AsyncClient(transport=transport, base_url="http://mirror") as http:
            return await http.get(f"/blobs/{cid}", headers=headers)

    ok = trio.run(ask, "bytes=0-1023")
    assert ok.status_code == 206 and ok.content == verified
    assert trio.run(ask, "bytes=1000-1100").status_code == 404
    for if_range in ('"nope"', "Thu, 01 Jan 1970 00:00:00 GMT"):
        answer = trio.run(ask, "bytes=0-0", if_range)
        assert answer.status_code == 404 and b"stale" not in answer.content


@pytest.mark.parametrize("stage", ["stored", "renamed"])
@pytest.mark.parametrize("when", ["before the answer", "after its head"])
def test_a_blob_completed_while_its_range_is_answered_is_served_from_where_it_went(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str, stage: str
) -> None:
    """The partial file can go between the route's check and the response's
    stat, or after the head (sized from the partial file) went out and before
    Starlette opens the file by name: renamed to its complete name (not yet
    in the store), or stored and its download removed. Either way the same
    bytes come from where they went, not a 500 or a cut answer and a
    traceback (the renamed case still gave one, in the demo)."""
    import anyio
    from starlette.applications import Starlette

    from tufmesh.cas import BlobStore, cid_of
    from tufmesh.origin._server import tree_routes

    (tmp_path / "tree" / "metadata").mkdir(parents=True)
    blob = bytes(range(256)) * 8
    cid = cid_of(blob)
    store = BlobStore(tmp_path / "cas")
    part, whole = tmp_path / f"{cid}.part", tmp_path / cid
    part.write_bytes(blob)
    swarm = Swarm()

    def complete() -> None:
        part.rename(whole)  # the download completed...
        if stage == "stored":
            store.put(whole.read_bytes())  # ...and its blob was stored
            swarm.end(cid)
            whole.unlink()

    class Vanishing(type(part)):  # type: ignore[misc]
        def is_file(self) -> bool:
            found = super().is_file()
            complete()
            return found

    opened = anyio.open_file

    async def completed_first(path: object, *args: object, **kwargs: object) -> object:
        if str(path) == str(part) and part.exists():
            complete()
        return await opened(path, *args, **kwargs)  # type: ignore[arg-type]

    if when == "after its head":
        monkeypatch.setattr(anyio, "open_file", completed_first)
        first = part
    else:
        first = Vanishing(part)
    swarm.begin(cid, Partial((first, whole), 1024, len(blob), 2, mask=0b11))
    routes = tree_routes(tmp_path / "tree", store, swarm.serve_range)
    transport = httpx.ASGITransport(app=Starlette(routes=routes))

    async def ask() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://mirror") as http:
            return await http.get(f"/blobs/{cid}", headers={"Range": "bytes=10-19"})

    answer = trio.run(ask)
    assert answer.status_code == 206 and answer.content == blob[10:20]
    assert not part.exists() and whole.exists() == (stage == "renamed")


def test_have_record_round_trip_and_malformed_entries() -> None:
    swarm = Swarm(url="http://me", has_blob=lambda cid: cid == "stored")
    swarm.begin("arriving", Partial((Path("/nonexistent"),), 1, 12, 12, mask=0b100000000101))
    swarm.partial("arriving").claims = chunk_mask({1, 11})  # type: ignore[union-attr]
    record = swarm.record(["arriving", "stored", "unknown", 7], asker="http://asker/")
    assert record["blobs"]["stored"] == "all" and "unknown" not in record["blobs"]
    assert record["snapshot"] == 0  # no version complete yet
    assert parse_record(record["blobs"]["arriving"], 12) == ({0, 2, 11}, chunk_mask({1, 11}))
    assert parse_record(record["blobs"]["arriving"], 3) == ({0, 2}, chunk_mask({1}))  # clipped
    assert "http://asker" in swarm.neighbours()  # whoever asks becomes a neighbour
    for bad in ("all", None, {"have": "zz"}, {"have": 5}, [1, 2]):
        assert parse_record(bad, 12) == (None, 0)


def test_a_have_record_answers_for_64_blobs_at_most() -> None:
    """A query naming thousands of blobs costs the answerer 64 lookups, and
    the answer stays under the size a record may have."""
    looked: list[str] = []

    def has_blob(cid: str) -> bool:
        looked.append(cid)
        return True

    cids = [f"bafkrei{i:052d}" for i in range(5000)]
    record = Swarm(has_blob=has_blob).record(cids)
    assert len(record["blobs"]) == 64 and len(looked) == 64
    assert len(json.dumps(record)) < MAX_RECORD


def test_a_store_that_refuses_a_name_does_not_break_the_record() -> None:
    def has_blob(cid: str) -> bool:
        from tufmesh.errors import StoreError

        raise StoreError(f"not a CID: {cid}")

    assert Swarm(has_blob=has_blob).record(["garbage"])["blobs"] == {}


def test_neighbours_are_bounded_and_never_include_ourselves_or_the_origin() -> None:
    swarm = Swarm(url="http://me", origin="http://origin", peers=["http://peer"])
    assert Swarm(peers=["https://m.example/tufmesh"]).neighbours() == ["https://m.example/tufmesh"]
    odd = ["http://10.0.0.5:8080/admin?x=", "http://user@x:1", "http://x:1#f", "http://x y"]
    for url in ["http://me", "http://origin/", "ftp://x", 42, "http://" + "a" * 300, *odd]:
        swarm.learn(url)  # nor addresses with a path, query or user for our POSTs
    assert swarm.neighbours() == ["http://peer"]
    for url in ["http://m.example:8080", "https://[::1]:9", "http://127.0.0.1:5/"]:
        swarm.learn(url)
    assert swarm.neighbours()[1:] == [
        "http://m.example:8080",
        "https://[::1]:9",
        "http://127.0.0.1:5",
    ]
    for i in range(100):
        swarm.learn(f"http://m{i}")
        swarm._answered(f"http://m{i}")
    assert len(swarm.neighbours()) == MAX_NEIGHBOURS


def test_neighbours_not_heard_from_yet_hold_few_places() -> None:
    """Have-queries naming addresses that never answer cannot fill the list."""
    swarm = Swarm(url="http://me", peers=["http://p1", "http://p2"])
    for i in range(50):
        swarm.learn(f"http://junk{i}")
    junk = [f"http://junk{i}" for i in range(MAX_UNVERIFIED)]
    assert swarm.neighbours() == ["http://p1", "http://p2", *junk]  # configured peers aside
    swarm._answered("http://junk0")  # it answered: a neighbour like any other now
    swarm.learn("http://honest")
    assert swarm.neighbours()[-1] == "http://honest"
    for url in junk[1:]:
        for _ in range(MAX_QUERY_FAILURES):
            swarm._failed(url)
    for i in range(20):
        swarm.learn(f"http://m{i}")
        swarm._answered(f"http://m{i}")
    assert len(swarm.neighbours()) == MAX_NEIGHBOURS


def test_names_from_one_machine_neither_fill_the_places_nor_keep_another_machine_out() -> None:
    """Names cost nothing. A hostile peer's have-queries, naming addresses
    that never answer, held every place a new neighbour could take for as
    long as the mirror did not replicate (nobody asked them, so they never
    failed), and two naming an honest machine's IP kept that machine out.
    Now one machine's names hold MAX_UNVERIFIED_PER_MACHINE places (its
    first, so it cannot have the mirror ask address after address), a name
    unanswered for UNVERIFIED_TTL goes, and others' names for a machine
    give way to the name it gives itself."""
    swarm = Swarm(url="http://me")
    for i in range(2):  # the honest mirror's IP, named twice
        swarm.answer({"cids": [], "from": f"http://192.0.2.9:{i}"}, "203.0.113.66")
    for i in range(200):
        swarm.answer({"cids": [], "from": f"http://10.0.{i}.5:1"}, "203.0.113.66")
    assert swarm.neighbours() == ["http://192.0.2.9:0", "http://192.0.2.9:1"]  # two, the first
    swarm.answer({"cids": [], "from": "http://192.0.2.9:80"}, "192.0.2.9")  # the honest one
    swarm.answer({"cids": [], "from": "http://192.0.2.10:80"}, "192.0.2.10")
    assert swarm.neighbours() == [
        "http://192.0.2.9:1",
        "http://192.0.2.9:80",
        "http://192.0.2.10:80",
    ]
    assert swarm._answered("http://192.0.2.9:80", "192.0.2.9")
    for neighbour in swarm._neighbours.values():  # UNVERIFIED_TTL later...
        neighbour.learnt -= UNVERIFIED_TTL
    swarm.answer({"cids": [], "from": "http://192.0.2.11:80"}, "192.0.2.11")  # ...the rest go
    assert swarm.neighbours() == ["http://192.0.2.9:80", "http://192.0.2.11:80"]
    # A name that fails and is forgotten frees no place for its machine's next
    # (it would have the mirror ask one address after another), till it expires.
    for _ in range(MAX_QUERY_FAILURES):
        swarm._failed("http://192.0.2.11:80")
    swarm.answer({"cids": [], "from": "http://192.0.2.12:80"}, "192.0.2.11")
    swarm.answer({"cids": [], "from": "http://192.0.2.13:80"}, "192.0.2.11")
    assert swarm.neighbours() == ["http://192.0.2.9:80", "http://192.0.2.12:80"]
    for url in ("http://169.254.169.254:80", "http://[fe80::1]:80", "http://[ff02::1]:80"):
        swarm.answer({"cids": [], "from": url}, "192.0.2.20")  # where no mirror is
    assert swarm.neighbours() == ["http://192.0.2.9:80", "http://192.0.2.12:80"]


def test_a_mirror_bound_to_every_address_is_learnt_where_its_queries_come_from() -> None:
    """A mirror run with --host 0.0.0.0 (as a public one is) said it was
    http://0.0.0.0:PORT, which its neighbours rightly dropped: none ever
    learnt it. Its address is the one its queries come from."""
    swarm = Swarm(url="http://me")
    swarm.answer({"cids": [], "from": "http://0.0.0.0:8081"}, "198.51.100.7")
    swarm.answer({"cids": [], "from": "http://[::]:8081"}, "2001:db8::9")
    swarm.answer({"cids": [], "from": "http://0.0.0.0:8082"}, "::ffff:192.0.2.4")
    swarm.answer({"cids": [], "from": "libp2p:/ip4/0.0.0.0/tcp/4001/p2p/QmA"}, "192.0.2.5")
    swarm.answer({"cids": [], "from": "http://0.0.0.0:8083"}, None)  # from where, not said
    assert swarm.neighbours() == [
        "http://198.51.100.7:8081",
        "http://[2001:db8::9]:8081",
        "http://192.0.2.4:8082",
        "libp2p:/ip4/192.0.2.5/tcp/4001/p2p/QmA",
    ]
    # ...and such a mirror knows itself on loopback (it listed itself).
    me = Swarm(url="http://0.0.0.0:18086")
    for url in ("http://127.0.0.1:18086", "http://localhost:18086", "http://[::1]:18086",
                "http://127.1:18086", "http://localhost.:18086"):  # fmt: skip
        me.answer({"cids": [], "from": url}, "127.0.0.1")
    me.answer({"cids": [], "from": "http://127.0.0.1:18087"}, "127.0.0.1")  # another one
    assert me.neighbours() == ["http://127.0.0.1:18087"]
    # Learnt at its LAN address, it is never told of itself by that name
    # (a neighbour's answer to it named it back, and it polled itself).
    lan = Swarm(url="http://me")
    lan.answer({"cids": [], "from": "http://0.0.0.0:8001"}, "192.168.1.10")
    assert lan.answer({"cids": [], "from": "http://0.0.0.0:8001"}, "192.168.1.10")["peers"] == []
    assert lan.answer({"cids": []}, "192.168.1.11")["peers"] == ["http://192.168.1.10:8001"]
    # ...nor of its libp2p identity at another address.
    p2p = Swarm(url="libp2p:/ip4/0.0.0.0/tcp/4001/p2p/QmMine")
    p2p.learn("libp2p:/ip4/192.0.2.9/tcp/4001/p2p/QmMine", "192.0.2.1", "192.0.2.1")
    p2p.learn("libp2p:/ip4/192.0.2.7/tcp/4001/p2p/QmOther", "192.0.2.1", "192.0.2.1")
    assert p2p.neighbours() == ["libp2p:/ip4/192.0.2.7/tcp/4001/p2p/QmOther"]


def test_an_asker_names_no_address_nearer_to_us_than_itself() -> None:
    """Any asker could have a mirror POST its have-queries to this machine's
    loopback or its private network (a service there that trusts its
    network): names are now as far from us as their namer, or farther."""
    swarm = Swarm(url="http://me")
    for url in ("http://127.0.0.1:6379", "http://localhost:80", "http://a.localhost:80",
                "http://10.0.0.5:80", "http://[fd00::5]:80", "http://100.64.0.1:80",
                # however spelt (the resolver that connects reads them so)
                "http://127.1:6379", "http://2130706433:6379", "http://0x7f000001:6379",
                "http://localhost.:80", "http://2852039166:80", "http://012.0.0.5:80",
                "http://[::127.0.0.1]:80", "http://[64:ff9b::7f00:1]:80",
                "http://[2002:7f00:1::1]:80", "http://[::ffff:a9fe:a9fe]:80"):  # fmt: skip
        swarm.answer({"cids": [], "from": url}, "8.8.8.8")  # from the internet
    assert swarm.neighbours() == []
    swarm.answer({"cids": [], "from": "http://127.0.0.1:6379"}, "10.0.0.9")  # a private one
    assert swarm.neighbours() == []
    swarm.answer({"cids": [], "from": "http://10.0.0.5:80"}, "10.0.0.9")  # its own network
    swarm.answer({"cids": [], "from": "http://9.9.9.9:80"}, "10.0.0.9")  # farther: fine
    swarm.answer({"cids": [], "from": "http://127.0.0.1:8081"}, "127.0.0.1")  # this machine
    swarm.answer({"cids": [], "from": "http://10.0.0.6:80"}, None)  # from where, not said
    assert swarm.neighbours() == [
        "http://10.0.0.5:80", "http://9.9.9.9:80", "http://127.0.0.1:8081",
    ]  # fmt: skip
    # The operator's --peer may be anywhere.
    assert Swarm(peers=["http://127.0.0.1:80"]).neighbours() == ["http://127.0.0.1:80"]


def test_a_learnt_name_is_asked_only_where_it_resolves_no_nearer_than_its_namer() -> None:
    """A name is judged where it resolves, at each query: an asker on the
    internet naming a host name of its own that resolves to our loopback
    (or to both a public address and ours) had us POST there every poll."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    answers = {"evil.test": ["127.0.0.1"], "both.test": ["9.9.9.9", "127.0.0.1"],
               "lan.test": ["10.1.2.3"], "zero.test": ["0.0.0.0"], "any.test": ["::"],
               "cloud.test": ["169.254.169.254"]}  # fmt: skip

    async def resolve(host: str, at: int) -> list[str]:
        assert at == port
        return answers.get(host, [])

    swarm = Swarm(url="http://me", resolve=resolve)
    for name in ("evil.test", "both.test"):
        swarm.answer({"cids": [], "from": f"http://{name}:{port}"}, "8.8.8.8")
    swarm.answer({"cids": [], "from": f"http://lan.test:{port}"}, "10.0.0.9")
    swarm.answer({"cids": [], "from": f"http://near.test:{port}"}, "127.0.0.1")
    assert len(swarm.neighbours()) == 4
    # libp2p resolves a /dns4/ address where we cannot check it: not learnt.
    swarm.answer({"cids": [], "from": "libp2p:/dns4/evil.test/tcp/6379/p2p/Qm1"}, "8.8.8.8")
    assert len(swarm.neighbours()) == 4
    scheduler = ChunkScheduler(4, [])

    async def query(name: str) -> bool:
        url = f"http://{name}:{port}"
        scheduler.add_source(url, has=())
        async with have_client() as client:
            return await swarm._query(client, url, "cid", scheduler)

    for name in ("evil.test", "both.test"):
        assert trio.run(query, name) is False  # forgotten at once, never asked
        assert f"http://{name}:{port}" not in swarm.neighbours()
        reason = scheduler.reasons()[f"http://{name}:{port}"]
        assert "127.0.0.1, nearer to us than the machine that named it" in reason
    with listener, pytest.raises(TimeoutError):
        listener.accept()  # nothing came
    # A name from our own network may resolve there: asked at the address
    # checked, the name said as the Host (and the TLS server name).
    assert trio.run(swarm._pinned, f"http://lan.test:{port}") == (
        f"http://10.1.2.3:{port}", f"lan.test:{port}",
    )  # fmt: skip
    # Named by this machine (or configured): whatever it resolves to, as before.
    assert trio.run(swarm._pinned, f"http://near.test:{port}") == (f"http://near.test:{port}", None)
    # A name that resolves to nothing is a failed query, as an unanswered one.
    answers["lan.test"] = []
    assert trio.run(query, "lan.test") is True
    assert swarm._neighbours[f"http://lan.test:{port}"].failures == 1
    # Where no mirror is (0.0.0.0 and :: reach our loopback), whoever named it.
    for i, name in enumerate(("zero.test", "any.test", "cloud.test")):
        neighbour = f"http://{name}:{port}"
        swarm.answer({"cids": [], "from": neighbour}, f"10.0.1.{i}")
        assert neighbour in swarm.neighbours()
        with pytest.raises(ValueError, match="where no mirror is"):
            trio.run(swarm._pinned, neighbour)
        swarm._forget(neighbour)


def _answer_once(body: bytes) -> tuple[socket.socket, threading.Thread, list[bytes]]:
    """A listener on 127.0.0.1 that gives one keep-alive JSON answer, the
    connection open until the asker's end; the thread answering, and the
    request it read."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def answer() -> None:
        with listener:
            conn, _ = listener.accept()
        with conn, contextlib.suppress(OSError):
            conn.settimeout(10)
            seen.append(conn.recv(65536))
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
            while conn.recv(65536):
                pass

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return listener, thread, seen


def test_a_pinned_query_names_the_host_it_stands_for() -> None:
    listener, thread, seen = _answer_once(b"{}")

    async def ask() -> tuple[object, str | None]:
        async with have_client() as client:
            url = f"http://127.0.0.1:{listener.getsockname()[1]}/have"
            return await _post_json(client, url, {}, MAX_RECORD, "mirror.test:8080")

    assert trio.run(ask) == ({}, "127.0.0.1")
    thread.join(timeout=5)
    assert b"\r\nhost: mirror.test:8080\r\n" in seen[0].lower()


def test_one_machine_holds_few_places_however_many_ports_answer() -> None:
    """Addresses that answer were not capped: one host, listening on sixteen
    ports (or naming sixteen libp2p addresses), could take every place."""
    swarm = Swarm(url="http://me", peers=["http://203.0.113.5:1", "http://203.0.113.5:2"])
    for port in range(10, 40):
        for url in (f"http://203.0.113.5:{port}", f"http://[2001:db8::{port}]:80",
                    f"libp2p:/ip4/198.51.100.7/tcp/{port}/p2p/Qm{port}"):  # fmt: skip
            swarm.learn(url)
            swarm._answered(url)
    assert swarm.neighbours() == [
        "http://203.0.113.5:1",  # configured: kept, and not counted
        "http://203.0.113.5:2",
        "http://203.0.113.5:10",
        "http://[2001:db8::10]:80",  # one /64, one machine
        "libp2p:/ip4/198.51.100.7/tcp/10/p2p/Qm10",
        "http://203.0.113.5:11",
        "http://[2001:db8::11]:80",
        "libp2p:/ip4/198.51.100.7/tcp/11/p2p/Qm11",
    ]
    local = Swarm(url="http://me")
    for port in range(10, 20):  # mirrors side by side on one machine's loopback
        local.learn(f"http://127.0.0.1:{port}")
        local._answered(f"http://127.0.0.1:{port}")
    assert len(local.neighbours()) == 10


def test_a_neighbours_machine_is_where_its_answers_come_from() -> None:
    """Names are free, and a libp2p address is reached over whatever
    connection its peer id has open: one host with sixteen identities, each
    connected to the mirror and each naming another IP, held every place.
    Once a learnt neighbour answers, it counts on the machine its answer
    came from."""
    swarm = Swarm(url="http://me", peers=["libp2p:/ip4/10.9.0.1/tcp/1/p2p/QmKept"])
    kept = []
    for k in range(12):
        url = f"libp2p:/ip4/10.{k}.0.1/tcp/4001/p2p/Qm{k}"
        swarm.learn(url)
        kept.append(swarm._answered(url, "198.51.100.7"))
    assert kept[:2] == [True, True] and not any(kept[2:])
    assert swarm._answered(swarm.peers[0], "198.51.100.7")  # configured: kept, not counted
    for name in ("a.example", "b.example", "c.example"):  # one machine by three names
        swarm.learn(f"http://{name}:80")
        swarm._answered(f"http://{name}:80", "2001:db8::7")
    swarm.learn("http://d.example:80")
    swarm._answered("http://d.example:80", "2001:db8::8")  # the same /64
    swarm.learn("http://e.example:80")
    swarm._answered("http://e.example:80", "::1")  # loopback: not counted
    assert swarm.neighbours() == [
        "libp2p:/ip4/10.9.0.1/tcp/1/p2p/QmKept",
        "libp2p:/ip4/10.0.0.1/tcp/4001/p2p/Qm0",
        "libp2p:/ip4/10.1.0.1/tcp/4001/p2p/Qm1",
        "http://a.example:80",
        "http://b.example:80",
        "http://e.example:80",
    ]
    # Answers from where libp2p does not say share one machine's places,
    # whatever IP their addresses name.
    unknown = Swarm(url="http://me")

    async def unsaid(function: object, *args: object) -> tuple[object, None]:
        return {"blobs": {"cid": []}, "peers": []}, None  # the answer, with no address

    unknown.on_node = unsaid  # type: ignore[method-assign]
    unknown.node = types.SimpleNamespace(query_have=None)  # (named, not called: on_node is)

    async def ask_all() -> None:
        for k in range(5):
            url = f"libp2p:/ip4/10.{k}.0.1/tcp/4001/p2p/Qm{k}"
            unknown.learn(url)
            await unknown._query(None, url, "cid", ChunkScheduler(4, []))

    trio.run(ask_all)
    assert len(unknown.neighbours()) == 2
    # Forgotten, a neighbour named again is a candidate again, and dropped
    # again at its first answer: it holds an unverified place meanwhile.
    swarm.learn("libp2p:/ip4/10.5.0.1/tcp/4001/p2p/Qm5")
    assert "libp2p:/ip4/10.5.0.1/tcp/4001/p2p/Qm5" in swarm.neighbours()
    assert not swarm._answered("libp2p:/ip4/10.5.0.1/tcp/4001/p2p/Qm5", "198.51.100.7")


def test_a_have_answer_over_http_comes_with_its_address() -> None:
    listener, thread, _ = _answer_once(b'{"peers": []}')

    async def ask() -> tuple[object, str | None]:
        async with have_client() as client:
            url = f"http://127.0.0.1:{listener.getsockname()[1]}/have"
            return await _post_json(client, url, {}, MAX_RECORD)

    # A proxy in the environment is not used: its address would be every
    # neighbour's (here nobody answers there, so a proxied query would fail).
    with pytest.MonkeyPatch.context() as env:
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            env.setenv(name, "http://127.0.0.1:1")
        env.delenv("NO_PROXY", raising=False)
        env.delenv("no_proxy", raising=False)
        assert trio.run(ask) == ({"peers": []}, "127.0.0.1")
    thread.join(timeout=5)


def test_a_neighbour_is_forgotten_after_three_failed_rounds_in_a_row() -> None:
    swarm = Swarm(url="http://me", peers=["http://kept"])
    swarm.learn("http://flaky")
    for _ in range(2):
        assert not swarm._failed("http://flaky")
    swarm._answered("http://flaky")  # an answer in between: the count starts again
    assert not swarm._failed("http://flaky") and not swarm._failed("http://flaky")
    assert swarm._failed("http://flaky")  # the third in a row
    assert swarm.neighbours() == ["http://kept"]
    for _ in range(5):
        swarm._failed("http://kept")
    assert swarm.neighbours() == ["http://kept"]  # configured peers stay


def test_a_have_query_naming_a_newer_snapshot_is_a_hint() -> None:
    heard: list[int] = []
    swarm = Swarm(snapshot=4, on_newer=heard.append)
    swarm.syncing = 5
    assert swarm.query("cid") == {"cids": ["cid"], "from": None, "newest": 5}
    for newest in (3, 5, "9", True, None):  # older, known, or not a version
        swarm.answer({"cids": [], "from": "http://a", "newest": newest})
    assert heard == []
    record = swarm.answer({"cids": ["cid"], "from": "http://a", "newest": 6}, "192.0.2.1")
    assert heard == [6] and record["snapshot"] == 4
    assert "http://a" in swarm.neighbours()
    swarm.answer({"cids": [], "from": "http://b"})  # from an address not known: not learnt
    assert "http://b" not in swarm.neighbours()
    for bad in ([], {"cids": "x"}, {"from": "http://a"}):
        with pytest.raises(ValueError, match="expected"):
            swarm.answer(bad)


class _Hostile:
    """A neighbour that answers have-queries with a flood or a trickle (raw HTTP)."""

    def __init__(self, mode: str) -> None:
        self.mode, self.sent = mode, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with self.listener:
            conn, _ = self.listener.accept()
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)
            if self.mode in ("null-peers", "list-blobs"):  # well-formed JSON, not a record
                body = b'{"peers": null}' if self.mode == "null-peers" else b'{"blobs": [1]}'
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(body), body)
                )
                self.sent = len(body)
                return
            if self.mode == "bomb":  # a few KiB on the wire, 256 MiB once unpacked twice
                inner = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip, built a MiB at a time
                zeros = bytes(1 << 20)
                packed = b"".join(inner.compress(zeros) for _ in range(256)) + inner.flush()
                body = gzip.compress(packed, 9)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-encoding: gzip, gzip\r\ncontent-length: %d\r\n\r\n" % len(body) + body
                )
                self.sent = len(body)
                return
            length = b"" if self.mode == "flood" else b"content-length: 1000\r\n"
            conn.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" + length + b"\r\n"
            )
            end = time.monotonic() + 10  # bounded either way
            while time.monotonic() < end and self.sent < 256 << 20:
                piece = b"0" * 65536 if self.mode == "flood" else b" "
                conn.sendall(piece)
                self.sent += len(piece)
                if self.mode == "trickle":
                    time.sleep(0.5)  # under the per-read timeout, forever


@pytest.mark.attack
@pytest.mark.parametrize("mode", ["flood", "trickle", "bomb", "null-peers", "list-blobs"])
def test_a_hostile_have_answer_costs_one_query(mode: str) -> None:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hostile = _Hostile(mode)
    swarm = Swarm(url="http://me", peers=[hostile.url])
    scheduler = ChunkScheduler(4, [])

    async def query() -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(2.0)) as client:
            await swarm._query(client, hostile.url, "cid", scheduler)

    started = time.monotonic()
    trio.run(query)
    # Cut at its deadline, not after the hostile answer's 10 s (margin for a
    # loaded machine: it once took 4.6 s).
    assert time.monotonic() - started < QUERY_TIMEOUT + 5
    assert swarm._neighbours[hostile.url].failures == 1  # counted as a failed query
    hostile.thread.join(timeout=5)  # it stops once we hang up
    assert not hostile.thread.is_alive()
    assert hostile.sent < 16 << 20  # read no further than a record's limit (and buffers)
    # Nothing was unpacked either: the peak memory (KiB) grew by far less than a bomb.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 128 << 10


def test_a_have_answer_is_read_no_further_than_its_limit() -> None:
    """64 KiB (MAX_RECORD): a body one byte over it is refused as the piece
    that passes the limit arrives, and no further piece is asked for."""
    asked = []

    async def pieces(total: int) -> AsyncIterator[bytes]:
        for at in range(0, total, 4096):
            asked.append(at)
            yield b"x" * min(4096, total - at)

    async def read(total: int) -> int:
        return len(await read_at_most(pieces(total), MAX_RECORD))

    assert MAX_RECORD == 64 * 1024 and trio.run(read, MAX_RECORD) == MAX_RECORD
    asked.clear()
    with pytest.raises(ValueError, match=f"over {MAX_RECORD} bytes"):
        trio.run(read, 10 * MAX_RECORD)
    assert len(asked) == MAX_RECORD // 4096 + 1  # the piece past the limit, and no more


@pytest.mark.attack
def test_a_silent_neighbour_does_not_slow_the_queries_to_the_others() -> None:
    """Each neighbour is asked on its own cadence: one that accepts and never
    answers costs its own queries, not everyone's."""
    asked = {"honest": 0}
    record = b'{"snapshot": 0, "blobs": {"cid": {"have": "01", "claims": ""}}, "peers": []}'

    async def honest(stream: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while True:
                request = b""
                while b"\r\n\r\n" not in request:
                    piece = await stream.receive_some(65536)
                    if not piece:
                        return
                    request += piece
                head, _, body = request.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                while len(body) < length:
                    body += await stream.receive_some(65536)
                asked["honest"] += 1
                await stream.send_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(record), record)
                )

    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async def main() -> ChunkScheduler:
        async with trio.open_nursery() as nursery:
            urls = []
            for handler in (silent, honest):
                listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
                urls.append(f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}")
                nursery.start_soon(trio.serve_listeners, handler, listeners)
            swarm = Swarm(url="http://me", peers=urls)
            scheduler = ChunkScheduler(8, [])
            scheduler.fallback_open = False
            with trio.move_on_after(3.0):
                await swarm.follow("cid", scheduler)
            nursery.cancel_scope.cancel()
        return scheduler

    scheduler = trio.run(main)
    # About one query per POLL after the last answer; a round that waited for
    # the silent one would have managed two (one per QUERY_TIMEOUT).
    assert asked["honest"] >= 6, asked
    assert scheduler.fallback_open  # it did not wait for the silent one past its timeout
    assert any(scheduler.holds(s) == {0} for s in scheduler.sources)


def test_a_call_into_the_nodes_loop_is_cancelled_there_with_its_caller() -> None:
    """A download's call into the libp2p node's loop (another thread) ignored
    its cancellation: a peer that never answered held the download for the
    call's own timeouts (30 s), past the 3 s slow-retrieval limit, and held
    a worker thread meanwhile."""
    import threading

    import trio

    from tufmesh.mirror._swarm import in_loop

    tokens: list[trio.lowlevel.TrioToken] = []
    ready, stop = threading.Event(), threading.Event()
    seen: list[str] = []

    async def node_loop() -> None:
        tokens.append(trio.lowlevel.current_trio_token())
        ready.set()
        while not stop.is_set():
            await trio.sleep(0.01)

    async def silent_peer(name: str) -> bytes:
        try:
            await trio.sleep(10)  # the call's own timeout
        except trio.Cancelled:
            seen.append(f"{name} cancelled in the node's loop")
            raise
        return b""

    async def answering_peer(name: str) -> str:
        await trio.sleep(0)
        return f"{name} answered"

    async def download() -> None:
        assert await in_loop(tokens[0], answering_peer, "honest") == "honest answered"
        start = trio.current_time()
        with trio.move_on_after(0.5):
            await in_loop(tokens[0], silent_peer, "silent")
        assert trio.current_time() - start < 2
        with trio.fail_after(2):
            while not seen:
                await trio.sleep(0.01)

    node = threading.Thread(target=trio.run, args=(node_loop,))
    node.start()
    try:
        assert ready.wait(10)
        trio.run(download)
    finally:
        stop.set()
        node.join(10)
    assert seen == ["silent cancelled in the node's loop"]


def test_a_mirror_behind_an_announcement_syncs_again_soon_then_at_its_poll() -> None:
    """A sync that ends short of the newest version announced (its upstream,
    another mirror, does not hold it yet) is tried again after as long as
    it has been since the announcement (1, 1, 2, 4... s, 30 s at most), for
    ten minutes; otherwise, and once it serves that version, the poll."""
    from tufmesh.mirror._server import CATCH_UP_FOR, next_sync

    waits, ago = [], 0.0
    while True:
        wait = next_sync(60.0, 4, 5, ago)
        waits.append(wait)
        ago += wait
        if wait == 60.0:
            break
    assert waits[:7] == [1.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert sum(waits[:-1]) >= CATCH_UP_FOR and len(waits) < 30  # a bounded number of syncs
    assert next_sync(60.0, 5, 5, 0.0) == 60.0  # it serves that version
    assert next_sync(60.0, 4, 0, math.inf) == 60.0  # it heard of nothing
    assert next_sync(0.5, 4, 5, 10.0) == 0.5  # never later than the poll
    assert next_sync(86400.0, 4, 5, 601.0) == 86400.0  # ten minutes at most
