"""HttpActor: the dashboard page, its static files, /metrics, /healthz and /config.json.

A small ASGI app served by hypercorn's trio worker (no hand-written HTTP). The page holds no secret and
gets no private API: it reads the gateway's URL from /config.json and speaks the same JSON-RPC over the
websocket as every other client. The token travels only in the URL *fragment* printed by `shoal serve`
(`dashboard_url`), which browsers never send to a server; the page moves it into sessionStorage and
clears the fragment, as Jupyter does.

Static files are read once, in a thread, when the actor starts (with their gzip form and ETag), so no
request touches the disk and the loop never blocks on file I/O.
"""

from __future__ import annotations

import gzip
import hashlib
import inspect
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, cast
from urllib.parse import quote, urlsplit

import attrs
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve

from ..protocols.config import HttpConfig, SwarmConfig
from ..protocols.errors import ValidationError
from .auth import bind_error, bind_failure, is_loopback

log = logging.getLogger("shoal.http")
# hypercorn's own messages; its "Running on ... (CTRL + C to quit)" repeats the `serving` log record
# (and the banner) with advice that does not fit a service, so it is left out
_server_log = logging.getLogger("shoal.http.server")
_server_log.addFilter(lambda record: not record.getMessage().startswith("Running on "))

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATUS_TIMEOUT_S = 2.0

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".md": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}
_COMPRESSIBLE = (".html", ".js", ".mjs", ".css", ".json", ".svg", ".md", ".txt", "")

Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class SwarmLike(Protocol):
    """What the HttpActor needs of the SwarmHandle (structural, so there is no import cycle)."""

    @property
    def config(self) -> SwarmConfig: ...

    async def status(self) -> dict[str, Any]: ...


class MetricsLike(Protocol):
    def prometheus_text(self) -> bytes | Awaitable[bytes]: ...


def _url_host(host: str) -> str:
    """A host as it appears in a URL: the unspecified addresses become loopback, IPv6 gets brackets."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def dashboard_url(host: str, port: int, token: str, *, scheme: str = "http") -> str:
    """The URL `shoal serve` prints: opens the dashboard already authenticated.

    The token is in the fragment (`#token=...`), which a browser never sends over the network nor puts
    in a Referer; the page moves it to sessionStorage and removes it from the address bar.
    """
    return f"{scheme}://{_url_host(host)}:{port}/#token={quote(token, safe='')}"


@attrs.frozen
class StaticFile:
    body: bytes
    gzipped: bytes | None
    content_type: str
    etag: str


def load_static(root: Path | None = None) -> dict[str, StaticFile]:
    """Read every file under the static folder (blocking: run it in a thread). Keys: 'vendor/x/y.mjs'."""
    files: dict[str, StaticFile] = {}
    base: Any = root if root is not None else resources.files("shoal.actors").joinpath("static")

    def walk(node: Any, prefix: str) -> None:
        for child in node.iterdir():
            name = child.name
            if name.startswith(".") or name == "__pycache__":
                continue
            rel = f"{prefix}{name}"
            if child.is_dir():
                walk(child, rel + "/")
                continue
            body = child.read_bytes()
            suffix = Path(name).suffix.lower()
            ctype = _TYPES.get(
                suffix, "text/plain; charset=utf-8" if suffix == "" else "application/octet-stream"
            )
            gz = gzip.compress(body, 6, mtime=0) if suffix in _COMPRESSIBLE and len(body) > 1024 else None
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            files[rel] = StaticFile(body, gz if gz is not None and len(gz) < len(body) else None, ctype, etag)

    walk(base, "")
    return files


def _gateway_for_request(gateway_url: str | None, request_host: str | None) -> str | None:
    """The gateway URL as this browser can reach it: an unspecified bind address becomes its host."""
    if not gateway_url:
        return None
    parts = urlsplit(gateway_url)
    if parts.hostname not in ("0.0.0.0", "::") or not request_host:
        return gateway_url
    host = urlsplit(f"//{request_host}").hostname or "127.0.0.1"
    shown = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{shown}{port}{parts.path or '/'}"


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class HttpActor:
    """Serves the dashboard over HTTP from the swarm's own process.

    `run` binds, then reports `(host, port)` through `task_status` (port 0 picks a free port). Leaving
    (cancellation or `stop()`) closes the listening socket and every connection.
    """

    dashboard_url = staticmethod(dashboard_url)

    def __init__(
        self,
        swarm: SwarmLike,
        config: HttpConfig,
        metrics: MetricsLike,
        gateway_url_getter: Callable[[], str | None],
        token: str,
        *,
        allow_remote: bool | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        static_root: Path | None = None,
    ) -> None:
        self._swarm = swarm
        self._config = config
        self._metrics = metrics
        self._gateway_url = gateway_url_getter
        self._token = token  # kept only to build the printed URL; never served
        self._allow_remote = allow_remote
        self._tls = (tls_cert, tls_key) if tls_cert and tls_key else None
        self._static_root = static_root
        self._files: dict[str, StaticFile] = {}
        self._version = "unknown"
        self._shutdown = trio.Event()
        self.bound: tuple[str, int] | None = None
        self.requests = 0  # HTTP requests served (for operators poking at a live process)
        self.scrape_seconds_last = math.nan  # how long the last /metrics took to render

    @property
    def url(self) -> str | None:
        if self.bound is None:
            return None
        scheme = "https" if self._tls else "http"
        return f"{scheme}://{_url_host(self.bound[0])}:{self.bound[1]}/"

    def login_url(self) -> str | None:
        """The authenticated dashboard URL once bound (what `shoal serve` prints)."""
        if self.bound is None:
            return None
        return dashboard_url(*self.bound, self._token, scheme="https" if self._tls else "http")

    def stop(self) -> None:
        """Ask the server to shut down gracefully (in-flight requests finish)."""
        self._shutdown.set()

    async def run(self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
        host, port = self._config.host, self._config.port
        allow_remote = self._allow_remote
        # one switch for both listeners: the dashboard is useless without the gateway
        if allow_remote is None:
            allow_remote = self._swarm.config.gateway.allow_remote
        if not is_loopback(host) and not allow_remote:
            raise ValidationError(
                "http.host",
                f"binding the dashboard to the non-loopback address {host!r} exposes it to the network; "
                "allow it with gateway.allow_remote = true (shoal serve --allow-remote)",
            )
        self._files = await trio.to_thread.run_sync(load_static, self._static_root)
        self._version = await trio.to_thread.run_sync(_version)
        if "index.html" not in self._files:
            raise ValidationError("http", "the dashboard's static files are missing from the installation")
        hc = HyperConfig()
        hc.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
        hc.errorlog = _server_log
        hc.accesslog = None
        hc.include_server_header = False
        hc.graceful_timeout = 1.0
        if self._tls is not None:
            hc.certfile, hc.keyfile = self._tls
        async with trio.open_nursery() as nursery:
            try:
                binds: list[str] = await nursery.start(
                    partial(serve, cast(Any, self.app), hc, shutdown_trigger=self._shutdown.wait)
                )
            except (OSError, BaseExceptionGroup) as exc:  # hypercorn binds inside its own nurseries
                failed = bind_failure(exc)
                if failed is None:
                    raise
                # port taken, no permission, no such address: one line naming the dashboard's port
                raise bind_error(failed, "dashboard", host, port, "--http-port") from None
            parts = urlsplit(binds[0])
            self.bound = (parts.hostname or host, parts.port or port)
            log.debug("dashboard on %s", self.url)  # `shoal serve` logs both URLs once it is up
            task_status.started(self.bound)

    # ---- the ASGI app ---------------------------------------------------------------------------

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if kind != "http":  # websockets go to the gateway, not here
            if kind == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        self.requests += 1
        method = scope["method"]
        path: str = scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if method not in ("GET", "HEAD"):
            await self._respond(send, 405, b"method not allowed\n", extra=[("allow", "GET, HEAD")])
            return
        head = method == "HEAD"
        if path in ("/", "/index.html"):
            await self._static(send, "index.html", headers, head, page=True)
        elif path.startswith("/static/"):
            await self._static(send, path[len("/static/") :], headers, head)
        elif path == "/metrics":
            await self._metrics_route(send, head)
        elif path == "/healthz":
            await self._health(send, head)
        elif path == "/config.json":
            body = json.dumps(
                {
                    "gateway_url": _gateway_for_request(self._gateway_url(), headers.get("host")),
                    "version": self._version,
                }
            ).encode()
            await self._respond(send, 200, body, "application/json", head=head)
        else:
            await self._respond(send, 404, b"not found\n")

    async def _respond(
        self,
        send: Send,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        *,
        head: bool = False,
        extra: list[tuple[str, str]] | None = None,
        cache: str = "no-store",
    ) -> None:
        hdrs = [
            ("content-type", content_type),
            ("content-length", str(len(body))),
            ("cache-control", cache),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
            *(extra or []),
        ]
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in hdrs],
            }
        )
        await send({"type": "http.response.body", "body": b"" if head else body})

    def _csp(self, request_host: str | None) -> str:
        connect = ["'self'"]
        gateway = _gateway_for_request(self._gateway_url(), request_host)
        if gateway:
            connect.append(_origin_of(gateway))
        return "; ".join(
            [
                "default-src 'none'",
                "script-src 'self'",
                "style-src 'self' 'unsafe-inline'",  # xterm.js and uPlot set inline styles
                "img-src 'self' data: blob:",
                "font-src 'self'",
                f"connect-src {' '.join(connect)}",
                "base-uri 'none'",
                "form-action 'none'",
                "frame-ancestors 'none'",
            ]
        )

    async def _static(
        self, send: Send, rel: str, headers: Mapping[str, str], head: bool, *, page: bool = False
    ) -> None:
        file = self._files.get(rel) if _safe_rel(rel) else None
        if file is None:
            await self._respond(send, 404, b"not found\n", head=head)
            return
        extra = [("etag", file.etag), ("vary", "accept-encoding")]
        if page:
            extra += [
                ("content-security-policy", self._csp(headers.get("host"))),
                ("x-frame-options", "DENY"),
            ]
        cache = "no-cache"  # revalidate with the ETag: cheap, and an upgrade is seen at once
        if headers.get("if-none-match") == file.etag:
            await send(
                {
                    "type": "http.response.start",
                    "status": 304,
                    "headers": [(b"etag", file.etag.encode()), (b"cache-control", cache.encode())],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        body = file.body
        if file.gzipped is not None and "gzip" in headers.get("accept-encoding", ""):
            body = file.gzipped
            extra.append(("content-encoding", "gzip"))
        await self._respond(send, 200, body, file.content_type, head=head, extra=extra, cache=cache)

    async def _metrics_route(self, send: Send, head: bool) -> None:
        started = time.perf_counter()
        produced = self._metrics.prometheus_text()
        text = await produced if inspect.isawaitable(produced) else produced
        self.scrape_seconds_last = time.perf_counter() - started
        await self._respond(send, 200, bytes(text), METRICS_CONTENT_TYPE, head=head)

    async def _health(self, send: Send, head: bool) -> None:
        status: dict[str, Any] | None = None
        error = None
        with trio.move_on_after(STATUS_TIMEOUT_S):
            try:
                status = await self._swarm.status()
            except Exception as exc:  # a stopping swarm answers with an error: that is not healthy
                error = f"{type(exc).__name__}: {exc}"
        if status is None:
            doc: dict[str, Any] = {"ok": False, "state": "unknown", "error": error or "status timed out"}
        else:
            state = status.get("state")
            doc = {
                "ok": state == "running",
                "state": state,
                "reason": status.get("reason"),
                "since": status.get("since"),
                "workers": status.get("workers"),
                "queue": status.get("queue"),
                "version": status.get("version"),
            }
        body = json.dumps(doc, default=str).encode()
        await self._respond(send, 200 if doc["ok"] else 503, body, "application/json", head=head)


def _safe_rel(rel: str) -> bool:
    """Only plain relative paths; the lookup is in a dict of known files anyway."""
    return (
        bool(rel)
        and "\\" not in rel
        and "\x00" not in rel
        and all(p not in ("", ".", "..") for p in rel.split("/"))
    )


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("shoal")
    except Exception:
        return "unknown"
