"""The data-drift reference kept between runs: reused for the same rows, sorted again for any other rows."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pytest

from riskwatch.core.config import MonitoringSettings
from riskwatch.core.rowhash import hash_rows
from riskwatch.core.schema import FEATURES, SCHEMA
from riskwatch.data.batches import IngestedData
from riskwatch.data.generator import SHIFTED, generate_clients
from riskwatch.monitoring import driftreference
from riskwatch.monitoring.decision import judge_data_drift
from riskwatch.monitoring.driftreference import load_drift_reference, reference_key
from riskwatch.state.artifacts import DRIFT_REFERENCE_FILE
from riskwatch.stats.drift import DriftReference, feature_drift


@pytest.fixture(scope="module")
def ingested() -> IngestedData:
    """3,000 ingested clients in two batches of 2,000 and 1,000."""
    clients = generate_clients(3_000, np.random.default_rng(4))
    table = pa.table({name: clients[name] for name in SCHEMA.names}, schema=SCHEMA)
    batch = np.repeat(np.array([1, 2], np.int32), [2_000, 1_000])
    return IngestedData(table, hash_rows(table), batch, ())


def new_rows(count: int, seed: int) -> np.ndarray:
    clients = generate_clients(count, np.random.default_rng(seed), SHIFTED)
    return np.column_stack([clients[name].astype(float) for name in FEATURES])


def same_reference(one: DriftReference, other: DriftReference) -> bool:
    return all(
        np.array_equal(a.values, b.values) and np.array_equal(a.at_or_below, b.at_or_below) and a.spread == b.spread
        for a, b in zip(one.columns, other.columns, strict=True)
    )


def count_sorts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the references sorted from rows (not read from the kept file)."""
    sorted_rows: list[int] = []
    fit = driftreference.fit_drift_reference

    def counting(reference: np.ndarray):
        sorted_rows.append(reference.shape[0])
        return fit(reference)

    monkeypatch.setattr(driftreference, "fit_drift_reference", counting)
    return sorted_rows


def test_the_reference_is_sorted_once_and_read_back_while_its_rows_stay_the_same(tmp_path, ingested, monkeypatch):
    sorts = count_sorts(monkeypatch)
    settings, first = MonitoringSettings(), np.flatnonzero(ingested.batch == 1)
    expected = feature_drift(ingested.features()[first], new_rows(5_000, 1), settings)
    assert judge_data_drift(settings, ingested, first, new_rows(5_000, 1), tmp_path) == expected
    assert (tmp_path / DRIFT_REFERENCE_FILE).exists() and sorts == [2_000]
    for seed in (1, 2):  # later runs against the same reference read it back, small batches (KS) and large alike
        batch = new_rows(5_000 if seed == 1 else 500, seed)
        assert judge_data_drift(settings, ingested, first, batch, tmp_path) == feature_drift(
            ingested.features()[first], batch, settings
        )
    assert sorts == [2_000]
    every = np.arange(ingested.rows)  # a reference of other rows (a new model, a confirmation) is sorted again
    assert judge_data_drift(settings, ingested, every, new_rows(5_000, 1), tmp_path) == feature_drift(
        ingested.features(), new_rows(5_000, 1), settings
    )
    assert sorts == [2_000, 3_000]
    judge_data_drift(settings, ingested, first, new_rows(5_000, 1), tmp_path)
    assert sorts == [2_000, 3_000, 2_000]  # only the last reference is kept


def test_the_key_is_what_the_rows_are_not_where_they_sit(ingested):
    first = np.flatnonzero(ingested.batch == 1)
    assert reference_key(ingested, first) == reference_key(ingested, first.copy())
    assert reference_key(ingested, first) != reference_key(ingested, first[:-1])
    assert reference_key(ingested, first) == reference_key(ingested, first[::-1])  # their sorted values are the same
    assert reference_key(ingested, first) != reference_key(ingested, np.concatenate([first[:-1], first[:1]]))
    changed = ingested.table.set_column(1, FEATURES[0], pa.array(ingested.table[FEATURES[0]].to_numpy() + 1))
    edited = IngestedData(changed, hash_rows(changed), ingested.batch, ())
    assert reference_key(edited, first) != reference_key(ingested, first)  # same row numbers, other values


def test_a_damaged_or_foreign_file_is_sorted_again_and_replaced(tmp_path, ingested, monkeypatch, caplog):
    sorts = count_sorts(monkeypatch)
    rows = np.flatnonzero(ingested.batch == 1)
    path = tmp_path / DRIFT_REFERENCE_FILE
    path.write_bytes(b"PK\x03\x04 not an archive")
    with caplog.at_level(logging.WARNING, logger="fullprocess"):
        fitted = load_drift_reference(tmp_path, ingested, rows)
    assert f"{path} cannot be read" in caplog.text and sorts == [2_000]
    assert same_reference(load_drift_reference(tmp_path, ingested, rows), fitted) and sorts == [2_000]
    np.savez(path, meta=np.array('{"format": "another"}'))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fullprocess"):
        assert same_reference(load_drift_reference(tmp_path, ingested, rows), fitted)
    assert sorts == [2_000, 2_000] and caplog.text == ""


def test_a_folder_that_cannot_keep_it_still_gets_an_answer(tmp_path, ingested, caplog):
    rows = np.flatnonzero(ingested.batch == 1)
    blocked = tmp_path / "file"
    blocked.write_text("a file where the models folder should be")
    with caplog.at_level(logging.WARNING, logger="fullprocess"):
        reference = load_drift_reference(blocked, ingested, rows)
    assert same_reference(reference, load_drift_reference(None, ingested, rows))
    assert "the sorted data-drift reference was not kept in" in caplog.text
