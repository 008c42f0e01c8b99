"""``build_image``: a bootable, cloud-init-ready raw disk from Debian packages, no loop mounts.

    1. the root filesystem: mmdebstrap (root mode; for a foreign arch inside a user namespace
       with its own binfmt_misc, ``foreign``) writes a tarball, cached as
       ``cache/rootfs/KEY.tar`` where KEY hashes the recipe (distro, suite, arch, mirror,
       packages, SOURCE_DATE_EPOCH, hook format): the slow step runs once per recipe.
    2. the tarball is unpacked into a work directory beside the image; the image's own files
       go in (fstab naming its UUIDs, /boot/efi).
    3. the root: ``mkfs.ext4 -d DIR`` fills a file-backed ext4 without mounting it.
    4. the ESP: ``mkfs.vfat -C`` makes a FAT32 file; mtools puts systemd-boot (the image's own
       ``systemd-boot-efi``) on the removable-media path, ``loader/loader.conf``, the loader entry
       and the kernel + initrd into it.
    5. the disk: a sparse file, the GPT written by ``sfdisk``, both partitions copied in at their
       offsets with ``dd conv=notrunc,sparse``; then its SHA-256 and the record.

Everything runs as the tools' ordinary command lines through ``pvmlab.spawn``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

from pvmlab import spawn
from pvmlab.arch import Arch, architecture
from pvmlab.errors import (
    PrivilegeError,
    ProcessError,
    StateError,
    ValidationError,
)
from pvmlab.home import LabHome, file_lock, write_json
from pvmlab.image import foreign, layout, tools
from pvmlab.image.store import ImageInfo, PartitionInfo, image_name, save

Progress = Callable[[str], None]

# Debian 12's release date: the default SOURCE_DATE_EPOCH (timestamps inside the image)
DEFAULT_EPOCH = 1686355200
MMDEBSTRAP_TIMEOUT = 3 * 3600  # a foreign arch under qemu-user on a loaded host is slow
PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+(:[a-z0-9]+)?")

# The image's own settings, put in by mmdebstrap's customize hooks (part of the cached tarball;
# bump layout.RECIPE_FORMAT when they change).
CLOUD_CFG = """\
# pvmlab image build: cloud-init takes its data from NoCloud only: a filesystem labelled
# cidata (a seed disk or partition), /var/lib/cloud/seed/nocloud/, or ds=nocloud;s=URL
# (nocloud-net) on the kernel command line or in the SMBIOS system serial number.
datasource_list: [ NoCloud, None ]
"""
CLOUD_INIT_NOTE = (
    "NoCloud: a filesystem labelled cidata, /var/lib/cloud/seed/nocloud/ on the root, or "
    "ds=nocloud;s=URL added to the loader entry's options (or in the SMBIOS serial number)"
)
# What the image keeps out: documentation and translations (size), generated identity (every
# copy must make its own: machine-id, SSH host keys, cloud-init generates them at first boot).
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
)
HOOKS = (
    'rm -f "$1"/etc/ssh/ssh_host_*_key "$1"/etc/ssh/ssh_host_*_key.pub',
    ': > "$1"/etc/machine-id',
    'rm -f "$1"/var/lib/dbus/machine-id',
    'mkdir -p "$1"/etc/cloud/cloud.cfg.d',
)


def _say(progress: Progress | None, text: str) -> None:
    if progress is not None:
        progress(text)


def _distro(name: str) -> layout.Distro:
    try:
        return layout.DISTROS[name]
    except KeyError:
        raise ValidationError(
            f"unknown image distro {name!r}", f"choose one of: {', '.join(sorted(layout.DISTROS))}"
        ) from None


def _packages(values: Sequence[str]) -> tuple[str, ...]:
    out = []
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if not name:
                continue
            if not PACKAGE_NAME.fullmatch(name):
                raise ValidationError(
                    f"invalid package name {name!r}",
                    "give Debian package names separated by commas (e.g. curl,vim-tiny)",
                )
            out.append(name)
    return tuple(sorted(set(out)))


def _mirror(value: str) -> str:
    if not re.fullmatch(r"(https?|file)://[^\s,;'\"]+", value):
        raise ValidationError(
            f"invalid mirror URL {value!r}", "give the archive's URL, e.g. http://deb.debian.org/debian"
        )
    return value.rstrip("/")


def check_archive(mirror: str, suite: str, timeout: float = 20) -> None:
    """Fail early and clearly when the archive does not answer for the suite's Release file."""
    url = f"{mirror}/dists/{suite}/Release"
    try:
        req = urllib.request.Request(url, method="HEAD")  # noqa: S310 - scheme checked by _mirror
        with urllib.request.urlopen(req, timeout=timeout):  # noqa: S310
            pass
    except urllib.error.HTTPError as exc:
        raise StateError(
            f"the Debian archive at {mirror} has no {suite} (HTTP {exc.code} for {url})",
            "check --mirror: it must be the archive's root (the directory holding dists/)",
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StateError(
            f"cannot reach the Debian archive at {mirror}: {reason}",
            "check the network, or give a reachable mirror with --mirror URL",
        ) from None


def mmdebstrap_argv(recipe: layout.Recipe, out: Path, cloud_cfg: Path) -> list[str]:
    argv = [
        "mmdebstrap",
        "--mode=root",
        "--variant=apt",
        f"--architectures={architecture(recipe.arch).debian_arch}",
        '--aptopt=APT::Install-Recommends "false"',
        f"--include={','.join(recipe.packages)}",
    ]
    argv += [f"--dpkgopt={opt}" for opt in DPKG_EXCLUDES]
    argv += [f"--customize-hook={hook}" for hook in HOOKS]
    argv += [
        f"--customize-hook=upload {cloud_cfg} /etc/cloud/cloud.cfg.d/90_pvmlab.cfg",
        "--format=tar",
        recipe.suite,
        str(out),
        recipe.mirror,
    ]
    return argv


def _run_logged(
    argv: list[str], progress: Progress | None, rule: str | None, env: dict[str, str]
) -> None:
    """Run mmdebstrap, its I:/E:/W: lines to ``progress``; ProcessError with its last lines."""
    tail: list[str] = []
    ctx: contextlib.AbstractContextManager[subprocess.Popen[bytes]]
    if rule is None:
        ctx = spawn.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    else:
        ctx = foreign.run_in_userns(rule, argv, env=env)
    started = time.monotonic()
    with ctx as proc:
        if proc.stdout is None:
            raise TypeError("the child's output is not a pipe")
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            tail = [*tail[-11:], line]
            if line[:3] in ("I: ", "W: ", "E: "):
                _say(progress, f"mmdebstrap: {line[3:]}")
            if time.monotonic() - started > MMDEBSTRAP_TIMEOUT:
                break
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            code = -1
    if code != 0:
        errors = [t for t in tail if t.startswith("E: ")] or tail[-4:]
        raise ProcessError(
            f"mmdebstrap failed (exit code {code}): " + " | ".join(errors),
            argv=argv,
            returncode=code,
            stderr="\n".join(tail),
        )


def rootfs_tarball(
    home: LabHome, recipe: layout.Recipe, progress: Progress | None = None
) -> tuple[Path, bool]:
    """The cached tarball for ``recipe`` (made when missing). Returns (path, was it cached).

    The caller holds ``home.rootfs_lock(recipe.key)`` (``build_image`` does, until the image's
    record names the tarball): one build makes a recipe's tarball, and ``image prune`` leaves
    it alone meanwhile."""
    cache = home.rootfs_cache
    tar = home.rootfs_tarball(recipe.key)
    if tar.is_file():
        return tar, True
    rule = foreign.find_rule(recipe.arch) if foreign.needs_emulation(recipe.arch) else None
    _say(progress, f"checking the archive {recipe.mirror} ({recipe.suite})")
    check_archive(recipe.mirror, recipe.suite)
    partial = home.rootfs_partial(recipe.key)
    partial.unlink(missing_ok=True)
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(recipe.source_date_epoch)}
    with tempfile.TemporaryDirectory(prefix=".cfg-", dir=cache) as tmp:
        cfg = Path(tmp) / "90_pvmlab.cfg"
        cfg.write_text(CLOUD_CFG)
        argv = mmdebstrap_argv(recipe, partial, cfg)
        how = (
            "natively, takes minutes"
            if rule is None
            else "package scripts under qemu-user, takes tens of minutes"
        )
        _say(progress, f"mmdebstrap {recipe.suite} {recipe.arch} ({how})")
        try:
            _run_logged(argv, progress, rule, env)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    write_json(home.rootfs_recipe(recipe.key), recipe.as_dict())
    partial.rename(tar)
    return tar, False


def _kernel_version(root: Path) -> str:
    versions = [p.name.removeprefix("vmlinuz-") for p in (root / "boot").glob("vmlinuz-*")]
    versions = [v for v in versions if (root / "boot" / f"initrd.img-{v}").is_file()]
    if not versions:
        raise StateError(
            "the root filesystem has no kernel with an initrd in /boot",
            "the kernel package or initramfs-tools failed to install: see mmdebstrap's output",
        )
    return max(versions, key=_version_key)


def _version_key(version: str) -> list[tuple[int, str]]:
    return [(int(n), "") if n.isdigit() else (-1, n) for n in re.split(r"(\d+)", version)]


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            with contextlib.suppress(OSError):
                st = (Path(dirpath) / name).lstat()
                total += max(st.st_blocks * 512, 4096 if name in dirnames else 0) + 256
    return total


def _mtools_env() -> dict[str, str]:
    return {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def make_esp(
    path: Path,
    size: int,
    volume_id: str,
    boot_efi: Path,
    efi_name: str,
    kernel: Path,
    initrd: Path,
    kernel_version: str,
    entry: str,
    epoch: int,
) -> None:
    env = {**_mtools_env(), "SOURCE_DATE_EPOCH": str(epoch)}
    spawn.run(
        ["mkfs.vfat", "-C", "-F", "32", "-n", layout.ESP_LABEL, "-i", volume_id, str(path),
         str(size // 1024)],
        env=env,
    )
    img = ["-i", str(path)]
    dirs = ["::/EFI", "::/EFI/BOOT", f"::/{layout.KERNEL_DIR}", "::/loader", "::/loader/entries"]
    spawn.run(["mmd", *img, *dirs], env=env)
    with tempfile.TemporaryDirectory(prefix=".esp-", dir=path.parent) as tmp:
        conf = Path(tmp) / "loader.conf"
        conf.write_text(layout.loader_conf())
        ent = Path(tmp) / layout.LOADER_ENTRY
        ent.write_text(entry)
        copies = [
            (boot_efi, f"::/EFI/BOOT/{efi_name}"),
            (kernel, f"::/{layout.KERNEL_DIR}/vmlinuz-{kernel_version}"),
            (initrd, f"::/{layout.KERNEL_DIR}/initrd.img-{kernel_version}"),
            (conf, "::/loader/loader.conf"),
            (ent, f"::/loader/entries/{layout.LOADER_ENTRY}"),
        ]
        for src, dst in copies:
            spawn.run(["mcopy", *img, "-o", str(src), dst], env=env, timeout=300)


def make_root(path: Path, size: int, tree: Path, fs_uuid: str, epoch: int) -> None:
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": str(epoch)}
    spawn.run(
        ["mkfs.ext4", "-q", "-F", "-L", layout.ROOT_LABEL, "-U", fs_uuid,
         "-E", f"hash_seed={fs_uuid},root_owner=0:0", "-d", str(tree), str(path),
         str(size // 1024) + "k"],
        env=env,
        timeout=1800,
    )


def write_disk(path: Path, lay: layout.Layout, esp: Path, root: Path) -> None:
    with path.open("wb") as fh:
        fh.truncate(lay.disk_size)
    spawn.run(
        ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(path)],
        input=layout.sfdisk_script(lay),
    )
    for part, src in ((lay.esp, esp), (lay.root, root)):
        spawn.run(
            ["dd", f"if={src}", f"of={path}", "bs=1M", f"seek={part.offset // layout.MIB}",
             "conv=notrunc,sparse", "status=none"],
            timeout=1800,
        )


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(4 * 1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _workdir(parent: Path) -> Iterator[Path]:
    """A work directory in ``parent``; called under the images lock, so any other work
    directory there is a killed build's leftover (gigabytes) and goes first."""
    parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    for stale in parent.glob(".build-*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_image(
    home: LabHome,
    name: str,
    distro: str = "debian-12",
    *,
    arch: Arch,
    packages: Sequence[str] = (),
    size: int | None = None,
    mirror: str | None = None,
    source_date_epoch: int | None = None,
    progress: Progress | None = None,
) -> ImageInfo:
    """Build disk image NAME (replacing one of that name) and return what it is.

    ``size`` is the disk's virtual size in bytes (default: the root's content with room to
    spare); ``packages`` are added to the base set; ``mirror`` replaces the distro's archive.
    """
    started = time.monotonic()
    name = image_name(name)
    d = _distro(distro)
    extra = _packages(packages)
    epoch = DEFAULT_EPOCH if source_date_epoch is None else source_date_epoch
    recipe = layout.make_recipe(d, arch, extra, _mirror(mirror) if mirror else None, epoch)
    if size is not None and size < 1024 * layout.MIB:
        raise ValidationError(f"image size {size} bytes is too small", "give at least 1G")
    if os.geteuid() != 0:
        raise PrivilegeError(
            "image build runs mmdebstrap and unpacks its root filesystem as root",
            "run it with sudo",
        )
    tools.require(arch, rootfs_cached=home.rootfs_tarball(recipe.key).is_file())
    home.ensure()
    home.disk_images.mkdir(mode=0o755, exist_ok=True)
    home.rootfs_cache.mkdir(mode=0o755, parents=True, exist_ok=True)
    with file_lock(home.rootfs_lock(recipe.key)):  # until the record names the tarball
        tar, cached = rootfs_tarball(home, recipe, progress)
        _say(progress, f"root filesystem {'from the cache' if cached else 'built'}: {tar.name}")
        uuids = layout.image_uuids(name, recipe.key)
        a = architecture(arch)
        with file_lock(home.disk_images_lock), _workdir(home.disk_images) as work:
            tree = work / "root"
            tree.mkdir()
            _say(progress, "unpacking the root filesystem")
            spawn.run(["tar", "-C", str(tree), "--numeric-owner", "-xpf", str(tar)], timeout=1800)
            version = _kernel_version(tree)
            boot_efi = tree / "usr/lib/systemd/boot/efi" / a.systemd_boot_file
            if not boot_efi.is_file():
                raise StateError(
                    f"the root filesystem has no {boot_efi.name}",
                    "systemd-boot-efi failed to install: see mmdebstrap's output",
                )
            (tree / "etc/fstab").write_text(layout.fstab(uuids["root-fs"], uuids["esp-part"]))
            (tree / "boot/efi").mkdir(exist_ok=True)
            content = _tree_bytes(tree)
            disk_size = size if size is not None else layout.auto_disk_size(content)
            try:
                lay = layout.plan_layout(arch, disk_size, uuids)
            except ValueError as exc:
                raise ValidationError(str(exc), "give a larger --size") from None
            if lay.root.size_bytes < content + 64 * layout.MIB:
                raise ValidationError(
                    f"a {disk_size // layout.MIB} MiB image cannot hold the root's "
                    f"{content // layout.MIB} MiB",
                    "give a larger --size, or leave it out to size the image to its content",
                )
            cmdline = layout.kernel_cmdline(arch, uuids["root-fs"])
            entry = layout.loader_entry(f"Debian {d.suite} ({name})", version, cmdline)
            esp_mib = lay.esp.size_bytes // layout.MIB
            _say(progress, f"ESP: systemd-boot, kernel {version} ({esp_mib} MiB)")
            esp = work / "esp.img"
            make_esp(
                esp, lay.esp.size_bytes, uuids["esp-fs"], boot_efi, a.efi_boot_file,
                tree / "boot" / f"vmlinuz-{version}", tree / "boot" / f"initrd.img-{version}",
                version, entry, epoch,
            )
            _say(progress, f"root: ext4 from the tree ({lay.root.size_bytes // layout.MIB} MiB)")
            rootimg = work / "root.img"
            make_root(rootimg, lay.root.size_bytes, tree, uuids["root-fs"], epoch)
            shutil.rmtree(tree)
            _say(progress, f"disk: GPT and partitions ({disk_size // layout.MIB} MiB)")
            disk = work / "disk.raw"
            write_disk(disk, lay, esp, rootimg)
            _say(progress, "disk: sha256")
            digest = sha256_file(disk)
            esp_vol = uuids["esp-fs"]
            info = ImageInfo(
                name=name,
                arch=arch,
                path=home.disk_image_file(name),
                virtual_size=disk_size,
                sha256=digest,
                created=datetime.now(UTC).isoformat(timespec="seconds"),
                distro=d.name,
                suite=d.suite,
                mirror=recipe.mirror,
                packages=extra,
                recipe_key=recipe.key,
                partitions=(
                    PartitionInfo(
                        number=lay.esp.number, role="esp", start=lay.esp.start,
                        sectors=lay.esp.size, type_guid=lay.esp.type_guid, partuuid=lay.esp.uuid,
                        filesystem="vfat", fs_uuid=f"{esp_vol[:4]}-{esp_vol[4:]}",
                        label=layout.ESP_LABEL,
                    ),
                    PartitionInfo(
                        number=lay.root.number, role="root", start=lay.root.start,
                        sectors=lay.root.size, type_guid=lay.root.type_guid,
                        partuuid=lay.root.uuid, filesystem="ext4", fs_uuid=uuids["root-fs"],
                        label=layout.ROOT_LABEL,
                    ),
                ),
                disk_guid=lay.disk_guid,
                root_partition=lay.root.number,
                root_fs_uuid=uuids["root-fs"],
                root_partuuid=lay.root.uuid,
                esp_partuuid=lay.esp.uuid,
                kernel_version=version,
                cmdline=cmdline,
                loader_entry=f"/loader/entries/{layout.LOADER_ENTRY}",
                cloud_init=CLOUD_INIT_NOTE,
                build_seconds=round(time.monotonic() - started, 1),
            )
            target = home.disk_image_dir(name)
            if target.exists():
                shutil.rmtree(target)
            target.mkdir(mode=0o755)
            disk.replace(info.path)
            save(home, info)
    return info
