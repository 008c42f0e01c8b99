"""The Linux lab network: a namespace, a bridge holding the provisioner address, taps for VMs.

    up(home, lab)            namespace (loopback up) + bridge with the address, up; idempotent
    ensure_tap(home, vm)     a tap for that VM in the namespace, enslaved to the bridge, up
    remove_tap(home, vm)
    down(home)               everything above removed again, also after a crash
    is_up(home)
    inspect_network(home, lab)   what the kernel says is wrong with the namespace and bridge
    restore_tap(home, vm, pid)   a running VM's tap back on the bridge (moved out of a lost
                                 namespace when QEMU still holds it there)
    in_netns_thread(ns, fn)      run ``fn`` in a thread that joined the namespace (a probe)

Everything lives inside the namespace ``home.netns``; nothing is created in the host's own
network namespace, so the lab can never answer DHCP on the user's LAN. Each object made is
recorded in ``stack/network.json`` as it is made; ``down`` removes what the record names and,
because the record may be lost (crash, reboot), also whatever carries this home's names:
the namespace ``home.netns``, the bridge ``home.bridge`` and taps named ``home.tap(...)``
inside it. It never touches an object that is not named from this home.

All changes go through iproute2's ``ip`` (run by ``pvmlab.spawn``).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import ipaddress
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pvmlab import spawn
from pvmlab.errors import StateError
from pvmlab.home import TAP_PREFIX, LabHome, file_lock, read_json, write_json
from pvmlab.network.privilege import require_net_admin
from pvmlab.records import validate
from pvmlab.records.models import LabSpec

__all__ = [
    "NetworkProblem",
    "down",
    "ensure_tap",
    "in_netns_thread",
    "inspect_network",
    "ipv6_address",
    "is_up",
    "link_names",
    "netns_exists",
    "netns_pids",
    "process_in_netns",
    "remove_tap",
    "require_net_admin",
    "restore_tap",
    "ula_interface",
    "up",
]

log = logging.getLogger(__name__)

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


# --- the record of what was made ------------------------------------------------------------


def _record_path(home: LabHome) -> Path:
    return home.network_record


def _locked(home: LabHome) -> contextlib.AbstractContextManager[None]:
    """Serialise network changes of one home (its own lock: callers may hold ``home.locked``)."""
    return file_lock(home.network_lock)


def _load_record(home: LabHome) -> dict[str, Any]:
    return read_json(_record_path(home))


def _save_record(home: LabHome, record: dict[str, Any]) -> None:
    write_json(_record_path(home), record)


def _note(home: LabHome, record: dict[str, Any], key: str, value: str) -> None:
    items = record.setdefault(key, [])
    if value not in items:
        items.append(value)
        _save_record(home, record)


# --- queries --------------------------------------------------------------------------------


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def ip_json(netns: str, *args: str) -> list[dict[str, Any]]:
    """The objects ``ip -n NETNS -j ARGS`` prints ([] when it fails or prints nothing usable)."""
    proc = spawn.run(["ip", "-n", netns, "-j", *args], check=False)
    if proc.returncode != 0:
        return []
    try:
        data = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        return []
    return [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []


def link_names(netns: str) -> list[str]:
    """Names of the network interfaces inside ``netns`` ([] when it does not exist)."""
    if not netns_exists(netns):
        return []
    return [str(link["ifname"]) for link in ip_json(netns, "link", "show") if "ifname" in link]


def _link(netns: str, name: str) -> dict[str, Any] | None:
    links = ip_json(netns, "addr", "show", "dev", name)
    return links[0] if links else None


def _addresses(link: dict[str, Any], family: str = "inet") -> list[str]:
    return [
        f"{a['local']}/{a['prefixlen']}"
        for a in link.get("addr_info", [])
        if a.get("family") == family
    ]


def is_up(home: LabHome) -> bool:
    """The namespace exists and its bridge is administratively up."""
    if not netns_exists(home.netns):
        return False
    link = _link(home.netns, home.bridge)
    return link is not None and "UP" in link.get("flags", [])


def _netns_identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def process_in_netns(pid: int, netns: str) -> bool:
    """Whether process ``pid`` lives in the namespace named ``netns`` (compared by inode, so a
    process left in a deleted namespace, or in an older one of the same name, is told apart)."""
    mine = _netns_identity(Path(f"/proc/{pid}/ns/net"))
    return mine is not None and mine == _netns_identity(NETNS_DIR / netns)


@dataclass(frozen=True)
class NetworkProblem:
    """One thing wrong with the lab network, as the kernel reports it."""

    problem: str
    hint: str = "run `pvmlab provisioner start` to repair the lab"


def inspect_network(home: LabHome, lab: LabSpec) -> list[NetworkProblem]:
    """What is wrong with the namespace and the bridge ([] when both are as ``up`` leaves them)."""
    ns, br = home.netns, home.bridge
    if not netns_exists(ns):
        return [NetworkProblem(f"network namespace {ns} is missing")]
    link = _link(ns, br)
    if link is None:
        return [NetworkProblem(f"bridge {br} is missing from namespace {ns}")]
    problems = []
    if "UP" not in link.get("flags", []):
        problems.append(NetworkProblem(f"bridge {br} is down"))
    if lab.address is not None and lab.address not in _addresses(link):
        problems.append(NetworkProblem(f"bridge {br} does not hold the lab address {lab.address}"))
    if lab.ipv6 is not None and lab.ipv6 not in _addresses(link, "inet6"):
        problems.append(NetworkProblem(f"bridge {br} does not hold the lab address {lab.ipv6}"))
    return problems


def tap_link(home: LabHome, vm_name: str) -> dict[str, Any] | None:
    """The VM's tap in the lab namespace as ``ip -j link`` shows it (None when it is not there)."""
    if not netns_exists(home.netns):
        return None
    links = ip_json(home.netns, "link", "show", "dev", home.tap(vm_name))
    return links[0] if links else None


def tap_problem(home: LabHome, vm_name: str, qemu_pid: int) -> NetworkProblem | None:
    """What keeps a running VM's tap from carrying its traffic (None when nothing does)."""
    tap = home.tap(vm_name)
    link = tap_link(home, vm_name)
    if link is None:
        if _tap_in_process_netns(home, vm_name, qemu_pid):
            return NetworkProblem(f"tap {tap} of running VM {vm_name} is outside namespace "
                                  f"{home.netns} (left in a deleted namespace)")
        return NetworkProblem(
            f"tap {tap} of running VM {vm_name} is gone",
            f"restart the VM: `pvmlab vm stop {vm_name}` then `pvmlab vm start {vm_name}`",
        )
    if link.get("master") != home.bridge:
        return NetworkProblem(f"tap {tap} of running VM {vm_name} is not on bridge {home.bridge}")
    if "UP" not in link.get("flags", []):
        return NetworkProblem(f"tap {tap} of running VM {vm_name} is down")
    return None


def _tap_in_process_netns(home: LabHome, vm_name: str, pid: int) -> bool:
    """Whether the tap sits in the namespace of process ``pid`` (QEMU keeps a deleted one)."""
    if process_in_netns(pid, home.netns):
        return False
    proc = spawn.run(
        ["nsenter", f"--net=/proc/{pid}/ns/net", "ip", "link", "show", "dev", home.tap(vm_name)],
        check=False,
    )
    return proc.returncode == 0


def restore_tap(home: LabHome, vm_name: str, qemu_pid: int) -> str | None:
    """Put a running VM's tap back on the bridge; return what was done (None: nothing needed).

    A tap left in a deleted namespace (its QEMU keeps that namespace alive) is moved into the
    lab's namespace: QEMU keeps its file descriptor, so the guest's link comes back. A tap
    that is gone cannot be given back to QEMU: StateError naming the VM restart.
    """
    validate.vm_name(vm_name)
    problem = tap_problem(home, vm_name, qemu_pid)
    if problem is None:
        return None
    require_net_admin("repairing a VM's link to the lab network")
    ns, tap = home.netns, home.tap(vm_name)
    with _locked(home):
        done = "re-attached"
        if tap_link(home, vm_name) is None:
            if not _tap_in_process_netns(home, vm_name, qemu_pid):
                raise StateError(problem.problem, problem.hint)
            spawn.run(["nsenter", f"--net=/proc/{qemu_pid}/ns/net",
                       "ip", "link", "set", "dev", tap, "netns", ns])
            done = "moved back into the lab namespace and re-attached"
        spawn.run(["ip", "-n", ns, "link", "set", tap, "master", home.bridge])
        spawn.run(["ip", "-n", ns, "link", "set", tap, "up"])
        record = _load_record(home)
        _note(home, record, "taps", tap)
    log.info("tap %s of VM %s %s", tap, vm_name, done)
    return f"tap {tap} of VM {vm_name} {done}"


def in_netns_thread(netns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a short-lived thread that joined namespace ``netns``; return its result.

    Only that thread changes namespace (``setns``), so a socket ``fn`` opens lives in the
    lab's network while the caller stays where it is. Exceptions of ``fn`` are raised here.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            fd = os.open(NETNS_DIR / netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
            finally:
                os.close(fd)
            outcome["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]


def netns_pids(netns: str) -> list[int]:
    """PIDs of the processes whose network namespace is ``netns``."""
    if not netns_exists(netns):
        return []
    proc = spawn.run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


# --- changes --------------------------------------------------------------------------------


def up(home: LabHome, lab: LabSpec) -> None:
    """Create the namespace and the bridge with the provisioner address (idempotent)."""
    require_net_admin("building the lab network")
    ns, br = home.netns, home.bridge
    with _locked(home):
        record = _load_record(home)
        record.setdefault("netns", ns)
        record.setdefault("bridge", br)
        if not netns_exists(ns):
            spawn.run(["ip", "netns", "add", ns])
            _note(home, record, "created", "netns")
            log.info("created network namespace %s", ns)
        spawn.run(["ip", "-n", ns, "link", "set", "lo", "up"])
        link = _link(ns, br)
        if link is None:
            spawn.run(["ip", "-n", ns, "link", "add", br, "type", "bridge", "stp_state", "0",
                       "forward_delay", "0"])
            _note(home, record, "created", "bridge")
            log.info("created bridge %s in %s", br, ns)
            link = _link(ns, br)
        want = [lab.address] if lab.address is not None else []
        if link is not None and _addresses(link) != want:
            spawn.run(["ip", "-n", ns, "-4", "addr", "flush", "dev", br])
            for address in want:
                spawn.run(["ip", "-n", ns, "addr", "add", address, "dev", br])
        spawn.run(["ip", "-n", ns, "link", "set", br, "up"])
        record["ipv6"] = _add_ipv6(home, lab.ipv6) if lab.ipv6 is not None else _add_ula(home)
        _save_record(home, record)


def ula_interface(home: LabHome) -> ipaddress.IPv6Interface:
    """The bridge's IPv6 unique local address: ``fdXX:XXXX:XXXX::1/64`` from the lab id."""
    digest = hashlib.sha256(f"pvmlab-ula/{home.lab_id}".encode()).digest()[:5]
    prefix = int.from_bytes(b"\xfd" + digest + b"\x00\x00", "big") << 64
    return ipaddress.IPv6Interface((prefix | 1, 64))


def _add_ula(home: LabHome) -> str | None:
    """Give the bridge its ULA so dnsmasq can send router advertisements (best effort).

    iPXE finishes configuring a NIC only when IPv6 autoconfiguration is done too; without a
    router advertisement that takes a ~3.5 s timeout on every iPXE boot. A host with IPv6
    disabled simply goes without (returns None).
    """
    ula = ula_interface(home)
    proc = spawn.run(
        ["ip", "-n", home.netns, "addr", "replace", str(ula), "dev", home.bridge, "nodad"],
        check=False,
    )
    if proc.returncode != 0:
        log.info("no IPv6 on the lab bridge (%s): iPXE will wait for its IPv6 timeout",
                 proc.stderr.strip())
        return None
    return str(ula)


def _add_ipv6(home: LabHome, address: str) -> str:
    """Give the bridge the lab's own IPv6 address (``provisioner create --ipv6``).

    ``nodad``: with duplicate address detection the address stays "tentative" for about a
    second after it is added, and dnsmasq and the HTTP server, started right after, cannot
    bind to a tentative address (EADDRNOTAVAIL). The bridge is the lab's own link, created a
    moment ago: nobody else can hold the address.
    """
    spawn.run(["ip", "-n", home.netns, "addr", "replace", address, "dev", home.bridge, "nodad"])
    return address


def ipv6_address(home: LabHome) -> str | None:
    """The bridge's IPv6 address as recorded by ``up`` (None when IPv6 is unavailable)."""
    value = _load_record(home).get("ipv6")
    return value if isinstance(value, str) else None


def ensure_tap(home: LabHome, vm_name: str) -> str:
    """A tap for ``vm_name`` in the lab namespace, enslaved to the bridge and up (idempotent)."""
    validate.vm_name(vm_name)
    require_net_admin("attaching a VM to the lab network")
    if not is_up(home):
        raise StateError(
            "the lab network is not up", "start it with `pvmlab provisioner start`"
        )
    ns, tap = home.netns, home.tap(vm_name)
    with _locked(home):
        record = _load_record(home)
        if _link(ns, tap) is None:
            spawn.run(["ip", "-n", ns, "tuntap", "add", "dev", tap, "mode", "tap"])
            log.info("created tap %s for VM %s", tap, vm_name)
        _note(home, record, "taps", tap)
        spawn.run(["ip", "-n", ns, "link", "set", tap, "master", home.bridge])
        spawn.run(["ip", "-n", ns, "link", "set", tap, "up"])
    return tap


def remove_tap(home: LabHome, vm_name: str) -> None:
    """Remove the VM's tap (nothing happens when it is not there)."""
    validate.vm_name(vm_name)
    ns, tap = home.netns, home.tap(vm_name)
    with _locked(home):
        if netns_exists(ns) and _link(ns, tap) is not None:
            require_net_admin("detaching a VM from the lab network")
            spawn.run(["ip", "-n", ns, "link", "del", tap])
        record = _load_record(home)
        if tap in record.get("taps", []):
            record["taps"].remove(tap)
            _save_record(home, record)


def _stop_stragglers(netns: str, grace: float = 5.0) -> list[int]:
    """Stop processes still living in the lab namespace (a crashed stack, a leftover VM).

    A namespace with processes in it outlives ``ip netns del``; they belong to this lab
    (nothing else is ever started inside it), so they are stopped: SIGTERM, then SIGKILL.
    """
    pids = [p for p in netns_pids(netns) if p != os.getpid()]
    if not pids:
        return []
    log.warning("stopping processes left in %s: %s", netns, pids)
    spawn.terminate(pids, grace)
    return pids


def down(home: LabHome) -> list[int]:
    """Remove the taps, the bridge and the namespace of this home; return PIDs it had to stop.

    Works from the names alone when the record is gone, and does nothing when nothing is there.
    """
    ns = home.netns
    with _locked(home):
        record = _load_record(home)
        if netns_exists(ns):
            require_net_admin("removing the lab network")
            stopped = _stop_stragglers(ns)
            taps = set(record.get("taps", []))
            taps.update(n for n in link_names(ns) if n.startswith(TAP_PREFIX))
            for name in sorted(taps):
                spawn.run(["ip", "-n", ns, "link", "del", name], check=False)
            spawn.run(["ip", "-n", ns, "link", "del", home.bridge], check=False)
            spawn.run(["ip", "netns", "del", ns])
            log.info("removed network namespace %s", ns)
        else:
            stopped = []
        with contextlib.suppress(FileNotFoundError):
            _record_path(home).unlink()
    return stopped
