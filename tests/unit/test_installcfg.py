"""Unattended installs: the shipped templates rendered for real machines, user templates checked
at create, the kernel pointer, the install status and the boot-order switch it drives.

Everything here runs the real renderers and record code against a lab home made by the test
(no network, no QEMU); cloud-init documents are parsed with PyYAML as cloud-init itself does.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from pykickstart.constants import KS_SCRIPT_POST
from pykickstart.errors import KickstartError
from pykickstart.parser import KickstartParser
from pykickstart.version import makeVersion

from conftest import run_pvmlab
from pvmlab.errors import StateError, ValidationError
from pvmlab.home import LabHome
from pvmlab.records import store
from pvmlab.records.models import DistroAssets, LabSpec, VMSpec
from pvmlab.stack import bootconfig, dnsmasq, installcfg
from pvmlab.stack.http import render_machine_script
from pvmlab.vm.define import CreateRequest, create, reinstall

BASE = "http://192.168.105.1"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk0bGFiS2V5Rm9yVGVzdHNPbmx5MTIzNDU2Nzg5MA pvmlab@lab"
DISTROS = {  # catalog distro -> (pull method it came from, the shipped kind)
    "debian-12": ("netboot", "preseed"),
    "ubuntu-24.04": ("netboot", "autoinstall"),
    "fedora-42": ("netboot", "kickstart"),
    "debian-cloud": ("cloud-image", "user-data"),
}


@pytest.fixture
def home(tmp_path: Path) -> LabHome:
    h = LabHome(tmp_path / "home")
    h.ensure()
    store.save_lab(h, LabSpec(dhcp_start="192.168.105.100", dhcp_end="192.168.105.199"))
    for name, (source, _) in DISTROS.items():
        folder = store.distro_dir(h, name, "x86_64")
        folder.mkdir(parents=True)
        (folder / "vmlinuz").write_bytes(b"k")
        (folder / "initrd").write_bytes(b"i")
        store.save_distro(h, DistroAssets(
            name=name, arch="x86_64", kernel_sha256="0" * 64, initrd_sha256="0" * 64,
            kernel_size=1, initrd_size=1, source=source, cmdline="console=ttyS0",
        ))  # fmt: skip
    return h


def with_key(h: LabHome) -> None:
    h.ssh_public_key.parent.mkdir(parents=True, exist_ok=True)
    h.ssh_public_key.write_text(KEY + "\n")


def make(h: LabHome, name: str, distro: str, **kw: object) -> VMSpec:
    kw.setdefault("disk_size", "1G")  # installers need a disk to install onto
    return create(h, CreateRequest(name=name, arch="x86_64", distro=distro, **kw))  # type: ignore[arg-type]


def docs(h: LabHome, vm: VMSpec) -> dict[str, str]:
    lab = store.load_lab(h)
    assert vm.install is not None
    return {d: installcfg.render_document(h, lab, vm, d, BASE)
            for d in installcfg.documents(vm.install)}  # fmt: skip


# --- shipped templates, two machines each ---------------------------------------------------


@pytest.mark.parametrize("distro", list(DISTROS))
def test_shipped_default_renders_for_two_machines(home: LabHome, distro: str) -> None:
    with_key(home)
    a = make(home, "alpha", distro, install="default", mac="0e:00:00:00:00:0a", ip="192.168.105.10")
    b = make(home, "beta", distro, install="default", mac="0e:00:00:00:00:0b", ip="192.168.105.11")
    assert a.install == b.install == DISTROS[distro][1]
    assert a.install_template is None  # the shipped default, not a copy
    da, db = docs(home, a), docs(home, b)
    assert da.keys() == db.keys()
    for doc in da:
        assert da[doc] != db[doc], doc
        for text, vm in ((da[doc], a), (db[doc], b)):
            other = b if vm is a else a
            assert other.name not in text and other.ip not in text
    if a.install in ("user-data", "autoinstall"):
        assert set(da) == {"user-data", "meta-data", "vendor-data", "network-config"}
        for doc in da:
            assert yaml.safe_load(da[doc]) is not None, doc
        assert da["user-data"].startswith("#cloud-config\n")
        meta = yaml.safe_load(da["meta-data"])
        assert meta == {"instance-id": "pvmlab-alpha", "local-hostname": "alpha"}
        net = yaml.safe_load(da["network-config"])
        assert net["ethernets"]["lab"] == {
            "match": {"macaddress": "0e:00:00:00:00:0a"},
            "addresses": ["192.168.105.10/24"],
            "routes": [{"to": "0.0.0.0/0", "via": "192.168.105.1"}],
            "nameservers": {"addresses": ["192.168.105.1"], "search": ["pvmlab.internal"]},
        }
    else:
        assert "192.168.105.10" in da[next(iter(da))]


def test_cloud_image_user_data_and_vendor_data(home: LabHome) -> None:
    with_key(home)
    vm = make(home, "c1", "debian-cloud", install="default", mac="0e:00:00:00:00:0c")
    d = docs(home, vm)
    user = yaml.safe_load(d["user-data"])
    assert user["hostname"] == "c1" and user["fqdn"] == "c1.pvmlab.internal"
    assert user["users"][0]["name"] == "pvmlab"
    assert user["users"][0]["ssh_authorized_keys"] == [KEY]
    vendor = yaml.safe_load(d["vendor-data"])
    assert vendor["phone_home"]["url"] == f"{BASE}/status/0e-00-00-00-00-0c?phase=installed"


def test_autoinstall_user_data(home: LabHome) -> None:
    with_key(home)
    vm = make(home, "u1", "ubuntu-24.04", install="default", mac="0e:00:00:00:00:0d",
              mirror="http://mirror.example:8080/ubuntu", proxy="http://10.0.0.5:3128")  # fmt: skip
    d = docs(home, vm)
    auto = yaml.safe_load(d["user-data"])["autoinstall"]
    assert auto["version"] == 1
    assert auto["identity"]["hostname"] == "u1"
    assert auto["ssh"] == {"install-server": True, "allow-pw": False, "authorized-keys": [KEY]}
    assert auto["apt"]["primary"][0]["uri"] == "http://mirror.example:8080/ubuntu"
    assert auto["proxy"] == "http://10.0.0.5:3128"
    assert auto["late-commands"][-1] == (
        "curl -fsS -X POST -d phase=installed -d message=late-commands+done "
        f"{BASE}/status/0e-00-00-00-00-0d || true"
    )
    # the installer's own phone_home would fire in the live session: none for autoinstall
    assert "phone_home" not in (yaml.safe_load(d["vendor-data"]) or {})


def test_preseed_has_the_machines_facts(home: LabHome) -> None:
    with_key(home)
    vm = make(home, "d1", "debian-12", install="default", mac="0e:00:00:00:00:0e",
              ip="192.168.105.20", mirror="http://192.168.105.1:9/debian")  # fmt: skip
    lines = docs(home, vm)["preseed"].splitlines()
    assert "d-i netcfg/get_hostname string d1" in lines
    assert "d-i netcfg/get_domain string pvmlab.internal" in lines
    assert "d-i mirror/http/hostname string 192.168.105.1:9" in lines
    assert "d-i mirror/http/directory string /debian" in lines
    assert "d-i partman-auto/disk string /dev/vda" in lines
    early = next(x for x in lines if x.startswith("d-i preseed/early_command string "))
    assert "echo PVMLAB-PRESEED-OK d1 > /dev/console" in early
    late = next(x for x in lines if x.startswith("d-i preseed/late_command string "))
    assert f'echo "{KEY}" > /target/home/pvmlab/.ssh/authorized_keys' in late
    assert f"phase=installed&message=late_command+done\" {BASE}/status/0e-00-00-00-00-0e" in late


def test_kickstart_has_the_machines_facts(home: LabHome) -> None:
    with_key(home)
    vm = make(home, "f1", "fedora-42", install="default", mac="0e:00:00:00:00:0f",
              ip="192.168.105.21")  # fmt: skip
    lines = docs(home, vm)["ks"].splitlines()
    assert (
        "network --device=0e:00:00:00:00:0f --bootproto=static --ip=192.168.105.21"
        " --netmask=255.255.255.0 --gateway=192.168.105.1 --nameserver=192.168.105.1"
        " --hostname=f1.pvmlab.internal --activate"
    ) in lines
    assert f'sshkey --username=pvmlab "{KEY}"' in lines
    assert "url --url=https://download.fedoraproject.org/pub/fedora/linux/releases/42/Everything/x86_64/os" in lines  # noqa: E501
    assert f"curl -fsS -X POST -d phase=installed -d message=post+done {BASE}/status/0e-00-00-00-00-0f || true" in lines  # noqa: E501


def test_kickstart_parses_with_pykickstart(home: LabHome) -> None:
    """Anaconda's own parser (pykickstart), for the Fedora version the catalog serves."""
    with_key(home)
    vm = make(home, "f2", "fedora-42", install="default", mac="0e:00:00:00:00:1f",
              ip="192.168.105.22", proxy="http://192.168.105.1:3128")  # fmt: skip
    handler = makeVersion("F42")
    KickstartParser(handler).readKickstartFromString(docs(home, vm)["ks"])
    net = handler.network.network[0]
    assert (net.device, net.bootProto, net.ip, net.gateway) == (
        "0e:00:00:00:00:1f", "static", "192.168.105.22", "192.168.105.1"
    )
    assert (handler.url.proxy, handler.rootpw.lock) == ("http://192.168.105.1:3128", True)
    assert [(k.username, k.key) for k in handler.sshkey.sshUserList] == [("pvmlab", KEY)]
    assert [u.name for u in handler.user.userList] == ["pvmlab"]
    post = [s.script for s in handler.scripts if s.type == KS_SCRIPT_POST]
    assert len(post) == 1 and f"phase=installed -d message=post+done {BASE}/status/" in post[0]
    with pytest.raises(KickstartError, match="unrecognized arguments"):  # the parser is strict
        KickstartParser(makeVersion("F42")).readKickstartFromString("network --bogus=1\n")


@pytest.mark.skipif(shutil.which("debconf-set-selections") is None, reason="needs debconf")
def test_preseed_passes_debconf_check(home: LabHome, tmp_path: Path) -> None:
    """Every line is owner, question, type, value as debconf reads it (its --checkonly)."""
    with_key(home)
    for name, mirror in (("d2", None), ("d3", "https://mirror.example/debian")):
        vm = make(home, name, "debian-12", install="default", mirror=mirror)
        path = tmp_path / f"{name}.cfg"
        path.write_text(docs(home, vm)["preseed"])
        proc = subprocess.run(["debconf-set-selections", "--checkonly", str(path)],
                              capture_output=True, text=True, check=False)  # fmt: skip
        assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    path.write_text("d-i netcfg/get_hostname strang x\n")  # the check does catch a bad line
    proc = subprocess.run(["debconf-set-selections", "--checkonly", str(path)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert "Unknown type" in proc.stderr


def test_no_lab_key_is_said_not_hidden(home: LabHome) -> None:
    cloud = docs(home, make(home, "n1", "debian-cloud", install="default"))
    # no empty list either: cloud-init's schema wants at least one key when the field is there
    assert "ssh_authorized_keys" not in yaml.safe_load(cloud["user-data"])["users"][0]
    assert "NO SSH key (the lab has none yet)" in cloud["user-data"]
    ks = docs(home, make(home, "n2", "fedora-42", install="default"))["ks"]
    assert "sshkey" not in ks and "NO SSH key" in ks
    preseed = docs(home, make(home, "n3", "debian-12", install="default"))["preseed"]
    assert "authorized_keys" not in preseed and "NO SSH key" in preseed


def test_a_key_made_by_ssh_keygen_is_authorised(home: LabHome) -> None:
    home.ssh_public_key.parent.mkdir(parents=True, exist_ok=True)  # `ensure` makes ssh/
    private = home.ssh_public_key.with_suffix("")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pvmlab lab key 1",
                    "-f", str(private)], check=True)  # fmt: skip
    key = home.ssh_public_key.read_text().strip()
    vm = make(home, "k0", "debian-cloud", install="default")
    user = yaml.safe_load(docs(home, vm)["user-data"])
    assert user["users"][0]["ssh_authorized_keys"] == [key]


def test_a_malformed_lab_key_is_refused(home: LabHome) -> None:
    home.ssh_public_key.parent.mkdir(parents=True, exist_ok=True)  # `ensure` makes ssh/
    home.ssh_public_key.write_text("ssh-ed25519 AAAA\"; reboot; echo \"\n")
    with pytest.raises(StateError, match="not one OpenSSH public key line"):
        make(home, "k1", "debian-12", install="default")


# --- kernel command line pointer and boot order ---------------------------------------------


@pytest.mark.parametrize(
    ("distro", "pointer"),
    [
        ("debian-12", "auto=true priority=critical url=http://192.168.105.1/preseed/0e-00-00-00-01-01"
                      " hostname=p1 domain=pvmlab.internal"),
        ("ubuntu-24.04", "autoinstall ds=nocloud-net;s=http://192.168.105.1/nocloud/0e-00-00-00-01-01/"),
        ("fedora-42", "inst.ks=http://192.168.105.1/ks/0e-00-00-00-01-01"),
        ("debian-cloud", "ds=nocloud-net;s=http://192.168.105.1/nocloud/0e-00-00-00-01-01/"),
    ],
)  # fmt: skip
def test_kernel_command_line_points_at_the_configuration(
    home: LabHome, distro: str, pointer: str
) -> None:
    make(home, "p1", distro, install="default", mac="0e:00:00:00:01:01")
    cfg = bootconfig.boot_config(home, store.load_lab(home), "0e:00:00:00:01:01")
    assert cfg is not None and cfg.bootable
    assert cfg.cmdline == f"console=ttyS0 {pointer} initrd=initrd"
    script = render_machine_script(cfg)
    kernel = next(x for x in script.splitlines() if x.startswith("kernel "))
    # the pointer is inside words iPXE passes on as they are: no word is ";" "||" "&&" or "#…"
    assert kernel == f"kernel {BASE}/images/{distro}/x86_64/vmlinuz {cfg.cmdline} || goto failed"


@pytest.mark.parametrize(
    ("firmware", "local_line"),
    [("uefi", "exit 1"), ("bios", "sanboot --no-describe --drive 0x80 || goto failed")],
)
def test_installed_machine_boots_its_disk_until_reinstall(
    home: LabHome, firmware: str, local_line: str
) -> None:
    vm = make(home, "i1", "debian-12", install="default", firmware=firmware,
              mac="0e:00:00:00:02:01")  # fmt: skip
    lab = store.load_lab(home)

    def script() -> list[str]:
        cfg = bootconfig.boot_config(home, lab, vm.mac)
        assert cfg is not None
        return render_machine_script(cfg).splitlines()

    before = script()
    assert any(x.startswith("kernel ") for x in before)
    installcfg.record_status(home, vm, "preseed", "preseed loaded", vm.ip)
    assert script() == before  # a phase on the way is not the end
    installcfg.record_status(home, vm, "installed", "late_command done", vm.ip)
    after = script()
    assert not any(x.startswith(("kernel ", "initrd ")) for x in after)
    assert after[2] == "echo pvmlab: i1 is installed, booting its local disk (pvmlab vm reinstall i1 installs again)"  # noqa: E501
    assert local_line in after
    assert after.index(local_line) < after.index(":failed")

    reinstall(home, "i1")
    assert installcfg.read_status(home, "i1") == {}
    assert script() == before


def test_uefi_http_boot_is_refused_at_once(home: LabHome) -> None:
    """After the script's ``exit 1`` OVMF tries its HTTP Boot entries before the disk. EDK2's
    HTTP Boot retries its DHCP for ~60 s unless an offer carries option 60 "HTTPClient" and a
    URL, so the lab answers with a URL its HTTP server refuses (404): on to the disk at once."""
    conf = dnsmasq.render_conf(home, store.load_lab(home)).splitlines()
    assert "dhcp-vendorclass=set:httpboot,HTTPClient" in conf
    assert "dhcp-option-force=tag:httpboot,60,HTTPClient" in conf
    assert (
        "dhcp-boot=tag:!ipxe,tag:httpboot,tag:!netboot-http,http://192.168.105.1/no-http-boot"
        in conf
    )


def test_status_is_bounded_and_installed_sticks(home: LabHome) -> None:
    vm = make(home, "s1", "debian-12", install="default")
    for i in range(30):
        installcfg.record_status(home, vm, f"step{i}", "x\x1b[31m" * 100, vm.ip)
        if i == 3:
            installcfg.record_status(home, vm, "installed", "", vm.ip)
    status = installcfg.read_status(home, "s1")
    assert status["installed"] is True and status["phase"] == "step29"
    assert len(status["history"]) == installcfg.MAX_HISTORY
    assert len(status["message"]) == installcfg.MAX_MESSAGE and "\x1b" not in status["message"]
    assert home.vm_install_status("s1").stat().st_size < 16 * 1024
    assert installcfg.status_summary(home, vm) == "installed"
    with pytest.raises(ValidationError, match="invalid install phase"):
        installcfg.record_status(home, vm, "../../etc", "", vm.ip)


# --- user templates at create -----------------------------------------------------------------


def test_user_template_is_copied_and_rendered(home: LabHome, tmp_path: Path) -> None:
    mine = tmp_path / "my.preseed"
    mine.write_text("# {{ name }} at {{ ip }} via {{ config_url }}\n{% for d in dns %}ns {{ d }}\n{% endfor %}")  # noqa: E501
    vm = make(home, "m1", "debian-12", install="preseed", install_template=mine,
              mac="0e:00:00:00:03:01", ip="192.168.105.40")  # fmt: skip
    assert vm.install == "preseed" and vm.install_template == str(mine)
    mine.write_text("edited later: {{ nonsense }}")  # the machine keeps what it was given
    assert docs(home, vm)["preseed"] == (
        f"# m1 at 192.168.105.40 via {BASE}/preseed/0e-00-00-00-03-01\nns 192.168.105.1\n"
    )
    with pytest.raises(ValidationError, match="'nonsense' is undefined"):
        reinstall(home, "m1", "preseed", mine)
    (tmp_path / "ok.preseed").write_text("second {{ name }} {{ mirror.url }}\n")
    reinstall(home, "m1", "preseed", tmp_path / "ok.preseed")
    assert docs(home, store.load_vm(home, "m1"))["preseed"] == "second m1 \n"
    reinstall(home, "m1", mirror="http://10.1.1.1/debian")  # keeps the template, new mirror
    assert docs(home, store.load_vm(home, "m1"))["preseed"] == "second m1 http://10.1.1.1/debian\n"
    with pytest.raises(ValidationError, match="invalid proxy"):
        reinstall(home, "m1", proxy="http://x y")
    reinstall(home, "m1", "default")  # back to the shipped preseed; the copy is gone
    assert store.load_vm(home, "m1").install_template is None
    assert not home.vm_install_template("m1").exists()
    assert "d-i preseed/early_command" in docs(home, store.load_vm(home, "m1"))["preseed"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("line one\n{% if name %}\nno end", r"install template .*my\.tmpl, line 2: Unexpected end of template"),  # noqa: E501
        ("a\nb {{ hostnme }}\n", r"install template .*my\.tmpl, line 2: 'hostnme' is undefined"),
        ("{{ name.__class__.__mro__ }}", r"line 1: access to attribute '__class__' of 'str' object is unsafe"),  # noqa: E501
        ("{{ mirror.clear() }}", r"line 1: access to attribute 'clear' of 'dict' object is unsafe"),
        ("{{ 2 ** 100000 }}", r"line 1: exponent larger than 64"),
        ("{{ 'x' * 100000000 }}", r"repeated text longer than 1000000"),
        ("{{ 1 // 0 }}", r"line 1: integer division or modulo by zero"),
    ],
)
def test_bad_templates_are_one_line_errors_at_create(
    home: LabHome, tmp_path: Path, text: str, message: str
) -> None:
    mine = tmp_path / "my.tmpl"
    mine.write_text(text)
    with pytest.raises(ValidationError, match=message) as err:
        make(home, "b1", "debian-12", install="preseed", install_template=mine)
    assert "\n" not in str(err.value)
    assert not home.vm_file("b1").exists() and not home.vm_dir("b1").exists()


def test_cli_errors_are_one_line(home: LabHome, tmp_path: Path) -> None:
    bad = tmp_path / "bad.ks"
    bad.write_text("{% for %}")
    for args, expected in (
        (["--kickstart", str(bad)], "line 1: Expected an expression"),
        (["--kickstart", str(tmp_path / "missing.ks")], "cannot read install template"),
        (["--unattended", "--kickstart", str(bad)], "give at most one of"),
        (["--unattended", "--mirror", "ftp://x"], "invalid mirror"),
    ):
        proc = run_pvmlab("vm", "create", "c1", "--arch", "x86_64", "--distro", "fedora-42",
                          "--disk-size", "1G", *args, home=home.root, check=False)  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and "hint:" in lines[0], proc.stderr
    assert not home.vm_file("c1").exists()


def test_no_shipped_default_for_an_imported_kernel(home: LabHome) -> None:
    store.save_distro(home, DistroAssets(
        name="mykernel", arch="x86_64", kernel_sha256="0" * 64, initrd_sha256="0" * 64,
        kernel_size=1, initrd_size=1,
    ))  # fmt: skip
    with pytest.raises(ValidationError, match="no shipped install configuration"):
        make(home, "x1", "mykernel", install="default")
    with pytest.raises(ValidationError, match="needs a distro"):
        create(home, CreateRequest(name="x2", arch="x86_64", install="default"))
    with pytest.raises(ValidationError, match="no disk for the installer \\(kickstart\\)"):
        make(home, "x3", "fedora-42", install="default", disk_size=None)
    assert make(home, "x4", "debian-cloud", install="default", disk_size=None).install == (
        "user-data"  # a cloud image brings its own root disk
    )


def test_cli_create_reinstall_and_list(home: LabHome) -> None:
    created = json.loads(run_pvmlab(
        "vm", "create", "l1", "--arch", "x86_64", "--distro", "debian-12", "--unattended",
        "--disk-size", "1G", "--json", home=home.root,
    ).stdout)  # fmt: skip
    assert created["install"] == "preseed"
    rows = json.loads(run_pvmlab("vm", "list", "--json", home=home.root).stdout)
    assert [(r["name"], r["install"]) for r in rows] == [("l1", "pending")]
    vm = store.load_vm(home, "l1")
    installcfg.record_status(home, vm, "installed", "", vm.ip)
    table = run_pvmlab("vm", "list", home=home.root).stdout.splitlines()
    assert table[0].split()[-1] == "INSTALL" and table[1].split()[-1] == "installed"
    out = run_pvmlab("vm", "reinstall", "l1", home=home.root).stdout
    assert out.startswith("VM l1 installs again (preseed) at its next network boot")
    rows = json.loads(run_pvmlab("vm", "list", "--json", home=home.root).stdout)
    assert rows[0]["install"] == "pending"
    run_pvmlab("vm", "create", "plain", "--arch", "x86_64", home=home.root)
    proc = run_pvmlab("vm", "reinstall", "plain", home=home.root, check=False)
    assert proc.returncode == 2 and "VM plain has no unattended install" in proc.stderr


def test_neighbour_table_and_peer_check(tmp_path: Path) -> None:
    table = tmp_path / "arp"
    table.write_text(
        "IP address       HW type     Flags       HW address            Mask     Device\n"
        "192.168.105.10   0x1         0x2         0e:00:00:00:00:0a     *        pvbr1\n"
        "192.168.105.11   0x1         0x0         00:00:00:00:00:00     *        pvbr1\n"
        "192.168.105.12   0x1         0x2         0E:00:00:00:00:99     *        pvbr1\n"
    )
    neighbours = installcfg.neighbour_macs(table)
    assert neighbours == {"192.168.105.10": "0e:00:00:00:00:0a",
                          "192.168.105.12": "0e:00:00:00:00:99"}  # fmt: skip
    vm = VMSpec(name="a", arch="x86_64", mac="0e:00:00:00:00:0a", ip="192.168.105.10")
    assert installcfg.peer_problem(vm, "192.168.105.10", neighbours) is None
    assert installcfg.peer_problem(vm, "::ffff:192.168.105.10", neighbours) is None
    assert installcfg.peer_problem(vm, "192.168.105.11", neighbours) == (
        "192.168.105.11 is not the address of VM a"
    )
    spoofed = VMSpec(name="b", arch="x86_64", mac="0e:00:00:00:00:0b", ip="192.168.105.12")
    assert installcfg.peer_problem(spoofed, "192.168.105.12", neighbours) == (
        "192.168.105.12 answers from MAC 0e:00:00:00:00:99, not VM b's"
    )
    assert installcfg.neighbour_macs(tmp_path / "absent") == {}
