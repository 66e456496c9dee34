"""Ingestion's memory grows with the rows' hashes, not with the file: a 100 MB file in a child process."""

from __future__ import annotations

import pytest

from bench.bench_ingest_memory import ingest_measured, write_config, write_csv_of_size
from riskwatch.core.config import PROJECT_ROOT

# The interpreter with pyarrow and numpy loaded (about 75 MiB), the CSV reader's blocks read ahead (about
# 60 MiB at 1 MiB blocks, more when the rows are consumed slowly), and the row hashes: 8 bytes a row in file
# order and 8 sorted. Measured on this 2-core machine for the 4,500,000-row file: 239-262 MiB alone, 291 MiB
# beside another test process (the read-ahead got further); reading the file whole takes over 1 GiB.
BASE_MIB = 210
BYTES_PER_ROW = 24


@pytest.mark.slow
def test_a_100_mb_file_is_ingested_in_memory_bounded_by_a_batch_and_its_row_hashes(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    rows = write_csv_of_size(source / "clients.csv", 100)
    config = write_config(tmp_path, source)
    _, peak_mib = ingest_measured(PROJECT_ROOT, config)
    written = (tmp_path / "ingested" / "finaldata.csv").read_bytes().count(b"\n") - 1
    assert written == rows
    bound = BASE_MIB + rows * BYTES_PER_ROW / 2**20
    print(f"{rows:,} rows ({(source / 'clients.csv').stat().st_size / 1e6:.0f} MB): peak {peak_mib:.0f} MiB")
    assert peak_mib < bound, f"ingesting {rows:,} rows peaked at {peak_mib:.0f} MiB, above {bound:.0f} MiB"
