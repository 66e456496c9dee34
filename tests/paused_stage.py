"""Run deployment.py or fullprocess.py with the deployment stopped at one step, to be killed there.

    python tests/paused_stage.py STEP SCRIPT [ARGUMENTS...]

STEP is one of the steps ``deployment.reached_step`` is called with ("staged", "renamed",
"switched"). When the deployment reaches it, this writes ``pausing at step STEP`` to stderr and
waits there, ten minutes at most, for the test to kill or stop the process.
"""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PAUSE_SECONDS = 600


def pause_at(wanted: str) -> Callable[[str], None]:
    def reached_step(step: str) -> None:
        if step == wanted:
            print(f"pausing at step {step}", file=sys.stderr, flush=True)
            time.sleep(PAUSE_SECONDS)

    return reached_step


def main(argv: list[str]) -> int:
    step, script, *arguments = argv
    sys.path.insert(0, str(PROJECT_ROOT))
    deployment = importlib.import_module("riskwatch.stages.deployment")
    deployment.reached_step = pause_at(step)
    stage = importlib.import_module(Path(script).stem)
    return int(stage.main(arguments))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
