"""The lab file's shape: what a user may write, checked field by field (unknown keys refused).

    name = "ci"                         # the lab's name (default: the file's name)

    [provisioner]
    address = "192.168.105.1/24"
    range = "192.168.105.100,192.168.105.199"   # optional, the DHCP dynamic range
    ipv6 = "fd00:105::/64"              # optional: IPv6 too (the provisioner takes ::1)
    ipv4 = false                        # with ipv6: an IPv6-only lab (no address, no range)

    [[distros]]                         # import a kernel + initrd (paths relative to the file)
    name = "tiny"
    arch = "x86_64"
    kernel = "assets/vmlinuz"
    initrd = "assets/initrd.gz"
    cmdline = "quiet"

    [[machines]]
    name = "node"
    count = 3                           # node-1, node-2, node-3
    arch = "x86_64"
    firmware = "uefi"                   # or "bios"
    distro = "tiny"
    boot = "pxe"                        # or "ipxe" (iPXE from local media, UEFI)
    net_boot = "pxe"                    # or "http" (UEFI HTTP Boot)
    loader = "grub"                     # or "ipxe": the first stage (UEFI; default: distro's)
    secure_boot = true                  # UEFI with Secure Boot enforced (shim, then GRUB)
    ipv6 = "fd00:105::10"               # its DHCPv6 reservation (labs with ipv6; count = 1)
    image = "images/debian.qcow2"       # deploy this image (a path, or a name from image ls)
    memory = 512                        # MiB
    cpus = 1
    cmdline = "pvmlab.marker=up"
    ready = { console = "login:", timeout = 300 }

The JSON Schema for editors (``docs/lab.schema.json``) is generated from these models.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from pvmlab.arch import check_pair
from pvmlab.errors import PvmlabError, ValidationError
from pvmlab.records import validate
from pvmlab.records.models import (
    DEFAULT_CPUS,
    DEFAULT_FIRMWARE,
    DEFAULT_MEMORY_MIB,
    DEFAULT_NET_BOOT,
    Cmdline,
    CPUs,
    DistroName,
    Firmware,
    Interface,
    Interface6,
    IPv6,
    Loader,
    MemoryMiB,
    NetBoot,
    VMName,
    _checked,
)

MAX_COUNT = 4096


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"{value!r} is not a valid regular expression: {exc}") from None
    return value


Regex = Annotated[str, AfterValidator(_regex)]
ArchName = Annotated[str, _checked(validate.arch)]


class KeyProblem(ValueError):
    """A check across keys, blamed on ``key``: the error names that key's line."""

    def __init__(self, key: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.hint = hint


class Decl(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Ready(Decl):
    """What "ready" means for a machine: a console line, then (optionally) an SSH command whose
    output must match, all within a deadline."""

    console: Regex | None = Field(
        default=None, description="Regular expression the serial console must show."
    )
    ssh: str | None = Field(
        default=None, description="A command run over SSH (as root, with the lab key) once the "
        "console condition holds; it must exit 0."
    )
    expect: Regex | None = Field(
        default=None, description="Regular expression the SSH command's output must match."
    )
    timeout: float = Field(
        default=300.0, gt=0, le=86400, description="Seconds from start to ready, at most."
    )

    @model_validator(mode="after")
    def _expect_needs_ssh(self) -> Ready:
        if self.expect is not None and self.ssh is None:
            raise ValueError("'expect' checks the output of 'ssh': give the command too")
        return self

    def describe(self) -> str:
        text = f"console /{self.pattern}/"
        if self.ssh is not None:
            text += f", then ssh {self.ssh!r}"
            if self.expect is not None:
                text += f" printing /{self.expect}/"
        return f"{text} within {self.timeout:g} s"

    @property
    def pattern(self) -> str:
        return self.console if self.console is not None else r"login:"


class Provisioner(Decl):
    address: Interface = Field(
        default="192.168.105.1/24", description="The provisioner's address and prefix."
    )
    range: str | None = Field(
        default=None, description="DHCP dynamic range START,END (default: the upper part)."
    )
    uplink: bool = Field(
        default=False, description="Give the machines outbound access (NAT through pasta)."
    )
    ipv6: Interface6 | None = Field(
        default=None,
        description="IPv6 too: the lab's /64 as PREFIX/64 (the provisioner takes ::1) or "
        "ADDRESS/64 (as `provisioner create --ipv6`).",
    )
    ipv4: bool = Field(
        default=True,
        description="false: an IPv6-only lab (needs ipv6; no address, range or uplink), as "
        "`provisioner create --no-ipv4`.",
    )

    @model_validator(mode="after")
    def _families(self) -> Provisioner:
        if self.ipv6 is not None:
            iface6 = validate.ipv6_interface(self.ipv6)
            start6, end6 = validate.ipv6_dynamic_range(iface6.network)
            if start6 <= iface6.ip <= end6:
                raise KeyProblem(
                    "ipv6",
                    f"the provisioner's IPv6 address {iface6.ip} is inside the DHCPv6 dynamic "
                    f"range {start6}-{end6}; give the prefix alone (it takes ::1)"
                )
        if self.ipv4:
            return self
        if self.ipv6 is None:
            raise KeyProblem(
                "ipv4", "ipv4 = false leaves the lab without any address: give ipv6 too"
            )
        for key in ("address", "range"):
            if key in self.model_fields_set:
                raise KeyProblem(
                    key, f"{key!r} is IPv4, but ipv4 = false makes the lab IPv6-only",
                    f"drop {key} for an IPv6-only lab, or drop ipv4 = false for dual stack",
                )  # fmt: skip
        if self.uplink:
            raise KeyProblem(
                "uplink", "the uplink needs IPv4 (its NAT is IPv4), but ipv4 = false",
                "drop uplink, or drop ipv4 = false for dual stack",
            )  # fmt: skip
        return self


class Distro(Decl):
    """A kernel and initrd: imported from files (paths relative to the lab file), or pulled from
    a catalog entry (``pvmlab distro ls``) with ``pull = METHOD``, verified and cached."""

    name: DistroName
    arch: ArchName
    kernel: str | None = Field(
        default=None, description="Path of the kernel, relative to the lab file."
    )
    initrd: str | None = Field(
        default=None, description="Path of the initrd, relative to the lab file."
    )
    pull: Literal["cloud-image", "netboot", "kernel", "default"] | None = Field(
        default=None,
        description="Pull the catalog entry NAME by this method ('default': the entry's own) "
        "instead of importing files.",
    )
    mirror: str | None = Field(default=None, description="Mirror URL for pull.")
    cmdline: Cmdline | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Distro:
        files = (self.kernel is not None, self.initrd is not None)
        if self.pull is not None and any(files):
            raise ValueError("give either kernel and initrd (import) or pull, not both")
        if self.pull is None and not all(files):
            raise ValueError("give kernel and initrd (files to import), or pull = METHOD")
        if self.mirror is not None and self.pull is None:
            raise ValueError("'mirror' is for pull")
        return self


class Machine(Decl):
    name: VMName = Field(description="The machine's name; with count, the base of node-1..N.")
    count: int = Field(default=1, ge=1, le=MAX_COUNT, description="How many machines to stamp out.")
    arch: ArchName
    firmware: Firmware = DEFAULT_FIRMWARE
    distro: DistroName | None = None
    boot: Literal["pxe", "ipxe"] = "pxe"
    net_boot: NetBoot = Field(
        default=DEFAULT_NET_BOOT,
        description="How the firmware fetches iPXE: pxe (TFTP) or http (UEFI HTTP Boot).",
    )
    loader: Loader | None = Field(
        default=None,
        description="First stage served over TFTP (UEFI): ipxe, or Debian's signed network "
        "grub (default: the distro's loader, else grub with secure_boot, else ipxe).",
    )
    secure_boot: bool = Field(
        default=False,
        description="UEFI firmware with Secure Boot enforced and Microsoft's keys enrolled; "
        "the first stage is then Debian's signed shim, which loads GRUB.",
    )
    ipv6: IPv6 | None = Field(
        default=None,
        description="The machine's DHCPv6 reservation in the lab's /64 (labs with ipv6; "
        "count = 1). Default: the lowest free address.",
    )
    image: str | None = Field(
        default=None,
        description="Deploy this disk image onto the machine's disk (as `vm create --image`): "
        "a path relative to the lab file, or a name from `pvmlab image ls`; user_data is its "
        "cloud-init user-data.",
    )
    memory: MemoryMiB = DEFAULT_MEMORY_MIB
    cpus: CPUs = DEFAULT_CPUS
    cmdline: Cmdline | None = None
    accel: Literal["kvm", "hvf", "tcg"] | None = Field(
        default=None, description="Accelerator (default: chosen as `vm start` chooses it)."
    )
    disk_size: str | None = Field(default=None, description="A qcow2 disk of this size, e.g. 8G.")
    unattended: bool = Field(
        default=False, description="Install unattended with the distro's shipped configuration."
    )
    preseed: str | None = Field(default=None, description="Preseed template (path).")
    autoinstall: str | None = Field(default=None, description="Autoinstall template (path).")
    kickstart: str | None = Field(default=None, description="Kickstart template (path).")
    user_data: str | None = Field(default=None, description="cloud-init user-data template.")
    mirror: str | None = Field(default=None, description="Package mirror URL for installers.")
    proxy: str | None = Field(default=None, description="HTTP proxy URL for installers.")
    ready: Ready = Ready()

    @model_validator(mode="after")
    def _combination(self) -> Machine:
        try:
            check_pair(validate.arch(self.arch), self.firmware)
        except ValidationError as exc:  # its hint names a CLI option: the key is blamed instead
            raise ValueError(exc.problem) from None
        if self.boot == "ipxe" and self.firmware != "uefi":
            raise ValueError("boot = 'ipxe' (iPXE from local media) needs firmware = 'uefi'")
        if self.net_boot == "http" and self.firmware != "uefi":
            raise ValueError("net_boot = 'http' (UEFI HTTP Boot) needs firmware = 'uefi'")
        if self.secure_boot and self.firmware != "uefi":
            raise KeyProblem(
                "secure_boot", "secure_boot = true needs firmware = 'uefi'",
                "use firmware = 'uefi' (the default), or drop secure_boot",
            )  # fmt: skip
        if self.loader == "grub" and self.firmware != "uefi":
            raise KeyProblem("loader", "loader = 'grub' (a UEFI program) needs firmware = 'uefi'")
        if self.secure_boot and self.loader == "ipxe":
            raise KeyProblem(
                "loader",
                "loader = 'ipxe' under secure_boot: the firmware refuses iPXE (it is not "
                "signed); leave loader out (shim, then GRUB)"
            )
        if self.ipv6 is not None and self.count != 1:
            raise KeyProblem("ipv6", "ipv6 is one machine's address: give it only with count = 1")
        if self.image is not None:
            if self.distro is not None:
                raise KeyProblem(
                    "image",
                    "a machine made from an image boots no distro: give image or distro, not both",
                )
            others = [k for k, v in self.install_files().items()
                      if v is not None and k != "user-data"]
            if others or self.unattended:
                raise KeyProblem(
                    "image",
                    "a machine made from an image is configured by cloud-init: give user_data "
                    f"(or nothing), not {others[0] if others else 'unattended'}",
                )
            if not self.image.strip():
                raise KeyProblem(
                    "image", "image is empty: give a path or a name from `pvmlab image ls`"
                )
        given = [k for k, v in self.install_files().items() if v is not None]
        if len(given) + self.unattended > 1:
            raise ValueError(
                "give one install configuration: unattended, preseed, autoinstall, kickstart "
                "or user_data"
            )
        if self.disk_size is not None:
            try:
                validate.disk_size(self.disk_size)
            except PvmlabError as exc:
                raise ValueError(exc.problem) from None
        return self

    def install_files(self) -> dict[str, str | None]:
        """Install kind (as ``vm create`` names it) -> the template path given for it."""
        return {
            "preseed": self.preseed,
            "autoinstall": self.autoinstall,
            "kickstart": self.kickstart,
            "user-data": self.user_data,
        }

    def names(self) -> list[str]:
        if self.count == 1:
            return [self.name]
        return [f"{self.name}-{i}" for i in range(1, self.count + 1)]


class LabFileModel(Decl):
    name: VMName | None = Field(default=None, description="The lab's name (default: file name).")
    provisioner: Provisioner = Provisioner()
    distros: list[Distro] = []
    machines: list[Machine] = Field(default=[], description="The target machines.")


def json_schema() -> dict[str, Any]:
    """The JSON Schema of lab files, as published in docs/lab.schema.json for editors."""
    schema = LabFileModel.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "pvmlab lab file"
    return schema
