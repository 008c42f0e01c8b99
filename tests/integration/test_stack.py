"""The running stack, proven with real clients: dnsmasq, the supervisor and the HTTP server
started with the real CLI in a lab home made for each test; busybox udhcpc, tftp and wget in a
second namespace joined by a veth pair to the lab bridge. Every namespace and process is gone
when a test ends (``netlab.running_lab`` checks it)."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import netlab
from conftest import run_pvmlab
from pvmlab.assets import ipxe
from pvmlab.home import LabHome

pytestmark = pytest.mark.integration

DYNAMIC = (ipaddress.IPv4Address("192.168.105.100"), ipaddress.IPv4Address("192.168.105.199"))


def in_dynamic_range(ip: str) -> bool:
    return DYNAMIC[0] <= ipaddress.IPv4Address(ip) <= DYNAMIC[1]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[netlab.Lab]:
    with netlab.running_lab(tmp_path / "home") as running:
        yield running


@pytest.fixture
def client(lab: netlab.Lab, tmp_path: Path) -> Iterator[netlab.Client]:
    with netlab.client_on_bridge(lab.netns, lab.bridge, seed=str(tmp_path)) as c:
        yield c


@pytest.mark.parametrize(
    ("arch", "boot_file"),
    [(0, "undionly.kpxe"), (7, "ipxe-x86_64.efi"), (9, "ipxe-x86_64.efi"), (11, "ipxe-arm64.efi")],
    ids=["bios", "efi-bc-x86_64", "efi-x86_64", "efi-arm64"],
)
def test_firmware_gets_its_first_stage(
    lab: netlab.Lab, client: netlab.Client, tmp_path: Path, arch: int, boot_file: str
) -> None:
    lease = netlab.udhcpc(client, tmp_path / "dhcp", arch=arch)
    assert lease["boot_file"] == boot_file
    assert lease["siaddr"] == "192.168.105.1"  # next-server: the provisioner
    assert lease["router"] == "192.168.105.1"
    assert lease["dns"] == "192.168.105.1"
    assert in_dynamic_range(lease["ip"])  # an unknown MAC: the dynamic range
    log = (lab.home / "logs" / "dnsmasq.log").read_text()
    assert f"bootfile name: {boot_file}" in log


@pytest.mark.parametrize("arch", [0, 7, 11])
@pytest.mark.parametrize("how", ["user-class", "option-175"])
def test_ipxe_gets_the_http_script_not_tftp_again(
    lab: netlab.Lab, client: netlab.Client, tmp_path: Path, arch: int, how: str
) -> None:
    if how == "user-class":
        lease = netlab.udhcpc(client, tmp_path / "dhcp", arch=arch, ipxe=True)
    else:  # iPXE's own encapsulated options (here: sub-option 19, "HTTP supported")
        lease = netlab.udhcpc(client, tmp_path / "dhcp", arch=arch, extra=("-x", "0xaf:130101"))
    assert lease["boot_file"] == "http://192.168.105.1/boot.ipxe"
    assert lease["siaddr"] == "192.168.105.1"
    # option 175 with sub-option 176 (no-pxedhcp) = 1: iPXE will not wait for ProxyDHCP
    assert lease["opt175"].startswith("b00101")


def test_reserved_mac_gets_its_address_unknown_gets_dynamic(
    lab: netlab.Lab, client: netlab.Client, tmp_path: Path
) -> None:
    mac = "0e:00:00:00:10:01"
    run_pvmlab("vm", "create", "r1", "--arch", "x86_64", "--mac", mac, "--ip", "192.168.105.21",
               home=lab.home)
    client.set_mac(mac)
    lease = netlab.udhcpc(client, tmp_path / "reserved", arch=7)
    assert lease["ip"] == "192.168.105.21"
    assert lease["boot_file"] == "ipxe-x86_64.efi"

    client.set_mac("0e:00:00:00:10:02")
    other = netlab.udhcpc(client, tmp_path / "unknown", arch=7)
    assert in_dynamic_range(other["ip"])

    st = lab.refresh()
    leased = {lease["mac"]: lease["ip"] for lease in st["leases"]}
    assert leased[mac] == "192.168.105.21"
    assert leased["0e:00:00:00:10:02"] == other["ip"]
    assert {"name": "r1", "mac": mac, "ip": "192.168.105.21"} in st["reservations"]


def test_recreated_vm_with_new_mac_gets_its_address(
    lab: netlab.Lab, client: netlab.Client, tmp_path: Path
) -> None:
    """`vm clean` releases the VM's lease: a VM created again under the same name and address
    with another MAC gets that address, not a dynamic one (dnsmasq keeps a reserved address
    from a new MAC while an old lease holds it)."""
    old_mac, new_mac, ip = "0e:00:00:00:40:01", "0e:00:00:00:40:02", "192.168.105.41"
    run_pvmlab("vm", "create", "again", "--arch", "x86_64", "--mac", old_mac, "--ip", ip,
               home=lab.home)
    client.set_mac(old_mac)
    assert netlab.udhcpc(client, tmp_path / "old", arch=7)["ip"] == ip
    assert {"mac": old_mac, "ip": ip} in [
        {"mac": lease["mac"], "ip": lease["ip"]} for lease in lab.refresh()["leases"]
    ]

    run_pvmlab("vm", "clean", "again", home=lab.home)
    assert old_mac not in [lease["mac"] for lease in lab.refresh()["leases"]]
    run_pvmlab("vm", "create", "again", "--arch", "x86_64", "--mac", new_mac, "--ip", ip,
               home=lab.home)
    client.set_mac(new_mac)
    assert netlab.udhcpc(client, tmp_path / "new", arch=7)["ip"] == ip
    leased = {lease["mac"]: lease["ip"] for lease in lab.refresh()["leases"]}
    assert leased == {new_mac: ip}


def test_vm_defined_while_running_is_served_at_once(
    lab: netlab.Lab, client: netlab.Client, tmp_path: Path
) -> None:
    """No waiting between `vm create` and the first DHCP request: the reservation must hold."""
    for i in range(3):
        mac, ip = f"0e:00:00:00:20:0{i}", f"192.168.105.3{i}"
        run_pvmlab("vm", "create", f"late{i}", "--arch", "aarch64", "--mac", mac, "--ip", ip,
                   home=lab.home)
        client.set_mac(mac)
        lease = netlab.udhcpc(client, tmp_path / f"late{i}", arch=11)
        assert lease["ip"] == ip
        assert lease["boot_file"] == "ipxe-arm64.efi"


def test_tftp_serves_each_first_stage_byte_identical(
    lab: netlab.Lab, client: netlab.Client, tmp_path: Path
) -> None:
    client.add_address("192.168.105.250/24")
    sources = ipxe.find_binaries(LabHome(lab.home))
    assert set(sources) == set(ipxe.FIRST_STAGES)
    for role, name in ipxe.FIRST_STAGES.items():
        src = sources[role]
        assert src is not None
        got = netlab.tftp_get(client, lab.ip, name, tmp_path / name)
        assert got == src.path.read_bytes(), name
        assert len(got) > 10_000
    log = (lab.home / "logs" / "dnsmasq.log").read_text()
    assert "sent" in log and "ipxe-arm64.efi" in log


def test_tftp_refuses_paths_outside_its_root(
    lab: netlab.Lab, client: netlab.Client, tmp_path: Path
) -> None:
    client.add_address("192.168.105.250/24")
    for name in ("../lab.json", "/etc/passwd"):
        proc = client.run(
            ["busybox", "tftp", "-g", "-r", name, "-l", str(tmp_path / "x"), lab.ip], check=False
        )
        assert proc.returncode != 0, name


def test_http_serves_boot_script(lab: netlab.Lab, client: netlab.Client, tmp_path: Path) -> None:
    client.add_address("192.168.105.250/24")
    body = netlab.http_get(client, "http://192.168.105.1/boot.ipxe", tmp_path / "boot.ipxe")
    assert body.startswith(b"#!ipxe")
    assert b"${net0/mac:hexhyp}" in body


def test_dnsmasq_killed_is_restarted_with_leases_kept(
    lab: netlab.Lab, client: netlab.Client, tmp_path: Path
) -> None:
    first = netlab.udhcpc(client, tmp_path / "before", arch=9)
    old = lab.pid("dnsmasq")
    assert old is not None
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    new = None
    while time.monotonic() < deadline:
        state = json.loads((lab.home / "stack" / "state.json").read_text())
        new = state["dnsmasq_pid"]
        if new != old and netlab.is_ours(new, str(lab.home)):
            break
        time.sleep(0.02)
    assert new != old, "dnsmasq was not restarted within 2 s"
    again = netlab.udhcpc(client, tmp_path / "after", arch=9)
    assert again["ip"] == first["ip"]  # the lease survived the restart
    st = lab.refresh()
    assert st["services"][1]["pid"] == new and st["services"][1]["restarts"] == 1
    assert "restarting it (leases kept)" in (lab.home / "logs" / "supervisor.log").read_text()


def test_stop_then_start_keeps_reservations(lab: netlab.Lab, tmp_path: Path) -> None:
    mac = "0e:00:00:00:30:01"
    run_pvmlab("vm", "create", "keep", "--arch", "x86_64", "--mac", mac, "--ip", "192.168.105.41",
               home=lab.home)
    run_pvmlab("provisioner", "stop", home=lab.home)
    assert not netlab.netns_exists(lab.netns)
    st = json.loads(run_pvmlab("provisioner", "start", "--json", home=lab.home).stdout)
    lab.status = st
    lab.seen_pids.update(s["pid"] for s in st["services"] if s["pid"])
    with netlab.client_on_bridge(lab.netns, lab.bridge, seed=str(tmp_path), mac=mac) as c:
        lease = netlab.udhcpc(c, tmp_path / "dhcp", arch=0)
    assert lease["ip"] == "192.168.105.41"
    assert lease["boot_file"] == "undionly.kpxe"


def test_two_labs_side_by_side(tmp_path: Path) -> None:
    with (
        netlab.running_lab(tmp_path / "a") as a,
        netlab.running_lab(tmp_path / "b", "--ip", "10.77.0.1/24") as b,
    ):
        assert a.netns != b.netns and a.bridge != b.bridge
        with (
            netlab.client_on_bridge(a.netns, a.bridge, seed=f"{tmp_path}/a") as ca,
            netlab.client_on_bridge(b.netns, b.bridge, seed=f"{tmp_path}/b") as cb,
        ):
            la = netlab.udhcpc(ca, tmp_path / "da", arch=11)
            lb = netlab.udhcpc(cb, tmp_path / "db", arch=11, ipxe=True)
        assert la["siaddr"] == "192.168.105.1" and in_dynamic_range(la["ip"])
        assert lb["siaddr"] == "10.77.0.1"
        assert lb["boot_file"] == "http://10.77.0.1/boot.ipxe"
        assert ipaddress.IPv4Address(lb["ip"]) in ipaddress.IPv4Network("10.77.0.0/24")


def test_status_and_logs_show_the_running_stack(
    lab: netlab.Lab, client: netlab.Client, tmp_path: Path
) -> None:
    lease = netlab.udhcpc(client, tmp_path / "dhcp", arch=7)
    st = lab.refresh()
    assert st["running"] and st["network_up"]
    assert st["netns"].startswith("pvmlab-") and st["bridge"].startswith("pvbr")
    names = {s["name"]: s for s in st["services"]}
    assert names["supervisor"]["running"] and names["dnsmasq"]["running"]
    assert names["http"]["url"] == "http://192.168.105.1/"
    assert names["http"]["boot_url"] == "http://192.168.105.1/boot.ipxe"
    assert any(lease_["ip"] == lease["ip"] for lease_ in st["leases"])
    text = run_pvmlab("provisioner", "status", home=lab.home).stdout
    assert "running" in text and lease["ip"] in text and st["netns"] in text
    logs = run_pvmlab("provisioner", "logs", "--service", "dnsmasq", "-n", "200",
                      home=lab.home).stdout
    assert "DHCPACK" in logs and lease["ip"] in logs


def _save_vm(home: Path, name: str, mac: str, ip: str) -> None:
    from pvmlab.records import store
    from pvmlab.records.models import VMSpec

    store.save_vm(LabHome(home), VMSpec(name=name, arch="x86_64", mac=mac, ip=ip))


def test_provisioner_reload_serves_a_record_written_behind_its_back(
    lab: netlab.Lab, client: netlab.Client, tmp_path: Path
) -> None:
    mac = "0e:00:00:00:40:01"
    _save_vm(lab.home, "side", mac, "192.168.105.51")
    out = run_pvmlab("provisioner", "reload", home=lab.home).stdout
    assert "reloaded" in out
    client.set_mac(mac)
    assert netlab.udhcpc(client, tmp_path / "dhcp", arch=7)["ip"] == "192.168.105.51"


def test_sighup_to_the_supervisor_rerenders_and_reloads(
    lab: netlab.Lab, client: netlab.Client, tmp_path: Path
) -> None:
    mac = "0e:00:00:00:50:01"
    _save_vm(lab.home, "hup", mac, "192.168.105.61")
    log = lab.home / "logs" / "dnsmasq.log"
    hosts = lab.home / "configs" / "dhcp-hosts"
    seen = log.read_text().count(f"read {hosts}")
    sup = lab.pid("supervisor")
    assert sup is not None
    os.kill(sup, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and log.read_text().count(f"read {hosts}") == seen:
        time.sleep(0.05)
    assert mac in hosts.read_text()
    client.set_mac(mac)
    assert netlab.udhcpc(client, tmp_path / "dhcp", arch=7)["ip"] == "192.168.105.61"
    assert lab.refresh()["services"][1]["pid"] == lab.pid("dnsmasq")  # reloaded, not restarted


def test_sigterm_stops_dnsmasq_and_http_and_exits_0(lab: netlab.Lab) -> None:
    sup, dns = lab.pid("supervisor"), lab.pid("dnsmasq")
    assert sup and dns
    os.kill(sup, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (
        netlab.is_ours(sup, str(lab.home)) or netlab.is_ours(dns, str(lab.home))
    ):
        time.sleep(0.05)
    assert not netlab.is_ours(sup, str(lab.home)) and not netlab.is_ours(dns, str(lab.home))
    log = (lab.home / "logs" / "supervisor.log").read_text()
    assert "HTTP server stopped" in log and "supervisor exiting with code 0" in log
    assert not (lab.home / "stack" / "state.json").exists()
    assert not lab.refresh()["running"]
    # only the namespace (and its bridge) remain; `provisioner stop` (the fixture) removes them
    assert netlab.netns_pids(lab.netns) == []


def test_router_advertisement_for_the_lab_ula(lab: netlab.Lab, tmp_path: Path) -> None:
    """iPXE waits for IPv6 autoconfiguration; the stack answers router solicitations at once."""
    from pvmlab.network.lab import ula_interface

    prefix = ula_interface(LabHome(lab.home)).network
    st = lab.refresh()
    assert st["running"]
    # a fresh client: its kernel sends a router solicitation when the link comes up
    with netlab.client_on_bridge(lab.netns, lab.bridge, seed=f"{tmp_path}/ra") as c:
        deadline = time.monotonic() + 15
        addrs: list[ipaddress.IPv6Address] = []
        while time.monotonic() < deadline:
            out = json.loads(c.run(["ip", "-6", "-j", "addr", "show", c.ifname]).stdout)
            addrs = [ipaddress.IPv6Address(a["local"]) for a in out[0].get("addr_info", [])]
            if any(a in prefix for a in addrs):
                break
            time.sleep(0.1)
        assert any(a in prefix for a in addrs), addrs
        routes = c.run(["ip", "-6", "route", "show", "default"]).stdout
        assert routes.strip() == ""  # router lifetime 0: not a default router


def test_logs_follow_prints_new_lines(
    lab: netlab.Lab, client: netlab.Client, tmp_path: Path
) -> None:
    import sys

    from pvmlab import spawn

    env = {**os.environ, "PVMLAB_HOME": str(lab.home)}
    out = (tmp_path / "follow.out").open("wb")
    with out, spawn.spawn(
        [sys.executable, "-m", "pvmlab.cli.main", "provisioner", "logs", "-f", "-n", "0",
         "--service", "dnsmasq"],
        stdout=out, env=env,
    ) as follower:
        time.sleep(1)  # let it reach the end of the log before the lease is asked for
        lease = netlab.udhcpc(client, tmp_path / "dhcp", arch=0)
        deadline = time.monotonic() + 10
        text = ""
        while time.monotonic() < deadline:
            text = (tmp_path / "follow.out").read_text()
            if "DHCPACK" in text and lease["ip"] in text:
                break
            time.sleep(0.1)
        assert follower.poll() is None
    assert "DHCPACK" in text and lease["ip"] in text
    assert "started, version" not in text  # -n 0: only what came after
