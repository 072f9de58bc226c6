"""The gateway's token, the state directory, and the Origin and bind-address checks.

The token is a random secret created on first start in `<state_dir>/token` with mode 0600 (the
directory itself 0700), so only the user running Shoal can read it; `shoal token` prints it. Tokens
are compared in constant time. Browsers send an `Origin` header and must come from an allowed origin
(by default the dashboard's own), which stops another web page from driving a local swarm; clients
that send no `Origin` (CLI, scripts) are not browsers and need only the token.

These functions do blocking file I/O: call them at start-up or through `trio.to_thread.run_sync`.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import json
import os
import secrets
import ssl
import stat
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

import platformdirs

from ..protocols.errors import ShoalError, ValidationError

TOKEN_FILENAME = "token"
ENDPOINT_FILENAME = "gateway.json"
ENV_STATE_DIR = "SHOAL_STATE_DIR"
ENV_TOKEN = "SHOAL_TOKEN"
ENV_TOKEN_FILE = "SHOAL_TOKEN_FILE"
ENV_URL = "SHOAL_URL"
DEFAULT_URL = "ws://127.0.0.1:8765/"


def resolve_state_dir(configured: str | os.PathLike[str] | None = None) -> Path:
    """The state directory: the configured one, else $SHOAL_STATE_DIR, else the user's data dir."""
    if configured:
        return Path(configured).expanduser()
    env = os.environ.get(ENV_STATE_DIR)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("shoal"))


def token_path(state_dir: str | os.PathLike[str], token_file: str | os.PathLike[str] | None = None) -> Path:
    """Where the token lives: `token_file` when configured, else `<state_dir>/token`."""
    if token_file:
        return Path(token_file).expanduser()
    return Path(state_dir) / TOKEN_FILENAME


def read_token(path: str | os.PathLike[str]) -> str:
    """Read a token file; a missing or empty file is a `ValidationError` that says what to do."""
    p = Path(path)
    try:
        token = p.read_text().strip()
    except FileNotFoundError:
        raise ValidationError(
            "token_file", f"no token at {p}: start the server once (`shoal serve`) or pass --token"
        ) from None
    except OSError as exc:
        raise ValidationError("token_file", f"cannot read {p}: {exc.strerror}") from None
    if not token:
        raise ValidationError("token_file", f"{p} is empty")
    return token


def load_or_create_token(path: str | os.PathLike[str]) -> str:
    """Return the token stored at `path`, creating a new random one (mode 0600) on first start.

    An existing file readable by others is tightened to 0600 rather than trusted as is. A file that
    cannot be made or read is a `ValidationError` naming it (one line at start-up, not a traceback).
    """
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except FileExistsError:
        raise ValidationError("gateway.token_file", f"{p.parent} is not a directory") from None
    except OSError as exc:
        raise ValidationError(
            "gateway.token_file", f"cannot create the directory of the token file {p}: {exc.strerror}"
        ) from None
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:
        try:
            mode = stat.S_IMODE(p.stat().st_mode)
            if mode & 0o077:
                os.chmod(p, 0o600)
        except OSError as exc:
            raise ValidationError("gateway.token_file", f"cannot use {p}: {exc.strerror}") from None
        return read_token(p)
    except OSError as exc:
        raise ValidationError(
            "gateway.token_file", f"cannot create the token file {p}: {exc.strerror}"
        ) from None
    token = new_token()
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def new_token() -> str:
    """A fresh gateway token: 256 random bits, URL-safe, never starting with '-'.

    `shoal status --token -x…` would read such a token as an option (one token in 64 did).
    """
    while (token := secrets.token_urlsafe(32)).startswith("-"):
        pass
    return token


class BindError(ShoalError):
    """A listener could not bind its address: the message names which one and what to do."""


def bind_failure(exc: BaseException) -> OSError | None:
    """The `OSError` a failed bind raised, alone or as the only leaf of (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, OSError) else None


def bind_error(exc: OSError, what: str, host: str, port: int, flag: str) -> BindError:
    """Turn a bind `OSError` into a message naming the listener, the address and the flag to change.

    `what` is "gateway" or "dashboard"; `flag` the `shoal serve` option that sets its port.
    """
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return BindError(
            f"the {what} port {port} is already in use ({where}; another shoal serve?): "
            f"choose another with {flag} PORT, or {flag} 0 for any free port"
        )
    if exc.errno == errno.EACCES:
        return BindError(
            f"no permission to bind the {what} to {where} (ports below 1024 need privileges): "
            f"choose another with {flag} PORT, or {flag} 0 for any free port"
        )
    host_flag = "--host" if what == "gateway" else "--http-host"
    return BindError(
        f"cannot bind the {what} to {where}: {exc.strerror or exc} (check {host_flag} and {flag})"
    )


def write_endpoint(state_dir: str | os.PathLike[str], url: str) -> None:
    """Record the running gateway's URL so `shoal` on this host finds it (port 0 included)."""
    path = Path(state_dir) / ENDPOINT_FILENAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"url": url, "pid": os.getpid()}) + "\n")
    os.replace(tmp, path)


def remove_endpoint(state_dir: str | os.PathLike[str], url: str) -> None:
    """Remove the record written by `write_endpoint`, unless another server has replaced it."""
    path = Path(state_dir) / ENDPOINT_FILENAME
    try:
        if json.loads(path.read_text()).get("url") == url:
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def read_endpoint(state_dir: str | os.PathLike[str]) -> str | None:
    """The URL a server on this host recorded in `state_dir`, or None."""
    try:
        url = json.loads((Path(state_dir) / ENDPOINT_FILENAME).read_text()).get("url")
    except (OSError, ValueError, AttributeError):
        return None
    return url if isinstance(url, str) else None


def token_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison (no early exit that would leak the token's prefix by timing)."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8", "replace"))


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value, or None."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def normalize_origin(origin: str) -> str:
    """scheme://host[:port] in lower case without a default port or a trailing slash."""
    parts = urlsplit(origin.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        return origin.strip().lower()
    default = {"http": 80, "https": 443, "ws": 80, "wss": 443}.get(scheme)
    return f"{scheme}://{host}" + ("" if port in (None, default) else f":{port}")


def dashboard_origins(http_url: str | None) -> list[str]:
    """Origins a browser shows for the dashboard at `http_url` (loopback also as `localhost`)."""
    if not http_url:
        return []
    parts = urlsplit(http_url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    scheme = parts.scheme or "http"
    hosts = [host]
    if is_loopback(host) or host in ("0.0.0.0", "::"):
        hosts += ["127.0.0.1", "localhost", "[::1]"]
    origins = set()
    for h in hosts:
        shown = f"[{h}]" if ":" in h and not h.startswith("[") else h
        origins.add(normalize_origin(f"{scheme}://{shown}{port}"))
    return sorted(origins)


def origin_allowed(origin: str | None, allowed: Iterable[str]) -> bool:
    """A request without `Origin` is not from a browser and passes; a browser's must be listed.

    `*` in `allowed` admits every origin (for development only).
    """
    if origin is None:
        return True
    wanted = normalize_origin(origin)
    return any(item == "*" or normalize_origin(item) == wanted for item in allowed)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, allow_remote: bool, what: str = "gateway") -> str | None:
    """Refuse a non-loopback bind unless allowed; return the warning to print when it is allowed."""
    if is_loopback(host):
        return None
    if not allow_remote:
        raise ValidationError(
            f"{what}.host",
            f"binding to the non-loopback address {host!r} exposes the swarm to the network; "
            f"set {what}.allow_remote = true (shoal serve --allow-remote) to do it on purpose",
        )
    return (
        f"WARNING: the {what} listens on {host}, reachable from other machines; anyone with the token "
        "controls the swarm (use TLS: gateway.tls_cert / gateway.tls_key)"
    )


def ssl_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """A server TLS context from a certificate and key file, or None when neither is configured."""
    if not cert and not key:
        return None
    if not cert or not key:
        raise ValidationError("gateway.tls_cert", "TLS needs both gateway.tls_cert and gateway.tls_key")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ValidationError("gateway.tls_cert", f"cannot load {cert} / {key}: {exc}") from None
    return ctx
