"""The HTTP server's request log read back, on records the server wrote in a real boot (from
tests/unit/data/timeline/x86_64-uefi/http.log) and on what it must skip."""

from __future__ import annotations

import json

from pvmlab.observe import httplog

SCRIPT = (
    '{"time": "2026-11-27T02:13:30.393+00:00", "start": 1795745610.393285,'
    ' "end": 1795745610.402092,'
    ' "duration": 0.008807, "client": "192.168.105.2", "method": "GET", "path": "/ipxe",'
    ' "query": "mac=0e-ed-4e-52-cc-08&arch=x86_64&platform=efi", "status": 200, "bytes": 526,'
    ' "arch": "x86_64", "platform": "efi", "mac": "0e:ed:4e:52:cc:08", "vm": "e1",'
    ' "outcome": "boot"}'
)
KERNEL = (
    '{"time": "2026-11-27T02:13:30.408+00:00", "start": 1795745610.408363, "end": 1795745610.85767,'
    ' "duration": 0.449307, "client": "192.168.105.2", "method": "GET",'
    ' "path": "/images/tiny/x86_64/vmlinuz", "query": null, "status": 200, "bytes": 14149568,'
    ' "complete": true}'
)
MAC = "0e:ed:4e:52:cc:08"


def test_a_record_as_the_server_wrote_it() -> None:
    req = httplog.parse_http_record(SCRIPT)
    assert req is not None
    assert (req.start, req.end, req.duration) == (1795745610.393285, 1795745610.402092, 0.008807)
    assert (req.client, req.method, req.path, req.status, req.bytes) == (
        "192.168.105.2", "GET", "/ipxe", 200, 526,
    )  # fmt: skip
    assert req.mac == MAC and req.record["outcome"] == "boot"
    assert not req.is_boot_file
    assert req.as_line() == "GET /ipxe?mac=0e-ed-4e-52-cc-08&arch=x86_64&platform=efi 200"
    kernel = httplog.parse_http_record(KERNEL)
    assert kernel is not None and kernel.is_boot_file and kernel.query is None
    assert kernel.as_line() == "GET /images/tiny/x86_64/vmlinuz 200"


def test_what_is_not_a_request_is_skipped() -> None:
    lines = [SCRIPT, "not json", "[1, 2]", '"a string"', "", KERNEL]
    assert [r.path for r in httplog.parse_http_log(lines)] == [
        "/ipxe",
        "/images/tiny/x86_64/vmlinuz",
    ]
    bare = httplog.parse_http_record('{"path": "/boot.ipxe", "start": true, "bytes": "12"}')
    assert bare is not None
    assert (bare.start, bare.bytes, bare.client, bare.method) == (None, None, None, "GET")
    assert bare.as_line() == "GET /boot.ipxe"


def test_requests_of_one_machine_by_mac_or_address() -> None:
    other = json.dumps({"client": "192.168.105.7", "path": "/images/o/x86_64/vmlinuz"})
    by_query = json.dumps(
        {"client": "192.168.105.9", "path": "/ipxe", "query": "mac=0E-ED-4E-52-CC-08"}
    )
    reqs = httplog.parse_http_log([SCRIPT, KERNEL, other, by_query])
    assert [r.as_line() for r in httplog.requests_of_machine(reqs, MAC, [])] == [
        "GET /ipxe?mac=0e-ed-4e-52-cc-08&arch=x86_64&platform=efi 200",
        "GET /ipxe?mac=0E-ED-4E-52-CC-08",
    ]
    by_ip = httplog.requests_of_machine(reqs, "0e:00:00:00:00:01", ["192.168.105.2"])
    assert [r.path for r in by_ip] == ["/ipxe", "/images/tiny/x86_64/vmlinuz"]


def test_requests_since_a_moment_in_start_order() -> None:
    reqs = httplog.parse_http_log([KERNEL, SCRIPT, json.dumps({"path": "/untimed"})])
    assert [r.path for r in httplog.requests_since(reqs, 1795745610.0)] == [
        "/ipxe",
        "/images/tiny/x86_64/vmlinuz",
    ]
    assert [r.path for r in httplog.requests_since(reqs, 1795745610.4)] == [
        "/images/tiny/x86_64/vmlinuz"
    ]
