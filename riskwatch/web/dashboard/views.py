"""The pages: overview, clients at risk (table, CSV, one page per client), model health, runs, diagnostics."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import numpy as np
from flask import Response, abort, current_app, render_template, request, send_from_directory, url_for
from werkzeug.exceptions import HTTPException, ServiceUnavailable

from riskwatch.core.errors import PipelineError
from riskwatch.core.formatting import DASH, format_grouped, format_percent, format_time, is_number
from riskwatch.core.schema import FEATURE_LABELS, FEATURES
from riskwatch.model.clients import SORT_KEYS, ClientTable, stream_clients_csv
from riskwatch.state.artifacts import CONFUSION_MATRIX_FILE, REPORT_FILE
from riskwatch.state.history import NO_NEW_DATA
from riskwatch.state.runs import FeatureDrift, StoredRun, describe_calibration_test, latest_calibration_test
from riskwatch.web.dashboard import DASHBOARD_STATE, bp
from riskwatch.web.dashboard.charts import Chart, Series, render_chart
from riskwatch.web.dashboard.health import compared_value, format_score, health_charts
from riskwatch.web.dashboard.model import app_effects_cache, gather_model_page
from riskwatch.web.sources import DashboardSources, app_sources, describe_age

PAGE_SIZES = (25, 50, 100, 250)
DEFAULT_PAGE_SIZE = 50
RUNS_PER_PAGE = 50
CHART_RUNS = 120  # runs with new data drawn in the model-health charts
HISTOGRAM_BINS = 24
# fullprocess.py writes its plot after a deployment under this name; the newer of the two plots is served.
PLOT_AFTER_DEPLOYMENT = "confusionmatrix2.png"
SERVED_FILES = {"report": (REPORT_FILE,), "confusion-matrix": (CONFUSION_MATRIX_FILE, PLOT_AFTER_DEPLOYMENT)}
SORT_LABELS = {"probability": "exit probability", "corporation": "client id", **FEATURE_LABELS}


@dataclass(frozen=True)
class Health:
    status: str  # ok, degraded or unavailable
    reason: str


@dataclass(frozen=True)
class Serving:
    served: Any | None
    health: Health


def sources() -> DashboardSources:
    return app_sources(current_app)


def read_serving() -> Serving:
    """The model the API answers with, and its health in the words /health uses."""
    watcher = current_app.extensions[DASHBOARD_STATE][0]
    try:
        served = watcher.served()
    except ServiceUnavailable as exc:
        return Serving(None, Health("unavailable", exc.description))
    error = watcher.load_error()
    if error is not None:
        return Serving(served, Health("degraded", f"{error[0]} cannot be loaded ({error[1]}); {served.version} serves"))
    return Serving(served, Health("ok", f"{served.version} loaded and answering"))


def read_clients(serving: Serving) -> ClientTable | None:
    if serving.served is None:
        return None
    try:
        return sources().clients(serving.served)
    except (PipelineError, OSError) as exc:
        current_app.logger.warning("the client table cannot be built: %s", exc)
        return None


def whole_number(name: str, default: int, low: int = 1) -> int:
    value = request.args.get(name, "")
    return int(value) if value.isascii() and value.isdigit() and int(value) >= low else default


def choose_page(total: int, per: int) -> tuple[int, int]:
    """(the page asked for, clamped to 1..pages; the number of pages) for ``total`` items ``per`` page."""
    pages = max(1, math.ceil(total / per))
    return min(whole_number("page", 1), pages), pages


bp.add_app_template_filter(format_percent, "pct")
bp.add_app_template_filter(format_grouped, "num")
bp.add_app_template_filter(format_time, "when")
bp.add_app_template_filter(format_score, "score")


@bp.app_template_filter("signed")
def format_change(value: Any) -> str:
    """A change with its sign and thousands separators: +3,125, -22, ±0."""
    if not is_number(value):
        return DASH
    rounded = round(value)
    return "±0" if rounded == 0 else f"{rounded:+,}"


@bp.app_template_filter("sentence")
def format_sentence(value: Any) -> str:
    """A stored one-sentence text as a sentence: capital first letter, full stop at the end."""
    text = str(value or "").strip()
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else f"{text}."


@bp.app_template_filter("ago")
def format_age(value: str | None) -> str:
    return describe_age(value)


@bp.errorhandler(HTTPException)
def page_error(exc: HTTPException) -> tuple[str, int, dict[str, str]]:
    kept = {name: value for name, value in exc.get_headers() if name == "Retry-After"}
    return render_template("error.html", code=exc.code, message=exc.description), exc.code or 500, kept


@bp.get("/")
def overview() -> str:
    serving = read_serving()
    table = read_clients(serving)
    served = serving.served
    runs = sources().runs_or_empty()
    previous = sources().previous(served, table) if served is not None and table is not None else None
    return render_template(
        "overview.html",
        page="overview",
        serving=serving,
        model_version=served.version if served else None,
        version=served.deployed.version_info if served else None,
        metrics=served.deployed.metrics if served else None,
        recent=sources().recent_window(served.version) if served else None,
        table=table,
        previous=previous,
        last_run=runs[0] if runs else None,
        last_decided=next((run for run in runs if run.outcome != NO_NEW_DATA), None),
        calibration=(
            describe_calibration_test(latest_calibration_test(runs, served.version), served.version) if served else None
        ),
    )


def chosen_clients(table: ClientTable) -> tuple[np.ndarray, dict[str, Any]]:
    """The clients the query string asks for, in its order, with the normalised query."""
    sort = request.args.get("sort", "probability")
    sort = sort if sort in SORT_KEYS else "probability"
    default_order = "desc" if sort == "probability" else "asc"
    order = request.args.get("order", default_order)
    order = order if order in ("asc", "desc") else default_order
    query = request.args.get("q", "")[:100]
    rows = table.select(query, sort, order == "desc")
    return rows, {"q": query, "sort": sort, "order": order}


@bp.get("/clients")
def clients() -> str:
    serving = read_serving()
    table = read_clients(serving)
    if table is None:
        return render_template("clients.html", page="clients", table=None, serving=serving)
    rows, query = chosen_clients(table)
    per = whole_number("per", DEFAULT_PAGE_SIZE)
    per = per if per in PAGE_SIZES else DEFAULT_PAGE_SIZE
    number, pages = choose_page(len(rows), per)
    shown = rows[(number - 1) * per : number * per]
    return render_template(
        "clients.html",
        page="clients",
        serving=serving,
        table=table,
        rows=shown.tolist(),
        matching=len(rows),
        query=query,
        per=per,
        page_number=number,
        pages=pages,
        first=(number - 1) * per + 1,
        sort_keys=SORT_KEYS,
        sort_labels=SORT_LABELS,
        page_sizes=PAGE_SIZES,
        features=FEATURES,
    )


@bp.app_template_global("client_url")
def client_url(corporation: str) -> str:
    """The link to a client's page, the whole id quoted: a browser cannot read ``/../``, ``?`` or ``#`` in it."""
    return f"{url_for('dashboard.clients')}/{quote(corporation, safe='')}"


@bp.get("/clients.csv")
def clients_download() -> Response:
    table = read_clients(read_serving())
    if table is None:
        abort(503, "No model or no ingested data yet: run the pipeline, then reload.")
    rows, _ = chosen_clients(table)
    return Response(
        stream_clients_csv(table, rows),  # sent in pieces as they are written: a large table is never one string
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="clients-at-risk-{table.version}.csv"'},
    )


@bp.get("/clients/<path:corporation>")
def client(corporation: str) -> str:
    serving = read_serving()
    table = read_clients(serving)
    if table is None:
        abort(503, "No model or no ingested data yet: run the pipeline, then reload.")
    detail = table.detail(corporation)
    if detail is None:
        abort(404, f"No active client has the id {corporation[:100]!r}; it may have exited or never been ingested.")
    return render_template(
        "client.html",
        page="clients",
        serving=serving,
        table=table,
        client=detail,
        features=FEATURES,
        labels=FEATURE_LABELS,
    )


def batch_span(first: int | None, last: int | None) -> str:
    if first is None or last is None:
        return "unknown batches"
    return f"batch {first}" if first == last else f"batches {first}–{last}"


def reference_batches(run: StoredRun, runs: list[StoredRun], served: Any) -> tuple[int, int] | None:
    """The batches the run's data-drift tests compared the new rows with, as fullprocess.py chose them.

    The run records them; for a run recorded before it did, the serving model's training window, or
    everything before the new rows.
    """
    if run.data_reference_first_batch and run.data_reference_last_batch:
        return run.data_reference_first_batch, run.data_reference_last_batch
    window = served.deployed.model_info.training_window if served is not None else None
    version_matches = served is not None and run.model_version_before == served.version
    if version_matches and window is not None and window.first_batch and window.last_batch:
        return window.first_batch, window.last_batch
    if run.first_batch and run.first_batch > 1:
        return 1, run.first_batch - 1
    return None


def distribution_charts(run: StoredRun, runs: list[StoredRun], served: Any) -> list[tuple[Chart, FeatureDrift]]:
    """For a run's drift tests: each feature's log1p distribution in the reference rows and in the new rows."""
    reference = reference_batches(run, runs, served)
    if reference is None or not run.first_batch or not run.last_batch:
        return []
    try:
        data = sources().ingested()
    except (PipelineError, OSError):
        return []
    new_span = (run.first_batch, run.last_batch)
    old_rows, new_rows = data.in_batches(*reference), data.in_batches(*new_span)
    if not old_rows.any() or not new_rows.any():
        return []
    old_name, new_name = f"reference, {batch_span(*reference)}", f"new, {batch_span(*new_span)}"
    found = []
    for row in run.feature_drift:
        if row.feature not in FEATURES:
            continue
        column = np.log1p(data.features()[:, FEATURES.index(row.feature)])
        edges = np.histogram_bin_edges(column[old_rows | new_rows], bins=HISTOGRAM_BINS)
        before = np.histogram(column[old_rows], bins=edges)[0] / int(old_rows.sum())
        after = np.histogram(column[new_rows], bins=edges)[0] / int(new_rows.sum())
        labels = [f"{edges[i]:.1f}" for i in range(HISTOGRAM_BINS)]
        chart = Chart(
            f"{FEATURE_LABELS[row.feature]}: log1p distribution of the reference and the new rows",
            labels,
            [
                Series(old_name, [float(v) for v in before], "series-b"),
                Series(new_name, [float(v) for v in after], "series-a"),
            ],
            "share of rows",
            bars=True,
            y_format="{:.2f}",
        )
        found.append((chart, row))
    return found


@bp.get("/model-health")
def model_health() -> str:
    runs = [run for run in sources().runs_or_empty() if run.outcome != NO_NEW_DATA][:CHART_RUNS][::-1]
    charts = [(render_chart(chart), chart, header, rows) for chart, header, rows in health_charts(runs)] if runs else []
    latest = next((run for run in reversed(runs) if run.feature_drift), None)
    found = distribution_charts(latest, runs, read_serving().served) if latest else []
    distributions = [(render_chart(chart), chart, row) for chart, row in found]
    return render_template(
        "model_health.html",
        page="model-health",
        runs=runs,
        charts=charts,
        latest=latest,
        distributions=distributions,
        labels=FEATURE_LABELS,
        compared_value=compared_value,
    )


@bp.get("/model")
def model_page() -> str:
    """The serving model: its family, how it was chosen, and what each count does to the risk (``model.py`` here)."""
    serving = read_serving()
    served = serving.served
    shown = (
        gather_model_page(served, read_clients(serving), sources().runs_or_empty(), app_effects_cache(current_app))
        if served is not None
        else None
    )
    return render_template("model.html", page="model", serving=serving, model=shown, labels=FEATURE_LABELS)


@bp.get("/runs")
def runs_page() -> str:
    everything = request.args.get("all") == "1"
    runs = sources().runs_or_empty()
    if not everything:
        runs = [run for run in runs if run.outcome != NO_NEW_DATA]
    number, pages = choose_page(len(runs), RUNS_PER_PAGE)
    return render_template(
        "runs.html",
        page="runs",
        runs=runs[(number - 1) * RUNS_PER_PAGE : number * RUNS_PER_PAGE],
        total=len(runs),
        everything=everything,
        page_number=number,
        pages=pages,
        compared_value=compared_value,
        labels=FEATURE_LABELS,
    )


@bp.get("/system")
def system() -> str:
    stored = sources().diagnostics()
    files = {key: newest_file(key) is not None for key in SERVED_FILES}
    return render_template("system.html", page="system", diagnostics=stored, files=files, serving=read_serving())


def newest_file(key: str) -> str | None:
    """The name of the newest file in the model folder that may be served as ``key``; None when none exists."""
    folder = current_app.config["RISK_CONFIG"].output_model_path
    found = []
    for name in SERVED_FILES[key]:
        try:
            found.append(((folder / name).stat().st_mtime_ns, name))
        except FileNotFoundError:
            continue
    return max(found)[1] if found else None


@bp.get("/files/<name>")
def model_file(name: str) -> Response:
    """The latest PDF report or confusion-matrix plot; no other file of the model folder is served."""
    if name not in SERVED_FILES:
        abort(404, "Only the report and the confusion-matrix plot are served here.")
    chosen = newest_file(name)
    if chosen is None:
        abort(404, f"{SERVED_FILES[name][0]} has not been made yet; run reporting.py.")
    return send_from_directory(current_app.config["RISK_CONFIG"].output_model_path, chosen, max_age=0)
