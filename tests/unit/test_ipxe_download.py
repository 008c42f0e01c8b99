"""iPXE official builds fetched into the lab's cache, SHA-256 recorded, used when nothing else is.

boot.ipxe.org is on the internet, which tests cannot reach: a local HTTP server on 127.0.0.1
serves the same paths (x86_64-efi/ipxe.efi, arm64-efi/ipxe.efi, undionly.kpxe) with the real
binaries from /usr/local/lib/ipxe.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import run_pvmlab
from mirror.server import MirrorState, serve
from pvmlab.assets import ipxe
from pvmlab.assets.download import DownloadError
from pvmlab.home import LabHome

REAL = Path("/usr/local/lib/ipxe")
pytestmark = pytest.mark.skipif(
    not (REAL / "ipxe-arm64.efi").is_file(), reason="run scripts/install-system-deps.sh first"
)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[str, MirrorState, Path]]:
    root = tmp_path / "boot.ipxe.org"
    (root / "x86_64-efi").mkdir(parents=True)
    (root / "arm64-efi").mkdir()
    shutil.copy(REAL / "ipxe-amd64.efi", root / "x86_64-efi/ipxe.efi")
    shutil.copy(REAL / "ipxe-arm64.efi", root / "arm64-efi/ipxe.efi")
    shutil.copy(REAL / "undionly.kpxe", root / "undionly.kpxe")
    with serve(root) as (url, state):
        yield url, state, root


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_download_then_found_as_last_resort(
    site: tuple[str, MirrorState, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _state, root = site
    monkeypatch.delenv("PVMLAB_IPXE_DIR", raising=False)
    h = LabHome(tmp_path / "home")
    h.ensure()
    empty = tmp_path / "nothing-installed"
    empty.mkdir()
    assert all(b is None for b in ipxe.find_binaries(h, system_dirs=(empty,)).values())

    got = ipxe.download_official(h, base_url=url)
    assert {b.role for b in got} == set(ipxe.FIRST_STAGES)
    found = ipxe.find_binaries(h, system_dirs=(empty,))
    assert found["efi-arm64"] is not None and found["efi-arm64"].source == "download"
    assert found["efi-arm64"].sha256 == _sha(root / "arm64-efi/ipxe.efi")
    recorded = json.loads((h.root / "ipxe.json").read_text())["downloads"]
    assert recorded["bios"]["sha256"] == _sha(root / "undionly.kpxe")
    assert recorded["efi-x86_64"]["url"] == f"{url}/x86_64-efi/ipxe.efi"

    staged = ipxe.stage_into(h, system_dirs=(empty,))
    assert {b.source for b in staged} == {"download"}
    assert (h.tftp / "ipxe-x86_64.efi").read_bytes() == (root / "x86_64-efi/ipxe.efi").read_bytes()


def test_wrong_binary_from_the_server_is_refused(
    site: tuple[str, MirrorState, Path], tmp_path: Path
) -> None:
    url, _state, root = site
    shutil.copy(REAL / "ipxe-amd64.efi", root / "arm64-efi/ipxe.efi")  # x86_64 build, arm64 path
    h = LabHome(tmp_path / "home")
    h.ensure()
    with pytest.raises(DownloadError, match="not a efi-arm64 iPXE binary"):
        ipxe.download_official(h, ("efi-arm64",), base_url=url)
    assert not (h.root / "cache/ipxe/ipxe-arm64.efi").exists()
    assert not list((h.root / "cache/ipxe").glob(".*"))


def test_cli_download_and_dir(
    site: tuple[str, MirrorState, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, state, root = site
    home = tmp_path / "home"
    monkeypatch.setenv("PVMLAB_IPXE_URL", url)
    monkeypatch.delenv("PVMLAB_IPXE_DIR", raising=False)
    out = json.loads(run_pvmlab("distro", "ipxe", "--download", "--json", home=home).stdout)
    assert len(state.gets()) == 3
    assert set(out) == set(ipxe.FIRST_STAGES)  # system builds still win over downloads here
    assert (home / "cache/ipxe/undionly.kpxe").read_bytes() == (root / "undionly.kpxe").read_bytes()

    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(REAL / "undionly.kpxe", mine / "undionly.kpxe")
    out = json.loads(run_pvmlab("distro", "ipxe", "--dir", str(mine), "--json", home=home).stdout)
    assert out["bios"]["source"] == "user-dir" and out["bios"]["path"] == str(
        mine / "undionly.kpxe"
    )
    table = run_pvmlab("distro", "ipxe", home=home).stdout
    assert "user-dir" in table and _sha(mine / "undionly.kpxe") in table

    bad = run_pvmlab("distro", "ipxe", "--dir", str(tmp_path / "nope"), home=home, check=False)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1
