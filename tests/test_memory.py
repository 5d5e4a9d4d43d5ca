"""What fit holds in memory: the net's training state and one batch, not the data.

NumPy reports every allocation to tracemalloc, so the peak of what ``fit``
allocates is a count of bytes, the same on every run and every machine (unlike
time, which the suite never asserts). The data and the net are made before
tracing starts; the budget is what training a net needs whatever the data:
params + optimizer state + one batch's forward cache (X_b and every Z_l, A_l).
``fit`` also keeps, per training example, the epoch's permutation (int32) and
the predicted class (int64): 12 bytes an example, which no budget of the net's
size can hold, and each step's loss until the epoch's one read-back (a 0-d
array, under 100 bytes); the bounds below allow exactly that much.
"""

import tracemalloc

import numpy as np
import pytest

import xprop

PER_EXAMPLE = 4 + 8     # the epoch's permutation (int32) and the predicted class (int64)
PER_STEP = 256          # each step's loss, kept on the device for the epoch's one read-back
SLACK = 1.3             # the peak may exceed the budget by 30 %


def data(sizes, m, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], m)
    return X, y


def budget(net, optimizer, batch):
    params = net.n_params * 4
    state = params * len(optimizer.state_names)
    cache = batch * (net.sizes[0] + 2 * sum(net.sizes[1:])) * 4
    return params + state + cache


def traced_peak(net, X, y, optimizer, **kwargs):
    """Peak bytes traced while ``fit`` runs (imports and one-time setup done before)."""
    xprop.fit(net.to(), X[:64], y[:64], epochs=1, batch_size=32, optimizer=xprop.SGD(lr=0.01),
              progress=False)
    tracemalloc.start()
    try:
        xprop.fit(net, X, y, optimizer=optimizer, progress=False, **kwargs)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


SIZES, B = [256, 384, 128, 10], 128     # 153 k parameters, a 672 kB budget with SGD


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_fit_peaks_within_the_budget(name):
    """Gradients (one params' worth) are all fit adds to the cache; Adam's scratch is bounded."""
    X, y = data(SIZES, 16 * B)
    net = xprop.MLP(SIZES, backend="numpy", seed=0)
    opt = xprop.SGD(lr=0.01) if name == "sgd" else xprop.Adam()
    peak = traced_peak(net, X, y, opt, epochs=2, batch_size=B)
    allowed = SLACK * budget(net, opt, B) + PER_EXAMPLE * len(X) + PER_STEP * 2 * len(X) / B
    assert peak <= allowed, f"{name}: fit peaked at {peak:,} bytes, over {allowed:,.0f}"


# Bytes per example fit keeps beyond PER_EXAMPLE: a validation fraction's split of the
# indices (int32), and the class of every example when the targets are one-hot rows (int64).
@pytest.mark.parametrize("targets, validation, extra", [
    ("labels", None, 0),
    ("labels", 0.1, 4),
    ("one-hot rows", 0.1, 4 + 8),
])
def test_fit_peak_grows_by_a_few_bytes_an_example(targets, validation, extra):
    """Four times the data costs only the per-example indices: no copy of X, no one-hot of labels."""
    peaks = {}
    for m in (32 * B, 128 * B):
        X, y = data(SIZES, m)
        Y = np.eye(SIZES[-1], dtype=np.float32)[y] if targets == "one-hot rows" else y
        net = xprop.MLP(SIZES, backend="numpy", seed=0)
        peaks[m] = traced_peak(net, X, Y, xprop.SGD(lr=0.01), epochs=1, batch_size=B,
                               validation=validation)
    (m1, p1), (m2, p2) = peaks.items()
    per_example = (p2 - p1) / (m2 - m1)
    # one-hot rows of the data set would add 40 bytes an example, a copy of X 1,024
    allowed = PER_EXAMPLE + extra + PER_STEP / B
    assert per_example <= allowed, f"fit's peak grows by {per_example:.1f} bytes an example (> {allowed})"


def test_a_validation_fraction_holds_out_indices_not_a_copy():
    X, y = data([512, 16, 10], 8192)            # 16 MB of data, a tiny net
    net = xprop.MLP([512, 16, 10], backend="numpy", seed=0)
    peak = traced_peak(net, X, y, xprop.SGD(lr=0.01), epochs=1, batch_size=64, validation=0.25)
    assert peak < X.nbytes / 20, f"fit with validation=0.25 peaked at {peak:,} bytes for {X.nbytes:,} of data"


def test_labels_and_their_one_hot_rows_train_the_same_net():
    """Each batch's one-hot rows built from labels are the rows fit would have gathered."""
    X, y = data([20, 12, 5], 300)
    Y = np.eye(5, dtype=np.float32)[y]
    runs = []
    for targets in (y, Y):
        net = xprop.MLP([20, 12, 5], backend="numpy", seed=0)
        h = xprop.fit(net, X, targets, epochs=3, batch_size=32, optimizer=xprop.Adam(lr=1e-2),
                      validation=0.2, progress=False)
        runs.append((net, h))
    (a, ha), (b, hb) = runs
    for k in a.params:
        assert np.array_equal(a.params[k], b.params[k]), k
    assert ha.loss == hb.loss and ha.accuracy == hb.accuracy and ha.val_loss == hb.val_loss
