"""The console entry point's exit: codes, flushed output, threads let finish; shared options."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.origin import TUFMESH, tufmesh


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_exit_keeps_code_and_flushes_buffered_output() -> None:
    proc = _python(
        "import sys; from tufmesh.cli import _leave\n"
        "sys.stdout.write('x' * 300_000); print('to stderr', file=sys.stderr); _leave(3)"
    )
    assert proc.returncode == 3
    assert proc.stdout == "x" * 300_000 and proc.stderr == "to stderr\n"


def test_exit_with_a_message_says_it_and_fails() -> None:
    proc = _python("from tufmesh.cli import _leave; _leave('something went wrong')")
    assert proc.returncode == 1 and proc.stderr == "something went wrong\n"
    assert _python("from tufmesh.cli import _leave; _leave(None)").returncode == 0


def test_exit_waits_for_a_thread_still_at_work(tmp_path: Path) -> None:
    done = tmp_path / "done"
    proc = _python(
        "import threading, time; from tufmesh.cli import _leave\n"
        f"def work(): time.sleep(0.5); open({str(done)!r}, 'w').write('ok')\n"
        "threading.Thread(target=work).start(); _leave(0)"
    )
    assert proc.returncode == 0 and done.read_text() == "ok"


def test_exit_handlers_still_run(tmp_path: Path) -> None:
    mark = tmp_path / "mark"
    proc = _python(
        "import atexit; from tufmesh.cli import _leave\n"
        f"atexit.register(lambda: open({str(mark)!r}, 'w').write('ran')); _leave(0)"
    )
    assert proc.returncode == 0 and mark.read_text() == "ran"


def test_a_second_signal_while_exit_handlers_run_ends_it_with_no_traceback() -> None:
    """``timeout`` sends SIGTERM to a command and again to its group: the
    second reached a mirror while its exit handlers ran, with SIGTERM still
    raising KeyboardInterrupt, and Python printed it as a traceback. Ignored,
    it would leave a process whose exit handler hangs unkillable but by
    SIGKILL: it ends the process at once, quietly."""
    started = time.monotonic()
    proc = _python(
        "import atexit, os, signal, sys, time; from tufmesh.cli import _interrupt, _leave\n"
        "signal.signal(signal.SIGTERM, _interrupt)\n"
        "def handler():\n"
        "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(30)\n"
        "sys.stdout.write('what the command said'); atexit.register(handler); _leave(0)"
    )
    assert proc.returncode == 128 + signal.SIGTERM and proc.stderr == ""
    assert proc.stdout == "what the command said"  # (its buffer, written before the handlers)
    assert time.monotonic() - started < 20


def test_a_reader_that_stops_reading_ends_the_command_quietly(tmp_path: Path) -> None:
    """``tufmesh origin status | head -1`` said "Error: Broken pipe"."""
    from tests.helpers.origin import init_repo
    from tufmesh._procs import TUFMESH

    repo = init_repo(tmp_path / "repo")
    proc = subprocess.Popen(
        [*TUFMESH, "origin", "status", "--dir", str(repo)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before it writes a line
    with proc.stderr:
        assert proc.wait(timeout=60) == 1
        assert proc.stderr.read() == ""


def test_a_service_stops_by_itself_when_the_command_that_started_it_dies(
    tmp_path: Path,
) -> None:
    """The demo's services run in sessions of their own (a Ctrl-C reaches the
    demo alone, which stops them): killed, or interrupted between starting
    one and holding it, the demo could not stop them, and they ran on."""
    import os
    import signal
    import time

    from tests.helpers.origin import init_repo

    repo = init_repo(tmp_path / "repo")
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from tufmesh._procs import service\n"
         f"with service(['origin', 'serve', '--dir', {str(repo)!r}, '--port', '0'], 'origin')"
         " as url:\n"
         "    print(url, flush=True); time.sleep(120)\n"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert parent.stdout is not None and parent.stdout.readline().startswith("http://")
    parent.send_signal(signal.SIGKILL)  # no clean-up of its own
    parent.wait()
    parent.stdout.close()
    deadline = time.monotonic() + 10
    while True:
        serving = [
            p for p in Path("/proc").glob("[0-9]*/cmdline")
            if os.path.exists(p) and str(repo).encode() in _read(p)
        ]  # fmt: skip
        if not serving:
            break
        assert time.monotonic() < deadline, "the origin outlived the command that started it"
        time.sleep(0.2)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


@pytest.mark.parametrize(
    "command",
    [["client", "proxy"], ["origin", "serve", "--dir", "."],
     ["mirror", "run", "--dir", ".", "--root", "r.json", "--origin", "http://127.0.0.1:1"]],
)  # fmt: skip
def test_an_empty_host_is_refused_not_every_address(command: list[str]) -> None:
    """``--host "$UNSET"`` listened on every address (and took the pip
    proxy's rebinding check with it)."""
    proc = tufmesh(*command, "--host", "", check=False)
    assert proc.returncode == 2 and "--host': empty: give an address" in proc.stderr


def test_help_to_a_full_disk_is_one_line(tmp_path: Path) -> None:
    full = Path("/dev/full")
    if not full.exists():
        pytest.skip("no /dev/full here")
    with full.open("w") as out:
        proc = subprocess.run([TUFMESH, "ls", "--help"], stdout=out, stderr=subprocess.PIPE,
                              text=True, timeout=60, check=False)  # fmt: skip
    assert proc.returncode == 1 and proc.stderr == "Error: No space left on device\n"


def test_a_command_started_with_standard_output_closed_fails_when_it_speaks(
    tmp_path: Path,
) -> None:
    """With stdout closed (`>&-`) every command but `cas`'s exited 0 and said
    nothing: `origin project add` printed its one-time token to nobody (a review)."""

    for args in (["--version"], ["origin", "init", "--dir", str(tmp_path / "repo")]):
        said = _with_closed(1, *args)
        assert said.returncode == 1, (args, said.stderr)
        assert "standard output is closed: what this command said there is lost" in said.stderr
    added = _with_closed(1, "origin", "project", "add", "demo", "--dir", str(tmp_path / "repo"))
    assert added.returncode == 1 and "no standard output to show" in added.stderr  # (refused first)


def test_no_color_drops_click_styles_as_well_as_rich(tmp_path: Path) -> None:
    """NO_COLOR left the demo's bold and green and the origin's yellow
    warnings on a terminal, while the progress bars honoured it (a review)."""
    import os
    import pty

    def on_a_terminal(directory: str, **env: str) -> bytes:
        main, terminal = pty.openpty()
        environ = {k: v for k, v in os.environ.items() if k != "NO_COLOR"} | env
        subprocess.run([TUFMESH, "origin", "init", "--dir", directory], stdout=subprocess.DEVNULL,
                       stderr=terminal, env=environ, timeout=60, check=True)  # fmt: skip
        os.close(terminal)
        said = b""
        with contextlib.suppress(OSError):  # (EIO once the terminal's other end is closed)
            while piece := os.read(main, 65536):
                said += piece
        os.close(main)
        return said

    styled = on_a_terminal(str(tmp_path / "a"))
    assert b"development repository" in styled and b"\x1b[33m" in styled
    plain = on_a_terminal(str(tmp_path / "b"), NO_COLOR="1")
    assert b"development repository" in plain and b"\x1b[" not in plain


def test_a_relative_xdg_data_home_is_ignored(tmp_path: Path) -> None:
    """The XDG specification says a relative XDG_DATA_HOME is ignored: the
    client and the store were looked for (and made) under wherever a command
    ran (a review)."""
    import os

    environ = {k: v for k, v in os.environ.items() if k != "TUFMESH_HOME"}
    environ |= {"XDG_DATA_HOME": "relative", "HOME": str(tmp_path)}
    listed = subprocess.run([TUFMESH, "ls"], capture_output=True, text=True, env=environ,
                            cwd=tmp_path, timeout=60)  # fmt: skip
    assert listed.returncode == 1
    assert f"{tmp_path}/.local/share/tufmesh/client" in listed.stderr, listed.stderr


def test_a_token_shown_and_then_not_recorded_is_said_not_to_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token is said before projects.json is written: a write that then
    fails (a full disk) left a token on the screen that did not work."""
    import tufmesh.origin._projects as projects_module
    from tufmesh.errors import OriginError
    from tufmesh.origin._cli import project_add, project_token_rotate
    from tufmesh.origin._projects import ProjectRegistry

    repo = tmp_path / "repo"
    tufmesh("origin", "init", "--dir", str(repo))
    token = ProjectRegistry(repo).add("demo")

    def no_space(path: Path, data: bytes, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(projects_module, "write_atomic", no_space)
    for command, args, still in [(project_token_rotate, ["demo"], "the old one still works"),
                                 (project_add, ["other"], "other is not registered")]:  # fmt: skip
        with pytest.raises(OriginError) as failed:
            command.main([*args, "--dir", str(repo)], standalone_mode=False)
        assert str(failed.value) == (
            "cannot record the new upload token (No space left on device): the one shown does "
            f"not work; {still}"
        )
    monkeypatch.undo()
    ProjectRegistry(repo).authorize("demo", token)
    assert ProjectRegistry(repo).names() == ["demo"]


def test_closed_standard_streams_neither_lose_tokens_nor_crash_nor_fail_services(
    tmp_path: Path,
) -> None:
    """Three ways a closed stream went wrong (a review): `token-rotate >&-`
    revoked the working token and said the new one to nobody; with stderr
    closed every command that may draw a progress bar died (sys.stderr was
    None) and did nothing; a service started with stdout closed ran, and
    failed once stopped, for the banner it said there."""
    import os

    from tufmesh.origin._projects import ProjectRegistry

    repo = tmp_path / "repo"
    tufmesh("origin", "init", "--dir", str(repo))
    token = tufmesh("origin", "project", "add", "demo", "--dir", str(repo)).stdout.split()[-1]
    refused = _with_closed(1, "origin", "project", "token-rotate", "demo", "--dir", str(repo))
    assert refused.returncode == 1 and "no standard output" in refused.stderr
    assert _with_closed(1, "origin", "project", "add", "other", "--dir", str(repo)).returncode == 1
    registry = ProjectRegistry(repo)
    registry.authorize("demo", token)  # (raises if it no longer works)
    assert "other" not in registry.names()
    # Nor a standard output that fails as the token is said (a full disk, a
    # pipe closed meanwhile): the token was replaced all the same.
    for command in (["token-rotate", "demo"], ["add", "other"]):
        with open("/dev/full", "w") as full:
            failed = subprocess.run([TUFMESH, "origin", "project", *command, "--dir", str(repo)],
                                    stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)  # fmt: skip
        assert failed.returncode == 1, failed.stderr
        assert "cannot show the new upload token (standard output: No space left on device): " \
            "nothing changed" in failed.stderr, failed.stderr  # fmt: skip
    registry.authorize("demo", token)
    assert "other" not in registry.names()
    blob = tmp_path / "blob"
    blob.write_bytes(b"x" * 100_000)
    put = _with_closed(2, "cas", "--store", str(tmp_path / "store"), "put", str(blob))
    assert put.returncode == 0 and put.stdout.startswith("bafk")
    with subprocess.Popen(
        [TUFMESH, "origin", "serve", "--dir", str(repo), "--port", "0"],
        stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        preexec_fn=lambda: os.close(1),
    ) as service:  # fmt: skip
        try:
            assert service.stderr is not None
            deadline = time.monotonic() + 60
            while "serving" not in (line := service.stderr.readline()):
                assert line and time.monotonic() < deadline, line
        finally:
            service.send_signal(signal.SIGTERM)
            stopped = service.wait(timeout=30)
        assert stopped == 0


def _with_closed(fd: int, *args: str) -> subprocess.CompletedProcess[str]:
    """Run tufmesh with file descriptor ``fd`` (1 or 2) closed; the other captured."""
    import os

    return subprocess.run(
        [TUFMESH, *args], capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL, close_fds=True,
        preexec_fn=lambda: os.close(fd),  # (after the pipes are in place)
    )  # fmt: skip
