"""API calls: ask every endpoint of the running API and write the answers to one file.

Writes ``apireturns.txt`` (``--output`` for another name) in the model output folder: one JSON
document holding, per endpoint, what was asked, the HTTP status and the answer. Exits non-zero,
naming the endpoint, when the API cannot be reached or answers with an error; the previous
answers file is then left as it was.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import requests

from riskwatch.core.cli import build_parser, run_stage
from riskwatch.core.config import Config
from riskwatch.core.errors import PipelineError
from riskwatch.core.files import find_test_files, write_text_atomic
from riskwatch.state.artifacts import API_RETURNS_FILE, utc_now

log = logging.getLogger("apicalls")


def prediction_request(config: Config) -> dict[str, Any]:
    """The /prediction request for the test data: by file location when it lies in the project, else uploaded."""
    test_file = find_test_files(config.test_data_path)[0]
    base = config.path.parent
    if test_file.resolve().is_relative_to(base):
        return {"json": {"filelocation": test_file.resolve().relative_to(base).as_posix()}}
    return {"files": {"file": (test_file.name, test_file.read_bytes())}}


def call_endpoint(session: requests.Session, method: str, url: str, timeout: float, **kwargs: Any) -> Any:
    """One call; return the JSON answer, or raise PipelineError naming the endpoint and what went wrong."""
    name = f"{method} {url}"
    try:
        response = session.request(method, url, timeout=timeout, **kwargs)
    except requests.Timeout:
        raise PipelineError(f"{name} did not answer within {timeout:g} s") from None
    except requests.ConnectionError:
        raise PipelineError(
            f"{name}: the API is not reachable; is it running? (start it with: python app.py)"
        ) from None
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if response.status_code >= 400:
        detail = answer.get("error") if isinstance(answer, dict) else response.text[:200]
        raise PipelineError(f"{name} answered {response.status_code}: {detail}")
    if answer is None:
        raise PipelineError(f"{name} answered {response.status_code} with something that is not JSON")
    return answer


def call_api(config: Config, base_url: str, token: str | None) -> dict[str, Any]:
    """Call every endpoint in turn; return the combined answers."""
    base_url = base_url.rstrip("/")
    timeout = config.api.timeout_seconds
    prediction = prediction_request(config)
    calls = [
        ("health", "GET", "/health", {}),
        ("version", "GET", "/version", {}),
        ("prediction", "POST", "/prediction", prediction),
        ("scoring", "GET", "/scoring", {}),
        ("summarystats", "GET", "/summarystats", {}),
        ("diagnostics", "GET", "/diagnostics", {}),
        ("history", "GET", "/history", {}),
    ]
    answers = {}
    with requests.Session() as session:
        if token:
            session.headers["Authorization"] = f"Bearer {token}"
        for key, method, path, kwargs in calls:
            answers[key] = call_endpoint(session, method, base_url + path, timeout, **kwargs)
            log.info("%s %s: ok", method, path)
    asked = prediction.get("json") or {"upload": str(find_test_files(config.test_data_path)[0])}
    return {"called_at": utc_now(), "api": base_url, "prediction_input": asked, "answers": answers}


def write_api_returns(config: Config, base_url: str, output: str = API_RETURNS_FILE) -> Path:
    """Call every endpoint and write the answers to ``output`` in the model folder; return its path."""
    token = os.environ.get(config.api.token_env) or None
    combined = call_api(config, base_url, token)
    target = write_text_atomic(config.output_model_path / output, json.dumps(combined, indent=2) + "\n")
    log.info("wrote the answers of %d endpoints to %s", len(combined["answers"]), target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__.splitlines()[0])
    parser.add_argument("--url", help="where the API runs (default: api.url in the config)")
    parser.add_argument(
        "--output", default=API_RETURNS_FILE, help=f"file name in the model output folder (default {API_RETURNS_FILE})"
    )
    args = parser.parse_args(argv)
    if Path(args.output).name != args.output:
        parser.error("--output is a file name, written in the model output folder")

    return run_stage(
        "apicalls", args, lambda config: write_api_returns(config, args.url or config.api.url, args.output)
    )


if __name__ == "__main__":
    raise SystemExit(main())
