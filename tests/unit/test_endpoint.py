"""The one source of where targets reach the lab's HTTP server, and everything that asks it."""

from __future__ import annotations

from pathlib import Path

from pvmlab.home import LabHome
from pvmlab.records.models import LabSpec
from pvmlab.stack import autoexec, dnsmasq
from pvmlab.stack.endpoint import HttpEndpoint, bind_endpoint, lab_endpoint

LAB = LabSpec(address="10.20.0.1/24", dhcp_start="10.20.0.100", dhcp_end="10.20.0.199")


def test_the_lab_is_served_on_the_provisioner_port_80() -> None:
    ep = lab_endpoint(LAB)
    assert (ep.listen_host, ep.port) == ("10.20.0.1", 80)
    assert ep.base_url == "http://10.20.0.1"
    assert ep.boot_url == "http://10.20.0.1/boot.ipxe"
    assert ep.url("/images/d/x86_64/vmlinuz") == "http://10.20.0.1/images/d/x86_64/vmlinuz"
    assert ep.url("") == "http://10.20.0.1/"


def test_other_ports_wildcards_and_ipv6() -> None:
    assert bind_endpoint(LAB, "127.0.0.1", 8080).boot_url == "http://127.0.0.1:8080/boot.ipxe"
    assert bind_endpoint(LAB, "0.0.0.0", 80).base_url == "http://10.20.0.1"  # noqa: S104
    assert bind_endpoint(LAB, "::", 81).base_url == "http://10.20.0.1:81"
    assert bind_endpoint(LAB, "fd00::1", 80).base_url == "http://[fd00::1]"
    picked = bind_endpoint(LAB, "127.0.0.1", 0).with_port(40123)
    assert picked == HttpEndpoint("127.0.0.1", 40123, "127.0.0.1")
    assert picked.base_url == "http://127.0.0.1:40123"


def test_dnsmasq_and_autoexec_hand_out_the_endpoints_boot_url(tmp_path: Path) -> None:
    home = LabHome(tmp_path / "home")
    home.ensure()
    conf = dnsmasq.render_conf(home, LAB, ipv6=None)
    assert "dhcp-boot=tag:ipxe,http://10.20.0.1/boot.ipxe,,10.20.0.1" in conf.splitlines()
    assert "chain http://10.20.0.1/boot.ipxe || goto failed" in autoexec.render(LAB).splitlines()
