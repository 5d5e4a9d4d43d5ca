"""fit_many's contract: each of K stacked nets ends as ``fit`` leaves it alone.

``fit_many(nets, X, Y, **kw)`` must leave ``nets[i]`` with the weights (and a
History with the numbers) that ``fit(nets[i], X[rows[i]], Y[rows[i]], **kw_i)``
gives: within ``tolerance("fast", dtype)`` relative (1e-12 is the bound the
issue asks of float64; the fast-step bound, 2e-15, is tighter). Every case
below builds K nets, trains copies of them one by one with ``fit`` and the
nets themselves with one ``fit_many`` call, and compares.
"""

import math
import re

import numpy as np
import pytest

import xprop
from xprop.backend import to_numpy
from xprop.train.many import check_nets
from xprop.optim import Optimizer
from xprop.stacked import ReferenceStackedStep, Stack, StackedStep
from xprop.stacked_optim import StackedOptimizer
from xprop.tolerances import tolerance

from conftest import assert_fast_step_equals_reference

HISTORY_FIELDS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "best_epoch", "stopped_early")


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    num = np.linalg.norm(a - b)
    return 0.0 if num == 0 else num / (np.linalg.norm(a) + np.linalg.norm(b))


def classification(m=203, k=12, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, k))
    return X, rng.integers(0, classes, m)


def make_nets(K, sizes=(12, 9, 7, 4), dtype="float64", **kw):
    return [xprop.MLP(list(sizes), backend="numpy", dtype=dtype, seed=100 + i, **kw) for i in range(K)]


def fresh(opt):
    return type(opt)(**opt.hyperparameters())


def separately(nets, X, Y, rows=None, per=None, **kw):
    """``fit`` of a copy of each net on its own rows with its own arguments: (nets, histories)."""
    per = per or [{} for _ in nets]
    out, hists = [], []
    for i, net in enumerate(nets):
        own = net.to()
        args = dict(kw, **per[i])
        if isinstance(args.get("optimizer"), Optimizer):
            args["optimizer"] = fresh(args["optimizer"])
        Xi, Yi = (X, Y) if rows is None else (X[rows[i]], Y[rows[i]])
        hists.append(xprop.fit(own, Xi, Yi, progress=False, **args))
        out.append(own)
    return out, hists


def together(nets, X, Y, rows=None, per=None, **kw):
    per = per or [{} for _ in nets]
    stacked = {key: [p[key] for p in per] for key in per[0]}
    return xprop.fit_many(nets, X, Y, rows=rows, progress=False, **kw, **stacked)


def assert_same(nets, alone, hists, hists_alone, dtype, check="fast"):
    """On NumPy within the fast step's bound (in practice: the same bits); ``check="many"``
    for backends whose batched products sum in their own order."""
    bound = tolerance(check, dtype)
    for i, (net, ref) in enumerate(zip(nets, alone)):
        for name in ref.params:
            err = rel(to_numpy(net.params[name]), to_numpy(ref.params[name]))
            assert err <= bound, f"nets[{i}].{name} differs from fit alone by {err:.3g} (bound {bound:g})"
        for field in HISTORY_FIELDS:
            got, want = getattr(hists[i], field), getattr(hists_alone[i], field)
            if isinstance(want, list) and want and isinstance(want[0], float):
                assert len(got) == len(want) and rel(got, want) <= bound, (i, field, got, want)
            else:
                assert got == want, (i, field, got, want)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_mixed_seeds_and_learning_rates_train_each_net_as_fit_alone(dtype):
    X, y = classification()
    per = [{"seed": s, "optimizer": xprop.Adam(lr=lr)} for s, lr in [(0, 1e-3), (1, 1e-2), (7, 3e-3)]]
    nets = make_nets(3, dtype=dtype, activation="tanh")
    alone, h_alone = separately(nets, X, y, per=per, epochs=3, batch_size=16, validation=0.2)
    hists = together(nets, X, y, per=per, epochs=3, batch_size=16, validation=0.2)
    assert_same(nets, alone, hists, h_alone, dtype)
    # each optimizer instance holds its own net's state afterwards, as after fit
    assert [o["optimizer"].t for o in per] == [3 * math.ceil(162 / 16)] * 3


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_sgd_rules_mixed_in_one_stack(dtype):
    """Plain SGD (lr folded into the step), momentum, Nesterov and weight decay side by side."""
    X, y = classification(seed=1)
    opts = [xprop.SGD(lr=0.1), xprop.SGD(lr=0.05, momentum=0.9), xprop.SGD(lr=0.05, momentum=0.8, nesterov=True),
            xprop.SGD(lr=0.02, weight_decay=1e-3), xprop.SGD(lr=0.2)]
    per = [{"optimizer": o, "seed": i} for i, o in enumerate(opts)]
    nets = make_nets(5, dtype=dtype, activation="relu")
    alone, h_alone = separately(nets, X, y, per=per, epochs=3, batch_size=32)
    hists = together(nets, X, y, per=per, epochs=3, batch_size=32)
    assert_same(nets, alone, hists, h_alone, dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_rows_of_unequal_size(dtype):
    """k-fold-like training sets: different sizes, step counts and last batches; one set smaller
    than a batch (full-batch descent for that net)."""
    X, y = classification(m=230)
    rows = [np.arange(0, 150), np.arange(20, 230), np.arange(5, 40)[::-1], np.r_[0:60, 100:170]]
    nets = make_nets(4, dtype=dtype, activation="leaky_relu")
    per = [{"seed": s} for s in range(4)]
    alone, h_alone = separately(nets, X, y, rows=rows, per=per, epochs=3, batch_size=32, validation=0.25,
                                optimizer=xprop.Adam(lr=3e-3))
    hists = together(nets, X, y, rows=rows, per=per, epochs=3, batch_size=32, validation=0.25,
                     optimizer=xprop.Adam(lr=3e-3))
    assert_same(nets, alone, hists, h_alone, dtype)


def test_a_net_without_a_batch_in_a_step_is_not_updated():
    """Its optimizer's step count advances only with its own steps."""
    X, y = classification(m=100)
    rows = [np.arange(100), np.arange(30)]
    opts = [xprop.Adam(), xprop.Adam()]
    xprop.fit_many(make_nets(2), X, y, rows=rows, optimizer=opts, epochs=2, batch_size=10, progress=False)
    assert [o.t for o in opts] == [20, 6]


@pytest.mark.parametrize("output, loss, targets", [
    ("sigmoid", "binary_cross_entropy", "multilabel"),
    ("identity", "mse", "regression"),
    ("softmax", "mse", "onehot"),
    ("tanh", "mse", "regression"),
])
def test_other_outputs_and_losses(output, loss, targets):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((90, 5))
    if targets == "multilabel":
        Y = (rng.random((90, 3)) < 0.4).astype(float)
    elif targets == "onehot":
        Y = np.eye(3)[rng.integers(0, 3, 90)]
    else:
        Y = 0.5 * np.tanh(X[:, :3])
    nets = make_nets(3, sizes=(5, 6, 3), output=output, loss=loss, activation="sigmoid")
    rows = [np.arange(90), np.arange(70), np.arange(10, 90)]
    per = [{"seed": s} for s in range(3)]
    alone, h_alone = separately(nets, X, Y, rows=rows, per=per, epochs=2, batch_size=16, validation=0.2,
                                optimizer=xprop.SGD(lr=0.1, momentum=0.5))
    hists = together(nets, X, Y, rows=rows, per=per, epochs=2, batch_size=16, validation=0.2,
                     optimizer=xprop.SGD(lr=0.1, momentum=0.5))
    assert_same(nets, alone, hists, h_alone, "float64")


def test_column_layout_and_one_hot_targets():
    X, y = classification()
    Y = np.eye(4)[y]
    nets = make_nets(2, layout="columns")
    per = [{"seed": 0}, {"seed": 5}]
    alone, h_alone = separately(nets, X.T, Y.T, per=per, epochs=2, batch_size=50)
    hists = together(nets, X.T, Y.T, per=per, epochs=2, batch_size=50)
    assert_same(nets, alone, hists, h_alone, "float64")


def test_validation_pair_and_no_shuffle():
    X, y = classification()
    Xv, yv = classification(m=37, seed=9)
    nets = make_nets(3)
    per = [{"optimizer": xprop.Adam(lr=lr)} for lr in (1e-3, 1e-2, 3e-2)]
    alone, h_alone = separately(nets, X, y, per=per, epochs=2, batch_size=40, validation=(Xv, yv),
                                shuffle=False)
    hists = together(nets, X, y, per=per, epochs=2, batch_size=40, validation=(Xv, yv), shuffle=False)
    assert_same(nets, alone, hists, h_alone, "float64")


def test_any_array_api_namespace_through_the_plain_reference():
    """array-api-strict: the stacked reference step and update against fit's plain step.

    (Sizes divisible by the batch: fit itself slices past the end of a strict array.)"""
    import array_api_strict as strict

    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 5))
    Y = np.tanh(X[:, :3])
    rows = [np.arange(48), np.arange(32)]
    for opt in (xprop.SGD(lr=0.1, momentum=0.9), xprop.Adam(lr=0.01), xprop.SGD(lr=0.1)):
        nets = [xprop.MLP([5, 4, 3], output="identity", backend="numpy", dtype="float64", seed=i).to(strict)
                for i in range(2)]
        alone, h_alone = [], []
        for i, net in enumerate(nets):
            own = net.to()
            h_alone.append(xprop.fit(own, strict.asarray(X[rows[i]]), strict.asarray(Y[rows[i]]), epochs=2,
                                     batch_size=8, progress=False, optimizer=fresh(opt), seed=i))
            alone.append(own)
        hists = xprop.fit_many(nets, strict.asarray(X), strict.asarray(Y), epochs=2, batch_size=8,
                               progress=False, rows=rows, optimizer=opt, seed=[0, 1])
        assert all(n.xp is strict for n in nets)
        assert_same([n.to(np) for n in nets], [a.to(np) for a in alone], hists, h_alone, "float64")


# ------------------------------------------------------------ trouble of one's own
def regression(m=120):
    rng = np.random.default_rng(0)
    X = 3 * rng.standard_normal((m, 6))
    return X, X @ rng.standard_normal((6, 2))


def test_a_diverging_net_is_frozen_at_its_last_finite_epoch_and_the_others_go_on():
    X, Y = regression()
    lrs = [0.02, 0.08, 0.03]                      # 0.08: NaN in epoch 2, step 2 when trained alone
    nets = [xprop.MLP([6, 8, 2], activation="relu", output="identity", backend="numpy", dtype="float64",
                      seed=1) for _ in lrs]
    with pytest.raises(xprop.TrainingDiverged) as info:
        xprop.fit(nets[1].to(), X, Y, epochs=5, batch_size=16, optimizer=xprop.SGD(lr=0.08), progress=False)
    E, step = info.value.epoch, info.value.step
    assert E == 2
    # alone: the diverging net's last finite epoch is what fit(epochs=E−1) leaves
    per = [{"optimizer": xprop.SGD(lr=lr)} for lr in lrs]
    ref_epochs = [5, E - 1, 5]
    alone, h_alone = [], []
    for net, p, e in zip(nets, per, ref_epochs):
        own = net.to()
        h_alone.append(xprop.fit(own, X, Y, epochs=e, batch_size=16, optimizer=fresh(p["optimizer"]),
                                 progress=False))
        alone.append(own)
    hists = together(nets, X, Y, per=per, epochs=5, batch_size=16)
    assert_same(nets, alone, hists, h_alone, "float64")
    assert hists[1].diverged == {"epoch": E, "step": step, "last_finite": info.value.last_finite}
    assert hists[0].diverged is None and hists[2].diverged is None
    assert len(hists[1]) == E - 1 and len(hists[0]) == 5


def test_only_when_every_net_diverges_is_there_an_error():
    X, Y = regression()
    nets = [xprop.MLP([6, 8, 2], activation="relu", output="identity", backend="numpy", dtype="float64",
                      seed=s) for s in (1, 2)]
    with pytest.raises(xprop.TrainingDiverged, match="every one of the 2 nets diverged") as info:
        xprop.fit_many(nets, X, Y, epochs=5, batch_size=16, optimizer=xprop.SGD(lr=0.5), progress=False)
    assert len(info.value.histories) == 2
    assert all(h.diverged is not None for h in info.value.histories)
    for net in nets:
        assert all(np.isfinite(p).all() for p in net.params.values())


def test_early_stopping_members_get_their_best_weights_and_stop_alone():
    X, y = classification(seed=4)
    per = [{"patience": p, "seed": s, "optimizer": xprop.Adam(lr=lr)}
           for p, s, lr in [(1, 0, 0.05), (None, 1, 0.01), (2, 2, 0.1), (3, 3, 0.001)]]
    nets = make_nets(4, activation="tanh")
    alone, h_alone = separately(nets, X, y, per=per, epochs=12, batch_size=32, validation=0.3)
    hists = together(nets, X, y, per=per, epochs=12, batch_size=32, validation=0.3)
    assert_same(nets, alone, hists, h_alone, "float64")
    assert any(h.stopped_early for h in hists) and not hists[1].stopped_early


def test_a_callback_stops_its_own_net():
    X, y = classification()
    stop_second = [[], [lambda record, net: record["epoch"] == 2], []]
    nets = make_nets(3)
    hists = xprop.fit_many(nets, X, y, epochs=4, batch_size=64, callbacks=stop_second, progress=False)
    assert [len(h) for h in hists] == [4, 2, 4]
    assert hists[1].stopped_early
    seen = []
    xprop.fit_many(make_nets(2), X, y, epochs=2, batch_size=64, progress=False,
                   callbacks=lambda record, net: seen.append((record["epoch"], id(net))))
    assert len(seen) == 4


# ------------------------------------------------------------ checkpoint and resume
class Interrupt(Exception):
    pass


def test_resume_in_the_middle_is_bit_for_bit(tmp_path):
    X, y = classification(m=150)
    rows = [np.arange(150), np.arange(0, 120), np.arange(40, 150)]
    kw = dict(epochs=5, batch_size=16, validation=0.2, rows=rows, progress=False,
              patience=[None, 1, None], seed=[0, 1, 2])
    full_nets = make_nets(3)
    full = xprop.fit_many(full_nets, X, y, optimizer=[xprop.Adam(lr=lr) for lr in (1e-3, 5e-2, 1e-2)], **kw)

    def interrupt(record, net):
        if record["epoch"] == 3:
            raise Interrupt

    nets = make_nets(3)
    path = tmp_path / "stack.npz"
    with pytest.raises(Interrupt):
        xprop.fit_many(nets, X, y, optimizer=[xprop.Adam(lr=lr) for lr in (1e-3, 5e-2, 1e-2)],
                       checkpoint=path, callbacks=[interrupt], **kw)
    resumed_nets = make_nets(3)
    seen = []
    resumed = xprop.fit_many(resumed_nets, X, y, optimizer=[xprop.Adam(lr=lr) for lr in (1e-3, 5e-2, 1e-2)],
                             checkpoint=path, resume=True, callbacks=lambda record, net: seen.append(record["epoch"]),
                             **kw)
    assert min(seen) == 3                      # epochs 1-2 came from the checkpoint
    for a, b, ha, hb in zip(full_nets, resumed_nets, full, resumed):
        for name in a.params:
            assert np.array_equal(a.params[name], b.params[name]), name
        assert (ha.loss, ha.val_loss, ha.best_epoch, ha.stopped_early) == \
               (hb.loss, hb.val_loss, hb.best_epoch, hb.stopped_early)


def test_resume_refuses_other_optimizers(tmp_path):
    X, y = classification(m=60)
    path = tmp_path / "c.npz"
    xprop.fit_many(make_nets(2), X, y, epochs=1, checkpoint=path, progress=False)
    with pytest.raises(ValueError, match="resume needs the same optimizer, got 'sgd'"):
        xprop.fit_many(make_nets(2), X, y, epochs=2, checkpoint=path, resume=True, progress=False,
                       optimizer=xprop.SGD())
    # the checkpoint's run check names the optimizers' hyperparameters, saved and now
    with pytest.raises(ValueError, match=r"another run \(optimizer models: .*'lr': 0.001.* in the checkpoint, .*'lr': 0.01"):
        xprop.fit_many(make_nets(2), X, y, epochs=2, checkpoint=path, resume=True, progress=False,
                       optimizer=[xprop.Adam(), xprop.Adam(lr=0.01)])
    with pytest.raises(ValueError, match="another set of nets"):
        xprop.fit_many(make_nets(2), X, y, epochs=2, checkpoint=path, resume=True, progress=False,
                       rows=[np.arange(60), np.arange(30)])


# ------------------------------------------------------------ arguments
def test_distributed_is_refused():
    X, y = classification(m=20)
    with pytest.raises(ValueError, match="does not run distributed"):
        xprop.fit_many(make_nets(2), X, y, distributed=True)


@pytest.mark.parametrize("change, words", [
    ({"activation": "tanh"}, "nets[2] differs from nets[0] in its activation: 'tanh' vs 'relu'"),
    ({"dtype": "float32"}, "nets[2] differs from nets[0] in its dtype: 'float32' vs 'float64'"),
    ({"sizes": (12, 8, 7, 4)}, "nets[2] differs from nets[0] in its layer sizes"),
    ({"layout": "columns"}, "nets[2] differs from nets[0] in its layout"),
])
def test_nets_that_differ_are_named(change, words):
    nets = make_nets(2)
    kw = {"sizes": (12, 9, 7, 4), "dtype": "float64", **change}
    nets.append(xprop.MLP(list(kw.pop("sizes")), backend="numpy", seed=5, **kw))
    with pytest.raises(ValueError, match=re.escape(words)):
        check_nets(nets)


def test_bad_arguments_are_named():
    X, y = classification(m=40)
    nets = make_nets(2)
    with pytest.raises(ValueError, match="nets\\[1\\] is the same object as nets\\[0\\]"):
        xprop.fit_many([nets[0], nets[0]], X, y)
    with pytest.raises(ValueError, match="nets is empty"):
        xprop.fit_many([], X, y)
    with pytest.raises(TypeError, match="optimizer\\[1\\] is a SGD and optimizer\\[0\\] a Adam"):
        xprop.fit_many(nets, X, y, optimizer=[xprop.Adam(), xprop.SGD()])
    with pytest.raises(ValueError, match="seed as a list must have one entry per net \\(2\\); got 3"):
        xprop.fit_many(nets, X, y, seed=[1, 2, 3])
    with pytest.raises(IndexError, match="rows\\[1\\] holds indices outside X's 40 rows"):
        xprop.fit_many(nets, X, y, rows=[np.arange(5), np.arange(35, 45)])
    with pytest.raises(ValueError, match="rows\\[0\\] is empty"):
        xprop.fit_many(nets, X, y, rows=[np.arange(0), np.arange(5)])
    with pytest.raises(ValueError, match="patience .* needs validation"):
        xprop.fit_many(nets, X, y, patience=2)


def test_one_optimizer_is_a_template():
    X, y = classification(m=50)
    template = xprop.Adam(lr=0.01)
    nets = make_nets(2)
    alone, h_alone = separately(nets, X, y, epochs=2, batch_size=10, optimizer=template)
    hists = xprop.fit_many(nets, X, y, epochs=2, batch_size=10, optimizer=template, progress=False)
    assert template.t == 0 and template.state == {}
    assert_same(nets, alone, hists, h_alone, "float64")


# ------------------------------------------------------------ fast == reference
@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "leaky_relu", "identity"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("padded", [False, True])
def test_stacked_step_equals_its_reference(activation, dtype, padded):
    K, m = 3, 9
    rng = np.random.default_rng(0)
    nets = make_nets(K, sizes=(5, 7, 6, 4), dtype=dtype, activation=activation)
    stack = Stack(nets)
    X = rng.standard_normal((K, m, 5)).astype(dtype)
    Y = np.eye(4, dtype=dtype)[rng.integers(0, 4, (K, m))]
    n = [m, m - 3, m - 1] if padded else [m] * K
    for i, c in enumerate(n):
        Y[i, c:] = 0
    s = np.zeros((K, m, 1), dtype=dtype)
    for i, c in enumerate(n):
        s[i, :c] = 1 / c
    counts = np.asarray(n, dtype=dtype).reshape(K, 1, 1)
    rc = n if padded else None
    J, A, G = StackedStep(stack)(X, Y, s, counts, rc)
    J_ref, A_ref, G_ref = ReferenceStackedStep(stack)(X, Y, s, counts, rc)
    views = stack.views(G)
    for i, c in enumerate(n):
        fast = (J[i], A[i, :c], {f"d{k}": v[i] for k, v in views.items()})
        ref = (J_ref[i], A_ref[i, :c], {f"d{k}": v[i] for k, v in G_ref.items()})
        assert_fast_step_equals_reference(nets[i], X[i, :c], Y[i, :c], fast, ref, f"model {i}")


@pytest.mark.parametrize("opts", [
    [xprop.Adam(lr=1e-2), xprop.Adam(lr=1e-3, betas=(0.8, 0.99), weight_decay=1e-2), xprop.Adam(eps=1e-3)],
    [xprop.SGD(lr=0.1, momentum=0.9), xprop.SGD(lr=0.2), xprop.SGD(lr=0.1, momentum=0.5, nesterov=True,
                                                                    weight_decay=0.1)],
], ids=["adam", "sgd"])
def test_stacked_update_equals_its_reference(opts):
    rng = np.random.default_rng(1)
    nets = make_nets(3, sizes=(5, 4, 3))
    fast_stack, plain_stack = Stack(nets), Stack(nets)
    plain_stack.fast = False
    plain_stack.params = {k: v.copy() for k, v in plain_stack.params.items()}
    fast_opt = StackedOptimizer([fresh(o) for o in opts], fast_stack)
    plain_opt = StackedOptimizer([fresh(o) for o in opts], plain_stack)
    for _ in range(3):
        G = rng.standard_normal((3, fast_stack.P))
        grads = fast_stack.views(G.copy())
        fast_opt.step(fast_stack.params, grads, fast_opt.runs([True, False, True]))
        plain_grads = {k: v.copy() for k, v in fast_stack.views(G.copy()).items()}
        plain_opt.step(plain_stack.params, plain_grads, plain_opt.runs([True, False, True]))
    for name, p in fast_stack.params.items():
        assert rel(p, plain_stack.params[name]) <= tolerance("fast", "float64"), name
        assert np.array_equal(p[1], nets[1].params[name]), "a net left out of the step was changed"
    assert list(fast_opt.t) == [3, 0, 3]


# ------------------------------------------------------------ memory
# As tests/test_memory.py: the nets and the data exist before tracing starts; the budget of one
# net is params + optimizer state + one batch's forward cache (X_b and every Z_l, A_l), and fit
# may also keep 12 bytes an example (the epoch's permutation and the predicted class) and each
# step's loss. fit_many's stack is a traced copy of the params, and its gradients one more; the
# nets' own arrays hold the last finite epoch (what a diverging net is frozen at).
def traced_many(sizes, B, K, optimizer, batches=4, epochs=1):
    rng = np.random.default_rng(0)
    m = batches * B
    X = rng.standard_normal((m, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], m)
    xprop.fit_many(make_nets(2, sizes=sizes, dtype="float32"), X[:64], y[:64], epochs=1, batch_size=32,
                   progress=False, optimizer=fresh(optimizer))      # imports and one-time setup
    nets = make_nets(K, sizes=sizes, dtype="float32")
    import tracemalloc

    tracemalloc.start()
    try:
        xprop.fit_many(nets, X, y, epochs=epochs, batch_size=B, optimizer=optimizer, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    P = nets[0].n_params * 4
    state = P * len(optimizer.state_names)
    cache = B * (sizes[0] + 2 * sum(sizes[1:])) * 4
    per_example = (4 + 4 + 4) * m * K         # each model's permutation, epoch order and step indices
    per_step = 256 * batches * epochs
    return peak, P, state, cache, per_example + per_step


@pytest.mark.parametrize("sizes, B, K", [([784, 256, 128, 10], 128, 8), ([256, 384, 128, 10], 128, 4)])
def test_fit_many_with_adam_peaks_within_k_budgets(sizes, B, K):
    peak, P, state, cache, extra = traced_many(sizes, B, K, xprop.Adam())
    allowed = 1.3 * K * (P + state + cache) + extra
    assert peak <= allowed, f"fit_many peaked at {peak:,} bytes, over {allowed:,.0f} (K={K})"


def test_fit_many_with_sgd_holds_one_params_more_per_net():
    """Plain SGD has no state to hide the stack's copy in: K budgets plus K params."""
    sizes, B, K = [256, 384, 128, 10], 128, 4
    peak, P, state, cache, extra = traced_many(sizes, B, K, xprop.SGD(lr=0.01))
    allowed = 1.3 * K * (P + state + cache + P) + extra
    assert peak <= allowed, f"fit_many peaked at {peak:,} bytes, over {allowed:,.0f} (K={K})"


# ------------------------------------------------------------ CuPy
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("padded", [False, True])
def test_stacked_step_on_cupy_equals_numpy(dtype, padded):
    """The CuPy step (strided-batched GEMMs, fused kernels) against the NumPy step, model by model."""
    K, m = 4, 33
    rng = np.random.default_rng(2)
    nets = make_nets(K, sizes=(20, 16, 12, 5), dtype=dtype, activation="relu")
    X = rng.standard_normal((K, m, 20)).astype(dtype)
    Y = np.eye(5, dtype=dtype)[rng.integers(0, 5, (K, m))]
    n = [m, m - 7, m - 1, 3] if padded else [m] * K
    s = np.zeros((K, m, 1), dtype=dtype)
    for i, c in enumerate(n):
        s[i, :c] = 1 / c
    counts = np.asarray(n, dtype=dtype).reshape(K, 1, 1)
    rc = n if padded else None
    outs = {}
    for backend in ("numpy", "cupy"):
        stack = Stack([net.to(backend) for net in nets])
        xp = stack.xp
        J, A, G = StackedStep(stack)(xp.asarray(X), xp.asarray(Y), xp.asarray(s), xp.asarray(counts), rc)
        outs[backend] = (to_numpy(J), to_numpy(A), to_numpy(G))
    bound = tolerance("backends", dtype)
    for i, c in enumerate(n):
        for what, a, b in zip(("J", "A_L", "grads"), outs["numpy"], outs["cupy"]):
            a_i, b_i = (a[i], b[i]) if what != "A_L" else (a[i, :c], b[i, :c])
            assert rel(a_i, b_i) <= bound, f"model {i}: {what} differs between NumPy and CuPy"


@pytest.mark.gpu
def test_stacked_adam_kernel_on_cupy_equals_numpy():
    """Adam's fused kernel with per-model (K, 1) hyperparameter columns."""
    rng = np.random.default_rng(3)
    nets = make_nets(3, sizes=(6, 5, 4))
    opts = [xprop.Adam(lr=1e-2), xprop.Adam(lr=1e-3, betas=(0.8, 0.99), weight_decay=1e-2), xprop.Adam(eps=1e-3)]
    result = {}
    for backend in ("numpy", "cupy"):
        stack = Stack([net.to(backend) for net in nets])
        opt = StackedOptimizer([fresh(o) for o in opts], stack)
        assert opt.use_kernels == (backend == "cupy")
        for t in range(3):
            G = stack.xp.asarray(np.random.default_rng(t).standard_normal((3, stack.P)))
            opt.step(stack.params, stack.views(G), opt.runs([True, True, False]))
        result[backend] = to_numpy(stack.flat)
    assert rel(result["numpy"], result["cupy"]) <= tolerance("backends", "float64")
    assert np.array_equal(result["cupy"][2], np.concatenate([to_numpy(p).ravel() for p in nets[2].params.values()]))


@pytest.mark.gpu
def test_fit_many_on_cupy_trains_each_net_as_fit_alone():
    X, y = classification(m=230)
    rows = [np.arange(0, 150), np.arange(20, 230), np.arange(5, 40)]
    nets = [net.to("cupy") for net in make_nets(3, activation="tanh")]
    per = [{"seed": s, "optimizer": xprop.Adam(lr=lr)} for s, lr in [(0, 1e-3), (1, 1e-2), (2, 3e-3)]]
    alone, h_alone = separately(nets, X, y, rows=rows, per=per, epochs=3, batch_size=32, validation=0.2)
    hists = together(nets, X, y, rows=rows, per=per, epochs=3, batch_size=32, validation=0.2)
    assert all(net.backend == "cupy" for net in nets)
    assert_same(nets, alone, hists, h_alone, "float64", check="many")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_kernel_paths_on_numpy_equal_the_buffered_ones(dtype):
    """The fused kernels (xprop.kernels: plain arithmetic, so they run on NumPy too) with the
    stack's (K, 1, 1) scales and (K, 1) hyperparameter columns, as the CuPy step runs them;
    a float32 stack stays float32 through them."""
    K, m = 3, 10
    rng = np.random.default_rng(4)
    nets = make_nets(K, sizes=(6, 5, 4), activation="tanh", dtype=dtype)
    X = rng.standard_normal((K, m, 6)).astype(dtype)
    Y = np.eye(4, dtype=dtype)[rng.integers(0, 4, (K, m))]
    s = np.full((K, 1, 1), 1 / m, dtype=dtype)
    counts = np.full((K, 1, 1), float(m), dtype=dtype)
    results = []
    for kernels in (False, True):
        stack = Stack(nets)
        step = StackedStep(stack)
        step.use_kernels = kernels
        J, A, G = step(X, Y, s, counts)
        opt = StackedOptimizer([xprop.Adam(lr=1e-2), xprop.Adam(lr=1e-3), xprop.Adam(eps=1e-4)], stack)
        opt.use_kernels = kernels
        opt.step(stack.params, step.grads, opt.runs([True] * K))
        results.append((J.copy(), A.copy(), stack.flat.copy()))
        assert {J.dtype, A.dtype, G.dtype, stack.flat.dtype, opt.state["m"].flat.dtype} == {np.dtype(dtype)}
    for a, b in zip(*results):
        assert rel(a, b) <= tolerance("fast", dtype)


def test_a_resume_after_a_divergence_keeps_the_net_frozen(tmp_path):
    X, Y = regression()

    def make():
        return [xprop.MLP([6, 8, 2], activation="relu", output="identity", backend="numpy", dtype="float64",
                          seed=1) for _ in range(3)]

    def opts():
        return [xprop.SGD(lr=lr) for lr in (0.02, 0.08, 0.03)]

    kw = dict(epochs=5, batch_size=16, progress=False)
    full_nets = make()
    full = xprop.fit_many(full_nets, X, Y, optimizer=opts(), **kw)
    assert full[1].diverged is not None and full[1].diverged["epoch"] == 2

    def interrupt(record, net):
        if record["epoch"] == 3:
            raise Interrupt

    path = tmp_path / "stack.npz"
    with pytest.raises(Interrupt):
        xprop.fit_many(make(), X, Y, optimizer=opts(), checkpoint=path, callbacks=interrupt, **kw)
    nets = make()
    resumed = xprop.fit_many(nets, X, Y, optimizer=opts(), checkpoint=path, resume=True, **kw)
    for a, b, ha, hb in zip(full_nets, nets, full, resumed):
        for name in a.params:
            assert np.array_equal(a.params[name], b.params[name]), name
        assert (ha.loss, ha.diverged) == (hb.loss, hb.diverged)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_stacked_adam_kernel_as_cupy_builds_it(dtype):
    """The CuPy stack's Adam update is Adam's own fused kernel with (k, 1) hyperparameter columns:
    traced by CuPy (tests/test_kernels.py's tracer: the wheel, no device), it computes in the
    net's dtype only, writes P, m, v in place, and gives the plain stacked update's numbers."""
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed: the kernel trace needs the wheel "
                                              "(pip install 'xprop[gpu]'), not a device")
    from test_kernels import assert_in_net_dtype, assert_writes_in_place, evaluate, fake_array, recording, trace
    from xprop import kernels

    rng = np.random.default_rng(5)
    nets = make_nets(3, sizes=(5, 4, 3), dtype=dtype)
    opts = [xprop.Adam(lr=1e-2), xprop.Adam(lr=1e-3, betas=(0.8, 0.99), weight_decay=1e-2), xprop.Adam(eps=1e-3)]
    stack = Stack(nets)
    plain = Stack(nets)
    plain.fast = False
    plain.params = {k: v.copy() for k, v in plain.params.items()}
    opt, ref = StackedOptimizer([fresh(o) for o in opts], stack), StackedOptimizer([fresh(o) for o in opts], plain)
    P, m, v = stack.flat.copy(), np.zeros_like(stack.flat), np.zeros_like(stack.flat)
    for t in range(3):
        G = rng.standard_normal(P.shape).astype(dtype)
        ref.step(plain.params, {k: x.copy() for k, x in stack.views(G.copy()).items()}, [(0, 3)])
        opt.t += 1
        host = [P, G, m, v, *opt.kernel_columns(0, 3)]
        fakes = [fake_array(cupy, a.shape, a.dtype) for a in host]
        with recording() as calls:                 # the call the CuPy stack makes, recorded
            kernels._adam(cupy, *fakes)
        (fused, args), = calls
        tr = trace(fused, args)
        assert_in_net_dtype(tr, dtype)
        assert_writes_in_place(tr, {0, 2, 3})      # P, m, v in place
        host_of = {id(f): a for f, a in zip(fakes, host)}
        final = evaluate(tr, [host_of[id(a)] for a in args])
        P, m, v = final[0], final[2], final[3]
    flat_ref = np.concatenate([plain.params[k].reshape(3, -1) for k in plain.shapes], axis=1)
    assert rel(P, flat_ref) <= tolerance("fast", dtype)
