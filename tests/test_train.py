"""Tests for xprop.train: the fit loop, its history, checkpoints, resume and early stopping."""

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest

import xprop
import xprop.io
from xprop.io import ModelFileError, read_npz
from xprop.optim import SGD, Adam
from xprop.tolerances import tolerance
from xprop.train import History, TrainingDiverged, evaluate, fit


def raises(exc, *parts):
    """pytest.raises matching every literal part of the message, in order."""
    return pytest.raises(exc, match=".*".join(re.escape(str(p)) for p in parts))


@pytest.fixture(scope="module")
def digits():
    """The bundled digits, z-scored with the training set's statistics.

    Returns X_train (1437, 64), y_train, X_test (360, 64), y_test as float64/int64.
    """
    ds = xprop.load_digits()
    mu = ds.X_train.mean(axis=0)
    sd = ds.X_train.std(axis=0)
    sd[sd == 0] = 1.0  # a few border pixels are always 0
    return (ds.X_train - mu) / sd, ds.y_train, (ds.X_test - mu) / sd, ds.y_test


def small(digits, m=200):
    X, y, _, _ = digits
    return X[:m], y[:m]


def params_of(net):
    return {k: np.array(v, copy=True) for k, v in net.params.items()}


def assert_params_equal(a, b, what):
    for name in a:
        assert np.array_equal(a[name], b[name]), (
            f"{what}: {name} differs (max |diff| {np.max(np.abs(a[name] - b[name]))})"
        )


def rel_err(a, b):
    """Norm-wise relative error, as xprop.tolerances defines it."""
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), np.finfo(float).tiny))


def sgd_by_hand(net, X, y, lr, batches, epochs):
    """Plain SGD, P = P − lr · dP, over the row ranges ``batches`` in order, every epoch.

    Gradients come from the public forward/backward, not from fit's own step.
    """
    for _ in range(epochs):
        for start, stop in batches:
            _, cache = net.forward(X[start:stop])
            grads = net.backward(cache, y[start:stop])
            for name, p in net.params.items():
                p -= lr * grads[f"d{name}"]


def examples_per_epoch(history):
    """Training examples seen per epoch, read back from the throughput fit reports."""
    return [round(n * s) for n, s in zip(history.samples_per_s, history.seconds)]


def record_params():
    """A callback keeping a copy of the parameters after every epoch."""
    seen = []

    def callback(record, net):
        seen.append((record["epoch"], params_of(net)))

    return seen, callback


# ------------------------------------------------------------ learning digits


@pytest.fixture(scope="module")
def digits_run(digits):
    X, y, _, _ = digits
    net = xprop.MLP([64, 128, 10], seed=0, backend="numpy")
    history = fit(net, X, y, epochs=30, batch_size=32, optimizer=Adam(lr=1e-3),
                  validation=0.1, progress=False)
    return net, history


def test_fit_learns_digits(digits, digits_run):
    # Measured: test accuracy 0.967 after 30 epochs; 0.95 leaves room for BLAS differences.
    net, history = digits_run
    _, _, X_test, y_test = digits
    result = evaluate(net, X_test, y_test)
    assert result["accuracy"] >= 0.95, f"test accuracy {result['accuracy']:.3f} after 30 epochs"
    assert history.loss[-1] < history.loss[0] / 5
    assert history.val_accuracy[-1] >= 0.95


def test_history_records_every_epoch(digits_run):
    _, history = digits_run
    assert len(history) == 30 and history.epoch == list(range(1, 31))
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "seconds", "samples_per_s"):
        values = getattr(history, key)
        assert len(values) == 30 and all(isinstance(v, float) and math.isfinite(v) for v in values), key
    assert all(v > 0 for v in history.samples_per_s)
    assert all(0 <= a <= 1 for a in history.accuracy + history.val_accuracy)
    assert history.best_epoch is None and history.stopped_early is False
    assert set(history.last()) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy",
                                   "seconds", "samples_per_s", "memory_used_bytes",
                                   "memory_total_bytes"}
    # NumPy has no memory pool to report
    assert history.memory_used_bytes == [None] * 30 == history.memory_total_bytes
    assert history.last()["epoch"] == 30 and history.last()["loss"] == history.loss[-1]


def test_history_json_round_trip(digits_run, tmp_path):
    _, history = digits_run
    text = history.to_json(tmp_path / "history.json")
    assert json.loads(text) == history.to_dict()
    assert json.loads((tmp_path / "history.json").read_text()) == history.to_dict()
    assert History.from_dict(json.loads(text)) == history
    assert History().last() == {} and len(History()) == 0


def test_evaluate_returns_loss_accuracy_and_count(digits):
    X, y = small(digits, 50)
    net = xprop.MLP([64, 16, 10], seed=0, backend="numpy", dtype="float64")
    result = evaluate(net, X, y)
    assert set(result) == {"loss", "accuracy", "n"} and result["n"] == 50
    assert result["accuracy"] == np.mean(net.predict(X) == y)
    assert result["loss"] == pytest.approx(net.cost(X, y), rel=tolerance("fast", "float64"))
    regression = xprop.MLP([64, 3, 1], output="identity", seed=0, backend="numpy")
    out = evaluate(regression, X, y.astype(float))
    assert out["accuracy"] is None and out["n"] == 50 and out["loss"] > 0


# ------------------------------------------------------------- mini-batches


@pytest.mark.parametrize(
    "batch_size, batches",
    [(4, [(0, 4), (4, 8), (8, 10)]),   # m = 10: batches of 4, 4 and the last 2 → 3 steps
     (1000, [(0, 10)])],               # larger than m: one full batch per epoch
    ids=["partial-last-batch", "full-batch"],
)
def test_batches_cover_every_example(digits, batch_size, batches):
    X, y = small(digits, 10)
    net = xprop.MLP([64, 8, 10], seed=0, backend="numpy", dtype="float64")
    opt = SGD(lr=0.1)
    history = fit(net, X, y, epochs=2, batch_size=batch_size, optimizer=opt, shuffle=False, progress=False)
    assert opt.t == len(batches) * 2
    assert examples_per_epoch(history) == [10, 10]

    reference = xprop.MLP([64, 8, 10], seed=0, backend="numpy", dtype="float64")
    sgd_by_hand(reference, X, y, 0.1, batches, epochs=2)
    bound = tolerance("fast", "float64")  # fit's step vs the plain forward/backward
    for name, p in net.params.items():
        err = rel_err(p, reference.params[name])
        assert err <= bound, f"{name}: fit vs SGD by hand over {batches}: error {err:.2e} > {bound:.0e}"


def test_shuffle_is_determined_by_the_seed(digits):
    X, y = small(digits)

    def run(seed, shuffle=True):
        net = xprop.MLP([64, 16, 10], seed=0, backend="numpy")
        fit(net, X, y, epochs=3, batch_size=32, optimizer=SGD(lr=0.1, momentum=0.9),
            shuffle=shuffle, seed=seed, progress=False)
        return params_of(net)

    first = run(seed=1)
    assert_params_equal(first, run(seed=1), "same seed, second run")
    other = run(seed=2)
    assert any(not np.array_equal(first[k], other[k]) for k in first), "a different seed gave the same run"
    # Without shuffling the seed has nothing to decide.
    assert_params_equal(run(seed=1, shuffle=False), run(seed=2, shuffle=False), "shuffle=False")


# --------------------------------------------------------------- validation


def test_validation_fraction_holds_out_that_share(digits):
    # m = 100, validation = 0.1 → 90 training examples (one full batch), 10 held out.
    X, y = small(digits, 100)
    net = xprop.MLP([64, 8, 10], seed=0, backend="numpy")
    opt = SGD(lr=0.1)
    history = fit(net, X, y, epochs=2, batch_size=500, optimizer=opt, validation=0.1, progress=False)
    assert examples_per_epoch(history) == [90, 90] and opt.t == 2
    assert all(v is not None for v in history.val_loss + history.val_accuracy)
    # The accuracy on 10 held-out examples is (correct count) / 10.
    assert all(a in {k / 10 for k in range(11)} for a in history.val_accuracy), history.val_accuracy


@pytest.mark.parametrize("validation, exc", [(0.0, ValueError), (1.0, ValueError), (1.5, ValueError),
                                             ("0.1", TypeError)])
def test_bad_validation_argument(digits, validation, exc):
    X, y = small(digits, 100)
    net = xprop.MLP([64, 8, 10], seed=0, backend="numpy")
    with pytest.raises(exc, match="validation"):
        fit(net, X, y, epochs=1, validation=validation, progress=False)


def test_validation_tuple_is_evaluated_after_each_epoch(digits):
    X, y, X_test, y_test = digits
    Xv, yv = X_test[:30], y_test[:30]
    net = xprop.MLP([64, 8, 10], seed=0, backend="numpy", dtype="float64")
    history = fit(net, X[:50], y[:50], epochs=2, batch_size=50, validation=(Xv, yv), progress=False)
    assert examples_per_epoch(history) == [50, 50]  # all 50 train; the pair given is only validated
    result = evaluate(net, Xv, yv)
    assert history.val_loss[-1] == pytest.approx(result["loss"], rel=tolerance("fast", "float64"))
    assert history.val_accuracy[-1] == result["accuracy"]


# ------------------------------------------------------- stopping early


def noisy_validation(digits):
    """100 digits to train on; 60 others to validate on, half of them relabelled at random.

    With a high learning rate the net fits the training labels and the validation
    loss, after a first dip, goes up (measured: 2.14, 2.05, 2.18, 2.33, 2.45).
    """
    X, y, _, _ = digits
    rng = np.random.default_rng(0)
    Xv, yv = X[100:160], y[100:160].copy()
    noisy = rng.random(60) < 0.5
    yv[noisy] = rng.integers(0, 10, noisy.sum())
    return X[:100], y[:100], Xv, yv


def test_patience_stops_and_restores_the_best_weights(digits):
    X, y, Xv, yv = noisy_validation(digits)
    net = xprop.MLP([64, 32, 10], seed=0, backend="numpy")
    seen, callback = record_params()
    history = fit(net, X, y, epochs=30, batch_size=20, optimizer=Adam(lr=1e-2),
                  validation=(Xv, yv), patience=3, callbacks=[callback], progress=False)

    best = int(np.argmin(history.val_loss)) + 1
    assert history.stopped_early is True
    assert history.best_epoch == best
    assert len(history) == best + 3 < 30, f"val losses {history.val_loss}"
    assert history.val_loss[-1] > history.val_loss[best - 1]
    epoch, best_params = seen[best - 1]
    assert epoch == best
    assert_params_equal(params_of(net), best_params, f"restored weights vs epoch {best}")
    assert any(not np.array_equal(seen[-1][1][k], best_params[k]) for k in best_params), (
        "the last epoch's weights equal the best ones: the test shows nothing"
    )


def test_patience_needs_validation(digits):
    X, y = small(digits, 20)
    with raises(ValueError, "patience", "validation"):
        fit(xprop.MLP([64, 8, 10], backend="numpy"), X, y, epochs=2, patience=2, progress=False)


def test_a_callback_returning_true_stops_training(digits):
    X, y = small(digits, 40)
    records = []

    def stop_after_three(record, net):
        records.append(record)
        assert isinstance(net, xprop.MLP)
        return record["epoch"] == 3

    history = fit(xprop.MLP([64, 8, 10], backend="numpy"), X, y, epochs=10, batch_size=16,
                  callbacks=[stop_after_three, lambda record, net: None], progress=False)
    assert len(history) == 3 and history.stopped_early is True
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[-1] == history.last()


# ------------------------------------------------------- checkpoints, resume


RESUMABLE = {
    "sgd-momentum": lambda: SGD(lr=0.05, momentum=0.9),
    "sgd-nesterov-wd": lambda: SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda: Adam(lr=1e-3),
}


@pytest.mark.parametrize("kind", sorted(RESUMABLE))
def test_resume_equals_an_uninterrupted_run(digits, tmp_path, kind):
    X, y = small(digits, 300)
    settings = {"batch_size": 32, "validation": 0.1, "shuffle": True, "seed": 7, "progress": False}

    whole = xprop.MLP([64, 32, 10], seed=0, backend="numpy")
    opt_whole = RESUMABLE[kind]()
    h_whole = fit(whole, X, y, epochs=5, optimizer=opt_whole, checkpoint=tmp_path / "whole.npz", **settings)

    first = xprop.MLP([64, 32, 10], seed=0, backend="numpy")
    fit(first, X, y, epochs=2, optimizer=RESUMABLE[kind](), checkpoint=tmp_path / "split.npz", **settings)
    assert read_npz(tmp_path / "split.npz", "checkpoint")[1]["epoch"] == 2
    # A fresh process: new net (another init seed, so every weight must come from
    # the checkpoint), new optimizer with no state.
    fresh = xprop.MLP([64, 32, 10], seed=123, backend="numpy")
    opt_fresh = RESUMABLE[kind]()
    h_resumed = fit(fresh, X, y, epochs=5, optimizer=opt_fresh, checkpoint=tmp_path / "split.npz",
                    resume=True, **settings)

    assert_params_equal(params_of(fresh), params_of(whole), "resumed vs uninterrupted")
    assert opt_fresh.t == opt_whole.t
    for name, state in opt_whole.state.items():
        for buf, value in state.items():
            assert np.array_equal(opt_fresh.state[name][buf], value), f"optimizer state {name}.{buf}"
    assert h_resumed.epoch == h_whole.epoch == [1, 2, 3, 4, 5]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert getattr(h_resumed, key) == getattr(h_whole, key), key
    assert h_resumed.best_epoch == h_whole.best_epoch


def test_resume_keeps_the_best_weights_found_before_the_interruption(digits, tmp_path):
    # The overfitting set-up of the patience test: the validation loss is lowest at
    # epoch 2, so with patience 10 and 5 epochs the run ends by restoring the weights
    # of epoch 2, which a resumed run can only know from the checkpoint.
    X, y, Xv, yv = noisy_validation(digits)
    settings = {"batch_size": 20, "validation": (Xv, yv), "patience": 10, "seed": 3, "progress": False}
    whole = xprop.MLP([64, 32, 10], seed=0, backend="numpy")
    h_whole = fit(whole, X, y, epochs=5, optimizer=Adam(lr=1e-2), **settings)
    assert h_whole.best_epoch <= 2, f"precondition: val losses {h_whole.val_loss}"

    path = tmp_path / "ckpt.npz"
    fit(xprop.MLP([64, 32, 10], seed=0, backend="numpy"), X, y, epochs=2, optimizer=Adam(lr=1e-2),
        checkpoint=path, **settings)
    resumed = xprop.MLP([64, 32, 10], seed=0, backend="numpy")
    h_resumed = fit(resumed, X, y, epochs=5, optimizer=Adam(lr=1e-2), checkpoint=path, resume=True, **settings)
    assert h_resumed.best_epoch == h_whole.best_epoch
    assert_params_equal(params_of(resumed), params_of(whole), "best weights after resume")


def test_a_checkpoint_written_by_xprop_0_1_0_resumes_bit_for_bit(tmp_path):
    """tests/data/legacy_checkpoint.npz was written by the training loop before it became a
    package (tests/data/make_legacy_checkpoint.py): 3 of 6 epochs, Adam, a validation fraction,
    shuffling, early-stopping state with best weights and a bad epoch. Resuming it today gives
    the weights and history of the uninterrupted run that code made (stopped early at epoch 5,
    epoch 2's weights restored), bit for bit."""
    import shutil
    import sys
    from pathlib import Path

    data = Path(__file__).parent / "data"
    sys.path.insert(0, str(data))
    try:
        import make_legacy_checkpoint as legacy
    finally:
        sys.path.remove(str(data))
    expected = np.load(data / "legacy_expected.npz")
    X, y, kwargs = legacy.settings()
    assert np.array_equal(X, expected["X"]) and np.array_equal(y, expected["y"])
    ckpt = tmp_path / "c.npz"
    shutil.copy(data / "legacy_checkpoint.npz", ckpt)
    net = legacy.make_net()
    h = fit(net, X, y, epochs=6, optimizer=Adam(lr=0.05), checkpoint=ckpt, resume=True, **kwargs)
    want = json.loads(str(expected["history"]))
    for key, value in want.items():
        assert getattr(h, key) == value, key
    for name, p in net.params.items():
        assert np.array_equal(p, expected[f"param.{name}"]), name


def test_resume_without_a_checkpoint_path_is_refused(digits):
    X, y = small(digits, 20)
    with raises(ValueError, "resume", "checkpoint"):
        fit(xprop.MLP([64, 8, 10], backend="numpy"), X, y, epochs=2, resume=True, progress=False)


def test_resume_from_a_missing_file_starts_afresh(digits, tmp_path):
    X, y = small(digits, 20)
    history = fit(xprop.MLP([64, 8, 10], backend="numpy"), X, y, epochs=2, resume=True,
                  checkpoint=tmp_path / "new.npz", progress=False)
    assert history.epoch == [1, 2]
    assert read_npz(tmp_path / "new.npz", "checkpoint")[1]["epoch"] == 2


def test_resume_from_another_architecture_is_refused(digits, tmp_path):
    X, y = small(digits, 20)
    path = tmp_path / "ckpt.npz"
    fit(xprop.MLP([64, 8, 10], backend="numpy"), X, y, epochs=1, checkpoint=path, progress=False)
    other = xprop.MLP([64, 16, 10], backend="numpy")
    before = params_of(other)
    with raises(ModelFileError, repr(str(path)), "another architecture", "layer_sizes", "[64, 8, 10]", "[64, 16, 10]"):
        fit(other, X, y, epochs=2, checkpoint=path, resume=True, progress=False)
    assert_params_equal(params_of(other), before, "a refused resume changed the net")


def test_resume_with_another_optimizer_is_refused(digits, tmp_path):
    X, y = small(digits, 20)
    path = tmp_path / "ckpt.npz"
    fit(xprop.MLP([64, 8, 10], backend="numpy"), X, y, epochs=1, optimizer=Adam(), checkpoint=path, progress=False)
    with raises(ValueError, "'adam'", "same optimizer", "'sgd'"):
        fit(xprop.MLP([64, 8, 10], backend="numpy"), X, y, epochs=2, optimizer=SGD(lr=0.1),
            checkpoint=path, resume=True, progress=False)


def test_resume_from_a_model_file_is_refused(digits, tmp_path):
    X, y = small(digits, 20)
    net = xprop.MLP([64, 8, 10], backend="numpy")
    net.save(tmp_path / "model.npz")
    with raises(ValueError, "model file, not a checkpoint"):
        fit(net, X, y, epochs=2, checkpoint=tmp_path / "model.npz", resume=True, progress=False)


def test_divergence_names_epoch_step_and_last_finite_loss(digits, tmp_path):
    # Epoch 1 trains with lr = 0.1 and writes its checkpoint; a callback then sets
    # lr = 1e300. Epoch 2, unshuffled: step 1 computes a finite loss on rows 0..31
    # and then takes a step so large that the next forward pass overflows, so the
    # loss of step 2 is not finite. The last finite loss is then the cost of rows
    # 0..31 under the weights of epoch 1.
    X, y, _, _ = digits
    path = tmp_path / "ckpt.npz"
    net = xprop.MLP([64, 128, 10], seed=0, backend="numpy", dtype="float64")
    opt = SGD(lr=0.1)
    seen = []

    def blow_up_after_epoch_1(record, net):
        seen.append(params_of(net))
        opt.lr = 1e300

    with pytest.raises(TrainingDiverged) as info:
        fit(net, X, y, epochs=3, batch_size=32, optimizer=opt, shuffle=False, checkpoint=path,
            callbacks=[blow_up_after_epoch_1], progress=False)
    err = info.value
    assert (err.epoch, err.step) == (2, 2)
    epoch_1 = xprop.MLP([64, 128, 10], seed=0, backend="numpy", dtype="float64")
    epoch_1.set_params(seen[0])
    expected = epoch_1.cost(X[:32], y[:32])  # the plain forward pass, not fit's step
    assert err.last_finite == pytest.approx(expected, rel=tolerance("fast", "float64"))
    message = str(err)
    for part in ("epoch 2", "step 2", f"last finite loss {err.last_finite:.6g}", "lower the learning rate"):
        assert part in message, f"{part!r} not in {message!r}"
    # The checkpoint still holds epoch 1.
    assert read_npz(path, "checkpoint")[1]["epoch"] == 1
    assert_params_equal(params_of(xprop.load(path)), seen[0], "checkpoint after the divergence")


class SurgingSGD(SGD):
    """SGD(lr=0.1) as far as a checkpoint can tell (same name and hyperparameters, so a resume
    is accepted) whose steps use lr = 1e6: the loss overflows in the first resumed epoch."""

    def step(self, params, grads, **kwargs):
        self.lr = 1e6
        return super().step(params, grads, **kwargs)

    def hyperparameters(self):
        return {**super().hyperparameters(), "lr": 0.1}


def test_divergence_after_resume_keeps_the_checkpoint_usable(digits, tmp_path):
    # Epoch 1 with a sane learning rate writes a checkpoint; resuming it with an
    # SGD that steps with lr = 1e6 overflows the loss in epoch 2.
    X, y, _, _ = digits
    path = tmp_path / "ckpt.npz"
    net = xprop.MLP([64, 128, 10], seed=0, backend="numpy")
    h1 = fit(net, X, y, epochs=1, batch_size=32, optimizer=SGD(lr=0.1), checkpoint=path, progress=False)
    good = params_of(net)
    good_bytes = path.read_bytes()

    with pytest.raises(TrainingDiverged) as info:
        fit(net, X, y, epochs=3, batch_size=32, optimizer=SurgingSGD(lr=0.1), checkpoint=path, resume=True,
            progress=False)
    err = info.value
    assert err.epoch == 2 and 1 <= err.step <= math.ceil(len(X) / 32)
    assert err.last_finite is not None and math.isfinite(err.last_finite)
    if err.step == 1:  # nothing finite in this epoch: the previous epoch's loss
        assert err.last_finite == h1.loss[-1]
    for part in ("epoch 2", f"step {err.step}", f"last finite loss {err.last_finite:.6g}"):
        assert part in str(err), f"{part!r} not in {str(err)!r}"

    assert path.read_bytes() == good_bytes, "the checkpoint of epoch 1 was rewritten"
    assert_params_equal(params_of(xprop.load(path)), good, "checkpoint after the divergence")
    again = xprop.MLP([64, 128, 10], seed=0, backend="numpy")
    history = fit(again, X, y, epochs=2, batch_size=32, optimizer=SGD(lr=0.1), checkpoint=path,
                  resume=True, progress=False)
    assert history.epoch == [1, 2] and history.loss[0] == h1.loss[0] and math.isfinite(history.loss[1])


def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one(digits, tmp_path, monkeypatch):
    # The rename is the commit point: crash between writing the temporary file and
    # renaming it, at the second epoch's checkpoint.
    X, y = small(digits, 64)
    path = tmp_path / "ckpt.npz"
    replace = xprop.io._replace
    calls = []

    def crash_on_second(tmp, target):
        if Path(target) != path:       # the history log's first write
            return replace(tmp, target)
        calls.append(tmp)
        if len(calls) == 2:
            raise OSError("simulated crash before the rename")
        replace(tmp, target)

    monkeypatch.setattr(xprop.io, "_replace", crash_on_second)
    seen, callback = record_params()
    net = xprop.MLP([64, 8, 10], seed=0, backend="numpy")
    with raises(OSError, "simulated crash"):
        fit(net, X, y, epochs=3, batch_size=16, checkpoint=path, callbacks=[callback], progress=False)
    monkeypatch.undo()
    assert len(calls) == 2 and [e for e, _ in seen] == [1]
    assert sorted(os.listdir(tmp_path)) == ["ckpt.history.jsonl", "ckpt.npz"], "a temporary file was left behind"
    assert read_npz(path, "checkpoint")[1]["epoch"] == 1
    assert_params_equal(params_of(xprop.load(path)), seen[0][1], "checkpoint on disk vs epoch 1")


# ------------------------------------------------------------------ contracts


@pytest.mark.parametrize("layout", ["rows", "columns"])
@pytest.mark.parametrize("x_dtype", ["float32", "float64"])
def test_fit_does_not_mutate_its_inputs(digits, layout, x_dtype):
    X, y = small(digits, 60)
    X = X.astype(x_dtype)
    Y = np.eye(10)[y]  # one-hot rows
    if layout == "columns":
        X, Y = np.ascontiguousarray(X.T), np.ascontiguousarray(Y.T)
    X0, Y0 = X.copy(), Y.copy()
    net = xprop.MLP([64, 8, 10], seed=0, backend="numpy", layout=layout)
    fit(net, X, Y, epochs=2, batch_size=16, validation=0.2, progress=False)
    assert np.array_equal(X, X0) and X.dtype == x_dtype
    assert np.array_equal(Y, Y0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fit_keeps_the_dtype(digits, dtype):
    X, y = small(digits, 40)  # float64 data, cast at the door
    net = xprop.MLP([64, 8, 10], seed=0, backend="numpy", dtype=dtype)
    opt = Adam()
    fit(net, X, y, epochs=2, batch_size=16, optimizer=opt, progress=False)
    for name, p in net.params.items():
        assert p.dtype == dtype, f"{name} became {p.dtype}"
        assert all(buf.dtype == dtype for buf in opt.state[name].values())


def test_progress_bar_is_silent_without_a_terminal(digits, capsys):
    # Under pytest stdout/stderr are captured (not terminals): tqdm must disable itself.
    X, y = small(digits, 40)
    fit(xprop.MLP([64, 8, 10], backend="numpy"), X, y, epochs=2, batch_size=16, progress=True)
    out, err = capsys.readouterr()
    assert out == "" and err == "", f"stdout {out!r}, stderr {err!r}"


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        ({"epochs": 0}, ValueError, ["epochs"]),
        ({"batch_size": 0}, ValueError, ["batch_size"]),
        ({"optimizer": 42}, TypeError, ["optimizer", "int"]),
        ({"optimizer": "rmsprop"}, ValueError, ["optimizer", "'rmsprop'"]),
        ({"patience": 0, "validation": 0.1}, ValueError, ["patience"]),
    ],
    ids=["epochs=0", "batch_size=0", "optimizer=42", "optimizer=rmsprop", "patience=0"],
)
def test_bad_fit_arguments(digits, kwargs, exc, words):
    X, y = small(digits, 20)
    with raises(exc, *words):
        fit(xprop.MLP([64, 8, 10], backend="numpy"), X, y, progress=False, **kwargs)


def test_optimizer_by_name(digits):
    X, y = small(digits, 20)
    history = fit(xprop.MLP([64, 8, 10], backend="numpy"), X, y, epochs=2, optimizer="sgd", progress=False)
    assert len(history) == 2


# ------------------------------------------------------- device strictness


def test_strict_device_on_numpy_changes_nothing(digits):
    X, y = small(digits)
    nets = [xprop.MLP([64, 16, 10], seed=0, backend="numpy") for _ in range(2)]
    for net, strict in zip(nets, (False, True)):
        fit(net, X, y, epochs=2, batch_size=32, optimizer=SGD(lr=0.1), progress=False,
            strict_device=strict)
    for name in nets[0].params:
        assert np.array_equal(nets[0].params[name], nets[1].params[name])


@pytest.mark.parametrize("kwargs, match", [
    ({"strict_device": "yes"}, "strict_device"),
    ({"gpu_mem_limit": 0}, "gpu_mem_limit"),
    ({"gpu_mem_limit": 1 << 30}, "gpu_mem_limit applies to the cupy backend"),
])
def test_device_options_are_checked(digits, kwargs, match):
    X, y = small(digits, 20)
    net = xprop.MLP([64, 4, 10], seed=0, backend="numpy")
    before = params_of(net)
    with pytest.raises((TypeError, ValueError), match=match):
        fit(net, X, y, epochs=1, progress=False, **kwargs)
    assert all(np.array_equal(before[k], v) for k, v in params_of(net).items())


@pytest.mark.gpu
def test_strict_device_epoch_on_cupy_has_no_transfer_or_sync(backend, digits):
    """One epoch on the GPU with syncs forbidden inside the steps: passes, and records the pool."""
    if backend != "cupy":
        pytest.skip("this test is about the CuPy backend")
    X, y = small(digits)
    net = xprop.MLP([64, 16, 10], seed=0, backend="cupy")
    xp = net.xp
    pool = xp.get_default_memory_pool()
    limit_before = pool.get_limit()
    history = fit(net, xp.asarray(X), xp.asarray(y), epochs=1, batch_size=32, progress=False,
                  strict_device=True, gpu_mem_limit=(1 << 30) + 4096)
    assert history.memory_used_bytes[0] > 0 and history.memory_total_bytes[0] >= history.memory_used_bytes[0]
    assert pool.get_limit() == limit_before, "fit(gpu_mem_limit=...) left its limit on the pool"
