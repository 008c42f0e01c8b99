"""On the real lab bridge: only a machine itself may fetch its install configuration or report its
install status. Clients are network namespaces joined to the lab's bridge by a veth pair
(tests/netlab.py), speaking with busybox wget; the lab's HTTP server checks the peer's address
against the VM's reservation and the MAC its neighbour table learned for that address.

(A client that copies both the VM's MAC and its address is, on an Ethernet segment, that VM:
no server can tell them apart. This is about everyone else on the lab network.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import run_pvmlab
from netlab import BUSYBOX, Client, Lab, client_on_bridge, running_lab
from pvmlab.home import LabHome
from pvmlab.records import store
from pvmlab.records.models import DistroAssets
from pvmlab.stack import installcfg

pytestmark = pytest.mark.integration


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    home = (tmp_path / "home").absolute()
    with running_lab(home) as running:
        yield running


def wget(client: Client, url: str, post: str | None = None) -> tuple[int, str]:
    argv = [BUSYBOX, "wget", "-q", "-O", "-", url]
    if post is not None:
        argv[2:2] = ["--post-data", post]
    proc = client.run(argv, check=False, timeout=30)
    return proc.returncode, proc.stdout + proc.stderr


def test_only_the_machine_itself_may_fetch_and_report(lab: Lab) -> None:
    home = LabHome(lab.home)
    folder = store.distro_dir(home, "cloudy", "x86_64")
    folder.mkdir(parents=True)
    store.save_distro(home, DistroAssets(
        name="cloudy", arch="x86_64", kernel_sha256="0" * 64, initrd_sha256="0" * 64,
        kernel_size=1, initrd_size=1, source="cloud-image",
    ))  # fmt: skip
    vm = json.loads(run_pvmlab(
        "vm", "create", "v1", "--arch", "x86_64", "--distro", "cloudy", "--unattended",
        "--mac", "0e:00:00:00:20:01", "--ip", "192.168.105.20", "--json", home=lab.home,
    ).stdout)  # fmt: skip
    base = f"http://{lab.ip}"
    user_data = f"{base}/nocloud/0e-00-00-00-20-01/user-data"
    status = f"{base}/status/0e-00-00-00-20-01"

    # another machine of the lab, at its own address: refused
    with client_on_bridge(lab.netns, lab.bridge, "other", mac="0e:00:00:00:20:02") as other:
        other.add_address("192.168.105.21/24")
        rc, out = wget(other, user_data)
        assert rc != 0 and "403" in out, out
        rc, out = wget(other, status, post="phase=installed")
        assert rc != 0 and "403" in out, out
    assert installcfg.read_status(home, "v1") == {}

    # the machine itself: its MAC and its reserved address
    with client_on_bridge(lab.netns, lab.bridge, "self", mac=vm["mac"]) as itself:
        itself.add_address(f"{vm['ip']}/24")
        rc, out = wget(itself, user_data)
        assert rc == 0 and out.startswith("#cloud-config\n") and 'hostname: "v1"' in out, out
        rc, out = wget(itself, status, post="phase=firstboot&message=hello")
        assert rc == 0 and json.loads(out) == {"vm": "v1", "phase": "firstboot",
                                               "installed": False}, out  # fmt: skip

    # a client that takes the machine's address but not its MAC: refused by the MAC check
    with client_on_bridge(lab.netns, lab.bridge, "impostor", mac="0e:00:00:00:20:66") as imp:
        imp.add_address(f"{vm['ip']}/24")
        rc, out = wget(imp, status, post="phase=installed")
        assert rc != 0 and "403" in out, out
    stored = installcfg.read_status(home, "v1")
    assert (stored["phase"], stored["installed"]) == ("firstboot", False)

    reqs = [json.loads(x) for x in (lab.home / "logs" / "http.log").read_text().splitlines()]
    seen = [(r["client"], r["method"], r.get("kind"), r["status"]) for r in reqs
            if r.get("vm") == "v1"]  # fmt: skip
    assert seen == [
        ("192.168.105.21", "GET", "user-data", 403),
        ("192.168.105.21", "POST", "status", 403),
        ("192.168.105.20", "GET", "user-data", 200),
        ("192.168.105.20", "POST", "status", 200),
        ("192.168.105.20", "POST", "status", 403),
    ]
    supervisor_log = (lab.home / "logs" / "supervisor.log").read_text(errors="replace")
    assert "answers from MAC 0e:00:00:00:20:66, not VM v1's" in supervisor_log
