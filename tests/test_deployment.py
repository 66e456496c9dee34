"""Deployment: versions, classic paths, rollback, refusals, the lock, and kill -9 mid-way."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from riskwatch.core.config import Config, ModelSettings
from riskwatch.core.errors import PipelineError
from riskwatch.core.files import folder_lock, sha256_file
from riskwatch.stages.deployment import (
    PUBLISHED_FILES,
    VERSION_INFO_FILE,
    VERSIONS_FOLDER,
    current_version,
    describe_versions,
    list_versions,
    rollback_deployment,
)
from riskwatch.stages.ingestion import ingest_folder
from riskwatch.stages.training import train_from_folder
from riskwatch.state.artifacts import (
    INGESTED_FILES,
    INGESTED_RECORD,
    LATEST_SCORE_FILE,
    METRICS_FILE,
    MODEL_FILE,
    MODEL_INFO_FILE,
    current_version_folder,
    load_model,
    read_ingested_files,
)
from tests.helpers import PROJECT_ROOT, copy_project, deploy, script_command, train_and_score


@pytest.fixture
def trained(project: Config, trained_template: Path) -> Config:
    """The small project, ingested, trained and scored: a copy of the session's, the test's own."""
    copy_project(trained_template, project.path.parent)
    return project


def assert_whole_version(root, model_hash: str | None = None) -> str:
    """The current version's files all belong together; the classic paths show the same files."""
    folder = current_version_folder(root)
    files = {name: folder / name for name in (*PUBLISHED_FILES, VERSION_INFO_FILE)}
    assert all(path.is_file() for path in files.values()), sorted(p.name for p in folder.iterdir())
    digest = sha256_file(files[MODEL_FILE])
    for name in (VERSION_INFO_FILE, METRICS_FILE, MODEL_INFO_FILE):
        assert json.loads(files[name].read_text())["model_sha256"] == digest, name
    assert float(files[LATEST_SCORE_FILE].read_text()) == json.loads(files[METRICS_FILE].read_text())["f1"]
    for name, path in files.items():
        assert (root / name).read_bytes() == path.read_bytes()
    load_model(root / MODEL_FILE)
    if model_hash is not None:
        assert digest == model_hash
    return folder.name


def test_first_deployment_publishes_one_whole_version_with_classic_paths(trained):
    info = deploy(trained)
    root = trained.prod_deployment_path
    assert info.version == "v0001" and info.info.previous_version is None
    assert assert_whole_version(root, sha256_file(trained.output_model_path / MODEL_FILE)) == "v0001"
    assert (root / INGESTED_FILES).read_text() == (trained.output_folder_path / INGESTED_FILES).read_text()
    assert (root / INGESTED_RECORD).read_text() == (trained.output_folder_path / INGESTED_RECORD).read_text()
    assert read_ingested_files(root / INGESTED_FILES) == read_ingested_files(
        trained.output_folder_path / INGESTED_FILES
    )
    assert (root / MODEL_FILE).is_symlink()


def test_versions_are_kept_up_to_the_configured_number(trained):
    for C in (1.0, 0.5, 0.1, 0.05, 0.01):
        train_and_score(trained, C)
        deploy(trained)
    assert list_versions(trained.prod_deployment_path) == ["v0003", "v0004", "v0005"]
    assert current_version(trained.prod_deployment_path) == "v0005"


def test_the_model_that_serves_is_not_published_again(trained):
    first = deploy(trained)
    train_and_score(trained, C=0.01)
    deploy(trained)
    again = deploy(trained)  # the same model and data: no copy that would push v0001 out
    assert again.version == "v0002" and again.unchanged
    assert list_versions(trained.prod_deployment_path) == ["v0001", "v0002"] and first.version == "v0001"


def test_rollback_restores_the_version_that_served_before(trained):
    hashes = []
    for C in (1.0, 0.01, 0.001):
        hashes.append(train_and_score(trained, C))
        deploy(trained)
    root = trained.prod_deployment_path
    assert rollback_deployment(root) == "v0002"
    assert_whole_version(root, hashes[1])
    assert rollback_deployment(root) == "v0001"
    assert_whole_version(root, hashes[0])
    with pytest.raises(PipelineError, match="no version before v0001"):
        rollback_deployment(root)
    deploy(trained)  # v0004, deployed over v0001: rolling it back returns to v0001, not to v0003
    assert rollback_deployment(root) == "v0001"
    assert [line[0] for line in describe_versions(root)].count("*") == 1


@pytest.mark.slow
def test_rollback_from_the_command_line(trained):
    deploy(trained)
    train_and_score(trained, C=0.01)
    deploy(trained)
    done = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "deployment.py"), "--config", str(trained.path), "--rollback"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "rolled back from v0002 to v0001" in done.stderr
    assert current_version(trained.prod_deployment_path) == "v0001"


def test_scores_of_another_model_are_refused_and_the_deployment_is_kept(trained):
    deploy(trained)
    train_from_folder(trained.output_folder_path, trained.output_model_path, ModelSettings(C=0.01))  # no rescoring
    with pytest.raises(
        PipelineError, match="cannot deploy from .*models: metrics.json holds the scores of another model"
    ):
        deploy(trained)
    assert list_versions(trained.prod_deployment_path) == ["v0001"]
    assert_whole_version(trained.prod_deployment_path)


def test_corrupt_model_is_refused_and_the_deployment_is_kept(trained):
    deploy(trained)
    model = trained.output_model_path / MODEL_FILE
    model.write_bytes(b"\x80\x05 not a model")
    for name in (METRICS_FILE, MODEL_INFO_FILE):  # metadata that vouches for the damaged file
        path = trained.output_model_path / name
        path.write_text(json.dumps({**json.loads(path.read_text()), "model_sha256": sha256_file(model)}))
    with pytest.raises(PipelineError, match="trainedmodel.pkl is corrupt"):
        deploy(trained)
    assert_whole_version(trained.prod_deployment_path)


def test_scores_file_out_of_step_with_latestscore_is_refused(trained):
    (trained.output_model_path / LATEST_SCORE_FILE).write_text("0.99\n")
    with pytest.raises(PipelineError, match="latestscore.txt does not match metrics.json"):
        deploy(trained)
    assert current_version(trained.prod_deployment_path) is None
    assert list((trained.prod_deployment_path / VERSIONS_FOLDER).iterdir()) == []


def test_ingestion_after_training_is_refused_until_retrained(trained):
    (trained.input_folder_path / "more.csv").write_text(
        (trained.input_folder_path / "clients_a.csv").read_text()[:2000]
    )
    ingest_folder(trained.input_folder_path, trained.output_folder_path)
    with pytest.raises(PipelineError, match="ingestedfiles.txt has changed since the model was trained"):
        deploy(trained)
    train_and_score(trained)
    assert deploy(trained).version == "v0001"


def test_a_file_edited_in_place_after_training_is_refused_though_the_names_are_the_same(trained):
    names = (trained.output_folder_path / INGESTED_FILES).read_text()
    (trained.input_folder_path / "clients_b.csv").write_text(
        (trained.input_folder_path / "clients_a.csv").read_text()[:2000]
    )
    ingest_folder(trained.input_folder_path, trained.output_folder_path)
    assert (trained.output_folder_path / INGESTED_FILES).read_text() == names
    with pytest.raises(PipelineError, match="ingestedfiles.json has changed since the model was trained"):
        deploy(trained)


def test_a_version_published_before_the_record_existed_can_be_rolled_back_to(trained):
    deploy(trained)
    old = trained.prod_deployment_path / VERSIONS_FOLDER / "v0001"
    (old / INGESTED_RECORD).unlink()
    info = json.loads((old / MODEL_INFO_FILE).read_text())
    del info["ingested_record_sha256"]
    (old / MODEL_INFO_FILE).write_text(json.dumps(info))
    train_and_score(trained, C=0.01)
    deploy(trained)
    assert rollback_deployment(trained.prod_deployment_path) == "v0001"


def test_rollback_to_a_damaged_version_is_refused(trained):
    deploy(trained)
    train_and_score(trained, C=0.01)
    deploy(trained)
    (trained.prod_deployment_path / VERSIONS_FOLDER / "v0001" / MODEL_FILE).write_bytes(b"damaged")
    with pytest.raises(
        PipelineError, match="cannot roll back to v0001: metrics.json holds the scores of another model"
    ):
        rollback_deployment(trained.prod_deployment_path)
    assert current_version(trained.prod_deployment_path) == "v0002"


def test_rollback_with_nothing_deployed_says_so(tmp_path):
    with pytest.raises(PipelineError, match="nothing is deployed"):
        rollback_deployment(tmp_path)


def test_leftovers_of_an_interrupted_deployment_or_prune_are_cleared_and_never_listed(trained):
    deploy(trained)
    versions = trained.prod_deployment_path / VERSIONS_FOLDER
    (versions / ".trash-v0000-123").mkdir()
    (versions / ".staging-v0002").mkdir()
    assert list_versions(trained.prod_deployment_path) == ["v0001"]
    train_and_score(trained, C=0.01)
    deploy(trained)
    assert sorted(entry.name for entry in versions.iterdir()) == ["v0001", "v0002"]


def test_missing_inputs_are_named(project):
    with pytest.raises(PipelineError, match="trainedmodel.pkl.*missing; run ingestion.py, training.py and scoring.py"):
        deploy(project)


def test_a_second_deployment_waits_for_no_one_and_says_so(trained):
    with (
        folder_lock(trained.prod_deployment_path, "deployment"),
        pytest.raises(PipelineError, match="another deployment"),
    ):
        deploy(trained)


def start_paused_deployment(config: Config, step: str) -> subprocess.Popen:
    """Start deployment.py and return once it reports that it is paused at ``step``."""
    process = subprocess.Popen(
        script_command("deployment.py", "--config", str(config.path), pause_at=step),
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(60, process.kill)
    watchdog.start()
    try:
        for line in process.stderr:
            if f"pausing at step {step}" in line:
                return process
        process.communicate()
        pytest.fail(f"deployment ended without reaching step {step}")
    finally:
        watchdog.cancel()


@pytest.mark.slow
@pytest.mark.parametrize(("step", "serving"), [("staged", "v0001"), ("renamed", "v0001"), ("switched", "v0002")])
def test_kill_9_mid_deployment_leaves_a_whole_version_and_the_next_run_completes(trained, step, serving):
    root = trained.prod_deployment_path
    first_hash = sha256_file(trained.output_model_path / MODEL_FILE)
    deploy(trained)
    second_hash = train_and_score(trained, C=0.01)
    with start_paused_deployment(trained, step) as process:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL
    assert assert_whole_version(root, first_hash if serving == "v0001" else second_hash) == serving

    info = deploy(trained)
    assert assert_whole_version(root, second_hash) == info.version
    assert not [entry.name for entry in (root / VERSIONS_FOLDER).iterdir() if entry.name.startswith(".")]


def test_version_numbers_parse_order_and_follow_each_other():
    from riskwatch.state.artifacts import FIRST_VERSION, VersionNumber, version_number

    assert VersionNumber.parse("v0007") == VersionNumber(7) and VersionNumber.parse("v12345") == VersionNumber(12345)
    assert all(VersionNumber.parse(name) is None for name in ("v7", "0007", "v0007.tmp", "current", "v-001"))
    assert sorted(["v0010", "v9999", "v0002", "v10000"], key=version_number) == ["v0002", "v0010", "v9999", "v10000"]
    assert FIRST_VERSION.name == "v0001" and version_number("v9999").next().name == "v10000"
    with pytest.raises(ValueError, match="not a version name"):
        version_number("staging")
