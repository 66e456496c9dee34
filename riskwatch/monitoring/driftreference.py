"""The data-drift reference kept between monitoring runs: each feature's sorted ``log1p`` values.

Each run of ``fullprocess.py`` is a new process, and its reference (the serving model's training rows, or
the rows of the run that confirmed it) mostly stays the same for many runs. Sorting a million reference
rows per feature costs more than the rest of the test, so the sorted reference is kept in one file of the
models folder (``driftreference.npz``), keyed by what the reference rows are: a digest of their content
hashes (``reference_key``). A reference of other rows (a new model, a confirmation, a batch accepted into training,
a rebuilt ``finaldata.csv``) has another key, so a kept reference is never used for rows it was not
sorted from; it is then sorted again and replaces the file. Only the last reference is kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from riskwatch.core.arrays import write_npz
from riskwatch.core.schema import FEATURES
from riskwatch.data.batches import IngestedData
from riskwatch.state.artifacts import DRIFT_REFERENCE_FILE
from riskwatch.stats.drift import DriftReference, SortedSample, fit_drift_reference

log = logging.getLogger("fullprocess")

# Written into the file; a file of another format (or other features) is sorted again, never misread.
FORMAT = "riskwatch drift reference 2: log1p, distinct values and rows at or below each"


ODD_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # a second, independent sum of the row hashes


def reference_key(data: IngestedData, rows: np.ndarray) -> str:
    """What the reference rows are, whatever their order (their sorted values do not depend on it): the count,
    XOR and two wrapping sums of their content hashes (every column of each row), digested. Reading a million
    hashes this way costs a few milliseconds, a fifth of hashing their bytes."""
    hashes = data.hashes[rows]
    summary = np.array(
        [
            hashes.size,
            np.bitwise_xor.reduce(hashes) if hashes.size else 0,
            hashes.sum(dtype=np.uint64),
            (hashes * ODD_MULTIPLIER).sum(dtype=np.uint64),
        ],
        dtype=np.uint64,
    )
    return hashlib.blake2b(summary.tobytes(), digest_size=20).hexdigest()


def read_drift_reference(path: Path, key: str) -> DriftReference | None:
    """The reference kept in ``path`` when it was sorted from the rows of ``key``; None when there is none, it is
    another's, or it cannot be read (with a warning)."""
    if not path.exists():
        return None
    try:
        # numpy leaves a file it opened itself open when the archive is damaged: open it here instead
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as stored:
            meta = json.loads(str(stored["meta"]))
            if meta != {"format": FORMAT, "features": list(FEATURES), "key": key}:
                return None
            spreads = stored["spreads"].astype(np.float64)
            columns = tuple(
                SortedSample(
                    stored[f"values_{column}"].astype(np.float64),
                    stored[f"at_or_below_{column}"].astype(np.int64),
                    float(spreads[column]),
                )
                for column in range(len(FEATURES))
            )
    except Exception as exc:  # a damaged file only costs the sort it saved
        log.warning("%s cannot be read (%s: %s); the reference is sorted again", path, type(exc).__name__, exc)
        return None
    return DriftReference(columns)


def write_drift_reference(path: Path, key: str, reference: DriftReference) -> Path:
    """Keep ``reference``, sorted from the rows of ``key``, in ``path`` (atomically)."""
    arrays = {"meta": np.array(json.dumps({"format": FORMAT, "features": list(FEATURES), "key": key}))}
    arrays["spreads"] = np.array([column.spread for column in reference.columns], dtype=np.float64)
    for number, column in enumerate(reference.columns):
        arrays[f"values_{number}"] = column.values
        arrays[f"at_or_below_{number}"] = column.at_or_below
    return write_npz(path, arrays)


def load_drift_reference(models_folder: Path | None, data: IngestedData, rows: np.ndarray) -> DriftReference:
    """The data-drift reference of these ingested rows: the one kept in ``models_folder`` when it is theirs, else
    sorted now and kept there for the next run (``models_folder`` None: sorted now, kept nowhere)."""
    if models_folder is None:
        return fit_drift_reference(data.features()[rows])
    path = Path(models_folder) / DRIFT_REFERENCE_FILE
    key = reference_key(data, rows)
    kept = read_drift_reference(path, key)
    if kept is not None:
        return kept
    reference = fit_drift_reference(data.features()[rows])
    try:
        write_drift_reference(path, key, reference)
    except OSError as exc:
        log.warning("the sorted data-drift reference was not kept in %s (%s)", path, exc.strerror or exc)
    return reference
