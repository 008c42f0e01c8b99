"""Starting, stopping, inspecting, repairing and reloading a lab's stack (what the CLI calls).

    stack_health(home)   running / stopped / degraded, with each problem found (the kernel,
                         /proc and the sockets are asked, not a file's memory)
    start_stack(home)    network up, supervisor started in the namespace; returns once it
                         serves (told over a pipe). On a degraded lab it repairs what is
                         missing: namespace, bridge, taps of running VMs, dnsmasq, HTTP
    stop_stack(home)     refuses while VMs run unless asked to stop them first; then the
                         supervisor stopped (SIGTERM, wait, SIGKILL) and the network removed;
                         works after kill -9 of everything and after the state files are lost
    stack_status(home)   state, problems, services, PIDs, addresses, leases, reservations and
                         damaged VM records (a dict, JSON-ready)
    reload_stack(home)   asks the supervisor to re-render the reservations; returns once
                         dnsmasq re-read them; nothing happens when the stack is not running
    require_serving(home)  for `vm start`: an error naming the repair when the lab cannot serve

Processes are found by their command line in /proc (the supervisor of this very home, the
dnsmasq reading this home's configuration) wherever they run, so a supervisor left in a deleted
namespace or an orphaned dnsmasq is found even when every file about them is lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import select
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvmlab import errors, spawn
from pvmlab.errors import DependencyError, ProcessError, PvmlabError, StateError
from pvmlab.home import LabHome, file_lock
from pvmlab.network import lab as netlab
from pvmlab.network import uplink
from pvmlab.network.privilege import effective_caps, missing_caps, require_net_admin
from pvmlab.records import store
from pvmlab.records.models import LabSpec
from pvmlab.stack import dnsmasq
from pvmlab.stack.endpoint import lab_endpoint
from pvmlab.stack.supervisor import (
    READY,
    RELOAD_TIMEOUT,
    served_udp_ports,
)

START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
HTTP_PROBE_TIMEOUT = 3.0
PING_TIMEOUT = 3.0
VM_STOP_TIMEOUT = 10.0
SUPERVISOR_MODULE = "pvmlab.stack.supervisor"
REPAIR = "run `pvmlab provisioner start` to repair the lab"

RUNNING, STOPPED, DEGRADED = "running", "stopped", "degraded"


# --- finding the processes --------------------------------------------------------------------


def _same_home(arg: str, home: LabHome) -> bool:
    return os.path.realpath(arg) == os.path.realpath(home.root)


def is_our_supervisor(pid: int, home: LabHome) -> bool:
    return _is_supervisor_argv(spawn.pid_cmdline(pid), home)


def _is_supervisor_argv(cmd: list[str], home: LabHome) -> bool:
    if SUPERVISOR_MODULE not in cmd or "--home" not in cmd:
        return False
    i = cmd.index("--home")
    return i + 1 < len(cmd) and _same_home(cmd[i + 1], home)


@dataclass(frozen=True)
class StackProcesses:
    """This home's supervisors and dnsmasqs, as /proc lists them (normally one of each)."""

    supervisors: list[int]
    dnsmasqs: list[int]


def _home_owner(home: LabHome) -> int | None:
    try:
        return home.root.stat().st_uid
    except OSError:
        return None


def owned_by_home_owner(pid: int, home: LabHome) -> bool:
    """Whether process ``pid`` runs as the lab home's owner (the stack and the VMs do): a
    process another user started with a look-alike command line is never taken for ours."""
    owner = _home_owner(home)
    try:
        return owner is not None and Path(f"/proc/{pid}").stat().st_uid == owner
    except OSError:
        return False


def find_stack_processes(home: LabHome) -> StackProcesses:
    """Every live supervisor and dnsmasq of this home, whichever namespace they run in."""
    sups: list[int] = []
    dnss: list[int] = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        cmd = spawn.pid_cmdline(pid)
        if not cmd or not spawn.pid_alive(pid) or not owned_by_home_owner(pid, home):
            continue
        if _is_supervisor_argv(cmd, home):
            sups.append(pid)
        elif dnsmasq.is_our_dnsmasq(cmd, home):
            dnss.append(pid)
    return StackProcesses(sorted(sups), sorted(dnss))


def supervisor_pid(home: LabHome) -> int | None:
    """The running supervisor of this home (the oldest when a crash left several)."""
    sups = find_stack_processes(home).supervisors
    return sups[0] if sups else None


def dnsmasq_pid(home: LabHome) -> int | None:
    """The running dnsmasq of this home (the oldest when a crash left several)."""
    dnss = find_stack_processes(home).dnsmasqs
    return dnss[0] if dnss else None


def is_stack_running(home: LabHome) -> bool:
    """A supervisor of this home is alive (see ``stack_health`` for whether it serves)."""
    return supervisor_pid(home) is not None


def _parent_pid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None


def running_vms(home: LabHome) -> dict[str, int]:
    """Name -> QEMU PID of each VM of this home that runs (damaged records included)."""
    from pvmlab.vm import state as vm_state

    found = {}
    for name in store.vm_names(home):
        pid = vm_state.running_pid(home, name)
        if pid is not None and owned_by_home_owner(pid, home):
            found[name] = pid
    return found


def _control_lock(home: LabHome) -> contextlib.AbstractContextManager[None]:
    """One start or stop at a time per home (its own lock: callers may hold ``home.locked``)."""
    return file_lock(home.control_lock)


# --- health -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StackProblem:
    """One thing keeping the lab from serving, with the step that fixes it."""

    component: str  # network, supervisor, dnsmasq, http or tap
    problem: str
    hint: str = REPAIR

    def as_dict(self) -> dict[str, str]:
        return {"component": self.component, "problem": self.problem, "hint": self.hint}


@dataclass
class StackHealth:
    state: str
    problems: list[StackProblem] = field(default_factory=list)
    supervisor: int | None = None
    dnsmasq: int | None = None
    http_ok: bool = False
    vms: dict[str, int] = field(default_factory=dict)
    live: dict[str, Any] = field(default_factory=dict)  # the supervisor's answer to ping

    @property
    def services_broken(self) -> bool:
        """Something other than a VM's tap or the uplink is wrong: the services must be started
        again (a tap is given back, the uplink restarted, on their own)."""
        return any(p.component not in ("tap", "uplink") for p in self.problems)


def _http_answers(netns: str, ip: str, port: int) -> str | None:
    """None when the HTTP server answers a request on the bridge, else what went wrong."""

    def probe() -> bytes:
        host = f"[{ip}]" if ":" in ip else ip
        with socket.create_connection((ip, port), timeout=HTTP_PROBE_TIMEOUT) as conn:
            conn.sendall(b"HEAD /boot.ipxe HTTP/1.0\r\nHost: " + host.encode() + b"\r\n\r\n")
            return conn.recv(64)

    try:
        head = netlab.in_netns_thread(netns, probe)
    except OSError as exc:
        return str(exc.strerror or exc)
    return None if head.startswith(b"HTTP/1.") else f"unexpected answer {head[:20]!r}"


def stack_health(home: LabHome, lab: LabSpec | None = None) -> StackHealth:
    """Ask the kernel, /proc and the sockets whether the lab serves, and what is wrong if not."""
    if lab is None:
        if not home.lab_file.exists():
            return StackHealth(STOPPED)
        lab = store.load_lab(home)
    procs = find_stack_processes(home)
    vms = running_vms(home)
    ns = home.netns
    sup = procs.supervisors[0] if procs.supervisors else None
    dns = procs.dnsmasqs[0] if procs.dnsmasqs else None
    live: dict[str, Any] = {}
    if not (netlab.netns_exists(ns) or procs.supervisors or procs.dnsmasqs or vms):
        return StackHealth(STOPPED)
    if netlab.netns_exists(ns) and missing_caps(effective_caps()):  # setns, ip -n
        raise errors.PrivilegeError(
            "checking a running lab needs root (its namespace and processes are root's)",
            "run it with sudo",
        )
    problems = [StackProblem("network", p.problem, p.hint)
                for p in netlab.inspect_network(home, lab)]
    if sup is None:
        problems.append(StackProblem("supervisor", "the stack supervisor is not running"))
    else:
        if len(procs.supervisors) > 1:
            problems.append(StackProblem(
                "supervisor", f"several supervisors run for this home: {procs.supervisors}"))
        if netlab.netns_exists(ns) and not netlab.process_in_netns(sup, ns):
            problems.append(StackProblem(
                "supervisor",
                f"the supervisor (pid {sup}) runs in a network namespace that is no longer "
                f"{ns} (the namespace was deleted or replaced)",
            ))
        try:
            live = _ask_supervisor(home, {"command": "ping"}, PING_TIMEOUT)
        except errors.PrivilegeError:
            raise
        except PvmlabError as exc:
            problems.append(StackProblem("supervisor", exc.problem))
    for pid in procs.dnsmasqs:
        parent = _parent_pid(pid)
        if parent not in procs.supervisors:
            problems.append(StackProblem(
                "dnsmasq",
                f"dnsmasq (pid {pid}) is an orphan: its supervisor is gone, it may still "
                "answer DHCP",
            ))
    if dns is None:
        problems.append(StackProblem("dnsmasq", "dnsmasq is not running"))
    elif not served_udp_ports(lab) <= _bound_udp_ports(dns):
        problems.append(StackProblem(
            "dnsmasq", f"dnsmasq (pid {dns}) has not bound the DHCP and TFTP ports"))
    http_ok = False
    if netlab.netns_exists(ns) and not any(p.component == "network" for p in problems):
        endpoint = lab_endpoint(lab)
        for host in endpoint.listen_hosts:  # each address of a dual-stack lab
            error = _http_answers(ns, host, endpoint.port)
            if error is not None:
                url = dataclasses.replace(endpoint, target_host=host).url("/")
                problems.append(StackProblem(
                    "http", f"the HTTP server at {url} does not answer: {error}"))
                break
        else:
            http_ok = True
    for name, qemu in sorted(vms.items()):
        tap = netlab.tap_problem(home, name, qemu)
        if tap is not None:
            problems.append(StackProblem("tap", tap.problem, tap.hint))
    if lab.uplink and not uplink.uplink_pids(home):
        problems.append(StackProblem(
            "uplink", f"the lab's uplink ({uplink.PROGRAM}) is not running"))
    return StackHealth(
        DEGRADED if problems else RUNNING, problems, sup, dns, http_ok, vms,
        live if live.get("supervisor_pid") == sup else {},
    )


def _bound_udp_ports(pid: int) -> set[int]:
    from pvmlab.stack.supervisor import bound_udp_ports

    return bound_udp_ports(pid)


def require_serving(home: LabHome) -> None:
    """Raise StateError naming the next step when the lab's services cannot answer a VM.

    A damaged tap of another VM does not stop a new VM from booting, so it is not counted.
    """
    health = stack_health(home)
    if health.state == STOPPED:
        raise StateError(
            "the provisioner stack is not running, so the VM would get no DHCP answer",
            "start it with `pvmlab provisioner start`",
        )
    broken = [p for p in health.problems if p.component not in ("tap", "uplink")]
    if broken:
        raise StateError(
            f"the lab is degraded: {'; '.join(p.problem for p in broken)}",
            "repair it with `pvmlab provisioner start`",
        )


# --- start and repair -------------------------------------------------------------------------


def _preflight(home: LabHome) -> None:
    """Refuse before changing anything when something the stack needs is missing."""
    from pvmlab.assets import ipxe

    for program, package in (("dnsmasq", "dnsmasq-base"), ("ip", "iproute2"),
                             ("setpriv", "util-linux"), ("nsenter", "util-linux")):
        if shutil.which(program) is None:
            raise DependencyError(
                f"{program} is not installed",
                f"install it: `apt-get install {package}` (or run scripts/install-system-deps.sh)",
            )
    missing = [role for role, found in ipxe.find_binaries(home).items() if found is None]
    if missing:
        raise ipxe.missing_error(missing)


def _stop_stack_processes(home: LabHome) -> list[dict[str, Any]]:
    """Stop every supervisor and dnsmasq of this home, wherever they run; say which."""
    procs = find_stack_processes(home)
    stopped = [{"name": "supervisor", "pid": p} for p in procs.supervisors]
    if procs.supervisors:
        spawn.terminate(procs.supervisors, STOP_TIMEOUT)
    left = [p for p in procs.dnsmasqs if spawn.pid_alive(p)]  # usually gone with its supervisor
    if left:
        spawn.terminate(left, STOP_TIMEOUT)
    stopped += [{"name": "dnsmasq", "pid": p} for p in procs.dnsmasqs]
    return stopped


def damaged_records(home: LabHome) -> list[dict[str, str]]:
    """The VM records that cannot be read: name, path, problem and the fix."""
    return [
        {"name": d.name, "path": str(d.path), "problem": d.problem, "hint": d.hint}
        for d in store.scan_vms(home)[1]
    ]


def start_stack(home: LabHome, timeout: float = START_TIMEOUT) -> dict[str, Any]:
    """Bring the lab up, or repair a degraded one; return its status once it serves.

    The answer carries ``already_running``, ``repairs`` (what was found wrong and redone) and
    ``warnings`` (damaged VM records, VMs whose tap cannot be given back).
    """
    require_net_admin("starting the lab")
    home.require()
    lab = store.load_lab(home)
    with _control_lock(home):
        health = stack_health(home, lab)
        warnings = [f"{d['problem']} ({d['hint']})" for d in damaged_records(home)]
        if health.state == RUNNING:
            return {**stack_status(home), "already_running": True, "was": RUNNING,
                    "repairs": [], "warnings": warnings}
        _preflight(home)
        uplink.preflight(lab)
        dnsmasq.write_configs(home, lab)  # refuses bad records before anything is changed
        repairs = [p.problem for p in health.problems if p.component != "tap"]
        restart = health.state == STOPPED or health.services_broken
        if restart:
            for item in _stop_stack_processes(home):
                repairs.append(f"stopped the old {item['name']} (pid {item['pid']})")
        was_up = netlab.netns_exists(home.netns)
        netlab.up(home, lab)
        for name, qemu in sorted(health.vms.items()):
            try:
                done = netlab.restore_tap(home, name, qemu)
            except StateError as exc:
                warnings.append(str(exc))
            else:
                if done:
                    repairs.append(done)
        made_network = not was_up and not health.vms
        # the uplink, when the lab has one; on failure it is stopped and a new network removed
        with uplink.attached(home, lab, undo=netlab.down if made_network else None):
            if restart:
                _launch(home, undo_network=False, timeout=timeout)
    if health.state == STOPPED:
        repairs = []
    return {**stack_status(home), "already_running": False, "was": health.state,
            "repairs": repairs, "warnings": warnings}


def _error_from_record(raw: dict[str, Any]) -> PvmlabError:
    """Rebuild an error the supervisor sent as a record, with its class."""
    cls = getattr(errors, str(raw.get("type")), None)
    if not (isinstance(cls, type) and issubclass(cls, PvmlabError)):
        cls = ProcessError
    return cls(str(raw.get("problem", "the stack failed to start")), raw.get("hint"))


def _await_ready(read_fd: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Block on the readiness pipe until the supervisor says READY, sends an error, or dies."""
    deadline = time.monotonic() + timeout
    got = b""
    while b"\n" not in got:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ProcessError(
                f"the stack did not become ready within {timeout:.0f} s",
                "see `pvmlab provisioner logs --service supervisor`",
            )
        readable, _, _ = select.select([read_fd], [], [], left)
        if not readable:
            continue
        chunk = os.read(read_fd, 4096)
        if not chunk:  # every write end closed: the supervisor is gone without a word
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(2)
            raise ProcessError(
                f"the stack supervisor exited with code {proc.returncode} while starting",
                "see `pvmlab provisioner logs --service supervisor`",
            )
        got += chunk
    line = got.split(b"\n", 1)[0].decode(errors="replace").strip()
    if line == READY:
        return
    try:
        raw = json.loads(line)
    except ValueError:
        raw = {"problem": f"the stack supervisor said {line!r} while starting"}
    raise _error_from_record(raw if isinstance(raw, dict) else {})


def _launch(home: LabHome, *, undo_network: bool, timeout: float) -> None:
    home.stack_state.unlink(missing_ok=True)
    read_fd, write_fd = os.pipe()
    try:
        try:
            proc = spawn.start_python_module(
                SUPERVISOR_MODULE, "--home", str(home.root.absolute()),
                "--ready-fd", str(write_fd),
                netns=home.netns,
                log_file=home.supervisor_log,
                pass_fds=(write_fd,),
            )  # fmt: skip
        finally:
            os.close(write_fd)  # the supervisor holds the only write end now
        try:
            _await_ready(read_fd, proc, timeout)
        except BaseException:
            # Undo what this call did: the supervisor, and the network if it made it.
            spawn.terminate([proc.pid], STOP_TIMEOUT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1)
            if undo_network:
                netlab.down(home)
            raise
    finally:
        os.close(read_fd)


# --- stop -------------------------------------------------------------------------------------


def stop_stack(
    home: LabHome,
    *,
    stop_vms: bool = False,
    say: Callable[[str], None] = lambda _msg: None,
) -> dict[str, Any]:
    """Stop the stack and remove the lab network; return what was stopped.

    Running VMs would lose their network (and the namespace's processes are stopped with it),
    so they make this refuse, naming them, unless ``stop_vms``: then each is stopped first
    through the VM stop path (ACPI power button, then quit, then kill).
    """
    require_net_admin("stopping the lab")
    with _control_lock(home):
        vms = running_vms(home)
        if vms and not stop_vms:
            names = sorted(vms)
            raise StateError(
                f"VMs still run in this lab: {', '.join(names)}",
                f"stop them first (`pvmlab vm stop {names[0]}`"
                f"{' and the others' if len(names) > 1 else ''}) or stop them with the lab: "
                "`pvmlab provisioner stop --force`",
            )
        stopped_vms = []
        if vms:
            from pvmlab.vm import runtime

            for name in sorted(vms):  # the VM stop path works from the name alone
                say(f"stopping VM {name} (pid {vms[name]})")
                how = runtime.stop_vm(home, name, timeout=VM_STOP_TIMEOUT, say=say)
                stopped_vms.append({"name": name, "pid": vms[name], "how": how})
        stopped = _stop_stack_processes(home)
        stopped += [{"name": "uplink", "pid": pid} for pid in uplink.stop(home)]
        stragglers = netlab.down(home)
        for path in (home.stack_state, home.supervisor_pid, home.dnsmasq_pid,
                     home.supervisor_socket):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return {"stopped": stopped, "stopped_vms": stopped_vms, "stragglers": stragglers}


# --- status -----------------------------------------------------------------------------------


def stack_status(home: LabHome) -> dict[str, Any]:
    """Everything a user or a script wants to know about the stack (JSON-ready)."""
    lab = store.load_lab(home) if home.lab_file.exists() else None
    health = stack_health(home, lab)
    live = health.live  # what the running supervisor itself says ({} when it does not answer)
    running = health.state == RUNNING
    sup, dns = health.supervisor, health.dnsmasq
    vms, damaged = store.scan_vms(home)
    return {
        "home": str(home.root),
        "state": health.state,
        "running": running,
        "problems": [p.as_dict() for p in health.problems],
        "netns": home.netns,
        "bridge": home.bridge,
        "network_up": netlab.is_up(home),
        "address": lab.address if lab is not None else None,
        "dhcp_range": [lab.dhcp_start, lab.dhcp_end] if lab is not None and lab.has_ipv4
        else None,
        "ipv6": lab.ipv6 if lab is not None else None,
        "dhcpv6_range": [str(a) for a in lab.ipv6_dhcp_range]
        if lab is not None and lab.has_ipv6 else None,
        "started": live.get("started"),
        "services": [
            {"name": "supervisor", "pid": sup, "running": sup is not None},
            {
                "name": "dnsmasq",
                "pid": dns,
                "running": dns is not None,
                "restarts": live.get("dnsmasq_restarts", 0),
                "serves": ["dhcp", "tftp"],
            },
            {
                "name": "http",
                "pid": sup,
                "running": health.http_ok,
                "url": lab_endpoint(lab).url("/") if lab is not None else None,
                "url6": lab_endpoint(lab, family=6).url("/")
                if lab is not None and lab.has_ipv6 else None,
                "boot_url": lab_endpoint(lab).boot_url if lab is not None else None,
            },
        ],
        "running_vms": [{"name": n, "pid": p} for n, p in sorted(health.vms.items())],
        "tftp_root": str(home.tftp),
        "leases": [lease.as_dict() for lease in dnsmasq.read_leases(home)],
        "reservations": [  # "ipv6" only for the VMs of a lab with an IPv6 prefix
            {"name": v.name, "mac": v.mac, "ip": v.ip, **({"ipv6": v.ipv6} if v.ipv6 else {})}
            for v in vms
        ],
        "damaged_records": [
            {"name": d.name, "path": str(d.path), "problem": d.problem, "hint": d.hint}
            for d in damaged
        ],
        "uplink": uplink.status(home, lab),
    }


# --- reload -----------------------------------------------------------------------------------


def _ask_supervisor(home: LabHome, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Send one request on the supervisor's control socket and return its answer."""
    path = home.supervisor_socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(str(path))
            conn.sendall(json.dumps(request).encode() + b"\n")
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                answer += chunk
    except PermissionError:
        raise errors.PrivilegeError(
            "talking to the stack supervisor needs root (its control socket is root's)",
            "run it with sudo",
        ) from None
    except OSError as exc:
        raise StateError(
            f"the stack supervisor does not answer on {path}: {exc.strerror or exc}",
            REPAIR,
        ) from None
    try:
        raw = json.loads(answer)
    except ValueError:
        raise StateError(f"the stack supervisor gave no answer on {path}", REPAIR) from None
    if not isinstance(raw, dict) or raw.get("ok") is not True:
        raise _error_from_record(raw if isinstance(raw, dict) else {})
    return raw


def reload_stack(home: LabHome) -> bool:
    """Have the supervisor re-render the reservations; return once dnsmasq re-read them.

    Returns False (and does nothing) when the stack is not running. Damaged VM records are
    left out of the reservations (``damaged_records`` names them).
    """
    if not is_stack_running(home):
        return False
    _ask_supervisor(home, {"command": "reload"}, RELOAD_TIMEOUT + 5.0)
    return True
