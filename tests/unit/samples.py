"""Sample inputs shared by unit tests: a QEMU config, and the timeline cases of real boots."""

from __future__ import annotations

import json
import re
from pathlib import Path

from pvmlab.observe import timeline
from pvmlab.qemu.argv import QemuConfig

CODE = Path("/fw/CODE.fd")
VARS = Path("/home/vms/t1/efivars.fd")
TIMELINE_DATA = Path(__file__).parent / "data" / "timeline"
BOOT_MARKER = re.compile("PVMLAB-BOOT-OK")


def qemu_config(**over: object) -> QemuConfig:
    """An x86_64 UEFI TCG target named t1; ``over`` replaces any field."""
    base: dict[str, object] = {
        "name": "t1",
        "arch": "x86_64",
        "firmware": "uefi",
        "accel": "tcg",
        "mac": "0e:00:00:00:00:01",
        "tap": "pvt12345678",
        "serial_log": Path("/home/logs/t1.log"),
        "qmp_socket": Path("/home/monitors/t1.qmp"),
        "pid_file": Path("/home/pids/t1.pid"),
        "console_socket": Path("/home/monitors/t1.console"),
        "uefi_code": CODE,
        "uefi_vars": VARS,
    }
    base.update(over)
    return QemuConfig(**base)  # type: ignore[arg-type]


def timeline_case(case: str) -> tuple[timeline.Timeline, dict[str, str]]:
    """The timeline of the real boot kept in ``data/timeline/<case>/``, and that VM's record."""
    d = TIMELINE_DATA / case
    vm = json.loads((d / "vm.json").read_text())
    tl = timeline.boot_timeline(
        timeline.parse_console((d / "console.jsonl").read_text()),
        (d / "dnsmasq.log").read_text().splitlines(),
        (d / "http.log").read_text().splitlines(),
        vm=vm["name"],
        mac=vm["mac"],
        wait_for=BOOT_MARKER,
    )
    return tl, vm
