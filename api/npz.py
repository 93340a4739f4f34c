"""What an ``.npz`` archive declares, read from the array headers without decompressing the data.

A zip bomb (10^9 zeros compressed to a few MB) must be refused before ``np.load`` inflates it:
each member ``name.npy`` starts with a small header giving shape and dtype, and only that header
is inflated here.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass

import numpy as np

from pmsm.runtime.base.errors import BadInputError, first_line

MAX_HEADER_BYTES = 1 << 16


@dataclass(frozen=True)
class Declared:
    shape: tuple
    dtype: np.dtype

    @property
    def elements(self) -> int:
        count = 1
        for d in self.shape:
            count *= int(d)
        return count


def declared_arrays(path: str, names: tuple[str, ...]) -> dict[str, Declared]:
    """Shape and dtype of the arrays ``names`` present in the archive (absent ones are left out)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise BadInputError(f"{path}: not an .npz archive ({first_line(error)}); save it with numpy.savez") from None
    found = {}
    with archive:
        members = {info.filename: info for info in archive.infolist()}
        for name in names:
            info = members.get(name + ".npy")
            if info is None:
                continue
            try:
                with archive.open(info) as member:
                    found[name] = read_npy_header(member)[0]
            except Exception as error:  # noqa: BLE001 - zipfile and numpy raise many kinds for a damaged member
                raise BadInputError(f"{path}: array '{name}' is unreadable ({first_line(error)})") from None
    return found


def read_npy_header(handle) -> tuple[Declared, bool]:
    """Shape and dtype an .npy stream declares, and whether it is in Fortran order; ``handle`` is
    left at the first data byte."""
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle, max_header_size=MAX_HEADER_BYTES)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle, max_header_size=MAX_HEADER_BYTES)
    else:
        raise ValueError(f"unknown .npy format version {version}")
    return Declared(tuple(int(d) for d in shape), np.dtype(dtype)), bool(fortran)
