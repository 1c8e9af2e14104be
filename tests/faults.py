"""A small fault-injecting HTTP proxy in front of an S3 endpoint (moto's server, in the tests).

Requests that match a rule (a substring of the path, optionally one HTTP method, every k-th
match, a given number of times or always) get the rule's fault; every other request is
forwarded unchanged. The faults:

    503         answered with 503 SlowDown, the error S3 sends when it throttles
    reset       the connection is reset before the request reaches the store
    lost_reply  the store applies the request, then the connection is reset before the reply
    slow        the reply comes after `delay_s`

Bound to 127.0.0.1 only, stopped by the test that started it.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

KINDS = ("503", "reset", "lost_reply", "slow")


@dataclass
class Rule:
    substring: str
    times: int | None = None  # faults left; None: no end
    kind: str = "503"
    method: str | None = None
    every: int = 1  # fault every k-th matching request
    delay_s: float = 0.0
    seen: int = 0


SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.rules: list[Rule] = []
        self.faults = 0
        self.by_kind = dict.fromkeys(KINDS, 0)
        self.requests = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail(
        self,
        substring: str,
        times: int | None = None,
        kind: str = "503",
        method: str | None = None,
        every: int = 1,
        delay_s: float = 0.5,
    ) -> None:
        """Give requests whose path contains `substring` the fault `kind`, `times` times (None:
        always), on every `every`-th match, only for `method` when given."""
        if kind not in KINDS:
            raise ValueError(f"unknown fault {kind!r}; valid: {KINDS}")
        with self._lock:
            self.rules.append(Rule(substring, times, kind, method, every, delay_s))

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def _fault(self, method: str, path: str) -> Rule | None:
        with self._lock:
            self.requests += 1
            for rule in self.rules:
                if rule.substring not in path or (rule.method and rule.method != method):
                    continue
                if rule.times is not None and rule.times <= 0:
                    continue
                rule.seen += 1
                if rule.seen % rule.every:
                    continue
                if rule.times is not None:
                    rule.times -= 1
                self.faults += 1
                self.by_kind[rule.kind] += 1
                return rule
        return None

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
                rule = proxy._fault(self.command, self.path)
                if rule is not None and rule.kind == "reset":
                    return self._reset()
                if rule is not None and rule.kind == "503":
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
                if rule is not None and rule.kind == "lost_reply":
                    conn.close()
                    return self._reset()
                if rule is not None and rule.kind == "slow":
                    time.sleep(rule.delay_s)
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

            def _reset(self) -> None:
                """Close with RST (SO_LINGER 0): the client sees a connection reset."""
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.close_connection = True
                self.connection.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        return Handler
