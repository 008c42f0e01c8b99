"""dnsmasq for the lab: its configuration, its command line and its lease file.

    configs/dnsmasq.conf    rendered from lab.json (templates/dnsmasq.conf.j2)
    configs/dhcp-hosts      one reservation per VM (MAC,IP,name), read through
                            ``dhcp-hostsfile=`` so SIGHUP re-reads it without a restart
    stack/dnsmasq.leases    dnsmasq's lease file (kept across restarts)
    stack/dnsmasq.pid       its pid file
    logs/dnsmasq.log        ``log-dhcp`` output

Every value is validated again right before it is written, whatever produced it: a comma or a
newline in a name, a MAC or a path must never become configuration. Decisions:

- ``tftp-secure`` is not set: dnsmasq runs as root in the lab namespace, where that option only
  demands world-readable files; ``tftp-root`` already confines requests to the TFTP root.
- ``tftp-no-fail`` is not set: a missing TFTP root must stop dnsmasq loudly, not serve nothing.
- ``user=root``: the lease, pid and log files live in the lab home, which stays root's.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pvmlab import arch, bootpaths
from pvmlab.errors import ValidationError
from pvmlab.home import LabHome, file_lock, write_atomic
from pvmlab.network import lab as netlab
from pvmlab.network import uplink
from pvmlab.observe import dnsmasqlog
from pvmlab.records import store, validate
from pvmlab.records.models import LabSpec, VMSpec
from pvmlab.stack import render
from pvmlab.stack.endpoint import lab_endpoint

LEASE_TIME = "12h"

# client-arch tag -> first stage in the TFTP root (names fixed in docs/architecture.md)
FIRST_STAGES: tuple[tuple[str, str], ...] = tuple(
    (stage.role, stage.tftp_name) for stage in arch.FIRST_STAGES
)
# option 93 value -> tag (each tag is a key of FIRST_STAGES); the template's dhcp-match lines
CLIENT_ARCH_TAGS: dict[int, str] = {
    code: stage.role for stage in arch.FIRST_STAGES for code in stage.client_arches
}
# The per-machine loader tags, set in a machine's reservation (``loader_tag``): GRUB, or shim
# (which loads GRUB) under Secure Boot. Each with a client-arch tag picks the file served.
GRUB_TAG = "grub"
SHIM_TAG = "shim"
LOADER_BOOTS: tuple[tuple[str, str, str], ...] = tuple(
    (tag, arch.architecture(g.arch).first_stages["uefi"].role, name)
    for g in arch.SIGNED_GRUBS.values()
    for tag, name in ((GRUB_TAG, g.grub_tftp_name), (SHIM_TAG, g.shim_tftp_name))
)

# UEFI HTTP Boot: (client-arch, its tag, the first stage's path on the HTTP server)
HTTP_BOOT_STAGES: tuple[tuple[int, str, str], ...] = tuple(
    (code, f"http-{stage.role}", bootpaths.first_stage_url_path(stage))
    for code, stage in bootpaths.served_http_stages()
)
HTTP_VM_TAG = arch.HTTP_VM_TAG

_IFNAME = re.compile(r"[A-Za-z0-9_-]{1,15}")
_UNSAFE_PATH = re.compile(r"[\x00-\x1f\x7f,#\"'\\]")


# --- validation of what goes into the files -------------------------------------------------


def _safe_path(path: Path) -> str:
    text = str(path)
    if not path.is_absolute() or _UNSAFE_PATH.search(text) or text != text.strip():
        raise ValidationError(
            f"path {text!r} cannot be written into dnsmasq's configuration",
            "use a lab home whose path has no commas, quotes, '#', backslashes or control "
            "characters (PVMLAB_HOME selects another home)",
        )
    return text


def _ifname(name: str) -> str:
    if not _IFNAME.fullmatch(name):
        raise ValidationError(f"invalid interface name {name!r}", "this is a bug in pvmlab")
    return name


def _lab_values(lab: LabSpec) -> tuple[ipaddress.IPv4Interface, str, str] | None:
    if lab.address is None:
        return None
    iface = validate.ipv4_interface(str(lab.address))
    start, end = validate.dhcp_range(f"{lab.dhcp_start},{lab.dhcp_end}", iface)
    return iface, str(start), str(end)


def _client_arch6(code: int) -> str:
    """A DHCPv6 client architecture (option 61, two bytes) as dnsmasq matches it: hex bytes."""
    return f"{code >> 8:02x}:{code & 0xFF:02x}"


# UEFI HTTP Boot's client architectures (RFC 5970 / IANA "Processor Architecture Types": 16
# x64 UEFI HTTP, 19 arm64 UEFI HTTP) -> the first stage they are given over HTTP. To move into
# pvmlab.arch's first-stage table with the HTTP Boot work (IPv4), which needs the same codes.
HTTP_BOOT_CLIENT_ARCHES: tuple[tuple[int, arch.FirstStage], ...] = (
    (16, arch.EFI_X86_64),
    (19, arch.EFI_ARM64),
)
# DHCPv6 vendor class (option 16) of an HTTP Boot answer. EDK2's HttpBootDxe takes an Advertise
# as an HTTP Boot offer only if its option 16 holds, after the 4-byte enterprise number (which it
# does not check), a 2-byte length of at least 10 and then "HTTPClient". dnsmasq writes option6:16
# as a list of strings, each after its 2-byte length, and never as hex, so the enterprise number
# 343 (00:00:01:57) cannot be written. Two strings give EDK2's layout instead: "pv" makes bytes
# 0-3 (00 02 'p' 'v', read as an enterprise number), then 00 0a "HTTPClient" (bytes 4-15).
HTTP_CLIENT_VENDOR_CLASS6 = "pv,HTTPClient"


def _ipv6_values(lab: LabSpec) -> dict[str, object] | None:
    """The template's IPv6 block: address, DHCPv6 range, PXE-over-IPv6 first stages by URL."""
    if lab.ipv6 is None:
        return None
    iface = validate.ipv6_interface(lab.ipv6)
    start, end = validate.ipv6_dynamic_range(iface.network)
    endpoint = lab_endpoint(lab, family=6)
    tftp_host = f"[{iface.ip}]"
    efi = [stage for stage in arch.FIRST_STAGES if stage.pe_machine is not None]  # no BIOS PXEv6
    return {
        "address": str(iface.ip),
        "prefixlen": iface.network.prefixlen,
        "range_start": str(start),
        "range_end": str(end),
        "client_arch_tags": [
            (_client_arch6(code), stage.role) for stage in efi for code in stage.client_arches
        ],
        # one tag per code, only for the log (dnsmasq logs no DHCPv6 client architecture)
        "client_arch_log_tags": [
            (_client_arch6(code), dnsmasqlog.client_arch6_tag(code))
            for code in sorted({c for stage in efi for c in stage.client_arches}
                               | {c for c, _stage in HTTP_BOOT_CLIENT_ARCHES})
        ],
        "first_stages": [(stage.role, f"tftp://{tftp_host}/{stage.tftp_name}") for stage in efi],
        "boot_url": endpoint.boot_url,
        # (dnsmasq tag, option 61 value, the first stage's URL on the HTTP server)
        "http_boot": [
            (
                f"httpboot6-{stage.role}",
                _client_arch6(code),
                endpoint.url(f"/tftp/{stage.tftp_name}"),
            )
            for code, stage in HTTP_BOOT_CLIENT_ARCHES
        ],
        "http_client_vendor_class": HTTP_CLIENT_VENDOR_CLASS6,
    }


@dataclass(frozen=True)
class Reservation:
    mac: str
    ip: str | None
    name: str
    tags: tuple[str, ...] = ()  # dnsmasq tags the reservation sets (set:TAG)
    ipv6: str | None = None


def loader_tag(vm: VMSpec) -> str | None:
    """The dnsmasq tag that picks a machine's first stage: shim under Secure Boot with GRUB,
    GRUB without; None for iPXE (also under Secure Boot, where the firmware refuses it)."""
    if vm.loader != "grub":
        return None
    return SHIM_TAG if vm.secure_boot else GRUB_TAG


def reservations(lab: LabSpec, vms: Sequence[VMSpec]) -> list[Reservation]:
    """Each VM's reservation, validated again; clashes are refused, not left to dnsmasq."""
    iface = validate.ipv4_interface(str(lab.address)) if lab.address is not None else None
    iface6 = validate.ipv6_interface(lab.ipv6) if lab.ipv6 is not None else None
    out: list[Reservation] = []
    seen_mac: dict[str, str] = {}
    seen_ip: dict[str, str] = {}
    for vm in vms:
        name = validate.vm_name(str(vm.name))
        mac = validate.mac(str(vm.mac))
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
        if iface is not None:
            ip = validate.ipv4_in(str(vm.ip), iface.network, f"IP of VM {name}")
            if ip == iface.ip:
                raise ValidationError(
                    f"VM {name} has the provisioner's address {ip}", f"edit {name}'s IP"
                )
        ip6 = None
        if iface6 is not None and vm.ipv6 is not None:
            ip6 = validate.ipv6_in(vm.ipv6, iface6.network, f"IPv6 address of VM {name}")
            if ip6 == iface6.ip:
                raise ValidationError(
                    f"VM {name} has the provisioner's address {ip6}", f"edit {name}'s IPv6"
                )
            if str(ip6) in seen_ip:
                raise ValidationError(
                    f"VMs {seen_ip[str(ip6)]} and {name} have the same IPv6 address {ip6}",
                    "give each VM its own IPv6 address",
                )
            seen_ip[str(ip6)] = name
        if mac in seen_mac:
            raise ValidationError(
                f"VMs {seen_mac[mac]} and {name} have the same MAC {mac}",
                "give each VM its own MAC",
            )
        if ip is not None and str(ip) in seen_ip:
            raise ValidationError(
                f"VMs {seen_ip[str(ip)]} and {name} have the same IP {ip}",
                "give each VM its own IP",
            )
        seen_mac[mac] = name
        if ip is not None:
            seen_ip[str(ip)] = name
        net_tag = arch.net_boot(arch.parse_net_boot(str(vm.net_boot))).dnsmasq_tag
        tags = tuple(t for t in (net_tag, loader_tag(vm)) if t)
        out.append(Reservation(mac=mac, ip=str(ip) if ip is not None else None, name=name,
                               tags=tags, ipv6=str(ip6) if ip6 is not None else None))
    return out


# --- rendering --------------------------------------------------------------------------------


_ENV = render.environment(trim_blocks=True, lstrip_blocks=True)  # values validated above


def render_conf(
    home: LabHome, lab: LabSpec, bridge: str | None = None, ipv6: str | None = None
) -> str:
    """dnsmasq.conf for the lab; ``ipv6`` (the bridge's ULA, see ``network.lab``) turns on
    router advertisements. By default it is read from the network's record."""
    v4 = _lab_values(lab)
    if ipv6 is None:
        ipv6 = netlab.ipv6_address(home)
    if ipv6 is not None:
        ipaddress.IPv6Interface(ipv6)  # a ValueError here is a bug, not user input
    return _ENV.get_template("dnsmasq.conf.j2").render(
        router_advertisements=ipv6 is not None,
        ipv4=v4 is not None,
        ipv6=_ipv6_values(lab),
        dns_upstream=uplink.DNS_FORWARD if lab.uplink else None,
        home_root=_safe_path(home.root.absolute()),
        bridge=_ifname(bridge or home.bridge),
        address=str(v4[0].ip) if v4 else "",
        netmask=str(v4[0].netmask) if v4 else "",
        range_start=v4[1] if v4 else "",
        range_end=v4[2] if v4 else "",
        lease_time=LEASE_TIME,
        lease_file=_safe_path(home.dnsmasq_leases.absolute()),
        hosts_file=_safe_path(home.dhcp_hosts.absolute()),
        client_arch_tags=sorted(CLIENT_ARCH_TAGS.items()),
        first_stages=FIRST_STAGES,
        loader_boots=LOADER_BOOTS,
        loader_tags=(GRUB_TAG, SHIM_TAG),
        boot_url=lab_endpoint(lab).boot_url if v4 else "",  # iPXE's DHCP boot file
        http_vm_tag=HTTP_VM_TAG,
        http_boot=[
            (code, tag, lab_endpoint(lab).url(path)) for code, tag, path in HTTP_BOOT_STAGES
        ] if v4 else [],
        # refused: not an HTTP VM
        no_http_boot_url=lab_endpoint(lab).url("/no-http-boot") if v4 else "",
        tftp_root=_safe_path(home.tftp.absolute()),
        pid_file=_safe_path(home.dnsmasq_pid.absolute()),
        log_file=_safe_path(home.dnsmasq_log.absolute()),
    )


def render_hosts(lab: LabSpec, vms: Sequence[VMSpec]) -> str:
    return _ENV.get_template("dhcp-hosts.j2").render(hosts=reservations(lab, vms))


def _render_lock(home: LabHome) -> contextlib.AbstractContextManager[None]:
    """Serialise renders, so the last file written always reflects the newest VM records."""
    return file_lock(home.render_lock)


def write_configs(home: LabHome, lab: LabSpec | None = None) -> tuple[Path, Path]:
    """Render both files from the lab home's records; nothing is written if any value is bad."""
    with _render_lock(home):
        lab = lab if lab is not None else store.load_lab(home)
        conf = render_conf(home, lab)
        hosts = render_hosts(lab, store.load_vms(home))
        write_atomic(home.dhcp_hosts, hosts)
        write_atomic(home.dnsmasq_conf, conf)
    return home.dnsmasq_conf, home.dhcp_hosts


def argv(home: LabHome) -> list[str]:
    """dnsmasq's command line: in the foreground (the supervisor owns it), our file only."""
    return ["dnsmasq", "--keep-in-foreground", f"--conf-file={home.dnsmasq_conf.absolute()}"]


def is_our_dnsmasq(cmdline: Sequence[str], home: LabHome) -> bool:
    """Whether a process's argv is the dnsmasq of this home (a stale pid is not taken for it)."""
    return (
        bool(cmdline)
        and Path(cmdline[0]).name == "dnsmasq"
        and f"--conf-file={home.dnsmasq_conf.absolute()}" in cmdline
    )


# --- leases ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lease:
    expires: int  # seconds since the epoch; 0 = never
    mac: str
    ip: str
    hostname: str | None
    client_id: str | None

    def as_dict(self) -> dict[str, object]:
        return {
            "expires": self.expires,
            "mac": self.mac,
            "ip": self.ip,
            "hostname": self.hostname,
            "client_id": self.client_id,
        }


def parse_leases(text: str) -> list[Lease]:
    """Parse dnsmasq's lease file (``EXPIRY MAC IP HOSTNAME CLIENT-ID``; ``*`` = none).

    IPv6 entries (after a ``duid`` line) and malformed lines are skipped.
    """
    out: list[Lease] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4 or parts[0] == "duid":
            continue
        try:
            expires = int(parts[0])
            ip = str(ipaddress.IPv4Address(parts[2]))
            mac = validate.mac(parts[1])
        except (ValueError, ValidationError):
            continue
        host = None if parts[3] == "*" else parts[3]
        cid = None if len(parts) < 5 or parts[4] == "*" else parts[4]
        out.append(Lease(expires=expires, mac=mac, ip=ip, hostname=host, client_id=cid))
    return out


def read_leases(home: LabHome) -> list[Lease]:
    try:
        return parse_leases(home.dnsmasq_leases.read_text())
    except OSError:
        return []
