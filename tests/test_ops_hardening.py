"""Alerts that cannot be lost quietly, the cron job's token and the report kept with the deployment.

Every webhook receiver here is a local HTTP server started by the test on a free port.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader
from reportlab.lib.pagesizes import A4
from reportlab.lib.units import mm
from reportlab.pdfbase.pdfmetrics import stringWidth

from riskwatch.core.config import Config, load_config
from riskwatch.core.errors import PipelineError
from riskwatch.core.files import sha256_file
from riskwatch.core.schema import FEATURES
from riskwatch.cycle import fullprocess
from riskwatch.cycle.crontab import cron_line, write_cronjob
from riskwatch.cycle.fullprocess import run_full_process
from riskwatch.data.generator import write_shipped_data
from riskwatch.monitoring import alerts
from riskwatch.monitoring.alerts import deliver
from riskwatch.report import pdf as report_pdf
from riskwatch.report import reporting
from riskwatch.report import text as report_text
from riskwatch.stages import diagnostics
from riskwatch.stages.deployment import rollback_deployment
from riskwatch.state.artifacts import (
    CONFUSION_MATRIX_FILE,
    DIAGNOSTICS_FILE,
    REPORT_FILE,
    VERSIONS_FOLDER,
    check_version_folder,
    keep_report,
)
from riskwatch.state.history import read_runs
from riskwatch.state.records import write_diagnostics_record
from riskwatch.state.runs import AlertRecord, WebhookDelivery, read_alert
from riskwatch.state.stages import StageFailed
from tests.helpers import (
    PROJECT_ROOT,
    UNREACHABLE_INDEX,
    deploy,
    free_port,
    script_command,
    train_and_score,
    write_config,
)
from tests.webhook_receiver import EVENT, Receiver


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


def wait_for(condition: Callable[[], object], seconds: float = 20) -> object:
    """Poll ``condition`` until it returns something true, or fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"not true within {seconds} s: {condition}")


@pytest.fixture
def senders(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[subprocess.Popen[bytes]]]:
    """The alert senders a run in this process starts, waited for at the end of the test."""
    started: list[subprocess.Popen[bytes]] = []
    real = alerts.dispatch

    def dispatch(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes] | None:
        child = real(*args, **kwargs)
        if child is not None:
            started.append(child)
        return child

    monkeypatch.setattr(alerts, "dispatch", dispatch)
    yield started
    for child in started:
        child.wait(timeout=30)


@pytest.mark.slow
def test_a_run_whose_history_cannot_be_opened_still_alerts(tmp_path: Path, senders: list):
    with Receiver() as hook:
        config = load_config(write_config(tmp_path, monitoring={"webhooks": [hook.url], "alert_timeout_seconds": 5}))
        history = config.history_path
        history.parent.mkdir(parents=True, exist_ok=True)
        history.write_bytes(b"this is not a database" * 100)
        with pytest.raises(StageFailed, match="history failed"):
            run_full_process(config)
        wait_for(lambda: hook.received)
    (post,) = hook.received
    assert post["json"]["kind"] == "failed" and post["json"]["run_id"] is None
    assert "the history could not record" in post["json"]["text"] and "history failed" in post["json"]["text"]
    assert "alert failed sent" in wait_for(lambda: (config.log_path.parent / "alerts.log").read_text())


@pytest.mark.slow
def test_the_history_records_whether_each_webhook_got_the_alert(tmp_path: Path, senders: list):
    Redirecting.requests = []
    with Receiver() as hook, serving(Redirecting) as moved:
        webhooks = [hook.url, f"{moved}/hook"]
        config = load_config(write_config(tmp_path, monitoring={"webhooks": webhooks, "alert_timeout_seconds": 5}))
        with pytest.raises(StageFailed, match="does not exist"):  # no source folder: the check fails
            run_full_process(config)

        def answered() -> AlertRecord | None:
            alert = read_runs(config.history_path, limit=1)[0].alerts
            return alert if alert and all(item.delivered is not None for item in alert.deliveries) else None

        alert = wait_for(answered)
    assert isinstance(alert, AlertRecord) and alert.kind == "failed" and alert.webhooks == 2
    delivered, redirected = alert.deliveries
    assert (delivered.delivered, delivered.status, delivered.attempts) == (True, 200, 1)
    assert (redirected.delivered, redirected.status, redirected.attempts) == (False, 302, 1)
    assert "redirect" in redirected.error and "s3cr3tT0ken" not in delivered.url


def test_an_alert_stored_before_deliveries_were_recorded_still_reads():
    old = read_alert('{"kind": "deployed", "webhooks": 2, "log": "/srv/models/alerts.log"}')
    assert old == AlertRecord("deployed", 2, "/srv/models/alerts.log") and old.deliveries == ()
    new = AlertRecord(
        "failed", 2, "/x.log", (WebhookDelivery("https://h/…abcd", True, 1, 200), WebhookDelivery("u", None))
    )
    assert read_alert(json.dumps(new.to_json())) == new
    damaged = '{"kind": "failed", "webhooks": 1, "log": "/x.log", "deliveries": [{"url": "u", "delivered": true}, 7]}'
    assert read_alert(damaged).deliveries == (WebhookDelivery("u", True),)


@pytest.mark.slow
def test_the_cron_job_gives_the_run_the_api_token_from_its_environment_file_not_its_command_line(tmp_path: Path):
    config = load_config(write_config(tmp_path))
    target = write_cronjob(config, tmp_path / "cronjob.txt")
    env_file = tmp_path / "fullprocess.env"
    assert env_file.stat().st_mode & 0o777 == 0o600 and "RISK_API_TOKEN" in env_file.read_text()
    env_file.write_text("RISK_API_TOKEN=t0ken-from-the-file\n")  # as an operator fills it in: no export needed
    assert "t0ken" not in target.read_text()
    # a stand-in for the project's Python: it shows what the run would get
    python = tmp_path / "python"
    python.write_text('#!/bin/sh\necho "token=$RISK_API_TOKEN args=$*"\n')
    python.chmod(0o755)
    command = cron_line(config, python=python).split(None, 5)[5]
    assert "t0ken" not in command
    bare = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SHELL": "/bin/sh"}
    result = subprocess.run(["/bin/sh", "-c", command], cwd="/", env=bare, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    cron_log = (config.log_path.parent / "cron.log").read_text()
    assert "token=t0ken-from-the-file args=fullprocess.py --quiet --config" in cron_log
    env_file.unlink()  # gone: the run still starts (to record and alert), without the token
    result = subprocess.run(["/bin/sh", "-c", command], cwd="/", env=bare, capture_output=True, timeout=60)
    cron_log = (config.log_path.parent / "cron.log").read_text()
    assert result.returncode == 0 and cron_log.count("token=") == 2
    assert cron_log.splitlines()[-1].startswith("token= args=fullprocess.py --quiet --config")


def test_writing_the_cron_job_again_keeps_the_environment_file_and_warns_when_others_can_read_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    config = load_config(write_config(tmp_path))
    env_file = tmp_path / "fullprocess.env"
    env_file.write_text("export RISK_API_TOKEN=kept\n")
    env_file.chmod(0o644)
    write_cronjob(config, tmp_path / "cronjob.txt")
    assert env_file.read_text() == "export RISK_API_TOKEN=kept\n"
    assert "may be read by other users" in caplog.text and "chmod 600" in caplog.text and "kept" not in caplog.text


def long_id_clients(corporation: str) -> list[dict[str, Any]]:
    counts = {name: 10**6 for name in FEATURES}
    steady = {"rank": 2, "corporation": "abcd", "probability": 0.5, **counts, "reason": "few employees"}
    return [{**steady, "rank": 1, "corporation": corporation, "probability": 0.91}, steady]


def test_a_256_character_id_keeps_the_top_clients_table_on_the_page(tmp_path: Path):
    corporation = "corp" + "x" * 248 + "tail"
    styles = report_pdf.make_styles()
    flowables = report_pdf.clients_section(styles, long_id_clients(corporation), 2, tmp_path / "finaldata.csv", "v0001")
    table = flowables[-1]
    width, _ = table.wrap(report_pdf.FRAME_WIDTH, A4[1])
    assert width <= report_pdf.FRAME_WIDTH + 0.01
    pdf = report_pdf.write_pdf(tmp_path / "report.pdf", flowables, "v0001", "2026-12-07T12:00:00Z")
    text = "".join(page.extract_text() for page in PdfReader(pdf).pages)
    assert "corpxx" in text and "\u2026" in text and "xxtail" in text and corporation not in text.replace("\n", "")


def test_an_id_is_cut_in_the_middle_to_fit_and_a_short_one_is_left_as_it_is():
    cell = report_pdf.make_styles()["cell"]
    assert report_text.ellipsize("abcd", 30 * mm, cell) == "abcd"
    cut = report_text.ellipsize("start" + "m" * 300 + "end", 30 * mm, cell)
    assert cut.startswith("start") and cut.endswith("end") and "\u2026" in cut
    assert stringWidth(cut, cell.fontName, cell.fontSize) <= 30 * mm


@pytest.fixture
def diagnosed(deployed: Config, monkeypatch: pytest.MonkeyPatch) -> Config:
    """The deployed small project with a diagnostics.json (stage timings faked, package index unreachable)."""
    config = load_config(write_config(deployed.path.parent, diagnostics=UNREACHABLE_INDEX))
    monkeypatch.setattr(diagnostics, "run_stage_process", lambda stage, config_path: 0.25)
    write_diagnostics_record(config.output_model_path / DIAGNOSTICS_FILE, diagnostics.run_diagnostics(config, runs=1))
    return config


def served_report(config: Config) -> tuple[str, str]:
    """The version the deployment folder's report link shows (from the PDF's title) and the PDF's hash."""
    link = config.prod_deployment_path / REPORT_FILE
    assert link.is_symlink() and os.readlink(link) == f"current/{REPORT_FILE}"
    return str(PdfReader(link).metadata.title).rsplit(" ", 1)[-1], sha256_file(link)


def test_the_serving_versions_report_is_kept_in_its_version_folder_and_follows_deployments_and_rollback(
    diagnosed: Config,
):
    root = diagnosed.prod_deployment_path
    first = root / VERSIONS_FOLDER / "v0001"
    reporting.write_report(diagnosed)
    for name in (REPORT_FILE, CONFUSION_MATRIX_FILE):
        assert sha256_file(first / name) == sha256_file(diagnosed.output_model_path / name)
        assert (root / name).resolve() == (first / name).resolve()
    assert served_report(diagnosed)[0] == "v0001"
    check_version_folder(first)  # the integrity checks of the model's files still hold

    train_and_score(diagnosed, C=0.05)
    assert deploy(diagnosed).version == "v0002"
    assert not (root / REPORT_FILE).exists()  # never the report of the version that served before
    write_diagnostics_record(
        diagnosed.output_model_path / DIAGNOSTICS_FILE, diagnostics.run_diagnostics(diagnosed, runs=1)
    )
    reporting.write_report(diagnosed, pdf_name="summaryreport2.pdf")
    version, second_hash = served_report(diagnosed)
    assert version == "v0002" and second_hash == sha256_file(diagnosed.output_model_path / "summaryreport2.pdf")
    assert PdfReader(first / REPORT_FILE).metadata.title.endswith("v0001")  # kept with its version

    assert rollback_deployment(root) == "v0001"
    assert served_report(diagnosed)[0] == "v0001"
    check_version_folder(first)
    reporting.write_report(diagnosed)  # remade: replaced in place
    version, remade = served_report(diagnosed)
    assert version == "v0001" and remade == sha256_file(diagnosed.output_model_path / REPORT_FILE)
    assert not [entry.name for entry in first.iterdir() if entry.name.startswith(".")]  # no temporary file left
    check_version_folder(root / VERSIONS_FOLDER / "v0002")


def test_a_report_of_a_version_no_longer_kept_makes_no_folder_for_it(tmp_path: Path):
    made = tmp_path / "summaryreport.pdf"
    made.write_bytes(b"%PDF-1.4 a report")
    (tmp_path / "production_deployment" / VERSIONS_FOLDER).mkdir(parents=True)
    assert keep_report(tmp_path / "production_deployment", "v0003", {REPORT_FILE: made}) == []
    assert list((tmp_path / "production_deployment" / VERSIONS_FOLDER).iterdir()) == []


def answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


@pytest.mark.slow
def test_a_cron_run_that_deploys_calls_an_api_that_has_a_token_and_succeeds(tmp_path: Path):
    write_shipped_data(tmp_path)
    port = free_port()
    config_path = write_config(
        tmp_path,
        diagnostics={"package_index": "http://127.0.0.1:9/pypi", "index_timeout_seconds": 1},
        api={"url": f"http://127.0.0.1:{port}"},
    )
    config = load_config(config_path)
    write_cronjob(config, tmp_path / "cronjob.txt")
    with (tmp_path / "fullprocess.env").open("a") as env_file:
        env_file.write("RISK_API_TOKEN=s3cret-api-t0ken\n")
    command = cron_line(config).split(None, 5)[5]
    bare = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SHELL": "/bin/sh"}
    api = subprocess.Popen(  # nothing is deployed yet, so /health answers 503 until the run deploys
        script_command("app.py", "--config", str(config_path), "--port", str(port)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=PROJECT_ROOT,
        env={**os.environ, "RISK_API_TOKEN": "s3cret-api-t0ken"},
    )
    with api:
        try:
            wait_for(lambda: answers(f"http://127.0.0.1:{port}/health"), seconds=60)
            result = subprocess.run(["/bin/sh", "-c", command], cwd="/", env=bare, capture_output=True, timeout=600)
        finally:
            api.send_signal(signal.SIGTERM)
            api.wait(timeout=30)
    assert result.returncode == 0, (config.log_path.parent / "cron.log").read_text()
    run = read_runs(config.history_path, limit=1)[0]
    assert run.outcome == "first_deployment" and run.failed_stage is None, run.error
    returns = json.loads((config.output_model_path / "apireturns2.txt").read_text())["answers"]
    assert run.details["apicalls"].endswith("apireturns2.txt") and "history" in returns  # every call answered


@pytest.mark.slow
def test_a_run_whose_end_cannot_be_written_to_the_history_still_alerts(
    tmp_path: Path, senders: list, monkeypatch: pytest.MonkeyPatch
):
    with Receiver() as hook:
        config = load_config(write_config(tmp_path, monitoring={"webhooks": [hook.url], "alert_timeout_seconds": 5}))

        def full_disk(*args: object, **kwargs: object) -> None:
            raise PipelineError(f"the disk holding {config.history_path} is full")

        monkeypatch.setattr(fullprocess, "save_run", full_disk)
        with pytest.raises(StageFailed, match="does not exist"):  # no source folder: the check fails
            run_full_process(config)
        wait_for(lambda: hook.received)
    (post,) = hook.received
    assert post["json"]["kind"] == "failed" and "does not exist" in post["json"]["text"]
