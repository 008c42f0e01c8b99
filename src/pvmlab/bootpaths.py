"""Every boot protocol path a lab client can take, as one table derived from ``pvmlab.arch``.

A client type is a point on five axes: architecture x firmware x network boot protocol (PXE,
UEFI HTTP Boot) x IP version x Secure Boot. ``boot_paths()`` walks the axes the tables know and
gives, for every client type a firmware can be, one ``BootPath``: how the client identifies
itself to DHCP, the first stage it is handed, how that travels (a TFTP name or a URL of the
lab's HTTP server), whether the lab serves the path today, and which test proves it.
``pvmlab loaders`` prints this table, dnsmasq's configuration serves its served rows.

A new path is a new fact, not new code here:

- a new architecture or first stage: an entry in ``pvmlab.arch`` (``ARCHITECTURES``,
  ``FirstStage.client_arches`` / ``http_client_arches``);
- a new protocol: an entry in ``arch.NET_BOOTS``;
- an IP version the lab serves: ``SERVED_IP_VERSIONS``;
- Secure Boot: a first stage in ``SECURE_FIRST_STAGES`` (the signed shim);
- the proof: an entry in ``PROVEN_BY``.

Rows that are not served say why (``reason``), so the table is honest about the gaps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from pvmlab.arch import (
    AARCH64,
    ARCHITECTURES,
    BIOS,
    HTTP,
    NET_BOOTS,
    PXE,
    SIGNED_GRUBS,
    UEFI,
    X86_64,
    Arch,
    Firmware,
    FirstStage,
    NetBoot,
    firmware,
    net_boot,
)

IpVersion = Literal[4, 6]
IP_VERSIONS: tuple[IpVersion, ...] = (4, 6)

# The IP versions whose DHCP the lab's dnsmasq answers with a first stage.
SERVED_IP_VERSIONS: frozenset[IpVersion] = frozenset({4, 6})


def _shim(arch_name: Arch) -> FirstStage:
    """Debian's signed shim as the first stage of a Secure Boot machine of ``arch_name`` (it
    loads the signed network GRUB from the same TFTP directory: ``arch.SIGNED_GRUBS``)."""
    plain = ARCHITECTURES[arch_name].first_stages["uefi"]
    grub = SIGNED_GRUBS[arch_name]
    return FirstStage(
        role=f"shim-{arch_name}",
        tftp_name=grub.shim_tftp_name,
        client_arches=plain.client_arches,
        pe_machine=plain.pe_machine,
        candidates=(grub.shim_tftp_name,),
        official_path="",
    )


# The first stage a Secure Boot client of an architecture gets: the signed shim, over TFTP
# (PXE over IPv4; `vm create --secure-boot`).
SECURE_FIRST_STAGES: Mapping[Arch, FirstStage] = MappingProxyType(
    {name: _shim(name) for name in SIGNED_GRUBS}
)

# (arch, firmware, protocol, IP version, Secure Boot) -> the test that boots that path to the
# guest's marker with real firmware.
ProofKey = tuple[Arch, Firmware, NetBoot, IpVersion, bool]


def _proofs() -> Mapping[ProofKey, str]:
    x86_64, aarch64 = X86_64.name, AARCH64.name  # the tables' names, typed as mypy checks keys
    uefi, bios, pxe, http = UEFI.name, BIOS.name, PXE.name, HTTP.name
    return MappingProxyType(
        {
            (x86_64, uefi, pxe, 4, False): "tests/integration/test_boot_pxe.py",
            (x86_64, bios, pxe, 4, False): "tests/integration/test_boot_pxe.py",
            (aarch64, uefi, pxe, 4, False): "tests/integration/test_boot_pxe.py",
            (x86_64, uefi, http, 4, False): "tests/integration/test_boot_http.py",
            (aarch64, uefi, http, 4, False): "tests/integration/test_boot_http.py",
            (x86_64, uefi, pxe, 6, False): "tests/integration/test_boot_ipv6.py",
            (x86_64, uefi, http, 6, False): "tests/integration/test_boot_http6.py",
            (aarch64, uefi, http, 6, False): "tests/integration/test_boot_http6.py",
            (x86_64, uefi, pxe, 4, True): "tests/integration/test_boot_grub.py",
            (aarch64, uefi, pxe, 4, True): "tests/integration/test_boot_grub.py (slow)",
        }
    )


PROVEN_BY: Mapping[ProofKey, str] = _proofs()


@dataclass(frozen=True)
class ClientType:
    arch: Arch
    firmware: Firmware
    net_boot: NetBoot
    ip_version: IpVersion
    secure_boot: bool

    @property
    def label(self) -> str:
        sb = " Secure Boot" if self.secure_boot else ""
        return (
            f"{self.arch} {firmware(self.firmware).label}{sb} "
            f"{net_boot(self.net_boot).label} IPv{self.ip_version}"
        )

    @property
    def key(self) -> ProofKey:
        return (self.arch, self.firmware, self.net_boot, self.ip_version, self.secure_boot)


@dataclass(frozen=True)
class BootPath:
    """What a client type is handed, and from where."""

    client: ClientType
    client_arches: tuple[int, ...]  # DHCP client-arch values (option 93; DHCPv6 option 61)
    vendor_class: str  # the option 60 / DHCPv6 vendor class prefix the firmware sends
    first_stage: FirstStage | None  # None: the lab has none for this client
    served: bool
    reason: str | None  # why not served
    proven_by: str | None

    @property
    def transport(self) -> str:
        return net_boot(self.client.net_boot).transport

    def location(self, base_url: str | None) -> str | None:
        """The TFTP name, or the URL (``base_url`` = the lab's HTTP server; None: unknown)."""
        if self.first_stage is None:
            return None
        if self.transport == "tftp":
            return self.first_stage.tftp_name
        path = first_stage_url_path(self.first_stage)
        return path if base_url is None else base_url + path

    def as_dict(self, base_url: str | None = None, tftp_root: Path | None = None) -> dict[str, Any]:
        c = self.client
        file = (
            None
            if self.first_stage is None or tftp_root is None
            else tftp_root / self.first_stage.tftp_name
        )
        return {
            "arch": c.arch,
            "firmware": c.firmware,
            "net_boot": c.net_boot,
            "ip_version": c.ip_version,
            "secure_boot": c.secure_boot,
            "client_arches": list(self.client_arches),
            "vendor_class": self.vendor_class,
            "first_stage": None if self.first_stage is None else self.first_stage.tftp_name,
            "transport": self.transport,
            "location": self.location(base_url),
            "file": None if file is None else str(file),
            "present": None if file is None else file.is_file(),
            "served": self.served,
            "reason": self.reason,
            "proven_by": self.proven_by,
        }


def first_stage_url_path(stage: FirstStage) -> str:
    """The path of a first stage on the lab's HTTP server (the TFTP root is served as /tftp/)."""
    return f"/tftp/{stage.tftp_name}"


def _client_arches(stage: FirstStage, nb: NetBoot) -> tuple[int, ...]:
    return stage.http_client_arches if nb == "http" else stage.client_arches


def _path(client: ClientType) -> BootPath | None:
    """The row of one client type; None when no firmware of that kind exists."""
    a = ARCHITECTURES[client.arch]
    kind = net_boot(client.net_boot)
    if client.firmware not in kind.firmwares:
        return None  # e.g. legacy BIOS has no HTTP Boot client
    if client.secure_boot and client.firmware != "uefi":
        return None  # Secure Boot is a UEFI feature
    plain = a.first_stages[client.firmware]
    arches = _client_arches(plain, client.net_boot)
    if not arches:
        return None
    stage: FirstStage | None = plain
    reason: str | None = None
    if client.secure_boot:
        stage = SECURE_FIRST_STAGES.get(client.arch)
        if stage is None:
            reason = "no signed shim in the lab yet"
        elif client.net_boot != "pxe" or client.ip_version != 4:
            reason = "Secure Boot machines get shim by PXE over IPv4 only"
    if reason is None and client.firmware == "bios" and client.ip_version == 6:
        reason = "legacy BIOS PXE ROMs boot over IPv4 only"
    if reason is None and client.ip_version not in SERVED_IP_VERSIONS:
        reason = f"no IPv{client.ip_version} DHCP in the lab yet"
    return BootPath(
        client=client,
        client_arches=arches,
        vendor_class=kind.vendor_class,
        first_stage=stage,
        served=reason is None,
        reason=reason,
        proven_by=PROVEN_BY.get(client.key),
    )


def boot_paths() -> list[BootPath]:
    """Every client type the tables know, in a stable order (arch, firmware, protocol, IP
    version, Secure Boot)."""
    out: list[BootPath] = []
    for arch_name in sorted(ARCHITECTURES):
        for fw in ARCHITECTURES[arch_name].firmwares:
            for nb in NET_BOOTS:
                for ipv in IP_VERSIONS:
                    for sb in (False, True):
                        row = _path(ClientType(arch_name, fw, nb, ipv, sb))
                        if row is not None:
                            out.append(row)
    return out


def served_http_stages() -> list[tuple[int, FirstStage]]:
    """(client-arch, first stage) for every UEFI HTTP Boot client over IPv4 the lab serves: the
    dnsmasq tags and URLs of ``stack.dnsmasq``."""
    seen: dict[int, FirstStage] = {}
    for row in boot_paths():
        c = row.client
        http4 = c.net_boot == "http" and c.ip_version == 4 and not c.secure_boot
        if row.served and http4 and row.first_stage is not None:
            for code in row.client_arches:
                seen.setdefault(code, row.first_stage)
    return sorted(seen.items())
