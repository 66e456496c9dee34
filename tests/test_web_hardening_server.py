"""Every documented way of starting the server runs the same hardened workers: gunicorn's own command lines read
gunicorn.conf.py from the project folder, and 50 slow clients cannot keep /health from answering."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from bench.bench_api import hold_slow_clients
from common.config import Config
from tests.helpers import PROJECT_ROOT, free_port, script_command, wait_until_healthy

SLOW_CLIENTS = 50
HEALTH_CHECKS = 10
QUICK_SECONDS = 2.0


def documented_command(way: str, config: Path, port: int) -> list[str]:
    """The command line docs/api.md gives for ``way``, on ``port``."""
    if way == "app.py":
        return script_command("app.py", "--config", str(config), "--port", str(port))
    return [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", way]


@pytest.mark.slow
@pytest.mark.parametrize("way", ["app:create_app()", "app:app", "app.py"])
def test_every_documented_command_line_keeps_health_answering_beside_50_slow_clients(deployed: Config, way, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "server.log").open("w+", encoding="utf-8")
    server = subprocess.Popen(
        documented_command(way, deployed.path, port),
        cwd=PROJECT_ROOT,
        env={**os.environ, "RISK_CONFIG": str(deployed.path)},
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    stop = threading.Event()
    connections = []
    try:
        wait_until_healthy(url, server)
        connections = hold_slow_clients(port, SLOW_CLIENTS, stop)
        slowest = 0.0
        for _ in range(HEALTH_CHECKS):
            started = time.monotonic()
            answer = requests.get(f"{url}/health", timeout=10)
            slowest = max(slowest, time.monotonic() - started)
            assert answer.status_code == 200
        assert slowest < QUICK_SECONDS, f"{way}: /health took {slowest:.1f} s beside {SLOW_CLIENTS} slow clients"
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
    finally:
        stop.set()
        for connection in connections:
            connection.close()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)  # workers still holding a connection are ended after gunicorn's graceful timeout
        log.seek(0)
        output = log.read()
        log.close()
    assert "Using worker: gevent" in output, output[-2000:]
