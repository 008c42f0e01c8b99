"""Rendering of dnsmasq's configuration and reservations, and lease parsing (no programs run)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pvmlab.errors import ValidationError
from pvmlab.home import LabHome
from pvmlab.records import store
from pvmlab.records.models import LabSpec, VMSpec
from pvmlab.stack import dnsmasq

LAB = LabSpec(address="192.168.105.1/24", dhcp_start="192.168.105.100", dhcp_end="192.168.105.199")


def vm(name: str = "t1", mac: str = "52:54:00:00:00:01", ip: str = "192.168.105.10") -> VMSpec:
    return VMSpec(name=name, arch="x86_64", mac=mac, ip=ip)


def raw_vm(**fields: object) -> VMSpec:
    """A VMSpec that skipped the model's validators, as a hand-edited or buggy record could."""
    base: dict[str, object] = {"name": "t1", "arch": "x86_64", "mac": "52:54:00:00:00:01",
                               "ip": "192.168.105.10"}
    base.update(fields)
    return VMSpec.model_construct(**base)  # type: ignore[arg-type]


def lines(text: str, key: str) -> list[str]:
    return [ln.split("=", 1)[1] for ln in text.splitlines() if ln.startswith(key + "=")]


@pytest.fixture
def home(tmp_path: Path) -> LabHome:
    h = LabHome(tmp_path / "home")
    h.ensure()
    return h


def test_conf_binds_bridge_only_dns_off(home: LabHome) -> None:
    conf = dnsmasq.render_conf(home, LAB)
    assert lines(conf, "interface") == [home.bridge]
    assert "bind-interfaces" in conf.splitlines()
    assert lines(conf, "port") == ["0"]
    assert "dhcp-authoritative" in conf.splitlines()
    assert lines(conf, "dhcp-range") == ["192.168.105.100,192.168.105.199,255.255.255.0,12h"]
    assert "option:router,192.168.105.1" in lines(conf, "dhcp-option")
    assert "option:dns-server,192.168.105.1" in lines(conf, "dhcp-option")
    assert lines(conf, "user") == ["root"]


def test_conf_paths_live_in_the_home(home: LabHome) -> None:
    conf = dnsmasq.render_conf(home, LAB)
    root = str(home.root)
    assert lines(conf, "tftp-root") == [f"{root}/tftp"]
    assert lines(conf, "dhcp-leasefile") == [f"{root}/stack/dnsmasq.leases"]
    assert lines(conf, "pid-file") == [f"{root}/stack/dnsmasq.pid"]
    assert lines(conf, "log-facility") == [f"{root}/logs/dnsmasq.log"]
    assert lines(conf, "dhcp-hostsfile") == [f"{root}/configs/dhcp-hosts"]
    assert "enable-tftp" in conf.splitlines() and "log-dhcp" in conf.splitlines()


@pytest.mark.parametrize(
    ("arch", "boot_files"),
    [
        (0, ["undionly.kpxe"]),
        (7, ["ipxe-x86_64.efi", "grubx64.efi", "shimx64.efi"]),
        (9, ["ipxe-x86_64.efi", "grubx64.efi", "shimx64.efi"]),
        (11, ["ipxe-arm64.efi", "grubaa64.efi", "shimaa64.efi"]),
    ],
)
def test_each_client_arch_gets_its_first_stage_with_next_server(
    home: LabHome, arch: int, boot_files: list[str]
) -> None:
    conf = dnsmasq.render_conf(home, LAB)
    tags = [
        m.group(1)
        for m in (re.fullmatch(rf"set:([\w-]+),option:client-arch,{arch}", v)
                  for v in lines(conf, "dhcp-match"))
        if m
    ]
    assert len(tags) == 1
    boots = [b for b in lines(conf, "dhcp-boot") if f"tag:{tags[0]}," in b]
    # not for iPXE clients; the file; empty server name; next-server = provisioner. iPXE unless
    # the machine's reservation set the grub or shim tag (they exclude each other: no ordering).
    ipxe, *signed = boot_files
    expected = [f"tag:!ipxe,tag:!grub,tag:!shim,tag:{tags[0]},{ipxe},,192.168.105.1"]
    if signed:
        grub, shim = signed
        expected += [
            f"tag:!ipxe,tag:grub,tag:{tags[0]},{grub},,192.168.105.1",
            f"tag:!ipxe,tag:shim,tag:{tags[0]},{shim},,192.168.105.1",
        ]
    assert boots == expected


def test_reservation_sets_the_loader_tag() -> None:
    vms = [
        VMSpec(name="a", arch="x86_64", mac="52:54:00:00:00:01", ip="192.168.105.10"),
        VMSpec(name="b", arch="x86_64", mac="52:54:00:00:00:02", ip="192.168.105.11",
               loader="grub"),
        VMSpec(name="c", arch="aarch64", mac="52:54:00:00:00:03", ip="192.168.105.12",
               loader="grub", secure_boot=True),
        VMSpec(name="d", arch="x86_64", mac="52:54:00:00:00:04", ip="192.168.105.13",
               secure_boot=True),
    ]
    assert dnsmasq.render_hosts(LAB, vms).splitlines() == [
        "52:54:00:00:00:01,192.168.105.10,a",
        "52:54:00:00:00:02,set:grub,192.168.105.11,b",
        "52:54:00:00:00:03,set:shim,192.168.105.12,c",
        "52:54:00:00:00:04,192.168.105.13,d",  # iPXE under Secure Boot: refused by firmware
    ]


def test_ipxe_clients_get_the_http_script(home: LabHome) -> None:
    conf = dnsmasq.render_conf(home, LAB)
    assert "set:ipxe,iPXE" in lines(conf, "dhcp-userclass")
    assert "set:ipxe,175" in lines(conf, "dhcp-match")
    assert "tag:ipxe,http://192.168.105.1/boot.ipxe,,192.168.105.1" in lines(conf, "dhcp-boot")
    # every TFTP boot line excludes iPXE clients, so the chain never loops
    for line in lines(conf, "dhcp-boot"):
        assert line.startswith(("tag:!ipxe,", "tag:ipxe,"))


def test_conf_follows_the_lab_address(home: LabHome) -> None:
    lab = LabSpec(address="10.20.0.1/16", dhcp_start="10.20.1.0", dhcp_end="10.20.1.255")
    conf = dnsmasq.render_conf(home, lab)
    assert lines(conf, "dhcp-range") == ["10.20.1.0,10.20.1.255,255.255.0.0,12h"]
    assert "tag:ipxe,http://10.20.0.1/boot.ipxe,,10.20.0.1" in lines(conf, "dhcp-boot")
    assert "192.168" not in conf


def test_hosts_one_line_per_vm() -> None:
    text = dnsmasq.render_hosts(
        LAB, [vm(), vm("t2", "52-54-00-00-00-02", "192.168.105.11")]
    )
    assert text.splitlines() == [
        "52:54:00:00:00:01,192.168.105.10,t1",
        "52:54:00:00:00:02,192.168.105.11,t2",
    ]
    assert dnsmasq.render_hosts(LAB, []).strip() == ""


@pytest.mark.parametrize(
    "fields",
    [
        {"name": "evil,192.168.105.50"},
        {"name": "a\ndhcp-boot=x"},
        {"name": "a b"},
        {"mac": "52:54:00:00:00:01,192.168.105.77"},
        {"mac": "52:54:00:00:00:01\ndhcp-range=1.1.1.1,1.1.1.2"},
        {"mac": "ff:ff:ff:ff:ff:ff"},
        {"ip": "192.168.105.10,infinite"},
        {"ip": "192.168.105.10\nport=53"},
        {"ip": "10.0.0.5"},
        {"ip": "192.168.105.1"},
        {"ip": "192.168.105.255"},
    ],
)
def test_renderer_refuses_bad_vm_values(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        dnsmasq.render_hosts(LAB, [raw_vm(**fields)])


def test_renderer_refuses_clashing_reservations() -> None:
    with pytest.raises(ValidationError, match="same MAC"):
        dnsmasq.render_hosts(LAB, [vm(), vm("t2", ip="192.168.105.11")])
    with pytest.raises(ValidationError, match="same IP"):
        dnsmasq.render_hosts(LAB, [vm(), vm("t2", mac="52:54:00:00:00:02")])


@pytest.mark.parametrize(
    "fields",
    [
        {"address": "192.168.105.1/24\nport=53"},
        {"address": "192.168.105.1/24,x"},
        {"dhcp_start": "192.168.105.100,192.168.105.110,255.0.0.0"},
        {"dhcp_end": "192.168.106.5"},
    ],
)
def test_renderer_refuses_bad_lab_values(home: LabHome, fields: dict[str, object]) -> None:
    base: dict[str, object] = LAB.model_dump()
    base.update(fields)
    lab = LabSpec.model_construct(**base)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        dnsmasq.render_conf(home, lab)


@pytest.mark.parametrize("bad", ["with,comma", "new\nline", "hash#mark", 'quo"te'])
def test_renderer_refuses_unsafe_home_paths(tmp_path: Path, bad: str) -> None:
    h = LabHome(tmp_path / bad)
    with pytest.raises(ValidationError, match="cannot be written"):
        dnsmasq.render_conf(h, LAB)


def test_write_configs_writes_nothing_when_a_record_is_bad(home: LabHome) -> None:
    store.save_lab(home, LAB)
    store.save_vm(home, vm())
    conf, hosts = dnsmasq.write_configs(home)
    before = (conf.read_text(), hosts.read_text())
    assert "52:54:00:00:00:01,192.168.105.10,t1" in before[1]
    # a second VM whose IP clashes with the first: refused, files unchanged
    store.save_vm(home, vm("t2", mac="52:54:00:00:00:02"))
    with pytest.raises(ValidationError):
        dnsmasq.write_configs(home)
    assert (conf.read_text(), hosts.read_text()) == before


def test_argv_and_ownership(home: LabHome, tmp_path: Path) -> None:
    argv = dnsmasq.argv(home)
    assert argv[0] == "dnsmasq" and "--keep-in-foreground" in argv
    assert dnsmasq.is_our_dnsmasq(["/usr/sbin/dnsmasq", *argv[1:]], home)
    other = LabHome(tmp_path / "other")
    assert not dnsmasq.is_our_dnsmasq(dnsmasq.argv(other), home)
    assert not dnsmasq.is_our_dnsmasq(["sleep", *argv[1:]], home)
    assert not dnsmasq.is_our_dnsmasq([], home)


def test_parse_leases() -> None:
    text = (
        "1795787810 52:54:00:aa:00:01 192.168.105.185 * 01:52:54:00:aa:00:01\n"
        "0 0e:11:22:33:44:55 192.168.105.10 t1 *\n"
        "garbage line\n"
        "17 zz:zz:zz:zz:zz:zz 192.168.105.9 x *\n"
        "duid 00:01:00:01:2c:2f:aa:bb\n"
        "1795787810 52:54:00:aa:00:02 not-an-ip * *\n"
    )
    leases = dnsmasq.parse_leases(text)
    assert [lease.as_dict() for lease in leases] == [
        {"expires": 1795787810, "mac": "52:54:00:aa:00:01", "ip": "192.168.105.185",
         "hostname": None, "client_id": "01:52:54:00:aa:00:01"},
        {"expires": 0, "mac": "0e:11:22:33:44:55", "ip": "192.168.105.10",
         "hostname": "t1", "client_id": None},
    ]
    assert dnsmasq.parse_leases("") == []


def test_read_leases_missing_file(home: LabHome) -> None:
    assert dnsmasq.read_leases(home) == []


def test_router_advertisements_only_with_an_ipv6_bridge_address(home: LabHome) -> None:
    without = dnsmasq.render_conf(home, LAB)
    assert "enable-ra" not in without.splitlines()
    with_ra = dnsmasq.render_conf(home, LAB, ipv6="fd12:3456:789a::1/64")
    assert "enable-ra" in with_ra.splitlines()
    assert lines(with_ra, "dhcp-range")[1] == f"::,constructor:{home.bridge},ra-only"
    assert lines(with_ra, "ra-param") == [f"{home.bridge},10,0"]  # never a default router


def test_ula_is_per_home_and_unique_local(tmp_path: Path) -> None:
    import ipaddress

    from pvmlab.network.lab import ula_interface

    a, b = ula_interface(LabHome(tmp_path / "a")), ula_interface(LabHome(tmp_path / "b"))
    assert a != b
    assert a.network.prefixlen == 64 and a.network.subnet_of(ipaddress.IPv6Network("fd00::/8"))
    assert a == ula_interface(LabHome(tmp_path / "a"))


def test_http_boot_block_literal_lines(home: LabHome) -> None:
    """UEFI HTTP Boot: option 60 echoed, one client-arch tag and one URL per architecture for
    VMs tagged netboot-http by their reservation, the refused URL for every other client."""
    conf = dnsmasq.render_conf(home, LAB).splitlines()
    start = conf.index("dhcp-vendorclass=set:httpboot,HTTPClient")
    end = conf.index("# --- TFTP")
    block = [ln for ln in conf[start:end] if ln and not ln.startswith("#")]
    assert block == [
        "dhcp-vendorclass=set:httpboot,HTTPClient",
        "dhcp-option-force=tag:httpboot,60,HTTPClient",
        "dhcp-match=set:http-efi-x86_64,option:client-arch,16",
        "dhcp-boot=tag:!ipxe,tag:httpboot,tag:netboot-http,tag:http-efi-x86_64,"
        "http://192.168.105.1/tftp/ipxe-x86_64.efi",
        "dhcp-match=set:http-efi-arm64,option:client-arch,19",
        "dhcp-boot=tag:!ipxe,tag:httpboot,tag:netboot-http,tag:http-efi-arm64,"
        "http://192.168.105.1/tftp/ipxe-arm64.efi",
        "dhcp-boot=tag:!ipxe,tag:httpboot,tag:!netboot-http,http://192.168.105.1/no-http-boot",
    ]


def test_http_boot_urls_follow_the_lab_address(home: LabHome) -> None:
    lab = LabSpec(address="10.9.0.1/16", dhcp_start="10.9.1.0", dhcp_end="10.9.1.255")
    boots = lines(dnsmasq.render_conf(home, lab), "dhcp-boot")
    assert "tag:!ipxe,tag:httpboot,tag:netboot-http,tag:http-efi-arm64,http://10.9.0.1/tftp/ipxe-arm64.efi" in boots  # noqa: E501


def test_hosts_tag_http_boot_vms() -> None:
    vms = [
        VMSpec(name="p1", arch="x86_64", mac="52:54:00:00:00:01", ip="192.168.105.10"),
        VMSpec(name="h1", arch="aarch64", net_boot="http", mac="52:54:00:00:00:02",
               ip="192.168.105.11"),
    ]  # fmt: skip
    assert dnsmasq.render_hosts(LAB, vms).splitlines() == [
        "52:54:00:00:00:01,192.168.105.10,p1",
        "52:54:00:00:00:02,set:netboot-http,192.168.105.11,h1",
    ]


def test_renderer_refuses_an_unknown_net_boot() -> None:
    with pytest.raises(ValidationError, match="unknown network boot 'tftp'"):
        dnsmasq.render_hosts(LAB, [raw_vm(net_boot="tftp")])
