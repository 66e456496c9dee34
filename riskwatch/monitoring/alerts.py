"""Alerts for the people who are not watching: one JSON event per webhook when a run deploys, fails, or
finds drift that no challenger could fix.

The payload carries ``text`` (the decision in one sentence), which Slack and Microsoft Teams
incoming webhooks show as it is, and the event's fields beside it for anything else. Delivery
is retried with backoff (on no answer, 408, 429 and 5xx) within a bounded time, in a detached
child process, so the monitoring run neither waits for it nor fails because of it. Only a 2xx
answer is a delivery: a redirect is not followed (a POST redirected arrives as a GET, or not at
all) and counts as a failure.

When the run is recorded, the child records each webhook's answer in the run's alert in the run
history (``riskwatch.state.runs.WebhookDelivery``): delivered, or not and why.

Standard library only: the monitoring job imports this module on its light path.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from riskwatch.state.runs import AlertRecord, WebhookDelivery

log = logging.getLogger("alerts")

ALERT_KINDS = ("deployed", "failed", "unresolved_drift", "integrity")
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 4.0
USER_AGENT = "dynamic-risk-assessment alerts"


@dataclass(frozen=True)
class AlertEvent:
    """One thing that happened in a monitoring run, for people."""

    kind: str  # one of ALERT_KINDS
    text: str  # the decision in one sentence, as a chat message
    project: str
    run_id: int | None = None
    model_version_before: str | None = None
    model_version_after: str | None = None
    occurred_at: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_payload(self) -> dict[str, Any]:
        return {"text": self.text, **{key: value for key, value in asdict(self).items() if key != "text"}}


@dataclass
class DeliveryProgress:
    """What delivery to one URL has done so far, kept up to date as it goes: read when it runs out of time."""

    attempts: int = 0
    status: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class DeliveryResult:
    url: str  # as it may be shown: scheme, host and the end of the path only
    ok: bool
    attempts: int
    status: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class RecordTo:
    """Where the child records the deliveries: the alert of run ``run_id`` in the history ``config_path`` names."""

    config_path: str
    run_id: int
    log: str  # the alert log, as the run's alert record names it


def shown_url(url: str) -> str:
    """A webhook URL as it may be logged: its path and query carry the secret, so only their last 4 characters."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    tail = (parts.path + ("?" + parts.query if parts.query else ""))[-4:]
    return f"{parts.scheme}://{host}{port}/…{tail}"


class RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is answered as it is (an HTTPError with its 3xx status), never followed."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def post_once(url: str, body: bytes, timeout: float) -> int:
    """POST ``body``; return the HTTP status (HTTPError statuses included; a redirect's own 3xx, not followed)."""
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", "User-Agent": USER_AGENT}
    )
    opener = urllib.request.build_opener(RefuseRedirects)
    try:
        with opener.open(request, timeout=timeout) as answer:  # the scheme is checked by the caller
            answer.read(1024)
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def describe_status(status: int) -> str:
    if 300 <= status < 400:
        return f"answered {status}, a redirect, which is not followed: give the webhook's final address"
    return f"answered {status}"


def deliver_one(url: str, body: bytes, deadline: float, progress: DeliveryProgress | None = None) -> DeliveryResult:
    """Deliver to one URL, retrying with backoff until ``deadline`` (a time.monotonic() value).

    ``progress`` is kept up to date attempt by attempt, for a caller that stops waiting first.
    """
    shown = shown_url(url)
    if urlsplit(url).scheme not in ("http", "https"):
        return DeliveryResult(
            shown, False, 0, error=f"only http and https webhooks are called, not {urlsplit(url).scheme!r}"
        )
    progress = progress or DeliveryProgress()
    backoff = FIRST_BACKOFF_SECONDS
    while True:
        left = deadline - time.monotonic()
        if left <= 0.05:
            break
        progress.attempts += 1
        try:
            progress.status, progress.error = post_once(url, body, timeout=left), None
        except Exception as exc:  # no answer, refused, reset, timed out: all retried
            progress.status, progress.error = None, f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        status = progress.status
        if status is not None and 200 <= status < 300:
            return DeliveryResult(shown, True, progress.attempts, status)
        if status is not None and status not in RETRY_STATUSES:
            return DeliveryResult(shown, False, progress.attempts, status, describe_status(status))
        pause = min(backoff, deadline - time.monotonic())
        if pause <= 0:
            break
        time.sleep(pause)
        backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
    status = progress.status
    error = progress.error or (describe_status(status) if status else "no time left")
    return DeliveryResult(shown, False, progress.attempts, status, error)


def deliver(urls: Sequence[str], event: AlertEvent, deadline_seconds: float = 10.0) -> list[DeliveryResult]:
    """POST the event to each URL, all at once, within ``deadline_seconds`` in all; never raises."""
    deadline = time.monotonic() + deadline_seconds
    body = json.dumps(event.to_payload()).encode("utf-8")
    results: list[DeliveryResult | None] = [None] * len(urls)
    progress = [DeliveryProgress() for _ in urls]

    def send(index: int, url: str) -> None:
        try:
            results[index] = deliver_one(url, body, deadline, progress[index])
        except Exception as exc:  # an alert never fails anything
            results[index] = DeliveryResult(shown_url(url), False, 0, error=f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=send, args=item, daemon=True) for item in enumerate(urls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()) + 0.5)
    done = []
    for url, result, made in zip(urls, results, progress, strict=True):
        if result is None:  # still waiting on an answer: the attempts made so far
            result = DeliveryResult(shown_url(url), False, made.attempts, made.status, "no answer within the deadline")
        if result.ok:
            log.info("alert %s sent to %s", event.kind, result.url)
        else:
            log.warning(
                "alert %s not delivered to %s after %d attempt(s): %s",
                event.kind,
                result.url,
                result.attempts,
                result.error,
            )
        done.append(result)
    return done


def pending_deliveries(urls: Sequence[str]) -> tuple[WebhookDelivery, ...]:
    """Each webhook's delivery before the child reports: not known yet."""
    return tuple(WebhookDelivery(shown_url(url), None) for url in urls)


def delivery_of(result: DeliveryResult) -> WebhookDelivery:
    return WebhookDelivery(result.url, result.ok, result.attempts, result.status, result.error)


def record_deliveries(record_to: RecordTo, kind: str, results: Sequence[DeliveryResult]) -> AlertRecord | None:
    """Write each webhook's answer into the run's alert in the history; return the record, None if it could not."""
    from riskwatch.core.config import load_config  # the child's work only: the run itself never imports these here
    from riskwatch.core.errors import PipelineError
    from riskwatch.state.history import open_history, save_run
    from riskwatch.state.runs import RunFields

    alert = AlertRecord(kind, len(results), record_to.log, tuple(map(delivery_of, results)))
    try:
        connection = open_history(load_config(record_to.config_path).history_path)
        try:
            save_run(connection, record_to.run_id, RunFields(alerts=alert))
        finally:
            connection.close()
    except (PipelineError, OSError) as exc:
        log.warning("the deliveries of alert %s could not be recorded in run %d: %s", kind, record_to.run_id, exc)
        return None
    return alert


def dispatch(
    urls: Sequence[str],
    event: AlertEvent,
    deadline_seconds: float = 10.0,
    log_path: Path | None = None,
    record_to: RecordTo | None = None,
) -> subprocess.Popen[bytes] | None:
    """Deliver without waiting: a detached child process retries within the deadline, even after the caller ends,
    then records each webhook's answer in the run history when ``record_to`` names the run.

    Returns the child (tests wait on it), or None when there is nothing to send or it could not start.
    """
    if not urls:
        return None
    order = {
        "urls": list(urls),
        "event": event.to_payload(),
        "deadline_seconds": deadline_seconds,
        "log_path": str(log_path) if log_path else None,
        "record_to": asdict(record_to) if record_to else None,
    }
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "riskwatch.monitoring.alerts"],
            cwd=Path(__file__).resolve().parents[2],  # where the package is, installed or not
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert child.stdin is not None  # stdin=PIPE above
        with child.stdin as orders:
            orders.write(json.dumps(order).encode("utf-8"))
    except OSError as exc:
        log.warning("the alert %s could not be sent: %s", event.kind, exc)
        return None
    return child


def main() -> int:
    """``python -m riskwatch.monitoring.alerts``: deliver the order read from standard input."""
    order = json.loads(sys.stdin.read())
    if order.get("log_path"):
        handler = logging.FileHandler(order["log_path"], encoding="utf-8")
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
        )
        logging.basicConfig(level=logging.INFO, handlers=[handler])
    payload = order["event"]
    event = AlertEvent(**{key: payload[key] for key in AlertEvent.__dataclass_fields__ if key in payload})
    results = deliver(order["urls"], event, order["deadline_seconds"])
    if order.get("record_to"):
        record_deliveries(RecordTo(**order["record_to"]), event.kind, results)
    return 0 if all(result.ok for result in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
