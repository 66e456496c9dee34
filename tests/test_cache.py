"""The one cache of values computed from files (riskwatch/core/cache.py)."""

from __future__ import annotations

import os

import pytest

from riskwatch.core.cache import Cached, FileBackedValue, files_signature


def test_a_value_is_computed_once_until_its_file_changes(tmp_path):
    source = tmp_path / "summary.json"
    source.write_text("one")
    computed: list[str] = []

    def compute(files):
        computed.append(files[0].read_text())
        return computed[-1]

    value = FileBackedValue(lambda: [source], compute)
    assert [value.get(), value.get()] == ["one", "one"] and computed == ["one"]

    source.write_text("three")  # another size
    assert value.get() == "three"
    stat = source.stat()
    source.write_text("four!")  # the same size, a later time
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert value.get() == "four!" and computed == ["one", "three", "four!"]


def test_a_missing_file_is_named_before_anything_is_computed(tmp_path):
    value = FileBackedValue(lambda: [tmp_path / "gone.csv"], lambda files: pytest.fail("computed"))
    with pytest.raises(FileNotFoundError, match="gone.csv"):
        value.get()


def test_a_new_list_of_files_is_a_new_value(tmp_path):
    (tmp_path / "a.csv").write_text("a")
    (tmp_path / "b.csv").write_text("b")
    names = ["a.csv"]
    value = FileBackedValue(lambda: [tmp_path / name for name in names], lambda files: [f.name for f in files])
    assert value.get() == ["a.csv"]
    names.append("b.csv")
    assert value.get() == ["a.csv", "b.csv"]


def test_the_signature_of_a_missing_file_is_none_and_a_cached_value_follows_its_key(tmp_path):
    present = tmp_path / "here"
    present.write_bytes(b"12345")
    signature = files_signature([present, tmp_path / "absent"])
    assert signature[0] is not None and signature[0][0] == 5 and signature[1] is None

    cache: Cached[int] = Cached()
    calls = iter(range(10))
    assert [cache.get("k", lambda: next(calls)) for _ in range(3)] == [0, 0, 0]
    assert cache.get("other", lambda: next(calls)) == 1
