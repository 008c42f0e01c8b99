"""Helpers for tests that boot VMs through the real CLI: a running lab with the fixture kernels
imported as distro ``tiny``, VM creation and start, the QEMU processes of a lab home, and what
dnsmasq and the HTTP server logged (read here with the tests' own regular expressions, not with
pvmlab's parsers, so the tests check those parsers instead of repeating them).

Shared by the boot, iPXE-media, VM-lifecycle, VM-access, installer and lab-file tests; no test
module imports another.
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
from fixtures.bootassets import MARKER, BootAssets, with_authorized_key
from netlab import Lab, checked_cleanup, is_ours, kill_pid, netns_exists, running_lab
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


def _remove_vms(home: Path) -> list[str]:
    run_pvmlab("clean", home=home, check=False)
    left = qemu_pids(home)
    for pid in left:
        kill_pid(pid)
    return [f"QEMU processes left after `pvmlab clean`: {left}"] if left else []


@contextlib.contextmanager
def cleaned_lab(home: Path, *create_args: str) -> Iterator[Lab]:
    """A running lab (``provisioner create`` args given) whose VMs are removed on the way out,
    pass or fail; a QEMU process `pvmlab clean` leaves is killed and fails the test."""
    with running_lab(home.absolute(), *create_args) as lab, checked_cleanup(
        lambda: _remove_vms(home.absolute())
    ):
        yield lab


def import_distro(home: Path, name: str, a: BootAssets, cmdline: str | None = None) -> None:
    """`pvmlab distro import NAME` of the assets' kernel and initrd (with ``--cmdline`` when
    one is given)."""
    extra = ["--cmdline", cmdline] if cmdline is not None else []
    run_pvmlab(
        "distro", "import", name, "--arch", a.arch, "--kernel", str(a.kernel),
        "--initrd", str(a.initrd), *extra, home=home,
    )  # fmt: skip


@contextlib.contextmanager
def vm_lab(tmp_path: Path, assets: dict[str, BootAssets], *create_args: str) -> Iterator[Path]:
    """A running lab with the fixture kernels imported as distro ``tiny``; VMs cleaned after.
    ``create_args`` go to ``provisioner create`` (e.g. ``--ipv6 PREFIX/64 --no-ipv4``)."""
    with cleaned_lab(tmp_path / "home", *create_args) as lab:
        for a in assets.values():
            import_distro(lab.home, "tiny", a, f"{a.cmdline} pvmlab.test=1")
        yield lab.home


@contextlib.contextmanager
def net_lab(tmp_path: Path, assets: BootAssets, *create_args: str) -> Iterator[Lab]:
    """A running lab whose distro ``net`` is the network variant (tests/fixtures/bootassets.py)
    accepting the lab's SSH key; VMs cleaned after (``cleaned_lab``)."""
    home = (tmp_path / "home").absolute()
    run_pvmlab("setup", home=home, check=False)  # makes the lab's SSH key
    pub = (home / "ssh" / "id_ed25519.pub").read_text()
    keyed = with_authorized_key(assets, pub, tmp_path / "assets")
    with cleaned_lab(home, *create_args) as lab:
        import_distro(home, "net", keyed, keyed.cmdline)
        yield lab


@contextlib.contextmanager
def labs_taken_down(root: Path) -> Iterator[Path]:
    """Lab files' homes under ``root`` (the caller points PVMLAB_LABS there); whatever lab is
    left there is taken down after, and a namespace it leaves fails the test."""
    from pvmlab.home import LabHome

    def leftovers() -> list[str]:
        left = []
        for record in root.glob("*/labfile.json"):
            lab_file = json.loads(record.read_text())["file"]
            run_pvmlab("down", "-f", lab_file, check=False)
            home = LabHome(record.parent)
            if netns_exists(home.netns):
                left.append(f"namespace {home.netns}")
        return left

    with checked_cleanup(leftovers):
        yield root


def pull_debian_installer(home: Path, kernel_initrd: tuple[bytes, bytes], srv: Path) -> str:
    """`distro pull debian-12 --method netboot` of the installer ``kernel_initrd`` served from a
    local mirror in Debian's layout in ``srv``; returns the command's output (``--json``)."""
    from mirror import trees
    from mirror.server import serve

    trees.debian_netboot(srv, "x86_64", *kernel_initrd)
    with serve(srv) as (url, _state):
        return run_pvmlab(
            "distro", "pull", "debian-12", "--arch", "x86_64", "--method", "netboot",
            "--mirror", f"{url}/debian", "--json", home=home,
        ).stdout  # fmt: skip


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
