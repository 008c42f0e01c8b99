"""A boot whose stack logs were rotated while it ran: ``timeline_of_vm`` reads ``NAME.1``
before ``NAME`` (``stack.logfiles.read_lines``), so its timeline is the one of the whole logs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from samples import BOOT_MARKER
from samples import TIMELINE_DATA as DATA

from pvmlab.home import LabHome
from pvmlab.observe import stacklog, timeline
from pvmlab.records import store
from pvmlab.records.models import LabSpec
from pvmlab.stack import logfiles
from pvmlab.vm.define import CreateRequest, create

pytestmark = pytest.mark.usefixtures("utc")  # tests/conftest.py

CASE = DATA / "x86_64-uefi"
MAC, IP = "0e:ed:4e:52:cc:08", "192.168.105.2"  # the VM of the case (vm.json)
DNSMASQ_SPLIT, HTTP_SPLIT = 227, 10  # lines before the cut (see the test)


def home_of_the_case(root: Path) -> LabHome:
    home = LabHome(root)
    home.ensure()
    store.save_lab(home, LabSpec(dhcp_start="192.168.105.100", dhcp_end="192.168.105.199"))
    create(home, CreateRequest(name="e1", arch="x86_64", mac=MAC, ip=IP))
    shutil.copy(CASE / "console.jsonl", home.vm_console_times("e1"))
    return home


def split_at(path: Path, source: Path, at: int) -> None:
    """``source`` as if rotated after its line ``at``: the head in NAME.1, the rest in NAME."""
    lines = source.read_text().splitlines(keepends=True)
    logfiles.backup(path).write_text("".join(lines[:at]))
    path.write_text("".join(lines[at:]))


def test_a_timeline_across_a_rotation_is_whole(tmp_path: Path) -> None:
    whole = home_of_the_case(tmp_path / "whole")
    shutil.copy(CASE / "dnsmasq.log", whole.dnsmasq_log)
    shutil.copy(CASE / "http.log", whole.http_log)
    expected = timeline.timeline_of_vm(whole, "e1", BOOT_MARKER)
    assert [p.name for p in expected.phases][-1] == "ready"

    rotated = home_of_the_case(tmp_path / "rotated")
    # inside the last boot: its first DHCPOFFER in NAME.1, the DHCPREQUEST after it in NAME;
    # its first two HTTP requests in NAME.1, the kernel and initrd in NAME
    split_at(rotated.dnsmasq_log, CASE / "dnsmasq.log", DNSMASQ_SPLIT)
    split_at(rotated.http_log, CASE / "http.log", HTTP_SPLIT)
    assert timeline.timeline_of_vm(rotated, "e1", BOOT_MARKER) == expected
    # the stack's view (vm start --wait failures) reads both files too
    assert stacklog.stack_view(rotated, MAC, IP).summary_lines() == stacklog.stack_view(
        whole, MAC, IP
    ).summary_lines()

    # without NAME.1 the same boot comes out otherwise: the split is in the boot's records
    logfiles.backup(rotated.dnsmasq_log).unlink()
    logfiles.backup(rotated.http_log).unlink()
    assert timeline.timeline_of_vm(rotated, "e1", BOOT_MARKER) != expected
