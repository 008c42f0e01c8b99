"""Image deployment end to end (x86_64 UEFI under TCG): PXE → deploy ramdisk → the image
streamed onto the disk, read back and verified, its last partition grown, the cloud-init seed
added → reboot → the firmware's PXE again, whose per-MAC script now hands over to the disk →
the disk's own boot loader (systemd-boot) → its kernel with SSH (the fixture's dropbear, the
lab's key) → ``vm ssh`` works. A second start does not fetch the image; ``vm reinstall``
deploys again. Faults: a corrupt qcow2 and a disk smaller than the image are refused at create;
a checksum mismatch is refused by the ramdisk and shown by ``vm list``; the lab stopping
mid-stream makes the ramdisk retry, then report.

The image is tests/fixtures/deployimage.py's (seconds to make). Timeouts only bound failures.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import netlab
from bootlab import qemu_pids
from conftest import run_pvmlab
from fixtures.bootassets import BootAssets, with_authorized_key
from fixtures.deployimage import ROOT_MIB, make_image, make_stub_image
from pvmlab import spawn
from pvmlab.image import ImageInfo

pytestmark = pytest.mark.integration

START = ("--accel", "tcg", "--timeout", "1200")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[netlab.Lab]:
    home = (tmp_path / "home").absolute()
    run_pvmlab("setup", home=home, check=False)  # makes the lab's SSH key
    with netlab.running_lab(home) as running:
        try:
            yield running
        finally:
            run_pvmlab("clean", home=home, check=False)
            left = qemu_pids(home)
            for pid in left:
                netlab.kill_pid(pid)
            assert not left, f"QEMU left after `pvmlab clean`: {left}"


@pytest.fixture
def image(tmp_path: Path, lab: netlab.Lab, net_boot_assets: BootAssets) -> Path:
    pub = (lab.home / "ssh" / "id_ed25519.pub").read_text()
    keyed = with_authorized_key(net_boot_assets, pub, tmp_path / "assets")
    return make_image(keyed, tmp_path / "test.raw")


def http_records(home: Path, vm: str, kind: str) -> list[dict[str, Any]]:
    out = []
    for line in (home / "logs" / "http.log").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("vm") == vm and rec.get("kind") == kind:
            out.append(rec)
    return out


def provisioning(home: Path, vm: str) -> str:
    rows = json.loads(run_pvmlab("vm", "list", "--json", home=home).stdout)
    return str(next(r for r in rows if r["name"] == vm)["provisioning"])


def console(home: Path, vm: str) -> str:
    return (home / "logs" / f"{vm}.log").read_text(errors="replace")


def check_disk(disk: Path, tmp_path: Path) -> None:
    """The disk holds the image's partitions, the last one grown with its ext4 file system, and
    after it the seed partition with the NoCloud documents (read on the host, VM stopped)."""
    raw = tmp_path / "disk.raw"
    spawn.run(["qemu-img", "convert", "-O", "raw", str(disk), str(raw)], timeout=600)
    table = json.loads(spawn.run(["sfdisk", "-J", str(raw)]).stdout)["partitiontable"]
    parts = table["partitions"]
    assert len(parts) == 3, table
    root, seed = parts[1], parts[2]
    assert root["start"] + root["size"] == seed["start"] and seed["size"] == 4096, table  # 2 MiB
    assert seed["start"] + seed["size"] <= table["lastlba"] + 1, table
    spawn.run(["dd", f"if={raw}", f"of={tmp_path / 'root.img'}", "bs=512",
               f"skip={root['start']}", f"count={root['size']}", "status=none"])  # fmt: skip
    info = spawn.run(["dumpe2fs", "-h", str(tmp_path / "root.img")]).stdout
    fields = dict(ln.split(":", 1) for ln in info.splitlines() if ":" in ln)
    fs_bytes = int(fields["Block count"]) * int(fields["Block size"])
    assert fs_bytes > ROOT_MIB * 1024 * 1024 and fs_bytes <= root["size"] * 512, info
    listing = spawn.run(["mdir", "-b", "-i", f"{raw}@@{seed['start'] * 512}", "::"]).stdout
    assert {Path(x).name for x in listing.split()} >= {"user-data", "meta-data"}, listing
    raw.unlink()


def test_deploy_x86_64_uefi_end_to_end(lab: netlab.Lab, image: Path, tmp_path: Path) -> None:
    home = lab.home
    run_pvmlab("vm", "create", "t1", "--arch", "x86_64", "--firmware", "uefi", "--memory", "512",
               "--image", str(image), home=home)  # fmt: skip
    assert provisioning(home, "t1") == "new"
    out = run_pvmlab("vm", "start", "t1", *START, "--wait-ssh", "--json", home=home, timeout=1500)
    result = json.loads(out.stdout)
    assert result["outcome"] == "ready", result
    said = console(home, "t1")
    assert "pvmlab-deploy: verified: sha256 " in said, said[-3000:]
    assert "pvmlab-deploy: grew partition 2" in said, said[-3000:]
    assert "pvmlab-deploy: cloud-init seed (CIDATA) written" in said, said[-3000:]
    assert provisioning(home, "t1") == "deployed"
    cmdline = run_pvmlab("vm", "ssh", "t1", "--", "cat", "/proc/cmdline", home=home).stdout
    assert "pvmlab.fromdisk" in cmdline and "pvmlab.deploy" not in cmdline
    status = json.loads((home / "vms" / "t1" / "deploy-status.json").read_text())
    phases = [e["phase"] for e in status["history"]]
    assert phases[0] == "instructions" and phases[-1] == "deployed", phases
    assert {"stream", "verify", "verified"} <= set(phases), phases
    assert any(e.get("mbps", 0) > 0 for e in status["history"])
    fetched = http_records(home, "t1", "image")
    assert fetched and all(r["status"] == 200 for r in fetched), fetched[:3]
    # vm cp both ways (dropbear's scp with the fixture's sftp-server)
    (tmp_path / "note").write_text("deployed\n")
    run_pvmlab("vm", "cp", str(tmp_path / "note"), "t1:/tmp/note", home=home)
    run_pvmlab("vm", "cp", "t1:/tmp/note", str(tmp_path / "back"), home=home)
    assert (tmp_path / "back").read_text() == "deployed\n"
    # vm timeline shows the deploy's phases
    tl = json.loads(run_pvmlab("vm", "timeline", "t1", "--wait-for", "PVMLAB-NET-UP", "--json",
                               home=home).stdout)  # fmt: skip
    names = [p["name"] for p in tl["phases"]]
    for phase in ("deploy-instructions", "deploy-stream", "deploy-verify", "deploy-grow",
                  "reboot", "disk-kernel", "ready"):  # fmt: skip
        assert phase in names, names

    # a second start boots the disk without fetching the image again
    run_pvmlab("vm", "stop", "t1", "--force", home=home)
    check_disk(home / "vms" / "t1" / "disk.qcow2", tmp_path)
    run_pvmlab("vm", "start", "t1", *START, "--wait-for", "PVMLAB-NET-UP", home=home, timeout=1500)
    assert "pvmlab.fromdisk" in console(home, "t1")
    assert len(http_records(home, "t1", "image")) == len(fetched)
    assert len(http_records(home, "t1", "deploy")) == 1

    # reinstall deploys again
    run_pvmlab("vm", "stop", "t1", "--force", home=home)
    run_pvmlab("vm", "reinstall", "t1", home=home)
    assert provisioning(home, "t1") == "new"
    run_pvmlab("vm", "start", "t1", *START, "--wait-for", "PVMLAB-NET-UP", home=home, timeout=1500)
    assert len(http_records(home, "t1", "deploy")) == 2
    assert len(http_records(home, "t1", "image")) == 2 * len(fetched)
    assert provisioning(home, "t1") == "deployed"
    run_pvmlab("vm", "stop", "t1", "--force", home=home)


def test_deploy_refuses_bad_images_at_create(lab: netlab.Lab, image: Path, tmp_path: Path) -> None:
    home = lab.home
    # a disk smaller than the image
    small = run_pvmlab("vm", "create", "s1", "--arch", "x86_64", "--image", str(image),
                       "--disk-size", "16M", home=home, check=False)  # fmt: skip
    assert small.returncode == 2, small
    assert small.stderr.startswith("pvmlab: error: the disk (16777216 bytes) is smaller than")
    assert len(small.stderr.strip().splitlines()) == 1
    # a corrupt qcow2: its L1 table pointer sent past the end of the file
    qcow = tmp_path / "bad.qcow2"
    spawn.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(image), str(qcow)])
    with qcow.open("r+b") as fh:
        fh.seek(40)  # l1_table_offset
        fh.write((1 << 40).to_bytes(8, "big"))
    bad = run_pvmlab("vm", "create", "s2", "--arch", "x86_64", "--image", str(qcow), home=home,
                     check=False)  # fmt: skip
    assert bad.returncode == 2, bad
    assert "damaged or truncated qcow2" in bad.stderr or "cannot be read" in bad.stderr, bad
    assert len(bad.stderr.strip().splitlines()) == 1
    assert not (home / "vms" / "s1.json").exists() and not (home / "vms" / "s2.json").exists()
    assert not (home / "vms" / "s2").exists()


def test_deploy_checksum_mismatch_and_lab_stopped_mid_stream(
    lab: netlab.Lab, image: Path
) -> None:
    home = lab.home
    run_pvmlab("vm", "create", "c1", "--arch", "x86_64", "--firmware", "uefi", "--memory", "512",
               "--image", str(image), home=home)  # fmt: skip
    spec = json.loads((home / "vms" / "c1.json").read_text())
    raw = home / "deploy" / "images" / f"{spec['image_sha256']}.raw"
    with raw.open("r+b") as fh:  # what the lab serves no longer matches the recorded SHA-256
        fh.seek(2 * 1024 * 1024)
        byte = fh.read(1)
        fh.seek(2 * 1024 * 1024)
        fh.write(bytes([byte[0] ^ 0xFF]))
    proc = run_pvmlab("vm", "start", "c1", *START, "--wait-for", "pvmlab-deploy: halting",
                      home=home, check=False, timeout=1500)  # fmt: skip
    assert "pvmlab-deploy: FAILED: checksum mismatch" in console(home, "c1"), proc
    state = provisioning(home, "c1")
    assert state.startswith("failed: checksum mismatch: the disk holds sha256 "), state
    run_pvmlab("vm", "stop", "c1", "--force", home=home, check=False)
    with raw.open("r+b") as fh:  # repaired
        fh.seek(2 * 1024 * 1024)
        fh.write(byte)

    # the lab dies after the first chunk: the ramdisk retries, gives up, and reports once the
    # lab is back. The image streams in about 2 s on an idle host, so the test kills the
    # supervisor (SIGKILL: its HTTP server's connections are reset at once) the moment the
    # console shows the first chunk, reading the console itself rather than through a command.
    run_pvmlab("vm", "reinstall", "c1", home=home)
    supervisor = int(json.loads((home / "stack" / "state.json").read_text())["supervisor_pid"])
    log = home / "logs" / "c1.log"
    run_pvmlab("vm", "start", "c1", "--accel", "tcg", home=home)
    seen = time.monotonic() + 1200
    while not (log.is_file() and "pvmlab-deploy: wrote " in log.read_text(errors="replace")):
        assert time.monotonic() < seen, console(home, "c1")[-2000:]
        time.sleep(0.02)
    os.kill(supervisor, signal.SIGKILL)
    deadline = time.monotonic() + 600
    while "after 4 attempts" not in console(home, "c1"):
        assert time.monotonic() < deadline, console(home, "c1")[-2000:]
        time.sleep(2)
    assert "chunk at " in console(home, "c1") and "(attempt 1 of 4)" in console(home, "c1")
    run_pvmlab("provisioner", "start", home=home)
    while not provisioning(home, "c1").startswith("failed"):
        assert time.monotonic() < deadline, console(home, "c1")[-2000:]
        time.sleep(2)
    assert "stream broken at byte " in provisioning(home, "c1")
    run_pvmlab("vm", "stop", "c1", "--force", home=home, check=False)


def test_deploy_stopped_mid_stream_is_interrupted_and_the_next_start_deploys_again(
    lab: netlab.Lab, image: Path
) -> None:
    """QEMU dies while the ramdisk streams: `vm list` says interrupted (not deploying forever),
    and a plain `vm start` boots the ramdisk again, which deploys from the start. The stream
    takes seconds, so QEMU is killed (SIGKILL) the moment the console shows the first chunk,
    read directly (as the lab-stopped case does), not through a command."""
    home = lab.home
    run_pvmlab("vm", "create", "i1", "--arch", "x86_64", "--firmware", "uefi", "--memory", "512",
               "--image", str(image), home=home)  # fmt: skip
    log = home / "logs" / "i1.log"
    run_pvmlab("vm", "start", "i1", "--accel", "tcg", home=home)
    qemu = int((home / "pids" / "i1.pid").read_text().strip())
    seen = time.monotonic() + 1200
    while not (log.is_file() and "pvmlab-deploy: wrote " in log.read_text(errors="replace")):
        assert time.monotonic() < seen, console(home, "i1")[-2000:]
        time.sleep(0.02)
    os.kill(qemu, signal.SIGKILL)
    while spawn.pid_alive(qemu):
        assert time.monotonic() < seen
        time.sleep(0.1)
    state = provisioning(home, "i1")
    assert state.startswith("interrupted at ") and state.endswith("% (`vm start` deploys again)")
    assert "deployed" not in state
    run_pvmlab("vm", "start", "i1", *START, "--wait-for", "pvmlab-deploy: deployed; rebooting",
               home=home, timeout=1500)  # fmt: skip
    assert provisioning(home, "i1") == "deployed"
    assert len(http_records(home, "i1", "deploy")) == 2  # the instructions, asked again
    status = json.loads((home / "vms" / "i1" / "deploy-status.json").read_text())
    phases = [e["phase"] for e in status["history"]]
    assert phases[0] == "instructions" and phases[-1] == "deployed", phases
    run_pvmlab("vm", "stop", "i1", "--force", home=home)


@pytest.mark.slow
def test_deploy_aarch64_uefi(lab: netlab.Lab, boot_assets: dict[str, BootAssets],
                             tmp_path: Path) -> None:  # fmt: skip
    """aarch64 (AAVMF, TCG): the arm64 deploy ramdisk writes and verifies an image whose ESP
    holds the fixture's arm64 kernel as BOOTAA64.EFI; after the reboot the firmware's PXE gets
    the local-boot script and the disk's kernel starts (its EFI stub speaks)."""
    home = lab.home
    img = make_stub_image(boot_assets["aarch64"].kernel, "BOOTAA64.EFI", tmp_path / "arm.raw")
    run_pvmlab("vm", "create", "a1", "--arch", "aarch64", "--firmware", "uefi",
               "--memory", "1024", "--image", str(img), home=home)  # fmt: skip
    run_pvmlab("vm", "start", "a1", *START, "--wait-for", "pvmlab-deploy: deployed; rebooting",
               home=home, timeout=1500)  # fmt: skip
    assert "pvmlab-deploy: verified: sha256 " in console(home, "a1")
    assert provisioning(home, "a1") == "deployed"
    deadline = time.monotonic() + 1200
    while True:
        after = console(home, "a1").split("pvmlab-deploy: deployed; rebooting", 1)[-1]
        if "EFI stub: " in after:
            break
        assert time.monotonic() < deadline, after[-2000:]
        time.sleep(5)
    run_pvmlab("vm", "stop", "a1", "--force", home=home)


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "fixture"), [("x86_64", "built_image"),
                                               ("aarch64", "built_image_arm64")])  # fmt: skip
def test_deploy_the_built_debian_image(lab: netlab.Lab, arch: str, fixture: str,
                                       request: pytest.FixtureRequest) -> None:  # fmt: skip
    """The real thing: the Debian 12 image ``pvmlab image build`` made for ``arch`` (systemd-boot,
    ext4 root, openssh-server, cloud-init on NoCloud) deployed by that arch's ramdisk (OVMF or
    AAVMF, TCG); cloud-init takes the CIDATA seed the ramdisk wrote (hostname, the lab key for
    user pvmlab); SSH answers, the root is on the VM's disk."""
    home = lab.home
    built: ImageInfo = request.getfixturevalue(fixture)
    assert built.arch == arch
    run_pvmlab("vm", "create", "t1", "--arch", arch, "--firmware", "uefi", "--memory", "1024",
               "--image", str(built.path), "--disk-size", "3G", home=home)  # fmt: skip
    limit = 1200 if arch == "x86_64" else 2400  # arm64 under TCG: every phase about 2x slower
    out = run_pvmlab("vm", "start", "t1", "--accel", "tcg", "--timeout", str(limit), "--wait-ssh",
                     "--ssh-user", "pvmlab", "--json", home=home, timeout=limit + 300)  # fmt: skip
    assert json.loads(out.stdout)["outcome"] == "ready", out.stdout
    assert provisioning(home, "t1") == "deployed"
    said = run_pvmlab("vm", "ssh", "t1", "--user", "pvmlab", "--", "hostname; findmnt -n -o "
                      "SOURCE,SIZE /", home=home).stdout.split()  # fmt: skip
    assert said[0] == "t1" and said[1] == "/dev/vda2", said
    assert said[2].endswith("G") and float(said[2][:-1]) > 2, said  # 1.2G grown to the disk
    run_pvmlab("vm", "stop", "t1", "--force", home=home)
