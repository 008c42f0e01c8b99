"""Dependency checks for ``pvmlab setup``: is everything the lab drives present and usable?

Each check yields a ``Check``: what was looked for, whether it is there (with version, path or
source), and when it is not, the command that installs it on this platform (apt package names on
Debian/Ubuntu, Homebrew on macOS). Checks marked ``required=False`` (KVM, busybox for the tests,
debugfs for cloud images) are reported but do not fail setup: without KVM the lab runs under TCG,
only slower; without debugfs kernels can still be imported as files or pulled as netboot files.
The KVM check runs the same test guest as the automatic accelerator choice (and shares its
verdict for this boot of the host): KVM counts only when a guest really runs under it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import platform
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pvmlab import spawn
from pvmlab.arch import ARCHITECTURES, BIOS, EFI_ARM64, UEFI, Arch, architecture, host_arch
from pvmlab.errors import PvmlabError
from pvmlab.home import LabHome

KVM_GET_API_VERSION = 0xAE00  # _IO(KVMIO, 0x00)
SEABIOS_FILES = ("bios-256k.bin", "bios.bin")
SEABIOS_DIRS = (Path("/usr/share/seabios"), Path("/usr/share/qemu"), Path("/usr/local/share/qemu"))
DEPS_SCRIPT = "scripts/install-system-deps.sh"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str  # what was found (version, path, source), or what is wrong
    fix: str | None = None  # how to install or repair it, when not ok
    required: bool = True
    data: dict[str, Any] = field(default_factory=dict)  # extra facts for --json

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- install hints ----------------------------------------------------------------------------


def _os_release() -> dict[str, str]:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip().strip('"')
    return out


def package_family() -> str:
    """'apt' (Debian/Ubuntu), 'brew' (macOS) or 'other'."""
    if sys.platform == "darwin":
        return "brew"
    release = _os_release()
    ids = {release.get("ID", ""), *release.get("ID_LIKE", "").split()}
    return "apt" if ids & {"debian", "ubuntu"} else "other"


def install_hint(apt: str | None, brew: str | None = None, note: str | None = None) -> str:
    family = package_family()
    if family == "apt" and apt:
        hint = f"sudo apt-get install {apt}"
    elif family == "brew" and brew:
        hint = f"brew install {brew}"
    elif family == "brew":
        hint = "not available on macOS"
    else:
        hint = f"install your distribution's equivalent of the Debian package {apt}"
    return f"{hint}; {note}" if note else hint


# --- programs ---------------------------------------------------------------------------------

# program, version argv, Debian package, Homebrew formula, required
PROGRAMS: tuple[tuple[str, tuple[str, ...], str, str | None, bool], ...] = (
    *((a.qemu_binary, ("--version",), a.qemu_package, "qemu", True)
      for a in ARCHITECTURES.values()),
    ("qemu-img", ("--version",), "qemu-utils", "qemu", True),
    ("dnsmasq", ("--version",), "dnsmasq-base", "dnsmasq", True),
    ("ip", ("-V",), "iproute2", None, True),
    ("busybox", ("--help",), "busybox-static", None, False),
)


_VERSION = re.compile(r"(\d+\.\d+(?:\.\d+)*)")


def program_version(argv: list[str]) -> str:
    """The first dotted version number a program prints about itself ("?" when none)."""
    try:
        proc = spawn.run(argv, check=False, timeout=20)
    except PvmlabError:
        return "?"
    text = (proc.stdout or "") + (proc.stderr or "")
    first = text.strip().splitlines()[0] if text.strip() else ""
    match = _VERSION.search(first)
    return match.group(1) if match else "?"


def check_program(name: str, version_args: tuple[str, ...], apt: str, brew: str | None,
                  required: bool) -> Check:
    path = shutil.which(name)
    what = name if required else f"{name} (tests)"
    if path is None:
        return Check(what, False, f"{name} not found on PATH", install_hint(apt, brew),
                     required=required)
    version = program_version([path, *version_args])
    return Check(what, True, f"{version} {path}", required=required,
                 data={"path": path, "version": version})


def check_debugfs() -> Check:
    """e2fsprogs' debugfs: how `distro import --from-image` and cloud-image pulls read ext4."""
    from pvmlab.assets.extfs import debugfs_path

    name = "debugfs (cloud images)"
    try:
        path = debugfs_path()  # also finds /sbin and Homebrew's keg-only e2fsprogs
    except PvmlabError:
        return Check(name, False, "debugfs not found: kernels cannot be taken out of disk images",
                     install_hint("e2fsprogs", "e2fsprogs"), required=False)
    version = program_version([path, "-V"])
    return Check(name, True, f"{version} {path}", required=False,
                 data={"path": path, "version": version})


# programs of optional features: (program, version argv, Debian package, what it is for)
FEATURE_PROGRAMS: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    ("pasta", ("--version",), "passt", "--uplink"),
    ("nft", ("--version",), "nftables", "--uplink"),
    ("ssh", ("-V",), "openssh-client", "vm ssh/cp"),  # with ssh-keygen for the lab key
    ("mkfs.vfat", ("--help",), "dosfstools", "vm create --image"),  # the cloud-init seed
    ("mcopy", ("--version",), "mtools", "vm create --image"),
)
IMAGE_BUILD = "image build"


def _feature_programs() -> dict[str, tuple[tuple[str, ...], str, list[str]]]:
    """Each optional program once, with every feature that runs it: the table above, then
    `image build`'s programs (``pvmlab.image.tools``, the list it checks itself)."""
    from pvmlab.image import tools

    out: dict[str, tuple[tuple[str, ...], str, list[str]]] = {}
    for name, version_args, apt, feature in FEATURE_PROGRAMS:
        out.setdefault(name, (version_args, apt, []))[2].append(feature)
    for tool in tools.TOOLS:
        out.setdefault(tool.program, (tool.version_args, tool.package, []))[2].append(IMAGE_BUILD)
    return out


def check_feature_programs() -> Iterator[Check]:
    """Optional programs, each named with the features that need it."""
    for name, (version_args, apt, features) in _feature_programs().items():
        found = check_program(name, version_args, apt, None, False)
        yield replace(found, name=f"{name} ({', '.join(features)})")


def check_image_foreign(arch: Arch) -> Check:
    """``image build --arch ARCH`` for an architecture the host does not run: qemu-user-static
    and its binfmt rule (``pvmlab.image.foreign``), registered in a binfmt_misc of the build's
    own, which needs Linux 6.7 or later."""
    from pvmlab.image import foreign, tools

    name = f"qemu-{arch}-static ({IMAGE_BUILD} --arch {arch})"
    hint = install_hint(tools.QEMU_USER_PACKAGE, note=f"or {DEPS_SCRIPT} installs all")
    try:
        foreign.find_rule(arch)
    except PvmlabError as exc:
        return Check(name, False, exc.problem, hint, required=False)
    path = foreign.qemu_user_static(arch)
    release = platform.release()
    if not foreign.kernel_has_private_binfmt(release):
        return Check(
            name, False,
            f"{path} is there, but Linux {release} has no binfmt_misc per user namespace "
            "(6.7 or later): another arch's package scripts cannot run",
            f"build {arch} images on a host running Linux 6.7 or later, or on an {arch} host",
            required=False,
        )
    version = program_version([str(path), "--version"])
    return Check(name, True, f"{version} {path}", required=False,
                 data={"path": str(path), "version": version})


# --- firmware -----------------------------------------------------------------------------------


def check_uefi(arch: Arch) -> Check:
    name = f"UEFI firmware {arch}"
    hint = install_hint(architecture(arch).uefi_package, "qemu")
    from pvmlab.qemu.firmware import find_uefi

    try:
        fw = find_uefi(arch, architecture(arch).machine(UEFI.name))
    except PvmlabError as exc:
        return Check(name, False, exc.problem, hint if exc.hint is None else f"{hint}; {exc.hint}")
    code, vars_template = Path(fw.code), Path(fw.vars_template)
    return Check(
        name, True, f"{code} (vars {vars_template.name})",
        data={"code": str(code), "vars_template": str(vars_template),
              "descriptor": str(fw.descriptor)},
    )


def qemu_data_dirs() -> list[Path]:
    """Where QEMU looks for its ROMs (``-L help``), then the usual places."""
    dirs: list[Path] = []
    bios_arch = next(a for a in ARCHITECTURES.values() if BIOS.name in a.machines)
    qemu = shutil.which(bios_arch.qemu_binary)
    if qemu is not None:
        try:
            proc = spawn.run([qemu, "-L", "help"], check=False, timeout=20)
            dirs = [Path(line.strip()) for line in proc.stdout.splitlines() if line.strip()]
        except PvmlabError:
            dirs = []
    return [*dirs, *SEABIOS_DIRS]


def check_seabios() -> Check:
    for folder in qemu_data_dirs():
        for filename in SEABIOS_FILES:
            candidate = folder / filename
            if candidate.is_file():
                real = candidate.resolve()
                return Check("SeaBIOS (legacy BIOS)", True, str(real), data={"path": str(real)})
    return Check(
        "SeaBIOS (legacy BIOS)", False,
        f"none of {', '.join(SEABIOS_FILES)} in QEMU's data directories",
        install_hint("seabios", "qemu"),
    )


def check_ipxe(home: LabHome) -> list[Check]:
    other = "or name a directory / download the official builds: pvmlab distro ipxe --help"
    hint_any = install_hint("ipxe", None, note=other)
    hint_arm = install_hint("ipxe", None, note=f"Debian 12 lacks the arm64 build: {DEPS_SCRIPT} "
                            f"fetches Debian 13's ipxe into /usr/local/lib/ipxe; {other}")
    from pvmlab.assets import ipxe

    try:
        found = ipxe.find_binaries(home)
    except PvmlabError as exc:
        return [Check("iPXE binaries", False, exc.problem, exc.hint or hint_any)]
    checks: list[Check] = []
    for role, binary in found.items():
        if binary is None:
            name = f"iPXE {role}"
            hint = hint_arm if role == EFI_ARM64.role else hint_any
            checks.append(Check(name, False, "no binary found", hint))
            continue
        checks.append(Check(
            f"iPXE {binary.tftp_name}", True,
            f"{binary.path} ({binary.source}) sha256 {binary.sha256[:12]}…",
            data={"role": role, "tftp_name": binary.tftp_name, "path": str(binary.path),
                  "source": binary.source, "sha256": binary.sha256},
        ))
    return checks


# --- privileges and devices ---------------------------------------------------------------------


def check_privileges() -> Check:
    name = "root or CAP_NET_ADMIN"
    from pvmlab.network.privilege import effective_caps, missing_caps

    missing = missing_caps(effective_caps())
    if not missing:
        who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()} with capabilities"
        return Check(name, True, f"{who}: may build the lab network")
    return Check(name, False, f"missing {', '.join(missing)}: the lab network cannot be built",
                 "run pvmlab with sudo (the lab network needs root)")


def _open_device(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_CLOEXEC)


def check_kvm(device: str = "/dev/kvm") -> Check:
    name = f"{device} (acceleration)"
    try:
        fd = _open_device(device)
    except OSError as exc:
        reasons = {
            errno.ENOENT: (f"no {device}: the kvm module is not loaded or the CPU has no "
                           "virtualization (nested virtualization off?)",
                           "load kvm_intel or kvm_amd, or enable virtualization in the firmware"),
            errno.EACCES: ("permission denied",
                           "add your user to the kvm group: sudo usermod -aG kvm $USER"),
            errno.EPERM: ("operation not permitted", "run as root or join the kvm group"),
            errno.ENXIO: (f"no KVM device behind {device}",
                          "load kvm_intel or kvm_amd (modprobe)"),
            errno.ENODEV: (f"no KVM device behind {device}",
                           "load kvm_intel or kvm_amd (modprobe)"),
        }
        detail, hint = reasons.get(exc.errno or 0, (f"cannot open: {exc.strerror}", None))
        return Check(name, False, f"{detail}; VMs run under TCG (slower)", hint, required=False)
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as exc:
        return Check(name, False, f"opens but KVM_GET_API_VERSION fails: {exc.strerror}",
                     None, required=False)
    finally:
        os.close(fd)
    return Check(name, True, f"opens, KVM API {version} (host {platform.machine()})",
                 required=False, data={"api_version": version})


def check_kvm_guest(arch: Arch | None = None) -> Check:
    """Whether KVM really runs a guest here: ``pvmlab.qemu.kvmprobe``'s verdict for this boot,
    the one ``vm start`` goes by when it chooses the accelerator."""
    from pvmlab.qemu import kvmprobe

    arch = arch or host_arch()
    name = "KVM test guest"
    if arch is None:
        return Check(name, False, "no guest architecture matches this host; VMs run under TCG",
                     None, required=False)
    try:
        verdict = kvmprobe.verdict(arch)
    except PvmlabError as exc:
        return Check(name, False, f"could not run: {exc.problem}", exc.hint, required=False)
    when = " (earlier in this boot)" if verdict.cached else f" ({verdict.seconds:.2f} s)"
    data = {"verdict": verdict.as_dict()}
    if verdict.works:
        return Check(name, True, f"{arch}: {verdict.reason}{when}; VMs use KVM",
                     required=False, data=data)
    return Check(
        name, False,
        f"{arch}: KVM is present but failed a test guest: {verdict.reason}; VMs run under TCG",
        f"KVM on this host (often nested) cannot run guests; `--accel kvm` forces it anyway; "
        f"delete {kvmprobe.CACHE_DIR}/kvm-{arch}.json to test again",
        required=False, data=data,
    )


def check_tun(device: str = "/dev/net/tun") -> Check:
    name = f"{device} (VM NICs)"
    try:
        fd = _open_device(device)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return Check(name, False, "missing: the tun module is not loaded",
                         "sudo modprobe tun")
        if exc.errno in (errno.EACCES, errno.EPERM):
            return Check(name, False, "permission denied", "run pvmlab with sudo")
        return Check(name, False, f"cannot open: {exc.strerror}", "sudo modprobe tun")
    os.close(fd)
    return Check(name, True, "usable")


def check_hvf() -> Check:
    """macOS: Hypervisor.framework support (``sysctl kern.hv_support``)."""
    name = "Hypervisor.framework (acceleration)"
    try:
        proc = spawn.run(["sysctl", "-n", "kern.hv_support"], check=False, timeout=20)
    except PvmlabError as exc:
        return Check(name, False, f"cannot ask sysctl: {exc.problem}", None, required=False)
    if proc.stdout.strip() == "1":
        return Check(name, True, "supported", required=False)
    return Check(name, False, "not supported on this Mac; VMs run under TCG (slower)", None,
                 required=False)


# --- all together -------------------------------------------------------------------------------


def _iter_checks(home: LabHome) -> Iterator[Check]:
    for name, version_args, apt, brew, required in PROGRAMS:
        if name == "ip" and sys.platform == "darwin":
            continue
        yield check_program(name, version_args, apt, brew, required)
    yield check_debugfs()
    yield from check_feature_programs()
    if sys.platform.startswith("linux"):
        from pvmlab.image import foreign

        for arch in ARCHITECTURES:
            if foreign.needs_emulation(arch):
                yield check_image_foreign(arch)
    for arch in ARCHITECTURES:
        yield check_uefi(arch)
    yield check_seabios()
    yield from check_ipxe(home)
    if sys.platform.startswith("linux"):
        yield check_privileges()
        kvm = check_kvm()
        yield kvm
        if kvm.ok:
            yield check_kvm_guest()
        yield check_tun()
    elif sys.platform == "darwin":
        yield check_hvf()


def run_checks(home: LabHome) -> list[Check]:
    return list(_iter_checks(home))


def all_required_ok(checks: list[Check]) -> bool:
    return all(c.ok for c in checks if c.required)
