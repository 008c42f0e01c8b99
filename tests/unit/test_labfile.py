"""The lab file: parsed, checked whole, each problem one error naming its line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pvmlab.errors import ValidationError
from pvmlab.labfile.load import parse, read
from pvmlab.labfile.locate import key_lines
from pvmlab.labfile.model import json_schema

GOOD = """\
name = "ci"

[provisioner]
address = "10.9.0.1/24"

[[distros]]
name = "tiny"
arch = "x86_64"
kernel = "assets/vmlinuz"
initrd = "assets/initrd"

[[machines]]
name = "uefi"
arch = "amd64"
distro = "tiny"
ready = { console = "PVMLAB-UP", timeout = 120 }

[[machines]]
name = "node"
count = 3
arch = "x86_64"
firmware = "bios"
distro = "tiny"
memory = 256
"""


def _error(text: str) -> str:
    with pytest.raises(ValidationError) as info:
        parse(text, Path("lab.toml"))
    return str(info.value)


def test_good_file_stamps_out_count() -> None:
    lab = parse(GOOD, Path("/srv/x/lab.toml"))
    assert lab.name == "ci"
    assert [p.name for p in lab.machines] == ["uefi", "node-1", "node-2", "node-3"]
    first = lab.machines[0].decl
    assert first.arch == "x86_64"  # the alias amd64 is normalised
    assert first.ready.pattern == "PVMLAB-UP"
    assert first.ready.timeout == 120
    assert lab.machines[1].decl.memory == 256
    assert lab.machines[1].decl.ready.pattern == "login:"
    assert lab.asset("assets/vmlinuz") == Path("/srv/x/assets/vmlinuz")
    assert lab.distro_for(first) is not None


def test_name_defaults_to_the_file_or_its_directory() -> None:
    body = GOOD.replace('name = "ci"\n', "")
    assert parse(body, Path("/srv/boot-tests.toml")).name == "boot-tests"
    assert parse(body, Path("/srv/my_project/lab.toml")).name == "my-project"


def test_unknown_key_names_its_line() -> None:
    text = GOOD.replace("memory = 256", "memroy = 256")
    assert _error(text).startswith("lab.toml:24: machines[1].memroy: unknown key 'memroy'")


def test_bad_value_names_its_line() -> None:
    text = GOOD.replace("memory = 256", "memory = 12")
    msg = _error(text)
    assert msg.startswith("lab.toml:24: machines[1].memory: memory 12 MiB is out of range")
    assert "\n" not in msg


def test_bad_value_in_an_inline_table_names_the_key_line() -> None:
    text = GOOD.replace("timeout = 120", "timeout = -1")
    assert _error(text).startswith("lab.toml:16: machines[0].ready.timeout:")


def test_bad_regex() -> None:
    text = GOOD.replace('console = "PVMLAB-UP"', 'console = "(unclosed"')
    assert "lab.toml:16: machines[0].ready.console: '(unclosed' is not a valid regular" in _error(
        text
    )


def test_missing_required_key_names_the_table() -> None:
    text = GOOD.replace('arch = "amd64"\n', "")
    assert _error(text).startswith("lab.toml:12: machines[0].arch: 'arch' is required")


def test_duplicate_name_after_count() -> None:
    text = GOOD + '\n[[machines]]\nname = "node-2"\narch = "x86_64"\n'
    msg = _error(text)
    assert msg.startswith(
        "lab.toml:27: machines[2].name: machine 'node-2' is also made by machines[1]"
    )


def test_count_overflowing_the_subnet() -> None:
    text = GOOD.replace('address = "10.9.0.1/24"', 'address = "10.9.0.1/28"').replace(
        "count = 3", "count = 9"
    )
    # /28: 14 hosts, one is the provisioner, the default range takes the upper 7: 6 free.
    msg = _error(text)
    assert msg.startswith(
        "lab.toml:20: machines[1].count: 10 machines need reserved addresses but 10.9.0.0/28 has"
        " room for 6 outside the DHCP range"
    )


def test_bios_on_aarch64_and_ipxe_on_bios() -> None:
    text = GOOD.replace('arch = "amd64"', 'arch = "aarch64"\nfirmware = "bios"')
    assert "legacy BIOS firmware exists only for x86_64" in _error(text)
    text = GOOD.replace("memory = 256", 'boot = "ipxe"')
    assert "needs firmware = 'uefi'" in _error(text)


def test_undeclared_distro() -> None:
    text = GOOD.replace('distro = "tiny"\nready', 'distro = "other"\nready')
    assert _error(text).startswith(
        "lab.toml:15: machines[0].distro: no distro 'other' for x86_64 is declared"
    )


def test_duplicate_distro() -> None:
    text = GOOD.replace("[[machines]]", '[[distros]]\nname = "tiny"\narch = "x86_64"\n'
                        'kernel = "k"\ninitrd = "i"\n\n[[machines]]', 1)
    assert _error(text).startswith("lab.toml:13: distros[1]: distro 'tiny' for x86_64 is declared")


def test_invalid_toml_names_its_line() -> None:
    msg = _error('name = "x"\n[provisioner\n')
    assert msg.startswith("lab.toml:2: invalid TOML:")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="no lab file at"):
        read(tmp_path / "lab.toml")


def test_locator_skips_multiline_values() -> None:
    text = 'a = """\n[[machines]]\nb = 1\n"""\nc = [\n 1,\n]\n[[machines]]\nname = "x"\n'
    lines = key_lines(text)
    assert lines[("a",)] == 1
    assert lines[("c",)] == 5
    assert lines[("machines", 0)] == 8
    assert lines[("machines", 0, "name")] == 9
    assert ("b",) not in lines


def test_published_schema_is_current() -> None:
    published = Path(__file__).parents[2] / "docs" / "lab.schema.json"
    assert json.loads(published.read_text()) == json_schema(), (
        "regenerate with: python scripts/gen_lab_schema.py"
    )


def test_a_distro_is_imported_or_pulled_not_both() -> None:
    pulled = GOOD.replace('kernel = "assets/vmlinuz"\ninitrd = "assets/initrd"', 'pull = "netboot"')
    lab = parse(pulled, Path("lab.toml"))
    assert lab.model.distros[0].pull == "netboot" and lab.model.distros[0].kernel is None
    both = GOOD.replace('initrd = "assets/initrd"', 'initrd = "assets/initrd"\npull = "netboot"')
    assert "give either kernel and initrd (import) or pull, not both" in _error(both)
    neither = GOOD.replace('kernel = "assets/vmlinuz"\ninitrd = "assets/initrd"\n', "")
    assert _error(neither).startswith("lab.toml:6: distros[0]: give kernel and initrd")


def test_net_boot_http_and_its_firmware() -> None:
    from pvmlab.labfile.apply import machine_fingerprint

    plain = parse(GOOD, Path("lab.toml")).machines[0]
    explicit = parse(GOOD.replace('arch = "amd64"', 'arch = "amd64"\nnet_boot = "pxe"'),
                     Path("lab.toml")).machines[0]  # fmt: skip
    http = parse(GOOD.replace('arch = "amd64"', 'arch = "amd64"\nnet_boot = "http"'),
                 Path("lab.toml")).machines[0]  # fmt: skip
    assert (plain.decl.net_boot, http.decl.net_boot) == ("pxe", "http")
    # the default keeps the fingerprints of machines made before the key existed
    assert machine_fingerprint(plain) == machine_fingerprint(explicit)
    assert machine_fingerprint(http) != machine_fingerprint(plain)
    text = GOOD.replace("memory = 256", 'net_boot = "http"')
    assert "net_boot = 'http' (UEFI HTTP Boot) needs firmware = 'uefi'" in _error(text)
