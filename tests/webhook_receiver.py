"""A webhook receiver for the alert tests: a local HTTP server on a free port that records what it is sent."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from riskwatch.monitoring.alerts import AlertEvent

EVENT = AlertEvent(kind="deployed", text="risk model: v0002 deployed, replacing v0001", project="demo", run_id=4)


class Receiver:
    """A webhook receiver on 127.0.0.1: answers with ``statuses`` in turn (then 200), after ``delay`` seconds."""

    def __init__(self, statuses: list[int] | None = None, delay: float = 0.0, hang: bool = False):
        self.statuses, self.delay, self.hang = list(statuses or []), delay, hang
        self.received: list[dict] = []
        self.attempts = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the http.server name)
                receiver.attempts += 1
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.hang:
                    time.sleep(30)
                    return
                time.sleep(receiver.delay)
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                if status == 200:
                    receiver.received.append(
                        {"path": self.path, "type": self.headers["Content-Type"], "json": json.loads(body)}
                    )
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/B000/s3cr3tT0ken?sig=abcdef"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
