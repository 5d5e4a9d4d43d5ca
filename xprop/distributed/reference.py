"""The single-process reference of sharded training: the same run, replayed in one process.

:func:`sharded_reference` takes every rank's shard and trains a net exactly
as ``fit(..., distributed="sharded")`` on N ranks would (the rules of
:mod:`xprop.distributed.sharded`), with one ordinary training step per global
batch. A cluster run equals it up to the order of the floating-point sums: for
tests, and for anyone who wants to check a cluster run on one machine.
"""

from __future__ import annotations

import time

import numpy

from ..backend import memory_pool_bytes, to_numpy
from ..optim import Adam, make_optimizer
from ..step import make_step
from ..train.data import Batches, examples_from, split_validation
from ..train.history import History
from ..train.strategy import evaluation_sums
from ..validation import check_inputs, check_positive_int, check_seed, check_targets
from .sharded import epoch_key, epoch_plan, gather, rank_order

__all__ = ["sharded_reference"]


def sharded_reference(net, shards, epochs=20, batch_size=128, optimizer=None, validation=None,
                      shuffle=True, seed=0) -> History:
    """Train ``net`` in place as ``fit(..., distributed="sharded")`` would on ``len(shards)`` ranks.

    Every rank's validation split (fit's, applied to its shard) and its
    epoch orders (:func:`~xprop.distributed.sharded.rank_order` of the epoch's
    key from the one shuffling RNG) are replayed; the local batches follow
    :func:`~xprop.distributed.sharded.epoch_plan`; each step is one ordinary
    training step on the global batch, the rank-ordered concatenation of the
    local batches (the mean gradient over its ``B_s`` rows), then the update.

    Parameters
    ----------
    net : MLP
        NumPy or CuPy. Start it from the weights rank 0 started from.
    shards : list of (X_r, Y_r)
        Rank r's rows and targets at index r, as rank r passes them to ``fit``.
    epochs, batch_size, optimizer, shuffle
        As for :func:`xprop.fit`.
    validation : None, float or list of (X_val, Y_val)
        A fraction held out of every shard, or rank r's validation pair at index r.
    seed : int
        The seed the cluster run used (an int: a run with ``seed=None`` used
        the one rank 0 drew).

    Returns
    -------
    History
        The metrics every rank of the cluster run reports (timings aside).
    """
    epochs, seed = check_positive_int("epochs", epochs), check_seed(seed)
    if seed is None:
        raise ValueError("seed: sharded_reference needs the int seed the cluster run used; got None")
    if not shards:
        raise ValueError("shards: expected a list of (X_r, Y_r), one per rank; got none")
    optimizer = Adam() if optimizer is None else make_optimizer(optimizer) if isinstance(optimizer, str) else optimizer
    vals = validation if isinstance(validation, list) else [validation] * len(shards)
    if len(vals) != len(shards):
        raise ValueError(f"validation: a list needs one (X_val, Y_val) per shard ({len(shards)}); got {len(vals)}")
    parts = [_split(net, X, Y, v, seed) for (X, Y), v in zip(shards, vals)]
    counts = epoch_plan([t.m for t, _ in parts], batch_size)
    rng = numpy.random.default_rng(numpy.random.SeedSequence(seed).spawn(2)[1])
    step, history = make_step(net), History()
    gathers = [Batches(net, max(int(counts[:, r].max()), 1)) for r in range(len(parts))]
    val_batches = Batches(net, min(batch_size, int(counts.sum())))
    per_example = net.head.outputs_per_example(net.sizes[-1])
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        key = epoch_key(rng) if shuffle else None
        loss_sum, correct = _epoch(net, step, optimizer, parts, counts, gathers, key)
        n = int(counts.sum())
        record = {"loss": loss_sum / n, "accuracy": None if correct is None else correct / (n * per_example),
                  "val_loss": None, "val_accuracy": None}
        vals_here = [v for _, v in parts if v is not None]
        if vals_here:
            sums = [evaluation_sums(net, v, step.cost, val_batches) for v in vals_here]
            n_val = sum(s.n for s in sums)
            record["val_loss"] = sum(s.loss_sum for s in sums) / n_val
            if net.head.counts:
                record["val_accuracy"] = sum(s.correct for s in sums) / (n_val * per_example)
        seconds = time.perf_counter() - t0
        used, total = memory_pool_bytes(net.xp)
        history.append(epoch=epoch, seconds=seconds, samples_per_s=n / seconds, memory_used_bytes=used,
                       memory_total_bytes=total, **record)
    return history


def _split(net, X, Y, validation, seed):
    """``(train, val)`` of one shard, by fit's own validation split and RNG."""
    Xr = check_inputs(net, X)
    data = examples_from(net, Xr, check_targets(net, Y, Xr.shape[0], keep_labels=True))
    split_seq = numpy.random.SeedSequence(seed).spawn(2)[0]
    return split_validation(net, data, validation, numpy.random.default_rng(split_seq))


def _epoch(net, step, optimizer, parts, counts, gathers, key):
    """One epoch of global steps; the summed loss (Σ_s B_s J_s) and the correct count."""
    xp = net.xp
    orders = []
    for r, (train, _) in enumerate(parts):
        order = xp.asarray(numpy.arange(train.m) if key is None else rank_order(key, r, train.m))
        orders.append(order if train.rows is None else xp.take(train.rows, order, axis=0))
    starts = [0] * len(parts)
    losses, sizes, correct = [], [], 0
    for counts_s in counts:
        Xs, Ys = [], []
        for r, m in enumerate(int(c) for c in counts_s):
            if m:
                Xb, Yb = gather(gathers[r], parts[r][0], orders[r][starts[r]:starts[r] + m])
                Xs.append(xp.asarray(Xb, copy=True))
                Ys.append(xp.asarray(Yb, copy=True))
            starts[r] += m
        Xb, Yb = xp.concat(Xs, axis=0), xp.concat(Ys, axis=0)
        J, AL, grads = step(Xb, Yb)
        losses.append(J)
        sizes.append(Xb.shape[0])
        c = net.head.correct(xp, AL, Yb)
        correct = None if c is None else correct + int(c)
        optimizer.step(net.params, grads)
    total = float(to_numpy(xp.stack(losses)).astype(numpy.float64) @ numpy.asarray(sizes, numpy.float64))
    return total, correct
