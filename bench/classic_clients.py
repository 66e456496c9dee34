"""The request shapes of classic course clients against a real server: each shape's status, as a table.

Builds a scratch project from the shipped data (as ``bench.bench_api`` does), serves it with
``gunicorn app:app`` (the way a classic ``wsgi.py`` is served), sends each shape with
``requests`` and prints one Markdown row per group of shapes with the statuses seen.

    .venv/bin/python -m bench.classic_clients
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from riskwatch.core.config import PROJECT_ROOT

RECORD = {"corporation": "acme", "lastmonth_activity": 37, "lastyear_activity": 412, "number_of_employees": 18}


@dataclass(frozen=True)
class Shape:
    """One request a classic client sends to /prediction. In values, ``{relative}``, ``{bare}`` and ``{absolute}``
    stand for the test file named relative to the project, by its name alone, and by its absolute path."""

    label: str
    method: str = "POST"
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    form: dict[str, Any] = field(default_factory=dict)
    upload_field: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    """The server and the test file it should read."""

    url: str
    relative: str  # e.g. testdata/testdata.csv
    absolute: Path

    def fill(self, values: dict[str, Any]) -> dict[str, Any]:
        names = {"relative": self.relative, "bare": Path(self.relative).name, "absolute": str(self.absolute)}
        return {key: value.format(**names) if isinstance(value, str) else value for key, value in values.items()}


def send_shape(session: requests.Session, target: Target, shape: Shape) -> requests.Response:
    """Send one shape as a classic client written with ``requests`` does."""
    json_body = target.fill(shape.json) if isinstance(shape.json, dict) else shape.json
    files = {shape.upload_field: ("testdata.csv", target.absolute.read_bytes())} if shape.upload_field else None
    return session.request(
        shape.method,
        f"{target.url}/prediction",
        params=target.fill(shape.params) or None,
        json=json_body,
        data=target.fill(shape.form) or None,
        files=files,
        headers=shape.headers or None,
        timeout=30,
    )


# (the row of the table, its shapes), the rows as measured with the request shapes of 54 public classic clients
SHAPES: list[tuple[str, list[Shape]]] = [
    (
        "`GET` with `?filename=`, `?filelocation=`, `?data_path=`, `?file_path=`, `?inputdata=`, or no parameter",
        [
            Shape("GET ?filename=<name only>", "GET", params={"filename": "{bare}"}),
            *(
                Shape(f"GET ?{key}=<relative>", "GET", params={key: "{relative}"})
                for key in ("filename", "filelocation", "data_path", "file_path", "inputdata")
            ),
            Shape("GET, no parameter", "GET"),
        ],
    ),
    (
        "`POST` with a query parameter other than `filelocation` (`filename`, `inputdata`, `input_data`, `data`, "
        "`data_path`, `file_location`)",
        [
            Shape(f"POST ?{key}=<relative>", params={key: "{relative}"})
            for key in ("filename", "inputdata", "input_data", "data", "data_path", "file_location")
        ],
    ),
    (
        "`POST` JSON with another key (`filepath`, `file_path`, `data_path`, `dataset_path`, `data_file`, "
        "`file_location`, `file_name`)",
        [
            Shape(f'POST JSON {{"{key}": <relative>}}', json={key: "{relative}"})
            for key in ("filepath", "file_path", "data_path", "dataset_path", "data_file", "file_location", "file_name")
        ],
    ),
    (
        "`POST` form field or multipart field with another name",
        [
            *(Shape(f"POST form {key}=<relative>", form={key: "{relative}"}) for key in ("filename", "data_path")),
            *(Shape(f"POST multipart field {name}", upload_field=name) for name in ("data", "csv_file", "upload")),
        ],
    ),
    (
        "`POST` with an absolute path inside the project's test folder",
        [
            Shape("POST ?filelocation=<absolute>", params={"filelocation": "{absolute}"}),
            Shape('POST JSON {"filelocation": <absolute>}', json={"filelocation": "{absolute}"}),
        ],
    ),
    ("`POST` JSON list of records", [Shape("POST JSON [record]", json=[RECORD])]),
    (
        "`POST` JSON of one record; `Content-Type: application/json` with no body and `?filelocation=`",
        [
            Shape("POST JSON record", json=RECORD),
            Shape(
                "POST ?filelocation=, JSON header, no body",
                params={"filelocation": "{relative}"},
                headers={"Content-Type": "application/json"},
            ),
        ],
    ),
    (
        "traversal: `?filelocation=/etc/passwd`, `../config.json`, an absolute path outside the data folders",
        [
            Shape("POST ?filelocation=/etc/passwd", params={"filelocation": "/etc/passwd"}),
            Shape("GET ?filename=../config.json", "GET", params={"filename": "../config.json"}),
            Shape('POST JSON {"filepath": /etc/passwd}', json={"filepath": "/etc/passwd"}),
        ],
    ),
]


def measure(target: Target) -> list[tuple[str, Counter[int], list[tuple[str, int]]]]:
    """Per row: the statuses seen (status: shapes) and each shape's status."""
    rows = []
    with requests.Session() as session:
        for row, shapes in SHAPES:
            statuses = [(shape.label, send_shape(session, target, shape).status_code) for shape in shapes]
            rows.append((row, Counter(status for _, status in statuses), statuses))
    return rows


def format_table(rows: list[tuple[str, Counter[int], list[tuple[str, int]]]]) -> str:
    lines = ["| what classic clients send to `/prediction` | shapes sent | answer |", "|---|---|---|"]
    for row, counts, statuses in rows:
        answer = ", ".join(
            f"{status} ({count})" if len(counts) > 1 else str(status) for status, count in counts.items()
        )
        lines.append(f"| {row} | {len(statuses)} | {answer} |")
    return "\n".join(lines)


def start_gunicorn(config_path: Path, port: int, app: str = "app:app") -> subprocess.Popen:
    """``gunicorn app:app``, 2 workers, with the config named by $RISK_CONFIG; waits until it answers."""
    server = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("gunicorn")),
            "--workers",
            "2",
            "--bind",
            f"127.0.0.1:{port}",
            "--no-control-socket",
            app,
        ],
        cwd=PROJECT_ROOT,
        env={**os.environ, "RISK_CONFIG": str(config_path)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"gunicorn exited early: {server.communicate()[1]}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.2)
    with server:
        server.kill()
    raise RuntimeError("gunicorn did not answer in time")


def stop(server: subprocess.Popen) -> None:
    """Stop it and close its pipe."""
    with server:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    from bench.bench_api import build_project
    from tests.helpers import free_port

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", action="store_true", help="print each shape's status too")
    parser.add_argument("--app", default="app:app", help="what gunicorn serves (default app:app)")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="risk-classic-clients-"))
    try:
        config_path = build_project(root)
        port = free_port()
        server = start_gunicorn(config_path, port, args.app)
        try:
            rows = measure(Target(f"http://127.0.0.1:{port}", "data/testdata.csv", root / "data" / "testdata.csv"))
        finally:
            stop(server)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(format_table(rows))
    if args.shapes:
        for _, _, statuses in rows:
            for label, status in statuses:
                print(f"{status}  {label}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
