"""Reading and writing the lab's records in a lab home.

Writers hold ``LabHome.locked()`` around read-modify-write sequences; files are replaced
atomically, so readers never need the lock.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError as PydanticError

from pvmlab.errors import StateError
from pvmlab.home import LabHome, write_json
from pvmlab.records.models import DistroAssets, LabSpec, VMSpec, first_problem

R = TypeVar("R", LabSpec, VMSpec, DistroAssets)


def _load(path: Path, model: type[R]) -> R:
    try:
        raw = json.loads(path.read_text())
        return model.model_validate(raw)
    except (OSError, json.JSONDecodeError, PydanticError) as exc:
        raise StateError(
            f"{path} is unreadable or invalid: {first_problem(exc)}",
            "fix or remove the file (it is plain JSON)",
        ) from None


def load_lab(home: LabHome) -> LabSpec:
    if not home.lab_file.exists():
        raise StateError(
            f"no lab is defined in {home.root}",
            "create one with `pvmlab provisioner create`",
        )
    return _load(home.lab_file, LabSpec)


def save_lab(home: LabHome, lab: LabSpec) -> None:
    write_json(home.lab_file, lab.model_dump(mode="json"))


def vm_names(home: LabHome) -> list[str]:
    if not home.vms.is_dir():
        return []
    return sorted(p.stem for p in home.vms.glob("*.json") if not p.name.startswith("."))


def load_vm(home: LabHome, name: str) -> VMSpec:
    path = home.vm_file(name)
    if not path.exists():
        raise StateError(f"no VM named {name!r}", "see `pvmlab vm list` for the defined VMs")
    return _load(path, VMSpec)


@dataclass(frozen=True)
class DamagedRecord:
    """A VM record that cannot be read: named, with the reason, so the rest of the lab goes on."""

    name: str
    path: Path
    problem: str
    mac: str | None = None  # what the file still says, when it can be read as JSON at all:
    ip: str | None = None  # new VMs keep away from these addresses

    @property
    def hint(self) -> str:
        return (
            f"fix {self.path} (plain JSON) or remove the VM with `pvmlab vm clean {self.name}`"
        )


def scan_vms(home: LabHome) -> tuple[list[VMSpec], list[DamagedRecord]]:
    """Every VM record: the readable ones, and the damaged ones with what is wrong with each."""
    healthy: list[VMSpec] = []
    damaged: list[DamagedRecord] = []
    for name in vm_names(home):
        path = home.vm_file(name)
        try:
            healthy.append(_load(path, VMSpec))
        except StateError as exc:
            mac, ip = _claimed_addresses(path)
            damaged.append(DamagedRecord(name, path, exc.problem, mac, ip))
    return healthy, damaged


def _claimed_addresses(path: Path) -> tuple[str | None, str | None]:
    """The ``mac`` and ``ip`` strings of a record that does not validate, if it parses."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, None
    if not isinstance(raw, dict):
        return None, None
    mac, ip = raw.get("mac"), raw.get("ip")
    return (
        mac.strip().lower() if isinstance(mac, str) else None,
        ip.strip() if isinstance(ip, str) else None,
    )


def load_vms(home: LabHome) -> list[VMSpec]:
    """The readable VM records (see ``scan_vms`` for the damaged ones)."""
    return scan_vms(home)[0]


def save_vm(home: LabHome, vm: VMSpec) -> None:
    write_json(home.vm_file(vm.name), vm.model_dump(mode="json"))


def distro_dir(home: LabHome, name: str, arch: str) -> Path:
    return home.distro_dir(name, arch)


def load_distro(home: LabHome, name: str, arch: str) -> DistroAssets | None:
    path = home.distro_file(name, arch)
    if not path.exists():
        return None
    return _load(path, DistroAssets)


def load_distros(home: LabHome) -> list[DistroAssets]:
    out: list[DistroAssets] = []
    if not home.images.is_dir():
        return out
    for meta in sorted(home.images.glob("*/*/distro.json")):
        out.append(_load(meta, DistroAssets))
    return out


def save_distro(home: LabHome, d: DistroAssets) -> None:
    write_json(home.distro_file(d.name, d.arch), d.model_dump(mode="json"))
