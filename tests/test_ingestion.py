"""Ingestion: the bad-file table, row checks, deduplication, history and atomic outputs."""

from __future__ import annotations

import json
import logging
import random

import numpy as np
import pyarrow as pa
import pytest

from riskwatch.core.config import Config
from riskwatch.core.errors import PipelineError
from riskwatch.core.files import atomic_path, folder_lock
from riskwatch.core.rowhash import hash_strings
from riskwatch.core.schema import COLUMNS
from riskwatch.data.datafiles import read_data_file
from riskwatch.data.finaldata import drop_duplicate_rows
from riskwatch.stages.ingestion import ingest_folder
from riskwatch.state.artifacts import (
    FINAL_DATA,
    INGESTED_FILES,
    INGESTED_RECORD,
    INGESTION_REPORT,
    check_final_data,
    read_ingested_files,
    read_ingestion_report,
)
from tests.helpers import run_script, write_clients, write_config

HEADER = ",".join(COLUMNS) + "\n"

# name of the bad file, its bytes, and a fragment the one-line message must contain
BAD_FILES = [
    (
        "missing_column.csv",
        b"corporation,lastmonth_activity,lastyear_activity,exited\nab,1,2,0\n",
        "missing column number_of_employees",
    ),
    (
        "text_in_number.csv",
        (HEADER + "ab,12,300,4,0\ncd,lots,300,4,1\n").encode(),
        "column lastmonth_activity holds text where a number is expected",
    ),
    ("empty.csv", b"", "the file is empty"),
    ("header_only.csv", HEADER.encode(), "header but no data rows"),
    ("binary.csv", bytes(range(256)) * 8, "binary, not CSV text"),
    ("prose.csv", b"Dear team,\nplease find the numbers attached.\n", "not client-activity data"),
    ("latin1.csv", (HEADER + "caf").encode() + b"\xe9,1,2,3,0\n", "not UTF-8 text"),
    ("latin1_header.csv", b"corporation,lastmonth_activit\xe9\n", "header is not UTF-8"),
    ("utf16.csv", (HEADER + "ab,1,2,3,0\n").encode("utf-16"), "UTF-16"),
    ("broken.json", b'[{"corporation": "ab", ', "not valid JSON"),
    ("all_rows_bad.csv", (HEADER + "ab,-1,2,3,0\ncd,1,2,3,7\n").encode(), "none of its 2 rows is valid"),
    ("empty_list.json", b"[]", "holds no records"),
    ("not_records.json", b'{"corporation": "ab"}', "must be a list of records"),
    (
        "text.json",
        b'[{"corporation": "ab", "lastmonth_activity": "ten", "lastyear_activity": 1, '
        b'"number_of_employees": 1, "exited": 0}]',
        "column lastmonth_activity holds text where a number is expected",
    ),
    (
        "huge.json",
        b'[{"corporation": "ab", "lastmonth_activity": 1' + b"0" * 30 + b', "lastyear_activity": 1, '
        b'"number_of_employees": 1, "exited": 0}]',
        "none of its 1 rows is valid (1 count too large)",
    ),
    ("prose.json", b'[{"name": "ab"}]', "not client-activity data"),
]


def ingest_one_bad_file(config: Config, name: str, content: bytes):
    (config.input_folder_path / name).write_bytes(content)
    return ingest_folder(config.input_folder_path, config.output_folder_path)


@pytest.mark.parametrize(("name", "content", "message"), BAD_FILES, ids=[row[0] for row in BAD_FILES])
def test_bad_file_is_named_and_left_out_while_good_files_are_ingested(project, caplog, name, content, message):
    with caplog.at_level(logging.WARNING):
        result = ingest_one_bad_file(project, name, content)
    assert message in result.rejected[name]
    assert result.rejected[name].startswith(f"{name}: ")
    assert "\n" not in result.rejected[name]
    assert any(name in record.getMessage() and message in record.getMessage() for record in caplog.records)
    assert [entry.name for entry in result.files] == ["clients_a.csv", "clients_b.csv"]
    assert result.rows_written == 1000
    report = json.loads((project.output_folder_path / INGESTION_REPORT).read_text())
    assert name in report["rejected"]


def test_the_ingestion_report_is_typed_and_vouches_for_the_final_data(project):
    result = ingest_folder(project.input_folder_path, project.output_folder_path)
    report_path = project.output_folder_path / INGESTION_REPORT
    report = read_ingestion_report(report_path)
    assert [entry.name for entry in report.files] == ["clients_a.csv", "clients_b.csv"]
    assert report.files == result.files and report.rows_written == result.rows_written == 1000
    assert report.source == str(project.input_folder_path) and report.batch == 1
    assert check_final_data(project.output_folder_path) == report.finaldata_sha256
    # a report of an earlier version, with fewer keys, still reads; keys it lacks take their defaults
    report_path.write_text(json.dumps({"rows_merged": 1, "rows_written": 1, "input_folder": "x"}))
    older = read_ingestion_report(report_path)
    assert (older.rows_written, older.files, older.finaldata_sha256, older.source) == (1, [], None, "x")
    # an odd field or files entry is left out; the hash still vouches, or refuses, the final data
    vouched = {"files": [{"name": "a.csv"}], "batch": "one", "finaldata_sha256": "0" * 64}
    report_path.write_text(json.dumps(vouched))
    assert read_ingestion_report(report_path).batch == 0
    with pytest.raises(PipelineError, match="is not the file the last ingestion wrote"):
        check_final_data(project.output_folder_path)
    report_path.write_text("{not json")
    with pytest.raises(PipelineError, match=r"ingestion report .*ingestionreport.json cannot be read"):
        check_final_data(project.output_folder_path)


@pytest.mark.slow
def test_bad_file_through_the_command_line_exits_zero_and_names_it(project):
    (project.input_folder_path / "text_in_number.csv").write_text(HEADER + "ab,lots,1,1,0\n")
    done = run_script("ingestion.py", "--config", str(project.path))
    assert done.returncode == 0, done.stderr
    assert "text_in_number.csv: column lastmonth_activity holds text" in done.stderr
    assert len((project.output_folder_path / FINAL_DATA).read_text().splitlines()) == 1001


def test_invalid_rows_are_dropped_and_counted_never_imputed(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text(
        HEADER
        + "ok1,1,2,3,0\n"
        + "missing,,2,3,1\n"
        + "negative,-5,2,3,1\n"
        + "fraction,1.5,2,3,0\n"
        + "label,1,2,3,2\n"
        + " ,1,2,3,0\n"
        + "nan,NaN,2,3,0\n"
        + "inf,inf,2,3,0\n"
        + "short,1,2\n"
        + "both,-1.5,2,3,0\n"
        + "huge,1e20,2,3,0\n"
        + "ok2,1e3,20,3,1.0\n"
        + "NA,4,5,6,0\n"
    )
    parsed = read_data_file(path)
    assert parsed.table[COLUMNS[0]].to_pylist() == ["ok1", "ok2", "NA"]  # "NA" is an id, not a gap
    assert parsed.table["lastmonth_activity"].to_pylist() == [1, 1000, 4]
    assert parsed.table.schema.field("exited").type == pa.int64()
    assert parsed.rows_read == 13
    assert parsed.dropped == {
        "missing value": 3,
        "negative count": 2,
        "not a whole number": 2,
        "count too large": 1,
        "exited not 0 or 1": 1,
        "wrong number of fields": 1,
    }
    assert sum(parsed.dropped.values()) == parsed.rows_dropped


def test_columns_in_any_order_extra_columns_and_header_spacing(tmp_path):
    path = tmp_path / "shuffled.csv"
    path.write_text(
        " Exited ,note,number_of_employees,corporation,lastyear_activity,lastmonth_activity\n1,hi,3,ab,2,1\n"
    )
    parsed = read_data_file(path)
    assert parsed.table.column_names == list(COLUMNS)
    assert parsed.table.to_pylist() == [
        {"corporation": "ab", "lastmonth_activity": 1, "lastyear_activity": 2, "number_of_employees": 3, "exited": 1}
    ]


def test_json_and_json_lines_records_are_ingested(project):
    record = {
        "corporation": "js1",
        "lastmonth_activity": 5,
        "lastyear_activity": 50,
        "number_of_employees": 2,
        "exited": 1,
    }
    (project.input_folder_path / "records.json").write_text(json.dumps([record, {**record, "corporation": "js2"}]))
    (project.input_folder_path / "records.jsonl").write_text(json.dumps({**record, "corporation": "js3"}) + "\n")
    result = ingest_folder(project.input_folder_path, project.output_folder_path)
    assert result.rows_written == 1003
    assert "js3" in (project.output_folder_path / FINAL_DATA).read_text()


def test_stray_files_are_ignored(project):
    for name in (".DS_Store", "notes.txt", "clients_a.csv~", "clients_a.csv.bak"):
        (project.input_folder_path / name).write_text("junk")
    result = ingest_folder(project.input_folder_path, project.output_folder_path)
    assert sorted(result.ignored) == sorted([".DS_Store", "notes.txt", "clients_a.csv~", "clients_a.csv.bak"])
    assert not result.rejected


def test_duplicate_rows_across_files_are_removed_keeping_the_first(project):
    lines = (project.input_folder_path / "clients_a.csv").read_text().splitlines()
    (project.input_folder_path / "zz_repeat.csv").write_text("\n".join([lines[0], *lines[1:11], lines[1]]) + "\n")
    result = ingest_folder(project.input_folder_path, project.output_folder_path)
    assert result.duplicates_removed == 11
    written = (project.output_folder_path / FINAL_DATA).read_text().splitlines()
    assert written[0] == ",".join(COLUMNS)
    assert len(written) - 1 == len(set(written[1:])) == 1000
    assert written[1:11] == lines[1:11]


def test_a_copy_of_a_file_under_another_name_counts_once(project):
    (project.input_folder_path / "copy_of_a.csv").write_bytes(
        (project.input_folder_path / "clients_a.csv").read_bytes()
    )
    result = ingest_folder(project.input_folder_path, project.output_folder_path)
    assert [entry.name for entry in result.files] == ["clients_a.csv", "clients_b.csv", "copy_of_a.csv"]
    assert result.rows_merged == result.rows_written == 1000


def reference_deduplicate(rows: list[tuple]) -> list[tuple]:
    seen, kept = set(), []
    for row in rows:
        if row not in seen:
            seen.add(row)
            kept.append(row)
    return kept


def test_drop_duplicate_rows_matches_a_plain_python_reference():
    rng = random.Random(7)
    ids = ["a", "b", "é", "ab", "ba", "ü日本", "x" * 40]
    rows = [
        (rng.choice(ids), rng.randint(0, 3), rng.randint(0, 2), rng.randint(0, 2), rng.randint(0, 1))
        for _ in range(5000)
    ]
    table = pa.table({name: [row[i] for row in rows] for i, name in enumerate(COLUMNS)})
    deduplicated, removed = drop_duplicate_rows(table)
    expected = reference_deduplicate(rows)
    assert list(zip(*(deduplicated[name].to_pylist() for name in COLUMNS), strict=True)) == expected
    assert removed == len(rows) - len(expected)


def test_hash_strings_tells_apart_order_length_and_empty():
    values = pa.array(["ab", "ba", "", "a", "abc", "ab", "日本", "x" * 300, "x" * 299 + "y", "x" * 300])
    hashes = hash_strings(values)
    assert hashes[0] == hashes[5] and hashes[7] == hashes[9]
    assert len(set(hashes[[0, 1, 2, 3, 4, 6, 7, 8]].tolist())) == 8
    assert np.array_equal(hash_strings(values.slice(1, 3)), hashes[1:4])


def test_ingested_files_holds_one_file_name_a_line_and_the_record_beside_it_the_rest(project):
    ingest_folder(project.input_folder_path, project.output_folder_path)
    assert (project.output_folder_path / INGESTED_FILES).read_text() == "clients_a.csv\nclients_b.csv\n"
    entries = read_ingested_files(project.output_folder_path / INGESTED_FILES)
    assert list(entries) == ["clients_a.csv", "clients_b.csv"]
    assert entries["clients_a.csv"].rows_kept == 600
    assert len(entries["clients_a.csv"].sha256) == 64
    record = json.loads((project.output_folder_path / INGESTED_RECORD).read_text())
    assert record["input_folder_path"] == "../sourceddata"  # relative to the output folder: a moved project keeps it
    assert [item["name"] for item in record["files"]] == ["clients_a.csv", "clients_b.csv"]


def test_a_classic_ingested_files_list_without_a_record_knows_no_content(project):
    (project.output_folder_path).mkdir()
    (project.output_folder_path / INGESTED_FILES).write_text("clients_a.csv\nclients_b.csv\n")
    assert read_ingested_files(project.output_folder_path / INGESTED_FILES) == {}
    assert ingest_folder(project.input_folder_path, project.output_folder_path).rows_written == 1000


def test_the_earlier_tab_separated_layout_is_still_read(project):
    ingest_folder(project.input_folder_path, project.output_folder_path)
    entries = read_ingested_files(project.output_folder_path / INGESTED_FILES)
    lines = [
        "\t".join([entry.name, *(f"{key}={value}" for key, value in vars(entry).items() if key != "name")])
        for entry in entries.values()
    ]
    (project.output_folder_path / INGESTED_RECORD).unlink()
    (project.output_folder_path / INGESTED_FILES).write_text("\n".join(lines) + "\n")
    assert read_ingested_files(project.output_folder_path / INGESTED_FILES) == entries


def test_a_name_the_record_does_not_describe_is_read_again(project, caplog):
    ingest_folder(project.input_folder_path, project.output_folder_path)
    (project.output_folder_path / INGESTED_FILES).write_text("clients_a.csv\nclients_b.csv\nhand_added.csv\n")
    with caplog.at_level(logging.INFO):
        entries = read_ingested_files(project.output_folder_path / INGESTED_FILES)
    assert list(entries) == ["clients_a.csv", "clients_b.csv"]
    assert "'hand_added.csv' carries no content hash" in caplog.text


def test_a_new_input_folder_with_the_same_output_starts_from_its_files(project, caplog):
    practice = project.path.parent / "practicedata"
    write_clients(practice / "dataset1.csv", 300, seed=11)
    ingest_folder(practice, project.output_folder_path)
    with caplog.at_level(logging.INFO):
        result = ingest_folder(project.input_folder_path, project.output_folder_path)
    assert [entry.name for entry in result.files] == ["clients_a.csv", "clients_b.csv"]
    assert result.rows_written == 1000 and result.kept_from_history == []
    assert f"the input folder is now {project.input_folder_path} (was {practice})" in caplog.text
    (project.input_folder_path / "clients_b.csv").unlink()  # the same folder again: its vanished file keeps its rows
    assert ingest_folder(project.input_folder_path, project.output_folder_path).kept_from_history == ["clients_b.csv"]


def test_a_file_that_turns_bad_keeps_its_earlier_rows(project):
    first = ingest_folder(project.input_folder_path, project.output_folder_path)
    (project.input_folder_path / "clients_b.csv").write_text(HEADER + "broken,many,1,1,0\n")
    second = ingest_folder(project.input_folder_path, project.output_folder_path)
    assert "clients_b.csv" in second.rejected
    assert second.kept_from_history == ["clients_b.csv"]
    assert second.rows_written == first.rows_written == 1000


def test_a_file_removed_from_the_input_folder_keeps_its_rows(project):
    ingest_folder(project.input_folder_path, project.output_folder_path)
    (project.input_folder_path / "clients_b.csv").unlink()
    result = ingest_folder(project.input_folder_path, project.output_folder_path)
    assert result.rows_written == 1000
    assert ingest_folder(project.input_folder_path, project.output_folder_path, fresh=True).rows_written == 600


def test_a_file_edited_in_place_replaces_its_old_rows(project):
    ingest_folder(project.input_folder_path, project.output_folder_path)
    write_clients(project.input_folder_path / "clients_b.csv", 50, seed=99)
    result = ingest_folder(project.input_folder_path, project.output_folder_path)
    assert result.rows_written == 650
    assert read_ingested_files(project.output_folder_path / INGESTED_FILES)["clients_b.csv"].rows_kept == 50


def test_a_renamed_unchanged_file_is_not_parsed_again(project, monkeypatch):
    ingest_folder(project.input_folder_path, project.output_folder_path)
    (project.input_folder_path / "clients_b.csv").rename(project.input_folder_path / "clients_b_renamed.csv")
    from riskwatch.stages import ingestion_reading

    monkeypatch.setattr(
        ingestion_reading, "stream_data_file", lambda *_: pytest.fail("an unchanged file was parsed again")
    )
    result = ingest_folder(project.input_folder_path, project.output_folder_path)
    assert [entry.name for entry in result.files] == ["clients_a.csv", "clients_b_renamed.csv"]
    assert result.rows_written == 1000


def test_a_file_that_turns_bad_with_its_cached_rows_gone_stops_the_run(project):
    ingest_folder(project.input_folder_path, project.output_folder_path)
    before = (project.output_folder_path / FINAL_DATA).read_bytes()
    for cached in (project.output_folder_path / "parsed").glob("*.arrow"):
        cached.unlink()
    (project.input_folder_path / "clients_b.csv").write_text(HEADER + "broken,many,1,1,0\n")
    with pytest.raises(PipelineError, match="clients_b.csv: .*its rows ingested on .* are missing .*--fresh"):
        ingest_folder(project.input_folder_path, project.output_folder_path)
    assert (project.output_folder_path / FINAL_DATA).read_bytes() == before
    assert ingest_folder(project.input_folder_path, project.output_folder_path, fresh=True).rows_written == 600


def test_a_second_ingestion_into_the_same_folder_is_refused(project):
    with folder_lock(project.output_folder_path, "ingestion"), pytest.raises(PipelineError, match="another ingestion"):
        ingest_folder(project.input_folder_path, project.output_folder_path)


def test_no_usable_file_fails_and_leaves_earlier_outputs_untouched(project):
    ingest_folder(project.input_folder_path, project.output_folder_path)
    before = (project.output_folder_path / FINAL_DATA).read_bytes()
    empty_input = project.input_folder_path.parent / "empty_input"
    empty_input.mkdir()
    (empty_input / "bad.csv").write_text("nothing here\n")
    with pytest.raises(PipelineError, match=r"no usable data .*bad\.csv: not client-activity data"):
        ingest_folder(empty_input, project.output_folder_path, fresh=True)
    assert (project.output_folder_path / FINAL_DATA).read_bytes() == before


@pytest.mark.slow
def test_missing_input_folder_exits_nonzero_with_one_sentence(tmp_path):
    config = write_config(tmp_path)
    done = run_script("ingestion.py", "--config", str(config))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert "ingestion failed: input folder" in done.stderr and "does not exist" in done.stderr


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "finaldata.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("crash while writing")
    assert target.read_text() == "old\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["finaldata.csv"]


def fresh_copy(project: Config, tmp_path) -> bytes:
    """finaldata.csv as a full rebuild from the same files (whose names sort in arrival order) writes it."""
    result = ingest_folder(project.input_folder_path, tmp_path / "rebuilt")
    assert not result.appended
    return (tmp_path / "rebuilt" / FINAL_DATA).read_bytes()


def test_new_files_are_appended_and_equal_a_full_rebuild(project, tmp_path):
    first = ingest_folder(project.input_folder_path, project.output_folder_path)
    assert not first.appended
    old_rows = (project.input_folder_path / "clients_a.csv").read_text().splitlines()[1:40]
    new_rows = write_clients(tmp_path / "c.csv", 300, seed=9).read_text().splitlines()
    # a later file that repeats rows ingested before and repeats some of its own
    (project.input_folder_path / "clients_c.csv").write_text("\n".join(new_rows + old_rows + new_rows[1:6]) + "\n")
    second = ingest_folder(project.input_folder_path, project.output_folder_path)
    assert second.appended
    assert second.rows_written == first.rows_written + 300
    assert second.duplicates_removed == first.duplicates_removed + 39 + 5
    assert (project.output_folder_path / FINAL_DATA).read_bytes() == fresh_copy(project, tmp_path)
    report = json.loads((project.output_folder_path / INGESTION_REPORT).read_text())
    assert report["appended"] is True and report["rows_written"] == second.rows_written


def test_a_renamed_file_keeps_its_place_and_new_files_still_append(project, tmp_path):
    ingest_folder(project.input_folder_path, project.output_folder_path)
    (project.input_folder_path / "clients_a.csv").rename(project.input_folder_path / "clients_z.csv")
    write_clients(project.input_folder_path / "clients_b2.csv", 100, seed=12)
    result = ingest_folder(project.input_folder_path, project.output_folder_path)
    assert result.appended
    assert [entry.name for entry in result.files] == ["clients_z.csv", "clients_b.csv", "clients_b2.csv"]


def test_an_output_changed_behind_ingestions_back_is_rebuilt_not_appended(project):
    ingest_folder(project.input_folder_path, project.output_folder_path)
    final = project.output_folder_path / FINAL_DATA
    text = final.read_text()
    final.write_text(text)  # same content, new file: the index no longer vouches for it
    write_clients(project.input_folder_path / "clients_c.csv", 100, seed=13)
    result = ingest_folder(project.input_folder_path, project.output_folder_path)
    assert not result.appended
    assert result.rows_written == len(final.read_text().splitlines()) - 1


def test_an_edited_file_rebuilds(project):
    ingest_folder(project.input_folder_path, project.output_folder_path)
    with open(project.input_folder_path / "clients_a.csv", "a") as handle:
        handle.write("zzzzzz,1,2,3,0\n")
    result = ingest_folder(project.input_folder_path, project.output_folder_path)
    assert not result.appended and "zzzzzz,1,2,3,0" in (project.output_folder_path / FINAL_DATA).read_text()


def test_appending_ids_that_need_quotes_to_unquoted_output_rebuilds_the_same_file(project, tmp_path):
    ingest_folder(project.input_folder_path, project.output_folder_path)
    (project.input_folder_path / "clients_c.csv").write_text(HEADER + '"acme, inc",1,2,3,0\nplain,4,5,6,1\n')
    result = ingest_folder(project.input_folder_path, project.output_folder_path)
    assert not result.appended
    assert (project.output_folder_path / FINAL_DATA).read_bytes() == fresh_copy(project, tmp_path)
    write_clients(project.input_folder_path / "clients_d.csv", 50, seed=21)
    quoted = ingest_folder(project.input_folder_path, project.output_folder_path)
    assert quoted.appended  # the output quotes its ids now, so rows can be appended quoted too
    assert (project.output_folder_path / FINAL_DATA).read_bytes() == fresh_copy(project, tmp_path / "again")


def test_a_damaged_row_index_is_rebuilt_and_counts_survive_a_stale_report(project):
    first = ingest_folder(project.input_folder_path, project.output_folder_path)
    index = project.output_folder_path / "parsed" / "rowindex-v2.npz"
    index.write_bytes(index.read_bytes()[:100])
    write_clients(project.input_folder_path / "clients_c.csv", 100, seed=13)
    second = ingest_folder(project.input_folder_path, project.output_folder_path)
    assert not second.appended and second.rows_written == first.rows_written + 100
    (project.output_folder_path / INGESTION_REPORT).write_text(json.dumps({"rows_merged": 1, "rows_written": 1}))
    write_clients(project.input_folder_path / "clients_d.csv", 100, seed=14)
    third = ingest_folder(project.input_folder_path, project.output_folder_path)
    assert third.appended and third.rows_written == second.rows_written + 100
    assert third.rows_merged == second.rows_merged + 100
