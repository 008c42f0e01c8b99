"""`pvmlab provisioner`: define the lab network and run its DHCP/TFTP/HTTP stack."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from pvmlab.cli.common import emit_json, home, json_option
from pvmlab.errors import StateError
from pvmlab.records import validate

SERVICES = ("dnsmasq", "http", "supervisor")


@click.group()
def provisioner() -> None:
    """Define, start and stop the lab network and its DHCP/TFTP/HTTP stack.

    The provisioner is a network namespace on this host holding a bridge with the lab's
    address; dnsmasq (DHCP + TFTP) and the HTTP/iPXE server run inside it. Changing it needs
    root (or CAP_NET_ADMIN).
    """


DEFAULT_ADDRESS = "192.168.105.1/24"


def _addresses(st: dict[str, Any]) -> str:
    """The lab's addresses as status lines name them: ``IPv4/N``, ``IPv6/64`` or both."""
    return " and ".join(a for a in (st.get("address"), st.get("ipv6")) if a) or "-"


@provisioner.command()
@click.option(
    "--ip",
    "address",
    default=None,
    metavar="CIDR",
    help=f"The provisioner's IPv4 address and the lab subnet [default: {DEFAULT_ADDRESS}].",
)
@click.option(
    "--ipv6",
    "ipv6",
    metavar="PREFIX/64",
    help=(
        "Also serve IPv6 on this /64 (dual stack): router advertisements, DHCPv6 with a "
        "reservation per VM, PXE over IPv6. The provisioner takes PREFIX::1, or the address "
        "given (ADDRESS/64)."
    ),
)
@click.option(
    "--no-ipv4",
    "no_ipv4",
    is_flag=True,
    help="An IPv6-only lab (needs --ipv6): no IPv4 address, no DHCPv4.",
)
@click.option(
    "--dhcp-range",
    "dhcp_range",
    metavar="START,END",
    help="Dynamic range for unknown MACs (default: .100-.199 of a /24, the upper half otherwise).",
)
@click.option(
    "--uplink/--no-uplink",
    default=False,
    show_default=True,
    help=(
        "Give the targets outbound access (NAT inside the lab namespace through a userspace "
        "uplink, pasta from the passt package; DNS from dnsmasq on the lab bridge). The host's "
        "firewall and sysctls are not touched."
    ),
)
@json_option
def create(
    address: str | None,
    ipv6: str | None,
    no_ipv4: bool,
    dhcp_range: str | None,
    uplink: bool,
    as_json: bool,
) -> None:
    """Record the lab network (addresses, subnet, dynamic DHCP range, uplink) in the lab home.

    IPv4 by default; --ipv6 PREFIX/64 adds IPv6 (dual stack), --no-ipv4 with it makes the lab
    IPv6-only.
    """
    from pvmlab.errors import ValidationError
    from pvmlab.records import store
    from pvmlab.records.models import LabSpec

    iface6 = validate.ipv6_interface(ipv6) if ipv6 is not None else None
    if iface6 is not None:
        start6, end6 = validate.ipv6_dynamic_range(iface6.network)
        if start6 <= iface6.ip <= end6:
            raise ValidationError(
                f"the provisioner's IPv6 address {iface6.ip} is inside the DHCPv6 dynamic "
                f"range {start6}-{end6}",
                "give the prefix alone (the provisioner takes ::1) or an address below ::1000",
            )
    v4: dict[str, str | None] = {"address": None, "dhcp_start": None, "dhcp_end": None}
    if no_ipv4:
        if iface6 is None:
            raise ValidationError(
                "--no-ipv4 leaves the lab without any address",
                "give its IPv6 prefix too: --no-ipv4 --ipv6 PREFIX/64",
            )
        for given, option in ((address, "--ip"), (dhcp_range, "--dhcp-range")):
            if given is not None:
                raise ValidationError(
                    f"{option} is IPv4, but --no-ipv4 makes the lab IPv6-only",
                    f"drop {option} or --no-ipv4",
                )
        if uplink:
            raise ValidationError(
                "the uplink needs IPv4 (its NAT is IPv4), but --no-ipv4 makes the lab IPv6-only",
                "drop --uplink or --no-ipv4",
            )
    else:
        iface = validate.ipv4_interface(address if address is not None else DEFAULT_ADDRESS)
        if dhcp_range is None:
            start, end = validate.default_dhcp_range(iface)
        else:
            start, end = validate.dhcp_range(dhcp_range, iface)
        v4 = {"address": str(iface), "dhcp_start": str(start), "dhcp_end": str(end)}
    h = home()
    already = StateError(
        f"a lab is already defined in {h.root}",
        "use it as it is, `pvmlab provisioner destroy` it first, or pick another home "
        "with PVMLAB_HOME",
    )
    if h.lab_file.exists():
        raise already
    h.ensure()
    with h.locked():
        if h.lab_file.exists():  # created meanwhile by another `provisioner create`
            raise already
        lab = LabSpec(
            address=v4["address"], dhcp_start=v4["dhcp_start"], dhcp_end=v4["dhcp_end"],
            ipv6=str(iface6) if iface6 is not None else None, uplink=uplink,
        )
        store.save_lab(h, lab)
    if as_json:
        emit_json({"home": str(h.root), **lab.model_dump(mode="json")})
    else:
        click.echo(
            f"lab defined in {h.root}: provisioner "
            + _addresses({"address": lab.address, "ipv6": lab.ipv6})
            + (f", dynamic range {lab.dhcp_start}-{lab.dhcp_end}" if lab.has_ipv4 else "")
            + (", DHCPv6 range {}-{}".format(*lab.ipv6_dhcp_range) if lab.has_ipv6 else "")
            + (", with an uplink" if lab.uplink else "")
        )
        click.echo("next: `pvmlab provisioner start`")


@provisioner.command()
@click.option(
    "--uplink/--no-uplink",
    default=None,
    help="Give the targets outbound access, or take it away (see `provisioner create`).",
)
@click.option(
    "--ipv6",
    "ipv6",
    metavar="PREFIX/64",
    help=(
        "Give the lab this IPv6 /64 (as `provisioner create --ipv6`), or move it to another; "
        "each VM gets a reservation in it. The lab must be stopped."
    ),
)
@click.option(
    "--no-ipv6",
    "no_ipv6",
    is_flag=True,
    help="Take IPv6 away from a dual-stack lab (and the VMs' IPv6 reservations).",
)
@json_option
def configure(uplink: bool | None, ipv6: str | None, no_ipv6: bool, as_json: bool) -> None:
    """Change settings of the defined lab (its uplink, its IPv6 prefix); a running lab applies
    the uplink at its next start (`provisioner stop` + `start`)."""
    from pvmlab.errors import ValidationError
    from pvmlab.records import store
    from pvmlab.stack import control

    h = home()
    h.require()
    if ipv6 is not None and no_ipv6:
        raise ValidationError("--ipv6 and --no-ipv6 contradict each other", "give one of them")
    change_ipv6 = ipv6 is not None or no_ipv6
    if change_ipv6 and control.is_stack_running(h):
        raise StateError(
            "the lab is running: its IPv6 prefix can only change while it is stopped",
            "`pvmlab provisioner stop`, configure, then `pvmlab provisioner start`",
        )
    iface6 = validate.ipv6_interface(ipv6) if ipv6 is not None else None
    with h.locked():
        lab = store.load_lab(h)
        if change_ipv6:
            from pvmlab.vm.define import set_lab_ipv6

            lab, changed = set_lab_ipv6(h, lab, str(iface6) if iface6 is not None else None)
            store.save_lab(h, lab)
            for vm in changed:
                store.save_vm(h, vm)
        if uplink and not lab.has_ipv4:
            raise ValidationError(
                "the uplink needs IPv4 (its NAT is IPv4), and this lab is IPv6-only",
                "define a dual-stack lab (`provisioner create --ipv6 PREFIX/64`) for an uplink",
            )
        if uplink is not None and uplink != lab.uplink:
            lab = lab.model_copy(update={"uplink": uplink})
            store.save_lab(h, lab)
    running = control.is_stack_running(h)
    if as_json:
        emit_json({"home": str(h.root), **lab.model_dump(mode="json"), "running": running})
        return
    click.echo(f"lab in {h.root}: uplink {'on' if lab.uplink else 'off'}"
               + (f", ipv6 {lab.ipv6 or 'none'}" if change_ipv6 else ""))
    if running:
        click.echo("the lab is running: `pvmlab provisioner stop && pvmlab provisioner start` "
                   "applies it")


@provisioner.command("start")
@json_option
def start_cmd(as_json: bool) -> None:
    """Create the lab network and start dnsmasq and the HTTP server (returns once serving).

    On a degraded lab (see `provisioner status`) it repairs what is missing: the namespace,
    the bridge, the taps of running VMs, dnsmasq and the HTTP server.
    """
    from pvmlab.network.privilege import require_net_admin
    from pvmlab.stack import control

    require_net_admin("`pvmlab provisioner start`")
    h = home()
    st = control.start_stack(h)
    if as_json:
        emit_json(st)
        return
    for warning in st["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    if st["already_running"]:
        click.echo(f"already running (supervisor pid {st['services'][0]['pid']})")
    elif st["repairs"]:
        click.echo(
            f"lab repaired: {_addresses(st)} on bridge {st['bridge']} in netns {st['netns']}"
        )
        for repair in st["repairs"]:
            click.echo(f"  fixed: {repair}")
    elif st["was"] == "degraded":
        click.echo(f"lab {st['state']}: nothing pvmlab can repair itself (see the warnings)")
    else:
        click.echo(f"lab started: {_addresses(st)} on bridge {st['bridge']} in netns {st['netns']}")
    _print_services(st)
    _print_uplink(st)


@provisioner.command("stop")
@click.option(
    "--force",
    is_flag=True,
    help="Stop running VMs first (power button, then quit; as `vm stop`) instead of refusing.",
)
@json_option
def stop_cmd(force: bool, as_json: bool) -> None:
    """Stop the stack and remove the lab network (namespace, bridge, taps).

    Refuses while VMs run, naming them, unless --force is given.
    """
    from pvmlab.network.privilege import require_net_admin
    from pvmlab.stack import control

    require_net_admin("`pvmlab provisioner stop`")
    h = home()
    h.require()
    say = (lambda _msg: None) if as_json else (lambda msg: click.echo(msg, err=True))
    result = control.stop_stack(h, stop_vms=force, say=say)
    if as_json:
        emit_json(result)
        return
    for vm in result["stopped_vms"]:
        click.echo(f"stopped VM {vm['name']} (pid {vm['pid']}, {vm['how']})")
    for item in result["stopped"]:
        click.echo(f"stopped {item['name']} (pid {item['pid']})")
    if result["stragglers"]:
        click.echo(f"also stopped processes left in the namespace: {result['stragglers']}")
    click.echo(f"lab network {h.netns} removed")


@provisioner.command("status")
@json_option
def status_cmd(as_json: bool) -> None:
    """Show whether the lab is running, stopped or degraded (and why), each service, its PID,
    the addresses, the namespace and bridge, the leases and any damaged VM record."""
    from pvmlab.stack import control

    h = home()
    h.require()
    st = control.stack_status(h)
    if as_json:
        emit_json(st)
        return
    click.echo(f"lab {h.root}: {st['state']}")
    for problem in st["problems"]:
        click.echo(f"  {problem['problem']} (fix: {problem['hint']})")
    for damaged in st["damaged_records"]:
        click.echo(f"damaged VM record: {damaged['problem']} (fix: {damaged['hint']})")
    if st["address"] is None and st.get("ipv6") is None:
        click.echo("no lab defined (`pvmlab provisioner create`)")
        return
    if st["address"] is not None:
        click.echo(
            f"address {st['address']}  dynamic range {st['dhcp_range'][0]}-{st['dhcp_range'][1]}"
        )
    if st.get("ipv6") is not None:
        click.echo(
            f"ipv6 {st['ipv6']}  DHCPv6 range {st['dhcpv6_range'][0]}-{st['dhcpv6_range'][1]}"
        )
    click.echo(f"netns {st['netns']}  bridge {st['bridge']}  network up: {st['network_up']}")
    _print_services(st)
    _print_uplink(st)
    _print_leases(st)


@provisioner.command()
@click.option(
    "--service",
    type=click.Choice([*SERVICES, "all"]),
    default="all",
    show_default=True,
    help="Which log to show.",
)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines as they come.")
@click.option(
    "-n", "--lines", type=click.IntRange(min=0), default=40, show_default=True,
    help="How many lines from the end to show first.",
)
def logs(service: str, follow: bool, lines: int) -> None:
    """Show the stack's logs (dnsmasq with log-dhcp, HTTP requests as JSON lines, supervisor)."""
    h = home()
    h.require()
    names = list(SERVICES) if service == "all" else [service]
    paths = {name: h.service_log(name) for name in names}
    prefix = len(names) > 1
    offsets: dict[str, int] = {}
    for name, path in paths.items():
        if not path.exists():
            if not prefix:
                click.echo(f"(no {name} log yet: {path})", err=True)
            offsets[name] = 0
            continue
        data = path.read_bytes()
        offsets[name] = len(data)
        for line in data.decode(errors="replace").splitlines()[-lines:] if lines else []:
            click.echo(f"{name}: {line}" if prefix else line)
    while follow:
        time.sleep(0.25)
        for name, path in paths.items():
            offsets[name] = _follow(path, offsets[name], f"{name}: " if prefix else "")


def _follow(path: Path, offset: int, prefix: str) -> int:
    try:
        size = path.stat().st_size
    except OSError:
        return 0
    if size < offset:  # truncated or replaced
        offset = 0
    if size == offset:
        return offset
    with path.open("rb") as fh:
        fh.seek(offset)
        chunk = fh.read()
    end = chunk.rfind(b"\n")  # whole lines only; offsets count bytes, whatever the encoding
    if end < 0:
        return offset
    for line in chunk[:end].decode(errors="replace").split("\n"):
        click.echo(prefix + line)
    return offset + end + 1


@provisioner.command("reload")
def reload_cmd() -> None:
    """Re-render the DHCP reservations from the VM definitions and have dnsmasq re-read them.

    Returns once dnsmasq has re-read them. Damaged VM records are left out, with a warning.
    """
    from pvmlab.stack import control

    h = home()
    h.require()
    for damaged in control.damaged_records(h):
        click.echo(f"warning: {damaged['problem']} ({damaged['hint']})", err=True)
    if control.reload_stack(h):
        click.echo("reservations reloaded")
    else:
        click.echo("the stack is not running: nothing to reload")


@provisioner.command("destroy")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--force", is_flag=True, help="Stop running VMs first instead of refusing.")
def destroy_cmd(yes: bool, force: bool) -> None:
    """Stop the lab and forget its definition (lab.json). VMs and images are kept."""
    from pvmlab.network.privilege import require_net_admin
    from pvmlab.stack import control

    require_net_admin("`pvmlab provisioner destroy`")
    h = home()
    h.require()
    if not h.lab_file.exists():
        raise StateError(f"no lab is defined in {h.root}", "nothing to destroy")
    if not yes:
        click.confirm(f"stop the lab in {h.root} and remove its definition?", abort=True)
    control.stop_stack(h, stop_vms=force)
    with h.locked():
        h.lab_file.unlink(missing_ok=True)
    click.echo(f"lab in {h.root} stopped and its definition removed")


# --- printing ---------------------------------------------------------------------------------


def _print_services(st: dict[str, Any]) -> None:
    from pvmlab.cli.common import table

    rows = []
    for svc in st["services"]:
        url6 = svc.get("url6") if svc.get("url6") != svc.get("url") else None
        detail = " ".join(u for u in (svc.get("url"), url6) if u) or ", ".join(
            svc.get("serves", ["dnsmasq", "http"])
        )
        if svc.get("restarts"):
            detail += f" (restarted {svc['restarts']}x)"
        state = "running" if svc["running"] else "not answering" if svc["pid"] else "stopped"
        rows.append([svc["name"], state, str(svc["pid"] or "-"), detail])
    table(None, ["service", "state", "pid", "serves"], rows)


def _print_uplink(st: dict[str, Any]) -> None:
    up = st.get("uplink") or {}
    if not up.get("enabled"):
        click.echo("uplink: none (targets have no outbound access; `provisioner create --uplink`)")
        return
    if not up.get("running") and st.get("state", "stopped") == "stopped":
        click.echo(f"uplink: on ({up['program']}, starts with the lab)")
        return
    if not up.get("running"):
        click.echo(f"uplink: DOWN ({up['program']} not running; `pvmlab provisioner start` "
                   "brings it back)")
        return
    dns = up["dns"]
    click.echo(
        f"uplink: up, {up['program']} pid {up['pid']}, {up['interface']} {up['address']} "
        f"via {up['gateway']}, NAT {'on' if up['nat'] else 'MISSING'}; DNS on "
        f"{dns['served_on']} -> {dns['forwarded_to']} -> "
        f"{', '.join(dns['host_resolvers']) or 'the host resolver'}"
    )


def _print_leases(st: dict[str, Any]) -> None:
    from pvmlab.cli.common import table

    names = {r["mac"]: r["name"] for r in st["reservations"]}
    if not st["leases"]:
        click.echo("no leases")
        return
    rows = []
    for lease in st["leases"]:
        expires = "never" if lease["expires"] == 0 else time.strftime(
            "%Y-%m-%d %H:%M:%S", time.localtime(lease["expires"])
        )
        rows.append(
            [lease["ip"], lease["mac"], names.get(lease["mac"], lease["hostname"] or "-"), expires]
        )
    table("leases", ["ip", "mac", "vm / host", "expires"], rows)

