"""Disk images from packages: the pure parts (layout arithmetic, sfdisk script, loader files,
recipe and cache key, binfmt rule, argv) and the image records."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import run_pvmlab
from pvmlab.errors import StateError, ValidationError
from pvmlab.home import LabHome
from pvmlab.image import (
    ImageInfo,
    PartitionInfo,
    build,
    find_image,
    foreign,
    layout,
    list_images,
    remove_image,
    store,
)

UUIDS = {
    "disk": "11111111-1111-4111-8111-111111111111",
    "esp-part": "22222222-2222-4222-8222-222222222222",
    "root-part": "33333333-3333-4333-8333-333333333333",
    "root-fs": "44444444-4444-4444-8444-444444444444",
    "esp-fs": "ABCD1234",
}
GIB = 1024**3


def test_layout_of_a_2g_disk() -> None:
    lay = layout.plan_layout("x86_64", 2 * GIB, UUIDS)
    # 4194304 sectors: ESP at 1 MiB for 256 MiB, root from 257 MiB to the last whole MiB before
    # the 33-sector backup GPT (4192256 = 2047 MiB)
    assert (lay.esp.number, lay.esp.start, lay.esp.size) == (1, 2048, 524288)
    assert (lay.root.number, lay.root.start, lay.root.size) == (2, 526336, 3665920)
    assert lay.root.offset == 257 * 1024 * 1024
    assert lay.esp.type_guid == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    assert lay.root.type_guid == "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"  # root x86-64
    arm = layout.plan_layout("aarch64", 2 * GIB, UUIDS)
    assert arm.root.type_guid == "B921B045-1DF0-41C3-AF44-4C6F280D3FAE"  # root arm64


def test_layout_refuses_a_disk_without_room_for_the_root() -> None:
    with pytest.raises(ValueError, match="no room for a root"):
        layout.plan_layout("x86_64", 258 * 1024 * 1024, UUIDS)
    with pytest.raises(ValueError, match="whole number of sectors"):
        layout.plan_layout("x86_64", GIB + 1, UUIDS)


def test_sfdisk_script() -> None:
    lay = layout.plan_layout("x86_64", 2 * GIB, UUIDS)
    assert layout.sfdisk_script(lay) == (
        "label: gpt\n"
        "label-id: 11111111-1111-4111-8111-111111111111\n"
        "unit: sectors\n"
        "first-lba: 2048\n"
        "\n"
        "start=2048, size=524288, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, "
        "uuid=22222222-2222-4222-8222-222222222222, name=ESP\n"
        "start=526336, size=3665920, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, "
        "uuid=33333333-3333-4333-8333-333333333333, name=root\n"
    )


def test_auto_disk_size() -> None:
    mib = 1024 * 1024
    # 600 MiB of files + 512 MiB spare (more than a third) + ESP 256 + 2 MiB GPT/alignment
    # = 1370 MiB, rounded up to 1536
    assert layout.auto_disk_size(600 * mib) == 1536 * mib
    # 3 GiB: a third spare (1024 MiB) + 258 = 4354 MiB -> 4352 is too small, 4608
    assert layout.auto_disk_size(3 * GIB) == 4608 * mib


def test_loader_files() -> None:
    cmdline = layout.kernel_cmdline("aarch64", UUIDS["root-fs"])
    assert cmdline == (
        "root=UUID=44444444-4444-4444-8444-444444444444 ro rootwait console=tty0 "
        "console=ttyAMA0,115200n8"
    )
    assert "console=ttyS0,115200n8" in layout.kernel_cmdline("x86_64", UUIDS["root-fs"])
    assert layout.loader_entry("Debian bookworm (t1)", "6.1.0-50-arm64", cmdline) == (
        "title Debian bookworm (t1)\n"
        "version 6.1.0-50-arm64\n"
        "linux /EFI/pvmlab/vmlinuz-6.1.0-50-arm64\n"
        "initrd /EFI/pvmlab/initrd.img-6.1.0-50-arm64\n"
        f"options {cmdline}\n"
    )
    assert layout.loader_conf() == "default pvmlab.conf\ntimeout 0\nconsole-mode keep\n"
    with pytest.raises(ValueError, match="newline"):
        layout.loader_entry("x\ninitrd /evil", "6.1", cmdline)
    assert layout.fstab(UUIDS["root-fs"], UUIDS["esp-part"]).splitlines()[1:] == [
        "UUID=44444444-4444-4444-8444-444444444444 / ext4 defaults,errors=remount-ro 0 1",
        "PARTUUID=22222222-2222-4222-8222-222222222222 /boot/efi vfat umask=0077,nofail 0 2",
    ]


def _recipe(**change: object) -> layout.Recipe:
    args: dict[str, object] = {
        "distro": layout.DISTROS["debian-12"],
        "arch": "x86_64",
        "extra": ("curl",),
        "mirror": None,
        "epoch": 1686355200,
    } | change
    return layout.make_recipe(**args)  # type: ignore[arg-type]


def test_recipe_and_cache_key() -> None:
    r = _recipe()
    assert r.mirror == "http://deb.debian.org/debian"
    assert r.suite == "bookworm"
    assert "linux-image-amd64" in r.packages and "curl" in r.packages
    assert {"openssh-server", "cloud-init", "initramfs-tools", "systemd-boot-efi"} <= set(
        r.packages
    )
    assert list(r.packages) == sorted(r.packages)
    assert re.fullmatch(r"[0-9a-f]{16}", r.key)
    # the same inputs give the same key (package order and a trailing slash do not matter)
    assert _recipe(extra=("curl", "curl")).key == r.key
    assert _recipe(mirror="http://deb.debian.org/debian/").key == r.key
    # any input that changes the tarball changes the key
    others = [
        _recipe(arch="aarch64"),
        _recipe(extra=("curl", "vim-tiny")),
        _recipe(mirror="http://127.0.0.1/debian"),
        _recipe(epoch=1),
    ]
    assert len({r.key, *(o.key for o in others)}) == 5
    assert "linux-image-arm64" in _recipe(arch="aarch64").packages


def test_image_uuids_are_derived_from_name_and_recipe() -> None:
    a = layout.image_uuids("t1", "00112233aabbccdd")
    assert a == layout.image_uuids("t1", "00112233aabbccdd")
    assert a["root-fs"] != layout.image_uuids("t2", "00112233aabbccdd")["root-fs"]
    assert re.fullmatch(r"[0-9A-F]{8}", a["esp-fs"])
    assert len(set(a.values())) == 5


def test_mmdebstrap_argv() -> None:
    r = _recipe(arch="aarch64")
    argv = build.mmdebstrap_argv(r, Path("/c/x.tar"), Path("/c/cfg"))
    assert argv[:4] == ["mmdebstrap", "--mode=root", "--variant=apt", "--architectures=arm64"]
    assert argv[-3:] == ["bookworm", "/c/x.tar", "http://deb.debian.org/debian"]
    assert f"--include={','.join(r.packages)}" in argv
    assert "--customize-hook=upload /c/cfg /etc/cloud/cloud.cfg.d/90_pvmlab.cfg" in argv
    assert "--format=tar" in argv


DEBIAN_RULE = (
    ":qemu-aarch64:M::\\x7f\\x45\\x4c\\x46\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00"
    "\\x00\\x00\\x02\\x00\\xb7\\x00:\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff"
    "\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff:/usr/libexec/qemu-binfmt/aarch64-binfmt-P:OPF"
)


def test_binfmt_register_line() -> None:
    line = foreign.register_line(
        "# comment\n\n" + DEBIAN_RULE + "\n", Path("/usr/bin/qemu-aarch64-static")
    )
    head, _, tail = DEBIAN_RULE.rpartition(":/usr/libexec/")
    assert tail.endswith(":OPF")
    assert line == head + ":/usr/bin/qemu-aarch64-static:F"
    with pytest.raises(ValueError, match="no binfmt_misc rule"):
        foreign.register_line("# nothing\n", Path("/x"))
    with pytest.raises(ValueError, match="not a magic rule"):
        foreign.register_line(":n:E::py::/usr/bin/python3:", Path("/x"))
    assert foreign.needs_emulation("aarch64", "x86_64")
    assert not foreign.needs_emulation("x86_64", "x86_64")


def test_inputs_are_checked() -> None:
    assert build._packages(["curl, vim-tiny", "curl", ""]) == ("curl", "vim-tiny")
    with pytest.raises(ValidationError, match="invalid package name"):
        build._packages(["curl;reboot"])
    with pytest.raises(ValidationError, match="invalid mirror URL"):
        build._mirror("http://x/ --evil")
    with pytest.raises(ValidationError, match="unknown image distro"):
        build._distro("debian-99")
    with pytest.raises(ValidationError, match="invalid image name"):
        store.image_name("../x")


def test_unreachable_archive_is_one_clear_error() -> None:
    with pytest.raises(StateError, match=r"cannot reach the Debian archive at http://127\.0\.0\.1:9"):
        build.check_archive("http://127.0.0.1:9/debian", "bookworm", timeout=5)


def _info(home: LabHome, name: str) -> ImageInfo:
    part = PartitionInfo(
        number=2, role="root", start=526336, sectors=3665920,
        type_guid=layout.ESP_TYPE, partuuid=UUIDS["root-part"], filesystem="ext4",
        fs_uuid=UUIDS["root-fs"], label="root",
    )
    return ImageInfo(
        name=name, arch="x86_64", path=home.disk_image_file(name), virtual_size=2 * GIB,
        sha256="0" * 64, created="2026-12-01T00:00:00+00:00", distro="debian-12",
        suite="bookworm", mirror="http://deb.debian.org/debian", packages=(),
        recipe_key="0" * 16, partitions=(part,), disk_guid=UUIDS["disk"], root_partition=2,
        root_fs_uuid=UUIDS["root-fs"], root_partuuid=UUIDS["root-part"],
        esp_partuuid=UUIDS["esp-part"], kernel_version="6.1.0-50-amd64", cmdline="ro",
        loader_entry="/loader/entries/pvmlab.conf", cloud_init="NoCloud", build_seconds=1.0,
    )


def test_records_list_find_remove(tmp_path: Path) -> None:
    home = LabHome(tmp_path / "lab")
    home.ensure()
    assert list_images(home) == []
    for name in ("b-img", "a-img"):
        info = _info(home, name)
        home.disk_image_dir(name).mkdir()
        info.path.write_bytes(b"disk")
        store.save(home, info)
    # a half-built image (no record) and a record naming another image are not images
    home.disk_image_dir("half").mkdir()
    (home.disk_image_dir("half") / "disk.raw").write_bytes(b"")
    assert [i.name for i in list_images(home)] == ["a-img", "b-img"]
    record = json.loads(home.disk_image_record("a-img").read_text())
    assert "path" not in record  # the path comes from the lab home, never from the file
    assert find_image(home, "a-img").path == home.disk_images / "a-img" / "disk.raw"
    remove_image(home, "a-img")
    assert not home.disk_image_dir("a-img").exists()
    with pytest.raises(StateError, match="no disk image named a-img"):
        find_image(home, "a-img")
    with pytest.raises(StateError, match="no disk image named half"):
        find_image(home, "half")
    with pytest.raises(StateError, match="no disk image named nosuch"):
        remove_image(home, "nosuch")


def test_cli_ls_and_rm_on_a_home_without_images(tmp_path: Path) -> None:
    home = tmp_path / "lab"
    assert json.loads(run_pvmlab("image", "ls", "--json", home=home).stdout) == []
    res = run_pvmlab("image", "rm", "nosuch", home=home, check=False)
    assert res.returncode == 1
    assert res.stderr.strip() == (
        "pvmlab: error: no disk image named nosuch (hint: `pvmlab image ls` lists them)"
    )
    bad = run_pvmlab("image", "build", "Bad/Name", "--arch", "x86_64", home=home, check=False)
    assert bad.returncode == 2
    assert "invalid image name" in bad.stderr
