"""`pvmlab provisioner` as a user runs it: bad input, privileges, failures to start, crashes and
lost state, taps. Real namespaces, real dnsmasq and supervisor; every test checks that nothing of
its lab is left when it ends."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import netlab
from conftest import REPO, as_nobody, run_pvmlab
from pvmlab import spawn
from pvmlab.home import LabHome
from pvmlab.network import lab as network
from pvmlab.records import store

pytestmark = pytest.mark.integration


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("pvmlab: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def lab_names(home: Path) -> LabHome:
    return LabHome(home.absolute())


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A lab home whose namespace is checked (and removed) when the test ends."""
    h = tmp_path / "home"
    yield h
    netns = lab_names(h).netns
    if netlab.netns_exists(netns):
        run_pvmlab("provisioner", "stop", home=h, check=False)
        left = netlab.netns_exists(netns)
        netlab.remove_netns(netns)
        assert not left, f"namespace {netns} was left behind"


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--ip", "10.0.0.1/33"], "invalid address"),
        (["--ip", "not-an-ip/24"], "invalid address"),
        (["--ip", "192.168.105.1"], "no prefix length"),
        (["--ip", "192.168.105.0/24"], "network address"),
        (["--ip", "192.168.105.1/24\nport=53"], "invalid address"),
        (["--dhcp-range", "192.168.106.1,192.168.106.5"], "outside the lab subnet"),
        (["--dhcp-range", "192.168.105.50"], "invalid DHCP range"),
        (["--dhcp-range", "192.168.105.1,192.168.105.10"], "provisioner's address"),
        (["--dhcp-range", "192.168.105.90,192.168.105.80"], "ends before it starts"),
        (["--dhcp-range", "192.168.105.80,192.168.105.90,x"], "invalid DHCP range"),
    ],
)
def test_bad_create_input_is_one_line_and_creates_nothing(
    home: Path, args: list[str], needle: str
) -> None:
    proc = run_pvmlab("provisioner", "create", *args, home=home, check=False)
    assert_one_line_error(proc, needle)
    assert not home.exists()  # not even the home directory


def test_duplicate_lab_is_refused_and_the_first_kept(home: Path) -> None:
    run_pvmlab("provisioner", "create", home=home)
    before = (home / "lab.json").read_bytes()
    proc = run_pvmlab("provisioner", "create", "--ip", "10.9.0.1/24", home=home, check=False)
    assert_one_line_error(proc, "a lab is already defined in")
    assert (home / "lab.json").read_bytes() == before


def test_create_json_and_defaults(home: Path) -> None:
    out = run_pvmlab("provisioner", "create", "--ip", "10.5.0.1/16", "--json", home=home).stdout
    rec = json.loads(out)
    assert rec["address"] == "10.5.0.1/16"
    assert (rec["dhcp_start"], rec["dhcp_end"]) == ("10.5.128.0", "10.5.255.254")
    assert store.load_lab(LabHome(home)).address == "10.5.0.1/16"


def test_start_without_a_lab_is_refused(home: Path) -> None:
    home.mkdir()
    proc = run_pvmlab("provisioner", "start", home=home, check=False)
    assert_one_line_error(proc, "no lab is defined")
    assert not netlab.netns_exists(lab_names(home).netns)


def test_non_root_start_gets_the_privilege_error(home: Path) -> None:
    run_pvmlab("provisioner", "create", home=home)
    env = {"PATH": os.environ["PATH"], "PVMLAB_HOME": str(home), "HOME": "/nonexistent"}
    for command in ("start", "stop"):
        proc = subprocess.run(
            as_nobody([sys.executable, "-m", "pvmlab.cli.main", "provisioner", command]),
            capture_output=True, text=True, env=env, cwd=REPO, timeout=60, check=False,
        )
        assert_one_line_error(proc, "needs root or CAP_NET_ADMIN", "sudo")
    assert not netlab.netns_exists(lab_names(home).netns)
    assert not (home / "stack" / "state.json").exists()


# --- start failures --------------------------------------------------------------------------


def test_start_refuses_clashing_records_before_creating_anything(home: Path) -> None:
    """Two hand-written VM records with one IP: no configuration, no namespace, one line."""
    from pvmlab.records.models import VMSpec

    run_pvmlab("provisioner", "create", home=home)
    h = lab_names(home)
    for name, mac in (("a", "0e:00:00:00:60:01"), ("b", "0e:00:00:00:60:02")):
        store.save_vm(h, VMSpec(name=name, arch="x86_64", mac=mac, ip="192.168.105.70"))
    proc = run_pvmlab("provisioner", "start", home=home, check=False)
    assert_one_line_error(proc, "same IP")
    assert not netlab.netns_exists(h.netns)
    assert not (home / "configs" / "dnsmasq.conf").exists()


def test_start_reports_port_80_in_use_and_cleans_up(home: Path, tmp_path: Path) -> None:
    run_pvmlab("provisioner", "create", home=home)
    h = lab_names(home)
    network.up(h, store.load_lab(h))  # the namespace exists already, something holds port 80
    (tmp_path / "www").mkdir()
    with spawn.spawn(
        ["busybox", "httpd", "-f", "-p", "192.168.105.1:80", "-h", str(tmp_path / "www")],
        netns=h.netns,
    ) as squatter:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and 80 not in _tcp_ports(h.netns):
            time.sleep(0.05)
        proc = run_pvmlab("provisioner", "start", home=home, check=False)
        assert_one_line_error(proc, "cannot serve HTTP on 192.168.105.1:80")
        assert squatter.poll() is None
        # nothing of the stack is left running: only the squatter lives in the namespace
        assert netlab.netns_pids(h.netns) == [squatter.pid]
        assert not (home / "stack" / "state.json").exists()
    run_pvmlab("provisioner", "stop", home=home)
    assert not netlab.netns_exists(h.netns)


def _tcp_ports(netns: str) -> set[int]:
    out = spawn.run(["cat", "/proc/net/tcp"], netns=netns).stdout.splitlines()[1:]
    return {int(line.split()[1].rsplit(":", 1)[1], 16) for line in out if line.strip()}


# --- lifecycle ----------------------------------------------------------------------------------


def test_start_twice_is_harmless(tmp_path: Path) -> None:
    with netlab.running_lab(tmp_path / "home") as lab:
        again = run_pvmlab("provisioner", "start", home=lab.home)
        assert "already running" in again.stdout
        assert lab.refresh()["services"][0]["pid"] == lab.pid("supervisor")


def test_stop_after_kill_9_of_everything(tmp_path: Path) -> None:
    with netlab.running_lab(tmp_path / "home") as lab:
        sup, dns = lab.pid("supervisor"), lab.pid("dnsmasq")
        assert sup and dns
        os.kill(sup, signal.SIGKILL)
        os.kill(dns, signal.SIGKILL)
        _wait_gone([sup, dns], str(lab.home))
        st = lab.refresh()
        assert not st["running"]
        assert st["network_up"]
        run_pvmlab("provisioner", "stop", home=lab.home)
        assert not netlab.netns_exists(lab.netns)
        # and the lab starts again from there
        restarted = json.loads(run_pvmlab("provisioner", "start", "--json", home=lab.home).stdout)
        lab.seen_pids.update(s["pid"] for s in restarted["services"] if s["pid"])
        assert restarted["running"]


def test_stop_after_the_state_files_are_lost(tmp_path: Path) -> None:
    """Like a crash of the home's bookkeeping: processes and namespace still there, no records."""
    with netlab.running_lab(tmp_path / "home") as lab:
        h = lab_names(lab.home)
        network.ensure_tap(h, "lost1")
        sup, dns = lab.pid("supervisor"), lab.pid("dnsmasq")
        shutil.rmtree(lab.home / "stack")
        shutil.rmtree(lab.home / "pids")
        proc = run_pvmlab("provisioner", "stop", "--json", home=lab.home)
        result = json.loads(proc.stdout)
        # found by their command lines in /proc, not by the lost files
        assert {item["pid"] for item in result["stopped"]} == {sup, dns}
        assert not netlab.netns_exists(lab.netns)
        assert not netlab.is_ours(sup or 0, str(lab.home))
        assert not netlab.is_ours(dns or 0, str(lab.home))


def test_stale_pid_of_another_process_is_not_taken_for_ours(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run_pvmlab("provisioner", "create", home=home)
    h = lab_names(home)
    with spawn.spawn(["sleep", "300"]) as other:
        h.stack.mkdir(parents=True, exist_ok=True)
        (h.stack / "state.json").write_text(
            json.dumps({"supervisor_pid": other.pid, "dnsmasq_pid": other.pid})
        )
        st = json.loads(run_pvmlab("provisioner", "status", "--json", home=home).stdout)
        assert not st["running"]
        assert run_pvmlab("provisioner", "reload", home=home).stdout.startswith("the stack is not")
        run_pvmlab("provisioner", "stop", home=home)
        assert other.poll() is None  # not ours: left alone


def test_reload_when_stopped_is_a_no_op(home: Path) -> None:
    run_pvmlab("provisioner", "create", home=home)
    out = run_pvmlab("provisioner", "reload", home=home).stdout
    assert "not running" in out
    assert not (home / "configs" / "dhcp-hosts").exists()


def test_taps_join_the_bridge_and_go_with_the_lab(tmp_path: Path) -> None:
    with netlab.running_lab(tmp_path / "home") as lab:
        h = lab_names(lab.home)
        tap = network.ensure_tap(h, "t1")
        assert network.ensure_tap(h, "t1") == tap  # idempotent
        info = json.loads(
            spawn.run(["ip", "-n", lab.netns, "-j", "link", "show", tap]).stdout
        )[0]
        assert info["master"] == lab.bridge and "UP" in info["flags"]
        assert tap not in netlab.links()  # nothing in the host's own namespace
        network.remove_tap(h, "t1")
        assert tap not in netlab.links(lab.netns)
        network.ensure_tap(h, "t2")
    assert not netlab.netns_exists(lab.netns)


def test_destroy_stops_and_forgets_the_lab(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with netlab.running_lab(home) as lab:
        run_pvmlab("provisioner", "destroy", "--yes", home=home)
        assert not (home / "lab.json").exists()
        assert not netlab.netns_exists(lab.netns)
        proc = run_pvmlab("provisioner", "start", home=home, check=False)
        assert_one_line_error(proc, "no lab is defined")
        run_pvmlab("provisioner", "create", home=home)  # so the fixture's stop has a lab


def _wait_gone(pids: list[int], marker: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(netlab.is_ours(p, marker) for p in pids):
            return
        time.sleep(0.05)
    raise AssertionError(f"processes {pids} still alive")
