"""Pieces of the supervisor and of stack control that need no running stack."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pvmlab import errors, spawn
from pvmlab.home import LabHome
from pvmlab.records import store
from pvmlab.records.models import LabSpec, VMSpec
from pvmlab.stack import control, supervisor


def test_bound_udp_ports_sees_a_socket_of_this_process() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        assert port in supervisor.bound_udp_ports()


def test_this_process_is_not_taken_for_a_supervisor(tmp_path: Path) -> None:
    home = LabHome(tmp_path / "home")
    assert not control.is_our_supervisor(os.getpid(), home)
    home.stack.mkdir(parents=True)
    (home.stack / "state.json").write_text(
        json.dumps({"supervisor_pid": os.getpid(), "dnsmasq_pid": os.getpid()})
    )
    assert control.supervisor_pid(home) is None
    assert control.dnsmasq_pid(home) is None
    assert not control.is_stack_running(home)
    assert control.reload_stack(home) is False  # not running: nothing happens
    assert not (home.configs / "dhcp-hosts").exists()


def test_supervisor_found_by_its_command_line_not_by_a_file(tmp_path: Path) -> None:
    """A process whose argv is this home's supervisor is found through /proc alone; one of
    another home is not. Without its namespace and dnsmasq the lab reads as degraded."""
    home = LabHome(tmp_path / "home")
    store.save_lab(home, LabSpec(address="10.44.0.1/24", dhcp_start="10.44.0.100",
                                 dhcp_end="10.44.0.199"))
    stand_in = [sys.executable, "-c", "import time; time.sleep(60)", control.SUPERVISOR_MODULE]
    with (
        spawn.spawn([*stand_in, "--home", str(home.root)]) as ours,
        spawn.spawn([*stand_in, "--home", str(tmp_path / "other")]) as theirs,
    ):
        _wait_for_exec(ours.pid, "--home")
        _wait_for_exec(theirs.pid, "--home")
        found = control.find_stack_processes(home)
        assert found.supervisors == [ours.pid] and found.dnsmasqs == []
        health = control.stack_health(home)
        assert health.state == "degraded"
        assert [p.problem for p in health.problems] == [
            f"network namespace {home.netns} is missing",
            f"the stack supervisor does not answer on {home.supervisor_socket}: "
            "No such file or directory",
            "dnsmasq is not running",
        ]
        assert all("pvmlab provisioner start" in p.hint for p in health.problems)
        with pytest.raises(errors.StateError, match="the lab is degraded: network namespace"):
            control.require_serving(home)
    assert control.stack_health(home).state == "stopped"


def _wait_for_exec(pid: int, needle: str) -> None:
    deadline = time.monotonic() + 10
    while needle not in spawn.pid_cmdline(pid):
        assert time.monotonic() < deadline, f"pid {pid} never showed {needle}"
        time.sleep(0.01)


def _child_writing(fd: int, text: str, code: int = 0) -> subprocess.Popen[bytes]:
    script = f"import os, sys; os.write({fd}, {text.encode()!r}); sys.exit({code})"
    return spawn.start_detached([sys.executable, "-c", script], pass_fds=(fd,))


def _await(text: str, code: int = 0) -> None:
    read_fd, write_fd = os.pipe()
    try:
        proc = _child_writing(write_fd, text, code)
        os.close(write_fd)
        control._await_ready(read_fd, proc, timeout=30)
    finally:
        os.close(read_fd)


def test_readiness_pipe_ready() -> None:
    _await("READY\n")


def test_readiness_pipe_error_comes_back_with_its_class() -> None:
    record = supervisor.failure_record(errors.DependencyError("iPXE missing", "install ipxe"))
    with pytest.raises(errors.DependencyError) as caught:
        _await(json.dumps(record) + "\n", 1)
    assert (caught.value.problem, caught.value.hint) == ("iPXE missing", "install ipxe")
    record = supervisor.failure_record(RuntimeError("boom"))
    with pytest.raises(errors.ProcessError, match="RuntimeError: boom"):
        _await(json.dumps(record) + "\n", 1)


def test_readiness_pipe_closed_without_a_word_reports_the_exit_code() -> None:
    with pytest.raises(errors.ProcessError, match="exited with code 3 while starting"):
        _await("", 3)


def test_status_of_a_home_without_a_running_stack(tmp_path: Path) -> None:
    home = LabHome(tmp_path / "home")
    home.ensure()
    st = control.stack_status(home)
    assert st["state"] == "stopped" and st["running"] is False and st["address"] is None
    assert st["problems"] == [] and st["damaged_records"] == []
    assert st["netns"] == home.netns and st["bridge"] == home.bridge
    assert st["leases"] == [] and st["reservations"] == []
    assert json.loads(json.dumps(st)) == st  # JSON-ready


def test_status_names_a_damaged_record_and_keeps_the_others(tmp_path: Path) -> None:
    home = LabHome(tmp_path / "home")
    home.ensure()
    store.save_lab(home, LabSpec(address="10.44.0.1/24", dhcp_start="10.44.0.100",
                                 dhcp_end="10.44.0.199"))
    store.save_vm(home, VMSpec(name="good", arch="x86_64", mac="0e:00:00:00:44:01",
                               ip="10.44.0.11"))
    home.vm_file("broken").write_text('{"name": "broken", "ar')
    st = control.stack_status(home)
    assert st["reservations"] == [{"name": "good", "mac": "0e:00:00:00:44:01", "ip": "10.44.0.11"}]
    [damaged] = st["damaged_records"]
    assert damaged["name"] == "broken" and damaged["path"] == str(home.vm_file("broken"))
    assert "vm clean broken" in damaged["hint"]


def test_control_socket_answers_ping_and_refuses_unknown_requests(tmp_path: Path) -> None:
    """The supervisor's real control socket, asked by the client the CLI uses."""
    home = LabHome(tmp_path / "home")
    home.ensure()
    lab = LabSpec(address="10.44.0.1/24", dhcp_start="10.44.0.100", dhcp_end="10.44.0.199")
    sup = supervisor.Supervisor(home, lab)

    def ask_both() -> tuple[dict[str, object], BaseException | None]:
        pong = control._ask_supervisor(home, {"command": "ping"}, 5)
        try:
            control._ask_supervisor(home, {"command": "format-disk"}, 5)
        except errors.PvmlabError as exc:
            return pong, exc
        return pong, None

    async def serve_and_ask() -> tuple[dict[str, object], BaseException | None]:
        server = await sup.open_control_socket()
        try:
            return await asyncio.to_thread(ask_both)
        finally:
            server.close()

    pong, refused = asyncio.run(serve_and_ask())
    assert pong["ok"] is True and pong["supervisor_pid"] == os.getpid()
    assert pong["address"] == "10.44.0.1/24" and pong["dnsmasq_restarts"] == 0
    assert isinstance(refused, errors.StateError)
    assert refused.problem == "unknown request 'format-disk'"
    assert oct(home.supervisor_socket.stat().st_mode & 0o777) == "0o600"  # root's only
    sup.cleanup_files()
    assert not home.supervisor_socket.exists()
