"""The distro catalog: packaged entries, the lab home's override file, URL resolution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_pvmlab
from pvmlab.assets import catalog
from pvmlab.errors import StateError, ValidationError
from pvmlab.home import LabHome


def test_packaged_entries_cover_both_arches() -> None:
    entries = catalog.load()
    assert {"ubuntu-24.04", "debian-12", "fedora-42"} <= set(entries)
    for e in entries.values():
        assert set(e.arches) == {"x86_64", "aarch64"}
        for arch in e.arches:
            for m in e.methods_for(arch):
                r = catalog.resolve(e, arch, m)
                assert r.checksums_url.startswith("https://")
                console = "ttyS0" if arch == "x86_64" else "ttyAMA0"
                assert f"console={console}" in r.cmdline
                assert "{" not in r.cmdline and all("{" not in u for u, _ in r.files.values())


def test_debian_netboot_urls_and_keys() -> None:
    r = catalog.resolve(catalog.load()["debian-12"], "aarch64", "netboot")
    base = "https://deb.debian.org/debian/dists/bookworm/main/installer-arm64/current/images"
    assert r.checksums_url == f"{base}/SHA256SUMS"
    assert r.files["kernel"] == (
        f"{base}/netboot/debian-installer/arm64/linux",
        "netboot/debian-installer/arm64/linux",
    )


def test_fedora_netboot_needs_inst_repo() -> None:
    r = catalog.resolve(catalog.load()["fedora-42"], "x86_64", "netboot")
    assert "inst.repo=https://download.fedoraproject.org/pub/fedora/linux/releases/42/" in r.cmdline
    assert r.files["initrd"][1] == "images/pxeboot/initrd.img"


def test_mirror_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    e = catalog.load()["debian-12"]
    monkeypatch.setenv("PVMLAB_MIRROR_DEBIAN_12", "http://distro-wide/debian")
    assert catalog.resolve(e, "x86_64", "netboot").mirror == "http://distro-wide/debian"
    monkeypatch.setenv("PVMLAB_MIRROR_DEBIAN_12_NETBOOT", "http://per-method/debian/")
    assert catalog.resolve(e, "x86_64", "netboot").mirror == "http://per-method/debian"
    assert catalog.resolve(e, "x86_64", "netboot", "http://flag/d").mirror == "http://flag/d"
    monkeypatch.setenv("PVMLAB_MIRROR_DEBIAN_12", "not a url")
    monkeypatch.delenv("PVMLAB_MIRROR_DEBIAN_12_NETBOOT")
    with pytest.raises(ValidationError, match="PVMLAB_MIRROR_DEBIAN_12"):
        catalog.resolve(e, "x86_64", "netboot")


def test_user_file_adds_and_overrides(tmp_path: Path) -> None:
    h = LabHome(tmp_path / "home")
    h.ensure()
    (h.root / "catalog.toml").write_text(
        """
[distros."debian-12".methods.netboot]
mirror = "http://mirror.lan/debian"

[distros."alpine-3.20"]
description = "Alpine"
version = "3.20"
arches = ["x86_64"]
arch_names = { x86_64 = "x86_64" }

[distros."alpine-3.20".methods.netboot]
kind = "files"
mirror = "http://dl.lan/alpine/v3.20/releases/{darch}"
kernel = "netboot/vmlinuz-virt"
initrd = "netboot/initramfs-virt"
checksums = "netboot/SHA256SUMS"
"""
    )
    entries = catalog.load(h)
    assert catalog.resolve(entries["debian-12"], "x86_64", "netboot").mirror == (
        "http://mirror.lan/debian"
    )
    # fields not overridden are kept
    assert entries["debian-12"].methods["netboot"].checksums.endswith("images/SHA256SUMS")
    r = catalog.resolve(entries["alpine-3.20"], "x86_64")
    assert r.files["kernel"][0] == "http://dl.lan/alpine/v3.20/releases/x86_64/netboot/vmlinuz-virt"
    with pytest.raises(ValidationError, match="no aarch64 build"):
        catalog.resolve(entries["alpine-3.20"], "aarch64")
    rows = json.loads(run_pvmlab("distro", "ls", "--json", home=h.root).stdout)
    assert any(r["name"] == "alpine-3.20" and r["status"] == "available" for r in rows)


@pytest.mark.parametrize(
    "text",
    [
        '[distros."debian-12"]\narchs = ["x86_64"]\n',  # typo'd field
        '[distros."debian-12".methods.netboot]\nkind = "torrent"\n',
        "[distros\n",
        '[distros."../evil"]\narches = ["x86_64"]\nmethods = {}\n',
    ],
)
def test_bad_user_file_is_one_line(tmp_path: Path, text: str) -> None:
    h = LabHome(tmp_path / "home")
    h.ensure()
    (h.root / "catalog.toml").write_text(text)
    with pytest.raises(StateError) as err:
        catalog.load(h)
    assert "\n" not in str(err.value)
    proc = run_pvmlab("distro", "ls", home=h.root, check=False)
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [("mirror", "http://m/{bad"), ("kernel", "{nope}/linux"), ("cmdline", "x={0}")],
)
def test_bad_placeholder_in_user_file_is_one_line(tmp_path: Path, field: str, value: str) -> None:
    h = LabHome(tmp_path / "home")
    h.ensure()
    method = {"kind": "files", "mirror": "http://m", "kernel": "k", "initrd": "i", "checksums": "S"}
    method[field] = value
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in method.items())
    (h.root / "catalog.toml").write_text(
        f'[distros.mine]\narches = ["x86_64"]\n[distros.mine.methods.m]\n{lines}\n'
    )
    with pytest.raises(StateError, match="catalog entry mine: cannot fill in") as err:
        catalog.resolve(catalog.get(h, "mine"), "x86_64")
    assert "{darch}, {version}, {arch}" in (err.value.hint or "")
    proc = run_pvmlab("distro", "pull", "mine", "--arch", "x86_64", home=h.root, check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("pvmlab: error: catalog entry mine")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (h.root / "cache").exists()
