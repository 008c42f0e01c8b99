"""Which accelerator a guest runs with: KVM, HVF or TCG, and why.

Order: ``--accel``, else ``PVMLAB_ACCEL``, else KVM when ``/dev/kvm`` opens read-write and the
guest has the host's architecture, HVF on macOS for a same-arch guest, else TCG (emulation,
always available, slower). An explicit choice that cannot work is an error, not a silent
fallback.
"""

from __future__ import annotations

import errno
import os
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pvmlab.errors import StateError, ValidationError

ACCELS = ("kvm", "hvf", "tcg")
_ARCH_ALIASES = {"arm64": "aarch64", "amd64": "x86_64", "x86-64": "x86_64"}


@dataclass(frozen=True)
class Accel:
    name: str
    reason: str

    def __str__(self) -> str:
        return f"accelerator: {self.name} ({self.reason})"


def host_arch(machine: str | None = None) -> str:
    m = (machine or platform.machine()).lower()
    return _ARCH_ALIASES.get(m, m)


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


def parse(value: str, source: str) -> str:
    name = value.strip().lower()
    if name not in ACCELS:
        raise ValidationError(
            f"unknown accelerator {value!r} from {source}", f"choose one of: {', '.join(ACCELS)}"
        )
    return name


def choose(
    guest_arch: str,
    requested: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    host: str | None = None,
    system: str | None = None,
    probe_kvm: Callable[[], tuple[bool, str]] = kvm_usable,
) -> Accel:
    env = os.environ if env is None else env
    host = host_arch(host)
    system = system or platform.system()
    same_arch = guest_arch == host

    explicit: tuple[str, str] | None = None
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
        if name == "hvf" and system != "Darwin":
            raise StateError("HVF exists only on macOS", "use --accel kvm or tcg on Linux")
        return Accel(name, why)

    if not same_arch:
        return Accel("tcg", f"guest {guest_arch} on {host} host")
    if system == "Darwin":
        return Accel("hvf", f"macOS host, guest arch {guest_arch} matches")
    if system == "Linux":
        ok, reason = probe_kvm()
        if ok:
            return Accel("kvm", f"{reason}, guest arch {guest_arch} matches the host")
        return Accel("tcg", reason)
    return Accel("tcg", f"no hardware accelerator known on {system}")
