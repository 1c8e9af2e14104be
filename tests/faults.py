"""A small fault-injecting HTTP proxy in front of an S3 endpoint (moto's server, in the tests).

Requests whose path contains a chosen substring are answered with 503 SlowDown, the error S3
sends when it throttles, a given number of times or always; every other request is forwarded
unchanged. Bound to 127.0.0.1 only, stopped by the test that started it.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.rules: list[list] = []  # [substring, failures left or None for always]
        self.faults = 0
        self.requests = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail(self, substring: str, times: int | None = None) -> None:
        """Answer requests whose path contains `substring` with 503, `times` times (None: always)."""
        with self._lock:
            self.rules.append([substring, times])

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def _should_fail(self, path: str) -> bool:
        with self._lock:
            self.requests += 1
            for rule in self.rules:
                if rule[0] in path and (rule[1] is None or rule[1] > 0):
                    if rule[1] is not None:
                        rule[1] -= 1
                    self.faults += 1
                    return True
        return False

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # one line per request otherwise
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if proxy._should_fail(self.path):
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(SLOW_DOWN)
                    return
                up = proxy.upstream
                conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = up.netloc
                conn.request(self.command, self.path, body=body, headers=headers)
                reply = conn.getresponse()
                data = reply.read()
                self.send_response(reply.status)
                # A HEAD reply has no body but says the object's size: keep its Content-Length.
                keep_length = self.command == "HEAD"
                for k, v in reply.getheaders():
                    drop = ("transfer-encoding", "connection") + (
                        () if keep_length else ("content-length",)
                    )
                    if k.lower() not in drop:
                        self.send_header(k, v)
                if not keep_length:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        return Handler
