"""Data tests: the shipped files are what the generator writes, and the ingested output is clean."""

from __future__ import annotations

import numpy as np
import pyarrow.csv as pa_csv
import pytest

from riskwatch.core.schema import COLUMNS
from riskwatch.data.datafiles import read_labelled_data
from riskwatch.data.generator import write_shipped_data
from riskwatch.stages.ingestion import ingest_folder
from riskwatch.state.artifacts import FINAL_DATA
from tests.helpers import PROJECT_ROOT

SHIPPED_FOLDERS = ("practicedata", "sourceddata", "testdata")


def test_generator_reproduces_the_committed_files_byte_for_byte(tmp_path):
    written = write_shipped_data(tmp_path)
    assert written
    for path in written:
        relative = path.relative_to(tmp_path)
        assert path.read_bytes() == (PROJECT_ROOT / relative).read_bytes(), f"{relative} differs"
    committed = sorted(
        p.relative_to(PROJECT_ROOT) for folder in SHIPPED_FOLDERS for p in (PROJECT_ROOT / folder).glob("*.csv")
    )
    assert committed == sorted(path.relative_to(tmp_path) for path in written)


@pytest.fixture(scope="module")
def ingested_shipped(tmp_path_factory):
    output = tmp_path_factory.mktemp("ingested")
    result = ingest_folder(PROJECT_ROOT / "sourceddata", output)
    return result, pa_csv.read_csv(output / FINAL_DATA)


def test_ingested_data_has_the_schema_and_no_gaps_or_duplicates(ingested_shipped):
    result, table = ingested_shipped
    assert table.column_names == list(COLUMNS)
    assert all(table[name].null_count == 0 for name in COLUMNS)
    rows = list(zip(*(table[name].to_pylist() for name in COLUMNS), strict=True))
    assert len(rows) == len(set(rows)) == result.rows_written
    assert set(table["exited"].to_pylist()) == {0, 1}
    assert all(min(table[name].to_pylist()) >= 0 for name in COLUMNS[1:])


def test_shipped_source_data_is_about_ten_thousand_clients_with_realistic_dirt(ingested_shipped):
    result, table = ingested_shipped
    assert 9_900 <= table.num_rows <= 10_000
    assert result.duplicates_removed > 0
    assert sum(entry.rows_dropped for entry in result.files) > 0


def test_shipped_data_is_heavy_tailed_with_about_a_quarter_exiting():
    features, labels = read_labelled_data(sorted((PROJECT_ROOT / "sourceddata").glob("*.csv")))
    assert 0.2 < labels.mean() < 0.3
    for column in features.T:
        assert np.percentile(column, 99) > 10 * np.median(column)


def test_drifted_batch_differs_in_distribution_and_relationship(tmp_path):
    from riskwatch.data.generator import write_batch

    stable = write_batch(tmp_path / "stable.csv", 20_000, seed=5)
    drifted = write_batch(tmp_path / "drifted.csv", 20_000, seed=5, world="drifted")
    stable_x, stable_y = read_labelled_data(stable)
    drift_x, drift_y = read_labelled_data(drifted)
    assert np.median(drift_x[:, 0]) < 0.8 * np.median(stable_x[:, 0])
    assert np.median(drift_x[:, 2]) > 1.5 * np.median(stable_x[:, 2])
    assert abs(drift_y.mean() - stable_y.mean()) > 0.05
