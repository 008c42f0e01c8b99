"""`pvmlab distro pull`, run as a user runs it, against a local mirror in the real layouts.

The distros' servers are on the internet, which tests cannot reach: a local HTTP server on
127.0.0.1 (tests/mirror/server.py) serves trees in their real layouts (tests/mirror/trees.py).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import run_pvmlab
from mirror import images, trees
from mirror.server import MirrorState, serve

pytestmark = pytest.mark.skipif(
    not (shutil.which("qemu-img") and shutil.which("mkfs.ext4") and shutil.which("debugfs")),
    reason="needs qemu-img and e2fsprogs (scripts/install-system-deps.sh)",
)


@dataclass
class Mirror:
    url: str
    state: MirrorState
    root: Path


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    root = tmp_path / "srv"
    root.mkdir()
    with serve(root) as (url, state):
        yield Mirror(url, state, root)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _kernel_pair(arch: str) -> tuple[bytes, bytes]:
    return images.fake_kernel(arch, 1_200_000, f"d-i {arch}"), images._rand(700_000, "initrd")


def _images_tree(home: Path) -> dict[str, bytes]:
    d = home / "images"
    return (
        {str(p.relative_to(d)): p.read_bytes() for p in d.rglob("*") if p.is_file()}
        if d.exists()
        else {}
    )


def pull(
    distro: str, arch: str, mirror_url: str, *more: str, method: str | None = None,
    home: Path, check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """`pvmlab distro pull DISTRO --arch ARCH [--method M] --mirror URL [MORE]` in ``home``."""
    by = ["--method", method] if method else []
    return run_pvmlab("distro", "pull", distro, "--arch", arch, *by, "--mirror", mirror_url,
                      *more, home=home, check=check)  # fmt: skip


def _one_line_error(proc: object) -> str:
    import subprocess

    assert isinstance(proc, subprocess.CompletedProcess)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pvmlab: error:"), proc.stderr
    return str(lines[0])


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_debian_netboot_pull_then_cached(mirror: Mirror, tmp_path: Path, arch: str) -> None:
    k, i = _kernel_pair(arch)
    trees.debian_netboot(mirror.root, arch, k, i)
    home = tmp_path / "home"
    out = pull("debian-12", arch, f"{mirror.url}/debian", method="netboot", home=home).stdout
    assert f"pulled debian-12 ({arch}) by netboot [3 downloaded, 0 from cache]" in out
    d = home / "images" / "debian-12" / arch
    assert (d / "vmlinuz").read_bytes() == k and (d / "initrd").read_bytes() == i
    meta = json.loads((d / "distro.json").read_text())
    console = "ttyS0" if arch == "x86_64" else "ttyAMA0"
    assert meta["source"] == "netboot" and meta["cmdline"] == f"console={console}"
    assert meta["kernel_sha256"] == _sha(k) and meta["version"] == "12"
    darch = trees.DARCH[arch]
    assert meta["origin"].endswith(
        f"installer-{darch}/current/images/netboot/debian-installer/{darch}/linux"
    )

    before = len(mirror.state.requests)
    again = json.loads(
        pull("debian-12", arch, f"{mirror.url}/debian", "--json", method="netboot",
             home=home).stdout
    )
    assert again["downloaded"] == [] and len(again["cached"]) == 2
    assert again["replaced"]  # the same key as `distro import --json`
    assert len(mirror.state.requests) == before  # a second pull makes no request at all

    rows = json.loads(run_pvmlab("distro", "ls", "--json", home=home).stdout)
    row = next(r for r in rows if r["name"] == "debian-12" and r["arch"] == arch)
    assert row["status"] == "pulled" and row["source"] == "netboot"
    assert row["kernel_size"] == len(k) and row["initrd_sha256"] == _sha(i)


def test_ubuntu_cloud_image_cut_resumes_and_caches(mirror: Mirror, tmp_path: Path) -> None:
    want = trees.ubuntu(mirror.root, "x86_64", tmp_path / "build")
    mirror.state.cut_once.add("/ubuntu/noble/current/noble-server-cloudimg-amd64.img")
    home = tmp_path / "home"
    proc = pull("ubuntu-24.04", "x86_64", f"{mirror.url}/ubuntu/noble/current", home=home)
    assert "found kernel 6.8.0-45-generic in partition 16 (ext, label 'BOOT')" in proc.stdout
    d = home / "images/ubuntu-24.04/x86_64"
    assert (d / "vmlinuz").read_bytes() == want["kernel"]
    assert (d / "initrd").read_bytes() == want["initrd"]
    meta = json.loads((d / "distro.json").read_text())
    assert meta["source"] == "cloud-image" and meta["version"] == "6.8.0-45-generic"
    assert "root=LABEL=cloudimg-rootfs" in meta["cmdline"]
    gets = mirror.state.gets("noble-server-cloudimg-amd64.img")
    assert len(gets) == 2 and gets[1].range is not None and gets[1].status == 206

    before = len(mirror.state.requests)
    pull("ubuntu-24.04", "x86_64", f"{mirror.url}/ubuntu/noble/current", home=home)
    assert len(mirror.state.requests) == before


def test_ubuntu_kernel_method_and_env_mirror(
    mirror: Mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    want = trees.ubuntu(mirror.root, "aarch64", tmp_path / "build")
    monkeypatch.setenv("PVMLAB_MIRROR_UBUNTU_24_04", f"{mirror.url}/ubuntu/noble/current")
    home = tmp_path / "home"
    run_pvmlab("distro", "pull", "ubuntu-24.04", "--arch", "arm64", "--method", "kernel", home=home)
    d = home / "images/ubuntu-24.04/aarch64"
    assert (d / "vmlinuz").read_bytes() == want["kernel"]
    assert json.loads((d / "distro.json").read_text())["cmdline"].startswith("console=ttyAMA0")


def test_fedora_netboot_treeinfo_and_cloud_checksum(
    mirror: Mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    k, i = _kernel_pair("x86_64")
    trees.fedora_netboot(mirror.root, "x86_64", k, i)
    want = trees.fedora_cloud(mirror.root, "x86_64", tmp_path / "build")
    home = tmp_path / "home"
    base = f"{mirror.url}/fedora/releases/42/Everything/{{darch}}/os"
    monkeypatch.setenv("PVMLAB_MIRROR_FEDORA_42_NETBOOT", base)
    run_pvmlab("distro", "pull", "fedora-42", "--arch", "x86_64", "--method", "netboot", home=home)
    meta = json.loads((home / "images/fedora-42/x86_64/distro.json").read_text())
    assert meta["kernel_sha256"] == _sha(k)
    assert f"inst.repo={mirror.url}/fedora/releases/42/Everything/x86_64/os" in meta["cmdline"]

    pull("fedora-42", "x86_64", f"{mirror.url}/fedora/releases/42/Cloud/x86_64/images",
         method="cloud-image", home=home)
    d = home / "images/fedora-42/x86_64"
    assert (d / "vmlinuz").read_bytes() == want["kernel"]
    assert (d / "initrd").read_bytes() == want["initrd"]


def test_debian_cloud_image_sha512(mirror: Mirror, tmp_path: Path) -> None:
    want = trees.debian_cloud(mirror.root, "x86_64", tmp_path / "build")
    home = tmp_path / "home"
    pull("debian-12", "x86_64", f"{mirror.url}/debian-cloud/bookworm/latest",
         method="cloud-image", home=home)
    assert (home / "images/debian-12/x86_64/vmlinuz").read_bytes() == want["kernel"]


def test_corrupt_file_refused_nothing_kept(mirror: Mirror, tmp_path: Path) -> None:
    k, i = _kernel_pair("x86_64")
    images_dir = trees.debian_netboot(mirror.root, "x86_64", k, i)
    linux = images_dir / "netboot/debian-installer/amd64/linux"
    linux.write_bytes(k[:-1] + bytes([k[-1] ^ 1]))  # corrupted after the list was made
    home = tmp_path / "home"
    proc = pull("debian-12", "x86_64", f"{mirror.url}/debian", method="netboot", home=home,
                check=False)
    assert "does not match its published checksum" in _one_line_error(proc)
    assert _images_tree(home) == {}
    cache = home / "cache/downloads/debian-12/x86_64/netboot"
    assert not (cache / "linux").exists() and not (cache / "linux.part").exists()


def test_checksum_list_without_entry(mirror: Mirror, tmp_path: Path) -> None:
    k, i = _kernel_pair("x86_64")
    images_dir = trees.debian_netboot(mirror.root, "x86_64", k, i)
    sums = images_dir / "SHA256SUMS"
    sums.write_text(
        "".join(ln + "\n" for ln in sums.read_text().splitlines() if "/linux" not in ln)
    )
    home = tmp_path / "home"
    proc = pull("debian-12", "x86_64", f"{mirror.url}/debian", method="netboot", home=home,
                check=False)
    assert "has no entry for 'netboot/debian-installer/amd64/linux'" in _one_line_error(proc)
    assert [r.path.rsplit("/", 1)[-1] for r in mirror.state.requests] == ["SHA256SUMS"]
    assert _images_tree(home) == {}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["nosuch-distro", "--arch", "x86_64"], "not in the catalog"),
        (["debian-12", "--arch", "riscv64"], "unknown architecture"),
        (["debian-12", "--arch", "x86_64", "--method", "floppy"], "has no method 'floppy'"),
        (["../etc", "--arch", "x86_64"], "invalid distro name"),
        (["debian-12", "--arch", "x86_64", "--mirror", "ftp://x"], "invalid mirror URL"),
    ],
)
def test_bad_input(tmp_path: Path, args: list[str], needle: str) -> None:
    home = tmp_path / "home"
    proc = run_pvmlab("distro", "pull", *args, home=home, check=False)
    assert needle in _one_line_error(proc)
    assert not home.exists()


def test_offline(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = tmp_path / "home"
    proc = pull("debian-12", "x86_64", f"http://127.0.0.1:{port}/debian", method="netboot",
                home=home, check=False)
    line = _one_line_error(proc)
    assert "cannot download" in line and "offline" in line
    assert _images_tree(home) == {}
