"""Pieces of the supervisor and of stack control that need no running stack."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from pvmlab import errors
from pvmlab.home import LabHome
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
    assert not control.is_running(home)
    assert control.reload(home) is False  # not running: nothing happens
    assert not (home.configs / "dhcp-hosts").exists()


def test_start_error_is_rebuilt_with_its_class(tmp_path: Path) -> None:
    home = LabHome(tmp_path / "home")
    supervisor.report_failure(home, errors.DependencyError("iPXE missing", "install ipxe"))
    err = control._start_error(home)
    assert isinstance(err, errors.DependencyError)
    assert (err.problem, err.hint) == ("iPXE missing", "install ipxe")
    supervisor.report_failure(home, RuntimeError("boom"))
    err = control._start_error(home)
    assert isinstance(err, errors.ProcessError) and "RuntimeError: boom" in err.problem


def test_status_of_a_home_without_a_running_stack(tmp_path: Path) -> None:
    home = LabHome(tmp_path / "home")
    home.ensure()
    st = control.status(home)
    assert st["running"] is False and st["address"] is None
    assert st["netns"] == home.netns and st["bridge"] == home.bridge
    assert st["leases"] == [] and st["reservations"] == []
    assert json.loads(json.dumps(st)) == st  # JSON-ready
