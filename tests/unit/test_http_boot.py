"""UEFI HTTP Boot outside dnsmasq: QEMU's argv, the firmware probe, `vm create --net-boot`,
`pvmlab loaders` (dnsmasq's lines are in test_dnsmasq.py)."""

from __future__ import annotations

import json
import lzma
import uuid
from pathlib import Path

import pytest
from samples import qemu_config

from conftest import run_pvmlab
from pvmlab.errors import DependencyError, ValidationError
from pvmlab.home import LabHome
from pvmlab.qemu.argv import build_argv
from pvmlab.qemu.firmware import HTTP_BOOT_DXE, has_http_boot
from pvmlab.records import store
from pvmlab.records.models import LabSpec
from pvmlab.vm.define import CreateRequest, create

PXE_OFF = [
    "-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=n",
    "-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=n",
]  # fmt: skip
OVMF = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
AAVMF = Path("/usr/share/AAVMF/AAVMF_CODE.fd")


def fw_cfg(argv: list[str]) -> list[str]:
    return [a for i, a in enumerate(argv) if a == "-fw_cfg" or argv[i - 1] == "-fw_cfg"]


def test_http_net_boot_turns_the_firmware_pxe_off() -> None:
    argv = build_argv(qemu_config(net_boot="http"))
    assert fw_cfg(argv) == PXE_OFF
    assert "virtio-net-pci,netdev=net0,mac=0e:00:00:00:00:01,romfile=,bootindex=0" in argv


def test_http_net_boot_in_an_ipv6_only_lab_turns_ipv4_off() -> None:
    """No PXE entries and no IPv4 stack: the NIC's first entry is HTTP Boot over IPv6 (each
    fw_cfg name once: QEMU refuses a name given twice)."""
    argv = build_argv(qemu_config(net_boot="http", pxe_ipv4=False))
    assert fw_cfg(argv) == [*PXE_OFF, "-fw_cfg", "name=opt/org.tianocore/IPv4Support,string=n"]
    # the boot menu waits for the IPv6 link-local address HTTP Boot's DHCPv6 needs
    i = argv.index("-boot")
    assert argv[i + 1] == "menu=on,splash-time=3000"
    for other in (qemu_config(net_boot="http"), qemu_config(pxe_ipv4=False)):
        j = build_argv(other).index("-boot")
        assert build_argv(other)[j + 1] == "menu=on,splash-time=0"


def test_pxe_net_boot_and_direct_kernel_leave_the_firmware_alone() -> None:
    assert fw_cfg(build_argv(qemu_config())) == []
    direct = qemu_config(net_boot="http", kernel=Path("/k"), initrd=Path("/i"))
    assert fw_cfg(build_argv(direct)) == []


def test_http_net_boot_under_bios_is_a_bug() -> None:
    with pytest.raises(ValueError, match="legacy BIOS firmware has no HTTP Boot"):
        build_argv(qemu_config(firmware="bios", net_boot="http"))


def lzma_section(payload: bytes) -> bytes:
    """An EDK2 GUID-defined section holding ``payload`` LZMA-compressed ("alone" format)."""
    data = lzma.compress(payload, format=lzma.FORMAT_ALONE)
    guid = uuid.UUID("ee4e5898-3914-4259-9d6e-dc7bd79403cf").bytes_le
    size = 24 + len(data)
    return size.to_bytes(3, "little") + b"\x02" + guid + (24).to_bytes(2, "little") + b"\0\0" + data


def test_firmware_probe_finds_the_driver_in_a_compressed_volume(tmp_path: Path) -> None:
    with_driver = tmp_path / "with.fd"
    with_driver.write_bytes(b"\xff" * 100 + lzma_section(b"x" * 50 + HTTP_BOOT_DXE + b"y" * 9))
    without = tmp_path / "without.fd"
    without.write_bytes(b"\xff" * 100 + lzma_section(b"PxeBcDxe" * 10))
    plain = tmp_path / "plain.fd"
    plain.write_bytes(b"\0" * 10 + HTTP_BOOT_DXE)
    assert has_http_boot(with_driver) and has_http_boot(plain)
    assert not has_http_boot(without)


@pytest.mark.skipif(not (OVMF.is_file() and AAVMF.is_file()), reason="needs ovmf, qemu-efi-aarch64")
def test_debian_firmware_has_http_boot() -> None:
    assert has_http_boot(OVMF) and has_http_boot(AAVMF)


@pytest.fixture
def home(tmp_path: Path) -> LabHome:
    h = LabHome(tmp_path / "home")
    h.ensure()
    store.save_lab(h, LabSpec(dhcp_start="192.168.105.100", dhcp_end="192.168.105.199"))
    return h


def test_create_refuses_http_boot_under_bios(home: LabHome) -> None:
    with pytest.raises(ValidationError) as exc:
        create(home, CreateRequest(name="b", arch="x86_64", firmware="bios", net_boot="http"))
    assert exc.value.problem == "HTTP Boot needs UEFI firmware, not legacy BIOS"
    assert not home.vm_file("b").exists()


def test_create_refuses_firmware_without_http_boot(
    home: LabHome, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user's descriptor (first by name) names a firmware without the driver."""
    fwdir = tmp_path / "xdg" / "qemu" / "firmware"
    fwdir.mkdir(parents=True)
    (tmp_path / "CODE.fd").write_bytes(b"\xff" * 4096)
    (tmp_path / "VARS.fd").write_bytes(b"\xff" * 4096)
    doc = {
        "interface-types": ["uefi"],
        "mapping": {
            "device": "flash",
            "executable": {"filename": str(tmp_path / "CODE.fd"), "format": "raw"},
            "nvram-template": {"filename": str(tmp_path / "VARS.fd"), "format": "raw"},
        },
        "targets": [{"architecture": "x86_64", "machines": ["pc-q35-*"]}],
        "features": [],
    }
    (fwdir / "00-nohttp.json").write_text(json.dumps(doc))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    with pytest.raises(DependencyError) as exc:
        create(home, CreateRequest(name="h", arch="x86_64", net_boot="http"))
    assert exc.value.problem == (
        f"the UEFI firmware for x86_64 ({tmp_path / 'CODE.fd'}, from 00-nohttp.json) has no"
        " HTTP Boot driver"
    )
    assert "--net-boot pxe" in (exc.value.hint or "")
    assert not home.vm_file("h").exists()


@pytest.mark.skipif(not OVMF.is_file(), reason="needs ovmf")
def test_create_http_vm_and_list_it(home: LabHome) -> None:
    out = run_pvmlab(
        "vm", "create", "h1", "--arch", "x86_64", "--net-boot", "http", home=home.root
    ).stdout  # fmt: skip
    assert out.strip().endswith(", network boot http")
    assert store.load_vm(home, "h1").net_boot == "http"
    listed = json.loads(run_pvmlab("vm", "list", "--json", home=home.root).stdout)
    assert [(v["name"], v["net_boot"]) for v in listed] == [("h1", "http")]


def test_loaders_json(home: LabHome) -> None:
    rows = json.loads(run_pvmlab("loaders", "--json", home=home.root).stdout)
    by = {(r["arch"], r["firmware"], r["net_boot"], r["ip_version"], r["secure_boot"]): r
          for r in rows}  # fmt: skip
    http = by[("aarch64", "uefi", "http", 4, False)]
    assert http["location"] == "http://192.168.105.1/tftp/ipxe-arm64.efi"
    assert http["file"] == str(home.tftp / "ipxe-arm64.efi")
    assert http["present"] is False  # staged by `provisioner start`
    assert http["served"] is True and http["vendor_class"] == "HTTPClient"
    pxe = by[("x86_64", "uefi", "pxe", 4, False)]
    assert (pxe["location"], pxe["client_arches"]) == ("ipxe-x86_64.efi", [7, 9])
    v6 = by[("x86_64", "uefi", "http", 6, False)]
    assert (v6["served"], v6["reason"], v6["proven_by"]) == (
        True, None, "tests/integration/test_boot_http6.py"
    )
    sb = by[("x86_64", "uefi", "http", 4, True)]
    assert (sb["served"], sb["reason"]) == (
        False, "Secure Boot machines get shim by PXE over IPv4 only"
    )
    served = json.loads(run_pvmlab("loaders", "--served", "--json", home=home.root).stdout)
    assert len(served) == len(rows) - 7 and all(r["served"] for r in served)


def test_loaders_table_says_not_served(home: LabHome) -> None:
    out = run_pvmlab("loaders", home=home.root).stdout
    line = next(ln for ln in out.splitlines() if "x86_64 uefi http IPv4 secure-boot " in ln)
    assert "no: Secure Boot machines get shim by PXE over IPv4 only" in line
    line = next(ln for ln in out.splitlines() if "aarch64 uefi http IPv4 " in ln)
    assert "http http://192.168.105.1/tftp/ipxe-arm64.efi" in line and " yes " in line


def test_the_first_stage_over_http_is_drawn_like_tftp() -> None:
    from pvmlab.report.gantt import colour

    assert colour("http-first-stage") == colour("tftp") != colour("http-kernel")
