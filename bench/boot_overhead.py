"""What network booting costs: the same kernel booted directly and through the network chain.

    sudo .venv/bin/python -m bench.boot_overhead [--n 3] [--arch x86_64 --arch aarch64]
        [--mode pxe|ipxe|http|both|pxe-http] [--json]

For each architecture (UEFI firmware, TCG), N boots each way, the order rotating each round:

    direct  QEMU with the VM's machine, firmware (its own copy of the vars template) and memory,
            ``-kernel/-initrd/-append``, no NIC: firmware -> kernel -> marker
    pxe     ``pvmlab vm start`` of a VM in a lab started with the real CLI: firmware DHCP ->
            TFTP iPXE -> iPXE DHCP -> HTTP scripts, kernel, initrd -> marker
    ipxe    ``pvmlab vm start --boot ipxe`` of the same VM: iPXE from a local virtual drive (no
            firmware DHCP, no TFTP) -> iPXE DHCP -> HTTP scripts, kernel, initrd -> marker
    http    ``pvmlab vm start`` of a second VM created with ``--net-boot http``: the firmware's
            UEFI HTTP Boot (DHCP hands a URL) -> iPXE over HTTP -> iPXE DHCP -> the same chain

``--mode`` chooses which network ways run next to direct (default both).

The guest is the test fixture (tests/fixtures/bootassets.py): a Debian cloud kernel and a busybox
initramfs printing ``PVMLAB-BOOT-OK`` then powering off. Each boot is timed from the moment QEMU
is launched to the marker on the serial console. Prints the medians side by side, each network
way minus direct, the ratio, and the median of each phase of the network boots (``pvmlab vm
timeline``).
Network boots run through ``pvmlab.vm.boot.start_and_wait`` (what ``vm start --wait`` calls):
their time is the one the VM's console stamper reports, from QEMU's launch, the same origin as a
direct boot's; pvmlab's own start work before the launch is recorded apart (``start_work_s``).
Target: network - direct <= 2 s.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import _common
from bench._common import emit_json, table

MARKER = "PVMLAB-BOOT-OK"
TARGET_S = 2.0
TIMEOUT = 240.0
ARCHES = ("x86_64", "aarch64")
MODES = {
    "pxe": ("pxe",),
    "ipxe": ("ipxe",),
    "http": ("http",),
    "both": ("pxe", "ipxe"),
    "pxe-http": ("pxe", "http"),
}


def _vm_name(arch: str, way: str = "pxe") -> str:
    """The VM a way boots: the UEFI HTTP Boot way has its own (``--net-boot`` is the VM's)."""
    short = {"x86_64": "x86", "aarch64": "arm"}[arch]
    return f"http-{short}" if way == "http" else f"pxe-{short}"


def _boot_order(way: str) -> str:
    """``vm start --boot`` of a way: HTTP Boot is the NIC first, like PXE."""
    return "pxe" if way == "http" else way


def boot_direct(home: Path, arch: str, assets: Any, run: int) -> float:
    """One direct kernel boot; seconds from QEMU's launch to the marker, as the console stamper
    (the reader and clock of network boots too) reports it."""
    import threading

    from pvmlab import spawn
    from pvmlab.observe import stamp
    from pvmlab.qemu import firmware
    from pvmlab.qemu.argv import QemuConfig, build_argv, machine_type

    work = home / "direct" / f"{arch}-{run}"
    work.mkdir(parents=True, exist_ok=True)
    fw = firmware.find_uefi(arch, machine_type(arch, "uefi"))
    vars_copy = work / "vars.fd"
    vars_copy.write_bytes(fw.vars_template.read_bytes())
    cfg = QemuConfig(
        name=f"direct-{arch}",
        arch=arch,  # type: ignore[arg-type]
        firmware="uefi",
        accel="tcg",
        mac="52:54:00:00:00:01",
        tap=None,
        serial_log=work / "console.log",
        qmp_socket=work / "qmp.sock",
        pid_file=work / "qemu.pid",
        uefi_code=fw.code,
        uefi_vars=vars_copy,
        kernel=assets.kernel,
        initrd=assets.initrd,
        append=assets.cmdline,
    )
    events: list[dict[str, Any]] = []
    t0 = time.time()
    with spawn.spawn(build_argv(cfg), grace=2.0) as proc:
        stamper = threading.Thread(
            target=stamp.watch,
            args=(cfg.serial_log, stamp.stamps_path(cfg.serial_log), proc.pid, t0),
            kwargs={"ready": re.compile(MARKER), "on_event": events.append},
            daemon=True,
        )
        stamper.start()
        stamper.join(TIMEOUT)  # the guest powers off after the marker, which ends the stamper
    stamper.join(10)
    ready = [e for e in events if e.get("event") == "ready"]
    if not ready:
        raise RuntimeError(f"direct boot of {arch} did not reach {MARKER}: see {cfg.serial_log}")
    return float(ready[0]["t"])


def boot_network(home: Path, name: str, boot: str) -> tuple[float, float, dict[str, Any]]:
    """One network boot of VM ``name`` (``boot``: pxe or ipxe) with ``vm start --wait``'s own
    call: seconds from QEMU's launch to the marker (the console stamper's clock, the same as
    ``vm timeline``'s total), pvmlab's start work before the launch, and the timeline."""
    from pvmlab.home import LabHome
    from pvmlab.observe import timeline
    from pvmlab.vm import boot as boot_mod
    from pvmlab.vm import runtime, state

    h = LabHome(home)
    pattern = re.compile(MARKER)
    try:
        result = boot_mod.start_and_wait(
            h, name, pattern=pattern, timeout=TIMEOUT, boot=boot, accel="tcg"
        )
        if not result.ready:
            raise RuntimeError(f"{boot} boot: {result.reason}; see {h.vm_log(name)}")
        deadline = time.monotonic() + 30
        while state.running_pid(h, name) is not None and time.monotonic() < deadline:
            time.sleep(0.05)  # the guest powers off by itself
    finally:
        runtime.stop_vm(h, name, force=True)
    tl = timeline.timeline_of_vm(h, name, pattern)
    return result.elapsed, result.started_after, tl.as_dict()


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def _order(ways: list[str], i: int) -> list[str]:
    """Round ``i``'s order: rotated each round, so no way always boots first."""
    k = i % len(ways)
    return ways[k:] + ways[:k]


def run(n: int, arches: list[str], keep: Path | None, mode: str = "both") -> dict[str, Any]:
    from conftest import run_pvmlab  # type: ignore[import-not-found]
    from fixtures import bootassets  # type: ignore[import-not-found]

    assets = {arch: bootassets.build(arch) for arch in arches}
    nets = list(MODES[mode])
    ways = ["direct", *nets]
    results: dict[str, Any] = {
        "machine": _common.machine(),
        "n": n,
        "mode": mode,
        "ways": ways,
        "arches": {},
    }
    with _common.workdir(keep, "pvmlab-boot-overhead-") as work:
        home = (work / "home").absolute()
        with _common.netlab.running_lab(home):
            try:
                for arch in arches:
                    a = assets[arch]
                    run_pvmlab(
                        "distro", "import", "tiny", "--arch", arch, "--kernel", str(a.kernel),
                        "--initrd", str(a.initrd), "--cmdline", a.cmdline, home=home,
                    )  # fmt: skip
                    run_pvmlab(
                        "vm", "create", _vm_name(arch), "--arch", arch, "--firmware", "uefi",
                        "--distro", "tiny", home=home,
                    )  # fmt: skip
                    if "http" in nets:
                        run_pvmlab(
                            "vm", "create", _vm_name(arch, "http"), "--arch", arch,
                            "--net-boot", "http", "--distro", "tiny", home=home,
                        )  # fmt: skip
                times = {arch: {w: list[float]() for w in ways} for arch in arches}
                start_work = {arch: {w: list[float]() for w in nets} for arch in arches}
                timelines = {arch: {w: list[dict[str, Any]]() for w in nets} for arch in arches}
                for i in range(n):
                    for arch in arches:
                        for way in _order(ways, i):
                            if way == "direct":
                                secs = boot_direct(work, arch, assets[arch], i)
                            else:
                                secs, work_s, tl = boot_network(
                                    home, _vm_name(arch, way), _boot_order(way)
                                )
                                timelines[arch][way].append(tl)
                                start_work[arch][way].append(round(work_s, 3))
                            times[arch][way].append(round(secs, 2))
                            print(f"{arch} {way} #{i + 1}: {secs:.2f} s", file=sys.stderr)
            finally:
                run_pvmlab("clean", home=home, check=False)
        for arch in arches:
            results["arches"][arch] = _summarise(times[arch], timelines[arch])
            for way in nets:
                results["arches"][arch][way]["start_work_s"] = start_work[arch][way]
    return results


def _summarise(
    times: dict[str, list[float]], timelines: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    """One arch's figures: each way's runs and median; each network way against direct."""
    direct = _median(times["direct"])
    out: dict[str, Any] = {"direct_s": times["direct"], "direct_median_s": direct}
    for way, tls in timelines.items():
        median = _median(times[way])
        phases: dict[str, list[float]] = {}
        for tl in tls:
            for p in tl["phases"]:
                if p["duration"] is not None:
                    phases.setdefault(p["name"], []).append(p["duration"])
        out[way] = {
            "runs_s": times[way],
            "median_s": median,
            "difference_s": round(median - direct, 2),
            "ratio": round(median / direct, 2) if direct else None,
            "target_s": TARGET_S,
            "target_met": median - direct <= TARGET_S,
            "phase_medians_s": {k: _median(v) for k, v in phases.items()},
            "last_timeline": tls[-1] if tls else None,
        }
    return out


def show(results: dict[str, Any]) -> None:
    nets = [w for w in results["ways"] if w != "direct"]
    rows = []
    for arch, r in results["arches"].items():
        rows.append([arch, "direct", _runs(r["direct_s"]), _cell(r["direct_median_s"])])
        for way in nets:
            w = r[way]
            rows.append(
                [
                    "",
                    way,
                    _runs(w["runs_s"]),
                    _cell(w["median_s"]),
                    f"{w['difference_s']:+.2f}",
                    f"{w['ratio']:.2f}x",
                    "yes" if w["target_met"] else "no",
                ]
            )
    rows = [row + [""] * (7 - len(row)) for row in rows]
    table(
        f"UEFI boot to marker, TCG, {results['n']} boots each, order rotating",
        ["arch", "way", "runs s", "median s", "- direct", "ratio", f"<= {TARGET_S:.0f} s"],
        rows,
    )
    for arch, r in results["arches"].items():
        names = list(dict.fromkeys(k for way in nets for k in r[way]["phase_medians_s"]))
        table(
            f"{arch} network boot phases (median s)",
            ["phase", *nets],
            [[k, *(_cell(r[way]["phase_medians_s"].get(k)) for way in nets)] for k in names],
        )
    m = results["machine"]
    print(f"machine: {m['cpu']}, {m['nproc']} cores, kernel {m['kernel']}, {m['date']}")


def _runs(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.boot_overhead",
        description="Direct kernel boot vs network boots (firmware PXE and/or iPXE from local "
        "media; UEFI, TCG): medians, differences and ratios per architecture.",
    )
    parser.add_argument(
        "--mode",
        choices=list(MODES),
        default="both",
        help="network boots to compare with direct: pxe (firmware PXE -> TFTP iPXE), ipxe "
        "(vm start --boot ipxe: iPXE from a local drive), http (UEFI HTTP Boot -> iPXE over "
        "HTTP), both (pxe and ipxe; default) or pxe-http",
    )
    parser.add_argument("--n", type=int, default=3, help="boots each way per arch (default 3)")
    parser.add_argument(
        "--arch", action="append", choices=ARCHES, help="architecture (repeatable; default both)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.add_argument("--dir", type=Path, help="keep the work directory here (logs, consoles)")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")
    _common.require_root()
    with _common.interruptible():
        results = run(args.n, args.arch or list(ARCHES), args.dir, args.mode)
    if args.json:
        emit_json(results)
    else:
        show(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
