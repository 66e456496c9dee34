"""The model a worker answers with, loaded once and swapped when ``production_deployment/current`` changes."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from werkzeug.exceptions import ServiceUnavailable

from common.artifacts import CURRENT_LINK, DeployedVersion, load_deployed_version
from common.errors import PipelineError
from training import LinearRiskModel

log = logging.getLogger("app")

RETRY_SECONDS = 30.0  # how soon a version that failed to load is tried again


@dataclass(frozen=True)
class ServedModel:
    """The version a worker answers with: loaded once, with the fast arithmetic when it applies."""

    link_target: str  # what ``current`` pointed at when this version was loaded
    deployed: DeployedVersion
    shortcut: LinearRiskModel | None

    @property
    def version(self) -> str:
        return self.deployed.version

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.shortcut is not None:
            return self.shortcut.predict(features)
        model = self.deployed.model
        return model.predict_proba(features)[:, 1], np.asarray(model.predict(features), dtype=np.int64)


def load_served_model(deploy_root: Path, link_target: str) -> ServedModel:
    """Load the version ``current`` points at; raise PipelineError when its files do not hold together."""
    deployed = load_deployed_version(deploy_root / link_target)
    return ServedModel(link_target=link_target, deployed=deployed, shortcut=LinearRiskModel.for_model(deployed.model))


class DeploymentWatcher:
    """Holds the loaded model and swaps it when ``current`` points at another version.

    A version that fails to load is retried every ``RETRY_SECONDS``; meanwhile the one loaded
    before keeps answering, and ``load_error`` says what is wrong.
    """

    def __init__(self, deploy_root: Path):
        self.deploy_root = deploy_root
        self._served: ServedModel | None = None
        self._failed: tuple[str, str, float] | None = None  # (link target, why, when) of a failed load
        self._lock = threading.Lock()

    def served(self) -> ServedModel:
        """The model to answer with; raise ServiceUnavailable when none can be loaded."""
        target = self._read_link()
        served = self._served
        if served is not None and (served.link_target == target or target is None):
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
            return os.readlink(self.deploy_root / CURRENT_LINK)
        except FileNotFoundError:
            return None

    def _switch(self, target: str | None) -> ServedModel:
        served = self._served
        if served is not None and served.link_target == target:
            return served  # another thread switched while this one waited
        if target is None:
            raise ServiceUnavailable("no model is deployed; run deployment.py")
        failed = self._failed
        if failed is None or failed[0] != target or time.monotonic() - failed[2] >= RETRY_SECONDS:
            try:
                self._served = load_served_model(self.deploy_root, target)
                self._failed = None
                log.info("serving model %s", self._served.version)
                return self._served
            except (PipelineError, OSError) as exc:
                why = str(exc).replace(f"{self.deploy_root}/", "")  # clients see paths inside the deployment only
                self._failed = (target, why, time.monotonic())
                kept = f"; still serving {served.version}" if served else ""
                log.error("cannot serve %s: %s%s", Path(target).name, why, kept)
        if served is not None:
            return served
        raise ServiceUnavailable(f"the deployed model cannot be loaded: {self._failed[1]}")


class FileBackedValue:
    """A value computed from some files, recomputed only when one of them changes (inode, size, mtime)."""

    def __init__(self, list_files: Callable[[], list[Path]], compute: Callable[[list[Path]], Any]):
        self.list_files, self.compute = list_files, compute
        self._signature: tuple[tuple[str, int, int, int], ...] | None = None
        self._value: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        """The value; OSError or PipelineError when the files are missing or unreadable."""
        with self._lock:
            files = self.list_files()
            stats = [(str(path), os.stat(path)) for path in files]
            signature = tuple((name, st.st_ino, st.st_size, st.st_mtime_ns) for name, st in stats)
            if signature != self._signature:
                self._value, self._signature = self.compute(files), signature
            return self._value
