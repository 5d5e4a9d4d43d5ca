"""The parts of a ``fit_many`` run that are per model: the stack as the loop's net, the callbacks.

The loop (:func:`xprop.train.loop.run`) trains "a net" and keeps "a history";
for K stacked models these are:

- :class:`StackNet`: the stack as the net the loop and the checkpoint see: its
  ``params`` are the stacked ``(K, ...)`` arrays, so the checkpoint's
  ``param.*`` hold every model's weights; everything else (sizes, layout,
  dtype, output head, ...) is the architecture the K nets share.
- :class:`Members`: in place of fit's early stopping; after every epoch it
  gives each live model its own History entry, copies its weights into its
  net (the net always holds its latest finite epoch), runs its early
  stopping and its callbacks, and freezes a model that is done. It owns the
  per-model state a checkpoint must carry (RNGs, histories, early stopping,
  which models are frozen, their best weights) and asks the loop to stop when
  every model is.
- :class:`MembersGuard`: in place of fit's divergence guard; a model whose
  batch losses or weights stop being finite is frozen at its last finite
  epoch (its net already holds it, and so does its row of the stack again),
  and only when every model has diverged is :class:`TrainingDiverged` raised.

The loop's own History gets one list per field (a value per model); the
models' Histories are :meth:`Members.histories`.
"""

from __future__ import annotations

import hashlib
import json

import numpy

from ..backend import to_numpy
from .callbacks import Callback
from .history import History, TrainingDiverged

__all__ = ["StackNet", "Members", "MembersGuard"]

# What the loop and the checkpoint read of a net besides its params: the shared architecture.
_SHARED = ("xp", "dtype", "dtype_name", "sizes", "layout", "device", "head", "layers", "shape_text",
           "activation", "output", "loss", "init", "seed", "backend", "L")


class StackNet:
    """The stack of K nets as the training loop's net (see the module docstring)."""

    def __init__(self, stack):
        self.stack = stack

    def __getattr__(self, name):
        if name in _SHARED:
            return getattr(self.stack.net, name)
        raise AttributeError(f"a stack of nets has no {name!r} for the training loop")

    @property
    def params(self):
        return self.stack.params

    def set_params(self, params) -> None:
        xp, dtype = self.stack.xp, self.stack.dtype
        for name, p in self.stack.params.items():
            p[...] = xp.asarray(params[name], dtype=dtype)


class Members(Callback):
    """Per model: history, latest weights in its net, early stopping, callbacks, freezing.

    Parameters
    ----------
    members : list of dict
        In the stack's order (see :mod:`xprop.train.many`).
    stack : Stack
    optimizer : StackedOptimizer
    best : dict of (K, ...) arrays or None
        Room for the best weights of models with patience.
    write_back : bool
        Give each of the K optimizers its model's state at the end (they were
        the caller's instances, not copies of a template).
    """

    checkpoint_key = "members"
    array_prefix = "best"

    def __init__(self, members, stack, optimizer, best, write_back):
        self.members, self.stack, self.optimizer, self.best = members, stack, optimizer, best
        self.write_back = write_back

    def histories(self) -> list:
        """The K Histories in the caller's order."""
        out = [None] * len(self.members)
        for mb in self.members:
            out[mb["index"]] = mb["history"]
        return out

    def on_epoch_end(self, state, record):
        for j, mb in enumerate(self.members):
            if not mb["live"]:
                continue
            hist, net = mb["history"], mb["net"]
            seconds = record["seconds"]
            hist.append(epoch=record["epoch"], loss=record["loss"][j], accuracy=_at(record["accuracy"], j),
                        val_loss=_at(record["val_loss"], j), val_accuracy=_at(record["val_accuracy"], j),
                        seconds=seconds, samples_per_s=mb["m"] / seconds,
                        memory_used_bytes=record["memory_used_bytes"],
                        memory_total_bytes=record["memory_total_bytes"])
            self.stack.store(j, net)               # the net holds its latest finite epoch
            stop = self._early_stopping(j, mb, hist.val_loss[-1], record["epoch"])
            for cb in mb["callbacks"]:             # every callback runs, whatever the others asked
                if cb(hist.last(), net):
                    stop = True
            if stop:
                hist.stopped_early = True
                mb["live"], mb["frozen"] = False, "stopped"
        return not any(mb["live"] for mb in self.members)

    def _early_stopping(self, j, mb, val_loss, epoch) -> bool:
        if mb["patience"] is None:
            return False
        early = mb["early"]
        if early["best_loss"] is None or val_loss < early["best_loss"]:
            early.update(best_loss=val_loss, best_epoch=epoch, bad_epochs=0)
            for name, p in self.stack.params.items():
                self.best[name][j, ...] = p[j, ...]
            stop = False
        else:
            early["bad_epochs"] += 1
            stop = early["bad_epochs"] >= mb["patience"]
        mb["history"].best_epoch = early["best_epoch"]
        return stop

    def on_train_end(self, state):
        for j, mb in enumerate(self.members):
            if mb["patience"] is not None and mb["early"]["best_epoch"] is not None:
                self.stack.store(j, mb["net"], self.best)
        if self.write_back:
            self.optimizer.write_back(lambda j: self.members[j]["net"].params)

    # -- checkpoints: everything per model that the loop's state does not hold
    def _plan(self) -> list:
        """What must match on a resume: per model (stack order) its index, seed, sizes and rows."""
        return [[mb["index"], mb["seed"], mb["m"], mb["B"],
                 hashlib.sha256(numpy.ascontiguousarray(mb["rows"], dtype=numpy.int64).tobytes()).hexdigest()[:16]]
                for mb in self.members]

    def state_dict(self):
        meta = {"order": self._plan(),
                "hyperparameters": self.optimizer.hyperparameters(),
                "models": [{"rng_state": mb["rng"].bit_generator.state, "history": mb["history"].to_dict(),
                            "early": mb["early"], "frozen": mb["frozen"]} for mb in self.members]}
        return meta, dict(self.best or {})

    def load_state_dict(self, meta, arrays):
        if meta.get("order") != self._plan():
            raise ValueError("the checkpoint holds another set of nets (other seeds, rows, sizes or batch "
                             "size); resume needs the same nets, seeds, rows and batch size")
        mine = json.loads(json.dumps(self.optimizer.hyperparameters()))
        if meta.get("hyperparameters") != mine:
            raise ValueError(f"the checkpoint was written with other optimizers ({meta.get('hyperparameters')}); "
                             f"resume needs the same ones ({mine})")
        for mb, saved in zip(self.members, meta["models"]):
            mb["rng"].bit_generator.state = saved["rng_state"]
            mb["history"] = History.from_dict(saved["history"])
            mb["early"], mb["frozen"] = dict(saved["early"]), saved["frozen"]
            mb["live"] = saved["frozen"] is None
        if self.best is not None:
            xp = self.stack.xp
            for name, p in self.best.items():
                if name in arrays:
                    p[...] = xp.asarray(arrays[name], dtype=self.stack.dtype)


def _at(values, j):
    return None if values is None else values[j]


class MembersGuard(Callback):
    """Freeze a model whose loss or weights stop being finite; raise only when all have diverged."""

    def __init__(self, team: Members):
        self.team = team

    def on_epoch_result(self, state, result):
        team, stack = self.team, self.team.stack
        finite_rows = _rows_finite(stack)
        for j, mb in enumerate(team.members):
            if not mb["live"]:
                continue
            losses = numpy.ascontiguousarray(result.batch_losses[:mb["steps"], j])
            bad = numpy.flatnonzero(~numpy.isfinite(losses))
            if not bad.size and finite_rows[j]:
                continue
            step = int(bad[0]) + 1 if bad.size else mb["steps"]
            finite = losses[:step - 1]
            hist = mb["history"]
            last = float(finite[-1]) if finite.size else (hist.loss[-1] if hist.loss else None)
            hist.diverged = {"epoch": state.epoch, "step": step, "last_finite": last}
            mb["live"], mb["frozen"] = False, "diverged"
            stack.load(j, mb["net"])               # back to its last finite epoch: finite compute
        if all(mb["frozen"] == "diverged" for mb in team.members):
            where = team.members[-1]["history"].diverged
            exc = TrainingDiverged(where["epoch"], where["step"], where["last_finite"])
            exc.args = (f"every one of the {len(team.members)} nets diverged; the last: " + exc.args[0],)
            exc.histories = team.histories()
            raise exc


def _rows_finite(stack):
    """Per model, whether all its parameters are finite (one reduction, one read-back)."""
    xp = stack.xp
    with numpy.errstate(over="ignore", invalid="ignore"):
        if stack.flat is not None:
            ok = to_numpy(xp.isfinite(xp.sum(stack.flat, axis=1)))
            for j in numpy.flatnonzero(~ok):        # a sum may overflow with every entry finite
                ok[j] = bool(xp.all(xp.isfinite(stack.flat[j])))
            return ok
        ok = numpy.ones(stack.K, dtype=bool)
        for p in stack.params.values():
            ok &= to_numpy(xp.all(xp.isfinite(xp.reshape(p, (stack.K, -1))), axis=1)).astype(bool)
        return ok
