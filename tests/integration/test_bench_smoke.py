"""Smoke tests of the benchmarks at tiny sizes: each runs for real (lab started with the CLI,
nginx, curl, busybox udhcpc in namespaces) and prints its JSON and its tables. No timing is
asserted, only that every part ran, the numbers are there and nothing is left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from netlab import leftovers, links, netns_exists, short_hash
from pvmlab import spawn
from pvmlab.home import LabHome

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def bench_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PVMLAB_HOME", None)
    return env


def run_bench(module: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = spawn.run([sys.executable, "-m", module, *args], cwd=REPO, env=bench_env(),
                     timeout=timeout, check=False)
    assert proc.returncode == 0, f"{module} {args} exited {proc.returncode}:\n{proc.stderr}"
    return proc


def lab_gone(home: Path) -> None:
    lab = LabHome(home.absolute())
    assert not netns_exists(lab.netns)
    assert lab.bridge not in links()


def client_namespaces(work: Path, dhcp_clients: int = 8) -> list[str]:
    """The names the bench gives its client namespaces (derived from seeds under its workdir)."""
    lab_ns = LabHome((work / "home").absolute()).netns
    seeds = [f"{work}/http-client"] + [f"{work}/dhcp/{i}" for i in range(dhcp_clients)]
    return [f"pvtest-{short_hash(seed, lab_ns)}" for seed in seeds]


def no_client_namespaces(work: Path, dhcp_clients: int = 8) -> None:
    assert leftovers(client_namespaces(work, dhcp_clients), [], []) == []


def test_stack_throughput_tiny(tmp_path: Path) -> None:
    work = tmp_path / "work"
    proc = run_bench(
        "bench.stack_throughput", "--clients", "2", "--pair-mb", "1", "--rounds", "2",
        "--dhcp-clients", "3", "--idle", "0", "--workdir", str(work), "--json",
    )
    result: dict[str, Any] = json.loads(proc.stdout)
    http = result["http"]
    assert http["clients"] == 2 and http["rounds"] == 2
    for server in ("pvmlab", "nginx"):
        runs = http["runs"][server]
        assert len(runs) == 2
        for run in runs:  # every transfer of the round arrived whole
            assert run["bytes"] == 2 * http["pair_bytes"]
            assert run["mb_s"] > 0
        assert http["median_mb_s"][server] > 0
    assert http["ratio"] > 0 and len(http["round_ratios"]) == 2
    dhcp = result["dhcp"]
    assert dhcp["clients"] == dhcp["leased"] == dhcp["distinct_ips"] == 3
    assert dhcp["in_subnet"] and dhcp["wall_s"] > 0
    rss = result["rss_kib"]
    assert set(rss) == {"idle after start", "after HTTP rounds", "after DHCP burst"}
    assert all(v["supervisor"] and v["dnsmasq"] for v in rss.values())
    # our server really served the rounds: its request log names the files, complete
    log = [json.loads(line) for line in (work / "home" / "logs" / "http.log").read_text()
           .splitlines()]
    served = [e for e in log if e["path"].endswith("/initrd") and e["method"] == "GET"]
    assert len(served) >= 2 * 2 and all(e["complete"] and e["status"] == 200 for e in served)
    assert (work / "nginx" / "access.log").read_text().count("/initrd") >= 2 * 2
    lab_gone(work / "home")
    no_client_namespaces(work)


def test_stack_throughput_tables(tmp_path: Path) -> None:
    work = tmp_path / "work"
    proc = run_bench(
        "bench.stack_throughput", "--clients", "2", "--pair-mb", "1", "--rounds", "1",
        "--dhcp-clients", "2", "--idle", "0", "--workdir", str(work),
    )
    for heading in ("HTTP: 2 clients", "ratio pvmlab/nginx:", "DHCP: busybox udhcpc",
                    "Stack RSS"):
        assert heading in proc.stdout
    lab_gone(work / "home")
    no_client_namespaces(work)


def test_stack_throughput_cleans_up_on_sigterm(tmp_path: Path) -> None:
    """SIGTERM while the DHCP client namespaces exist: the bench removes them and the lab."""
    work = tmp_path / "work"
    count = 40
    names = client_namespaces(work, count)
    argv = [sys.executable, "-m", "bench.stack_throughput", "--skip-http", "--dhcp-clients",
            str(count), "--idle", "0", "--workdir", str(work)]
    with (work.parent / "bench.err").open("wb") as err, spawn.spawn(
        argv, env=bench_env(), stderr=err, grace=120
    ) as proc:
        deadline = time.monotonic() + 120
        while sum(netns_exists(n) for n in names) < 5:  # part-way through making clients
            assert proc.poll() is None, "the bench ended before its clients existed"
            assert time.monotonic() < deadline, "no client namespaces appeared"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(120)
    assert code != 0  # interrupted, not a normal finish
    assert leftovers(names, [], []) == []
    lab_gone(work / "home")


def test_footprint_tiny(tmp_path: Path) -> None:
    work = tmp_path / "work"
    proc = run_bench(
        "bench.footprint", "--vms", "2", "--runs", "2", "--idle", "0", "--importtime",
        "--workdir", str(work), "--json",
    )
    result: dict[str, Any] = json.loads(proc.stdout)
    rss = result["idle_rss"]
    assert rss["supervisor_kib"] > 0 and rss["dnsmasq_kib"] > 0
    assert rss["total_kib"] == rss["supervisor_kib"] + rss["dnsmasq_kib"]
    cli = result["cli"]
    assert cli["vms"] == 2
    for name in ("--help", "vm list"):
        t = cli["commands"][name]
        assert t["runs"] == 2 and 0 < t["min_s"] <= t["median_s"] <= t["max_s"]
        assert result["imports"][name], "importtime gave no entries"
    assert any(e["module"].startswith("pvmlab") for e in result["imports"]["vm list"])
    # the VMs were really defined through the CLI
    assert sorted(p.name for p in (work / "cli-home" / "vms").glob("*.json")) == [
        "bench00.json", "bench01.json",
    ]
    lab_gone(work / "stack-home")


def test_footprint_tables_without_stack(tmp_path: Path) -> None:
    proc = run_bench("bench.footprint", "--vms", "1", "--runs", "1", "--skip-stack",
                     "--workdir", str(tmp_path / "work"))
    assert "CLI wall time, 1 VMs defined" in proc.stdout
    assert "pvmlab vm list" in proc.stdout and "Stack idle RSS" not in proc.stdout


def test_help_runs_without_root() -> None:
    for module in ("bench.stack_throughput", "bench.footprint", "bench.boot_storm"):
        proc = run_bench(module, "--help", timeout=60)
        assert "--json" in proc.stdout and "usage:" in proc.stdout.lower()


def test_boot_storm_tiny(tmp_path: Path) -> None:
    """Two real VMs (one firmware PXE, one iPXE from media) and three synthetic clients."""
    work = tmp_path / "work"
    proc = run_bench(
        "bench.boot_storm", "--vms", "2", "--clients", "3", "--dir", str(work), "--json",
        timeout=900,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(proc.stdout)
    [vms] = result["vms"]
    assert vms["vms"] == vms["passed"] == 2 and vms["failed"] == []
    assert set(vms["ready_by_way_s"]) == {"pxe", "ipxe"}
    assert 0 < vms["ready_s"]["min"] <= vms["ready_s"]["median"] <= vms["ready_s"]["max"]
    # firmware DHCP + iPXE DHCP of the PXE VM, iPXE DHCP of the other: all offered
    dhcp = vms["stack"]["dhcp"]
    assert dhcp["discovers"] >= 3 and dhcp["not_offered"] == 0
    http = vms["stack"]["http"]
    assert http["not_2xx"] == 0 and http["script_s"]["n"] >= 4 and http["file_s"]["n"] >= 4
    [clients] = result["clients"]
    assert clients["clients"] == clients["ok"] == 3 and clients["failed_by_stage"] == {}
    assert all(clients["ttfb_s"][k]["n"] == 3 for k in ("boot.ipxe", "ipxe", "kernel", "initrd"))
    assert clients["stack"]["dhcp"]["offered"] >= 3
    # each client fetched the two scripts and both files, the server logged them whole
    assert clients["stack"]["http"]["requests"] == 4 * 3
    assert clients["stack"]["http"]["incomplete_files"] == 0
    assert clients["stack_usage"]["peak_rss_kib"] > 0
    # the lab homes were taken down, and with them their namespaces; no client is left
    assert not list((work / "h").glob("*"))
    for name in ("v2", "c3"):
        lab_gone(work / "h" / name)
    lab_ns = LabHome((work / "h" / "c3").absolute()).netns
    seeds = [f"{work}/storm-clients-3/{i}" for i in range(3)]
    assert leftovers([f"pvtest-{short_hash(s, lab_ns)}" for s in seeds], [], []) == []


def test_boot_storm_cleans_up_on_sigterm(tmp_path: Path) -> None:
    """SIGTERM while the synthetic clients' namespaces are being made: all of them and the lab
    file's home go away."""
    work = tmp_path / "work"
    count = 40
    home = work / "h" / f"c{count}"
    lab_ns = LabHome(home.absolute()).netns
    names = [f"pvtest-{short_hash(f'{work}/storm-clients-{count}/{i}', lab_ns)}"
             for i in range(count)]  # fmt: skip
    argv = [sys.executable, "-m", "bench.boot_storm", "--vms", "", "--clients", str(count),
            "--dir", str(work)]  # fmt: skip
    with (tmp_path / "bench.err").open("wb") as err, spawn.spawn(
        argv, env=bench_env(), stderr=err, grace=120
    ) as proc:
        deadline = time.monotonic() + 120
        while sum(netns_exists(n) for n in names) < 5:
            assert proc.poll() is None, "the bench ended before its clients existed"
            assert time.monotonic() < deadline, "no client namespaces appeared"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(120)
    assert code != 0
    assert leftovers(names, [], []) == []
    assert not home.exists()
    assert not netns_exists(lab_ns)
