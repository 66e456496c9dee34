"""Which files ``/prediction`` may read by location: the data folders, and nothing outside them.

The check is made on the opened file itself (``O_NOFOLLOW``, then its real path from
``/proc/self/fd``), so a file swapped for a link between the check and the read is refused too.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from collections import OrderedDict
from pathlib import Path, PurePosixPath
from typing import Any

from werkzeug.exceptions import BadRequest, Forbidden, NotFound, RequestEntityTooLarge

from riskwatch.core.config import Config
from riskwatch.core.files import DATA_SUFFIXES, shown_path
from riskwatch.core.schema import FeatureBatch, TooManyRowsError, read_feature_stream

log = logging.getLogger("app")

MIB = 1024 * 1024
MAX_LOCATION = 1024  # longest filelocation looked at
MAX_SHOWN = 200  # longest piece of a client's input echoed in an error
CACHED_FILES = 8  # parsed data files kept per worker, for repeated requests by location
CACHED_ROWS = 20_000  # files of more rows are parsed on every request: the cache holds at most 8 x 20,000 rows


def allowed_data_places(config: Config) -> list[Path]:
    """The folders (or the one test file) whose files ``/prediction`` may read by location.

    A data folder that holds the config, the models or the deployment is left out, so a config
    such as ``"input_folder_path": "."`` never opens the whole project to requests.
    """
    protected = (config.path, config.output_model_path, config.prod_deployment_path)
    places = []
    for place in (config.input_folder_path, config.output_folder_path, config.test_data_path):
        if place is None:  # a database is the only source
            continue
        if place.is_dir() and any(path.is_relative_to(place) for path in protected):
            log.warning("/prediction will not read files in %s by location: it holds the config or models", place)
            continue
        places.append(place)
    return places


def open_data_location(location: object, base: Path, places: list[Path], max_bytes: int) -> tuple[int, Any, str]:
    """Open the file a ``filelocation`` names: (descriptor, its stat, its name). The caller closes the descriptor.

    A relative name is looked up in the project (config) folder, then in each data folder, so
    ``testdata.csv`` finds ``testdata/testdata.csv``; an absolute one is taken as it is. Either way
    the file must lie inside ``places`` (403 otherwise). The check is made on the opened file
    itself, so a file swapped for a link between check and read is caught too.
    """
    path, shown = check_location(location)
    try:
        real = resolve_location(path, base, places)  # follows links: a link out of the data folders is caught
    except (OSError, RuntimeError, ValueError):
        raise BadRequest(f"filelocation {shown!r} is not a usable file name") from None
    if not _inside(real, places):
        raise outside_data_folders(shown, places, base)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"{shown} does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise outside_data_folders(shown, places, base) from None  # it became a link after the check
        raise BadRequest(f"{shown} cannot be read ({exc.strerror})") from None
    try:
        opened = _opened_path(fd)
        if opened is not None and not _inside(opened, places):
            raise outside_data_folders(shown, places, base)  # a folder on the way was swapped for a link
        info = check_opened_file(fd, os.path.basename(real), shown, max_bytes)
    except BaseException:
        os.close(fd)
        raise
    return fd, info, os.path.basename(real)


def outside_data_folders(shown: str, places: list[Path], base: Path) -> Forbidden:
    return Forbidden(f"{shown} is outside the data folders ({', '.join(shown_path(place, base) for place in places)})")


def check_location(location: object) -> tuple[PurePosixPath, str]:
    """The path a ``filelocation`` names and how to show it, after the checks on its text alone (400 or 403)."""
    if not isinstance(location, str) or not location.strip():
        raise BadRequest("filelocation must be a non-empty string, such as testdata/testdata.csv")
    shown = location if len(location) <= MAX_SHOWN else location[:MAX_SHOWN] + "..."
    if len(location) > MAX_LOCATION or "\x00" in location:
        raise BadRequest(f"filelocation {shown!r} is not a usable file name")
    if "\\" in location:
        raise Forbidden("filelocation may not contain backslashes; separate folders with /")
    path = PurePosixPath(location.strip())
    if location.startswith("~") or (len(location) > 1 and location[1] == ":"):
        raise Forbidden(
            "filelocation must be a path relative to the project folder, such as testdata/testdata.csv, "
            "or an absolute path inside a data folder"
        )
    if ".." in path.parts:
        raise Forbidden("filelocation may not contain '..'")
    return path, shown


def check_opened_file(fd: int, name: str, shown: str, max_bytes: int) -> os.stat_result:
    """The opened file's stat, after checking it is a plain data file of one name, small enough to read."""
    info = os.fstat(fd)
    if stat.S_ISDIR(info.st_mode):
        raise BadRequest(f"{shown} is a folder; name a data file in it")
    if not stat.S_ISREG(info.st_mode):
        raise BadRequest(f"{shown} is not a regular file")
    if info.st_nlink > 1:  # another name for the same file, possibly outside the data folders
        raise Forbidden(f"{shown} is a hard link (the file has other names); copy the file into a data folder")
    if not name.lower().endswith(DATA_SUFFIXES):
        raise BadRequest(f"{shown} is not a .csv, .json or .jsonl file")
    if info.st_size > max_bytes:
        raise RequestEntityTooLarge(f"{shown} is larger than the {max_bytes / MIB:g} MiB the API reads")
    return info


def resolve_location(path: PurePosixPath, base: Path, places: list[Path]) -> str:
    """The resolved path a location names: absolute as given; relative to ``base``, else to the first data folder
    that holds it (else relative to ``base``, for the error to name)."""
    if path.is_absolute():
        return os.path.realpath(path)
    first = os.path.realpath(os.path.join(base, path))
    if os.path.lexists(first):
        return first
    for place in places:
        candidate = os.path.join(place, path)
        if os.path.lexists(candidate):
            return os.path.realpath(candidate)
    return first


class LocationReader:
    """The rows of data files named by location, each version of a small file parsed once.

    A file is the same when its device, inode, size and modification time are (an edit or an
    atomic replacement changes one of them); the last ``CACHED_FILES`` files of at most
    ``CACHED_ROWS`` rows are kept. Every request still opens and checks the file. CSV and JSON
    Lines are read a block at a time and the reading stops once past the request's row limit, so
    a large file costs what that many rows take, never the file; a JSON array is parsed whole,
    so it may be at most ``max_whole_bytes`` long (the request body's limit).
    """

    def __init__(self, base: Path, places: list[Path], max_bytes: int, max_whole_bytes: int | None = None):
        self.base, self.places, self.max_bytes = base, places, max_bytes
        self.max_whole_bytes = max_bytes if max_whole_bytes is None else max_whole_bytes
        self._parsed: OrderedDict[tuple[int, int, int, int], FeatureBatch] = OrderedDict()
        self._lock = threading.Lock()

    def rows(self, location: object, max_rows: int | None = None) -> FeatureBatch:
        """The rows of the file ``location`` names; TooManyRowsError past ``max_rows``, read no further."""
        fd, info, name = open_data_location(location, self.base, self.places, self.max_bytes)
        key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        try:
            with self._lock:
                batch = self._parsed.get(key)
                if batch is not None:
                    self._parsed.move_to_end(key)
            if batch is None:
                self.check_whole_size(name, info, location)
                with open(fd, "rb", closefd=False) as handle:
                    batch = read_feature_stream(handle, name, max_rows)
                self.keep(key, batch)
        finally:
            os.close(fd)
        if max_rows is not None and batch.rows > max_rows:
            raise TooManyRowsError(name, max_rows, batch.rows)
        return batch

    def check_whole_size(self, name: str, info: os.stat_result, location: object) -> None:
        """A JSON array is parsed whole: 413 when it is longer than ``max_whole_bytes``."""
        if name.lower().endswith(".json") and info.st_size > self.max_whole_bytes:
            shown = check_location(location)[1]
            raise RequestEntityTooLarge(
                f"{shown} is a JSON file larger than the {self.max_whole_bytes / MIB:.3g} MiB the API parses whole; "
                "send it as JSON Lines (.jsonl) or CSV, which are read in parts"
            )

    def keep(self, key: tuple[int, int, int, int], batch: FeatureBatch) -> None:
        """Keep a small file's rows for the next request that names it (read-only: requests share them)."""
        if batch.rows > CACHED_ROWS:
            return
        batch.features.flags.writeable = False
        with self._lock:
            self._parsed[key] = batch
            while len(self._parsed) > CACHED_FILES:
                self._parsed.popitem(last=False)


def _inside(path: str, places: list[Path]) -> bool:
    """Whether a resolved path is one of ``places`` or lies under one (compared as strings: this is per request)."""
    return any(path == str(place) or path.startswith(f"{place}{os.sep}") for place in places)


def _opened_path(fd: int) -> str | None:
    """Where an open file really is (Linux's /proc), or None where that cannot be asked."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
