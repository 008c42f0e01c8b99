"""A VM's runtime state, taken from the truth: the pid file checked against /proc, then QMP.

A pid file counts only when the process it names is alive and its command line is a QEMU
started with this VM's own pid file path (unique per lab home), so a stale pid file whose number
was reused by another process is never taken for the VM. Whether the guest actually runs is
QEMU's to say (QMP ``query-status``): a live QEMU may hold a paused, failed or panicked guest.
The accelerator and boot order of the last start are kept in ``vms/NAME/runtime.json``.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from pvmlab import spawn
from pvmlab.home import LabHome, write_json


class RuntimeRecord(BaseModel):
    model_config = ConfigDict(extra="ignore")

    accel: str
    boot: str = "pxe"
    pid: int | None = None
    started: str = ""
    argv: list[str] = []
    wait_for: str | None = None  # the --wait-for pattern of this start, for `vm timeline`


def runtime_file(home: LabHome, name: str) -> Path:
    return home.vm_runtime(name)


def console_socket(home: LabHome, name: str) -> Path:
    return home.vm_console_socket(name)


def qemu_log(home: LabHome, name: str) -> Path:
    """QEMU's own stdout/stderr (not the guest's console)."""
    return home.vm_qemu_log(name)


def save_runtime(home: LabHome, name: str, rec: RuntimeRecord) -> None:
    write_json(runtime_file(home, name), rec.model_dump(mode="json"))


def load_runtime(home: LabHome, name: str) -> RuntimeRecord | None:
    try:
        raw: Any = json.loads(runtime_file(home, name).read_text())
        return RuntimeRecord.model_validate(raw)
    except (OSError, ValueError):
        return None


def is_vm_process(home: LabHome, name: str, pid: int) -> bool:
    """Whether ``pid`` is the QEMU of VM ``name`` in this lab home."""
    argv = spawn.pid_cmdline(pid)  # empty for a process that is gone (or a zombie)
    if not argv or "qemu-system" not in Path(argv[0]).name:
        return False
    want = str(home.vm_pid(name))
    return any(a == want for a in argv)


def running_pid(home: LabHome, name: str) -> int | None:
    pid = spawn.read_pid_file(home.vm_pid(name))
    if pid is None or not is_vm_process(home, name, pid):
        return None
    return pid


STOPPED = "stopped"
UNRESPONSIVE = "unresponsive"  # QEMU is alive but does not answer on QMP


def run_state(home: LabHome, name: str) -> str:
    """``stopped`` without a live QEMU; else what QEMU says over QMP (``running``, ``paused``,
    ``internal-error``, ``guest-panicked``…), or ``unresponsive`` when it does not answer."""
    if running_pid(home, name) is None:
        return STOPPED
    from pvmlab.qemu import qmp

    return qmp.query_status(home.vm_qmp(name)) or UNRESPONSIVE


def remove_runtime_files(home: LabHome, name: str) -> None:
    """Pid file and sockets of a VM that is not running."""
    for path in (home.vm_pid(name), home.vm_qmp(name), console_socket(home, name)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
