"""The lab home under attack, as root runs pvmlab: a home another user owns or can write, its
subdirectories and files swapped for symlinks that point outside, modules planted in the
directory pvmlab is run from, a full disk, and an ordinary user running the commands that
change the lab. Each case asserts the one-line error (never a traceback or "internal error",
exit 70), that nothing was written outside the home, and that the lab still works after.

Real programs throughout: the installed `pvmlab` console script, dnsmasq and the supervisor
in a namespace the test makes, QEMU (TCG, SeaBIOS) for the VM, a tmpfs mounted for the full
disk, `setpriv` to become uid 65534 (nobody)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import netlab
from conftest import AS_NOBODY, NOBODY
from fixtures.bootassets import BootAssets
from pvmlab.home import LabHome

PVMLAB = Path(sys.executable).parent / "pvmlab"  # the console script, as a user runs it

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)"),
    pytest.mark.skipif(not PVMLAB.exists(), reason="needs pvmlab installed next to python"),
]


def pvmlab(
    *args: str, home: Path, cwd: Path | None = None, as_nobody: bool = False
) -> subprocess.CompletedProcess[str]:
    argv = [str(PVMLAB), *args]
    env = {**os.environ, "PVMLAB_HOME": str(home)}
    if as_nobody:
        argv = [*AS_NOBODY, *argv]
        env["HOME"] = str(home.parent)
    return subprocess.run(
        argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=600, check=False
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def one_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The command failed with exit 1 or 2 and said why on exactly one line."""
    assert proc.returncode in (1, 2), f"exit {proc.returncode}: {proc.stderr}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("pvmlab: error: ") and "(hint: " in line, line
    assert "internal error" not in line and "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in line, line
    return line


def tree(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` with its content (symlinks not followed)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


@pytest.fixture
def shared(shared_dir: Path) -> Path:
    return shared_dir


@contextlib.contextmanager
def lab_removed_after(home: Path) -> Iterator[None]:
    """On the way out: `pvmlab clean`, `provisioner stop`, and a check that no namespace,
    bridge or process of this lab is left (removed by force; reported unless the test has
    already failed, so its own failure is the one shown)."""
    lab = LabHome(home.absolute())
    passed = False
    try:
        yield
        passed = True
    finally:
        pvmlab("clean", home=home)
        pvmlab("provisioner", "stop", home=home)
        pids = netlab.netns_pids(lab.netns) if netlab.netns_exists(lab.netns) else []
        left = netlab.leftovers([lab.netns], pids, [lab.bridge])
        for pid in pids:
            netlab.kill_pid(pid)
        if netlab.netns_exists(lab.netns):
            netlab.remove_netns(lab.netns)
        if passed:
            assert not left, f"left behind: {left}"


def import_tiny(
    home: Path, assets: BootAssets, name: str = "tiny"
) -> subprocess.CompletedProcess[str]:
    return pvmlab(
        "distro", "import", name, "--arch", "x86_64",
        "--kernel", str(assets.kernel), "--initrd", str(assets.initrd),
        "--cmdline", f"{assets.cmdline} pvmlab.hold",
        home=home,
    )  # fmt: skip


# --- who owns the home --------------------------------------------------------------------------


def test_a_home_of_another_user_is_refused_until_it_is_roots(shared: Path) -> None:
    home = shared / "home"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    outside = shared / "outside"
    outside.mkdir()
    # What that user could have prepared: logs/ pointing at a directory root would append in.
    ok(pvmlab("--help", home=home, as_nobody=True))
    (home / "logs").symlink_to(outside)
    os.lchown(home / "logs", NOBODY, NOBODY)

    for args in (["setup"], ["provisioner", "create"], ["vm", "list"], ["distro", "ls"]):
        one_line(pvmlab(*args, home=home), f"{home} is owned by nobody", f"chown -R root {home}")
    assert sorted(p.name for p in home.iterdir()) == ["logs"]  # nothing was written

    os.chown(home, 0, 0)  # root takes it over: the planted link is still refused
    one_line(
        pvmlab("provisioner", "create", home=home),
        f"{home / 'logs'} in the lab home is a symbolic link",
        f"rm {home / 'logs'}",
    )
    home.chmod(0o775)
    (home / "logs").unlink()
    one_line(
        pvmlab("provisioner", "create", home=home),
        f"{home} in the lab home is writable by its group",
        f"chmod go-w {home}",
    )
    home.chmod(0o755)
    ok(pvmlab("provisioner", "create", home=home))
    ok(pvmlab("vm", "list", home=home))
    assert list(outside.iterdir()) == []


def test_a_predictable_home_below_an_open_directory(shared: Path) -> None:
    """A world-writable directory without the sticky bit lets anyone rename the home away and
    put their own in its place; with the sticky bit (as /tmp has) it is fine."""
    open_dir = shared / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    home = open_dir / "pvmlab"
    one_line(
        pvmlab("provisioner", "create", home=home),
        f"{open_dir} is writable by group and others (and not sticky)",
        "--home",
    )
    assert not home.exists()
    open_dir.chmod(0o1777)
    ok(pvmlab("provisioner", "create", home=home))
    # ...but a home someone else made there first is theirs, and refused.
    squatted = open_dir / "squatted"
    squatted.mkdir()
    os.chown(squatted, NOBODY, NOBODY)
    one_line(pvmlab("vm", "list", home=squatted), f"{squatted} is owned by nobody")


# --- symlinks swapped in ------------------------------------------------------------------------


def test_symlink_swaps_never_make_root_write_outside_the_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("precious\n")
    ok(pvmlab("provisioner", "create", home=home))
    lab = LabHome(home)
    before = tree(outside)

    with lab_removed_after(home):
        for sub in ("configs", "logs", "vms", "stack"):
            real = home / f"{sub}.real"
            (home / sub).rename(real)
            (home / sub).symlink_to(outside)
            one_line(
                pvmlab("provisioner", "start", home=home),
                f"{home / sub} in the lab home is a symbolic link",
            )
            (home / sub).unlink()
            real.rename(home / sub)
        assert not netlab.netns_exists(lab.netns)  # refused before anything was built

        # Files swapped for links: the renders replace the link, the log append refuses it.
        for path in (lab.dnsmasq_conf, lab.dhcp_hosts, lab.supervisor_log):
            path.symlink_to(outside / "victim")
        one_line(
            pvmlab("provisioner", "start", home=home),
            f"{lab.supervisor_log} is a symbolic link",
        )
        lab.supervisor_log.unlink()
        started = json.loads(ok(pvmlab("provisioner", "start", "--json", home=home)))
        assert started["services"]
        assert not lab.dnsmasq_conf.is_symlink() and "dhcp-range" in lab.dnsmasq_conf.read_text()
        assert not lab.dhcp_hosts.is_symlink()
        assert tree(outside) == before
        ok(pvmlab("provisioner", "stop", home=home))
    assert tree(outside) == before


# --- code planted where root runs pvmlab --------------------------------------------------------

PLANT = "import pathlib; pathlib.Path({marker!r}).write_text({who!r})\n"


def test_modules_planted_in_the_working_directory_never_run(
    tmp_path: Path, boot_assets: dict[str, BootAssets]
) -> None:
    """Root runs pvmlab from a directory another user filled with look-alike modules of pvmlab
    and its dependencies: the stack supervisor and the console stamper (child pythons) start,
    serve and stamp with the real ones; the planted code never runs."""
    planted, marker = tmp_path / "planted", tmp_path / "planted-code-ran"
    for name in ("pvmlab", "aiohttp", "jinja2", "qemu", "click"):
        (planted / name).mkdir(parents=True)
        (planted / name / "__init__.py").write_text(PLANT.format(marker=str(marker), who=name))
    (planted / "pydantic.py").write_text(PLANT.format(marker=str(marker), who="pydantic"))
    # The control: a plain `python -m` from there does import the planted package.
    subprocess.run(
        [sys.executable, "-m", "pvmlab.stack.supervisor", "--help"],
        cwd=planted, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert marker.read_text() == "pvmlab"
    marker.unlink()

    home = tmp_path / "home"
    with lab_removed_after(home):
        ok(pvmlab("provisioner", "create", home=home, cwd=planted))
        ok(pvmlab("provisioner", "start", home=home, cwd=planted))
        ok(import_tiny(home, boot_assets["x86_64"]))
        ok(pvmlab(
            "vm", "create", "t1", "--arch", "x86_64", "--firmware", "bios", "--distro", "tiny",
            home=home, cwd=planted,
        ))  # fmt: skip
        out = ok(pvmlab(
            "vm", "start", "t1", "--accel", "tcg", "--wait-for", "pvmlab: holding",
            "--timeout", "300", home=home, cwd=planted,
        ))  # fmt: skip
        assert "saw 'pvmlab: holding'" in out
        stamps = LabHome(home).vm_console_times("t1").read_text()
        assert "pvmlab: holding" in stamps  # the real stamper ran
        ok(pvmlab("vm", "stop", "t1", home=home, cwd=planted))
        ok(pvmlab("provisioner", "stop", home=home, cwd=planted))
    assert not marker.exists(), f"planted {marker.read_text()} ran as root"


# --- a full disk --------------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)], check=True
    )
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


def fill(directory: Path) -> Path:
    """Write a file in ``directory`` until its filesystem is full."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 65536)
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_is_one_line_and_the_lab_survives(
    tmp_path: Path, boot_assets: dict[str, BootAssets]
) -> None:
    assets = boot_assets["x86_64"]
    size = assets.kernel.stat().st_size + assets.initrd.stat().st_size
    with tmpfs(tmp_path / "small", f"{size + 2 * 1024 * 1024}") as small:
        home = small / "home"
        ok(pvmlab("provisioner", "create", home=home))
        lab_json = (home / "lab.json").read_bytes()
        ok(import_tiny(home, assets))
        # A second copy does not fit.
        one_line(import_tiny(home, assets, "tiny2"), "no space left", f"df -h {home}")
        assert tree(home / "images").keys() == {
            f"tiny/x86_64/{f}" for f in ("vmlinuz", "initrd", "distro.json")
        }  # no partial copy left (an empty images/tiny2/x86_64/ may stay: no record, no files)
        listed = json.loads(ok(pvmlab("distro", "ls", "--installed", "--json", home=home)))
        assert "tiny2" not in json.dumps(listed) and "tiny" in json.dumps(listed)
        ok(pvmlab("vm", "create", "t1", "--arch", "x86_64", "--distro", "tiny", home=home))

        filler = fill(small)
        one_line(
            pvmlab("vm", "create", "t2", "--arch", "x86_64", "--distro", "tiny", home=home),
            f"no space left writing {home / 'vms'}",
        )
        assert sorted(p.name for p in (home / "vms").iterdir()) == ["t1", "t1.json"]  # no temp
        assert (home / "lab.json").read_bytes() == lab_json
        rows = json.loads(ok(pvmlab("vm", "list", "--json", home=home)))
        assert [r["name"] for r in rows] == ["t1"]

        filler.unlink()
        ok(pvmlab("vm", "create", "t2", "--arch", "x86_64", "--distro", "tiny", home=home))
        rows = json.loads(ok(pvmlab("vm", "list", "--json", home=home)))
        assert sorted(r["name"] for r in rows) == ["t1", "t2"]


# --- an ordinary user ---------------------------------------------------------------------------


def test_an_ordinary_user_gets_one_line_errors_and_changes_nothing(
    shared: Path, boot_assets: dict[str, BootAssets]
) -> None:
    home = shared / "home"
    assets = boot_assets["x86_64"]
    ok(pvmlab("provisioner", "create", home=home))
    ok(import_tiny(home, assets))
    ok(pvmlab("vm", "create", "t1", "--arch", "x86_64", "--distro", "tiny", home=home))
    kernel = shared / "vmlinuz"
    shutil.copy(assets.kernel, kernel)
    kernel.chmod(0o644)
    before = tree(home)

    for args in (
        ["vm", "create", "t2", "--arch", "x86_64", "--distro", "tiny"],
        ["vm", "start", "t1"],
        ["vm", "clean", "t1"],
        ["clean"],
        ["clean", "--purge"],
        ["distro", "import", "d2", "--arch", "x86_64", "--kernel", str(kernel),
         "--initrd", str(kernel)],
    ):  # fmt: skip
        proc = pvmlab(*args, home=home, as_nobody=True)
        line = one_line(proc)
        assert "permission denied" in line.lower() or "needs root" in line, line
        assert tree(home) == before, args

    rows = json.loads(ok(pvmlab("vm", "list", "--json", home=home)))
    assert [r["name"] for r in rows] == ["t1"]
    ok(pvmlab("vm", "create", "t2", "--arch", "x86_64", "--distro", "tiny", home=home))
