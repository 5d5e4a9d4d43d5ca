"""Tests for xprop.datasets: the bundled digits, file readers, scaling and errors."""

import gzip
import re

import numpy as np
import pytest

from xprop.datasets import Dataset, apply_scaler, check_labels, load_data, load_digits


def write_idx(path, arr, type_byte=0x08):
    """Write an IDX file by hand: magic 00 00 <type> <ndim>, big-endian uint32 sizes, data."""
    header = bytes([0, 0, type_byte, arr.ndim]) + np.array(arr.shape, dtype=">u4").tobytes()
    raw = header + arr.astype(">u1").tobytes()
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)
    return path


def write_mnist(tmp_path, prefix, m, suffix="", sep="-", seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(m, 3, 2), dtype=np.uint8)
    labels = rng.integers(0, 10, size=m, dtype=np.uint8)
    img = write_idx(tmp_path / f"{prefix}-images{sep}idx3-ubyte{suffix}", images)
    write_idx(tmp_path / f"{prefix}-labels{sep}idx1-ubyte{suffix}", labels)
    return img, images, labels


def raises(exc, *parts):
    """pytest.raises matching every literal part of the message, in order."""
    return pytest.raises(exc, match=".*".join(re.escape(str(p)) for p in parts))


# --------------------------------------------------------------------------- digits


def test_digits_shapes_dtypes_and_range():
    d = load_digits()
    assert (d.X_train.shape, d.y_train.shape) == ((1437, 64), (1437,))
    assert (d.X_test.shape, d.y_test.shape) == ((360, 64), (360,))
    assert d.X_train.dtype == np.float64 and d.y_train.dtype == np.int64
    assert (d.n_features, d.n_classes, d.name) == (64, 10, "digits")
    assert d.X_train.min() == 0.0 and d.X_train.max() == 1.0


def test_digits_unscaled_are_sixteenths_of_scaled():
    raw, scaled = load_digits(scale=False), load_digits()
    assert raw.scaler is None and raw.X_train.max() == 16.0
    np.testing.assert_array_equal(raw.X_train, np.round(raw.X_train))
    np.testing.assert_array_equal(raw.X_train / 16, scaled.X_train)
    np.testing.assert_array_equal(apply_scaler(raw.X_test, scaled.scaler), scaled.X_test)


def test_digits_split_is_fixed():
    a, b = load_digits(), load_digits()
    for field in ("X_train", "y_train", "X_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_digits_split_is_stratified():
    d = load_digits()
    n_train, n_test = np.bincount(d.y_train, minlength=10), np.bincount(d.y_test, minlength=10)
    assert (n_train > 0).all() and (n_test > 0).all()
    # Each class contributes its 360/1797 share to the test set, to within one example.
    share = (n_train + n_test) * 360 / 1797
    assert np.abs(n_test - share).max() < 1, (n_test, share)


# --------------------------------------------------------------------------- npz


def test_npz_round_trip(tmp_path):
    X, y = np.arange(12.0).reshape(4, 3), np.array([0, 2, 1, 2])
    np.savez(tmp_path / "toy.npz", X=X, y=y)
    d = load_data(tmp_path / "toy.npz")
    np.testing.assert_array_equal(d.X_train, X)
    np.testing.assert_array_equal(d.y_train, y)
    assert d.X_test is None and d.y_test is None and d.scaler is None
    assert (d.name, d.n_features, d.n_classes, d.y_train.dtype) == ("toy", 3, 3, np.int64)


def test_npz_with_test_set_and_integer_valued_float_labels(tmp_path):
    X, X_test = np.ones((3, 2), np.float32), np.zeros((2, 2), np.float32)
    np.savez(tmp_path / "t.npz", X=X, y=np.array([0.0, 1.0, 1.0]), X_test=X_test, y_test=np.array([4, 0]))
    d = load_data(str(tmp_path / "t.npz"), test_fraction=0.5)  # ignored: the file has a test set
    assert d.X_train.dtype == np.float64 and d.y_train.tolist() == [0, 1, 1]
    assert d.X_test.shape == (2, 2) and d.y_test.tolist() == [4, 0] and d.n_classes == 5


def test_test_fraction_split_is_seeded_and_disjoint(tmp_path):
    X = np.arange(20.0).reshape(10, 2)
    np.savez(tmp_path / "s.npz", X=X, y=np.arange(10) % 3)
    a = load_data(tmp_path / "s.npz", test_fraction=0.3, seed=1)
    b = load_data(tmp_path / "s.npz", test_fraction=0.3, seed=1)
    c = load_data(tmp_path / "s.npz", test_fraction=0.3, seed=2)
    assert a.X_test.shape == (3, 2) and a.X_train.shape == (7, 2)
    np.testing.assert_array_equal(a.X_test, b.X_test)
    assert not np.array_equal(a.X_test, c.X_test)
    rows = np.concatenate([a.X_train, a.X_test])
    np.testing.assert_array_equal(np.sort(rows[:, 0]), X[:, 0])  # every example once
    np.testing.assert_array_equal(a.y_train, a.X_train[:, 0] // 2 % 3)  # labels follow their rows


# --------------------------------------------------------------------------- csv


def test_csv_round_trip_label_column_anywhere(tmp_path):
    path = tmp_path / "iris.csv"
    path.write_text("a,label,b\n1.5,2,3\n-4,0,5e1\n\n")  # trailing blank line is fine
    d = load_data(path)
    np.testing.assert_array_equal(d.X_train, [[1.5, 3.0], [-4.0, 50.0]])
    assert d.y_train.tolist() == [2, 0] and d.name == "iris"


def test_csv_custom_label_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("digit,p0,p1\n7,0,1\n3,1,0\n")
    d = load_data(path, label_column="digit")
    assert d.y_train.tolist() == [7, 3] and d.X_train.shape == (2, 2)


# --------------------------------------------------------------------------- MNIST IDX


def test_idx_round_trip_with_t10k_beside_it(tmp_path):
    img, images, labels = write_mnist(tmp_path, "train", 5)
    _, t_images, t_labels = write_mnist(tmp_path, "t10k", 2, seed=1)
    d = load_data(img)
    np.testing.assert_array_equal(d.X_train, images.reshape(5, 6))
    np.testing.assert_array_equal(d.y_train, labels)
    np.testing.assert_array_equal(d.X_test, t_images.reshape(2, 6))
    np.testing.assert_array_equal(d.y_test, t_labels)
    assert d.X_train.dtype == np.float64 and d.X_train.max() > 1  # kept as stored


def test_idx_gzip_dot_names_and_no_test_files(tmp_path):
    img, images, labels = write_mnist(tmp_path, "train", 4, suffix=".gz", sep=".")
    d = load_data(img)
    np.testing.assert_array_equal(d.X_train, images.reshape(4, 6))
    np.testing.assert_array_equal(d.y_train, labels)
    assert d.X_test is None


# --------------------------------------------------------------------------- standardisation


def test_minmax_uses_train_statistics_only(tmp_path):
    X = np.array([[0.0, 5.0, 7.0], [10.0, 5.0, 9.0]])
    X_test = np.array([[20.0, 6.0, 8.0]])
    np.savez(tmp_path / "m.npz", X=X, y=[0, 1], X_test=X_test, y_test=[1])
    d = load_data(tmp_path / "m.npz", standardize="minmax")
    np.testing.assert_array_equal(d.X_train, [[0.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
    # Train min (0, 5, 7), span (10, 0 -> 1, 2): the test row may leave [0, 1].
    np.testing.assert_array_equal(d.X_test, [[2.0, 1.0, 0.5]])
    assert d.scaler["method"] == "minmax"
    np.testing.assert_array_equal(apply_scaler(X_test, d.scaler), d.X_test)


def test_zscore_uses_train_statistics_only(tmp_path):
    X = np.array([[1.0, 3.0], [3.0, 3.0]])  # mean (2, 3), std (1, 0 -> 1)
    np.savez(tmp_path / "z.npz", X=X, y=[0, 1], X_test=[[5.0, 4.0]], y_test=[0])
    d = load_data(tmp_path / "z.npz", standardize="zscore")
    np.testing.assert_array_equal(d.X_train, [[-1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_array_equal(d.X_test, [[3.0, 1.0]])
    np.testing.assert_array_equal(d.scaler["shift"], [2.0, 3.0])
    np.testing.assert_array_equal(d.scaler["scale"], [1.0, 1.0])


def test_standardize_after_split_sees_train_only(tmp_path):
    np.savez(tmp_path / "s.npz", X=np.arange(10.0)[:, None], y=np.zeros(10, int))
    d = load_data(tmp_path / "s.npz", standardize="minmax", test_fraction=0.5, seed=2)
    shift, scale = d.scaler["shift"][0], d.scaler["scale"][0]
    raw_train, raw_test = d.X_train[:, 0] * scale + shift, d.X_test[:, 0] * scale + shift
    assert (shift, shift + scale) == (raw_train.min(), raw_train.max())
    assert raw_test.min() < shift or raw_test.max() > shift + scale  # this seed puts an extreme in test


# --------------------------------------------------------------------------- check_labels


def test_check_labels_accepts_valid_and_names_y():
    check_labels(np.array([0, 9, 3]), 10)
    check_labels(np.array([0.0, 2.0]), 3)
    with raises(ValueError, "y:", "[0, 10)", "from 0 to 10"):
        check_labels(np.array([0, 10]), 10)
    with raises(ValueError, "y:", "from -1 to 2"):
        check_labels([-1, 2], 10)
    with raises(ValueError, "y:", "integer", "float64"):
        check_labels(np.array([0.5]), 10)
    with raises(ValueError, "y:", "1-D", "(2, 1)"):
        check_labels(np.zeros((2, 1), int), 10)


def test_dataset_needs_test_pair():
    with raises(ValueError, "X_test and y_test"):
        Dataset(np.zeros((1, 1)), np.zeros(1, int), X_test=np.zeros((1, 1)))


# --------------------------------------------------------------------------- errors: paths and arguments


def test_missing_file(tmp_path):
    with raises(FileNotFoundError, "path", "nope.npz", "does not exist"):
        load_data(tmp_path / "nope.npz")


def test_path_wrong_type():
    with raises(TypeError, "path", "str or os.PathLike", "got int"):
        load_data(3)


def test_unknown_extension(tmp_path):
    (tmp_path / "data.json").write_text("{}")
    with raises(ValueError, "path", "data.json", ".npz, .csv"):
        load_data(tmp_path / "data.json")


def test_empty_file(tmp_path):
    (tmp_path / "e.csv").touch()
    with raises(ValueError, "e.csv", "empty (0 bytes)"):
        load_data(tmp_path / "e.csv")


def test_bad_standardize_and_test_fraction(tmp_path):
    np.savez(tmp_path / "a.npz", X=np.ones((2, 1)), y=[0, 1])
    with raises(ValueError, "standardize", "'minmax'", "got 'l2'"):
        load_data(tmp_path / "a.npz", standardize="l2")
    with raises(ValueError, "test_fraction", "(0, 1)", "got 1.5"):
        load_data(tmp_path / "a.npz", test_fraction=1.5)
    with raises(ValueError, "test_fraction", "2 examples", "leaves none for training"):
        load_data(tmp_path / "a.npz", test_fraction=0.9)


# --------------------------------------------------------------------------- errors: array content


NPZ_CONTENT_ERRORS = [
    # (arrays written to bad.npz, exception, message parts after the array name and file)
    ({"X": np.array([[1.0, np.nan]]), "y": [0]}, ValueError, ["X in", "1 NaN or inf", "row 0, column 1"]),
    ({"X": np.array([[np.inf], [1]]), "y": [0, 1]}, ValueError, ["X in", "finite", "column 0: inf"]),
    ({"X": np.ones(4), "y": [0, 1, 0, 1]}, ValueError, ["X in", "2-D", "got shape (4,)"]),
    ({"X": np.ones((3, 2)), "y": [0, 1]}, ValueError, ["X and y in", "3 rows in X and 2 labels in y"]),
    ({"X": np.ones((2, 2)), "y": [0.0, 1.5]}, ValueError, ["y in", "integer labels", "got 1.5 at index 1"]),
    ({"X": np.ones((2, 2)), "y": [0, -3]}, ValueError, ["y in", "labels >= 0", "got -3 at index 1"]),
    ({"X": np.array([["a", "b"]]), "y": [0]}, TypeError, ["X in", "expected numbers", "<U1"]),
    ({"X": np.zeros((0, 3)), "y": np.zeros(0, int)}, ValueError, ["X in", "at least one example", "(0, 3)"]),
    ({"X": np.ones((2, 2)), "y": [0, 1], "X_test": np.ones((1, 3)), "y_test": [0]}, ValueError,
     ["X_test in", "expected 2 features", "got 3"]),
    ({"X": np.ones((2, 2)), "y": [0, 1], "X_test": np.ones((1, 2)), "y_test": [0.5]}, ValueError,
     ["y_test in", "(test set)", "got 0.5"]),
    ({"X": np.ones((2, 2))}, ValueError, ["y in", "expected an array named 'y'", "found ['X']"]),
]


@pytest.mark.parametrize("arrays, exc, parts", NPZ_CONTENT_ERRORS)
def test_npz_content_errors_name_array_file_and_value(tmp_path, arrays, exc, parts):
    np.savez(tmp_path / "bad.npz", **arrays)
    with raises(exc, parts[0], "bad.npz", *parts[1:]):
        load_data(tmp_path / "bad.npz")


def test_npz_object_array_refused_without_pickle(tmp_path):
    np.savez(tmp_path / "obj.npz", X=np.array([[1, "a"]], dtype=object), y=[0])
    with raises(ValueError, "obj.npz", "not a readable .npz", "allow_pickle"):
        load_data(tmp_path / "obj.npz")


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_corrupt_npz(tmp_path, kind):
    path = tmp_path / "c.npz"
    np.savez_compressed(path, X=np.random.default_rng(0).random((50, 50)), y=np.zeros(50, int))
    raw = path.read_bytes()
    path.write_bytes(b"not a zip file at all" if kind == "garbage" else raw[: len(raw) // 2])
    with raises(ValueError, "path", "c.npz", "not a readable .npz file"):
        load_data(path)


# --------------------------------------------------------------------------- errors: csv


def test_csv_ragged_row_names_line(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("x1,x2,label\n1,2,0\n3,4\n5,6,1\n")
    with raises(ValueError, "r.csv", "line 3", "expected 3 values", "got 2"):
        load_data(path)


def test_csv_every_row_short_names_first_line(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("x1,x2,label\n1,0\n3,1\n")
    with raises(ValueError, "s.csv", "line 2", "expected 3 values", "got 2"):
        load_data(path)


def test_csv_non_numeric_value_names_line_and_column(tmp_path):
    path = tmp_path / "n.csv"
    path.write_text("x1,x2,label\n1,2,0\n3,abc,1\n")
    with raises(ValueError, "n.csv", "line 3", "column 'x2'", "got 'abc'"):
        load_data(path)


def test_csv_missing_label_column_lists_columns(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("x1,x2,target\n1,2,0\n")
    with raises(ValueError, "label_column", "'label'", "m.csv", "['x1', 'x2', 'target']"):
        load_data(path)


def test_csv_without_header_says_so(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("1,2,0\n3,4,1\n")
    with raises(ValueError, "label_column", "found ['1', '2', '0']", "header row is required"):
        load_data(path)


def test_csv_header_only_is_an_error_without_warnings(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("x1,label\n")
    with raises(ValueError, "h.csv", "at least one data row", "got none"):
        load_data(path)


def test_csv_nan_value(tmp_path):
    path = tmp_path / "nan.csv"
    path.write_text("x1,label\n1,0\nnan,1\n")
    with raises(ValueError, "X in", "nan.csv", "1 NaN or inf", "row 1, column 0"):
        load_data(path)


# --------------------------------------------------------------------------- errors: IDX


def test_idx_bad_magic(tmp_path):
    img, _, _ = write_mnist(tmp_path, "train", 2)
    raw = bytearray(img.read_bytes())
    raw[3] = 2  # claims two dimensions
    img.write_bytes(bytes(raw))
    with raises(ValueError, "train-images-idx3-ubyte", "magic number 0x00000803", "got 0x00000802"):
        load_data(img)


@pytest.mark.parametrize("cut, parts", [(-1, ["shape (3, 3, 2)", "18 data bytes", "got 17 (truncated)"]),
                                        (10, ["truncated IDX header", "expected 16 bytes", "got 10"])])
def test_idx_truncated(tmp_path, cut, parts):
    img = write_idx(tmp_path / "x-images-idx3-ubyte", np.zeros((3, 3, 2), np.uint8))
    write_idx(tmp_path / "x-labels-idx1-ubyte", np.zeros(3, np.uint8))
    img.write_bytes(img.read_bytes()[:cut])
    with raises(ValueError, "x-images-idx3-ubyte", *parts):
        load_data(img)


def test_idx_truncated_gzip(tmp_path):
    img, _, _ = write_mnist(tmp_path, "train", 50, suffix=".gz")
    img.write_bytes(img.read_bytes()[:-20])
    with raises(ValueError, "train-images-idx3-ubyte.gz", "could not read", "EOFError"):
        load_data(img)


def test_idx_missing_labels_file(tmp_path):
    img = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 2, 2), np.uint8))
    with raises(FileNotFoundError, "labels file", "train-labels-idx1-ubyte", "does not exist"):
        load_data(img)


def test_idx_count_mismatch(tmp_path):
    img = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 2, 2), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(2, np.uint8))
    with raises(ValueError, "holds 3 images", "holds 2 labels"):
        load_data(img)
