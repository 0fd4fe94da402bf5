"""The dashboard's HTTP server: the page, its JSON API and the guide's monitoring endpoints.

The standard library's ``ThreadingHTTPServer`` is enough: a handful of users polling JSON that is
cached between changes, on a machine where installing a web framework may not be possible (a
login or compute node). No request can name a file: URLs carry experiment names and job ids, both
validated, and static assets are served from memory by name.

Access: bound to loopback, reads need no token (add ``--token`` to require one); bound to any
other address, every request needs the token. Actions (cancel, retry, priority) exist only with
``allow_actions`` and always need the token, sent as ``Authorization: Bearer``, ``X-DrExp-Token``,
``?token=`` or the cookie the page gets when opened with ``?token=``.
"""

from __future__ import annotations

import errno
import gzip
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from dr_exp import __version__
from dr_exp.dashboard.data import Reader
from dr_exp.dashboard.payload import Views
from dr_exp.errors import DrExpError, ViewError

log = logging.getLogger(__name__)

STATIC = {"app.js": "text/javascript", "chart.js": "text/javascript", "app.css": "text/css"}
MAX_BODY = 1 << 20
GZIP_MIN = 16 * 1024
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                               "frame-ancestors 'none'",
}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The host of a ``Host`` header (``[::1]:8765`` -> ``::1``, ``localhost:8765`` -> ``localhost``)."""
    if header.startswith("["):
        return header[1:header.find("]")]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def static_files() -> dict[str, bytes]:
    root = resources.files("dr_exp.dashboard") / "static"
    return {name: (root / name).read_bytes() for name in [*STATIC, "index.html"]}


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.code = status


@dataclass
class Settings:
    base_path: Path
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    token_for_reads: bool = False
    allow_actions: bool = False
    default_experiment: str | None = None
    nonce: str = field(default_factory=lambda: secrets.token_hex(4))


class App:
    """What the handler threads share: settings, the views and a cache of encoded responses."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.views = Views(Reader(settings.base_path))
        self.static = static_files()
        self._cache: OrderedDict[Any, tuple[str, bytes, bytes | None]] = OrderedDict()
        self._lock = threading.Lock()

    def encoded(self, key: Any, build: Callable[[], Any], gzipped: bool) -> tuple[str, bytes, bytes | None]:
        """``(etag, json, gzipped json or None)`` for data identified by ``key``; built once per
        key (gzipped once, when a client first asks for it). ``build`` returns the data, or its
        JSON encoding as bytes."""
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
        if hit is None:
            data = build()
            body = data if isinstance(data, bytes) else json.dumps(data, separators=(",", ":"), default=str).encode()
            hit = (f'"{self.settings.nonce}-{hash(key) & 0xFFFFFFFFFFFF:x}"', body, None)
        if gzipped and hit[2] is None and len(hit[1]) >= GZIP_MIN:
            hit = (hit[0], hit[1], gzip.compress(hit[1], compresslevel=1))
        with self._lock:
            self._cache[key] = hit
            while len(self._cache) > 64:
                self._cache.popitem(last=False)
        return hit


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"dr_exp-dashboard/{__version__}"
    server: DashboardHTTPServer

    # -- plumbing ------------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:  # quiet: polling would flood the terminal
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None,
              packed: bytes | None = None) -> None:
        use_gzip = packed is not None and "gzip" in self.headers.get("Accept-Encoding", "")
        payload = packed if use_gzip and packed is not None else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-cache")
        if use_gzip:
            self.send_header("Content-Encoding", "gzip")
        for k, v in {**SECURITY_HEADERS, **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data, separators=(",", ":"), default=str).encode(), "application/json", headers)

    def _cached_json(self, key: Any, build: Callable[[], Any]) -> None:
        etag, body, packed = self.server.app.encoded(key, build, "gzip" in self.headers.get("Accept-Encoding", ""))
        if self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.send_header("ETag", etag)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send(200, body, "application/json", {"ETag": etag}, packed)

    def _segments(self) -> tuple[list[str], dict[str, list[str]]]:
        """The path's segments, each percent-decoded; any that could step out of a directory
        (``..``, ``.``, a slash, a backslash or NUL once decoded) refuses the request."""
        parts = urlsplit(self.path)
        segments = []
        for raw in parts.path.split("/"):
            if raw == "":
                continue
            seg = unquote(raw)
            if seg in (".", "..") or any(c in seg for c in "/\\\x00"):
                raise HttpError(400, "bad path: '..', '.' and encoded slashes are refused")
            segments.append(seg)
        return segments, parse_qs(parts.query)

    # -- access --------------------------------------------------------------------------------
    def _offered_token(self, query: dict[str, list[str]]) -> tuple[str | None, bool]:
        """The token the request offers and whether it came from the cookie."""
        auth = self.headers.get("Authorization", "")
        for scheme in ("Bearer ", "token "):
            if auth.startswith(scheme):
                return auth[len(scheme):].strip(), False
        if self.headers.get("X-DrExp-Token"):
            return self.headers["X-DrExp-Token"].strip(), False
        if query.get("token"):
            return query["token"][0], False
        cookie = SimpleCookie()
        try:
            cookie.load(self.headers.get("Cookie", ""))
        except Exception:  # noqa: BLE001 -- a malformed cookie header is just no token
            return None, False
        morsel = cookie.get(self.server.cookie_name)
        return (morsel.value, True) if morsel else (None, False)

    def _token_ok(self, offered: str | None) -> bool:
        token = self.server.app.settings.token
        return bool(token and offered and hmac.compare_digest(offered.encode(), token.encode()))

    def _check_read(self, query: dict[str, list[str]]) -> dict[str, str]:
        """Refuse a read that lacks a required token; with a valid ``?token=``, set the cookie."""
        settings = self.server.app.settings
        offered, _ = self._offered_token(query)
        if not settings.token_for_reads:
            # Open on loopback: still refuse other Host names, so a web page cannot read the
            # dashboard through a DNS name rebound to 127.0.0.1.
            host = host_name(self.headers.get("Host") or "")
            if host and not is_loopback(host) and host != settings.host:
                raise HttpError(403, f"Host {host!r} is not allowed; open the dashboard as http://127.0.0.1:{self.server.port}/")
        elif not self._token_ok(offered):
            raise HttpError(401, "this dashboard needs its token: open the URL that `dr_exp dashboard` printed "
                                 "(…/?token=…) or send 'Authorization: Bearer <token>'")
        if query.get("token") and self._token_ok(query["token"][0]):
            return {"Set-Cookie": f"{self.server.cookie_name}={query['token'][0]}; HttpOnly; SameSite=Strict; Path=/"}
        return {}

    def _check_action(self, query: dict[str, list[str]]) -> None:
        settings = self.server.app.settings
        if not settings.allow_actions:
            raise HttpError(403, "this dashboard is read-only; start it with --allow-actions "
                                 "to cancel, retry or re-prioritise jobs")
        offered, from_cookie = self._offered_token(query)
        if not self._token_ok(offered):
            raise HttpError(403, "actions need the dashboard's token (Authorization: Bearer <token>, "
                                 "or open the page through the URL with ?token=)")
        if from_cookie:
            # A cookie is sent by the browser on its own; demand what a cross-site form cannot send.
            if not self.headers.get("Content-Type", "").startswith("application/json"):
                raise HttpError(403, "actions must be sent as application/json")
            origin = self.headers.get("Origin")
            if origin and urlsplit(origin).netloc != self.headers.get("Host"):
                raise HttpError(403, f"cross-origin action from {origin} refused")

    # -- methods -------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch(self._get)

    def do_HEAD(self) -> None:
        self._dispatch(self._get)

    def do_POST(self) -> None:
        self._dispatch(self._post)

    def _dispatch(self, method: Callable[[list[str], dict[str, list[str]]], None]) -> None:
        self._unread = self.command == "POST"
        try:
            segments, query = self._segments()
            method(segments, query)
        except HttpError as exc:
            self._json(exc.code, {"error": str(exc)})
        except ViewError as exc:
            self._json(404 if self.command != "POST" else 400, {"error": str(exc)})
        except DrExpError as exc:
            self._json(409, {"error": str(exc)})
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # a bug in one request must not stop the server
            log.exception("error serving %s", self.path)
            try:
                self._json(500, {"error": f"internal error: {type(exc).__name__}: {exc}"})
            except OSError:
                pass
        finally:
            if self._unread:
                # Answered without reading its body: what is left of the body would be taken for
                # the next request on this keep-alive connection, so the connection ends here.
                self.close_connection = True

    def _get(self, seg: list[str], query: dict[str, list[str]]) -> None:
        extra = self._check_read(query)
        app = self.server.app
        views = app.views
        if not seg:
            self._send(200, app.static["index.html"], "text/html; charset=utf-8", extra)
            return
        if seg[0] == "static" and len(seg) == 2 and seg[1] in STATIC:
            self._send(200, app.static[seg[1]], f"{STATIC[seg[1]]}; charset=utf-8", extra)
            return
        if seg == ["favicon.ico"]:
            self._send(204, b"", "image/x-icon")
            return
        if len(seg) == 3 and seg[0] == "experiments" and seg[2] == "status":
            self._json(200, views.status(seg[1]), extra)  # the integration guide's endpoint
            return
        if seg[0] != "api":
            raise HttpError(404, f"no such page: /{'/'.join(seg)}")
        rest = seg[1:]
        if rest == ["info"]:
            self._json(200, {"version": __version__, "actions": app.settings.allow_actions,
                             "experiment": app.settings.default_experiment}, extra)
        elif rest == ["experiments"]:
            self._json(200, views.experiments(), extra)
        elif len(rest) == 3 and rest[0] == "experiments" and rest[2] == "status":
            self._json(200, views.status(rest[1]), extra)
        elif len(rest) == 3 and rest[0] == "experiments" and rest[2] == "jobs":
            filters = {k: query[k][0] if k in query else None for k in ("status", "tags", "sweep")}
            key = views.table_key(rest[1], **filters)
            self._cached_json(key, lambda: views.table_json(rest[1], **filters)[1])
        elif len(rest) == 4 and rest[0] == "experiments" and rest[2] == "jobs":
            self._json(200, views.job(rest[1], rest[3]), extra)
        elif len(rest) == 4 and rest[0] == "experiments" and rest[2] == "studies":
            self._json(200, views.study(rest[1], rest[3]), extra)
        elif len(rest) == 5 and rest[0] == "experiments" and rest[2] == "jobs" and rest[4] == "curves":
            key, data = views.curves(rest[1], rest[3])
            self._cached_json(key, lambda: data)
        elif len(rest) == 5 and rest[0] == "experiments" and rest[2] == "jobs" and rest[4] == "log":
            offset = query.get("offset", [None])[0]
            if offset is not None and not offset.isdigit():
                raise HttpError(400, f"offset must be a byte offset (a non-negative integer), not {offset!r}")
            self._json(200, views.log(rest[1], rest[3], int(offset) if offset is not None else None), extra)
        else:
            raise HttpError(404, f"no such endpoint: /{'/'.join(seg)}")

    def _body(self) -> Any:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise HttpError(400, "bad Content-Length") from None
        if length > MAX_BODY:
            raise HttpError(413, "request body too large")
        raw = self.rfile.read(length) if length else b""
        self._unread = False
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            raise HttpError(400, "the request body is not JSON") from None

    def _post(self, seg: list[str], query: dict[str, list[str]]) -> None:
        if seg in (["query"], ["api", "query"]):
            extra = self._check_read(query)
            self._json(200, self.server.app.views.query(self._body()), extra)
            return
        if len(seg) == 6 and seg[:2] == ["api", "experiments"] and seg[3] == "jobs" and seg[5] in ("cancel", "retry", "priority"):
            self._check_action(query)
            self._act(seg[2], seg[4], seg[5], self._body())
            return
        raise HttpError(404, f"no such endpoint: POST /{'/'.join(seg)}")

    def _act(self, name: str, job_id: str, what: str, body: Any) -> None:
        er = self.server.app.views.experiment(name)
        er.record(job_id)  # a full, existing id: nothing else reaches the API
        if what == "cancel":
            rec = er.exp.cancel(job_id)
        elif what == "retry":
            rec = er.exp.retry(job_id)
        else:
            priority = body.get("priority") if isinstance(body, dict) else None
            if not isinstance(priority, int) or isinstance(priority, bool):
                raise HttpError(400, 'send {"priority": N} with N an integer from 0 to 1000')
            rec = er.exp.set_priority(job_id, priority)
        log.info("%s %s by %s", what, job_id, self.address_string())
        self._json(200, {"job_id": rec.id, "status": rec.status, "priority": rec.priority})


class DashboardHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, app: App) -> None:
        self.app = app
        host = app.settings.host
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host.strip("[]"), app.settings.port), Handler)
        self.port = self.server_address[1]
        self.cookie_name = f"drexp_token_{self.port}"


def serve(settings: Settings) -> DashboardHTTPServer:
    """Bind the server (not yet serving); a taken port or a bad address is a :class:`ViewError`."""
    if settings.token is None and (settings.token_for_reads or settings.allow_actions):
        settings.token = secrets.token_urlsafe(24)
    try:
        return DashboardHTTPServer(App(settings))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ViewError(f"port {settings.port} on {settings.host} is in use (another dashboard?); "
                            "pick another with --port, or --port 0 for any free port") from None
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) or isinstance(exc, socket.gaierror):
            raise ViewError(f"cannot listen on {settings.host}: {exc.strerror or exc}; "
                            "use an address of this machine, e.g. --host 127.0.0.1") from None
        if exc.errno == errno.EACCES:
            raise ViewError(f"no permission to listen on port {settings.port}; use a port above 1023") from None
        raise


def urls(server: DashboardHTTPServer) -> list[str]:
    """Where to open the page (with the token, when one is needed)."""
    s = server.app.settings
    suffix = f"?token={s.token}" if s.token else ""
    fragment = f"#/x/{s.default_experiment}" if s.default_experiment else ""
    hosts = [s.host]
    if s.host in ("0.0.0.0", "::", ""):
        hosts = [socket.gethostname(), "127.0.0.1"]
    return [f"http://{h if ':' not in h else f'[{h}]'}:{server.port}/{suffix}{fragment}" for h in hosts]


def run_forever(server: DashboardHTTPServer) -> None:
    """Serve until SIGINT/SIGTERM; the signal handler only asks the loop to stop."""
    import signal

    def stop(_signum: int, _frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=0.25)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()
