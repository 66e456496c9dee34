"""What an attack on the data folders found, kept found: one bad file is one bad file, caches are caches,
the data folder is a trust boundary, and values have bounds."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

import pytest

from riskwatch.core.config import Config
from riskwatch.core.schema import MAX_ID_LENGTH
from riskwatch.data.batches import read_ingested_data
from riskwatch.data.finaldata import PARSED_FOLDER
from riskwatch.stages import ingestion_reading
from riskwatch.stages.diagnostics import SCRATCH_PREFIX, clean_stale_scratch
from riskwatch.stages.ingestion import ingest_folder
from riskwatch.state.artifacts import FINAL_DATA
from tests.helpers import write_clients

HEADER = "corporation,lastmonth_activity,lastyear_activity,number_of_employees,exited\n"


def ingest(project: Config, caplog: pytest.LogCaptureFixture | None = None):
    if caplog is not None:
        caplog.set_level(logging.INFO)
    return ingest_folder(project.input_folder_path, project.output_folder_path)


def test_an_overlong_id_is_a_bad_row_counted_and_never_written(project: Config):
    (project.input_folder_path / "long.csv").write_text(HEADER + f"{'x' * 2_000_000},1,2,3,0\nacme,1,2,3,0\n")
    result = ingest(project)
    entry = next(entry for entry in result.files if entry.name == "long.csv")
    assert (entry.rows_kept, entry.rows_dropped) == (1, 1)
    assert max(len(line) for line in (project.output_folder_path / FINAL_DATA).read_text().splitlines()) < MAX_ID_LENGTH
    read_ingested_data(project.output_folder_path)  # and training reads it back


def test_an_id_with_a_quoted_line_break_is_a_bad_row(project: Config):
    (project.input_folder_path / "breaks.csv").write_text(HEADER + '"acme\ninc 1-001362",1,2,3,0\nbeta,4,5,6,1\n')
    result = ingest(project)
    entry = next(entry for entry in result.files if entry.name == "breaks.csv")
    assert (entry.rows_kept, entry.rows_dropped) == (1, 1)
    ids = set(read_ingested_data(project.output_folder_path).table["corporation"].to_pylist())
    assert "beta" in ids and not any("\n" in value or value.endswith('"') for value in ids)


def test_a_damaged_cache_is_set_aside_and_rebuilt_from_its_file(project: Config, caplog):
    first = ingest(project)
    cache = next((project.output_folder_path / PARSED_FOLDER).glob("*.arrow"))
    cache.write_bytes(cache.read_bytes()[:100])  # truncated
    write_clients(project.input_folder_path / "clients_c.csv", 50, seed=9)
    again = ingest(project, caplog)
    assert again.rows_written == first.rows_written + 50
    assert "cannot be read" in caplog.text and (cache.parent / (cache.name + ".damaged")).exists()


def test_links_out_of_the_data_folder_are_not_followed_and_nothing_of_them_is_echoed(
    project: Config, tmp_path: Path, caplog
):
    secret = tmp_path / "outside" / "secret.csv"
    write_clients(secret, 20, seed=5)
    with open(secret, "a") as handle:
        handle.write("topsecret,1,2,3,0\n")
    (project.input_folder_path / "linked.csv").symlink_to(secret)
    os.link(secret, project.input_folder_path / "hardlinked.csv")
    result = ingest(project, caplog)
    assert {"linked.csv", "hardlinked.csv"} <= set(result.rejected)
    assert "link to a file outside" in result.rejected["linked.csv"]
    assert "other hard links" in result.rejected["hardlinked.csv"]
    assert "topsecret" not in caplog.text and "topsecret" not in (project.output_folder_path / FINAL_DATA).read_text()
    assert result.rows_written == 1000  # the good files went on


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        (
            "surrogate.json",
            '[{"corporation": "\\ud800", "lastmonth_activity": 1, "lastyear_activity": 2, '
            '"number_of_employees": 3, "exited": 0}]',
            "surrogate.json: ",
        ),
        (
            "huge.json",
            '[{"corporation": "a", "lastmonth_activity": ' + "9" * 5000 + ', "lastyear_activity": 2, '
            '"number_of_employees": 3, "exited": 0}]',
            "huge.json: ",
        ),
    ],
)
def test_a_file_that_breaks_the_reader_is_named_and_the_others_go_on(project: Config, name, content, expected):
    (project.input_folder_path / name).write_text(content)
    result = ingest(project)
    if name in result.rejected:
        assert result.rejected[name].startswith(expected)
    else:  # read, with the bad row dropped and counted
        entry = next(entry for entry in result.files if entry.name == name)
        assert entry.rows_kept == 0 or entry.rows_dropped == 1
    assert result.rows_written >= 1000


def test_entries_that_are_not_plain_files_or_have_unusable_names_are_named(project: Config, caplog):
    (project.input_folder_path / "folder.csv").mkdir()
    os.mkfifo(project.input_folder_path / "pipe.csv")
    write_clients(project.input_folder_path / "line\nbreak.csv", 10, seed=6)
    bad_name = os.fsencode(project.input_folder_path) + b"/caf\xe9.csv"
    with open(bad_name, "w") as handle:
        handle.write(HEADER + "acme,1,2,3,0\n")
    result = ingest(project, caplog)
    assert "not a regular file" in result.rejected["folder.csv"]
    assert "not a regular file" in result.rejected["pipe.csv"]
    assert "line break" in result.rejected["'line\\nbreak.csv'"]
    assert "not UTF-8" in result.rejected["caf\\xe9.csv"]
    assert result.rows_written == 1000
    lines = (project.output_folder_path / "ingestedfiles.txt").read_text().splitlines()
    assert len(lines) == 2  # the two good files, one line each


def test_a_new_file_changed_within_the_settle_time_waits_and_an_edit_keeps_the_earlier_rows(project: Config):
    first = ingest(project)
    write_clients(project.input_folder_path / "arriving.csv", 80, seed=11)
    waiting = ingest_folder(project.input_folder_path, project.output_folder_path, settle_seconds=60)
    assert waiting.arriving == ["arriving.csv"] and "arriving.csv" not in waiting.rejected
    assert waiting.rows_written == first.rows_written  # nothing of it read
    edited = project.input_folder_path / "clients_a.csv"  # an edit still being written keeps the rows read before
    edited.write_text(edited.read_text() + "late-client,1,2,3,0\n")
    again = ingest_folder(project.input_folder_path, project.output_folder_path, settle_seconds=60)
    assert set(again.arriving) == {"arriving.csv", "clients_a.csv"} and "clients_a.csv" in again.kept_from_history
    old = time.time() - 120
    for path in (project.input_folder_path / "arriving.csv", edited):
        os.utime(path, (old, old))
    settled = ingest_folder(project.input_folder_path, project.output_folder_path, settle_seconds=60)
    assert settled.arriving == [] and settled.rows_written == first.rows_written + 81


def test_a_file_that_changes_while_it_is_read_is_left_for_a_later_run(project: Config, monkeypatch):
    ingest(project)
    growing = write_clients(project.input_folder_path / "growing.csv", 50, seed=12)
    real_parse = ingestion_reading.parse_new_file

    def parse_then_grow(path: Path, sha256: str, output_folder_path: Path, *more):
        parsed = real_parse(path, sha256, output_folder_path, *more)
        with open(growing, "a") as handle:  # the copy goes on while the rows are read
            handle.write("more-client,1,2,3,0\n")
        return parsed

    monkeypatch.setattr(ingestion_reading, "parse_new_file", parse_then_grow)
    result = ingest(project)
    assert result.arriving == ["growing.csv"] and not list((project.output_folder_path / PARSED_FOLDER).glob("*.tmp*"))
    monkeypatch.setattr(ingestion_reading, "parse_new_file", real_parse)
    assert ingest(project).arriving == []  # unchanged since: read now, whole


def test_a_count_from_2_to_the_53_on_is_a_bad_row_not_a_rounded_one(project: Config):
    (project.input_folder_path / "big.csv").write_text(HEADER + f"big-a,1,{2**53 + 1},3,0\nbig-b,1,{2**53 - 1},3,0\n")
    result = ingest(project)
    entry = next(entry for entry in result.files if entry.name == "big.csv")
    assert (entry.rows_kept, entry.rows_dropped) == (1, 1)
    assert f"big-b,1,{2**53 - 1},3,0" in (project.output_folder_path / FINAL_DATA).read_text()


def test_a_10000_column_file_and_a_line_over_1_mib_get_plain_messages(project: Config):
    wide = HEADER.strip() + "," + ",".join(f"extra{i}" for i in range(10_000)) + "\n"
    (project.input_folder_path / "wide.csv").write_text(wide + "acme,1,2,3,0," + ",".join("1" * 10_000) + "\n")
    (project.input_folder_path / "longheader.csv").write_text(
        HEADER.strip() + "," + "x" * 1_200_000 + "\nacme,1,2,3,0,1\n"
    )
    result = ingest(project)
    assert next(entry for entry in result.files if entry.name == "wide.csv").rows_kept == 1  # extra columns ignored
    assert (
        result.rejected["longheader.csv"]
        == "longheader.csv: a line is longer than the 1 MiB a line of client data may be"
    )


def test_scratch_folders_of_killed_timing_runs_are_cleared(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stale, live = tmp_path / f"{SCRATCH_PREFIX}killed", tmp_path / f"{SCRATCH_PREFIX}running"
    stale.mkdir()
    live.mkdir()
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    clean_stale_scratch()
    assert not stale.exists() and live.exists()
