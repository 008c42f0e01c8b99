"""UEFI firmware found through QEMU's firmware descriptors, never through hard-coded paths.

QEMU's interop spec (docs/interop/firmware.json) lists descriptor directories from lowest to
highest priority:

    /usr/share/qemu/firmware       shipped by the distribution's firmware packages
    /etc/qemu/firmware             the administrator's
    $XDG_CONFIG_HOME/qemu/firmware the user's (default ~/.config/qemu/firmware)

A file in a higher-priority directory replaces the file of the same name in a lower one (an
empty file hides it). The surviving descriptors are sorted by file name and the first one that
fits wins. Here "fits" means: interface ``uefi``; a target with our architecture whose machine
globs match the machine type; split flash mode (code read-only + a per-VM vars copy); both
files exist; and no Secure Boot, enrolled keys or SMM requirement unless Secure Boot is asked
for. With Secure Boot (``vm create --secure-boot``) the descriptor must have both
``secure-boot`` and ``enrolled-keys`` (a vars template with the Microsoft keys, which sign
shim): Debian's ``40-edk2-x86_64-secure-enrolled.json`` (``OVMF_CODE_4M.secboot.fd`` +
``OVMF_VARS_4M.ms.fd``, ``requires-smm``: q35 with SMM, the flash's secure mode on) and
``40-edk2-aarch64-secure-enrolled.json`` (``AAVMF_CODE.ms.fd`` + ``AAVMF_VARS.ms.fd``). Each
skipped candidate is logged with the reason (``--debug``).
"""

from __future__ import annotations

import fnmatch
import functools
import json
import logging
import lzma
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvmlab.arch import UEFI, Arch, architecture
from pvmlab.errors import DependencyError

log = logging.getLogger(__name__)

SYSTEM_DIRS = (Path("/usr/share/qemu/firmware"), Path("/etc/qemu/firmware"))
SECURE_FEATURES = ("secure-boot", "enrolled-keys", "requires-smm")

# Machine aliases as we pass them to -machine, and a concrete name of that family for matching
# the descriptors' globs ("pc-q35-*", "virt-*").
_CONCRETE = {"q35": "pc-q35-0.0", "pc": "pc-i440fx-0.0", "virt": "virt-0.0"}


@dataclass(frozen=True)
class Firmware:
    code: Path
    vars_template: Path
    descriptor: Path
    code_format: str = "raw"
    vars_format: str = "raw"
    secure_boot: bool = False  # enforced, with keys enrolled in the vars template
    requires_smm: bool = False  # q35 with smm=on and the pflash in secure mode (x86_64)


def search_dirs(env: dict[str, str] | None = None) -> list[Path]:
    """Descriptor directories from lowest to highest priority."""
    env = dict(os.environ) if env is None else env
    xdg = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".config")
    return [*SYSTEM_DIRS, Path(xdg) / "qemu" / "firmware"]


def descriptor_files(dirs: Sequence[Path]) -> list[Path]:
    """The effective descriptor files: later dirs override same-named files; sorted by name."""
    chosen: dict[str, Path] = {}
    for d in dirs:
        if not d.is_dir():
            continue
        for f in d.iterdir():
            if f.name.endswith(".json"):
                chosen[f.name] = f
    return [chosen[name] for name in sorted(chosen)]


def _machine_matches(machine: str, globs: Sequence[str]) -> bool:
    concrete = _CONCRETE.get(machine, machine)
    return any(fnmatch.fnmatchcase(concrete, g) or fnmatch.fnmatchcase(machine, g) for g in globs)


def _file(mapping: dict[str, Any], key: str) -> tuple[Path, str] | None:
    entry = mapping.get(key)
    if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
        return None
    return Path(entry["filename"]), str(entry.get("format", "raw"))


def check(
    path: Path, doc: Any, arch: Arch, machine: str, *, secure_boot: bool = False
) -> Firmware | str:
    """A Firmware if the descriptor fits, else the reason it does not (for the debug log)."""
    if not isinstance(doc, dict):
        return "not a JSON object"
    interface = UEFI.descriptor_interface
    if interface not in doc.get("interface-types", []):
        return f"interface {doc.get('interface-types')} is not {interface}"
    targets = doc.get("targets", [])
    target = architecture(arch).descriptor_arch
    if not any(
        isinstance(t, dict)
        and t.get("architecture") == target
        and _machine_matches(machine, t.get("machines", []))
        for t in targets
    ):
        return f"no target for {target} machine {machine}"
    mapping = doc.get("mapping", {})
    if mapping.get("device") != "flash":
        return f"device {mapping.get('device')!r} is not flash"
    if mapping.get("mode", "split") != "split":
        return f"flash mode {mapping.get('mode')!r} is not split"
    features = set(doc.get("features", []))
    if not secure_boot and (bad := sorted(features & set(SECURE_FEATURES))):
        return f"has {', '.join(bad)} (Secure Boot not asked for)"
    if secure_boot and (missing := [f for f in SECURE_FEATURES[:2] if f not in features]):
        return f"no {' or '.join(missing)} feature (Secure Boot asked for)"
    code = _file(mapping, "executable")
    nvram = _file(mapping, "nvram-template")
    if code is None or nvram is None:
        return "no executable or nvram-template"
    for f, _ in (code, nvram):
        if not f.is_file():
            return f"file {f} is missing"
    return Firmware(
        code=code[0],
        vars_template=nvram[0],
        descriptor=path,
        code_format=code[1],
        vars_format=nvram[1],
        secure_boot=secure_boot,
        requires_smm=secure_boot and "requires-smm" in features,
    )


def find_uefi(
    arch: Arch,
    machine: str,
    *,
    dirs: Sequence[Path] | None = None,
    secure_boot: bool = False,
) -> Firmware:
    """The first descriptor (by file name) that fits ``arch`` and ``machine``."""
    for path in descriptor_files(search_dirs() if dirs is None else dirs):
        try:
            text = path.read_text()
        except OSError as exc:
            log.debug("firmware %s: skipped: unreadable (%s)", path, exc.strerror)
            continue
        if not text.strip():
            log.debug("firmware %s: skipped: empty file (hides a lower-priority one)", path)
            continue
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            log.debug("firmware %s: skipped: invalid JSON (%s)", path, exc)
            continue
        result = check(path, doc, arch, machine, secure_boot=secure_boot)
        if isinstance(result, Firmware):
            log.debug(
                "firmware %s: chosen (code %s, vars %s)", path, result.code, result.vars_template
            )
            return result
        log.debug("firmware %s: skipped: %s", path, result)
    package = architecture(arch).uefi_package
    if secure_boot:
        raise DependencyError(
            f"no UEFI firmware with Secure Boot and enrolled keys for {arch} ({machine}) in "
            "QEMU's firmware descriptors",
            f"install a build that has them (Debian's {package} ships them); "
            "`pvmlab --debug vm create` shows why each descriptor was skipped",
        )
    raise DependencyError(
        f"no UEFI firmware for {arch} ({machine}) found in QEMU's firmware descriptors",
        f"install it: apt-get install {package} (Homebrew's qemu ships its own); "
        "`pvmlab --debug vm start` shows why each descriptor was skipped",
    )


# --- what a firmware image contains --------------------------------------------------------------

# EDK2's NetworkPkg/HttpBootDxe: its FFS file name (a GUID, stored little-endian). Firmware
# volumes keep most drivers inside an LZMA-compressed section (GUID-defined section, EDK2's
# LZMA GUID), so the name is looked for in the plain image and in each such section.
HTTP_BOOT_DXE = uuid.UUID("ecebcb00-d9c8-11e4-af3d-8cdcd426c973").bytes_le
_LZMA_SECTION = uuid.UUID("ee4e5898-3914-4259-9d6e-dc7bd79403cf").bytes_le
_MAX_SECTION_OUTPUT = 256 * 1024 * 1024  # decompressed size cap per section


def _lzma_sections(image: bytes) -> Iterator[bytes]:
    """The decompressed contents of the image's LZMA GUID-defined sections. Each such section
    header is size (3 bytes), type (1), the GUID (16), data offset (2), attributes (2); the data
    is LZMA "alone" (properties, 8-byte size, stream)."""
    at = image.find(_LZMA_SECTION)
    while at >= 4:
        offset = int.from_bytes(image[at + 16 : at + 18], "little")
        start = at - 4 + offset
        if offset >= 24 and start < len(image):
            try:
                data = lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(
                    image[start:], max_length=_MAX_SECTION_OUTPUT
                )
            except lzma.LZMAError:
                data = b""  # the GUID's bytes appeared elsewhere: not a section
            yield data
        at = image.find(_LZMA_SECTION, at + 16)


def has_http_boot(code: Path) -> bool:
    """Whether a UEFI code image holds EDK2's HTTP Boot driver (OVMF/AAVMF built with
    ``NETWORK_HTTP_BOOT_ENABLE``; Debian 12's builds have it). Remembered per file version for
    the process (a lab file's `up` creates many machines)."""
    st = code.stat()
    return _has_http_boot(code, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _has_http_boot(code: Path, _mtime_ns: int, _size: int) -> bool:
    image = code.read_bytes()
    if HTTP_BOOT_DXE in image:
        return True
    return any(HTTP_BOOT_DXE in section for section in _lzma_sections(image))


def require_secure_boot(arch: Arch, machine: str, *, dirs: Sequence[Path] | None = None) -> None:
    """Refuse ``--secure-boot`` at once on a host whose QEMU has no such firmware."""
    find_uefi(arch, machine, dirs=dirs, secure_boot=True)
