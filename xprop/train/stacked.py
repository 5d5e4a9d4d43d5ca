"""How K stacked models run an epoch: :class:`StackedStrategy`, the strategy of ``fit_many``.

The loop (:func:`xprop.train.loop.run`) sees an ordinary strategy: ``m`` (the
examples of every model together), ``steps`` (the most any model takes),
``run_epoch`` and ``evaluate``. Its results give one value per model
(:class:`StackedResult`: ``loss()`` and ``accuracy()`` are lists, the batch
losses ``(steps, K)``), in the stack's order.

Every model has its own training and validation rows (its ``rows`` and its
own hold-out split) and its own shuffling RNG, held by the members (see
:mod:`xprop.train.members`); the loop's RNG only says whether to shuffle.
Each epoch a model draws its order as ``permutation(rng_i, m_i)``, the very
call ``fit`` makes for it alone. :class:`_Plan` turns the K orders into one
flat index array per epoch (one transfer) and the per-step constants; a step
gathers every model's batch with one ``take`` per array.
"""

from __future__ import annotations

import math

import numpy

from ..backend import to_numpy
from ..stacked import gather_rows
from .data import permutation
from .strategy import EpochResult, Strategy, Sums

__all__ = ["StackedStrategy", "StackedResult", "StackedSums", "Source"]

_QUIET = dict(over="ignore", invalid="ignore", divide="ignore", under="ignore")


class Source:
    """Examples batches are gathered from: X rows and their targets (labels or rows)."""

    def __init__(self, net, X, T):
        xp = net.xp
        self.X = X
        self.labels = T if T.ndim == 1 else None
        self.Y = None if T.ndim == 1 else T
        self.truth = None
        if net.output == "softmax":
            self.truth = self.labels if self.labels is not None else xp.argmax(self.Y, axis=1)


class StackedSums(Sums):
    """:class:`Sums` of K models: ``loss()`` and ``accuracy()`` are lists, one value per model.

    Attributes
    ----------
    loss_sum : list of float
    correct : list of int or None
    n : list of int
    """

    def loss(self):
        return [float(s / n) for s, n in zip(self.loss_sum, self.n)]

    def accuracy(self, per_example: int):
        if self.correct is None:           # no accuracy for any model (a regression net)
            return None
        return [int(c) / (n * per_example) for c, n in zip(self.correct, self.n)]


class StackedResult(StackedSums, EpochResult):
    """An epoch of K models: per-model sums, and ``batch_losses : (steps, K)``."""


def _sums(host_losses, plan, correct, cls, *extra):
    """Per model: its batch losses (in order, its own count) dotted with its batch sizes."""
    totals = []
    for j, (m, B, steps) in enumerate(zip(plan.sizes, plan.batch, plan.counts)):
        sizes = numpy.minimum(B, m - B * numpy.arange(steps)).astype(numpy.float64)
        totals.append(numpy.ascontiguousarray(host_losses[:steps, j]) @ sizes)
    correct = None if correct is None else [int(c) for c in to_numpy(correct)]
    return cls(totals, correct, list(plan.sizes), *extra)


class _Plan:
    """The batches of K models over one epoch: which rows each step gathers, and its constants.

    The same every epoch but for the rows themselves (the shuffle), so the
    per-step constants (``s``, counts, which rows are real) are made once.

    Parameters
    ----------
    sizes : list of int
        Examples per model (in the stack's order).
    batch : list of int
        Batch size per model.
    scale : list of float
        Per model, what ``1/m_i`` is multiplied by (plain SGD's lr, else 1).
    all_models : bool
        Every step holds all K models (validation: a model out of rows gets
        an empty, fully masked batch) instead of the first ``k_s``.
    """

    def __init__(self, net, sizes, batch, scale, all_models=False):
        K = len(sizes)
        self.K, self.sizes, self.batch = K, list(sizes), list(batch)
        self.counts = [math.ceil(m / B) for m, B in zip(sizes, batch)]   # steps per model
        self.n_steps = max(self.counts)
        self.steps = []                                    # (k, m, n_valid, offset, consts, s)
        cache, offset = {}, 0
        for s in range(self.n_steps):
            k = K if all_models else sum(1 for c in self.counts if c > s)
            n = tuple(max(0, min(batch[j], sizes[j] - s * batch[j])) for j in range(k))
            m = max(n)
            key = (k, n)
            if key not in cache:
                cache[key] = self._constants(net, k, m, n, scale)
            self.steps.append((k, m, n, offset, cache[key], s))
            offset += k * m
        self.total = offset
        # the fully regular steps (every model a full batch of one size): built in one go
        B0 = batch[0]
        self.regular = 0 if len(set(batch)) != 1 else min(m // B0 for m in sizes)

    @staticmethod
    def _constants(net, k, m, n, scale):
        """``(s, counts, row_counts, valid)`` of a step of ``k`` models with ``n`` rows each:
        ``row_counts`` and ``valid`` (k, m) are None unless the batch is padded."""
        xp, dtype, host_dtype = net.xp, net.dtype, numpy.dtype(net.dtype_name)
        s_host = numpy.asarray([scale[j] / n[j] if n[j] else 0.0 for j in range(k)])  # fit's s = scale / m
        counts = xp.reshape(xp.asarray([float(c or 1) for c in n], dtype=dtype), (k, 1, 1))
        if all(c == m for c in n):
            return xp.reshape(xp.asarray(s_host.astype(host_dtype)), (k, 1, 1)), counts, None, None
        valid = numpy.arange(m)[None, :] < numpy.asarray(n)[:, None]          # (k, m): real rows
        s = xp.asarray((valid * s_host[:, None]).astype(host_dtype)[:, :, None])
        return s, counts, list(n), xp.asarray(valid)

    def indices(self, orders):
        """All steps' row indices, one host array (step after step, ``k × m`` each)."""
        out = numpy.empty((self.total,), dtype=orders[0].dtype)
        done = 0
        if self.regular:
            B, R = self.batch[0], self.regular
            block = out[:R * self.K * B].reshape(R, self.K, B)
            for j, o in enumerate(orders):
                block[:, j, :] = o[:R * B].reshape(R, B)
            done = R
        for k, m, n, offset, _, s in self.steps[done:]:
            view = out[offset:offset + k * m].reshape(k, m)
            for j in range(k):
                B = self.batch[j]
                rows = orders[j][s * B:s * B + n[j]]
                view[j, :n[j]] = rows
                view[j, n[j]:] = orders[j][0]             # padding: a real row, masked out
        return out


class _Gather:
    """Batch buffers of K models, filled by one ``take`` per array from a flat index."""

    def __init__(self, net, K, capacity, fast):
        xp = net.xp
        self.xp, self.fast, self.net = xp, fast, net
        self.k_in, self.n_out = net.sizes[0], net.sizes[-1]
        self.eye = xp.eye(self.n_out, dtype=net.dtype)
        if fast:
            self.Xb = xp.empty((K * capacity, self.k_in), dtype=net.dtype)
            self.Yb = xp.empty((K * capacity, self.n_out), dtype=net.dtype)
            self.lab = xp.empty((K * capacity,), dtype=xp.int64)

    def __call__(self, src, idx, k, m):
        xp, n = self.xp, k * m
        if self.fast:
            Xb = gather_rows(xp, True, src.X, idx, self.Xb[:n])
            if src.labels is None:
                Yb = gather_rows(xp, True, src.Y, idx, self.Yb[:n])
            else:
                lab = gather_rows(xp, True, src.labels, idx, self.lab[:n])
                Yb = gather_rows(xp, True, self.eye, lab, self.Yb[:n])
        else:
            Xb = xp.take(src.X, idx, axis=0)
            Yb = (xp.take(src.Y, idx, axis=0) if src.labels is None
                  else xp.take(self.eye, xp.take(src.labels, idx, axis=0), axis=0))
        Xb = xp.reshape(Xb, (k, m, self.k_in))
        Yb = xp.reshape(Yb, (k, m, self.n_out))
        return Xb, Yb


def _hits(net, xp, AL, Yb, truth_b, valid):
    """Correct predictions per model ``(k,)`` int64 (None for regression nets)."""
    if net.output == "softmax":
        hits = xp.argmax(AL, axis=2) == truth_b
        if valid is not None:
            hits = hits & valid
        return xp.sum(xp.astype(hits, xp.int64), axis=1)
    if net.output == "sigmoid":
        hits = (AL > 0.5) == (Yb > 0.5)
        if valid is not None:
            hits = hits & valid[:, :, None]
        return xp.sum(xp.astype(hits, xp.int64), axis=(1, 2))
    return None


class StackedStrategy(Strategy):
    """K models' epochs as stacked steps (see the module docstring).

    Parameters
    ----------
    members : list of dict
        In the stack's order: each model's ``rows`` (host indices into X),
        split RNG ``split_rng`` and shuffling RNG ``rng``, training-set size
        ``m``, batch size ``B`` and ``live`` (False once frozen).
        :meth:`begin` adds its ``train`` and ``val`` rows.
    scale : list of float
        Per model, the factor folded into the step's ``1/m_i`` (plain SGD's lr).
    validation : None, float or pair
        A fraction splits each model's rows with its own split RNG, as
        ``fit`` splits its data; with a pair every model is validated on all
        of its rows (the loop's checked validation examples).
    """

    def __init__(self, members, scale, validation):
        self.members, self.scale, self.validation = members, scale, validation

    def begin(self, net, data, settings):
        """The models' training and validation rows, drawn as fit draws them for each alone."""
        self.source = Source(net, data.X, data.labels if data.labels is not None else data.Y)
        fraction = isinstance(self.validation, float)
        for mb in self.members:
            rows, mb["val"] = mb["rows"], None
            mb["train"] = rows
            if fraction:
                n_val = rows.shape[0] - mb["m"]
                order = permutation(mb["split_rng"], int(rows.shape[0]))
                mb["val"], mb["train"] = rows[order[:n_val]], rows[order[n_val:]]
        return settings.seed

    def prepare(self, step, optimizer, train, val, batch_size):
        net, members = step.net, self.members
        self.step, self.optimizer, self.net, self.xp = step, optimizer, net, net.xp
        self.fast = step.grads is not None
        self.val_source = None
        if val is not None and not isinstance(self.validation, float):   # the pair, checked by the loop
            self.val_source = Source(net, val.X, val.labels if val.labels is not None else val.Y)
            rows = numpy.arange(val.m, dtype=numpy.int32 if val.m < 2**31 else numpy.int64)
            for mb in members:
                mb["val"] = rows
        self.plan = _Plan(net, [mb["m"] for mb in members], [mb["B"] for mb in members], self.scale)
        self.m, self.steps = sum(self.plan.sizes), self.plan.n_steps
        self.val_plan = self.val_idx = None
        if members[0]["val"] is not None:
            self.val_plan = _Plan(net, [int(mb["val"].shape[0]) for mb in members],
                                  [mb["B"] for mb in members], [1.0] * len(members), all_models=True)
            self.val_idx = self.xp.asarray(self.val_plan.indices([mb["val"] for mb in members]))
        self.gather = _Gather(net, len(members), max(mb["B"] for mb in members), self.fast)
        self.losses = self.xp.zeros((self.plan.n_steps, len(members)), dtype=net.dtype)
        self.correct = self.xp.zeros((len(members),), dtype=self.xp.int64)

    def start(self, net, optimizer, rng, resumed):
        if resumed:                            # the restored stack: each net its row
            for j, mb in enumerate(self.members):
                self.step.stack.store(j, mb["net"])

    def config(self):
        return {"models": len(self.members)}

    def run_epoch(self, rng, tick):
        xp, plan, members = self.xp, self.plan, self.members
        orders = []
        for mb in members:                   # every model draws its permutation, as fit does alone
            orders.append(mb["train"] if rng is None else mb["train"][permutation(mb["rng"], mb["m"])])
        idx_all = xp.asarray(plan.indices(orders))
        del orders
        runs = {}
        live = [mb["live"] for mb in members]
        self.correct[...] = 0
        with numpy.errstate(**_QUIET):
            for k, m, n, offset, consts, s in plan.steps:
                self._step(idx_all[offset:offset + k * m], k, m, consts, s, runs, live)
                if tick is not None:
                    tick(1)
        host = to_numpy(self.losses).astype(numpy.float64)     # one read-back per epoch
        counts = self.correct if self.net.head.counts else None
        return _sums(host, plan, counts, StackedResult, host)

    def _step(self, idx, k, m, consts, s, runs, live):
        """One stacked step of the first ``k`` models: gather, step, count, update."""
        xp, step, opt = self.xp, self.step, self.optimizer
        s_col, counts, row_counts, valid = consts
        Xb, Yb = self.gather(self.source, idx, k, m)
        J, AL, G = step(Xb, Yb, s_col, counts, row_counts)
        self.losses[s, :k] = J
        truth = self.source.truth
        c = _hits(self.net, xp, AL, Yb, None if truth is None else xp.reshape(xp.take(truth, idx, axis=0),
                                                                               (k, m)), valid)
        if c is not None:
            self.correct[:k] += c
        if k not in runs:
            runs[k] = opt.runs(live[:k])
        if self.fast and opt.scratch is None:
            opt.scratch = step.scratch()
        opt.step(step.stack.params, step.grads if self.fast else G, runs[k])

    def evaluate(self, data):
        """Every model's validation sums over its own validation rows (``data`` is the loop's, unused)."""
        xp, plan, net = self.xp, self.val_plan, self.net
        src = self.source if self.val_source is None else self.val_source
        losses, correct = [], None
        with numpy.errstate(**_QUIET):
            for k, m, n, offset, consts, _ in plan.steps:
                _, counts, row_counts, valid = consts
                idx = self.val_idx[offset:offset + k * m]
                Xb, Yb = self.gather(src, idx, k, m)
                J, AL = self.step.cost(Xb, Yb, counts, row_counts)
                losses.append(J)
                truth_b = None if src.truth is None else xp.reshape(xp.take(src.truth, idx, axis=0), (k, m))
                c = _hits(net, xp, AL, Yb, truth_b, valid)
                if c is not None:
                    correct = c if correct is None else correct + c
        host = to_numpy(xp.stack(losses)).astype(numpy.float64)
        return _sums(host, plan, correct, StackedSums)
