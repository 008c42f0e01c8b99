"""Stack throughput: our HTTP server against nginx, and 50 DHCP clients at once.

    sudo .venv/bin/python -m bench.stack_throughput [--clients 32] [--pair-mb 30] [--json]

One run:

1. a lab is created and started with the real CLI (``pvmlab provisioner create/start``) in a
   temporary home, so the HTTP server is ``pvmlab.stack.http`` exactly as the supervisor runs
   it (bound to the provisioner address, port 80, JSON request log on);
2. a kernel+initrd pair of random bytes (1/3 + 2/3 of ``--pair-mb``) is written into the
   home's ``images/``; nginx (Debian's nginx-light, ``sendfile on``) is started inside the lab
   namespace on the same address, port 8080, serving the same directory;
3. a client namespace joins the lab bridge by veth and takes a DHCP lease; from there one
   ``curl --parallel`` process (C, one event loop: not the bottleneck) opens ``--clients``
   connections at once, each fetching the kernel and the initrd; rounds alternate ours and
   nginx (A B, B A, …) so machine noise hits both; MB/s = bytes / wall time of the round;
4. ``--dhcp-clients`` namespaces join the bridge, each runs busybox ``udhcpc`` at the same
   moment; the wall time until every one is bound is printed.

The supervisor's and dnsmasq's RSS are read after start (idle), after the HTTP rounds and
after the DHCP burst. Everything (namespaces, veths, nginx, the lab) is removed at the end, also
on failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ipaddress
import os
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import jinja2

from bench._common import (
    children_cpu_seconds,
    cpu_seconds,
    emit_json,
    interruptible,
    machine,
    netlab,
    one_line_errors,
    process_tree,
    require_programs,
    require_root,
    rss_kib,
    table,
)
from bench._common import (
    workdir as make_workdir,
)
from pvmlab import spawn
from pvmlab.home import LabHome

NGINX_PORT = 8080
DISTRO_DIR = ("bench", "x86_64")  # images/bench/x86_64/{vmlinuz,initrd}
MB = 1_000_000

NGINX_CONF = jinja2.Environment(
    autoescape=False,  # noqa: S701 - an nginx configuration, not HTML
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
).from_string(
    """\
# nginx for bench.stack_throughput: serves the lab home's images/ like our HTTP server does.
daemon off;
master_process on;
worker_processes {{ workers }};
user root;
pid {{ dir }}/nginx.pid;
error_log {{ dir }}/error.log warn;
events {
    worker_connections 1024;
}
http {
    access_log {{ dir }}/access.log;
    client_body_temp_path {{ dir }}/body;
    proxy_temp_path {{ dir }}/proxy;
    fastcgi_temp_path {{ dir }}/fastcgi;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    server {
        listen {{ ip }}:{{ port }};
        location /images/ {
            alias {{ images }}/;
        }
        location / {
            return 404;
        }
    }
}
"""
)


# --- files and servers ----------------------------------------------------------------------


def write_random(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    chunk = 1 << 20
    with path.open("wb") as out:
        left = size
        while left > 0:
            out.write(os.urandom(min(chunk, left)))
            left -= chunk


@contextlib.contextmanager
def nginx(lab: netlab.Lab, images: Path, work: Path, workers: str) -> Iterator[int]:
    """nginx inside the lab namespace on the provisioner address; yields the master's PID."""
    conf_dir = work / "nginx"
    conf_dir.mkdir(parents=True, exist_ok=True)
    conf = conf_dir / "nginx.conf"
    conf.write_text(NGINX_CONF.render(
        workers=workers, dir=conf_dir, ip=lab.ip, port=NGINX_PORT, images=images,
    ))
    argv = ["nginx", "-p", str(conf_dir), "-e", str(conf_dir / "error.log"), "-c", str(conf)]
    spawn.run([*argv, "-t"], netns=lab.netns)
    with (conf_dir / "stderr").open("wb") as err, spawn.spawn(
        argv, netns=lab.netns, stderr=err, grace=10.0
    ) as proc:
        yield proc.pid


def wait_serving(client: netlab.Client, url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        proc = client.run(["curl", "-sf", "-o", "/dev/null", "-I", url], check=False)
        if proc.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout:.0f} s: {proc.stderr}")
        time.sleep(0.1)


# --- HTTP rounds ----------------------------------------------------------------------------


def fetch_round(client: netlab.Client, base: str, clients: int, pids: list[int]) -> dict[str, Any]:
    """``clients`` connections at once, each fetching kernel then initrd; one curl process."""
    argv = ["curl", "--parallel", "--parallel-immediate", "--parallel-max", str(clients),
            "--silent", "--show-error", "--fail", "-w", "%{http_code} %{size_download}\\n"]
    for _ in range(clients):
        for name in ("vmlinuz", "initrd"):
            argv += ["-o", "/dev/null", f"{base}/images/{'/'.join(DISTRO_DIR)}/{name}"]
    server_cpu = cpu_seconds(pids)
    client_cpu = children_cpu_seconds()
    began = time.monotonic()
    proc = client.run(argv, check=False, timeout=600)
    wall = time.monotonic() - began
    client_cpu = children_cpu_seconds() - client_cpu
    server_cpu = cpu_seconds(pids) - server_cpu
    lines = [line.split() for line in proc.stdout.splitlines() if line.strip()]
    ok = [int(size) for code, size in lines if code == "200"]
    if proc.returncode != 0 or len(ok) != 2 * clients:
        raise RuntimeError(
            f"curl against {base} failed (exit {proc.returncode}, {len(ok)} of {2 * clients} "
            f"transfers OK): {proc.stderr.strip()[-500:]}"
        )
    total = sum(ok)
    return {
        "bytes": total,
        "wall_s": round(wall, 4),
        "mb_s": round(total / MB / wall, 1),
        "server_cpu_s": round(server_cpu, 2),
        "client_cpu_s": round(client_cpu, 2),
    }


def http_bench(
    lab: netlab.Lab, work: Path, *, clients: int, pair_mb: float, rounds: int, workers: str
) -> dict[str, Any]:
    home = LabHome(lab.home)
    images = home.images
    size = int(pair_mb * MB)
    write_random(images.joinpath(*DISTRO_DIR, "vmlinuz"), size // 3)
    write_random(images.joinpath(*DISTRO_DIR, "initrd"), size - size // 3)
    supervisor = lab.pid("supervisor")
    if supervisor is None:
        raise RuntimeError("the lab's supervisor is not running")
    with nginx(lab, images, work, workers) as nginx_pid, netlab.client_on_bridge(
        lab.netns, lab.bridge, seed=f"{work}/http-client"
    ) as client:
        lease = netlab.udhcpc(client, work / "http-client")  # the script only reports it
        prefix = ipaddress.ip_network(f"0.0.0.0/{lease['subnet']}").prefixlen
        client.add_address(f"{lease['ip']}/{prefix}")
        servers: dict[str, tuple[str, Callable[[], list[int]]]] = {
            "pvmlab": (f"http://{lab.ip}", lambda: [supervisor]),
            "nginx": (f"http://{lab.ip}:{NGINX_PORT}", lambda: process_tree(nginx_pid)),
        }
        for base, _ in servers.values():
            wait_serving(client, f"{base}/images/{'/'.join(DISTRO_DIR)}/vmlinuz")
        for base, pids in servers.values():  # warm-up: page cache, first connections
            fetch_round(client, base, min(clients, 4), pids())
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
        for i in range(rounds):  # A B, B A, A B, …: neither server always goes first
            order = list(servers.items()) if i % 2 == 0 else list(reversed(servers.items()))
            for name, (base, pids) in order:
                results[name].append(fetch_round(client, base, clients, pids()))
    medians = {name: statistics.median(r["mb_s"] for r in rs) for name, rs in results.items()}
    return {
        "clients": clients,
        "pair_bytes": size,
        "rounds": rounds,
        "nginx_workers": workers,
        "median_mb_s": medians,
        "ratio": round(medians["pvmlab"] / medians["nginx"], 3) if medians["nginx"] else None,
        "round_ratios": [
            round(a["mb_s"] / b["mb_s"], 3) for a, b in zip(results["pvmlab"], results["nginx"],
                                                            strict=True)
        ],
        "runs": results,
    }


# --- DHCP burst -----------------------------------------------------------------------------


def dhcp_bench(lab: netlab.Lab, work: Path, count: int) -> dict[str, Any]:
    """``count`` client namespaces ask for a lease at the same moment.

    DHCPNAKs that dnsmasq logged during the burst are counted: a NAK sends busybox udhcpc
    into a 3 s pause before it starts over, which shows as a tail in the per-client times.
    """
    dnsmasq_log = LabHome(lab.home).dnsmasq_log
    with contextlib.ExitStack() as stack:
        made = time.monotonic()
        clients = [
            stack.enter_context(
                netlab.client_on_bridge(lab.netns, lab.bridge, seed=f"{work}/dhcp/{i}")
            )
            for i in range(count)
        ]
        setup_s = time.monotonic() - made

        def lease(i: int) -> tuple[float, str]:
            env = netlab.udhcpc(clients[i], work / "dhcp" / str(i))
            return time.monotonic(), env.get("ip", "")

        log_offset = _size(dnsmasq_log)
        began = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=count) as pool:
            done = list(pool.map(lease, range(count)))
        wall = max(t for t, _ in done) - began
        ips = {ip for _, ip in done}
        each = sorted(t - began for t, _ in done)
        naks = _read_from(dnsmasq_log, log_offset).count(" DHCPNAK(")
    subnet = ipaddress.ip_network(f"{lab.ip}/24", strict=False)
    return {
        "clients": count,
        "leased": sum(1 for _, ip in done if ip),
        "distinct_ips": len(ips),
        "in_subnet": all(ipaddress.ip_address(ip) in subnet for ip in ips if ip),
        "wall_s": round(wall, 3),
        "median_client_s": round(statistics.median(each), 3),
        "client_s": [round(t, 3) for t in each],
        "dhcpnak": naks,
        "namespace_setup_s": round(setup_s, 2),
    }


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


# --- footprint ------------------------------------------------------------------------------


def stack_rss(lab: netlab.Lab) -> dict[str, int | None]:
    lab.refresh()
    return {name: rss_kib(pid) if pid else None
            for name in ("supervisor", "dnsmasq") for pid in [lab.pid(name)]}


# --- output ---------------------------------------------------------------------------------


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def print_report(result: dict[str, Any]) -> None:
    m = result["machine"]
    print(f"machine: {m['nproc']} x {m['cpu']}, kernel {m['kernel']}, {m['date']}, "
          f"load {m['loadavg_1m']}")
    http = result.get("http")
    if http:
        rows = []
        for name, runs in http["runs"].items():
            rows.append([
                name,
                f"{http['median_mb_s'][name]:.0f}",
                " ".join(f"{r['mb_s']:.0f}" for r in runs),
                f"{statistics.median(r['server_cpu_s'] for r in runs):.2f}",
                f"{statistics.median(r['client_cpu_s'] for r in runs):.2f}",
            ])
        table(
            f"HTTP: {http['clients']} clients x {http['pair_bytes'] / MB:.0f} MB "
            f"(kernel+initrd), {http['rounds']} rounds, veth",
            ["server", "median MB/s", "rounds MB/s", "server CPU s/round", "client CPU s/round"],
            rows,
        )
        print(f"ratio pvmlab/nginx: {http['ratio']} (per round: {http['round_ratios']})")
    dhcp = result.get("dhcp")
    if dhcp:
        table(
            "DHCP: busybox udhcpc, one namespace each, all at once",
            ["clients", "leased", "distinct IPs", "all leased after s", "median client s",
             "p90 client s", "DHCPNAKs"],
            [[str(dhcp["clients"]), str(dhcp["leased"]), str(dhcp["distinct_ips"]),
              f"{dhcp['wall_s']:.2f}", f"{dhcp['median_client_s']:.2f}",
              f"{_percentile(dhcp['client_s'], 0.9):.2f}", str(dhcp["dhcpnak"])]],
        )
    rss = result["rss_kib"]
    table(
        "Stack RSS (KiB, VmRSS)",
        ["when", "supervisor (python)", "dnsmasq", "total"],
        [[when, str(v["supervisor"]), str(v["dnsmasq"]),
          str((v["supervisor"] or 0) + (v["dnsmasq"] or 0))] for when, v in rss.items()],
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--clients", default=32, show_default=True, type=click.IntRange(1, 1000),
              help="Concurrent HTTP clients, each fetching the kernel+initrd pair.")
@click.option("--pair-mb", default=30.0, show_default=True, type=click.FloatRange(0.01, 2000),
              help="Size of the kernel+initrd pair in MB (kernel 1/3, initrd 2/3).")
@click.option("--rounds", default=9, show_default=True, type=click.IntRange(1, 100),
              help="Rounds per server (alternating ours and nginx).")
@click.option("--nginx-workers", default="1", show_default=True,
              help="nginx worker_processes (a number or 'auto'); ours is one process.")
@click.option("--dhcp-clients", default=50, show_default=True, type=click.IntRange(0, 100),
              help="DHCP clients (namespaces) leasing at once; 0 skips the DHCP part.")
@click.option("--aiohttp-nosendfile", is_flag=True,
              help="Start the stack with AIOHTTP_NOSENDFILE=1 (read+write instead of sendfile), "
                   "to see what sendfile is worth.")
@click.option("--skip-http", is_flag=True, help="Only the DHCP part (and RSS).")
@click.option("--idle", default=2.0, show_default=True, type=click.FloatRange(0, 600),
              help="Seconds to let the stack settle before the idle RSS reading.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Keep the lab home, files and logs here (default: a temp dir, removed).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def main(
    clients: int, pair_mb: float, rounds: int, nginx_workers: str, dhcp_clients: int,
    aiohttp_nosendfile: bool, skip_http: bool, idle: float, workdir: Path | None, as_json: bool,
) -> None:
    """Throughput of the lab's HTTP server against nginx, and a DHCP burst (needs root)."""
    if nginx_workers != "auto" and not nginx_workers.isdigit():
        raise click.BadParameter("a number or 'auto'", param_hint="--nginx-workers")
    require_root()
    require_programs("ip", "dnsmasq", "busybox", *(() if skip_http else ("nginx", "curl")))
    result: dict[str, Any] = {"machine": machine(), "rss_kib": {}}
    if aiohttp_nosendfile:  # inherited by the supervisor that `provisioner start` launches
        os.environ["AIOHTTP_NOSENDFILE"] = "1"
        result["aiohttp_nosendfile"] = True
    with (
        one_line_errors(),
        interruptible(),
        make_workdir(workdir, "pvmlab-bench-throughput-") as work,
        netlab.running_lab(work / "home") as lab,
    ):
        time.sleep(idle)
        result["rss_kib"]["idle after start"] = stack_rss(lab)
        if not skip_http:
            result["http"] = http_bench(lab, work, clients=clients, pair_mb=pair_mb,
                                        rounds=rounds, workers=nginx_workers)
            result["rss_kib"]["after HTTP rounds"] = stack_rss(lab)
        if dhcp_clients:
            result["dhcp"] = dhcp_bench(lab, work, dhcp_clients)
            result["rss_kib"]["after DHCP burst"] = stack_rss(lab)
    if as_json:
        emit_json(result)
    else:
        print_report(result)


if __name__ == "__main__":
    main()
