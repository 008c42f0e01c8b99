"""Which accelerator a guest runs with: KVM, HVF or TCG, and why.

Order: ``--accel``, else ``PVMLAB_ACCEL``, else KVM when ``/dev/kvm`` opens read-write, the
guest has the host's architecture and a test guest ran under KVM on this host
(``pvmlab.qemu.kvmprobe``, once per boot), HVF on macOS for a same-arch guest, else TCG
(emulation, always available, slower). An explicit choice that cannot work is an error, not a
silent fallback; an explicit KVM whose test guest failed is used, with a warning.
"""

from __future__ import annotations

import errno
import os
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pvmlab.arch import Arch, host_arch_name
from pvmlab.errors import PvmlabError, StateError, ValidationError
from pvmlab.qemu import kvmprobe
from pvmlab.qemu.argv import ACCEL_NAMES as ACCELS
from pvmlab.qemu.argv import AccelName


@dataclass(frozen=True)
class Accel:
    name: AccelName
    reason: str
    warning: str | None = None

    def __str__(self) -> str:
        text = f"accelerator: {self.name} ({self.reason})"
        return f"{text}; warning: {self.warning}" if self.warning else text


def host_arch(machine: str | None = None) -> str:
    """The host's architecture as ``pvmlab.arch`` names it (unknown ones as uname says)."""
    return host_arch_name(machine)


def kvm_usable(device: str = "/dev/kvm") -> tuple[bool, str]:
    """Whether KVM can be opened, and a reason fit for a message."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False, f"{device} does not exist (no KVM module or nested virtualisation off)"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return False, f"no permission to open {device} (join the kvm group)"
        return False, f"cannot open {device}: {exc.strerror}"
    os.close(fd)
    return True, f"{device} is usable"


def parse(value: str, source: str) -> AccelName:
    name = value.strip().lower()
    for accel in ACCELS:
        if name == accel:
            return accel
    raise ValidationError(
        f"unknown accelerator {value!r} from {source}", f"choose one of: {', '.join(ACCELS)}"
    )


def _test_kvm(
    test_kvm: Callable[[Arch], kvmprobe.Verdict], guest_arch: Arch
) -> tuple[bool, str]:
    """(whether KVM ran the test guest, why); a probe that could not run counts as failed."""
    try:
        result = test_kvm(guest_arch)
    except PvmlabError as exc:
        return False, f"the test guest could not run: {exc.problem}"
    when = " (tested earlier in this boot of the host)" if result.cached else ""
    return result.works, result.reason + when


def choose(
    guest_arch: Arch,
    requested: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    host: str | None = None,
    system: str | None = None,
    probe_kvm: Callable[[], tuple[bool, str]] = kvm_usable,
    test_kvm: Callable[[Arch], kvmprobe.Verdict] = kvmprobe.verdict,
) -> Accel:
    """The accelerator for a ``guest_arch`` guest, and why. ``probe_kvm`` checks the device,
    ``test_kvm`` runs (or recalls) the test guest under KVM."""
    env = os.environ if env is None else env
    host = host_arch(host)
    system = system or platform.system()
    same_arch = guest_arch == host

    explicit: tuple[AccelName, str] | None = None
    if requested:
        explicit = (parse(requested, "--accel"), "asked for with --accel")
    elif env.get("PVMLAB_ACCEL"):
        explicit = (parse(env["PVMLAB_ACCEL"], "PVMLAB_ACCEL"), "set by PVMLAB_ACCEL")

    if explicit is not None:
        name, why = explicit
        if name in ("kvm", "hvf") and not same_arch:
            raise StateError(
                f"{name} cannot run a {guest_arch} guest on this {host} host",
                "use --accel tcg (emulation) for a foreign architecture",
            )
        if name == "kvm":
            if system != "Linux":
                raise StateError("KVM exists only on Linux", "use --accel hvf on macOS or tcg")
            ok, reason = probe_kvm()
            if not ok:
                raise StateError(f"KVM is not usable: {reason}", "use --accel tcg")
            works, reason = _test_kvm(test_kvm, guest_arch)
            if not works:
                return Accel(name, why, warning=f"KVM failed a test guest on this host: {reason}")
        if name == "hvf" and system != "Darwin":
            raise StateError("HVF exists only on macOS", "use --accel kvm or tcg on Linux")
        return Accel(name, why)

    if not same_arch:
        return Accel("tcg", f"guest {guest_arch} on {host} host")
    if system == "Darwin":
        return Accel("hvf", f"macOS host, guest arch {guest_arch} matches")
    if system == "Linux":
        ok, reason = probe_kvm()
        if not ok:
            return Accel("tcg", reason)
        works, tested = _test_kvm(test_kvm, guest_arch)
        if not works:
            return Accel("tcg", f"KVM is present but failed a test guest: {tested}; using TCG")
        return Accel("kvm", f"{reason}, guest arch {guest_arch} matches the host, {tested}")
    return Accel("tcg", f"no hardware accelerator known on {system}")
