"""The lab home: where one lab keeps everything (default ~/.pvmlab, override PVMLAB_HOME).

    lab.json        the lab network (``provisioner create``)
    catalog.toml    the user's own distro catalog entries (optional)
    ipxe.json       iPXE settings (``distro ipxe --dir``, official downloads)
    vms/            NAME.json per VM, NAME/ for its firmware vars and disk
    images/         NAME/ARCH/{vmlinuz,initrd,distro.json}
    configs/        rendered dnsmasq configuration and DHCP reservations
    tftp/           the TFTP root (iPXE first stages)
    logs/           dnsmasq, HTTP, supervisor and per-VM console logs
    pids/           pid files (supervisor, VMs)
    monitors/       QMP sockets
    stack/          the stack's runtime state (state.json, dnsmasq leases)
    cache/          downloads (``distro pull``, official iPXE builds)

Every kernel object the lab creates (network namespace, bridge, taps) is named from a short
hash of the home's real path, so two homes are two labs that never clash.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvmlab.errors import StateError

SUBDIRS = ("images", "vms", "configs", "tftp", "logs", "pids", "monitors", "stack")
TAP_PREFIX = "pvt"  # every VM tap is this + 8 hex digits (11 characters, under IFNAMSIZ)


def default_root() -> Path:
    env = os.environ.get("PVMLAB_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".pvmlab"


@dataclass(frozen=True)
class LabHome:
    root: Path

    @classmethod
    def from_env(cls) -> LabHome:
        return cls(default_root().absolute())

    # --- identity ---------------------------------------------------------------------------
    @property
    def lab_id(self) -> str:
        real = os.path.realpath(self.root)
        return hashlib.sha256(real.encode()).hexdigest()[:8]

    @property
    def netns(self) -> str:
        return f"pvmlab-{self.lab_id}"

    @property
    def bridge(self) -> str:
        return f"pvbr{self.lab_id}"  # 12 characters, under IFNAMSIZ

    def tap(self, vm: str) -> str:
        digest = hashlib.sha256(f"{self.lab_id}/{vm}".encode()).hexdigest()[:8]
        return f"{TAP_PREFIX}{digest}"

    # --- layout -----------------------------------------------------------------------------
    @property
    def lab_file(self) -> Path:
        return self.root / "lab.json"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def vms(self) -> Path:
        return self.root / "vms"

    @property
    def configs(self) -> Path:
        return self.root / "configs"

    @property
    def tftp(self) -> Path:
        return self.root / "tftp"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    @property
    def monitors(self) -> Path:
        return self.root / "monitors"

    @property
    def stack(self) -> Path:
        return self.root / "stack"

    def vm_file(self, name: str) -> Path:
        return self.vms / f"{name}.json"

    def vm_dir(self, name: str) -> Path:
        return self.vms / name

    def vm_log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def vm_pid(self, name: str) -> Path:
        return self.pids / f"{name}.pid"

    def vm_qmp(self, name: str) -> Path:
        return self.monitors / f"{name}.qmp"

    # boot: one VM's lock (start/stop/clean of that VM), beside its pid file; never deleted
    # while the lab lives, so every holder locks the same file
    def vm_lock(self, name: str) -> Path:
        return self.pids / f"{name}.lock"

    def exists(self) -> bool:
        return self.root.is_dir()

    def ensure(self) -> None:
        """Create the home and its subdirectories (StateError when it cannot be made)."""
        try:
            for sub in SUBDIRS:
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._unusable(exc) from None

    def _unusable(self, exc: OSError) -> StateError:
        return StateError(
            f"cannot create the lab home {self.root}: {exc.strerror or exc}",
            "choose a writable place with --home or PVMLAB_HOME",
        )

    def require(self) -> None:
        if not self.exists():
            raise StateError(
                f"no lab home at {self.root}",
                "run `pvmlab setup` (PVMLAB_HOME selects another home)",
            )

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Exclusive lock over the lab's state (VM definitions, lab record, reservations).

        The lock file lives in the home, so taking the lock creates the home if needed.
        """
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._unusable(exc) from None
        return file_lock(self.root / ".lock")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if needed) for the ``with`` block.

    The lab uses a few independent locks (state, network changes, stack start/stop, config
    renders) so that a holder of one may take another without deadlocking on itself.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def write_atomic(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Write a file so readers see the old or the new content, never a half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp).chmod(mode)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object as ``write_json`` left it; {} when it is missing, unreadable or not an object.

    For the lab's own bookkeeping files (state, records), where "nothing there" is a valid
    answer; user records are read through ``pvmlab.records.store``, which reports a bad file.
    """
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}
