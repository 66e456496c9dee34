"""What a ``/prediction`` request asks about: a data file by location, JSON records, or a CSV body or upload."""

from __future__ import annotations

from collections.abc import Callable
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


def read_prediction_input(files: LocationReader, default_location: Callable[[], str]) -> FeatureBatch:
    """The rows a /prediction request asks about: by file location, JSON records, or a CSV body or upload.

    ``default_location``: the file a ``GET`` without parameters predicts for (the test data).
    """
    mimetype = request.mimetype
    try:
        if mimetype == "application/json" or mimetype.endswith("+json"):
            return read_json_request(files)
        upload = find_upload()
        if upload is not None:
            return read_feature_bytes(upload.read(), Path(upload.filename or "upload.csv").name)
        if mimetype in CSV_TYPES:
            return read_feature_csv(request.get_data(cache=False), "the CSV body")
        key = find_location_key(request.values)
        if key is not None:
            return files.rows(request.values[key])
        if request.method == "GET" and not request.values and not request.content_length:
            return files.rows(default_location())
    except BadFileError as exc:
        raise BadRequest(str(exc)) from None
    if not request.content_length and not request.values:
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


def read_json_request(files: LocationReader) -> FeatureBatch:
    data = request.get_data(cache=False)
    key = find_location_key(request.args)
    if not data.strip() and key is not None:  # a client that says JSON but names the file in the query
        return files.rows(request.args[key])
    body = parse_json(data, "the request body")
    if isinstance(body, list):
        return features_from_records(body, "the request body")
    if not isinstance(body, dict):
        raise BadRequest("the JSON body must be an object with 'filelocation' or 'records', or a list of records")
    if "records" in body:
        return features_from_records(body["records"], "records")
    key = find_location_key(body)
    if key is not None:
        value = body[key]
        if isinstance(value, (list, dict)):  # {"data": [records]} or {"data": {record}}
            return features_from_records(value if isinstance(value, list) else [value], key)
        return files.rows(value)
    if any(name in normalise_keys(body) for name in FEATURES):
        return features_from_records([body], "the request body")
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
