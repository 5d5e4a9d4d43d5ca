"""The training loop's seams (docs/architecture.md): the strategy calls, the callbacks' hooks.

A strategy that records what the loop asks of it, around the local one: the
loop makes the documented calls in the documented order, takes the stop the
strategy agrees on, and records what the epoch result's ``loss()`` and
``accuracy()`` return — so a strategy with other results (K models, shards)
plugs in without the loop changing.
"""

import numpy as np

import xprop
from xprop.train import LocalStrategy, Settings, run
from xprop.train.callbacks import EarlyStopping


class Recording(LocalStrategy):
    def __init__(self, stop_after=None):
        super().__init__()
        self.calls, self.stop_after = [], stop_after

    def begin(self, net, data, settings):
        self.calls.append("begin")
        return super().begin(net, data, settings)

    def prepare(self, step, optimizer, train, val, batch_size):
        self.calls.append("prepare")
        super().prepare(step, optimizer, train, val, batch_size)

    def from_root(self, value):
        self.calls.append("from_root")
        return value

    def start(self, net, optimizer, rng, resumed):
        self.calls.append("start")

    def run_epoch(self, rng, tick):
        self.calls.append("run_epoch")
        return super().run_epoch(rng, tick)

    def evaluate(self, data):
        self.calls.append("evaluate")
        return super().evaluate(data)

    def agree_stop(self, stop):
        self.calls.append("agree_stop")
        return stop or (self.stop_after is not None and self.calls.count("run_epoch") >= self.stop_after)


def settings(**kw):
    base = dict(epochs=3, batch_size=16, optimizer=xprop.SGD(lr=0.1), validation=0.25, shuffle=True,
                seed=0, checkpoint=None, resume=False, patience=None)
    base.update(kw)
    return Settings(**base)


def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((64, 4)), rng.integers(0, 3, 64)


def test_the_loop_makes_the_strategy_calls_in_the_documented_order():
    X, y = data()
    strategy = Recording()
    h = run(xprop.MLP([4, 5, 3], backend="numpy", seed=0), X, y, settings(), strategy)
    assert strategy.calls == ["begin", "prepare", "from_root", "start",
                              *["run_epoch", "evaluate", "agree_stop"] * 3]
    assert len(h) == 3 and not h.stopped_early


def test_a_run_through_run_equals_fit():
    X, y = data()
    a, b = (xprop.MLP([4, 5, 3], backend="numpy", seed=0) for _ in range(2))
    h_run = run(a, X, y, settings(), LocalStrategy())
    h_fit = xprop.fit(b, X, y, epochs=3, batch_size=16, optimizer=xprop.SGD(lr=0.1), validation=0.25,
                      seed=0, progress=False)
    assert h_run.loss == h_fit.loss and h_run.val_accuracy == h_fit.val_accuracy
    for k in a.params:
        assert np.array_equal(a.params[k], b.params[k]), k


def test_the_stop_is_what_the_strategy_agrees_on():
    """One rank's callback asking to stop stops every rank: the loop asks the strategy."""
    X, y = data()
    strategy = Recording(stop_after=2)
    h = run(xprop.MLP([4, 5, 3], backend="numpy", seed=0), X, y, settings(epochs=5), strategy)
    assert len(h) == 2 and h.stopped_early


def test_the_loop_records_what_the_result_reports():
    """A strategy whose results hold one value per model (K stacked models) needs no loop change."""

    class PerModel(LocalStrategy):
        def run_epoch(self, rng, tick):
            result = super().run_epoch(rng, tick)
            result.loss = lambda: [1.0, 2.0]          # K = 2 models
            return result

    class Quiet(EarlyStopping):                       # the early stopping a K-model run brings
        def on_epoch_end(self, state, record):
            self.seen = record["loss"]
            return False

    X, y = data()
    early = Quiet()
    h = run(xprop.MLP([4, 5, 3], backend="numpy", seed=0), X, y, settings(epochs=2), PerModel(),
            early=early)
    assert h.loss == [[1.0, 2.0], [1.0, 2.0]] and early.seen == [1.0, 2.0]
