"""IPv6 labs without running anything: validation of prefixes and addresses, the records,
allocation, the rendered dnsmasq lines (literal), the HTTP endpoints and QEMU's switch for
IPv6-only labs. The boots themselves are tests/integration/test_boot_ipv6.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_pvmlab
from pvmlab.errors import ValidationError
from pvmlab.home import LabHome
from pvmlab.qemu.argv import build_argv
from pvmlab.records import store, validate
from pvmlab.records.models import LabSpec, VMSpec
from pvmlab.stack import dnsmasq
from pvmlab.stack.endpoint import lab_endpoint
from pvmlab.stack.supervisor import served_udp_ports
from pvmlab.vm.define import CreateRequest, create
from unit.samples import qemu_config

V4 = {"address": "192.168.105.1/24", "dhcp_start": "192.168.105.100",
      "dhcp_end": "192.168.105.199"}  # fmt: skip
ONLY6 = LabSpec(address=None, ipv6="fd00:105::1/64")
DUAL = LabSpec(**V4, ipv6="fd00:105::1/64")


@pytest.fixture
def home(tmp_path: Path) -> LabHome:
    h = LabHome(tmp_path / "home")
    h.ensure()
    return h


def lines(text: str, key: str) -> list[str]:
    return [ln.split("=", 1)[1] for ln in text.splitlines() if ln.startswith(key + "=")]


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("fd00:105::/64", "fd00:105::1/64"),  # the prefix: the provisioner takes ::1
        ("fd00:105::53/64", "fd00:105::53/64"),  # a given address is kept
        (" 2001:db8:1:2::/64 ", "2001:db8:1:2::1/64"),
    ],
)
def test_ipv6_prefix_gives_the_provisioner_address(value: str, expected: str) -> None:
    assert str(validate.ipv6_interface(value)) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("fd00:105::/48", "IPv6 prefix /48 is not usable"),
        ("fd00:105::/80", "IPv6 prefix /80 is not usable"),
        ("fd00:105::", "has no prefix length"),
        ("fe80::/64", "cannot be a lab prefix"),
        ("ff02::/64", "cannot be a lab prefix"),
        ("fd00:zz::/64", "invalid IPv6 prefix"),
        ("192.168.1.0/24", "invalid IPv6 prefix"),
        ("fd00::/64\nenable-tftp", "invalid IPv6 prefix"),
    ],
)
def test_bad_ipv6_prefixes_are_refused(value: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        validate.ipv6_interface(value)


def test_vm_ipv6_must_be_a_host_in_the_prefix() -> None:
    net = validate.ipv6_interface("fd00:105::/64").network
    assert str(validate.ipv6_in("fd00:105::20", net)) == "fd00:105::20"
    assert str(validate.ipv6_in("[fd00:105::20]", net)) == "fd00:105::20"
    with pytest.raises(ValidationError, match="outside the lab prefix fd00:105::/64"):
        validate.ipv6_in("fd00:106::20", net)
    with pytest.raises(ValidationError, match="subnet-router anycast"):
        validate.ipv6_in("fd00:105::", net)
    with pytest.raises(ValidationError, match="invalid address"):
        validate.ipv6_in("10.0.0.1", net)


def test_lab_records() -> None:
    assert (ONLY6.has_ipv4, ONLY6.has_ipv6, ONLY6.primary_ip) == (False, True, "fd00:105::1")
    assert (DUAL.has_ipv4, DUAL.has_ipv6, DUAL.primary_ip) == (True, True, "192.168.105.1")
    assert [str(a) for a in ONLY6.ipv6_dhcp_range] == ["fd00:105::1000", "fd00:105::1fff"]
    with pytest.raises(ValidationError, match="IPv6-only"):
        _ = ONLY6.ip
    for bad, message in (
        ({"address": None}, "neither an IPv4 address nor an IPv6 prefix"),
        ({"address": None, "ipv6": "fd00::1/64", "dhcp_start": "192.168.105.100"},
         "IPv6-only lab has no IPv4 DHCP range"),
        ({"address": None, "ipv6": "fd00::1/64", "uplink": True}, "uplink needs IPv4"),
        ({"ipv6": "fd00::1001/64", **V4}, "inside the DHCPv6 dynamic range"),
        ({"ipv6": "fd00::1/56", **V4}, "not usable"),
    ):
        with pytest.raises(ValueError, match=message):
            LabSpec(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="neither an IPv4 nor an IPv6 address"):
        VMSpec(name="x", arch="x86_64", mac="0e:00:00:00:00:01")


# --- rendering ----------------------------------------------------------------------------------


def test_ipv6_only_conf_serves_dhcpv6_and_pxe_over_ipv6(home: LabHome) -> None:
    conf = dnsmasq.render_conf(home, ONLY6, bridge="pvbrtest")
    assert lines(conf, "dhcp-range") == ["fd00:105::1000,fd00:105::1fff,64,12h"]
    assert "enable-ra" in conf.splitlines()
    assert lines(conf, "ra-param") == ["pvbrtest,10,600"]  # EDK2 waits 10 s for a gateway
    assert lines(conf, "dhcp-match") == [
        "set:efi-x86_64,option6:61,00:07",
        "set:efi-x86_64,option6:61,00:09",
        "set:efi-arm64,option6:61,00:0b",
        # a tag per code, for the log's "tags:" line (dnsmasq logs no DHCPv6 client arch)
        "set:client-arch-7,option6:61,00:07",
        "set:client-arch-9,option6:61,00:09",
        "set:client-arch-11,option6:61,00:0b",
        "set:client-arch-16,option6:61,00:10",
        "set:client-arch-19,option6:61,00:13",
        "set:httpboot6-efi-x86_64,option6:61,00:10",  # UEFI HTTP Boot
        "set:httpboot6-efi-arm64,option6:61,00:13",
    ]
    assert lines(conf, "dhcp-option") == [
        "tag:!ipxe,tag:efi-x86_64,option6:bootfile-url,tftp://[fd00:105::1]/ipxe-x86_64.efi",
        "tag:!ipxe,tag:efi-arm64,option6:bootfile-url,tftp://[fd00:105::1]/ipxe-arm64.efi",
        "tag:ipxe,option6:bootfile-url,http://[fd00:105::1]/boot.ipxe",
        "tag:!ipxe,tag:httpboot6-efi-x86_64,option6:bootfile-url,"
        "http://[fd00:105::1]/tftp/ipxe-x86_64.efi",
        "tag:!ipxe,tag:httpboot6-efi-arm64,option6:bootfile-url,"
        "http://[fd00:105::1]/tftp/ipxe-arm64.efi",
    ]
    # HTTP Boot offers carry vendor class 16 as dnsmasq writes strings (each after its 2-byte
    # length): 00 02 "pv" where EDK2 skips the enterprise number, then 00 0a "HTTPClient"
    http_client = "pv,HTTPClient"
    assert lines(conf, "dhcp-option-force") == [
        f"tag:!ipxe,tag:httpboot6-efi-x86_64,option6:16,{http_client}",
        f"tag:!ipxe,tag:httpboot6-efi-arm64,option6:16,{http_client}",
    ]
    assert lines(conf, "dhcp-userclass") == ["set:ipxe,iPXE"]
    # nothing of IPv4: no DHCPv4 range, router, first stages by dhcp-boot
    assert lines(conf, "dhcp-boot") == []
    assert lines(conf, "dhcp-hostsfile") == [str(home.dhcp_hosts.absolute())]


def test_dual_stack_conf_keeps_the_ipv4_lines(home: LabHome) -> None:
    v4 = dnsmasq.render_conf(home, LabSpec(**V4), bridge="pvbrtest", ipv6="fd12::1/64")
    dual = dnsmasq.render_conf(home, DUAL, bridge="pvbrtest")
    assert lines(dual, "dhcp-range") == [
        "192.168.105.100,192.168.105.199,255.255.255.0,12h",
        "fd00:105::1000,fd00:105::1fff,64,12h",
    ]
    for key in ("dhcp-boot", "dhcp-userclass", "dhcp-vendorclass"):
        assert lines(dual, key) == lines(v4, key), key
    v6_only = [ln for ln in lines(dual, "dhcp-option-force") if "option6:" in ln]
    assert [ln for ln in lines(dual, "dhcp-option-force") if ln not in v6_only] == lines(
        v4, "dhcp-option-force")
    assert "dhcp-boot=tag:ipxe,http://192.168.105.1/boot.ipxe,,192.168.105.1" in dual.splitlines()
    assert (
        "dhcp-option=tag:ipxe,option6:bootfile-url,http://[fd00:105::1]/boot.ipxe"
        in dual.splitlines()
    )
    assert "ra-only" not in dual  # the lab's own prefix replaces the ULA's advertisement


def test_reservations_carry_the_ipv6_address() -> None:
    dual_vm = VMSpec(name="a", arch="x86_64", mac="0e:00:00:00:00:01", ip="192.168.105.2",
                     ipv6="fd00:105::2")  # fmt: skip
    only6_vm = VMSpec(name="b", arch="x86_64", mac="0e:00:00:00:00:02", ipv6="fd00:105::3")
    assert (
        dnsmasq.render_hosts(DUAL, [dual_vm]) == "0e:00:00:00:00:01,192.168.105.2,[fd00:105::2],a\n"
    )
    assert dnsmasq.render_hosts(ONLY6, [only6_vm]) == "0e:00:00:00:00:02,[fd00:105::3],b\n"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"ipv6": "fd00:106::2"}, "outside the lab prefix"),
        ({"ipv6": "fd00:105::1"}, "the provisioner's address"),
        ({"ipv6": "fd00:105::2\nenable-tftp"}, "invalid IPv6 address"),
    ],
)
def test_renderer_refuses_bad_ipv6_reservations(fields: dict[str, str], message: str) -> None:
    bad = VMSpec.model_construct(name="b", arch="x86_64", mac="0e:00:00:00:00:02", ip=None,
                                 **fields)  # fmt: skip
    with pytest.raises(ValidationError, match=message):
        dnsmasq.render_hosts(ONLY6, [bad])


def test_renderer_refuses_an_ipv6_clash() -> None:
    vms = [VMSpec(name=n, arch="x86_64", mac=m, ipv6="fd00:105::2")
           for n, m in (("a", "0e:00:00:00:00:01"), ("b", "0e:00:00:00:00:02"))]  # fmt: skip
    with pytest.raises(ValidationError, match="VMs a and b have the same IPv6 address"):
        dnsmasq.render_hosts(ONLY6, vms)


def test_dnsmasq_accepts_the_rendered_files(home: LabHome, tmp_path: Path) -> None:
    import subprocess

    for lab in (ONLY6, DUAL):
        conf = tmp_path / "test.conf"
        conf.write_text(dnsmasq.render_conf(home, lab, bridge="pvbrtest"))
        proc = subprocess.run(["dnsmasq", "--test", f"--conf-file={conf}"],
                              capture_output=True, text=True, check=False)  # fmt: skip
        assert proc.returncode == 0 and "syntax check OK" in proc.stderr, proc.stderr


# --- endpoints, ports, QEMU ---------------------------------------------------------------------


def test_http_endpoints_of_each_kind_of_lab() -> None:
    only6, dual = lab_endpoint(ONLY6), lab_endpoint(DUAL)
    assert (only6.listen_hosts, only6.boot_url) == (
        ["fd00:105::1"], "http://[fd00:105::1]/boot.ipxe")
    assert (dual.listen_hosts, dual.boot_url) == (
        ["192.168.105.1", "fd00:105::1"], "http://192.168.105.1/boot.ipxe")
    assert lab_endpoint(DUAL, family=6).url("/images/x") == "http://[fd00:105::1]/images/x"


def test_dnsmasq_readiness_ports_follow_the_families() -> None:
    assert served_udp_ports(LabSpec(**V4)) == {67, 69}
    assert served_udp_ports(DUAL) == {67, 69, 547}
    assert served_udp_ports(ONLY6) == {69, 547}


def test_ipv6_only_vms_skip_the_firmwares_pxe_over_ipv4() -> None:
    switch = ["-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=no"]
    argv = build_argv(qemu_config(pxe_ipv4=False))
    i = argv.index("-fw_cfg")
    assert argv[i : i + 2] == switch
    assert "-fw_cfg" not in build_argv(qemu_config())
    assert "-fw_cfg" not in build_argv(qemu_config(pxe_ipv4=False, firmware="bios"))


# --- vm create -------------------------------------------------------------------------------


def test_allocation_and_reservations(home: LabHome) -> None:
    store.save_lab(home, DUAL)
    a = create(home, CreateRequest(name="a", arch="x86_64"))
    b = create(home, CreateRequest(name="b", arch="x86_64", ipv6="fd00:105::40"))
    c = create(home, CreateRequest(name="c", arch="x86_64"))
    assert [(v.ip, v.ipv6) for v in (a, b, c)] == [
        ("192.168.105.2", "fd00:105::2"), ("192.168.105.3", "fd00:105::40"),
        ("192.168.105.4", "fd00:105::3")]  # fmt: skip
    for req, message in (
        (CreateRequest(name="d", arch="x86_64", ipv6="fd00:105::40"), "already used by VM 'b'"),
        (CreateRequest(name="d", arch="x86_64", ipv6="fd00:105::1"), "provisioner's address"),
        (CreateRequest(name="d", arch="x86_64", ipv6="fd00:105::1234"), "DHCPv6 dynamic range"),
        (CreateRequest(name="d", arch="x86_64", ipv6="fd00:999::5"), "outside the lab prefix"),
    ):
        with pytest.raises(ValidationError, match=message):
            create(home, req)


def test_ipv6_only_lab_vms_have_no_ipv4(home: LabHome) -> None:
    store.save_lab(home, ONLY6)
    vm = create(home, CreateRequest(name="a", arch="x86_64"))
    assert (vm.ip, vm.ipv6, vm.address) == (None, "fd00:105::2", "fd00:105::2")
    with pytest.raises(ValidationError, match="IPv6-only"):
        create(home, CreateRequest(name="b", arch="x86_64", ip="192.168.105.9"))


def test_an_ipv4_lab_refuses_an_ipv6_reservation(home: LabHome) -> None:
    store.save_lab(home, LabSpec(**V4))
    with pytest.raises(ValidationError, match="has no IPv6 prefix"):
        create(home, CreateRequest(name="a", arch="x86_64", ipv6="fd00:105::5"))


# --- the CLI -------------------------------------------------------------------------------------


def test_provisioner_create_ipv6_only_and_dual(tmp_path: Path) -> None:
    out = run_pvmlab("provisioner", "create", "--ipv6", "fd00:105::/64", "--no-ipv4", "--json",
                     home=tmp_path / "a").stdout  # fmt: skip
    lab = json.loads(out)
    assert (lab["address"], lab["ipv6"], lab["dhcp_start"]) == (None, "fd00:105::1/64", None)
    text = run_pvmlab("provisioner", "create", "--ipv6", "fd00:105::/64", home=tmp_path / "b")
    assert "provisioner 192.168.105.1/24 and fd00:105::1/64" in text.stdout
    assert "DHCPv6 range fd00:105::1000-fd00:105::1fff" in text.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--no-ipv4"], "--no-ipv4 leaves the lab without any address"),
        (["--ipv6", "fd00::/48"], "prefix /48 is not usable"),
        (["--ipv6", "fd00::1001/64"], "inside the DHCPv6 dynamic range"),
        (["--ipv6", "fd00::/64", "--no-ipv4", "--ip", "10.0.0.1/24"], "--ip is IPv4"),
        (["--ipv6", "fd00::/64", "--no-ipv4", "--dhcp-range", "a,b"], "--dhcp-range is IPv4"),
        (["--ipv6", "fd00::/64", "--no-ipv4", "--uplink"], "the uplink needs IPv4"),
    ],
)
def test_provisioner_create_refuses(tmp_path: Path, args: list[str], message: str) -> None:
    proc = run_pvmlab("provisioner", "create", *args, home=tmp_path / "h", check=False)
    err = proc.stderr.strip()
    assert proc.returncode != 0 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "h" / "lab.json").exists()


# --- dnsmasq's DHCPv6 lines ------------------------------------------------------------------

# dnsmasq 2.90 logging an EDK2 PXE-over-IPv6 boot and its iPXE (trimmed from a real run)
V6_LOG = (Path(__file__).parent / "data" / "dnsmasq-dhcpv6.log").read_text()


def test_dhcpv6_transactions_are_found_by_the_mac_dnsmasq_learnt() -> None:
    from pvmlab.observe import dnsmasqlog

    events = dnsmasqlog.parse_dnsmasq_log(V6_LOG.splitlines(), 2026)
    txs = dnsmasqlog.dhcp_transactions(events, "0e:38:96:66:74:68")
    assert [(tx.serial, tx.acked_ip, tx.bootfile, tx.is_ipxe) for tx in txs] == [
        ("12567278", "fd00:6e57:1ab::2", None, False),
        ("12698350", "fd00:6e57:1ab::150f", "tftp://[fd00:6e57:1ab::1]/ipxe-x86_64.efi", False),
        ("15349538", "fd00:6e57:1ab::2", "http://[fd00:6e57:1ab::1]/boot.ipxe", True),
    ]
    reply = txs[0].messages[-1]
    assert (reply.kind, reply.mac, reply.duid, reply.text) == (
        "DHCPREPLY", "0e:38:96:66:74:68", "00:01:00:01:31:e7:14:bf:0e:38:96:66:74:68", "v6efi")
    tftp = dnsmasqlog.tftp_events_for(events, ["fd00:6e57:1ab::150f"])
    assert [(e.outcome, e.file) for e in tftp] == [("other", ""), ("sent", "ipxe-x86_64.efi")]


# dnsmasq 2.90 with the lab's per-code DHCPv6 tags (a real run of test_boot_ipv6, trimmed): of
# option 16 it logs only the enterprise number ("vendor class: 343"), never option 61
V6_ARCH_LOG = (Path(__file__).parent / "data" / "dnsmasq-dhcpv6-arch.log").read_text()


def test_dhcpv6_client_arch_comes_from_the_labs_tag() -> None:
    from pvmlab.observe import dnsmasqlog

    events = dnsmasqlog.parse_dnsmasq_log(V6_ARCH_LOG.splitlines(), 2026)
    txs = dnsmasqlog.dhcp_transactions(events, "0e:a1:e7:74:7e:30")
    assert [(tx.serial, tx.vendor_class, tx.client_arch, tx.is_ipxe) for tx in txs] == [
        ("6219316", None, None, False),  # EDK2's IPv6 stack: no option 61
        ("6350388", "343", 7, False),  # its PXE: x64 UEFI, given the first stage
        ("1740567", "343", 7, True),  # iPXE sends option 61 too
    ]
    assert dnsmasqlog.client_arch6_tag(19) == "client-arch-19"


# --- the HTTP server on both families -------------------------------------------------------


def _free_port_on_both() -> int:
    import socket

    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s6:
        s6.bind(("::1", 0))
        port = int(s6.getsockname()[1])
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s4:
            s4.bind(("127.0.0.1", port))
    return port


def _get(host: str, port: int, path: str) -> tuple[int, str]:
    import http.client

    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def test_a_dual_stack_server_answers_each_family_with_its_own_urls(home: LabHome) -> None:
    import asyncio
    import socket
    import threading

    from pvmlab.stack import http as pvhttp
    from pvmlab.stack.endpoint import HttpEndpoint

    try:
        port = _free_port_on_both()
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    endpoint = HttpEndpoint("127.0.0.1", port, "127.0.0.1", also_listen=("::1",))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    running = asyncio.run_coroutine_threadsafe(
        pvhttp.start_http(home, DUAL, endpoint), loop).result(30)  # fmt: skip
    try:
        families = {s.family for s in running.listener.sockets}
        assert families == {socket.AF_INET, socket.AF_INET6}
        status4, script4 = _get("127.0.0.1", port, "/boot.ipxe")
        status6, script6 = _get("::1", port, "/boot.ipxe")
        assert (status4, status6) == (200, 200)
        assert f"chain http://127.0.0.1:{port}/ipxe?" in script4
        assert f"chain http://[::1]:{port}/ipxe?" in script6
    finally:
        asyncio.run_coroutine_threadsafe(running.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def test_provisioner_configure_moves_or_removes_ipv6(tmp_path: Path) -> None:
    h = tmp_path / "h"
    run_pvmlab("provisioner", "create", home=h)
    run_pvmlab("vm", "create", "a", "--arch", "x86_64", home=h)
    out = run_pvmlab("provisioner", "configure", "--ipv6", "fd00:200::/64", "--json", home=h)
    assert json.loads(out.stdout)["ipv6"] == "fd00:200::1/64"
    [vm] = json.loads(run_pvmlab("vm", "list", "--json", home=h).stdout)
    assert (vm["ip"], vm["ipv6"]) == ("192.168.105.2", "fd00:200::2")  # a reservation each
    run_pvmlab("provisioner", "configure", "--ipv6", "fd00:300::/64", home=h)
    [vm] = json.loads(run_pvmlab("vm", "list", "--json", home=h).stdout)
    assert vm["ipv6"] == "fd00:300::2"
    bad = run_pvmlab("provisioner", "configure", "--ipv6", "fd00:300::1fff/64", home=h,
                     check=False)  # fmt: skip
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1
    assert "inside the DHCPv6 dynamic range" in bad.stderr
    run_pvmlab("provisioner", "configure", "--no-ipv6", home=h)
    [vm] = json.loads(run_pvmlab("vm", "list", "--json", home=h).stdout)
    assert vm["ipv6"] is None
    assert json.loads((h / "lab.json").read_text())["ipv6"] is None


def test_an_ipv6_only_lab_keeps_its_ipv6(tmp_path: Path) -> None:
    h = tmp_path / "h"
    run_pvmlab("provisioner", "create", "--ipv6", "fd00:105::/64", "--no-ipv4", home=h)
    proc = run_pvmlab("provisioner", "configure", "--no-ipv6", home=h, check=False)
    assert proc.returncode != 0 and "would have no address" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_unattended_installs_need_the_ipv4_network(home: LabHome, tmp_path: Path) -> None:
    from pvmlab.records.models import DistroAssets

    store.save_lab(home, ONLY6)
    store.save_distro(home, DistroAssets(name="tiny", arch="x86_64", kernel_sha256="0" * 64,
                                         initrd_sha256="0" * 64, kernel_size=1, initrd_size=1))
    template = tmp_path / "preseed.cfg"
    template.write_text("d-i debian-installer/locale string en_US\n")
    req = CreateRequest(name="u1", arch="x86_64", distro="tiny", disk_size="1G",
                        install="preseed", install_template=template)  # fmt: skip
    with pytest.raises(ValidationError, match="unattended installs need the lab's IPv4 network"):
        create(home, req)
    assert not home.vm_file("u1").exists()
