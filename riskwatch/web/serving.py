"""The model a worker answers with, loaded once and swapped when ``production_deployment/current`` changes."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from werkzeug.exceptions import ServiceUnavailable

from riskwatch.core.errors import PipelineError
from riskwatch.model.riskmodels import OneRowScorer, RiskModel, one_row_scorer, risk_model_for
from riskwatch.state.artifacts import (
    CURRENT_LINK,
    MODEL_FILE,
    VERSIONS_FOLDER,
    DeployedVersion,
    VersionNumber,
    list_versions,
    load_deployed_version,
    version_number,
)

log = logging.getLogger("app")

RETRY_SECONDS = 30.0  # how soon a version that failed to load is tried again


@dataclass(frozen=True)
class ServedModel:
    """The version a worker answers with: loaded once, with the fast arithmetic when it applies."""

    link_target: str  # what ``current`` pointed at when this version was loaded
    deployed: DeployedVersion
    shortcut: RiskModel | None  # the family's own arithmetic; None for a model of no family
    model_file: str  # its model file, stat-ed on every request (as a string: no path arithmetic per request)
    model_stamp: tuple[int, int, int]  # the model file's inode, size and mtime when it was loaded
    fallback: bool = False  # an older version, because the deployed one cannot be loaded
    row_scorer: OneRowScorer | None = None  # the linear family's arithmetic on one row in Python floats

    @property
    def version(self) -> str:
        return self.deployed.version

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.shortcut is not None:
            return self.shortcut.score(features)
        model = self.deployed.model
        return model.predict_proba(features)[:, 1], np.asarray(model.predict(features), dtype=np.int64)

    def predict_one(self, features: np.ndarray) -> tuple[float, int]:
        """The probability and label of a one-row array: ``predict``'s numbers, in Python floats without numpy's
        arithmetic when the model has a ``row_scorer``."""
        if self.row_scorer is not None:
            scored = self.row_scorer.score(features)
            if scored is not None:
                return scored
        probabilities, labels = self.predict(features)
        return float(probabilities[0]), int(labels[0])


def stamp_file(path: str | os.PathLike[str]) -> tuple[int, int, int] | None:
    """A file's inode, size and modification time (any rewrite changes one), or None when it is gone."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


def load_served_model(folder: Path, link_target: str, fallback: bool = False) -> ServedModel:
    """Load one version folder; raise PipelineError when its files do not hold together."""
    model_file = str(folder / MODEL_FILE)
    stamp = stamp_file(model_file)
    deployed = load_deployed_version(folder)
    shortcut = risk_model_for(deployed.model)
    return ServedModel(
        link_target=link_target,
        deployed=deployed,
        shortcut=shortcut,
        model_file=model_file,
        model_stamp=stamp or (0, 0, 0),
        fallback=fallback,
        row_scorer=None if shortcut is None else one_row_scorer(shortcut),
    )


class DeploymentWatcher:
    """Holds the loaded model and swaps it when ``current`` points at another version or its model file changes.

    Every request reads the link and stats the model file (two system calls, a few microseconds), so all
    workers agree on what is served and the first request after a change sees it: when the deployed version
    cannot be loaded (its model file damaged, say), each worker falls back to the newest kept version that
    loads and checks out, and says so in ``load_error``; the deployed version is tried again every
    ``RETRY_SECONDS``.
    """

    def __init__(self, prod_deployment_path: Path):
        self.prod_deployment_path = prod_deployment_path
        self._link = str(prod_deployment_path / CURRENT_LINK)  # no path arithmetic per request
        self._current_model = str(prod_deployment_path / CURRENT_LINK / MODEL_FILE)  # the model file, through the link
        self._served: ServedModel | None = None
        self._failed: tuple[str, str, float] | None = None  # (link target, why, when) of a failed load
        self._lock = threading.Lock()

    def served(self) -> ServedModel:
        """The model to answer with; raise ServiceUnavailable when none can be loaded.

        Most requests cost one system call: the file ``current`` leads to has the inode, size and modification
        time of the file loaded, so the link still leads to that version and its model is unchanged. Otherwise the
        link is read, and the model loaded again or a fallback kept.
        """
        served = self._served
        if served is not None and not served.fallback and stamp_file(self._current_model) == served.model_stamp:
            return served
        target = self._read_link()
        if served is not None and target is None:
            return served
        if served is not None and served.link_target == target and self._still_valid(served):
            return served
        with self._lock:
            return self._switch(target)

    def load_error(self) -> tuple[str, str] | None:
        """(deployed version, why) when the deployed version could not be loaded, else None."""
        failed = self._failed
        if failed is None or failed[0] != self._read_link():
            return None
        return Path(failed[0]).name, failed[1]

    def _read_link(self) -> str | None:
        try:
            return os.readlink(self._link)
        except FileNotFoundError:
            return None

    def _still_valid(self, served: ServedModel) -> bool:
        """Whether the served model is what ``current`` holds: its file unchanged, or a fallback not yet due a retry."""
        if served.fallback:
            failed = self._failed
            return failed is not None and time.monotonic() - failed[2] < RETRY_SECONDS
        return stamp_file(served.model_file) == served.model_stamp  # the file ``current`` reaches: same target

    def _switch(self, target: str | None) -> ServedModel:
        served = self._served
        if served is not None and served.link_target == target and self._still_valid(served):
            return served  # another thread switched while this one waited
        if target is None:
            raise ServiceUnavailable("no model is deployed; run deployment.py")
        try:
            self._served = load_served_model(self.prod_deployment_path / target, target)
        except (PipelineError, OSError) as exc:
            why = self._shown(str(exc))
            self._failed = (target, why, time.monotonic())
            self._served = self._load_fallback(target)
            kept = f"; serving {self._served.version} instead" if self._served else ""
            log.error("cannot serve %s: %s%s", Path(target).name, why, kept)
            if self._served is None:
                raise ServiceUnavailable(f"the deployed model cannot be loaded: {why}") from None
            return self._served
        self._failed = None
        log.info("serving model %s", self._served.version)
        return self._served

    def _load_fallback(self, target: str) -> ServedModel | None:
        """The newest kept version older than ``target`` that loads and checks out, or None."""
        newest = VersionNumber.parse(Path(target).name)
        kept = list_versions(self.prod_deployment_path)
        older = [name for name in kept if newest is None or version_number(name) < newest]
        for name in reversed(older):
            try:
                return load_served_model(self.prod_deployment_path / VERSIONS_FOLDER / name, target, fallback=True)
            except (PipelineError, OSError) as exc:
                log.error("cannot fall back to %s: %s", name, self._shown(str(exc)))
        return None

    def _shown(self, message: str) -> str:
        """A message as clients may see it: paths inside the deployment only."""
        return message.replace(f"{self.prod_deployment_path}/", "")
