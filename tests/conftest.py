"""Fixtures: a tiny project (data + config) in tmp_path, trained and deployed on request."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from riskwatch.core.config import Config, load_config
from riskwatch.data.generator import write_shipped_data
from riskwatch.stages.ingestion import ingest_folder
from tests.fullprocess_runs import copy_first_run, run_fullprocess, scenario_config
from tests.helpers import copy_project, deploy, skip_or_fail, train_and_score, write_clients, write_config
from tests.postgres_server import PASSWORD, PASSWORD_ENV, PostgresServer, PostgresUnavailable

# The history's rules are asserted outside a test module: pytest explains their failures as in one.
pytest.register_assert_rewrite("tests.history_rules")


def write_project(folder: Path) -> Config:
    """A small project in ``folder``: two source files, a test file and a config."""
    write_clients(folder / "sourceddata" / "clients_a.csv", 600, seed=1)
    write_clients(folder / "sourceddata" / "clients_b.csv", 400, seed=2)
    write_clients(folder / "testdata" / "testdata.csv", 500, seed=3)
    return load_config(write_config(folder))


@pytest.fixture
def project(tmp_path: Path) -> Config:
    """A small project in tmp_path: two source files, a test file and a config."""
    return write_project(tmp_path)


@pytest.fixture(scope="session")
def trained_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small project, ingested, trained and scored once a session (each xdist worker's own); copy it to use it."""
    folder = tmp_path_factory.mktemp("trained-template")
    config = write_project(folder)
    ingest_folder(config.input_folder_path, config.output_folder_path)
    train_and_score(config)
    return folder


@pytest.fixture(scope="session")
def deployed_template(tmp_path_factory: pytest.TempPathFactory, trained_template: Path) -> Path:
    """The trained small project, deployed (v0001) once a session (each xdist worker's own); copy it to use it."""
    folder = tmp_path_factory.mktemp("deployed-template")
    copy_project(trained_template, folder)
    deploy(load_config(folder / "config.json"))
    return folder


@pytest.fixture
def deployed(project: Config, deployed_template: Path) -> Config:
    """The small project, ingested, trained, scored and deployed (v0001): a copy of the session's, the test's own."""
    copy_project(deployed_template, project.path.parent)
    return project


@pytest.fixture(scope="session")
def first_run_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped data after fullprocess.py's first run, as a process (everything ingested; v0001 trained, deployed,
    diagnosed and reported), once a session (each xdist worker's own); copy it with ``copy_first_run``."""
    folder = tmp_path_factory.mktemp("first-run-template")
    write_shipped_data(folder)
    first = run_fullprocess(scenario_config(folder))
    assert first.returncode == 0, first.stderr
    return folder


@pytest.fixture
def after_first_run(tmp_path: Path, first_run_template: Path) -> Path:
    """tmp_path holding the shipped data after fullprocess.py's first run (a copy of the session's), with the
    scenario config; returns the config's path."""
    return copy_first_run(first_run_template, tmp_path)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session (skipped, with the reason, where none can be started)."""
    try:
        server = PostgresServer.create()
    except PostgresUnavailable as exc:
        skip_or_fail(f"no PostgreSQL server: {exc}")
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def postgres_url(
    postgres_server: PostgresServer, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> str:
    """A fresh database on the session's server, for one test; its password in the environment, as a user sets it."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    name = "t_" + "".join(char if char.isalnum() else "_" for char in request.node.name.lower())[:50]
    return postgres_server.create_database(name)
