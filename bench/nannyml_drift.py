"""NannyML's drift calculators, fit and per batch, on the folder ``bench/bench_drift_tools.py`` writes.

Run with the python of a virtual environment of NannyML's own, never the project's (this file imports
nothing of the project's):

    python3.11 -m venv /work/nannyml-venv
    /work/nannyml-venv/bin/pip install nannyml 'pandas<3' statsmodels
    NML_DISABLE_USAGE_LOGGING=1 /work/nannyml-venv/bin/python bench/nannyml_drift.py FOLDER [--repeats 5]

FOLDER holds ``reference.npz`` and one ``.npz`` a batch (``batches.json`` names them in order), each with
one array of counts per feature (``features.json``). Every calculator sees the ``log1p`` counts and takes
a chunk the size of a batch, so each batch is one chunk and the reference gives the chunks its default
threshold is drawn from. One JSON object a line on stdout: the calculator, its fit seconds (median of
``--fit-repeats``), its seconds per batch (each batch ``--repeats`` times) and its alert per batch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path


def read_frame(path: Path, features: list[str]):
    """The batch's log1p counts as a pandas DataFrame (pandas, like NannyML, only in NannyML's environment)."""
    import numpy as np
    import pandas as pd

    with np.load(path, allow_pickle=False) as stored:
        return pd.DataFrame({name: np.log1p(stored[name].astype(np.float64)) for name in features})


def calculators(features: list[str], chunk_size: int) -> dict[str, object]:
    """The calculators compared, by the name the table gives them; each made anew for every fit."""
    import nannyml as nml

    exact = {"wasserstein": {}, "calculation_method": "exact"}  # the method's name must be a key as well
    return {
        "univariate, default (Jensen-Shannon, binned)": lambda: nml.UnivariateDriftCalculator(
            column_names=features, chunk_size=chunk_size
        ),
        "univariate, Wasserstein (binned, its default)": lambda: nml.UnivariateDriftCalculator(
            column_names=features, continuous_methods=["wasserstein"], chunk_size=chunk_size
        ),
        "univariate, Wasserstein exact": lambda: nml.UnivariateDriftCalculator(
            column_names=features, continuous_methods=["wasserstein"], chunk_size=chunk_size, computation_params=exact
        ),
        "data reconstruction (PCA, 65% of the variance)": lambda: nml.DataReconstructionDriftCalculator(
            column_names=features, chunk_size=chunk_size
        ),
    }


def alerts_of(result) -> list[str]:
    """What alerted on the batch's one chunk of a NannyML result: the features, or the reconstruction error."""
    frame = result.filter(period="analysis").to_df()
    return sorted({str(column[0]) for column in frame.columns if column[-1] == "alert" and bool(frame[column].iloc[0])})


def measure(make, reference, batches: dict[str, object], repeats: int, fit_repeats: int) -> dict[str, object]:
    """Fit seconds (median), seconds per batch (median over every batch and repeat), the alerts per batch."""
    fits, fitted = [], None
    for _ in range(fit_repeats):
        started = time.perf_counter()
        fitted = make().fit(reference)
        fits.append(time.perf_counter() - started)
    seconds, alerts = [], {}
    for name, batch in batches.items():
        for _ in range(repeats):
            started = time.perf_counter()
            result = fitted.calculate(batch)
            seconds.append(time.perf_counter() - started)
        alerts[name] = alerts_of(result)
    return {"fit": statistics.median(fits), "batch": statistics.median(seconds), "alerts": alerts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--repeats", type=int, default=5, help="times each batch is calculated (median)")
    parser.add_argument("--fit-repeats", type=int, default=3, help="times each calculator is fitted (median)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # NannyML warns about its chunks at every call
    os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")  # before NannyML is imported: no usage statistics sent
    import nannyml

    features = json.loads((args.folder / "features.json").read_text())
    names = json.loads((args.folder / "batches.json").read_text())
    reference = read_frame(args.folder / "reference.npz", features)
    batches = {name: read_frame(args.folder / f"{name}.npz", features) for name in names}
    chunk_size = len(next(iter(batches.values())))
    for label, make in calculators(features, chunk_size).items():
        row = measure(make, reference, batches, args.repeats, args.fit_repeats)
        print(json.dumps({"tool": f"NannyML {nannyml.__version__}", "test": label, **row}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
