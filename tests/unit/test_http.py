"""The lab's HTTP server, run for real on 127.0.0.1 (a free port) and asked with real clients.

http.client sends paths exactly as written (no normalising of ``..`` or percent escapes), so
the traversal tricks reach the server as an attacker would send them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import json
import logging
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from pvmlab import spawn
from pvmlab.errors import StateError, ValidationError
from pvmlab.home import LabHome
from pvmlab.records import store
from pvmlab.records.models import DistroAssets, LabSpec, VMSpec
from pvmlab.stack import connguard, ranges
from pvmlab.stack import http as pvhttp
from pvmlab.stack.connguard import HttpLimits
from pvmlab.stack.endpoint import bind_endpoint

KERNEL = bytes(range(256)) * 4096 + b"kernel-tail"  # ~1 MiB, every byte value
INITRD = b"initrd-" * 3000
SECRET = b"top secret outside the served root\n"
MAC = "0e:00:00:00:00:01"


@dataclass
class Server:
    home: LabHome
    lab: LabSpec
    port: int
    base: str
    loop: asyncio.AbstractEventLoop
    running: pvhttp.HttpServer

    def request(
        self, path: str, method: str = "GET", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, headers=headers or {})
            resp = conn.getresponse()
            body = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
        finally:
            conn.close()

    def log_lines(self, count: int) -> list[dict[str, object]]:
        """The request log once it holds ``count`` lines (the server writes a line just after
        the response has gone out, so the client can be a moment ahead)."""
        path = self.home.logs / "http.log"
        deadline = time.monotonic() + 30
        while True:
            lines = path.read_text().splitlines()
            if len(lines) >= count or time.monotonic() > deadline:
                return [json.loads(line) for line in lines]
            time.sleep(0.05)


def _lab() -> LabSpec:
    return LabSpec(dhcp_start="192.168.105.100", dhcp_end="192.168.105.199")


def add_distro(home: LabHome, name: str = "demo", arch: str = "x86_64", cmdline: str = "quiet"
               ) -> Path:
    folder = store.distro_dir(home, name, arch)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vmlinuz").write_bytes(KERNEL)
    (folder / "initrd").write_bytes(INITRD)
    store.save_distro(home, DistroAssets(
        name=name, arch=arch,  # type: ignore[arg-type]
        kernel_sha256=hashlib.sha256(KERNEL).hexdigest(),
        initrd_sha256=hashlib.sha256(INITRD).hexdigest(),
        kernel_size=len(KERNEL), initrd_size=len(INITRD), cmdline=cmdline,
    ))
    return folder


def add_vm(home: LabHome, name: str, mac: str, distro: str | None = "demo",
           arch: str = "x86_64", cmdline: str | None = None, ip: str = "192.168.105.10") -> None:
    store.save_vm(home, VMSpec(
        name=name, arch=arch, mac=mac, ip=ip, distro=distro, cmdline=cmdline,  # type: ignore[arg-type]
    ))


@contextlib.contextmanager
def serving(tmp_path: Path, limits: HttpLimits | None = None) -> Iterator[Server]:
    """The server on 127.0.0.1 (a free port) in a loop on its own thread."""
    home = LabHome(tmp_path / "home")
    home.ensure()
    (tmp_path / "secret.txt").write_bytes(SECRET)
    add_distro(home)
    add_vm(home, "t1", MAC)
    lab = _lab()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    running = asyncio.run_coroutine_threadsafe(
        pvhttp.start_http(home, lab, bind_endpoint(lab, "127.0.0.1", 0), limits=limits), loop
    ).result(30)
    try:
        port = pvhttp.bound_port(running)
        yield Server(home, lab, port, f"http://127.0.0.1:{port}", loop, running)
    finally:
        asyncio.run_coroutine_threadsafe(running.cleanup(), loop).result(30)
        asyncio.run_coroutine_threadsafe(_finish_tasks(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


async def _finish_tasks() -> None:
    """What asyncio.run does before closing its loop (the supervisor's case): let the
    connections' last callbacks run, then cancel and await whatever task is left."""
    for _ in range(3):
        await asyncio.sleep(0)
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with serving(tmp_path) as running:
        yield running


def script_lines(body: bytes) -> list[str]:
    return body.decode().splitlines()


# --- scripts ------------------------------------------------------------------------------------


def test_boot_ipxe_chains_to_the_per_machine_script(server: Server) -> None:
    status, headers, body = server.request("/boot.ipxe")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    lines = script_lines(body)
    assert lines[0] == "#!ipxe"
    chain = [line for line in lines if line.startswith("chain ")]
    assert chain == [
        f"chain {server.base}/ipxe?mac=${{net0/mac:hexhyp}}&arch=${{buildarch}}"
        "&platform=${platform} || goto no_boot"
    ]
    assert lines[-1] == "exit 1"


def test_machine_script_names_kernel_initrd_and_cmdline(server: Server) -> None:
    status, headers, body = server.request(
        "/ipxe?mac=0e-00-00-00-00-01&arch=x86_64&platform=efi"
    )
    assert status == 200
    assert headers["x-pvmlab-boot"] == "boot"
    lines = script_lines(body)
    assert lines[0] == "#!ipxe"
    kernel_url = f"{server.base}/images/demo/x86_64/vmlinuz"
    initrd_url = f"{server.base}/images/demo/x86_64/initrd"
    assert f"kernel {kernel_url} quiet initrd=initrd console=ttyS0 || goto failed" in lines
    assert f"initrd --name initrd {initrd_url} || goto failed" in lines
    assert "boot || goto failed" in lines
    assert lines.index(next(x for x in lines if x.startswith("kernel "))) < lines.index(
        next(x for x in lines if x.startswith("initrd "))
    )
    # the URLs in the script really serve the distro's files
    for url, content in ((kernel_url, KERNEL), (initrd_url, INITRD)):
        st, _, got = server.request(url.removeprefix(server.base))
        assert st == 200
        assert got == content


def test_machine_script_uses_the_vms_own_cmdline(server: Server) -> None:
    add_vm(server.home, "t2", "0e:00:00:00:00:02", cmdline="console=ttyS1 ip=dhcp",
           ip="192.168.105.11")
    _, _, body = server.request("/ipxe?mac=0E:00:00:00:00:02")  # any MAC spelling
    kernel = [x for x in script_lines(body) if x.startswith("kernel ")]
    assert kernel == [
        f"kernel {server.base}/images/demo/x86_64/vmlinuz console=ttyS1 ip=dhcp initrd=initrd"
        " || goto failed"
    ]


def test_script_urls_for_unusual_file_names_are_served(server: Server) -> None:
    folder = store.distro_dir(server.home, "odd", "x86_64")
    folder.mkdir(parents=True)
    (folder / "linux+6.1").write_bytes(KERNEL)
    (folder / "initrd_6.1.gz").write_bytes(INITRD)
    store.save_distro(server.home, DistroAssets(
        name="odd", arch="x86_64", kernel="linux+6.1", initrd="initrd_6.1.gz",
        kernel_sha256="1" * 64, initrd_sha256="2" * 64, kernel_size=1, initrd_size=1,
    ))
    add_vm(server.home, "odd", "0e:00:00:00:00:0a", distro="odd", ip="192.168.105.30")
    _, _, body = server.request("/ipxe?mac=0e-00-00-00-00-0a")
    urls = [w for x in script_lines(body) if x.startswith(("kernel ", "initrd "))
            for w in x.split() if w.startswith("http://")]
    assert len(urls) == 2
    for url, content in zip(urls, (KERNEL, INITRD), strict=True):
        assert "%" not in url
        status, _, got = server.request(url.removeprefix(server.base))
        assert (status, got) == (200, content)


def test_vm_defined_while_running_is_served_at_once(server: Server) -> None:
    _, headers, _ = server.request("/ipxe?mac=0e-00-00-00-00-03")
    assert headers["x-pvmlab-boot"] == "unknown"
    add_vm(server.home, "late", "0e:00:00:00:00:03", ip="192.168.105.12")
    _, headers, body = server.request("/ipxe?mac=0e-00-00-00-00-03")
    assert headers["x-pvmlab-boot"] == "boot"
    assert "booting late " in body.decode()


def _assert_refusal(body: bytes, *needles: str) -> None:
    lines = script_lines(body)
    assert lines[0] == "#!ipxe"
    assert lines[-1] == "exit 1"
    assert not any(x.split()[0] in ("kernel", "initrd", "boot", "chain") for x in lines[1:])
    text = "\n".join(x for x in lines if x.startswith("echo "))
    for needle in needles:
        assert needle in text


def test_unknown_mac_gets_echo_and_exit(server: Server) -> None:
    status, headers, body = server.request("/ipxe?mac=0e-aa-bb-cc-dd-ee&arch=arm64&platform=efi")
    assert status == 200  # iPXE must run it, so it can say why
    assert headers["x-pvmlab-boot"] == "unknown"
    _assert_refusal(body, "0e:aa:bb:cc:dd:ee")


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?mac=",
        "?mac=zz-zz-zz-zz-zz-zz",
        "?mac=ff-ff-ff-ff-ff-ff",
        "?mac=01-00-5e-00-00-01",
        "?mac=0e-00-00-00-00-01%0Akernel%20http://evil/x",
        "?mac=%24%7Bnet0/mac%7D",
    ],
)
def test_bad_mac_parameter_gets_echo_and_exit(server: Server, query: str) -> None:
    status, headers, body = server.request(f"/ipxe{query}")
    assert status == 200
    assert headers["x-pvmlab-boot"] == "refused"
    _assert_refusal(body)
    assert b"evil" not in body
    assert b"${" not in body


def test_vm_without_distro_explains(server: Server) -> None:
    add_vm(server.home, "bare", "0e:00:00:00:00:04", distro=None, ip="192.168.105.13")
    _, headers, body = server.request("/ipxe?mac=0e-00-00-00-00-04")
    assert headers["x-pvmlab-boot"] == "refused"
    _assert_refusal(body, "VM bare has no distro")


def test_vm_whose_distro_is_missing_for_its_arch_explains(server: Server) -> None:
    add_vm(server.home, "armvm", "0e:00:00:00:00:05", arch="aarch64", ip="192.168.105.14")
    _, headers, body = server.request("/ipxe?mac=0e-00-00-00-00-05")
    assert headers["x-pvmlab-boot"] == "refused"
    _assert_refusal(body, "distro demo is not present for aarch64")


# --- static files ---------------------------------------------------------------------------------


def test_range_request_returns_the_right_bytes(server: Server) -> None:
    status, headers, body = server.request(
        "/images/demo/x86_64/vmlinuz", headers={"Range": "bytes=1000-1999"}
    )
    assert status == 206
    assert headers["content-range"] == f"bytes 1000-1999/{len(KERNEL)}"
    assert body == KERNEL[1000:2000]
    status, headers, body = server.request(
        "/images/demo/x86_64/vmlinuz", headers={"Range": "bytes=-11"}
    )
    assert status == 206
    assert body == b"kernel-tail"


KERNEL_URL = "/images/demo/x86_64/vmlinuz"


@pytest.mark.parametrize(
    "spec", ["bytes=-0", f"bytes={len(KERNEL)}-", f"bytes={len(KERNEL)}-9999999"]
)
def test_unsatisfiable_ranges_are_416_with_the_length(server: Server, spec: str) -> None:
    status, headers, body = server.request(KERNEL_URL, headers={"Range": spec})
    assert status == 416
    assert headers["content-range"] == f"bytes */{len(KERNEL)}"
    assert KERNEL[:100] not in body


@pytest.mark.parametrize(
    "spec",
    [
        "bytes=0-1,5-9",  # several ranges: the whole file, as most servers answer
        "bytes=0-0, -1",
        "items=0-9",  # another unit
        "bytes=abc",  # not a range
        "bytes=9-0",  # last before first: an invalid range-spec, ignored
        "bytes=-",
    ],
)
def test_ranges_the_rfc_lets_a_server_ignore_get_the_whole_file(server: Server, spec: str) -> None:
    status, headers, body = server.request(KERNEL_URL, headers={"Range": spec})
    assert status == 200
    assert "content-range" not in headers
    assert body == KERNEL


def test_if_range_with_the_current_etag_gets_the_range(server: Server) -> None:
    _, head, _ = server.request(KERNEL_URL, method="HEAD")
    etag = head["etag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    status, headers, body = server.request(
        KERNEL_URL, headers={"Range": "bytes=10-19", "If-Range": etag}
    )
    assert (status, headers["content-range"], body) == (
        206, f"bytes 10-19/{len(KERNEL)}", KERNEL[10:20]
    )
    # the same date as Last-Modified also matches
    status, _, body = server.request(
        KERNEL_URL, headers={"Range": "bytes=10-19", "If-Range": head["last-modified"]}
    )
    assert (status, body) == (206, KERNEL[10:20])


@pytest.mark.parametrize(
    "validator",
    ['"0-stale"', 'W/"{etag}"', "Thu, 01 Jan 1998 00:00:00 GMT", "not a validator"],
)
def test_if_range_with_a_stale_validator_gets_the_whole_file(
    server: Server, validator: str
) -> None:
    _, head, _ = server.request(KERNEL_URL, method="HEAD")
    value = validator.format(etag=head["etag"].strip('"'))
    status, headers, body = server.request(
        KERNEL_URL, headers={"Range": "bytes=10-19", "If-Range": value}
    )
    assert status == 200
    assert "content-range" not in headers
    assert body == KERNEL


def test_a_file_replaced_since_the_etag_gets_whole(server: Server) -> None:
    _, head, _ = server.request(KERNEL_URL, method="HEAD")
    path = store.distro_dir(server.home, "demo", "x86_64") / "vmlinuz"
    new = b"new kernel " * 100
    path.write_bytes(new)
    status, _, body = server.request(
        KERNEL_URL, headers={"Range": "bytes=0-3", "If-Range": head["etag"]}
    )
    assert (status, body) == (200, new)


def test_suffix_and_open_ranges(server: Server) -> None:
    status, headers, body = server.request(KERNEL_URL, headers={"Range": "bytes=-99999999"})
    assert (status, headers["content-range"], body) == (
        206, f"bytes 0-{len(KERNEL) - 1}/{len(KERNEL)}", KERNEL
    )
    status, headers, body = server.request(KERNEL_URL, headers={"Range": "Bytes = 5-"})
    assert (status, headers["content-range"], body) == (
        206, f"bytes 5-{len(KERNEL) - 1}/{len(KERNEL)}", KERNEL[5:]
    )


def test_head_ignores_range(server: Server) -> None:
    status, headers, body = server.request(
        KERNEL_URL, method="HEAD", headers={"Range": "bytes=0-9"}
    )
    assert (status, int(headers["content-length"]), body) == (200, len(KERNEL), b"")


def test_head_has_length_and_no_body(server: Server) -> None:
    status, headers, body = server.request("/images/demo/x86_64/vmlinuz", method="HEAD")
    assert status == 200
    assert int(headers["content-length"]) == len(KERNEL)
    assert headers.get("accept-ranges") == "bytes"
    assert body == b""


def test_full_file(server: Server) -> None:
    status, _, body = server.request("/images/demo/x86_64/initrd")
    assert status == 200
    assert body == INITRD


@pytest.mark.parametrize(
    "path",
    [
        "/images/../secret.txt",
        "/images/../../secret.txt",
        "/images/demo/../../../secret.txt",
        "/images/demo/x86_64/../../../../secret.txt",
        "/images/%2e%2e/%2e%2e/secret.txt",
        "/images/%2E%2E/%2E%2E/secret.txt",
        "/images/demo/x86_64/%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret.txt",
        "/images/..%2f..%2fsecret.txt",
        "/images/demo%2Fx86_64%2Fvmlinuz",
        "/images/%2Fetc%2Fpasswd",
        "/images//etc/passwd",
        "/images///etc/passwd",
        "/images/demo/x86_64/..%5c..%5c..%5csecret.txt",
        "/images/.%2e/.%2e/secret.txt",
        "/images/demo/./x86_64/vmlinuz",
        "/tftp/../secret.txt",
        "/tftp/%2e%2e/secret.txt",
    ],
)
def test_traversal_is_refused(server: Server, path: str) -> None:
    status, _, body = server.request(path)
    assert status == 403, (path, status, body)
    assert SECRET not in body
    assert b"root:" not in body


def test_absolute_path_in_request_line_is_refused(server: Server) -> None:
    # An absolute-form request target naming a file path, not the served tree.
    status, _, body = server.request("/images/etc/passwd")
    assert status == 404
    assert b"root:" not in body


def test_symlink_out_of_root_refused_and_inside_allowed(server: Server, tmp_path: Path) -> None:
    folder = store.distro_dir(server.home, "demo", "x86_64")
    (folder / "escape").symlink_to(tmp_path / "secret.txt")
    (folder / "escape-rel").symlink_to(Path("../../../../secret.txt"))
    (folder / "etc").symlink_to("/etc")
    (folder / "inside").symlink_to("vmlinuz")
    (server.home.images / "alias").symlink_to("demo")
    for path in ("/images/demo/x86_64/escape", "/images/demo/x86_64/escape-rel",
                 "/images/demo/x86_64/etc/passwd"):
        status, _, body = server.request(path)
        assert status == 403, path
        assert SECRET not in body and b"root:" not in body
    status, _, body = server.request("/images/demo/x86_64/inside")
    assert (status, body) == (200, KERNEL)
    status, _, body = server.request("/images/alias/x86_64/initrd")
    assert (status, body) == (200, INITRD)


def test_directories_and_missing_files_are_404(server: Server) -> None:
    assert server.request("/images/demo/x86_64")[0] == 404
    assert server.request("/images/demo/x86_64/nothing")[0] == 404
    assert server.request("/nothing")[0] == 404


def test_tftp_files_over_http(server: Server) -> None:
    (server.home.tftp / "undionly.kpxe").write_bytes(b"first stage")
    assert server.request("/tftp/undionly.kpxe")[2] == b"first stage"


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox is not installed")
def test_busybox_wget_fetches_kernel_byte_identical(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "k"
    subprocess.run(
        ["busybox", "wget", "-q", "-O", str(out), f"{server.base}/images/demo/x86_64/vmlinuz"],
        check=True, timeout=60,
    )
    assert out.read_bytes() == KERNEL


# --- /config -------------------------------------------------------------------------------------


def test_config_json(server: Server) -> None:
    status, headers, body = server.request("/config/0e-00-00-00-00-01")
    assert status == 200
    assert headers["content-type"].startswith("application/json")
    cfg = json.loads(body)
    assert cfg["vm"] == "t1"
    assert cfg["mac"] == MAC
    assert cfg["ip"] == "192.168.105.10"
    assert cfg["bootable"] is True
    assert cfg["problem"] is None
    assert cfg["kernel_url"] == f"{server.base}/images/demo/x86_64/vmlinuz"
    assert cfg["kernel_sha256"] == hashlib.sha256(KERNEL).hexdigest()
    assert cfg["cmdline"] == "quiet initrd=initrd console=ttyS0"


def test_config_json_unknown_and_bad(server: Server) -> None:
    status, _, body = server.request("/config/0e-00-00-00-00-99")
    assert status == 404
    assert json.loads(body)["mac"] == "0e:00:00:00:00:99"
    status, _, body = server.request("/config/not-a-mac")
    assert status == 400
    assert "error" in json.loads(body)


# --- request log ---------------------------------------------------------------------------


def test_request_log_has_one_json_line_per_request(server: Server) -> None:
    server.request("/boot.ipxe")
    server.request("/ipxe?mac=0e-00-00-00-00-01&arch=x86_64&platform=efi")
    server.request("/images/demo/x86_64/vmlinuz")
    server.request("/images/demo/x86_64/vmlinuz", headers={"Range": "bytes=0-99"})
    server.request("/images/demo/x86_64/initrd", method="HEAD")
    server.request("/images/../secret.txt")
    entries = server.log_lines(6)
    assert len(entries) == 6
    for e in entries:
        assert {"time", "start", "end", "duration", "client", "method", "path", "status",
                "bytes"} <= set(e)
        assert e["client"] == "127.0.0.1"
        assert isinstance(e["start"], float) and isinstance(e["end"], float)
        assert e["start"] <= e["end"]
    boot, machine, full, part, head, bad = entries
    assert (boot["path"], boot["status"]) == ("/boot.ipxe", 200)
    assert machine["mac"] == MAC and machine["vm"] == "t1" and machine["outcome"] == "boot"
    assert machine["arch"] == "x86_64" and machine["platform"] == "efi"
    assert (full["status"], full["bytes"], full["complete"]) == (200, len(KERNEL), True)
    assert (part["status"], part["bytes"], part["range"]) == (206, 100, "bytes=0-99")
    assert (head["method"], head["bytes"]) == ("HEAD", 0)
    assert (bad["path"], bad["status"]) == ("/images/../secret.txt", 403)
    starts = [float(e["start"]) for e in entries]  # type: ignore[arg-type]
    assert starts == sorted(starts)


# --- start-up -------------------------------------------------------------------------------------


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    home = LabHome(tmp_path / "home")
    home.ensure()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def attempt() -> None:
            runner = await pvhttp.start_http(home, _lab(), bind_endpoint(_lab(), "127.0.0.1", port))
            await runner.cleanup()

        with pytest.raises(StateError, match="cannot serve HTTP"):
            asyncio.run(attempt())


def test_scripts_point_at_the_provisioner_when_bound_to_all() -> None:
    assert bind_endpoint(_lab(), "0.0.0.0", 80).base_url == "http://192.168.105.1"  # noqa: S104
    assert bind_endpoint(_lab(), "192.168.105.1", 8080).base_url == "http://192.168.105.1:8080"


# --- rendering -----------------------------------------------------------------------------------


def test_no_newline_can_reach_a_script() -> None:
    with pytest.raises(ValueError, match="control character"):
        pvhttp.render_boot_script("http://x\nkernel http://evil")


def test_echo_text_drops_what_ipxe_would_interpret() -> None:
    assert pvhttp.echo_text("a ${x} || b ; # c && d\n e") == "a {x} b c d e"
    script = pvhttp.render_refusal("no VM ${net0/mac} # here")
    assert "${" not in script and " # " not in script


def test_manual_entry_point_serves(tmp_path: Path) -> None:
    home = LabHome(tmp_path / "home")
    home.ensure()
    argv = [sys.executable, "-m", "pvmlab.stack.http", "--home", str(home.root), "--port", "0"]
    with spawn.spawn(argv, stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        banner = proc.stdout.readline().decode()
        assert banner.startswith(f"serving {home.root} on http://127.0.0.1:")
        port = int(banner.split("http://127.0.0.1:")[1].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/boot.ipxe")
        body = conn.getresponse().read().decode()
        conn.close()
        assert body.startswith("#!ipxe")
        assert f"chain http://127.0.0.1:{port}/ipxe?mac=" in body


def test_app_routes() -> None:
    app = pvhttp.make_app(LabHome(Path("/nonexistent")), _lab(), "http://x")
    paths = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    assert {"/boot.ipxe", "/ipxe", "/config/{mac}", "/images/{path}", "/tftp/{path}"} <= paths
    assert isinstance(app, web.Application)


# --- connection limits (stack.connguard) ----------------------------------------------------------

QUICK = HttpLimits(max_connections=16, idle_timeout=0.4, header_timeout=0.6, body_timeout=0.6)


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.settimeout(20)
    return sock


def _closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed its end (EOF or reset); waits up to the socket timeout."""
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_an_idle_connection_is_closed_after_the_idle_timeout(tmp_path: Path) -> None:
    with serving(tmp_path, QUICK) as srv, _connect(srv.port) as sock:
        opened = time.monotonic()
        assert _closed_by_server(sock)
        assert time.monotonic() - opened >= QUICK.idle_timeout * 0.9
        assert srv.running.guard.counts["timed_out"] == 1


def test_a_keep_alive_connection_is_closed_after_its_last_response(tmp_path: Path) -> None:
    with serving(tmp_path, QUICK) as srv, _connect(srv.port) as sock:
        sock.sendall(b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\n\r\n")
        head = sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert _closed_by_server(sock)


def test_slowloris_is_closed_after_the_header_timeout_though_it_keeps_sending(
    tmp_path: Path,
) -> None:
    limits = HttpLimits(max_connections=16, idle_timeout=30, header_timeout=0.5, body_timeout=30)
    with serving(tmp_path, limits) as srv, _connect(srv.port) as sock:
        sock.sendall(b"GET /boot.ipxe HTTP/1.1\r\n")
        began = time.monotonic()
        closed = False
        for i in range(200):  # a header line every 50 ms, for up to 10 s
            try:
                sock.sendall(f"X-Slow-{i}: y\r\n".encode())
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.05)
        closed = closed or _closed_by_server(sock)
        assert closed
        assert time.monotonic() - began < 10  # long before the idle timeout of 30 s
        assert srv.running.guard.counts["timed_out"] == 1


def test_a_body_that_never_comes_is_408(tmp_path: Path) -> None:
    with serving(tmp_path, QUICK) as srv, _connect(srv.port) as sock:
        sock.sendall(b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout")
        assert b"request body not received within 0.6 s" in answer


def test_a_client_leaving_mid_request_leaves_nothing_behind(tmp_path: Path) -> None:
    with serving(tmp_path, QUICK) as srv:
        with _connect(srv.port) as sock:
            sock.sendall(b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
            deadline = time.monotonic() + 10  # until the server is reading the body
            while time.monotonic() < deadline:
                stats = srv.running.guard.stats()
                if (stats["open"], stats["idle"]) == (1, 0):
                    break
                time.sleep(0.01)
            assert (stats["open"], stats["idle"]) == (1, 0), stats
        deadline = time.monotonic() + 10
        while srv.running.guard.stats()["open"] and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        stats = srv.running.guard.stats()
        assert (stats["open"], stats["idle"], stats["timed_out"]) == (0, 0, 0), stats


def test_malformed_requests_get_400_and_one_short_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with serving(tmp_path, QUICK) as srv:
        for request in (b"NOT\x01HTTP\r\n\r\n", b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
                        b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n"):
            with _connect(srv.port) as sock:
                sock.sendall(request)
                answer = sock.recv(4096)
                assert answer.split(b" ", 2)[1:2] == [b"400"], answer[:80]
        entries = srv.log_lines(3)
    assert [e["status"] for e in entries] == [400, 400, 400]
    assert "Traceback" not in caplog.text
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert problems and all("\n" not in r.getMessage() for r in problems)
    assert all(r.getMessage().startswith("Error handling request from 127.0.0.1: 400")
               for r in problems)


def test_at_the_cap_a_new_connection_replaces_the_longest_idle(tmp_path: Path) -> None:
    limits = HttpLimits(max_connections=16, idle_timeout=60, header_timeout=60, body_timeout=60)
    with serving(tmp_path, limits) as srv, contextlib.ExitStack() as held:
        socks = []
        for _ in range(16):  # keep-alive connections, idle after one response each
            sock = held.enter_context(_connect(srv.port))
            sock.sendall(b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
            socks.append(sock)
        time.sleep(connguard.EVICTABLE_AFTER + 0.1)  # old enough to make room
        status, _, body = srv.request("/boot.ipxe")  # the 17th connection
        assert status == 200 and body.startswith(b"#!ipxe")
        socks[0].settimeout(5)
        assert _closed_by_server(socks[0])  # the one idle for longest made room
        for kept in socks[1:]:
            kept.settimeout(0.05)
            assert not _closed_by_server(kept)
        assert srv.running.guard.counts["evicted"] == 1
        assert srv.running.guard.counts["peak"] == 16


def test_a_request_takes_the_place_of_a_silent_connection_however_young(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of silent connections (deferred by the kernel, then accepted together) fills the
    cap with connections too young to go by age; a request that arrives then is still served,
    in the place of one that never sent a byte."""
    monkeypatch.setattr(connguard, "EVICTABLE_AFTER", 3600.0)  # none may go by age
    limits = HttpLimits(max_connections=16, idle_timeout=5, header_timeout=60, body_timeout=60)
    with serving(tmp_path, limits) as srv, contextlib.ExitStack() as held:
        silent = [held.enter_context(_connect(srv.port)) for _ in range(16)]
        deadline = time.monotonic() + 40  # the kernel lets them through after the deferral
        while srv.running.guard.stats()["open"] < 16 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert srv.running.guard.stats()["open"] == 16
        status, _, body = srv.request("/boot.ipxe")  # the 17th connection, with a request
        assert status == 200 and body.startswith(b"#!ipxe")
        counts = srv.running.guard.counts
        assert (counts["evicted"], counts["refused"], counts["peak"]) == (1, 0, 16), counts
        closed = 0
        for sock in silent:
            sock.settimeout(0.05)
            closed += _closed_by_server(sock)
        assert closed == 1


def test_idle_connections_wait_in_the_kernel_until_they_send(tmp_path: Path) -> None:
    """TCP_DEFER_ACCEPT: a connection that sends nothing does not reach the server (no
    descriptor, no accept) until it sends a byte or the idle timeout is up."""
    limits = HttpLimits(max_connections=16, idle_timeout=60, header_timeout=60, body_timeout=60)
    with serving(tmp_path, limits) as srv, contextlib.ExitStack() as held:
        silent = [held.enter_context(_connect(srv.port)) for _ in range(40)]
        status, _, _ = srv.request("/boot.ipxe")
        assert status == 200
        assert srv.running.guard.counts["accepted"] == 1
        silent[0].sendall(b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\n\r\n")
        assert silent[0].recv(65536).startswith(b"HTTP/1.1 200 OK")
        assert srv.running.guard.counts["accepted"] == 2


def test_when_every_connection_is_busy_new_ones_are_refused_with_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    limits = HttpLimits(max_connections=16, idle_timeout=60, header_timeout=60, body_timeout=60)
    with serving(tmp_path, limits) as srv, contextlib.ExitStack() as held:
        for _ in range(16):  # each waits for a body that does not come: busy
            sock = held.enter_context(_connect(srv.port))
            sock.sendall(b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
        deadline = time.monotonic() + 20
        while srv.running.guard.stats()["open"] < 16 and time.monotonic() < deadline:
            time.sleep(0.02)
        for _ in range(5):
            with _connect(srv.port) as extra:
                extra.sendall(b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\n\r\n")
                assert _closed_by_server(extra)
        assert srv.running.guard.counts["refused"] == 5
    refusals = [r.getMessage() for r in caplog.records if "over the cap" in r.getMessage()]
    assert refusals == ["17 connections open, over the cap of 16; refusing new ones"]


def test_limits_from_the_environment() -> None:
    env = {"PVMLAB_HTTP_MAX_CONNECTIONS": "300", "PVMLAB_HTTP_IDLE_TIMEOUT": "2.5",
           "PVMLAB_HTTP_HEADER_TIMEOUT": "", "PVMLAB_HTTP_BODY_TIMEOUT": "7",
           "PVMLAB_HTTP_SEND_STALL_TIMEOUT": "90"}
    assert HttpLimits.from_env(env) == HttpLimits(300, 2.5, 10.0, 7.0, 90.0)
    for bad in ({"PVMLAB_HTTP_IDLE_TIMEOUT": "nan"}, {"PVMLAB_HTTP_IDLE_TIMEOUT": "0"},
                {"PVMLAB_HTTP_MAX_CONNECTIONS": "1.5"}, {"PVMLAB_HTTP_BODY_TIMEOUT": "x"}):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            HttpLimits.from_env(bad)


def test_the_cap_stays_below_the_descriptor_limit() -> None:
    cap = connguard.connection_cap
    assert cap(HttpLimits(max_connections=1024), 20000, 1024) == 1024
    assert cap(HttpLimits(max_connections=1024), 1536, 256) == 1536 - 256 - 512
    assert cap(HttpLimits(max_connections=1024), 100, 1024) == connguard.MIN_CAP
    soft = connguard.raise_fd_limit()
    assert soft == resource.getrlimit(resource.RLIMIT_NOFILE)[1]


# --- stack.ranges, the decision alone -------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "header", "if_range", "expected"),
    [
        ("GET", None, None, (ranges.Outcome.WHOLE, None)),
        ("GET", "bytes=0-99", None, (ranges.Outcome.PART, "bytes=0-99")),
        ("GET", " BYTES = 5 - ", None, (ranges.Outcome.WHOLE, None)),  # spaces inside a spec
        ("GET", "Bytes= 5-", None, (ranges.Outcome.PART, "bytes=5-")),
        ("GET", "bytes=-10", None, (ranges.Outcome.PART, "bytes=-10")),
        ("GET", "bytes=-0", None, (ranges.Outcome.UNSATISFIABLE, None)),
        ("GET", "bytes=1000-", None, (ranges.Outcome.UNSATISFIABLE, None)),
        ("GET", "bytes=999-5000", None, (ranges.Outcome.PART, "bytes=999-5000")),
        ("GET", "bytes=0-1,3-4", None, (ranges.Outcome.WHOLE, None)),
        ("GET", "bytes=0-9", '"abc-3e8"', (ranges.Outcome.PART, "bytes=0-9")),
        ("GET", "bytes=0-9", 'W/"abc-3e8"', (ranges.Outcome.WHOLE, None)),
        ("GET", "bytes=0-9", '"other"', (ranges.Outcome.WHOLE, None)),
        ("GET", "bytes=0-9", "Sun, 06 Nov 1994 08:49:37 GMT", (ranges.Outcome.PART, "bytes=0-9")),
        ("GET", "bytes=0-9", "Sun, 06 Nov 1994 08:49:38 GMT", (ranges.Outcome.WHOLE, None)),
        ("HEAD", "bytes=0-9", None, (ranges.Outcome.WHOLE, None)),
    ],
)
def test_range_plan(
    method: str, header: str | None, if_range: str | None, expected: tuple[object, str | None]
) -> None:
    plan = ranges.plan(method, header, if_range, size=1000, etag="abc-3e8",
                       last_modified=784111777)  # Sun, 06 Nov 1994 08:49:37 GMT
    assert (plan.outcome, plan.range) == expected


def test_an_empty_file_has_no_satisfiable_suffix() -> None:
    plan = ranges.plan("GET", "bytes=-5", None, size=0, etag="e", last_modified=0)
    assert plan.outcome is ranges.Outcome.UNSATISFIABLE


def test_a_client_that_stops_reading_is_cut_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    limits = HttpLimits(max_connections=16, idle_timeout=30, header_timeout=30, body_timeout=30,
                        send_stall_timeout=0.5)
    with serving(tmp_path, limits) as srv:
        big = store.distro_dir(srv.home, "demo", "x86_64") / "big"
        big.write_bytes(b"\0" * (64 << 20))  # far more than the socket buffers hold
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        with sock:
            sock.settimeout(20)
            sock.connect(("127.0.0.1", srv.port))
            sock.sendall(b"GET /images/demo/x86_64/big HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 200 OK")
            deadline = time.monotonic() + 20  # never read again: the server gives up
            while srv.running.guard.stats()["open"] and time.monotonic() < deadline:
                time.sleep(0.05)
            stats = srv.running.guard.stats()
            assert (stats["open"], stats["timed_out"]) == (0, 1), stats
        # and the server goes on serving
        assert srv.request("/boot.ipxe")[0] == 200
    assert "Traceback" not in caplog.text
    assert any("cut off a response to 127.0.0.1: the client took nothing for 0.5 s"
               in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
