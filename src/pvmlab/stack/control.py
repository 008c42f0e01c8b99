"""Starting, stopping, inspecting and reloading a lab's stack (the functions the CLI calls).

    start(home)     network up, supervisor started in the namespace; returns once it serves
    stop(home)      supervisor stopped (SIGTERM, wait, SIGKILL), then the network removed;
                    works after kill -9 of everything and after the state files are lost
    status(home)    services, PIDs, addresses, names, leases, reservations (a dict, JSON-ready)
    reload(home)    reservations re-rendered and re-read by dnsmasq before it returns;
                    nothing happens when the stack is not running
    is_running(home)

A PID read from a file is only taken for ours when ``/proc/PID/cmdline`` says so: the
supervisor of this very home, or the dnsmasq reading this home's configuration.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pvmlab import errors, spawn
from pvmlab.errors import DependencyError, ProcessError, PvmlabError, StateError
from pvmlab.home import LabHome, file_lock, read_json
from pvmlab.network import lab as netlab
from pvmlab.network.privilege import require_net_admin
from pvmlab.records import store
from pvmlab.stack import dnsmasq
from pvmlab.stack.endpoint import lab_endpoint
from pvmlab.stack.supervisor import error_path, pid_file, state_path

START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
RELOAD_TIMEOUT = 3.0
SUPERVISOR_MODULE = "pvmlab.stack.supervisor"


# --- reading the state ------------------------------------------------------------------------


def read_state(home: LabHome) -> dict[str, Any]:
    return read_json(state_path(home))


def _same_home(arg: str, home: LabHome) -> bool:
    return os.path.realpath(arg) == os.path.realpath(home.root)


def is_our_supervisor(pid: int, home: LabHome) -> bool:
    cmd = spawn.pid_cmdline(pid)
    if SUPERVISOR_MODULE not in cmd or "--home" not in cmd:
        return False
    i = cmd.index("--home")
    return i + 1 < len(cmd) and _same_home(cmd[i + 1], home)


def _pid(state: dict[str, Any], key: str) -> int | None:
    value = state.get(key)
    return value if isinstance(value, int) and value > 0 else None


def _first_ours(candidates: list[int | None], ours: Callable[[int], bool]) -> int | None:
    return next((pid for pid in candidates if pid is not None and ours(pid)), None)


def supervisor_pid(home: LabHome) -> int | None:
    """The running supervisor of this home, from state.json or the pid file."""
    return _first_ours(
        [_pid(read_state(home), "supervisor_pid"), spawn.read_pid_file(pid_file(home))],
        lambda pid: is_our_supervisor(pid, home),
    )


def dnsmasq_pid(home: LabHome) -> int | None:
    """The running dnsmasq of this home, from state.json or dnsmasq's own pid file."""
    return _first_ours(
        [_pid(read_state(home), "dnsmasq_pid"), spawn.read_pid_file(dnsmasq.pid_path(home))],
        lambda pid: dnsmasq.is_our_dnsmasq(spawn.pid_cmdline(pid), home),
    )


def is_running(home: LabHome) -> bool:
    return supervisor_pid(home) is not None


def _control_lock(home: LabHome) -> contextlib.AbstractContextManager[None]:
    """One start or stop at a time per home (its own lock: callers may hold ``home.locked``)."""
    return file_lock(home.stack / ".control.lock")


def _stop_orphans(home: LabHome) -> list[int]:
    """Stop supervisors and dnsmasqs of this home left in its namespace by a crash.

    Other processes in the namespace (running VMs) are left alone.
    """
    stopped = []
    for pid in netlab.netns_pids(home.netns):
        if is_our_supervisor(pid, home) or dnsmasq.is_our_dnsmasq(spawn.pid_cmdline(pid), home):
            spawn.terminate([pid], STOP_TIMEOUT)
            stopped.append(pid)
    return stopped


# --- start ------------------------------------------------------------------------------------


def _preflight(home: LabHome) -> None:
    """Refuse before changing anything when something the stack needs is missing."""
    from pvmlab.assets import ipxe

    if shutil.which("dnsmasq") is None:
        raise DependencyError(
            "dnsmasq is not installed",
            "install it: `apt-get install dnsmasq-base` (or run scripts/install-system-deps.sh)",
        )
    if shutil.which("ip") is None:
        raise DependencyError(
            "iproute2 (`ip`) is not installed", "install it: `apt-get install iproute2`"
        )
    missing = [role for role, found in ipxe.find_binaries(home).items() if found is None]
    if missing:
        raise ipxe.missing_error(missing)


def _start_error(home: LabHome) -> PvmlabError | None:
    raw = read_json(error_path(home))
    if not raw:
        return None
    cls = getattr(errors, str(raw.get("type")), None)
    if not (isinstance(cls, type) and issubclass(cls, PvmlabError)):
        cls = ProcessError
    return cls(str(raw.get("problem", "the stack failed to start")), raw.get("hint"))


def start(home: LabHome, timeout: float = START_TIMEOUT) -> dict[str, Any]:
    """Bring the lab up and return its status once DHCP, TFTP and HTTP are served."""
    require_net_admin("starting the lab")
    home.require()
    lab = store.load_lab(home)
    with _control_lock(home):
        if is_running(home):
            return status(home)
        _preflight(home)
        dnsmasq.write_configs(home, lab)  # refuses bad records before anything is created
        was_up = netlab.is_up(home)
        if was_up:
            _stop_orphans(home)
        netlab.up(home, lab)
        return _launch(home, was_up, timeout)


def _launch(home: LabHome, was_up: bool, timeout: float) -> dict[str, Any]:
    for stale in (state_path(home), error_path(home)):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    proc = spawn.start_detached(
        [sys.executable, "-m", SUPERVISOR_MODULE, "--home", str(home.root.absolute())],
        netns=home.netns,
        log_file=home.logs / "supervisor.log",
    )
    deadline = time.monotonic() + timeout
    failure: PvmlabError | None = None
    while True:
        if read_state(home).get("supervisor_pid") == proc.pid:
            return status(home)
        if proc.poll() is not None:
            failure = _start_error(home) or ProcessError(
                f"the stack supervisor exited with code {proc.returncode} while starting",
                "see `pvmlab provisioner logs --service supervisor`",
            )
            break
        if time.monotonic() > deadline:
            failure = ProcessError(
                f"the stack did not become ready within {timeout:.0f} s",
                "see `pvmlab provisioner logs --service supervisor`",
            )
            break
        time.sleep(0.05)
    # Undo what this call did: the supervisor, and the network if it was not up before.
    spawn.terminate([proc.pid], STOP_TIMEOUT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(1)
    if not was_up:
        netlab.down(home)
    raise failure


# --- stop -------------------------------------------------------------------------------------


def stop(home: LabHome) -> dict[str, Any]:
    """Stop the stack and remove the lab network; return what was stopped."""
    require_net_admin("stopping the lab")
    with _control_lock(home):
        stopped: list[dict[str, Any]] = []
        sup = supervisor_pid(home)
        if sup is not None:
            spawn.terminate([sup], STOP_TIMEOUT)
            stopped.append({"name": "supervisor", "pid": sup})
        dns = dnsmasq_pid(home)
        if dns is not None:  # the supervisor was killed without a chance to stop it
            spawn.terminate([dns], STOP_TIMEOUT)
            stopped.append({"name": "dnsmasq", "pid": dns})
        stragglers = netlab.down(home)
        for path in (state_path(home), pid_file(home), dnsmasq.pid_path(home)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return {"stopped": stopped, "stragglers": stragglers}


# --- status -----------------------------------------------------------------------------------


def status(home: LabHome) -> dict[str, Any]:
    """Everything a user or a script wants to know about the stack (JSON-ready)."""
    state = read_state(home)
    lab = store.load_lab(home) if home.lab_file.exists() else None
    sup = supervisor_pid(home)
    dns = dnsmasq_pid(home) if sup is not None else None
    running = sup is not None
    vms = store.load_vms(home) if home.vms.is_dir() else []
    return {
        "home": str(home.root),
        "running": running,
        "netns": home.netns,
        "bridge": home.bridge,
        "network_up": netlab.is_up(home),
        "address": lab.address if lab is not None else None,
        "dhcp_range": [lab.dhcp_start, lab.dhcp_end] if lab is not None else None,
        "started": state.get("started") if running else None,
        "services": [
            {"name": "supervisor", "pid": sup, "running": running},
            {
                "name": "dnsmasq",
                "pid": dns,
                "running": dns is not None,
                "restarts": state.get("dnsmasq_restarts", 0) if running else 0,
                "serves": ["dhcp", "tftp"],
            },
            {
                "name": "http",
                "pid": sup,
                "running": running,
                "url": lab_endpoint(lab).url("/") if lab is not None else None,
                "boot_url": lab_endpoint(lab).boot_url if lab is not None else None,
            },
        ],
        "tftp_root": str(home.tftp),
        "leases": [lease.as_dict() for lease in dnsmasq.read_leases(home)],
        "reservations": [{"name": v.name, "mac": v.mac, "ip": v.ip} for v in vms],
    }


# --- reload -----------------------------------------------------------------------------------


def _hosts_read_since(log: Path, offset: int, hosts: Path) -> bool:
    try:
        with log.open("rb") as fh:
            fh.seek(offset)
            new = fh.read().decode(errors="replace")
    except OSError:
        return False
    return f"read {hosts}" in new


def reload(home: LabHome, timeout: float = RELOAD_TIMEOUT) -> bool:
    """Re-render the reservations and make dnsmasq re-read them before returning.

    Returns False (and does nothing) when the stack is not running. dnsmasq logs each file it
    re-reads; the call returns once that line for the hosts file appears after the SIGHUP.
    """
    if not is_running(home):
        return False
    try:
        dnsmasq.write_configs(home)
    except PermissionError:
        raise errors.PrivilegeError(
            "reloading the stack needs root (its configuration files are root's)",
            "run it with sudo",
        ) from None
    pid = dnsmasq_pid(home)
    if pid is None:  # being restarted by the supervisor: the new one reads the new file
        return True
    log = dnsmasq.log_path(home)
    hosts = dnsmasq.hosts_path(home).absolute()
    offset = log.stat().st_size if log.exists() else 0
    try:
        os.kill(pid, signal.SIGHUP)
    except PermissionError:
        raise errors.PrivilegeError(
            "reloading the stack needs root (dnsmasq runs as root)", "run it with sudo"
        ) from None
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _hosts_read_since(log, offset, hosts):
            return True
        time.sleep(0.01)
    raise StateError(
        f"dnsmasq (pid {pid}) did not confirm re-reading {hosts} within {timeout:.0f} s",
        "see `pvmlab provisioner logs --service dnsmasq`",
    )
