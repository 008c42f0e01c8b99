"""`pvmlab setup` and its dependency checks, against this machine's real programs and files."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
from pathlib import Path

import pytest

from conftest import needs, run_pvmlab
from pvmlab import doctor
from pvmlab.home import SUBDIRS

QEMU_PROGRAMS = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-system-aarch64": "qemu-system-arm",
    "qemu-img": "qemu-utils",
}


@pytest.mark.skipif(os.geteuid() != 0, reason="the full check needs root (lab network)")
@needs(*QEMU_PROGRAMS, "dnsmasq", "ip")
def test_setup_on_this_machine_finds_everything(lab_home: Path) -> None:
    proc = run_pvmlab("setup", home=lab_home)
    assert proc.returncode == 0
    assert "everything needed is there" in proc.stdout
    for sub in SUBDIRS:
        assert (lab_home / sub).is_dir()

    report = json.loads(run_pvmlab("setup", "--json", home=lab_home).stdout)
    assert report["ok"] is True
    assert report["home"] == str(lab_home)
    names = {c["name"] for c in report["checks"]}
    assert {*QEMU_PROGRAMS, "dnsmasq", "ip", "UEFI firmware x86_64", "UEFI firmware aarch64",
            "SeaBIOS (legacy BIOS)"} <= names
    assert all(c["ok"] for c in report["checks"] if c["required"])
    ipxe = [c for c in report["checks"] if c["name"].startswith("iPXE ")]
    assert {c["data"]["tftp_name"] for c in ipxe} == {
        "undionly.kpxe", "ipxe-x86_64.efi", "ipxe-arm64.efi"
    }
    for c in ipxe:  # the recorded hash is the file's
        path = Path(c["data"]["path"])
        assert hashlib.sha256(path.read_bytes()).hexdigest() == c["data"]["sha256"]
        assert c["data"]["source"]
    for c in report["checks"]:
        if c["name"] in QEMU_PROGRAMS:
            assert c["data"]["version"][0].isdigit()
            assert Path(c["data"]["path"]).is_file()
    debugfs = next(c for c in report["checks"] if c["name"] == "debugfs (cloud images)")
    assert debugfs["ok"] and debugfs["data"]["version"][0].isdigit() and not debugfs["required"]


def _path_without_qemu(tmp_path: Path) -> Path:
    """A PATH directory holding dnsmasq and ip but no QEMU."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for prog in ("dnsmasq", "ip"):
        found = shutil.which(prog, path="/usr/sbin:/usr/bin:/sbin:/bin")
        if found is None:
            pytest.skip(f"{prog} is not installed")
        (bin_dir / prog).symlink_to(found)
    return bin_dir


def test_setup_without_qemu_names_each_missing_one(
    lab_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(_path_without_qemu(tmp_path)))
    proc = run_pvmlab("setup", home=lab_home, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    for prog, package in QEMU_PROGRAMS.items():
        assert f"{prog}: sudo apt-get install {package}" in proc.stdout
    assert "missing: qemu-system-x86_64, qemu-system-aarch64, qemu-img" in proc.stdout

    proc = run_pvmlab("setup", "--json", home=lab_home, check=False)
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["ok"] is False
    by_name = {c["name"]: c for c in report["checks"]}
    for prog, package in QEMU_PROGRAMS.items():
        assert by_name[prog]["ok"] is False
        assert by_name[prog]["required"] is True
        assert package in by_name[prog]["fix"]
    assert by_name["dnsmasq"]["ok"] is True
    assert by_name["busybox (tests)"]["required"] is False  # missing here, but optional


@pytest.mark.parametrize(
    "args",
    [
        ["provisioner", "create"],
        ["distro", "import", "x", "--arch", "x86_64", "--kernel", "F", "--initrd", "F"],
        ["distro", "ipxe", "--forget-dir"],
    ],
)
def test_commands_that_make_the_home_say_when_they_cannot(
    tmp_path: Path, args: list[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    args = [str(blocker) if a == "F" else a for a in args]
    proc = run_pvmlab(*args, home=blocker / "home", check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("pvmlab: error: cannot create the lab home"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_setup_with_unusable_home_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = run_pvmlab("setup", home=blocker / "home", check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("pvmlab: error: cannot create the lab home")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_missing_device_is_explained(tmp_path: Path) -> None:
    check = doctor.check_kvm(str(tmp_path / "kvm"))
    assert not check.ok and not check.required
    assert "the kvm module is not loaded" in check.detail
    assert "TCG" in check.detail
    tun = doctor.check_tun(str(tmp_path / "tun"))
    assert not tun.ok and tun.required
    assert tun.fix == "sudo modprobe tun"


def test_a_file_that_is_not_kvm_is_not_taken_for_it(tmp_path: Path) -> None:
    fake = tmp_path / "kvm"
    fake.write_bytes(b"")
    check = doctor.check_kvm(str(fake))
    assert not check.ok
    assert "KVM_GET_API_VERSION fails" in check.detail


@pytest.mark.skipif(not Path("/dev/kvm").exists(), reason="no /dev/kvm on this host")
@pytest.mark.skipif(os.geteuid() != 0, reason="/dev/kvm is root-only here")
def test_real_kvm_reports_api_version() -> None:
    check = doctor.check_kvm()
    assert check.ok
    assert check.data["api_version"] == 12  # the only stable KVM API version


@pytest.mark.skipif(doctor.package_family() != "apt", reason="Debian/Ubuntu hint")
def test_install_hint_names_the_debian_package() -> None:
    assert doctor.install_hint("qemu-utils", "qemu") == "sudo apt-get install qemu-utils"


@needs("python3")
def test_program_check_reports_version_and_path() -> None:
    python = shutil.which("python3")
    assert python is not None
    check = doctor.check_program("python3", ("--version",), "python3", None, True)
    assert check.ok
    assert check.data["version"].startswith("3.")
    missing = doctor.check_program("no-such-program-pvmlab", ("--version",), "pkg", None, True)
    assert not missing.ok and missing.fix is not None and "pkg" in missing.fix


@needs("qemu-system-x86_64")
@pytest.mark.skipif(platform.machine() != "x86_64", reason="an x86_64 host's KVM")
@pytest.mark.skipif(not Path("/dev/kvm").exists(), reason="no /dev/kvm on this host")
def test_kvm_test_guest_verdict_is_shown() -> None:
    check = doctor.check_kvm_guest("x86_64")
    assert check.name == "KVM test guest" and not check.required
    verdict = check.data["verdict"]
    assert isinstance(verdict["works"], bool) and verdict["reason"]
    assert check.ok == verdict["works"]
    if check.ok:
        assert check.detail.startswith("x86_64: a test guest ran to its end under KVM")
        assert check.detail.endswith("; VMs use KVM")
    else:
        assert check.detail == (
            f"x86_64: KVM is present but failed a test guest: {verdict['reason']}; "
            "VMs run under TCG"
        )
        assert check.fix is not None and "/run/pvmlab/kvm-x86_64.json" in check.fix


# --- `image build`'s programs: checked by setup, and by image build before it starts -------

REQUIRED_PROGRAMS = (*QEMU_PROGRAMS, "dnsmasq", "ip")


def _path_with(tmp_path: Path, programs: list[str]) -> Path:
    """A PATH directory holding links to these programs (skipped when one is not installed)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for prog in programs:
        found = shutil.which(prog, path="/usr/sbin:/usr/bin:/sbin:/bin")
        if found is None:
            pytest.skip(f"{prog} is not installed")
        (bin_dir / prog).symlink_to(found)
    return bin_dir


def test_setup_checks_image_build_programs_with_their_packages(
    lab_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pvmlab.image import tools

    gone = {"sfdisk", "mkfs.vfat"}
    kept = [t.program for t in tools.TOOLS if t.program not in gone]
    monkeypatch.setenv("PATH", str(_path_with(tmp_path, [*REQUIRED_PROGRAMS, *kept])))
    report = json.loads(run_pvmlab("setup", "--json", home=lab_home, check=False).stdout)
    by_name = {c["name"]: c for c in report["checks"]}
    sfdisk = by_name["sfdisk (image build)"]
    assert (sfdisk["ok"], sfdisk["required"]) == (False, False)
    assert sfdisk["detail"] == "sfdisk not found on PATH"
    vfat = by_name["mkfs.vfat (vm create --image, image build)"]  # one check, both features
    assert not vfat["ok"] and not vfat["required"]
    for name in ("mmdebstrap", "mkfs.ext4", "mmd", "tar", "dd"):
        assert by_name[f"{name} (image build)"]["ok"], by_name[f"{name} (image build)"]
    if doctor.package_family() == "apt":
        assert sfdisk["fix"] == "sudo apt-get install fdisk"
        assert vfat["fix"] == "sudo apt-get install dosfstools"
        text = run_pvmlab("setup", home=lab_home, check=False).stdout
        assert "  sfdisk (image build): sudo apt-get install fdisk\n" in text
        vfat_line = "  mkfs.vfat (vm create --image, image build): sudo apt-get install dosfstools"
        assert vfat_line + "\n" in text


@pytest.mark.skipif(os.geteuid() != 0, reason="image build refuses non-root users first")
def test_image_build_refuses_up_front_without_its_programs(
    lab_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pvmlab.image import tools

    kept = [t.program for t in tools.TOOLS if t.program not in ("sfdisk", "mkfs.vfat")]
    monkeypatch.setenv("PATH", str(_path_with(tmp_path, kept)))
    proc = run_pvmlab("image", "build", "img1", "--arch", "x86_64", home=lab_home, check=False)
    assert proc.returncode == 1, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(
        "pvmlab: error: image build needs mkfs.vfat (dosfstools), sfdisk (fdisk): not found on PATH"
    ), lines
    if doctor.package_family() == "apt":
        assert "(hint: sudo apt-get install dosfstools fdisk; or " in lines[0]
    assert not (lab_home / "cache").exists() and not (lab_home / "diskimages").exists()


def test_a_foreign_image_build_needs_qemu_user_unless_its_root_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pvmlab.arch import ARCHES
    from pvmlab.errors import DependencyError
    from pvmlab.image import foreign, tools

    other = next(a for a in ARCHES if foreign.needs_emulation(a))
    monkeypatch.setattr(foreign, "BINFMT_D", (tmp_path / "no-binfmt.d",))
    check = doctor.check_image_foreign(other)
    assert check.name == f"qemu-{other}-static (image build --arch {other})"
    assert not check.ok and not check.required
    assert check.detail.startswith(f"building a {other} image on this host needs ")
    with pytest.raises(DependencyError, match=f"building a {other} image") as caught:
        tools.require(other, rootfs_cached=False)
    assert check.fix == caught.value.hint and "qemu-user-static" in str(check.fix)
    if shutil.which("mmdebstrap") and shutil.which("sfdisk"):  # the rest is installed here
        tools.require(other, rootfs_cached=True)  # the cached root needs no emulation


@pytest.mark.skipif(not Path("/usr/lib/binfmt.d").is_dir(), reason="no binfmt.d rules here")
def test_foreign_check_says_when_the_kernel_is_too_old(monkeypatch: pytest.MonkeyPatch) -> None:
    from pvmlab.arch import ARCHES
    from pvmlab.errors import DependencyError
    from pvmlab.image import foreign

    other = next(a for a in ARCHES if foreign.needs_emulation(a))
    try:
        foreign.find_rule(other)
    except DependencyError:
        pytest.skip("qemu-user-static is not installed")
    monkeypatch.setattr(platform, "release", lambda: "6.1.0-18-amd64")
    check = doctor.check_image_foreign(other)
    assert not check.ok and "Linux 6.1.0-18-amd64 has no binfmt_misc per user namespace" in (
        check.detail
    )
    assert foreign.kernel_has_private_binfmt("6.7.0") and foreign.kernel_has_private_binfmt("7.0")
    assert not foreign.kernel_has_private_binfmt("5.15.0-91-generic")
