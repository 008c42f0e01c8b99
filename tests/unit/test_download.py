"""Downloads: checksum list formats, verification, resume after a cut, cache, offline errors.

The distros' servers are on the internet, which tests cannot reach: a local HTTP server on
127.0.0.1 (tests/mirror/server.py) stands in for them.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirror.server import MirrorState, serve
from pvmlab.assets import download
from pvmlab.assets.download import Checksum, DownloadError


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[str, MirrorState, Path]]:
    root = tmp_path / "srv"
    root.mkdir()
    with serve(root) as (url, state):
        yield url, state, root


def _sum(data: bytes) -> Checksum:
    return Checksum("sha256", hashlib.sha256(data).hexdigest())


def test_parse_gnu_with_dot_slash_paths() -> None:
    text = (
        "aa" * 32
        + "  ./netboot/debian-installer/amd64/linux\n"
        + "bb" * 32
        + " *noble-server-cloudimg-amd64.img\n"
        + "cc" * 64
        + "  debian-12-genericcloud-amd64.qcow2\n"
    )
    sums = download.parse_checksums(text)
    assert sums["netboot/debian-installer/amd64/linux"] == Checksum("sha256", "aa" * 32)
    assert sums["noble-server-cloudimg-amd64.img"] == Checksum("sha256", "bb" * 32)
    assert sums["debian-12-genericcloud-amd64.qcow2"] == Checksum("sha512", "cc" * 64)
    assert download.lookup(sums, "./netboot/debian-installer/amd64/linux", "x").digest == "aa" * 32


def test_parse_fedora_bsd_and_treeinfo() -> None:
    bsd = (
        "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n"
        "# Fedora-Cloud-Base-Generic-42-1.1.x86_64.qcow2: 123 bytes\n"
        "SHA256 (Fedora-Cloud-Base-Generic-42-1.1.x86_64.qcow2) = " + "dd" * 32 + "\n"
        "-----BEGIN PGP SIGNATURE-----\n\nabc=\n-----END PGP SIGNATURE-----\n"
    )
    assert download.parse_checksums(bsd) == {
        "Fedora-Cloud-Base-Generic-42-1.1.x86_64.qcow2": Checksum("sha256", "dd" * 32)
    }
    tree = "[general]\nfamily = Fedora\n\n[checksums]\nimages/pxeboot/vmlinuz = sha256:" + "ee" * 32
    assert download.parse_checksums(tree) == {
        "images/pxeboot/vmlinuz": Checksum("sha256", "ee" * 32)
    }


def test_missing_entry_is_one_line_error() -> None:
    with pytest.raises(DownloadError) as err:
        download.lookup({}, "linux", "http://m/SHA256SUMS")
    assert "no entry for 'linux'" in str(err.value) and "\n" not in str(err.value)


def test_fetch_verifies_and_caches(mirror: tuple[str, MirrorState, Path], tmp_path: Path) -> None:
    url, state, root = mirror
    data = os.urandom(3 * 1024 * 1024 + 17)
    (root / "f.bin").write_bytes(data)
    dest = tmp_path / "out" / "f.bin"
    got = download.fetch(f"{url}/f.bin", dest, expected=_sum(data))
    assert got.downloaded and dest.read_bytes() == data
    assert got.sha256 == hashlib.sha256(data).hexdigest()
    assert not dest.with_name("f.bin.part").exists()
    n = len(state.requests)
    again = download.fetch(f"{url}/f.bin", dest, expected=_sum(data))
    assert not again.downloaded and len(state.requests) == n  # cached: no request at all


def test_corrupt_file_refused_and_nothing_kept(
    mirror: tuple[str, MirrorState, Path], tmp_path: Path
) -> None:
    url, _state, root = mirror
    data = os.urandom(100_000)
    (root / "f.bin").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    dest = tmp_path / "out" / "f.bin"
    with pytest.raises(DownloadError, match="does not match its published checksum"):
        download.fetch(f"{url}/f.bin", dest, expected=_sum(data))
    assert list(dest.parent.iterdir()) == []


def test_cut_download_resumes_with_range(
    mirror: tuple[str, MirrorState, Path], tmp_path: Path
) -> None:
    url, state, root = mirror
    data = os.urandom(2 * 1024 * 1024 + 5)
    (root / "big.bin").write_bytes(data)
    state.cut_once.add("/big.bin")
    dest = tmp_path / "big.bin"
    got = download.fetch(f"{url}/big.bin", dest, expected=_sum(data))
    assert dest.read_bytes() == data and got.downloaded
    gets = state.gets("/big.bin")
    assert len(gets) == 2
    assert gets[0].range is None
    assert gets[1].range == f"bytes={len(data) // 2}-" and gets[1].status == 206


def test_leftover_part_resumes(mirror: tuple[str, MirrorState, Path], tmp_path: Path) -> None:
    url, state, root = mirror
    data = os.urandom(500_000)
    (root / "f.bin").write_bytes(data)
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(data[:123_456])  # left by an interrupted run
    download.fetch(f"{url}/f.bin", dest, expected=_sum(data))
    assert dest.read_bytes() == data
    assert [r.range for r in state.gets("/f.bin")] == ["bytes=123456-"]


def test_complete_part_is_not_fetched_again(
    mirror: tuple[str, MirrorState, Path], tmp_path: Path
) -> None:
    url, state, root = mirror
    data = os.urandom(50_000)
    (root / "f.bin").write_bytes(data)
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(data)
    download.fetch(f"{url}/f.bin", dest, expected=_sum(data))
    assert dest.read_bytes() == data
    assert [r.status for r in state.gets("/f.bin")] == [416]


def test_http_404_and_offline(mirror: tuple[str, MirrorState, Path], tmp_path: Path) -> None:
    url, _state, _root = mirror
    with pytest.raises(DownloadError, match="HTTP 404"):
        download.fetch(f"{url}/nope", tmp_path / "nope")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError) as err:
        download.fetch_text(f"http://127.0.0.1:{port}/SHA256SUMS")
    assert "offline" in (err.value.hint or "") and "\n" not in str(err.value)
    with pytest.raises(DownloadError, match="unsupported URL"):
        download.fetch("file:///etc/passwd", tmp_path / "x")
    assert list(tmp_path.glob("*")) == [tmp_path / "srv"]
