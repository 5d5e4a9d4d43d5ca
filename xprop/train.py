"""The training loop: mini-batches, progress, validation, checkpoints, early stopping.

``fit`` moves the data to the net's backend once, checks it once, and then
runs the same step for every mini-batch::

    A_L, cache = forward(X_batch)          # Z_l, A_l kept for backward
    grads = backward(cache, Y_batch)       # dW_l, db_l
    optimizer.step(params, grads)

The batch losses stay on the device and are read back once per epoch, so a
GPU step never waits for the host. A non-finite loss stops training with an
error naming the epoch and step; the checkpoint of the last good epoch is not
touched.

With ``distributed=True`` the same loop runs on every MPI rank over its share
of each batch, with one allreduce of the gradients before each optimizer step
(:mod:`xprop.distributed`, docs/distributed.md); without it, the loop above is
untouched.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy

from . import distributed as _dist
from .backend import all_finite, memory_pool_bytes, set_memory_limit, strict_device, take_rows, to_numpy
from .fast import TrainStep, supports_fast_path
from .io import FORMAT_VERSION, architecture, check_architecture, params_from_arrays, read_npz, write_npz_atomic
from .optim import Adam, Optimizer, make_optimizer
from .validation import check_inputs, check_positive_int, check_seed, check_targets, one_hot

__all__ = ["fit", "History", "TrainingDiverged", "evaluate"]


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or inf during training."""

    def __init__(self, epoch: int, step: int, last_finite: float | None):
        last = "none" if last_finite is None else f"{last_finite:.6g}"
        super().__init__(
            f"training diverged: the loss became NaN/inf at epoch {epoch}, step {step} "
            f"(last finite loss {last}); lower the learning rate. "
            "The checkpoint of the last completed epoch, if any, is intact."
        )
        self.epoch, self.step, self.last_finite = epoch, step, last_finite


@dataclass
class History:
    """Per-epoch record of a training run.

    Every list has one entry per completed epoch. ``accuracy`` and
    ``val_accuracy`` are None for regression nets; ``val_*`` are None
    without validation data. ``memory_used_bytes`` / ``memory_total_bytes``
    are the CuPy memory pool's used and held bytes after each epoch (None on
    NumPy); the pool keeps freed blocks for reuse, so "total" is what
    ``nvidia-smi`` shows for the process, more than the live arrays need.
    """

    epoch: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    accuracy: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    val_accuracy: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    samples_per_s: list = field(default_factory=list)
    memory_used_bytes: list = field(default_factory=list)
    memory_total_bytes: list = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False

    def __len__(self) -> int:
        return len(self.epoch)

    def append(self, **record) -> None:
        for key, value in record.items():
            getattr(self, key).append(value)

    def last(self) -> dict:
        """The latest epoch's record as a dict."""
        keys = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds", "samples_per_s",
                "memory_used_bytes", "memory_total_bytes")
        return {k: getattr(self, k)[-1] for k in keys} if self.epoch else {}

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, path=None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        h = cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})
        for name in ("memory_used_bytes", "memory_total_bytes"):  # absent in older files
            column = getattr(h, name)
            column.extend([None] * (len(h.epoch) - len(column)))
        return h


def _correct(net, A, Y):
    """Number of correct predictions in a batch (device scalar), or None."""
    xp = net.xp
    if net.output == "softmax":
        hits = xp.argmax(A, axis=1) == xp.argmax(Y, axis=1)
    elif net.output == "sigmoid":
        hits = (A > 0.5) == (Y > 0.5)
    else:
        return None
    return xp.sum(xp.astype(hits, xp.int64))


def _outputs_per_example(net) -> int:
    return net.sizes[-1] if net.output == "sigmoid" else 1


def _validation_sums(net, data, step, batches):
    """Summed loss and correct count over a :class:`_Data`, one training batch at a time.

    The rows go through the training step's own buffers (``step.cost``: the
    forward pass and the cost, no backward) and ``batches``' gather buffers,
    so validating costs no memory beyond training's; the losses are read back
    once, at the end. Without a fast step (other namespaces, ``evaluate``)
    each batch runs the plain forward pass.
    """
    xp = net.xp
    losses, sizes, correct = [], [], 0
    fast = isinstance(step, TrainStep)
    for _, Xb, Yb in batches(data, data.rows):
        if fast:
            J, AL = step.cost(Xb, Yb)
        else:
            _, cache = net._forward_rows(Xb)
            J, AL = net._cost_rows(cache, Yb), cache[f"A{net.L}"]
        losses.append(J)
        sizes.append(Xb.shape[0])
        c = _correct(net, AL, Yb)
        correct = None if c is None else correct + c
    if not losses:
        return 0.0, (None if net.output not in ("softmax", "sigmoid") else 0)
    total = float(to_numpy(xp.stack(losses)).astype(numpy.float64) @ numpy.asarray(sizes, numpy.float64))
    return total, (None if correct is None else int(correct))


def _evaluate_data(net, data, step, batches):
    """Mean loss and accuracy over a :class:`_Data` (see :func:`_validation_sums`)."""
    total, correct = _validation_sums(net, data, step, batches)
    acc = None if correct is None else correct / (data.m * _outputs_per_example(net))
    return total / data.m, acc


def _evaluate_sharded(net, ctx, data, step, batches):
    """:func:`_evaluate_data` with the rows split over the ranks and the sums reduced.

    Every rank gets the same (loss, accuracy): the global sums, one allreduce.
    """
    m = data.m
    lo, hi = _dist.shard_bounds(m, ctx.size, ctx.rank)
    shard = _Data(net, data.X[lo:hi], data.Y[lo:hi], None)
    total, correct = _validation_sums(net, shard, step, batches) if hi > lo else (0.0, 0)
    total, correct_sum = ctx.allreduce_sum([total, correct or 0])
    counts = net.output in ("softmax", "sigmoid")
    acc = float(correct_sum) / (m * _outputs_per_example(net)) if counts else None
    return float(total) / m, acc


def evaluate(net, X, Y) -> dict:
    """Loss and accuracy (classification) of ``net`` on ``(X, Y)``."""
    Xr = check_inputs(net, X)
    Yr = check_targets(net, Y, Xr.shape[0])
    # the plain forward pass over slices of 4,096 rows (no training step to borrow buffers from)
    loss, acc = _evaluate_data(net, _Data(net, Xr, Yr, None), None, _Batches(net, 4096))
    return {"loss": loss, "accuracy": acc, "n": int(Xr.shape[0])}


def _take(xp, a, idx):
    return xp.take(a, idx, axis=0)


class _Data:
    """fit's training (or validation) examples: rows of ``X`` and their targets, not copied.

    Attributes
    ----------
    X : (N, k)
        The inputs as given (row layout, the net's dtype).
    Y : (N, n_L) or None
        Target rows, or None when ``labels`` are kept instead.
    labels : (N,) int64 or None
        Class labels of a softmax net given labels: one-hot rows are built
        only for the rows in use (a batch, an evaluation chunk), never for the
        whole data set.
    rows : (m,) int or None
        The examples this set is made of (a validation fraction splits the
        indices, not the data), or None for all ``N`` in order.
    m : int
        Number of examples.
    """

    def __init__(self, net, X, Y, labels, rows=None):
        self.net, self.xp = net, net.xp
        self.X, self.Y, self.labels, self.rows = X, Y, labels, rows
        self.m = int(X.shape[0] if rows is None else rows.shape[0])

    def subset(self, rows):
        return _Data(self.net, self.X, self.Y, self.labels, rows)

    def targets(self, idx=None, lo=0, hi=None):
        """Target rows of examples ``idx`` (indices into X), or of rows ``lo:hi`` when idx is None."""
        xp, net = self.xp, self.net
        if self.labels is None:
            return self.Y[lo:hi] if idx is None else _take(xp, self.Y, idx)
        labels = self.labels[lo:hi] if idx is None else _take(xp, self.labels, idx)
        return one_hot(xp, labels, net.sizes[-1], net.dtype)

    def arrays(self):
        """``(X, Y)`` of this set as arrays (copies where it is a subset or holds labels)."""
        if self.rows is None:
            return self.X, self.targets()
        return _take(self.xp, self.X, self.rows), self.targets(self.rows)

    def truth(self):
        """The class of every example of X (softmax accuracy): the labels, or argmax of Y."""
        return self.labels if self.labels is not None else self.xp.argmax(self.Y, axis=1)


def _permutation(rng, m: int):
    """``rng.permutation(m)``: the same order from the same draws, shuffled in place, as int32
    where ``m`` allows (4 bytes an example, the only array of fit that grows with the data
    besides the predictions)."""
    order = numpy.arange(m, dtype=numpy.int32 if m < 2**31 else numpy.int64)
    rng.shuffle(order)
    return order


def _split_validation(net, data, validation, rng):
    """``(train, val)`` :class:`_Data`; a fraction splits the example indices with ``rng``."""
    xp = net.xp
    if validation is None:
        return data, None
    if isinstance(validation, float) and not isinstance(validation, bool):
        if not 0.0 < validation < 1.0:
            raise ValueError(f"validation as a fraction must be in (0, 1); got {validation!r}")
        m = data.m
        n_val = max(1, int(round(validation * m)))
        if n_val >= m:
            raise ValueError(f"validation={validation} leaves no training examples out of {m}")
        order = xp.asarray(_permutation(rng, m))
        val_idx, train_idx = order[:n_val], order[n_val:]
        return data.subset(train_idx), data.subset(val_idx)
    if isinstance(validation, (tuple, list)) and len(validation) == 2:
        Xv = check_inputs(net, validation[0], name="validation X")
        Yv = check_targets(net, validation[1], Xv.shape[0], name="validation Y", keep_labels=True)
        return data, _fit_data(net, Xv, Yv)
    raise TypeError(f"validation must be None, a fraction in (0, 1) or a pair (X_val, Y_val); got {type(validation).__name__}")


def _fit_data(net, X, T):
    """A :class:`_Data` from checked inputs and ``check_targets(..., keep_labels=True)`` output."""
    if T.ndim == 1:                                      # softmax class labels, kept as labels
        return _Data(net, X, None, T)
    return _Data(net, X, T, None)


def _reference_step(net):
    """The plain step (any array-API namespace): the reference of :class:`TrainStep`."""

    def step(X, Y):
        _, cache = net._forward_rows(X)
        J = net._cost_rows(cache, Y)
        grads = net._grads_to_layout(net._backward_rows(cache, Y))
        return J, cache[f"A{net.L}"], grads

    return step


def _copy_params(net):
    return {k: net.xp.asarray(v, copy=True) for k, v in net.params.items()}


def _write_checkpoint(path, net, opt, epoch, rng, history, early, config):
    from . import __version__  # noqa: PLC0415

    arrays = {f"param.{k}": v for k, v in net.params.items()}
    state = opt.state_dict()
    arrays.update({f"opt.{k}": v for k, v in state["arrays"].items()})
    if early.get("best_params") is not None:
        arrays.update({f"best.{k}": v for k, v in early["best_params"].items()})
    meta = {
        "format_version": FORMAT_VERSION, "kind": "checkpoint", "xprop_version": __version__,
        "architecture": architecture(net), "epoch": epoch, "rng_state": rng.bit_generator.state,
        "optimizer": {"name": opt.name, "hyperparameters": opt.hyperparameters(), "t": state["t"]},
        "history": history.to_dict(),
        "early_stopping": {k: v for k, v in early.items() if k != "best_params"},
        "config": config,
    }
    write_npz_atomic(path, arrays, meta)


def _read_checkpoint(path, net, opt, rng):
    arrays, meta = read_npz(path, "checkpoint")
    if meta.get("kind") != "checkpoint":
        raise ValueError(f"checkpoint {str(path)!r} is a {meta.get('kind')} file, not a checkpoint")
    check_architecture(net, meta["architecture"], path, "checkpoint")
    saved_opt = meta["optimizer"]["name"]
    if saved_opt != opt.name:
        raise ValueError(f"checkpoint {str(path)!r} was written with optimizer {saved_opt!r}; "
                         f"resume needs the same optimizer, got {opt.name!r}")
    params = params_from_arrays(net, {k[6:]: v for k, v in arrays.items() if k.startswith("param.")},
                                path, "checkpoint")
    net.set_params(params)
    opt.load_state_dict({"t": meta["optimizer"]["t"],
                         "arrays": {k[4:]: v for k, v in arrays.items() if k.startswith("opt.")}},
                        net.params)
    rng.bit_generator.state = meta["rng_state"]
    early = dict(meta.get("early_stopping", {}))
    best = {k[5:]: v for k, v in arrays.items() if k.startswith("best.")}
    early["best_params"] = {k: net.xp.asarray(v, dtype=net.dtype) for k, v in best.items()} or None
    return int(meta["epoch"]), History.from_dict(meta["history"]), early


class _NoBar:
    """What fit calls on a progress bar, doing nothing (progress=False costs no tqdm)."""

    disable = True

    def update(self, n=1):
        pass

    def set_description(self, text):
        pass

    def set_postfix(self, *args, **kwargs):
        pass

    def close(self):
        pass


def _progress_bar(total, enabled, initial=0):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm  # noqa: PLC0415

    # disable=None: tqdm turns itself off when stderr is not a terminal (CI logs).
    return tqdm(total=total, initial=initial, disable=None, unit="step", dynamic_ncols=True, leave=True)


def _signature(net, Xr, Yr, epochs, batch_size, optimizer, validation, shuffle, seed, checkpoint,
               resume, patience) -> dict:
    """What must be equal on every rank of a distributed fit (compared by ``DataParallel.agree``)."""
    xp = net.xp
    if isinstance(validation, (tuple, list)):
        validation = [list(numpy.shape(v)) for v in validation]
    return {
        "architecture": {k: v for k, v in architecture(net).items() if k not in ("seed", "init")},
        "backend": net.backend, "X": _dist.sample_digest(xp, Xr), "Y": _dist.sample_digest(xp, Yr),
        "epochs": epochs, "batch_size": batch_size, "shuffle": bool(shuffle), "seed": seed,
        "validation": validation, "patience": patience, "checkpoint": checkpoint is not None,
        "resume": bool(resume), "optimizer": [optimizer.name, optimizer.hyperparameters()],
    }


def _distributed_epoch(net, dp, step, optimizer, Xl, Yl, bar):
    """One epoch of data-parallel steps on this rank's rows ``Xl, Yl`` (see xprop.distributed).

    Step ``s`` trains on rows ``offsets[s]:offsets[s+1]`` of ``Xl``: this rank's
    ``m_r`` examples of the global batch of ``B_s``. The step writes the mean
    gradient of those rows into the flat buffer, which is scaled by
    ``m_r / B_s`` and summed over the ranks by one allreduce: the mean
    gradient of the whole global batch, on every rank, before the update.

    Returns
    -------
    batch_losses : ndarray (steps,) float64
        The global batch losses ``J_s = Σ_r (m_r / B_s) J_rs``, equal on every
        rank. A NaN or inf on any rank makes the sum non-finite, so every rank
        sees the divergence at the same step.
    correct : int or None
        Correct predictions over the epoch, all ranks together.
    """
    xp, plan, flat, grads = net.xp, dp.plan, dp.grads.flat, dp.grads.grads
    offsets, weights = plan.offsets, plan.weights
    losses, correct = [], None
    with numpy.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        for s in range(plan.steps):
            lo, hi = offsets[s], offsets[s + 1]
            if hi > lo:
                Yb = Yl[lo:hi]
                J, AL, _ = step(Xl[lo:hi], Yb)     # dW_l, db_l land in the flat buffer
                losses.append(J)
                c = _correct(net, AL, Yb)
                if c is not None:
                    correct = c if correct is None else correct + c
                if weights[s] != 1.0:
                    flat *= weights[s]                # (1/m_r) Σ_shard → (1/B_s) Σ_shard
            else:
                flat[...] = 0                         # no rows in this batch: weight 0
            dp.allreduce()                            # Σ_r: (1/B_s) Σ over the global batch
            optimizer.step(net.params, grads)
            bar.update(1)
    # One read-back and one small allreduce per epoch: weighted batch losses and the correct count.
    local = numpy.zeros(plan.steps + 1)
    if losses:
        local[plan.nonempty] = (to_numpy(xp.stack(losses)).astype(numpy.float64)
                                * numpy.asarray(weights)[plan.nonempty])
    local[-1] = 0 if correct is None else int(correct)
    total = dp.ctx.allreduce_sum(local)
    counts = net.output in ("softmax", "sigmoid")
    return total[:-1], (int(total[-1]) if counts else None)


def fit(net, X, Y, epochs=20, batch_size=128, optimizer=None, validation=None, shuffle=True,
        seed=0, progress=True, checkpoint=None, resume=False, patience=None, callbacks=None,
        distributed=False, strict_device=False, gpu_mem_limit=None):
    """Train ``net`` in place with mini-batch gradient descent.

    Parameters
    ----------
    net : MLP
    X : array, ``(m, k)`` (rows) or ``(k, m)`` (columns)
    Y : array
        Targets as accepted by :meth:`MLP.backward` (labels or target rows).
    epochs : int
        Passes over the training data (in total, counting resumed ones).
    batch_size : int
        Examples per step; the last, partial batch is kept. A batch_size
        larger than the training set means full-batch gradient descent.
    optimizer : Optimizer or {"sgd", "adam"} or None
        None means ``Adam(lr=1e-3)``. Its state is created on the net's backend.
    validation : None, float or (X_val, Y_val)
        A float in (0, 1) holds out that fraction of (X, Y), chosen with a
        host RNG seeded by ``seed``.
    shuffle : bool
        Reshuffle the training examples every epoch (host RNG, seeded).
    seed : int or None
        Seed of the shuffling and hold-out RNG.
    progress : bool
        Show a tqdm bar; it stays quiet by itself when stderr is not a terminal.
    checkpoint : str or Path, optional
        Written atomically after every epoch: parameters, optimizer state,
        epoch, RNG state, history, architecture and version.
    resume : bool
        Continue from ``checkpoint`` if it exists (else start afresh). With the
        same seed and data the result equals an uninterrupted run's, bit for
        bit on the CPU.
    patience : int, optional
        Stop when the validation loss has not improved for this many epochs
        and restore the best weights. Needs ``validation``.
    callbacks : list of callable, optional
        Called as ``cb(record, net)`` after each epoch with the epoch's record
        (a dict); a callback returning True stops training.
    distributed : bool
        Data-parallel training over MPI (see :mod:`xprop.distributed` and
        docs/distributed.md): run the same script under ``mpiexec -n N``, with
        the full ``X, Y`` and the same arguments on every rank. Every rank
        starts from rank 0's weights and trains on its share of each global
        batch of ``batch_size``; the gradients are averaged over the whole
        batch before every step, so the updates are those of one process
        (up to rounding). Only rank 0 shows progress and writes the
        checkpoint; on resume every rank reads it. Validation metrics and the
        reported training loss are global (summed over ranks); the History
        is the same on every rank except the timings. ``seed=None`` is drawn
        on rank 0. A failure on one rank aborts all of them.
    strict_device : bool
        Make any host↔device copy or device synchronisation inside a training
        step an error (CuPy: ``cupyx.allow_synchronize(False)`` and the
        backend's transfer count). The data moves to the device once, at the
        call's entry, and the losses are read back once per epoch, outside
        the checked region. On NumPy there is no device and nothing to check.
    gpu_mem_limit : int, optional
        Bytes the CuPy memory pool may hold (``history.memory_total_bytes``
        shows what it holds per epoch). CuPy backend only.

    Returns
    -------
    History

    Raises
    ------
    TrainingDiverged
        The loss became NaN or inf (names epoch, step and last finite loss);
        with ``distributed=True``, on every rank alike.
    xprop.distributed.DistributedError
        Ranks were called with different arguments or data, or cannot get a
        GPU of their own (raised on every rank alike).
    """
    epochs = check_positive_int("epochs", epochs)
    seed = check_seed(seed)
    batch_size = check_positive_int("batch_size", batch_size)
    if patience is not None:
        patience = check_positive_int("patience", patience)
        if validation is None:
            raise ValueError("patience (early stopping) needs validation data; pass validation=0.1 or (X_val, Y_val)")
    if optimizer is None:
        optimizer = Adam()
    elif isinstance(optimizer, str):
        optimizer = make_optimizer(optimizer)
    elif not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be an xprop optimizer, 'sgd', 'adam' or None; got {type(optimizer).__name__}")
    if callable(callbacks):
        callbacks = [callbacks]   # one callback given on its own
    callbacks = list(callbacks or [])
    if not all(callable(cb) for cb in callbacks):
        raise TypeError("callbacks must be a list of functions cb(record, net); got "
                        f"{[type(cb).__name__ for cb in callbacks]}")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint=<path> to resume from")
    if checkpoint is not None:
        folder = Path(checkpoint).parent
        if not folder.is_dir():
            raise FileNotFoundError(
                f"checkpoint {str(checkpoint)!r}: its directory {str(folder)!r} does not exist; "
                "create it first")
    if not isinstance(distributed, bool):
        raise TypeError(f"distributed must be True or False; got {distributed!r}")
    if not isinstance(strict_device, bool):
        raise TypeError(f"strict_device must be True or False; got {strict_device!r}")
    if gpu_mem_limit is not None and (isinstance(gpu_mem_limit, bool)
                                      or not isinstance(gpu_mem_limit, int) or gpu_mem_limit < 1):
        raise ValueError(f"gpu_mem_limit must be a number of bytes ≥ 1 or None; got {gpu_mem_limit!r}")
    args = (net, X, Y, epochs, batch_size, optimizer, validation, shuffle, seed, progress,
            checkpoint, resume, patience, callbacks)
    if not distributed:
        return _fit(*args, None, strict_device, gpu_mem_limit)
    ctx = _dist.init()
    with ctx.fail_fast(passthrough=(TrainingDiverged,)):
        return _fit(*args, ctx, strict_device, gpu_mem_limit)


class _Batches:
    """Mini-batches of ``B`` examples, gathered into reused buffers.

    ``batches(data, order)`` yields ``(i, X_b, Y_b)`` for the examples
    ``order`` of a :class:`_Data` (indices into ``data.X``, e.g. the epoch's
    order), ``B`` at a time, or, with ``order`` None, for ``data.X``'s rows as
    they are: slices, no copy. The rows of a batch are gathered from the
    (unshuffled) data straight into a buffer allocated once per batch size
    (``take`` with ``out=`` on NumPy and CuPy), so an epoch never copies the
    data set and the batch is still in cache when the first matrix product
    reads it; training and validation share the buffers. Class labels become
    the batch's one-hot rows in a buffer too. Other namespaces allocate each
    batch.
    """

    def __init__(self, net, B):
        self.net, self.xp, self.B = net, net.xp, B
        self.fast = supports_fast_path(self.xp)
        self._buffers = {}
        self.eye = self.xp.eye(net.sizes[-1], dtype=net.dtype)   # row j: the one-hot row of class j

    def _buffer(self, n, data):
        """``(X_b, Y_b, labels_b)`` buffers of ``n ≤ B`` rows: the first rows of B-row arrays."""
        key = (n, data.X.shape[1], data.X.dtype)
        if key not in self._buffers:
            xp, net, B = self.xp, self.net, max(self.B, n)
            full = (B, data.X.shape[1], data.X.dtype)
            if full not in self._buffers:
                self._buffers[full] = (xp.empty((B, data.X.shape[1]), dtype=data.X.dtype),
                                       xp.empty((B, net.sizes[-1]), dtype=net.dtype),
                                       xp.empty((B,), dtype=xp.int64))
            self._buffers[key] = tuple(a[:n] for a in self._buffers[full])
        return self._buffers[key]

    def _one_hot(self, labels, Yb):
        # Y_b[i] = the one-hot row of class labels_i: rows of the identity, gathered
        return take_rows(self.xp, self.eye, labels, Yb)

    def __call__(self, data, order):
        xp, B = self.xp, self.B
        m = data.m if order is None else int(order.shape[0])
        for i in range(0, m, B):
            if order is None:
                Xb = data.X[i:i + B]
                if data.labels is None:
                    yield i, Xb, data.Y[i:i + B]
                elif self.fast:
                    yield i, Xb, self._one_hot(data.labels[i:i + B], self._buffer(Xb.shape[0], data)[1])
                else:
                    yield i, Xb, data.targets(lo=i, hi=i + B)
            elif self.fast:
                idx = order[i:i + B]
                Xb, Yb, lab = self._buffer(idx.shape[0], data)
                take_rows(xp, data.X, idx, Xb)
                if data.labels is None:
                    take_rows(xp, data.Y, idx, Yb)
                else:
                    self._one_hot(take_rows(xp, data.labels, idx, lab), Yb)
                yield i, Xb, Yb
            else:
                idx = order[i:i + B]
                yield i, _take(xp, data.X, idx), data.targets(idx)


def _local_epoch(net, step, optimizer, batches, data, order, truth, preds, bar):
    """One epoch of steps in this process; returns the batch losses (device) and correct count.

    ``order`` is the epoch's examples (indices into the data's X) or None for
    its rows in order; ``truth`` the class of every row of X (softmax nets) and
    ``preds`` a buffer for the predicted class of every step's examples.
    """
    xp = net.xp
    losses, correct = [], None
    own_step = type(optimizer).step is Optimizer.step  # a subclass's own step may not take the keywords
    # Plain SGD: the step returns lr·∇J (lr folded in with 1/m) and the update is P −= it.
    scale = optimizer.grad_scale() if own_step and isinstance(step, TrainStep) else None
    tick = None if bar.disable else bar.update
    with numpy.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        for i, Xb, Yb in batches(data, order):
            J, AL, grads = step(Xb, Yb) if scale is None else step(Xb, Yb, scale)
            losses.append(J)
            if truth is not None:                  # softmax: keep the predicted class
                AL.argmax(axis=1, out=preds[i:i + Xb.shape[0]])
            else:
                c = _correct(net, AL, Yb)
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
            expected = truth[lo:hi] if order is None else _take(xp, truth, order[lo:hi])
            correct = correct + xp.sum(preds[lo:hi] == expected, dtype=xp.int64)
    return losses, correct


def _fit(net, X, Y, epochs, batch_size, optimizer, validation, shuffle, seed, progress,
         checkpoint, resume, patience, callbacks, ctx, strict=False, gpu_mem_limit=None):
    """The body of :func:`fit`, arguments checked; ``ctx`` is the MPI context or None."""
    xp = net.xp
    # Data: checked once, moved to the backend once, never copied (a validation
    # fraction splits the indices; class labels stay labels).
    Xr = check_inputs(net, X)
    data = _fit_data(net, Xr, check_targets(net, Y, Xr.shape[0], keep_labels=True))
    dp = None
    if ctx is not None:   # the same call on every rank, the same seed, one gradient buffer
        dp = _dist.DataParallel(ctx, net)
        seed = dp.agree(_signature(net, Xr, data.targets(), epochs, batch_size, optimizer, validation,
                                   shuffle, seed, checkpoint, resume, patience), seed)
    split_seq, shuffle_seq = numpy.random.SeedSequence(seed).spawn(2)
    data, val = _split_validation(net, data, validation, numpy.random.default_rng(split_seq))
    if dp is not None:    # each rank copies its rows of every epoch: plain arrays
        Xr, Yr = data.arrays()
        val_rows = _Data(net, *val.arrays(), None) if val is not None else None
    rng = numpy.random.default_rng(shuffle_seq)
    m = data.m
    B = min(batch_size, m)
    steps = math.ceil(m / B)

    history = History()
    early = {"best_loss": None, "best_epoch": None, "bad_epochs": 0, "best_params": None}
    start = 0
    resumed = resume and Path(checkpoint).exists()
    if dp is not None:    # rank 0's file system decides; every rank then reads the file
        resumed = ctx.bcast(resumed)
    if resumed:
        start, history, early = _read_checkpoint(checkpoint, net, optimizer, rng)
    config = {"batch_size": batch_size, "epochs": epochs, "shuffle": bool(shuffle), "seed": seed}
    if dp is not None:
        if not resumed:
            dp.broadcast_params(net)               # every rank starts from rank 0's weights
        dp.check_same_state(net, optimizer, rng, resumed)
        config["ranks"] = ctx.size
        progress = progress and ctx.is_root

    batch_sizes = numpy.minimum(B, m - B * numpy.arange(steps)).astype(numpy.float64)
    step = TrainStep(net) if supports_fast_path(xp) else _reference_step(net)
    if dp is not None:
        dp.prepare(step, m, B)
    truth = data.truth() if net.output == "softmax" and dp is None else None
    preds = xp.empty((m,), dtype=xp.int64) if truth is not None else None
    batches = _Batches(net, B)
    if gpu_mem_limit is not None:
        set_memory_limit(xp, gpu_mem_limit)
    bar = _progress_bar((epochs - start) * steps, progress)
    try:
        for epoch in range(start + 1, epochs + 1):
            bar.set_description(f"epoch {epoch}/{epochs}")
            t0 = time.perf_counter()
            if dp is not None:
                order = rng.permutation(m) if shuffle else None
                batch_losses, correct = _distributed_epoch(net, dp, step, optimizer,
                                                           *dp.local_rows(Xr, Yr, order), bar)
            else:
                order = xp.asarray(_permutation(rng, m)) if shuffle else None
                if data.rows is not None:          # positions in the training set -> rows of X
                    order = data.rows if order is None else _take(xp, data.rows, order)
                with strict_device(xp, strict):
                    losses, correct = _local_epoch(net, step, optimizer, batches, data, order,
                                                   truth, preds, bar)
                # One read-back per epoch: the batch losses (and the correct count).
                batch_losses = to_numpy(xp.stack(losses)).astype(numpy.float64)
            bad = numpy.flatnonzero(~numpy.isfinite(batch_losses))
            if bad.size:
                finite = batch_losses[:bad[0]]
                last = float(finite[-1]) if finite.size else (history.loss[-1] if history.loss else None)
                raise TrainingDiverged(epoch, int(bad[0]) + 1, last)
            flat = getattr(net.params, "flat", None)   # one buffer: one reduction, one read-back
            if not (all_finite(xp, flat) if flat is not None
                    else all(all_finite(xp, p) for p in net.params.values())):
                # every loss was finite but the last update was not: do not checkpoint it
                raise TrainingDiverged(epoch, steps, float(batch_losses[-1]))
            loss = float(batch_losses @ batch_sizes / m)   # mean over the epoch's examples
            acc = None if correct is None else int(correct) / (m * _outputs_per_example(net))
            val_loss = val_acc = None
            if val is not None:
                with numpy.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
                    val_loss, val_acc = (_evaluate_data(net, val, step, batches) if dp is None
                                         else _evaluate_sharded(net, ctx, val_rows, step, batches))
            seconds = time.perf_counter() - t0
            used, total = memory_pool_bytes(xp)
            history.append(epoch=epoch, loss=loss, accuracy=acc, val_loss=val_loss,
                           val_accuracy=val_acc, seconds=seconds, samples_per_s=m / seconds,
                           memory_used_bytes=used, memory_total_bytes=total)
            postfix = {"loss": f"{loss:.4f}"}
            if acc is not None:
                postfix["acc"] = f"{acc:.3f}"
            if val_loss is not None:
                postfix["val_loss"] = f"{val_loss:.4f}"
            bar.set_postfix(postfix, refresh=False)

            stop = False
            if patience is not None:
                if early["best_loss"] is None or val_loss < early["best_loss"]:
                    early.update(best_loss=val_loss, best_epoch=epoch, bad_epochs=0,
                                 best_params=_copy_params(net))
                else:
                    early["bad_epochs"] += 1
                    stop = early["bad_epochs"] >= patience
                history.best_epoch = early["best_epoch"]
            if checkpoint is not None and (dp is None or ctx.is_root):
                _write_checkpoint(checkpoint, net, optimizer, epoch, rng, history, early, config)
            for cb in callbacks:
                if cb(history.last(), net):
                    stop = True
            if dp is not None:                # a callback may stop one rank: stop them all
                stop = ctx.any(stop)
            if stop:
                history.stopped_early = True
                break
    finally:
        bar.close()
    if patience is not None and early["best_params"] is not None:
        net.set_params(early["best_params"])
    return history
