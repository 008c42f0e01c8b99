"""The deploy ramdisk: a Debian kernel and a busybox initramfs whose /init writes a disk image.

Built by pvmlab from Debian packages for each architecture, from the suite of its cloud kernel
(``Architecture.cloud_kernel_suite``: bookworm amd64, trixie arm64): the cloud kernel, its
virtio modules (network, PCI, block), busybox-static (udhcpc, wget, sha256sum, dd, blockdev,
od), and from ``fdisk`` and ``e2fsprogs``: sfdisk, e2fsck and resize2fs with the shared
libraries they need (read from the ELF files, taken from the same architecture's library
packages). The result is cached in a system directory
(``/var/cache/pvmlab/deploy``, or ``$PVMLAB_DEPLOY_CACHE``) under a key made of every input (the
package versions, the module list, /init), so a change of any rebuilds it, and copied into the
lab home (``LabHome.deploy_ramdisk``) from where the lab serves it.

/init is the static script below: it never runs anything it is sent. Its instructions come from
``GET /deploy/<mac>`` as ``key=value`` lines, each matched by name (``case``), never evaluated:

    image=URL  size=BYTES  sha256=HEX  disk=/dev/vda  status=URL  [seed=URL  seed_size=BYTES]

It streams the image in chunks (``?offset=&length=``) into the disk, retrying each chunk a few
times, reads the image's length back from the disk (page cache dropped) and compares its
SHA-256, grows the last partition (and an ext2/3/4 file system on it) to the disk's end less
room for the seed, writes the lab's CIDATA seed into a partition of its own, reports each phase
to ``status`` (``phase``, ``bytes``, ``total``, ``mbps``, ``message``) and reboots. A failure is
reported and the machine powers off: it is not booted into a half-written disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pvmlab.arch import Arch, architecture
from pvmlab.deploy import debs
from pvmlab.errors import ProcessError
from pvmlab.home import LabHome, file_lock, write_atomic

log = logging.getLogger(__name__)

FORMAT_VERSION = "1"  # bump when the layout changes (the /init text is part of the key itself)
DEFAULT_CACHE = Path("/var/cache/pvmlab/deploy")
MARKER = "pvmlab-deploy:"  # every console line /init prints starts with this
CHUNK_MIB = 8  # the stream's unit: one HTTP Range request, retried as a whole
ATTEMPTS = 4  # tries per chunk before the deploy is reported failed

# the modules virtio-net needs in Debian's cloud kernel, in load order (the test fixtures'
# network initramfs loads the same)
VIRTIO_NET_MODULES = ("virtio", "virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
                      "virtio_pci", "failover", "net_failover", "virtio_net")  # fmt: skip
# load order; a module the kernel has built in is skipped (debs.kernel_modules)
MODULES = (*VIRTIO_NET_MODULES, "virtio_blk",
           "crc32c_generic", "libcrc32c", "crc16", "mbcache", "jbd2", "ext4")  # fmt: skip
# programs taken from packages (inside the initramfs → inside the extracted packages)
PROGRAMS = {"sbin/sfdisk": "sbin/sfdisk", "sbin/e2fsck": "sbin/e2fsck",
            "sbin/resize2fs": "sbin/resize2fs"}  # fmt: skip
PACKAGES = ("fdisk", "e2fsprogs")

UDHCPC_SCRIPT = """#!/bin/sh
# udhcpc event script: configure the NIC as the lease says
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
    ;;
esac
exit 0
"""

INIT_SCRIPT = r"""#!/bin/sh
# pvmlab deploy ramdisk: write the image the lab names onto this machine's disk, verify it,
# grow its last partition, add the cloud-init seed, report, reboot.
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin LD_LIBRARY_PATH=/lib
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
say() { echo "@MARKER@ $*"; }
say "ramdisk up: $(uname -r) $(uname -m)"
for m in @MODULES@; do
  [ -f "/lib/modules/$m.ko" ] && insmod "/lib/modules/$m.ko"
done
url=
for word in $(cat /proc/cmdline); do
  case "$word" in pvmlab.deploy=*) url="${word#pvmlab.deploy=}" ;; esac
done
halt_now() { say "halting: $*"; sync; sleep 1; poweroff -f; sleep 60; }
[ -n "$url" ] || halt_now "no pvmlab.deploy=URL on the kernel command line"
nic=
for i in $(seq 1 30); do
  for n in /sys/class/net/*; do
    case "${n##*/}" in lo) ;; *) nic="${n##*/}"; break ;; esac
  done
  [ -n "$nic" ] && break
  sleep 1
done
[ -n "$nic" ] || halt_now "no network interface"
ip link set lo up
ip link set "$nic" up
udhcpc -i "$nic" -f -q -n -t 30 -T 2 -s /etc/udhcpc.script || halt_now "no DHCP lease on $nic"
say "lease on $nic: $(ip -4 -o addr show dev "$nic" | awk '{print $4}')"
got=
for i in 1 2 3 4 5; do
  wget -q -O /tmp/instructions "$url" && { got=1; break; }
  sleep "$i"
done
[ -n "$got" ] || halt_now "cannot fetch the instructions from $url"
image= size= sha256= disk= status= seed= seed_size=
while IFS='=' read -r key value; do
  case "$key" in
    image) image="$value" ;;
    size) size="$value" ;;
    sha256) sha256="$value" ;;
    disk) disk="$value" ;;
    status) status="$value" ;;
    seed) seed="$value" ;;
    seed_size) seed_size="$value" ;;
  esac
done < /tmp/instructions
# report PHASE MESSAGE [BYTES MBPS]; a report that cannot be sent is tried again for a while
report() {
  msg=$(echo "$2" | sed 's/[^A-Za-z0-9._:-]/+/g')
  data="phase=$1&message=$msg&bytes=${3:-}&total=$size&mbps=${4:-}&sha256=${5:-}"
  for i in $(seq 1 "${6:-3}"); do
    wget -q -O /dev/null --post-data "$data" "$status" && return 0
    sleep 2
  done
  say "could not report $1 to the lab"
}
fail() { say "FAILED: $*"; report failed "$*" "" "" "" 30; halt_now "deploy failed"; }
[ -n "$image" ] && [ -n "$size" ] && [ -n "$sha256" ] && [ -n "$disk" ] && [ -n "$status" ] \
  || halt_now "incomplete instructions from $url"
for i in $(seq 1 30); do [ -b "$disk" ] && break; sleep 1; done
[ -b "$disk" ] || fail "no disk $disk"
disk_bytes=$(( $(blockdev --getsz "$disk") * 512 ))
[ "$disk_bytes" -ge "$size" ] || fail "disk $disk has $disk_bytes bytes, the image $size"
say "streaming $size bytes from $image to $disk"
report stream "started" 0 0
now() { awk '{print int($1 * 100)}' /proc/uptime; }
start=$(now)
chunk=$(( @CHUNK_MIB@ * 1048576 ))
off=0
while [ "$off" -lt "$size" ]; do
  end=$(( off + chunk - 1 ))
  [ "$end" -lt "$size" ] || end=$(( size - 1 ))
  want=$(( end - off + 1 ))
  ok=
  for attempt in $(seq 1 @ATTEMPTS@); do
    rm -f /tmp/chunk
    if wget -q -O /tmp/chunk "$image?offset=$off&length=$want" \
       && [ "$(wc -c < /tmp/chunk)" -eq "$want" ]; then
      ok=1; break
    fi
    say "chunk at $off failed (attempt $attempt of @ATTEMPTS@)"
    sleep $(( attempt * 2 ))
  done
  [ -n "$ok" ] || fail "stream broken at byte $off after @ATTEMPTS@ attempts"
  dd if=/tmp/chunk of="$disk" bs=1M seek=$(( off / 1048576 )) conv=notrunc 2>/dev/null \
    || fail "write to $disk failed at byte $off"
  off=$(( end + 1 ))
  took=$(( $(now) - start )); [ "$took" -gt 0 ] || took=1
  mbps=$(( off * 100 / took / 10485 ))
  rate="$(( mbps / 100 )).$(( mbps % 100 / 10 ))"
  say "wrote $off of $size bytes ($(( off * 100 / size ))%, $rate MB/s)"
  report stream "" "$off" "$rate"
done
rm -f /tmp/chunk
sync
echo 3 > /proc/sys/vm/drop_caches
report verify "reading back $size bytes" "$size" "$rate"
wrote=$(head -c "$size" "$disk" | sha256sum | cut -d' ' -f1)
if [ "$wrote" != "$sha256" ]; then
  fail "checksum mismatch: the disk holds sha256 $wrote, the image is $sha256"
fi
say "verified: sha256 $wrote"
report verified "" "$size" "$rate" "$wrote"
# grow the last partition to the disk's end, less room for the seed
if sfdisk --relocate gpt-bin-to-end "$disk" >/dev/null 2>&1 || true; then :; fi
last=$(sfdisk -d "$disk" 2>/dev/null | grep "^$disk" | tail -n 1)
if [ -n "$last" ]; then
  n=$(echo "${last%% :*}" | sed "s|^$disk||; s|^p||")
  pstart=$(echo "$last" | sed 's/.*start= *\([0-9]*\).*/\1/')
  sectors=$(blockdev --getsz "$disk")
  room=0
  [ -n "$seed" ] && room=$(( (seed_size + 1048575) / 1048576 * 2048 ))
  limit=$(( (sectors - 34 - room) / 2048 * 2048 ))
  psize=$(echo "$last" | sed 's/.*size= *\([0-9]*\).*/\1/')
  if [ -n "$seed" ] && [ "$room" -gt 0 ] && [ "$limit" -gt $(( pstart + psize )) ]; then
    echo "$pstart,$(( limit - pstart ))" | sfdisk -N "$n" --no-reread --no-tell-kernel -q "$disk" \
      || fail "cannot grow partition $n"
    echo "$limit,$room,L" | sfdisk --append --no-reread --no-tell-kernel -q "$disk" \
      || fail "cannot add the seed partition"
    seeded=$limit
  else
    echo "$pstart,+" | sfdisk -N "$n" --no-reread --no-tell-kernel -q "$disk" \
      || say "partition $n keeps its size"
    [ -n "$seed" ] && say "no room for the cloud-init seed partition"
  fi
  blockdev --rereadpt "$disk"
  sleep 1
  part="$disk$n"
  [ -b "$part" ] || part="${disk}p$n"
  # an ext2/3/4 superblock has the magic 0xEF53 at byte 1080
  magic=$(dd if="$part" bs=1 skip=1080 count=2 2>/dev/null | od -An -tx1 | tr -d ' \n')
  if [ "$magic" = "53ef" ]; then
    e2fsck -f -y "$part" >/dev/null 2>&1
    resize2fs "$part" 2>&1 | grep -v "^$" | tail -n 1 | sed "s/^/@MARKER@ /"
  fi
  say "grew partition $n: $(sfdisk -d "$disk" | grep "^$part ")"
else
  say "no partition table: the image is written as it is"
fi
if [ -n "${seeded:-}" ]; then
  if wget -q -O /tmp/seed "$seed" && [ "$(wc -c < /tmp/seed)" -eq "$seed_size" ]; then
    dd if=/tmp/seed of="$disk" bs=1M seek=$(( seeded / 2048 )) conv=notrunc 2>/dev/null \
      && say "cloud-init seed (CIDATA) written at sector $seeded" || fail "cannot write the seed"
  else
    fail "cannot fetch the cloud-init seed from $seed"
  fi
fi
sync
report deployed "written, verified, grown" "$size" "$rate" "$wrote" 10
say "deployed; rebooting"
sleep 1
reboot -f
sleep 60
"""


def init_script() -> str:
    """/init, with its constants filled in."""
    return (
        INIT_SCRIPT.replace("@MARKER@", MARKER)
        .replace("@MODULES@", " ".join(MODULES))
        .replace("@CHUNK_MIB@", str(CHUNK_MIB))
        .replace("@ATTEMPTS@", str(ATTEMPTS))
    )


@dataclass(frozen=True)
class Ramdisk:
    arch: Arch
    kernel: Path
    initrd: Path
    key: str


def cache_root() -> Path:
    env = os.environ.get("PVMLAB_DEPLOY_CACHE")
    return Path(env) if env else DEFAULT_CACHE


def _busybox(arch: Arch, archive: debs.DebianArchive, work: Path) -> bytes:
    archive.download_and_extract("busybox-static", work / "busybox")
    for name in ("bin/busybox", "usr/bin/busybox"):
        if (work / "busybox" / name).is_file():
            return (work / "busybox" / name).read_bytes()
    raise RuntimeError(f"no busybox in busybox-static ({arch})")


def make_initramfs(busybox: bytes, modules: dict[str, bytes], files: dict[str, bytes]) -> bytes:
    cpio = debs.Cpio()
    base = ["bin", "sbin", "dev", "proc", "sys", "tmp", "run", "etc", "lib", "lib/modules",
            "usr", "usr/bin", "usr/sbin"]  # fmt: skip
    for d in sorted({*base, *debs.parent_dirs(files)}, key=lambda p: (p.count("/"), p)):
        cpio.directory(d)
    cpio.file("bin/busybox", busybox)
    cpio.symlink("bin/sh", "busybox")
    for name, data in modules.items():
        cpio.file(f"lib/modules/{name}.ko", data, 0o644)
    for path, data in sorted(files.items()):
        cpio.file(path, data)
    cpio.file("etc/udhcpc.script", UDHCPC_SCRIPT.encode())
    cpio.file("init", init_script().encode())
    return cpio.gzipped()


def _lists_stamp(archive: debs.DebianArchive) -> str:
    files = sorted((archive.root / "lists").glob("*_Packages*"))
    return "|".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


def _inputs(archive: debs.DebianArchive, arch: Arch) -> tuple[str, dict[str, str]]:
    """The kernel package and every package's version; asked of apt (a few dozen look-ups)
    only when its lists changed since the last time, else read back from ``inputs.json``."""
    memo = archive.root / "inputs.json"
    stamp = _lists_stamp(archive)
    try:
        known = json.loads(memo.read_text())
        if known.get("stamp") == stamp and known.get("packages") == list(PACKAGES):
            return str(known["kernel"]), dict(known["versions"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    kernel_pkg = archive.depends(architecture(arch).cloud_kernel_package)
    packages = [kernel_pkg, "busybox-static", *archive.library_closure(PACKAGES)]
    versions = {p: archive.version(p) for p in packages}
    write_atomic(memo, json.dumps({"stamp": stamp, "packages": list(PACKAGES),
                                   "kernel": kernel_pkg, "versions": versions}) + "\n")  # fmt: skip
    return kernel_pkg, versions


def key_of(arch: Arch, versions: dict[str, str]) -> str:
    text = json.dumps(
        {"format": FORMAT_VERSION, "arch": arch, "versions": versions, "init": init_script(),
         "modules": MODULES, "programs": PROGRAMS, "udhcpc": UDHCPC_SCRIPT},
        sort_keys=True,
    )  # fmt: skip
    return f"{arch}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def build(arch: Arch, cache: Path | None = None) -> Ramdisk:
    """The deploy ramdisk for ``arch``, from the cache or built (needs the Debian archive)."""
    cache = cache or cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    with file_lock(cache / f".{arch}.lock"):
        archive = debs.DebianArchive.cloud_kernel(cache, arch)
        archive.ensure_lists()
        try:
            kernel_pkg, versions = _inputs(archive, arch)
        except (RuntimeError, ProcessError) as exc:
            log.info("package look-up failed (%s); updating the lists", exc)
            archive.update()
            kernel_pkg, versions = _inputs(archive, arch)
        key = key_of(arch, versions)
        final = cache / key
        if not (final / "manifest.json").exists():
            _build_into(arch, archive, kernel_pkg, versions, final)
            for old in cache.glob(f"{arch}-*"):
                if old != final and (old / "manifest.json").exists():
                    shutil.rmtree(old, ignore_errors=True)
    return Ramdisk(arch=arch, kernel=final / "vmlinuz", initrd=final / "initrd", key=key)


def _build_into(
    arch: Arch, archive: debs.DebianArchive, kernel_pkg: str, versions: dict[str, str], final: Path
) -> None:
    log.info("building the deploy ramdisk for %s", arch)
    work = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".build-{arch}-"))
    try:
        archive.download_and_extract(kernel_pkg, work / "kernel")
        busybox = _busybox(arch, archive, work)
        tree = work / "tree"
        for package in versions:
            if package not in (kernel_pkg, "busybox-static"):
                archive.download_and_extract(package, tree)
        programs = {inside: _program(tree, relative) for inside, relative in PROGRAMS.items()}
        files = debs.with_libraries(tree, programs, arch)
        out = work / "out"
        out.mkdir()
        shutil.copyfile(debs.find_kernel(work / "kernel"), out / "vmlinuz")
        modules = debs.kernel_modules(work / "kernel", MODULES)
        (out / "initrd").write_bytes(make_initramfs(busybox, modules, files))
        manifest = {"arch": arch, "versions": versions, "modules": sorted(modules)}
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        out.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _program(tree: Path, relative: str) -> str:
    for candidate in (relative, f"usr/{relative}"):
        if (tree / candidate).is_file():
            return candidate
    raise RuntimeError(f"no {relative} in the extracted packages {PACKAGES}")


def publish(home: LabHome, ramdisk: Ramdisk) -> Path:
    """Copy the ramdisk into the lab home (``LabHome.deploy_ramdisk``), where the lab serves
    it; a no-op when the same build is there."""
    dest = home.deploy_ramdisk(ramdisk.arch)
    stamp = dest / "key"
    if stamp.exists() and stamp.read_text().strip() == ramdisk.key:
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    for src, name in ((ramdisk.kernel, "vmlinuz"), (ramdisk.initrd, "initrd")):
        tmp = dest / f".{name}.tmp"
        shutil.copyfile(src, tmp)
        tmp.rename(dest / name)
    write_atomic(stamp, ramdisk.key + "\n")
    return dest


def ensure(home: LabHome, arch: Arch) -> Path:
    """The ramdisk for ``arch`` built (or cached) and in the lab home."""
    return publish(home, build(arch))
