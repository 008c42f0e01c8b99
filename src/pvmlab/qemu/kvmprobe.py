"""Does KVM run a guest on this host? Asked of a tiny test guest, once per boot of the host.

``/dev/kvm`` opening is not enough: on some nested hosts QEMU starts, ``query-kvm`` says
enabled, and then the guest dies within a second ("KVM internal error. Suberror: 1 …
emulation failure", QMP run state ``internal-error``) or never gets anywhere. So before KVM is
chosen automatically, QEMU runs the architecture's test guest (``pvmlab.arch``: a few hundred
bytes as ``-bios``, no disk, no network) under KVM: the guest switches to the modes a real
firmware uses, runs x87/SSE (FP on aarch64) and touches memory, then ends QEMU with a known exit
code. Under TCG the same guest finishes in well under a second.

The verdict:

- works: QEMU exited with the guest's exit code;
- broken: QEMU exited otherwise, or its run state (QMP ``query-status``) turned
  ``internal-error``, or the guest had not finished after ``DEADLINE`` seconds (the reason says
  which, with QEMU's own words).

It is kept in ``/run/pvmlab/kvm-ARCH.json`` (root's, cleared at every boot) and only believed
for the same boot (``/proc/sys/kernel/random/boot_id``) and the same QEMU binary. Delete the
file to test again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from pvmlab import spawn
from pvmlab.arch import Arch, architecture
from pvmlab.qemu import qmp

log = logging.getLogger(__name__)

CACHE_DIR = Path("/run/pvmlab")
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
DEADLINE = 5.0  # seconds for the guest to finish under KVM (it needs ~0.1 s under TCG)
MEMORY_MIB = 64


@dataclass(frozen=True)
class Verdict:
    arch: Arch
    accel: str
    works: bool
    reason: str
    seconds: float  # from starting QEMU to the verdict
    cached: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cpu(arch: Arch, accel: str) -> list[str]:
    if accel in ("kvm", "hvf"):
        return ["-cpu", "host"]
    model = architecture(arch).tcg_cpu
    return [] if model is None else ["-cpu", model]


def argv(arch: Arch, accel: str, image: Path, qmp_socket: Path) -> list[str]:
    """QEMU's command line for the test guest of ``arch``."""
    a = architecture(arch)
    return [
        a.qemu_binary,
        "-accel", accel,
        "-machine", a.test_guest.machine,
        *_cpu(arch, accel),
        "-m", str(MEMORY_MIB),
        "-nodefaults",
        "-display", "none",
        "-bios", str(image),
        "-qmp", f"unix:{qmp_socket},server=on,wait=off",
        *a.test_guest.extra_argv,
    ]  # fmt: skip


def _complaint(stderr: str, program: str) -> str:
    """QEMU's own words on what went wrong: its error lines, warnings left out."""
    lines = [ln.strip().removeprefix(f"{program}: ") for ln in stderr.splitlines() if ln.strip()]
    lines = [ln for ln in lines if "warning:" not in ln]
    wanted = [ln for ln in lines if "KVM internal error" in ln or ln == "emulation failure"]
    picked = wanted or lines[:2]
    return "; ".join(picked)


def _read_some(stream: IO[bytes], timeout: float) -> bytes:
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        return b""
    return os.read(stream.fileno(), 65536)


def run_test_guest(arch: Arch, accel: str = "kvm", *, deadline: float = DEADLINE) -> Verdict:
    """Run the test guest of ``arch`` under ``accel`` now (no cache) and judge the outcome."""
    guest = architecture(arch).test_guest
    with tempfile.TemporaryDirectory(prefix="pvmlab-kvmprobe-") as tmp:
        image = Path(tmp) / "guest.bin"
        image.write_bytes(guest.image)
        socket = Path(tmp) / "qmp.sock"
        cmd = argv(arch, accel, image, socket)
        t0 = time.monotonic()
        err = b""
        with spawn.spawn(cmd, stderr=subprocess.PIPE, grace=2.0) as proc:
            stream = proc.stderr
            if stream is None:  # pragma: no cover - stderr=PIPE always gives one
                raise RuntimeError("QEMU's stderr is not a pipe")
            while proc.poll() is None and time.monotonic() - t0 < deadline:
                err += _read_some(stream, 0.05)
                if b"KVM internal error" in err:
                    break
            code = proc.poll()
            run_state = qmp.query_status(socket) if code is None else None
            if code is not None:
                err += stream.read()  # the rest, up to QEMU's exit
            else:
                time.sleep(0.05)  # the register dump that follows the error line
                err += _read_some(stream, 0)
        stream.close()
        seconds = round(time.monotonic() - t0, 3)
    stderr = err.decode(errors="replace")
    said = _complaint(stderr, architecture(arch).qemu_binary)
    name = accel.upper()
    if code == guest.exit_code:
        return Verdict(arch, accel, True, f"a test guest ran to its end under {name}", seconds)
    if code is not None:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        why = f"QEMU {how}" + (f": {said}" if said else "")
    elif run_state == "internal-error":
        why = f"QEMU's run state became internal-error ({said or 'no message'})"
    else:
        why = (
            f"the test guest had not finished after {deadline:g} s "
            f"(QEMU run state: {run_state or 'unknown'}" + (f"; {said}" if said else "") + ")"
        )
    return Verdict(arch, accel, False, why, seconds)


# --- the cache, per boot of the host -----------------------------------------------------------


def boot_id(path: Path = BOOT_ID) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _qemu_identity(arch: Arch) -> dict[str, Any] | None:
    found = shutil.which(architecture(arch).qemu_binary)
    if found is None:
        return None
    real = Path(found).resolve()
    try:
        st = real.stat()
    except OSError:
        return None
    return {"qemu": str(real), "qemu_size": st.st_size, "qemu_mtime_ns": st.st_mtime_ns}


def cache_key(arch: Arch) -> dict[str, Any] | None:
    """What a cached verdict must match to be believed: this boot, this QEMU."""
    bid = boot_id()
    qemu = _qemu_identity(arch)
    if bid is None or qemu is None:
        return None
    return {"boot_id": bid, **qemu}


def _private_dir(path: Path) -> bool:
    """Whether ``path`` is a real directory of ours that nobody else may write into."""
    try:
        st = path.lstat()
    except OSError:
        return False
    return (
        stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022
    )


def load(cache_dir: Path, arch: Arch, key: dict[str, Any]) -> Verdict | None:
    path = cache_dir / f"kvm-{arch}.json"
    if not _private_dir(cache_dir):
        return None
    try:
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            return None
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key:
        return None
    v = data.get("verdict")
    if not (
        isinstance(v, dict)
        and isinstance(v.get("works"), bool)
        and isinstance(v.get("reason"), str)
        and isinstance(v.get("seconds"), int | float)
        and v.get("accel") == "kvm"
    ):
        return None
    return Verdict(arch, "kvm", v["works"], v["reason"], float(v["seconds"]), cached=True)


def save(cache_dir: Path, verdict: Verdict, key: dict[str, Any]) -> None:
    """Keep the verdict (best effort: a cache that cannot be written is skipped)."""
    try:
        with contextlib.suppress(FileExistsError):
            cache_dir.mkdir(mode=0o700, parents=True)
        if not _private_dir(cache_dir):
            log.debug("kvm probe: %s is not a private directory; verdict not kept", cache_dir)
            return
        payload = json.dumps({"key": key, "verdict": {**verdict.as_dict(), "cached": False}})
        fd, name = tempfile.mkstemp(dir=cache_dir, prefix=".kvm-", suffix=".tmp")
        tmp = Path(name)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(payload + "\n")
            tmp.replace(cache_dir / f"kvm-{verdict.arch}.json")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        log.debug("kvm probe: verdict not kept in %s: %s", cache_dir, exc)


def verdict(arch: Arch, *, cache_dir: Path = CACHE_DIR, refresh: bool = False) -> Verdict:
    """Whether KVM runs a guest of ``arch`` here: from this boot's cache, else tested now.

    Raises DependencyError when QEMU for ``arch`` is missing (nothing was tested)."""
    key = cache_key(arch)
    if key is not None and not refresh:
        cached = load(cache_dir, arch, key)
        if cached is not None:
            return cached
    result = run_test_guest(arch, "kvm")
    log.debug("kvm probe: %s", result)
    if key is not None:
        save(cache_dir, result, key)
    return result
