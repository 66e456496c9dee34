"""Atomic writes, content hashes and the listing of data files in a folder."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import stat
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

from riskwatch.core.errors import PipelineError

DATA_SUFFIXES = (".csv", ".json", ".jsonl")
_STRAY_SUFFIXES = (".bak", ".swp", ".swo", ".tmp", ".orig", ".part")
CLASSIC_TEST_FILE = "testdata.csv"


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success move it over ``target`` atomically.

    A crash at any instant leaves either the old file or the new one, never half of one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; give the file the usual mode
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


@functools.cache
def current_umask() -> int:
    """The process umask, read once (reading it means setting it, which is not thread-safe)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(target: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically and return ``target``."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def utc_now() -> str:
    """The current UTC time as ISO 8601 with a Z, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_utc(text: object) -> datetime | None:
    """A time written by ``utc_now`` (or any ISO 8601 time; one without a zone is UTC), or None when unreadable."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def list_names(names: Sequence[str], limit: int = 5) -> str:
    """Names joined by commas, the tail summarised when there are more than ``limit``."""
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:limit])} and {len(names) - limit} more"


class LockHeld(PipelineError):
    """Another process holds the lock; the message names it (pid, what it is doing, since when)."""


LOCK_POLL_SECONDS = 0.05


@contextlib.contextmanager
def hold_lock(path: Path, owner: str, busy: str, wait_seconds: float = 0.0) -> Iterator[Path]:
    """Hold an exclusive ``flock`` on ``path``, noting ``owner`` in it; raise LockHeld if it is held.

    ``busy`` is the message, with ``{holder}`` for what the holder noted. ``wait_seconds``: how long to
    wait for a holder to let go before raising (0: raise at once). The wait polls, so a gevent worker's
    other requests go on meanwhile. The lock is released when its holder ends, however it ends
    (kill -9 included): a stale lock file never blocks.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_seconds
    with open(path, "a+", encoding="utf-8") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(LOCK_POLL_SECONDS)
                    continue
                handle.seek(0)
                holder = handle.read().strip() or "a process"
                raise LockHeld(busy.format(holder=holder)) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}, started {utc_now()}, {owner}\n")
        handle.flush()
        yield path


def folder_lock(folder: Path, what: str) -> contextlib.AbstractContextManager[Path]:
    """Hold an exclusive lock on ``folder`` for ``what``; fail at once if another process holds it."""
    return hold_lock(
        folder / ".lock", what, f"another {what} into {folder} is running ({{holder}}); try again when it ends"
    )


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


# Every character Python's ``str.splitlines`` breaks a line at (U+2028 among them): a name holding one
# would be two lines of ingestedfiles.txt.
LINE_SEPARATORS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


def is_stray_file(path: Path) -> bool:
    """True for files that are never data: hidden files, editor backups, partial downloads."""
    name = path.name
    return name.startswith((".", "~")) or name.endswith("~") or name.lower().endswith(_STRAY_SUFFIXES)


def shown_name(name: str) -> str:
    """A file name as it can be logged and written: undecodable bytes and line breaks made visible."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text if text.isprintable() else repr(text)


def shown_path(path: Path, base: Path) -> str:
    """A path as clients may see it: relative to ``base`` (the project folder) when inside it, else its name."""
    path = Path(path)
    return str(path.relative_to(base)) if path.is_relative_to(base) else path.name


def refusal(entry: Path, folder: Path) -> str | None:
    """Why a data-named entry of a data folder is not read, or None when it is a plain file of that folder.

    The data folder is a trust boundary: a link out of it, a file with other hard links (it may be
    a file from elsewhere) and anything that is not a regular file are never read.
    """
    name = entry.name
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not UTF-8 text; rename it"
    if any(character in LINE_SEPARATORS or character == "\t" for character in name):
        return "its name holds a line break or a tab; rename it"
    try:
        if entry.is_symlink():
            target = entry.resolve()
            if target.parent != Path(folder).resolve():
                return f"it is a link to a file outside {Path(folder).name}; copy the file in instead"
        info = entry.stat()
    except OSError as exc:
        return f"it cannot be read ({exc.strerror})"
    if not stat.S_ISREG(info.st_mode):
        return "it is not a regular file"
    if info.st_nlink > 1 and not entry.is_symlink():
        return "it has other hard links, so it may be a file from elsewhere; copy it in instead"
    return None


def list_source_files(folder: Path) -> tuple[list[Path], list[Path], dict[str, str]]:
    """(data files, other files, refused data-named entries with the reason), directly inside ``folder``, by name."""
    data, ignored, refused = [], [], {}
    for entry in sorted(Path(folder).iterdir(), key=lambda p: p.name):
        if is_stray_file(entry) or entry.suffix.lower() not in DATA_SUFFIXES:
            if entry.is_file():
                ignored.append(entry)
            continue
        reason = refusal(entry, folder)
        if reason is None:
            data.append(entry)
        else:
            refused[shown_name(entry.name)] = reason
    return data, ignored, refused


def list_data_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """Return (data files, ignored files) directly inside ``folder``, each sorted by name."""
    data, ignored, _ = list_source_files(folder)
    return data, ignored


def find_test_files(test_data_path: Path) -> list[Path]:
    """The test data files: the path itself, or ``testdata.csv`` in the folder, or every data file in it."""
    if test_data_path.is_file():
        return [test_data_path]
    if not test_data_path.is_dir():
        raise PipelineError(f"test data {test_data_path} does not exist")
    if (test_data_path / CLASSIC_TEST_FILE).is_file():
        return [test_data_path / CLASSIC_TEST_FILE]
    files, _ = list_data_files(test_data_path)
    if not files:
        raise PipelineError(f"test data folder {test_data_path} holds no .csv, .json or .jsonl file")
    return files


def changed_within(signature: list[int], seconds: float) -> bool:
    """Whether a file of this ``file_signature`` was modified less than ``seconds`` ago (it may still be written).

    A modification time far in the future (a file restored with odd times) does not hold a file back.
    """
    return seconds > 0 and abs(time.time_ns() - signature[1]) < seconds * 1e9


def file_signature(path: Path) -> list[int]:
    """What changes whenever a file is written or replaced: its size and modification time (to the nanosecond).

    Not the inode, so a backup restored with its times (``cp -p``) is still recognised.
    """
    info = path.stat()
    return [info.st_size, info.st_mtime_ns]
