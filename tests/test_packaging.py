"""The project installs as a package (pyproject.toml's build system) while its scripts stay where they are."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import PROJECT_ROOT

pytestmark = pytest.mark.slow


def test_the_wheel_holds_the_package_alone_with_a_command_per_stage(tmp_path: Path):
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
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"riskwatch"}  # no app.py or training.py beside other distributions' modules
    assert {
        "riskwatch/classic.py",
        "riskwatch/core/config.py",
        "riskwatch/web/api/routes.py",
        "riskwatch/web/dashboard/templates/base.html",
        "riskwatch/web/dashboard/static/dashboard.css",
    } <= names
    assert not any(name.startswith("tests/") for name in names)
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    commands = zipfile.ZipFile(wheel).read(entry_points).decode()
    stages = ["ingestion", "training", "scoring", "deployment", "diagnostics", "reporting", "apicalls", "fullprocess"]
    assert all(f"risk-{stage} = riskwatch." in commands for stage in stages)
    assert "risk-api = riskwatch.web.app:main" in commands and "risk-generate-data = " in commands
