"""The boot path table (`pvmlab.bootpaths`): one row per client type, derived from the tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from pvmlab import arch, bootpaths
from pvmlab.errors import ValidationError


def rows() -> dict[str, bootpaths.BootPath]:
    return {r.client.label: r for r in bootpaths.boot_paths()}


def test_every_client_type_once_and_no_impossible_ones() -> None:
    labels = [r.client.label for r in bootpaths.boot_paths()]
    assert len(labels) == len(set(labels)) == 18
    assert "x86_64 legacy BIOS HTTP Boot IPv4" not in labels  # SeaBIOS has no HTTP Boot client
    assert not [lb for lb in labels if "legacy BIOS Secure Boot" in lb]


def test_served_rows_today() -> None:
    served = sorted(lb for lb, r in rows().items() if r.served)
    assert served == [
        "aarch64 UEFI HTTP Boot IPv4",
        "aarch64 UEFI HTTP Boot IPv6",
        "aarch64 UEFI PXE IPv4",
        "aarch64 UEFI PXE IPv6",
        "aarch64 UEFI Secure Boot PXE IPv4",
        "x86_64 UEFI HTTP Boot IPv4",
        "x86_64 UEFI HTTP Boot IPv6",
        "x86_64 UEFI PXE IPv4",
        "x86_64 UEFI PXE IPv6",
        "x86_64 UEFI Secure Boot PXE IPv4",
        "x86_64 legacy BIOS PXE IPv4",
    ]


def test_http_boot_rows() -> None:
    r = rows()["aarch64 UEFI HTTP Boot IPv4"]
    assert r.client_arches == (19,)
    assert r.vendor_class == "HTTPClient"
    assert r.transport == "http"
    assert r.location("http://192.168.105.1") == "http://192.168.105.1/tftp/ipxe-arm64.efi"
    assert r.proven_by == "tests/integration/test_boot_http.py"
    x = rows()["x86_64 UEFI HTTP Boot IPv4"]
    assert x.client_arches == (16,)
    assert x.location(None) == "/tftp/ipxe-x86_64.efi"


def test_pxe_row_is_a_tftp_name() -> None:
    r = rows()["x86_64 UEFI PXE IPv4"]
    assert (r.client_arches, r.vendor_class, r.transport) == ((7, 9), "PXEClient", "tftp")
    assert r.location("http://192.168.105.1") == "ipxe-x86_64.efi"


def test_unserved_rows_say_why() -> None:
    sb_http = rows()["x86_64 UEFI Secure Boot HTTP Boot IPv4"]
    assert not sb_http.served
    assert sb_http.reason == "Secure Boot machines get shim by PXE over IPv4 only"
    bios6 = [
        r
        for r in bootpaths.boot_paths()
        if r.client.firmware == "bios" and r.client.ip_version == 6
    ]
    assert len(bios6) == 1 and not bios6[0].served
    assert bios6[0].reason == "legacy BIOS PXE ROMs boot over IPv4 only"


def test_secure_boot_rows_are_the_signed_shim() -> None:
    sb = rows()["aarch64 UEFI Secure Boot PXE IPv4"]
    assert sb.served and sb.reason is None and sb.first_stage is not None
    assert sb.location("http://h") == "shimaa64.efi"
    assert sb.proven_by == "tests/integration/test_boot_grub.py (slow)"
    x = rows()["x86_64 UEFI Secure Boot PXE IPv4"]
    assert x.location(None) == "shimx64.efi" and x.client_arches == (7, 9)
    assert x.proven_by == "tests/integration/test_boot_grub.py"


def test_ipv6_pxe_and_http_boot_are_served_and_proven_on_x86_64() -> None:
    v6 = rows()["x86_64 UEFI PXE IPv6"]
    assert v6.served and v6.proven_by == "tests/integration/test_boot_ipv6.py"
    http6 = rows()["x86_64 UEFI HTTP Boot IPv6"]
    assert http6.served and http6.proven_by == "tests/integration/test_boot_http6.py"
    arm = rows()["aarch64 UEFI HTTP Boot IPv6"]
    assert arm.served and arm.proven_by == "tests/integration/test_boot_http6.py"
    arm_pxe = rows()["aarch64 UEFI PXE IPv6"]
    assert arm_pxe.served and arm_pxe.proven_by is None  # answered, not yet seen to boot


def test_as_dict_reports_the_file_in_the_lab(tmp_path: Path) -> None:
    (tmp_path / "ipxe-arm64.efi").write_bytes(b"MZ")
    d = rows()["aarch64 UEFI HTTP Boot IPv4"].as_dict("http://10.0.0.1", tmp_path)
    assert d["file"] == str(tmp_path / "ipxe-arm64.efi") and d["present"] is True
    assert d["location"] == "http://10.0.0.1/tftp/ipxe-arm64.efi"
    missing = rows()["x86_64 UEFI HTTP Boot IPv4"].as_dict("http://10.0.0.1", tmp_path)
    assert missing["present"] is False


def test_served_http_stages_feed_dnsmasq() -> None:
    assert [(code, s.tftp_name) for code, s in bootpaths.served_http_stages()] == [
        (16, "ipxe-x86_64.efi"),
        (19, "ipxe-arm64.efi"),
    ]


def test_net_boot_table() -> None:
    assert arch.parse_net_boot("http") == "http"
    with pytest.raises(ValidationError, match="unknown network boot 'tftp'"):
        arch.parse_net_boot("tftp")
    arch.check_net_boot("uefi", "http")
    with pytest.raises(ValidationError) as exc:
        arch.check_net_boot("bios", "http")
    assert exc.value.problem == "HTTP Boot needs UEFI firmware, not legacy BIOS"
