"""iPXE first-stage binaries: where they are found, checked and staged into the TFTP root.

Roles and the names the TFTP root serves them under (``FIRST_STAGES``, from the table in
``pvmlab.arch``, which also holds each role's file-name candidates and PE machine type):

    bios        undionly.kpxe     legacy BIOS PXE (client-arch 0)
    efi-x86_64  ipxe-x86_64.efi   x86_64 UEFI (client-arch 7 and 9)
    efi-arm64   ipxe-arm64.efi    arm64 UEFI (client-arch 11)

Search order, first hit per role wins:

1. the directory the user named: ``PVMLAB_IPXE_DIR``, else the one stored in the lab home with
   ``set_user_dir`` (``pvmlab distro ipxe --dir DIR``);
2. the system's packages: ``/usr/local/lib/ipxe`` (where ``scripts/install-system-deps.sh`` puts
   Debian 13's builds), ``/usr/lib/ipxe`` (Debian/Ubuntu ``ipxe``), ``/usr/share/ipxe`` (Fedora
   ``ipxe-bootimgs-*``), Homebrew's share directories. File names are tried in order of
   preference before directories, so an explicit ``ipxe-amd64.efi`` beats Debian 12's generic
   2019 ``ipxe.efi``;
3. the download cache in the lab home (``download_official``: the official rolling builds
   from boot.ipxe.org, their SHA-256 recorded in ``ipxe.json``).

An EFI binary is only accepted when its PE/COFF machine type matches the role (0x8664 for
x86_64, 0xAA64 for arm64), so a wrong file is never served to a machine that cannot run it.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pvmlab import arch
from pvmlab.assets.files import copy_atomic, sha256_file
from pvmlab.errors import DependencyError, StateError, ValidationError
from pvmlab.home import LabHome, write_json

ROLES: dict[str, arch.FirstStage] = {stage.role: stage for stage in arch.FIRST_STAGES}
# role -> the name the TFTP root serves it under
FIRST_STAGES: dict[str, str] = {role: stage.tftp_name for role, stage in ROLES.items()}

SYSTEM_DIRS: tuple[Path, ...] = (
    Path("/usr/local/lib/ipxe"),
    Path("/usr/lib/ipxe"),
    Path("/usr/share/ipxe"),
    Path("/opt/homebrew/share/ipxe"),
    Path("/usr/local/share/ipxe"),
)

OFFICIAL_BASE = "https://boot.ipxe.org"

INSTALL_HINT = (
    "install the iPXE package (Debian/Ubuntu: `apt-get install ipxe`; Debian 12's lacks arm64, "
    "`scripts/install-system-deps.sh` puts Debian 13's builds in /usr/local/lib/ipxe), name a "
    "directory with `pvmlab distro ipxe --dir DIR` (or PVMLAB_IPXE_DIR), or fetch the official "
    "builds with `pvmlab distro ipxe --download`"
)


@dataclass(frozen=True)
class IpxeBinary:
    role: str
    tftp_name: str
    path: Path
    source: str  # "user-dir", "system", "download"
    sha256: str

    def as_json(self) -> dict[str, str]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


# --- settings kept in the lab home ---------------------------------------------------------


def _settings_file(home: LabHome) -> Path:
    return home.ipxe_settings


def _cache_dir(home: LabHome) -> Path:
    return home.ipxe_cache


def load_settings(home: LabHome) -> dict[str, Any]:
    path = _settings_file(home)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StateError(f"{path} is unreadable: {exc}", "fix or remove the file") from None
    if not isinstance(data, dict):
        raise StateError(f"{path} does not hold a JSON object", "fix or remove the file")
    return data


def set_user_dir(home: LabHome, path: Path | None) -> Path | None:
    """Remember a directory holding iPXE binaries (None forgets it). Returns the stored path."""
    resolved: Path | None = None
    if path is not None:
        resolved = path.expanduser().resolve()
        if not resolved.is_dir():
            raise ValidationError(
                f"iPXE directory {str(path)!r} is not a directory", "give a directory path"
            )
        if not any(_probe_dir(resolved, role) for role in FIRST_STAGES):
            raise ValidationError(
                f"{resolved} holds no usable iPXE binary",
                "it should contain "
                + " or ".join("/".join(stage.candidates[:2]) for stage in arch.FIRST_STAGES),
            )
    with home.locked():
        settings = load_settings(home)
        settings["user_dir"] = None if resolved is None else str(resolved)
        write_json(_settings_file(home), settings)
    return resolved


def user_dir(home: LabHome | None) -> Path | None:
    env = os.environ.get("PVMLAB_IPXE_DIR")
    if env:
        return Path(env).expanduser()
    if home is None:
        return None
    stored = load_settings(home).get("user_dir")
    return Path(stored) if isinstance(stored, str) and stored else None


# --- checks ----------------------------------------------------------------------------------


def pe_machine(path: Path) -> int | None:
    """The PE/COFF machine type of an EFI executable, or None when it is not one."""
    try:
        with path.open("rb") as fh:
            dos = fh.read(64)
            if len(dos) < 64 or dos[:2] != b"MZ":
                return None
            (pe_offset,) = struct.unpack_from("<I", dos, 0x3C)
            fh.seek(pe_offset)
            header = fh.read(6)
    except OSError:
        return None
    if len(header) < 6 or header[:4] != b"PE\0\0":
        return None
    (machine,) = struct.unpack_from("<H", header, 4)
    return int(machine)


def fits(role: str, path: Path) -> bool:
    """Whether ``path`` is a readable, non-empty file that can serve ``role``."""
    try:
        if not path.is_file() or path.stat().st_size == 0 or not os.access(path, os.R_OK):
            return False
    except OSError:
        return False
    expected = ROLES[role].pe_machine
    if expected is not None:
        return pe_machine(path) == expected
    # BIOS: a PXE NBP is not PE; refuse an EFI binary under the BIOS name.
    return pe_machine(path) is None


def _probe_dir(directory: Path, role: str) -> Path | None:
    for name in ROLES[role].candidates:
        p = directory / name
        if fits(role, p):
            return p
    return None


# --- search ----------------------------------------------------------------------------------


def _make(role: str, path: Path, source: str) -> IpxeBinary:
    return IpxeBinary(role, FIRST_STAGES[role], path.resolve(), source, sha256_file(path))


def find_binary(
    role: str,
    home: LabHome | None = None,
    *,
    system_dirs: tuple[Path, ...] = SYSTEM_DIRS,
) -> IpxeBinary | None:
    if role not in FIRST_STAGES:
        raise ValidationError(f"unknown iPXE role {role!r}", f"one of {', '.join(FIRST_STAGES)}")
    udir = user_dir(home)
    if udir is not None and udir.is_dir():
        hit = _probe_dir(udir, role)
        if hit is not None:
            return _make(role, hit, "user-dir")
    for name in ROLES[role].candidates:
        for directory in system_dirs:
            p = directory / name
            if fits(role, p):
                return _make(role, p, "system")
    if home is not None:
        cached = _cache_dir(home) / FIRST_STAGES[role]
        if fits(role, cached):
            return _make(role, cached, "download")
    return None


def find_binaries(
    home: LabHome | None = None, *, system_dirs: tuple[Path, ...] = SYSTEM_DIRS
) -> dict[str, IpxeBinary | None]:
    """Every role mapped to the binary that would be served, or None when none is found."""
    return {role: find_binary(role, home, system_dirs=system_dirs) for role in FIRST_STAGES}


def missing_error(missing: list[str]) -> DependencyError:
    names = ", ".join(f"{r} ({FIRST_STAGES[r]})" for r in missing)
    return DependencyError(f"iPXE binary not found for {names}", INSTALL_HINT)


def stage_into(
    home: LabHome,
    roles: tuple[str, ...] | None = None,
    *,
    system_dirs: tuple[Path, ...] = SYSTEM_DIRS,
) -> list[IpxeBinary]:
    """Copy the first stages into ``home.tftp`` under their TFTP names (only when changed).

    Raises DependencyError naming every missing role (all roles unless ``roles`` narrows them)
    before anything is copied. Returns the staged binaries, ``path`` pointing into the TFTP root.
    """
    wanted = roles if roles is not None else tuple(FIRST_STAGES)
    found = {r: find_binary(r, home, system_dirs=system_dirs) for r in wanted}
    missing = [r for r, b in found.items() if b is None]
    if missing:
        raise missing_error(missing)
    home.tftp.mkdir(parents=True, exist_ok=True)
    staged: list[IpxeBinary] = []
    for role, binary in found.items():
        if binary is None:  # pragma: no cover - excluded above
            continue
        dst = home.tftp_file(binary.tftp_name)
        if not (dst.is_file() and sha256_file(dst) == binary.sha256):
            copy_atomic(binary.path, dst)
        staged.append(IpxeBinary(role, binary.tftp_name, dst, binary.source, binary.sha256))
    return staged


# --- official builds -------------------------------------------------------------------------


def official_base() -> str:
    return os.environ.get("PVMLAB_IPXE_URL", OFFICIAL_BASE).rstrip("/")


def download_official(
    home: LabHome,
    roles: tuple[str, ...] | None = None,
    *,
    base_url: str | None = None,
    progress: bool = False,
) -> list[IpxeBinary]:
    """Fetch the official builds into the lab home's cache, recording each one's SHA-256.

    boot.ipxe.org publishes no checksum list, so the hash is recorded (and shown) rather than
    checked; an EFI build is still refused when its machine type is not the expected one.
    """
    from pvmlab.assets.download import DownloadError, fetch
    from pvmlab.records.models import utc_now

    base = (base_url or official_base()).rstrip("/")
    wanted = roles if roles is not None else tuple(FIRST_STAGES)
    cache = _cache_dir(home)
    cache.mkdir(parents=True, exist_ok=True)
    got: list[IpxeBinary] = []
    records: dict[str, Any] = {}
    for role in wanted:
        url = f"{base}/{ROLES[role].official_path}"
        dst = cache / FIRST_STAGES[role]
        part = cache / f".{FIRST_STAGES[role]}.download"
        result = fetch(url, part, progress=progress)
        if not fits(role, part):
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"{url} is not a {role} iPXE binary (wrong file type or machine)",
                "check the base URL (PVMLAB_IPXE_URL)",
            )
        part.replace(dst)
        records[role] = {
            "url": url,
            "sha256": result.sha256,
            "size": result.size,
            "fetched": utc_now(),
        }
        got.append(IpxeBinary(role, FIRST_STAGES[role], dst, "download", result.sha256))
    with home.locked():
        settings = load_settings(home)
        downloads = settings.get("downloads")
        if not isinstance(downloads, dict):
            downloads = {}
        downloads.update(records)
        settings["downloads"] = downloads
        write_json(_settings_file(home), settings)
    return got
