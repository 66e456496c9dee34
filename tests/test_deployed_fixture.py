"""The ``deployed`` fixture and the first run's: copies of a project made once a session, each test's own and as
good as a fresh one."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from pathlib import Path

import pytest

from riskwatch.core.config import Config, load_config
from riskwatch.core.files import sha256_file
from riskwatch.stages.ingestion import ingest_folder
from riskwatch.state.artifacts import (
    FINAL_DATA,
    MODEL_FILE,
    current_version,
    current_version_folder,
    load_deployed_version,
)
from riskwatch.state.history import read_runs
from tests.fullprocess_runs import run_fullprocess
from tests.helpers import copy_project, deploy, train_and_score


def files_and_links(root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Each regular file's SHA-256 and each link's target, by path under ``root``."""
    files, links = {}, {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_symlink():
            links[name] = os.readlink(path)
        elif path.is_file():
            files[name] = sha256_file(path)
    return files, links


def test_the_copy_lies_in_tmp_path_and_names_nothing_of_the_template(deployed: Config, deployed_template: Path):
    root = deployed.path.parent
    assert root != deployed_template
    for folder in (deployed.input_folder_path, deployed.output_folder_path, deployed.prod_deployment_path):
        assert folder.parent == root
    template_name = str(deployed_template).encode()
    for path in root.rglob("*"):
        if path.is_symlink():
            assert not os.path.isabs(os.readlink(path)), path
            assert path.resolve().is_relative_to(root), path
        elif path.is_file():
            assert template_name not in path.read_bytes(), path
    assert str(root / "models" / MODEL_FILE) in (deployed.output_model_path / "metrics.json").read_text()
    assert current_version_folder(deployed.prod_deployment_path) == deployed.prod_deployment_path / "versions/v0001"
    assert load_deployed_version(current_version_folder(deployed.prod_deployment_path)).model is not None


def test_the_copy_is_recognised_as_ingested_so_nothing_is_new(deployed: Config):
    final = deployed.output_folder_path / FINAL_DATA
    before = (final.read_bytes(), final.stat().st_mtime_ns)
    result = ingest_folder(deployed.input_folder_path, deployed.output_folder_path)
    assert result.unchanged and result.batch == 0
    assert (final.read_bytes(), final.stat().st_mtime_ns) == before


def test_changes_to_a_copy_reach_neither_the_template_nor_the_next_copy(
    deployed: Config, deployed_template: Path, tmp_path: Path
):
    template_before = files_and_links(deployed_template)
    train_and_score(deployed, C=0.01)
    deploy(deployed)
    (deployed.input_folder_path / "clients_a.csv").write_text("changed\n", encoding="utf-8")
    assert current_version(deployed.prod_deployment_path) == "v0002"
    assert files_and_links(deployed_template) == template_before

    second = tmp_path / "second"
    copy_project(deployed_template, second)
    assert current_version(second / "production_deployment") == "v0001"
    files, links = files_and_links(second)
    assert links == template_before[1]
    assert files.keys() == template_before[0].keys()


def test_a_binary_file_that_names_the_template_is_refused_not_corrupted(tmp_path: Path):
    template = tmp_path / "template"
    template.mkdir()
    (template / "plot.png").write_bytes(b"\x89PNG\r\n\x1a\n\xff" + str(template).encode())
    with pytest.raises(ValueError, match="plot.png names the template's folder but is not text"):
        copy_project(template, tmp_path / "copy")


def test_a_sqlite_history_that_names_the_template_names_the_copy(tmp_path: Path):
    template, copy = tmp_path / "template", tmp_path / "copy"
    template.mkdir()
    with contextlib.closing(sqlite3.connect(template / "history.sqlite")) as database, database:
        database.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, details TEXT, seconds REAL)")
        database.execute("INSERT INTO runs VALUES (1, ?, 1.5)", (f'{{"pdf": "{template}/models/report.pdf"}}',))
    copy_project(template, copy)
    with contextlib.closing(sqlite3.connect(copy / "history.sqlite")) as database:
        assert database.execute("SELECT * FROM runs").fetchall() == [(1, f'{{"pdf": "{copy}/models/report.pdf"}}', 1.5)]
    with contextlib.closing(sqlite3.connect(template / "history.sqlite")) as database:
        assert str(template) in database.execute("SELECT details FROM runs").fetchone()[0]  # the template is as it was


@pytest.mark.slow
def test_a_copy_of_the_first_run_is_as_the_first_run_left_it(after_first_run: Path, first_run_template: Path):
    config = load_config(after_first_run)
    idle = run_fullprocess(after_first_run)  # the copy's bookkeeping knows its files: nothing is new
    assert idle.returncode == 0 and "no new data" in idle.stderr, idle.stderr
    first = read_runs(config.history_path, limit=2)[-1]
    assert first.outcome == "first_deployment" and first.model_version_after == "v0001"
    assert first.details["report"]["pdf"] == str(config.output_model_path / "summaryreport.pdf")
    assert str(first_run_template) not in json.dumps(first.details)
    assert load_deployed_version(current_version_folder(config.prod_deployment_path)).version == "v0001"
