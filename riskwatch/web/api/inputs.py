"""What a ``/prediction`` request asks about: a data file by location, JSON records, or a CSV body or upload;
and whether it asks what drives each risk (``explain``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from flask import Request, request
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, UnsupportedMediaType

from riskwatch.core.config import ApiSettings
from riskwatch.core.schema import (
    FEATURES,
    BadFileError,
    FeatureBatch,
    TooManyRowsError,
    describe_json_error,
    features_from_records,
    normalise_keys,
    read_feature_bytes,
    read_feature_csv,
)
from riskwatch.web.api.body import read_whole_body
from riskwatch.web.api.locations import LocationReader

CSV_TYPES = ("text/csv", "application/csv", "text/plain")
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
# The names classic clients give the data file, in the query string, a JSON body or a form; the first found is used.
LOCATION_KEYS = (
    "filelocation",
    "file_location",
    "filename",
    "file_name",
    "filepath",
    "file_path",
    "data_path",
    "dataset_path",
    "data_file",
    "inputdata",
    "input_data",
    "data",
)
ACCEPTED_KEYS = ", ".join(LOCATION_KEYS)
EXPLAIN = "explain"


@dataclass(frozen=True)
class PredictionRequest:
    """The rows to score, and whether the answer should say what drives each row's risk."""

    batch: FeatureBatch
    explain: bool


def read_prediction_input(
    files: LocationReader, default_location: Callable[[], str], settings: ApiSettings
) -> PredictionRequest:
    """What a /prediction request asks: rows by file location, JSON records, or a CSV body or upload; and ``explain``.

    ``default_location``: the file a ``GET`` without parameters predicts for (the test data).
    ``explain`` comes from the query string (1 or 0) or a JSON object body (true or false); it is known before
    any row is read, so the rows are read only up to the request's limit (``row_limit``): past it, a 413.
    """
    asked: Request = request._get_current_object()  # type: ignore[attr-defined]  # once, not through the proxy
    has_query = bool(asked.environ.get("QUERY_STRING"))  # most requests have none: no query to parse
    explain = has_query and read_flag(asked.args.get(EXPLAIN), EXPLAIN)
    mimetype = read_mimetype(asked)
    is_json = mimetype == "application/json" or mimetype.endswith("+json")
    body = read_json_body(asked, has_query) if is_json else None
    explain = explain or (isinstance(body, dict) and read_json_flag(body, EXPLAIN))
    limit = row_limit(settings, explain)
    try:
        if is_json:
            return PredictionRequest(read_json_rows(files, body, limit), explain)
        values = {key: asked.values[key] for key in asked.values if key != EXPLAIN}  # a JSON body has no form
        return PredictionRequest(read_other_request(asked, files, default_location, values, limit), explain)
    except BadFileError as exc:
        raise BadRequest(str(exc)) from None
    except TooManyRowsError as exc:
        raise RequestEntityTooLarge(describe_too_many_rows(exc, explain, settings)) from None


def read_mimetype(asked: Request) -> str:
    """The body's media type; a plain ``application/json`` header, the common case, is taken as it is."""
    content_type = asked.environ.get("CONTENT_TYPE", "")
    return content_type if content_type == "application/json" else asked.mimetype


def row_limit(settings: ApiSettings, explain: bool) -> int:
    """The most rows one request may ask about: ``api.max_rows``, and with ``explain`` ``api.max_explain_rows``."""
    return min(settings.max_explain_rows, settings.max_rows) if explain else settings.max_rows


def describe_too_many_rows(exc: TooManyRowsError, explain: bool, settings: ApiSettings) -> str:
    """The 413 sentence: how many rows (or that there are more than the limit), the limit and its setting."""
    if exc.rows is None:  # the reader stopped once past the limit
        counted = f"{exc.source} has more than the {exc.limit:,} rows"
    else:
        counted = f"{exc.rows:,} rows is more than the {exc.limit:,}"
    if explain and settings.max_explain_rows < settings.max_rows:
        return f"{counted} the API explains at once (api.max_explain_rows); send fewer rows, or ask without explain"
    return f"{counted} the API scores at once (api.max_rows)"


def read_other_request(
    asked: Request, files: LocationReader, default_location: Callable[[], str], values: dict[str, str], max_rows: int
) -> FeatureBatch:
    """The rows of a request that is not JSON: an upload, a CSV body, a location in the query or a form."""
    mimetype = asked.mimetype
    upload = find_upload(asked)
    if upload is not None:
        return read_feature_bytes(upload.read(), Path(upload.filename or "upload.csv").name, max_rows)
    if mimetype in CSV_TYPES:
        return read_feature_csv(asked.get_data(cache=False), "the CSV body", max_rows)
    key = find_location_key(values)
    if key is not None:
        return files.rows(values[key], max_rows)
    if asked.method == "GET" and not values and not asked.content_length:
        return files.rows(default_location(), max_rows)
    if not asked.content_length and not values:
        raise BadRequest(
            'the request is empty; send JSON {"filelocation": "testdata/testdata.csv"} or {"records": [...]}, '
            "or a CSV body (Content-Type: text/csv)"
        )
    if not asked.content_length or mimetype in FORM_TYPES:
        raise BadRequest(f"name the data file with one of {ACCEPTED_KEYS} (in the query string, JSON or a form)")
    raise UnsupportedMediaType(
        f"cannot read a body of type {mimetype or '(none given)'}; send application/json, text/csv "
        "or a multipart upload named 'file'"
    )


def read_flag(value: str | None, name: str) -> bool:
    """A yes/no query parameter: absent, 0, false or no is no; 1, true or yes is yes."""
    if value is None or value.lower() in ("0", "false", "no"):
        return False
    if value.lower() in ("1", "true", "yes"):
        return True
    raise BadRequest(f"{name} must be 1 or 0 (true or false), not {value[:40]!r}")


def read_json_flag(body: dict, name: str) -> bool:
    """A yes/no field of a JSON object: absent or false is no, true is yes; anything else is a 400 naming it."""
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false, not {orjson.dumps(value).decode()[:40]}")
    return value


def find_location_key(values: Any) -> str | None:
    """The first of ``LOCATION_KEYS`` that ``values`` (the query, a form or a JSON object) holds."""
    return next((key for key in LOCATION_KEYS if key in values), None)


def find_upload(asked: Request) -> Any:
    """The uploaded file of a multipart request: the field ``file``, else the only file field; else None."""
    if asked.mimetype != "multipart/form-data" or not asked.files:
        return None
    if "file" in asked.files:
        return asked.files["file"]
    fields = list(asked.files)
    if len(fields) > 1:
        raise BadRequest(f"the upload holds {len(fields)} files ({', '.join(fields[:5])}); send one, named 'file'")
    return asked.files[fields[0]]


def read_json_body(asked: Request, has_query: bool) -> Any:
    """The parsed JSON body; when it is empty and the query string names the file (a client that says JSON but
    names the file in the query), an object naming that file."""
    data = read_whole_body(asked)
    if has_query and not data.strip():
        key = find_location_key(asked.args)
        if key is not None:
            return {key: asked.args[key]}
    return parse_json(data, "the request body")


def read_json_rows(files: LocationReader, body: Any, max_rows: int) -> FeatureBatch:
    """The rows a JSON request asks about (``body`` from ``read_json_body``), at most ``max_rows``."""
    if isinstance(body, list):
        return features_from_records(body, "the request body", max_rows)
    if not isinstance(body, dict):
        raise BadRequest("the JSON body must be an object with 'filelocation' or 'records', or a list of records")
    if "records" in body:
        return features_from_records(body["records"], "records", max_rows)
    key = find_location_key(body)
    if key is not None:
        value = body[key]
        if isinstance(value, (list, dict)):  # {"data": [records]} or {"data": {record}}
            return features_from_records(value if isinstance(value, list) else [value], key, max_rows)
        return files.rows(value, max_rows)
    if any(name in normalise_keys(body) for name in FEATURES):
        return features_from_records([body], "the request body", max_rows)
    raise BadRequest(
        "the JSON body needs 'filelocation' (a data file; or one of "
        f"{ACCEPTED_KEYS.removeprefix('filelocation, ')}) or 'records' (a list of client records), or one record"
    )


def parse_json(data: bytes, what: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if not data.strip():
            raise BadRequest(f"{what} is empty") from None
        raise BadRequest(f"{what}: {describe_json_error(exc, f'line {exc.lineno}, column {exc.colno}')}") from None
