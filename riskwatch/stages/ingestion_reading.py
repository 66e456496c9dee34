"""Ingestion's reading of one source file: its rows parsed and checked, batch by batch, into a cache of parsed
rows kept beside the output, reused while the file is unchanged."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.feather as feather

from riskwatch.core.errors import PipelineError, says_disk_full
from riskwatch.core.files import (
    atomic_path,
    file_signature,
    shown_name,
)
from riskwatch.core.schema import SCHEMA, UNLABELLED_SCHEMA, BadFileError
from riskwatch.data.datafiles import stream_data_file
from riskwatch.data.finaldata import (
    PARSED_FOLDER,
    parsed_path,
    pending_path,
)
from riskwatch.state.artifacts import (
    IngestedFile,
    utc_now,
)

if TYPE_CHECKING:
    pass


log = logging.getLogger("ingestion")


@dataclass
class FileCounts:
    """What reading one file found, batch by batch."""

    read: int = 0
    labelled: int = 0
    pending: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def add(self, read: int, labelled: int, pending: int, dropped: dict[str, int]) -> None:
        self.read, self.labelled, self.pending = self.read + read, self.labelled + labelled, self.pending + pending
        for reason, count in dropped.items():
            self.dropped[reason] = self.dropped.get(reason, 0) + count


def write_parsed_batches(
    path: Path, labelled_target: Path, pending_target: Path, block_bytes: int | None
) -> FileCounts:
    """Stream a data file's checked rows into its two caches (with and without an outcome); return the counts."""
    counts = FileCounts()
    with atomic_path(labelled_target) as labelled_tmp, atomic_path(pending_target) as pending_tmp:
        with (
            pa.ipc.new_file(str(labelled_tmp), SCHEMA) as labelled_sink,
            pa.ipc.new_file(str(pending_tmp), UNLABELLED_SCHEMA) as pending_sink,
        ):
            for batch in stream_data_file(path, block_bytes):
                if batch.labelled.num_rows:
                    labelled_sink.write_table(batch.labelled)
                if batch.pending.num_rows:
                    pending_sink.write_table(batch.pending)
                counts.add(batch.rows_read, batch.labelled.num_rows, batch.pending.num_rows, batch.dropped)
        check_rows_found(path.name, counts)
    return counts


def check_rows_found(name: str, counts: FileCounts) -> None:
    """BadFileError for a file with no data rows or no valid one."""
    if counts.read == 0:
        raise BadFileError(f"{name}: the file has a header but no data rows")
    if counts.labelled + counts.pending == 0:
        reasons = ", ".join(f"{count} {reason}" for reason, count in counts.dropped.items())
        raise BadFileError(f"{name}: none of its {counts.read} rows is valid ({reasons})")


def parse_new_file(path: Path, sha256: str, output_folder_path: Path, block_bytes: int | None = None) -> IngestedFile:
    """Read and check one data file a batch at a time, cache its valid rows by content hash, and describe it.

    Rows whose outcome is blank are cached apart; a file all of whose rows are such is an unlabelled file.
    """
    labelled_target, pending_target = parsed_path(output_folder_path, sha256), pending_path(output_folder_path, sha256)
    try:
        counts = write_parsed_batches(path, labelled_target, pending_target, block_bytes)
        if counts.labelled == 0:
            os.replace(pending_target, labelled_target)  # no outcome anywhere: an unlabelled file
        elif counts.pending == 0:
            pending_target.unlink()
    except (OSError, pa.ArrowException) as exc:  # the output side: the file itself is fine
        why = "the disk is full; free some space and run again" if says_disk_full(exc) else str(exc)
        raise PipelineError(
            f"cannot keep the parsed rows of {path.name} in {output_folder_path / PARSED_FOLDER} ({why})"
        ) from None
    labelled = counts.labelled > 0
    detail = ", ".join(f"{count} {reason}" for reason, count in counts.dropped.items())
    pending = f" ({counts.pending} with the outcome not known yet)" if labelled and counts.pending else ""
    log.info(
        "%s: %d %srows kept%s, %d dropped%s",
        path.name,
        counts.labelled if labelled else counts.pending,
        "" if labelled else "unlabelled ",
        pending,
        sum(counts.dropped.values()),
        f" ({detail})" if detail else "",
    )
    return IngestedFile(
        path.name,
        sha256,
        counts.labelled if labelled else counts.pending,
        sum(counts.dropped.values()),
        utc_now(),
        labelled,
        counts.pending if labelled else 0,
    )


def usable_cache(output_folder_path: Path, sha256: str, pending: bool = False) -> bool:
    """Whether the cached rows of a file can be read; a damaged cache is named, set aside, and rebuilt from its file.

    ``pending``: the file has rows with a blank outcome, whose cache must be readable too.
    """
    if pending and not usable_cache_file(pending_path(output_folder_path, sha256)):
        return False
    return usable_cache_file(parsed_path(output_folder_path, sha256))


def usable_cache_file(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        table = feather.read_table(path, memory_map=True)
        if not (table.schema.equals(SCHEMA) or table.schema.equals(UNLABELLED_SCHEMA)):
            raise ValueError("its columns are not the schema's")
    except Exception as exc:  # only a cache: any fault in it means read the source again
        aside = path.with_name(path.name + ".damaged")
        path.replace(aside)
        log.warning(
            "the cached rows %s cannot be read (%s); set aside as %s, the file is read again", path, exc, aside.name
        )
        return False
    return True


class StillArriving(Exception):
    """A file that changed while it was read, or too recently: it is read once it has stopped changing."""


def read_new_file(
    path: Path, digest: str, output_folder_path: Path, signature: list[int], block_bytes: int | None = None
) -> IngestedFile:
    """``parse_new_file``, with whatever else goes wrong in reading one file turned into BadFileError naming it.

    ``signature``: the file's size and modification time before its hash was taken; a file that
    no longer has them was written to while being read, and raises StillArriving.
    """
    try:
        parsed = parse_new_file(path, digest, output_folder_path, block_bytes)
        if file_signature(path) != signature:
            parsed_path(output_folder_path, digest).unlink(missing_ok=True)
            pending_path(output_folder_path, digest).unlink(missing_ok=True)
            raise StillArriving(f"{shown_name(path.name)} changed while it was read")
        return parsed
    except (BadFileError, StillArriving):
        raise
    except (OSError, ValueError, UnicodeError, OverflowError, RecursionError, pa.ArrowException) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise BadFileError(f"{path.name}: cannot be read ({detail})") from None
