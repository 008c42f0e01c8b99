"""Validation of every value that names something: VM and distro names, MACs, IPs, paths.

Each function returns the normalised value or raises ValidationError with a problem and a hint.
These values end up in dnsmasq's configuration, iPXE scripts, file names and QEMU's argv, so the
rules are strict allow-lists rather than deny-lists.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from pvmlab import arch as arch_table
from pvmlab.arch import ARCHES as ARCHES
from pvmlab.arch import Arch as Arch
from pvmlab.arch import Firmware as Firmware
from pvmlab.errors import ValidationError

_VM_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_DISTRO_NAME = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62})")
_MAC = re.compile(r"[0-9a-f]{2}([:-])[0-9a-f]{2}(?:\1[0-9a-f]{2}){4}")
_MAC_BARE = re.compile(r"[0-9a-f]{12}")


def _show(value: str) -> str:
    """A value as it can be printed on one line (newlines and control characters escaped)."""
    return repr(value)


def vm_name(value: str) -> str:
    if not _VM_NAME.fullmatch(value):
        raise ValidationError(
            f"invalid VM name {_show(value)}",
            "use 1-63 letters, digits and '-', not starting or ending with '-'",
        )
    return value


def distro_name(value: str) -> str:
    if not _DISTRO_NAME.fullmatch(value) or ".." in value:
        raise ValidationError(
            f"invalid distro name {_show(value)}",
            "use 1-63 lowercase letters, digits, '.', '_' and '-', starting with a letter or "
            "digit (e.g. debian-12)",
        )
    return value


def arch(value: str) -> Arch:
    """An architecture of ``pvmlab.arch`` (its aliases ``arm64``, ``amd64`` accepted)."""
    return arch_table.parse_arch(value)


def firmware(value: str) -> Firmware:
    return arch_table.parse_firmware(value)


def mac(value: str) -> str:
    """Normalise a MAC to lowercase colon form; it must be a unicast, non-zero address."""
    text = value.strip().lower()
    if _MAC_BARE.fullmatch(text):
        octets = [text[i : i + 2] for i in range(0, 12, 2)]
    elif _MAC.fullmatch(text):
        octets = re.split(r"[:-]", text)
    else:
        raise ValidationError(
            f"invalid MAC address {_show(value)}",
            "write it as six hex pairs, e.g. 52:54:00:12:34:56",
        )
    first = int(octets[0], 16)
    if first & 1:
        kind = "broadcast" if all(o == "ff" for o in octets) else "multicast"
        raise ValidationError(
            f"MAC address {value} is a {kind} address",
            "a NIC needs a unicast MAC: the lowest bit of the first octet must be 0",
        )
    if all(o == "00" for o in octets):
        raise ValidationError(f"MAC address {value} is all zeros", "choose a real unicast MAC")
    return ":".join(octets)


def mac_hyphen(value: str) -> str:
    """A MAC as iPXE's ``${net0/mac:hexhyp}`` writes it (used in URLs)."""
    return mac(value).replace(":", "-")


def random_mac(taken: Iterable[str] = ()) -> str:
    """A locally administered unicast MAC (52:54:00 is QEMU's; ours sets bit 1 of octet 0)."""
    used = set(taken)
    while True:
        tail = secrets.token_bytes(5)
        candidate = ":".join(f"{b:02x}" for b in (0x0E, *tail))  # 0x0e: local, unicast
        if candidate not in used:
            return candidate


_Iface = TypeVar("_Iface", ipaddress.IPv4Interface, ipaddress.IPv6Interface)


def _with_prefix(parse: Callable[[str], _Iface], value: str, what: str, form: str) -> _Iface:
    """``value`` parsed by ``parse`` (an address and its prefix length, which must be written);
    ``what`` names the value in the messages, ``form`` is how to write it."""
    text = value.strip()
    try:
        iface = parse(text)
    except (ValueError, ipaddress.AddressValueError, ipaddress.NetmaskValueError) as exc:
        raise ValidationError(
            f"invalid {what} {_show(value)}: {exc}", f"write it as {form}"
        ) from None
    if "/" not in text:
        raise ValidationError(f"{what} {_show(value)} has no prefix length", f"write it as {form}")
    return iface


def ipv4_interface(value: str) -> ipaddress.IPv4Interface:
    """The provisioner's address with its prefix, e.g. 192.168.105.1/24."""
    iface = _with_prefix(
        ipaddress.IPv4Interface, value, "address", "ADDRESS/PREFIX, e.g. 192.168.105.1/24"
    )
    net = iface.network
    if not 8 <= net.prefixlen <= 29:
        raise ValidationError(
            f"prefix /{net.prefixlen} is not usable for a lab network",
            "use a prefix between /8 and /29, e.g. /24",
        )
    if iface.ip in (net.network_address, net.broadcast_address):
        raise ValidationError(
            f"{iface.ip} is the {'network' if iface.ip == net.network_address else 'broadcast'} "
            f"address of {net}",
            f"give the provisioner a host address, e.g. {next(net.hosts())}/{net.prefixlen}",
        )
    if iface.ip.is_loopback or iface.ip.is_multicast or iface.ip.is_unspecified:
        raise ValidationError(
            f"{iface.ip} cannot be a lab address", "use a private range such as 192.168.105.1/24"
        )
    return iface


def ipv4_in(
    value: str, network: ipaddress.IPv4Network, what: str = "address"
) -> ipaddress.IPv4Address:
    try:
        addr = ipaddress.IPv4Address(value.strip())
    except ValueError:
        raise ValidationError(
            f"invalid {what} {_show(value)}", "write an IPv4 address, e.g. 192.168.105.10"
        ) from None
    if addr not in network:
        raise ValidationError(
            f"{what} {addr} is outside the lab subnet {network}",
            f"choose an address inside {network}",
        )
    if addr in (network.network_address, network.broadcast_address):
        raise ValidationError(
            f"{what} {addr} is the network or broadcast address of {network}",
            "choose a host address",
        )
    return addr


IPV6_PREFIXLEN = 64  # SLAAC, dnsmasq's RA and PXEv6 firmware all expect a /64 on the link


def ipv6_interface(value: str) -> ipaddress.IPv6Interface:
    """The provisioner's IPv6 address with its /64: ``PREFIX::/64`` gives it ``PREFIX::1``."""
    iface = _with_prefix(
        ipaddress.IPv6Interface, value, "IPv6 prefix", "PREFIX/64 or ADDRESS/64, e.g. fd00:105::/64"
    )
    net = iface.network
    if net.prefixlen != IPV6_PREFIXLEN:
        raise ValidationError(
            f"IPv6 prefix /{net.prefixlen} is not usable for a lab network",
            "give a /64 (router advertisements and PXE over IPv6 expect one), e.g. fd00:105::/64",
        )
    first = net.network_address
    if first.is_link_local or first.is_multicast or first.is_loopback or first.is_unspecified \
            or first.ipv4_mapped is not None:
        raise ValidationError(
            f"{net} cannot be a lab prefix",
            "use a unique local prefix such as fd00:105::/64 (or one of your global ones)",
        )
    if iface.ip == first:  # the prefix itself: the provisioner takes ::1
        iface = ipaddress.IPv6Interface((int(first) + 1, IPV6_PREFIXLEN))
    return iface


def ipv6_in(
    value: str, network: ipaddress.IPv6Network, what: str = "address"
) -> ipaddress.IPv6Address:
    """An IPv6 host address inside the lab's /64 (not the subnet-router anycast ``PREFIX::``)."""
    try:
        addr = ipaddress.IPv6Address(value.strip().strip("[]"))
    except ValueError:
        raise ValidationError(
            f"invalid {what} {_show(value)}", "write an IPv6 address, e.g. fd00:105::10"
        ) from None
    if addr not in network:
        raise ValidationError(
            f"{what} {addr} is outside the lab prefix {network}",
            f"choose an address inside {network}",
        )
    if addr == network.network_address:
        raise ValidationError(
            f"{what} {addr} is the subnet-router anycast address of {network}",
            "choose a host address, e.g. one ending in ::10",
        )
    return addr


def ipv6_dynamic_range(
    network: ipaddress.IPv6Network,
) -> tuple[ipaddress.IPv6Address, ipaddress.IPv6Address]:
    """DHCPv6 addresses for unknown clients: ``PREFIX::1000``-``PREFIX::1fff`` (reservations
    are taken from below, like IPv4's)."""
    base = int(network.network_address)
    return ipaddress.IPv6Address(base + 0x1000), ipaddress.IPv6Address(base + 0x1FFF)


def dhcp_range(
    value: str, iface: ipaddress.IPv4Interface
) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    parts = value.split(",")
    if len(parts) != 2:
        raise ValidationError(
            f"invalid DHCP range {_show(value)}",
            "write it as START,END, e.g. 192.168.105.100,192.168.105.199",
        )
    start = ipv4_in(parts[0], iface.network, "DHCP range start")
    end = ipv4_in(parts[1], iface.network, "DHCP range end")
    if int(end) < int(start):
        raise ValidationError(
            f"DHCP range {start}-{end} ends before it starts", "write the lower address first"
        )
    if start <= iface.ip <= end:
        raise ValidationError(
            f"DHCP range {start}-{end} contains the provisioner's address {iface.ip}",
            "move the range or the provisioner address",
        )
    return start, end


def default_dhcp_range(
    iface: ipaddress.IPv4Interface,
) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    """The upper part of the subnet, leaving the lower part for reservations.

    /24 gives .100-.199 (as in the seed's 192.168.105.0/24); other sizes scale.
    """
    net = iface.network
    first = int(net.network_address) + 1  # the first host address
    hosts = net.num_addresses - 2
    if net.prefixlen == 24:
        start, end = ipaddress.IPv4Address(first + 99), ipaddress.IPv4Address(first + 198)
    else:
        start = ipaddress.IPv4Address(first + hosts // 2)
        end = ipaddress.IPv4Address(first + hosts - 1)
    if start <= iface.ip <= end:  # provisioner sits in the upper half: use the lower half
        start = ipaddress.IPv4Address(first)
        end = ipaddress.IPv4Address(first + hosts // 2 - 1)
        if start <= iface.ip <= end:
            start = ipaddress.IPv4Address(int(iface.ip) + 1)
    return start, end


def cmdline(value: str) -> str:
    """A kernel command line: one line of printable text (it becomes an iPXE script line)."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValidationError(
            "kernel command line contains a newline or control character",
            "give the whole command line on one line",
        )
    if len(value) > 4096:
        raise ValidationError("kernel command line is longer than 4096 characters", "shorten it")
    # iPXE splits a script line on whitespace: a word "||", "&&" or ";" starts another command
    # and a word starting with "#" ends the line, so such words would change the boot script.
    for word in value.split():
        if word in ("||", "&&", ";") or word.startswith("#"):
            raise ValidationError(
                f"kernel command line word {word!r} would be read by iPXE as a command "
                "separator or comment",
                "remove it or join it to the word before it",
            )
    return value


_FILE_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,127}")


def file_name(value: str, what: str = "file name") -> str:
    """A plain file name inside a lab directory: no separators, not hidden, no dot-dot."""
    if not _FILE_NAME.fullmatch(value) or ".." in value:
        raise ValidationError(
            f"invalid {what} {_show(value)}",
            "use letters, digits, '.', '_', '+' and '-' (no '/', no '..', not starting with '.')",
        )
    return value


_SHA256 = re.compile(r"[0-9a-f]{64}")


def sha256(value: str) -> str:
    text = value.strip().lower()
    if not _SHA256.fullmatch(text):
        raise ValidationError(f"invalid SHA-256 {_show(value)}", "give 64 hex digits")
    return text


def existing_file(value: str | Path, what: str = "file") -> Path:
    path = Path(value).expanduser()
    if not path.exists():
        raise ValidationError(f"{what} {str(path)!r} does not exist", "check the path")
    if not path.is_file():
        raise ValidationError(
            f"{what} {str(path)!r} is not a regular file", "give a file, not a directory"
        )
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ValidationError(
            f"cannot read {what} {str(path)!r}: {exc.strerror}", "check its permissions"
        ) from None
    return path.resolve()


def memory_mib(value: int) -> int:
    if not 64 <= value <= 1024 * 1024:
        raise ValidationError(
            f"memory {value} MiB is out of range", "give between 64 and 1048576 MiB"
        )
    return value


def cpus(value: int) -> int:
    if not 1 <= value <= 256:
        raise ValidationError(f"{value} CPUs is out of range", "give between 1 and 256")
    return value


_SIZE = re.compile(r"(\d+)\s*([KMGT]?)(i?B)?", re.IGNORECASE)


def disk_size(value: str) -> int:
    """A disk size such as 10G, 512M or 20GiB, in bytes."""
    m = _SIZE.fullmatch(value.strip())
    if not m:
        raise ValidationError(
            f"invalid disk size {_show(value)}", "write it like 10G, 512M or 20GiB"
        )
    number, unit = int(m.group(1)), m.group(2).upper()
    size = number * int(1024 ** " KMGT".index(unit or " "))
    if not 1024 * 1024 <= size <= 64 * 1024**4:
        raise ValidationError(f"disk size {value} is out of range", "give between 1M and 64T")
    return size
