"""Disk images built from Debian packages (``pvmlab image``), checked for real.

* the fixture image (``built_image``: mmdebstrap → ext4 + ESP → GPT, cached across sessions) is
  read back with the reference tools, without booting: sfdisk's JSON, mtools on the ESP at its
  offset, debugfs on the root at its offset;
* the CLI builds a second image from the cached root filesystem, lists it, feeds it to
  ``distro import --from-image`` by name and removes it;
* the image boots straight from its disk under TCG with OVMF (no network boot: systemd-boot
  from the removable-media path), takes a NoCloud seed disk carrying a key, and answers SSH
  with its root on the disk, grown to the larger disk (about 3 minutes under TCG here).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import run_pvmlab
from fixtures.builtimage import build_cached, image_home
from pvmlab import spawn
from pvmlab.arch import architecture
from pvmlab.image import ImageInfo
from pvmlab.image.layout import loader_entry
from pvmlab.qemu.argv import QemuConfig, build_argv, machine_type
from pvmlab.qemu.firmware import find_uefi

pytestmark = pytest.mark.integration


def _esp(info: ImageInfo) -> str:
    return f"{info.path}@@{info.partitions[0].start * 512}"


def _debugfs(info: ImageInfo, request: str) -> str:
    root = info.partitions[1].start * 512
    proc = spawn.run(["debugfs", "-c", "-R", request, f"{info.path}?offset={root}"])
    return proc.stdout


def test_built_image_partitions_esp_and_root(built_image: ImageInfo) -> None:
    info = built_image
    assert info.path.stat().st_size == info.virtual_size
    table = json.loads(spawn.run(["sfdisk", "--json", str(info.path)]).stdout)["partitiontable"]
    assert table["label"] == "gpt"
    assert table["id"].lower() == info.disk_guid.lower()
    parts = table["partitions"]
    assert [(p["start"], p["size"]) for p in parts] == [
        (p.start, p.sectors) for p in info.partitions
    ]
    assert [p["type"].upper() for p in parts] == [
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
        architecture("x86_64").gpt_root_type,
    ]
    assert [p["uuid"].lower() for p in parts] == [info.esp_partuuid, info.root_partuuid]

    env = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}
    listing = spawn.run(["mdir", "-b", "-i", _esp(info), "::/EFI/BOOT"], env=env).stdout
    assert "::/EFI/BOOT/BOOTX64.EFI" in listing.splitlines()
    entry = spawn.run(
        ["mtype", "-i", _esp(info), "::/loader/entries/pvmlab.conf"], env=env
    ).stdout
    assert entry == loader_entry(
        f"Debian bookworm ({info.name})", info.kernel_version, info.cmdline
    )
    assert f"root=UUID={info.root_fs_uuid}" in info.cmdline and "console=ttyS0" in info.cmdline
    kernels = spawn.run(["mdir", "-b", "-i", _esp(info), "::/EFI/pvmlab"], env=env).stdout
    assert set(kernels.split()) == {
        f"::/EFI/pvmlab/vmlinuz-{info.kernel_version}",
        f"::/EFI/pvmlab/initrd.img-{info.kernel_version}",
    }

    stats = _debugfs(info, "stats")
    assert f"Filesystem UUID:          {info.root_fs_uuid}" in stats
    assert "Filesystem volume name:   root" in stats
    fstab = _debugfs(info, "cat /etc/fstab")
    assert f"UUID={info.root_fs_uuid} / ext4" in fstab
    cfg = _debugfs(info, "cat /etc/cloud/cloud.cfg.d/90_pvmlab.cfg")
    assert "datasource_list: [ NoCloud, None ]" in cfg
    ssh_dir = _debugfs(info, "ls /etc/ssh")
    assert "sshd_config" in ssh_dir and "ssh_host_" not in ssh_dir  # made at first boot
    assert re.search(r"^User: .* Size: 0$", _debugfs(info, "stat /etc/machine-id"), re.M)
    for program in ("/usr/sbin/sshd", "/usr/bin/cloud-init", "/usr/bin/growpart"):
        assert "Type: regular" in _debugfs(info, f"stat {program}"), program


def test_cli_builds_from_the_cache_lists_imports_and_removes(built_image: ImageInfo) -> None:
    home = image_home()
    name = "cli-check"
    built = run_pvmlab(
        "image", "build", name, "--arch", "amd64", "--json", home=home.root, timeout=1800
    )
    try:
        assert "root filesystem from the cache" in built.stderr
        info = json.loads(built.stdout)
        assert info["recipe_key"] == built_image.recipe_key
        assert info["kernel_version"] == built_image.kernel_version
        assert info["virtual_size"] == built_image.virtual_size
        assert info["root_fs_uuid"] != built_image.root_fs_uuid  # every image its own ids
        listed = json.loads(run_pvmlab("image", "ls", "--json", home=home.root).stdout)
        assert name in [i["name"] for i in listed]

        imported = run_pvmlab(
            "distro", "import", name, "--arch", "x86_64", "--from-image", name, "--json",
            home=home.root,
        )
        assert json.loads(imported.stdout)["version"] == built_image.kernel_version
    finally:
        shutil.rmtree(home.distro_images(name), ignore_errors=True)
        run_pvmlab("image", "rm", name, home=home.root, check=False)
    listed = json.loads(run_pvmlab("image", "ls", "--json", home=home.root).stdout)
    assert name not in [i["name"] for i in listed]
    gone = run_pvmlab("image", "rm", name, home=home.root, check=False)
    assert gone.returncode == 1
    assert gone.stderr.strip().splitlines() == [
        f"pvmlab: error: no disk image named {name} (hint: `pvmlab image ls` lists them)"
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _seed(tmp: Path, public_key: str, hostname: str) -> Path:
    """A NoCloud seed: a FAT filesystem labelled cidata with user-data and meta-data."""
    (tmp / "user-data").write_text(
        "#cloud-config\n"
        "disable_root: false\n"
        f"ssh_authorized_keys:\n  - {public_key}\n"
    )
    (tmp / "meta-data").write_text(f"instance-id: {hostname}-1\nlocal-hostname: {hostname}\n")
    seed = tmp / "seed.img"
    spawn.run(["mkfs.vfat", "-C", "-n", "CIDATA", str(seed), "2048"])
    env = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}
    for doc in ("user-data", "meta-data"):
        spawn.run(["mcopy", "-i", str(seed), str(tmp / doc), f"::/{doc}"], env=env)
    return seed


def test_image_boots_from_its_disk_and_takes_a_nocloud_seed(
    tmp_path: Path, built_image: ImageInfo
) -> None:
    _boot_from_disk_and_ssh(tmp_path, built_image, "imgboot1")


@pytest.mark.slow
def test_aarch64_image_builds_on_this_host_and_boots_from_its_disk(tmp_path: Path) -> None:
    """arm64 packages configured under qemu-user (a binfmt_misc private to the build), then the
    image boots under TCG with AAVMF: tens of minutes cold, about 10 with the cache."""
    info = build_cached("aarch64")
    assert info.arch == "aarch64"
    table = json.loads(spawn.run(["sfdisk", "--json", str(info.path)]).stdout)["partitiontable"]
    assert table["partitions"][1]["type"].upper() == architecture("aarch64").gpt_root_type
    env = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}
    listing = spawn.run(["mdir", "-b", "-i", _esp(info), "::/EFI/BOOT"], env=env).stdout
    assert "::/EFI/BOOT/BOOTAA64.EFI" in listing.splitlines()
    assert "console=ttyAMA0" in info.cmdline
    _boot_from_disk_and_ssh(tmp_path, info, "imgboot2")


def _boot_from_disk_and_ssh(tmp_path: Path, built_image: ImageInfo, hostname: str) -> None:
    arch = built_image.arch
    key = tmp_path / "id_ed25519"
    spawn.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
    seed = _seed(tmp_path, (tmp_path / "id_ed25519.pub").read_text().strip(), hostname)
    disk = tmp_path / "disk.qcow2"  # the cached image stays as built: writes go to an overlay
    spawn.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(built_image.path),
         str(disk), "4G"]
    )
    fw = find_uefi(arch, machine_type(arch, "uefi"))
    vars_copy = tmp_path / "vars.fd"
    shutil.copyfile(fw.vars_template, vars_copy)
    console = tmp_path / "console.log"
    cfg = QemuConfig(
        name=hostname,
        arch=arch,
        firmware="uefi",
        accel="tcg",
        mac="0e:00:00:00:00:02",
        tap=None,
        serial_log=console,
        qmp_socket=tmp_path / "qmp.sock",
        pid_file=tmp_path / "qemu.pid",
        memory_mib=1024,
        uefi_code=fw.code,
        uefi_vars=vars_copy,
        boot="disk",
        disk=disk,
    )
    port = _free_port()
    argv = [
        *build_argv(cfg),
        "-drive", f"if=none,id=seed,format=raw,readonly=on,file={seed}",
        "-device", "virtio-blk-pci,drive=seed",
        "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", "virtio-net-pci,netdev=net0,romfile=",
    ]  # fmt: skip
    ssh = [
        "ssh", "-i", str(key), "-p", str(port), "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "ConnectTimeout=10", "root@127.0.0.1",
    ]  # fmt: skip
    with spawn.spawn(argv, stderr=subprocess.PIPE) as qemu:
        deadline = time.monotonic() + 3600  # TCG on a shared 2-core host: generous
        text = ""
        while time.monotonic() < deadline and qemu.poll() is None:
            text = console.read_text(errors="replace") if console.exists() else ""
            if "Cloud-init v." in text and "finished at" in text:
                break
            time.sleep(2)
        assert qemu.poll() is None, f"QEMU exited: {text[-3000:]}"
        assert "finished at" in text, f"cloud-init did not finish: {text[-3000:]}"
        out = None
        for _ in range(30):
            out = spawn.run(
                [*ssh, "hostname; findmnt -n -o SOURCE,FSTYPE /; cat /proc/cmdline"],
                check=False,
                timeout=60,
            )
            if out.returncode == 0:
                break
            time.sleep(5)
        assert out is not None and out.returncode == 0, (out and out.stderr, text[-2000:])
        lines = out.stdout.splitlines()
        assert lines[0] == hostname
        assert lines[1].split() == ["/dev/vda2", "ext4"]
        assert f"root=UUID={built_image.root_fs_uuid}" in lines[2]
        grown = spawn.run([*ssh, "lsblk -b -n -o SIZE /dev/vda2"], timeout=60).stdout
        assert int(grown.strip()) > built_image.partitions[1].sectors * 512  # growpart ran


def test_unreachable_archive_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    home = tmp_path / "lab"
    res = run_pvmlab(
        "image", "build", "nowhere", "--arch", "x86_64", "--mirror", "http://127.0.0.1:9/debian",
        home=home, check=False,
    )
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == (
        "pvmlab: error: cannot reach the Debian archive at http://127.0.0.1:9/debian: "
        "[Errno 111] Connection refused (hint: check the network, or give a reachable mirror "
        "with --mirror URL)"
    )
    assert json.loads(run_pvmlab("image", "ls", "--json", home=home).stdout) == []
    left = [p.name for p in (home / "cache" / "rootfs").iterdir()]
    assert [n for n in left if not n.endswith(".lock")] == []  # no tarball, no partial one
