"""Reliability: every bad input a clear error, faults survived, nothing lost.

Bad inputs
----------
``API_CASES`` is the canonical list of inputs xprop refuses through its Python
API, ``CLI_CASES`` the same through ``python -m xprop``. Many of the messages
are also checked elsewhere (test_core, test_io, test_datasets, test_cli); here
each case additionally proves the two promises of docs/errors.md:

- the message names the argument, what was expected and what was received;
- nothing changed: the net's parameters are bit-identical afterwards and the
  directory holds exactly what it held before (no checkpoint, no temporary
  file, a previous file byte for byte the same).

Faults
------
Divergence, SIGKILL in the middle of an epoch, Ctrl-C, a full disk or a
read-only directory, and determinism across processes; each is run the way it
happens (real subprocesses and signals) wherever that is possible.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import array_api_strict_or_skip

import xprop
import xprop.cli
import xprop.io
from xprop.backend import to_numpy
from xprop.gradcheck import relative_error
from xprop.io import FORMAT_VERSION, ModelFileError, read_npz
from xprop.optim import SGD, Adam
from xprop.tolerances import tolerance
from xprop.train import fit

# ============================================================== helpers


def params_of(net) -> dict:
    """Host copies of the parameters (to compare before and after)."""
    return {k: np.array(to_numpy(v), copy=True) for k, v in net.params.items()}


def assert_params_equal(a, b, what):
    assert a.keys() == b.keys(), what
    for name in a:
        assert np.array_equal(a[name], b[name]), f"{what}: {name} differs"


def snapshot(directory: Path) -> dict:
    """Every file and folder under ``directory`` (hidden ones included), files with their bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() if p.is_file() else None
            for p in sorted(directory.rglob("*"))}


def assert_message(message: str, *parts: str):
    for part in parts:
        assert part in message, f"{part!r} not in the message {message!r}"


def cli(cwd, *args, timeout=60):
    """``python -m xprop *args`` in ``cwd``, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "xprop", *map(str, args)], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, encoding="utf-8", timeout=timeout,
                          check=False)


def cli_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XPROP_BACKEND", "XPROP_TRACEBACK")}
    env.update(PYTHONIOENCODING="utf-8", TQDM_DISABLE="1")
    return env


def one_stderr_line(proc, status) -> str:
    """``proc`` exited with ``status`` and said why in exactly one line, without a traceback."""
    assert proc.returncode == status, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{proc.stderr}"
    return lines[0]


def rewrite_npz(path: Path, edit) -> None:
    """Let ``edit(arrays, meta)`` change an xprop file written by write_npz_atomic, then save it."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays.pop("__meta__")))
    edit(arrays, meta)
    with open(path, "wb") as fh:
        np.savez(fh, __meta__=np.array(json.dumps(meta)), **arrays)


def truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def corrupt(path: Path) -> None:
    """Flip 64 bytes in the middle of the file, inside the stored arrays: the zip's CRC no longer matches."""
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 64] = bytes(b ^ 0xFF for b in raw[mid:mid + 64])
    path.write_bytes(bytes(raw))


def newer_format(path: Path) -> None:
    rewrite_npz(path, lambda arrays, meta: meta.update(format_version=FORMAT_VERSION + 1))


def not_an_npz(path: Path) -> None:
    path.write_text("W1,b1\n1,2\n")


# ============================================================== bad inputs: API

K, N_OUT, M = 4, 3, 8   # the nets below: 4 features, 3 outputs; the data: 8 examples


def make_net(output="softmax", loss=None, backend="numpy", layout="rows", hidden=5):
    return xprop.MLP([K, hidden, N_OUT], activation="tanh", output=output, loss=loss,
                     backend=backend, dtype="float64", seed=0, layout=layout)


def good_data(net=None):
    """``X (8, 4)`` and targets fitting the net: labels for softmax, 0/1 rows for sigmoid, else values."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((M, K))
    output = "softmax" if net is None else net.output
    if output == "softmax":
        return X, np.arange(M) % N_OUT
    if output == "sigmoid":
        return X, (rng.random((M, N_OUT)) > 0.5).astype(np.float64)
    return X, rng.standard_normal((M, N_OUT))


@dataclass
class Ctx:
    """What a case works with: a fresh net, its good data, a private directory."""

    net: object
    X: np.ndarray
    Y: np.ndarray
    dir: Path

    @property
    def ckpt(self) -> Path:
        return self.dir / "ckpt.npz"

    def fit(self, X=None, Y=None, **kwargs):
        """fit with a checkpoint path, so that a partial write would show in the directory."""
        settings = {"epochs": 2, "batch_size": 4, "checkpoint": self.ckpt, "progress": False}
        settings.update(kwargs)
        return fit(self.net, self.X if X is None else X, self.Y if Y is None else Y, **settings)


def _with(a, index, value):
    a = np.array(a, dtype=np.float64, copy=True)
    a[index] = value
    return a


def _checkpoint(ctx, arch_net=None, epochs=1, optimizer="adam"):
    """A valid checkpoint at ctx.ckpt, written by training ``arch_net`` (default: a copy of ctx.net)."""
    source = arch_net or make_net(ctx.net.output)
    fit(source, *good_data(source), epochs=epochs, batch_size=4, optimizer=optimizer,
        checkpoint=ctx.ckpt, progress=False)


def _model_file(ctx, name="model.npz"):
    path = ctx.dir / name
    make_net().save(path)
    return path


def _csv(ctx, text, name="data.csv"):
    path = ctx.dir / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@dataclass
class Case:
    """One refused input.

    ``run(ctx)`` makes the call that must raise ``exc``; ``setup(ctx)`` prepares
    files beforehand (they are part of the "before" snapshot). The message must
    contain ``argument``, ``expected`` and ``received``, and for a file case the
    file's full path (``file``, relative to the case's directory). ``output`` and
    ``backend`` pick the net.
    """

    run: Callable
    exc: type
    argument: str
    expected: str
    received: str
    output: str = "softmax"
    setup: Callable | None = None
    backend: object = "numpy"
    file: str | None = None


API_CASES = [
    # ---------------------------------------------------------------- X and Y values
    pytest.param(Case(lambda c: c.fit(X=_with(c.X, (2, 1), np.nan)), ValueError,
                      "X", "expected finite numbers", "NaN or inf (1 value, the first in example 2)"),
                 id="X-nan"),
    pytest.param(Case(lambda c: c.fit(X=_with(c.X, (5, 0), -np.inf)), ValueError,
                      "X", "expected finite numbers", "NaN or inf (1 value, the first in example 5)"),
                 id="X-inf"),
    pytest.param(Case(lambda c: c.fit(Y=_with(c.Y, (3, 2), np.nan)), ValueError,
                      "Y", "expected finite numbers", "NaN or inf (1 value, the first in example 3)",
                      output="identity"),
                 id="Y-nan"),
    pytest.param(Case(lambda c: c.fit(X=np.zeros((M, K + 1))), ValueError,
                      "X", "must have 4 features (m, 4)", "got shape (8, 5)"),
                 id="X-wrong-number-of-features"),
    pytest.param(Case(lambda c: c.fit(Y=np.zeros((M, N_OUT - 1))), ValueError,
                      "Y", "must have 3 output columns (m, 3)", "got shape (8, 2)", output="identity"),
                 id="Y-wrong-number-of-output-columns"),
    pytest.param(Case(lambda c: c.fit(Y=np.zeros(M)), ValueError,
                      "Y", "pass targets (m, 3)", "is 1-D but the net has 3 outputs", output="sigmoid"),
                 id="Y-1-D-for-3-outputs"),
    pytest.param(Case(lambda c: c.fit(Y=np.array([0, 1, 2, 3, 0, 1, 2, 0])), ValueError,
                      "Y", "labels must be in 0..2", "got values from 0 to 3"),
                 id="labels-out-of-range"),
    pytest.param(Case(lambda c: c.fit(Y=np.array([0, 1, 2, -1, 0, 1, 2, 0])), ValueError,
                      "Y", "labels must be in 0..2", "got values from -1 to 2"),
                 id="labels-negative"),
    pytest.param(Case(lambda c: c.fit(Y=np.full((M, N_OUT), 0.5)), ValueError,
                      "Y", "must be one-hot rows", "not distributions (example 0: sum 1.5"),
                 id="float-targets-not-one-hot"),
    pytest.param(Case(lambda c: c.fit(Y=np.array([0, 1, 2, 1.5, 0, 1, 2, 0])), ValueError,
                      "Y", "whole class numbers 0..2", "got fractional values"),
                 id="float-labels-not-whole"),
    pytest.param(Case(lambda c: c.fit(Y=np.full((M, N_OUT), 2.0)), ValueError,
                      "Y", "must be in [0, 1]", "got values from 2 to 2", output="sigmoid"),
                 id="bce-targets-outside-0-1"),
    pytest.param(Case(lambda c: c.fit(Y=c.Y[:-1]), ValueError,
                      "Y", "they must match", "Y has 7 examples but X has 8"),
                 id="X-and-Y-lengths-differ"),
    pytest.param(Case(lambda c: c.fit(X=np.zeros((0, K)), Y=np.zeros(0, dtype=np.int64)), ValueError,
                      "X", "expected at least one", "0 examples"),
                 id="X-empty"),
    pytest.param(Case(lambda c: c.fit(X=c.X[0]), ValueError,
                      "X", "must be 2-D (m, 4)", "got 1-D shape (4,)"),
                 id="X-1-D"),
    pytest.param(Case(lambda c: c.fit(X=c.X[:, :, None]), ValueError,
                      "X", "must be 2-D (m, 4)", "got 3-D shape (8, 4, 1)"),
                 id="X-3-D"),
    pytest.param(Case(lambda c: c.fit(X=c.X.astype(str)), TypeError,
                      "X", "must hold numbers", "got an array of dtype <U"),
                 id="X-string-dtype"),
    pytest.param(Case(lambda c: c.fit(X=c.X.astype(object)), TypeError,
                      "X", "must hold numbers", "got an array of dtype object"),
                 id="X-object-dtype"),
    pytest.param(Case(lambda c: c.fit(X=[[0.0] * K] * 3 + [[0.0] * (K - 1)], Y=[0, 1, 2, 0]), ValueError,
                      "X", "rectangular nested list", "got one that is not"),
                 id="X-ragged-list"),
    pytest.param(Case(lambda c: c.fit(validation=(c.X[:, :2], c.Y)), ValueError,
                      "validation X", "must have 4 features", "got shape (8, 2)"),
                 id="validation-X-wrong-features"),
    # ---------------------------------------------------------------- arrays from elsewhere
    pytest.param(Case(lambda c: c.fit(X=c.net.xp.asarray(c.X, device=c.net.xp.Device("device1"))),
                      ValueError, "X", "the net's parameters are on device", "X is on device",
                      backend="array_api_strict"),
                 id="array-api-strict-device-mismatch"),
    pytest.param(Case(lambda c: c.fit(X=array_api_strict_or_skip().asarray(c.X)), TypeError,
                      "X", "pass a NumPy array or an array of the net's namespace",
                      "array_api_strict array", ),
                 id="foreign-namespace-array-into-numpy-net"),
    # ---------------------------------------------------------------- names
    pytest.param(Case(lambda c: make_net(output="swish"), ValueError,
                      "output", "must be one of", "got 'swish'"),
                 id="unknown-output-activation"),
    pytest.param(Case(lambda c: xprop.MLP([K, 5, N_OUT], activation="swish"), ValueError,
                      "activation", "must be one of sigmoid, tanh", "got 'swish'"),
                 id="unknown-activation"),
    pytest.param(Case(lambda c: make_net(loss="hinge"), ValueError,
                      "loss", "must be one of cross_entropy, binary_cross_entropy, mse", "got 'hinge'"),
                 id="unknown-loss"),
    pytest.param(Case(lambda c: c.fit(optimizer="rmsprop"), ValueError,
                      "optimizer", "must be one of sgd, adam", "got 'rmsprop'"),
                 id="unknown-optimizer"),
    pytest.param(Case(lambda c: c.net.to("tpu"), ValueError,
                      "backend", "'auto', 'numpy', 'cupy' or an array namespace", "got 'tpu'"),
                 id="unknown-backend"),
    pytest.param(Case(lambda c: xprop.MLP([K, 5, N_OUT], init="xavier"), ValueError,
                      "init", "must be one of 'he', 'glorot', 'small'", "got 'xavier'"),
                 id="unknown-init"),
    pytest.param(Case(lambda c: xprop.MLP([K, 5, N_OUT], layout="cols"), ValueError,
                      "layout", "must be one of 'rows', 'columns'", "got 'cols'"),
                 id="unknown-layout"),
    pytest.param(Case(lambda c: c.net.to(dtype="float16"), ValueError,
                      "dtype", "'float32' or 'float64'", "got 'float16'"),
                 id="unknown-dtype"),
    pytest.param(Case(lambda c: make_net(output="sigmoid", loss="cross_entropy"), ValueError,
                      "loss 'cross_entropy'", "needs output='softmax'", "got output='sigmoid'"),
                 id="output-loss-incompatible-ce"),
    pytest.param(Case(lambda c: make_net(output="identity", loss="binary_cross_entropy"), ValueError,
                      "loss 'binary_cross_entropy'", "needs output='sigmoid'", "got output='identity'"),
                 id="output-loss-incompatible-bce"),
    # ---------------------------------------------------------------- layer sizes
    pytest.param(Case(lambda c: xprop.MLP([K, 0, N_OUT]), ValueError,
                      "layer_sizes[1]", "a positive integer", "got 0 in [4, 0, 3]"),
                 id="layer-size-zero"),
    pytest.param(Case(lambda c: xprop.MLP([K, -2, N_OUT]), ValueError,
                      "layer_sizes[1]", "a positive integer", "got -2"),
                 id="layer-size-negative"),
    pytest.param(Case(lambda c: xprop.MLP([K]), ValueError,
                      "layer_sizes", "at least two entries", "got [4]"),
                 id="layer-sizes-one-entry"),
    pytest.param(Case(lambda c: xprop.MLP([]), ValueError,
                      "layer_sizes", "at least two entries", "got []"),
                 id="layer-sizes-empty"),
    # ---------------------------------------------------------------- training arguments
    pytest.param(Case(lambda c: c.fit(optimizer=SGD(lr=0.0)), ValueError,
                      "lr", "a finite number > 0", "got 0.0"),
                 id="lr-zero"),
    pytest.param(Case(lambda c: c.fit(optimizer=Adam(lr=-1e-3)), ValueError,
                      "lr", "a finite number > 0", "got -0.001"),
                 id="lr-negative"),
    pytest.param(Case(lambda c: c.fit(optimizer=SGD(lr=float("nan"))), ValueError,
                      "lr", "a finite number > 0", "got nan"),
                 id="lr-nan"),
    pytest.param(Case(lambda c: c.fit(optimizer=SGD(lr=float("inf"))), ValueError,
                      "lr", "a finite number > 0", "got inf"),
                 id="lr-inf"),
    pytest.param(Case(lambda c: c.fit(batch_size=0), ValueError,
                      "batch_size", "an integer ≥ 1", "got 0"),
                 id="batch-size-zero"),
    pytest.param(Case(lambda c: c.fit(batch_size=2.5), ValueError,
                      "batch_size", "an integer ≥ 1", "got 2.5"),
                 id="batch-size-fractional"),
    pytest.param(Case(lambda c: c.fit(epochs=0), ValueError,
                      "epochs", "an integer ≥ 1", "got 0"),
                 id="epochs-zero"),
    pytest.param(Case(lambda c: c.fit(epochs=-3), ValueError,
                      "epochs", "an integer ≥ 1", "got -3"),
                 id="epochs-negative"),
    pytest.param(Case(lambda c: c.fit(seed=-1), ValueError,
                      "seed", "a non-negative integer or None", "got -1"),
                 id="fit-seed-negative"),
    pytest.param(Case(lambda c: c.fit(seed="7"), TypeError,
                      "seed", "an integer or None", "got '7'"),
                 id="fit-seed-not-an-integer"),
    pytest.param(Case(lambda c: c.fit(checkpoint=c.dir / "no" / "ckpt.npz"), FileNotFoundError,
                      "checkpoint", "create it first", "does not exist", file="no"),
                 id="checkpoint-directory-missing"),
    # ---------------------------------------------------------------- checkpoint files (resume)
    pytest.param(Case(lambda c: c.fit(resume=True), ModelFileError,
                      "checkpoint", "not a readable xprop .npz file", "truncated or corrupted",
                      setup=lambda c: (_checkpoint(c), truncate(c.ckpt)), file="ckpt.npz"),
                 id="checkpoint-truncated"),
    pytest.param(Case(lambda c: c.fit(resume=True), ModelFileError,
                      "checkpoint", "not a readable xprop .npz file", "CRC",
                      setup=lambda c: (_checkpoint(c), corrupt(c.ckpt)), file="ckpt.npz"),
                 id="checkpoint-corrupted"),
    pytest.param(Case(lambda c: c.fit(resume=True), ModelFileError,
                      "checkpoint", "another architecture", "layer_sizes: file has [4, 6, 3], net has [4, 5, 3]",
                      setup=lambda c: _checkpoint(c, arch_net=make_net(hidden=6)), file="ckpt.npz"),
                 id="checkpoint-another-architecture"),
    pytest.param(Case(lambda c: c.fit(resume=True), ModelFileError,
                      "checkpoint", f"newer than this xprop understands ({FORMAT_VERSION}); upgrade",
                      f"format version {FORMAT_VERSION + 1}",
                      setup=lambda c: (_checkpoint(c), newer_format(c.ckpt)), file="ckpt.npz"),
                 id="checkpoint-newer-format"),
    pytest.param(Case(lambda c: c.fit(resume=True), ModelFileError,
                      "checkpoint", "expected a zip archive", "got a file starting with b'W1,b'",
                      setup=lambda c: not_an_npz(c.ckpt), file="ckpt.npz"),
                 id="checkpoint-not-an-npz"),
    pytest.param(Case(lambda c: c.fit(resume=True), ValueError,
                      "checkpoint", "not a checkpoint", "is a model file",
                      setup=lambda c: c.net.save(c.ckpt), file="ckpt.npz"),
                 id="checkpoint-is-a-model-file"),
    # ---------------------------------------------------------------- model files (load)
    pytest.param(Case(lambda c: xprop.load(c.dir / "model.npz"), ModelFileError,
                      "model file", "not a readable xprop .npz file", "truncated or corrupted",
                      setup=lambda c: truncate(_model_file(c)), file="model.npz"),
                 id="model-truncated"),
    pytest.param(Case(lambda c: xprop.load(c.dir / "model.npz"), ModelFileError,
                      "model file", "not a readable xprop .npz file", "CRC",
                      setup=lambda c: corrupt(_model_file(c)), file="model.npz"),
                 id="model-corrupted"),
    pytest.param(Case(lambda c: xprop.load(c.dir / "model.npz"), ModelFileError,
                      "model file", "expected (4, 5)", "parameter 'W1' has shape (4, 6)",
                      setup=lambda c: rewrite_npz(_model_file(c), lambda a, m: a.update(W1=np.zeros((4, 6)))),
                      file="model.npz"),
                 id="model-weights-of-another-architecture"),
    pytest.param(Case(lambda c: xprop.load(c.dir / "model.npz"), ModelFileError,
                      "model file", "upgrade xprop", f"format version {FORMAT_VERSION + 1}",
                      setup=lambda c: newer_format(_model_file(c)), file="model.npz"),
                 id="model-newer-format"),
    pytest.param(Case(lambda c: xprop.load(c.dir / "model.npz"), ModelFileError,
                      "model file", "expected a zip archive", "got a file starting with b'W1,b'",
                      setup=lambda c: not_an_npz(c.dir / "model.npz"), file="model.npz"),
                 id="model-not-an-npz"),
    pytest.param(Case(lambda c: c.net.set_params(xprop.load(c.dir / "model.npz").params), ValueError,
                      "params['W1']", "must have shape (4, 5)", "got (4, 6)",
                      setup=lambda c: make_net(hidden=6).save(c.dir / "model.npz")),
                 id="model-into-a-net-of-another-architecture"),
    # ---------------------------------------------------------------- data files
    pytest.param(Case(lambda c: xprop.load_data(c.dir / "data.csv"), ValueError,
                      "label_column", "no column named 'label'", "found ['a', 'b', 'y']",
                      setup=lambda c: _csv(c, "a,b,y\n1,2,0\n3,4,1\n"), file="data.csv"),
                 id="csv-missing-label-column"),
    pytest.param(Case(lambda c: xprop.load_data(c.dir / "data.csv"), ValueError,
                      "line 3", "expected 3 values like the header", "got 2",
                      setup=lambda c: _csv(c, "a,b,label\n1,2,0\n3,4\n"), file="data.csv"),
                 id="csv-ragged-rows"),
    pytest.param(Case(lambda c: xprop.load_data(c.dir / "nope.npz"), FileNotFoundError,
                      "path", "nope.npz", "does not exist", file="nope.npz"),
                 id="data-path-does-not-exist"),
]


@pytest.mark.parametrize("case", API_CASES)
def test_bad_input_is_refused_clearly_and_changes_nothing(case, tmp_path):
    backend = array_api_strict_or_skip() if case.backend == "array_api_strict" else case.backend
    net = make_net(case.output, backend=backend)
    ctx = Ctx(net, *good_data(net), tmp_path)
    if case.setup is not None:
        case.setup(ctx)
    params_before, files_before = params_of(net), snapshot(tmp_path)

    with pytest.raises(case.exc) as info:
        case.run(ctx)

    message = str(info.value)
    assert_message(message, case.argument, case.expected, case.received)
    if case.file is not None:
        assert_message(message, str(tmp_path / case.file))
    assert_params_equal(params_of(net), params_before, "the refused call changed the net")
    assert snapshot(tmp_path) == files_before, "the refused call wrote, removed or changed a file"


def test_the_table_holds_at_least_25_distinct_cases():
    assert len({p.id for p in API_CASES}) == len(API_CASES) >= 25


# ------------------------------------------------------- documented rules, not errors


@pytest.mark.parametrize("x_dtype", ["int64", "int32", "uint8"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_integer_X_is_cast_to_the_net_dtype(dtype, x_dtype):
    # Documented in check_inputs and docs/errors.md: integer features (pixel
    # counts, say) are cast to the net's dtype at the door; the caller's array
    # keeps its dtype and values.
    net = xprop.MLP([K, 5, N_OUT], activation="tanh", backend="numpy", dtype=dtype, seed=0)
    X_int = np.arange(M * K).reshape(M, K).astype(x_dtype) % 7
    X_copy = X_int.copy()
    out_int, cache = net.forward(X_int)
    out_float, _ = net.forward(X_int.astype(dtype))
    assert out_int.dtype == dtype and cache["A0"].dtype == dtype
    assert np.array_equal(out_int, out_float)
    assert X_int.dtype == x_dtype and np.array_equal(X_int, X_copy)

    y = np.arange(M) % N_OUT
    a, b = (xprop.MLP([K, 5, N_OUT], backend="numpy", dtype=dtype, seed=0) for _ in range(2))
    fit(a, X_int, y, epochs=2, batch_size=3, progress=False)
    fit(b, X_int.astype(dtype), y, epochs=2, batch_size=3, progress=False)
    assert_params_equal(params_of(a), params_of(b), "fit on integer X vs the same X cast")


def test_batch_size_larger_than_the_data_means_full_batch():
    # The rule (fit's docstring): batch_size > m is one full batch per epoch.
    # Check it against full-batch gradient descent written out with the public
    # forward/backward: P ← P − lr · dP over all m examples, once per epoch.
    net = make_net()
    X, y = good_data(net)
    by_hand = make_net()
    for _ in range(3):
        _, cache = by_hand.forward(X)
        grads = by_hand.backward(cache, y)
        for name, p in by_hand.params.items():
            p -= 0.1 * grads[f"d{name}"]
    opt = SGD(lr=0.1)
    history = fit(net, X, y, epochs=3, batch_size=10 * M, optimizer=opt, shuffle=False, progress=False)
    assert opt.t == 3, "one step per epoch"
    assert history.epoch == [1, 2, 3]
    for name in net.params:  # fit's fast step folds 1/m differently: equal up to rounding
        err = relative_error(net.params[name], by_hand.params[name])
        assert err <= tolerance("fast", "float64"), f"{name}: {err:.2e}"


# ------------------------------------------------ host/device moves (need a GPU)


@pytest.mark.gpu
@pytest.mark.parametrize("direction", ["numpy-array-into-cupy-net", "cupy-array-into-numpy-net"])
def test_array_from_the_other_side_of_the_door_is_moved_once(direction):
    # Not an error by design (backend.as_backend_array): a NumPy array given to
    # a CuPy net is copied to the device, a CuPy array given to a NumPy net is
    # copied to the host. The result equals the same-side call, the net and the
    # caller's array are unchanged.
    import cupy  # only where the gpu marker let the test run

    host_net = make_net(backend="numpy")
    device_net = host_net.to("cupy")
    X, y = good_data(host_net)
    if direction.startswith("numpy"):
        net, X_given, y_given = device_net, X, y
    else:
        net, X_given, y_given = host_net, cupy.asarray(X), cupy.asarray(y)
    before = params_of(net)
    X_copy = to_numpy(X_given).copy()
    out, _ = net.forward(X_given)
    expected, _ = host_net.forward(X)
    assert type(out).__module__.startswith("cupy" if net is device_net else "numpy")
    np.testing.assert_allclose(to_numpy(out), expected, rtol=tolerance("backends", "float64"))
    assert net.cost(X_given, y_given) == pytest.approx(
        host_net.cost(X, y), rel=tolerance("backends", "float64"))
    assert_params_equal(params_of(net), before, "forward changed the net")
    assert np.array_equal(to_numpy(X_given), X_copy)


# ============================================================== bad inputs: CLI


def _npz(cwd, name="data.npz", X=None, y=None):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 4)) if X is None else X
    y = np.arange(30) % 3 if y is None else y
    np.savez(cwd / name, X=X, y=y)
    return name


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A real run directory (checkpoint.npz, model.npz, ...): one epoch of 64-16-10 on the digits."""
    cwd = tmp_path_factory.mktemp("base")
    proc = cli(cwd, "train", "--epochs", 1, "--out", "run", "--backend", "numpy", "--no-progress",
               "--layers", "64,16,10")
    assert proc.returncode == 0, proc.stderr
    return cwd / "run"


RUN = ("--epochs", "1", "--out", "out", "--backend", "numpy", "--no-progress")


@dataclass
class CliCase:
    """``setup(cwd)`` prepares files and returns the arguments; ``status`` 1 (error) or 2 (usage)."""

    setup: Callable
    status: int
    parts: tuple


def _nan_npz(cwd):
    X = np.random.default_rng(0).standard_normal((30, 4))
    X[4, 2] = np.nan
    return ["train", "--data", _npz(cwd, X=X), *RUN]


def _run_then(edit, *args):
    """With a copy of ``base_run`` in ``run/``, apply ``edit(run_dir)``, then run ``args``."""
    def setup(cwd):
        edit(cwd / "run")
        return list(args)
    setup.needs_run = True
    return setup


def _file_then(name, text, *args):
    """Write ``text`` to ``name``, then run ``args``."""
    def setup(cwd):
        (cwd / name).write_text(text)
        return list(args)
    return setup


CLI_CASES = [
    pytest.param(CliCase(_nan_npz, 1, ("X in", "expected finite values", "1 NaN or inf", "row 4, column 2")),
                 id="data-nan"),
    pytest.param(CliCase(lambda cwd: ["train", "--data", _npz(cwd, X=np.full((30, 4), np.inf)), *RUN], 1,
                         ("X in", "expected finite values", "120 NaN or inf")),
                 id="data-inf"),
    pytest.param(CliCase(lambda cwd: ["train", "--layers", "10,5,10", *RUN], 1,
                         ("--layers starts with 10", "the first entry must be 64")),
                 id="wrong-number-of-features"),
    pytest.param(CliCase(lambda cwd: ["train", "--layers", "64,5,3", *RUN], 1,
                         ("--layers ends with 3", "the last entry must be 10")),
                 id="wrong-number-of-output-columns"),
    pytest.param(CliCase(lambda cwd: ["train", "--data", _npz(cwd, y=np.arange(30) % 3 - 1), *RUN], 1,
                         ("y in", "expected labels >= 0", "got -1")),
                 id="labels-negative"),
    pytest.param(CliCase(lambda cwd: ["train", "--data", _npz(cwd, y=np.full(30, 0.5)), *RUN], 1,
                         ("y in", "expected integer labels", "got 0.5")),
                 id="float-labels"),
    pytest.param(CliCase(lambda cwd: ["train", "--data", _npz(cwd, y=np.arange(29) % 3), *RUN], 1,
                         ("X and y in", "expected the same number of examples", "30 rows in X and 29 labels")),
                 id="X-and-y-lengths-differ"),
    pytest.param(CliCase(lambda cwd: ["train", "--data", _npz(cwd, X=np.zeros((0, 4)), y=np.zeros(0)), *RUN], 1,
                         ("X in", "at least one example", "shape (0, 4)")),
                 id="X-empty"),
    pytest.param(CliCase(lambda cwd: ["train", "--data", _npz(cwd, X=np.zeros(30)), *RUN], 1,
                         ("X in", "expected a 2-D array", "shape (30,)")),
                 id="X-1-D"),
    pytest.param(CliCase(lambda cwd: ["train", "--data", _npz(cwd, X=np.zeros((30, 4, 2))), *RUN], 1,
                         ("X in", "expected a 2-D array", "shape (30, 4, 2)")),
                 id="X-3-D"),
    pytest.param(CliCase(lambda cwd: ["train", "--data", _npz(cwd, X=np.full((30, 4), "a")), *RUN], 1,
                         ("X in", "expected numbers", "dtype <U1")),
                 id="X-string-dtype"),
    pytest.param(CliCase(lambda cwd: ["train", "--data", _npz(cwd, X=np.zeros((30, 4), dtype=object)), *RUN], 1,
                         ("--data", "not a readable .npz file", "allow_pickle=False")),
                 id="X-object-dtype"),
    pytest.param(CliCase(lambda cwd: ["train", "--activation", "swish", *RUN], 2,
                         ("argument --activation", "invalid choice: 'swish'", "choose from")),
                 id="unknown-activation"),
    pytest.param(CliCase(lambda cwd: ["train", "--loss", "hinge", *RUN], 2,
                         ("argument --loss", "invalid choice: 'hinge'", "choose from")),
                 id="unknown-loss"),
    pytest.param(CliCase(lambda cwd: ["train", "--optimizer", "rmsprop", *RUN], 2,
                         ("argument --optimizer", "invalid choice: 'rmsprop'", "choose from")),
                 id="unknown-optimizer"),
    pytest.param(CliCase(lambda cwd: ["train", "--backend", "tpu", *RUN[:-3]], 2,
                         ("argument --backend", "invalid choice: 'tpu'", "choose from")),
                 id="unknown-backend"),
    pytest.param(CliCase(lambda cwd: ["train", "--output", "sigmoid", "--loss", "cross_entropy", *RUN], 1,
                         ("loss 'cross_entropy'", "needs output='softmax'", "got output='sigmoid'")),
                 id="output-loss-incompatible"),
    pytest.param(CliCase(lambda cwd: ["train", "--layers", "64,0,10", *RUN], 2,
                         ("argument --layers", "positive integers", "got '64,0,10'")),
                 id="layer-size-zero"),
    pytest.param(CliCase(lambda cwd: ["train", "--layers", "64,-5,10", *RUN], 2,
                         ("argument --layers", "positive integers", "got '64,-5,10'")),
                 id="layer-size-negative"),
    pytest.param(CliCase(lambda cwd: ["train", "--layers", "64", *RUN], 2,
                         ("argument --layers", "at least two", "got '64'")),
                 id="layer-sizes-one-entry"),
    pytest.param(CliCase(lambda cwd: ["train", "--lr", "0", *RUN], 2,
                         ("argument --lr", "expected a number > 0", "got '0'")),
                 id="lr-zero"),
    pytest.param(CliCase(lambda cwd: ["train", "--lr=-0.1", *RUN], 2,
                         ("argument --lr", "expected a number > 0", "got '-0.1'")),
                 id="lr-negative"),
    pytest.param(CliCase(lambda cwd: ["train", "--lr", "nan", *RUN], 2,
                         ("argument --lr", "expected a number > 0", "got 'nan'")),
                 id="lr-nan"),
    pytest.param(CliCase(lambda cwd: ["train", "--batch-size", "0", *RUN], 2,
                         ("argument --batch-size", "expected an integer ≥ 1", "got '0'")),
                 id="batch-size-zero"),
    pytest.param(CliCase(lambda cwd: ["train", *RUN[:1], "0", *RUN[2:]], 2,
                         ("argument --epochs", "expected an integer ≥ 1", "got '0'")),
                 id="epochs-zero"),
    pytest.param(CliCase(_run_then(lambda d: truncate(d / "checkpoint.npz"),
                                   "train", "--epochs", 2, "--out", "run", "--backend", "numpy",
                                   "--layers", "64,16,10", "--resume"), 1,
                         ("checkpoint", "checkpoint.npz", "not a readable xprop .npz file", "truncated")),
                 id="checkpoint-truncated"),
    pytest.param(CliCase(_run_then(lambda d: corrupt(d / "checkpoint.npz"),
                                   "train", "--epochs", 2, "--out", "run", "--backend", "numpy",
                                   "--layers", "64,16,10", "--resume"), 1,
                         ("checkpoint", "checkpoint.npz", "not a readable xprop .npz file", "CRC")),
                 id="checkpoint-corrupted"),
    pytest.param(CliCase(_run_then(lambda d: None,
                                   "train", "--epochs", 2, "--out", "run", "--backend", "numpy",
                                   "--layers", "64,32,10", "--resume"), 1,
                         ("checkpoint", "another run", "--layers: [64, 16, 10] in the checkpoint, [64, 32, 10] now")),
                 id="checkpoint-another-architecture"),
    pytest.param(CliCase(_run_then(lambda d: newer_format(d / "checkpoint.npz"),
                                   "train", "--epochs", 2, "--out", "run", "--backend", "numpy",
                                   "--layers", "64,16,10", "--resume"), 1,
                         ("checkpoint", f"format version {FORMAT_VERSION + 1}", "upgrade xprop")),
                 id="checkpoint-newer-format"),
    pytest.param(CliCase(_run_then(lambda d: not_an_npz(d / "checkpoint.npz"),
                                   "train", "--epochs", 2, "--out", "run", "--backend", "numpy",
                                   "--layers", "64,16,10", "--resume"), 1,
                         ("checkpoint", "expected a zip archive", "got a file starting with b'W1,b'")),
                 id="checkpoint-not-an-npz"),
    pytest.param(CliCase(_run_then(lambda d: truncate(d / "model.npz"), "evaluate", "run/model.npz"), 1,
                         ("model file", "run/model.npz", "not a readable xprop .npz file", "truncated")),
                 id="model-truncated"),
    pytest.param(CliCase(_run_then(lambda d: corrupt(d / "model.npz"), "evaluate", "run/model.npz"), 1,
                         ("model file", "run/model.npz", "not a readable xprop .npz file", "CRC")),
                 id="model-corrupted"),
    pytest.param(CliCase(_run_then(lambda d: newer_format(d / "model.npz"), "predict", "run/model.npz"), 1,
                         ("model file", f"format version {FORMAT_VERSION + 1}", "upgrade xprop")),
                 id="model-newer-format"),
    pytest.param(CliCase(_run_then(lambda d: not_an_npz(d / "model.npz"), "evaluate", "run/model.npz"), 1,
                         ("model file", "expected a zip archive", "got a file starting with b'W1,b'")),
                 id="model-not-an-npz"),
    pytest.param(CliCase(_run_then(lambda d: _npz(d.parent), "evaluate", "run/model.npz", "--data", "data.npz"), 1,
                         ("the model", "expects 64 features per example", "has 4")),
                 id="model-and-data-of-another-architecture"),
    pytest.param(CliCase(_file_then("d.csv", "a,b,y\n1,2,0\n3,4,1\n", "train", "--data", "d.csv", *RUN), 1,
                         ("--label-column", "no column named 'label'", "found ['a', 'b', 'y']")),
                 id="csv-missing-label-column"),
    pytest.param(CliCase(_file_then("d.csv", "a,b,label\n1,2,0\n3,4\n5,6,1\n", "train", "--data", "d.csv", *RUN), 1,
                         ("d.csv", "line 3", "expected 3 values like the header, got 2")),
                 id="csv-ragged-rows"),
    pytest.param(CliCase(lambda cwd: ["train", "--data", "missing.npz", *RUN], 1,
                         ("--data", "missing.npz", "does not exist")),
                 id="data-path-does-not-exist"),
]


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_bad_input_is_one_line_and_writes_nothing(case, tmp_path, request):
    if getattr(case.setup, "needs_run", False):
        shutil.copytree(request.getfixturevalue("base_run"), tmp_path / "run")
    args = case.setup(tmp_path)
    before = snapshot(tmp_path)
    proc = cli(tmp_path, *args)
    line = one_stderr_line(proc, case.status)
    prefix = "xprop: error: " if case.status == 1 else f"xprop {args[0]}: error: "
    assert line.startswith(prefix), line
    assert_message(line, *case.parts)
    assert snapshot(tmp_path) == before, "the refused command wrote, removed or changed a file"


# ============================================================== faults


# --------------------------------------------------------------- divergence


def test_cli_divergence_exits_1_naming_epoch_and_step(tmp_path):
    proc = cli(tmp_path, "train", "--lr", "1e9", "--optimizer", "sgd", "--epochs", 5, "--out", "run",
               "--backend", "numpy", "--no-progress")
    line = one_stderr_line(proc, 1)
    match = re.search(r"training diverged: the loss became NaN/inf at epoch (\d+), step (\d+) "
                      r"\(last finite loss ([^)]+)\)", line)
    assert match, line
    epoch = int(match.group(1))
    run = tmp_path / "run"
    if epoch == 1:   # nothing was saved: the directory the command made is taken back
        assert not run.exists()
        return
    names = sorted(p.name for p in run.iterdir())
    assert "model.npz" not in names and not any(n.endswith(".tmp") for n in names), names
    if epoch > 1:  # the checkpoint of the last completed epoch, if any, loads
        assert read_npz(run / "checkpoint.npz", "checkpoint")[1]["epoch"] == epoch - 1
        xprop.load(run / "checkpoint.npz")
    else:
        assert "checkpoint.npz" not in names


SURGE = """
import sys
import xprop.cli, xprop.optim

real_step = xprop.optim.SGD.step


def surging_step(self, params, grads, **kwargs):   # the resumed epochs step with lr 1e9
    self.lr = 1e9
    return real_step(self, params, grads, **kwargs)


xprop.optim.SGD.step = surging_step
sys.exit(xprop.cli.main(sys.argv[1:]))
"""


def test_cli_divergence_after_a_good_epoch_keeps_its_checkpoint(tmp_path):
    # Epoch 1 with a sane learning rate; resuming it (the same flags: a resume refuses another
    # --lr) in a process whose SGD steps with lr 1e9 blows up in epoch 2.
    common = ("--optimizer", "sgd", "--out", "run", "--backend", "numpy", "--no-progress")
    assert cli(tmp_path, "train", "--epochs", 1, *common).returncode == 0
    ckpt = tmp_path / "run" / "checkpoint.npz"
    good = ckpt.read_bytes()
    weights = params_of(xprop.load(ckpt))

    (tmp_path / "surge.py").write_text(SURGE)
    proc = subprocess.run([sys.executable, "surge.py", "train", "--epochs", "5", "--resume", *common],
                          cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=60)
    line = one_stderr_line(proc, 1)
    assert re.search(r"at epoch 2, step \d+ \(last finite loss [-+.\deE]+\)", line), line
    assert ckpt.read_bytes() == good, "the checkpoint of epoch 1 was rewritten"
    assert read_npz(ckpt, "checkpoint")[1]["epoch"] == 1
    assert_params_equal(params_of(xprop.load(ckpt)), weights, "checkpoint after the divergence")
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "run").iterdir())


# --------------------------------------------------------------- SIGKILL mid-epoch

CRASH_SETTINGS = {"epochs": 5, "batch_size": 32, "seed": 11}

CRASH_SCRIPT = """
import sys, time
from pathlib import Path

import xprop
from xprop.optim import Adam

out = Path(sys.argv[1])
ds = xprop.load_digits()
X, y = ds.X_train, ds.y_train
STEPS = -(-len(X) // {batch_size})            # steps per epoch


class PausingAdam(Adam):
    \"\"\"Adam (same name, same updates) that stops 5 steps into epoch 3 and says so.\"\"\"

    def step(self, params, grads):
        super().step(params, grads)
        if self.t == 2 * STEPS + 5:
            (out / "mid-epoch-3").write_text(str(self.t))
            time.sleep(120)                  # killed here


def mark(record, net):                       # runs after the epoch's checkpoint is written
    (out / f"epoch-{{record['epoch']}}").touch()


net = xprop.MLP([64, 32, 10], seed=0, backend="numpy")
xprop.fit(net, X, y, epochs={epochs}, batch_size={batch_size}, seed={seed}, optimizer=PausingAdam(lr=1e-3),
          checkpoint=out / "ckpt.npz", callbacks=[mark], progress=False)
(out / "finished").touch()
"""


def wait_for(path: Path, proc, timeout: float) -> None:
    """Poll until ``path`` exists; fail early if ``proc`` ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"the training process ended (status {proc.returncode}) before {path.name}:\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"{path.name} did not appear within {timeout} s")
        time.sleep(0.02)


def test_sigkill_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path):
    script = tmp_path / "train_script.py"
    script.write_text(CRASH_SCRIPT.format(**CRASH_SETTINGS))
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, str(script), str(out)], env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(out / "mid-epoch-3", proc, timeout=20)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    # What the crash left: the checkpoint of epoch 2, complete; no temporary file.
    assert sorted(p.name for p in out.iterdir()) == ["ckpt.history.jsonl", "ckpt.npz", "epoch-1", "epoch-2",
                                                     "mid-epoch-3"]
    _, meta = read_npz(out / "ckpt.npz", "checkpoint")
    history = xprop.io.JsonLines.read(out / "ckpt.history.jsonl", meta["history_log"]["records"])[1]
    assert meta["epoch"] == 2 and [r["epoch"] for r in history] == [1, 2], "more than the interrupted epoch was lost"

    X, y = xprop.load_digits().X_train, xprop.load_digits().y_train
    e, b, s = CRASH_SETTINGS["epochs"], CRASH_SETTINGS["batch_size"], CRASH_SETTINGS["seed"]
    resumed = xprop.MLP([64, 32, 10], seed=123, backend="numpy")  # every weight must come from the file
    h_resumed = fit(resumed, X, y, epochs=e, batch_size=b, seed=s, optimizer=Adam(lr=1e-3),
                    checkpoint=out / "ckpt.npz", resume=True, progress=False)
    whole = xprop.MLP([64, 32, 10], seed=0, backend="numpy")
    h_whole = fit(whole, X, y, epochs=e, batch_size=b, seed=s, optimizer=Adam(lr=1e-3), progress=False)

    assert h_resumed.epoch == [1, 2, 3, 4, 5] and h_resumed.loss == h_whole.loss
    for name in whole.params:  # bit for bit
        assert np.array_equal(resumed.params[name], whole.params[name]), name


# --------------------------------------------------------------- Ctrl-C


def default_sigint():
    """In the child: Ctrl-C's default action, even where pytest itself runs with SIGINT ignored
    (started in the background by a non-interactive shell), so Python installs its handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_sigint_during_cli_training_saves_and_prints_how_to_resume(tmp_path):
    # Batch size 1 makes an epoch take long enough (~1300 steps) that the signal
    # lands inside one; 1000 epochs make sure training is still running then.
    args = ["train", "--epochs", "1000", "--batch-size", "1", "--out", "run", "--backend", "numpy",
            "--no-progress", "--layers", "64,16,10"]
    proc = subprocess.Popen([sys.executable, "-m", "xprop", *args], cwd=tmp_path, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                            preexec_fn=default_sigint)  # noqa: PLW1509  (one signal call)
    ckpt = tmp_path / "run" / "checkpoint.npz"
    try:
        wait_for(ckpt, proc, timeout=20)
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, (proc.returncode, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    match = re.fullmatch(r"xprop: interrupted at epoch (\d+) of 1000; epochs 1-(\d+) are saved in (.+); "
                         r"resume with: (.+)", lines[0])
    assert match, lines[0]
    saved = int(match.group(2))
    assert int(match.group(1)) == saved + 1 and Path(match.group(3)) == Path("run") / "checkpoint.npz"

    # The checkpoint is complete, holds exactly the epochs the message names (it is read
    # from the file), and nothing half-written is left.
    epoch = read_npz(ckpt, "checkpoint")[1]["epoch"]
    assert epoch == saved
    xprop.load(ckpt)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint.history.jsonl", "checkpoint.npz"]

    # The printed command resumes (shortened to one more epoch).
    command = shlex.split(match.group(4))
    assert command[0] == "xprop" and command[1:] == [*args, "--resume"]
    command[command.index("--epochs") + 1] = str(epoch + 1)
    again = cli(tmp_path, *command[1:])
    assert again.returncode == 0, again.stderr
    assert f"resumed after epoch {epoch}" in again.stdout
    assert json.loads((tmp_path / "run" / "history.json").read_text())["epoch"] == list(range(1, epoch + 2))


# --------------------------------------------------------------- disk full, read-only


def _fail_writes_from(n, err):
    """A stand-in for numpy.savez in xprop.io that fails on the n-th write and later ones."""
    real = np.savez
    calls = []

    def savez(fh, **arrays):
        calls.append(1)
        if len(calls) >= n:
            fh.write(b"PK\x03\x04 partial")  # something reached the disk before the error
            raise OSError(err, os.strerror(err))
        return real(fh, **arrays)

    return savez


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EACCES],
                         ids=["disk-full", "read-only-filesystem", "permission-denied"])
def test_checkpoint_write_failure_is_clear_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, err):
    # As root, chmod cannot make a directory read-only, so the OS error is
    # simulated where it would surface: the write of the second epoch's checkpoint.
    net = make_net()
    X, y = good_data(net)
    ckpt = tmp_path / "ckpt.npz"
    seen = []
    monkeypatch.setattr(xprop.io.numpy, "savez", _fail_writes_from(2, err))
    with pytest.raises(OSError) as info:
        fit(net, X, y, epochs=3, batch_size=4, checkpoint=ckpt, progress=False,
            callbacks=[lambda record, n: seen.append(params_of(n))])
    monkeypatch.undo()
    assert info.value.errno == err
    assert_message(str(info.value), f"cannot write {str(ckpt)!r}", os.strerror(err),
                   "the file that was there (if any) is unchanged")
    assert sorted(os.listdir(tmp_path)) == ["ckpt.history.jsonl", "ckpt.npz"], "the partial temporary file was left behind"
    assert read_npz(ckpt, "checkpoint")[1]["epoch"] == 1
    assert len(seen) == 1
    assert_params_equal(params_of(xprop.load(ckpt)), seen[0], "checkpoint on disk vs epoch 1")


def test_cli_disk_full_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    monkeypatch.setattr(xprop.io.numpy, "savez", _fail_writes_from(2, errno.ENOSPC))
    status = xprop.cli.main(["train", "--epochs", "3", "--out", str(out), "--backend", "numpy",
                             "--no-progress", "--layers", "64,16,10"])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert status == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert_message(lines[0], "xprop: error: ", f"cannot write {str(out / 'checkpoint.npz')!r}",
                   "No space left on device", "unchanged")
    assert sorted(os.listdir(out)) == ["checkpoint.history.jsonl", "checkpoint.npz"]
    assert read_npz(out / "checkpoint.npz", "checkpoint")[1]["epoch"] == 1


# --------------------------------------------------------------- determinism


def test_same_seed_gives_bit_identical_weights_in_separate_processes(tmp_path):
    args = ("train", "--epochs", "3", "--backend", "numpy", "--no-progress", "--layers", "64,32,10")
    runs = {"a": "5", "b": "5", "other-seed": "6"}
    procs = {name: subprocess.Popen([sys.executable, "-m", "xprop", *args, "--seed", seed, "--out", name],
                                    cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, seed in runs.items()}
    errors = {}
    try:
        for name, proc in procs.items():
            errors[name] = proc.communicate(timeout=60)[1]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for name, proc in procs.items():
        assert proc.returncode == 0, (name, errors[name])

    def arrays(name):
        with np.load(tmp_path / name / "model.npz", allow_pickle=False) as f:
            return {k: f[k] for k in f.files if k != "__meta__"}

    a, b, other = arrays("a"), arrays("b"), arrays("other-seed")
    assert a.keys() == b.keys() and len(a) == 4
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), f"{k} differs between two runs"
    assert not all(np.array_equal(a[k], other[k]) for k in a), "another seed gave the same weights"
    histories = [json.loads((tmp_path / n / "history.json").read_text()) for n in ("a", "b")]
    assert histories[0]["loss"] == histories[1]["loss"]
