"""`pvmlab image prune`: the caches that grow when inputs change (root filesystem tarballs,
images converted to raw for deploys), listed with sizes and users, and the unused ones removed,
with real files in a temp lab home (deploy images made by the real `qemu-img` conversion)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_pvmlab
from pvmlab.deploy import image as deploy_image
from pvmlab.home import LabHome, file_lock
from pvmlab.image import cache
from pvmlab.image.store import ImageInfo, PartitionInfo, save
from pvmlab.records import store
from pvmlab.records.models import LabSpec, VMSpec

KIB = 1024
USED, OLD, BUSY = "1" * 16, "2" * 16, "3" * 16


@pytest.fixture
def home(tmp_path: Path) -> LabHome:
    h = LabHome(tmp_path / "home")
    h.ensure()
    store.save_lab(h, LabSpec(dhcp_start="192.168.105.100", dhcp_end="192.168.105.199"))
    return h


def data(path: Path, size: int, seed: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes((i * seed) % 251 for i in range(size)))
    return path


def tarball(home: LabHome, key: str, size: int) -> None:
    data(home.rootfs_tarball(key), size)
    home.rootfs_recipe(key).write_text(json.dumps(
        {"distro": "debian-12", "arch": "x86_64", "packages": ["a", "b"],
         "mirror": "http://deb.debian.org/debian"}))  # fmt: skip


def built_image(home: LabHome, name: str, key: str) -> None:
    """An image record as `image build` leaves it, made from the tarball ``key``."""
    part = PartitionInfo(number=2, role="root", start=2048, sectors=2048, type_guid="T",
                         partuuid="P", filesystem="ext4", fs_uuid="F", label="root")  # fmt: skip
    info = ImageInfo(
        name=name, arch="x86_64", path=home.disk_image_file(name), virtual_size=KIB,
        sha256="0" * 64, created="2026-12-01T00:00:00+00:00", distro="debian-12",
        suite="bookworm", mirror="http://deb.debian.org/debian", packages=(), recipe_key=key,
        partitions=(part,), disk_guid="G", root_partition=2, root_fs_uuid="F",
        root_partuuid="P", esp_partuuid="E", kernel_version="6.1", cmdline="ro",
        loader_entry="/loader/entries/pvmlab.conf", cloud_init="NoCloud", build_seconds=1.0,
    )  # fmt: skip
    data(info.path, KIB)
    save(home, info)


def image_vm(home: LabHome, source: Path, name: str, mac: str, ip: str) -> VMSpec:
    base = VMSpec(name=name, arch="x86_64", mac=mac, ip=ip)
    vm, _text = deploy_image.configure(home, base, source, None, None, None)
    home.vm_dir(name).mkdir(parents=True, exist_ok=True)
    store.save_vm(home, vm)
    return vm


@pytest.fixture
def filled(home: LabHome, tmp_path: Path) -> dict[str, str]:
    """Two tarballs (one an image's), a build's leftover, two deploy images (one a VM's) and
    a conversion's leftover. Returns the deploy images' SHA-256s."""
    tarball(home, USED, 64 * KIB)
    tarball(home, OLD, 96 * KIB)
    data(home.rootfs_partial(BUSY), 8 * KIB)
    built_image(home, "deb12", USED)
    vm = image_vm(home, data(tmp_path / "a.raw", 1024 * KIB, 7), "d1", "0e:00:00:00:30:01",
                  "192.168.105.10")  # fmt: skip
    other = deploy_image.prepare(home, data(tmp_path / "b.raw", 512 * KIB, 11))
    data(home.deploy_images / ".convert-4242.raw", 4 * KIB)
    return {"used": str(vm.image_sha256), "unused": other.sha256}


def by_name(report: cache.PruneReport) -> dict[str, cache.Entry]:
    return {e.name: e for e in report.entries}


def test_dry_run_lists_everything_with_sizes_and_users(
    home: LabHome, filled: dict[str, str]
) -> None:
    report = cache.prune(home, dry_run=True)
    got = by_name(report)
    assert got[USED].used_by == ["image deb12"] and got[USED].kind == "rootfs"
    assert got[USED].about == "debian-12 x86_64, 2 packages, http://deb.debian.org/debian"
    assert got[OLD].used_by == [] and got[OLD].bytes >= 96 * KIB
    assert got[filled["used"]].used_by == ["vm d1"] and got[filled["used"]].kind == "deploy"
    assert got[filled["unused"]].used_by == [] and got[filled["unused"]].about.endswith("b.raw")
    assert got[f".{BUSY}.tar.partial"].kind == "leftover"
    assert got[".convert-4242.raw"].kind == "leftover"
    assert not any(e.removed for e in report.entries)
    unused = [OLD, filled["unused"], f".{BUSY}.tar.partial", ".convert-4242.raw"]
    assert report.freed_bytes == sum(got[n].bytes for n in unused)
    assert all(p.exists() for e in report.entries for p in e.paths)


def test_prune_removes_only_what_nothing_uses(home: LabHome, filled: dict[str, str]) -> None:
    report = cache.prune(home, dry_run=False)
    got = by_name(report)
    assert {n for n, e in got.items() if e.removed} == {
        OLD, filled["unused"], f".{BUSY}.tar.partial", ".convert-4242.raw"
    }
    assert not home.rootfs_tarball(OLD).exists() and not home.rootfs_recipe(OLD).exists()
    assert home.rootfs_tarball(USED).is_file() and home.rootfs_recipe(USED).is_file()
    assert home.deploy_image(filled["used"]).is_file()
    assert not home.deploy_image(filled["unused"]).exists()
    assert sorted(p.name for p in home.deploy_images.iterdir()) == sorted(
        [f"{filled['used']}.raw", "sources.json"]
    )
    # the source index no longer points at the removed image; the VM's stays
    assert set(deploy_image.sources_index(home).values()) == {filled["used"]}
    again = cache.prune(home, dry_run=False)
    assert again.freed_bytes == 0 and {e.name for e in again.entries} == {USED, filled["used"]}
    # once the image and the VM are gone, so is what they used
    from pvmlab.image import remove_image

    remove_image(home, "deb12")
    home.vm_file("d1").unlink()
    last = cache.prune(home, dry_run=False)
    assert all(e.removed for e in last.entries) and len(last.entries) == 2
    assert not list(home.rootfs_cache.glob("*.tar")) and not list(home.deploy_images.glob("*.raw"))


def test_a_running_build_and_a_damaged_vm_record_keep_their_files(
    home: LabHome, filled: dict[str, str]
) -> None:
    (home.vm_file("d2")).write_text('{"name": "d2", "mac": ')  # truncated: names any image?
    with file_lock(home.rootfs_lock(OLD)):  # a build of that recipe holds it
        report = cache.prune(home, dry_run=False)
    got = by_name(report)
    assert not got[OLD].removed and got[OLD].used_by == ["a build of this recipe is running"]
    assert home.rootfs_tarball(OLD).is_file()
    unused = got[filled["unused"]]
    assert not unused.removed and home.deploy_image(filled["unused"]).is_file()
    assert unused.used_by[0].startswith("vm d2's record ") and "is damaged" in unused.used_by[0]
    # a damaged record that still names its image keeps that one only
    (home.vm_file("d2")).write_text(json.dumps({"name": "d2", "image_sha256": filled["unused"]}))
    got = by_name(cache.prune(home, dry_run=False))
    assert got[filled["unused"]].used_by == ["vm d2 (damaged record)"]
    assert got[OLD].removed


def test_cli_lists_and_prunes(home: LabHome, filled: dict[str, str]) -> None:
    out = json.loads(run_pvmlab("image", "prune", "--dry-run", "--json", home=home.root).stdout)
    assert out["dry_run"] is True and out["freed_bytes"] > 0 and out["kept_bytes"] > 0
    rows = {e["name"]: e for e in out["entries"]}
    assert rows[OLD]["unused"] and rows[OLD]["paths"] == [
        str(home.rootfs_tarball(OLD)), str(home.rootfs_recipe(OLD))
    ]
    assert home.rootfs_tarball(OLD).is_file()
    text = run_pvmlab("image", "prune", home=home.root).stdout
    lines = {ln.split()[1]: ln for ln in text.splitlines() if ln.split()[:1] in (
        ["rootfs"], ["deploy"], ["leftover"])}  # fmt: skip
    assert lines[OLD].rstrip().endswith("removed") and lines[USED].rstrip().endswith("kept")
    assert "image deb12" in lines[USED] and "vm d1" in lines[filled["used"][:16]]
    assert text.splitlines()[-1].startswith("freed ")
    assert not home.rootfs_tarball(OLD).exists()
