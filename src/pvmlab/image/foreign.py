"""Running another architecture's maintainer scripts: qemu-user in a private binfmt_misc.

mmdebstrap runs the packages' maintainer scripts inside the new root, so an arm64 root built on
an x86_64 host needs the kernel to hand arm64 ELF files to ``qemu-aarch64-static``. That is a
binfmt_misc rule. Registering it in the host's binfmt_misc would change how every process on the
host runs foreign binaries, so pvmlab does not: since Linux 6.7 each user namespace can mount a
binfmt_misc of its own, and a rule registered there applies only inside that namespace.

``run_in_userns`` starts ``unshare --user --mount --pid --fork --mount-proc`` around this module,
maps root (and every other id) to itself from the outside (root may write any map; no newuidmap
or /etc/subuid needed), then tells the child to go. The child (``main`` below) mounts its own
binfmt_misc, registers the rule with flag F (the interpreter is opened now, so the chroot need
not contain it) and execs the command (mmdebstrap). Nothing of the host changes.

The rule's magic and mask are qemu-user-static's own (``/usr/lib/binfmt.d/qemu-ARCH.conf``).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from pvmlab import spawn
from pvmlab.arch import Arch, host_arch
from pvmlab.errors import DependencyError, ProcessError, PvmlabError

BINFMT_D = (Path("/usr/lib/binfmt.d"), Path("/lib/binfmt.d"))
BINFMT_MOUNT = Path("/proc/sys/fs/binfmt_misc")
ID_MAP = "0 0 4294967295\n"  # every id to itself: the namespace's root is the real root


def qemu_user_static(arch: Arch) -> Path:
    return Path(f"/usr/bin/qemu-{arch}-static")


def needs_emulation(arch: Arch, host: str | None = None) -> bool:
    return host_arch(host) != arch


PRIVATE_BINFMT_KERNEL = (6, 7)  # the first Linux whose user namespaces mount their own


def kernel_has_private_binfmt(release: str) -> bool:
    """Whether Linux ``release`` (``uname -r``) gives a user namespace a binfmt_misc of its
    own. A release that does not start with a version number is given the benefit of the
    doubt: the build then says at once if the mount fails."""
    match = re.match(r"(\d+)\.(\d+)", release)
    if match is None:
        return True
    return (int(match.group(1)), int(match.group(2))) >= PRIVATE_BINFMT_KERNEL


def register_line(conf_text: str, interpreter: Path) -> str:
    """The binfmt_misc ``register`` line from a binfmt.d rule: its name, magic and mask kept,
    the interpreter replaced by ``interpreter`` and the flags set to F alone (open it now).
    Debian's rule names a ``-binfmt-P`` wrapper with flag P (argv[0] passed on); the static
    binary called by its own name expects the usual argv instead."""
    for raw in conf_text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        sep = line[0]
        fields = line[1:].split(sep)
        if len(fields) != 7:
            raise ValueError(f"not a binfmt_misc rule: {line!r}")
        name, kind, offset, magic, mask, _interp, _flags = fields
        if kind != "M":
            raise ValueError(f"binfmt_misc rule {name!r} is not a magic rule")
        return sep + sep.join((name, kind, offset, magic, mask, str(interpreter), "F"))
    raise ValueError("no binfmt_misc rule found")


def find_rule(arch: Arch) -> str:
    """The register line for ``arch`` (DependencyError without qemu-user-static)."""
    interpreter = qemu_user_static(arch)
    for d in BINFMT_D:
        conf = d / f"qemu-{arch}.conf"
        if conf.is_file() and interpreter.is_file():
            return register_line(conf.read_text(), interpreter)
    raise DependencyError(
        f"building a {arch} image on this host needs {interpreter} and its binfmt rule",
        "install qemu-user-static (scripts/install-system-deps.sh does)",
    )


def _userns(pid: int) -> str:
    return str(Path(f"/proc/{pid}/ns/user").readlink())


@contextlib.contextmanager
def run_in_userns(
    rule: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``argv`` in a new user, mount and PID namespace with its own binfmt_misc holding
    ``rule``. Yields the running child (stderr merged into the pipe ``stdout``)."""
    inner = spawn.python_module("pvmlab.image.foreign", rule, "--", *argv)
    outer = ["unshare", "--user", "--mount", "--pid", "--fork", "--mount-proc", "--kill-child"]
    with spawn.spawn(
        [*outer, *inner],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    ) as proc:
        if proc.stdin is None:
            raise TypeError("the child's input is not a pipe")
        own = _userns(os.getpid())
        for _ in range(1000):  # unshare(2) happens within milliseconds of exec
            if proc.poll() is not None:
                break
            try:
                if _userns(proc.pid) != own:
                    break
            except OSError:
                break
            time.sleep(0.01)
        try:
            Path(f"/proc/{proc.pid}/uid_map").write_text(ID_MAP)
            Path(f"/proc/{proc.pid}/gid_map").write_text(ID_MAP)
        except OSError as exc:
            raise ProcessError(
                f"cannot map ids into the build's user namespace: {exc.strerror or exc}",
                argv=list(argv),
            ) from None
        proc.stdin.write(b"go\n")
        proc.stdin.close()
        yield proc


def main(args: Sequence[str]) -> int:
    """Inside the namespace: wait for the maps, mount binfmt_misc, register, exec argv."""
    if len(args) < 3 or args[1] != "--":
        print("usage: python -m pvmlab.image.foreign RULE -- ARGV...", file=sys.stderr)
        return 2
    rule, argv = args[0], list(args[2:])
    if sys.stdin.buffer.readline() != b"go\n":
        return 1
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    try:
        spawn.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_MOUNT)])
        (BINFMT_MOUNT / "register").write_text(rule)
    except (PvmlabError, OSError) as exc:
        # "E: " makes build_image report this line as the error
        print(
            f"E: cannot register qemu-user in a binfmt_misc of the build's own (needs Linux "
            f"6.7 or later; this is {os.uname().release}): {exc}",
            flush=True,
        )
        return 3
    os.execvp(argv[0], argv)  # noqa: S606 - argv from build_image, no shell
    return 127  # not reached: execvp replaces this process or raises


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
