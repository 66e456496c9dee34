"""What the model page shows: which family serves and how it was chosen, and what each count does to the risk.

The effects are measured on the current clients of the client table (``riskwatch/model/clients.py``) with the
served model's own arithmetic (``riskwatch/model/riskmodels.py``), in the units of the drivers on a client's page:
contributions to the log-odds of exit against the average training client.

- ``linear`` and ``additive``: a feature's contribution depends on its own count alone, so one curve per
  feature says all: its contribution on a grid of counts spanning the current clients' 1st to 99th
  percentile (evenly spaced on the log1p scale the model uses), the other counts at the typical client's.
- ``boosted``: a feature's contribution can depend on the others, so the clients (a seeded sample) are
  binned by the feature and each bin shows the mean contribution and its 10th and 90th percentile.
- every family: the mean size (absolute value) of each feature's contribution over the same clients.

The numbers are computed once per client table (that is, per serving version and ingested data).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from flask import Flask
from markupsafe import Markup

from riskwatch.core.cache import Cached
from riskwatch.core.schema import FEATURE_LABELS, FEATURES
from riskwatch.state.artifacts import decision_threshold
from riskwatch.state.history import DEPLOYED, FIRST_DEPLOYMENT
from riskwatch.state.records import CalibrationCheck, FamilyChoice, FamilyScore
from riskwatch.state.runs import StoredRun
from riskwatch.web.dashboard.charts import Chart, Series, render_chart

if TYPE_CHECKING:
    from riskwatch.model.clients import ClientTable
    from riskwatch.model.riskmodels import RiskModel
    from riskwatch.web.serving import ServedModel

GRID_POINTS = 40  # points of each effect curve
DEPENDENCE_BINS = 30  # bins of each dependence plot
SAMPLE_LIMIT = 5_000  # clients the contributions are computed for, at most (a seeded sample of them)
SAMPLE_SEED = 0
SPAN_PERCENTILES = (1.0, 99.0)  # the range of counts drawn: the current clients' 1st to 99th percentile
SPREAD_PERCENTILES = (10.0, 90.0)  # the spread of the contributions in one bin
# The families whose log-odds is a sum of one term per feature: each feature's effect is one curve.
SEPARABLE_FAMILIES = ("linear", "additive")
EFFECTS_CACHE = "risk_dashboard_model_effects"
LOG_ODDS_AXIS = "change in log-odds of exit"
NO_EFFECT = "no change: the average training client"

FAMILY_WORDS = {
    "linear": (
        "A logistic regression on the log counts: each count moves the log-odds of exit along a straight line "
        "in its log, the same for every client, and the moves add up."
    ),
    "additive": (
        "A smooth curve per count (a cubic spline of its log), added up: each count's effect depends on that "
        "count alone, so its curve tells its whole effect, for every client."
    ),
    "boosted": (
        "Gradient-boosted trees: a count's effect can depend on the other counts. A client's contribution of each "
        "count is its exact Shapley value against the average training client (they still add up to the client's "
        "log-odds), and the plots show how the contributions of clients with similar counts spread."
    ),
}


# ---------------------------------------------------------------- what the page shows


@dataclass(frozen=True)
class ServingFacts:
    """The serving version: its family, the model in one sentence, its threshold, and what it was trained on."""

    version: str
    family: str | None  # None: the served classifier is of none of the families
    model: str | None
    threshold: float | None
    training_rows: int | None
    training_window: str | None
    trained_at: str | None
    deployed_at: str | None


@dataclass(frozen=True)
class FamilyRow:
    """One family's line of the cross-validated comparison that chose the serving family."""

    family: str
    f1: float
    fold_low: float | None  # the lowest and highest F1 of a single fold
    fold_high: float | None
    calibration_error: float
    compared_with: str | None
    gain: float | None
    p_no_gain: float | None
    better: bool | None
    chosen: bool


@dataclass(frozen=True)
class DependenceBins:
    """The clients binned by one feature's log1p count, and each bin's contributions of that feature.

    ``edges`` are counts (bins + 1 of them); the other arrays have one value per bin, NaN for an empty bin.
    """

    edges: np.ndarray
    clients: np.ndarray  # how many clients fall in each bin
    median: np.ndarray  # the clients' median count
    smallest: np.ndarray  # the clients' smallest and largest count
    largest: np.ndarray
    mean: np.ndarray  # the mean contribution
    low: np.ndarray  # its 10th percentile
    high: np.ndarray  # its 90th percentile
    left_out: int  # clients whose count is outside the span drawn


@dataclass(frozen=True)
class EffectCurve:
    """One feature's contribution to the log-odds at a grid of counts, the other counts at the typical client's,
    and the exit probability the model gives such a client."""

    feature: str
    counts: np.ndarray
    contributions: np.ndarray
    probabilities: np.ndarray


@dataclass(frozen=True)
class Effects:
    """What each feature does to the risk under the serving model, measured on the current clients."""

    clients: int  # current clients
    sampled: int  # of them, the ones the contributions were computed for
    baseline_log_odds: float  # the average training client's
    typical_counts: dict[str, float]
    mean_absolute: dict[str, float]  # mean |contribution| per feature over the sampled clients
    curves: list[EffectCurve]  # linear and additive
    dependence: dict[str, DependenceBins]  # boosted

    @property
    def baseline_probability(self) -> float:
        return float(1 / (1 + math.exp(-self.baseline_log_odds)))


@dataclass(frozen=True)
class ShownChart:
    """A chart as the page shows it: the SVG, the chart (title, series), a sentence, and its numbers as a table."""

    svg: Markup
    chart: Chart
    note: str
    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class ModelPage:
    """Everything the model page shows about the serving version."""

    facts: ServingFacts
    family_words: str | None
    choice: FamilyChoice | None
    family_rows: list[FamilyRow]
    deploying_run: StoredRun | None  # for a challenger the monitoring job deployed (no family choice recorded)
    calibration: CalibrationCheck | None
    explained: bool  # False: the model's risk cannot be split into drivers
    effects: Effects | None  # None: not explained, or no current clients
    charts: list[ShownChart]


# ---------------------------------------------------------------- the arithmetic (arrays in, arrays out)


def sample_rows(count: int, limit: int = SAMPLE_LIMIT, seed: int = SAMPLE_SEED) -> np.ndarray:
    """Row numbers of at most ``limit`` of ``count`` rows, in order: all of them, or a seeded sample."""
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, limit, replace=False))


def measure_span(column: np.ndarray) -> tuple[float, float]:
    """The 1st and 99th percentile of a column of counts, on the log1p scale."""
    low, high = np.percentile(np.log1p(column), SPAN_PERCENTILES)
    return float(low), float(high)


def effect_grid(column: np.ndarray, points: int = GRID_POINTS) -> np.ndarray:
    """Counts evenly spaced on the log1p scale across the column's 1st to 99th percentile (one for a constant)."""
    low, high = measure_span(column)
    return np.asarray(np.unique(np.expm1(np.linspace(low, high, points))), dtype=np.float64)


def effect_curve(model: RiskModel, feature: int, counts: np.ndarray) -> EffectCurve:
    """Feature ``feature``'s contribution at each of ``counts``, the other counts at the typical client's, and
    the probability the model gives such a client. For the linear and additive families a contribution depends
    on its own count alone, so this is the feature's contribution for every client with that count."""
    rows = np.tile(model.typical_counts, (counts.size, 1))
    rows[:, feature] = counts
    contributions = model.contributions(rows)[:, feature]
    return EffectCurve(FEATURES[feature], counts, contributions, model.score(rows)[0])


def bin_dependence(column: np.ndarray, contributions: np.ndarray, bins: int = DEPENDENCE_BINS) -> DependenceBins:
    """The rows binned by their count (``bins`` equal widths of log1p across its 1st to 99th percentile): per bin
    the number of rows, their median, smallest and largest count, and the mean of ``contributions`` with its
    10th and 90th percentile."""
    low, high = measure_span(column)
    high = max(high, low + 1e-9)
    scaled = np.log1p(column)
    inside = (scaled >= low) & (scaled <= high)
    edges = np.linspace(low, high, bins + 1)
    which = np.clip(np.searchsorted(edges, scaled[inside], side="right") - 1, 0, bins - 1)
    counts, values = column[inside], contributions[inside]
    found = np.full((6, bins), np.nan)
    for index in np.unique(which).tolist():
        part, count = values[which == index], counts[which == index]
        spread = np.percentile(part, SPREAD_PERCENTILES)
        found[:, index] = (np.median(count), count.min(), count.max(), part.mean(), spread[0], spread[1])
    median, smallest, largest, mean, spread_low, spread_high = found
    return DependenceBins(
        edges=np.expm1(edges),
        clients=np.bincount(which, minlength=bins),
        median=median,
        smallest=smallest,
        largest=largest,
        mean=mean,
        low=spread_low,
        high=spread_high,
        left_out=int(column.size - inside.sum()),
    )


def measure_effects(model: RiskModel, features: np.ndarray) -> Effects:
    """Each feature's effect on the risk under ``model``, over these current clients (float64 counts)."""
    rows = sample_rows(len(features))
    sampled = features[rows]
    contributions = model.contributions(sampled)
    additive = model.family in SEPARABLE_FAMILIES
    return Effects(
        clients=len(features),
        sampled=len(rows),
        baseline_log_odds=float(model.baseline_log_odds),
        typical_counts=dict(zip(FEATURES, model.typical_counts.tolist(), strict=True)),
        mean_absolute=dict(zip(FEATURES, np.abs(contributions).mean(axis=0).tolist(), strict=True)),
        curves=[effect_curve(model, j, effect_grid(features[:, j])) for j in range(len(FEATURES))] if additive else [],
        dependence={}
        if additive
        else {name: bin_dependence(sampled[:, j], contributions[:, j]) for j, name in enumerate(FEATURES)},
    )


# ---------------------------------------------------------------- in words and charts


def format_count(value: float) -> str:
    """A count as people read it: thousands separators, and one decimal below 10 where it falls between counts."""
    if value < 9.95 and abs(value - round(value)) >= 0.05:
        return f"{value:.1f}"
    return f"{value:,.0f}"


def format_log_odds(value: float) -> str:
    return "–" if not math.isfinite(value) else f"{value:+.3f}"


def feature_label(name: str) -> str:
    label = FEATURE_LABELS[name]
    return label[0].upper() + label[1:]


def draw_importance(effects: Effects) -> ShownChart:
    """Bars: the mean size of each feature's contribution, with its share of their sum."""
    values = [effects.mean_absolute[name] for name in FEATURES]
    total = sum(values) or 1.0
    heights: list[float | None] = list(values)
    chart = Chart(
        "How much each count moves the risk: the mean size of its change in log-odds",
        [feature_label(name) for name in FEATURES],
        [Series("mean size of the change in log-odds", heights, "series-a")],
        "mean size of change in log-odds",
        bars=True,
    )
    whom = (
        f"all {effects.clients:,} current clients"
        if effects.sampled == effects.clients
        else f"a random sample of {effects.sampled:,} of the {effects.clients:,} current clients"
    )
    note = (
        f"The average, over {whom}, of the size of each count's contribution to the log-odds of exit "
        "(raising or lowering the risk alike): the larger, the more that count sets clients' risks apart."
    )
    rows = [
        [feature_label(name), f"{value:.3f}", f"{value / total:.0%}"]
        for name, value in zip(FEATURES, values, strict=True)
    ]
    return ShownChart(render_chart(chart), chart, note, ["Count", "Mean size of its change in log-odds", "Share"], rows)


def draw_curve(curve: EffectCurve, effects: Effects) -> ShownChart:
    """One feature's effect curve, with the probability of an otherwise typical client at each count."""
    label = FEATURE_LABELS[curve.feature]
    others = [FEATURE_LABELS[name] for name in FEATURES if name != curve.feature]
    chart = Chart(
        f"{feature_label(curve.feature)}: its change in the log-odds of exit at each count",
        [format_count(value) for value in curve.counts],
        [Series(LOG_ODDS_AXIS, curve.contributions.tolist(), "series-a")],
        LOG_ODDS_AXIS,
        reference=(0.0, NO_EFFECT),
        x_label=f"{label} (log scale)",
    )
    typical = effects.typical_counts[curve.feature]
    note = (
        f"From the current clients' 1st to their 99th percentile of {label}. The curve crosses zero at the "
        f"average training client's {format_count(typical)}; it is the same for every client whatever their "
        f"{' and '.join(others)}. The table adds the exit probability of a client whose other counts are typical."
    )
    rows = [
        [format_count(count), format_log_odds(value), f"{probability:.1%}"]
        for count, value, probability in zip(
            curve.counts.tolist(), curve.contributions.tolist(), curve.probabilities.tolist(), strict=True
        )
    ]
    header = [feature_label(curve.feature), "Change in log-odds of exit", "Exit probability, other counts typical"]
    return ShownChart(render_chart(chart), chart, note, header, rows)


def draw_dependence(name: str, bins: DependenceBins, effects: Effects) -> ShownChart:
    """One feature's dependence plot: per bin of its count, the mean contribution and its 10th and 90th percentile.

    Each bin is labelled with its clients' median count; an empty bin is a gap with no label.
    """
    label = FEATURE_LABELS[name]
    filled = bins.clients > 0

    def values(array: np.ndarray) -> list[float | None]:
        return [float(value) if present else None for value, present in zip(array, filled, strict=True)]

    chart = Chart(
        f"{feature_label(name)}: the clients' change in the log-odds of exit, binned by their count",
        [format_count(value) if present else "" for value, present in zip(bins.median, filled, strict=True)],
        [
            Series("mean", values(bins.mean), "series-a"),
            Series("10th percentile", values(bins.low), "series-b"),
            Series("90th percentile", values(bins.high), "series-d"),
        ],
        LOG_ODDS_AXIS,
        reference=(0.0, NO_EFFECT),
        x_label=f"{label} (the median count of each bin; log scale)",
    )
    beyond = f"; the {bins.left_out:,} clients beyond them are left out" if bins.left_out else ""
    note = (
        f"The clients in {bins.clients.size} bins of {label}, from their 1st to their 99th percentile{beyond}. "
        f"Where the 10th and 90th percentiles lie apart, {label} moves the risk differently depending on the "
        "other counts."
    )
    rows = [
        [
            format_count(bins.median[index]),
            f"{format_count(bins.smallest[index])}–{format_count(bins.largest[index])}",
            f"{bins.clients[index]:,}",
            format_log_odds(bins.mean[index]),
            format_log_odds(bins.low[index]),
            format_log_odds(bins.high[index]),
        ]
        for index in np.flatnonzero(filled).tolist()
    ]
    header = ["Median count", "Counts", "Clients", "Mean change in log-odds", "10th percentile", "90th percentile"]
    return ShownChart(render_chart(chart), chart, note, header, rows)


def draw_effects(effects: Effects) -> list[ShownChart]:
    """The importance bars, then one chart per feature: its curve, or its dependence plot for the trees."""
    charts = [draw_importance(effects)]
    charts += [draw_curve(curve, effects) for curve in effects.curves]
    charts += [draw_dependence(name, bins, effects) for name, bins in effects.dependence.items()]
    return charts


# ---------------------------------------------------------------- the page


def read_serving_facts(served: ServedModel) -> ServingFacts:
    """The serving version's facts from its records (``trainedmodel.json``, ``version.json``)."""
    info, version = served.deployed.model_info, served.deployed.version_info
    window = info.training_window
    threshold = info.decision_threshold
    if threshold is None:
        threshold = decision_threshold(served.deployed.model)
    return ServingFacts(
        version=served.version,
        family=served.shortcut.family if served.shortcut is not None else None,
        model=info.model,
        threshold=float(threshold) if threshold is not None else None,
        training_rows=info.training_rows,
        training_window=window.describe() if window is not None else None,
        trained_at=info.trained_at,
        deployed_at=version.deployed_at,
    )


def list_family_rows(choice: FamilyChoice | None) -> list[FamilyRow]:
    """Each family's line of the comparison, in the order they were compared (none when none was made)."""
    if choice is None:
        return []

    def row(score: FamilyScore) -> FamilyRow:
        folds = score.fold_f1
        return FamilyRow(
            family=score.family,
            f1=score.f1,
            fold_low=min(folds) if folds else None,
            fold_high=max(folds) if folds else None,
            calibration_error=score.calibration_error,
            compared_with=score.compared_with,
            gain=score.gain,
            p_no_gain=score.p_no_gain,
            better=score.better,
            chosen=score.family == choice.family,
        )

    return [row(score) for score in choice.scores]


def find_deploying_run(runs: Sequence[StoredRun], version: str) -> StoredRun | None:
    """The monitoring run that deployed ``version`` (the newest, should there be several), or None."""
    return next(
        (run for run in runs if run.outcome in (DEPLOYED, FIRST_DEPLOYMENT) and run.model_version_after == version),
        None,
    )


def app_effects_cache(app: Flask) -> Cached:
    """The app's one cache of the model page's effects, made on first use."""
    found = app.extensions.get(EFFECTS_CACHE)
    if found is None:
        found = app.extensions.setdefault(EFFECTS_CACHE, Cached())
    return found


def cached_effects(cache: Cached, table: ClientTable, model: RiskModel) -> tuple[Effects, list[ShownChart]]:
    """The effects and their charts over the client table, computed once per table.

    The cached value holds the table, so no other table can take its ``id`` while the key is in use.
    """

    def compute() -> tuple[ClientTable, Effects, list[ShownChart]]:
        effects = measure_effects(model, table.features)
        return table, effects, draw_effects(effects)

    _, effects, charts = cache.get((table.version, id(table)), compute)
    return effects, charts


def gather_model_page(
    served: ServedModel, table: ClientTable | None, runs: Sequence[StoredRun], cache: Cached
) -> ModelPage:
    """The model page of the serving version; ``table``: the current clients (None without ingested data)."""
    info = served.deployed.model_info
    facts = read_serving_facts(served)
    choice = info.family_choice
    model = table.drivers_model if table is not None else served.shortcut
    effects, charts = (
        cached_effects(cache, table, model)
        if model is not None and table is not None and len(table.ids) > 0
        else (None, [])
    )
    return ModelPage(
        facts=facts,
        family_words=FAMILY_WORDS.get(facts.family or ""),
        choice=choice,
        family_rows=list_family_rows(choice),
        deploying_run=find_deploying_run(runs, served.version) if choice is None else None,
        calibration=info.calibration,
        explained=served.shortcut is not None,
        effects=effects,
        charts=charts,
    )
