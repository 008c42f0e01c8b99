"""`vm clean` and the DHCP leases of a stopped stack: the VM's lines leave dnsmasq's lease file
(which dnsmasq reads when it starts), every other line stays as it was. The running stack's
path (``dhcp_release`` in the lab namespace) is proven in tests/integration/test_stack.py."""

from __future__ import annotations

from pathlib import Path

from pvmlab.home import LabHome
from pvmlab.records import store
from pvmlab.records.models import LabSpec
from pvmlab.vm.clean import clean_vm, release_leases
from pvmlab.vm.define import CreateRequest, create

OLD_MAC = "0e:00:00:00:50:01"
OTHER = "1700000000 0e:00:00:00:50:09 192.168.105.9 other 01:0e:00:00:00:50:09\n"


def lab_home(tmp_path: Path) -> LabHome:
    home = LabHome(tmp_path / "home")
    home.ensure()
    store.save_lab(home, LabSpec(dhcp_start="192.168.105.100", dhcp_end="192.168.105.199"))
    return home


def lease_line(mac: str, ip: str, name: str) -> str:
    return f"1700000000 {mac} {ip} {name} *\n"


def test_clean_drops_the_vm_leases_from_a_stopped_stack(tmp_path: Path) -> None:
    home = lab_home(tmp_path)
    create(home, CreateRequest(name="gone", arch="x86_64", mac=OLD_MAC, ip="192.168.105.51"))
    home.dnsmasq_leases.write_text(
        lease_line(OLD_MAC, "192.168.105.51", "gone")
        + OTHER
        + lease_line("0e:00:00:00:50:02", "192.168.105.150", "gone")  # its name, another MAC
    )
    said: list[str] = []
    clean_vm(home, "gone", say=said.append)
    assert home.dnsmasq_leases.read_text() == OTHER
    assert "gone: DHCP lease released (192.168.105.51, 192.168.105.150)" in said


def test_release_without_leases_leaves_the_file_alone(tmp_path: Path) -> None:
    home = lab_home(tmp_path)
    home.dnsmasq_leases.write_text(OTHER)
    assert release_leases(home, "absent", OLD_MAC) == []
    assert home.dnsmasq_leases.read_text() == OTHER


def test_release_without_a_lease_file(tmp_path: Path) -> None:
    home = lab_home(tmp_path)
    assert release_leases(home, "absent", None) == []
    assert not home.dnsmasq_leases.exists()
