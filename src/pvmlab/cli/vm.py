"""`pvmlab vm …` (create, start, stop, list, logs, console, timeline, ssh, cp, clean) and
`pvmlab clean`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from pvmlab.arch import (
    CLI_CHOICES,
    DEFAULT_FIRMWARE,
    DEFAULT_LOADER,
    DEFAULT_NET_BOOT,
    FIRMWARE_NAMES,
    LOADER_NAMES,
    NET_BOOT_NAMES,
)
from pvmlab.cli.common import emit_json, home, json_option
from pvmlab.errors import StateError, ValidationError
from pvmlab.home import LabHome
from pvmlab.qemu.argv import ACCEL_NAMES, BOOT_MODES, Boot
from pvmlab.records import store, validate
from pvmlab.records.models import DEFAULT_CPUS, DEFAULT_MEMORY_MIB

DEFAULT_WAIT_FOR = r"login:"


def _say(msg: str) -> None:
    click.echo(msg)


def _err(msg: str) -> None:
    click.echo(msg, err=True)


def _name(value: str) -> str:
    return validate.vm_name(value)


_TEMPLATE_NOTE = " A Jinja2 template, copied at create (see docs/install.md)."
_INSTALL_FILES = {
    "preseed": "Install unattended with this Debian/Ubuntu installer preseed.",
    "autoinstall": "Install unattended with this Ubuntu autoinstall (cloud-config user-data"
    " with an autoinstall: key).",
    "kickstart": "Install unattended with this Fedora/RHEL kickstart.",
    "user-data": "Boot with this cloud-init NoCloud user-data (cloud images).",
}


def install_options(fn: Any) -> Any:
    """The options that give a VM an unattended install (shared by create and reinstall)."""
    path = click.Path(dir_okay=False, path_type=Path)
    fn = click.option("--proxy", help="HTTP proxy URL the installer uses.")(fn)
    fn = click.option(
        "--mirror", help="Package mirror URL the installer uses (http(s)://host[:port]/path)."
    )(fn)
    for kind, text in reversed(_INSTALL_FILES.items()):
        fn = click.option(f"--{kind}", f"install_{kind.replace('-', '_')}", type=path,
                          metavar="FILE", help=text + _TEMPLATE_NOTE)(fn)  # fmt: skip
    return click.option(
        "--unattended",
        is_flag=True,
        help="Install unattended with the shipped configuration for the distro (debian: preseed,"
        " ubuntu: autoinstall, fedora: kickstart, cloud images: user-data): SSH server, user"
        " pvmlab with sudo and the lab's SSH key.",
    )(fn)


def _install_request(opts: dict[str, Any]) -> dict[str, Any]:
    """The install fields of a request from the install options (at most one kind), which it
    takes out of ``opts``."""
    given = [(k, opts.pop(f"install_{k.replace('-', '_')}")) for k in _INSTALL_FILES]
    chosen = [(k, p) for k, p in given if p is not None]
    if opts.pop("unattended"):
        chosen.append(("default", None))
    if len(chosen) > 1:
        raise ValidationError(
            "give at most one of --unattended, --preseed, --autoinstall, --kickstart, --user-data",
            "a VM installs with one configuration",
        )
    kind, template = chosen[0] if chosen else (None, None)
    return {"install": kind, "install_template": template,
            "mirror": opts.pop("mirror"), "proxy": opts.pop("proxy")}  # fmt: skip


def _require_defined(h: LabHome, name: str) -> None:
    """VM ``name`` has a record, readable or not (its logs and console need no more)."""
    h.require()
    if not h.vm_file(name).exists():
        raise StateError(f"no VM named {name!r}", "see `pvmlab vm list` for the defined VMs")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def vm() -> None:
    """Create, boot, watch and remove target VMs.

    \b
    A target VM network-boots from the lab's provisioner by default:
      pvmlab vm create t1 --arch aarch64 --distro demo
      pvmlab vm start t1 --wait
    """


@vm.command("create")
@click.argument("name")
@click.option(
    "--arch",
    type=click.Choice(CLI_CHOICES),
    help="Guest architecture (default: the host's, so KVM/HVF can serve).",
)
@click.option(
    "--firmware",
    type=click.Choice(FIRMWARE_NAMES),
    default=DEFAULT_FIRMWARE,
    show_default=True,
    help="UEFI (OVMF/AAVMF) or legacy BIOS (SeaBIOS, x86_64 only).",
)
@click.option(
    "--net-boot",
    type=click.Choice(NET_BOOT_NAMES),
    default=DEFAULT_NET_BOOT,
    show_default=True,
    help="How the firmware fetches its first stage (iPXE): pxe (DHCP, then TFTP) or http"
    " (UEFI HTTP Boot: DHCP hands a URL, the lab's HTTP server sends it; UEFI only).",
)
@click.option("--mac", help="NIC MAC address (default: a random locally administered one).")
@click.option(
    "--ip",
    help="Reserved IPv4 address (default: the lowest free one below the DHCP dynamic range).",
)
@click.option(
    "--ipv6",
    metavar="ADDR",
    help=(
        "Reserved IPv6 address in the lab's /64 (labs made with `provisioner create --ipv6`; "
        "default: the lowest free one below the DHCPv6 dynamic range, PREFIX::1000)."
    ),
)
@click.option("--distro", help="Distro to network-boot (see `pvmlab distro ls`).")
@click.option("--cmdline", help="Extra kernel command line for this VM.")
@click.option(
    "--memory",
    "memory_mib",
    type=int,
    default=DEFAULT_MEMORY_MIB,
    show_default=True,
    help="Memory in MiB.",
)
@click.option(
    "--cpus", type=int, default=DEFAULT_CPUS, show_default=True, help="Number of virtual CPUs."
)
@click.option(
    "--disk-size",
    help="Create a qcow2 disk of this size (e.g. 10G); with --image at least the image's size "
    "(default then: the image's virtual size + 4 MiB for the cloud-init seed).",
)
@click.option(
    "--image",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Deploy this disk image onto the VM's disk at its first network boot: a qcow2/raw "
    "file, a name from `pvmlab image ls`, or a cloud image `distro pull` fetched "
    "(the deploy ramdisk writes and verifies it, then the VM boots its disk); --user-data is "
    "then its cloud-init user-data.",
)
@click.option(
    "--loader",
    type=click.Choice(LOADER_NAMES),
    help="First stage served over TFTP (UEFI): iPXE, or Debian's signed network GRUB "
    "(default: the distro's loader if it names one, else grub with --secure-boot, else ipxe).",
)
@click.option(
    "--secure-boot",
    is_flag=True,
    help="UEFI firmware with Secure Boot enforced and Microsoft's keys enrolled (QEMU's "
    "firmware descriptors); the first stage is then Debian's signed shim, which loads GRUB.",
)
@install_options
@json_option
def create_cmd(name: str, arch: str | None, as_json: bool, **fields: Any) -> None:
    """Define a target VM.

    Written to vms/NAME.json; a running stack reserves its MAC and IP at once. With an install
    option the VM installs unattended at its network boots until it reports itself installed.
    """
    from pvmlab.qemu.accel import host_arch
    from pvmlab.vm.define import CreateRequest, create

    install = _install_request(fields)  # the other options are CreateRequest's own fields
    req = CreateRequest(name=name, arch=validate.arch(arch or host_arch()), **fields, **install)
    spec = create(home(), req)
    if as_json:
        emit_json(spec.model_dump(mode="json"))
    else:
        _say(
            f"created VM {spec.name}: {spec.arch} {spec.firmware}, MAC {spec.mac}"
            + (f", IP {spec.ip}" if spec.ip else "")
            + (f", IPv6 {spec.ipv6}" if spec.ipv6 else "")
            + (f", network boot {spec.net_boot}" if spec.net_boot != DEFAULT_NET_BOOT else "")
            + (f", distro {spec.distro}" if spec.distro else "")
            + (f", image {spec.image} (deployed at its first start)" if spec.image else "")
            + (f", unattended install ({spec.install})"
               if spec.install and not spec.image else "")
            + (f", loader {spec.loader}" if spec.loader != DEFAULT_LOADER else "")
            + (", Secure Boot" if spec.secure_boot else "")
        )


@vm.command("reinstall")
@click.argument("name")
@install_options
@json_option
def reinstall_cmd(name: str, as_json: bool, **install: Any) -> None:
    """Make VM NAME install (or deploy) again at its next network boot.

    Clears its install status, so its boot script runs the installer again instead of
    booting the local disk. Install options replace its install configuration (or mirror,
    proxy) first. A VM made with --image is deployed again: its deploy ramdisk writes the image
    anew.
    """
    from pvmlab.vm.define import reinstall

    req = _install_request(install)
    spec = reinstall(home(), _name(name), req["install"], req["install_template"],
                     mirror=req["mirror"], proxy=req["proxy"])  # fmt: skip
    if as_json:
        emit_json(spec.model_dump(mode="json"))
    elif spec.image:
        _say(
            f"VM {spec.name} is deployed again from {spec.image} at its next network boot"
            f" (`pvmlab vm start {spec.name}`; restart it if it is running)"
        )
    else:
        _say(
            f"VM {spec.name} installs again ({spec.install}) at its next network boot"
            f" (`pvmlab vm start {spec.name}`; restart it if it is running)"
        )


@vm.command("start")
@click.argument("name")
@click.option(
    "--boot",
    type=click.Choice(BOOT_MODES),
    default="pxe",
    show_default=True,
    help=(
        "pxe: network first (disk second); disk: disk first, network as fallback; ipxe (UEFI"
        " only): iPXE from a local virtual drive, then the same HTTP chain, skipping the"
        " firmware's PXE and its ~4 s DHCP (network and disk as fallbacks)."
    ),
)
@click.option("--wait", is_flag=True, help="Return only when the console shows --wait-for.")
@click.option(
    "--wait-for",
    default=DEFAULT_WAIT_FOR,
    show_default=True,
    help="Regular expression to wait for on the serial console (implies --wait).",
)
@click.option(
    "--timeout",
    type=float,
    default=300.0,
    show_default=True,
    help="Seconds to wait with --wait/--wait-ssh before giving up (one limit for both).",
)
@click.option(
    "--wait-ssh",
    is_flag=True,
    help="Return only when SSH takes the lab's key (after --wait-for's pattern when that is given"
    " too).",
)
@click.option(
    "--ssh-user",
    default="root",
    show_default=True,
    help="Login user that --wait-ssh tries (as `vm ssh --user`).",
)
@click.option(
    "--accel",
    type=click.Choice(ACCEL_NAMES),
    help=(
        "Accelerator (default: $PVMLAB_ACCEL, else KVM/HVF when usable, KVM only once a test"
        " guest ran under it on this host, else TCG)."
    ),
)
@click.option(
    "-i",
    "--interactive",
    is_flag=True,
    help="Run in the foreground with the serial console on this terminal (Ctrl-A X quits).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the outcome as JSON for scripts (with --wait/--wait-ssh: ready, exited, halted,"
    " timeout, no_ssh or refused (the firmware refused an unsigned first stage under Secure Boot),"
    " the seconds since QEMU's launch, the matching line, QMP's run state).",
)
def start_cmd(
    name: str,
    boot: Boot,
    wait: bool,
    wait_for: str,
    timeout: float,
    wait_ssh: bool,
    ssh_user: str,
    accel: str | None,
    interactive: bool,
    as_json: bool,
) -> None:
    """Start a VM (network boot by default).

    QEMU runs in the lab namespace; its serial console goes to logs/NAME.log (the previous
    boot's is kept as NAME.log.1), QMP to monitors/NAME.qmp, its pid to pids/NAME.pid.
    """
    from pvmlab.observe import console
    from pvmlab.vm import boot as boot_mod
    from pvmlab.vm import runtime

    name = _name(name)
    wait_explicit = click.get_current_context().get_parameter_source("wait_for")
    if wait_explicit is not None and wait_explicit.name == "COMMANDLINE":
        wait = True
    pattern = console.compile_pattern(wait_for) if wait else None
    if interactive and (wait or wait_ssh or as_json):
        raise StateError(
            "--interactive cannot be combined with --wait, --wait-ssh or --json", "choose one"
        )
    h = home()
    say = _err if as_json else _say  # with --json, stdout holds the JSON alone
    if pattern is None and not wait_ssh:
        started = runtime.start_vm(
            h, name, boot=boot, requested_accel=accel, interactive=interactive, say=say
        )
        if as_json:
            emit_json({"name": name, "pid": started.pid, "accel": started.accel.name})
        elif not interactive:
            _say(f"started VM {name} (pid {started.pid}); console: {h.vm_log(name)}")
        return
    result = boot_mod.start_and_wait(
        h,
        name,
        pattern=pattern,
        timeout=timeout,
        boot=boot,
        accel=accel,
        ssh_user=ssh_user if wait_ssh else None,
        say=say,
    )
    if as_json:
        emit_json(result.as_dict())
    if result.ready:
        if pattern is not None:
            seen = result.console_elapsed if wait_ssh else result.elapsed
            say(f"{name}: saw {wait_for!r} after {seen or 0.0:.1f} s: {result.line}")
            if not as_json:
                _say_timeline(name, pattern)
        if wait_ssh:
            say(f"{name}: SSH as {ssh_user} answered after {result.elapsed:.1f} s")
        return
    _explain_failure(name)
    if result.outcome == "halted":
        raise StateError(
            result.reason,
            f"the console and the stack's view are above; `pvmlab vm stop {name}` ends it",
        )
    if result.outcome == "exited":
        raise StateError(
            result.reason,
            f"the console and the stack's view are above; full console: {h.vm_log(name)}",
        )
    if result.outcome == "refused":
        raise StateError(
            result.reason,
            f"`pvmlab vm timeline {name}` shows the chain stopping after the first stage's "
            f"TFTP fetch; `pvmlab vm stop {name}` ends it",
        )
    if result.outcome == "no_ssh":
        raise StateError(
            result.reason,
            f"it is still running (`pvmlab vm ssh {name}` to retry, `pvmlab vm stop {name}`); "
            "the guest needs an SSH server and the lab key for that user",
        )
    raise StateError(
        result.reason,
        f"it is still running (`pvmlab vm stop {name}`); the console and stack's view are above",
    )


def _say_timeline(name: str, pattern: Any) -> None:
    """The total and the slowest phase of the boot just seen (never fails the start)."""
    from pvmlab.errors import PvmlabError
    from pvmlab.observe import timeline

    try:
        _say(timeline.boot_summary_line(timeline.wait_for_ready(home(), name, pattern)))
    except (PvmlabError, OSError) as exc:
        _err(f"{name}: no boot timeline: {exc}")


@vm.command("timeline")
@click.argument("name")
@click.option(
    "--wait-for",
    help=(
        "Regular expression marking the end of the boot on the console (default: the"
        f" --wait-for of the last `vm start --wait`, else {DEFAULT_WAIT_FOR!r})."
    ),
)
@click.option(
    "--svg",
    "svg_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also write the boot as an SVG Gantt chart (one bar per phase) to this file.",
)
@json_option
def timeline_cmd(name: str, wait_for: str | None, svg_path: Path | None, as_json: bool) -> None:
    """Show where the seconds of VM NAME's last boot went, phase by phase."""
    from pvmlab.observe import console, timeline
    from pvmlab.vm import state

    name = _name(name)
    if wait_for is None:
        record = state.load_runtime(home(), name)
        wait_for = (record.wait_for if record else None) or DEFAULT_WAIT_FOR
    tl = timeline.timeline_of_vm(home(), name, console.compile_pattern(wait_for))
    if svg_path is not None:
        _write_svg(svg_path, tl.as_dict())
    if as_json:
        emit_json(tl.as_dict())
    else:
        timeline.print_timeline_table(tl)


def _write_svg(path: Path, tl: dict[str, Any]) -> None:
    from pvmlab.errors import PvmlabError
    from pvmlab.report.gantt import timeline_svg

    try:
        path.write_text(timeline_svg(tl) + "\n")
    except OSError as exc:
        raise PvmlabError(
            f"cannot write the chart to {path}: {exc.strerror or exc}",
            "give --svg a path in a directory that exists and is writable",
        ) from None


def _explain_failure(name: str) -> None:
    from pvmlab.errors import PvmlabError
    from pvmlab.observe import console, stacklog

    h = home()
    lines = console.tail(h.vm_log(name), 20)
    _err(f"--- last {len(lines)} console lines of {name} ---")
    for line in lines:
        _err(f"  {line}")
    try:
        spec = store.load_vm(h, name)
    except PvmlabError as exc:  # the record was damaged meanwhile: no addresses to look for
        _err(f"no stack view: {exc}")
        return
    for line in stacklog.stack_view(h, spec.mac, spec.address).summary_lines():
        _err(line)


@vm.command("stop")
@click.argument("name")
@click.option("--force", is_flag=True, help="Skip the ACPI power button: quit QEMU at once.")
@click.option(
    "--timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds to wait for the guest to power off before quitting QEMU.",
)
def stop_cmd(name: str, force: bool, timeout: float) -> None:
    """Stop a VM: power button, then QMP quit, then SIGKILL.

    A guest that is not running code (paused, internal error, panicked) is quit at once. Its
    pid file, sockets and tap are removed afterwards.
    """
    from pvmlab.vm import runtime

    name = _name(name)
    how = runtime.stop_vm(home(), name, force=force, timeout=timeout, say=_say)
    if how == "not-running":
        _say(f"VM {name} is not running")
    else:
        _say(f"stopped VM {name} ({how})")


# `vm list --json`'s fields; the table shows them but for boot/net_boot/loader/secure_boot,
# which it folds into one BOOT column (boot_chain)
FIELDS = ["name", "arch", "firmware", "boot", "net_boot", "loader", "secure_boot", "boot_chain",
          "mac", "ip", "ipv6", "distro", "state", "accel", "pid", "provisioning", "install"]
TABLE_COLUMNS = [("name", "name"), ("arch", "arch"), ("firmware", "firmware"),
                 ("boot", "boot_chain"), ("mac", "mac"), ("ip", "ip"), ("ipv6", "ipv6"),
                 ("distro", "distro"), ("state", "state"), ("accel", "accel"), ("pid", "pid"),
                 ("provisioning", "provisioning"), ("install", "install")]  # fmt: skip


def boot_chain(net_boot: str, loader: str, secure_boot: bool, last_boot: str | None) -> str:
    """How the VM reaches its first stage and which one, compactly: ``pxe/ipxe``,
    ``http/ipxe``, ``pxe/grub+sb`` (Secure Boot: shim, then GRUB); ``media/ipxe`` when its
    last start booted iPXE from the local drive (``vm start --boot ipxe``)."""
    how = "media" if last_boot == "ipxe" else net_boot
    return f"{how}/{loader}" + ("+sb" if secure_boot else "")


def _rows() -> list[dict[str, Any]]:
    """One row per VM: the healthy records with their run state from QEMU (QMP), and the
    damaged records with their path, problem and fix (state ``damaged``)."""
    from pvmlab.deploy import state as deploy_state
    from pvmlab.qemu import qmp
    from pvmlab.stack import installcfg
    from pvmlab.vm import runtime, state

    h = home()
    h.require()
    healthy, damaged = store.scan_vms(h)
    out: list[dict[str, Any]] = []
    for spec in healthy:
        run_state = state.run_state(h, spec.name)
        rt = state.load_runtime(h, spec.name)
        row: dict[str, Any] = {
            "name": spec.name,
            "arch": spec.arch,
            "firmware": spec.firmware,
            "net_boot": spec.net_boot,
            "boot": rt.boot if rt else "pxe",
            "loader": spec.loader,
            "secure_boot": spec.secure_boot,
            "boot_chain": boot_chain(spec.net_boot, spec.loader, spec.secure_boot,
                                     rt.boot if rt else None),
            "mac": spec.mac,
            "ip": spec.ip,
            "ipv6": spec.ipv6,
            "distro": spec.distro,
            "state": run_state,
            "accel": rt.accel if rt else None,
            "pid": state.running_pid(h, spec.name) if run_state != state.STOPPED else None,
            "install": None if spec.image else installcfg.status_summary(h, spec),
            "provisioning": deploy_state.summary(h, spec, run_state),
        }
        if run_state in qmp.HALTED_STATES or run_state == state.UNRESPONSIVE:
            row["qemu_log"] = runtime.qemu_log_tail(h, spec.name)
        out.append(row)
    for bad in damaged:
        pid = state.running_pid(h, bad.name)
        row = {c: None for c in FIELDS}
        row.update(
            name=bad.name,
            state="damaged",
            pid=pid,
            record=str(bad.path),
            problem=bad.problem,
            hint=bad.hint,
        )
        out.append(row)
    return sorted(out, key=lambda r: str(r["name"]))


@vm.command("list")
@json_option
def list_cmd(as_json: bool) -> None:
    """List VMs, their addresses and runtime state.

    The state is QEMU's own (QMP): running, paused, internal-error, guest-panicked… or stopped.
    BOOT is how the VM reaches its first stage and which one: pxe/ipxe, http/ipxe (UEFI HTTP
    Boot), pxe/grub, +sb under Secure Boot (shim, then GRUB), media/ipxe after `vm start --boot
    ipxe`; --json has each part (net_boot, loader, secure_boot, boot: the last start's order).
    PROVISIONING (image VMs): new, deploying NN%, interrupted at NN% (stopped mid-deploy: the
    next start deploys again), deployed, failed: why.
    A VM whose record cannot be read is listed as damaged, with the file and how to fix it.
    """
    rows = _rows()
    if as_json:
        emit_json(rows)
        return
    if not rows:
        _say("no VMs (create one with `pvmlab vm create NAME`)")
        return
    # the IPv6 column only where some VM has an IPv6 address (labs with `--ipv6`)
    columns = [(h, k) for h, k in TABLE_COLUMNS if h != "ipv6" or any(r.get("ipv6") for r in rows)]
    cells = [[h.upper() for h, _k in columns]] + [
        [str(r[k] or "-") for _h, k in columns] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for row in cells:  # plain aligned columns: readable, and never wrapped in a pipe
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    for r in rows:
        if r["state"] == "damaged":
            _err(f"{r['name']}: damaged record {r['record']}: {r['problem']} (hint: {r['hint']})")
        elif r.get("qemu_log") is not None:
            said = " | ".join(r["qemu_log"]) or "(nothing)"
            _err(
                f"{r['name']}: the guest is {r['state']}; QEMU's last words: {said}"
                f" (hint: `pvmlab vm stop {r['name']}`)"
            )


@vm.command("logs")
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing as the console log grows.")
@click.option("-n", "--lines", type=int, help="Print only the last N lines.")
def logs_cmd(name: str, follow: bool, lines: int | None) -> None:
    """Print a VM's serial console log."""
    from pvmlab.observe import console

    name = _name(name)
    h = home()
    _require_defined(h, name)
    path = h.vm_log(name)
    if not follow:
        if lines is not None:
            for line in console.tail(path, lines):
                click.echo(line)
            return
        if path.exists():
            sys.stdout.write(console.clean(path.read_text(errors="replace")))
        return
    try:
        for chunk in console.follow(path):
            sys.stdout.write(chunk)
            sys.stdout.flush()
    except KeyboardInterrupt:
        return


@vm.command("console")
@click.argument("name")
def console_cmd(name: str) -> None:
    """Attach to a VM's serial console.

    Keys typed go to the guest; Ctrl-] detaches and leaves the VM running.
    """
    from pvmlab.vm import attach, state

    name = _name(name)
    h = home()
    _require_defined(h, name)
    if state.running_pid(h, name) is None:
        raise StateError(
            f"VM {name} is not running",
            f"start it with `pvmlab vm start {name}`; "
            f"`pvmlab vm logs {name}` shows its last console",
        )
    attach.attach(state.console_socket(h, name), name=name)


@vm.command("ssh", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option(
    "-l",
    "--user",
    default="root",
    show_default=True,
    help=(
        "Login user on the VM. The lab's unattended installs put the lab key in root's "
        "authorized_keys; cloud images log in as their distro's user (debian, ubuntu, fedora)."
    ),
)
def ssh_cmd(name: str, command: tuple[str, ...], user: str) -> None:
    """Open a shell on VM NAME, or run COMMAND there, over SSH with the lab's key.

    \b
    Put the command after `--`:  pvmlab vm ssh t1 -- cat /etc/hostname
    ssh runs inside the lab namespace and goes to the VM's reserved IP with the lab's key
    (ssh/id_ed25519 in the lab home) and the lab's own known_hosts (a new VM's key is
    accepted on first contact, then checked). The exit code is the remote command's.
    """
    from pvmlab.vm import ssh

    h = home()
    vm_spec = ssh.target(h, _name(name))
    code = ssh.run_client(h, vm_spec, user, ssh.ssh_argv(h, vm_spec, user, list(command)))
    sys.exit(code)


@vm.command("cp")
@click.argument("src")
@click.argument("dst")
@click.option("-r", "--recursive", is_flag=True, help="Copy directories with their contents.")
@click.option(
    "-l", "--user", default="root", show_default=True, help="Login user on the VM (as vm ssh)."
)
def cp_cmd(src: str, dst: str, recursive: bool, user: str) -> None:
    """Copy files between this machine and a VM: NAME:path marks the VM's side.

    \b
      pvmlab vm cp ./payload.tar t1:/tmp/
      pvmlab vm cp t1:/var/log/installer/syslog .
    Uses scp (SFTP) with the same key and known_hosts as `vm ssh`. A local file whose name
    has a ':' is written ./name.
    """
    from pvmlab.vm import ssh

    h = home()
    h.require()
    plan = ssh.scp_argv(h, src, dst, user, recursive)
    ssh.target(h, plan.vm.name)
    code = ssh.run_client(h, plan.vm, user, plan.argv)
    if code != 0:
        raise StateError(
            f"copying {src} to {dst} failed (scp exit code {code})", "see scp's message above"
        )


@vm.command("clean")
@click.argument("name", required=False)
@click.option("--all", "all_", is_flag=True, help="Remove every VM of the lab.")
def clean_vm_cmd(name: str | None, all_: bool) -> None:
    """Remove a VM (or --all).

    Stops it and deletes its definition, disk, UEFI vars, logs and reservation.
    """
    from pvmlab.vm import clean

    if (name is None) == (not all_):
        raise StateError("give a VM name or --all (not both)", "e.g. `pvmlab vm clean t1`")
    h = home()
    h.require()
    if all_:
        _clean_all(h)
        return
    clean.clean_vm(h, _name(name or ""), say=_say)


def _clean_all(h: LabHome) -> None:
    """Remove every VM; one that cannot be removed does not stop the others."""
    from pvmlab.vm import clean as clean_mod

    removed, failed = clean_mod.clean_all(h, say=_say)
    if not removed and not failed:
        _say("no VMs to remove")
    if failed:
        raise StateError(
            f"could not remove {len(failed)} VM(s): "
            + "; ".join(f"{n}: {why}" for n, why in failed.items()),
            "the other VMs were removed; fix the cause and run the command again",
        )


@click.command("clean", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--purge",
    is_flag=True,
    help="Also stop the provisioner, remove the lab network and delete the lab home.",
)
def clean(purge: bool) -> None:
    """Stop and remove every VM (with --purge: the whole lab)."""
    from pvmlab.vm import clean as clean_mod

    h = home()
    if purge:
        clean_mod.purge(h, say=_say)
        return
    h.require()
    _clean_all(h)
