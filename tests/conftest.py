"""Shared test fixtures.

Unit tests run anywhere. Tests marked ``integration`` start real programs (dnsmasq, QEMU,
firmware) inside network namespaces they create, so they need root; they are skipped with a
reason when not root (CI runs as root and runs them all).

Shared helpers live in modules beside this file, never in a test module that another imports:

    fixtures/      boot assets (kernels + busybox initramfs); ``boot_assets`` fixture (plugin);
                   ``built_image``: a Debian 12 disk image from ``pvmlab.image`` (builtimage.py)
    netlab.py      lab networks: client namespaces, busybox clients, ``running_lab``, and
                   ``checked_cleanup`` (a leftover check that never hides the test's own failure)
    bootlab.py     VMs booted through the CLI: ``cleaned_lab``, ``vm_lab``, ``net_lab``,
                   ``labs_taken_down``, ``create``, ``start_cmd``, QEMU pids, what dnsmasq and
                   the HTTP server logged
    unit/samples.py  unit-test inputs: a QEMU config, the recorded boot timelines

They take per-test arguments (a seed, a home, the arches to import) and ``bench/`` uses some of
them outside pytest, so they stay context managers and functions rather than fixtures.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# boot_assets: bootable test kernels + busybox initramfs per arch (tests/fixtures/bootassets.py)
pytest_plugins = ["fixtures.plugin"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # slow tests (a whole OS install: tens of minutes) run only when the -m expression names
    # them (`-m slow`, scripts/test-slow.sh); `-m integration` and a bare run leave them out
    if "slow" not in (config.getoption("markexpr") or ""):
        slow = [i for i in items if "slow" in i.keywords]
        if slow:
            config.hook.pytest_deselected(items=slow)
            items[:] = [i for i in items if "slow" not in i.keywords]
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="integration test: needs root for network namespaces")
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(skip)


def needs(*programs: str) -> pytest.MarkDecorator:
    """Skip a test that runs these programs when one is not on PATH, naming what is missing."""
    missing = [p for p in programs if shutil.which(p) is None]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} (not on PATH)")


@pytest.fixture
def lab_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh, empty lab home selected through PVMLAB_HOME."""
    home = tmp_path / "home"
    monkeypatch.setenv("PVMLAB_HOME", str(home))
    yield home


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """dnsmasq writes local time; its logs captured on a UTC machine are read back in UTC."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


APT_SOURCES = (Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*")))


@pytest.fixture(scope="session")
def archive_release_url() -> str:
    """The outside world of the uplink tests: ``http://HOST/PATH/dists/SUITE/Release`` of the
    first Debian archive in this machine's apt sources (reachable from these machines)."""
    for path in APT_SOURCES:
        try:
            text = path.read_text()
        except OSError:
            continue
        uris = re.findall(r"^URIs:\s*(http://\S+)", text, re.M)  # deb822 .sources
        uris += re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(http://\S+)", text, re.M)  # one-line
        suites = re.findall(r"^Suites:\s*(\S+)", text, re.M) + re.findall(
            r"^deb\s+(?:\[[^]]*\]\s+)?http://\S+\s+(\S+)", text, re.M
        )
        for uri in uris:
            if "security" not in uri and suites:
                return f"{uri.rstrip('/')}/dists/{suites[0]}/Release"
    pytest.fail("no http:// Debian archive in apt's sources: the uplink test needs one")


def run_pvmlab(
    *args: str, home: Path | None = None, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI as a user would, in a subprocess."""
    env = dict(os.environ)
    if home is not None:
        env["PVMLAB_HOME"] = str(home)
    proc = subprocess.run(
        [sys.executable, "-m", "pvmlab.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"pvmlab {' '.join(args)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


# --- as an unprivileged user -----------------------------------------------------------------

NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def as_nobody(argv: list[str]) -> list[str]:
    """``argv`` run as uid/gid 65534 (nobody) with no supplementary groups (util-linux setpriv)."""
    return [*AS_NOBODY, *argv]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A root-owned 0755 directory that uid 65534 can reach (pytest's tmp_path is 0700)."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="pvmlab-shared-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# --- labs for integration tests (the helpers are in bootlab.py, imported when used) -----------


@pytest.fixture
def running_home(tmp_path: Path) -> Iterator[Path]:
    """A running lab in ``tmp_path/home`` whose VMs are removed after (``bootlab.cleaned_lab``)."""
    from bootlab import cleaned_lab

    with cleaned_lab(tmp_path / "home") as lab:
        yield lab.home


@pytest.fixture
def labs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """PVMLAB_LABS in the test's directory (lab files' homes); whatever lab is left there is
    taken down after (``bootlab.labs_taken_down``)."""
    from bootlab import labs_taken_down

    monkeypatch.setenv("PVMLAB_LABS", str(tmp_path / "labs"))
    monkeypatch.delenv("PVMLAB_HOME", raising=False)
    with labs_taken_down(tmp_path / "labs") as root:
        yield root
