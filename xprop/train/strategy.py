"""How an epoch's steps are run: in this process, or over MPI ranks.

The loop (:mod:`xprop.train.loop`) knows a strategy through these calls, in
this order, and never asks which one it has::

    seed = strategy.begin(net, data, settings)        before the validation split
    strategy.prepare(step, optimizer, train, val, batch_size)
    resumed = strategy.from_root(wants_resume)        every run, resumed or not
    strategy.start(net, optimizer, rng, resumed)      the same starting state everywhere
    result = strategy.run_epoch(rng, tick)            once per epoch
    sums = strategy.evaluate(val)                     when there is validation data
    stop = strategy.agree_stop(stop)                  once per epoch

plus ``m`` and ``steps`` (after :meth:`prepare`), ``is_root`` (this process
shows progress and writes files), ``config()`` (what a checkpoint records of
the strategy) and ``running()`` (a context around the whole run).

``run_epoch`` gets the run's shuffling RNG (or None: the examples in the
order given), from which it draws the epoch's order as
``permutation(rng, m)`` (:func:`xprop.train.data.permutation`, over the ``m``
training examples of the whole run; drawn inside the strategy so that the
order's array lives no longer than the strategy needs it), and a pre-bound
progress tick (None when there is no bar), and returns an :class:`EpochResult`; ``evaluate``
returns :class:`Sums`. A strategy for ``K`` stacked models returns a result
whose ``loss()``/``accuracy()`` give a value per model; the loop only
records what they give. Strategies never touch files or progress bars: the
callbacks do, on the root.

The data-parallel strategy is :class:`xprop.distributed.DataParallelStrategy`.
"""

from __future__ import annotations

import contextlib

import numpy

from ..backend import strict_device, to_numpy
from ..optim import Optimizer
from ..step import ReferenceStep
from .data import Batches, permutation

__all__ = ["Sums", "EpochResult", "Strategy", "LocalStrategy", "evaluation_sums"]

_QUIET = dict(over="ignore", invalid="ignore", divide="ignore", under="ignore")


class Sums:
    """A pass over ``n`` examples: summed loss and correct decisions (None: no accuracy).

    Attributes
    ----------
    loss_sum : float
        ``Σ_i L_i`` over the examples.
    correct : int or None
    n : int
    """

    def __init__(self, loss_sum, correct, n):
        self.loss_sum, self.correct, self.n = loss_sum, correct, n

    def loss(self) -> float:
        """The mean loss."""
        return float(self.loss_sum / self.n)

    def accuracy(self, per_example: int):
        """Correct decisions over all decisions (``per_example`` per example), or None."""
        return None if self.correct is None else int(self.correct) / (self.n * per_example)


class EpochResult(Sums):
    """:class:`Sums` of an epoch of steps, with its batch losses.

    Attributes
    ----------
    batch_losses : ndarray (steps,) float64
        Each step's mean batch loss, in order (the divergence guard reads them).
    """

    def __init__(self, loss_sum, correct, n, batch_losses):
        super().__init__(loss_sum, correct, n)
        self.batch_losses = batch_losses


class Strategy:
    """The calls the loop makes (see the module docstring); the defaults are one process's."""

    is_root = True
    m = steps = None

    def begin(self, net, data, settings):
        """Before the validation split: returns the seed every process uses."""
        return settings.seed

    def prepare(self, step, optimizer, train, val, batch_size) -> None:
        raise NotImplementedError

    def from_root(self, value):
        """``value`` as the root has it (one process: itself)."""
        return value

    def start(self, net, optimizer, rng, resumed: bool) -> None:
        """Make the starting state the same wherever the run goes on."""

    def run_epoch(self, rng, tick) -> EpochResult:
        raise NotImplementedError

    def evaluate(self, data) -> Sums:
        raise NotImplementedError

    def agree_stop(self, stop: bool) -> bool:
        return stop

    def config(self) -> dict:
        return {}

    def data_fingerprint(self, fp: dict) -> dict:
        """The fingerprint of the run's data from this process's ``fp`` (here: the same)."""
        return fp

    def running(self):
        return contextlib.nullcontext()


def evaluation_sums(net, data, cost, batches) -> Sums:
    """Summed loss and correct count of ``data`` (:class:`~xprop.train.data.Examples`).

    ``cost`` is a step's ``cost(X, Y) -> (J, A_L)``: the training step's,
    so that validation runs in its buffers, or a :class:`ReferenceStep`'s
    (``evaluate``). ``batches`` (:class:`~xprop.train.data.Batches`) cuts the
    rows; the losses are read back once, at the end.
    """
    xp, head = net.xp, net.head
    losses, sizes, correct = [], [], 0
    for _, Xb, Yb in batches(data, data.rows):
        J, AL = cost(Xb, Yb)
        losses.append(J)
        sizes.append(Xb.shape[0])
        c = head.correct(xp, AL, Yb)
        correct = None if c is None else correct + c
    if not losses:
        return Sums(0.0, 0 if head.counts else None, data.m)
    total = float(to_numpy(xp.stack(losses)).astype(numpy.float64) @ numpy.asarray(sizes, numpy.float64))
    return Sums(total, None if correct is None else int(correct), data.m)


class LocalStrategy(Strategy):
    """Every step in this process, the batches gathered from the data in place.

    Parameters
    ----------
    strict : bool
        Run each epoch's steps under :func:`xprop.backend.strict_device`.
    """

    def __init__(self, strict: bool = False):
        self.strict = strict

    def prepare(self, step, optimizer, train, val, batch_size):
        net = self.net = step.net
        xp = self.xp = net.xp
        self.step, self.optimizer, self.train = step, optimizer, train
        self.m = train.m
        B = min(batch_size, self.m)
        self.steps = -(-self.m // B)
        self.batch_sizes = numpy.minimum(B, self.m - B * numpy.arange(self.steps)).astype(numpy.float64)
        self.batches = Batches(net, B)
        # softmax: the predicted class of every example, compared once per epoch
        self.truth = train.truth() if net.head.takes_labels else None
        self.preds = xp.empty((self.m,), dtype=xp.int64) if self.truth is not None else None

    def run_epoch(self, rng, tick):
        xp, train = self.xp, self.train
        order = None if rng is None else xp.asarray(permutation(rng, self.m))
        if train.rows is not None:          # positions in the training set -> rows of X
            order = train.rows if order is None else xp.take(train.rows, order, axis=0)
        with strict_device(xp, self.strict):
            losses, correct = self._steps(order, tick)
        # One read-back per epoch: the batch losses (and the correct count).
        batch_losses = to_numpy(xp.stack(losses)).astype(numpy.float64)
        return EpochResult(batch_losses @ self.batch_sizes, correct, self.m, batch_losses)

    def _steps(self, order, tick):
        """The epoch's steps; returns the batch losses (device) and the correct count.

        Per step only the step, the update and the tick: everything else is
        bound before the loop.
        """
        net, xp, step, optimizer = self.net, self.xp, self.step, self.optimizer
        truth, preds, head = self.truth, self.preds, net.head
        losses, correct = [], None
        own_step = type(optimizer).step is Optimizer.step  # a subclass's own step may not take the keywords
        # Plain SGD: the step returns lr·∇J (lr folded in with 1/m) and the update is P −= it.
        scale = optimizer.grad_scale() if own_step and step.accepts_scale else None
        with numpy.errstate(**_QUIET):
            for i, Xb, Yb in self.batches(self.train, order):
                J, AL, grads = step(Xb, Yb) if scale is None else step(Xb, Yb, scale)
                losses.append(J)
                if truth is not None:                  # softmax: keep the predicted class
                    AL.argmax(axis=1, out=preds[i:i + Xb.shape[0]])
                else:
                    c = head.correct(xp, AL, Yb)
                    if c is not None:
                        correct = c if correct is None else correct + c
                if own_step:   # the grads are the step's own buffers: the update may reuse them
                    optimizer.step(net.params, grads, overwrite_grads=True, scaled=scale is not None)
                else:
                    optimizer.step(net.params, grads)
                if tick is not None:
                    tick(1)
        if truth is not None:   # compared chunk by chunk: no temporaries the size of the data
            correct, chunk = 0, 4096
            for lo in range(0, preds.shape[0], chunk):
                hi = min(lo + chunk, preds.shape[0])
                expected = truth[lo:hi] if order is None else xp.take(truth, order[lo:hi], axis=0)
                correct = correct + xp.sum(preds[lo:hi] == expected, dtype=xp.int64)
        return losses, correct

    def evaluate(self, data):
        with numpy.errstate(**_QUIET):
            return evaluation_sums(self.net, data, self.step.cost, self.batches)


def evaluate_examples(net, data) -> Sums:
    """:func:`evaluation_sums` with the plain forward pass over slices of 4,096 rows."""
    return evaluation_sums(net, data, ReferenceStep(net).cost, Batches(net, 4096))
