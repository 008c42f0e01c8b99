"""Edge validation: every value that names something, accepted or refused with a hint."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from pvmlab.errors import ValidationError
from pvmlab.records import validate

NET24 = ipaddress.IPv4Interface("192.168.105.1/24")


def refused(fn: object, *args: object) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        fn(*args)  # type: ignore[operator]
    err = info.value
    assert err.hint, "every refusal carries a hint"
    assert "\n" not in str(err), "errors print on one line"
    return err


@pytest.mark.parametrize("name", ["a", "t1", "web-01", "A" * 63, "x-y-z", "9lives"])
def test_vm_name_ok(name: str) -> None:
    assert validate.vm_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "../x", "a b", "a\nb", "-a", "a-", "a_b", "a.b", "A" * 64, "é", "a/b", "a,b"]
)
def test_vm_name_refused(name: str) -> None:
    refused(validate.vm_name, name)


@pytest.mark.parametrize("name", ["debian-12", "ubuntu-24.04", "fedora_41", "a", "x" * 63])
def test_distro_name_ok(name: str) -> None:
    assert validate.distro_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "..", "a..b", "../etc", "Debian", ".hidden", "-x", "a/b", "a b", "x" * 64, "a\n"]
)
def test_distro_name_refused(name: str) -> None:
    refused(validate.distro_name, name)


@pytest.mark.parametrize(
    ("value", "want"),
    [("arm64", "aarch64"), ("amd64", "x86_64"), ("x86-64", "x86_64"), ("aarch64", "aarch64")],
)
def test_arch_aliases(value: str, want: str) -> None:
    assert validate.arch(value) == want


def test_arch_refused() -> None:
    err = refused(validate.arch, "riscv64")
    assert err.hint is not None and "aarch64" in err.hint


@pytest.mark.parametrize(
    "value",
    ["52:54:00:12:34:56", "52-54-00-12-34-56", "525400123456", " 52:54:00:12:34:56 ",
     "52:54:00:12:34:56".upper()],
)
def test_mac_normalised(value: str) -> None:
    assert validate.mac(value) == "52:54:00:12:34:56"


def test_mac_hyphen_form() -> None:
    assert validate.mac_hyphen("52:54:00:12:34:56") == "52-54-00-12-34-56"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("ff:ff:ff:ff:ff:ff", "broadcast"),
        ("01:00:5e:00:00:01", "multicast"),
        ("33:33:00:00:00:01", "multicast"),
        ("00:00:00:00:00:00", "all zeros"),
        ("52:54:00:12:34", "invalid"),
        ("52:54:00-12:34:56", "invalid"),  # mixed separators
        ("52:54:00:12:34:5g", "invalid"),
        ("52:54:00:12:34:56\nx", "invalid"),
        ("", "invalid"),
    ],
)
def test_mac_refused(value: str, why: str) -> None:
    assert why in refused(validate.mac, value).problem


def test_random_mac_is_local_unicast_and_unique() -> None:
    taken: set[str] = set()
    for _ in range(200):
        m = validate.random_mac(taken)
        first = int(m.split(":")[0], 16)
        assert first & 1 == 0 and first & 2 == 2
        assert validate.mac(m) == m
        assert m not in taken
        taken.add(m)


def test_ipv4_interface_ok() -> None:
    assert validate.ipv4_interface("192.168.105.1/24") == NET24
    assert str(validate.ipv4_interface(" 10.0.0.1/8 ")) == "10.0.0.1/8"


@pytest.mark.parametrize(
    "value",
    [
        "192.168.105.1",  # no prefix
        "192.168.105.0/24",  # network address
        "192.168.105.255/24",  # broadcast
        "192.168.105.1/30",  # too small
        "10.0.0.1/7",  # too large
        "127.0.0.1/8",
        "224.0.0.1/24",
        "300.1.1.1/24",
        "not/an/ip",
    ],
)
def test_ipv4_interface_refused(value: str) -> None:
    refused(validate.ipv4_interface, value)


@pytest.mark.parametrize(
    ("fn", "value", "problem", "hint"),
    [
        (validate.ipv4_interface, " 192.168.105.1 ", "address ' 192.168.105.1 ' has no prefix "
         "length", "write it as ADDRESS/PREFIX, e.g. 192.168.105.1/24"),
        (validate.ipv4_interface, "10.0.0.1/33", "invalid address '10.0.0.1/33': '33' is not a "
         "valid netmask", "write it as ADDRESS/PREFIX, e.g. 192.168.105.1/24"),
        (validate.ipv6_interface, "fd00:105::", "IPv6 prefix 'fd00:105::' has no prefix length",
         "write it as PREFIX/64 or ADDRESS/64, e.g. fd00:105::/64"),
        (validate.ipv6_interface, "192.168.1.0/24", "invalid IPv6 prefix '192.168.1.0/24': At "
         "least 3 parts expected in '192.168.1.0'",
         "write it as PREFIX/64 or ADDRESS/64, e.g. fd00:105::/64"),
    ],
)  # fmt: skip
def test_interface_without_or_with_a_bad_prefix(
    fn: object, value: str, problem: str, hint: str
) -> None:
    err = refused(fn, value)
    assert (err.problem, err.hint) == (problem, hint)


def test_ipv4_in() -> None:
    assert validate.ipv4_in("192.168.105.20", NET24.network) == ipaddress.IPv4Address(
        "192.168.105.20"
    )
    assert "outside" in refused(validate.ipv4_in, "10.0.0.1", NET24.network).problem
    refused(validate.ipv4_in, "192.168.105.0", NET24.network)
    refused(validate.ipv4_in, "192.168.105.255", NET24.network)
    refused(validate.ipv4_in, "nope", NET24.network)


def test_dhcp_range() -> None:
    start, end = validate.dhcp_range("192.168.105.100,192.168.105.199", NET24)
    assert (str(start), str(end)) == ("192.168.105.100", "192.168.105.199")
    refused(validate.dhcp_range, "192.168.105.100", NET24)
    refused(validate.dhcp_range, "192.168.105.199,192.168.105.100", NET24)
    refused(validate.dhcp_range, "192.168.105.100,192.168.106.10", NET24)
    assert "provisioner" in refused(
        validate.dhcp_range, "192.168.105.1,192.168.105.50", NET24
    ).problem


@pytest.mark.parametrize(
    "cidr", ["192.168.105.1/24", "192.168.105.150/24", "10.0.0.1/16", "10.0.0.5/29", "10.0.0.2/29"]
)
def test_default_dhcp_range_is_valid_and_avoids_provisioner(cidr: str) -> None:
    iface = ipaddress.IPv4Interface(cidr)
    start, end = validate.default_dhcp_range(iface)
    assert start <= end
    assert not start <= iface.ip <= end
    validate.dhcp_range(f"{start},{end}", iface)  # accepted by the edge check itself


def test_default_dhcp_range_seed_subnet() -> None:
    start, end = validate.default_dhcp_range(NET24)
    assert (str(start), str(end)) == ("192.168.105.100", "192.168.105.199")


@pytest.mark.parametrize("line", ["", "console=ttyS0 quiet", "ip=${net0/ip} a#b x||y", "é=1"])
def test_cmdline_ok(line: str) -> None:
    assert validate.cmdline(line) == line


@pytest.mark.parametrize(
    "line",
    [
        "quiet\nkernel http://evil",
        "a\rb",
        "a\tb",
        "a\x00b",
        "a\x7fb",
        "x" * 4097,
        "quiet || chain http://evil",
        "quiet && reboot",
        "quiet ; reboot",
        "quiet #comment",
    ],
)
def test_cmdline_refused(line: str) -> None:
    refused(validate.cmdline, line)


@pytest.mark.parametrize("name", ["vmlinuz", "initrd.gz", "initrd.img-6.1.0-cloud", "a+b_c"])
def test_file_name_ok(name: str) -> None:
    assert validate.file_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", ".hidden", "a/b", "../x", "a..b", "a b", "a\n"])
def test_file_name_refused(name: str) -> None:
    refused(validate.file_name, name)


def test_sha256() -> None:
    assert validate.sha256("AB" * 32) == "ab" * 32
    refused(validate.sha256, "ab" * 31)
    refused(validate.sha256, "zz" * 32)


def test_existing_file(tmp_path: Path) -> None:
    f = tmp_path / "k"
    f.write_bytes(b"x")
    assert validate.existing_file(f) == f.resolve()
    assert "does not exist" in refused(validate.existing_file, tmp_path / "nope").problem
    assert "not a regular file" in refused(validate.existing_file, tmp_path).problem


@pytest.mark.parametrize(
    ("text", "size"),
    [("10G", 10 * 1024**3), ("512M", 512 * 1024**2), ("20GiB", 20 * 1024**3), ("1t", 1024**4),
     ("2048K", 2 * 1024**2)],
)
def test_disk_size(text: str, size: int) -> None:
    assert validate.disk_size(text) == size


@pytest.mark.parametrize("text", ["", "10", "0.5G", "10X", "-1G", "65T", "1K"])
def test_disk_size_refused(text: str) -> None:
    refused(validate.disk_size, text)


def test_memory_and_cpus() -> None:
    assert validate.memory_mib(1024) == 1024
    refused(validate.memory_mib, 63)
    assert validate.cpus(2) == 2
    refused(validate.cpus, 0)
    refused(validate.cpus, 257)
