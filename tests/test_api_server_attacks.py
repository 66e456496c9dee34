"""The API under gunicorn, attacked as a hostile client would: a request fuzzer over every endpoint, slow
clients, secrets in URLs and the access log, exposure without a token, and a model damaged under two
workers. Real processes on free ports, started and stopped here."""

from __future__ import annotations

import base64
import collections
import gzip
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bench.bench_api import hold_slow_clients
from riskwatch.core.config import Config, load_config
from riskwatch.state.artifacts import MODEL_FILE, VERSIONS_FOLDER
from riskwatch.web.app import create_app
from tests.helpers import (
    PROJECT_ROOT,
    copy_project,
    deploy,
    free_port,
    run_script,
    stop_server,
    train_and_score,
    wait_until_healthy,
    write_config,
)

pytestmark = pytest.mark.slow

MAX_BODY_MB = 0.05  # the fuzzed server's body limit: bodies over it are cheap to send
MAX_BODY = int(MAX_BODY_MB * 1024 * 1024)
# 4,000 hostile requests on every run; `make test-soak` sends 10,000 (RISK_TEST_FUZZ_REQUESTS).
FUZZ_REQUESTS = int(os.environ.get("RISK_TEST_FUZZ_REQUESTS", "4000"))
FEATURES = ("lastmonth_activity", "lastyear_activity", "number_of_employees")


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    stdout: Path  # files, not pipes: a full pipe would stall the server's logging, and the server with it
    stderr: Path


def start_server(config: Config, *args: str) -> Server:
    port = free_port()
    logs = config.path.parent / f"server-{port}"
    with open(f"{logs}.out", "w") as stdout, open(f"{logs}.err", "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(PROJECT_ROOT / "app.py"), "--config", str(config.path), "--port", str(port), *args],
            stdout=stdout,
            stderr=stderr,
            cwd=PROJECT_ROOT,
            start_new_session=True,  # its workers with it, for stop_server
        )
    server = Server(process, f"http://127.0.0.1:{port}", Path(f"{logs}.out"), Path(f"{logs}.err"))
    wait_for_workers(server, 2)
    return server


def wait_for_workers(server: Server, workers: int, timeout: float = 60) -> None:
    """Wait until every worker has loaded its model (a SIGTERM to a worker still booting waits out gunicorn's
    graceful timeout), then until the API answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.process.poll() is None:
        log = server.stderr.read_text()
        if log.count("serving model") + log.count("cannot serve") >= workers:
            break
        time.sleep(0.1)
    wait_until_healthy(server.url, server.process)


def stop_gracefully(server: Server) -> tuple[str, str]:
    """Stop it as an operator does (SIGTERM: gunicorn's graceful stop); return (its stdout, its stderr)."""
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(timeout=60)
    return server.stdout.read_text(), server.stderr.read_text()


@pytest.fixture
def fuzzed(deployed: Config) -> Iterator[tuple[str, list[str]]]:
    """The deployed project, with its diagnostics and report, served with a small body limit; yields its URL and routes.

    Everything an endpoint answers from exists, so any 5xx is a fault, never "not made yet".
    """
    config = load_config(
        write_config(
            deployed.path.parent,
            api={"max_body_mb": MAX_BODY_MB},
            diagnostics={"package_index": "http://127.0.0.1:9/pypi", "index_timeout_seconds": 1},
        )
    )
    for script in ("diagnostics.py", "reporting.py"):
        made = run_script(script, "--config", str(config.path), "-q")
        assert made.returncode == 0, made.stderr
    routes = sorted({rule.rule for rule in create_app(config, token="").url_map.iter_rules()})
    server = start_server(config)
    try:
        yield server.url, routes
    finally:
        stop_server(server.process)
        log = server.stderr.read_text()
        print("\n".join(line for line in log.splitlines() if "INFO" not in line)[-3000:])
        print("\n".join(line for line in log.splitlines() if "INFO" not in line)[-3000:])


# ---------------------------------------------------------------- what the fuzzer sends

texts = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)) | st.sampled_from(["\n", "\r", "\x00", ",", '"']),
    max_size=40,
)
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([2**53, 2**53 + 1, 2**53 - 1, 0, -1, 10**300]),
)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)
records = st.lists(
    st.fixed_dictionaries(
        {name: st.one_of(st.integers(0, 10**6), json_values) for name in FEATURES},
        optional={"corporation": st.one_of(texts, st.integers(), json_values), "exited": json_values},
    ),
    max_size=5,
)


def as_json(value: object) -> bytes:
    return json.dumps(value, allow_nan=False).encode()


raw_json = st.one_of(
    records.map(lambda rows: as_json({"records": rows})),
    records.map(as_json),
    json_values.map(as_json),
    st.builds(
        lambda location: as_json({"filelocation": location}),
        st.one_of(
            texts,
            st.sampled_from(
                ["testdata/testdata.csv", "../config.json", "/etc/passwd", "models/trainedmodel.pkl", "testdata", ""]
            ),
        ),
    ),
    st.integers(1, 1500).map(lambda depth: b'{"records": ' + b"[" * depth + b"]" * depth + b"}"),
    st.sampled_from(
        [
            b'{"records": [{"corporation": "\\ud800", "lastmonth_activity": 1}]}',
            b'{"a": ' + b"9" * 5000 + b"}",
            b'{"records": [1, 2',
            b"\xff\xfe{}",
        ]
    ),
)
csv_bodies = st.builds(
    lambda header, rows: (header + "".join(",".join(row) + "\n" for row in rows)).encode("utf-8", "surrogatepass"),
    st.sampled_from(["corporation,lastmonth_activity,lastyear_activity,number_of_employees\n", "a,b\n", ""]),
    st.lists(st.lists(st.one_of(texts, st.integers(-5, 10**20).map(str)), min_size=1, max_size=5), max_size=6),
)
bodies = st.one_of(st.just(b""), raw_json, csv_bodies, st.binary(max_size=300))
content_types = st.sampled_from(
    [
        None,
        "application/json",
        "text/csv",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/octet-stream",
        "application/vnd.api+json",
        "text/csv; charset=x",
    ]
)
framings = st.sampled_from(["length", "length", "chunked", "bad-chunk", "cut-chunked", "short-length"])
encodings = st.sampled_from(["identity", "identity", "identity", "gzip", "broken-gzip", "deflate", "br"])


class Probe:
    """One hostile request: its bytes; whether its body arrives whole, within the limit, in an encoding the API reads.

    A plain class, not a dataclass: Hypothesis prints a dataclass field by field, 50 kB of body included.
    """

    def __init__(self, raw: bytes, method: str, whole: bool, readable: bool):
        self.raw, self.method, self.whole, self.readable = raw, method, whole, readable

    def __repr__(self) -> str:  # Hypothesis prints failing examples: the head of the request is enough
        return f"Probe({self.raw[:400]!r}{'...' if len(self.raw) > 400 else ''}, whole={self.whole})"


@st.composite
def requests_to_send(draw, routes: list[str]) -> Probe:
    route = draw(st.sampled_from(routes + ["/no-such-page", "/prediction/", "//prediction"]))
    path = re.sub(r"<[^>]+>", lambda _: quote(draw(texts).encode("utf-8"), safe=""), route)
    query = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["filelocation", "limit", "explain", "q", "sort", "order", "page", "data", "next"])
                | texts,
                texts,
            ),
            max_size=3,
        )
    )
    if query:
        path += "?" + "&".join(f"{quote(key.encode())}={quote(value.encode())}" for key, value in query)
    method = draw(st.sampled_from(["GET", "GET", "POST", "POST", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"]))
    body = draw(bodies) if method not in ("GET", "HEAD") or draw(st.booleans()) else b""
    if draw(st.integers(0, 9)) == 0:
        body += b"x" * (MAX_BODY + 10)  # over the limit
    headers = [("Host", "fuzz"), ("Connection", "close")]
    content_type = draw(content_types)
    if content_type:
        headers.append(("Content-Type", content_type))
    if draw(st.integers(0, 9)) == 0:
        headers.append(
            (
                "Authorization",
                draw(st.sampled_from(["Bearer x", "Basic " + base64.b64encode(b"a:b").decode(), "Bearer", "x"])),
            )
        )
    if draw(st.integers(0, 9)) == 0:
        headers.append(("Cookie", f"session={quote(draw(texts).encode())}"))
    encoding = draw(encodings)
    whole = True
    if encoding == "gzip":
        body = gzip.compress(body)
    elif encoding == "deflate":
        body = zlib.compress(body)
    elif encoding == "broken-gzip":
        body, encoding = gzip.compress(body)[:-9], "gzip"
        whole = False
    readable = encoding in ("identity", "gzip", "deflate")
    if encoding != "identity":
        headers.append(("Content-Encoding", encoding))
    framing = draw(framings) if body else "length"
    if framing == "length":
        headers.append(("Content-Length", str(len(body))))
        payload = body
    elif framing == "short-length":
        headers.append(("Content-Length", str(len(body) + 10)))
        payload, whole = body, False
    else:
        headers.append(("Transfer-Encoding", "chunked"))
        payload = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:7], body[7:]) if part)
        if framing == "chunked":
            payload += b"0\r\n\r\n"
        elif framing == "bad-chunk":
            payload, whole = b"zz\r\n" + payload, False
        else:  # cut: no last chunk
            whole = False
    oversized = len(body) > MAX_BODY
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers) + "\r\n"
    return Probe(
        head.encode("latin-1", "replace") + payload,
        method,
        whole and not oversized,
        readable and whole and not oversized,
    )


RESET = -1  # the server refused the body and closed while it was still being sent


def send(url: str, raw: bytes) -> int:
    """Send one raw request, close the sending side, and return the answer's status (0: no answer, RESET)."""
    host, port = url.removeprefix("http://").split(":")
    answer = b""
    with socket.create_connection((host, int(port)), timeout=20) as connection:
        try:
            connection.sendall(raw)
            connection.shutdown(socket.SHUT_WR)
        except OSError:  # the server answered and closed before the whole request was sent
            pass
        try:
            while chunk := connection.recv(65536):
                answer += chunk
        except ConnectionResetError:
            if not answer:
                return RESET
    match = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
    return int(match.group(1)) if match else 0


def test_a_fuzzer_of_thousands_of_hostile_requests_gets_no_5xx_and_no_200_to_a_body_not_read_whole(fuzzed):
    url, routes = fuzzed
    statuses: collections.Counter[int] = collections.Counter()
    failures: list[str] = []

    @settings(
        max_examples=FUZZ_REQUESTS,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(requests_to_send(routes))
    def one_request(probe: Probe) -> None:
        status = send(url, probe.raw)
        statuses[status] += 1
        # A refusal (413, 415, 400) sent before the body was read can be overtaken by the closing connection.
        refused_early = status == RESET and not probe.readable
        if status >= 500 or status == 0 or (status == RESET and not refused_early):
            failures.append(f"{status} for {probe!r}")
        if status == 200 and not probe.whole and probe.method == "POST":
            failures.append(f"200 to a body not read whole: {probe!r}")

    one_request()
    sent = sum(statuses.values())
    five_xx = sum(count for status, count in statuses.items() if status >= 500)
    print(f"\nfuzzer: {sent} requests, {five_xx} answered 5xx; statuses {dict(sorted(statuses.items()))}")
    assert sent >= FUZZ_REQUESTS
    assert not failures, failures[:10]
    assert requests.get(f"{url}/health", timeout=5).status_code == 200  # and it still serves


def test_fifty_slow_clients_do_not_hold_the_api(deployed: Config):
    server = start_server(deployed)
    url = server.url
    stop = threading.Event()
    connections = hold_slow_clients(int(url.rsplit(":", 1)[1]), 50, stop)
    try:
        time.sleep(1)
        answers = [requests.get(f"{url}/health", timeout=2) for _ in range(20)]  # sync workers: 19 s, or none
        predictions = [
            requests.post(f"{url}/prediction", json={"filelocation": "testdata/testdata.csv"}, timeout=5)
            for _ in range(5)
        ]
    finally:
        stop.set()
        for connection in connections:
            connection.close()
        stop_server(server.process)
    assert all(answer.status_code == 200 for answer in answers + predictions)


def test_the_access_log_holds_no_query_string_and_no_basic_user(deployed: Config):
    server = start_server(deployed, "--access-log")
    url = server.url
    try:
        requests.get(f"{url}/scoring?token=s3cret-in-url", timeout=5)
        requests.get(
            f"{url}/scoring",
            headers={"Authorization": "Basic " + base64.b64encode(b"s3cret-user:pw").decode()},
            timeout=5,
        )
        requests.get(f"{url}/health", timeout=5)
    finally:
        stdout, stderr = stop_gracefully(server)
    assert '"GET /scoring HTTP/1.1" 400' in stdout and '"GET /health HTTP/1.1" 200' in stdout
    assert "s3cret" not in stdout + stderr


def test_no_token_and_another_address_needs_the_explicit_flag(deployed: Config):
    refused = subprocess.run(
        [
            sys.executable,
            str(PROJECT_ROOT / "app.py"),
            "--config",
            str(deployed.path),
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=60,
    )
    assert refused.returncode == 2 and "--open-without-token" in refused.stderr
    _, stderr = stop_gracefully(start_server(deployed, "--host", "0.0.0.0", "--open-without-token"))
    assert "every endpoint is open to whoever can reach 0.0.0.0" in stderr


def test_a_model_damaged_under_two_workers_is_replaced_by_the_same_intact_version_in_both(deployed: Config):
    train_and_score(deployed, C=0.01)
    deploy(deployed)
    server = start_server(deployed)
    url = server.url
    try:
        with requests.Session() as session:  # each worker loads v0002
            assert {session.get(f"{url}/version", timeout=5).json()["model_version"] for _ in range(10)} == {"v0002"}
        model = deployed.prod_deployment_path / VERSIONS_FOLDER / "v0002" / MODEL_FILE
        model.write_bytes(b"damaged")
        served = {requests.get(f"{url}/health", timeout=5).json()["model_version"] for _ in range(20)}
        assert served == {"v0001"}
    finally:
        stop_server(server.process)
    server = start_server(deployed)  # a restart serves the intact version too, not 503
    url = server.url
    try:
        health = requests.get(f"{url}/health", timeout=5).json()
        assert health["model_version"] == "v0001" and health["status"] == "degraded"
        record = {"lastmonth_activity": 1, "lastyear_activity": 2, "number_of_employees": 3}
        assert requests.post(f"{url}/prediction", json={"records": [record]}, timeout=5).status_code == 200
    finally:
        stop_server(server.process)


@pytest.fixture(scope="module")
def framed_server(tmp_path_factory: pytest.TempPathFactory, deployed_template: Path) -> Iterator[str]:
    """One server of a copy of the deployed project, for every malformed framing in turn; yields its URL."""
    folder = tmp_path_factory.mktemp("framed")
    copy_project(deployed_template, folder)
    server = start_server(load_config(folder / "config.json"))
    try:
        yield server.url
    finally:
        stop_server(server.process)


@pytest.mark.parametrize(
    ("framing", "status"),
    [
        (b"zz\r\nabc\r\n0\r\n\r\n", 400),  # a chunk size that is not hexadecimal
        (b"3\r\nabcdef\r\n0\r\n\r\n", 400),  # a chunk longer than its size
        (b"5\r\nab", 400),  # cut: the client went away mid-chunk
        (b"ffffffffffffffffff\r\nabc\r\n", 400),  # a size no body can have
    ],
    ids=["not hex", "overlong chunk", "cut", "absurd size"],
)
def test_malformed_chunked_framing_is_a_400_not_a_500(framed_server: str, framing: bytes, status: int):
    head = b"POST /prediction HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\nTransfer-Encoding: chunked\r\n"
    assert send(framed_server, head + b"Connection: close\r\n\r\n" + framing) == status
    assert requests.get(f"{framed_server}/health", timeout=5).status_code == 200  # and it serves on
