"""The monitoring job attacked as an unlucky operator would: files copied in during a run, random kill -9 and
SIGTERM during retrain cycles, and a full disk. Real fullprocess.py processes on the project's generated data."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from riskwatch.core.config import Config, load_config
from riskwatch.data.batches import read_ingested_data
from riskwatch.data.generator import write_batch, write_shipped_data
from riskwatch.stages.ingestion import ingest_folder
from riskwatch.state.artifacts import (
    DIAGNOSTICS_FILE,
    FINAL_DATA,
    INGESTED_FILES,
    REPORT_RECORD_FILE,
    current_version,
    current_version_folder,
    load_deployed_version,
    read_ingested_files,
)
from riskwatch.state.history import read_runs
from tests.fullprocess_runs import (
    copy_first_run,
    paused_fullprocess,
    run_fullprocess,
    scenario_config,
    start_fullprocess,
)
from tests.helpers import run_script

pytestmark = pytest.mark.slow

# 8 kills that land inside a run on every run of the suite; `make test-soak` lands 20 (RISK_TEST_KILL_CYCLES).
KILL_CYCLES = int(os.environ.get("RISK_TEST_KILL_CYCLES", "8"))
WORLDS = ("drifted", "shifted", "stable")


def project_config(root: Path, **monitoring: object) -> Path:
    """The shipped data in ``root``, with fullprocess.py's scenario config."""
    write_shipped_data(root)
    return scenario_config(root, **monitoring)


def sorted_rows(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return sorted(lines[1:])


def fresh_ingestion_rows(config: Config, scratch: Path) -> list[str]:
    """The rows a fresh ingestion of the source folder writes: what ``finaldata.csv`` must hold."""
    shutil.rmtree(scratch, ignore_errors=True)
    return sorted_rows(ingest_folder(config.input_folder_path, scratch, fresh=True).final_data)


def check_whole(config: Config, scratch: Path) -> dict[str, int]:
    """After a completed run: what was lost, doubled, left stale or left running (all should be 0)."""
    held, expected = sorted_rows(config.output_folder_path / FINAL_DATA), fresh_ingestion_rows(config, scratch)
    held_set, expected_set = set(held), set(expected)
    version = current_version(config.prod_deployment_path)
    load_deployed_version(current_version_folder(config.prod_deployment_path))  # whole, or this raises
    made_for = [
        json.loads((config.output_model_path / name).read_text())["model_version"]
        for name in (DIAGNOSTICS_FILE, REPORT_RECORD_FILE)
    ]
    return {
        "lost": len(expected_set - held_set),
        "doubled": len(held) - len(held_set),
        "extra": len(held_set - expected_set),
        "stale": sum(made != version for made in made_for),
        "running": sum(run.outcome == "running" for run in read_runs(config.history_path, limit=1000)),
    }


def test_random_kills_during_retrain_cycles_lose_double_and_leave_nothing(tmp_path: Path, first_run_template: Path):
    config_path = copy_first_run(first_run_template, tmp_path / "project")
    config = load_config(config_path)
    rng = random.Random(20261123)
    timed = time.monotonic()
    write_batch(config.input_folder_path / "batch_00.csv", 2000, seed=100, world="drifted")
    assert run_fullprocess(config_path).returncode == 0
    cycle_seconds = time.monotonic() - timed  # how long a retrain cycle takes here: kills fall inside it
    rows, landed, cycle = [], 0, 0
    while landed < KILL_CYCLES and cycle < 2 * KILL_CYCLES:
        cycle += 1
        write_batch(
            config.input_folder_path / f"batch_{cycle:02d}.csv", 2000, seed=100 + cycle, world=WORLDS[cycle % 3]
        )
        kind = rng.choice([signal.SIGKILL, signal.SIGTERM])
        delay = rng.uniform(0.05, cycle_seconds)
        with start_fullprocess(config_path) as victim:
            time.sleep(delay)
            running = victim.poll() is None  # else the run ended first: no kill landed, the cycle still checks
            victim.send_signal(kind)
            try:
                code = victim.wait(timeout=120)
            finally:  # a run that outlives its deadline fails the test; leaving the block must not wait on it forever
                if victim.poll() is None:
                    victim.kill()
        landed += running
        recovery = run_fullprocess(config_path)  # the next cron run
        assert recovery.returncode == 0, recovery.stderr
        found = check_whole(config, tmp_path / "fresh")
        killed = read_runs(config.history_path, limit=2)[-1]
        rows.append((cycle, kind.name if running else "(ended)", round(delay, 2), code, killed.outcome, found))
        assert found == {"lost": 0, "doubled": 0, "extra": 0, "stale": 0, "running": 0}, rows[-1]
    print(f"\n{landed} kills landed during runs in {cycle} cycles")
    print(f"{'cycle':>5}  {'signal':7}  {'after s':>7}  {'exit':>4}  {'killed run':16}  lost doubled stale running")
    for number, kind, delay, code, outcome, found in rows:
        print(
            f"{number:>5}  {kind:7}  {delay:>7}  {code:>4}  {outcome:16}  "
            f"{found['lost']:>4} {found['doubled']:>7} {found['stale']:>5} {found['running']:>7}"
        )
    assert landed == KILL_CYCLES
    batches = read_ingested_data(config.output_folder_path)
    assert batches.latest_batch >= 2  # the cycles really ingested and decided new batches


def test_a_file_copied_in_during_a_run_is_read_once_whole_in_one_batch(tmp_path: Path):
    config_path = project_config(tmp_path / "project", settle_seconds=2)
    config = load_config(config_path)
    for path in config.input_folder_path.iterdir():  # the shipped files were written just now; make them old
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    assert run_fullprocess(config_path).returncode == 0
    source = tmp_path / "batch.csv"
    write_batch(source, 6000, seed=7, world="drifted")
    data = source.read_bytes()
    target = config.input_folder_path / "copied.csv"
    stop_copying = threading.Event()

    def copy_slowly() -> None:  # as a slow network copy: a piece every 0.3 s for ~3 s
        with open(target, "wb") as handle:
            for start in range(0, len(data), len(data) // 10 + 1):
                handle.write(data[start : start + len(data) // 10 + 1])
                handle.flush()
                if stop_copying.wait(0.3):
                    break

    copier = threading.Thread(target=copy_slowly)
    copier.start()
    try:
        time.sleep(0.5)
        during = run_fullprocess(config_path)
    finally:
        copier.join()
    assert during.returncode == 0, during.stderr
    run = read_runs(config.history_path, limit=1)[0]
    assert "still changing" in run.decision, run.decision
    assert (run.files[0].name, run.files[0].status) == ("copied.csv", "arriving")
    assert target.read_bytes() == data
    after = run_fullprocess(config_path)
    assert after.returncode == 0, after.stderr
    latest = read_runs(config.history_path, limit=1)[0]
    kept = read_ingested_files(config.output_folder_path / INGESTED_FILES)["copied.csv"].rows_kept
    assert kept > 5900 and latest.new_rows == kept, latest  # the whole file, read once
    ingested = read_ingested_data(config.output_folder_path)
    assert int(ingested.in_batches(ingested.latest_batch).sum()) == kept  # all of it in the batch it arrived in
    assert sorted_rows(config.output_folder_path / FINAL_DATA) == fresh_ingestion_rows(config, tmp_path / "fresh")


def can_mount_tmpfs(where: Path) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        return False
    subprocess.run(["umount", str(where)], check=True)
    return True


def test_a_full_disk_is_said_in_one_sentence_and_leaves_the_deployment_serving(
    tmp_path: Path, first_run_template: Path
):
    disk = tmp_path / "disk"
    if not can_mount_tmpfs(disk):
        pytest.skip("mounting a small tmpfs needs root and a mount command; neither is here")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], check=True)
    try:
        config_path = copy_first_run(first_run_template, disk)
        config = load_config(config_path)
        before = (config.output_folder_path / FINAL_DATA).read_bytes()
        write_batch(config.input_folder_path / "more.csv", 3000, seed=5, world="drifted")
        outcomes = []
        for free_kib in (0, 40, 120, 300):  # full, and nearly full at different stages of the run
            filler = disk / "filler"
            filler.unlink(missing_ok=True)
            available = shutil.disk_usage(disk).free // 1024
            with open(filler, "wb") as handle:
                handle.write(b"\0" * max(0, (available - free_kib) * 1024))
            done = run_fullprocess(config_path)
            outcomes.append((free_kib, done.returncode, done.stderr.strip().splitlines()[-1:]))
            assert done.returncode == 1, done.stderr
            assert "Traceback" not in done.stderr and "Logging error" not in done.stderr, done.stderr
            assert "full" in done.stderr and "another program" not in done.stderr, done.stderr
            assert current_version(config.prod_deployment_path) == "v0001"
            assert (config.output_folder_path / FINAL_DATA).read_bytes() == before  # untouched
        filler.unlink()
        recovered = run_fullprocess(config_path)  # space freed: the next run does the work
        assert recovered.returncode == 0, recovered.stderr
        assert sorted_rows(config.output_folder_path / FINAL_DATA) == fresh_ingestion_rows(config, tmp_path / "fresh")
        print("\n" + "\n".join(f"{kib:>4} KiB free: exit {code}: {line}" for kib, code, line in outcomes))
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_rollback_during_a_monitoring_run_waits_for_no_one_and_changes_nothing(
    tmp_path: Path, first_run_template: Path
):
    config_path = copy_first_run(first_run_template, tmp_path / "project")
    config = load_config(config_path)
    write_batch(config.input_folder_path / "drifted.csv", 3000, seed=32, world="drifted")
    # the run has gated a challenger and is publishing it
    with paused_fullprocess(config_path, "staged"):
        rollback = run_script("deployment.py", "--config", str(config_path), "--rollback")
        assert rollback.returncode == 1, rollback.stderr
        assert "being changed by another run" in rollback.stderr and "fullprocess.py run" in rollback.stderr
        assert current_version(config.prod_deployment_path) == "v0001"  # the gate's champion still serves
    assert run_fullprocess(config_path).returncode == 0 and current_version(config.prod_deployment_path) == "v0002"
    assert run_script("deployment.py", "--config", str(config_path), "--rollback").returncode == 0
    assert current_version(config.prod_deployment_path) == "v0001"


def test_a_rejected_file_is_recorded_as_rejected_and_not_tried_again(tmp_path: Path, first_run_template: Path):
    config_path = copy_first_run(first_run_template, tmp_path / "project")
    config = load_config(config_path)
    (config.input_folder_path / "broken.csv").write_text("corporation,lastmonth_activity\nacme,1\n")
    first = run_fullprocess(config_path)
    assert first.returncode == 0, first.stderr
    run = read_runs(config.history_path, limit=1)[0]
    assert [(row.name, row.status) for row in run.files] == [("broken.csv", "rejected")]
    assert "missing columns" in (run.files[0].note or "")
    again = run_fullprocess(config_path)
    assert "no new data" in again.stderr  # decided: not new again until it changes
