"""Whether this process may change network namespaces and interfaces.

The check reads the effective capability set of the process (``CapEff`` in
``/proc/self/status``), not the uid: root without CAP_NET_ADMIN (a restricted container) cannot
build the lab either, and a non-root process that was granted the capabilities can.
"""

from __future__ import annotations

from pathlib import Path

from pvmlab.errors import PrivilegeError

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21  # `ip netns add` mounts the namespace under /run/netns

_NAMES = {CAP_NET_ADMIN: "CAP_NET_ADMIN", CAP_SYS_ADMIN: "CAP_SYS_ADMIN"}


def effective_caps(status: str | None = None) -> int:
    """The effective capability mask of this process (0 when it cannot be read)."""
    if status is None:
        try:
            status = Path("/proc/self/status").read_text()
        except OSError:
            return 0
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split(":", 1)[1].strip(), 16)
    return 0


def missing_caps(mask: int) -> list[str]:
    return [name for bit, name in _NAMES.items() if not mask & (1 << bit)]


def require_net_admin(what: str = "this command", status: str | None = None) -> None:
    """Raise PrivilegeError unless the process may create namespaces and interfaces."""
    missing = missing_caps(effective_caps(status))
    if missing:
        raise PrivilegeError(
            f"{what} needs root or CAP_NET_ADMIN (missing: {', '.join(missing)})",
            "run it with sudo, e.g. `sudo pvmlab provisioner start`",
        )
