"""dnsmasq.log is bounded like the stack's own logs: over ``PVMLAB_LOG_MAX_BYTES`` the
supervisor rotates it and dnsmasq reopens it on SIGUSR2 (same dnsmasq, no restart), and the
readers (the stack's view of a machine) read the rotated file too. Real dnsmasq, real DHCP
exchanges from busybox udhcpc in a client namespace on the lab bridge."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import netlab
from pvmlab.home import LabHome
from pvmlab.observe import stacklog
from pvmlab.stack import logfiles

pytestmark = pytest.mark.integration

LOG_MAX_BYTES = 4096  # the smallest bound logfiles accepts: a few DHCP exchanges
LOG_BACKUPS = 2
MOST_EXCHANGES = 60  # a guard for the loop; a handful of exchanges fill 4 KiB with log-dhcp
SETTLE = 30.0  # seconds for a line dnsmasq wrote to show up (a readiness wait, not a limit)


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[netlab.Lab]:
    # inherited by `provisioner start`, and so by the supervisor
    monkeypatch.setenv("PVMLAB_LOG_MAX_BYTES", str(LOG_MAX_BYTES))
    monkeypatch.setenv("PVMLAB_LOG_BACKUPS", str(LOG_BACKUPS))
    with netlab.running_lab(tmp_path / "home") as running:
        yield running


def mac_of(i: int) -> str:
    return f"0e:00:00:00:6{i // 256 % 10}:{i % 256:02x}"


def logged_in(path: Path, text: str) -> bool:
    try:
        return text in path.read_text(errors="replace")
    except FileNotFoundError:
        return False


def test_dnsmasq_log_is_rotated_and_read_across_the_rotation(
    lab: netlab.Lab, tmp_path: Path
) -> None:
    home = LabHome(lab.home)
    dnsmasq_pid = lab.pid("dnsmasq")
    assert dnsmasq_pid is not None
    with netlab.client_on_bridge(lab.netns, lab.bridge, seed=str(tmp_path)) as client:
        rotated_at = None
        for i in range(MOST_EXCHANGES):
            client.set_mac(mac_of(i))
            netlab.udhcpc(client, tmp_path / "dhcp", arch=7)
            if logfiles.backup(home.dnsmasq_log, 2).exists():  # two rotations at least
                rotated_at = i
                break
        assert rotated_at is not None, "dnsmasq.log was never rotated twice"

        # a machine after the rotations: its lines land in the reopened dnsmasq.log
        last = mac_of(rotated_at + 1)
        client.set_mac(last)
        lease = netlab.udhcpc(client, tmp_path / "dhcp", arch=7)
        deadline = time.monotonic() + SETTLE
        while not logged_in(home.dnsmasq_log, f"DHCPACK({lab.bridge}) {lease['ip']} {last}"):
            assert time.monotonic() < deadline, "the last DHCPACK never reached dnsmasq.log"
            time.sleep(0.2)

    status = lab.refresh()
    assert lab.pid("dnsmasq") == dnsmasq_pid  # SIGUSR2 reopened the log; dnsmasq did not die
    assert status["services"]
    names = sorted(p.name for p in home.logs.iterdir() if p.name.startswith("dnsmasq.log"))
    assert names == ["dnsmasq.log", "dnsmasq.log.1", "dnsmasq.log.2"]  # LOG_BACKUPS, no more

    # the stack's view reads NAME.1 and NAME: the exchange of the last machine is whole
    view = stacklog.stack_view(home, last)
    kinds = [m.kind for ex in view.exchanges for m in ex.messages]
    assert kinds[-1] == "DHCPACK" and "DHCPDISCOVER" in kinds
    assert view.ips == [lease["ip"]]
    # what was rotated is still there in the order it was written: lines in .1 come before
    every = logfiles.read_lines(home.dnsmasq_log)
    assert every[-len(home.dnsmasq_log.read_text().splitlines()):] == (
        home.dnsmasq_log.read_text().splitlines()
    )
