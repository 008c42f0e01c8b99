"""The HTTP server's request log (``logs/http.log``), read in one place.

The server (``pvmlab.stack.http``) writes one JSON object per finished request::

    {"start": 1795745610.374, "end": 1795745610.375, "duration": 0.0016, "client": "192.168.105.2",
     "method": "GET", "path": "/ipxe", "query": "mac=0e-ed-…", "status": 200, "bytes": 526,
     "mac": "0e:ed:4e:52:cc:08", ...}

``parse_http_log`` turns the lines into `HttpRequest` records (lines that are not such an
object are skipped) and ``requests_of_machine`` picks one machine's, by its MAC or its addresses.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pvmlab.arch import FIRST_STAGES
from pvmlab.bootpaths import first_stage_url_path

_FIRST_STAGE_PATHS = frozenset(first_stage_url_path(stage) for stage in FIRST_STAGES)


@dataclass(frozen=True)
class HttpRequest:
    start: float | None  # epoch seconds
    end: float | None
    duration: float | None
    client: str | None  # the client's IP
    method: str
    path: str
    query: str | None
    status: int | str | None
    bytes: int | None
    mac: str | None  # the machine the server took the request for, if it knew
    record: dict[str, Any] = field(repr=False, compare=False)  # every field as logged

    @property
    def is_boot_file(self) -> bool:
        """A kernel or initrd from the image store or the deploy ramdisk (not a script)."""
        return self.path.startswith(("/images/", "/deploy/ramdisk/"))

    @property
    def in_tftp_root(self) -> bool:
        """A file of the TFTP root, fetched over HTTP (served as /tftp/)."""
        return self.path.startswith("/tftp/")

    @property
    def is_first_stage(self) -> bool:
        """A first stage fetched over HTTP (UEFI HTTP Boot; iPXE then fetches its
        ``autoexec.ipxe`` beside it, which is not one)."""
        return self.path in _FIRST_STAGE_PATHS

    def names_mac(self, mac: str) -> bool:
        """The request is about ``mac`` (either spelling) by its ``mac`` field, path or query."""
        keys = {mac.lower(), mac.lower().replace(":", "-")}
        if (self.mac or "").lower() in keys:
            return True
        text = f"{self.path}?{self.query or ''}".lower()
        return any(k in text for k in keys)

    def as_line(self) -> str:
        """``GET /ipxe?mac=… 200``."""
        target = f"{self.path}?{self.query}" if self.query else self.path
        return f"{self.method} {target} {self.status if self.status is not None else ''}".strip()


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def parse_http_record(raw: str) -> HttpRequest | None:
    try:
        rec = json.loads(raw)
    except json.JSONDecodeError:
        return None
    if not isinstance(rec, dict):
        return None
    size = rec.get("bytes")
    status = rec.get("status")
    return HttpRequest(
        start=_number(rec.get("start")),
        end=_number(rec.get("end")),
        duration=_number(rec.get("duration")),
        client=str(rec["client"]) if rec.get("client") else None,
        method=str(rec.get("method") or "GET"),
        path=str(rec.get("path") or "?"),
        query=str(rec["query"]) if rec.get("query") else None,
        status=status if isinstance(status, int | str) else None,
        bytes=size if isinstance(size, int) and not isinstance(size, bool) else None,
        mac=str(rec["mac"]) if rec.get("mac") else None,
        record=rec,
    )


def parse_http_log(lines: Iterable[str]) -> list[HttpRequest]:
    """The requests recorded in ``lines``, in log order."""
    return [r for raw in lines if (r := parse_http_record(raw)) is not None]


def requests_of_machine(
    requests: Iterable[HttpRequest], mac: str, ips: Iterable[str]
) -> list[HttpRequest]:
    """The requests that name ``mac`` or came from one of its addresses, in log order."""
    addresses = set(ips)
    return [r for r in requests if r.client in addresses or r.names_mac(mac)]


def requests_since(requests: Iterable[HttpRequest], since: float) -> list[HttpRequest]:
    """The requests that started at ``since`` or later, by start time."""
    timed = [r for r in requests if r.start is not None and r.start >= since]
    return sorted(timed, key=lambda r: r.start or 0.0)
