"""Regenerate ``xprop/data/digits.npz`` from scikit-learn's bundled copy.

Source: Optical Recognition of Handwritten Digits, E. Alpaydin and C. Kaynak,
UCI Machine Learning Repository, CC BY 4.0.

scikit-learn is needed only to run this script, not to use xprop::

    pip install scikit-learn
    python scripts/make_digits.py          # (re)write the file
    python scripts/make_digits.py --check  # verify the stored file matches

The file holds ``X`` (1797, 64) uint8 in 0..16, ``y`` (1797,) uint8 in 0..9 and
``test_mask`` (1797,) bool: a stratified test set of 360 examples drawn once
with ``numpy.random.default_rng(0)``. Each class gets its share of the 360 by
largest remainder, then that many of its examples are picked by a seeded
permutation. The zip entries carry a fixed timestamp, so the bytes are
reproducible too.
"""

import argparse
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "xprop" / "data" / "digits.npz"
N_TEST = 360
SEED = 0


def stratified_test_mask(y, n_test, seed):
    """Boolean mask choosing ``n_test`` examples, classes in proportion."""
    classes, counts = np.unique(y, return_counts=True)
    quota = counts * n_test / len(y)
    n_per_class = np.floor(quota).astype(int)
    # Hand the remaining places to the largest fractional parts (stable sort: ties by class).
    short = n_test - n_per_class.sum()
    n_per_class[np.argsort(-(quota - n_per_class), kind="stable")[:short]] += 1
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(y), dtype=bool)
    for c, k in zip(classes, n_per_class):
        mask[rng.permutation(np.flatnonzero(y == c))[:k]] = True
    return mask


def build():
    from sklearn.datasets import load_digits

    digits = load_digits()
    X, y = digits.data, digits.target
    assert X.shape == (1797, 64) and np.all(X == np.round(X)) and X.min() >= 0 and X.max() <= 16
    return {
        "X": X.astype(np.uint8),
        "y": y.astype(np.uint8),
        "test_mask": stratified_test_mask(y, N_TEST, SEED),
    }


def write_npz(path, arrays):
    """Like ``np.savez_compressed`` but with fixed zip timestamps (byte-reproducible)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the stored file, write nothing")
    args = parser.parse_args(argv)
    arrays = build()
    if args.check:
        with np.load(OUT, allow_pickle=False) as stored:
            same = set(stored.files) == set(arrays) and all(
                stored[k].dtype == v.dtype and np.array_equal(stored[k], v) for k, v in arrays.items()
            )
        print(f"{OUT}: {'matches' if same else 'DIFFERS from'} scikit-learn's copy")
        return 0 if same else 1
    OUT.parent.mkdir(parents=True, exist_ok=True)
    write_npz(OUT, arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {int(arrays['test_mask'].sum())} test examples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
