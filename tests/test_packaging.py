"""The project installs as a package (pyproject.toml's build system) while its scripts stay where they are."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import PROJECT_ROOT

pytestmark = pytest.mark.slow


def test_the_wheel_holds_every_stage_the_shared_code_and_the_dashboards_files(tmp_path: Path):
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(PROJECT_ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    wheel = next(tmp_path.glob("dynamic_risk_assessment-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    stages = ["ingestion", "training", "scoring", "deployment", "diagnostics", "reporting", "app", "apicalls"]
    assert {f"{stage}.py" for stage in [*stages, "fullprocess"]} <= names
    assert {
        "riskwatch/core/config.py",
        "riskwatch/web/api/routes.py",
        "riskwatch/web/dashboard/templates/base.html",
        "riskwatch/web/dashboard/static/dashboard.css",
    } <= names
    assert not any(name.startswith("tests/") for name in names)
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    assert "risk-fullprocess = riskwatch.cycle.fullprocess:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
