"""What a ``/prediction`` request asks about: a data file by location, JSON records, or a CSV body or upload;
and whether it asks what drives each risk (``explain``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from flask import request
from werkzeug.exceptions import BadRequest, UnsupportedMediaType

from api.locations import LocationReader
from common.schema import (
    FEATURES,
    BadFileError,
    FeatureBatch,
    describe_json_error,
    features_from_records,
    normalise_keys,
    read_feature_bytes,
    read_feature_csv,
)

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


def read_prediction_input(files: LocationReader, default_location: Callable[[], str]) -> PredictionRequest:
    """What a /prediction request asks: rows by file location, JSON records, or a CSV body or upload; and ``explain``.

    ``default_location``: the file a ``GET`` without parameters predicts for (the test data).
    ``explain`` comes from the query string (1 or 0) or a JSON object body (true or false).
    """
    explain = read_flag(request.args.get(EXPLAIN), EXPLAIN)
    mimetype = request.mimetype
    try:
        if mimetype == "application/json" or mimetype.endswith("+json"):
            batch, asked = read_json_request(files)
            return PredictionRequest(batch, explain or asked)
        values = {key: request.values[key] for key in request.values if key != EXPLAIN}  # a JSON body has no form
        return PredictionRequest(read_other_request(files, default_location, values), explain)
    except BadFileError as exc:
        raise BadRequest(str(exc)) from None


def read_other_request(
    files: LocationReader, default_location: Callable[[], str], values: dict[str, str]
) -> FeatureBatch:
    """The rows of a request that is not JSON: an upload, a CSV body, a location in the query or a form."""
    mimetype = request.mimetype
    upload = find_upload()
    if upload is not None:
        return read_feature_bytes(upload.read(), Path(upload.filename or "upload.csv").name)
    if mimetype in CSV_TYPES:
        return read_feature_csv(request.get_data(cache=False), "the CSV body")
    key = find_location_key(values)
    if key is not None:
        return files.rows(values[key])
    if request.method == "GET" and not values and not request.content_length:
        return files.rows(default_location())
    if not request.content_length and not values:
        raise BadRequest(
            'the request is empty; send JSON {"filelocation": "testdata/testdata.csv"} or {"records": [...]}, '
            "or a CSV body (Content-Type: text/csv)"
        )
    if not request.content_length or mimetype in FORM_TYPES:
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


def find_upload() -> Any:
    """The uploaded file of a multipart request: the field ``file``, else the only file field; else None."""
    if request.mimetype != "multipart/form-data" or not request.files:
        return None
    if "file" in request.files:
        return request.files["file"]
    fields = list(request.files)
    if len(fields) > 1:
        raise BadRequest(f"the upload holds {len(fields)} files ({', '.join(fields[:5])}); send one, named 'file'")
    return request.files[fields[0]]


def read_json_request(files: LocationReader) -> tuple[FeatureBatch, bool]:
    """The rows a JSON request asks about, and whether its body asks for ``explain``."""
    data = request.get_data(cache=False)
    key = find_location_key(request.args)
    if not data.strip() and key is not None:  # a client that says JSON but names the file in the query
        return files.rows(request.args[key]), False
    body = parse_json(data, "the request body")
    if isinstance(body, list):
        return features_from_records(body, "the request body"), False
    if not isinstance(body, dict):
        raise BadRequest("the JSON body must be an object with 'filelocation' or 'records', or a list of records")
    explain = read_json_flag(body, EXPLAIN)
    if "records" in body:
        return features_from_records(body["records"], "records"), explain
    key = find_location_key(body)
    if key is not None:
        value = body[key]
        if isinstance(value, (list, dict)):  # {"data": [records]} or {"data": {record}}
            return features_from_records(value if isinstance(value, list) else [value], key), explain
        return files.rows(value), explain
    if any(name in normalise_keys(body) for name in FEATURES):
        return features_from_records([body], "the request body"), explain
    raise BadRequest(
        "the JSON body needs 'filelocation' (a data file; or one of "
        f"{ACCEPTED_KEYS.removeprefix('filelocation, ')}) or 'records' (a list of client records), or one record"
    )


def parse_json(data: bytes, what: str) -> Any:
    if not data.strip():
        raise BadRequest(f"{what} is empty")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"{what}: {describe_json_error(exc, f'line {exc.lineno}, column {exc.colno}')}") from None
