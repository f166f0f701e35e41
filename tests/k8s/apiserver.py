"""A stand-in Kubernetes API server for tests: serves recorded responses over real HTTP.

The real `kubernetes` client talks to it through a kubeconfig written by
`write_kubeconfig`; every request is recorded so tests can assert what was asked.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

RECORDED = Path(__file__).parent / "recorded"


def recorded(name: str) -> Any:
    return json.loads((RECORDED / name).read_text())


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    headers: dict[str, str]

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


@dataclass
class Reply:
    status: int
    body: Any  # JSON-serialisable, or str for text/plain
    content_type: str = "application/json"


Responder = Callable[[Request], Reply]


def not_found(request: Request) -> Reply:
    return Reply(
        404,
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": f"the server could not find the requested resource ({request.path})",
            "reason": "NotFound",
            "code": 404,
        },
    )


@dataclass
class FakeApiServer:
    routes: list[tuple[str, re.Pattern[str], Responder]] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    # (certificate file, key file): serve HTTPS instead of HTTP.
    tls: tuple[str, str] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def route(self, method: str, path: str, responder: Responder | Reply) -> None:
        """Answer `method` on paths fully matching the regex `path`; later routes win."""
        if isinstance(responder, Reply):
            fixed = responder

            def answer(_request: Request) -> Reply:
                return fixed

            responder = answer
        self.routes.insert(0, (method, re.compile(path), responder))

    def seen(self, method: str, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.method == method and re.fullmatch(path, r.path)]

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host!s}:{port}"

    def start(self) -> FakeApiServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body: Any = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode()
                request = Request(
                    self.command,
                    parts.path,
                    parse_qs(parts.query),
                    body,
                    {k.lower(): v for k, v in self.headers.items()},
                )
                with owner._lock:
                    owner.requests.append(request)
                    routes = list(owner.routes)
                reply = next(
                    (
                        responder(request)
                        for method, pattern, responder in routes
                        if method == self.command and pattern.fullmatch(parts.path)
                    ),
                    None,
                ) or not_found(request)
                payload = (
                    reply.body.encode()
                    if isinstance(reply.body, str)
                    else json.dumps(reply.body).encode()
                )
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output quiet

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        if self.tls:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def write_kubeconfig(path: Path, servers: dict[str, str], current: str) -> Path:
    """A kubeconfig with one cluster, user and context per entry of `servers` (name -> URL)."""
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": url}} for name, url in servers.items()],
        "users": [{"name": f"{name}-user", "user": {"token": f"token-{name}"}} for name in servers],
        "contexts": [
            {"name": name, "context": {"cluster": name, "user": f"{name}-user"}} for name in servers
        ],
        "current-context": current,
        "preferences": {},
    }
    path.write_text(yaml.safe_dump(document))
    return path
