"""A fault-injecting HTTP proxy to put in front of an S3 server (moto) in tests.

`FaultProxy(upstream, rates, seed)` listens on 127.0.0.1 on a free port and forwards every request
(method, path and query, headers, body) to `upstream`, relaying the status, headers and body back.
Per request it may instead inject one fault (`FAULTS`), at the rates given:

  internal_error       500 InternalError, an S3 XML error body; not forwarded
  service_unavailable  503 ServiceUnavailable, likewise
  slow_down            503 SlowDown (S3's throttling), likewise
  drop_upload          PUT only: reads half the body, then closes the socket without answering;
                       not forwarded, so nothing partial reaches the server
  drop_download        GET of an object only: forwarded, then the status, headers (the full
                       Content-Length) and half the body are sent before the socket is closed
  slow                 sleeps `slow_s` (a random span), then forwards as usual
  lost_reply           forwarded, then the socket is closed unanswered: the server did it, the client
                       cannot know (a retried conditional write then meets its own first attempt)

Each method (GET, PUT, ...) draws from its own `random.Random` seeded from `seed`, so the n-th PUT
gets the same fate in every run whatever the interleaving with other requests. `counts` says how
many of each fault were injected, and how many requests were forwarded.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

ERRORS = {  # fault: (status, S3 error code, message)
    "internal_error": (500, "InternalError", "We encountered an internal error. Please try again."),
    "service_unavailable": (503, "ServiceUnavailable", "Service is unable to handle request."),
    "slow_down": (503, "SlowDown", "Please reduce your request rate."),
}
FAULTS = (*ERRORS, "drop_upload", "drop_download", "slow", "lost_reply")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}


class FaultProxy:
    """The proxy as a context manager: `with FaultProxy(moto_url, {"slow_down": 0.1}) as proxy: proxy.url`."""

    def __init__(self, upstream: str, rates: dict[str, float], seed: int = 0, slow_s=(0.2, 1.0)) -> None:
        assert set(rates) <= set(FAULTS) and sum(rates.values()) <= 1, rates
        self.upstream, self.rates, self.seed, self.slow_s = urlsplit(upstream).netloc, rates, seed, slow_s
        self.counts: Counter[str] = Counter()
        self._streams: dict[str, random.Random] = {}
        self._lock = threading.Lock()
        self._server = _Server(self)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()  # no new connections; then end the kept-alive ones and their threads
        for connection in list(self._server.connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        self._thread.join()

    def choose(self, method: str, path: str) -> tuple[str | None, float]:
        """The fault for this request (None: forward as is), drawn from its method's stream, and the
        delay if it is `slow`. A fault that does not apply to the request (a drop_upload on a GET) is
        drawn all the same and means no fault, so that every method's odds stay put."""
        with self._lock:
            rng = self._streams.setdefault(method, random.Random(f"{self.seed}/{method}"))
            draw, delay = rng.random(), rng.uniform(*self.slow_s)
            fault, bound = None, 0.0
            for name, rate in self.rates.items():
                bound += rate
                if draw < bound:
                    fault = name
                    break
            is_object = "/" in urlsplit(path).path.strip("/")  # /bucket/key, not /bucket?list-type=2
            if (fault == "drop_upload" and method != "PUT") or (
                fault == "drop_download" and (method != "GET" or not is_object)
            ):
                fault = None
            self.counts[fault or "forwarded"] += 1
            return fault, delay


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() waits for every handler thread

    def __init__(self, proxy: FaultProxy) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.proxy, self.connections = proxy, set()

    def process_request(self, request, client_address) -> None:
        self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        pass  # a client gone mid-request: the faults are made of these


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect
    timeout = 30  # an idle keep-alive connection's handler thread ends after this

    def log_message(self, format, *args) -> None:  # quiet
        pass

    def _handle(self) -> None:
        proxy: FaultProxy = self.server.proxy
        fault, delay = proxy.choose(self.command, self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if fault == "drop_upload":
            self.rfile.read(length // 2)
            self.close_connection = True  # the server closes the socket, unanswered
            return
        body = self.rfile.read(length)
        if fault in ERRORS:
            status, code, message = ERRORS[fault]
            xml = (
                '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>'
                f"{code}</Code><Message>{message}</Message><RequestId>fault-proxy</RequestId></Error>"
            ).encode()
            self._reply(status, [("Content-Type", "application/xml")], xml)
            return
        if fault == "slow":
            time.sleep(delay)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP | {"expect"}}
        upstream = http.client.HTTPConnection(proxy.upstream, timeout=60)
        try:
            upstream.request(self.command, self.path, body=body if length else None, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
        finally:
            upstream.close()
        if fault == "lost_reply":
            self.close_connection = True
            return
        self._reply(response.status, kept, data, cut=len(data) // 2 if fault == "drop_download" else None)

    def _reply(self, status: int, headers: list, body: bytes, cut: int | None = None) -> None:
        """Send the reply; with `cut`, only its first `cut` bytes of body, then close the connection."""
        self.send_response_only(status)
        if self.command != "HEAD":  # a HEAD's Content-Length stays the object's size
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(body))))
        for key, value in headers:
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body[:cut])
        self.close_connection = self.close_connection or cut is not None

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle
