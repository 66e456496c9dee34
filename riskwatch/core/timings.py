"""How long each stage took when it really ran: kept by every stage, read by diagnostics.

Every stage script (through ``riskwatch.core.cli.run_stage``) and the monitoring job append a record to
``stagetimings.json`` in the model folder, so diagnostics reports real timings without running
anything again. A timing record never fails a stage: an unwritable folder or a damaged file is a
warning (a damaged file is set aside and a new one started).

Standard library only: the monitoring job records timings on its light path.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from riskwatch.core.errors import PipelineError
from riskwatch.core.files import hold_lock, utc_now, write_text_atomic

log = logging.getLogger(__name__)

STAGE_TIMINGS_FILE = "stagetimings.json"
KEPT_PER_STAGE = 50


@dataclass(frozen=True)
class StageTiming:
    stage: str
    seconds: float
    finished_at: str
    source: str  # "ingestion.py", "fullprocess.py run 12"


def read_stage_timings(output_model_path: Path) -> dict[str, list[StageTiming]]:
    """The kept records per stage, oldest first; {} when there are none or the file cannot be read."""
    path = Path(output_model_path) / STAGE_TIMINGS_FILE
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        return {stage: [StageTiming(**item) for item in items] for stage, items in stored.items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        log.warning("%s cannot be read (%s); stage timings start again", path, exc)
        return {}


def record_stage_timings(output_model_path: Path, seconds: dict[str, float], source: str) -> None:
    """Add one record per stage in ``seconds``, keeping the latest ``KEPT_PER_STAGE`` of each; never raises."""
    if not seconds:
        return
    path = Path(output_model_path) / STAGE_TIMINGS_FILE
    try:
        with hold_lock(path.with_name(f".{STAGE_TIMINGS_FILE}.lock"), source, "{holder} is recording timings"):
            stored = {
                stage: [asdict(item) for item in items]
                for stage, items in read_stage_timings(output_model_path).items()
            }
            if path.exists() and not stored and path.stat().st_size:
                path.replace(path.with_name(path.name + ".damaged"))
            now = utc_now()
            for stage, value in seconds.items():
                items = stored.setdefault(stage, [])
                items.append(asdict(StageTiming(stage, round(float(value), 4), now, source)))
                del items[:-KEPT_PER_STAGE]
            write_text_atomic(path, json.dumps(stored, indent=1))
    except (OSError, PipelineError) as exc:
        log.warning("the timing of %s was not recorded in %s: %s", ", ".join(seconds), path, exc)
