"""PXE over IPv6 against PXE over IPv4: one x86_64 UEFI machine booted in three labs.

    sudo .venv/bin/python -m bench.ipv6_boot [--n 3] [--json]

Three labs run side by side, each made with the real CLI and each holding the same VM (the test
fixture kernel + busybox initramfs, which prints ``PVMLAB-BOOT-OK`` and powers off):

    ipv4       `provisioner create`                          firmware PXE over IPv4
    dual       `provisioner create --ipv6 PREFIX/64`          the same (IPv4 comes first)
    ipv6-only  `provisioner create --ipv6 PREFIX/64 --no-ipv4` PXE over IPv6 (DHCPv6, option 59)

N rounds, the order rotating each round; each boot is timed from QEMU's launch to the marker by
the console stamper (``vm start --wait``'s own call). Prints each lab's median, its ratio to
IPv4, and the median of each boot phase (``pvmlab vm timeline``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from bench import _common
from bench._common import emit_json, table
from bench.boot_overhead import boot_network

PREFIX = "fd00:b007::/64"
LABS: dict[str, tuple[str, ...]] = {
    "ipv4": (),
    "dual": ("--ipv6", PREFIX),
    "ipv6-only": ("--ipv6", PREFIX, "--no-ipv4"),
}
VM = "bench-x86"


def run(n: int, keep: Path | None) -> dict[str, Any]:
    import contextlib

    from conftest import run_pvmlab  # type: ignore[import-not-found]
    from fixtures import bootassets  # type: ignore[import-not-found]

    a = bootassets.build("x86_64")
    times: dict[str, list[float]] = {lab: [] for lab in LABS}
    phases: dict[str, dict[str, list[float]]] = {lab: {} for lab in LABS}
    with _common.workdir(keep, "pvmlab-ipv6-boot-") as work, contextlib.ExitStack() as labs:
        homes = {lab: (work / lab).absolute() for lab in LABS}
        for lab, args in LABS.items():
            labs.enter_context(_common.netlab.running_lab(homes[lab], *args))
            labs.callback(run_pvmlab, "clean", home=homes[lab], check=False)
            run_pvmlab(
                "distro", "import", "tiny", "--arch", "x86_64", "--kernel", str(a.kernel),
                "--initrd", str(a.initrd), "--cmdline", a.cmdline, home=homes[lab],
            )  # fmt: skip
            run_pvmlab("vm", "create", VM, "--arch", "x86_64", "--firmware", "uefi",
                       "--distro", "tiny", home=homes[lab])  # fmt: skip
        order = list(LABS)
        for i in range(n):
            k = i % len(order)
            for lab in order[k:] + order[:k]:
                secs, _, tl = boot_network(homes[lab], VM, "pxe")
                times[lab].append(round(secs, 2))
                for p in tl["phases"]:
                    if p["duration"] is not None:
                        phases[lab].setdefault(p["name"], []).append(p["duration"])
                print(f"{lab} #{i + 1}: {secs:.2f} s", file=sys.stderr)
    base = statistics.median(times["ipv4"])
    return {
        "machine": _common.machine(),
        "n": n,
        "labs": {
            lab: {
                "runs_s": times[lab],
                "median_s": round(statistics.median(times[lab]), 2),
                "ratio_to_ipv4": round(statistics.median(times[lab]) / base, 2),
                "phase_medians_s": {
                    name: round(statistics.median(v), 2) for name, v in phases[lab].items()
                },
            }
            for lab in LABS
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3, help="rounds (each boots every lab once)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--keep", type=Path, help="keep the lab homes in this directory")
    args = parser.parse_args()
    _common.require_root()
    _common.require_programs("qemu-system-x86_64", "dnsmasq")
    with _common.interruptible(), _common.one_line_errors():
        results = run(args.n, args.keep)
    if args.json:
        emit_json(results)
        return
    labs = results["labs"]
    table(
        f"x86_64 UEFI network boot to the marker, TCG, n={results['n']} (median s)",
        ["lab", "median s", "ratio to IPv4", "runs"],
        [[lab, f"{r['median_s']:.2f}", f"{r['ratio_to_ipv4']:.2f}",
          ", ".join(f"{t:.1f}" for t in r["runs_s"])] for lab, r in labs.items()],
    )  # fmt: skip
    names = list(dict.fromkeys(n for r in labs.values() for n in r["phase_medians_s"]))
    table(
        "phase medians (s)",
        ["phase", *labs],
        [[name, *(f"{r['phase_medians_s'].get(name, 0):.2f}" for r in labs.values())]
         for name in names],
    )  # fmt: skip


if __name__ == "__main__":
    main()
