"""Every documented way of starting the server runs the same hardened workers: gunicorn's own command lines read
gunicorn.conf.py from the project folder (or from ``--config`` when started elsewhere), and 50 slow clients cannot
keep /health from answering. The ways are bench/bench_api.py's, which times the same for docs/benchmarks.md."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest
import requests

from bench.bench_api import DOCUMENTED_STARTS, documented_start, hold_slow_clients
from riskwatch.core.config import Config
from tests.helpers import free_port, stop_server, wait_until_healthy

SLOW_CLIENTS = 50
HEALTH_CHECKS = 10
QUICK_SECONDS = 2.0


@pytest.mark.slow
@pytest.mark.parametrize("way", DOCUMENTED_STARTS)
def test_every_documented_command_line_keeps_health_answering_beside_50_slow_clients(deployed: Config, way, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "server.log").open("w+", encoding="utf-8")
    (tmp_path / "elsewhere").mkdir()
    command, folder = documented_start(way, deployed.path, port, tmp_path / "elsewhere")
    server = subprocess.Popen(
        command,
        cwd=folder,
        env={**os.environ, "RISK_CONFIG": str(deployed.path)},
        stdout=subprocess.DEVNULL,
        stderr=log,
        start_new_session=True,  # its workers with it, for stop_server
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
        stop_server(server)  # what the test reads, gunicorn logged as it started
        log.seek(0)
        output = log.read()
        log.close()
    assert "Using worker: gevent" in output, output[-2000:]
