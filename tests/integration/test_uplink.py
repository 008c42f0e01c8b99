"""`provisioner create --uplink`: targets reach the outside world through pasta and NAT inside
the lab namespace, with DNS from the lab's dnsmasq; the host's firewall and sysctls never change.

The outside world here is the Debian package archive this machine's apt uses (the one site
reachable from these machines; fixture ``archive_release_url``); a client namespace on the lab
bridge (busybox udhcpc, nslookup, wget) stands for a target. Nothing is timed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import netlab
from conftest import run_pvmlab
from pvmlab import spawn
from pvmlab.errors import ProcessError
from pvmlab.home import LabHome

pytestmark = pytest.mark.integration

def host_network_rules() -> dict[str, bytes]:
    """The host's firewall rulesets and forwarding sysctls, as they read now."""
    state: dict[str, bytes] = {}
    for argv in (["nft", "list", "ruleset"], ["iptables-save"], ["ip6tables-save"]):
        if shutil.which(argv[0]) is not None:
            out = spawn.run(argv).stdout
            # iptables-save stamps each dump with the time: compare the rules, not the stamp
            state[argv[0]] = "".join(
                ln for ln in out.splitlines(keepends=True) if not ln.startswith("#")
            ).encode()
    for knob in ("ipv4/ip_forward", "ipv6/conf/all/forwarding"):
        state[knob] = Path(f"/proc/sys/net/{knob}").read_bytes()
    return state


def client_online(client: netlab.Client, workdir: Path) -> dict[str, str]:
    """DHCP from the lab, then address and default route as the lease says."""
    lease = netlab.udhcpc(client, workdir)
    client.add_address(f"{lease['ip']}/{lease.get('mask', '24')}")
    client.run(["ip", "route", "replace", "default", "via", lease["router"]])
    return lease


def resolve(client: netlab.Client, name: str, server: str) -> list[str]:
    """IPv4 addresses of ``name`` from ``server`` (busybox nslookup); [] when it does not answer."""
    proc = client.run(["busybox", "nslookup", "-type=a", name, server], check=False, timeout=30)
    answer = proc.stdout.split("Name:", 1)[1] if "Name:" in proc.stdout else ""
    return re.findall(r"Address:\s*(\d+\.\d+\.\d+\.\d+)\b", answer)


def fetch(
    client: netlab.Client, url: str, address: str, dest: Path, timeout: float = 60
) -> int | None:
    """GET ``url`` from ``address`` (its Host header kept); wget's exit code, None when it got
    nowhere within ``timeout`` (a dropped packet is never answered)."""
    parts = urlsplit(url)
    try:
        proc = client.run(
            ["busybox", "wget", "-q", "-O", str(dest), "--header", f"Host: {parts.hostname}",
             f"http://{address}{parts.path}"],
            check=False, timeout=timeout,
        )  # fmt: skip
    except ProcessError:
        return None
    return int(proc.returncode)


@pytest.fixture
def sentinel_netns(tmp_path: Path) -> Iterator[str]:
    """Another named namespace on the host: the uplink must leave it (and its mount) alone."""
    name = f"pvtest-sent-{netlab.short_hash(str(tmp_path))}"
    spawn.run(["ip", "netns", "add", name])
    try:
        yield name
    finally:
        netlab.remove_netns(name)


def test_uplink_gives_the_lab_the_archive_and_leaves_the_host_alone(
    tmp_path: Path, sentinel_netns: str, archive_release_url: str
) -> None:
    url = archive_release_url
    host = urlsplit(url).hostname or ""
    before = host_network_rules()
    with netlab.running_lab(tmp_path / "home", "--uplink") as lab:
        st = lab.refresh()["uplink"]
        assert st["enabled"] and st["running"], st
        assert st["program"] == "pasta" and st["nat"] and st["forwarding"]
        pasta = int(st["pid"])
        assert netlab.is_ours(pasta, lab.netns)  # its command line names the lab namespace
        assert st["address"] and st["gateway"]
        assert st["dns"]["served_on"] == f"{lab.ip}:53"
        assert host_network_rules() == before
        with netlab.client_on_bridge(lab.netns, lab.bridge, seed=str(tmp_path)) as client:
            lease = client_online(client, tmp_path / "dhcp")
            assert lease["router"] == lab.ip and lease["dns"] == lab.ip
            addresses = resolve(client, host, lab.ip)
            assert addresses, f"the lab's dnsmasq did not resolve {host}"
            dest = tmp_path / "Release"
            assert fetch(client, url, addresses[0], dest) == 0
            assert dest.read_text().startswith("Origin: Debian")
        assert host_network_rules() == before
        status_text = run_pvmlab("provisioner", "status", home=lab.home).stdout
        assert f"uplink: up, pasta pid {pasta}" in status_text
    assert host_network_rules() == before
    assert not spawn.pid_alive(pasta)
    assert LabHome(lab.home).uplink_link not in netlab.links()
    spawn.run(["ip", "netns", "exec", sentinel_netns, "true"])  # its mount is still there


def test_without_uplink_the_lab_stays_offline(tmp_path: Path, archive_release_url: str) -> None:
    url = archive_release_url
    host = urlsplit(url).hostname or ""
    outside = socket.getaddrinfo(host, 80, socket.AF_INET)[0][4][0]  # as the host resolves it
    before = host_network_rules()
    with netlab.running_lab(tmp_path / "home") as lab:
        st = lab.refresh()["uplink"]
        assert st["enabled"] is False and st["running"] is False and st["pid"] is None
        with netlab.client_on_bridge(lab.netns, lab.bridge, seed=str(tmp_path)) as client:
            client_online(client, tmp_path / "dhcp")
            assert resolve(client, host, lab.ip) == []  # no DNS: port=0
            assert fetch(client, url, outside, tmp_path / "Release", timeout=15) != 0
            assert not (tmp_path / "Release").exists() or not (tmp_path / "Release").read_bytes()
        assert "uplink: none" in run_pvmlab("provisioner", "status", home=lab.home).stdout
    assert host_network_rules() == before


def test_missing_pasta_is_one_line_naming_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in ("ip", "dnsmasq", "nft", "sysctl", "setpriv", "nsenter"):
        found = shutil.which(program)
        assert found is not None, program
        (bin_dir / program).symlink_to(found)
    home = tmp_path / "home"
    run_pvmlab("provisioner", "create", "--uplink", home=home)
    monkeypatch.setenv("PATH", str(bin_dir))
    proc = run_pvmlab("provisioner", "start", home=home, check=False)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "pasta is not installed" in proc.stderr
    assert "apt-get install passt" in proc.stderr
    assert not netlab.netns_exists(LabHome(home).netns)  # refused before anything was made


def test_a_killed_uplink_shows_down_comes_back_and_is_stopped_without_its_record(
    tmp_path: Path,
) -> None:
    with netlab.running_lab(tmp_path / "home", "--uplink") as lab:
        first = int(lab.refresh()["uplink"]["pid"])
        netlab.kill_pid(first, grace=0)
        assert not spawn.pid_alive(first)
        down = lab.refresh()["uplink"]
        assert down["enabled"] and not down["running"] and down["pid"] is None
        assert "uplink: DOWN" in run_pvmlab("provisioner", "status", home=lab.home).stdout
        run_pvmlab("provisioner", "start", home=lab.home)  # the stack runs: only the uplink
        again = lab.refresh()["uplink"]
        assert again["running"] and again["nat"] and again["address"]
        second = int(again["pid"])
        assert second != first
        (lab.home / "stack" / "uplink.json").unlink()  # stop finds it by the lab's names
    assert not spawn.pid_alive(second)


def test_an_uplink_that_fails_to_start_leaves_no_lab_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pasta that dies at once (here a stand-in script, as when the host has no default
    route): `provisioner start` fails in one line and removes the network it made."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "pasta"
    fake.write_text("#!/bin/sh\necho 'No routable interface for IPv4' >&2\nexit 1\n")
    fake.chmod(0o755)
    home = tmp_path / "home"
    run_pvmlab("provisioner", "create", "--uplink", home=home)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    proc = run_pvmlab("provisioner", "start", home=home, check=False)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "the uplink (pasta) exited while starting: No routable interface for IPv4" in (
        proc.stderr
    )
    assert not netlab.netns_exists(LabHome(home).netns)
    status = json.loads(run_pvmlab("provisioner", "status", "--json", home=home).stdout)
    assert status["running"] is False and status["uplink"]["running"] is False
