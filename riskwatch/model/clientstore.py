"""The client table as a file: built once per served model and ingested data, memory-mapped by every worker.

The file is an Arrow IPC file (uncompressed, one record batch, ``dashboard.clients.CLIENT_SCHEMA``) in
``clienttables/`` inside the ingested-data folder, named ``clients-<version>-<key>-<crc32>.arrow``:
the key is a hash of the served version, its model file's inode, size and modification time, the
ingested-data files' sizes and modification times and the scoring libraries' versions; the CRC-32 is
of the file's bytes. A worker that needs the table maps the file (its pages live once in the page
cache, shared by every worker) after checking the CRC-32; when there is none, it takes the folder's
lock, looks again (another worker may have built it meanwhile), and builds and writes it: two workers
never both build the same table. A file that does not check out is set aside as ``<name>.damaged``
and built again, never served. Writing a table removes the folder's other tables. When the folder
cannot be written, the table is built in the worker's memory, as it was before files.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import logging
import os
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pyarrow as pa

from riskwatch.core.files import atomic_path, fsync_dir, hold_lock
from riskwatch.model.clients import CLIENT_SCHEMA, TableFacts

log = logging.getLogger("dashboard")

CLIENT_TABLES_FOLDER = "clienttables"  # inside the ingested-data folder (output_folder_path)
TABLE_FORMAT = 1  # raise when CLIENT_SCHEMA or what a column means changes: older files are then never read
LOCK_FILE = ".lock"
BUILD_WAIT_SECONDS = 300.0  # how long a worker waits for another one building the same table
# The libraries whose arithmetic the probabilities come from: a table scored by other versions is scored again.
SCORING_LIBRARIES = ("numpy", "scipy", "scikit-learn", "lightgbm")
SAFE_VERSION = re.compile(r"[A-Za-z0-9_.]{1,40}")
CRC_CHUNK = 1 << 24


@dataclass(frozen=True)
class TableKey:
    """What a stored table was computed from: the served version and model file, and the ingested data."""

    version: str
    model_stamp: tuple[int, int, int]  # the model file's inode, size and modification time
    data: tuple[tuple[int, int] | None, ...]  # each ingested-data file's size and modification time (None: absent)

    @functools.cached_property
    def stem(self) -> str:
        """The start of the file's name: the version (when it is a plain name) and a hash of the whole key."""
        described = [TABLE_FORMAT, self.version, list(self.model_stamp), [list(s) if s else None for s in self.data]]
        described.append(list(library_versions()))
        digest = hashlib.sha256(json.dumps(described).encode()).hexdigest()[:24]
        version = self.version if SAFE_VERSION.fullmatch(self.version) else "model"
        return f"clients-{version}-{digest}"


@functools.cache
def library_versions() -> tuple[str, ...]:
    """The versions of the scoring libraries, read once: a process keeps the ones it loaded."""
    found = []
    for name in SCORING_LIBRARIES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} absent")
    return tuple(found)


class DamagedTable(ValueError):
    """A stored table that does not check out: the reason, in words."""


def crc_of(buffer: pa.Buffer) -> int:
    """The CRC-32 of a buffer's bytes (read through the mapping: the pages stay in the page cache)."""
    view = memoryview(buffer)
    crc = 0
    for start in range(0, len(view), CRC_CHUNK):
        crc = zlib.crc32(view[start : start + CRC_CHUNK], crc)
    return crc


def map_table(path: Path, stem: str) -> pa.Table:
    """The columns of a stored table, mapped, once its bytes match the CRC-32 in its name and its columns and key
    are the ones expected; DamagedTable (or OSError, ArrowException) otherwise."""
    expected = int(path.name.removesuffix(".arrow").rsplit("-", 1)[1], 16)
    with pa.memory_map(str(path)) as source:
        buffer = source.read_buffer()
    if crc_of(buffer) != expected:
        raise DamagedTable("its bytes do not match the checksum in its name")
    columns = pa.ipc.open_file(buffer).read_all()
    if not columns.schema.equals(CLIENT_SCHEMA):
        raise DamagedTable("its columns are not the client table's")
    if TableFacts.from_columns(columns).key != stem:
        raise DamagedTable("it records another key than its name")
    columns.validate()
    return columns


def set_aside(path: Path, why: object) -> None:
    aside = path.with_name(path.name + ".damaged")
    try:
        path.replace(aside)
    except FileNotFoundError:
        return  # another worker set it aside first
    log.warning(
        "the client table %s cannot be used (%s); set aside as %s, it is built again", path.name, why, aside.name
    )


def find_stored(folder: Path, stem: str) -> pa.Table | None:
    """The columns of the stored table named ``stem``, mapped; None when there is none that checks out."""
    for path in sorted(folder.glob(f"{stem}-*.arrow")):
        try:
            return map_table(path, stem)
        except FileNotFoundError:
            continue  # replaced or set aside while it was looked at
        except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
            set_aside(path, exc)
    return None


def write_table(folder: Path, stem: str, columns: pa.Table) -> Path:
    """Write the columns (with ``stem`` as their key) atomically as ``<stem>-<crc32>.arrow``; return its path."""
    facts = TableFacts.from_columns(columns)
    columns = columns.replace_schema_metadata(TableFacts(facts.batch_times, stem).to_metadata())
    finished = folder / f"{stem}.arrow.new"
    with (
        atomic_path(finished) as tmp,
        pa.OSFile(str(tmp), "wb") as sink,
        pa.ipc.new_file(sink, columns.schema) as writer,
    ):
        writer.write_table(columns, max_chunksize=max(columns.num_rows, 1))
    with pa.memory_map(str(finished)) as source:
        crc = crc_of(source.read_buffer())
    path = folder / f"{stem}-{crc:08x}.arrow"
    os.replace(finished, path)  # the complete, synced file takes its final name: readers never see it unfinished
    fsync_dir(folder)
    return path


def remove_stale(folder: Path, stem: str) -> None:
    """Remove every file of the folder but the lock and ``stem``'s own (older tables, leftovers of a crash)."""
    for entry in folder.iterdir():
        if entry.name == LOCK_FILE or entry.name.startswith(stem):
            continue
        try:
            entry.unlink()
        except IsADirectoryError:
            continue
        except FileNotFoundError:
            continue


def open_client_columns(
    folder: Path, key: TableKey, build: Callable[[], pa.Table], unchanged: Callable[[], bool]
) -> pa.Table:
    """The columns of ``key``'s table: mapped from its file, or built with ``build`` and written first.

    ``unchanged``: whether the ingested data is still the one ``key`` names, asked after building;
    columns built from data that changed meanwhile are used once but not stored under ``key``.
    Raises what ``build`` raises, and PipelineError when another worker's build takes too long.
    """
    found = find_stored(folder, key.stem)
    if found is not None:
        return found
    busy = "another worker is building the client table ({holder}) and has not finished within the wait"
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(
                hold_lock(folder / LOCK_FILE, f"building {key.stem}", busy, wait_seconds=BUILD_WAIT_SECONDS)
            )
        except OSError as exc:  # a folder this worker may not write: LockHeld, a PipelineError, goes up
            log.warning("the client table cannot be kept in %s (%s); this worker builds its own", folder, exc)
            return build()
        found = find_stored(folder, key.stem)
        if found is not None:
            return found
        columns = build()
        if not unchanged():
            log.info("the ingested data changed while the client table was built; it is not kept")
            return columns
        try:
            path = write_table(folder, key.stem, columns)
            remove_stale(folder, key.stem)
            found = map_table(path, key.stem)
        except (OSError, ValueError, pa.ArrowException) as exc:
            log.warning("the client table cannot be kept in %s (%s); this worker uses its own", folder, exc)
            return columns
    del columns  # the worker keeps the mapped file, not what the build made
    return_freed_memory()
    return found


def return_freed_memory() -> None:
    """Give what a build freed back to the system: Arrow's memory pool and glibc's heap keep freed pages for
    reuse, and in a worker that lives for weeks they would stay its own (170 MiB after a build of 540,000 clients)."""
    pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)
