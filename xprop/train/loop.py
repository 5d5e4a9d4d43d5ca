"""The training loop: check the arguments, build the parts, run the epochs.

``fit`` turns its arguments into parts and hands them to :func:`run`::

    step      = make_step(net)                    the fast step or the reference (xprop.step)
    strategy  = LocalStrategy() | DataParallelStrategy(ctx)
    callbacks = [progress bar, divergence guard, early stopping, checkpoint, *user callbacks]

and :func:`run` is the same for every combination of them: it never asks
whether the run is distributed, how a step computes its gradients or what a
callback does. Per step there is only the step, the update and a pre-bound
progress tick (inside the strategy's epoch); everything else happens once per
epoch. The batch losses stay on the device and are read back once per epoch,
so a GPU step never waits for the host. A non-finite loss stops training with
an error naming the epoch and step; the checkpoint of the last good epoch is
not touched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy

from ..backend import memory_pool_bytes, set_memory_limit
from ..fingerprint import fingerprint
from ..optim import Adam, Optimizer, make_optimizer
from ..step import make_step
from ..validation import check_inputs, check_positive_int, check_seed, check_targets
from .callbacks import Checkpoint, DivergenceGuard, EarlyStopping, ProgressBar, UserCallback
from .data import Examples, examples_from, split_validation
from .history import History, TrainingDiverged
from .strategy import LocalStrategy, evaluate_examples

__all__ = ["fit", "evaluate", "run", "Settings", "TrainState"]


@dataclass
class Settings:
    """fit's arguments that shape the run (checked), as strategies and checkpoints see them."""

    epochs: int
    batch_size: int
    optimizer: Optimizer
    validation: object
    shuffle: bool
    seed: object
    checkpoint: object
    resume: bool
    patience: object
    gpu_mem_limit: object = None
    metadata: object = None


@dataclass
class TrainState:
    """What the callbacks see of a run.

    Attributes
    ----------
    epoch : int
        The epoch running (1-based) or, between epochs, the last completed one
        (0 before the first; the checkpoint's after a resume).
    steps : int
        Steps per epoch.
    """

    net: object
    optimizer: Optimizer
    rng: numpy.random.Generator
    strategy: object
    epochs: int
    steps: int
    history: History = field(default_factory=History)
    epoch: int = 0


def evaluate(net, X, Y) -> dict:
    """Loss and accuracy (classification) of ``net`` on ``(X, Y)``."""
    Xr = check_inputs(net, X)
    Yr = check_targets(net, Y, Xr.shape[0])
    sums = evaluate_examples(net, Examples(net, Xr, Yr, None))
    return {"loss": sums.loss_sum / sums.n, "accuracy": sums.accuracy(net.head.outputs_per_example(net.sizes[-1])),
            "n": int(Xr.shape[0])}


def fit(net, X, Y, epochs=20, batch_size=128, optimizer=None, validation=None, shuffle=True,
        seed=0, progress=True, checkpoint=None, resume=False, patience=None, callbacks=None,
        distributed=False, strict_device=False, gpu_mem_limit=None, rank_timeout=600.0,
        overwrite=False, metadata=None):
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
        epoch, RNG state, architecture and version, the run's settings and
        the fingerprints of ``X`` and ``Y``; the history goes to a log beside
        it (``<name>.history.jsonl``), one line per epoch. An existing file
        is refused unless ``resume`` or ``overwrite``.
    resume : bool
        Continue from ``checkpoint`` if it exists (else start afresh). With the
        same seed and data the result equals an uninterrupted run's, bit for
        bit on the CPU. A checkpoint of another run is refused, naming what
        differs: other data (``X``, ``Y``), other optimizer hyperparameters,
        batch size, seed, shuffle, validation or patience (``epochs`` may
        grow).
    patience : int, optional
        Stop when the validation loss has not improved for this many epochs
        and restore the best weights. Needs ``validation``.
    callbacks : list of callable, optional
        Called as ``cb(record, net)`` after each epoch with the epoch's record
        (a dict); a callback returning True stops training.
    distributed : bool or "sharded"
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
        ``"sharded"``: each rank passes only its own rows ``X, Y`` (its
        shard; shards may differ in size); local batches, shuffles,
        validation and checkpoints follow :mod:`xprop.distributed.sharded`,
        and :func:`xprop.distributed.sharded_reference` replays such a run
        on one process.
    strict_device : bool
        Make any host↔device copy or device synchronisation inside a training
        step an error (:class:`xprop.backend.StrictDeviceError`; what is
        caught: :func:`xprop.backend.strict_device`). The data moves to the
        device once, at the call's entry, and the losses are read back once
        per epoch, outside the checked region. On NumPy there is no device
        and nothing to check.
    gpu_mem_limit : int, optional
        Bytes the CuPy memory pool may hold during this call
        (``history.memory_total_bytes`` shows what it holds per epoch); the
        previous limit is put back when fit returns. CuPy backend only.
    rank_timeout : float or None
        Distributed training: seconds a rank may wait for the others in one
        collective (default 600). When a rank stops making progress (stopped,
        stuck on I/O, deadlocked) a surviving rank prints one line naming it
        and the last completed step, and the whole job is aborted
        (:mod:`xprop.distributed.watchdog`). None: wait forever.
    overwrite : bool
        Start afresh over an existing ``checkpoint`` (and its history log)
        instead of refusing.
    metadata : dict, optional
        JSON-able description of the run stored in the checkpoint;
        ``xprop.load(checkpoint).metadata`` returns it (the command line keeps
        its scaler and flags there).

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
    optimizer = _optimizer(optimizer)
    callbacks = _user_callbacks(callbacks)
    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint=<path> to resume from")
    if checkpoint is not None:
        folder = Path(checkpoint).parent
        if not folder.is_dir():
            raise FileNotFoundError(
                f"checkpoint {str(checkpoint)!r}: its directory {str(folder)!r} does not exist; "
                "create it first")
        if not resume and not overwrite and Path(checkpoint).exists():
            raise FileExistsError(
                f"checkpoint {str(checkpoint)!r} already exists; pass resume=True to continue that run, "
                "overwrite=True to start afresh over it, or another path")
    if not isinstance(distributed, bool) and distributed != "sharded":
        raise TypeError(f"distributed must be True, False or 'sharded'; got {distributed!r}")
    if rank_timeout is not None and (isinstance(rank_timeout, bool) or not isinstance(rank_timeout, (int, float))
                                     or not 0 < rank_timeout < float("inf")):
        raise ValueError(f"rank_timeout must be a number of seconds > 0 or None; got {rank_timeout!r}")
    if not isinstance(strict_device, bool):
        raise TypeError(f"strict_device must be True or False; got {strict_device!r}")
    if gpu_mem_limit is not None and (isinstance(gpu_mem_limit, bool)
                                      or not isinstance(gpu_mem_limit, int) or gpu_mem_limit < 1):
        raise ValueError(f"gpu_mem_limit must be a number of bytes ≥ 1 or None; got {gpu_mem_limit!r}")
    settings = Settings(epochs, batch_size, optimizer, validation, shuffle, seed, checkpoint, resume,
                        patience, gpu_mem_limit, metadata)
    if distributed:
        from ..distributed import DataParallelStrategy, ShardedStrategy, init  # noqa: PLC0415  (MPI only when asked for)

        kind = ShardedStrategy if distributed == "sharded" else DataParallelStrategy
        strategy = kind(init(), rank_timeout=None if rank_timeout is None else float(rank_timeout))
    else:
        strategy = LocalStrategy(strict=strict_device)
    with strategy.running():
        return run(net, X, Y, settings, strategy, callbacks, progress)


def _optimizer(optimizer) -> Optimizer:
    if optimizer is None:
        return Adam()
    if isinstance(optimizer, str):
        return make_optimizer(optimizer)
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be an xprop optimizer, 'sgd', 'adam' or None; got {type(optimizer).__name__}")
    return optimizer


def _user_callbacks(callbacks) -> list:
    if callable(callbacks):
        callbacks = [callbacks]   # one callback given on its own
    callbacks = list(callbacks or [])
    if not all(callable(cb) for cb in callbacks):
        raise TypeError("callbacks must be a list of functions cb(record, net); got "
                        f"{[type(cb).__name__ for cb in callbacks]}")
    return callbacks


def run(net, X, Y, settings: Settings, strategy, user_callbacks=(), progress=False, *,
        step=None, guard=None, early=None) -> History:
    """Train ``net`` on checked ``settings`` with ``strategy``; the body of :func:`fit`.

    Builds the parts, then: the validation split, a resume, the epochs (the
    strategy's steps, the divergence guard, validation, the record, the
    callbacks, an agreed stop) and the end (best weights back).

    Parameters
    ----------
    step, guard, early : optional
        The training step (default :func:`~xprop.step.make_step`), the
        divergence guard (default :class:`DivergenceGuard`) and the early
        stopping callback (default ``EarlyStopping(settings.patience)``),
        for a run whose parts differ from fit's (e.g. K stacked models, whose
        results are per model).
    """
    Xr = check_inputs(net, X)
    # Data: checked once, moved to the backend once, never copied (a validation
    # fraction splits the indices; class labels stay labels).
    T = check_targets(net, Y, Xr.shape[0], keep_labels=True)
    data = examples_from(net, Xr, T)
    seed = strategy.begin(net, data, settings)
    split_seq, shuffle_seq = numpy.random.SeedSequence(seed).spawn(2)
    train, val = split_validation(net, data, settings.validation, numpy.random.default_rng(split_seq))
    rng = numpy.random.default_rng(shuffle_seq)
    step = make_step(net) if step is None else step
    strategy.prepare(step, settings.optimizer, train, val, settings.batch_size)
    state = TrainState(net, settings.optimizer, rng, strategy, settings.epochs, strategy.steps)

    early = EarlyStopping(settings.patience) if early is None else early
    config = {"batch_size": settings.batch_size, "epochs": settings.epochs, "shuffle": bool(settings.shuffle),
              "seed": seed}
    store = None
    if settings.checkpoint is not None:
        config.update(_run_identity(net, Xr, T, settings, strategy))
        store = Checkpoint(Path(settings.checkpoint), settings.resume, config, stateful=[early],
                           metadata=settings.metadata)
    resumed = strategy.from_root(store is not None and store.can_resume())
    if resumed:
        store.restore(state)
    elif hasattr(settings.optimizer, "check_params"):   # a stack's optimizer binds per model
        settings.optimizer.check_params(net.params)         # another net's state: refused before any step
    strategy.start(net, settings.optimizer, rng, resumed)
    config.update(strategy.config())
    bar = ProgressBar(progress and strategy.is_root)
    callbacks = [bar, DivergenceGuard() if guard is None else guard, early, *([store] if store else []),
                 *(UserCallback(cb) for cb in user_callbacks)]
    limit = settings.gpu_mem_limit       # the pool's cap for this call only: the old one goes back
    limit_before = None if limit is None else set_memory_limit(net.xp, limit)
    try:
        for cb in callbacks:
            cb.on_train_begin(state)
        _epochs(state, strategy, callbacks, bar, val, settings.shuffle)
    finally:
        for cb in callbacks:
            cb.close()
        if limit_before is not None:
            set_memory_limit(net.xp, limit_before)
    for cb in callbacks:
        cb.on_train_end(state)
    return state.history


def _run_identity(net, Xr, T, settings, strategy) -> dict:
    """What a checkpoint records so that a resume can prove it is the same run: the data's
    fingerprints (all of it: the strategy's) and the settings beyond batch size, shuffle and seed."""
    xp = net.xp
    identity = {"X": strategy.data_fingerprint(fingerprint(xp, Xr)),
                "Y": strategy.data_fingerprint(fingerprint(xp, T)), "patience": settings.patience}
    validation = settings.validation
    if isinstance(validation, (tuple, list)):
        identity["validation"] = "given"
        identity["validation X"] = fingerprint(xp, xp.asarray(validation[0]))
        identity["validation Y"] = fingerprint(xp, xp.asarray(validation[1]))
    else:
        identity["validation"] = validation
    return identity


def _epochs(state, strategy, callbacks, bar, val, shuffle) -> None:
    """The epochs after ``state.epoch`` up to ``state.epochs``, or until a stop is agreed."""
    net, rng, history, m = state.net, state.rng, state.history, strategy.m
    per_example = net.head.outputs_per_example(net.sizes[-1])
    tick = bar.tick
    for epoch in range(state.epoch + 1, state.epochs + 1):
        state.epoch = epoch
        for cb in callbacks:
            cb.on_epoch_begin(state)
        t0 = time.perf_counter()
        result = strategy.run_epoch(rng if shuffle else None, tick)
        for cb in callbacks:
            cb.on_epoch_result(state, result)
        val_loss = val_acc = None
        if val is not None:
            sums = strategy.evaluate(val)
            val_loss, val_acc = sums.loss(), sums.accuracy(per_example)
        seconds = time.perf_counter() - t0
        used, total = memory_pool_bytes(net.xp)
        history.append(epoch=epoch, loss=result.loss(), accuracy=result.accuracy(per_example),
                       val_loss=val_loss, val_accuracy=val_acc, seconds=seconds,
                       samples_per_s=m / seconds, memory_used_bytes=used, memory_total_bytes=total)
        record = history.last()
        stop = False
        for cb in callbacks:       # every callback runs, whatever the ones before it asked
            if cb.on_epoch_end(state, record):
                stop = True
        if strategy.agree_stop(stop):
            history.stopped_early = True
            break
