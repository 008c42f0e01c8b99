"""Image deployment, the lab's side: the image checked and converted at create, the ramdisk's
instructions, image and seed over the real HTTP server (asked from the VM's own loopback
address, as in test_install_http), its status reports and what they make of the VM's boot,
and the pieces the ramdisk is built from (ELF libraries, /init)."""

from __future__ import annotations

import hashlib
import http.client
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import labserver
from conftest import run_pvmlab
from pvmlab.arch import Arch
from pvmlab.deploy import debs, image, ramdisk, state
from pvmlab.errors import ValidationError
from pvmlab.home import LabHome
from pvmlab.records import store
from pvmlab.records.models import LabSpec, VMSpec
from pvmlab.stack import bootconfig

MAC, IP = "0e:00:00:00:20:01", "127.0.0.2"
PATH_MAC = "/0e-00-00-00-20-01"
MIB = 1024 * 1024


def raw_image(path: Path, size: int = 3 * MIB) -> Path:
    data = bytes((i * 7) % 251 for i in range(size))
    path.write_bytes(data)
    return path


@pytest.fixture
def home(tmp_path: Path) -> LabHome:
    h = LabHome(tmp_path / "home")
    h.ensure()
    store.save_lab(h, LabSpec(dhcp_start="192.168.105.100", dhcp_end="192.168.105.199"))
    return h


def image_vm(home: LabHome, source: Path, name: str = "d1") -> VMSpec:
    base = VMSpec(name=name, arch="x86_64", mac=MAC, ip=IP)
    vm, _text = image.configure(home, base, source, None, None, None)
    home.vm_dir(name).mkdir(parents=True, exist_ok=True)
    store.save_vm(home, vm)
    return vm


def test_prepare_converts_once_and_qcow2_gives_the_same_raw(home: LabHome, tmp_path: Path) -> None:
    src = raw_image(tmp_path / "a.raw")
    first = image.prepare(home, src)
    assert first.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert first.raw.read_bytes() == src.read_bytes() and first.virtual_size == 3 * MIB
    qcow = tmp_path / "a.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(src), str(qcow)],
                   check=True)  # fmt: skip
    second = image.prepare(home, qcow)
    assert (second.format, second.sha256, second.raw) == ("qcow2", first.sha256, first.raw)
    assert sorted(p.name for p in home.deploy_images.iterdir()) == sorted(
        [f"{first.sha256}.raw", "sources.json"]
    )


def test_corrupt_qcow2_and_small_disk_are_refused(home: LabHome, tmp_path: Path) -> None:
    src = raw_image(tmp_path / "a.raw")
    qcow = tmp_path / "bad.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(src), str(qcow)],
                   check=True)  # fmt: skip
    with qcow.open("r+b") as fh:
        fh.seek(40)
        fh.write((1 << 40).to_bytes(8, "big"))
    with pytest.raises(ValidationError, match="damaged or truncated qcow2"):
        image.prepare(home, qcow)
    assert not home.deploy_images.exists() or not list(home.deploy_images.glob("*.raw"))
    base = VMSpec(name="d1", arch="x86_64", mac=MAC, ip=IP)
    with pytest.raises(ValidationError, match=r"smaller than the image"):
        image.configure(home, base, src, 2 * MIB, None, None)
    vm, _ = image.configure(home, base, src, None, None, None)
    assert vm.disk_bytes == 3 * MIB + image.SEED_ROOM and vm.install == "user-data"
    with pytest.raises(ValidationError, match="either --image or --distro"):
        image.configure(home, base.model_copy(update={"distro": "x"}), src, None, None, None)


def test_status_reports_make_the_provisioning_state(home: LabHome, tmp_path: Path) -> None:
    vm = image_vm(home, raw_image(tmp_path / "a.raw"))
    assert state.summary(home, vm, "running") == "new"
    state.record(home, vm, {"phase": "instructions", "total": str(3 * MIB)}, IP)
    state.record(home, vm, {"phase": "stream", "bytes": str(MIB), "mbps": "12.5"}, IP)
    assert state.summary(home, vm, "running") == "deploying 33%"
    bad = state.record(home, vm, {"phase": "deployed", "sha256": "0" * 64}, IP)
    assert bad["phase"] == "failed" and not bad["deployed"]
    assert state.summary(home, vm, "running").startswith("failed: the ramdisk reported sha256 0000")
    state.record(home, vm, {"phase": "instructions"}, IP)  # a new attempt starts afresh
    state.record(home, vm, {"phase": "failed", "message": "checksum mismatch: x"}, IP)
    assert state.summary(home, vm, "running") == "failed: checksum mismatch: x"
    assert bootconfig.build(home, vm, "http://192.168.105.1").local_boot is False
    good = state.record(home, vm, {"phase": "deployed", "sha256": str(vm.image_sha256)}, IP)
    assert good["deployed"] and state.summary(home, vm, "running") == "deployed"
    assert bootconfig.build(home, vm, "http://192.168.105.1").local_boot is True
    state.record(home, vm, {"phase": "installed"}, IP)  # cloud-init's phone-home
    assert state.read(home, vm.name)["phase"] == "cloud-init" and state.is_deployed(home, vm.name)
    with pytest.raises(ValidationError):
        state.record(home, vm, {"phase": "Bad Phase"}, IP)


def test_bootconfig_boots_the_ramdisk_until_deployed(home: LabHome, tmp_path: Path) -> None:
    vm = image_vm(home, raw_image(tmp_path / "a.raw"))
    cfg = bootconfig.build(home, vm, "http://192.168.105.1")
    assert cfg.problem is not None and "deploy ramdisk" in cfg.problem
    folder = home.deploy_ramdisk("x86_64")
    folder.mkdir(parents=True)
    (folder / "vmlinuz").write_bytes(b"k")
    (folder / "initrd").write_bytes(b"i")
    cfg = bootconfig.build(home, vm, "http://192.168.105.1")
    assert cfg.kernel_url == "http://192.168.105.1/deploy/ramdisk/x86_64/vmlinuz"
    assert cfg.cmdline == (
        "pvmlab.deploy=http://192.168.105.1/deploy/0e-00-00-00-20-01 initrd=initrd console=ttyS0"
    )


def test_a_deploy_cut_short_is_interrupted_and_the_next_start_deploys_again(
    home: LabHome, tmp_path: Path
) -> None:
    """The VM stopped (or its QEMU died) in the middle of the stream: the status file still
    says what the ramdisk last reported, the VM's state says it is gone. The next start boots
    the ramdisk again, and its instructions start the deploy over."""
    vm = image_vm(home, raw_image(tmp_path / "a.raw"))
    folder = home.deploy_ramdisk("x86_64")
    folder.mkdir(parents=True)
    (folder / "vmlinuz").write_bytes(b"k")
    (folder / "initrd").write_bytes(b"i")
    state.record(home, vm, {"phase": "instructions", "total": str(3 * MIB)}, IP)
    state.record(home, vm, {"phase": "stream", "bytes": str(2 * MIB), "mbps": "9"}, IP)
    assert state.summary(home, vm, "running") == "deploying 66%"
    assert state.summary(home, vm, "stopped") == "interrupted at 66% (`vm start` deploys again)"
    assert state.summary(home, vm, "internal-error") == (
        "stalled at 66% (the guest is internal-error)"
    )
    assert state.summary(home, vm, "unresponsive") == "stalled at 66% (the guest is unresponsive)"
    state.record(home, vm, {"phase": "verify"}, IP)  # bytes and total are carried over
    assert state.summary(home, vm, "stopped") == "interrupted at 66% (`vm start` deploys again)"
    # the next start: the per-MAC script boots the ramdisk, not the half-written disk
    cfg = bootconfig.build(home, vm, "http://192.168.105.1")
    assert cfg.local_boot is False and cfg.problem is None
    assert cfg.kernel_url == "http://192.168.105.1/deploy/ramdisk/x86_64/vmlinuz"
    # ... whose instructions (what GET /deploy/<mac> records) start the deploy over
    fresh = state.record(home, vm, {"phase": "instructions", "total": str(3 * MIB)}, IP)
    assert [e["phase"] for e in fresh["history"]] == ["instructions"] and "bytes" not in fresh
    assert state.summary(home, vm, "running") == "deploying 0%"
    # a deploy cut short before any byte was written, and finished ones, read as before
    assert state.summary(home, vm, "stopped") == "interrupted at 0% (`vm start` deploys again)"
    state.record(home, vm, {"phase": "deployed", "sha256": str(vm.image_sha256)}, IP)
    assert state.summary(home, vm, "stopped") == "deployed"


def test_vm_list_says_interrupted_for_a_stopped_vm_mid_deploy(
    home: LabHome, tmp_path: Path
) -> None:
    vm = image_vm(home, raw_image(tmp_path / "a.raw"))
    state.record(home, vm, {"phase": "instructions", "total": str(3 * MIB)}, IP)
    state.record(home, vm, {"phase": "stream", "bytes": str(MIB)}, IP)
    rows = json.loads(run_pvmlab("vm", "list", "--json", home=home.root).stdout)
    assert [(r["name"], r["state"], r["provisioning"]) for r in rows] == [
        ("d1", "stopped", "interrupted at 33% (`vm start` deploys again)")
    ]
    table = run_pvmlab("vm", "list", home=home.root).stdout
    assert "interrupted at 33% (`vm start` deploys again)" in table


class Server(labserver.Server):
    def request(self, path: str, *, peer: str = IP, method: str = "GET", body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:  # fmt: skip
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30,
                                          source_address=(peer, 0))  # fmt: skip
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()


@pytest.fixture
def server(home: LabHome, tmp_path: Path) -> Iterator[Server]:
    image_vm(home, raw_image(tmp_path / "a.raw"))
    lab = store.load_lab(home)
    with labserver.serving(home, lab, Server) as server:
        yield server


def post(server: Server, form: str) -> tuple[int, bytes]:
    form_type = {"Content-Type": "application/x-www-form-urlencoded"}
    return server.request(f"/status{PATH_MAC}", method="POST", body=form.encode(),
                          headers=form_type)  # fmt: skip


def test_the_ramdisk_gets_instructions_image_chunks_and_seed(server: Server) -> None:
    vm = store.load_vm(server.home, "d1")
    status, body = server.request("/deploy" + PATH_MAC)
    assert status == 200, body
    lines = dict(line.split("=", 1) for line in body.decode().splitlines())
    assert lines["image"] == f"{server.base}/deploy{PATH_MAC}/image"
    assert lines["size"] == str(3 * MIB) and lines["sha256"] == vm.image_sha256
    assert lines["disk"] == "/dev/vda" and lines["status"] == f"{server.base}/status{PATH_MAC}"
    assert lines["seed"] == f"{server.base}/deploy{PATH_MAC}/seed"
    status, chunk = server.request(lines["image"].removeprefix(server.base),
                                   headers={"Range": f"bytes={MIB}-{2 * MIB - 1}"})  # fmt: skip
    raw = server.home.deploy_image(str(vm.image_sha256)).read_bytes()
    assert status == 206 and chunk == raw[MIB:2 * MIB]
    status, chunk = server.request(lines["image"].removeprefix(server.base)
                                   + f"?offset={2 * MIB}&length={2 * MIB}")  # fmt: skip
    assert status == 200 and chunk == raw[2 * MIB:]  # the last chunk may be short
    bad = lines["image"].removeprefix(server.base) + f"?offset={3 * MIB}&length=1"
    assert server.request(bad)[0] == 416
    status, seed = server.request(lines["seed"].removeprefix(server.base))
    assert status == 200 and str(len(seed)) == lines["seed_size"] and b"CIDATA" in seed[:4096]
    listing = subprocess.run(["mdir", "-b", "-i", str(server.home.vm_seed("d1")), "::"],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert {Path(x).name for x in listing.split()} >= {"user-data", "meta-data"}
    # another machine may not take this one's image
    assert server.request(lines["image"].removeprefix(server.base), peer="127.0.0.9")[0] == 403
    # progress, then the verified result
    status, body = post(server, f"phase=stream&bytes={MIB}&total={3 * MIB}&mbps=9.5")
    assert status == 200 and json.loads(body)["deployed"] is False
    assert state.summary(server.home, vm, "running") == "deploying 33%"
    status, body = post(server, f"phase=deployed&sha256={vm.image_sha256}")
    assert status == 200 and json.loads(body)["deployed"] is True


def test_elf_dynamic_reads_the_interpreter_and_libraries() -> None:
    interp, needed = debs.elf_dynamic(Path("/bin/ls").resolve().read_bytes())
    assert interp is not None and interp.startswith("/lib") and "libc.so.6" in needed


@pytest.mark.parametrize(
    ("arch", "directory"), [("x86_64", "apt-bookworm-amd64"), ("aarch64", "apt-trixie-arm64")]
)
def test_cloud_kernel_archive_keeps_its_cache_directory(
    tmp_path: Path, arch: Arch, directory: str
) -> None:
    """The deploy ramdisk's apt state (and the package versions in its key) stay where they were
    before the suite moved into the architecture table."""
    archive = debs.DebianArchive.cloud_kernel(tmp_path, arch)
    assert archive.root == tmp_path / directory
    assert archive.debarch == directory.split("-")[2]


def test_init_script_is_complete_shell() -> None:
    text = ramdisk.init_script()
    assert "@" not in text.replace("${", "")
    subprocess.run(["sh", "-n"], input=text, text=True, check=True)
    assert "eval" not in text and "pvmlab.deploy=" in text


def test_image_names_a_pulled_cloud_image(home: LabHome, tmp_path: Path) -> None:
    from pvmlab.assets import pull
    from pvmlab.records.models import DistroAssets

    store.save_distro(home, DistroAssets(
        name="ubuntu-24.04", arch="x86_64", kernel_sha256="0" * 64, initrd_sha256="0" * 64,
        kernel_size=1, initrd_size=1, source="cloud-image",
        origin="http://mirror.example/noble/noble-server-cloudimg-amd64.img",
    ))  # fmt: skip
    cache = pull.cache_dir(home, "ubuntu-24.04", "x86_64", "cloud-image")
    cache.mkdir(parents=True)
    raw_image(cache / "noble-server-cloudimg-amd64.img")
    assert image.resolve(home, Path("ubuntu-24.04"), "x86_64") == (
        cache / "noble-server-cloudimg-amd64.img"
    )
    with pytest.raises(ValidationError, match="no cloud image of that name pulled for aarch64"):
        image.resolve(home, Path("ubuntu-24.04"), "aarch64")
    with pytest.raises(ValidationError, match="no image file 'nothing'"):
        image.resolve(home, Path("nothing"), "x86_64")
