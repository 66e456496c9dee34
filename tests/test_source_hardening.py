"""The source bookkeeping under attack: no row lost, nothing silent (files, config and names)."""

from __future__ import annotations

import json

import pytest

from riskwatch.core.config import load_config
from riskwatch.core.databases import check_identifier
from riskwatch.core.errors import PipelineError
from riskwatch.stages.ingestion import ingest_folder
from tests.helpers import write_clients, write_config


@pytest.mark.parametrize("output", ["sourceddata", "sourceddata/ingested"])
def test_an_output_folder_at_or_inside_the_input_folder_is_refused_naming_both_keys(tmp_path, output):
    with pytest.raises(PipelineError) as caught:
        load_config(write_config(tmp_path, output_folder_path=output))
    message = str(caught.value)
    assert "'output_folder_path'" in message and "'input_folder_path'" in message
    assert len(message.splitlines()) == 1


def test_an_output_folder_beside_the_input_folder_is_accepted(tmp_path):
    config = load_config(write_config(tmp_path, output_folder_path="sourceddata-ingested"))
    assert config.output_folder_path == tmp_path / "sourceddata-ingested"


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c"])
def test_a_file_name_with_a_line_separator_is_refused_and_ingestedfiles_stays_one_name_a_line(tmp_path, separator):
    config = load_config(write_config(tmp_path))
    write_clients(config.input_folder_path / "clients_a.csv", 50, seed=1)
    write_clients(config.input_folder_path / f"odd{separator}name.csv", 50, seed=2)
    result = ingest_folder(config.input_folder_path, config.output_folder_path)
    assert [entry.name for entry in result.files] == ["clients_a.csv"]
    assert any("line break" in reason for reason in result.rejected.values())
    lines = (config.output_folder_path / "ingestedfiles.txt").read_text(encoding="utf-8").splitlines()
    assert lines == ["clients_a.csv"]


@pytest.mark.parametrize("name", ["clients\n", "clients\r\n", "public.clients\n", "clients\u2028"])
def test_an_identifier_with_a_trailing_newline_is_refused(name):
    with pytest.raises(PipelineError, match="plain SQL name"):
        check_identifier(name, "input_database_table", qualified=True)


def test_a_file_whose_exited_column_is_blank_is_read_as_unlabelled(tmp_path):
    config = load_config(write_config(tmp_path))
    write_clients(config.input_folder_path / "clients_a.csv", 50, seed=1)
    pending = "corporation,lastmonth_activity,lastyear_activity,number_of_employees,exited\nabc,1,2,3,\nxyz,4,5,6,\n"
    (config.input_folder_path / "pending.csv").write_text(pending, encoding="utf-8")
    records = '[{"corporation": "q1", "lastmonth_activity": 1, "lastyear_activity": 2, "number_of_employees": 3, '
    records += '"exited": null}, {"corporation": "q2", "lastmonth_activity": 1, "lastyear_activity": 2, '
    records += '"number_of_employees": 3, "exited": ""}]'
    (config.input_folder_path / "pending.json").write_text(records, encoding="utf-8")
    result = ingest_folder(config.input_folder_path, config.output_folder_path)
    assert result.rejected == {}
    assert sorted(entry.name for entry in result.unlabelled) == ["pending.csv", "pending.json"]
    assert all(entry.rows_kept == 2 for entry in result.unlabelled)
    assert result.unlabelled_clients == 4


def test_json_ids_that_are_objects_lists_booleans_or_fractions_are_bad_rows_counted(tmp_path):
    config = load_config(write_config(tmp_path))
    features = '"lastmonth_activity": 1, "lastyear_activity": 2, "number_of_employees": 3, "exited": 0'
    ids = ['"text"', "7", "8.0", '{"a": 1}', "true", "[1]", "1.5"]
    records = ",".join(f'{{"corporation": {value}, {features}}}' for value in ids)
    (config.input_folder_path).mkdir(parents=True)
    (config.input_folder_path / "ids.json").write_text(f"[{records}]", encoding="utf-8")
    result = ingest_folder(config.input_folder_path, config.output_folder_path)
    (entry,) = result.files
    assert (entry.rows_kept, entry.rows_dropped) == (3, 4)
    written = (config.output_folder_path / "finaldata.csv").read_text(encoding="utf-8").splitlines()
    assert [line.split(",")[0] for line in written[1:]] == ["text", "7", "8"]


def test_blank_outcomes_in_a_file_that_labels_other_rows_are_counted_as_pending_not_as_missing(tmp_path):
    from riskwatch.core.schema import PENDING_OUTCOME
    from riskwatch.data.datafiles import read_data_file

    path = tmp_path / "mixed.csv"
    header = "corporation,lastmonth_activity,lastyear_activity,number_of_employees,exited\n"
    path.write_text(header + "a,1,2,3,0\nb,1,2,3,\nc,,2,3,\nd,1,2,3,1\n", encoding="utf-8")
    parsed = read_data_file(path, allow_unlabelled=True)
    assert parsed.labelled and parsed.rows_kept == 2
    assert parsed.dropped == {"missing value": 1, PENDING_OUTCOME: 1}


@pytest.mark.parametrize("suffix", [".csv", ".json", ".jsonl"])
def test_blank_outcomes_beside_labelled_rows_are_current_clients_and_never_trained_on(tmp_path, suffix):
    config = load_config(write_config(tmp_path))
    config.input_folder_path.mkdir(parents=True)
    write_clients(config.input_folder_path / "a_clients.csv", 200, seed=5)
    rows = [("known", 1, 2, 3, 0), ("pending", 4, 5, 6, None), ("bad", -1, 5, 6, None), ("gone", 7, 8, 9, 1)]
    names = ("corporation", "lastmonth_activity", "lastyear_activity", "number_of_employees", "exited")
    path = config.input_folder_path / f"b_mixed{suffix}"
    if suffix == ".csv":
        lines = [",".join(names)] + [",".join("" if value is None else str(value) for value in row) for row in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        records = [dict(zip(names, row, strict=True)) for row in rows]
        body = "\n".join(json.dumps(item) for item in records) if suffix == ".jsonl" else json.dumps(records)
        path.write_text(body, encoding="utf-8")
    result = ingest_folder(config.input_folder_path, config.output_folder_path)
    entry = next(item for item in result.files if item.name == path.name)
    assert (entry.labelled, entry.rows_kept, entry.rows_pending, entry.rows_dropped) == (True, 2, 1, 1)
    final = (config.output_folder_path / "finaldata.csv").read_text(encoding="utf-8").splitlines()
    assert [line.split(",")[0] for line in final[-2:]] == ["known", "gone"]
    assert not any(line.startswith("pending,") for line in final)
    unlabelled = (config.output_folder_path / "unlabelledclients.csv").read_text(encoding="utf-8").splitlines()
    assert unlabelled[1:] == ["pending,4,5,6,202"]  # arrived after the 200 + 2 labelled rows
    again = ingest_folder(config.input_folder_path, config.output_folder_path)  # from the cached rows
    assert again.unchanged and again.unlabelled_clients == 1


def test_a_json_array_saved_with_a_byte_order_mark_is_read_whole(tmp_path):
    from riskwatch.data.datafiles import read_data_file

    names = ("corporation", "lastmonth_activity", "lastyear_activity", "number_of_employees", "exited")
    records = [dict(zip(names, (f"client{n}", n, 2 * n, 3, n % 2), strict=True)) for n in range(300)]
    path = tmp_path / "exported.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(records).encode())  # longer than the 4 KiB first read
    assert read_data_file(path).rows_kept == 300
