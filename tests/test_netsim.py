"""netsim: determinism, agreement with theory, hostile nodes, churn, and the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tufmesh.errors import UsageError
from tufmesh.netsim import Scenario, load_scenario, simulate
from tufmesh.netsim._real import matching_scenario
from tufmesh.netsim._sim import churn_floor


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    code = "from tufmesh.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_same_seed_gives_byte_identical_json(tmp_path: Path) -> None:
    outputs = []
    for hash_seed in ("1", "2"):  # string hashing differs between the two processes
        out = tmp_path / f"run{hash_seed}.json"
        args = ["netsim", "run", "--mirrors", "60", "--size", "32MiB", "--malicious", "0.1"]
        result = _cli(*args, "--churn", "0.1", "--seed", "7", "--json", str(out), "-q",
                      env={"PYTHONHASHSEED": hash_seed})  # fmt: skip
        assert result.returncode == 0, result.stderr
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    other = tmp_path / "other.json"
    args = ["netsim", "run", "--mirrors", "60", "--size", "32MiB", "--malicious", "0.1"]
    assert _cli(*args, "--churn", "0.1", "--seed", "8", "--json", str(other), "-q").returncode == 0
    assert other.read_bytes() != outputs[0]  # the seed matters
    data = json.loads(outputs[0])
    assert data["summary"]["completed"] == data["summary"]["honest_mirrors"] == 54
    # The origin's upload the bound was drawn with (null: "the fastest link's").
    summary = data["summary"]
    assert summary["origin_up_bytes_per_second"] == 16 << 20  # homogeneous links
    assert summary["lower_bound_seconds"] == pytest.approx((32 << 20) / (16 << 20), abs=1e-3)


def test_hostile_mirrors_are_the_fraction_with_halves_rounded_up() -> None:
    # (round() rounds halves to even: 0.5 of 3, 5 and 7 mirrors were 2, 2 and 4)
    assert [Scenario(mirrors=n, malicious=0.5).hostile for n in (3, 5, 7)] == [2, 3, 4]
    assert Scenario(mirrors=1000, malicious=0.3).hostile == 300
    assert Scenario(mirrors=9, malicious=0.1).hostile == 1
    assert Scenario(mirrors=50, malicious=0.29).hostile == 15  # (14.5 in decimal, not binary)


@pytest.mark.parametrize("links", ["homogeneous", "home", "mixed"])
def test_never_faster_than_the_lower_bound(links: str) -> None:
    result = simulate(Scenario(mirrors=40, size=16 << 20, links=links, seed=3))
    assert all(not math.isinf(t) for t in result.completion)
    assert min(result.completion) > 0
    assert result.all_done >= result.lower_bound
    assert result.origin_bytes >= 16 << 20  # every byte left the origin at least once


def test_homogeneous_network_lands_within_1_5x_of_the_bound() -> None:
    result = simulate(Scenario(mirrors=50, size=256 << 20, links="homogeneous"))
    assert result.lower_bound <= result.all_done <= 1.5 * result.lower_bound
    assert result.origin_bytes <= 1.2 * (256 << 20)  # super-seeding: each chunk about once


@pytest.mark.parametrize("fraction", [0.1, 0.3])
def test_hostile_mirrors_never_get_a_bad_chunk_accepted(fraction: float) -> None:
    result = simulate(Scenario(mirrors=80, size=16 << 20, links="home", malicious=fraction))
    assert result.honest == 80 - round(80 * fraction)
    assert all(not math.isinf(t) for t in result.completion)  # every honest mirror completes
    assert result.corrupt_accepted == 0
    assert result.chunks_rejected > 0  # corrupting nodes were asked, and caught
    assert result.bans >= result.chunks_rejected  # each liar banned where it lied
    # Distinct peers, apart from the bans (each mirror's counted: 892 "banned"
    # of 100 hostile mirrors read as 892 peers).
    corrupting = math.ceil(result.scenario.hostile / 3)  # (corrupt, withhold, trickle in turn)
    assert corrupting <= result.banned_peers <= result.scenario.hostile < result.bans


def test_transfers_the_scheduler_gave_up_are_cancelled(monkeypatch: pytest.MonkeyPatch) -> None:
    """As the daemon cancels every transfer no longer in flight (a lost
    endgame copy, a banned source). The simulator skipped the check when as
    many transfers ran as the scheduler had in flight, which a request whose
    refusal was still on its way made true with a lost copy running on."""
    from tufmesh.netsim._sim import _Simulation

    drop_stale = _Simulation._drop_stale
    stale: list[int] = []

    def checked(self: _Simulation, node: object) -> None:
        drop_stale(self, node)  # type: ignore[arg-type]
        running = set(node.scheduler.inflight())  # type: ignore[attr-defined]
        stale.append(sum(key not in running for key in node.flows))  # type: ignore[attr-defined]

    monkeypatch.setattr(_Simulation, "_drop_stale", checked)
    simulate(Scenario(mirrors=120, size=16 << 20, links="home", seed=1))
    assert len(stale) > 1000 and not any(stale)


def test_mirrors_on_slow_downlinks_drop_no_honest_source(tmp_path: Path) -> None:
    """ADR 27. Each transfer to a mirror on a 200-260 KiB/s downlink got a
    share under the 64 KiB/s floor: the mirror dropped its honest neighbours
    and the origin for its own link's slowness, and one never completed."""
    scenario = tmp_path / "slow.toml"
    scenario.write_text(
        'mirrors = 14\nsize = "12MiB"\nchunk_size = "256KiB"\norigin_up = "4MiB"\n'
        '[[link]]\nup = ["4MiB", "8MiB"]\ndown = ["200KiB", "260KiB"]\nlatency = [0, 0.005]\n'
    )
    result = simulate(dataclasses.replace(load_scenario(scenario), seed=1))
    assert result.dropped == 0 and max(result.completion) < 1.3 * result.lower_bound


def test_a_mirror_whose_every_source_is_dropped_syncs_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As the daemon's does: its download gives up, and its next sync starts
    afresh. The simulator left such a mirror with nothing to do until the
    end of the run ("never")."""
    from tufmesh.client import ChunkScheduler
    from tufmesh.netsim._sim import _Node, _Simulation

    new_scheduler = _Simulation._new_scheduler
    doomed: list[ChunkScheduler] = []

    def judging_all_slow(self: _Simulation, node: _Node) -> ChunkScheduler:
        scheduler = new_scheduler(self, node)
        if node.name == "m1" and not doomed:  # its first download: every request too slow
            doomed.append(scheduler)
            scheduler.too_slow = lambda now: scheduler.inflight()  # type: ignore[method-assign]
        return scheduler

    monkeypatch.setattr(_Simulation, "_new_scheduler", judging_all_slow)
    result = simulate(Scenario(mirrors=30, size=64 << 20, chunk_size=16 << 20, seed=1))
    assert doomed and doomed[0].stuck  # every source dropped...
    assert result.dropped >= len(doomed[0].stats)  # ...and counted
    assert all(not math.isinf(t) for t in result.completion)  # ...and m1 completed all the same


def test_mirrors_that_leave_and_rejoin_catch_up() -> None:
    result = simulate(Scenario(mirrors=60, size=32 << 20, links="home", churn=0.3, downtime=5))
    assert result.rejoined > 5
    assert result.rejoined_complete == result.rejoined
    assert result.bans == 0 < result.dropped  # those who left were dropped, not banned
    assert all(not math.isinf(t) for t in result.completion)


def test_churn_raises_the_bound_by_the_downtime_it_forces() -> None:
    """A mirror made to leave before its own downlink could have brought it the
    release cannot hold it before that time plus its downtime, whatever the
    network does: the bound says so, and the ratio measures the protocol."""
    assert churn_floor(100, 5.0, [(0.5, 100.0), (2.0, 100.0), (0.9, 50.0)]) == 7.0
    assert churn_floor(100, 5.0, [(2.0, 100.0)]) == churn_floor(100, 5.0, []) == 0.0
    scenario = Scenario(mirrors=30, size=32 << 20, links="home", churn=1.0, downtime=20, seed=2)
    result = simulate(scenario)
    assert result.churn_floor > 20 and result.lower_bound == result.churn_floor
    assert result.all_done >= result.lower_bound
    assert simulate(dataclasses.replace(scenario, churn=0.0)).churn_floor == 0.0
    assert matching_scenario(1, 1 << 20, 1 << 20, 1).degree == 1  # (validate --mirrors 1)


def test_scenario_files_and_their_errors(tmp_path: Path) -> None:
    good = tmp_path / "s.toml"
    good.write_text(
        'description = "x"\nmirrors = 12\nsize = "8MiB"\n'
        '[[link]]\nweight = 1\nup = ["1MiB", "2MiB"]\ndown = "10MiB"\nlatency = [0.01, 0.02]\n'
    )
    scenario = load_scenario(good)
    assert scenario.mirrors == 12 and scenario.size == 8 << 20
    assert scenario.classes[0].up == (1 << 20, 2 << 20)
    assert simulate(scenario).completion[-1] < math.inf
    for text, message in [
        ("mirrors = 0", "at least one mirror"),
        ("speed = 3", "unknown settings speed"),
        ("link_classes = 1", "unknown settings link_classes"),  # ("'int' object is not ...")
        ('links = "moon"', "unknown link profile"),
        ('links = ["home"]', "links must be a profile's name, not \\['home'\\]"),  # (unhashable)
        (
            "[[link]]\nweight = inf\nup = 1\ndown = 1\nlatency = 0",  # (a traceback: its sum)
            "a link's weight must be 1e-09 .. 1,000,000, not inf",
        ),
        ("mirrors = [", "s.toml"),
        ('size = "lots"', "s.toml: .*not a size"),
        ('mirrors = "ten"', "s.toml: mirrors must be an integer, not 'ten'"),
        ("mirrors = 5000000", "mirrors must be 1 .. 100,000, not 5000000"),
        ("origin_up = -5", "origin_up must be 1 .. 1,000,000,000,000,000, not -5"),
        ("horizon = -1", "horizon must be 1 .. 10,000,000"),
        ("chunk_size = 1", "67108864 chunks: at most 65,536"),
        ("degree = 0", "degree must be 1 .. 64, not 0"),
        (
            "[[link]]\nup = 0\ndown = 1\nlatency = 0",
            "a link's up must be 1 .. 1,000,000,000,000,000, not 0",
        ),
        ("[[link]]\nup = 1\ndown = 1", "a \\[\\[link\\]\\] needs latency"),
        ("[[link]]\nup = [2, 1]\ndown = 1\nlatency = 0", "up range \\[2.0, 1.0\\] runs backwards"),
        ("[link]\nup = 1\ndown = 1\nlatency = 0", "s.toml: links are"),  # not a list of them
        ("link = [1, 2]", "s.toml: links are \\[\\[link\\]\\] tables"),
        ("[[link]]\nup = 1\ndown = 1\nlatency = 0\ncolour = 1", "has no setting colour"),
        ("[[link]]\nup = [1, 2, 3]\ndown = 1\nlatency = 0", "a range is \\[low, high\\]"),
        ("[[link]]\nup = true\ndown = 1\nlatency = 0", "True is not a number"),
        ("malicious = 0.2\nbehaviours = []", "need at least one behaviour"),
        ('behaviours = "corrupt"', "behaviours is a list"),
        ("seed = -7", "seed must be 0 .. "),  # (-7 drew what 7 draws)
        ('mirrors = 100000\nsize = "64GiB"', "100,000 mirrors x 65,536 chunks: at most"),
    ]:
        good.write_text(text)
        with pytest.raises(UsageError, match=message):
            load_scenario(good)
    good.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")  # not text at all
    with pytest.raises(UsageError, match="not a scenario file"):
        load_scenario(good)


def test_cli_table_plot_and_errors(tmp_path: Path) -> None:
    png = tmp_path / "cdf.png"
    result = _cli("netsim", "run", "--scenario", "loopback", "--mirrors", "8", "--plot", str(png))
    assert result.returncode == 0, result.stderr
    assert "ratio to the bound" in result.stdout and "8 mirrors" in result.stdout
    assert png.read_bytes().startswith(b"\x89PNG")
    listing = _cli("netsim", "scenarios").stdout
    assert {"homogeneous", "internet", "hostile", "churn", "loopback"} <= {
        line.split("\t")[0] for line in listing.splitlines()
    }
    bad = _cli("netsim", "run", "--scenario", "nowhere")
    assert bad.returncode != 0 and "no scenario file 'nowhere'" in bad.stderr
    assert "Traceback" not in bad.stderr
    bad = _cli("netsim", "run", "--links", "moon")
    assert bad.returncode != 0 and "unknown link profile" in bad.stderr
    bad = _cli("netsim", "run", "--mirrors", "3", "--malicious", "0.9")
    assert bad.returncode != 0 and "leaves none honest" in bad.stderr
    # Paths are checked before the run, not after it; 0 is not a rate.
    bad = _cli("netsim", "run", "--mirrors", "3", "--json", str(tmp_path / "no" / "r.json"))
    assert bad.returncode != 0 and "is not a writable directory" in bad.stderr
    assert "ratio to the bound" not in bad.stdout  # refused before the run
    bad = _cli("netsim", "run", "--mirrors", "3", "--json", "")  # was a traceback, after the run
    assert (
        bad.returncode != 0 and "it names no file" in bad.stderr and "Traceback" not in bad.stderr
    )
    # A directory's path: it wrote a file of the directory's name.
    bad = _cli("netsim", "run", "--mirrors", "3", "--json", f"{tmp_path / 'nodir'}/")
    assert bad.returncode == 2 and "names a directory: give a file's name" in bad.stderr
    assert not (tmp_path / "nodir").exists()
    kept = tmp_path / "kept.json"  # a file where a directory should be: the JSON kept
    kept.write_text("earlier")
    bad = _cli("netsim", "run", "--mirrors", "3", "--json", str(kept), "--plot", str(png / "x"))
    assert bad.returncode == 1 and "is not a writable directory" in bad.stderr
    assert kept.read_text() == "earlier" and "ratio to the bound" not in bad.stdout
    bad = _cli("netsim", "run", "--origin-up", "0")
    assert (
        bad.returncode != 0
        and "--origin-up must be 1 .. 1,000,000,000,000,000, not 0" in bad.stderr
    )
    # A bound past the horizon is refused at once (it ran to the horizon, a
    # round a quarter of a second per mirror); a run that fails is reported.
    hopeless = _cli("netsim", "run", "--mirrors", "3", "--size", "4MiB", "--origin-up", "1")
    assert hopeless.returncode != 0 and "no network could finish within the horizon" in (
        hopeless.stderr
    )
    stalled = _cli("netsim", "run", "--mirrors", "3", "--size", "4MiB", "--origin-up", "1400")
    assert "none: not every honest mirror completed within the horizon" in stalled.stdout
    custom = tmp_path / "custom.toml"
    custom.write_text(
        'mirrors = 4\nsize = "1MiB"\n[[link]]\nup = "1MiB"\ndown = "1MiB"\nlatency = 0\n'
    )
    named = _cli("netsim", "run", "--scenario", str(custom), "--links", "home")
    assert named.returncode == 0 and "links home" in named.stdout  # the flag wins
    bad = _cli("netsim", "run", "--scenario", str(custom), "--links", "moon")
    assert bad.returncode != 0 and "unknown link profile 'moon'" in bad.stderr
    bad = _cli("netsim", "run", "--seed", "-1")
    assert bad.returncode != 0 and "--seed" in bad.stderr
    # Sizes the real run's origin would refuse, said before starting it, as the flag.
    for size, said in [("2GiB", "--size must be 1 .. 1.0 GiB (an origin's upload limit), not"),
                       ("0", "--size must be 1 .. 1.0 GiB (an origin's upload limit), not 0")]:  # fmt: skip
        bad = _cli("netsim", "validate", "--size", size)
        assert bad.returncode == 1 and bad.stderr.startswith(f"Error: {said}"), bad.stderr
    # A release its real run cannot carry within its deadline: refused before
    # the processes start (it failed after 600 s).
    bad = _cli("netsim", "validate", "--size", "512MiB", "--rate", "128KiB")
    assert bad.returncode == 1 and bad.stderr.startswith(
        "Error: --size 512.0 MiB takes 4,096 s at 128.0 KiB/s at least, past the 600 s"
    ), bad.stderr
    for rate in ("0", "1"):  # (1 B/s was the origin's usage text, from its child process)
        bad = _cli("netsim", "validate", "--rate", rate)
        assert bad.returncode == 2 and "'--rate': at least 128.0 KiB a second:" in bad.stderr
        assert "Traceback" not in bad.stderr


def test_results_go_through_links_and_pipes_and_before_the_table(tmp_path: Path) -> None:
    """--json replaced what its path named: a symbolic link (its file left as
    it was), a FIFO, /dev/stdout itself when run as root. And the files were
    written after the table, so `| head` lost them."""
    import threading

    run = ("netsim", "run", "--mirrors", "3", "--size", "1MiB")
    real = tmp_path / "real.json"
    link = tmp_path / "link.json"
    link.symlink_to(real)
    assert _cli(*run, "--json", str(link)).returncode == 0
    assert link.is_symlink() and json.loads(real.read_text())["scenario"]["mirrors"] == 3
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    read: list[bytes] = []
    reader = threading.Thread(target=lambda: read.append(fifo.read_bytes()), daemon=True)
    reader.start()
    assert _cli(*run, "--json", str(fifo)).returncode == 0
    reader.join(timeout=30)
    assert fifo.is_fifo() and json.loads(read[0])["scenario"]["mirrors"] == 3
    # What /dev/stdout is (a link to /proc/self/fd/1), into a pipe: the JSON
    # is on stdout (it resolved the link to "pipe:[...]", and failed).
    stdout = tmp_path / "stdout"
    stdout.symlink_to("/proc/self/fd/1")
    piped = _cli(*run, "-q", "--json", str(stdout))
    assert piped.returncode == 0 and json.loads(piped.stdout)["scenario"]["mirrors"] == 3
    assert stdout.is_symlink()
    # Into a file the shell opened (`>> log`): written at its offset, before
    # the table, and what the file held kept (it was replaced by the JSON).
    log = tmp_path / "log"
    log.write_text("keep me\n")
    with open(log, "a") as appended:
        subprocess.run([sys.executable, "-c", "from tufmesh.cli import main; main()", *run,
                        "--json", str(stdout)], stdout=appended, timeout=120, check=True)  # fmt: skip
    held = log.read_text()
    assert held.startswith("keep me\n{") and "simulated in" in held.split("}\n")[-1], held
    # However it is named: a relative link, /proc/thread-self (it was replaced).
    relative = tmp_path / "relative"
    relative.symlink_to(os.path.relpath("/proc/self/fd/1", tmp_path))
    for name in (str(relative), "/proc/thread-self/fd/1"):
        log.write_text("keep me\n")
        with open(log, "a") as appended:
            subprocess.run([sys.executable, "-c", "from tufmesh.cli import main; main()", *run,
                            "--json", name], stdout=appended, timeout=120, check=True)  # fmt: skip
        assert log.read_text().startswith("keep me\n{"), (name, log.read_text())
    closed_r, closed_w = os.pipe()
    os.close(closed_r)  # a reader gone at once, as `| head -0`
    code = "from tufmesh.cli import main; main()"
    out = tmp_path / "out.json"
    subprocess.run([sys.executable, "-c", code, *run, "--json", str(out)], stdout=closed_w,
                   stderr=subprocess.DEVNULL, timeout=120)  # fmt: skip
    os.close(closed_w)
    assert json.loads(out.read_text())["scenario"]["mirrors"] == 3


@pytest.mark.slow
def test_the_simulator_predicts_real_mirrors_within_25_percent() -> None:
    from tufmesh.netsim._real import matching_scenario, run_real

    size, rate = 16 << 20, 4 << 20  # 4 s at the origin's cap: transfer, not start-up, dominates
    real = run_real(5, size, rate, seed=2)
    simulated = simulate(matching_scenario(5, size, rate, seed=2))
    assert abs(simulated.all_done - real.all_done) <= 0.25 * real.all_done, (
        f"real {real.all_done:.2f} s, simulated {simulated.all_done:.2f} s"
    )
    assert abs(simulated.origin_bytes - real.origin_bytes) <= 0.25 * real.origin_bytes
    assert real.all_done >= simulated.lower_bound  # reality obeys the bound too
    assert len(real.announced) == 5 and max(real.announced) < 2.0  # gossip reached everyone
