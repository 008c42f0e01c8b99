"""What deploying an image costs: ``vm start`` to SSH through the deploy ramdisk, against
booting the same image straight from the disk, in one run.

    sudo .venv/bin/python -m bench.deploy [--n 1] [--json] [--workdir DIR]

A lab is started with the real CLI in a temporary home; the image is the deploy tests' small
x86_64 UEFI disk (tests/fixtures/deployimage.py: systemd-boot, the fixture's network kernel
with dropbear and the lab's key, an ext4 last partition). Each round (UEFI, TCG):

    deploy  ``vm reinstall`` + ``start_and_wait(ssh_user="root")`` (what ``vm start --wait-ssh``
            calls): firmware PXE -> iPXE -> deploy ramdisk -> image streamed, verified, grown,
            seeded -> reboot -> PXE again, whose script exits to the disk -> the disk's kernel
            -> SSH takes the lab key
    local   the same VM started again, PXE first: the per-MAC script hands over to the disk
    disk    the same VM started with ``--boot disk``: the firmware boots the disk at once

Times run from QEMU's launch to SSH ready. Printed: the medians, deploy / disk as the ratio, the
deploy's phases (``vm timeline``), and the stream's MB/s (http.log's image requests) next to the
HTTP server's raw throughput for the same image to a client namespace on the lab bridge (busybox
wget with the VM's address and MAC, the VM stopped), so the ramdisk's own cost is visible.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import _common
from bench._common import emit_json, netlab, table

TIMEOUT = 1800.0
VM = "dep1"


def _boot(home: Path, boot: str) -> dict[str, Any]:  # boot: "pxe" or "disk"
    from pvmlab.home import LabHome
    from pvmlab.vm import boot as vmboot
    from pvmlab.vm import runtime, ssh

    lab = LabHome(home)
    spec_ip = json.loads((home / "vms" / f"{VM}.json").read_text())["ip"]
    ssh.forget_host(lab, spec_ip)  # dropbear makes a new host key at every boot
    result = vmboot.start_and_wait(lab, VM, pattern=None, timeout=TIMEOUT,
                                   boot=boot, accel="tcg", ssh_user="root")  # type: ignore[arg-type]
    if not result.ready:
        raise RuntimeError(f"{boot} boot of {VM}: {result.outcome} {result.ssh_reason}")
    phases: list[dict[str, Any]] = []
    if boot == "pxe":
        from pvmlab.observe import timeline

        tl = timeline.timeline_of_vm(lab, VM, re.compile(r"PVMLAB-NET-UP"))
        phases = [p.as_dict() | {"label": p.label} for p in tl.phases]
    runtime.stop_vm(lab, VM, force=True, timeout=30)
    return {"seconds": result.elapsed, "phases": phases}


def _stream_rate(home: Path, since: int) -> float | None:
    records = [json.loads(line) for line in (home / "logs" / "http.log").read_text().splitlines()]
    chunks = [r for r in records[since:] if r.get("vm") == VM and r.get("kind") == "image"]
    if not chunks:
        return None
    seconds = chunks[-1]["end"] - chunks[0]["start"]
    return round(sum(r["bytes"] for r in chunks) / seconds / 1e6, 2) if seconds > 0 else None


def _raw_rate(lab: Any, home: Path, tmp: Path) -> float:
    """The whole image over HTTP to a client namespace posing as the VM (busybox wget)."""
    spec = json.loads((home / "vms" / f"{VM}.json").read_text())
    url = f"http://{lab.ip}/deploy/{spec['mac'].replace(':', '-')}/image"
    size = (home / "deploy" / "images" / f"{spec['image_sha256']}.raw").stat().st_size
    with netlab.client_on_bridge(lab.netns, lab.bridge, seed=str(tmp), mac=spec["mac"]) as client:
        client.add_address(f"{spec['ip']}/24")
        start = time.monotonic()
        client.run(["busybox", "wget", "-q", "-O", "/dev/null", url], timeout=600)
        return round(size / (time.monotonic() - start) / 1e6, 2)


def run(n: int, work: Path, keep: bool = False, deploy_only: bool = False) -> dict[str, Any]:
    from conftest import run_pvmlab
    from fixtures.bootassets import build_net, with_authorized_key
    from fixtures.deployimage import make_image

    home = work / "home"
    run_pvmlab("setup", home=home, check=False)
    pub = (home / "ssh" / "id_ed25519.pub").read_text()
    keyed = with_authorized_key(build_net(), pub, work / "assets")
    image = make_image(keyed, work / "bench.raw")
    rounds: dict[str, list[float]] = {"deploy": [], "local": [], "disk": []}
    phases: list[dict[str, Any]] = []
    streams: list[float] = []
    raws: list[float] = []
    with netlab.running_lab(home) as lab:
        try:
            run_pvmlab("vm", "create", VM, "--arch", "x86_64", "--firmware", "uefi",
                       "--memory", "512", "--image", str(image), home=home)  # fmt: skip
            for _ in range(n):
                run_pvmlab("vm", "reinstall", VM, home=home)
                seen = len((home / "logs" / "http.log").read_text().splitlines())
                deployed = _boot(home, "pxe")
                rounds["deploy"].append(deployed["seconds"])
                phases = deployed["phases"]
                rate = _stream_rate(home, seen)
                if rate is not None:
                    streams.append(rate)
                if deploy_only:  # --deploy-only: the VM's records stay those of the deploy
                    continue
                rounds["local"].append(_boot(home, "pxe")["seconds"])
                rounds["disk"].append(_boot(home, "disk")["seconds"])
                raws.append(_raw_rate(lab, home, work))
        finally:
            if not keep:  # --workdir keeps the VM's console and timeline records
                run_pvmlab("clean", home=home, check=False)
    medians = {k: round(statistics.median(v), 2) for k, v in rounds.items() if v}
    disk = medians.get("disk")
    return {
        "machine": _common.machine(),
        "image_bytes": image.stat().st_size,
        "rounds": rounds,
        "median_s": medians,
        "deploy_over_disk": round(medians["deploy"] / disk, 2) if disk else None,
        "local_over_disk": round(medians["local"] / disk, 2) if disk else None,
        "stream_mb_s": statistics.median(streams) if streams else None,
        "http_raw_mb_s": statistics.median(raws) if raws else None,
        "deploy_phases": [{k: p.get(k) for k in ("name", "label", "start", "duration",
                                                  "mb_per_s", "bytes")} for p in phases],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.deploy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1, help="rounds (default 1)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--workdir", type=Path, help="keep the lab home and image here")
    parser.add_argument("--deploy-only", action="store_true",
                        help="only the deploy boots (with --workdir: keeps their records)")
    args = parser.parse_args(argv)
    _common.require_root()
    _common.require_programs("qemu-system-x86_64", "dnsmasq", "busybox", "sfdisk", "mcopy")
    with _common.one_line_errors(), _common.interruptible(), \
            _common.workdir(args.workdir, "pvmlab-bench-deploy-") as work:
        result = run(args.n, work, keep=args.workdir is not None, deploy_only=args.deploy_only)
    if args.json or args.deploy_only:
        emit_json(result)
        return 0
    m = result["median_s"]
    table("deploy against disk boot", ["way", "median s (QEMU launch -> SSH)", "vs disk"], [
        ["deploy (PXE, ramdisk, reboot, disk)", str(m["deploy"]), str(result["deploy_over_disk"])],
        ["local (PXE, script exits to disk)", str(m["local"]), str(result["local_over_disk"])],
        ["disk (firmware boots the disk)", str(m["disk"]), "1.0"],
    ])  # fmt: skip
    table("deploy phases", ["deploy phase", "start s", "duration s", "MB/s"], [
        [str(p["label"]), str(p["start"]), str(p["duration"]), str(p.get("mb_per_s") or "")]
        for p in result["deploy_phases"]
    ])  # fmt: skip
    print(f"image {result['image_bytes']:,} B; stream {result['stream_mb_s']} MB/s in the "
          f"ramdisk, {result['http_raw_mb_s']} MB/s raw HTTP to a client namespace")
    return 0


if __name__ == "__main__":
    sys.exit(main())
