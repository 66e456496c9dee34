"""fullprocess.py with a SQLite table as its source: the cheap check, new rows, an unreachable database."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from riskwatch.core.config import load_config
from riskwatch.data.generator import load_into_database, write_batch, write_shipped_data
from riskwatch.state.artifacts import current_version
from riskwatch.state.history import read_runs
from tests.fullprocess_runs import database_config, no_op_probe, run_fullprocess
from tests.helpers import PROJECT_ROOT

pytestmark = pytest.mark.slow


@pytest.fixture
def sqlite_shipped(tmp_path: Path) -> Path:
    """The shipped data loaded into clients.sqlite, and a config reading it (no input folder)."""
    write_shipped_data(tmp_path)
    load_into_database(
        f"sqlite:///{tmp_path / 'clients.sqlite'}", "client_activity", sorted((tmp_path / "sourceddata").glob("*.csv"))
    )
    return database_config(tmp_path, "sqlite:///clients.sqlite")


def test_a_no_op_run_against_the_database_is_cheap(sqlite_shipped: Path):
    first = run_fullprocess(sqlite_shipped)
    assert first.returncode == 0, first.stderr
    assert read_runs(load_config(sqlite_shipped).history_path, limit=1)[0].outcome == "first_deployment"
    code, heavy, seconds = no_op_probe(sqlite_shipped)
    assert (code, heavy) == (0, [])
    assert seconds < 1.0
    assert read_runs(load_config(sqlite_shipped).history_path, limit=1)[0].outcome == "no_new_data"


def test_the_check_for_new_rows_imports_no_sqlalchemy(sqlite_shipped: Path):
    probe = (
        "import sys\n"
        "from riskwatch.core.config import load_config\n"
        "from riskwatch.core.databases import has_rows_past\n"
        f"source = load_config({str(sqlite_shipped)!r}).database\n"
        "print(has_rows_past(source, 10047), has_rows_past(source, 10048), 'sqlalchemy' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["True", "False", "False"], result.stderr


def test_new_rows_in_the_table_are_decided_on(sqlite_shipped: Path, tmp_path: Path):
    assert run_fullprocess(sqlite_shipped).returncode == 0
    batch = write_batch(tmp_path / "batch.csv", 3000, seed=31, world="drifted")
    load_into_database(f"sqlite:///{tmp_path / 'clients.sqlite'}", "client_activity", batch)
    result = run_fullprocess(sqlite_shipped)
    assert result.returncode == 0, result.stderr
    run = read_runs(load_config(sqlite_shipped).history_path, limit=1)[0]
    assert run.outcome == "deployed" and run.new_rows == 3000
    assert [(row.name, row.status) for row in run.files] == [("client_activity [10048 < id <= 13048]", "new")]
    assert "no new data" in run_fullprocess(sqlite_shipped).stderr


def test_an_unreachable_database_fails_the_run_clearly_and_the_next_retries(sqlite_shipped: Path, tmp_path: Path):
    assert run_fullprocess(sqlite_shipped).returncode == 0
    config = load_config(sqlite_shipped)
    database = tmp_path / "clients.sqlite"
    database.rename(tmp_path / "clients.away")
    failed = run_fullprocess(sqlite_shipped)
    assert failed.returncode == 1
    sentence = f"check failed: database file {database} does not exist"
    assert sentence in failed.stderr and "Traceback" not in failed.stderr
    run = read_runs(config.history_path, limit=1)[0]
    assert run.outcome == "failed" and run.failed_stage == "check" and sentence.split(": ", 1)[1] in run.error
    assert current_version(config.prod_deployment_path) == "v0001"
    (tmp_path / "clients.away").rename(database)
    started = time.perf_counter()
    again = run_fullprocess(sqlite_shipped)
    assert again.returncode == 0 and "no new data" in again.stderr
    assert time.perf_counter() - started < 30
