"""Data that is never whole: one file per rank, or this rank's rows of one big file, memory-mapped.

:func:`open_shard` is what ``xprop train --distributed sharded --data`` reads;
:func:`global_scaler` gives every rank the feature statistics of all shards.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy

from ..datasets import load_data
from .shard import shard_bounds

__all__ = ["open_shard", "global_scaler"]


def _npy_memmap(path, offset=0, where=None):
    """A read-only ``numpy.memmap`` of the ``.npy`` array stored at byte ``offset`` of ``path``."""
    where = where or f"'{path}'"
    with open(path, "rb") as f:
        f.seek(offset)
        try:
            fmt = numpy.lib.format
            version = fmt.read_magic(f)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, fortran, dtype = read(f)
        except ValueError as exc:
            raise ValueError(f"{where}: not a .npy array ({exc})") from None
        start = f.tell()
    if dtype.hasobject:
        raise TypeError(f"{where}: holds Python objects (dtype {dtype}); expected numbers")
    if fortran and len(shape) > 1:
        raise ValueError(f"{where}: stored in Fortran order; a rank's rows would not be contiguous: "
                         "save it C-ordered (numpy.ascontiguousarray)")
    if int(numpy.prod(shape)) == 0:
        return numpy.zeros(shape, dtype)
    return numpy.memmap(path, dtype=dtype, mode="r", offset=start, shape=shape)


def _npz_member_offset(path, member):
    """Byte offset of ``member`` (e.g. ``"X.npy"``) inside the zip ``path``, or None when absent.

    Only an uncompressed member (``numpy.savez``) can be memory-mapped; a
    compressed one (``numpy.savez_compressed``) is refused with what to do.
    """
    with zipfile.ZipFile(path) as z:
        try:
            info = z.getinfo(member)
        except KeyError:
            return None
        if info.compress_type != zipfile.ZIP_STORED:
            raise ValueError(
                f"'{path}': {member} is compressed (numpy.savez_compressed), so a rank cannot read "
                "only its rows; write the file with numpy.savez, or give one file per rank "
                "(--data 'part-{rank}.npz')")
    with open(path, "rb") as f:                    # the local header: 30 bytes, the name, an extra field
        f.seek(info.header_offset)
        header = f.read(30)
        if header[:4] != b"PK\x03\x04":
            raise ValueError(f"'{path}': corrupt zip (no local header for {member})")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _open_rows(path):
    """``{name: memmap}`` of X, y (and X_test, y_test when present) of one big file: an uncompressed
    ``.npz``, a directory holding ``X.npy`` and ``y.npy``, or an ``X*.npy`` with its ``y*.npy`` beside it."""
    path = Path(path)
    arrays = {}
    if path.is_dir() or path.suffix == ".npy":
        folder, stem = (path, "X") if path.is_dir() else (path.parent, path.stem)
        if not stem.startswith("X"):
            raise ValueError(f"'{path}': a .npy of features must be named X*.npy, with its labels "
                             "y*.npy beside it")
        suffix = stem[1:]
        for name in ("X", "y", "X_test", "y_test"):
            p = folder / f"{name}{suffix}.npy"
            if p.is_file():
                arrays[name] = _npy_memmap(p)
    elif path.suffix == ".npz":
        for name in ("X", "y", "X_test", "y_test"):
            offset = _npz_member_offset(path, f"{name}.npy")
            if offset is not None:
                arrays[name] = _npy_memmap(path, offset, where=f"{name} in '{path}'")
    else:
        raise ValueError(f"'{path}': one big file for sharded training must be an .npz (written by "
                         "numpy.savez), a folder with X.npy and y.npy, or an X.npy; for other formats "
                         "give one file per rank ('part-{rank}.csv')")
    for name in ("X", "y"):
        if name not in arrays:
            raise ValueError(f"'{path}': no {name} array ({name}.npy) found")
    return arrays


def _check_rows(X, y, where):
    if X.ndim != 2 or X.dtype.kind not in "biuf":
        raise ValueError(f"X in {where}: expected a 2-D array of numbers (m, n_features); got "
                         f"shape {X.shape}, dtype {X.dtype}")
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(f"y in {where}: expected one label per row of X ({X.shape[0]}); got shape {y.shape}")


def open_shard(path, rank: int, size: int):
    """This rank's part of a data set that is never loaded whole.

    Parameters
    ----------
    path : str or Path
        With ``{rank}`` in it (``"part-{rank}.npz"``): rank r loads the file
        ``path.format(rank=r)``, whole (any format :func:`xprop.load_data`
        reads; its test split, if any, is that rank's part of the test set).
        Without: one big file (an uncompressed ``.npz`` written by
        ``numpy.savez``, a folder holding ``X.npy`` and ``y.npy``, or an
        ``X.npy`` with ``y.npy`` beside it), of which rank r takes rows
        ``lo:hi`` by ``numpy.array_split``'s rule (the first ``m mod N``
        ranks one row more), **memory-mapped**: nothing outside those rows is
        read, and the rows themselves only as the training touches them.
    rank, size : int
        This rank and the number of ranks.

    Returns
    -------
    X, y, X_test, y_test : arrays
        ``X (n_r, k)`` (a read-only memmap of the big file, or the file's
        float64 array), int labels ``y (n_r,)`` (read into memory: 8 bytes a
        row), and this rank's test rows, or None twice.
    """
    text = str(path)
    if "{rank}" in text:
        ds = load_data(text.replace("{rank}", str(int(rank))))
        return ds.X_train, ds.y_train, ds.X_test, ds.y_test
    if not Path(text).exists():
        raise FileNotFoundError(f"path: '{text}' does not exist")
    arrays = _open_rows(text)
    out = []
    for Xn, yn in (("X", "y"), ("X_test", "y_test")):
        if Xn not in arrays or yn not in arrays:
            out += [None, None]
            continue
        X, y = arrays[Xn], arrays[yn]
        _check_rows(X, y, f"'{text}'")
        lo, hi = shard_bounds(X.shape[0], size, rank)
        out += [X[lo:hi], numpy.array(y[lo:hi])]
    return tuple(out)


def global_scaler(ctx, X, method, chunk: int = 4096):
    """The feature scaler of the whole training set from every rank's shard (collective).

    ``"zscore"``: the mean from summed counts and sums, then the standard
    deviation from summed squared deviations (two passes, as
    :func:`xprop.datasets.fit_scaler` computes it on one process, up to the
    order of the sums); ``"minmax"``: the global minimum and maximum. The
    shard is read ``chunk`` rows at a time (no shard-sized temporaries).

    Returns the scaler dict of :func:`xprop.datasets.fit_scaler`, equal on every rank.
    """
    k = int(X.shape[1])
    rows = range(0, int(X.shape[0]), chunk)
    if method == "minmax":
        lo = numpy.full(k, numpy.inf)
        hi = numpy.full(k, -numpy.inf)
        for i in rows:
            part = numpy.asarray(X[i:i + chunk], dtype=numpy.float64)
            lo, hi = numpy.minimum(lo, part.min(axis=0)), numpy.maximum(hi, part.max(axis=0))
        lo = -ctx.allreduce_max(-lo, what="scaler statistics")
        hi = ctx.allreduce_max(hi, what="scaler statistics")
        shift, scale = lo, hi - lo
    else:
        sums = numpy.zeros(k + 1)
        for i in rows:
            part = numpy.asarray(X[i:i + chunk], dtype=numpy.float64)
            sums[:k] += part.sum(axis=0)
        sums[k] = X.shape[0]
        sums = ctx.allreduce_sum(sums, what="scaler statistics")
        m = sums[k]
        shift = sums[:k] / m
        sq = numpy.zeros(k)
        for i in rows:
            part = numpy.asarray(X[i:i + chunk], dtype=numpy.float64) - shift
            sq += (part * part).sum(axis=0)
        scale = numpy.sqrt(ctx.allreduce_sum(sq, what="scaler statistics") / m)
    scale = numpy.where(scale == 0, 1.0, scale)
    return {"method": method, "shift": shift, "scale": scale}
