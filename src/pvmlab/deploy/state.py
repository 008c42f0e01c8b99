"""A VM's deployment as the lab sees it: the ramdisk's instructions, its seed, its status.

Status (``LabHome.vm_deploy_status``): each ``POST /status/<mac>`` of the ramdisk is one phase
(``stream`` with bytes and MB/s, ``verify``, ``verified``, ``deployed``, ``failed`` with the
reason); the lab itself adds ``instructions`` when the ramdisk fetched them. ``deployed`` counts
only when the SHA-256 the ramdisk read back from the disk is the image's: then the VM's iPXE
script boots its disk (``pvmlab.stack.bootconfig``), until ``vm reinstall`` clears the status.
cloud-init's phone-home (``phase=installed``, from the shipped vendor-data) is kept as
``cloud-init``.
"""

from __future__ import annotations

import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pvmlab import spawn
from pvmlab.errors import ValidationError
from pvmlab.home import LabHome, read_json, write_atomic, write_json
from pvmlab.records.models import LabSpec, VMSpec
from pvmlab.stack import installcfg

MAX_HISTORY = 400  # phases kept per deploy (a stream reports once per chunk)
SEED_KIB = 2048  # the CIDATA FAT image
_NUMBER = re.compile(r"[0-9]{1,15}")
_RATE = re.compile(r"[0-9]{1,6}(\.[0-9]{1,3})?")
_SHA = re.compile(r"[0-9a-f]{64}")


def read(home: LabHome, name: str) -> dict[str, Any]:
    return read_json(home.vm_deploy_status(name))


def is_deployed(home: LabHome, name: str) -> bool:
    return read(home, name).get("deployed") is True


def clear(home: LabHome, name: str) -> None:
    home.vm_deploy_status(name).unlink(missing_ok=True)


def summary(home: LabHome, vm: VMSpec, run_state: str) -> str | None:
    """``vm list``'s provisioning column: None (not an image VM), new, deploying NN%,
    interrupted at NN% (the VM stopped mid-deploy), stalled at NN% (its QEMU holds a guest
    that no longer runs), deployed, failed: reason.

    ``run_state`` is the VM's state as ``pvmlab.vm.state.run_state`` says it: the deploy
    status file only says what the ramdisk last reported, so a VM stopped (or a QEMU gone)
    in the middle of a stream would otherwise read "deploying" forever. An interrupted deploy
    is not ``deployed``, so the VM's script boots the ramdisk again at the next ``vm start``,
    whose fresh instructions start the deploy over."""
    from pvmlab.qemu import qmp
    from pvmlab.vm import state as vm_state

    if vm.image_sha256 is None:
        return None
    status = read(home, vm.name)
    if not status:
        return "new"
    if status.get("deployed") is True:
        return "deployed"
    if status.get("phase") == "failed":
        return f"failed: {status.get('error') or 'no reason given'}"
    done, total = status.get("bytes"), status.get("total")
    percent = 0
    if isinstance(done, int) and isinstance(total, int) and total > 0:
        percent = min(100, done * 100 // total)
    if run_state == vm_state.STOPPED:
        return f"interrupted at {percent}% (`vm start` deploys again)"
    if run_state in qmp.HALTED_STATES or run_state == vm_state.UNRESPONSIVE:
        return f"stalled at {percent}% (the guest is {run_state})"
    return f"deploying {percent}%"


def record(
    home: LabHome,
    vm: VMSpec,
    fields: dict[str, str],
    client: str,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Store one report of the ramdisk (or the lab's own ``instructions``)."""
    phase = fields.get("phase", "")
    if not installcfg.PHASE.fullmatch(phase):
        raise ValidationError(
            f"invalid deploy phase {phase[:40]!r}", "use 1-32 of a-z, 0-9, '.', '_', '-'"
        )
    old = read(home, vm.name)
    deployed = old.get("deployed") is True
    message = installcfg.clean_message(fields.get("message", ""))
    entry: dict[str, Any] = {
        "time": (now or datetime.now(UTC)).isoformat(timespec="milliseconds"),
        "phase": phase,
    }
    for key in ("bytes", "total"):
        value = fields.get(key, "")
        if _NUMBER.fullmatch(value):
            entry[key] = int(value)
    if _RATE.fullmatch(fields.get("mbps", "")):
        entry["mbps"] = float(fields["mbps"])
    if message:
        entry["message"] = message
    error = old.get("error") if phase != "instructions" else None
    if phase == "installed":  # cloud-init's phone-home from the deployed system
        entry["phase"] = "cloud-init"
    elif phase == "deployed":
        sha = fields.get("sha256", "")
        if sha != vm.image_sha256:
            entry["phase"] = "failed"
            error = (
                f"the ramdisk reported sha256 {sha[:64] or 'none'}, "
                f"the image is {vm.image_sha256}"
            )
            deployed = False
        else:
            deployed = True
            error = None
    elif phase == "failed":
        error = message or "the ramdisk reported a failure"
        deployed = False
    elif phase in ("instructions", "stream"):
        deployed = False if phase == "instructions" else deployed
    history = [e for e in old.get("history", []) if isinstance(e, dict)]
    if phase == "instructions":
        history = []  # a new deploy starts
    status: dict[str, Any] = {
        "vm": vm.name,
        **({k: v for k, v in old.items() if k in ("bytes", "total", "mbps")}
           if phase != "instructions" else {}),
        **entry,
        "client": client,
        "deployed": deployed,
        "error": error,
        "history": [*history, entry][-MAX_HISTORY:],
    }
    write_json(home.vm_deploy_status(vm.name), status)
    return status


# --- what the ramdisk is told --------------------------------------------------------------------


def urls(base_url: str, vm: VMSpec) -> dict[str, str]:
    base = f"{base_url.rstrip('/')}/deploy/{installcfg.url_mac(vm.mac)}"
    return {"instructions": base, "image": f"{base}/image", "seed": f"{base}/seed",
            "status": installcfg.status_url(base_url, vm)}  # fmt: skip


def instructions(vm: VMSpec, base_url: str, image_size: int, seed_size: int | None) -> str:
    """The ``key=value`` lines of ``GET /deploy/<mac>`` (the ramdisk matches each key by name)."""
    if vm.image_sha256 is None:
        raise ValidationError(f"VM {vm.name} has no image to deploy")
    where = urls(base_url, vm)
    lines = [
        f"image={where['image']}",
        f"size={image_size}",
        f"sha256={vm.image_sha256}",
        f"disk={installcfg.DISK}",
        f"status={where['status']}",
    ]
    if seed_size is not None:
        lines += [f"seed={where['seed']}", f"seed_size={seed_size}"]
    return "\n".join(lines) + "\n"


def ramdisk_cmdline(vm: VMSpec, base_url: str) -> str:
    """The deploy ramdisk's kernel arguments (after console= and initrd=, which bootconfig adds)."""
    return f"pvmlab.deploy={urls(base_url, vm)['instructions']}"


def build_seed(home: LabHome, lab: LabSpec, vm: VMSpec, base_url: str) -> Path:
    """The VM's NoCloud seed: a FAT image labelled CIDATA holding its NoCloud documents as the
    lab renders them (``installcfg``: the user's --user-data, or the shipped one with the lab
    key). Made with mkfs.vfat and mcopy, without mounting."""
    if vm.install is None:
        raise ValidationError(f"VM {vm.name} has no cloud-init configuration")
    dest = home.vm_seed(vm.name)
    with tempfile.TemporaryDirectory(dir=home.vm_dir(vm.name), prefix=".seed-") as tmp:
        folder = Path(tmp)
        image = folder / "seed.img"
        spawn.run(["mkfs.vfat", "-C", "-n", "CIDATA", str(image), str(SEED_KIB)])
        for doc in installcfg.documents(vm.install):
            text = installcfg.render_document(home, lab, vm, doc, base_url)
            (folder / doc).write_text(text, encoding="utf-8")
            spawn.run(["mcopy", "-o", "-i", str(image), str(folder / doc), f"::{doc}"])
        write_atomic(dest, image.read_bytes(), mode=0o600)
    return dest
