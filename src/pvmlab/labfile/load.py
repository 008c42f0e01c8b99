"""Reading a lab file: TOML → checked declarations → the machines it stands for.

Every problem is one error naming the file and line (``lab.toml:12: machines[1].memory: …``),
found before anything is created: field checks by the models, then what needs the whole file
(duplicate names once ``count`` is stamped out, distros that machines name, room in the subnet).
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError as PydanticError

from pvmlab.errors import PvmlabError, ValidationError
from pvmlab.labfile.locate import Path as KeyPath
from pvmlab.labfile.locate import key_lines, line_of
from pvmlab.labfile.model import Distro, KeyProblem, LabFileModel, Machine
from pvmlab.records import validate

_TOML_LINE = re.compile(r"\(at line (\d+), column \d+\)")


@dataclass(frozen=True)
class MachinePlan:
    """One machine the file stands for (``count`` already stamped out)."""

    name: str
    decl: Machine
    index: int  # position of its [[machines]] entry


@dataclass(frozen=True)
class LabFile:
    path: Path
    name: str
    model: LabFileModel
    machines: list[MachinePlan]

    def distro_for(self, machine: Machine) -> Distro | None:
        for d in self.model.distros:
            if d.name == machine.distro and d.arch == machine.arch:
                return d
        return None

    def asset(self, relative: str) -> Path:
        """A path written in the file, relative to the file's directory."""
        return (self.path.parent / relative).resolve()


def _where(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _error(file: Path, line: int | None, what: str, problem: str, hint: str) -> ValidationError:
    at = f"{file.name}:{line}" if line is not None else file.name
    return ValidationError(f"{at}: {what}: {problem}" if what else f"{at}: {problem}", hint)


def read(path: Path) -> LabFile:
    """The lab file at ``path``, checked whole; ValidationError naming the line otherwise."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ValidationError(
            f"no lab file at {path}", "give its path with -f, or write lab.toml here"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(f"cannot read lab file {path}: {exc}", "check the path") from None
    return parse(text, path)


def parse(text: str, path: Path) -> LabFile:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = _TOML_LINE.search(str(exc))
        msg = _TOML_LINE.sub("", str(exc)).strip()
        raise _error(
            path, int(m.group(1)) if m else None, "", f"invalid TOML: {msg}",
            "see https://toml.io for the syntax",
        ) from None
    lines = key_lines(text)
    try:
        model = LabFileModel.model_validate(raw)
    except PydanticError as exc:
        err = exc.errors()[0]
        loc = err["loc"]
        cause = (err.get("ctx") or {}).get("error")
        hint = "fix the value"
        if isinstance(cause, KeyProblem):  # a check across keys names the key it blames
            loc = (*loc, cause.key)
            hint = cause.hint or hint
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key {str(loc[-1])!r}"
            hint = "see docs/lab.schema.json for the keys a lab file has"
        elif err["type"] == "missing":
            msg = f"{str(loc[-1])!r} is required"
            hint = "add it"
        more = len(exc.errors()) - 1
        if more:
            hint += f" ({more} more problem{'s' if more > 1 else ''} after this one)"
        raise _error(path, line_of(lines, loc), _where(loc), msg, hint) from None
    name = model.name or _name_from(path)
    plans = _plan(path, lines, model)
    return LabFile(path=path.resolve(), name=name, model=model, machines=plans)


def _name_from(path: Path) -> str:
    stem = path.stem if path.stem != "lab" else path.resolve().parent.name
    candidate = re.sub(r"[^A-Za-z0-9-]+", "-", stem).strip("-")[:63] or "lab"
    try:
        return validate.vm_name(candidate)
    except PvmlabError:
        return "lab"


def _plan(path: Path, lines: dict[KeyPath, int], model: LabFileModel) -> list[MachinePlan]:
    seen_distros: set[tuple[str, str]] = set()
    for i, d in enumerate(model.distros):
        if (d.name, d.arch) in seen_distros:
            raise _error(
                path, line_of(lines, ("distros", i, "name")), f"distros[{i}]",
                f"distro {d.name!r} for {d.arch} is declared twice", "keep one of them",
            )
        seen_distros.add((d.name, d.arch))

    plans: list[MachinePlan] = []
    owner: dict[str, int] = {}
    for i, m in enumerate(model.machines):
        if m.distro is not None and (m.distro, m.arch) not in seen_distros:
            raise _error(
                path, line_of(lines, ("machines", i, "distro")), f"machines[{i}].distro",
                f"no distro {m.distro!r} for {m.arch} is declared in this file",
                f"add a [[distros]] entry with name = {m.distro!r} and arch = {m.arch!r}",
            )
        for name in m.names():
            try:
                validate.vm_name(name)
            except PvmlabError as exc:
                raise _error(
                    path, line_of(lines, ("machines", i, "name")), f"machines[{i}].name",
                    exc.problem, "use a shorter base name",
                ) from None
            if name in owner:
                raise _error(
                    path, line_of(lines, ("machines", i, "name")), f"machines[{i}].name",
                    f"machine {name!r} is also made by machines[{owner[name]}]",
                    "give each machine (and each count's base name) a distinct name",
                )
            owner[name] = i
            plans.append(MachinePlan(name=name, decl=m, index=i))
    _check_ipv6(path, lines, model)
    _check_room(path, lines, model, plans)
    return plans


def _check_ipv6(path: Path, lines: dict[KeyPath, int], model: LabFileModel) -> None:
    """Machines' IPv6 reservations: in the lab's /64, outside its DHCPv6 range, each once."""
    prefix = model.provisioner.ipv6
    owner: dict[str, int] = {}
    for i, m in enumerate(model.machines):
        if m.ipv6 is None:
            continue
        where = ("machines", i, "ipv6")
        if prefix is None:
            raise _error(
                path, line_of(lines, where), f"machines[{i}].ipv6",
                f"the lab has no IPv6 prefix, so machine {m.name} cannot have {m.ipv6}",
                'give the provisioner one (ipv6 = "PREFIX/64"), or drop the machine\'s ipv6',
            )
        iface6 = validate.ipv6_interface(prefix)
        start6, end6 = validate.ipv6_dynamic_range(iface6.network)
        try:
            addr = validate.ipv6_in(m.ipv6, iface6.network, "address")
        except PvmlabError as exc:
            raise _error(
                path, line_of(lines, where), f"machines[{i}].ipv6", exc.problem,
                exc.hint or "fix the address",
            ) from None
        problem = None
        if addr == iface6.ip:
            problem = f"{addr} is the provisioner's address"
        elif start6 <= addr <= end6:
            problem = f"{addr} is inside the DHCPv6 dynamic range {start6}-{end6}"
        elif str(addr) in owner:
            problem = f"{addr} is also the address of machines[{owner[str(addr)]}]"
        if problem is not None:
            raise _error(
                path, line_of(lines, where), f"machines[{i}].ipv6", problem,
                f"choose another address below {start6} (or leave ipv6 out: the lowest free one)",
            )
        owner[str(addr)] = i


def _check_room(
    path: Path,
    lines: dict[KeyPath, int],
    model: LabFileModel,
    plans: list[MachinePlan],
) -> None:
    """Every machine needs a reserved address outside the dynamic range: is there room?"""
    if not model.provisioner.ipv4:  # IPv6-only: reservations below PREFIX::1000
        _check_room6(path, lines, model, plans)
        return
    iface = validate.ipv4_interface(model.provisioner.address)
    if model.provisioner.range is not None:
        try:
            start, end = validate.dhcp_range(model.provisioner.range, iface)
        except PvmlabError as exc:
            raise _error(
                path, line_of(lines, ("provisioner", "range")), "provisioner.range",
                exc.problem, exc.hint or "fix the range",
            ) from None
    else:
        start, end = validate.default_dhcp_range(iface)
    free = iface.network.num_addresses - 2 - 1 - (int(end) - int(start) + 1)
    if len(plans) <= free:
        return
    # Name the entry whose machines no longer fit.
    total = 0
    culprit = len(model.machines) - 1
    for i, m in enumerate(model.machines):
        total += m.count
        if total > free:
            culprit = i
            break
    net = ipaddress.IPv4Network(iface.network)
    raise _error(
        path, line_of(lines, ("machines", culprit, "count")), f"machines[{culprit}].count",
        f"{len(plans)} machines need reserved addresses but {net} has room for {free} outside "
        f"the DHCP range {start}-{end}",
        "lower count, or give the provisioner a larger subnet or a smaller range",
    )


def _check_room6(
    path: Path,
    lines: dict[KeyPath, int],
    model: LabFileModel,
    plans: list[MachinePlan],
) -> None:
    if model.provisioner.ipv6 is None:  # the model refuses ipv4 = false without it
        return
    iface6 = validate.ipv6_interface(model.provisioner.ipv6)
    start6, _ = validate.ipv6_dynamic_range(iface6.network)
    free = int(start6) - int(iface6.network.network_address) - 2  # PREFIX:: and the provisioner's
    if len(plans) <= free:
        return
    total, culprit = 0, len(model.machines) - 1
    for i, m in enumerate(model.machines):
        total += m.count
        if total > free:
            culprit = i
            break
    raise _error(
        path, line_of(lines, ("machines", culprit, "count")), f"machines[{culprit}].count",
        f"{len(plans)} machines need IPv6 reservations but {iface6.network} has room for {free} "
        f"below the DHCPv6 range at {start6}",
        "lower count, or give the lab IPv4 too",
    )
