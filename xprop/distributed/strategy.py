"""Data-parallel training: every rank runs the same steps on its slice of each global batch.

The scheme (one weighted allreduce of the flat gradient buffer per step, so N
ranks take the steps of one process on the whole batch) is written out in the
package's docstring, :mod:`xprop.distributed`.

:class:`DataParallelStrategy` is what ``fit(..., distributed=True)`` runs
(the strategy interface is in :mod:`xprop.train.strategy`);
:class:`DataParallel` holds the per-run machinery (buffer, reducer, checks).
The collective calls of a run, in order, on every rank: the reducer's
agreement (and NCCL's id), the argument agreement (and a drawn seed), the
resume flag, rank 0's weights (a fresh start) and the state check; per step
one gradient allreduce; per epoch one allreduce of the batch losses and the
correct count, one of the validation sums, one of the stop flag.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time

import numpy

from .. import backend as _backend
from ..backend import backend_name, to_numpy
from ..io import architecture
from ..train.strategy import EpochResult, Strategy, Sums, evaluation_sums
from ..train.data import Batches, Examples, permutation
from ..train.history import TrainingDiverged
from .context import Context
from .errors import DistributedError
from .reducers import make_reducer
from .shard import GradBuffer, ShardPlan, shard_bounds

__all__ = ["DataParallel", "DataParallelStrategy", "sample_digest", "state_digest"]

_QUIET = dict(over="ignore", invalid="ignore", divide="ignore", under="ignore")


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, numpy.ndarray):
            h.update(str((part.dtype.str, part.shape)).encode())
            h.update(numpy.ascontiguousarray(part).tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()


def sample_digest(xp, a, rows: int = 256) -> str:
    """A hash of the shape and of up to ``rows`` evenly spaced rows of ``a``.

    Cheap enough for any data set, and enough to notice ranks that were given
    different data (e.g. each loaded its own shard by hand).
    """
    m = int(a.shape[0])
    idx = numpy.unique(numpy.linspace(0, m - 1, num=min(rows, m)).astype(numpy.int64))
    return _digest(list(a.shape), to_numpy(xp.take(a, xp.asarray(idx), axis=0)))


def state_digest(net, optimizer, rng) -> str:
    """Hash of the weights, optimizer state and shuffling RNG: equal on every rank or wrong."""
    state = optimizer.state_dict()
    arrays = [to_numpy(p) for p in net.params.values()]
    arrays += [to_numpy(state["arrays"][k]) for k in sorted(state["arrays"])]
    return _digest(list(net.params), sorted(state["arrays"]), state["t"], rng.bit_generator.state,
                   *arrays)


class DataParallel:
    """The gradient buffer, the reducer and the checks of one distributed fit.

    Parameters
    ----------
    ctx : Context
    net : MLP
        On NumPy or CuPy; with CuPy, on the GPU :func:`init` gave this rank.
    nccl : module or None, optional
        ``cupy.cuda.nccl`` to use (default: :func:`xprop.backend.nccl_module`).
    """

    _UNSET = object()

    def __init__(self, ctx: Context, net, nccl=_UNSET):
        self.ctx, self.net, self.xp = ctx, net, net.xp
        name = backend_name(net.xp)
        if name not in ("numpy", "cupy"):  # the same on every rank: a plain error is safe
            raise DistributedError(f"distributed training runs on NumPy or CuPy; the net runs on {name}")
        if name == "cupy":
            if ctx.gpu_error is not None:
                raise DistributedError(f"cannot train a CuPy net on {ctx.size} rank(s): {ctx.gpu_error}")
            here = _backend.device_index(net.device)
            # (with init(gpu=False) the script chose the devices itself: nothing to compare)
            wrong = [(r, h, g) for r, (h, g) in enumerate(ctx.allgather((here, ctx.gpu)))
                     if g is not None and h != g]
            if wrong:
                r, h, g = wrong[0]
                raise DistributedError(
                    f"rank {r}'s net is on GPU {h} but init() gave that rank GPU {g}; call "
                    "xprop.distributed.init() at the top of the script, before building the net")
        self.grads = GradBuffer(net)
        if nccl is DataParallel._UNSET:
            nccl = _backend.nccl_module() if name == "cupy" else None
        self.reducer = make_reducer(ctx, self.grads.flat, name, nccl)
        self.path = self.reducer.path
        self.plan = None
        self._local = None

    # ---- before training
    def agree(self, signature: dict, seed):
        """Check that every rank was called alike; the seed all ranks use.

        ``signature`` is a JSON-able dict of what must be equal on every rank
        (sizes, hyperparameters, data digests). A ``seed`` of None is replaced
        by one drawn on rank 0, so that all ranks shuffle alike.
        """
        everyone = self.ctx.allgather(signature)
        diffs = sorted({k for other in everyone for k in set(other) | set(everyone[0])
                        if other.get(k) != everyone[0].get(k)})
        if diffs:
            detail = "; ".join(f"{k}: " + ", ".join(f"rank {r} {s.get(k)!r}" for r, s in enumerate(everyone))
                               for k in diffs[:4])
            raise DistributedError(
                f"the {self.ctx.size} ranks called fit differently ({detail}); every rank must get "
                "the same data (in full) and the same arguments")
        if seed is None:
            seed = self.ctx.bcast(int(numpy.random.SeedSequence().entropy) if self.ctx.is_root else None)
        return seed

    def broadcast_params(self, net) -> None:
        """Give every rank rank 0's weights (one broadcast of a host buffer)."""
        host = numpy.concatenate([to_numpy(p).ravel() for p in net.params.values()])
        with self.ctx.waiting("broadcast of rank 0's weights"):
            self.ctx.comm.Bcast(host, root=0)
        params, offset = {}, 0
        for name, p in net.params.items():
            n = int(p.size)
            params[name] = host[offset:offset + n].reshape(tuple(p.shape))
            offset += n
        net.set_params(params)

    def check_same_state(self, net, optimizer, rng, resumed: bool) -> None:
        """Refuse to train when ranks start from different weights or optimizer state."""
        digests = self.ctx.allgather(state_digest(net, optimizer, rng))
        odd = [r for r, d in enumerate(digests) if d != digests[0]]
        if odd:
            why = ("every rank reads the checkpoint on resume: it must be the same file on every "
                   "node (a shared filesystem, or copy it)" if resumed else "the weights were broadcast")
            raise DistributedError(f"rank(s) {odd} start from a different state than rank 0; {why}")

    def prepare(self, step, m: int, B: int) -> ShardPlan:
        """Plan the run's shards and point the step's gradient buffers at the flat buffer."""
        self.plan = ShardPlan(m, B, self.ctx.size, self.ctx.rank)
        if any(self.plan.local_sizes):
            self.grads.adopt(step)
        return self.plan

    def local_rows(self, X, Y, order):
        """This rank's rows of the epoch, step after step (``order`` None: unshuffled, cached)."""
        if order is None:
            if self._local is None:
                idx = self.xp.asarray(self.plan.positions)
                self._local = (self.xp.take(X, idx, axis=0), self.xp.take(Y, idx, axis=0))
            return self._local
        idx = self.xp.asarray(order[self.plan.positions])
        return self.xp.take(X, idx, axis=0), self.xp.take(Y, idx, axis=0)

    # ---- every step
    def allreduce(self) -> None:
        """Sum the flat gradient buffer over all ranks, in place."""
        flat, watchdog = self.grads.flat, self.ctx.watchdog
        with self.ctx.waiting("gradient allreduce"):
            if not self.ctx.timing:
                t0 = time.perf_counter()
                self.reducer.allreduce(flat)
            else:
                _backend.synchronize(self.xp)
                t0 = time.perf_counter()
                self.reducer.allreduce(flat)
                _backend.synchronize(self.xp)
        if watchdog is not None:
            watchdog.step_done()
        stats = self.ctx.stats
        stats["allreduce_seconds"] += time.perf_counter() - t0
        stats["allreduce_calls"] += 1



def signature(net, X, Y, settings) -> dict:
    """What must be equal on every rank of a distributed fit (compared by :meth:`DataParallel.agree`)."""
    xp = net.xp
    validation = settings.validation
    if isinstance(validation, (tuple, list)):
        validation = [list(numpy.shape(v)) for v in validation]
    return {
        "architecture": {k: v for k, v in architecture(net).items() if k not in ("seed", "init")},
        "backend": net.backend, "X": sample_digest(xp, X), "Y": sample_digest(xp, Y),
        "epochs": settings.epochs, "batch_size": settings.batch_size, "shuffle": bool(settings.shuffle),
        "seed": settings.seed, "validation": validation, "patience": settings.patience,
        "checkpoint": settings.checkpoint is not None, "resume": bool(settings.resume),
        "optimizer": [settings.optimizer.name, settings.optimizer.hyperparameters()],
    }


class DataParallelStrategy(Strategy):
    """The :class:`~xprop.train.strategy.Strategy` of ``fit(..., distributed=True)``.

    Every rank holds all the data; each trains on its :class:`ShardPlan` rows
    of every global batch, and the gradients are summed before each update.
    Only rank 0 is :attr:`is_root` (progress, files). Metrics are global.

    Parameters
    ----------
    ctx : Context
        From :func:`xprop.distributed.init`.
    """

    def __init__(self, ctx: Context, rank_timeout=None):
        self.ctx, self.rank_timeout = ctx, rank_timeout
        self.is_root = ctx.is_root
        self._local = {}

    @contextlib.contextmanager
    def running(self):
        """Abort every rank when one fails on its own (:meth:`Context.fail_fast`), or stops making
        progress for ``rank_timeout`` seconds (:meth:`Context.watched`)."""
        with self.ctx.fail_fast(passthrough=(TrainingDiverged,)), self.ctx.watched(self.rank_timeout):
            yield

    def begin(self, net, data, settings):
        # the same call on every rank, the same seed, one gradient buffer
        self.dp = DataParallel(self.ctx, net)
        return self.dp.agree(signature(net, data.X, data.targets(), settings), settings.seed)

    def prepare(self, step, optimizer, train, val, batch_size):
        self.net, self.xp, self.step, self.optimizer = step.net, step.net.xp, step, optimizer
        self.m = train.m
        B = min(batch_size, self.m)
        self.X, self.Y = train.arrays()       # each rank copies its rows of every epoch: plain arrays
        self.val = None if val is None else (val, Examples(self.net, *val.arrays(), None))
        self.batches = Batches(self.net, B)
        self.plan = self.dp.prepare(step, self.m, B)
        self.steps = self.plan.steps

    def from_root(self, value):
        return self.ctx.bcast(value)          # rank 0's file system decides

    def start(self, net, optimizer, rng, resumed):
        if not resumed:
            self.dp.broadcast_params(net)     # every rank starts from rank 0's weights
        self.dp.check_same_state(net, optimizer, rng, resumed)
        if self.ctx.watchdog is not None:     # the rank timeout names steps as epoch and step
            self.ctx.watchdog.count_from(self.steps, optimizer.state_dict()["t"])

    def config(self):
        return {"ranks": self.ctx.size}

    def agree_stop(self, stop):
        return self.ctx.any(stop)             # a callback may stop one rank: stop them all

    def run_epoch(self, rng, tick):
        """One epoch of data-parallel steps on this rank's rows (see the module docstring).

        Step ``s`` trains on rows ``offsets[s]:offsets[s+1]`` of this rank's
        rows of the epoch: its ``m_r`` examples of the global batch of ``B_s``.
        The step writes the mean gradient of those rows into the flat buffer,
        which is scaled by ``m_r / B_s`` and summed over the ranks by one
        allreduce: the mean gradient of the whole global batch, on every rank,
        before the update. The batch losses ``J_s = Σ_r (m_r / B_s) J_rs`` are
        equal on every rank; a NaN or inf on any rank makes the sum
        non-finite, so every rank sees a divergence at the same step.
        """
        net, xp, dp, step, optimizer = self.net, self.xp, self.dp, self.step, self.optimizer
        Xl, Yl = dp.local_rows(self.X, self.Y, None if rng is None else permutation(rng, self.m))
        plan, flat, grads, params = dp.plan, dp.grads.flat, dp.grads.grads, net.params
        offsets, weights, head = plan.offsets, plan.weights, net.head
        losses, correct = [], None
        with numpy.errstate(**_QUIET):
            for s in range(plan.steps):
                lo, hi = offsets[s], offsets[s + 1]
                if hi > lo:
                    Yb = Yl[lo:hi]
                    J, AL, _ = step(Xl[lo:hi], Yb)     # dW_l, db_l land in the flat buffer
                    losses.append(J)
                    c = head.correct(xp, AL, Yb)
                    if c is not None:
                        correct = c if correct is None else correct + c
                    if weights[s] != 1.0:
                        flat *= weights[s]                # (1/m_r) Σ_shard → (1/B_s) Σ_shard
                else:
                    flat[...] = 0                         # no rows in this batch: weight 0
                dp.allreduce()                            # Σ_r: (1/B_s) Σ over the global batch
                optimizer.step(params, grads)
                if tick is not None:
                    tick(1)
        # One read-back and one small allreduce per epoch: weighted batch losses and the correct count.
        local = numpy.zeros(plan.steps + 1)
        if losses:
            with self.ctx.waiting("device sync"):    # NCCL: a stuck allreduce shows here, on the host
                values = to_numpy(xp.stack(losses)).astype(numpy.float64)
            local[plan.nonempty] = values * numpy.asarray(weights)[plan.nonempty]
        local[-1] = 0 if correct is None else int(correct)
        total = self.ctx.allreduce_sum(local, what="epoch sums")
        batch_losses = total[:-1]
        return EpochResult(batch_losses @ plan.batch_sizes, int(total[-1]) if head.counts else None,
                           self.m, batch_losses)

    def evaluate(self, data):
        """The sums over ``data`` with its rows split over the ranks: one allreduce, the same on all."""
        rows = self.val[1] if self.val is not None and data is self.val[0] else Examples(self.net, *data.arrays(), None)
        m = rows.m
        lo, hi = shard_bounds(m, self.ctx.size, self.ctx.rank)
        shard = Examples(self.net, rows.X[lo:hi], rows.Y[lo:hi], None)
        with numpy.errstate(**_QUIET):
            if hi > lo:
                sums = evaluation_sums(self.net, shard, self.step.cost, self.batches)
                total, correct = sums.loss_sum, sums.correct
            else:
                total, correct = 0.0, 0
        total, correct_sum = self.ctx.allreduce_sum([total, correct or 0], what="validation sums")
        return Sums(float(total), int(correct_sum) if self.net.head.counts else None, m)
