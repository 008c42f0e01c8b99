"""The uplink's pieces that need no namespace: pasta's command line, the NAT table, the DNS part
of dnsmasq's configuration, the lab record's uplink field and the `--uplink` option."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_pvmlab
from pvmlab.errors import DependencyError
from pvmlab.home import LabHome
from pvmlab.network import uplink
from pvmlab.records import store
from pvmlab.records.models import LabSpec
from pvmlab.stack import dnsmasq

LAB = LabSpec(address="192.168.105.1/24", dhcp_start="192.168.105.100",
              dhcp_end="192.168.105.199", uplink=True)


@pytest.fixture
def home(tmp_path: Path) -> LabHome:
    h = LabHome(tmp_path / "home")
    h.ensure()
    return h


def option_values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_pasta_attaches_to_the_lab_namespace_and_forwards_no_port(home: LabHome) -> None:
    argv = uplink.pasta_argv(home)
    assert argv[0] == "pasta"
    assert option_values(argv, "--netns") == [home.netns]
    assert option_values(argv, "--ns-ifname") == [home.uplink_link]
    for flag in ("--tcp-ports", "--udp-ports", "--tcp-ns", "--udp-ns"):
        assert option_values(argv, flag) == ["none"], flag
    assert "--no-map-gw" in argv  # the gateway address is not the host's loopback
    assert "--foreground" in argv  # the PID started is pasta's own
    assert option_values(argv, "--dns-forward") == ["169.254.53.53"]


def test_nat_table_masquerades_the_lab_subnet_behind_the_uplink_only(home: LabHome) -> None:
    br, up = home.bridge, home.uplink_link
    assert uplink.nft_ruleset(home, LAB) == (
        "table ip pvmlab_uplink {\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f'    oifname "{up}" ip saddr 192.168.105.0/24 masquerade\n'
        "  }\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter; policy drop;\n"
        f'    iifname "{br}" oifname "{up}" ip saddr 192.168.105.0/24 accept\n'
        f'    iifname "{up}" oifname "{br}" ct state established,related accept\n'
        "  }\n"
        "  chain input {\n"
        "    type filter hook input priority filter; policy accept;\n"
        f'    iifname "{up}" ct state invalid drop\n'
        "  }\n"
        "}\n"
    )


def test_uplink_interface_name_fits_ifnamsiz(home: LabHome) -> None:
    assert home.uplink_link == f"pvup{home.lab_id}"
    assert len(home.uplink_link) <= 15


def conf_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln and not ln.startswith("#")]


def test_dns_on_the_bridge_forwarded_to_the_uplink_when_the_lab_has_one(home: LabHome) -> None:
    lines = conf_lines(dnsmasq.render_conf(home, LAB))
    assert "port=0" not in lines
    assert "server=169.254.53.53" in lines
    assert "except-interface=lo" in lines
    assert f"interface={home.bridge}" in lines
    assert "no-resolv" in lines and "no-hosts" in lines
    assert "dhcp-option=option:dns-server,192.168.105.1" in lines


def test_dns_stays_off_without_uplink(home: LabHome) -> None:
    lines = conf_lines(dnsmasq.render_conf(home, LAB.model_copy(update={"uplink": False})))
    assert "port=0" in lines
    assert not [ln for ln in lines if ln.startswith(("server=", "except-interface="))]


@pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="dnsmasq is not installed")
def test_dnsmasq_accepts_the_uplink_configuration(home: LabHome) -> None:
    from pvmlab import spawn

    conf = home.configs / "dnsmasq.conf"
    conf.write_text(dnsmasq.render_conf(home, LAB))
    proc = spawn.run(["dnsmasq", "--test", f"--conf-file={conf}"], check=False)
    assert proc.returncode == 0, proc.stderr
    assert "syntax check OK" in proc.stderr


def test_host_resolvers_are_the_nameserver_lines(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("# comment\nsearch lan\nnameserver 10.0.0.53\nnameserver fd00::53\n"
                      "options edns0\n")
    assert uplink.host_resolvers(resolv) == ["10.0.0.53", "fd00::53"]
    assert uplink.host_resolvers(tmp_path / "missing") == []


def test_a_lab_record_without_the_field_has_no_uplink(home: LabHome) -> None:
    home.lab_file.write_text(json.dumps({
        "address": "192.168.105.1/24", "dhcp_start": "192.168.105.100",
        "dhcp_end": "192.168.105.199", "created": "2026-01-01T00:00:00+00:00",
    }))  # fmt: skip
    assert store.load_lab(home).uplink is False


def test_missing_pasta_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(DependencyError) as err:
        uplink.require_programs()
    assert "apt-get install passt" in str(err.value)


def test_status_of_a_lab_without_uplink(home: LabHome) -> None:
    st = uplink.status(home, LAB.model_copy(update={"uplink": False}))
    assert st["enabled"] is False and st["running"] is False and st["pid"] is None


@pytest.mark.parametrize(("flag", "expected"), [((), False), (("--uplink",), True),
                                                (("--no-uplink",), False)])
def test_create_records_the_uplink_choice(
    lab_home: Path, flag: tuple[str, ...], expected: bool
) -> None:
    out = run_pvmlab("provisioner", "create", *flag, "--json", home=lab_home).stdout
    assert json.loads(out)["uplink"] is expected
    assert json.loads((lab_home / "lab.json").read_text())["uplink"] is expected


def test_configure_switches_the_uplink_of_a_defined_lab(lab_home: Path) -> None:
    run_pvmlab("provisioner", "create", home=lab_home)
    out = run_pvmlab("provisioner", "configure", "--uplink", home=lab_home).stdout
    assert out.splitlines()[0] == f"lab in {lab_home}: uplink on"
    assert json.loads((lab_home / "lab.json").read_text())["uplink"] is True
    shown = json.loads(run_pvmlab("provisioner", "configure", "--json", home=lab_home).stdout)
    assert shown["uplink"] is True and shown["running"] is False
    run_pvmlab("provisioner", "configure", "--no-uplink", home=lab_home)
    assert json.loads((lab_home / "lab.json").read_text())["uplink"] is False


def test_configure_without_a_lab_is_one_line(lab_home: Path) -> None:
    lab_home.mkdir()
    proc = run_pvmlab("provisioner", "configure", "--uplink", home=lab_home, check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("pvmlab: error: no lab is defined")
    assert proc.stderr.count("\n") == 1
