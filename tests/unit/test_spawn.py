"""The one place pvmlab starts programs, exercised with real small programs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import needs
from pvmlab import spawn
from pvmlab.errors import DependencyError, ProcessError

PY = sys.executable


def _wait_gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child (or already reaped)
            done = 0
        if done == pid or not spawn.pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_in_netns_prefix() -> None:
    assert spawn.in_netns(["dnsmasq", "-k"], None) == ["dnsmasq", "-k"]
    assert spawn.in_netns(["dnsmasq"], "pvmlab-1") == ["ip", "netns", "exec", "pvmlab-1", "dnsmasq"]


def test_run_captures_output() -> None:
    proc = spawn.run([PY, "-c", "import sys; print('out'); print('err', file=sys.stderr)"])
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "out\n", "err\n")


def test_run_passes_input_env_and_cwd(tmp_path: Path) -> None:
    code = "import os, sys; print(sys.stdin.read(), os.environ['X'], os.getcwd())"
    proc = spawn.run([PY, "-c", code], input="in", env={**os.environ, "X": "y"}, cwd=tmp_path)
    assert proc.stdout.split() == ["in", "y", str(tmp_path)]


def test_run_failure_is_a_process_error_with_details() -> None:
    code = "import sys; print('line1\\nline2\\nthe reason', file=sys.stderr); sys.exit(3)"
    with pytest.raises(ProcessError) as info:
        spawn.run([PY, "-c", code])
    err = info.value
    assert err.returncode == 3
    assert err.argv[0] == PY
    assert "the reason" in err.problem and "exit code 3" in err.problem
    assert "line1" in err.stderr


def test_run_ok_codes_and_no_check() -> None:
    assert spawn.run([PY, "-c", "raise SystemExit(5)"], ok_codes=(0, 5)).returncode == 5
    assert spawn.run([PY, "-c", "raise SystemExit(6)"], check=False).returncode == 6


def test_missing_program_is_a_dependency_error() -> None:
    with pytest.raises(DependencyError, match="program not found: no-such-program-pvmlab"):
        spawn.run(["no-such-program-pvmlab"])
    with pytest.raises(DependencyError), spawn.spawn(["no-such-program-pvmlab"]):
        pass
    with pytest.raises(DependencyError):
        spawn.start_detached(["no-such-program-pvmlab"])


def test_run_timeout_kills_and_raises() -> None:
    with pytest.raises(ProcessError, match="did not finish"):
        spawn.run([PY, "-c", "import time; time.sleep(60)"], timeout=0.5)


def test_spawn_stops_the_child_on_exit() -> None:
    with spawn.spawn([PY, "-c", "import time; time.sleep(600)"]) as proc:
        assert proc.poll() is None
        pid = proc.pid
    assert proc.returncode is not None
    assert not spawn.pid_alive(pid)


def test_spawn_stops_the_child_on_error() -> None:
    with pytest.raises(RuntimeError), spawn.spawn([PY, "-c", "import time; time.sleep(600)"]) as p:
        raise RuntimeError("boom")
    assert p.returncode == -signal.SIGTERM


_IGNORES_TERM = (
    "import signal, time, pathlib, sys\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "pathlib.Path(sys.argv[1]).touch()\n"
    "time.sleep(600)\n"
)


def test_spawn_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    with spawn.spawn([PY, "-c", _IGNORES_TERM, str(ready)], grace=0.5) as proc:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists()
    assert proc.returncode == -signal.SIGKILL


def _wait_for(predicate: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.05)


def test_start_detached_survives_in_its_own_session(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "d.log"
    code = (
        "import sys, time; print('hello', flush=True); "
        "print('oops', file=sys.stderr, flush=True); time.sleep(600)"
    )
    proc = spawn.start_detached([PY, "-c", code], log_file=log)
    try:
        assert os.getsid(proc.pid) == proc.pid  # a new session: our signals do not reach it
        assert spawn.pid_alive(proc.pid)
        # Right after fork the kernel may not have published the new argv yet (read as empty).
        _wait_for(lambda: spawn.pid_cmdline(proc.pid))
        assert spawn.pid_cmdline(proc.pid)[:2] == [PY, "-c"]
        _wait_for(lambda: log.exists() and "oops" in log.read_text())
        text = log.read_text()
        assert "hello" in text and "oops" in text  # stdout and stderr both go to the log
    finally:
        proc.kill()
        proc.wait()
    assert not spawn.pid_alive(proc.pid)
    assert spawn.pid_cmdline(proc.pid) == []


def test_pid_alive_and_cmdline_of_self() -> None:
    assert spawn.pid_alive(os.getpid())
    assert spawn.pid_cmdline(os.getpid())[0].endswith(("python", "python3")) or (
        "python" in spawn.pid_cmdline(os.getpid())[0]
    )


def test_pid_alive_false_for_a_reaped_child() -> None:
    child = subprocess.Popen([PY, "-c", "pass"])
    child.wait()
    assert _wait_gone(child.pid)
    assert not spawn.pid_alive(child.pid)


@needs("true")
def test_pid_alive_treats_a_zombie_as_gone() -> None:
    """A child that exited but was not reaped yet has finished: it must not count as running."""
    proc = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stat = Path(f"/proc/{proc.pid}/stat").read_text()
            if stat.rsplit(")", 1)[-1].split()[0] == "Z":
                break
            time.sleep(0.01)
        else:
            raise AssertionError("child never became a zombie")
        assert not spawn.pid_alive(proc.pid)
    finally:
        proc.wait()


@pytest.mark.parametrize(
    ("ignores_term", "signal_seen"), [(False, signal.SIGTERM), (True, signal.SIGKILL)]
)
def test_terminate_by_pid(tmp_path: Path, ignores_term: bool, signal_seen: int) -> None:
    """SIGTERM first; a process that ignores it is killed once the grace time is over."""
    ready = tmp_path / "ready"
    code = _IGNORES_TERM if ignores_term else _IGNORES_TERM.replace("SIG_IGN", "SIG_DFL")
    with spawn.spawn([PY, "-c", code, str(ready)], grace=30) as proc:
        _wait_for(ready.exists)
        assert ready.exists()
        assert spawn.terminate([proc.pid], grace=0.5)
        assert proc.wait(30) == -signal_seen


def test_terminate_of_nothing_and_of_a_gone_pid() -> None:
    assert spawn.terminate([])
    child = subprocess.Popen([PY, "-c", "pass"])
    child.wait()
    assert spawn.terminate([child.pid], grace=0.1)


def test_read_pid_file(tmp_path: Path) -> None:
    f = tmp_path / "x.pid"
    assert spawn.read_pid_file(f) is None
    f.write_text("1234\n")
    assert spawn.read_pid_file(f) == 1234
    for junk in ("", "abc\n", "-5\n", "12 13\n"):
        f.write_text(junk)
        assert spawn.read_pid_file(f) is None


# --- pvmlab's own modules as isolated children -------------------------------------------------

PLANT = "import pathlib; pathlib.Path({marker!r}).write_text('planted code ran')\n"


def _plant(where: Path, marker: Path) -> None:
    """A directory that shadows pvmlab and aiohttp for any python that puts it on sys.path."""
    (where / "pvmlab").mkdir(parents=True)
    (where / "pvmlab" / "__init__.py").write_text(PLANT.format(marker=str(marker)))
    (where / "aiohttp.py").write_text(PLANT.format(marker=str(marker)))


def test_python_module_is_isolated() -> None:
    assert spawn.python_module("pvmlab.x", "--a") == [PY, "-I", "-m", "pvmlab.x", "--a"]


def test_planted_modules_in_the_working_directory_are_not_imported(tmp_path: Path) -> None:
    planted, marker = tmp_path / "planted", tmp_path / "marker"
    _plant(planted, marker)
    # The control: an ordinary `python -m` from there does run the planted package.
    spawn.run([PY, "-m", "pvmlab.observe.stamp", "--help"], cwd=planted, check=False)
    assert marker.read_text() == "planted code ran"
    marker.unlink()
    proc = spawn.run(spawn.python_module("pvmlab.observe.stamp", "--help"), cwd=planted)
    assert "python -m pvmlab.observe.stamp" in proc.stdout  # the real module answered
    assert not marker.exists()


def test_start_python_module_runs_from_root_without_the_callers_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    planted, marker = tmp_path / "planted", tmp_path / "marker"
    _plant(planted, marker)
    monkeypatch.chdir(planted)
    monkeypatch.setenv("PYTHONPATH", str(planted))  # dropped by -I too
    console, out = tmp_path / "t1.log", tmp_path / "t1.console.jsonl"
    console.write_text("a line\n")
    dead = subprocess.Popen([PY, "-c", "pass"])
    dead.wait()  # a pid that is gone: the stamper reads the log once and ends
    proc = spawn.start_python_module(
        "pvmlab.observe.stamp", "--log", str(console), "--out", str(out),
        "--pid", str(dead.pid), "--t0", "0", log_file=tmp_path / "stamp.out",
    )  # fmt: skip
    assert proc.wait(timeout=60) == 0, (tmp_path / "stamp.out").read_text()
    events = [line for line in out.read_text().splitlines() if '"line"' in line]
    assert len(events) == 1 and '"a line"' in events[0]
    assert not marker.exists()


def test_start_python_module_runs_in_root_and_in_its_own_session(tmp_path: Path) -> None:
    console = tmp_path / "t1.log"
    console.touch()
    proc = spawn.start_python_module(
        "pvmlab.observe.stamp", "--log", str(console), "--out", str(tmp_path / "out"),
        "--pid", str(os.getpid()), "--t0", "0",
    )  # fmt: skip
    try:
        _wait_for(lambda: spawn.pid_cmdline(proc.pid))
        assert spawn.pid_cmdline(proc.pid)[:4] == [PY, "-I", "-m", "pvmlab.observe.stamp"]
        assert Path(f"/proc/{proc.pid}/cwd").readlink() == Path("/")
        assert os.getsid(proc.pid) == proc.pid
    finally:
        proc.kill()
        proc.wait()
