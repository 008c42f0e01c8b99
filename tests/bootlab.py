"""Helpers for tests that boot VMs through the real CLI: a running lab with the fixture kernels
imported as distro ``tiny``, VM creation and start, the QEMU processes of a lab home, and what
dnsmasq and the HTTP server logged (read here with the tests' own regular expressions, not with
pvmlab's parsers, so the tests check those parsers instead of repeating them).

Shared by the boot, iPXE-media, VM-lifecycle and installer tests; no test module imports another.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from conftest import run_pvmlab
from fixtures.bootassets import MARKER, BootAssets
from netlab import checked_cleanup, is_ours, kill_pid, running_lab
from pvmlab import spawn

BOOT_TIMEOUT = "300"


def qemu_pids(home: Path) -> list[int]:
    """QEMU processes started for this lab home (their argv holds the home's pid file path)."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            argv = spawn.pid_cmdline(int(proc.name))
            if argv and "qemu-system" in argv[0] and any(str(home) in a for a in argv):
                out.append(int(proc.name))
    return [p for p in out if is_ours(p)]


@contextlib.contextmanager
def vm_lab(tmp_path: Path, assets: dict[str, BootAssets], *create_args: str) -> Iterator[Path]:
    """A running lab with the fixture kernels imported as distro ``tiny``; VMs cleaned after.
    ``create_args`` go to ``provisioner create`` (e.g. ``--ipv6 PREFIX/64 --no-ipv4``)."""
    home = (tmp_path / "home").absolute()

    def clean() -> list[str]:
        run_pvmlab("clean", home=home, check=False)
        left = qemu_pids(home)
        for pid in left:
            kill_pid(pid)
        return [f"QEMU processes left after `pvmlab clean`: {left}"] if left else []

    with running_lab(home, *create_args), checked_cleanup(clean):
        for arch, a in assets.items():
            run_pvmlab(
                "distro", "import", "tiny", "--arch", arch,
                "--kernel", str(a.kernel), "--initrd", str(a.initrd),
                "--cmdline", f"{a.cmdline} pvmlab.test=1",
                home=home,
            )  # fmt: skip
        yield home


def dnsmasq_log(home: Path) -> str:
    return (home / "logs" / "dnsmasq.log").read_text(errors="replace")


def dhcp_serials(log: str, mac: str) -> list[str]:
    return list(
        dict.fromkeys(re.findall(rf"dnsmasq-dhcp\[\d+\]: (\d+) DHCP\w+\([^)]*\) .*{mac}", log))
    )


def exchange(log: str, serial: str) -> str:
    return "\n".join(ln for ln in log.splitlines() if f"]: {serial} " in ln)


def http_requests(home: Path, ip: str) -> list[dict[str, object]]:
    lines = (home / "logs" / "http.log").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("client") == ip]


def create(home: Path, name: str, arch: str, firmware: str) -> dict[str, str]:
    out = run_pvmlab(
        "vm", "create", name, "--arch", arch, "--firmware", firmware, "--distro", "tiny", "--json",
        home=home,
    ).stdout  # fmt: skip
    return json.loads(out)  # type: ignore[no-any-return]


def start_cmd(home: Path, name: str) -> list[str]:
    return [
        sys.executable, "-m", "pvmlab.cli.main", "--home", str(home),
        "vm", "start", name, "--accel", "tcg", "--wait", "--wait-for", MARKER,
        "--timeout", BOOT_TIMEOUT,
    ]  # fmt: skip


def boot_seconds(stdout: str) -> float:
    m = re.search(rf"saw '{MARKER}' after ([0-9.]+) s", stdout)
    assert m, stdout
    return float(m.group(1))


def wait_console(log: Path, pattern: str | re.Pattern[str], timeout: float) -> str | None:
    """The first console line (escapes removed) matching ``pattern`` within ``timeout`` s, or None.

    For a test that waits for a later step of a guest already started and waited for once: the
    VM's watcher reports only the start's own pattern, so this re-reads the log (test-side).
    """
    from pvmlab.observe.console import clean

    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        try:
            text = clean(log.read_text(errors="replace"))
        except OSError:
            text = ""
        for line in text.splitlines():
            if regex.search(line):
                return line
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.5)
