"""`pvmlab test` of examples/protocols.toml as written: a GRUB machine, a Secure Boot machine
(shim, GRUB, Debian's signed kernel) and a UEFI HTTP Boot machine, in one dual-stack lab, each
booted through real firmware (TCG) to its marker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, run_pvmlab
from fixtures.bootassets import MARKER, BootAssets, export

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLE = REPO / "examples" / "protocols.toml"


def test_protocols_example_passes(
    tmp_path: Path, labs: Path, boot_assets: dict[str, BootAssets]
) -> None:
    export(boot_assets["x86_64"], tmp_path / "assets")
    lab = tmp_path / "protocols.toml"
    lab.write_text(EXAMPLE.read_text())
    result = tmp_path / "result.json"
    proc = run_pvmlab("test", "-f", str(lab), "--json", str(result), "--parallel", "1",
                      check=False, timeout=1800)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "3 passed, 0 failed"
    machines = {m["name"]: m for m in json.loads(result.read_text())["machines"]}
    assert sorted(machines) == ["grub", "http", "sb"]
    for m in machines.values():
        assert any(MARKER in line for line in m["console_tail"]), m["console_tail"]
    print("\nLAB protocols: " + ", ".join(f"{n} {m['elapsed']:.1f} s"
                                         for n, m in sorted(machines.items())))  # fmt: skip
    home = labs / "protocols"
    log = (home / "logs" / "dnsmasq.log").read_text(errors="replace")
    assert f"sent {home}/tftp/shimx64.efi" in log  # the Secure Boot machine's first stage
    assert f"sent {home}/tftp/grubx64.efi" in log
    console = (home / "logs" / "sb.log").read_text(errors="replace")
    assert "EFI stub: UEFI Secure Boot is enabled." in console
    run_pvmlab("down", "-f", str(lab))
