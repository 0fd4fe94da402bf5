"""S3-compatible stores unlike AWS, for the sync tests: an HTTP proxy on 127.0.0.1 in front of a
real moto_server that changes what the store looks like from the outside.

- Every ETag is replaced by random hex (consistently, and mapped back in requests: part lists,
  If-Match), as in SSE-KMS buckets and on stores whose ETags are not MD5s.
- ``checksums="server"``: the store computes an upload's checksum from the bytes it received
  (the client's value is not passed on), as S3 in effect does by rejecting a disagreeing one.
- ``checksums="strip"``: a store that knows nothing of checksums: checksum headers are dropped
  both ways and checksum fields removed from XML bodies.
- ``checksums="refuse"``: a store that answers 501 to any upload with checksum headers (and
  otherwise behaves like ``strip``).
- ``corrupt``: uploaded bodies (PUT object and part) for keys ending in it have a byte flipped.
- ``on_upload``: called with the key before an upload is passed on (to change a local file
  between reading and verifying it).
"""

from __future__ import annotations

import http.client
import re
import secrets
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "expect",
        "content-length"}
_CHECKSUM_VALUE = re.compile(r"^x-amz-checksum-(crc32|crc32c|crc64nvme|sha1|sha256|sha512|md5|xxhash\w*)$", re.I)
_XML_ETAG = re.compile(rb"<ETag>(&quot;|\")?([^<&\"]+)(&quot;|\")?</ETag>")
_XML_CHECKSUM = re.compile(rb"<(Checksum\w*)>[^<]*</\1>")
_HEX = re.compile(r"[0-9a-f]{32}")


class S3Proxy:
    def __init__(self, upstream: str, checksums: str = "server") -> None:
        assert checksums in ("server", "strip", "refuse"), checksums
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.checksums = checksums
        self.corrupt: str | None = None
        self.on_upload: Callable[[str], None] | None = None
        self.requests: list[tuple[str, str, bool]] = []  # (method, key, carried checksum headers)
        self._fake: dict[str, str] = {}
        self._real: dict[str, str] = {}
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> S3Proxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)

    def fake_etag(self, real: str) -> str:
        with self._lock:
            if real not in self._fake:
                fake = secrets.token_hex(16)
                self._fake[real], self._real[fake] = fake, real
            return self._fake[real]

    def real_etags(self, text: str) -> str:
        with self._lock:
            return _HEX.sub(lambda m: self._real.get(m.group(0), m.group(0)), text)

    def uploads_with_checksums(self) -> int:
        return sum(1 for method, _, checksum in self.requests if method in ("PUT", "POST") and checksum)


def _handler_for(proxy: S3Proxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            url = urlsplit(self.path)
            key = unquote(url.path).split("/", 2)[-1] if url.path.count("/") >= 2 else ""
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            checksum_headers = [k for k in headers if k.lower().startswith(("x-amz-checksum-", "x-amz-sdk-checksum-"))]
            proxy.requests.append((self.command, key, bool(checksum_headers)))
            if proxy.checksums == "refuse" and any(n.lower() != "x-amz-checksum-mode" for n in checksum_headers):
                self._reply(501, {"Content-Type": "application/xml"},
                            b"<Error><Code>NotImplemented</Code><Message>checksums are not supported</Message></Error>")
                return
            for name in checksum_headers:
                if proxy.checksums != "server" or _CHECKSUM_VALUE.match(name):
                    del headers[name]
            for name in headers:
                if name.lower() in ("if-match", "if-none-match", "x-amz-copy-source-if-match"):
                    headers[name] = proxy.real_etags(headers[name])
            if self.command == "POST" and body:
                body = proxy.real_etags(body.decode()).encode()
            if self.command == "PUT" and body and "x-amz-copy-source" not in {k.lower() for k in headers}:
                if proxy.on_upload is not None:
                    proxy.on_upload(key)
                if proxy.corrupt and key.endswith(proxy.corrupt):
                    body = bytes([body[0] ^ 0xFF]) + body[1:]
            conn = http.client.HTTPConnection(*proxy.upstream, timeout=120)
            try:
                conn.request(self.command, self.path, body=body if body or self.command in ("PUT", "POST") else None,
                             headers={**headers, "Content-Length": str(len(body))})
                resp = conn.getresponse()
                data = resp.read()
                out = {k: v for k, v in resp.getheaders() if k.lower() not in _HOP | {"server", "date"}}
            finally:
                conn.close()
            for name in list(out):
                if name.lower() == "etag":
                    out[name] = f'"{proxy.fake_etag(out[name].strip(chr(34)))}"'
                elif proxy.checksums != "server" and name.lower().startswith("x-amz-checksum"):
                    del out[name]
            if self.command == "POST" or url.query or not key:  # an XML answer, not an object's bytes
                data = _XML_ETAG.sub(lambda m: b"<ETag>&quot;" + proxy.fake_etag(m.group(2).decode()).encode()
                                     + b"&quot;</ETag>", data)
                if proxy.checksums != "server":
                    data = _XML_CHECKSUM.sub(b"", data)
            length = resp.getheader("Content-Length") if self.command == "HEAD" else None
            self._reply(resp.status, out, data, length)

        def _reply(self, status: int, headers: dict[str, str], data: bytes, length: str | None = None) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", length or str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    return Handler
