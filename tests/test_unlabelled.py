"""Clients whose outcome is not known yet: files without ``exited`` are ingested, ranked, and never trained on."""

from __future__ import annotations

import json

import numpy as np
import pytest

from riskwatch.core.config import Config, load_config
from riskwatch.core.schema import UNLABELLED_COLUMNS
from riskwatch.data.batches import read_final_data, read_unlabelled_clients, select_current_clients
from riskwatch.data.datafiles import read_data_file
from riskwatch.data.generator import write_batch
from riskwatch.report.gather import rank_clients
from riskwatch.stages.ingestion import ingest_folder
from riskwatch.state.artifacts import (
    FINAL_DATA,
    INGESTED_FILES,
    INGESTED_RECORD,
    INGESTION_REPORT,
    MODEL_INFO_FILE,
    UNLABELLED_CLIENTS,
    current_version_folder,
    load_deployed_version,
    read_ingested_files,
    read_json_file,
)
from riskwatch.web.app import create_app
from tests.fullprocess_runs import copy_first_run, last_run, run_fullprocess
from tests.helpers import served_model, train_and_score

HEADER = ",".join(UNLABELLED_COLUMNS) + "\n"
# Riskier than any generated client: no activity, many employees.
NEWCOMERS = HEADER + "newcomer_a,0,0,5000\nnewcomer_b,0,0,4000\nnewcomer_c,1,1,3000\n"

# name, bytes, a fragment of the one-line message (the same as for labelled files)
BAD_UNLABELLED = [
    ("text.csv", (HEADER + "ab,12,300,4\ncd,lots,300,4\n").encode(), "column lastmonth_activity holds text"),
    (
        "no_feature.csv",
        b"corporation,lastmonth_activity,lastyear_activity\nab,1,2\n",
        "missing column number_of_employees",
    ),
    ("all_bad.csv", (HEADER + "ab,-1,2,3\ncd,1,2.5,3\n").encode(), "none of its 2 rows is valid"),
    (
        "no_feature.json",
        b'[{"corporation": "ab", "lastmonth_activity": 1, "lastyear_activity": 2}]',
        "missing column number_of_employees",
    ),
    (
        "text.jsonl",
        b'{"corporation": "ab", "lastmonth_activity": "ten", "lastyear_activity": 1, "number_of_employees": 1}\n',
        "column lastmonth_activity holds text",
    ),
]


def ranked(config: Config, limit: int = 1000) -> dict:
    answer = create_app(config, token="").test_client().get(f"/clients?limit={limit}")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return answer.get_json()


def test_an_unlabelled_file_is_ingested_recorded_and_kept_out_of_the_training_data(deployed):
    final = deployed.output_folder_path / FINAL_DATA
    before = final.read_bytes()
    training_rows = read_json_file(deployed.output_model_path / MODEL_INFO_FILE, "model info")["training_rows"]
    (deployed.input_folder_path / "current.csv").write_text(NEWCOMERS + "newcomer_a,0,0,5000\nbad,,1,1\n")

    result = ingest_folder(deployed.input_folder_path, deployed.output_folder_path)

    assert final.read_bytes() == before and result.rows_written == 1000 and result.batch == 0
    assert "current.csv" in (deployed.output_folder_path / INGESTED_FILES).read_text().splitlines()
    entry = read_ingested_files(deployed.output_folder_path / INGESTED_FILES)["current.csv"]
    assert not entry.labelled and entry.rows_kept == 4 and entry.rows_dropped == 1
    record = json.loads((deployed.output_folder_path / INGESTED_RECORD).read_text())
    assert [item["labelled"] for item in record["files"]] == [True, True, False]
    report = json.loads((deployed.output_folder_path / INGESTION_REPORT).read_text())
    assert report["unlabelled_files"] == ["current.csv"] and report["unlabelled_clients"] == 3
    assert read_unlabelled_clients(deployed.output_folder_path).num_rows == 3
    train_and_score(deployed, C=0.5)  # training again reads finaldata.csv alone
    retrained = read_json_file(deployed.output_model_path / MODEL_INFO_FILE, "model info")
    assert retrained["training_rows"] == training_rows


def test_unlabelled_clients_are_counted_and_ranked_beside_the_active_ones(deployed):
    active = ranked(deployed)["count"]
    (deployed.input_folder_path / "current.csv").write_text(NEWCOMERS)
    ingest_folder(deployed.input_folder_path, deployed.output_folder_path)

    body = ranked(deployed, limit=3)

    assert body["count"] == active + 3
    assert [row["corporation"] for row in body["clients"]] == ["newcomer_a", "newcomer_b", "newcomer_c"]
    model = served_model(deployed)
    expected = model.predict_proba(np.array([[0.0, 0.0, 5000.0]]))[:, 1][0]
    assert body["clients"][0]["probability"] == pytest.approx(expected)
    top = rank_clients(model, deployed.output_folder_path, 3)
    assert [row["corporation"] for row in top] == ["newcomer_a", "newcomer_b", "newcomer_c"]
    page = create_app(deployed, token="").test_client().get("/dashboard/clients.csv").get_data(as_text=True)
    assert page.splitlines()[1].split(",")[1] == "newcomer_a" and len(page.splitlines()) == active + 4
    detail = create_app(deployed, token="").test_client().get("/dashboard/clients/newcomer_a").get_data(as_text=True)
    assert "Rank 1 of" in detail and "not known yet" in detail


def test_a_later_labelled_row_supersedes_the_unlabelled_state_and_the_other_way_round(deployed):
    (deployed.input_folder_path / "c1_current.csv").write_text(NEWCOMERS)
    ingest_folder(deployed.input_folder_path, deployed.output_folder_path)
    labelled = "corporation,lastmonth_activity,lastyear_activity,number_of_employees,exited\n"
    # newcomer_a left; newcomer_b stays, now busy: labelled rows arriving after the unlabelled ones
    (deployed.input_folder_path / "c2_outcomes.csv").write_text(
        labelled + "newcomer_a,0,0,5000,1\nnewcomer_b,900,9000,4,0\n"
    )
    ingest_folder(deployed.input_folder_path, deployed.output_folder_path)

    current = select_current_clients(
        read_final_data(deployed.output_folder_path / FINAL_DATA), read_unlabelled_clients(deployed.output_folder_path)
    )
    position = {name: row for row, name in enumerate(current.ids)}
    assert "newcomer_a" not in position  # exited: gone from the list
    assert current.features[position["newcomer_b"]].tolist() == [900.0, 9000.0, 4.0]
    assert current.final_rows[position["newcomer_b"]] >= 0 and current.unlabelled[position["newcomer_c"]]
    assert [row["corporation"] for row in ranked(deployed, 1)["clients"]] == ["newcomer_c"]

    (deployed.input_folder_path / "c3_current.csv").write_text(
        HEADER + "newcomer_b,0,0,6000\n"
    )  # and back to unlabelled
    ingest_folder(deployed.input_folder_path, deployed.output_folder_path)
    top = ranked(deployed, 1)["clients"][0]
    assert top["corporation"] == "newcomer_b"


def test_select_current_clients_follows_arrival_order():
    import pyarrow as pa

    final = pa.table(
        {
            "corporation": ["a", "b", "c", "a"],
            "lastmonth_activity": [1, 2, 3, 4],
            "lastyear_activity": [1, 2, 3, 4],
            "number_of_employees": [1, 2, 3, 4],
            "exited": [0, 0, 1, 0],
        }
    )
    unlabelled = pa.table(
        {
            "corporation": ["a", "c", "d"],
            "lastmonth_activity": [10, 30, 40],
            "lastyear_activity": [10, 30, 40],
            "number_of_employees": [10, 30, 40],
            "arrived_after_row": [2, 2, 0],  # a and c after final rows 0-1; d before everything
        }
    )
    current = select_current_clients(final, unlabelled)
    # d came first; c's unlabelled row came before its exited row 2, so c has gone; a's latest is row 3
    assert current.ids == ["d", "b", "a"]
    assert current.features[:, 0].tolist() == [40.0, 2.0, 4.0]
    assert current.final_rows.tolist() == [-1, 1, 3]


@pytest.mark.parametrize(("name", "content", "message"), BAD_UNLABELLED, ids=[row[0] for row in BAD_UNLABELLED])
def test_a_bad_unlabelled_file_gets_the_same_one_line_error(project, name, content, message):
    (project.input_folder_path / name).write_bytes(content)
    result = ingest_folder(project.input_folder_path, project.output_folder_path)
    assert message in result.rejected[name] and result.rejected[name].startswith(f"{name}: ")
    assert "\n" not in result.rejected[name]
    assert not (project.output_folder_path / UNLABELLED_CLIENTS).exists()


def test_unlabelled_json_and_json_lines_are_read_as_strictly(project):
    (project.input_folder_path / "current.jsonl").write_text(
        '{"corporation": "x", "lastmonth_activity": 1, "lastyear_activity": 2, "number_of_employees": 3}\n'
        '{"corporation": "y", "lastmonth_activity": -1, "lastyear_activity": 2, "number_of_employees": 3}\n'
    )
    result = ingest_folder(project.input_folder_path, project.output_folder_path)
    entry = next(item for item in result.files if item.name == "current.jsonl")
    assert not entry.labelled and entry.rows_kept == 1 and entry.rows_dropped == 1
    assert read_unlabelled_clients(project.output_folder_path)["corporation"].to_pylist() == ["x"]


def test_training_and_scoring_readers_still_need_the_exited_column(tmp_path):
    path = tmp_path / "current.csv"
    path.write_text(NEWCOMERS)
    with pytest.raises(Exception, match="current.csv: missing column exited"):
        read_data_file(path)
    assert not read_data_file(path, allow_unlabelled=True).labelled


def test_only_unlabelled_files_is_no_training_data(project):
    for path in project.input_folder_path.iterdir():
        path.unlink()
    (project.input_folder_path / "current.csv").write_text(NEWCOMERS)
    with pytest.raises(Exception, match="no labelled data in .*exited column"):
        ingest_folder(project.input_folder_path, project.output_folder_path)


def test_the_unlabelled_file_goes_once_the_unlabelled_files_do(deployed):
    (deployed.input_folder_path / "current.csv").write_text(NEWCOMERS)
    ingest_folder(deployed.input_folder_path, deployed.output_folder_path)
    (deployed.input_folder_path / "current.csv").unlink()
    ingest_folder(deployed.input_folder_path, deployed.output_folder_path, fresh=True)
    assert not (deployed.output_folder_path / UNLABELLED_CLIENTS).exists()


@pytest.mark.slow
def test_fullprocess_on_unlabelled_files_estimates_f1_tests_data_drift_and_never_model_drift(after_first_run):
    shipped = after_first_run
    root, config = shipped.parent, load_config(shipped)
    final = config.output_folder_path / FINAL_DATA
    before, active = final.read_bytes(), ranked(config)["count"]

    # A batch of clients without outcomes, from the same world: ranked, estimated, nothing to retrain for.
    write_batch(root / "sourceddata" / "current_a.csv", 300, seed=41, labelled=False)
    first = run_fullprocess(shipped)
    assert first.returncode == 0, first.stderr
    run = last_run(shipped)
    assert run.outcome == "kept" and run.model_version_after == "v0001"
    assert run.new_data_f1 is None and run.model_drift is None and run.drift_threshold is None
    assert 0 < run.estimated_f1_low <= run.estimated_f1 <= run.estimated_f1_high < 1
    assert run.data_drift is False and run.first_batch is None and run.new_rows == 300
    assert [(row.name, row.status) for row in run.files] == [("current_a.csv", "unlabelled")]
    assert "no outcomes, so no model-drift test" in first.stderr and "model drift" not in run.decision
    assert final.read_bytes() == before and ranked(config)["count"] == active + 300
    answer = create_app(config, token="").test_client().get("/history?limit=1").get_json()["runs"][0]
    assert answer["estimated_f1"] == run.estimated_f1 and answer["new_data_f1"] is None

    idle = run_fullprocess(shipped)  # the unlabelled file was decided on: not new again
    assert idle.returncode == 0 and last_run(shipped).outcome == "no_new_data", idle.stderr

    # Outcomes for a stable batch fill the recent window; then a shifted batch without outcomes drifts,
    # and the challengers are trained on the labelled rows alone and judged on that window.
    write_batch(root / "sourceddata" / "labelled_b.csv", 2000, seed=42)
    assert run_fullprocess(shipped).returncode == 0
    assert last_run(shipped).new_data_f1 is not None
    training_rows_before = load_deployed_version(current_version_folder(config.prod_deployment_path)).model_info
    write_batch(root / "sourceddata" / "current_c.csv", 2000, seed=43, world="shifted", labelled=False)
    shifted = run_fullprocess(shipped)
    assert shifted.returncode == 0, shifted.stderr
    run = last_run(shipped)
    assert run.data_drift is True and run.drift_trigger.startswith("data drift (")
    assert run.new_data_f1 is None and run.model_drift is None and run.estimated_f1 is not None
    assert run.candidates and run.outcome in ("kept", "deployed")
    labelled_rows = len(final.read_text().splitlines()) - 1
    for candidate in run.candidates:
        assert candidate.rows <= labelled_rows
    assert "retraining on the labelled rows: data drift" in shifted.stderr
    assert training_rows_before.training_rows <= labelled_rows


@pytest.mark.slow
def test_fullprocess_with_retraining_on_model_drift_only_reports_unlabelled_data_drift(tmp_path, first_run_template):
    config_path = copy_first_run(first_run_template, tmp_path, retrain_on="model_drift")
    write_batch(tmp_path / "sourceddata" / "current.csv", 2000, seed=44, world="shifted", labelled=False)
    result = run_fullprocess(config_path)
    assert result.returncode == 0, result.stderr
    run = last_run(config_path)
    assert run.data_drift is True and run.drift_trigger is None and run.outcome == "kept"
    assert "but retrain_on is model_drift" in run.decision and run.estimated_f1 is not None


@pytest.mark.slow
def test_unlabelled_drift_with_no_labelled_rows_since_deployment_waits_for_outcomes(after_first_run):
    config_path = after_first_run
    # Right after the first deployment the recent window holds no held-out labelled row: a
    # challenger could not be judged, so drift seen in rows without outcomes changes nothing yet.
    write_batch(config_path.parent / "sourceddata" / "current.csv", 2000, seed=44, world="shifted", labelled=False)
    result = run_fullprocess(config_path)
    assert result.returncode == 0, result.stderr
    run = last_run(config_path)
    assert run.data_drift is True and run.outcome == "kept" and run.model_version_after == "v0001"
    assert "held-out labelled row(s) (at least 30 with both classes are needed" in run.decision
    assert not run.candidates and "keeps serving until outcomes arrive" in result.stderr
