"""A local HTTP mirror on 127.0.0.1 standing in for the distros' download servers.

(The real mirrors are on the internet, which tests cannot reach; this server serves the same
directory layouts from a temporary tree.) It supports GET and HEAD with single ``bytes=N-`` /
``bytes=N-M`` Range requests, records every request, and can cut a download: a path listed in
``cut_once`` gets its full Content-Length header but only half its body on the first GET, then
the connection is closed, as a flaky network would.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    status: int


@dataclass
class MirrorState:
    root: Path
    requests: list[Request] = field(default_factory=list)
    cut_once: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def gets(self, suffix: str = "") -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.method == "GET" and r.path.endswith(suffix)]


def _handler(state: MirrorState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _record(self, status: int) -> None:
            with state.lock:
                state.requests.append(
                    Request(
                        self.command, urlsplit(self.path).path, self.headers.get("Range"), status
                    )
                )

        def _file(self) -> Path | None:
            rel = unquote(urlsplit(self.path).path).lstrip("/")
            target = (state.root / rel).resolve()
            if state.root.resolve() not in target.parents or not target.is_file():
                return None
            return target

        def _send(self, body_wanted: bool) -> None:
            path = self._file()
            if path is None:
                self._record(404)
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = path.read_bytes()
            size = len(data)
            start, end, status = 0, size - 1, 200
            rng = self.headers.get("Range")
            if rng:
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
                if not m:
                    status = 416
                else:
                    start = int(m.group(1))
                    end = int(m.group(2)) if m.group(2) else size - 1
                    status = 206 if start < size and start <= end else 416
            self._record(status)
            if status == 416:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            end = min(end, size - 1)
            body = data[start : end + 1]
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if not body_wanted:
                return
            url_path = urlsplit(self.path).path
            with state.lock:
                cut = url_path in state.cut_once and self.command == "GET"
                if cut:
                    state.cut_once.discard(url_path)
            if cut:
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._send(True)

        def do_HEAD(self) -> None:
            self._send(False)

    return Handler


@contextmanager
def serve(root: Path) -> Iterator[tuple[str, MirrorState]]:
    """Serve ``root`` on 127.0.0.1 (a free port); yields the base URL and the request log."""
    state = MirrorState(root)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, name="mirror", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
