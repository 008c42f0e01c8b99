"""Where the lab's HTTP server listens and the URLs targets use to reach it: the one source.

dnsmasq hands iPXE ``boot_url`` (DHCP boot file), ``tftp/autoexec.ipxe`` chains to it, the HTTP
server binds ``listen_host:port`` and writes ``base_url`` into every script and kernel/initrd
URL, and the stack's state and status report both. All of them ask this module, so the port or
address is decided once:

    lab_endpoint(lab)               the running lab: the provisioner address, port 80; a dual-stack
                                    lab listens on both addresses, targets are pointed at IPv4
    lab_endpoint(lab, family=6)     the same, pointing targets at the IPv6 address (the boot URL
                                    DHCPv6 hands out); an IPv6-only lab always does
    bind_endpoint(lab, host, port)  a server bound elsewhere (tests, the manual entry point); a
                                    wildcard address is reached through the provisioner address
    endpoint.with_port(port)        the same after binding port 0 (the kernel picked the port)
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass

from pvmlab.records.models import LabSpec

HTTP_PORT = 80
BOOT_SCRIPT = "/boot.ipxe"  # the first script every iPXE client fetches
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 (names, not a bind)


@dataclass(frozen=True)
class HttpEndpoint:
    """The HTTP server's listening socket and the host name targets put into URLs."""

    listen_host: str
    port: int
    target_host: str
    also_listen: tuple[str, ...] = ()  # more addresses on the same port (dual stack)

    @property
    def listen_hosts(self) -> list[str]:
        return [self.listen_host, *self.also_listen]

    @property
    def base_url(self) -> str:
        """``http://HOST`` or ``http://HOST:PORT`` (no trailing slash); IPv6 in brackets."""
        host = self.target_host
        if _is_ipv6(host):
            host = f"[{host}]"
        return f"http://{host}" if self.port == HTTP_PORT else f"http://{host}:{self.port}"

    @property
    def boot_url(self) -> str:
        """The URL iPXE is handed by DHCP and chains to from ``autoexec.ipxe``."""
        return self.base_url + BOOT_SCRIPT

    def url(self, path: str) -> str:
        """``base_url`` joined with an absolute path (``/images/...``)."""
        return self.base_url + "/" + path.lstrip("/")

    def with_port(self, port: int) -> HttpEndpoint:
        return dataclasses.replace(self, port=port)


def lab_endpoint(lab: LabSpec, family: int | None = None) -> HttpEndpoint:
    """The running lab's server: on the provisioner's addresses, port 80. Targets are pointed
    at its IPv4 address, or at its IPv6 one with ``family=6`` or in an IPv6-only lab."""
    hosts = [str(lab.ip)] if lab.has_ipv4 else []
    if lab.has_ipv6:
        hosts.append(str(lab.iface6.ip))
    target = str(lab.iface6.ip) if family == 6 or not lab.has_ipv4 else hosts[0]
    return HttpEndpoint(
        listen_host=hosts[0], port=HTTP_PORT, target_host=target, also_listen=tuple(hosts[1:])
    )


def bind_endpoint(lab: LabSpec, host: str, port: int) -> HttpEndpoint:
    """A server bound to ``host:port``; targets reach a wildcard bind at the provisioner."""
    target = lab.primary_ip if host in _WILDCARDS else host
    return HttpEndpoint(listen_host=host, port=port, target_host=target)


def _is_ipv6(host: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
        return False
