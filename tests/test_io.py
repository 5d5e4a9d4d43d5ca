"""Tests for xprop.io: exact round trips, plain npz files, clear errors, atomic writes."""

import errno
import json
import os
import re
import tempfile

import numpy as np
import pytest

import xprop
import xprop.io
from xprop.backend import cupy_status, to_numpy
from xprop.io import FORMAT_VERSION, ModelFileError, read_npz, write_npz_atomic

BACKENDS = ["numpy", pytest.param("cupy", marks=pytest.mark.gpu)]


def use_backend(name):
    """Skip visibly, with the reason, where ``name`` cannot be used."""
    if name not in xprop.backends():
        pytest.skip(f"backend {name!r} is not usable here: {cupy_status()[1]}")
    return name


def raises(exc, *parts):
    """pytest.raises matching every literal part of the message, in order."""
    return pytest.raises(exc, match=".*".join(re.escape(str(p)) for p in parts))


def make_net(layout="rows", dtype="float64", backend="numpy", seed=0):
    """A small net whose every parameter, biases included, is random and nonzero."""
    net = xprop.MLP([5, 7, 3], activation="tanh", layout=layout, dtype=dtype, backend=backend, seed=seed)
    rng = np.random.default_rng(seed + 100)
    net.set_params({k: rng.standard_normal(tuple(v.shape)) for k, v in net.params.items()})
    return net


def host_params(net):
    return {k: to_numpy(v).copy() for k, v in net.params.items()}


def files_in(directory):
    return sorted(os.listdir(directory))


# ------------------------------------------------------------------ round trip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layout", ["rows", "columns"])
def test_save_load_round_trip_is_exact(tmp_path, backend, dtype, layout):
    use_backend(backend)
    net = make_net(layout, dtype, backend)
    path = net.save(tmp_path / "model.npz")
    assert path == tmp_path / "model.npz"
    loaded = xprop.load(path, backend=backend)
    assert loaded.sizes == net.sizes and loaded.layout == layout and loaded.dtype_name == dtype
    assert (loaded.activation, loaded.output, loaded.loss) == (net.activation, net.output, net.loss)
    assert set(loaded.params) == set(net.params)
    for name, p in net.params.items():
        q = loaded.params[name]
        assert q.dtype == p.dtype and q.shape == p.shape, f"{name}: {q.dtype}{q.shape} vs {p.dtype}{p.shape}"
        assert np.array_equal(to_numpy(q), to_numpy(p)), f"{name} changed in the round trip"
    X = np.random.default_rng(1).standard_normal((4, 5) if layout == "rows" else (5, 4))
    assert np.array_equal(to_numpy(loaded.forward(X)[0]), to_numpy(net.forward(X)[0]))


def test_metadata_is_preserved(tmp_path):
    metadata = {"note": "digits run", "epochs": 3, "val_accuracy": 0.975, "tags": ["a", "b"],
                "nested": {"lr": 0.001, "none": None}}
    make_net().save(tmp_path / "m.npz", metadata=metadata)
    assert xprop.load(tmp_path / "m.npz").metadata == metadata
    make_net().save(tmp_path / "plain.npz")
    assert xprop.load(tmp_path / "plain.npz").metadata == {}


@pytest.mark.parametrize("backend", BACKENDS)
def test_load_onto_numpy_whatever_the_writer(tmp_path, backend):
    # A file written from any backend loads on a CPU-only machine with identical weights.
    use_backend(backend)
    net = make_net(backend=backend, dtype="float32")
    net.save(tmp_path / "m.npz")
    loaded = xprop.load(tmp_path / "m.npz", backend="numpy")
    assert loaded.xp is np and loaded.backend == "numpy"
    for name, p in loaded.params.items():
        assert type(p) is np.ndarray and p.dtype == np.float32
        assert np.array_equal(p, to_numpy(net.params[name]))


def test_file_is_a_plain_npz_without_pickle(tmp_path):
    net = make_net(dtype="float32")
    net.save(tmp_path / "m.npz", metadata={"k": 1})
    with np.load(tmp_path / "m.npz", allow_pickle=False) as data:
        assert sorted(data.files) == ["W1", "W2", "__meta__", "b1", "b2"]
        for name, p in net.params.items():
            assert data[name].dtype == np.float32 and np.array_equal(data[name], p)
        meta = json.loads(str(data["__meta__"]))
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["kind"] == "model" and meta["xprop_version"] == xprop.__version__
    assert meta["architecture"]["layer_sizes"] == [5, 7, 3] and meta["metadata"] == {"k": 1}


def test_a_checkpoint_loads_as_a_model(tmp_path):
    # fit's checkpoint holds the weights under "param.<name>" (beside optimizer
    # state); xprop.load accepts kind "checkpoint" and must find them there.
    net = xprop.MLP([5, 4, 3], backend="numpy", dtype="float64", seed=0)
    X = np.random.default_rng(0).standard_normal((20, 5))
    y = np.arange(20) % 3
    xprop.fit(net, X, y, epochs=2, batch_size=8, optimizer=xprop.SGD(lr=0.1, momentum=0.9),
              checkpoint=tmp_path / "ckpt.npz", progress=False)
    loaded = xprop.load(tmp_path / "ckpt.npz")
    for name, p in net.params.items():
        assert np.array_equal(loaded.params[name], p), f"{name} differs from the trained net"


# ------------------------------------------------------------------ bad files


def _valid_model(path):
    make_net().save(path)
    return path


def _rewrite(path, edit):
    """Load the npz at ``path`` by hand, let ``edit(arrays, meta)`` change it, write it back."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays.pop("__meta__")))
    edit(arrays, meta)
    np.savez(path, __meta__=np.array(json.dumps(meta)), **arrays)


def missing(path):
    return path


def empty(path):
    path.write_bytes(b"")
    return path


def random_bytes(path):
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


def truncated(path):
    raw = _valid_model(path).read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def npz_without_metadata(path):
    np.savez(path, W1=np.zeros((5, 7)), b1=np.zeros(7))
    return path


def metadata_not_json(path):
    np.savez(path, __meta__=np.array("{not json"))
    return path


def metadata_not_an_object(path):
    np.savez(path, __meta__=np.array("[1, 2, 3]"))
    return path


def pickled_object_array(path):
    np.savez(path, __meta__=np.array([{"a": 1}], dtype=object))
    return path


def newer_format(path):
    _rewrite(_valid_model(path), lambda arrays, meta: meta.update(format_version=999))
    return path


def no_architecture(path):
    _rewrite(_valid_model(path), lambda arrays, meta: meta.pop("architecture"))
    return path


def wrong_shape(path):
    _rewrite(_valid_model(path), lambda arrays, meta: arrays.update(W1=np.zeros((7, 5))))
    return path


def missing_parameter(path):
    _rewrite(_valid_model(path), lambda arrays, meta: arrays.pop("b2"))
    return path


def nan_parameter(path):
    def edit(arrays, meta):
        arrays["W2"] = arrays["W2"].copy()
        arrays["W2"][0, 0] = np.nan
    _rewrite(_valid_model(path), edit)
    return path


@pytest.mark.parametrize(
    "make, exc, words",
    [
        (missing, FileNotFoundError, ["does not exist"]),
        (empty, ModelFileError, ["not a readable xprop .npz", "truncated or corrupted"]),
        (random_bytes, ModelFileError, ["not a readable xprop .npz"]),
        (truncated, ModelFileError, ["not a readable xprop .npz", "truncated or corrupted"]),
        (npz_without_metadata, ModelFileError, ["no metadata"]),
        (metadata_not_json, ModelFileError, ["unreadable metadata"]),
        (metadata_not_an_object, ModelFileError, ["unreadable metadata"]),
        (pickled_object_array, ModelFileError, ["not a readable xprop .npz"]),
        (newer_format, ModelFileError, ["format version 999", "newer", "upgrade"]),
        (no_architecture, ModelFileError, ["no architecture"]),
        (wrong_shape, ModelFileError, ["'W1'", "(7, 5)", "expected (5, 7)"]),
        (missing_parameter, ModelFileError, ["lacks parameter 'b2'"]),
        (nan_parameter, ModelFileError, ["'W2'", "not finite"]),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_bad_file_gives_a_clear_error_naming_the_path(tmp_path, make, exc, words):
    path = make(tmp_path / "model.npz")
    with raises(exc, repr(str(path)), *words):
        xprop.load(path)


# ------------------------------------------------------------- atomic writes


def test_read_only_directory_leaves_the_previous_file(tmp_path):
    path = _valid_model(tmp_path / "model.npz")
    before = path.read_bytes()
    os.chmod(tmp_path, 0o555)
    try:
        if os.access(tmp_path, os.W_OK):
            pytest.skip("chmod 0o555 does not stop this user (root) from writing; "
                        "test_disk_full_* below simulate the failure instead")
        with pytest.raises(PermissionError):
            make_net(seed=1).save(path)
    finally:
        os.chmod(tmp_path, 0o755)
    assert path.read_bytes() == before
    assert files_in(tmp_path) == ["model.npz"]


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device (simulated)")


def test_disk_full_before_the_temp_file_exists(tmp_path, monkeypatch):
    path = _valid_model(tmp_path / "model.npz")
    before = path.read_bytes()
    monkeypatch.setattr(tempfile, "mkstemp", _enospc)
    with pytest.raises(OSError) as info:
        make_net(seed=1).save(path)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert files_in(tmp_path) == ["model.npz"]
    assert np.array_equal(xprop.load(path).params["W1"], make_net().params["W1"])


def test_disk_full_in_the_middle_of_the_write(tmp_path, monkeypatch):
    path = _valid_model(tmp_path / "model.npz")
    before = path.read_bytes()

    def half_written(fh, **arrays):
        fh.write(b"PK\x03\x04 a few bytes of the new file")
        _enospc()

    monkeypatch.setattr(xprop.io.numpy, "savez", half_written)
    with pytest.raises(OSError) as info:
        make_net(seed=1).save(path)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert files_in(tmp_path) == ["model.npz"], "the partial temporary file was left behind"


@pytest.mark.parametrize("error", [OSError("crash at the rename (simulated)"), KeyboardInterrupt()])
def test_interrupted_before_the_rename_leaves_the_previous_file(tmp_path, monkeypatch, error):
    path = write_npz_atomic(tmp_path / "f.npz", {"a": np.arange(3.0)}, {"format_version": 1, "n": 1})

    def crash(tmp, target):
        assert os.path.exists(tmp) and os.path.dirname(tmp) == str(tmp_path)  # written beside the target
        raise error

    monkeypatch.setattr(xprop.io, "_replace", crash)
    with pytest.raises(type(error)):
        write_npz_atomic(path, {"a": np.arange(5.0)}, {"format_version": 1, "n": 2})
    monkeypatch.undo()
    arrays, meta = read_npz(path)
    assert meta["n"] == 1 and np.array_equal(arrays["a"], np.arange(3.0))
    assert files_in(tmp_path) == ["f.npz"]


def test_write_npz_atomic_replaces_and_reads_back(tmp_path):
    path = tmp_path / "f.npz"
    write_npz_atomic(path, {"a": np.arange(3.0)}, {"format_version": 1, "n": 1})
    write_npz_atomic(path, {"a": np.arange(4, dtype=np.int32)}, {"format_version": 1, "n": 2})
    arrays, meta = read_npz(path)
    assert meta == {"format_version": 1, "n": 2}
    assert arrays["a"].dtype == np.int32 and np.array_equal(arrays["a"], np.arange(4))
    assert files_in(tmp_path) == ["f.npz"]


def test_missing_directory_is_an_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        make_net().save(tmp_path / "no" / "such" / "dir" / "m.npz")


def test_relative_path_writes_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_net().save("m.npz")
    assert files_in(tmp_path) == ["m.npz"]
    assert xprop.load("m.npz").sizes == (5, 7, 3)

