"""The lab's records, as stored in the lab home (JSON, written atomically).

    lab.json            LabSpec: the provisioner's address and DHCP range
    vms/NAME.json       VMSpec: one target VM
    images/D/A/distro.json  DistroAssets: a kernel + initrd for distro D, arch A

Values are validated when a command receives them (``pvmlab.records.validate``); the models check
them again when a file is read back, so a hand-edited file cannot smuggle bad values in.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic import ValidationError as PydanticError

from pvmlab.arch import DEFAULT_FIRMWARE as DEFAULT_FIRMWARE
from pvmlab.arch import DEFAULT_LOADER as DEFAULT_LOADER
from pvmlab.arch import DEFAULT_NET_BOOT as DEFAULT_NET_BOOT
from pvmlab.arch import Arch as Arch
from pvmlab.arch import Firmware as Firmware
from pvmlab.arch import Loader as Loader
from pvmlab.arch import NetBoot as NetBoot
from pvmlab.errors import PvmlabError, ValidationError
from pvmlab.records import validate

# A VM's defaults, in one place: `vm create`'s options, the record and QEMU's config use these
# (and DEFAULT_FIRMWARE, from the firmware table).
DEFAULT_MEMORY_MIB = 1024
DEFAULT_CPUS = 1


def utc_now() -> str:
    """Now, as the lab's records write times: ISO 8601, UTC, whole seconds."""
    return datetime.now(UTC).isoformat(timespec="seconds")


V = TypeVar("V")
R = TypeVar("R")


def _inline(exc: PvmlabError) -> str:
    """An error as a clause inside another message (which brings its own "hint:")."""
    return f"{exc.problem} ({exc.hint})" if exc.hint else exc.problem


def _check(fn: Callable[[V], R], value: V) -> R:
    """``fn(value)``, its ValidationError turned into the ValueError pydantic reports."""
    try:
        return fn(value)
    except ValidationError as exc:
        raise ValueError(_inline(exc)) from None


def _ipv4(value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ValueError(f"invalid IPv4 address {value!r}") from None


def _ipv6(value: str) -> str:
    try:
        return str(ipaddress.IPv6Address(value))
    except ValueError:
        raise ValueError(f"invalid IPv6 address {value!r}") from None


def _checked(fn: Callable[[V], R]) -> AfterValidator:
    """A pydantic check that runs ``fn`` (a ``pvmlab.records.validate`` function) on the value."""
    return AfterValidator(lambda value: _check(fn, value))


# Field types: the values of every record pass the same edge checks again when read back.
VMName = Annotated[str, _checked(validate.vm_name)]
DistroName = Annotated[str, _checked(validate.distro_name)]
MAC = Annotated[str, _checked(validate.mac)]
IPv4 = Annotated[str, AfterValidator(_ipv4)]
Cmdline = Annotated[str, _checked(validate.cmdline)]
FileName = Annotated[str, _checked(validate.file_name)]
SHA256 = Annotated[str, _checked(validate.sha256)]
MemoryMiB = Annotated[int, _checked(validate.memory_mib)]
CPUs = Annotated[int, _checked(validate.cpus)]
Interface = Annotated[str, _checked(lambda value: str(validate.ipv4_interface(value)))]
IPv6 = Annotated[str, AfterValidator(_ipv6)]
Interface6 = Annotated[str, _checked(lambda value: str(validate.ipv6_interface(value)))]

InstallKind = Literal["preseed", "autoinstall", "kickstart", "user-data"]
INSTALL_KINDS: tuple[InstallKind, ...] = ("preseed", "autoinstall", "kickstart", "user-data")
# A mirror or proxy URL goes into installer files (preseed lines, YAML, kickstart options):
# http(s), a host, an optional port and a plain path; nothing that could end a value.
_HTTP_URL = re.compile(r"https?://[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?(/[A-Za-z0-9._~/+-]*)?")


def http_url(value: str) -> str:
    if not _HTTP_URL.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a plain http(s) URL (scheme, host, optional port and path)"
        )
    return value


HttpURL = Annotated[str, AfterValidator(http_url)]


def first_problem(exc: Exception) -> str:
    """One line saying what is wrong with a record: the first field pydantic refused and why
    (not its "1 validation error for VMSpec" headline), else the exception's first line."""
    if isinstance(exc, PydanticError) and exc.errors():
        errors = exc.errors()
        where = ".".join(str(part) for part in errors[0]["loc"]) or "the record"
        msg = errors[0]["msg"].removeprefix("Value error, ")
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return f"{where}: {msg}{more}"
    if isinstance(exc, PvmlabError):
        return _inline(exc)
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _family_of(address: str | None, problem: str, hint: str) -> str:
    """A lab's address of one IP family, or the error saying the lab has none."""
    if address is None:
        raise ValidationError(problem, hint)
    return address


class LabSpec(Record):
    """The lab network: IPv4 (``address`` and its dynamic range), IPv6 (``ipv6``: the
    provisioner's address in a /64), or both. ``address`` None is an IPv6-only lab."""

    address: Interface | None = "192.168.105.1/24"
    dhcp_start: IPv4 | None = None
    dhcp_end: IPv4 | None = None
    ipv6: Interface6 | None = None
    uplink: bool = False  # outbound access for the targets (pvmlab.network.uplink)
    created: str = Field(default_factory=utc_now)

    @model_validator(mode="after")
    def _range_in_subnet(self) -> LabSpec:
        if self.address is None:
            if self.ipv6 is None:
                raise ValueError("the lab has neither an IPv4 address nor an IPv6 prefix")
            if self.dhcp_start is not None or self.dhcp_end is not None:
                raise ValueError("an IPv6-only lab has no IPv4 DHCP range")
            if self.uplink:
                raise ValueError("the uplink needs IPv4 (its NAT is IPv4 only)")
        else:
            if self.dhcp_start is None or self.dhcp_end is None:
                raise ValueError("an IPv4 lab needs its DHCP range (dhcp_start, dhcp_end)")
            _check(lambda r: validate.dhcp_range(r, self.iface),
                   f"{self.dhcp_start},{self.dhcp_end}")
        if self.ipv6 is not None and self.in_ipv6_dynamic_range(self.iface6.ip):
            start, end = self.ipv6_dhcp_range
            raise ValueError(
                f"the provisioner's IPv6 address {self.iface6.ip} is inside the DHCPv6 dynamic "
                f"range {start}-{end}"
            )
        return self

    @property
    def has_ipv4(self) -> bool:
        return self.address is not None

    @property
    def has_ipv6(self) -> bool:
        return self.ipv6 is not None

    @property
    def iface(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(_family_of(
            self.address, "this lab is IPv6-only: it has no IPv4 address",
            "define the lab with `provisioner create --ip CIDR` to use IPv4",
        ))  # fmt: skip

    @property
    def ip(self) -> ipaddress.IPv4Address:
        return self.iface.ip

    @property
    def network(self) -> ipaddress.IPv4Network:
        return self.iface.network

    @property
    def dhcp_range(self) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
        return ipaddress.IPv4Address(self.dhcp_start), ipaddress.IPv4Address(self.dhcp_end)

    def in_dynamic_range(self, addr: ipaddress.IPv4Address) -> bool:
        start, end = self.dhcp_range
        return start <= addr <= end

    @property
    def iface6(self) -> ipaddress.IPv6Interface:
        return ipaddress.IPv6Interface(_family_of(
            self.ipv6, "this lab has no IPv6 prefix",
            "define the lab with `provisioner create --ipv6 PREFIX/64` to use IPv6",
        ))  # fmt: skip

    @property
    def ipv6_dhcp_range(self) -> tuple[ipaddress.IPv6Address, ipaddress.IPv6Address]:
        return validate.ipv6_dynamic_range(self.iface6.network)

    def in_ipv6_dynamic_range(self, addr: ipaddress.IPv6Address) -> bool:
        start, end = self.ipv6_dhcp_range
        return start <= addr <= end

    @property
    def primary_ip(self) -> str:
        """The address targets reach the provisioner at: IPv4 when the lab has it, else IPv6."""
        return str(self.ip) if self.has_ipv4 else str(self.iface6.ip)


class VMSpec(Record):
    name: VMName
    arch: Arch
    firmware: Firmware = DEFAULT_FIRMWARE
    net_boot: NetBoot = DEFAULT_NET_BOOT  # how its firmware fetches the first stage (pxe, http)
    mac: MAC
    ip: IPv4 | None = None  # None: the lab is IPv6-only
    ipv6: IPv6 | None = None  # its DHCPv6 reservation (labs with an IPv6 prefix)
    distro: DistroName | None = None
    cmdline: Cmdline | None = None
    memory_mib: MemoryMiB = DEFAULT_MEMORY_MIB
    cpus: CPUs = DEFAULT_CPUS
    disk_bytes: int | None = None
    created: str = Field(default_factory=utc_now)
    # Unattended install (pvmlab.stack.installcfg): what the installer is given over HTTP, the
    # user's template file it was copied from (None: the shipped default), mirror and proxy.
    install: InstallKind | None = None
    install_template: str | None = None
    mirror: HttpURL | None = None
    proxy: HttpURL | None = None
    # The first stage it is served (pvmlab.arch, the loader axis) and whether its firmware
    # enforces Secure Boot (Microsoft keys enrolled; the first stage is then Debian's shim).
    loader: Loader = DEFAULT_LOADER
    secure_boot: bool = False
    # Image deployment (pvmlab.deploy): the image the disk is written from (the path given at
    # create), the SHA-256 and size of its raw form (LabHome.deploy_image).
    image: str | None = None
    image_sha256: SHA256 | None = None
    image_bytes: int | None = None

    @model_validator(mode="after")
    def _has_an_address(self) -> VMSpec:
        if self.ip is None and self.ipv6 is None:
            raise ValueError(f"VM {self.name} has neither an IPv4 nor an IPv6 address")
        return self

    @property
    def address(self) -> str:
        """Where the host reaches the VM (SSH, logs): its IPv4 address, else its IPv6 one."""
        return self.ip if self.ip is not None else str(self.ipv6)


class DistroAssets(Record):
    """A kernel and initrd ready to serve, under images/NAME/ARCH/."""

    name: DistroName
    arch: Arch
    kernel: FileName = "vmlinuz"
    initrd: FileName = "initrd"
    kernel_sha256: SHA256
    initrd_sha256: SHA256
    kernel_size: int
    initrd_size: int
    cmdline: Cmdline = ""
    source: str = "import"  # import | cloud-image | netboot
    version: str | None = None
    origin: str | None = None  # where the files came from (path or URL)
    added: str = Field(default_factory=utc_now)
    loader: Loader | None = None  # the first stage its machines get unless `vm create` says
