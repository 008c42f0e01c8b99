"""The lab's HTTP server under a flood from a lab client (issue 9, item 3), on a real stack.

A client namespace on the lab bridge opens 21,000 idle TCP connections to port 80 (three
helper processes, tests/fixtures/httpflood.py: one process may hold only 20,000 descriptors
here), 150 of them trickling request headers forever (slowloris), then sends 2,000 malformed
requests, while a well-behaved client asks for ``/boot.ipxe`` again and again. The stack runs
with short timeouts (environment of ``provisioner start``) and small log bounds, so the test
sees the timeouts and the log rotation happen.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import netlab
from pvmlab import spawn

pytestmark = pytest.mark.integration

HELPER = Path(__file__).resolve().parent.parent / "fixtures" / "httpflood.py"
CLIENT_ADDRESS = "192.168.105.240/24"
SERVER = "192.168.105.1"
HELPERS, PER_HELPER, SLOW_PER_HELPER = 3, 7000, 50
IDLE_TIMEOUT, HEADER_TIMEOUT = 6.0, 4.0
LOG_MAX_BYTES, LOG_BACKUPS = 65536, 2
MALFORMED = 2000
CAP = 4096  # the default cap (this machine's descriptor limit, 20,000, is well above it)
ACCEPT_BATCH = 4096  # the listen backlog: what asyncio accepts per wake-up
# A connection that never sends waits in the kernel (TCP_DEFER_ACCEPT) and reaches the server
# after about the idle timeout; if the accept queue is full just then, the kernel retries and,
# after its SYN-ACK retries (about 63 s), forgets it without telling the client. The helpers
# watch that long, so nearly every connection has been closed or forgotten when they stop; one
# the kernel still held back then reaches the server with the helper's last byte and is closed
# by the header timeout within the helper's settle time.
HOLD = 70
LATENCY_BOUND = 2.0  # the requirement for a normal request during a flood


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[netlab.Lab]:
    # inherited by `provisioner start`, and so by the supervisor
    monkeypatch.setenv("PVMLAB_HTTP_IDLE_TIMEOUT", str(IDLE_TIMEOUT))
    monkeypatch.setenv("PVMLAB_HTTP_HEADER_TIMEOUT", str(HEADER_TIMEOUT))
    monkeypatch.setenv("PVMLAB_HTTP_BODY_TIMEOUT", "4")
    monkeypatch.setenv("PVMLAB_LOG_MAX_BYTES", str(LOG_MAX_BYTES))
    monkeypatch.setenv("PVMLAB_LOG_BACKUPS", str(LOG_BACKUPS))
    with netlab.running_lab(tmp_path / "home") as running:
        yield running


@pytest.fixture
def client(lab: netlab.Lab, tmp_path: Path) -> Iterator[netlab.Client]:
    with netlab.client_on_bridge(lab.netns, lab.bridge, seed=str(tmp_path)) as c:
        c.add_address(CLIENT_ADDRESS)
        # 21,000 connections from one address to one port need more than the default
        # 28,000 ephemeral ports once closed ones linger
        c.run([netlab.BUSYBOX, "sysctl", "-w", "net.ipv4.ip_local_port_range=1024 65000"])
        yield c


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def open_sockets(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += str(fd.readlink()).startswith("socket:")
        except OSError:
            continue
    return count


def helper_argv(*args: str) -> list[str]:
    return [sys.executable, str(HELPER), *args]


def last_json(text: str) -> dict[str, Any]:
    lines = text.strip().splitlines()
    assert lines, "the helper printed nothing"
    try:
        return dict(json.loads(lines[-1]))
    except ValueError:
        raise AssertionError(text[-3000:]) from None


class Prober(threading.Thread):
    """Asks for /boot.ipxe from the client namespace every 0.3 s until stopped."""

    def __init__(self, client: netlab.Client) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.results: list[dict[str, Any]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            proc = self.client.run(
                helper_argv("probe", f"http://{SERVER}/boot.ipxe"), check=False, timeout=60
            )
            self.results.append(last_json(proc.stdout) if proc.returncode == 0 else
                                {"status": f"exit {proc.returncode}", "seconds": None})
            self.stop.wait(0.3)


class Sampler(threading.Thread):
    """The supervisor's RSS and open sockets every 0.2 s."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, int, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.monotonic(), rss_kib(self.pid), open_sockets(self.pid)))
            self.stop.wait(0.2)


def test_flood_of_idle_slow_and_malformed_connections(
    lab: netlab.Lab, client: netlab.Client
) -> None:
    supervisor = lab.pid("supervisor")
    assert supervisor is not None
    logs = lab.home / "logs"
    first = client.run(helper_argv("probe", f"http://{SERVER}/boot.ipxe"))  # warm, and a check
    assert last_json(first.stdout)["status"] == 200
    time.sleep(0.5)
    idle_sockets = open_sockets(supervisor)
    rss_before = rss_kib(supervisor)

    sampler, prober = Sampler(supervisor), Prober(client)
    sampler.start()
    prober.start()
    try:
        with contextlib.ExitStack() as helpers:
            floods = [helpers.enter_context(spawn.spawn(helper_argv(
                "flood", SERVER, "80", "--connections", str(PER_HELPER),
                "--slow", str(SLOW_PER_HELPER), "--open-within", "40", "--hold", str(HOLD),
                "--settle", str(HEADER_TIMEOUT + 4),
            ), netns=client.ns, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, grace=2))
                for _ in range(HELPERS)]
            holding = [json.loads(f.stdout.readline()) for f in floods if f.stdout]
            flood_opened = time.monotonic()
            bad = client.run(helper_argv("malformed", SERVER, "80", "--count", str(MALFORMED)),
                             timeout=300)
            outputs = [f.communicate(timeout=180)[0].decode() for f in floods]
            codes = [f.returncode for f in floods]
            assert codes == [0] * HELPERS, (codes, outputs)
            done = [last_json(out) for out in outputs]
        prober.stop.set()
        prober.join(60)
        deadline = time.monotonic() + 30  # the server back to the sockets it had before
        while open_sockets(supervisor) > idle_sockets and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)
    finally:
        prober.stop.set()
        sampler.stop.set()
        sampler.join(10)
    rss_after = rss_kib(supervisor)
    lingering = spawn.run(
        ["ss", "-Htn", "state", "established", "state", "syn-recv", "state", "close-wait",
         "sport", "=", ":80"], netns=lab.netns,
    ).stdout.splitlines()
    rss_peak = max(s[1] for s in sampler.samples)
    # recovery: from the moment the flood's connections were all open to the last moment the
    # server held more sockets than before it
    last_busy = max((s[0] for s in sampler.samples if s[2] > idle_sockets), default=flood_opened)
    recovered = last_busy - flood_opened
    sockets_peak = max(s[2] for s in sampler.samples)
    latencies = [r["seconds"] for r in prober.results if r["seconds"] is not None]
    malformed = last_json(bad.stdout)["statuses"]
    log_files = sorted(p.name for p in logs.iterdir())
    log_bytes = {p.name: p.stat().st_size for p in logs.iterdir()}
    figures = {
        "connections_opened": sum(d["connected"] for d in done),
        "connect_failed": [d["connect_failed"] for d in done],
        "closed_by_server": sum(d["closed_by_server"] for d in done),
        "forgotten_by_server": sum(d["forgotten_by_server"] for d in done),
        "server_tcp_left": len(lingering),
        "server_sockets_peak": sockets_peak,
        "rss_kib": {"before": rss_before, "peak": rss_peak, "after": rss_after},
        "probe_statuses": sorted({str(r["status"]) for r in prober.results}),
        "probe_slowest": sorted(prober.results, key=lambda r: -(r["seconds"] or 99))[:3],
        "probe_latency_s": {"n": len(latencies), "max": max(latencies, default=None),
                            "median": sorted(latencies)[len(latencies) // 2] if latencies
                            else None},
        "recovery_s": round(recovered, 2),
        "slow_closed_after_s": [(d["slow_closed_after_min"], d["slow_closed_after_max"])
                                for d in done],
        "malformed": malformed,
        "logs": log_bytes,
        "holding": holding,
    }
    print("http flood figures:", json.dumps(figures, indent=1))

    # the flood really happened: 21,000 connections made, every one closed by the server
    assert figures["connections_opened"] >= 20000, figures
    for d in done:
        # closed by the server, or never accepted and forgotten by its kernel; none held
        assert d["held_by_server_at_end"] == 0, d
        assert d["closed_by_server"] + d["forgotten_by_server"] == d["connected"], d
        assert d["slow_closed"] == d["slow"] == SLOW_PER_HELPER, d
        # slowloris kept sending, yet was closed by the header timeout, long before the hold
        assert d["slow_closed_after_max"] < 60, d
    assert lingering == [], lingering  # the lab's kernel holds nothing of the flood either
    # never more connections than the cap; descriptors of connections closed to make room
    # are freed on the loop's next turn, so sockets may briefly pass it by two accept batches
    assert sockets_peak <= CAP + 2 * ACCEPT_BATCH + idle_sockets, figures
    # a normal request was served quickly throughout
    assert prober.results and all(r["status"] == 200 for r in prober.results), figures
    # How fast they were is measured, not asserted (these machines are noisy): the figures
    # printed here, bench.stack_throughput and docs/performance.md ("HTTP server under a flood").
    print(f"probe latency during the flood: max {max(latencies):.2f} s "
          f"(the issue asks < {LATENCY_BOUND} s)")
    # malformed requests: each answered 400
    assert malformed == {"400": MALFORMED}, malformed
    # logs: rotated, within their bound, no traceback
    assert "http.log.1" in log_files, log_files
    for family in ("http.log", "supervisor.log"):
        members = [n for n in log_files if n == family or n.startswith(family + ".")]
        assert len(members) <= LOG_BACKUPS + 1, members
        # a record is written whole, so a file may pass the bound by one line
        assert all(log_bytes[n] <= LOG_MAX_BYTES + 4096 for n in members), log_bytes
    supervisor_log = "".join((logs / n).read_text(errors="replace") for n in log_files
                             if n.startswith("supervisor.log"))
    assert "Traceback" not in supervisor_log
    assert f"at the cap of {CAP} connections" in supervisor_log
    assert "after a peak of" in supervisor_log
    # memory: bounded by the cap while the flood lasts (21,000 aiohttp connections would take
    # hundreds of MiB); what stays afterwards is reused by the next flood (docs/performance.md)
    assert rss_peak - rss_before < 64 * 1024, figures
    assert rss_after - rss_before < 40 * 1024, figures
