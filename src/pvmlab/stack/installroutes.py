"""The HTTP side of unattended installs (``pvmlab.stack.installcfg``), added to the lab's server:

    GET  /preseed/<mac>              the machine's preseed            (install kind preseed)
    GET  /ks/<mac>                   its kickstart                    (kickstart)
    GET  /nocloud/<mac>/<doc>        user-data, meta-data, vendor-data, network-config
                                                                      (user-data, autoinstall)
    POST /status/<mac>               an install phase: ``phase`` and ``message`` as a form,
                                     JSON object or query parameters (body at most 4 KiB);
                                     for a VM made from an image, a deploy phase (also
                                     ``bytes``, ``total``, ``mbps``, ``sha256``: pvmlab.deploy)
    GET  /deploy/<mac>               the deploy ramdisk's instructions (``key=value`` lines)
    GET  /deploy/<mac>/image         the VM's image, raw (``?offset=&length=``: the ramdisk's
                                     chunks; Range requests too)
    GET  /deploy/<mac>/seed          its cloud-init seed (a FAT image labelled CIDATA)
    GET  /deploy/ramdisk/<arch>/F    the deploy ramdisk's kernel and initrd (anyone may ask)

Only the machine may ask (its reserved address, and its MAC when the neighbour table knows the
peer): anyone else gets 403, an unknown MAC 404, a machine without this kind of configuration
404. A template that fails to render answers 500 with one line of text, and logs that line.
Each request's log line (logs/http.log) carries ``mac``, ``vm`` and ``kind`` (the document, or
``status``) and, for status reports, ``phase``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from pvmlab.errors import PvmlabError, ValidationError
from pvmlab.home import LabHome
from pvmlab.records import store, validate
from pvmlab.records.models import LabSpec, VMSpec
from pvmlab.stack import grubcfg, installcfg
from pvmlab.stack.http import (
    EXTRA,
    HOME_KEY,
    LAB_KEY,
    TEXT,
    URL_KEY,
    base_url,
    serve_file,
    serve_path,
)

log = logging.getLogger(__name__)

MAX_BODY = 4096
FIELDS = ("phase", "message", "bytes", "total", "mbps", "sha256")  # what a status report may say


def _note(request: web.Request, **fields: Any) -> None:
    if EXTRA not in request:
        request[EXTRA] = {}
    request[EXTRA].update(fields)


def _text(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", content_type=TEXT, charset="utf-8")


async def _machine(request: web.Request, kind: str) -> VMSpec:
    """The VM the path's MAC names, when the peer is that VM (else an HTTP error)."""
    _note(request, kind=kind)
    try:
        mac = validate.mac(request.match_info["mac"])
    except ValidationError as exc:
        raise web.HTTPBadRequest(text=f"{exc.problem}\n") from None
    _note(request, mac=mac)
    vms = await asyncio.to_thread(store.load_vms, request.app[HOME_KEY])
    vm = installcfg.find_vm(vms, mac)
    if vm is None:
        raise web.HTTPNotFound(text=f"no VM in this lab has MAC {mac}\n")
    _note(request, vm=vm.name)
    neighbours = await asyncio.to_thread(installcfg.neighbour_macs)
    problem = installcfg.peer_problem(vm, request.remote, neighbours)
    if problem is not None:
        log.warning("refused %s %s from %s: %s", request.method, request.path,
                    request.remote, problem)  # fmt: skip
        raise web.HTTPForbidden(text=f"forbidden: {problem}\n")
    return vm


async def _document(request: web.Request, doc: str) -> web.Response:
    vm = await _machine(request, doc)
    if vm.install is None or doc not in installcfg.documents(vm.install):
        what = vm.install or "no unattended install"
        return _text(404, f"VM {vm.name} has {what}, so no {doc} document")
    home: LabHome = request.app[HOME_KEY]
    lab: LabSpec = request.app[LAB_KEY]
    base = base_url(request)
    try:
        text = await asyncio.to_thread(installcfg.render_document, home, lab, vm, doc, base)
    except PvmlabError as exc:
        line = f"cannot render {doc} for VM {vm.name}: {exc.problem}"
        log.warning("%s", line)
        return _text(500, f"pvmlab: {line}")
    return web.Response(text=text, content_type=TEXT, charset="utf-8")


async def preseed(request: web.Request) -> web.Response:
    return await _document(request, "preseed")


async def kickstart(request: web.Request) -> web.Response:
    return await _document(request, "ks")


async def nocloud(request: web.Request) -> web.Response:
    doc = request.match_info["doc"]
    if doc not in installcfg.NOCLOUD_DOCS:
        raise web.HTTPNotFound(text="not found: not a NoCloud document\n")
    return await _document(request, doc)


async def _status_fields(request: web.Request) -> dict[str, str]:
    """phase and message from the query, then the body (form or JSON object)."""
    declared = request.content_length or 0
    if declared > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=declared)
    # The connection guard has read the body already (within its body timeout, bounded by the
    # application's client_max_size); read() returns that copy.
    body = await request.read()
    if len(body) > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=len(body))
    fields = {k: v for k, v in request.query.items() if k in FIELDS}
    if not body.strip():
        return fields
    if request.content_type == "application/json":
        try:
            obj = json.loads(body)
        except ValueError:
            raise web.HTTPBadRequest(text="the body is not JSON\n") from None
        if not isinstance(obj, dict):
            raise web.HTTPBadRequest(text="the JSON body is not an object\n")
        pairs = [(k, v) for k, v in obj.items() if isinstance(v, str)]
    else:  # a form (wget --post-data, curl -d, cloud-init's phone_home)
        pairs = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    fields.update({k: v for k, v in pairs if k in FIELDS})
    return fields


async def status(request: web.Request) -> web.Response:
    vm = await _machine(request, "status")
    if vm.image_sha256 is not None:
        return await _deploy_status(request, vm)
    if vm.install is None:
        return _text(409, f"VM {vm.name} has no unattended install to report on")
    fields = await _status_fields(request)
    phase = fields.get("phase")
    if phase is None:
        return _text(400, "no phase given (send phase=NAME, e.g. phase=installed)")
    _note(request, phase=phase[:32])
    # On the event loop, not a thread: reports are serialised, so two of one machine never
    # interleave their read-modify-write of its small status file.
    try:
        stored = installcfg.record_status(
            request.app[HOME_KEY], vm, phase, fields.get("message", ""), request.remote or ""
        )
    except ValidationError as exc:
        return _text(400, exc.problem)
    log.info("VM %s reports install phase %s", vm.name, phase)
    if stored["installed"] and vm.loader == "grub":
        # TFTP serves files: the machine's GRUB file must say "local disk" before it reboots
        base = request.app[URL_KEY]["base"]
        grubcfg.write_machine(request.app[HOME_KEY], request.app[LAB_KEY], vm, base_url=base)
    return web.json_response(
        {"vm": vm.name, "phase": stored["phase"], "installed": stored["installed"]}
    )


# --- image deployment (pvmlab.deploy) -------------------------------------------------------------


async def _deploy_status(request: web.Request, vm: VMSpec) -> web.Response:
    from pvmlab.deploy import state

    fields = await _status_fields(request)
    if "phase" not in fields:
        return _text(400, "no phase given (send phase=NAME, e.g. phase=stream)")
    _note(request, phase=fields["phase"][:32])
    try:  # on the event loop: one machine's reports never interleave (see status)
        stored = state.record(request.app[HOME_KEY], vm, fields, request.remote or "")
    except ValidationError as exc:
        return _text(400, exc.problem)
    if stored["phase"] != "stream":
        log.info("VM %s reports deploy phase %s", vm.name, stored["phase"])
    return web.json_response(
        {"vm": vm.name, "phase": stored["phase"], "deployed": stored["deployed"]}
    )


async def _image_vm(request: web.Request, kind: str) -> VMSpec:
    vm = await _machine(request, kind)
    if vm.image_sha256 is None:
        raise web.HTTPNotFound(text=f"VM {vm.name} is not made from an image\n")
    return vm


async def deploy_instructions(request: web.Request) -> web.Response:
    from pvmlab.deploy import state

    vm = await _image_vm(request, "deploy")
    home: LabHome = request.app[HOME_KEY]
    base = request.app[URL_KEY]["base"]
    raw = home.deploy_image(str(vm.image_sha256))
    if not raw.is_file():
        return _text(404, f"the image of VM {vm.name} is gone from the lab home")
    seed_size = None
    if vm.install is not None:
        try:
            seed = await asyncio.to_thread(
                state.build_seed, home, request.app[LAB_KEY], vm, base
            )
        except PvmlabError as exc:
            line = f"cannot make the cloud-init seed of VM {vm.name}: {exc.problem}"
            log.warning("%s", line)
            return _text(500, f"pvmlab: {line}")
        seed_size = seed.stat().st_size
    state.record(home, vm, {"phase": "instructions", "total": str(raw.stat().st_size)},
                 request.remote or "")  # fmt: skip
    text = state.instructions(vm, base, raw.stat().st_size, seed_size)
    return web.Response(text=text, content_type=TEXT, charset="utf-8")


MAX_SLICE = 64 * 1024 * 1024


def _read_slice(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as fh:
        fh.seek(offset)
        return fh.read(length)


async def deploy_image(request: web.Request) -> web.StreamResponse:
    """The raw image; ``?offset=A&length=N`` answers those bytes with a plain 200 (busybox
    wget takes no 206 for a Range it did not make itself), else the whole file or a Range."""
    vm = await _image_vm(request, "image")
    path = request.app[HOME_KEY].deploy_image(str(vm.image_sha256))
    if "offset" not in request.query and "length" not in request.query:
        return serve_path(request, path)
    try:
        offset, length = int(request.query["offset"]), int(request.query["length"])
        size = path.stat().st_size
    except (KeyError, ValueError):
        raise web.HTTPBadRequest(text="offset and length must both be whole numbers\n") from None
    except OSError:
        raise web.HTTPNotFound(text="not found\n") from None
    if not (0 <= offset < size and 0 < length <= MAX_SLICE):
        raise web.HTTPRequestRangeNotSatisfiable(text=f"the image has {size} bytes\n")
    _note(request, offset=offset)
    data = await asyncio.to_thread(_read_slice, path, offset, length)
    return web.Response(body=data, content_type="application/octet-stream")


async def deploy_seed(request: web.Request) -> web.StreamResponse:
    vm = await _image_vm(request, "seed")
    return serve_path(request, request.app[HOME_KEY].vm_seed(vm.name))


async def deploy_ramdisk(request: web.Request) -> web.StreamResponse:
    return serve_file(request, request.app[HOME_KEY].deploy_root / "ramdisk")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/deploy/ramdisk/{path:.+}", deploy_ramdisk)
    app.router.add_get("/deploy/{mac}", deploy_instructions)
    app.router.add_get("/deploy/{mac}/image", deploy_image)
    app.router.add_get("/deploy/{mac}/seed", deploy_seed)
    app.router.add_get("/preseed/{mac}", preseed)
    app.router.add_get("/ks/{mac}", kickstart)
    app.router.add_get("/nocloud/{mac}/{doc}", nocloud)
    app.router.add_post("/status/{mac}", status)
