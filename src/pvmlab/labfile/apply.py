"""`pvmlab up` / `down` / `ls`: make a lab home match its lab file, and take it away again.

Each lab file gets a lab home of its own, named after the lab (``~/.pvmlab-labs/NAME``, or
``$PVMLAB_LABS/NAME``; ``--home`` / ``PVMLAB_HOME`` choose one explicitly), so several labs run
side by side. The home records which file made it and a fingerprint of every provisioner,
distro and machine it made (``labfile.json``); ``up`` compares the file with that record and
with what is really there, and changes only what differs:

    provisioner   created when missing; a new address or range redefines the lab (its machines
                  are made again, on the new subnet); a new uplink setting restarts the stack
    distros       imported when missing or when the files' SHA-256 changed
    machines      created when missing, made again (same MAC and IP) when their declaration
                  changed, removed when the file no longer has them

Running ``up`` twice changes nothing the second time. Everything is checked (the whole file,
every path it names) before the first change.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvmlab.arch import DEFAULT_NET_BOOT
from pvmlab.assets import catalog
from pvmlab.assets import distro as distro_assets
from pvmlab.assets.files import sha256_file
from pvmlab.assets.pull import pull as pull_distro
from pvmlab.errors import PvmlabError, StateError, ValidationError
from pvmlab.home import LabHome, read_json, write_json
from pvmlab.labfile.load import LabFile, MachinePlan
from pvmlab.labfile.model import Distro, Machine
from pvmlab.records import store, validate
from pvmlab.records.models import LabSpec

Say = Callable[[str], None]


def labs_root() -> Path:
    """Where lab homes made from lab files live (``PVMLAB_LABS``, else ``~/.pvmlab-labs``)."""
    env = os.environ.get("PVMLAB_LABS")
    return Path(env).expanduser() if env else Path.home() / ".pvmlab-labs"


def home_for(lab: LabFile, explicit: Path | None = None) -> LabHome:
    """The lab home of ``lab``: the explicit one, else ``labs_root()/NAME``."""
    root = explicit if explicit is not None else labs_root() / lab.name
    return LabHome(root.absolute())


def _fingerprint(value: Any) -> str:
    raw = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


# Keys added after lab files first made machines, with the value that leaves them out of the
# fingerprint: a machine made before the key existed keeps its fingerprint (and is not made
# again by an upgrade), while setting the key changes it.
_LATER_KEYS: dict[str, object] = {
    "net_boot": DEFAULT_NET_BOOT,
    "loader": None,
    "secure_boot": False,
    "ipv6": None,
    "image": None,
}


def machine_fingerprint(plan: MachinePlan) -> str:
    """What a machine's definition depends on (what ``vm create`` is given)."""
    decl = plan.decl.model_dump(mode="json", exclude={"name", "count", "ready", "boot", "accel"})
    for key, default in _LATER_KEYS.items():
        if decl.get(key) == default:
            del decl[key]
    return _fingerprint(decl)


@dataclass
class Change:
    action: str  # create, recreate, remove, import, redefine, start, keep
    kind: str  # provisioner, distro, machine, stack
    name: str
    why: str = ""

    def line(self) -> str:
        return f"{self.action} {self.kind} {self.name}" + (f" ({self.why})" if self.why else "")

    def as_dict(self) -> dict[str, str]:
        return {"action": self.action, "kind": self.kind, "name": self.name, "why": self.why}


@dataclass
class Record:
    """``labfile.json``: which file made this home, and what it made."""

    file: str
    name: str
    provisioner: str = ""
    distros: dict[str, str] = field(default_factory=dict)
    machines: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, home: LabHome) -> Record | None:
        raw = read_json(home.labfile_record)
        if not raw:
            return None
        try:
            return cls(
                file=str(raw["file"]),
                name=str(raw["name"]),
                provisioner=str(raw.get("provisioner", "")),
                distros={str(k): str(v) for k, v in dict(raw.get("distros", {})).items()},
                machines={str(k): str(v) for k, v in dict(raw.get("machines", {})).items()},
            )
        except (KeyError, TypeError, ValueError):
            return None

    def write(self, home: LabHome) -> None:
        write_json(home.labfile_record, self.__dict__)


def _desired_lab(lab: LabFile) -> LabSpec:
    p = lab.model.provisioner
    if not p.ipv4:
        return LabSpec(address=None, ipv6=p.ipv6, uplink=False)
    iface = validate.ipv4_interface(p.address)
    if p.range is not None:
        start, end = validate.dhcp_range(p.range, iface)
    else:
        start, end = validate.default_dhcp_range(iface)
    return LabSpec(
        address=str(iface), dhcp_start=str(start), dhcp_end=str(end), ipv6=p.ipv6,
        uplink=p.uplink,
    )  # fmt: skip


def _lab_fingerprint(spec: LabSpec) -> str:
    fp: dict[str, str | None] = {
        "address": spec.address, "start": spec.dhcp_start, "end": spec.dhcp_end
    }  # fmt: skip
    if spec.ipv6 is not None:  # labs made before IPv6 keep their fingerprint
        fp["ipv6"] = spec.ipv6
    return _fingerprint(fp)


def _lab_label(spec: LabSpec) -> str:
    return " and ".join(a for a in (spec.address, spec.ipv6) if a is not None)


def _lab_ranges(spec: LabSpec) -> str:
    ranges = [f"{spec.address} {spec.dhcp_start}-{spec.dhcp_end}"] if spec.has_ipv4 else []
    if spec.has_ipv6:
        ranges.append(str(spec.ipv6))
    return ", ".join(ranges)


def _distro_files(lab: LabFile, d: Distro) -> tuple[Path, Path] | None:
    """The files an imported distro comes from (None for a pulled one), checked to exist."""
    if d.kernel is None or d.initrd is None:
        return None
    kernel, initrd = lab.asset(d.kernel), lab.asset(d.initrd)
    for what, path in (("kernel", kernel), ("initrd", initrd)):
        if not path.is_file():
            raise ValidationError(
                f"{lab.path.name}: distro {d.name} ({d.arch}): {what} {path} does not exist",
                "paths in a lab file are relative to the file; build or fetch the file first",
            )
    return kernel, initrd


def image_path(lab: LabFile, m: Machine) -> Path | None:
    """What ``vm create --image`` is given for ``m``: a path (relative to the lab file) when one
    is written or a file of that name is next to the file, else the name (``image ls``)."""
    if m.image is None:
        return None
    written = Path(m.image).expanduser()
    if len(written.parts) == 1 and not lab.asset(m.image).is_file():
        return written  # a name: `pvmlab image ls`, or a pulled cloud image
    return lab.asset(str(written))


def _install_files(lab: LabFile, m: Machine) -> None:
    image = image_path(lab, m)
    if image is not None and len(image.parts) > 1 and not image.is_file():
        raise ValidationError(
            f"{lab.path.name}: machine {m.name}: image {image} does not exist",
            "paths in a lab file are relative to the file; give an image file, or a name "
            "from `pvmlab image ls`",
        )
    for kind, rel in m.install_files().items():
        if rel is not None and not lab.asset(rel).is_file():
            raise ValidationError(
                f"{lab.path.name}: machine {m.name}: {kind} template {lab.asset(rel)} does not "
                "exist",
                "paths in a lab file are relative to the file",
            )


def _firmware_and_image(home: LabHome, lab: LabFile, m: Machine) -> None:
    """What `vm create` would refuse only once earlier machines were made: firmware without
    Secure Boot or HTTP Boot, an image name nothing provides."""
    from pvmlab.arch import architecture
    from pvmlab.deploy import image
    from pvmlab.qemu import firmware as firmware_mod
    from pvmlab.vm import define

    try:
        arch = validate.arch(m.arch)
        if m.secure_boot:
            firmware_mod.require_secure_boot(arch, architecture(arch).machine(m.firmware))
        if m.net_boot == "http":
            define.check_http_boot_firmware(arch)
        path = image_path(lab, m)
        pulled_here = any(d.name == m.image and d.arch == m.arch for d in lab.model.distros)
        if path is not None and len(path.parts) == 1 and not pulled_here:
            image.resolve(home, path, m.arch)  # a name: built (`image ls`) or pulled before
    except PvmlabError as exc:
        kind = type(exc) if type(exc).__init__ is PvmlabError.__init__ else ValidationError
        raise kind(f"{lab.path.name}: machine {m.name}: {exc.problem}", exc.hint) from None


def _check_owner(home: LabHome, lab: LabFile) -> Record | None:
    record = Record.read(home)
    if record is not None and Path(record.file) != lab.path:
        raise StateError(
            f"lab {lab.name!r} in {home.root} was made from {record.file}, not {lab.path}",
            f"`pvmlab down -f {record.file}` first, or give this lab another name",
        )
    if record is None and home.lab_file.exists():
        raise StateError(
            f"{home.root} holds a lab that no lab file made",
            "choose another home (--home) or remove that lab (`pvmlab clean --purge`)",
        )
    return record


def up(
    lab: LabFile,
    home: LabHome,
    *,
    start_machines: bool = True,
    wait: bool = False,
    dry_run: bool = False,
    say: Say = lambda _m: None,
) -> list[Change]:
    """Reconcile ``home`` with ``lab``; returns what changed (or would, with ``dry_run``).

    With ``wait`` the machines it starts are waited for until each meets its ``ready``
    condition (console, then SSH and its command when the file has one: the same path as
    `pvmlab test`); one that does not is a StateError naming it and why."""
    from pvmlab.stack import control
    from pvmlab.vm import clean, define, runtime, state

    # Everything is checked before the first change.
    want_lab = _desired_lab(lab)
    distro_files = {(d.name, d.arch): _distro_files(lab, d) for d in lab.model.distros}
    for m in lab.model.machines:
        _install_files(lab, m)
        _firmware_and_image(home, lab, m)
    for d in lab.model.distros:
        if d.pull is not None:  # an unknown entry, arch or method: refused before any change
            catalog.resolve(
                catalog.get(home, d.name), d.arch, None if d.pull == "default" else d.pull,
                d.mirror,
            )  # fmt: skip
    if home.root.exists():
        home.check_ownership()
    record = _check_owner(home, lab) if home.root.exists() else None
    record = record or Record(file=str(lab.path), name=lab.name)
    changes: list[Change] = []

    # --- provisioner
    have_lab = store.load_lab(home) if home.lab_file.exists() else None
    redefine = have_lab is not None and _lab_fingerprint(have_lab) != _lab_fingerprint(want_lab)
    uplink_changed = have_lab is not None and have_lab.uplink != want_lab.uplink
    if have_lab is None:
        changes.append(Change("create", "provisioner", _lab_label(want_lab)))
    elif redefine:
        changes.append(Change("redefine", "provisioner", _lab_label(want_lab),
                              f"was {_lab_ranges(have_lab)}"))
    elif uplink_changed:
        changes.append(Change("redefine", "provisioner", _lab_label(want_lab),
                              f"uplink {'on' if want_lab.uplink else 'off'}"))

    # --- distros
    want_distros: dict[str, tuple[Distro, tuple[Path, Path] | None, str]] = {}
    for d in lab.model.distros:
        files = distro_files[(d.name, d.arch)]
        if files is not None:
            digest = _fingerprint([sha256_file(files[0]), sha256_file(files[1]), d.cmdline])
        else:
            digest = _fingerprint(["pull", d.pull, d.mirror, d.cmdline])
        want_distros[f"{d.name}/{d.arch}"] = (d, files, digest)
        have = store.load_distro(home, d.name, d.arch) if home.root.exists() else None
        if have is None or record.distros.get(f"{d.name}/{d.arch}") != digest:
            changes.append(Change("import", "distro", f"{d.name} ({d.arch})",
                                  "new" if have is None else "files or command line changed"))

    # --- machines
    existing = set(store.vm_names(home)) if home.root.exists() else set()
    want = {p.name: p for p in lab.machines}
    for name in sorted(record.machines):
        if name not in want and name in existing:
            changes.append(Change("remove", "machine", name, "no longer in the file"))
    for plan in lab.machines:
        fp = machine_fingerprint(plan)
        if plan.name not in existing or redefine:
            if plan.name in existing and plan.name not in record.machines:
                raise StateError(
                    f"a VM named {plan.name!r} exists in {home.root} but the lab file did not "
                    "make it",
                    f"remove it (`pvmlab --home {home.root} vm clean {plan.name}`) or rename "
                    "the machine",
                )
            changes.append(Change("recreate" if plan.name in existing else "create", "machine",
                                  plan.name, "new subnet" if redefine else ""))
        elif record.machines.get(plan.name) != fp:
            changes.append(Change("recreate", "machine", plan.name, "its declaration changed"))
    if dry_run:
        return changes

    # --- apply
    home.ensure()
    if redefine or uplink_changed:
        if control.is_stack_running(home):
            say("stopping the lab to change the provisioner")
            control.stop_stack(home, stop_vms=True, say=say)
        if redefine:
            for name in sorted(existing & set(record.machines)):
                clean.clean_vm(home, name, reload=False, say=say)
            existing -= set(record.machines)
            record.machines = {}
    if have_lab is None or redefine or uplink_changed:
        with home.locked():
            store.save_lab(home, want_lab)
    record.provisioner = _lab_fingerprint(want_lab)
    record.write(home)

    for c in changes:
        if c.kind == "distro":
            key = c.name.replace(" (", "/").rstrip(")")
            d, files, digest = want_distros[key]
            if files is not None:
                say(f"importing distro {d.name} ({d.arch})")
                distro_assets.import_result(
                    home, d.name, d.arch, files[0], files[1], d.cmdline, origin=str(files[0])
                )
            else:
                say(f"pulling distro {d.name} ({d.arch}, {d.pull})")
                pull_distro(
                    home, d.name, d.arch, None if d.pull == "default" else d.pull, d.mirror,
                    cmdline=d.cmdline,
                )  # fmt: skip
            record.distros[key] = digest
            record.write(home)

    # Removals first, then the machines whose IPv6 address the file gives, so no machine
    # given the lowest free address takes one the file reserves for another.
    def order(c: Change) -> tuple[bool, bool]:
        return c.action != "remove", c.name not in want or want[c.name].decl.ipv6 is None

    for c in sorted((c for c in changes if c.kind == "machine"), key=order):
        if c.action == "remove":
            say(f"removing machine {c.name} ({c.why})")
            clean.clean_vm(home, c.name, reload=False, say=say)
            record.machines.pop(c.name, None)
            record.write(home)
            continue
        keep = None
        if c.name in existing:  # made again: keep its MAC and IP (its reservation)
            say(f"making machine {c.name} again ({c.why})")
            try:
                keep = store.load_vm(home, c.name)
            except PvmlabError:
                keep = None  # a damaged record: the new one gets fresh addresses
            clean.clean_vm(home, c.name, reload=False, say=say)
        else:
            say(f"creating machine {c.name}")
        plan = want[c.name]
        _create(
            home, lab, plan, mac=keep.mac if keep else None, ip=keep.ip if keep else None,
            ipv6=plan.decl.ipv6 or (keep.ipv6 if keep else None),
        )  # fmt: skip
        record.machines[c.name] = machine_fingerprint(plan)
        record.write(home)

    started = control.start_stack(home)
    if not started.get("already_running"):
        changes.append(Change("start", "stack", _lab_label(want_lab)))
    if start_machines:
        stopped = [p for p in lab.machines if state.running_pid(home, p.name) is None]
        if wait:
            define.reload_stack(home)
            _start_and_wait(home, stopped, say)
        for plan in stopped:
            if not wait:
                say(f"starting machine {plan.name}")
                runtime.start_vm(
                    home, plan.name, boot=plan.decl.boot, requested_accel=plan.decl.accel, say=say
                )
            changes.append(Change("start", "machine", plan.name))
    define.reload_stack(home)
    return changes


def _start_and_wait(home: LabHome, plans: list[MachinePlan], say: Say) -> None:
    """Start ``plans`` at once and wait until each is ready (``labfile.run.boot_until_ready``)."""
    from concurrent.futures import ThreadPoolExecutor

    from pvmlab.labfile.run import boot_until_ready

    def one(plan: MachinePlan) -> tuple[str, float, str | None]:
        say(f"starting machine {plan.name}, waiting for {plan.decl.ready.describe()}")
        elapsed, why = boot_until_ready(home, plan)
        say(f"machine {plan.name}: " + ("ready" if why is None else "not ready")
            + f" after {elapsed:.1f} s")  # fmt: skip
        return plan.name, elapsed, why

    with ThreadPoolExecutor(max_workers=max(1, len(plans))) as pool:
        results = list(pool.map(one, plans))
    failed = [why for _, _, why in results if why is not None]  # each names its machine
    if failed:
        raise StateError(
            f"not ready: {'; '.join(failed)}",
            "see `pvmlab vm console NAME` and `pvmlab vm timeline NAME` in the lab's home, "
            "or run `pvmlab test` for a report",
        )


def _create(
    home: LabHome,
    lab: LabFile,
    plan: MachinePlan,
    *,
    mac: str | None = None,
    ip: str | None = None,
    ipv6: str | None = None,
) -> None:
    from pvmlab.vm import define

    m = plan.decl
    install: str | None = "default" if m.unattended else None
    template: Path | None = None
    for kind, rel in m.install_files().items():
        if rel is not None:
            install, template = kind, lab.asset(rel)
    define.create(
        home,
        define.CreateRequest(
            name=plan.name,
            arch=m.arch,
            firmware=m.firmware,
            net_boot=m.net_boot,
            mac=mac,
            ip=ip,
            ipv6=ipv6,
            distro=m.distro,
            cmdline=m.cmdline,
            memory_mib=m.memory,
            cpus=m.cpus,
            disk_size=m.disk_size,
            install=install,
            install_template=template,
            mirror=m.mirror,
            proxy=m.proxy,
            image=image_path(lab, m),
            loader=m.loader,
            secure_boot=m.secure_boot,
        ),
    )


def down(home: LabHome, *, say: Say = lambda _m: None) -> list[Change]:
    """Stop and remove everything the lab file made: machines, stack, the lab home itself."""
    import shutil

    from pvmlab.stack import control
    from pvmlab.vm import clean

    if not home.root.exists():
        return []
    home.check_ownership()
    record = Record.read(home)
    if record is None:
        raise StateError(
            f"{home.root} was not made by a lab file",
            "remove it with `pvmlab --home DIR clean --purge` instead",
        )
    changes: list[Change] = []
    for name in store.vm_names(home):
        clean.clean_vm(home, name, reload=False, say=say)
        changes.append(Change("remove", "machine", name))
    if control.stack_health(home).state != control.STOPPED:
        control.stop_stack(home, stop_vms=True, say=say)
        changes.append(Change("stop", "stack", record.name))
    shutil.rmtree(home.root)
    changes.append(Change("remove", "home", str(home.root)))
    return changes


def list_labs(root: Path | None = None) -> list[dict[str, Any]]:
    """The labs made from lab files: name, file, home, stack state, machines running/defined."""
    from pvmlab.stack import control
    from pvmlab.vm import state

    base = root if root is not None else labs_root()
    out: list[dict[str, Any]] = []
    if not base.is_dir():
        return out
    for child in sorted(base.iterdir()):
        home = LabHome(child.absolute())
        record = Record.read(home)
        if record is None:
            continue
        names = store.vm_names(home)
        try:
            stack = control.stack_health(home).state
        except PvmlabError as exc:
            stack = f"unknown ({exc.problem})"
        out.append({
            "name": record.name,
            "file": record.file,
            "home": str(home.root),
            "stack": stack,
            "machines": len(names),
            "running": sum(1 for n in names if state.running_pid(home, n) is not None),
        })  # fmt: skip
    return out
