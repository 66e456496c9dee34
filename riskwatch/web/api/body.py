"""Request bodies are read to their end or refused, whatever their framing or encoding.

Werkzeug enforces ``MAX_CONTENT_LENGTH`` against a ``Content-Length`` header, but a body sent with
``Transfer-Encoding: chunked`` has none: read as a stream it would simply stop at the limit, and
a CSV cut there is a smaller CSV, scored as if it were whole. So before the application sees a
request, this middleware reads such a body to its end (at most the limit plus one byte): over
the limit it is a 413, malformed framing is a 400, and otherwise the application gets the whole
body with its length. A ``Content-Encoding: gzip`` (or ``deflate``) body is decompressed here,
bounded by the same limit, so it is scored as what it says it is; other encodings get a 415.
"""

from __future__ import annotations

import io
import logging
import zlib
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from flask import Request
from werkzeug.exceptions import BadRequest

log = logging.getLogger("app")

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WsgiApp = Callable[[Environ, StartResponse], Iterable[bytes]]

READ_STEP = 1024 * 1024
# zlib's window bits: 16 + 15 is gzip, 15 is the zlib ("deflate") wrapper.
DECOMPRESSORS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


# Set in the environ of a request whose body this middleware has settled: a Content-Length within the limit.
SETTLED = "risk.body_settled"


class BodyRefused(Exception):
    """A request body the API cannot take: the status and the sentence to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class WholeBodies:
    """WSGI middleware: hand the application only bodies read whole, of a known length, decoded."""

    def __init__(self, app: WsgiApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        try:
            settle_body(environ, self.max_bytes)
        except BodyRefused as refused:
            answer = refuse(start_response, refused)
            return [] if environ.get("REQUEST_METHOD") == "HEAD" else answer
        environ[SETTLED] = True
        return self.app(environ, start_response)


def settle_body(environ: Environ, max_bytes: int) -> None:
    """Replace a streamed or encoded body in ``environ`` by the whole, decoded bytes; raise BodyRefused."""
    declared = environ.get("CONTENT_LENGTH", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise BodyRefused(413, too_large(max_bytes))  # refused before any endpoint, whether it reads bodies or not
    encoding = environ.get("HTTP_CONTENT_ENCODING", "").strip().lower()
    streamed = not declared and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    if not streamed and encoding in ("", "identity"):
        return  # a Content-Length body: Werkzeug reads it to its declared end, or answers 400
    if encoding not in ("", "identity") and encoding not in DECOMPRESSORS:
        raise BodyRefused(415, f"cannot read a body with Content-Encoding {encoding[:40]!r}; send it as is or gzip")
    data = read_to_end(environ["wsgi.input"], max_bytes)
    if encoding in DECOMPRESSORS:
        data = decompress(data, DECOMPRESSORS[encoding], encoding, max_bytes)
        environ.pop("HTTP_CONTENT_ENCODING", None)
    environ["wsgi.input"] = io.BytesIO(data)
    environ["CONTENT_LENGTH"] = str(len(data))
    environ.pop("HTTP_TRANSFER_ENCODING", None)
    environ.pop("wsgi.input_terminated", None)


def read_whole_body(asked: Request) -> bytes:
    """A request's whole body. Once ``WholeBodies`` has settled it (its length known and within the limit), it is
    read straight from the input, without Werkzeug's stream wrapper, which costs more than a small body's reading;
    a body that ends before its declared length is a 400, as Werkzeug's wrapper would make it."""
    environ = asked.environ
    length = environ.get("CONTENT_LENGTH") or "0"
    if not environ.get(SETTLED) or not length.isdigit():
        return asked.get_data(cache=False)
    expected = int(length)
    data = environ["wsgi.input"].read(expected) if expected else b""
    if len(data) != expected:
        raise BadRequest("the request body did not arrive whole (it ended before its Content-Length)")
    return data


def read_to_end(stream: Any, max_bytes: int) -> bytes:
    """All of a body, or BodyRefused when it is longer than ``max_bytes`` or its framing is broken."""
    parts: list[bytes] = []
    size = 0
    try:
        while True:
            part = stream.read(min(READ_STEP, max_bytes + 1 - size))
            if not part:
                return b"".join(parts)
            parts.append(part)
            size += len(part)
            if size > max_bytes:
                raise BodyRefused(413, too_large(max_bytes))
    except BodyRefused:
        raise
    except Exception as exc:  # gunicorn's parse errors, a client gone, a reset: the body never arrived whole
        log.info("request body not read whole: %s", type(exc).__name__)
        raise BodyRefused(
            400, "the request body did not arrive whole (its chunked encoding is broken or cut)"
        ) from None


def decompress(data: bytes, window_bits: int, encoding: str, max_bytes: int) -> bytes:
    """``data`` decoded, or BodyRefused when it is not valid ``encoding`` or decodes to over ``max_bytes``."""
    decoder = zlib.decompressobj(window_bits)
    try:
        plain = decoder.decompress(data, max_bytes + 1)
        if len(plain) <= max_bytes and not decoder.unconsumed_tail:
            plain += decoder.flush()
    except zlib.error:
        raise BodyRefused(400, f"the request body is not valid {encoding} data") from None
    if len(plain) > max_bytes or decoder.unconsumed_tail:
        raise BodyRefused(413, too_large(max_bytes, decoded=True))
    if not decoder.eof:
        raise BodyRefused(400, f"the request body is cut short: its {encoding} data does not end")
    return plain


def too_large(max_bytes: int, decoded: bool = False) -> str:
    what = "the request body, decompressed," if decoded else "the request body"
    return f"{what} is larger than the {max_bytes / (1024 * 1024):.3g} MiB the API accepts"


def refuse(start_response: StartResponse, refused: BodyRefused) -> list[bytes]:
    """Answer the refusal as the API answers every error, and close the connection (the rest of the body is unread)."""
    body = orjson.dumps({"error": refused.message, "status": refused.status})
    reason = {400: "BAD REQUEST", 413: "REQUEST ENTITY TOO LARGE", 415: "UNSUPPORTED MEDIA TYPE"}[refused.status]
    start_response(
        f"{refused.status} {reason}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Connection", "close")],
    )
    return [body]
