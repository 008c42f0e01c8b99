"""Lab-file keys for IPv6, the loader, Secure Boot and image deploys: parsed, checked with one
error naming the line, passed to `vm create`, and fingerprinted so old files keep theirs."""

from __future__ import annotations

from pathlib import Path

import pytest

from pvmlab.errors import ValidationError
from pvmlab.labfile.apply import _desired_lab, _lab_fingerprint, image_path, machine_fingerprint
from pvmlab.labfile.load import LabFile, parse
from pvmlab.records.models import LabSpec

BASE = """\
name = "keys"

[provisioner]
address = "10.9.0.1/24"

[[machines]]
name = "one"
arch = "x86_64"
"""

SIX = """\
[provisioner]
ipv6 = "fd00:77::/64"
ipv4 = false

[[machines]]
name = "a"
arch = "x86_64"
ipv6 = "fd00:77::10"

[[machines]]
name = "b"
arch = "x86_64"
"""


def _lab(text: str, path: str = "/srv/lab/lab.toml") -> LabFile:
    return parse(text, Path(path))


def _error(text: str) -> str:
    with pytest.raises(ValidationError) as info:
        parse(text, Path("lab.toml"))
    msg = str(info.value)
    assert "\n" not in msg
    return msg


# --- the values as `vm create` and `provisioner create` get them


def test_ipv6_only_lab_becomes_the_spec_provisioner_create_makes() -> None:
    lab = _lab(SIX)
    assert lab.model.provisioner.ipv6 == "fd00:77::1/64"  # the prefix: the provisioner takes ::1
    spec = _desired_lab(lab)
    assert (spec.address, spec.dhcp_start, spec.dhcp_end) == (None, None, None)
    assert spec.ipv6 == "fd00:77::1/64" and not spec.has_ipv4
    assert [p.decl.ipv6 for p in lab.machines] == ["fd00:77::10", None]


def test_dual_stack_lab_keeps_its_ipv4() -> None:
    lab = _lab(BASE.replace('address = "10.9.0.1/24"',
                            'address = "10.9.0.1/24"\nipv6 = "fd00:77::5/64"'))  # fmt: skip
    spec = _desired_lab(lab)
    assert spec.address == "10.9.0.1/24" and spec.ipv6 == "fd00:77::5/64"
    assert spec.dhcp_start is not None


def test_provisioner_fingerprint_of_a_lab_without_ipv6_is_unchanged() -> None:
    # The value the code before IPv6 computed for this file: such labs are not redefined.
    plain = _lab_fingerprint(_desired_lab(_lab(BASE)))
    assert plain == "b185836123a6d99e"
    spec = _desired_lab(_lab(BASE))
    assert plain == _lab_fingerprint(LabSpec.model_validate({**spec.model_dump(), "ipv6": None}))
    six = BASE.replace('address = "10.9.0.1/24"', 'address = "10.9.0.1/24"\nipv6 = "fd00::/64"')
    assert _lab_fingerprint(_desired_lab(_lab(six))) != plain


def test_image_is_a_path_next_to_the_file_or_a_name(tmp_path: Path) -> None:
    (tmp_path / "disk.qcow2").write_bytes(b"")
    text = BASE + 'image = "IMG"\n'
    here = str(tmp_path / "lab.toml")

    def got(value: str) -> Path | None:
        lab = _lab(text.replace("IMG", value), here)
        return image_path(lab, lab.machines[0].decl)

    assert got("disk.qcow2") == tmp_path / "disk.qcow2"  # a file next to the lab file
    assert got("images/d.raw") == tmp_path / "images" / "d.raw"  # a relative path
    assert got("/abs/d.raw") == Path("/abs/d.raw")
    assert got("trixie") == Path("trixie")  # a name for `image ls` / a pulled cloud image
    assert image_path(_lab(BASE), _lab(BASE).machines[0].decl) is None


def test_loader_and_secure_boot_are_read() -> None:
    lab = _lab(BASE + 'loader = "grub"\nsecure_boot = true\n')
    decl = lab.machines[0].decl
    assert (decl.loader, decl.secure_boot) == ("grub", True)
    assert _lab(BASE).machines[0].decl.loader is None  # default: the distro's, as vm create


# --- fingerprints: a new key changes them only when a file uses it

OLD_FINGERPRINT = "892fbaf0d2d968d3"  # BASE's machine, as the code before these keys made it


@pytest.mark.parametrize(
    "extra",
    ['net_boot = "pxe"', "secure_boot = false"],
)
def test_defaults_keep_the_fingerprint(extra: str) -> None:
    plain = machine_fingerprint(_lab(BASE).machines[0])
    assert plain == OLD_FINGERPRINT
    assert machine_fingerprint(_lab(BASE + extra + "\n").machines[0]) == plain


@pytest.mark.parametrize(
    "extra",
    [
        'loader = "grub"',
        'loader = "ipxe"',  # explicit ipxe: a distro's grub no longer applies
        "secure_boot = true",
        'image = "disk.qcow2"',
    ],
)
def test_each_key_changes_the_fingerprint(extra: str) -> None:
    assert machine_fingerprint(_lab(BASE + extra + "\n").machines[0]) != OLD_FINGERPRINT


def test_ipv6_address_changes_the_fingerprint() -> None:
    lab = _lab(SIX)
    moved = _lab(SIX.replace('"fd00:77::10"', '"fd00:77::11"'))
    assert machine_fingerprint(lab.machines[0]) != machine_fingerprint(moved.machines[0])
    assert machine_fingerprint(lab.machines[1]) == machine_fingerprint(moved.machines[1])


# --- errors: one line, naming the line of the key at fault

SIX_BAD = [
    ('ipv6 = "fd00:77::/64"', 'ipv6 = "fd00:77::/48"', "lab.toml:2: provisioner.ipv6:",
     "IPv6 prefix /48 is not usable"),
    ('ipv6 = "fd00:77::/64"', 'ipv6 = "fe80::/64"', "lab.toml:2: provisioner.ipv6:",
     "cannot be a lab prefix"),
    ('ipv6 = "fd00:77::/64"', 'ipv6 = "fd00:77::1000/64"', "lab.toml:2: provisioner.ipv6:",
     "inside the DHCPv6 dynamic range"),
    ('ipv6 = "fd00:77::/64"\n', "", "lab.toml:2: provisioner.ipv4:",
     "ipv4 = false leaves the lab without any address"),
    ("ipv4 = false", 'ipv4 = false\nrange = "10.0.0.5,10.0.0.9"', "lab.toml:4: provisioner.range:",
     "'range' is IPv4, but ipv4 = false"),
    ("ipv4 = false", "ipv4 = false\nuplink = true", "lab.toml:4: provisioner.uplink:",
     "the uplink needs IPv4"),
    ('ipv6 = "fd00:77::10"', 'ipv6 = "fd00:78::10"', "lab.toml:8: machines[0].ipv6:",
     "outside the lab prefix fd00:77::/64"),
    ('ipv6 = "fd00:77::10"', 'ipv6 = "fd00:77::1"', "lab.toml:8: machines[0].ipv6:",
     "is the provisioner's address"),
    ('ipv6 = "fd00:77::10"', 'ipv6 = "fd00:77::1abc"', "lab.toml:8: machines[0].ipv6:",
     "inside the DHCPv6 dynamic range fd00:77::1000-fd00:77::1fff"),
    ('ipv6 = "fd00:77::10"', 'ipv6 = "10.0.0.1"', "lab.toml:8: machines[0].ipv6:",
     "invalid IPv6 address"),
    ('ipv6 = "fd00:77::10"', 'ipv6 = "fd00:77::10"\ncount = 2', "lab.toml:8: machines[0].ipv6:",
     "only with count = 1"),
    ('arch = "x86_64"\n', 'arch = "x86_64"\nipv6 = "fd00:77::10"\n',
     "lab.toml:13: machines[1].ipv6:", "also the address of machines[0]"),
]


@pytest.mark.parametrize(("old", "new", "where", "what"), SIX_BAD)
def test_ipv6_errors_name_their_line(old: str, new: str, where: str, what: str) -> None:
    if old == 'arch = "x86_64"\n':  # the second machine only
        head, tail = SIX.rsplit(old, 1)
        text = head + new + tail
    else:
        text = SIX.replace(old, new, 1)
    msg = _error(text)
    assert msg.startswith(where), msg
    assert what in msg, msg


def test_machine_ipv6_needs_a_lab_prefix() -> None:
    msg = _error(BASE + 'ipv6 = "fd00::10"\n')
    assert msg.startswith("lab.toml:9: machines[0].ipv6: the lab has no IPv6 prefix")


def test_ipv6_only_lab_has_room_below_its_dhcpv6_range() -> None:
    many = SIX.replace('name = "b"', 'name = "b"\ncount = 4094')
    msg = _error(many)
    assert msg.startswith("lab.toml:12: machines[1].count: 4095 machines need IPv6 reservations")
    assert "room for 4094" in msg
    assert len(_lab(SIX.replace('name = "b"', 'name = "b"\ncount = 4093')).machines) == 4094


MACHINE_BAD = [
    ('firmware = "bios"\nsecure_boot = true', "lab.toml:10: machines[0].secure_boot:",
     "secure_boot = true needs firmware = 'uefi'"),
    ('firmware = "bios"\nloader = "grub"', "lab.toml:10: machines[0].loader:",
     "loader = 'grub' (a UEFI program) needs firmware = 'uefi'"),
    ('secure_boot = true\nloader = "ipxe"', "lab.toml:10: machines[0].loader:",
     "the firmware refuses iPXE"),
    ('loader = "pxelinux"', "lab.toml:9: machines[0].loader:", "Input should be 'ipxe' or 'grub'"),
    ('image = "d.qcow2"\ndistro = "tiny"', "lab.toml:9: machines[0].image:",
     "boots no distro"),
    ('image = "d.qcow2"\npreseed = "p.cfg"', "lab.toml:9: machines[0].image:",
     "configured by cloud-init: give user_data (or nothing), not preseed"),
    ('image = "d.qcow2"\nunattended = true', "lab.toml:9: machines[0].image:",
     "not unattended"),
    ('image = " "', "lab.toml:9: machines[0].image:", "image is empty"),
]


@pytest.mark.parametrize(("extra", "where", "what"), MACHINE_BAD)
def test_machine_errors_name_their_line(extra: str, where: str, what: str) -> None:
    msg = _error(BASE + extra + "\n")
    assert msg.startswith(where), msg
    assert what in msg, msg


def test_image_with_user_data_is_fine() -> None:
    decl = _lab(BASE + 'image = "d.qcow2"\nuser_data = "u.yaml"\n').machines[0].decl
    assert decl.image == "d.qcow2" and decl.user_data == "u.yaml"


def test_the_protocols_example_parses() -> None:
    example = Path(__file__).parents[2] / "examples" / "protocols.toml"
    lab = parse(example.read_text(), example)
    got = {p.name: (p.decl.loader, p.decl.secure_boot, p.decl.net_boot) for p in lab.machines}
    assert got == {
        "grub": ("grub", False, "pxe"),
        "sb": (None, True, "pxe"),
        "http": (None, False, "http"),
    }
    assert lab.model.provisioner.ipv6 == "fd00:130::1/64"


def test_every_key_is_documented() -> None:
    from pvmlab.labfile.model import Distro, Machine, Provisioner, Ready

    doc = (Path(__file__).parents[2] / "docs" / "labfile.md").read_text()
    for model in (Provisioner, Machine, Ready, Distro):
        missing = [k for k in model.model_fields if f"`{k}`" not in doc]
        assert not missing, f"{model.__name__}: {missing} not in docs/labfile.md"


def test_create_passes_the_keys_as_vm_create_gets_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `up` hands `vm create` for each key (the records themselves: the integration test)."""
    from pvmlab.home import LabHome
    from pvmlab.labfile import apply
    from pvmlab.vm import define

    got: list[define.CreateRequest] = []
    monkeypatch.setattr(define, "create", lambda _home, req: got.append(req))
    (tmp_path / "u.yaml").write_text("#cloud-config\n")
    text = SIX.replace('name = "b"\narch = "x86_64"\n', 'name = "b"\narch = "x86_64"\n'
                       'image = "trixie"\nuser_data = "u.yaml"\nloader = "grub"\n'
                       "secure_boot = true\n")  # fmt: skip
    lab = _lab(text, str(tmp_path / "lab.toml"))
    home = LabHome(tmp_path / "home")
    for plan in lab.machines:
        apply._create(home, lab, plan, ipv6=plan.decl.ipv6)
    a, b = got
    assert (a.ipv6, a.image, a.loader, a.secure_boot) == ("fd00:77::10", None, None, False)
    assert (b.ipv6, b.image, b.loader, b.secure_boot) == (None, Path("trixie"), "grub", True)
    assert (b.install, b.install_template) == ("user-data", tmp_path / "u.yaml")


def test_up_refuses_an_image_name_nothing_provides_before_any_change(tmp_path: Path) -> None:
    from pvmlab.errors import PvmlabError
    from pvmlab.home import LabHome
    from pvmlab.labfile.apply import _firmware_and_image, up

    lab = _lab(BASE + 'image = "no-such-image"\n', str(tmp_path / "lab.toml"))
    home = LabHome(tmp_path / "home")
    with pytest.raises(PvmlabError) as info:
        up(lab, home, dry_run=True)
    assert str(info.value).startswith("lab.toml: machine one: no image file 'no-such-image'")
    assert not home.root.exists()
    # a cloud image the same file pulls is not looked for before its distro is pulled
    pulled = BASE.replace("[[machines]]", '[[distros]]\nname = "no-such-image"\narch = "x86_64"\n'
                          'pull = "cloud-image"\n\n[[machines]]') + 'image = "no-such-image"\n'
    lab = _lab(pulled, str(tmp_path / "lab.toml"))
    _firmware_and_image(home, lab, lab.machines[0].decl)  # no error


def test_checks_across_keys_give_their_own_hint() -> None:
    msg = _error(SIX.replace("ipv4 = false", 'ipv4 = false\naddress = "10.0.0.1/24"'))
    assert msg == (
        "lab.toml:4: provisioner.address: 'address' is IPv4, but ipv4 = false makes the lab "
        "IPv6-only (hint: drop address for an IPv6-only lab, or drop ipv4 = false for dual stack)"
    )
    msg = _error(BASE + 'firmware = "bios"\nsecure_boot = true\n')
    assert msg.endswith("(hint: use firmware = 'uefi' (the default), or drop secure_boot)")
