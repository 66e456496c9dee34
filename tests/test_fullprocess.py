"""fullprocess.py end to end, as real processes on a copy of the shipped data in tmp_path.

One scenario, step by step: the first run deploys; a run with nothing new is a no-op; a stable
batch is ingested and the model kept; a drifted batch triggers retraining and a gated
redeploy with the reports made again; a shifted batch under the data-drift trigger makes a
challenger that loses and is not deployed; a second run while one holds the lock exits at
once; a run killed mid-way leaves the previous deployment serving and the next run completes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cronsim import CronSim

from riskwatch.core.config import MODEL_FAMILIES, load_config
from riskwatch.cycle.fullprocess import API_RETURNS_AFTER_DEPLOYMENT, EXIT_LOCKED, PLOT_AFTER_DEPLOYMENT
from riskwatch.data.generator import write_batch, write_shipped_data
from riskwatch.state.artifacts import (
    REPORT_FILE,
    TRENDS_PLOT_FILE,
    current_version,
    current_version_folder,
    load_deployed_version,
)
from riskwatch.state.history import read_runs
from tests.fullprocess_runs import (
    last_run,
    paused_fullprocess,
    run_fullprocess,
    scenario_config,
)
from tests.helpers import PROJECT_ROOT, run_script, serving_api, write_config

pytestmark = pytest.mark.slow


@pytest.fixture
def shipped(tmp_path: Path) -> Path:
    """tmp_path holding the shipped data (written by its generator, byte for byte the committed files) and a config.

    Written rather than copied, so batches a user dropped into the checkout's sourceddata/ stay out.
    """
    write_shipped_data(tmp_path)
    return scenario_config(tmp_path)


def test_the_monitoring_scenario_on_the_shipped_data(shipped: Path):
    root = shipped.parent
    config = load_config(shipped)
    models = config.output_model_path

    # 1. The first run finds everything new and deploys v0001, with diagnostics and the reports.
    first = run_fullprocess(shipped)
    assert first.returncode == 0, first.stderr
    run = last_run(shipped)
    assert run.outcome == "first_deployment" and run.model_version_after == "v0001"
    assert run.decision.startswith("no model was deployed yet: deployed v0001") and "nothing" not in run.decision
    assert run.new_files == 4 and run.new_rows == 9992
    assert current_version(config.prod_deployment_path) == "v0001"
    for name in (PLOT_AFTER_DEPLOYMENT, REPORT_FILE, TRENDS_PLOT_FILE, "diagnostics.json"):
        assert (models / name).is_file(), name
    assert "is not running" in first.stderr and "API calls skipped" in first.stderr
    assert not (models / API_RETURNS_AFTER_DEPLOYMENT).exists()

    # 2. Nothing new (a touched file, a renamed file and stray files included): one line, exit 0.
    os.utime(root / "sourceddata" / "clients_2026q1.csv")
    (root / "sourceddata" / "clients_2026q2.csv").rename(root / "sourceddata" / "clients_2026_spring.csv")
    (root / "sourceddata" / ".DS_Store").write_bytes(b"\0\1")
    (root / "sourceddata" / "notes.txt").write_text("call the client back")
    (root / "sourceddata" / "clients_2026q3.csv~").write_text("backup")
    idle = run_fullprocess(shipped)
    assert idle.returncode == 0, idle.stderr
    assert len(idle.stderr.strip().splitlines()) == 1, idle.stderr
    assert "no new data" in idle.stderr and "ignored 3 file(s) that are not data" in idle.stderr
    assert last_run(shipped).outcome == "no_new_data"

    # 3. A stable batch: ingested (appended), no drift, the model kept.
    rows_before = len((config.output_folder_path / "finaldata.csv").read_text().splitlines()) - 1
    write_batch(root / "sourceddata" / "batch_stable.csv", 2000, seed=31)
    stable = run_fullprocess(shipped)
    assert stable.returncode == 0, stable.stderr
    run = last_run(shipped)
    assert run.outcome == "kept" and run.model_drift is False and run.data_drift is False
    assert run.new_rows == 2000 and run.ingested_rows == rows_before + 2000
    assert run.new_data_f1 >= run.drift_threshold
    assert "new rows appended" in stable.stderr
    assert current_version(config.prod_deployment_path) == "v0001"
    assert [row.test for row in run.feature_drift] == ["wasserstein"] * 3

    # 4. A shifted population (clients move, the risk relationship stays) under the data-drift
    #    trigger: retrained, but no challenger is reliably better on the recent rows by the margin
    #    (the best of nine gains a little, as the best of many draws does by luck), so v0001 keeps
    #    serving: drift it cannot fix, recorded as such.
    either = scenario_config(root, retrain_on="either")
    write_batch(root / "sourceddata" / "batch_shift.csv", 2000, seed=33, world="shifted")
    shift = run_fullprocess(either)
    assert shift.returncode == 0, shift.stderr
    run = last_run(either)
    assert run.outcome == "kept" and run.data_drift is True and run.model_drift is False
    assert run.drift_trigger.startswith("data drift (") and "normalised Wasserstein" in run.drift_trigger
    drifted = [row.feature for row in run.feature_drift if row.drifted]
    assert "number_of_employees" in drifted and "number_of_employees: normalised Wasserstein" in shift.stderr
    assert run.decision.startswith("challenger not deployed") and "allowed for the best of 9" in run.decision
    assert {candidate.window for candidate in run.candidates} == {"all", "recent", "weighted"}
    assert {candidate.family for candidate in run.candidates} == {"linear", "additive", "boosted"}
    assert run.data_drift_reference.startswith("the serving model's training window: all rows")
    assert current_version(config.prod_deployment_path) == "v0001"

    # 5. A drifted batch: model drift, challengers on three windows and three families, one that
    #    leans on the recent rows (the recent window, or all rows weighted by recency) wins on the
    #    held-out recent rows and is deployed as v0002, with the reports made again.
    plot_before = (models / PLOT_AFTER_DEPLOYMENT).stat().st_mtime_ns
    report_before = (models / REPORT_FILE).stat().st_mtime_ns
    write_batch(root / "sourceddata" / "batch_drift.csv", 3000, seed=32, world="drifted")
    drift = run_fullprocess(shipped)
    assert drift.returncode == 0, drift.stderr
    run = last_run(shipped)
    assert run.outcome == "deployed" and run.model_version_after == "v0002"
    assert run.model_drift is True and run.new_data_f1 < run.drift_threshold
    assert run.drift_trigger.startswith("model drift (parametric test: F1")
    assert "model drift detected: parametric test" in drift.stderr
    assert run.challenger_recent_f1 >= run.champion_recent_f1 + config.monitoring.min_gain
    assert run.winning_window in ("recent", "weighted") and run.winning_family in MODEL_FAMILIES
    assert run.model_family == run.winning_family
    assert None not in (run.champion_test_f1, run.challenger_test_f1)
    assert current_version(config.prod_deployment_path) == "v0002"
    assert (models / PLOT_AFTER_DEPLOYMENT).stat().st_mtime_ns > plot_before
    assert (models / REPORT_FILE).stat().st_mtime_ns > report_before
    served = load_deployed_version(current_version_folder(config.prod_deployment_path))
    assert served.model_info.held_out_recent_rows > 0
    assert served.model_info.training_window.name == run.winning_window
    assert served.model_info.family == run.winning_family
    assert "batch_drift.csv" in (served.folder / "ingestedfiles.txt").read_text()

    # 6. A file edited in place counts as new.
    with open(root / "sourceddata" / "batch_stable.csv", "a") as handle:
        handle.write("zzzzzz,40,400,10,0\n")
    edited = run_fullprocess(shipped)
    assert edited.returncode == 0, edited.stderr
    run = last_run(shipped)
    assert [(row.name, row.status) for row in run.files if row.status != "stray"] == [("batch_stable.csv", "edited")]
    assert run.new_rows == 1 and run.outcome == "waiting" and run.new_data_f1 is None
    assert "fewer than the 100 a drift test needs" in run.decision
    waits = run_fullprocess(shipped)  # the one row waits: nothing else new, so nothing to do
    assert "no new data" in waits.stderr and "1 file(s) wait for more rows" in waits.stderr
    assert last_run(shipped).outcome == "no_new_data"

    # 7. One run at a time: while a run waits inside its deployment, a second exits at once;
    #    the first is killed mid-way, v0002 keeps serving, and the next run completes. The batch
    #    comes from the first world again: v0002 follows the changed world, so it drifts.
    write_batch(root / "sourceddata" / "batch_back.csv", 4000, seed=35)
    with paused_fullprocess(shipped, "staged") as holder:
        started = time.monotonic()
        second = run_fullprocess(shipped)
        assert time.monotonic() - started < 10
        assert second.returncode == EXIT_LOCKED, second.stderr
        assert f"another run changing the deployment (pid {holder.pid}," in second.stderr
        assert "fullprocess.py run)" in second.stderr
        rollback = run_script("deployment.py", "--config", str(shipped), "--rollback")
        assert rollback.returncode == 1 and "the deployment is being changed by another run" in rollback.stderr
        assert "this run exits doing nothing" in second.stderr
    assert current_version(config.prod_deployment_path) == "v0002"
    load_deployed_version(current_version_folder(config.prod_deployment_path))  # loads: still serving
    assert last_run(shipped).outcome == "running"  # as the killed run left it
    after = run_fullprocess(shipped)
    assert after.returncode == 0, after.stderr
    runs = read_runs(config.history_path, limit=2)
    assert runs[1].outcome == "interrupted"
    assert runs[0].outcome == "deployed" and runs[0].model_version_after == "v0003"
    assert runs[0].new_rows == 4000 + 1  # the edited file's earlier rows were ingested before
    assert {row.name for row in runs[0].files if row.status != "stray"} == {
        "batch_back.csv",
        "batch_stable.csv",  # the edited file's row, which waited, is tested with this batch
    }
    assert current_version(config.prod_deployment_path) == "v0003"

    # The record: every run is in the history, and --history prints it as a table.
    outcomes = [run.outcome for run in reversed(read_runs(config.history_path, limit=100))]
    assert outcomes == [
        "first_deployment",
        "no_new_data",
        "kept",
        "kept",
        "deployed",
        "waiting",
        "no_new_data",
        "interrupted",
        "deployed",
    ]
    printed = run_fullprocess(shipped, "--history")
    assert printed.returncode == 0
    print(printed.stdout)
    assert printed.stdout.splitlines()[0].split()[:3] == ["run", "started", "(UTC)"]
    assert "trigger: data drift (" in printed.stdout


def test_a_no_op_run_imports_no_heavy_library(after_first_run: Path):
    shipped = after_first_run
    probe = (
        "import sys, fullprocess\n"
        f"code = fullprocess.main(['--config', {str(shipped)!r}])\n"
        "heavy = {'numpy', 'pandas', 'sklearn', 'scipy', 'pyarrow', 'matplotlib', 'requests', 'urllib.request'}\n"
        "heavy = sorted((heavy | {'sqlalchemy'}) & set(sys.modules))\n"  # a SQLite history needs no SQLAlchemy
        "print(code, heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "0 []", result.stderr
    assert "no new data" in result.stderr


def test_a_failing_stage_is_named_and_the_next_run_starts_clean(after_first_run: Path):
    shipped = after_first_run
    root = shipped.parent
    write_batch(root / "sourceddata" / "batch_drift.csv", 3000, seed=32, world="drifted")
    (root / "testdata" / "testdata.csv").rename(root / "testdata.csv.away")
    failed = run_fullprocess(shipped)
    assert failed.returncode == 1
    assert "fullprocess test data failed: test data folder" in failed.stderr
    assert "the deployed model keeps serving" in failed.stderr
    run = last_run(shipped)
    assert run.outcome == "failed" and run.failed_stage == "test data"
    assert current_version(load_config(shipped).prod_deployment_path) == "v0001"
    (root / "testdata.csv.away").rename(root / "testdata" / "testdata.csv")
    again = run_fullprocess(shipped)
    assert again.returncode == 0, again.stderr
    assert last_run(shipped).outcome == "deployed"


def test_a_broken_history_database_is_named(shipped: Path):
    history = load_config(shipped).history_path
    history.parent.mkdir(parents=True)
    history.write_bytes(b"this is not a database" * 100)
    result = run_fullprocess(shipped)
    assert result.returncode == 1
    assert f"history failed: run history {history} cannot be used" in result.stderr
    assert "move it aside" in result.stderr


def test_logs_go_to_a_rotating_file_as_well(shipped: Path):
    config = scenario_config(shipped.parent, log_max_mb=0.001, log_backups=2)
    for _ in range(12):
        assert run_fullprocess(config).returncode == 0
    log_path = load_config(config).log_path
    assert "no new data" in log_path.read_text()
    rotated = sorted(path.name for path in log_path.parent.glob(f"{log_path.name}*"))
    assert rotated == [log_path.name, f"{log_path.name}.1", f"{log_path.name}.2"]
    assert all(path.stat().st_size <= 1100 for path in log_path.parent.glob(f"{log_path.name}*"))


def cron_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def check_every_ten_minutes(line: str) -> str:
    """Parse a crontab line with a real cron parser; check it fires every 10 minutes; return its command."""
    fields = line.split(None, 5)
    schedule, command = " ".join(fields[:5]), fields[5]
    start = datetime(2026, 11, 21, 9, 3, tzinfo=UTC)
    fires = CronSim(schedule, start)
    times = [next(fires) for _ in range(13)]
    assert times[0] == datetime(2026, 11, 21, 9, 10, tzinfo=UTC)
    assert {later - earlier for earlier, later in zip(times, times[1:], strict=False)} == {timedelta(minutes=10)}
    return command


def test_the_committed_cronjob_fires_every_ten_minutes_in_a_checkout():
    (line,) = cron_lines(PROJECT_ROOT / "cronjob.txt")
    command = check_every_ten_minutes(line)
    assert command.startswith("cd /")
    assert "/.venv/bin/python fullprocess.py --quiet --config /" in command and "/config.json" in command
    assert ">> /" in command and command.endswith("2>&1")


def test_the_written_cronjob_command_runs_under_crons_bare_environment(shipped: Path):
    target = shipped.parent / "cronjob.txt"
    written = run_fullprocess(shipped, "--write-cronjob", str(target))
    assert written.returncode == 0, written.stderr
    (line,) = cron_lines(target)
    command = check_every_ten_minutes(line)
    assert command.startswith(f"cd {PROJECT_ROOT} && ")
    bare = {"PATH": "/usr/bin:/bin", "HOME": str(shipped.parent), "SHELL": "/bin/sh"}
    result = subprocess.run(["/bin/sh", "-c", command], cwd="/", env=bare, capture_output=True, timeout=300)
    assert result.returncode == 0, (result.stdout, result.stderr)
    config = load_config(shipped)
    assert last_run(shipped).outcome == "first_deployment"
    assert (config.log_path.parent / "cron.log").exists()
    assert "deployed v0001" in config.log_path.read_text()


def test_history_without_runs_prints_a_header_and_creates_nothing(shipped: Path):
    result = run_fullprocess(shipped, "--history")
    assert result.returncode == 0
    assert result.stdout.splitlines()[0].split()[:2] == ["run", "started"]
    assert len(result.stdout.strip().splitlines()) == 2
    assert not load_config(shipped).history_path.exists()


def test_after_a_deployment_the_running_api_is_called_and_serves_the_new_model(after_first_run: Path):
    shipped = after_first_run
    root = shipped.parent
    config = load_config(shipped)
    port = int(config.api.url.rsplit(":", 1)[1])
    with serving_api(shipped, port=port):
        write_batch(root / "sourceddata" / "batch_drift.csv", 3000, seed=32, world="drifted")
        result = run_fullprocess(shipped)
        assert result.returncode == 0, result.stderr
    returns = json.loads((config.output_model_path / API_RETURNS_AFTER_DEPLOYMENT).read_text())
    answers = returns["answers"]
    assert answers["version"]["model_version"] == "v0002" and answers["version"]["previous_version"] == "v0001"
    assert answers["prediction"]["model_version"] == "v0002" and answers["prediction"]["rows"] == 3000
    assert [run["outcome"] for run in answers["history"]["runs"]] == ["deployed", "first_deployment"]
    assert last_run(shipped).details["apicalls"] == str(config.output_model_path / API_RETURNS_AFTER_DEPLOYMENT)


def test_a_run_killed_after_the_switch_leaves_the_new_version_and_the_next_run_makes_its_reports(after_first_run: Path):
    shipped = after_first_run
    root = shipped.parent
    config = load_config(shipped)
    write_batch(root / "sourceddata" / "batch_drift.csv", 3000, seed=32, world="drifted")
    with paused_fullprocess(shipped, "switched"):
        pass  # killed there
    assert current_version(config.prod_deployment_path) == "v0002"
    assert json.loads((config.output_model_path / "diagnostics.json").read_text())["model_version"] == "v0001"
    after = run_fullprocess(shipped)
    assert after.returncode == 0, after.stderr
    assert "not those of v0002" in after.stderr
    killed, redo = read_runs(config.history_path, limit=2)[::-1]
    assert killed.outcome == "interrupted" and killed.decision.endswith("after deploying v0002")
    assert redo.outcome == "no_new_data" and "made the diagnostics, report and API calls for v0002" in redo.decision
    assert json.loads((config.output_model_path / "diagnostics.json").read_text())["model_version"] == "v0002"
    assert "no new data" in run_fullprocess(shipped).stderr  # and the run after that has nothing to do


def test_sigterm_ends_a_run_cleanly_and_records_it(after_first_run: Path):
    shipped = after_first_run
    root = shipped.parent
    config = load_config(shipped)
    write_batch(root / "sourceddata" / "batch_drift.csv", 3000, seed=32, world="drifted")
    with paused_fullprocess(shipped, "staged") as holder:
        holder.send_signal(signal.SIGTERM)
        assert holder.wait(timeout=30) == 130
        assert "interrupted; the deployed model keeps serving" in holder.stderr.read()
    run = last_run(shipped)
    assert run.outcome == "interrupted" and run.decision == "stopped by a signal; nothing was decided"
    assert run.finished_at is not None and current_version(config.prod_deployment_path) == "v0001"
    after = run_fullprocess(shipped)  # the lock is free and the batch is decided on now
    assert after.returncode == 0, after.stderr
    assert last_run(shipped).outcome == "deployed" and current_version(config.prod_deployment_path) == "v0002"


def test_a_report_left_behind_by_a_stop_after_the_diagnostics_is_made_again(after_first_run: Path):
    shipped = after_first_run
    config = load_config(shipped)
    record = config.output_model_path / "summaryreport.json"
    assert json.loads(record.read_text())["model_version"] == "v0001"
    # as a run stopped (SIGTERM, a full disk) after the diagnostics of v0002 and before its report leaves it
    diagnostics = json.loads((config.output_model_path / "diagnostics.json").read_text())
    (config.output_model_path / "diagnostics.json").write_text(json.dumps({**diagnostics, "model_version": "v0001"}))
    assert run_fullprocess(shipped).returncode == 0  # both describe v0001, which serves: nothing to do
    assert last_run(shipped).decision == "no new data"
    record.write_text(json.dumps({"model_version": "v0000"}))
    again = run_fullprocess(shipped)
    assert again.returncode == 0 and "not those of v0001" in again.stderr
    assert json.loads(record.read_text())["model_version"] == "v0001"


def test_a_config_path_with_a_line_break_never_reaches_the_crontab(tmp_path: Path):
    folder = tmp_path / "evil\n* * * * * rm -rf ~"
    folder.mkdir()
    config = write_config(folder)
    target = tmp_path / "cronjob.txt"
    result = run_fullprocess(config, "--write-cronjob", str(target))
    assert result.returncode == 1 and "holds a line break; cron reads one job per line" in result.stderr
    assert not target.exists()
