"""What drives each client's exit risk: its contributions to the log-odds, and one plain sentence.

For every model family (riskwatch/model/riskmodels.py) a client's log-odds of exit is exactly
``baseline + sum_j contribution_j``: the baseline is the log-odds of the average training client
(every standardised log1p count 0), and feature j's contribution is its exact Shapley value against
that client (for the linear family ``coef_j * z_j``, for the additive family its curve's height
against the curve's height at the average client). The family does that arithmetic; this module
gives the API, the dashboard and the report the same numbers and the same words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from riskwatch.core.schema import FEATURE_LABELS, FEATURES

if TYPE_CHECKING:
    from riskwatch.model.riskmodels import RiskModel

# A contribution smaller than this (on the log-odds) is too small to name as a reason.
NOTABLE_LOG_ODDS = 0.05
# How far from the typical client, in training standard deviations of the log counts, is "far".
FAR_FROM_TYPICAL = 1.0
CLOSE_TO_TYPICAL = 0.1


@dataclass(frozen=True)
class ClientDrivers:
    """One client's contributions to the log-odds of exit, the log-odds they add up to, and the reason in words."""

    contributions: dict[str, float]
    log_odds: float
    reason: str


@dataclass(frozen=True)
class RiskDrivers:
    """The log-odds of the average training client, and the drivers of each client asked about, in order."""

    baseline_log_odds: float
    clients: list[ClientDrivers]


def explain_clients(model: RiskModel, features: np.ndarray) -> RiskDrivers:
    """The drivers of each row of ``features`` (float64 counts, one column per feature) under ``model``."""
    contributions = model.contributions(features)
    standardised = model.standardise(features)
    log_odds = model.baseline_log_odds + contributions.sum(axis=1)
    typical = model.typical_counts
    clients = [
        ClientDrivers(
            contributions=dict(zip(FEATURES, parts.tolist(), strict=True)),
            log_odds=float(total),
            reason=describe_reason(values, scaled, parts, typical),
        )
        for values, scaled, parts, total in zip(features, standardised, contributions, log_odds, strict=True)
    ]
    return RiskDrivers(model.baseline_log_odds, clients)


def compare_with_typical(standardised: float) -> str:
    """Where a count stands against the typical client's, in words, from its standardised log value."""
    if abs(standardised) < CLOSE_TO_TYPICAL:
        return "close to"
    side = "below" if standardised < 0 else "above"
    return f"far {side}" if abs(standardised) >= FAR_FROM_TYPICAL else side


def describe_reason(
    values: np.ndarray, standardised: np.ndarray, contributions: np.ndarray, typical: np.ndarray
) -> str:
    """The feature that raises this client's risk most, with its count beside the typical one, in plain words.

    When no feature raises the risk notably, the one that lowers it most; when none moves it, says so.
    """
    strongest = int(np.argmax(contributions))
    verb = "raises the risk most"
    if contributions[strongest] < NOTABLE_LOG_ODDS:
        strongest = int(np.argmin(contributions))
        if contributions[strongest] > -NOTABLE_LOG_ODDS:
            return "no count stands out: the risk is close to that of the typical client"
        verb = "lowers the risk most, and no count raises it"
    name = FEATURES[strongest]
    return (
        f"{FEATURE_LABELS[name]} {values[strongest]:,.0f}, {compare_with_typical(float(standardised[strongest]))} "
        f"the typical {typical[strongest]:,.0f}, {verb}"
    )
