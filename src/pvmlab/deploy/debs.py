"""Debian packages as building material: a private apt, a newc cpio writer, kernel modules and
the shared libraries a program needs, taken from extracted packages of any architecture.

The one owner of these pieces: the deploy ramdisk (``pvmlab.deploy.ramdisk``) and the test
fixtures (tests/fixtures/bootassets.py) both build initramfs images from .debs with them.

``DebianArchive`` runs apt's ordinary clients (``apt-get``, ``apt-cache``) against one suite and
architecture with its own sources list, lists and status directory (``-o Dir::…``), so the
system's sources and dpkg database are never touched; foreign-architecture packages (arm64 on an
amd64 host) are fetched the same way (``-o APT::Architecture=…``).
"""

from __future__ import annotations

import gzip
import io
import logging
import lzma
import os
import struct
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from pvmlab import spawn
from pvmlab.arch import Arch, architecture

log = logging.getLogger(__name__)

DEFAULT_MIRROR = "http://deb.debian.org/debian"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


def mirror() -> str:
    return os.environ.get("PVMLAB_DEBIAN_MIRROR", DEFAULT_MIRROR)


class DebianArchive:
    """apt-get/apt-cache against one suite and architecture, with its own lists directory."""

    @classmethod
    def cloud_kernel(cls, root: Path, arch: Arch) -> DebianArchive:
        """The suite of ``arch``'s cloud kernel (``Architecture.cloud_kernel_suite``): where the
        deploy ramdisk and the test fixtures take their packages from."""
        a = architecture(arch)
        return cls(root, a.debian_arch, a.cloud_kernel_suite)

    def __init__(self, root: Path, debarch: str, suite: str) -> None:
        self.root = root / f"apt-{suite}-{debarch}"
        self.debarch = debarch
        self.suite = suite
        signed = f"signed-by={KEYRING}" if KEYRING.exists() else "trusted=yes"
        (self.root / "lists" / "partial").mkdir(parents=True, exist_ok=True)
        (self.root / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        sources = self.root / "sources.list"
        line = f"deb [arch={debarch} {signed}] {mirror()} {suite} main\n"
        if not sources.exists() or sources.read_text() != line:
            sources.write_text(line)
            for stale in (self.root / "lists").glob("*_Packages*"):
                stale.unlink()
        self.opts = [
            "-o", f"Dir::Etc::SourceList={sources}",
            "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={self.root / 'lists'}",
            "-o", f"Dir::State::Status={self.root / 'status'}",
            "-o", f"Dir::Cache={self.root / 'cache'}",
            "-o", f"Dir::Cache::Archives={self.root / 'archives'}",
            "-o", f"APT::Architecture={debarch}",
            "-o", f"APT::Architectures={debarch}",
            "-o", "APT::Get::List-Cleanup=0",
            "-o", "APT::Sandbox::User=root",
            "-o", "Debug::NoLocking=1",
        ]  # fmt: skip
        (self.root / "status").touch()
        (self.root / "cache").mkdir(exist_ok=True)

    def has_lists(self) -> bool:
        return any((self.root / "lists").glob("*_Packages*"))

    def update(self) -> None:
        log.info("apt update: %s %s", self.suite, self.debarch)
        spawn.run(["apt-get", *self.opts, "-q", "update"], timeout=600)

    def ensure_lists(self) -> None:
        if not self.has_lists():
            self.update()

    def depends(self, package: str) -> str:
        """The linux-image-* package a meta package depends on."""
        out = spawn.run(["apt-cache", *self.opts, "depends", package]).stdout
        for line in out.splitlines():
            line = line.strip()
            if line.startswith("Depends:") and "linux-image-" in line:
                return line.split(":", 1)[1].strip()
        raise RuntimeError(f"{package} has no linux-image dependency in {self.suite}:\n{out}")

    def version(self, package: str) -> str:
        out = spawn.run(["apt-cache", *self.opts, "show", "--no-all-versions", package]).stdout
        for line in out.splitlines():
            if line.startswith("Version:"):
                return line.split(":", 1)[1].strip()
        raise RuntimeError(f"no version of {package} in {self.suite}")

    def library_closure(self, packages: Iterable[str]) -> list[str]:
        """``packages`` and, recursively, the library packages (``lib*``) they depend on: what
        their programs need at run time, without the maintainer-script tools."""
        seen: list[str] = []
        todo = list(packages)
        while todo:
            package = todo.pop(0)
            if package in seen:
                continue
            seen.append(package)
            out = spawn.run(
                ["apt-cache", *self.opts, "depends", "--no-recommends", "--no-suggests",
                 "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", package]
            ).stdout  # fmt: skip
            for line in out.splitlines():
                line = line.strip().lstrip("|")
                if not line.startswith(("Depends:", "PreDepends:")):
                    continue
                name = line.split(":", 1)[1].strip()
                if name.startswith("lib") and not name.startswith("<"):
                    todo.append(name.split(":")[0])
        return seen

    def download_and_extract(self, package: str, dest: Path) -> None:
        with tempfile.TemporaryDirectory(dir=self.root) as tmp:
            spawn.run(
                ["apt-get", *self.opts, "-q", "download", package], cwd=Path(tmp), timeout=900
            )
            debs = list(Path(tmp).glob("*.deb"))
            if len(debs) != 1:
                raise RuntimeError(f"apt-get download {package} gave {debs}")
            spawn.run(["dpkg-deb", "-x", str(debs[0]), str(dest)], timeout=300)


# --- initramfs (newc cpio, gzip) ---------------------------------------------------------------


class Cpio:
    """A minimal writer for the 'newc' cpio format the kernel unpacks as an initramfs."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"") -> None:
        encoded = name.encode() + b"\0"
        fields = (self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        header = b"070701" + b"".join(f"{f:08x}".encode() for f in fields)
        self.buf.write(header + encoded)
        self.buf.write(b"\0" * (-(len(header) + len(encoded)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))
        self.ino += 1

    def directory(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, 0o040000 | perm)

    def file(self, name: str, data: bytes, perm: int = 0o755) -> None:
        self._entry(name, 0o100000 | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()

    def gzipped(self) -> bytes:
        """The finished archive, gzip'd reproducibly (no time stamp)."""
        return gzip.compress(self.finish(), compresslevel=6, mtime=0)


def parent_dirs(paths: Iterable[str]) -> list[str]:
    """Every directory above ``paths`` (relative), parents first."""
    dirs: set[str] = set()
    for path in paths:
        parent = Path(path).parent
        while str(parent) != ".":
            dirs.add(str(parent))
            parent = parent.parent
    return sorted(dirs, key=lambda p: (p.count("/"), p))


# --- kernels and their modules -----------------------------------------------------------------


def find_kernel(root: Path) -> Path:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise RuntimeError(f"no boot/vmlinuz-* in the extracted kernel package under {root}")
    return kernels[-1]


def module_depends(ko: bytes) -> list[str]:
    """The ``depends=`` list of a kernel module's .modinfo section."""
    start = ko.find(b"\0depends=")
    if start < 0:
        return []
    end = ko.index(b"\0", start + 1)
    value = ko[start + len(b"\0depends="):end].decode()
    return [d.replace("-", "_") for d in value.split(",") if d]


def _builtin(kernel_root: Path) -> set[str]:
    names: set[str] = set()
    for listing in [*kernel_root.glob("lib/modules/*/modules.builtin"),
                    *kernel_root.glob("usr/lib/modules/*/modules.builtin")]:  # fmt: skip
        for line in listing.read_text().splitlines():
            names.add(Path(line).name.removesuffix(".ko").replace("-", "_"))
    return names


def kernel_modules(kernel_root: Path, wanted: Iterable[str]) -> dict[str, bytes]:
    """The modules of ``wanted`` (load order) that the kernel package ships as files,
    decompressed; those built into the kernel are skipped; anything else is an error, as is a
    module whose dependencies do not come before it."""
    found: dict[str, Path] = {}
    for path in [*kernel_root.glob("lib/modules/*/kernel/**/*.ko*"),
                 *kernel_root.glob("usr/lib/modules/*/kernel/**/*.ko*")]:  # fmt: skip
        name = path.name.split(".ko")[0].replace("-", "_")
        found[name] = path
    builtin = _builtin(kernel_root)
    out: dict[str, bytes] = {}
    for name in wanted:
        if name not in found:
            if name in builtin:
                continue
            raise RuntimeError(f"module {name} is neither a file nor built into the kernel "
                               f"under {kernel_root}")  # fmt: skip
        data = found[name].read_bytes()
        if found[name].name.endswith(".xz"):
            data = lzma.decompress(data)
        elif found[name].name.endswith(".zst"):
            raise RuntimeError(f"{found[name].name}: zstd modules are not supported")
        missing = [d for d in module_depends(data) if d not in out and d not in builtin]
        if missing:
            raise RuntimeError(f"{name} needs {missing} loaded before it: fix the module list")
        out[name] = data
    return out


# --- programs and their shared libraries, from extracted packages -------------------------------


def elf_dynamic(data: bytes) -> tuple[str | None, list[str]]:
    """(PT_INTERP, DT_NEEDED names) of a 64-bit little-endian ELF file."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    interp = None
    dynamic: tuple[int, int] | None = None
    loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
    for i in range(phnum):
        p_type, _flags, offset, vaddr, _paddr, filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + i * phentsize
        )
        if p_type == 3:  # PT_INTERP
            interp = data[offset:offset + filesz].rstrip(b"\0").decode()
        elif p_type == 2:  # PT_DYNAMIC
            dynamic = (offset, filesz)
        elif p_type == 1:  # PT_LOAD
            loads.append((vaddr, offset, filesz))
    if dynamic is None:
        return interp, []

    def file_offset(vaddr: int) -> int:
        for start, offset, size in loads:
            if start <= vaddr < start + size:
                return offset + vaddr - start
        raise ValueError(f"address {vaddr:#x} is in no loaded segment")

    needed: list[int] = []
    strtab = None
    for pos in range(dynamic[0], dynamic[0] + dynamic[1], 16):
        tag, value = struct.unpack_from("<qQ", data, pos)
        if tag == 0:
            break
        if tag == 1:  # DT_NEEDED
            needed.append(value)
        elif tag == 5:  # DT_STRTAB
            strtab = file_offset(value)
    if strtab is None:
        return interp, []
    names = []
    for offset in needed:
        end = data.index(b"\0", strtab + offset)
        names.append(data[strtab + offset:end].decode())
    return interp, names


def with_libraries(tree: Path, programs: Mapping[str, str], arch: Arch) -> dict[str, bytes]:
    """Each program (path inside the initramfs → path inside ``tree``) and every shared library
    it needs, found in ``tree``'s library directories (``arch``'s multiarch ones first) and
    placed in /lib; the ELF interpreter at the path the programs name."""
    triplet = architecture(arch).debian_triplet
    libdirs = [tree / d for d in (f"lib/{triplet}", f"usr/lib/{triplet}", "lib", "usr/lib")]
    files: dict[str, bytes] = {}
    todo: list[tuple[str, bytes]] = []
    for inside, relative in programs.items():
        data = (tree / relative).read_bytes()
        files[inside] = data
        todo.append((inside, data))
    done: set[str] = set()
    while todo:
        who, data = todo.pop()
        interp, needed = elf_dynamic(data)
        if interp is not None and interp.lstrip("/") not in files:
            files[interp.lstrip("/")] = _resolve_in(tree, interp.lstrip("/")).read_bytes()
        for name in needed:
            if name in done:
                continue
            done.add(name)
            found = next((d / name for d in libdirs if (d / name).exists()), None)
            if found is None:
                raise RuntimeError(f"{who} needs {name}, which no extracted package holds")
            lib = _resolve_in(tree, str(found.relative_to(tree))).read_bytes()
            files[f"lib/{name}"] = lib
            todo.append((name, lib))
    return files


def _resolve_in(tree: Path, relative: str) -> Path:
    """``relative`` inside ``tree``, following symlinks as if ``tree`` were the root."""
    path = tree / relative
    if not path.exists() and not path.is_symlink() and not relative.startswith("usr/"):
        path = tree / "usr" / relative  # merged /usr: the package holds usr/lib/...
    for _ in range(40):
        if not path.is_symlink():
            return path
        target = str(path.readlink())
        path = tree / target.lstrip("/") if target.startswith("/") else path.parent / target
    raise RuntimeError(f"too many symlinks at {relative}")
