"""Boot storms: many machines asking the stack at once, with and without real VMs.

    sudo .venv/bin/python -m bench.boot_storm [--vms 2,4,8,16] [--clients 50,100,200] [--json]

Two parts, each at several sizes (``--vms ''`` or ``--clients ''`` skips a part):

    vms      N real x86_64 UEFI VMs under TCG booting the tiny test initramfs
             (tests/fixtures/bootassets.py) at once, half by firmware PXE (OVMF's DHCP -> TFTP
             iPXE -> ...) and half by ``boot = "ipxe"`` (iPXE from a local drive), through a lab
             file and ``pvmlab test``'s runner (``pvmlab.labfile.run.run_lab_tests``, all N in
             parallel). Reports the spread of time-to-ready (min/median/max, from QEMU's launch
             to the marker, per boot way) and what the stack's own logs say.
    clients  C synthetic clients without VMs: each a network namespace on the lab bridge with
             the MAC of a machine of the lab file, doing a real DHCP exchange (busybox udhcpc
             with iPXE's user class and client arch 7, as iPXE sends them) and then iPXE's HTTP
             sequence with curl: the boot file DHCP gave (``/boot.ipxe``), ``/ipxe?mac=…``, and
             the kernel and initrd that script names. All C start together. Reports the clients'
             lease time and time to first byte per request kind, failures, the stack's latencies
             from its logs, and the stack's CPU seconds and peak RSS (supervisor + dnsmasq, from
             /proc).

The stack's latencies come from its own logs, read with ``pvmlab.observe``:

    DHCP offer delay   DISCOVER -> OFFER of each transaction in dnsmasq's log (``log-dhcp``).
                       dnsmasq stamps whole seconds, so this is 0 s or 1 s per exchange: what
                       counts is how many are not 0.
    HTTP server time   the request log (``logs/http.log``) has ``start``, ``end`` and
                       ``duration`` per request, not the first byte; for the iPXE scripts (a
                       few hundred bytes, one write) the duration is the time to first byte as
                       the server sees it; for kernel and initrd it is the whole transfer. The
                       synthetic clients measure the first byte themselves (curl's
                       ``time_starttransfer``).

Everything the bench creates (lab homes, namespaces, VMs) is removed at the end, also on
failure, Ctrl-C or SIGTERM. Bounded: at most 16 VMs and 250 clients, every wait has a timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import _common
from bench._common import emit_json, table

MARKER = "PVMLAB-BOOT-OK"
MAX_VMS = 16
MAX_CLIENTS = 250
VM_TIMEOUT = 900.0  # s, per VM, from start to marker (16 TCG guests on 2 cores are slow)
CLIENT_TIMEOUT = 120.0  # s, per HTTP fetch of a synthetic client
CURL_FORMAT = "%{http_code} %{time_starttransfer} %{time_total} %{size_download}\\n"
KINDS = ("boot.ipxe", "ipxe", "kernel", "initrd")


# --- figures ------------------------------------------------------------------------------------


def spread(values: list[float]) -> dict[str, Any]:
    """n, min, median, p99 (nearest rank) and max, rounded to ms."""
    if not values:
        return {"n": 0, "min": None, "median": None, "p50": None, "p99": None, "max": None}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[max(0, min(len(ordered) - 1, int(-(-p * len(ordered) // 100)) - 1))]

    return {
        "n": len(ordered),
        "min": round(ordered[0], 3),
        "median": round(statistics.median(ordered), 3),
        "p50": round(rank(50), 3),
        "p99": round(rank(99), 3),
        "max": round(ordered[-1], 3),
    }


def stack_latencies(home: Any, since: float) -> dict[str, Any]:
    """What the stack's logs say about everything from ``since`` on."""
    from pvmlab.observe import dnsmasqlog, httplog

    def lines(path: Path) -> list[str]:
        try:
            return path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    year = time.localtime(since).tm_year
    events = dnsmasqlog.events_since(
        dnsmasqlog.parse_dnsmasq_log(lines(home.dnsmasq_log), year), since
    )
    discover: dict[str, float] = {}
    offer: dict[str, float] = {}
    naks = 0
    messages: dict[str, int] = {}
    repeats = {"DHCPDISCOVER": 0, "DHCPREQUEST": 0}
    last: dict[str, str] = {}  # serial -> the client's last message kind
    for e in events:
        if not isinstance(e, dnsmasqlog.DhcpMessage) or e.serial is None or e.t is None:
            continue
        messages[e.kind] = messages.get(e.kind, 0) + 1
        if e.kind in repeats:
            # the same question again in the same transaction: the answer did not reach the
            # client (or was not taken) within its timeout
            repeats[e.kind] += last.get(e.serial) == e.kind
            last[e.serial] = e.kind
        if e.kind == "DHCPDISCOVER":
            discover.setdefault(e.serial, e.t)
        elif e.kind == "DHCPOFFER":
            offer.setdefault(e.serial, e.t)
        elif e.kind == "DHCPNAK":
            naks += 1
    delays = [offer[s] - t for s, t in discover.items() if s in offer]
    requests = httplog.requests_since(httplog.parse_http_log(lines(home.http_log)), since)
    scripts = [r for r in requests if r.path in ("/boot.ipxe", "/ipxe")]
    files = [r for r in requests if r.is_boot_file]
    bad = [r for r in requests if not (isinstance(r.status, int) and 200 <= r.status < 300)]
    incomplete = [r for r in files if r.record.get("complete") is False]
    return {
        "dhcp": {
            "discovers": len(discover),
            "offered": len(delays),
            "not_offered": len(discover) - len(delays),
            "naks": naks,
            "offer_delay_s": spread(delays),
            "offers_after_1s_or_more": sum(d >= 1 for d in delays),
            "discover_repeats": repeats["DHCPDISCOVER"],
            "request_repeats": repeats["DHCPREQUEST"],
            "messages": messages,
        },
        "http": {
            "requests": len(requests),
            "not_2xx": len(bad),
            "incomplete_files": len(incomplete),
            "script_s": spread([r.duration for r in scripts if r.duration is not None]),
            "file_s": spread([r.duration for r in files if r.duration is not None]),
        },
    }


class StackSampler:
    """Samples the stack's processes (supervisor and its children, dnsmasq) from /proc twice a
    second: peak RSS, and CPU seconds used between ``start`` and ``stop``."""

    def __init__(self, home: Any) -> None:
        self.home = home
        self.peak_kib = 0
        self.cpu_start: float | None = None
        self.cpu_end: float | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def pids(self) -> list[int]:
        try:
            state = json.loads(self.home.stack_state.read_text())
        except (OSError, ValueError):
            return []
        found: list[int] = []
        for key in ("supervisor_pid", "dnsmasq_pid"):
            pid = state.get(key)
            if isinstance(pid, int):
                found += [p for p in _common.process_tree(pid) if p not in found]
        return found

    def _sample(self) -> float:
        pids = self.pids()
        self.peak_kib = max(self.peak_kib, sum(_common.rss_kib(p) or 0 for p in pids))
        return _common.cpu_seconds(pids)

    def _loop(self) -> None:
        while not self._done.wait(0.5):
            cpu = self._sample()
            if self.cpu_start is None and cpu > 0:
                self.cpu_start = cpu
            self.cpu_end = cpu or self.cpu_end

    def start(self) -> None:
        cpu = self._sample()
        self.cpu_start = cpu if cpu > 0 else None
        self._thread.start()

    def stop(self) -> dict[str, Any]:
        cpu = self._sample()
        self.cpu_end = cpu or self.cpu_end
        self._done.set()
        self._thread.join(5)
        used = None
        if self.cpu_start is not None and self.cpu_end is not None:
            used = round(self.cpu_end - self.cpu_start, 2)
        return {"cpu_s": used, "peak_rss_kib": self.peak_kib}


# --- lab files ----------------------------------------------------------------------------------

_DISTRO = """
[[distros]]
name = "tiny"
arch = "x86_64"
kernel = "assets/x86_64/vmlinuz"
initrd = "assets/x86_64/initrd"
cmdline = "console=ttyS0"
"""


def _machine(name: str, count: int, boot: str, timeout: float) -> str:
    return f"""
[[machines]]
name = "{name}"
count = {count}
arch = "x86_64"
firmware = "uefi"
boot = "{boot}"
distro = "tiny"
memory = 256
accel = "tcg"
ready = {{ console = "{MARKER}", timeout = {timeout:g} }}
"""


def write_lab(work: Path, name: str, address: str, machines: str) -> Path:
    path = work / f"{name}.toml"
    path.write_text(f'name = "{name}"\n\n[provisioner]\naddress = "{address}"\n'
                    + _DISTRO + machines)  # fmt: skip
    return path


@contextlib.contextmanager
def lab_home(work: Path, name: str) -> Any:
    """The lab home of one storm (``WORK/h/NAME``: short, the control socket's path must fit
    in AF_UNIX's 108 bytes); taken down (``pvmlab down``'s call) whatever happens."""
    from pvmlab.home import LabHome
    from pvmlab.labfile import apply

    home = LabHome((work / "h" / name).absolute())
    try:
        yield home
    finally:
        if home.root.exists():
            with contextlib.suppress(OSError):  # evidence, kept with the work directory
                shutil.copytree(home.logs, work / "logs" / name, dirs_exist_ok=True)
            apply.down(home)


# --- part 1: real VMs ---------------------------------------------------------------------------


def vm_storm(work: Path, n: int) -> dict[str, Any]:
    """N VMs booting at once through ``pvmlab test``'s runner."""
    from pvmlab.labfile import load, run

    pxe, ipxe = n - n // 2, n // 2
    machines = _machine("pxe", pxe, "pxe", VM_TIMEOUT)
    if ipxe:
        machines += _machine("ipxe", ipxe, "ipxe", VM_TIMEOUT)
    name = f"storm-vm-{n}"
    lab = load.read(write_lab(work, name, f"10.231.{n}.1/24", machines))
    with lab_home(work, f"v{n}") as home:
        sampler = StackSampler(home)
        since = time.time()
        t0 = time.monotonic()
        sampler.start()

        def progress(machine: str, what: str) -> None:
            if what in ("ready", "failed"):
                print(f"  vms={n}: {machine} {what}", file=sys.stderr)

        result = run.run_lab_tests(lab, home, parallel=n, progress=progress)
        wall = time.monotonic() - t0
        usage = sampler.stop()
        stack = stack_latencies(home, since)
    ways: dict[str, Any] = {}
    for way in ("pxe", "ipxe"):
        ms = [m for m in result.machines if m.boot == way]
        if ms:
            ways[way] = spread([m.elapsed for m in ms if m.passed and m.elapsed is not None])
    return {
        "vms": n,
        "passed": sum(m.passed for m in result.machines),
        "failed": [f"{m.name}: {m.reason}" for m in result.machines if not m.passed],
        "wall_s": round(wall, 2),
        "ready_s": spread(
            [m.elapsed for m in result.machines if m.passed and m.elapsed is not None]
        ),
        "ready_by_way_s": ways,
        "stack": stack,
        "stack_usage": usage,
    }


# --- part 2: synthetic clients --------------------------------------------------------------------


def _curl(client: Any, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """One curl process fetching each (url, output file) in turn; one record per transfer."""
    argv = ["curl", "-sS", "--max-time", f"{CLIENT_TIMEOUT:g}", "-w", CURL_FORMAT]
    for url, out in pairs:
        argv += ["-o", out, url]
    proc = client.run(argv, check=False, timeout=CLIENT_TIMEOUT * len(pairs) + 10)
    got: list[dict[str, Any]] = []
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 4:
            code, ttfb, total, size = parts
            got.append({"status": int(code), "ttfb": float(ttfb), "total": float(total),
                        "bytes": int(float(size))})  # fmt: skip
    while len(got) < len(pairs):  # curl gave up before these: say so, not silently fewer
        got.append({"status": 0, "ttfb": None, "total": None, "bytes": 0,
                    "error": (proc.stderr or "").strip()[-200:]})  # fmt: skip
    return got


_KERNEL = re.compile(r"^kernel\s+(\S+)", re.M)
_INITRD = re.compile(r"^initrd\s+(?:--name\s+\S+\s+)?(\S+)", re.M)


def one_client(client: Any, workdir: Path, start: threading.Event) -> dict[str, Any]:
    """DHCP, then iPXE's HTTP sequence; what happened and how long each step took."""
    from bench._common import netlab

    out: dict[str, Any] = {"ok": False, "stage": "dhcp", "fetches": {}}
    workdir.mkdir(parents=True, exist_ok=True)
    start.wait(600)
    t0 = time.monotonic()
    try:
        lease = netlab.udhcpc(client, workdir, arch=7, ipxe=True, tries=10)
    except AssertionError as exc:
        out["error"] = str(exc).splitlines()[0]
        return out
    out["lease_s"] = time.monotonic() - t0
    # udhcpc only reports the lease (netlab's script): configure it as a client would.
    client.add_address(f"{lease['ip']}/{lease.get('mask', '24')}")
    boot_url = lease.get("boot_file", "")
    if not boot_url.startswith("http://"):
        out["error"] = f"DHCP gave boot file {boot_url!r}, not the HTTP boot script"
        return out
    base = boot_url.rsplit("/", 1)[0]
    mac = client.mac.replace(":", "-")
    out["stage"] = "scripts"
    script = workdir / "machine.ipxe"
    first = _curl(
        client,
        [
            (boot_url, str(workdir / "boot.ipxe")),
            (f"{base}/ipxe?mac={mac}&arch=x86_64&platform=efi", str(script)),
        ],
    )
    out["fetches"].update(zip(("boot.ipxe", "ipxe"), first, strict=True))
    if any(f["status"] != 200 for f in first):
        return out
    text = script.read_text(errors="replace")
    kernel, initrd = _KERNEL.search(text), _INITRD.search(text)
    if kernel is None or initrd is None:
        out["error"] = f"no kernel/initrd in the machine script: {text[:200]!r}"
        return out
    out["stage"] = "files"
    files = _curl(client, [(kernel.group(1), "/dev/null"), (initrd.group(1), "/dev/null")])
    out["fetches"].update(zip(("kernel", "initrd"), files, strict=True))
    if all(f["status"] == 200 for f in files):
        out["ok"] = True
        out["stage"] = "done"
    out["total_s"] = time.monotonic() - t0
    return out


def client_storm(work: Path, count: int) -> dict[str, Any]:
    """C client namespaces, one per machine of a lab file (its MAC), all starting at once."""
    from bench._common import netlab
    from pvmlab.labfile import apply, load
    from pvmlab.records import store

    name = f"storm-clients-{count}"
    lab = load.read(write_lab(work, name, f"10.232.{count % 256}.1/22",
                              _machine("c", count, "pxe", 60)))  # fmt: skip
    with lab_home(work, f"c{count}") as home:
        t_up = time.monotonic()
        apply.up(lab, home, start_machines=False)
        up_s = time.monotonic() - t_up
        macs = [store.load_vm(home, p.name).mac for p in lab.machines]
        with contextlib.ExitStack() as stack:
            t_ns = time.monotonic()
            clients = [
                stack.enter_context(netlab.client_on_bridge(
                    home.netns, home.bridge, seed=f"{work}/{name}/{i}", mac=mac))
                for i, mac in enumerate(macs)
            ]  # fmt: skip
            ns_s = time.monotonic() - t_ns
            sampler = StackSampler(home)
            sampler.start()
            go = threading.Event()
            since = time.time()
            t0 = time.monotonic()
            clients_cpu = _common.children_cpu_seconds()
            with ThreadPoolExecutor(max_workers=count) as pool:
                futures = [pool.submit(one_client, c, work / name / f"c{i}", go)
                           for i, c in enumerate(clients)]  # fmt: skip
                go.set()
                outcomes = [f.result() for f in futures]
            wall = time.monotonic() - t0
            clients_cpu = _common.children_cpu_seconds() - clients_cpu
            usage = sampler.stop()
            time.sleep(0.5)  # the last log lines are written after the last response
            stack_view = stack_latencies(home, since)
    failures: dict[str, int] = {}
    for o in outcomes:
        if not o["ok"]:
            failures[o["stage"]] = failures.get(o["stage"], 0) + 1
    errors = sorted({o["error"] for o in outcomes if o.get("error")})[:5]
    errors += sorted({f["error"] for o in outcomes for f in o["fetches"].values()
                      if f.get("error")})[:5]  # fmt: skip
    ttfb = {
        kind: spread([o["fetches"][kind]["ttfb"] for o in outcomes
                      if kind in o["fetches"] and o["fetches"][kind]["status"] == 200])
        for kind in KINDS
    }  # fmt: skip
    return {
        "clients": count,
        "ok": sum(o["ok"] for o in outcomes),
        "failed_by_stage": failures,
        "errors": errors,
        "setup_s": {"up": round(up_s, 2), "namespaces": round(ns_s, 2)},
        "wall_s": round(wall, 2),
        "lease_s": spread([o["lease_s"] for o in outcomes if "lease_s" in o]),
        "complete_s": spread([o["total_s"] for o in outcomes if o["ok"]]),
        "ttfb_s": ttfb,
        "stack": stack_view,
        "stack_usage": usage,
        "clients_cpu_s": round(clients_cpu, 2),  # udhcpc, curl, ip (the bench's children)
    }


# --- run and show -------------------------------------------------------------------------------


def run(vm_sizes: list[int], client_sizes: list[int], keep: Path | None) -> dict[str, Any]:
    from fixtures import bootassets  # type: ignore[import-not-found]

    results: dict[str, Any] = {"machine": _common.machine(), "vms": [], "clients": []}
    with _common.workdir(keep, "pvmlab-boot-storm-") as work:
        bootassets.export(bootassets.build("x86_64"), work / "assets")
        for n in vm_sizes:
            print(f"boot storm: {n} VMs", file=sys.stderr)
            results["vms"].append(vm_storm(work, n))
        for c in client_sizes:
            print(f"boot storm: {c} synthetic clients", file=sys.stderr)
            results["clients"].append(client_storm(work, c))
    add_ratios(results)
    return results


def add_ratios(results: dict[str, Any]) -> None:
    """Each size against the smallest of the same run: how much a storm slows one boot."""
    for part, key in (("vms", "ready_s"), ("clients", "complete_s")):
        rows = results[part]
        base = rows[0][key]["median"] if rows else None
        for r in rows:
            med = r[key]["median"]
            r["median_vs_smallest"] = round(med / base, 2) if med and base else None


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _mmm(s: dict[str, Any]) -> str:
    return "-" if not s["n"] else f"{s['min']:.1f}/{s['median']:.1f}/{s['max']:.1f}"


def show(results: dict[str, Any]) -> None:
    if results["vms"]:
        rows = []
        for r in results["vms"]:
            d, h = r["stack"]["dhcp"], r["stack"]["http"]
            rows.append([
                str(r["vms"]), f"{r['passed']}/{r['vms']}", _mmm(r["ready_s"]),
                _mmm(r["ready_by_way_s"].get("pxe", spread([]))),
                _mmm(r["ready_by_way_s"].get("ipxe", spread([]))), f"{r['wall_s']:.1f}",
                f"{d['offer_delay_s']['max']}", f"{d['offers_after_1s_or_more']}/{d['offered']}",
                f"{_s(h['script_s']['p50'])}/{_s(h['script_s']['p99'])}",
                str(r["stack_usage"]["cpu_s"]), _x(r.get("median_vs_smallest")),
            ])  # fmt: skip
        table(
            "Boot storm, real VMs (x86_64 UEFI, TCG; half firmware PXE, half iPXE from media)",
            ["VMs", "ready", "ready s min/med/max", "pxe s", "ipxe s", "wall s",
             "offer delay max s", "offers >= 1 s", "script s p50/p99", "stack CPU s",
             "median / smallest"],
            rows,
        )  # fmt: skip
    if results["clients"]:
        rows = []
        for r in results["clients"]:
            d, h = r["stack"]["dhcp"], r["stack"]["http"]
            t = r["ttfb_s"]
            rows.append([
                str(r["clients"]), f"{r['ok']}/{r['clients']}",
                ",".join(f"{k}:{v}" for k, v in r["failed_by_stage"].items()) or "-",
                f"{r['lease_s']['p50']}/{r['lease_s']['max']}",
                f"{d['offers_after_1s_or_more']}/{d['offered']}", str(d["discover_repeats"]),
                f"{_s(t['ipxe']['p50'])}/{_s(t['ipxe']['p99'])}",
                f"{_s(t['kernel']['p50'])}/{_s(t['kernel']['p99'])}",
                f"{_s(h['script_s']['p50'])}/{_s(h['script_s']['p99'])}",
                f"{r['wall_s']:.1f}", str(r["stack_usage"]["cpu_s"]),
                str(r["clients_cpu_s"]), str(r["stack_usage"]["peak_rss_kib"] // 1024),
                _x(r.get("median_vs_smallest")),
            ])  # fmt: skip
        table(
            "Boot storm, synthetic clients (udhcpc + curl: boot.ipxe, ipxe?mac=, kernel, initrd)",
            ["clients", "ok", "failed", "lease s p50/max", "offers >= 1 s", "DISCOVER repeats",
             "ipxe TTFB p50/p99", "kernel TTFB p50/p99", "server script s p50/p99", "wall s",
             "stack CPU s", "clients CPU s", "peak RSS MiB", "median / smallest"],
            rows,
        )  # fmt: skip
    m = results["machine"]
    print(f"machine: {m['cpu']}, {m['nproc']} cores, kernel {m['kernel']}, {m['date']}")


def _sizes(text: str, most: int, what: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}: a comma-separated list of numbers") from None
    if any(not 1 <= s <= most for s in sizes):
        raise argparse.ArgumentTypeError(f"{what}: each size between 1 and {most}")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.boot_storm",
        description="Boot storms: N real VMs booting at once through `pvmlab test`'s runner, "
        "and C synthetic DHCP+iPXE HTTP clients in namespaces; time-to-ready spread and the "
        "stack's latencies, CPU and RSS.",
    )
    parser.add_argument(
        "--vms", type=lambda t: _sizes(t, MAX_VMS, "--vms"), default=[2, 4, 8, 16],
        help=f"VM storm sizes, comma-separated (default 2,4,8,16; at most {MAX_VMS}; '' skips)",
    )  # fmt: skip
    parser.add_argument(
        "--clients", type=lambda t: _sizes(t, MAX_CLIENTS, "--clients"), default=[50, 100, 200],
        help="synthetic storm sizes, comma-separated (default 50,100,200; at most "
        f"{MAX_CLIENTS}; '' skips)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.add_argument("--dir", type=Path, help="keep the work directory here (lab files, logs)")
    args = parser.parse_args(argv)
    _common.require_root()
    _common.require_programs("busybox", "curl", "dnsmasq", "ip", "qemu-system-x86_64")
    with _common.interruptible(), _common.one_line_errors():
        results = run(args.vms, args.clients, args.dir)
    if args.json:
        emit_json(results)
    else:
        show(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
