"""fullprocess.py as a process in the tests: its config for a copy of the shipped data (or a table), a run, the run it
recorded, a run paused in its deployment, and a no-op run measured in a fresh interpreter."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from riskwatch.core.config import load_config
from riskwatch.state.history import read_runs
from riskwatch.state.runs import StoredRun
from tests.helpers import (
    PROJECT_ROOT,
    copy_project,
    free_port,
    run_script,
    script_command,
    write_config,
    write_database_config,
)

# SQLAlchemy is not among them: the run history goes through it (about 0.15 s to import); the check
# for new rows itself asks sqlite3 or psycopg directly.
HEAVY = ("numpy", "pandas", "sklearn", "scipy", "pyarrow", "matplotlib", "requests", "urllib.request")


def scenario_config(root: Path, **monitoring: object) -> Path:
    """A config for a copy of the shipped data: quick diagnostics, no package index, no API running."""
    return write_config(
        root,
        diagnostics={"package_index": "http://127.0.0.1:9/pypi", "index_timeout_seconds": 1},
        api={"url": f"http://127.0.0.1:{free_port()}"},
        monitoring=monitoring,
    )


def copy_first_run(template: Path, root: Path, **monitoring: object) -> Path:
    """A copy in ``root`` of ``template``, the shipped data after fullprocess.py's first run (conftest's
    ``first_run_template``), with the scenario config and ``monitoring`` settings; returns the config's path."""
    copy_project(template, root)
    return scenario_config(root, **monitoring)


def database_config(root: Path, url: str) -> Path:
    """A config reading the table client_activity at ``url``: quick diagnostics, no package index, no API."""
    return write_database_config(
        root,
        url,
        diagnostics={"package_index": "http://127.0.0.1:9/pypi", "index_timeout_seconds": 1},
        api={"url": f"http://127.0.0.1:{free_port()}"},
    )


def run_fullprocess(config_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run_script("fullprocess.py", "--config", str(config_path), *args, env=env, timeout=300)


def last_run(config_path: Path) -> StoredRun:
    return read_runs(load_config(config_path).history_path, limit=1)[0]


def start_fullprocess(config_path: Path, pause_at: str | None = None) -> subprocess.Popen:
    """Start fullprocess.py; with ``pause_at``, its deployment stops at that step (tests/paused_stage.py)."""
    return subprocess.Popen(
        script_command("fullprocess.py", "--config", str(config_path), pause_at=pause_at),
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@contextlib.contextmanager
def paused_fullprocess(config_path: Path, step: str) -> Iterator[subprocess.Popen]:
    """A fullprocess.py run stopped in its deployment at ``step`` for the block; killed when the block ends."""
    with start_fullprocess(config_path, pause_at=step) as holder:
        try:
            wait_for_line(holder, f"pausing at step {step}")
            yield holder
        finally:
            holder.kill()
            holder.wait()


def wait_for_line(process: subprocess.Popen, text: str, timeout: float = 120) -> list[str]:
    """Read the process's stderr until a line holds ``text``; return the lines read."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line and process.poll() is not None:
            break
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"{text!r} never appeared; stderr so far:\n{''.join(lines)}")


def no_op_probe(config_path: Path) -> tuple[int, list[str], float]:
    """Run fullprocess.main in a fresh interpreter: its exit code, the heavy modules it imported, its seconds."""
    probe = (
        "import json, sys, time\n"
        "started = time.perf_counter()\n"
        "import fullprocess\n"
        f"code = fullprocess.main(['--config', {str(config_path)!r}])\n"
        f"heavy = sorted(set({HEAVY!r}) & set(sys.modules))\n"
        "print(json.dumps([code, heavy, time.perf_counter() - started]))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    code, heavy, seconds = json.loads(result.stdout)
    return code, heavy, seconds
