"""What happens around the epochs: the parts of a run that are not the steps.

A callback has five hooks, all optional (the loop calls them in list order)::

    on_train_begin(state)            before the first epoch (after a resume)
    on_epoch_begin(state)
    on_epoch_result(state, result)   right after the epoch's steps, before validation
    on_epoch_end(state, record)      after the epoch's record is in the history;
                                     a true return value asks to stop
    on_train_end(state)              after the last epoch, when training ended normally
    close()                          always, last (also on an error)

``state`` is the run's :class:`~xprop.train.loop.TrainState` (net, optimizer,
history, epoch, strategy, ...), ``result`` the strategy's
:class:`~xprop.train.strategy.EpochResult`, ``record`` the epoch's row of the
history (a dict). A callback that keeps state across epochs takes part in
checkpoints with ``checkpoint_key``, ``array_prefix``, ``state_dict()`` and
``load_state_dict(meta, arrays)`` (:mod:`xprop.train.checkpoint`).

Callbacks never run collective operations themselves: a stop request is
agreed on by the strategy (:meth:`Strategy.agree_stop`), and only the
strategy's root writes files.
"""

from __future__ import annotations

import numpy

from ..backend import all_finite
from .checkpoint import HistoryLog, read_checkpoint, write_checkpoint
from .history import TrainingDiverged

__all__ = ["Callback", "DivergenceGuard", "EarlyStopping", "Checkpoint", "ProgressBar", "UserCallback"]


class Callback:
    """Base class: every hook does nothing."""

    def on_train_begin(self, state) -> None:
        pass

    def on_epoch_begin(self, state) -> None:
        pass

    def on_epoch_result(self, state, result) -> None:
        pass

    def on_epoch_end(self, state, record) -> bool | None:
        return None

    def on_train_end(self, state) -> None:
        pass

    def close(self) -> None:
        pass


class DivergenceGuard(Callback):
    """Raise :class:`TrainingDiverged` when a batch loss or the weights stop being finite.

    Runs on the epoch's batch losses (read back once per epoch) before the
    epoch is recorded or checkpointed, so the last checkpoint stays the last
    good epoch. The losses are the same on every rank of a data-parallel run,
    and so are the weights, so every rank raises alike.
    """

    def on_epoch_result(self, state, result):
        batch_losses = result.batch_losses
        bad = numpy.flatnonzero(~numpy.isfinite(batch_losses))
        if bad.size:
            finite = batch_losses[:bad[0]]
            history = state.history
            last = float(finite[-1]) if finite.size else (history.loss[-1] if history.loss else None)
            raise TrainingDiverged(state.epoch, int(bad[0]) + 1, last)
        net = state.net
        xp = net.xp
        flat = getattr(net.params, "flat", None)   # one buffer: one reduction, one read-back
        if not (all_finite(xp, flat) if flat is not None
                else all(all_finite(xp, p) for p in net.params.values())):
            # every loss was finite but the last update was not: do not checkpoint it
            raise TrainingDiverged(state.epoch, state.steps, float(batch_losses[-1]))


class EarlyStopping(Callback):
    """Stop when the validation loss has not improved for ``patience`` epochs; keep the best weights.

    The callback owns its state: the best validation loss and its epoch, the
    epochs since, and a copy of the best weights, which it restores when
    training ends. With ``patience=None`` it only carries state a resumed
    checkpoint brought (and writes it back), and never stops or restores.

    Parameters
    ----------
    patience : int or None
    """

    checkpoint_key = "early_stopping"
    array_prefix = "best"

    def __init__(self, patience=None):
        self.patience = patience
        self.best_loss = self.best_epoch = self.best_params = None
        self.bad_epochs = 0

    def on_epoch_end(self, state, record):
        if self.patience is None:
            return False
        stop = False
        val_loss = record["val_loss"]
        if self.best_loss is None or val_loss < self.best_loss:
            net = state.net
            self.best_loss, self.best_epoch, self.bad_epochs = val_loss, state.epoch, 0
            self.best_params = {k: net.xp.asarray(v, copy=True) for k, v in net.params.items()}
        else:
            self.bad_epochs += 1
            stop = self.bad_epochs >= self.patience
        state.history.best_epoch = self.best_epoch
        return stop

    def on_train_end(self, state):
        if self.patience is not None and self.best_params is not None:
            state.net.set_params(self.best_params)

    def state_dict(self):
        meta = {"best_loss": self.best_loss, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}
        return meta, dict(self.best_params or {})

    def load_state_dict(self, meta, arrays):
        self.best_loss = meta.get("best_loss")
        self.best_epoch = meta.get("best_epoch")
        self.bad_epochs = meta.get("bad_epochs", 0)
        self.best_params = dict(arrays) or None   # host arrays until on_train_begin

    def on_train_begin(self, state):
        if self.best_params is not None:          # restored: onto the net's backend and dtype
            net = state.net
            self.best_params = {k: net.xp.asarray(v, dtype=net.dtype) for k, v in self.best_params.items()}


class Checkpoint(Callback):
    """Write a checkpoint after every epoch (on the strategy's root); resume from one.

    Parameters
    ----------
    path : Path
    resume : bool
        Whether :meth:`can_resume` may say yes (the file exists).
    config : dict
        Stored in the file (:mod:`xprop.train.checkpoint`); a resume must match it.
    stateful : list of callbacks
        Whose state the file carries (early stopping).
    metadata : dict, optional
        The caller's description of the run, stored with it.
    """

    def __init__(self, path, resume, config, stateful=(), metadata=None):
        self.path, self.resume, self.config, self.stateful = path, bool(resume), config, list(stateful)
        self.log = HistoryLog(path, metadata)

    def can_resume(self) -> bool:
        return self.resume and self.path.exists()

    def restore(self, state) -> None:
        """Read the file into the run: weights, optimizer, RNG, history, stateful callbacks.

        Refuses (before anything is restored) a checkpoint of another run:
        other data, other settings (:func:`~xprop.train.checkpoint.check_same_run`).
        """
        log = self.log if state.strategy.is_root else None
        try:
            state.epoch, state.history = read_checkpoint(self.path, state.net, state.optimizer, state.rng,
                                                         self.stateful, config=self.config, log=log)
        except BaseException:
            self.log.close()
            raise

    def on_epoch_end(self, state, record):
        if state.strategy.is_root:
            write_checkpoint(self.path, state, self.config, self.stateful, log=self.log)
        return False

    def close(self) -> None:
        self.log.close()


class _NoBar:
    """What the progress bar calls on tqdm, doing nothing (progress=False costs no tqdm)."""

    disable = True

    def update(self, n=1):
        pass

    def set_description(self, text):
        pass

    def set_postfix(self, *args, **kwargs):
        pass

    def close(self):
        pass


class ProgressBar(Callback):
    """A tqdm bar of steps: the epoch in its description, the latest metrics after it.

    ``tick`` is the bound ``update`` the strategy calls once per step, or None
    when the bar is off (the step loop then skips it). The bar turns itself off
    when stderr is not a terminal (CI logs).
    """

    def __init__(self, enabled: bool):
        self.enabled = bool(enabled)
        self.bar = _NoBar()
        self.tick = None

    def on_train_begin(self, state):
        if self.enabled:
            from tqdm.auto import tqdm  # noqa: PLC0415

            self.bar = tqdm(total=(state.epochs - state.epoch) * state.steps, initial=0, disable=None,
                            unit="step", dynamic_ncols=True, leave=True)
        self.tick = None if self.bar.disable else self.bar.update

    def on_epoch_begin(self, state):
        self.bar.set_description(f"epoch {state.epoch}/{state.epochs}")

    def on_epoch_end(self, state, record):
        if self.bar.disable:
            return False
        postfix = {"loss": _number(record["loss"], 4)}
        if record["accuracy"] is not None:
            postfix["acc"] = _number(record["accuracy"], 3)
        if record["val_loss"] is not None:
            postfix["val_loss"] = _number(record["val_loss"], 4)
        self.bar.set_postfix(postfix, refresh=False)
        return False

    def close(self):
        self.bar.close()


def _number(value, digits: int) -> str:
    """``value`` with ``digits`` decimals; a list (one value per model) as ``[a, b, ...]``."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(f"{v:.{digits}f}" for v in value) + "]"
    return f"{value:.{digits}f}"


class UserCallback(Callback):
    """A function ``fn(record, net)`` called after every epoch; a true result asks to stop."""

    def __init__(self, fn):
        self.fn = fn

    def on_epoch_end(self, state, record):
        return bool(self.fn(state.history.last(), state.net))
