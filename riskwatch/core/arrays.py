"""Arrays saved as ``.npz`` archives a slice at a time.

``np.savez`` hands a contiguous array to the archive as one ``bytes`` copy: saving the row hashes of 40
million rows would double their 320 MB for a moment. ``write_npz`` writes each array in 16 MiB slices
(read back with ``np.load`` as usual), so saving costs a slice, and arrays that are one value
repeated (``np.broadcast_to``) are written without ever being made whole.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import IO

import numpy as np
from numpy.lib import format as npy_format

from riskwatch.core.files import atomic_path

_SLICE_BYTES = 16 * 1024 * 1024


def write_npz(target: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` (name -> array) as an uncompressed ``.npz`` archive, atomically."""
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                write_array(member, np.asanyarray(array))
    return target


def write_array(member: IO[bytes], array: np.ndarray) -> None:
    """One array in ``.npy`` form, its data in slices."""
    header = npy_format.header_data_from_array_1_0(array)
    header["fortran_order"] = False
    npy_format.write_array_header_2_0(member, header)
    if array.ndim == 0:
        member.write(array.tobytes())
        return
    flat = array.reshape(-1) if array.ndim > 1 else array
    step = max(_SLICE_BYTES // max(array.itemsize, 1), 1)
    for start in range(0, flat.shape[0], step):
        member.write(np.ascontiguousarray(flat[start : start + step]).tobytes())
