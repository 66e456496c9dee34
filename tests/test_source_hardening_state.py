"""What is ingested now decides what is new: restored files, flipped labels (fullprocess.py's cheap check agrees)."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from riskwatch.core.config import Config
from riskwatch.cycle.fullprocess import check_for_new_data
from riskwatch.stages.ingestion import ingest_folder
from riskwatch.state.artifacts import current_version
from riskwatch.state.history import open_history
from riskwatch.state.stages import StageClock
from tests.helpers import write_clients


def new_files(config: Config) -> list[tuple[str, str]]:
    """The files the monitoring job's cheap check finds new, with their status."""
    version = current_version(config.prod_deployment_path)
    with contextlib.closing(open_history(config.history_path)) as connection:
        check = check_for_new_data(config, connection, version, StageClock())
    return [(item.name, item.status) for item in check.new.files]


def test_a_file_restored_to_its_deployed_content_is_new_again_and_ingested(deployed: Config, tmp_path: Path):
    source = deployed.input_folder_path / "clients_a.csv"
    original = shutil.copy(source, tmp_path / "original.csv")
    final = deployed.output_folder_path / "finaldata.csv"
    before = final.read_bytes()
    write_clients(source, 300, seed=9)  # edited in place, and ingested (as a run would)
    assert new_files(deployed) == [("clients_a.csv", "edited")]
    ingest_folder(deployed.input_folder_path, deployed.output_folder_path)
    assert final.read_bytes() != before
    shutil.copy(original, source)  # restored
    assert new_files(deployed) == [("clients_a.csv", "edited")]
    ingest_folder(deployed.input_folder_path, deployed.output_folder_path)
    assert final.read_bytes() == before
    assert new_files(deployed) == []


def test_a_file_flipped_to_unlabelled_and_back_gets_its_labelled_rows_back(deployed: Config, tmp_path: Path):
    source = deployed.input_folder_path / "clients_b.csv"
    labelled = source.read_text(encoding="utf-8")
    final = deployed.output_folder_path / "finaldata.csv"
    before = final.read_bytes()
    unlabelled = "\n".join(line.rsplit(",", 1)[0] for line in labelled.splitlines()) + "\n"
    source.write_text(unlabelled, encoding="utf-8")
    ingest_folder(deployed.input_folder_path, deployed.output_folder_path)
    assert final.read_bytes() != before
    source.write_text(labelled, encoding="utf-8")
    assert new_files(deployed) == [("clients_b.csv", "edited")]
    ingest_folder(deployed.input_folder_path, deployed.output_folder_path)
    assert final.read_bytes() == before
