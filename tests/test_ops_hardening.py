"""Alerts that cannot be lost quietly, the cron job's token and the report kept with the deployment.

Every webhook receiver here is a local HTTP server started by the test on a free port.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from common.alerts import deliver
from tests.test_alerts import EVENT


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve ``handler`` on 127.0.0.1 for the block; yield its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class Redirecting(BaseHTTPRequestHandler):
    """Answers a POST with 302 to /landing, which answers 200 (to the GET a followed redirect would send)."""

    requests: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 (the http.server name)
        self.requests.append(f"POST {self.path}")
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(302)
        self.send_header("Location", "/landing")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        self.requests.append(f"GET {self.path}")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_webhook_answering_302_has_not_received_the_event_and_is_not_followed(caplog):
    caplog.set_level(logging.INFO)
    Redirecting.requests = []
    with serving(Redirecting) as base:
        (result,) = deliver([f"{base}/hook"], EVENT, deadline_seconds=5)
    assert not result.ok and result.status == 302 and result.attempts == 1
    assert "redirect" in result.error
    assert Redirecting.requests == ["POST /hook"]
    assert "not delivered" in caplog.text and "sent to" not in caplog.text


class Dripping(BaseHTTPRequestHandler):
    """Starts an answer and never finishes it: one byte of a header line every 0.1 s, until the test ends."""

    stop = threading.Event()

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        while not self.stop.wait(0.1):
            try:
                self.wfile.write(b"x")
                self.wfile.flush()
            except OSError:
                return

    def log_message(self, *args: object) -> None:
        pass


def test_an_answer_that_never_ends_is_logged_with_the_attempt_it_took(caplog):
    caplog.set_level(logging.INFO)
    Dripping.stop.clear()
    try:
        with serving(Dripping) as base:
            (result,) = deliver([f"{base}/hook"], EVENT, deadline_seconds=1.5)
    finally:
        Dripping.stop.set()
    assert not result.ok and result.attempts == 1 and result.error == "no answer within the deadline"
    assert "after 1 attempt(s): no answer within the deadline" in caplog.text
