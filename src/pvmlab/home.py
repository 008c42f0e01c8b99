"""The lab home: where one lab keeps everything (default ~/.pvmlab, override PVMLAB_HOME).

    lab.json        the lab network (``provisioner create``)
    .lock           the state lock (``LabHome.locked``)
    catalog.toml    the user's own distro catalog entries (optional)
    ipxe.json       iPXE settings (``distro ipxe --dir``, official downloads)
    vms/            NAME.json per VM; NAME/ holds efivars.fd, disk.qcow2, runtime.json, ipxe-media/
    images/         NAME/ARCH/{vmlinuz,initrd,distro.json}
    configs/        dnsmasq.conf, dhcp-hosts (reservations), .render.lock
    tftp/           the TFTP root (iPXE first stages, autoexec.ipxe; signed GRUB and shim,
                    grub/grub.cfg and grub/machines/<MAC>.cfg, images -> ../images)
    logs/           dnsmasq.log, http.log, supervisor.log; per VM NAME.log (console),
                    NAME.qemu.log, NAME.console.jsonl (console times)
    pids/           supervisor.pid, NAME.pid
    monitors/       NAME.qmp (QMP), NAME.console (serial socket)
    stack/          state.json, network.json, dnsmasq.{leases,pid,stderr},
                    uplink.json, supervisor.sock, .control.lock, .network.lock
    ssh/            the lab's SSH key pair and its known_hosts (``vm ssh``, ``vm cp``)
    diskimages/     NAME/{disk.raw,image.json} (``image build``: bootable disk images)
    cache/          downloads/NAME/ARCH/METHOD/ (``distro pull``), ipxe/ (official iPXE builds),
                    rootfs/KEY.tar (``image build``: mmdebstrap's output, keyed by its inputs),
                    loaders/ (signed GRUB and shim packages for a foreign architecture)

Every path above is built here, by a property or method of ``LabHome``, and nowhere else.

Every kernel object the lab creates (network namespace, bridge, taps) is named from a short
hash of the home's real path, so two homes are two labs that never clash.

pvmlab runs as root, so the home is checked the way sshd checks ``~/.ssh`` (StrictModes):
``LabHome.check_ownership`` refuses a home, or one of its subdirectories, that is owned by
another user or writable by group/others, or that sits below a directory such a user could
rename things in (a world-writable directory is accepted only with the sticky bit, like
``/tmp``). The write helpers here (``write_atomic``, ``file_lock``, ``open_for_writing``)
open the last path component without following symlinks, relative to a directory opened
without following one either, so a swapped ``logs/`` or a planted ``dnsmasq.conf`` link never
makes root write outside the home.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import pwd
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pvmlab.errors import StateError

SUBDIRS = (
    "images", "vms", "configs", "tftp", "logs", "pids", "monitors", "stack", "ssh", "diskimages",
    "deploy",
)
CACHE = "cache"  # made on first download, not by ``ensure``
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

    # the rest of the layout, each file named once (issue 8: one owner of the layout)
    @property
    def state_lock(self) -> Path:
        return self.root / ".lock"

    @property
    def user_catalog(self) -> Path:
        return self.root / "catalog.toml"

    @property
    def ipxe_settings(self) -> Path:
        return self.root / "ipxe.json"

    @property
    def cache(self) -> Path:
        return self.root / CACHE

    @property
    def ipxe_cache(self) -> Path:
        return self.cache / "ipxe"

    def download_cache(self, distro: str, arch: str, method: str) -> Path:
        return self.cache / "downloads" / distro / arch / method

    def distro_images(self, distro: str) -> Path:
        """``images/NAME``: one distro, every architecture."""
        return self.images / distro

    def distro_dir(self, distro: str, arch: str) -> Path:
        return self.distro_images(distro) / arch

    def distro_file(self, distro: str, arch: str) -> Path:
        return self.distro_dir(distro, arch) / "distro.json"

    def tftp_file(self, name: str) -> Path:
        """A file served over TFTP under ``name``."""
        return self.tftp / name

    @property
    def tftp_images(self) -> Path:
        """``tftp/images``: a link to ``../images``, so GRUB (no HTTP in Debian's signed image)
        loads kernels and initrds over TFTP at the paths the HTTP server uses."""
        return self.tftp / "images"

    @property
    def grub_prefix(self) -> Path:
        """``tftp/grub``: the signed network GRUB's prefix; its ``grub.cfg`` is the same for
        every machine and sources ``machines/<MAC>.cfg``."""
        return self.tftp / "grub"

    def grub_machine_cfg(self, mac: str) -> Path:
        """``tftp/grub/machines/<mac>.cfg``, named as GRUB's ``${net_default_mac}`` spells it."""
        return self.grub_prefix / "machines" / f"{mac}.cfg"

    @property
    def loader_cache(self) -> Path:
        """``cache/loaders``: Debian packages of signed GRUB and shim fetched for other
        architectures than the host's (``pvmlab.assets.signedboot``)."""
        return self.cache / "loaders"

    @property
    def dnsmasq_conf(self) -> Path:
        return self.configs / "dnsmasq.conf"

    @property
    def dhcp_hosts(self) -> Path:
        return self.configs / "dhcp-hosts"

    @property
    def render_lock(self) -> Path:
        return self.configs / ".render.lock"

    @property
    def dnsmasq_log(self) -> Path:
        return self.logs / "dnsmasq.log"

    @property
    def http_log(self) -> Path:
        return self.logs / "http.log"

    @property
    def supervisor_log(self) -> Path:
        return self.logs / "supervisor.log"

    def service_log(self, service: str) -> Path:
        """The log of a stack service: ``dnsmasq``, ``http`` or ``supervisor`` (KeyError for
        another name: a caller's bug)."""
        logs = {
            "dnsmasq": self.dnsmasq_log,
            "http": self.http_log,
            "supervisor": self.supervisor_log,
        }
        return logs[service]

    @property
    def supervisor_pid(self) -> Path:
        return self.pids / "supervisor.pid"

    @property
    def stack_state(self) -> Path:
        return self.stack / "state.json"

    @property
    def network_record(self) -> Path:
        return self.stack / "network.json"

    @property
    def network_lock(self) -> Path:
        return self.stack / ".network.lock"

    @property
    def control_lock(self) -> Path:
        return self.stack / ".control.lock"

    @property
    def dnsmasq_leases(self) -> Path:
        return self.stack / "dnsmasq.leases"

    @property
    def dnsmasq_pid(self) -> Path:
        return self.stack / "dnsmasq.pid"

    @property
    def dnsmasq_stderr(self) -> Path:
        return self.stack / "dnsmasq.stderr"

    def vm_runtime(self, name: str) -> Path:
        return self.vm_dir(name) / "runtime.json"

    def vm_efivars(self, name: str) -> Path:
        return self.vm_dir(name) / "efivars.fd"

    def vm_disk(self, name: str) -> Path:
        return self.vm_dir(name) / "disk.qcow2"

    def vm_ipxe_media(self, name: str) -> Path:
        return self.vm_dir(name) / "ipxe-media"

    def vm_console_socket(self, name: str) -> Path:
        return self.monitors / f"{name}.console"

    def vm_qemu_log(self, name: str) -> Path:
        """QEMU's own stdout/stderr (not the guest's console)."""
        return self.logs / f"{name}.qemu.log"

    def vm_console_times(self, name: str) -> Path:
        """The console lines with their times (``pvmlab.observe.stamp``)."""
        return self.logs / f"{name}.console.jsonl"

    @property
    def subdirs(self) -> tuple[Path, ...]:
        """The subdirectories ``ensure`` makes (``clean --purge`` removes them)."""
        return tuple(self.root / sub for sub in SUBDIRS)

    @property
    def own_files(self) -> tuple[Path, ...]:
        """The files pvmlab keeps at the top of the home (``clean --purge`` removes them)."""
        return (self.lab_file, self.state_lock)

    # stack: the supervisor's control socket (reload requests, root only)
    @property
    def supervisor_socket(self) -> Path:
        return self.stack / "supervisor.sock"

    # --- uplink and SSH access (feature: uplink; pvmlab.network.uplink, pvmlab.vm.ssh) -------
    @property
    def uplink_link(self) -> str:
        """The uplink's interface inside the lab namespace (made by pasta)."""
        return f"pvup{self.lab_id}"  # 12 characters, under IFNAMSIZ

    @property
    def uplink_state(self) -> Path:
        return self.stack / "uplink.json"

    @property
    def uplink_log(self) -> Path:
        return self.logs / "uplink.log"

    # labs as code (pvmlab.labfile): which lab file made this home, and what it made
    @property
    def labfile_record(self) -> Path:
        return self.root / "labfile.json"

    @property
    def ssh_dir(self) -> Path:
        return self.root / "ssh"

    @property
    def ssh_key(self) -> Path:
        """The lab's SSH private key (ed25519); the public key is this path + ``.pub``."""
        return self.ssh_dir / "id_ed25519"

    @property
    def ssh_known_hosts(self) -> Path:
        return self.ssh_dir / "known_hosts"

    # installcfg: a VM's own install template (copied at `vm create`), its install status
    # (posted by the installer), and the lab's SSH public key the install configs authorise.
    def vm_install_template(self, name: str) -> Path:
        return self.vm_dir(name) / "install.j2"

    def vm_install_status(self, name: str) -> Path:
        return self.vm_dir(name) / "install-status.json"

    # deploy (pvmlab.deploy): the deploy ramdisk per arch as the lab serves it, the images
    # converted to raw (named by their SHA-256), each VM's deploy status and cloud-init seed
    @property
    def deploy_root(self) -> Path:
        return self.root / "deploy"

    def deploy_ramdisk(self, arch: str) -> Path:
        return self.deploy_root / "ramdisk" / arch

    @property
    def deploy_images(self) -> Path:
        return self.deploy_root / "images"

    def deploy_image(self, sha256: str) -> Path:
        return self.deploy_images / f"{sha256}.raw"

    @property
    def deploy_sources(self) -> Path:
        """Which source file gave which ``deploy_image`` (JSON: path|size|mtime → SHA-256)."""
        return self.deploy_images / "sources.json"

    def vm_deploy_status(self, name: str) -> Path:
        return self.vm_dir(name) / "deploy-status.json"

    def vm_seed(self, name: str) -> Path:
        """The VM's NoCloud seed (a small FAT image labelled CIDATA) the ramdisk writes."""
        return self.vm_dir(name) / "seed.img"

    @property
    def ssh_public_key(self) -> Path:
        return self.ssh_key.with_name(self.ssh_key.name + ".pub")

    # disk images built from packages (pvmlab.image): one directory per image, the rootfs cache
    @property
    def disk_images(self) -> Path:
        return self.root / "diskimages"

    def disk_image_dir(self, name: str) -> Path:
        return self.disk_images / name

    def disk_image_file(self, name: str) -> Path:
        """The image itself: a raw disk (GPT, ESP + ext4 root)."""
        return self.disk_image_dir(name) / "disk.raw"

    def disk_image_record(self, name: str) -> Path:
        return self.disk_image_dir(name) / "image.json"

    @property
    def disk_images_lock(self) -> Path:
        """Held while an image is built or removed (one build per lab home at a time)."""
        return self.disk_images / ".lock"

    @property
    def rootfs_cache(self) -> Path:
        """mmdebstrap tarballs, ``KEY.tar``, keyed by everything that went into them."""
        return self.cache / "rootfs"

    def rootfs_tarball(self, key: str) -> Path:
        return self.rootfs_cache / f"{key}.tar"

    def rootfs_recipe(self, key: str) -> Path:
        """What went into ``rootfs_tarball(key)`` (the recipe, as JSON)."""
        return self.rootfs_cache / f"{key}.json"

    def rootfs_partial(self, key: str) -> Path:
        """mmdebstrap's output while it runs (renamed to ``rootfs_tarball(key)`` when done)."""
        return self.rootfs_cache / f".{key}.tar.partial"

    def rootfs_lock(self, key: str) -> Path:
        """Held by a build of this recipe from making or finding its tarball until the image's
        record names it (so ``image prune`` never takes a tarball a build is about to use)."""
        return self.rootfs_cache / f".{key}.lock"

    # boot: one VM's lock (start/stop/clean of that VM), beside its pid file; never deleted
    # while the lab lives, so every holder locks the same file
    def vm_lock(self, name: str) -> Path:
        return self.pids / f"{name}.lock"

    def exists(self) -> bool:
        return self.root.is_dir()

    def ensure(self) -> None:
        """Create the home and its subdirectories (StateError when it cannot be made or is not
        safe for root to use: see ``check_ownership``)."""
        self.check_ownership()
        try:
            self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
            for sub in self.subdirs:
                sub.mkdir(mode=0o755, exist_ok=True)
        except OSError as exc:
            raise self._unusable(exc) from None
        self.check_ownership()

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
        self.check_ownership()

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Exclusive lock over the lab's state (VM definitions, lab record, reservations).

        The lock file lives in the home, so taking the lock creates the home if needed.
        """
        self.check_ownership()
        try:
            self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as exc:
            raise self._unusable(exc) from None
        return file_lock(self.state_lock)

    def check_ownership(self) -> None:
        """Refuse a home that another user could tamper with, as sshd's StrictModes does.

        * every directory above the home (along the path as given and along its real path)
          that exists is owned by root or the effective user and not writable by group or
          others, unless it has the sticky bit (``/tmp``: others cannot rename our entries);
        * the home itself and each of its subdirectories that exists is a real directory
          (not a symlink), owned by root or the effective user, not writable by group/others.

        A missing home passes (``ensure`` creates it and checks again).
        """
        euid = os.geteuid()
        given = self.root.absolute()
        real = Path(os.path.realpath(self.root))
        for parent in sorted({*given.parents, *real.parents}, key=lambda p: len(p.parts)):
            st = _stat_or_none(parent, follow=True)
            if st is not None:
                _check_dir(parent, st, euid, above_home=True)
        st = _stat_or_none(real, follow=True)
        if st is None:
            return
        _check_dir(real, st, euid, above_home=False)
        for sub in (*SUBDIRS, CACHE):
            path = real / sub
            st = _stat_or_none(path, follow=False)
            if st is not None:
                _check_dir(path, st, euid, above_home=False)


def _stat_or_none(path: Path, *, follow: bool) -> os.stat_result | None:
    try:
        return path.stat() if follow else path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return None  # not there (yet): nothing to check
    except OSError as exc:
        raise StateError(
            f"cannot check {path}: {exc.strerror or exc}",
            "run pvmlab as a user who may read the lab home (usually root)",
        ) from None


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _check_dir(path: Path, st: os.stat_result, euid: int, *, above_home: bool) -> None:
    """StateError unless ``path`` (with stat ``st``) is safe for ``euid`` to trust."""
    elsewhere = "choose a home in a directory only root can change (--home or PVMLAB_HOME)"
    if above_home and not stat.S_ISDIR(st.st_mode):
        return  # creating the home below a file fails, and says so (``ensure``)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a directory"
        raise StateError(
            f"{path} in the lab home is {what}, so pvmlab would write where it points",
            f"remove it (`rm {path}`) and run `pvmlab setup`",
        )
    if st.st_uid not in (0, euid):
        problem = f"{path} is owned by {_user(st.st_uid)}"
        if above_home:
            raise StateError(f"{problem}, who could replace the lab home below it", elsewhere)
        raise StateError(
            f"{problem}, who could make pvmlab write anywhere through it",
            f"`chown -R {_user(euid)} {path}`, or {elsewhere}",
        )
    writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable and not (above_home and st.st_mode & stat.S_ISVTX):
        who = (
            "group and others"
            if writable == (stat.S_IWGRP | stat.S_IWOTH)
            else ("its group" if writable == stat.S_IWGRP else "others")
        )
        if above_home:
            raise StateError(f"{path} is writable by {who} (and not sticky)", elsewhere)
        raise StateError(f"{path} in the lab home is writable by {who}", f"`chmod go-w {path}`")


def _symlink_refused(path: Path) -> StateError:
    return StateError(
        f"{path} is a symbolic link or not a directory; pvmlab does not write through links "
        "in the lab home",
        f"remove it (`rm {path}`) and rerun",
    )


@contextlib.contextmanager
def _open_dir(directory: Path) -> Iterator[int]:
    """An fd of ``directory`` (created if missing), opened without following a symlink and
    checked to be owned by root or the effective user and not writable by others."""
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _symlink_refused(directory) from None
        raise
    try:
        st = os.fstat(dfd)
        writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX
        if st.st_uid not in (0, os.geteuid()) or writable:
            raise StateError(
                f"{directory} is owned by {_user(st.st_uid)} or writable by others; "
                "pvmlab does not write in it",
                f"`chown {_user(os.geteuid())} {directory} && chmod go-w {directory}`",
            )
        yield dfd
    finally:
        os.close(dfd)


def _with_path(exc: OSError, path: Path) -> OSError:
    """The same error naming ``path`` in full: a failed write() names no file, and one opened
    relative to a directory fd names only the last component."""
    return OSError(exc.errno, exc.strerror, str(path))


def open_for_writing(
    path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_APPEND, mode: int = 0o644
) -> int:
    """A file descriptor of ``path`` (a file in the lab home) for root to write.

    The last component is opened with O_NOFOLLOW relative to its directory, itself opened
    with O_NOFOLLOW and checked (``_open_dir``): a symlink planted in place of the file or its
    directory is refused (StateError), never followed.
    """
    with _open_dir(path.parent) as dfd:
        try:
            return os.open(path.name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _symlink_refused(path) from None
            raise _with_path(exc, path) from None


def open_truncated(path: Path) -> IO[bytes]:
    """``path`` (in the lab home) emptied and open for writing, never through a symlink."""
    return os.fdopen(open_for_writing(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if needed) for the ``with`` block.

    The lab uses a few independent locks (state, network changes, stack start/stop, config
    renders) so that a holder of one may take another without deadlocking on itself.
    """
    fd = open_for_writing(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextlib.contextmanager
def try_file_lock(path: Path) -> Iterator[bool]:
    """``file_lock`` without waiting: yields True holding the lock, False when another holder
    has it (for work that skips what is in use rather than waiting for it)."""
    fd = open_for_writing(path, os.O_RDWR | os.O_CREAT)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Write a file so readers see the old or the new content, never a half-written one.

    The temporary file is created (O_EXCL, O_NOFOLLOW) and renamed over ``path`` relative to
    the checked directory fd, so neither a symlink at ``path`` nor a swapped directory is
    followed; on a full disk the old file stays as it was and no temporary file is left.
    """
    raw = data.encode() if isinstance(data, str) else data
    with _open_dir(path.parent) as dfd:
        tmp = f".{path.name}.{os.urandom(4).hex()}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600, dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(raw)
                fh.flush()
                os.fsync(fh.fileno())
                os.fchmod(fh.fileno(), mode)
            os.replace(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dfd)
            if isinstance(exc, OSError):
                raise _with_path(exc, path) from None
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
