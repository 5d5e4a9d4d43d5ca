"""Datasets: the bundled digits and user data from ``.npz``, ``.csv`` or MNIST IDX files.

Everything here runs on the host and returns NumPy arrays: features ``X`` as
float64 of shape ``(m, n_features)``, labels ``y`` as int64 of shape ``(m,)``.
Moving them to a device is the backend's job.

The bundled digits are the *Optical Recognition of Handwritten Digits*,
E. Alpaydin and C. Kaynak, UCI Machine Learning Repository, CC BY 4.0
(``scripts/make_digits.py`` regenerates ``xprop/data/digits.npz`` from
scikit-learn's copy).
"""

import csv
import gzip
import os
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Dataset", "apply_scaler", "check_classes", "check_labels", "fit_scaler", "load_data", "load_digits"]

DIGITS_PATH = Path(__file__).resolve().parent / "data" / "digits.npz"
STANDARDIZE = (None, "minmax", "zscore")
_IDX_IMAGES = re.compile(r"images([.-])idx3-ubyte(\.gz)?$", re.IGNORECASE)
MAX_LABEL = 2**31 - 1   # the largest label a file may hold (a class count an output layer could have)
# IDX type byte -> big-endian dtype (the third byte of the magic number).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train (and optionally test) arrays on the host.

    Attributes
    ----------
    X_train : (m, n_features) float64
    y_train : (m,) int64, labels in ``0 .. n_classes - 1``
    X_test : (m_test, n_features) float64 or None
    y_test : (m_test,) int64 or None
    name : str
        Short name, e.g. ``"digits"`` or the file's stem.
    scaler : dict or None
        How the features were scaled, ``{"method", "shift", "scale"}`` with
        ``shift``/``scale`` of shape ``(n_features,)``, so that
        ``X_scaled = (X_raw - shift) / scale`` (see :func:`apply_scaler`).
        None when the features are unscaled.
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    name: str = ""
    scaler: dict | None = None

    def __post_init__(self):
        if (self.X_test is None) != (self.y_test is None):
            raise ValueError("Dataset: X_test and y_test must both be given or both be None")

    @property
    def n_features(self):
        """Number of input features, ``X_train.shape[1]``."""
        return self.X_train.shape[1]

    @property
    def n_classes(self):
        """Largest label in train or test, plus one."""
        y_max = self.y_train.max()
        if self.y_test is not None and self.y_test.size:
            y_max = max(y_max, self.y_test.max())
        return int(y_max) + 1


def load_digits(scale=True):
    """The bundled 8x8 handwritten digits with their fixed, stratified split.

    Parameters
    ----------
    scale : bool
        If True, divide the pixel values (0..16) by 16 so that ``X`` lies in
        [0, 1]; the division is recorded in ``Dataset.scaler``.

    Returns
    -------
    Dataset
        ``X_train`` (1437, 64), ``y_train`` (1437,), ``X_test`` (360, 64),
        ``y_test`` (360,); 10 classes, each in both parts in proportion. The
        split was drawn once with a fixed seed and is stored in the file.
    """
    with np.load(DIGITS_PATH, allow_pickle=False) as f:
        X, y, test = f["X"].astype(np.float64), f["y"].astype(np.int64), f["test_mask"]
    scaler = None
    if scale:
        scaler = {"method": "fixed", "shift": np.zeros(X.shape[1]), "scale": np.full(X.shape[1], 16.0)}
        X = apply_scaler(X, scaler)
    return Dataset(X[~test], y[~test], X[test], y[test], name="digits", scaler=scaler)


def load_data(path, *, label_column=None, standardize=None, test_fraction=None, seed=0):
    """Load a labelled dataset from a file, chosen by its name.

    Parameters
    ----------
    path : str or os.PathLike
        One of

        - ``*.npz``: arrays ``X`` (m, n_features) and ``y`` (m,), optionally
          ``X_test`` and ``y_test``; loaded with ``allow_pickle=False``.
        - ``*.csv``: a header row, then one example per row; the column named
          ``label_column`` holds the labels, every other column is a feature.
        - MNIST IDX, ``*-images-idx3-ubyte`` (or ``.gz``): the labels are read
          from the ``*-labels-idx1-ubyte`` file beside it; when the name starts
          with ``train`` and the matching ``t10k`` files sit beside it, they
          become the test set. Pixels are kept as stored (0..255); pass
          ``standardize="minmax"`` to bring them to [0, 1].
    label_column : str, optional
        CSV only: name of the label column, default ``"label"``.
    standardize : {None, "minmax", "zscore"}
        None leaves the features as read. ``"minmax"`` maps each feature to
        [0, 1] with the train min and max; ``"zscore"`` subtracts the train
        mean and divides by the train standard deviation. Constant features
        get scale 1. The test set uses the train statistics, which are kept in
        ``Dataset.scaler``.
    test_fraction : float, optional
        If given and the file has no test set, this fraction of the examples
        (rounded, at least one) becomes the test set, drawn uniformly at
        random (not stratified) with ``seed``. Ignored when the file has one.
    seed : int
        Seed for ``numpy.random.default_rng`` used by the split.

    Returns
    -------
    Dataset
        float64 features, int64 labels, ``name`` the file's stem.

    Raises
    ------
    FileNotFoundError
        The file (or the IDX labels file beside it) does not exist.
    TypeError
        ``path`` is not a path, or the data are strings/objects.
    ValueError
        Unknown extension, empty or corrupt file, ragged CSV rows, missing
        label column, features that are not 2-D or not finite, labels that are
        negative or not integers, lengths that differ, bad arguments.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
    if standardize not in STANDARDIZE:
        raise ValueError(f"standardize: expected one of {STANDARDIZE}, got {standardize!r}")
    if test_fraction is not None and not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction: expected a number in (0, 1), got {test_fraction!r}")
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"path: file '{path}' does not exist")
    if not path.is_file():
        raise ValueError(f"path: '{path}' is not a regular file")
    if path.stat().st_size == 0:
        raise ValueError(f"path: file '{path}' is empty (0 bytes)")

    name = path.name.lower()
    if name.endswith(".npz"):
        X, y, X_test, y_test = _read_npz(path)
    elif name.endswith(".csv"):
        X, y, X_test, y_test = _read_csv(path, "label" if label_column is None else label_column)
    elif _IDX_IMAGES.search(name):
        X, y, X_test, y_test = _read_mnist(path)
    else:
        raise ValueError(
            f"path: cannot tell the format of '{path}' from its name; expected .npz, .csv, "
            "or MNIST IDX (*-images-idx3-ubyte, optionally .gz)"
        )

    X, y = _validate(X, y, f"'{path}'")
    if X_test is not None:
        X_test, y_test = _validate(X_test, y_test, f"'{path}' (test set)", suffix="_test")
        if X_test.shape[1] != X.shape[1]:
            raise ValueError(
                f"X_test in '{path}': expected {X.shape[1]} features like X, got {X_test.shape[1]}"
            )
    elif test_fraction is not None:
        X, y, X_test, y_test = _split(X, y, test_fraction, seed, path)

    scaler = None
    if standardize is not None:
        scaler = fit_scaler(X, standardize)
        X = apply_scaler(X, scaler)
        X_test = None if X_test is None else apply_scaler(X_test, scaler)
    return Dataset(X, y, X_test, y_test, name=path.name.split(".")[0], scaler=scaler)


def check_labels(y, n_classes):
    """Raise ValueError unless every label is an integer in ``[0, n_classes)``.

    Parameters
    ----------
    y : (m,) array of integer labels (NumPy or CuPy)
    n_classes : int
        Number of outputs of the model that will see ``y``.
    """
    y = y if hasattr(y, "dtype") else np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y: expected a 1-D array of labels, got shape {tuple(y.shape)}")
    if y.dtype.kind not in "iuf" or (y.dtype.kind == "f" and bool((y != y.round()).any())):
        raise ValueError(f"y: expected integer labels, got dtype {y.dtype} with non-integer values")
    if y.size:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= n_classes:
            raise ValueError(f"y: labels must lie in [0, {n_classes}) for {n_classes} classes, "
                             f"got labels from {lo} to {hi}")


def check_classes(y_train, y_test=None, where="the data"):
    """Refuse labels ``y_train : (m,)``, ``y_test`` that cannot make a sensible classifier.

    The output layer gets one unit per class number ``0 .. max label``.
    Raises ValueError for one class only, or when more than half of those
    numbers have no example (a label of 3,000,000 among 0, 1, 2 would need
    3,000,001 outputs), with the counts and how to renumber. Returns warnings
    (str) for classes with no training example; ``where`` names the data.
    """
    y_all = y_train if y_test is None else np.concatenate([y_train, y_test])
    present = np.unique(y_all)
    n_classes = int(present[-1]) + 1
    if present.size < 2:
        raise ValueError(f"y in {where}: all {y_all.size} labels are {int(present[0])}; a classifier "
                         "needs at least two classes")
    if n_classes > 2 * present.size:
        raise ValueError(
            f"y in {where}: the labels go up to {n_classes - 1}, so the output layer would need "
            f"{n_classes} units, but only {present.size} distinct labels are present ({_listed(present, 5)}); "
            f"number the classes 0..{present.size - 1} (e.g. numpy.unique(y, return_inverse=True))")
    missing = np.setdiff1d(np.arange(n_classes), np.unique(y_train))
    return [f"{missing.size} of the {n_classes} classes have no training example (class "
            f"{_listed(missing, 10)}); the net cannot learn to predict them"] if missing.size else []


def _listed(values, n: int) -> str:
    return ", ".join(str(int(v)) for v in values[:n]) + (", ..." if len(values) > n else "")


def apply_scaler(X, scaler):
    """Scale features as recorded in ``Dataset.scaler``: ``(X - shift) / scale``.

    Parameters
    ----------
    X : (m, n_features) array
    scaler : dict with ``shift`` and ``scale`` of shape (n_features,), or None

    Returns
    -------
    (m, n_features) float64 array (``X`` itself, as float64, when ``scaler`` is None)
    """
    X = np.asarray(X, dtype=np.float64)
    if scaler is None:
        return X
    with np.errstate(over="ignore", invalid="ignore"):
        out = (X - scaler["shift"]) / scaler["scale"]
    bad = ~np.isfinite(out) & np.isfinite(X)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"X: scaling overflows float64 at row {row}, feature {col} ({X[row, col]:.6g}, "
                         f"far outside the range the scaler was fitted on)")
    return out


# --------------------------------------------------------------------------- helpers


def fit_scaler(X, method):
    """Statistics of the train features for ``method`` ("minmax" or "zscore").

    Scale-safe: a feature whose sum or squares overflow float64 (around 1e155
    and beyond) is divided by its largest magnitude first, so it gets its true
    mean and standard deviation, not an inf that scales it to zeros. Constant
    features get scale 1. A spread beyond float64 raises ValueError.
    """
    X = np.asarray(X, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        if method == "minmax":
            shift, scale = X.min(axis=0), X.max(axis=0) - X.min(axis=0)
        else:
            shift, scale = X.mean(axis=0), X.std(axis=0)
            over = ~(np.isfinite(shift) & np.isfinite(scale))
            if over.any():  # sums or squares overflowed: again, divided by the largest magnitude
                big = np.max(np.abs(X[:, over]), axis=0)
                U = X[:, over] / big                  # every entry in [-1, 1]
                shift[over], scale[over] = U.mean(axis=0) * big, U.std(axis=0) * big
    if not np.all(np.isfinite(scale)):
        j = int(np.argmax(~np.isfinite(scale)))
        raise ValueError(f"standardize: feature {j} spans {X[:, j].min():.6g} to {X[:, j].max():.6g}, "
                         f"beyond float64's range; {method} scaling would overflow. Rescale it first")
    scale = np.where(scale == 0, 1.0, scale)
    return {"method": method, "shift": shift, "scale": scale}


def _split(X, y, test_fraction, seed, path):
    m = len(y)
    n_test = max(1, round(test_fraction * m))
    if n_test >= m:
        raise ValueError(
            f"test_fraction: {test_fraction} of the {m} examples in '{path}' leaves none for training"
        )
    order = np.random.default_rng(seed).permutation(m)
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    return X[train], y[train], X[test], y[test]


def _validate(X, y, where, suffix=""):
    """Check one (X, y) pair read from ``where``; return float64 X and int64 y."""
    xn, yn = "X" + suffix, "y" + suffix
    for n, a in ((xn, X), (yn, y)):
        if a.dtype.kind not in "biuf":
            raise TypeError(f"{n} in {where}: expected numbers, got dtype {a.dtype}")
    if X.ndim != 2:
        raise ValueError(f"{xn} in {where}: expected a 2-D array (m, n_features), got shape {X.shape}")
    if y.ndim != 1:
        raise ValueError(f"{yn} in {where}: expected a 1-D array (m,), got shape {y.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(
            f"{xn} in {where}: expected at least one example and one feature, got shape {X.shape}"
        )
    if X.shape[0] != y.shape[0]:
        raise ValueError(
            f"{xn} and {yn} in {where}: expected the same number of examples, "
            f"got {X.shape[0]} rows in {xn} and {y.shape[0]} labels in {yn}"
        )
    X = X.astype(np.float64)
    bad = ~np.isfinite(X)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"{xn} in {where}: expected finite values, got {int(bad.sum())} NaN or inf "
            f"(first at row {row}, column {col}: {X[row, col]})"
        )
    if y.dtype.kind == "f":
        wrong = ~np.isfinite(y) | (y != np.round(y))
        if wrong.any():
            i = int(np.argmax(wrong))
            raise ValueError(f"{yn} in {where}: expected integer labels, got {y[i]} at index {i}")
    if y.size and y.max() > MAX_LABEL:   # before the cast to int64, which turns 1e20 into -2**63
        i = int(np.argmax(y))
        raise ValueError(f"{yn} in {where}: expected class numbers 0..{MAX_LABEL}, got {y[i]:g} at "
                         f"index {i}; renumber the classes 0..n_classes-1")
    y = y.astype(np.int64)
    if y.min() < 0:
        i = int(np.argmin(y))
        raise ValueError(f"{yn} in {where}: expected labels >= 0, got {y[i]} at index {i}")
    return X, y


def _read_npz(path):
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head.startswith(b"PK"):  # else numpy.load takes it for a pickle and suggests allow_pickle
        raise ValueError(f"path: '{path}' is not a readable .npz file: expected a zip archive "
                         f"(an .npz starts with b'PK'), got a file starting with {head!r}")
    try:
        # Open the file here: np.load leaks its own handle when the zip is corrupt.
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
        kind = "corrupted compressed data, " if isinstance(e, zlib.error) else ""
        raise ValueError(f"path: '{path}' is not a readable .npz file ({kind}{type(e).__name__}: {e})") from None
    for required in ("X", "y"):
        if required not in arrays:
            raise ValueError(
                f"{required} in '{path}': expected an array named '{required}', found {sorted(arrays)}"
            )
    if ("X_test" in arrays) != ("y_test" in arrays):
        raise ValueError(f"'{path}': expected both X_test and y_test or neither, found {sorted(arrays)}")
    return arrays["X"], arrays["y"], arrays.get("X_test"), arrays.get("y_test")


def _read_csv(path, label_column):
    try:
        return _read_csv_utf8(path, label_column)
    except UnicodeDecodeError:
        _explain_encoding(path)   # raises, naming the line


def _explain_encoding(path):
    """Raise a ValueError naming the first line of ``path`` that is not UTF-8 (errors only)."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                where = f"line {number}: not UTF-8 text (byte 0x{raw[e.start]:02x} at position {e.start + 1})"
                break
        else:
            where = "not UTF-8 text"
    raise ValueError(f"'{path}', {where}; save the CSV as UTF-8 (it may be Latin-1 or Windows-1252)")


def _read_csv_utf8(path, label_column):
    with open(path, newline="", encoding="utf-8-sig") as f:
        header = [h.strip() for h in next(csv.reader([f.readline()]), [])]
        if label_column not in header:
            hint = " (the first row looks like data; a header row is required)" if _numeric(header) else ""
            raise ValueError(
                f"label_column: no column named {label_column!r} in '{path}'; found {header}{hint}"
            )
        start = f.tell()
        if not any(line.strip() for line in iter(f.readline, "")):  # np.loadtxt would warn
            raise ValueError(f"'{path}': expected at least one data row after the header, got none")
        f.seek(start)
        try:
            data = np.loadtxt(f, delimiter=",", quotechar='"', ndmin=2, dtype=np.float64)
        except ValueError as e:
            _explain_csv(path, header)
            raise ValueError(f"'{path}': could not parse the CSV data ({e})") from e
    if data.shape[1] != len(header):
        _explain_csv(path, header)
    j = header.index(label_column)
    return np.delete(data, j, axis=1), data[:, j], None, None


def _explain_csv(path, header):
    """Find the first bad line and raise a ValueError naming it (slow path, errors only)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        next(reader)
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(
                    f"'{path}', line {reader.line_num}: expected {len(header)} values "
                    f"like the header, got {len(row)}"
                )
            for name, value in zip(header, row):
                if not _numeric([value]):
                    raise ValueError(
                        f"'{path}', line {reader.line_num}, column {name!r}: expected a number, got {value!r}"
                    )


def _numeric(values):
    try:
        [float(v) for v in values]
    except ValueError:
        return False
    return bool(values)


def _read_mnist(images):
    labels = images.with_name(_IDX_IMAGES.sub(r"labels\1idx1-ubyte\2", images.name))
    X, y = _read_idx_pair(images, labels)
    X_test = y_test = None
    if images.name.startswith("train"):
        t_images, t_labels = (p.with_name("t10k" + p.name[len("train"):]) for p in (images, labels))
        if t_images.exists():
            X_test, y_test = _read_idx_pair(t_images, t_labels)
    return X, y, X_test, y_test


def _read_idx_pair(images, labels):
    if not labels.exists():
        raise FileNotFoundError(f"path: labels file '{labels}' for images '{images}' does not exist")
    X, y = _read_idx(images, ndim=3), _read_idx(labels, ndim=1)
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"'{images}' holds {X.shape[0]} images but '{labels}' holds {y.shape[0]} labels")
    return X.reshape(X.shape[0], -1), y


def _read_idx(path, ndim):
    """Parse an IDX file: magic ``00 00 <type> <ndim>``, ndim big-endian uint32 sizes, data."""
    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        kind = "corrupted compressed data, " if isinstance(e, zlib.error) else ""
        raise ValueError(f"'{path}': could not read ({kind}{type(e).__name__}: {e})") from None
    expected_magic = f"0x0000{0x08:02X}{ndim:02X}"
    if len(raw) < 4 or raw[0] or raw[1] or raw[2] not in _IDX_DTYPES or raw[3] != ndim:
        magic = "0x" + raw[:4].hex().upper() if len(raw) >= 4 else f"{len(raw)} bytes"
        raise ValueError(
            f"'{path}': not an IDX file with {ndim} dimension(s); expected magic number "
            f"{expected_magic} (or another IDX type byte), got {magic}"
        )
    n_header = 4 + 4 * ndim
    if len(raw) < n_header:
        raise ValueError(f"'{path}': truncated IDX header, expected {n_header} bytes, got {len(raw)}")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    n_data = int(np.prod(shape)) * dtype.itemsize
    got = len(raw) - n_header
    if got != n_data:
        raise ValueError(
            f"'{path}': header gives shape {shape}, i.e. {n_data} data bytes, "
            f"got {got} ({'truncated' if got < n_data else 'trailing bytes'})"
        )
    return np.frombuffer(raw, dtype, offset=n_header).reshape(shape).astype(dtype.newbyteorder("="))
