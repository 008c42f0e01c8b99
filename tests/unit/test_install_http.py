"""The install routes of the lab's HTTP server, run for real on 127.0.0.1 and asked by real
clients from chosen loopback addresses (127.0.0.2 is machine "deb", 127.0.0.3 machine "cloud"),
so the server's peer check sees what it would see on the lab bridge: whose address is asking.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import labserver
from pvmlab.home import LabHome
from pvmlab.records import store
from pvmlab.records.models import DistroAssets, LabSpec, VMSpec
from pvmlab.stack import installcfg

DEB_MAC, DEB_IP = "0e:00:00:00:10:01", "127.0.0.2"
CLOUD_MAC, CLOUD_IP = "0e:00:00:00:10:02", "127.0.0.3"
DEB, CLOUD = "/0e-00-00-00-10-01", "/0e-00-00-00-10-02"


class Server(labserver.Server):
    def request(
        self, path: str, *, peer: str, method: str = "GET", body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, str]:  # fmt: skip
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30,
                                          source_address=(peer, 0))  # fmt: skip
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    def log(self, count: int) -> list[dict[str, object]]:
        path = self.home.logs / "http.log"
        deadline = time.monotonic() + 30
        while len(path.read_text().splitlines()) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return [json.loads(x) for x in path.read_text().splitlines()]


def _distro(home: LabHome, name: str, source: str) -> None:
    folder = store.distro_dir(home, name, "x86_64")
    folder.mkdir(parents=True)
    (folder / "vmlinuz").write_bytes(b"k")
    (folder / "initrd").write_bytes(b"i")
    store.save_distro(home, DistroAssets(
        name=name, arch="x86_64", kernel_sha256="0" * 64, initrd_sha256="0" * 64,
        kernel_size=1, initrd_size=1, source=source,
    ))  # fmt: skip


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    home = LabHome(tmp_path / "home")
    home.ensure()
    lab = LabSpec(dhcp_start="192.168.105.100", dhcp_end="192.168.105.199")
    store.save_lab(home, lab)
    _distro(home, "debian-12", "netboot")
    _distro(home, "debian-cloud", "cloud-image")
    store.save_vm(home, VMSpec(name="deb", arch="x86_64", mac=DEB_MAC, ip=DEB_IP,
                               distro="debian-12", install="preseed"))  # fmt: skip
    store.save_vm(home, VMSpec(name="cloud", arch="x86_64", mac=CLOUD_MAC, ip=CLOUD_IP,
                               distro="debian-cloud", install="user-data"))  # fmt: skip
    store.save_vm(home, VMSpec(name="plain", arch="x86_64", mac="0e:00:00:00:10:03",
                               ip="127.0.0.4", distro="debian-12"))  # fmt: skip
    with labserver.serving(home, lab, Server) as server:
        yield server


def test_each_machine_gets_its_own_configuration(server: Server) -> None:
    status, body = server.request("/preseed" + DEB, peer=DEB_IP)
    assert status == 200
    assert "d-i netcfg/get_hostname string deb" in body.splitlines()
    assert f"{server.base}/status/0e-00-00-00-10-01" in body
    docs = {}
    for doc in ("user-data", "meta-data", "vendor-data", "network-config"):
        status, body = server.request(f"/nocloud{CLOUD}/{doc}", peer=CLOUD_IP)
        assert status == 200, (doc, body)
        docs[doc] = yaml.safe_load(body)
    assert docs["meta-data"] == {"instance-id": "pvmlab-cloud", "local-hostname": "cloud"}
    assert docs["user-data"]["hostname"] == "cloud"
    assert docs["network-config"]["ethernets"]["lab"]["match"] == {"macaddress": CLOUD_MAC}
    entries = server.log(5)
    assert [(e["mac"], e["vm"], e["kind"], e["status"]) for e in entries] == [
        (DEB_MAC, "deb", "preseed", 200),
        (CLOUD_MAC, "cloud", "user-data", 200),
        (CLOUD_MAC, "cloud", "meta-data", 200),
        (CLOUD_MAC, "cloud", "vendor-data", 200),
        (CLOUD_MAC, "cloud", "network-config", 200),
    ]


@pytest.mark.parametrize(
    ("path", "peer", "expected"),
    [
        ("/preseed" + DEB, CLOUD_IP, 403),  # another machine asks for deb's preseed
        ("/preseed" + DEB, "127.0.0.9", 403),  # an address no VM has
        ("/preseed/0e-00-00-00-99-99", DEB_IP, 404),  # no VM has that MAC
        ("/preseed/not-a-mac", DEB_IP, 400),
        ("/ks" + DEB, DEB_IP, 404),  # deb installs with a preseed, not a kickstart
        (f"/nocloud{DEB}/user-data", DEB_IP, 404),
        (f"/nocloud{CLOUD}/passwd", CLOUD_IP, 404),
        ("/preseed/0e-00-00-00-10-03", "127.0.0.4", 404),  # a VM without unattended install
    ],
)
def test_refusals(server: Server, path: str, peer: str, expected: int) -> None:
    status, body = server.request(path, peer=peer)
    assert status == expected, body
    assert "d-i " not in body and "#cloud-config" not in body


def test_status_from_another_address_is_refused(server: Server) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    status, body = server.request("/status" + DEB, peer=CLOUD_IP, method="POST",
                                  body=b"phase=installed", headers=form)  # fmt: skip
    assert status == 403 and "127.0.0.3 is not the address of VM deb" in body
    assert installcfg.read_status(server.home, "deb") == {}
    refused = server.log(1)[0]
    assert (refused["client"], refused["status"], refused["kind"], refused["vm"]) == (
        CLOUD_IP, 403, "status", "deb"
    )
    _, script = server.request("/ipxe?mac=0e-00-00-00-10-01", peer=CLOUD_IP)
    assert any(x.startswith("kernel ") for x in script.splitlines())


def test_status_flips_the_next_boot_to_the_local_disk(server: Server) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    status, body = server.request("/status" + DEB, peer=DEB_IP, method="POST",
                                  body=b"phase=preseed&message=preseed+loaded", headers=form)
    assert (status, json.loads(body)) == (200, {"vm": "deb", "phase": "preseed",
                                                "installed": False})  # fmt: skip
    _, script = server.request("/ipxe?mac=0e-00-00-00-10-01", peer=DEB_IP)
    assert any(x.startswith("kernel ") for x in script.splitlines())
    status, body = server.request("/status" + DEB, peer=DEB_IP, method="POST",
                                  body=b'{"phase": "installed", "message": "done"}',
                                  headers={"Content-Type": "application/json"})  # fmt: skip
    assert (status, json.loads(body)["installed"]) == (200, True)
    stored = installcfg.read_status(server.home, "deb")
    assert (stored["phase"], stored["message"], stored["client"]) == ("installed", "done", DEB_IP)
    assert [h["phase"] for h in stored["history"]] == ["preseed", "installed"]
    _, script = server.request("/ipxe?mac=0e-00-00-00-10-01", peer=DEB_IP)
    lines = script.splitlines()
    assert not any(x.startswith("kernel ") for x in lines)
    assert "exit 1" in lines  # UEFI: back to the firmware's next boot entry, the disk
    entries = server.log(4)
    assert [(e["kind"], e.get("phase"), e["status"]) for e in entries[:3:2]] == [
        ("status", "preseed", 200), ("status", "installed", 200)
    ]


def test_phone_home_style_status(server: Server) -> None:
    # cloud-init's phone_home posts its own form fields; the phase rides in the URL
    status, _ = server.request(f"/status{CLOUD}?phase=installed", peer=CLOUD_IP, method="POST",
                               body=b"instance_id=pvmlab-cloud&hostname=cloud",
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200
    assert installcfg.status_summary(server.home, store.load_vm(server.home, "cloud")) == (
        "installed"
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"message=no+phase", 400),
        (b"phase=../../x", 400),
        (b"[1, 2]", 400),
        (b"phase=installed&message=" + b"x" * 5000, 413),
    ],
)
def test_bad_status_reports(server: Server, body: bytes, expected: int) -> None:
    ctype = "application/json" if body.startswith(b"[") else "application/x-www-form-urlencoded"
    status, _ = server.request("/status" + DEB, peer=DEB_IP, method="POST", body=body,
                               headers={"Content-Type": ctype})  # fmt: skip
    assert status == expected
    assert installcfg.read_status(server.home, "deb") == {}


def test_status_for_a_machine_without_unattended_install(server: Server) -> None:
    status, body = server.request("/status/0e-00-00-00-10-03", peer="127.0.0.4", method="POST",
                                  body=b"phase=installed")  # fmt: skip
    assert status == 409 and "no unattended install" in body


def test_a_template_broken_after_create_answers_one_line(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    vm = store.load_vm(server.home, "deb")
    store.save_vm(server.home, vm.model_copy(update={"install_template": "/src/mine.preseed"}))
    server.home.vm_dir("deb").mkdir()
    server.home.vm_install_template("deb").write_text("d-i x {{ missing_fact }}\n")
    status, body = server.request("/preseed" + DEB, peer=DEB_IP)
    assert status == 500
    assert body == (
        "pvmlab: cannot render preseed for VM deb: install template /src/mine.preseed,"
        " line 1: 'missing_fact' is undefined\n"
    )
    assert any("cannot render preseed for VM deb" in r.getMessage() for r in caplog.records)
