"""The lab's HTTP server: iPXE scripts, kernels and initrds, boot configuration as JSON.

    GET /boot.ipxe              first script for every iPXE client: chains to /ipxe?mac=…
    GET /ipxe?mac=&arch=&platform=
                                the machine's script (kernel, initrd, command line, boot), or a
                                short script that prints why it cannot boot and exits, so the
                                firmware moves on to the next boot device
    GET|HEAD /images/D/A/FILE   kernels and initrds from the lab home's images/ (sendfile; one
                                Range per request, If-Range: ``stack.ranges``)
    GET|HEAD /tftp/FILE         the first stages (iPXE binaries), same files as TFTP serves
    GET /config/<mac>           the machine's boot configuration as JSON

Records are read on every request (they change while the stack runs). Static paths are
confined to their root: every segment must be a plain name (no dot-dot, no separators, no
percent-decoded tricks), and the resolved file (after symlinks) must still be inside the root
and be a regular file.

Whatever a lab client does, the server keeps answering: connections are timed, capped and
replaced by ``stack.connguard`` (idle, request-head, body and stalled-send timeouts; at most a
few thousand connections; idle ones wait in the kernel until they send), and a request aiohttp
cannot parse gets 400 and one short, rate-limited log line instead of a traceback.

Every request is logged as one JSON object per line to ``logs/http.log`` (bounded and rotated,
``stack.logfiles``: older lines in ``http.log.1`` ...), written when the response has been
sent, so boot timelines can be built from it:

    time      ISO 8601 (UTC, milliseconds) of the request's start
    start/end epoch seconds (floats) of the start and of the last byte sent
    duration  seconds
    client    the client's IP address
    method, path (as sent, still percent-encoded), query (raw query string or null)
    status    HTTP status; bytes: body bytes sent (0 for HEAD)
    range     the Range header, when given; complete: whether a file body went out whole
    mac, vm   the machine the request was about (/ipxe and /config), when known
    arch, platform  what iPXE reported (/ipxe); outcome: boot | refused | unknown (/ipxe)

Scripts answer 200 even when a machine cannot boot (iPXE must run them to print why); the
``X-Pvmlab-Boot`` header says which (chain, boot, refused, unknown).

Manual run: ``python -m pvmlab.stack.http --home H --host 127.0.0.1 --port 8080``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import re
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger, AbstractStreamWriter
from aiohttp.http_exceptions import HttpProcessingError

from pvmlab.errors import PvmlabError, StateError, ValidationError
from pvmlab.home import LabHome
from pvmlab.records import validate
from pvmlab.records.models import LabSpec
from pvmlab.stack import connguard, ranges, render
from pvmlab.stack.bootconfig import BootConfig, boot_config
from pvmlab.stack.connguard import (
    ConnectionGuard,
    HttpLimits,
    connection_cap,
    raise_fd_limit,
)
from pvmlab.stack.endpoint import HttpEndpoint, bind_endpoint
from pvmlab.stack.logfiles import BoundedFileHandler, LogBounds, Notes

log = logging.getLogger(__name__)

TEXT = "text/plain"
HOME_KEY = web.AppKey("home", LabHome)
LAB_KEY = web.AppKey("lab", LabSpec)
URL_KEY = web.AppKey("url", dict[str, str])  # {"base": URL targets use}, set once bound
EXTRA = web.RequestKey("pvmlab_log", dict[str, Any])  # fields a handler adds to its log line
LISTEN_BACKLOG = 4096  # connections the kernel queues while the loop accepts (a flood's burst)
SHUTDOWN_TIMEOUT = 5.0  # how long a stop waits for responses in flight

# One path segment we serve: a plain name, not hidden, no separators or percent signs.
_SEGMENT = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,127}")
_PARAM = re.compile(r"[A-Za-z0-9_-]{1,16}")
_ECHO_UNSAFE = re.compile(r"[^\x20-\x7e]|[$#;|&]")


# --- templates ------------------------------------------------------------------------------


def _one_line(value: Any) -> Any:
    """Jinja2 finalize hook: no value may carry a newline or control character into a script."""
    text = "" if value is None else str(value)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise ValueError(f"refusing to write a control character into an iPXE script: {text!r}")
    return value


_ENV = render.environment(finalize=_one_line)


def echo_text(text: str) -> str:
    """Text that iPXE's ``echo`` prints as is (no settings expansion, separators or comments)."""
    return " ".join(_ECHO_UNSAFE.sub("", text).split())


def render_boot_script(base_url: str) -> str:
    return _ENV.get_template("boot.ipxe.j2").render(base_url=base_url)


def render_machine_script(cfg: BootConfig) -> str:
    if not cfg.bootable:
        return render_refusal(cfg.problem or "this machine cannot boot from the network")
    return _ENV.get_template("machine.ipxe.j2").render(cfg=cfg)


def render_refusal(reason: str) -> str:
    return _ENV.get_template("refuse.ipxe.j2").render(reason=echo_text(reason))


# --- request log ----------------------------------------------------------------------------


class JsonAccessLogger(AbstractAccessLogger):
    """Writes one JSON object per finished request (aiohttp calls ``log`` after the body)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        end = _epoch()
        start = end - time
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(start, UTC).isoformat(timespec="milliseconds"),
            "start": round(start, 6),
            "end": round(end, 6),
            "duration": round(time, 6),
            "client": request.remote,
            "method": request.method,
            "path": request.rel_url.raw_path,  # as sent (still percent-encoded)
            "query": request.query_string or None,
            "status": response.status,
            "bytes": _body_bytes(request, response),
        }
        if isinstance(response, CountedFileResponse):
            entry["complete"] = response.complete
        if "Range" in request.headers:
            entry["range"] = request.headers["Range"][:100]
        if isinstance(request, web.Request) and EXTRA in request:
            extra: dict[str, Any] = request[EXTRA]
            entry.update(extra)
        if "mac" not in entry and "mac" in request.query:
            entry["mac"] = request.query["mac"][:64]
        self.logger.info(json.dumps(entry, sort_keys=False))


def _epoch() -> float:
    return time.time()


def _body_bytes(request: web.BaseRequest, response: web.StreamResponse) -> int:
    """Bytes of body sent (aiohttp's own counter includes headers and misses sendfile)."""
    if request.method == "HEAD" or response.status in (204, 304):
        return 0
    if isinstance(response, CountedFileResponse):
        return response.bytes_sent
    if isinstance(response, web.Response):
        return response.content_length or 0
    return response.body_length


class CountedFileResponse(web.FileResponse):
    """A FileResponse that remembers how many body bytes it sent (for the request log) and
    answers Range/If-Range as ``stack.ranges`` decides (where aiohttp's reading is wrong).

    ``web.FileResponse`` does Range, HEAD, conditional requests and sendfile; the body goes
    out in ``_sendfile``, so that is where the count is taken.
    """

    bytes_sent: int = 0
    complete: bool = False

    def __init__(self, path: Path, range_header: str | None) -> None:
        super().__init__(path)
        self._range_header = range_header  # what aiohttp is to see (None: no range)

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:  # sent by the guard's middleware; aiohttp asks again afterwards
            return await web.StreamResponse.prepare(self, request)
        headers = request.headers.copy()
        headers.popall(hdrs.IF_RANGE, None)  # evaluated already (stack.ranges)
        headers.popall(hdrs.RANGE, None)
        if self._range_header is not None:
            headers[hdrs.RANGE] = self._range_header
        return await super().prepare(request.clone(headers=headers))

    async def _sendfile(
        self, request: web.BaseRequest, fobj: Any, offset: int, count: int
    ) -> Any:
        writer = await super()._sendfile(request, fobj, offset, count)
        self.bytes_sent = count
        self.complete = True
        return writer


def _open_request_log(path: Path, bounds: LogBounds) -> logging.Logger:
    """A private logger (not registered globally) writing bare lines to ``path`` (bounded and
    rotated: ``stack.logfiles``)."""
    logger = logging.Logger(f"pvmlab.http.requests:{path}", level=logging.INFO)
    handler = BoundedFileHandler(path, bounds)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    return logger


class ClientErrorLog(logging.Logger):
    """aiohttp's connection-level error log, given as its ``logger``.

    aiohttp logs every request it cannot parse with a traceback ("Error handling request"),
    which a lab client can repeat thousands of times a second. Errors a client causes
    (malformed requests, resets) become one short line, rate-limited; anything else (a bug
    here) keeps its traceback, at most once per kind and interval.
    """

    def __init__(self, notes: Notes) -> None:
        super().__init__("pvmlab.stack.http.server")
        self.parent = log  # records go wherever this module's records go
        self._notes = notes

    def exception(
        self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any
    ) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        text = str(msg) % args if args else str(msg)
        if isinstance(exc, HttpProcessingError | ConnectionError | asyncio.TimeoutError):
            detail = " ".join(str(exc).split())[:200]
            self._notes(f"client:{type(exc).__name__}", logging.WARNING, "%s: %s", text, detail)
        elif self._notes.allow(f"bug:{type(exc).__name__}") is not None:
            self.error("%s", text, exc_info=exc_info, **kwargs)


# --- handlers -------------------------------------------------------------------------------


def _script(text: str, outcome: str) -> web.Response:
    return web.Response(
        text=text, content_type=TEXT, charset="utf-8", headers={"X-Pvmlab-Boot": outcome}
    )


def _note(request: web.Request, **fields: Any) -> None:
    if EXTRA not in request:
        request[EXTRA] = {}
    request[EXTRA].update(fields)


def base_url(request: web.Request) -> str:
    """The base URL for this request's scripts: a client that reached a dual-stack server over
    IPv6 is given IPv6 URLs (``base6``), everyone else the endpoint's own."""
    urls = request.app[URL_KEY]
    if "base6" in urls and request.transport is not None:
        local = request.transport.get_extra_info("sockname")
        if isinstance(local, tuple) and len(local) == 4:  # an AF_INET6 socket address
            return urls["base6"]
    return urls["base"]


async def _boot_config(request: web.Request, mac: str) -> BootConfig | None:
    """What ``mac`` boots, read from the lab home off the event loop (the records are files)."""
    app = request.app
    return await asyncio.to_thread(
        boot_config, app[HOME_KEY], app[LAB_KEY], mac, base_url=base_url(request)
    )


async def boot_ipxe(request: web.Request) -> web.Response:
    return _script(render_boot_script(base_url(request)), "chain")


async def machine_ipxe(request: web.Request) -> web.Response:
    raw = request.query.get("mac")
    for key in ("arch", "platform"):  # what iPXE reported; recorded when it looks sane
        value = request.query.get(key)
        if value is not None and _PARAM.fullmatch(value):
            _note(request, **{key: value})
    if raw is None:
        _note(request, outcome="refused")
        return _script(render_refusal("the request named no MAC address"), "refused")
    try:
        mac = validate.mac(raw)
    except ValidationError:
        _note(request, outcome="refused")
        return _script(render_refusal("the MAC parameter is not a unicast MAC address"), "refused")
    _note(request, mac=mac)
    cfg = await _boot_config(request, mac)
    if cfg is None:
        _note(request, outcome="unknown")
        return _script(
            render_refusal(f"no VM in this lab has MAC {mac} (define one with pvmlab vm create)"),
            "unknown",
        )
    _note(request, vm=cfg.vm, outcome="boot" if cfg.bootable else "refused")
    return _script(render_machine_script(cfg), "boot" if cfg.bootable else "refused")


async def config_json(request: web.Request) -> web.Response:
    raw = request.match_info["mac"]
    try:
        mac = validate.mac(raw)
    except ValidationError as exc:
        return web.json_response({"error": exc.problem}, status=400)
    _note(request, mac=mac)
    cfg = await _boot_config(request, mac)
    if cfg is None:
        return web.json_response({"error": f"no VM has MAC {mac}", "mac": mac}, status=404)
    _note(request, vm=cfg.vm)
    return web.json_response({**cfg.model_dump(mode="json"), "bootable": cfg.bootable})


def confine(root: Path, relative: str) -> Path:
    """The real path of ``relative`` under ``root``, or an HTTP error.

    403 for anything that tries to leave the root (dot-dot, empty or hidden segments, encoded
    separators, symlinks resolving outside); 404 for what is not there or not a regular file.
    """
    segments = relative.split("/")
    if not all(_SEGMENT.fullmatch(s) for s in segments):
        raise web.HTTPForbidden(text="forbidden: not a plain path\n")
    try:
        real_root = root.resolve(strict=True)
        real = real_root.joinpath(*segments).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a symlink loop
        raise web.HTTPNotFound(text="not found\n") from None
    if not real.is_relative_to(real_root):
        raise web.HTTPForbidden(text="forbidden: outside the served root\n")
    if not real.is_file():
        raise web.HTTPNotFound(text="not found: not a regular file\n")
    return real


async def images(request: web.Request) -> web.StreamResponse:
    return serve_file(request, request.app[HOME_KEY].images)


async def tftp(request: web.Request) -> web.StreamResponse:
    return serve_file(request, request.app[HOME_KEY].tftp)


def serve_file(request: web.Request, root: Path) -> web.StreamResponse:
    """A file under ``root`` named by the route's ``path``, confined (see ``confine``)."""
    # Served names never need percent-encoding: an encoded byte ("%2e%2e", "%2F", "%5c") in the
    # path as sent is a trick, refused before aiohttp's decoding can hide it.
    if "%" in request.raw_path.split("?", 1)[0]:
        raise web.HTTPForbidden(text="forbidden: encoded characters in the path\n")
    return serve_path(request, confine(root, request.match_info["path"]))


def serve_path(request: web.Request, path: Path) -> web.StreamResponse:
    """A file the caller chose (and confined): sendfile, Range, HEAD, as ``/images/``."""
    try:
        st = path.stat()
    except OSError:
        raise web.HTTPNotFound(text="not found\n") from None
    decided = ranges.plan(
        request.method,
        request.headers.get(hdrs.RANGE),
        request.headers.get(hdrs.IF_RANGE),
        size=st.st_size,
        # the validators FileResponse sends: this entity tag, Last-Modified rounded up
        etag=f"{st.st_mtime_ns:x}-{st.st_size:x}",
        last_modified=math.ceil(st.st_mtime),
    )
    if decided.outcome is ranges.Outcome.UNSATISFIABLE:
        raise web.HTTPRequestRangeNotSatisfiable(
            headers={hdrs.CONTENT_RANGE: f"bytes */{st.st_size}"},
            text="range not satisfiable\n",
        )
    return CountedFileResponse(path, decided.range)


# --- application ----------------------------------------------------------------------------


def make_app(home: LabHome, lab: LabSpec, url: str) -> web.Application:
    app = web.Application()
    app[HOME_KEY] = home
    app[LAB_KEY] = lab
    app[URL_KEY] = {"base": url}
    app.router.add_get("/boot.ipxe", boot_ipxe)
    app.router.add_get("/ipxe", machine_ipxe)
    app.router.add_get("/config/{mac}", config_json)
    app.router.add_get("/images/{path:.+}", images)
    app.router.add_get("/tftp/{path:.+}", tftp)
    from pvmlab.stack import installroutes  # unattended installs: /preseed, /ks, /nocloud, /status
    installroutes.add_routes(app)
    return app


@dataclass
class HttpServer:
    """A running server: ``await server.cleanup()`` stops it (connections closed, log shut)."""

    runner: web.AppRunner
    listener: asyncio.Server
    guard: ConnectionGuard
    endpoint: HttpEndpoint  # with the port actually bound

    @property
    def port(self) -> int:
        return self.endpoint.port

    async def cleanup(self) -> None:
        self.listener.close()
        await self.runner.cleanup()  # closes every connection (in-flight ones get a moment)


async def start_http(
    home: LabHome,
    lab: LabSpec,
    endpoint: HttpEndpoint,
    *,
    limits: HttpLimits | None = None,
    log_bounds: LogBounds | None = None,
) -> HttpServer:
    """Serve the lab where ``endpoint`` says (the caller owns the result: ``await
    server.cleanup()``). Scripts point at ``endpoint.base_url`` (with the bound port when the
    endpoint's port is 0). ``limits`` and ``log_bounds`` default to the environment's."""
    limits = limits or HttpLimits.from_env()
    request_log = _open_request_log(home.http_log, log_bounds or LogBounds.from_env())

    async def close_log(_: web.Application) -> None:
        for handler in list(request_log.handlers):
            handler.close()
            request_log.removeHandler(handler)

    cap = connection_cap(limits, raise_fd_limit(), LISTEN_BACKLOG)
    guard = ConnectionGuard(limits, cap, log)
    app = make_app(home, lab, endpoint.base_url)
    app.middlewares.append(guard.middleware)
    app.on_cleanup.append(close_log)
    runner = web.AppRunner(
        app,
        access_log_class=JsonAccessLogger,
        access_log=request_log,
        handle_signals=False,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        logger=ClientErrorLog(guard.notes),
        # aiohttp's own timers, behind the guard's: an idle or half-sent request never
        # outlives both timeouts, and an unread request body is drained for at most this long
        keepalive_timeout=limits.idle_timeout + limits.header_timeout,
        lingering_time=limits.body_timeout,
    )
    await runner.setup()
    if runner.server is None:
        raise StateError("the HTTP server did not set up")
    port = endpoint.port
    loop = asyncio.get_running_loop()
    try:
        listener = await loop.create_server(
            guard.factory(runner.server), endpoint.listen_hosts, port, reuse_address=True,
            backlog=LISTEN_BACKLOG,
        )
    except OSError as exc:
        await runner.cleanup()
        raise StateError(
            f"cannot serve HTTP on {', '.join(_host_port(h, port) for h in endpoint.listen_hosts)}"
            f": {exc.strerror or exc}",
            "is another server using that port, or is the address not on this host?",
        ) from None
    except BaseException:
        await runner.cleanup()
        raise
    connguard.defer_accept(listener, limits)
    if port == 0:  # the port is known only now
        endpoint = endpoint.with_port(int(listener.sockets[0].getsockname()[1]))
        app[URL_KEY]["base"] = endpoint.base_url
    six = [h for h in endpoint.listen_hosts if ":" in h]
    if endpoint.also_listen and six:  # dual stack: IPv6 clients get IPv6 URLs
        app[URL_KEY]["base6"] = dataclasses.replace(endpoint, target_host=six[0]).base_url
    log.info(
        "HTTP server on %s, scripts point at %s; at most %d connections, idle timeout "
        "%g s, request head %g s, body %g s",
        ", ".join(_host_port(h, endpoint.port) for h in endpoint.listen_hosts),
        endpoint.base_url, guard.cap, limits.idle_timeout,
        limits.header_timeout, limits.body_timeout,
    )
    return HttpServer(runner, listener, guard, endpoint)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bound_port(server: HttpServer) -> int:
    """The TCP port the server listens on (useful with port 0)."""
    return server.port


# --- manual entry point -----------------------------------------------------------------------


def _lab_for(home: LabHome) -> LabSpec:
    from pvmlab.records import store

    if home.lab_file.exists():
        return store.load_lab(home)
    iface = validate.ipv4_interface(LabSpec.model_fields["address"].default)
    start, end = validate.default_dhcp_range(iface)
    return LabSpec(dhcp_start=str(start), dhcp_end=str(end))


async def _serve_forever(home: LabHome, host: str, port: int) -> None:
    lab = _lab_for(home)
    runner = await start_http(home, lab, bind_endpoint(lab, host, port))
    try:
        print(f"serving {home.root} on http://{host}:{bound_port(runner)}/ (Ctrl-C stops)",
              flush=True)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    import click

    @click.command(help="Run the lab's HTTP server in the foreground (for manual testing).")
    @click.option("--home", "home_dir", type=click.Path(file_okay=False, path_type=Path),
                  help="Lab home (default: $PVMLAB_HOME or ~/.pvmlab).")
    @click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
    @click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535),
                  help="TCP port (0 picks a free one).")
    def serve(home_dir: Path | None, host: str, port: int) -> None:
        home = LabHome(home_dir.absolute()) if home_dir else LabHome.from_env()
        try:
            asyncio.run(_serve_forever(home, host, port))
        except PvmlabError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            pass

    serve.main(args=argv, prog_name="python -m pvmlab.stack.http")


if __name__ == "__main__":
    main()
