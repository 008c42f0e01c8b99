"""The shipped cloud-config documents against cloud-init's own schema.

cloud-init publishes the JSON schema of cloud-config in its package
(``cloudinit/config/schemas/schema-cloud-config-v1.json``); the Debian 12 package is fetched with
apt's ordinary client into the test asset cache (not installed: cloud-init on the test machine
would configure it at its next boot) and the documents are validated with jsonschema. Marked
integration because it needs the Debian archive; it starts no VM.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from fixtures.bootassets import debian_package
from pvmlab.home import LabHome
from pvmlab.records import store
from pvmlab.records.models import DistroAssets, LabSpec
from pvmlab.stack import installcfg
from pvmlab.vm.define import CreateRequest, create

pytestmark = pytest.mark.integration

SCHEMA = Path("usr/lib/python3/dist-packages/cloudinit/config/schemas/schema-cloud-config-v1.json")
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk0bGFiS2V5Rm9yVGVzdHNPbmx5MTIzNDU2Nzg5MA lab"


@pytest.fixture(scope="session")
def cloud_config_schema() -> dict[str, Any]:
    tree = debian_package("cloud-init", SCHEMA, name="cloud-init")
    schema: dict[str, Any] = json.loads((tree / SCHEMA).read_text())
    return schema


def errors(schema: dict[str, Any], text: str) -> list[str]:
    assert text.startswith("#cloud-config\n")
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'.'.join(map(str, e.path))}: {e.message}"
            for e in validator.iter_errors(yaml.safe_load(text))]  # fmt: skip


@pytest.mark.parametrize("with_key", [True, False])
@pytest.mark.parametrize(("distro", "source"), [("ubuntu-24.04", "cloud-image"),
                                                ("ubuntu-24.04", "netboot")])  # fmt: skip
def test_shipped_cloud_config_is_valid(
    tmp_path: Path, cloud_config_schema: dict[str, Any], with_key: bool, distro: str, source: str
) -> None:
    home = LabHome(tmp_path / "home")
    home.ensure()
    store.save_lab(home, LabSpec(dhcp_start="192.168.105.100", dhcp_end="192.168.105.199"))
    folder = store.distro_dir(home, distro, "x86_64")
    folder.mkdir(parents=True)
    store.save_distro(home, DistroAssets(
        name=distro, arch="x86_64", kernel_sha256="0" * 64, initrd_sha256="0" * 64,
        kernel_size=1, initrd_size=1, source=source,
    ))  # fmt: skip
    if with_key:
        home.ssh_public_key.parent.mkdir(parents=True, exist_ok=True)
        home.ssh_public_key.write_text(KEY + "\n")
    req = CreateRequest(name="c1", arch="x86_64", distro=distro, install="default",
                        proxy="http://192.168.105.1:3128", disk_size="1G")  # fmt: skip
    vm = create(home, req)
    assert vm.install == ("user-data" if source == "cloud-image" else "autoinstall")
    lab = store.load_lab(home)
    for doc in ("user-data", "vendor-data"):
        text = installcfg.render_document(home, lab, vm, doc, "http://192.168.105.1")
        assert errors(cloud_config_schema, text) == [], (doc, text)


def test_the_schema_catches_a_wrong_document(cloud_config_schema: dict[str, Any]) -> None:
    bad = (
        "#cloud-config\nusers:\n  - name: x\n    ssh_authorized_keys: []\n"
        "phone_home:\n  urll: x\n"
    )
    found = errors(cloud_config_schema, bad)
    assert len(found) >= 2, found
