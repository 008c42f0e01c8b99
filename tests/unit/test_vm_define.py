"""`vm create`: validation at the edge, allocation, and nothing written on bad input.

These run the real CLI in a subprocess (``run_pvmlab``) against a lab home made by the test; no
network or QEMU is needed to define a VM (the stack is not running, so its reload is a no-op).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import needs, run_pvmlab
from pvmlab.errors import ValidationError
from pvmlab.home import LabHome
from pvmlab.records import store
from pvmlab.records.models import DistroAssets, LabSpec
from pvmlab.vm.define import CreateRequest, allocate_ip, create


@pytest.fixture
def home(tmp_path: Path) -> LabHome:
    h = LabHome(tmp_path / "home")
    h.ensure()
    store.save_lab(h, LabSpec(dhcp_start="192.168.105.100", dhcp_end="192.168.105.199"))
    for arch in ("x86_64", "aarch64"):
        store.save_distro(
            h,
            DistroAssets(
                name="tiny",
                arch=arch,  # type: ignore[arg-type]
                kernel_sha256="0" * 64,
                initrd_sha256="0" * 64,
                kernel_size=1,
                initrd_size=1,
            ),
        )
    return h


def snapshot(h: LabHome) -> list[str]:
    return sorted(str(p.relative_to(h.root)) for p in h.root.rglob("*") if p.name != ".lock")


def test_defaults_and_allocation(home: LabHome) -> None:
    a = create(home, CreateRequest(name="a", arch="x86_64"))
    b = create(home, CreateRequest(name="b", arch="aarch64", distro="tiny"))
    assert (a.ip, b.ip) == ("192.168.105.2", "192.168.105.3")  # lowest free, skipping .1
    assert a.firmware == "uefi" and a.memory_mib == 1024 and a.cpus == 1
    assert int(a.mac.split(":")[0], 16) & 0b11 == 0b10  # locally administered unicast
    assert a.mac != b.mac
    on_disk = json.loads(home.vm_file("b").read_text())
    assert on_disk["distro"] == "tiny" and on_disk["arch"] == "aarch64"


def test_explicit_values_are_normalised(home: LabHome) -> None:
    vm = create(
        home, CreateRequest(name="n1", arch="x86_64", mac="0E-AA-BB-CC-DD-EE", ip="192.168.105.50")
    )
    assert vm.mac == "0e:aa:bb:cc:dd:ee" and vm.ip == "192.168.105.50"
    nxt = create(home, CreateRequest(name="n2", arch="x86_64"))
    assert nxt.ip == "192.168.105.2"


def test_allocation_skips_provisioner_and_range_then_runs_out() -> None:
    lab = LabSpec(address="10.0.0.1/29", dhcp_start="10.0.0.2", dhcp_end="10.0.0.4")
    # hosts .1-.6: .1 provisioner, .2-.4 dynamic: .5 and .6 remain
    assert str(allocate_ip(lab, set())) == "10.0.0.5"
    assert str(allocate_ip(lab, {"10.0.0.5"})) == "10.0.0.6"
    with pytest.raises(ValidationError, match="no free address"):
        allocate_ip(lab, {"10.0.0.5", "10.0.0.6"})


@needs("qemu-img")
def test_disk_is_created_with_qemu_img(home: LabHome) -> None:
    create(home, CreateRequest(name="d1", arch="x86_64", disk_size="64M"))
    info = json.loads(
        __import__("subprocess")
        .run(
            ["qemu-img", "info", "--output=json", str(home.vm_dir("d1") / "disk.qcow2")],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout
    )
    assert info["format"] == "qcow2" and info["virtual-size"] == 64 * 1024 * 1024


BAD = [
    (["../x"], "invalid VM name"),
    (["a b"], "invalid VM name"),
    (["bad\nname"], "invalid VM name"),
    ([""], "invalid VM name"),
    (["v", "--mac", "01:00:5e:00:00:01"], "multicast"),
    (["v", "--mac", "ff:ff:ff:ff:ff:ff"], "broadcast"),
    (["v", "--mac", "0e:00:00:00:00:01"], "already used by VM 'taken'"),
    (["v", "--ip", "10.1.2.3"], "outside the lab subnet"),
    (["v", "--ip", "192.168.105.150"], "inside the DHCP dynamic range"),
    (["v", "--ip", "192.168.105.1"], "provisioner's address"),
    (["v", "--ip", "192.168.105.20"], "already used by VM 'taken'"),
    (["taken"], "already exists"),
    (["v", "--distro", "nope"], "unknown distro 'nope'"),
    (
        ["v", "--arch", "aarch64", "--firmware", "bios"],
        "legacy BIOS firmware exists only for x86_64",
    ),
    (["v", "--memory", "1"], "out of range"),
    (["v", "--disk-size", "lots"], "invalid disk size"),
    (["v", "--cmdline", "a\nb"], "newline"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[repr(a) for a, _ in BAD])
def test_bad_input_one_line_error_nothing_created(
    home: LabHome, args: list[str], message: str
) -> None:
    create(
        home,
        CreateRequest(name="taken", arch="x86_64", mac="0e:00:00:00:00:01", ip="192.168.105.20"),
    )
    before = snapshot(home)
    proc = run_pvmlab("vm", "create", *args, home=home.root, check=False)
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert message in err
    assert snapshot(home) == before


def test_needs_a_lab(tmp_path: Path) -> None:
    proc = run_pvmlab("vm", "create", "v1", home=tmp_path / "nohome", check=False)
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "nohome" / "vms").exists()


def test_loader_and_secure_boot_choices(home: LabHome) -> None:
    plain = create(home, CreateRequest(name="p", arch="x86_64"))
    grub = create(home, CreateRequest(name="g", arch="aarch64", loader="grub"))
    assert (plain.loader, plain.secure_boot, grub.loader) == ("ipxe", False, "grub")
    if Path("/usr/share/qemu/firmware/40-edk2-x86_64-secure-enrolled.json").is_file():
        sb = create(home, CreateRequest(name="s", arch="x86_64", secure_boot=True))
        assert (sb.loader, sb.secure_boot) == ("grub", True)  # shim and GRUB by default
        refused = create(home, CreateRequest(name="r", arch="x86_64", secure_boot=True,
                                             loader="ipxe"))  # fmt: skip
        assert (refused.loader, refused.secure_boot) == ("ipxe", True)


def test_distro_declares_its_default_loader(home: LabHome) -> None:
    distro = store.load_distro(home, "tiny", "x86_64")
    assert distro is not None
    store.save_distro(home, distro.model_copy(update={"loader": "grub"}))
    assert create(home, CreateRequest(name="d", arch="x86_64", distro="tiny")).loader == "grub"
    explicit = CreateRequest(name="e", arch="x86_64", distro="tiny", loader="ipxe")
    assert create(home, explicit).loader == "ipxe"


@pytest.mark.parametrize(
    ("req", "problem"),
    [
        ({"firmware": "bios", "secure_boot": True},
         "Secure Boot needs UEFI firmware, not legacy BIOS"),
        ({"firmware": "bios", "loader": "grub"},
         "the GRUB first stage is a UEFI program; legacy BIOS gets iPXE"),
        ({"loader": "pxelinux"}, "unknown loader 'pxelinux'"),
    ],
)  # fmt: skip
def test_loader_refusals(home: LabHome, req: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError) as err:
        create(home, CreateRequest(name="x", arch="x86_64", **req))  # type: ignore[arg-type]
    assert err.value.problem == problem
    assert not home.vm_file("x").exists()
