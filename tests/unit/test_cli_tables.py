"""Tables print their cells as data: rich would turn a MAC's ":cd:" into an emoji (the demo's
`provisioner status` showed "0e💿91:db:76:11") and "[...]" into markup."""

from __future__ import annotations

import pytest
from samples import timeline_case

from pvmlab.cli.common import table
from pvmlab.observe.timeline import print_timeline_table

pytestmark = pytest.mark.usefixtures("utc")  # tests/conftest.py

MAC = "0e:cd:91:db:76:11"


@pytest.mark.parametrize("plain", [False, True])
def test_table_cells_are_printed_as_they_are(
    capsys: pytest.CaptureFixture[str], plain: bool
) -> None:
    table(f"leases of {MAC}", ["mac", "note"], [[MAC, "[bold]not markup[/]"]], plain=plain)
    out = capsys.readouterr().out
    assert out.count(MAC) == 2 and "💿" not in out
    assert "[bold]not markup[/]" in out


def test_timeline_table_prints_the_mac_as_it_is(capsys: pytest.CaptureFixture[str]) -> None:
    tl, _ = timeline_case("x86_64-uefi")
    tl.mac = MAC
    tl.wait_for = "PVMLAB-BOOT-OK|[l]ogin:"
    print_timeline_table(tl)
    out = capsys.readouterr().out
    assert f"({MAC})" in out and "💿" not in out
    assert "'PVMLAB-BOOT-OK|[l]ogin:'" in out
