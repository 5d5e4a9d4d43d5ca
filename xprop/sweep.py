"""Hyperparameter sweeps as stacked runs: every combination, one ``fit_many`` per architecture.

A sweep is the product of the values given for each swept setting (layer
sizes, batch size, learning rate, weight decay, momentum) times the seeds.
Combinations that share an architecture and a batch size train together as
one stacked run (:func:`xprop.fit_many`), each net with its own learning
rate, weight decay, momentum and seed; the seed draws a net's initial weights
and its hold-out split and shuffles, as ``xprop train --seed`` does. The
results are summarised per combination over its seeds (mean and spread) and
ranked by validation accuracy (validation loss for regression nets).

A combination whose nets diverge is a row that says so: the diverged seeds
count in ``diverged`` and are left out of the means.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import statistics
from pathlib import Path

from .network import MLP
from .optim import make_optimizer
from .train import TrainingDiverged, evaluate
from .train.many import fit_many

__all__ = ["Group", "sweep_groups", "run_group", "summarize", "rank", "write_csv", "write_json",
           "SWEPT", "CSV_COLUMNS"]

# The settings a sweep varies, in the order they appear in tables and files.
SWEPT = ("layers", "batch_size", "lr", "weight_decay", "momentum")

CSV_COLUMNS = ("rank", "layers", "batch_size", "lr", "weight_decay", "momentum", "seeds", "diverged",
               "epochs_mean", "val_accuracy_mean", "val_accuracy_std", "val_loss_mean",
               "test_accuracy_mean", "test_accuracy_std", "test_loss_mean")


class Group:
    """The combinations of one architecture and batch size: one stacked run.

    Attributes
    ----------
    layers : tuple of int
    batch_size : int
    members : list of dict
        ``{"lr", "weight_decay", "momentum", "seed"}`` per net, in stack order.
    """

    def __init__(self, layers, batch_size, members):
        self.layers, self.batch_size, self.members = tuple(layers), batch_size, members

    @property
    def name(self) -> str:
        return f"{'-'.join(map(str, self.layers))}_b{self.batch_size}"

    def __len__(self) -> int:
        return len(self.members)


def sweep_groups(layers, batch_sizes, lrs, weight_decays, momenta, seeds) -> list:
    """Every combination of the values, as :class:`Group` objects (one per layers × batch size)."""
    groups = []
    for lay, B in itertools.product(layers, batch_sizes):
        members = [{"lr": lr, "weight_decay": wd, "momentum": mom, "seed": seed}
                   for lr, wd, mom, seed in itertools.product(lrs, weight_decays, momenta, seeds)]
        groups.append(Group(lay, B, members))
    return groups


def run_group(group, X, Y, optimizer, test=None, net_options=None, fit_options=None) -> list:
    """Train a group's nets as one stacked run; one result dict per member.

    Parameters
    ----------
    group : Group
    X, Y
        Training data, as ``fit`` takes it.
    optimizer : {"sgd", "adam"}
        Each member's optimizer gets the member's lr, weight decay (and momentum: SGD).
    test : (X_test, Y_test) or None
        Each net's test loss and accuracy are measured on it after training
        (None for a diverged net).
    net_options : dict, optional
        :class:`~xprop.MLP` arguments besides the sizes and seed (activation,
        output, loss, dtype, backend).
    fit_options : dict, optional
        :func:`xprop.fit_many` arguments (epochs, validation, patience,
        checkpoint, resume, callbacks, progress, ...); the batch size, seeds
        and optimizers are the group's.

    Returns
    -------
    list of dict
        Per member: its settings, ``epochs`` trained, ``diverged`` (None or
        where), ``loss``/``accuracy`` of its last epoch, ``val_loss``/
        ``val_accuracy`` of its best epoch with patience (else its last), and
        ``test_loss``/``test_accuracy``.
    """
    nets, opts = [], []
    for mb in group.members:
        nets.append(MLP(list(group.layers), seed=mb["seed"], **(net_options or {})))
        hyper = {"lr": mb["lr"], "weight_decay": mb["weight_decay"]}
        if optimizer == "sgd":
            hyper["momentum"] = mb["momentum"]
        opts.append(make_optimizer(optimizer, **hyper))
    options = {"progress": False, **(fit_options or {})}
    try:
        hists = fit_many(nets, X, Y, batch_size=group.batch_size, optimizer=opts,
                         seed=[mb["seed"] for mb in group.members], **options)
    except TrainingDiverged as exc:           # every member diverged: each row says so
        hists = exc.histories
    results = []
    for mb, net, h in zip(group.members, nets, hists):
        r = {"layers": list(group.layers), "batch_size": group.batch_size, **mb, "epochs": len(h),
             "diverged": h.diverged, "stopped_early": h.stopped_early, "loss": None, "accuracy": None,
             "val_loss": None, "val_accuracy": None, "test_loss": None, "test_accuracy": None}
        if len(h):
            at = h.epoch.index(h.best_epoch) if h.best_epoch is not None else -1
            r.update(loss=h.loss[-1], accuracy=h.accuracy[-1], val_loss=h.val_loss[at],
                     val_accuracy=h.val_accuracy[at])
        if test is not None and h.diverged is None:
            scores = evaluate(net, *test)
            r.update(test_loss=scores["loss"], test_accuracy=scores["accuracy"])
        results.append(r)
    return results


def _key(r):
    return (tuple(r["layers"]), r["batch_size"], r["lr"], r["weight_decay"], r["momentum"])


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(results) -> list:
    """One row per combination: means and spreads over its seeds (diverged seeds left out)."""
    by = {}
    for r in results:
        by.setdefault(_key(r), []).append(r)
    rows = []
    for key, runs in by.items():
        ok = [r for r in runs if r["diverged"] is None]
        row = dict(zip(SWEPT, key))
        row["layers"] = list(row["layers"])
        row["seeds"] = len(runs)
        row["diverged"] = len(runs) - len(ok)
        row["epochs_mean"] = statistics.fmean(r["epochs"] for r in runs)
        for name in ("val_accuracy", "val_loss", "test_accuracy", "test_loss", "accuracy", "loss"):
            row[f"{name}_mean"], row[f"{name}_std"] = _mean_std(r[name] for r in ok)
        rows.append(row)
    return rows


def rank(rows) -> list:
    """Best first: by validation accuracy, else validation loss, else training loss; rows whose
    every seed diverged last. Adds ``rank`` (1-based)."""
    def score(row):
        if row["diverged"] == row["seeds"]:
            return (2, 0.0)
        for name, sign in (("val_accuracy_mean", -1), ("val_loss_mean", 1), ("accuracy_mean", -1),
                           ("loss_mean", 1)):
            if row[name] is not None and math.isfinite(row[name]):
                return (0, sign * row[name])
        return (1, 0.0)

    ranked = sorted(rows, key=score)
    for i, row in enumerate(ranked, start=1):
        row["rank"] = i
    return ranked


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, list):
        return "-".join(map(str, value))
    return value


def write_csv(path, rows) -> Path:
    """The ranked rows, one per combination (``CSV_COLUMNS``)."""
    path = Path(path)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for row in rows:
            w.writerow([_cell(row.get(c)) for c in CSV_COLUMNS])
    return path


def write_json(path, rows, results, config) -> Path:
    """The ranked rows, every run's result, and the sweep's settings."""
    path = Path(path)
    path.write_text(json.dumps({"config": config, "combinations": rows, "runs": results}, indent=2) + "\n")
    return path
