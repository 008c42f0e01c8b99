"""Lab files declare what `provisioner create` and `vm create` can: IPv6 (dual stack and
IPv6-only), the GRUB first stage, Secure Boot and UEFI HTTP Boot. `up --no-start` must write the
records the CLI would (real stack, no boots), and `pvmlab test` of a GRUB machine must boot it
to its marker through real firmware and dnsmasq (TCG)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, run_pvmlab
from fixtures.bootassets import MARKER, BootAssets, export

pytestmark = pytest.mark.integration

EXAMPLE = REPO / "examples" / "protocols.toml"


def _lab_dir(tmp_path: Path, assets: BootAssets, text: str) -> Path:
    export(assets, tmp_path / "assets")
    lab = tmp_path / "lab.toml"
    lab.write_text(text)
    return lab


def _records(home: Path) -> dict[str, dict[str, object]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((home / "vms").glob("*.json"))}


def test_up_no_start_makes_the_example_protocol_machines(
    tmp_path: Path, labs: Path, boot_assets: dict[str, BootAssets]
) -> None:
    text = (
        EXAMPLE.read_text()
        .replace('name = "protocols"', 'name = "keys-up"')
        .replace("192.168.130.", "192.168.131.")
        .replace("fd00:130::", "fd00:131::")
    )
    lab = _lab_dir(tmp_path, boot_assets["x86_64"], text)
    first = json.loads(run_pvmlab("up", "-f", str(lab), "--no-start", "--json",
                                  timeout=600).stdout)  # fmt: skip
    home = Path(first["home"])
    assert home == labs / "keys-up"
    made = {(c["action"], c["name"]) for c in first["changes"] if c["kind"] != "distro"}
    assert made == {
        ("create", "192.168.131.1/24 and fd00:131::1/64"),
        ("create", "grub"), ("create", "sb"), ("create", "http"),
        ("start", "192.168.131.1/24 and fd00:131::1/64"),
    }  # fmt: skip

    labspec = json.loads((home / "lab.json").read_text())
    assert (labspec["address"], labspec["ipv6"]) == ("192.168.131.1/24", "fd00:131::1/64")
    vms = _records(home)
    got = {n: (v["loader"], v["secure_boot"], v["net_boot"], v["firmware"]) for n, v in vms.items()}
    assert got == {
        "grub": ("grub", False, "pxe", "uefi"),
        "sb": ("grub", True, "pxe", "uefi"),  # Secure Boot: shim, then GRUB
        "http": ("ipxe", False, "http", "uefi"),
    }
    # the written reservation, taken before the others were given the lowest free ones
    assert vms["http"]["ipv6"] == "fd00:131::80"
    assert {vms["grub"]["ipv6"], vms["sb"]["ipv6"]} == {"fd00:131::2", "fd00:131::3"}

    assert "up to date, nothing to change" in run_pvmlab("up", "-f", str(lab), "--no-start").stdout
    assert _records(home) == vms

    # Changing a new key makes that machine again (same MAC and addresses), only that one.
    lab.write_text(text.replace('loader = "grub"\n', 'loader = "ipxe"\n'))
    again = json.loads(run_pvmlab("up", "-f", str(lab), "--no-start", "--json").stdout)
    assert [(c["action"], c["name"]) for c in again["changes"] if c["kind"] == "machine"] == [
        ("recreate", "grub")
    ]
    after = _records(home)
    assert after["grub"]["loader"] == "ipxe"
    assert after["grub"]["mac"] == vms["grub"]["mac"]
    assert after["grub"]["ipv6"] == vms["grub"]["ipv6"]
    assert after["sb"] == vms["sb"]
    run_pvmlab("down", "-f", str(lab))


def test_up_no_start_ipv6_only_lab(tmp_path: Path, labs: Path) -> None:
    lab = tmp_path / "six.toml"
    lab.write_text(
        '[provisioner]\nipv6 = "fd00:132::/64"\nipv4 = false\n\n'
        '[[machines]]\nname = "v6"\narch = "x86_64"\nipv6 = "fd00:132::42"\n'
    )
    out = json.loads(run_pvmlab("up", "-f", str(lab), "--no-start", "--json").stdout)
    home = Path(out["home"])
    labspec = json.loads((home / "lab.json").read_text())
    assert (labspec["address"], labspec["dhcp_start"], labspec["ipv6"]) == (
        None, None, "fd00:132::1/64"
    )  # fmt: skip
    vm = _records(home)["v6"]
    assert (vm["ip"], vm["ipv6"]) == (None, "fd00:132::42")
    run_pvmlab("down", "-f", str(lab))


def test_pvmlab_test_boots_a_grub_machine(
    tmp_path: Path, labs: Path, boot_assets: dict[str, BootAssets]
) -> None:
    text = f"""\
name = "keys-grub"

[provisioner]
address = "192.168.133.1/24"

[[distros]]
name = "tiny"
arch = "x86_64"
kernel = "assets/x86_64/vmlinuz"
initrd = "assets/x86_64/initrd"
cmdline = "console=ttyS0"

[[machines]]
name = "g"
arch = "x86_64"
distro = "tiny"
loader = "grub"
memory = 512
ready = {{ console = "{MARKER}", timeout = 600 }}
"""
    lab = _lab_dir(tmp_path, boot_assets["x86_64"], text)
    result = tmp_path / "result.json"
    proc = run_pvmlab("test", "-f", str(lab), "--json", str(result), check=False, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "1 passed, 0 failed"
    home = labs / "keys-grub"
    assert _records(home)["g"]["loader"] == "grub"
    # GRUB, not iPXE, was the first stage: dnsmasq sent it, and no client said it was iPXE
    log = (home / "logs" / "dnsmasq.log").read_text(errors="replace")
    assert f"sent {home}/tftp/grubx64.efi" in log
    assert "user class: iPXE" not in log
    machine = json.loads(result.read_text())["machines"][0]
    assert any(MARKER in line for line in machine["console_tail"])
    run_pvmlab("down", "-f", str(lab))
