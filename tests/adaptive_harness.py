"""A world that changes, for the adaptive-monitoring scenarios: batches from the project's generator fed
to ``fullprocess.py``, a process of its own per run as cron runs it, and the deployed model measured on fresh
samples of each world.

Each step records, for the scenario table: the world the batch came from, whether the run retrained,
which training window and model family won, the deployed model's family and F1 on a fresh sample of
that world, the F1 of a linear model fitted on that world alone, and their ratio; and the deployed
model's F1 on a fresh 50,000-row sample against the Bayes-optimal F1 there (each world's true exit
probability is known).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from riskwatch.core.config import ModelSettings, load_config
from riskwatch.core.errors import PipelineError
from riskwatch.core.schema import FEATURES
from riskwatch.data.generator import WORLDS, exit_probability, generate_clients, write_batch
from riskwatch.stages.training import fit_classifier
from riskwatch.state.artifacts import current_version_folder, load_deployed_version
from riskwatch.state.history import read_runs
from riskwatch.state.runs import StoredRun
from riskwatch.stats.drift import confusion_shares, f1_from_counts
from tests.fullprocess_runs import copy_first_run
from tests.helpers import run_script, world_number

FRESH_ROWS = 5_000
ORACLE_ROWS = 50_000
BAYES_ROWS = 50_000


def arrays(world: str, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    clients = generate_clients(rows, np.random.default_rng(seed), WORLDS[world])
    return np.column_stack([clients[name] for name in FEATURES]).astype(float), clients["exited"]


def f1_of(model: object, features: np.ndarray, labels: np.ndarray) -> float:
    shares = confusion_shares(labels, model.predict(features))
    return float(f1_from_counts(shares[0], shares[1], shares[2]))


@cache
def fresh_sample(world: str) -> tuple[np.ndarray, np.ndarray]:
    return arrays(world, FRESH_ROWS, seed=7_000 + world_number(world))


@cache
def oracle_f1(world: str) -> float:
    """F1 on the fresh sample of a model fitted on that world alone (a large sample of it), same pipeline."""
    model = fit_classifier(*arrays(world, ORACLE_ROWS, seed=8_000 + world_number(world)), ModelSettings())
    return f1_of(model, *fresh_sample(world))


@cache
def bayes_sample(world: str) -> tuple[np.ndarray, np.ndarray, float]:
    """A fresh 50,000-row sample of ``world``: features, labels, and the Bayes-optimal F1 on it (the best F1 of
    any threshold on the true exit probabilities)."""
    clients = generate_clients(BAYES_ROWS, np.random.default_rng(9_000 + world_number(world)), WORLDS[world])
    features = np.column_stack([clients[name] for name in FEATURES]).astype(float)
    labels = clients["exited"]
    order = np.argsort(-exit_probability(WORLDS[world], *features.T), kind="stable")
    hits = np.cumsum(labels[order])
    best = float(np.max(2 * hits / (np.arange(1, labels.size + 1) + labels.sum())))
    return features, labels, best


def probability_ratio(model: object, world: str) -> float:
    """The model's mean exit probability on the fresh 50,000-row sample of ``world`` over its exit rate there: 1.0
    when the expected exits are right."""
    features, labels, _ = bayes_sample(world)
    return float(model.predict_proba(features)[:, 1].mean() / labels.mean())  # type: ignore[attr-defined]


def bayes_ratio(model: object, world: str) -> float:
    """The model's F1 on the fresh 50,000-row sample of ``world`` over the Bayes-optimal F1 there."""
    features, labels, best = bayes_sample(world)
    return f1_of(model, features, labels) / best


@dataclass
class Step:
    scenario: str
    batch: str
    world: str
    rows: int
    outcome: str
    retrained: bool
    window: str
    deployed: str
    f1: float
    oracle: float
    f1_before: float | None  # the model that served before this run, on the same fresh sample
    family: str = "linear"  # the deployed model's
    winner: str = "-"  # the best challenger's window and family
    bayes: float = 0.0  # F1 on the 50,000-row sample over the Bayes-optimal F1
    mean_ratio: float = 0.0  # mean predicted probability over the exit rate on that sample
    fired: str = "-"  # which tests fired: model drift, data drift, calibration

    @property
    def ratio(self) -> float:
        return self.f1 / self.oracle


@dataclass
class ChangingWorld:
    """A copy of the shipped data in ``root`` with a config, fed batch by batch to fullprocess.py as cron runs it
    (``fullprocess.py --config``, a process of its own per run)."""

    root: Path
    scenario: str
    steps: list[Step] = field(default_factory=list)
    seed: int = 100

    @classmethod
    def start(cls, root: Path, scenario: str, first_run: Path, **monitoring: object) -> ChangingWorld:
        """The world in ``root``: a copy of ``first_run``, the shipped data after fullprocess.py's first run (conftest's
        ``first_run_template``), with the scenario config and ``monitoring`` settings; that first run is its first
        step."""
        copy_first_run(first_run, root, **monitoring)
        world = cls(root, scenario)
        world.record("shipped data", "stable", 9992, f1_before=None)
        return world

    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    def deployed_model(self) -> object | None:
        try:
            return load_deployed_version(
                current_version_folder(load_config(self.config_path).prod_deployment_path)
            ).model
        except PipelineError:
            return None

    def run(self, batch: str, world: str, rows: int) -> Step:
        before = self.deployed_model()
        f1_before = None if before is None else f1_of(before, *fresh_sample(world))
        ended = run_script("fullprocess.py", "--config", str(self.config_path), timeout=300)
        assert ended.returncode == 0, ended.stderr
        return self.record(batch, world, rows, f1_before)

    def record(self, batch: str, world: str, rows: int, f1_before: float | None) -> Step:
        """The step the latest run made on a batch of ``rows`` from ``world``, measured on fresh samples of it."""
        run = read_runs(load_config(self.config_path).history_path, limit=1)[0]
        deployed = load_deployed_version(current_version_folder(load_config(self.config_path).prod_deployment_path))
        step = Step(
            self.scenario,
            batch,
            world,
            rows,
            run.outcome,
            bool(run.drift_trigger),
            run.winning_window or "-",
            deployed.version,
            f1_of(deployed.model, *fresh_sample(world)),
            oracle_f1(world),
            f1_before,
            deployed.model_info.family or "linear",
            f"{run.winning_window}/{run.winning_family or 'linear'}" if run.winning_window else "-",
            bayes_ratio(deployed.model, world),
            probability_ratio(deployed.model, world),
            fired_tests(run),
        )
        self.steps.append(step)
        return step

    def feed(self, world: str, rows: int = 3_000, faulty_join: str | None = None, labelled: bool = True) -> Step:
        """A batch of ``rows`` new clients from ``world`` (``faulty_join``: with that feature paired with other
        clients' rows; ``labelled=False``: without outcomes), then one monitoring run."""
        self.seed += 1
        name = f"batch_{len(self.steps):03d}_{world}.csv"
        path = self.root / "sourceddata" / name
        write_batch(path, rows, seed=self.seed, world=world, labelled=labelled, faulty_join=faulty_join)
        return self.run(name, world, rows)

    def retrained(self, steps: list[Step]) -> int:
        return sum(step.retrained for step in steps)


def fired_tests(run: StoredRun) -> str:
    """The tests that fired on a run's rows, in short: model drift, data drift, calibration."""
    tests = (
        ("model", run.model_drift),
        ("data", run.data_drift),
        ("calibration", run.miscalibrated),
        ("integrity", run.integrity_alarm),
    )
    fired = [name for name, flag in tests if flag]
    return "+".join(fired) or "-"


def format_steps(steps: list[Step]) -> str:
    header = [
        "scenario",
        "batch",
        "world",
        "rows",
        "outcome",
        "retrained",
        "window won",
        "won",
        "deployed",
        "family",
        "F1 before",
        "F1 fresh",
        "F1 world-only",
        "ratio",
        "F1/Bayes",
        "fired",
        "mean p/rate",
    ]
    rows = [
        [
            step.scenario,
            str(index),
            step.world,
            str(step.rows),
            step.outcome,
            "yes" if step.retrained else "no",
            step.window,
            step.winner,
            step.deployed,
            step.family,
            "-" if step.f1_before is None else f"{step.f1_before:.4f}",
            f"{step.f1:.4f}",
            f"{step.oracle:.4f}",
            f"{step.ratio:.3f}",
            f"{step.bayes:.3f}",
            step.fired,
            f"{step.mean_ratio:.3f}",
        ]
        for index, step in enumerate(steps)
    ]
    widths = [max(len(text) for text in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)) for line in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
