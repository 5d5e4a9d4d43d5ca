"""Sharded data parallelism: every rank holds only its own rows (``distributed="sharded"``).

``fit(net, X_r, Y_r, distributed="sharded")`` runs under ``mpiexec -n N`` with
rank r passing only its shard ``X_r, Y_r`` (``n_r`` rows; the shards may
differ in size). The rules (docs/distributed.md states them in full;
:func:`~xprop.distributed.reference.sharded_reference` replays them on one
process):

Global batches
    The ``n = Σ_r n_r`` training rows of an epoch make ``S = ⌈n / B⌉`` steps,
    ``B = min(batch_size, n)``, the last batch partial: the batches one
    process would have on the concatenated data. Row ``i`` of rank r's epoch
    order is placed at time ``(i + ½) / n_r``; all rows of all ranks, sorted by
    time (a tie: the lower rank first), are cut into batches of ``B``. Rank
    r's local batch ``m_rs`` is the number of its rows in batch ``s``. Every
    rank runs the same ``S`` steps, every row is used once an epoch,
    ``Σ_r m_rs = B_s``, and ``m_rs`` stays within a row or two of the
    proportional share ``B_s n_r / n`` (:func:`epoch_plan`). A global batch is
    the rank-ordered concatenation of the local batches.
Gradient
    As with ``distributed=True``: rank r's mean gradient over its ``m_rs``
    rows, scaled by ``m_rs / B_s``, summed by one in-place allreduce of the
    flat gradient buffer: the mean gradient of the global batch. A rank with
    no rows in a step adds zeros.
Shuffle
    The run's shuffling RNG (the loop's, the same on every rank, the one a
    checkpoint stores) gives one key per epoch (:func:`epoch_key`); rank r
    permutes its own training rows with ``SeedSequence(key, spawn_key=(r,))``
    (:func:`rank_order`). So one seed gives every rank its own reproducible
    order, and the checkpoint's one RNG state is every rank's shuffle state:
    a resume continues bit for bit.
Validation
    A fraction ``f`` holds out ``max(1, round(f · n_r))`` rows of each shard
    (fit's own split, applied to the shard). A pair ``(X_val, Y_val)`` is this
    rank's part of the validation set (at least one row). The metrics are
    global: sums over all ranks' validation rows, divided by their count.
"""

from __future__ import annotations

import math

import numpy

from ..backend import take_rows, to_numpy
from ..fingerprint import combine
from ..io import architecture
from ..train.data import Batches, permutation
from ..train.strategy import EpochResult, Sums, evaluation_sums
from ..validation import check_positive_int
from .strategy import DataParallel, DataParallelStrategy

__all__ = ["epoch_plan", "epoch_key", "rank_order", "RankPlan", "ShardedStrategy"]

_CHUNK = 1 << 16   # rows at a time when placing a shard's rows in the global order
_QUIET = dict(over="ignore", invalid="ignore", divide="ignore", under="ignore")


# --------------------------------------------------------------------------
# The rules (pure)
# --------------------------------------------------------------------------
def _shard_sizes(sizes) -> list[int]:
    sizes = [int(n) for n in sizes]
    if not sizes or any(n < 0 for n in sizes) or sum(sizes) == 0:
        raise ValueError(f"shard sizes must be ≥ 0 with at least one row in all; got {sizes}")
    return sizes


def _batch_ends(n: int, batch_size: int) -> numpy.ndarray:
    """``E_s``: the rows of the epoch's global order used after step ``s`` (1-based)."""
    B = min(check_positive_int("batch_size", batch_size), n)
    return numpy.minimum(numpy.arange(1, math.ceil(n / B) + 1, dtype=numpy.int64) * B, n)


def _rows_before(sizes, r: int, ends) -> numpy.ndarray:
    """How many of rank ``r``'s rows are among the first ``E`` rows of the global order, for E in ``ends``.

    Row ``i`` of rank ``r`` sits at time ``(2i + 1) / (2 n_r)``; rank ``q`` has
    ``#{j : (2j + 1) n_r < (2i + 1) n_q}`` rows before it (``≤`` for ``q < r``,
    first on a tie). Its position in the global order is ``i`` plus those
    counts; positions grow with ``i``, so the rows before ``E`` are a
    ``searchsorted``. Integer arithmetic only, ``_CHUNK`` rows at a time.
    """
    n_r = sizes[r]
    ends = numpy.asarray(ends, dtype=numpy.int64)
    out = numpy.zeros(ends.shape, numpy.int64)
    for lo in range(0, n_r, _CHUNK):
        i = numpy.arange(lo, min(lo + _CHUNK, n_r), dtype=numpy.int64)
        pos = i.copy()
        for q, n_q in enumerate(sizes):
            if q == r or n_q == 0:
                continue
            T = (2 * i + 1) * n_q
            before = (T // n_r + 1) // 2 if q < r else ((T - 1) // n_r + 1) // 2
            pos += numpy.minimum(before, n_q)
        out += numpy.searchsorted(pos, ends, side="left")
    return out


def epoch_plan(shard_sizes, batch_size: int) -> numpy.ndarray:
    """Rows each rank trains on at each step of an epoch.

    Parameters
    ----------
    shard_sizes : sequence of int, (N,)
        Training rows per rank, ``n_r``.
    batch_size : int
        The global batch ``B`` (``min(batch_size, n)`` is used).

    Returns
    -------
    counts : ndarray (S, N) int64
        ``counts[s, r] = m_rs``. Rows sum to the global batch sizes
        ``B, …, B, n − (S−1)B``; columns to ``n_r``.

    >>> epoch_plan([3, 5], 4).tolist()
    [[2, 2], [1, 3]]
    >>> epoch_plan([4, 4], 3).tolist()      # equal shards: the extra row alternates
    [[2, 1], [1, 2], [1, 1]]
    """
    sizes = _shard_sizes(shard_sizes)
    ends = _batch_ends(sum(sizes), batch_size)
    cum = numpy.stack([_rows_before(sizes, r, ends) for r in range(len(sizes))], axis=1)
    return numpy.diff(cum, axis=0, prepend=0)


def epoch_key(rng) -> int:
    """The epoch's shuffle key: one draw from the run's shuffling RNG (the same on every rank)."""
    return int(rng.integers(0, 2**63))


def rank_order(key: int, rank: int, n: int) -> numpy.ndarray:
    """Rank ``rank``'s order of its ``n`` training rows in the epoch of ``key`` (host, int32/64)."""
    return permutation(numpy.random.default_rng(numpy.random.SeedSequence(key, spawn_key=(int(rank),))), n)


class RankPlan:
    """One rank's column of :func:`epoch_plan`, computed alone (memory in proportion to its shard).

    Attributes
    ----------
    steps : int
    batch_sizes : ndarray (steps,) float64
        ``B_s``.
    local_sizes : ndarray (steps,) int64
        ``m_rs``.
    weights : list of float
        ``m_rs / B_s``.
    offsets : ndarray (steps + 1,) int64
        Step ``s`` takes positions ``offsets[s]:offsets[s + 1]`` of the rank's epoch order.
    """

    def __init__(self, shard_sizes, batch_size: int, rank: int):
        sizes = _shard_sizes(shard_sizes)
        ends = _batch_ends(sum(sizes), batch_size)
        self.steps = int(ends.shape[0])
        self.batch_sizes = numpy.diff(ends, prepend=0).astype(numpy.float64)
        self.local_sizes = numpy.diff(_rows_before(sizes, rank, ends), prepend=0)
        self.weights = (self.local_sizes / self.batch_sizes).tolist()
        self.offsets = numpy.concatenate([[0], numpy.cumsum(self.local_sizes)])
        self.nonempty = numpy.flatnonzero(self.local_sizes > 0)


def gather(batches, data, idx, unaligned=False):
    """``(X_b, Y_b)``: the rows ``idx`` of :class:`~xprop.train.data.Examples` ``data``, in
    ``batches``' reused buffers (NumPy, CuPy).

    A memory map of an ``.npz`` member is not aligned for its dtype (a zip
    member starts at any byte); NumPy's ``take`` would first copy the whole
    source, so such rows are gathered by indexing (one batch-sized temporary).
    """
    xp = batches.xp
    Xb, Yb, lab = batches._buffer(int(idx.shape[0]), data)
    if unaligned:
        Xb[...] = data.X[idx]
    else:
        take_rows(xp, data.X, idx, Xb)
    if data.labels is None:
        take_rows(xp, data.Y, idx, Yb)
    else:
        batches._one_hot(take_rows(xp, data.labels, idx, lab), Yb)
    return Xb, Yb


def _unaligned(X) -> bool:
    return isinstance(X, numpy.ndarray) and not X.flags.aligned


# --------------------------------------------------------------------------
# The strategy
# --------------------------------------------------------------------------
def signature(net, settings) -> dict:
    """What must be equal on every rank (the data differs: each rank has its own)."""
    validation = settings.validation
    if isinstance(validation, (tuple, list)):
        validation = "pair"
    return {
        "architecture": {k: v for k, v in architecture(net).items() if k not in ("seed", "init")},
        "backend": net.backend, "epochs": settings.epochs, "batch_size": settings.batch_size,
        "shuffle": bool(settings.shuffle), "seed": settings.seed, "validation": validation,
        "patience": settings.patience, "checkpoint": settings.checkpoint is not None,
        "resume": bool(settings.resume), "optimizer": [settings.optimizer.name,
                                                       settings.optimizer.hyperparameters()],
        "distributed": "sharded",
    }


class ShardedStrategy(DataParallelStrategy):
    """The :class:`~xprop.train.strategy.Strategy` of ``fit(..., distributed="sharded")``.

    Rank r trains on its own rows only (the module docstring's rules): the
    loop hands it its shard as the data, its shard's validation rows, and the
    run's shuffling RNG, from which every rank draws the same epoch key.
    Its collective calls, in order, on every rank: the reducer's agreement,
    the argument agreement (and a drawn seed), the shard sizes, the resume
    flag, rank 0's weights (a fresh start) and the state check; per step one
    gradient allreduce; per epoch one allreduce of the batch losses and the
    correct count, one of the validation sums, one of the stop flag.
    """

    def begin(self, net, data, settings):
        self.dp = DataParallel(self.ctx, net)
        return self.dp.agree(signature(net, settings), settings.seed)

    def prepare(self, step, optimizer, train, val, batch_size):
        self.net, self.xp, self.step, self.optimizer = step.net, step.net.xp, step, optimizer
        self.sizes = self.ctx.allgather(train.m, what="shard sizes")
        self.m = sum(self.sizes)
        self.plan = RankPlan(self.sizes, batch_size, self.ctx.rank)
        self.steps = self.plan.steps
        self.train, self.unaligned = train, _unaligned(train.X)
        self.batches = Batches(self.net, max(int(self.plan.local_sizes.max()), 1))
        self.val_batches = Batches(self.net, min(batch_size, self.m))
        self.dp.grads.adopt(step)

    def config(self):
        return {"ranks": self.ctx.size, "distributed": "sharded", "shards": self.sizes}

    def data_fingerprint(self, fp):
        """Every shard's fingerprint, in rank order, as one (collective): what a resume compares."""
        return combine(self.ctx.allgather(fp, what="data fingerprints"))

    def _order(self, rng):
        """This epoch's rows of the shard (indices into its X), on the device."""
        xp, n = self.xp, self.train.m
        order = (numpy.arange(n, dtype=numpy.int64) if rng is None
                 else rank_order(epoch_key(rng), self.ctx.rank, n))
        order = xp.asarray(order)
        rows = self.train.rows
        return order if rows is None else xp.take(rows, order, axis=0)

    def run_epoch(self, rng, tick):
        """One epoch of sharded steps (the module docstring): rank r's ``m_rs`` rows of each step,
        their mean gradient scaled by ``m_rs / B_s``, one allreduce, the update."""
        net, xp, dp, step, optimizer = self.net, self.xp, self.dp, self.step, self.optimizer
        order, plan, head = self._order(rng), self.plan, net.head
        flat, grads, params, offsets, weights = dp.grads.flat, dp.grads.grads, net.params, plan.offsets, plan.weights
        losses, correct = [], None
        with numpy.errstate(**_QUIET):
            for s in range(plan.steps):
                lo, hi = int(offsets[s]), int(offsets[s + 1])
                if hi > lo:
                    Xb, Yb = gather(self.batches, self.train, order[lo:hi], self.unaligned)
                    J, AL, _ = step(Xb, Yb)             # dW_l, db_l land in the flat buffer
                    losses.append(J)
                    c = head.correct(xp, AL, Yb)
                    if c is not None:
                        correct = c if correct is None else correct + c
                    if weights[s] != 1.0:
                        flat *= weights[s]                # (1/m_rs) Σ_local → (1/B_s) Σ_local
                else:
                    flat[...] = 0                         # no rows in this step: weight 0
                dp.allreduce()                            # Σ_r: the mean over the global batch
                optimizer.step(params, grads)
                if tick is not None:
                    tick(1)
        return self._epoch_result(losses, correct)

    def _epoch_result(self, losses, correct):
        """The global batch losses and correct count: one read-back, one small allreduce."""
        plan, local = self.plan, numpy.zeros(self.plan.steps + 1)
        if losses:
            with self.ctx.waiting("device sync"):    # NCCL: a stuck allreduce shows here, on the host
                values = to_numpy(self.xp.stack(losses)).astype(numpy.float64)
            local[plan.nonempty] = values * numpy.asarray(plan.weights)[plan.nonempty]
        local[-1] = 0 if correct is None else int(correct)
        total = self.ctx.allreduce_sum(local, what="epoch sums")
        batch_losses = total[:-1]
        return EpochResult(batch_losses @ plan.batch_sizes, int(total[-1]) if self.net.head.counts else None,
                           self.m, batch_losses)

    def evaluate(self, data):
        """This rank's validation rows, the sums of all ranks (one allreduce)."""
        with numpy.errstate(**_QUIET):
            sums = evaluation_sums(self.net, data, self.step.cost, self.val_batches)
        total, correct, n = self.ctx.allreduce_sum([sums.loss_sum, sums.correct or 0, sums.n],
                                                   what="validation sums")
        return Sums(float(total), int(correct) if self.net.head.counts else None, int(n))
