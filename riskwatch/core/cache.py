"""The one cache of values computed from files: a value is kept until its key changes, and the key of files is
their signature (size and modification time, to the nanosecond), so a value is recomputed only when one of its
files is written, replaced, created or removed. Each worker keeps its own; a lock makes one thread compute."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

Value = TypeVar("Value")
Signature = tuple[tuple[int, int] | None, ...]


def files_signature(paths: Sequence[str | os.PathLike[str]]) -> Signature:
    """Each path's size and modification time, as ``core.files.file_signature`` has them; None for one that
    does not exist."""
    found: list[tuple[int, int] | None] = []
    for path in paths:
        try:
            info = os.stat(path)
        except FileNotFoundError:
            found.append(None)
            continue
        found.append((info.st_size, info.st_mtime_ns))
    return tuple(found)


class Cached(Generic[Value]):
    """A value recomputed only when its key changes; the last key and value are kept."""

    def __init__(self) -> None:
        self._key: Any = object()
        self._value: Any = None
        self._lock = threading.Lock()

    def get(self, key: Any, compute: Callable[[], Value]) -> Value:
        with self._lock:
            if key != self._key:
                self._value = compute()
                self._key = key
            return self._value  # type: ignore[no-any-return]


class FileBackedValue(Generic[Value]):
    """A value computed from the files ``list_files`` names, recomputed when one of them changes; the value's
    files must exist (FileNotFoundError naming the first missing one, before anything is computed)."""

    def __init__(self, list_files: Callable[[], list[Path]], compute: Callable[[list[Path]], Value]):
        self.list_files, self.compute = list_files, compute
        self._cached: Cached[Value] = Cached()

    def get(self) -> Value:
        """The value; OSError or PipelineError when the files are missing or unreadable."""
        files = self.list_files()
        signature = files_signature(files)
        if None in signature:
            missing = files[signature.index(None)]
            raise FileNotFoundError(2, "No such file or directory", str(missing))
        return self._cached.get((tuple(map(str, files)), signature), lambda: self.compute(files))
