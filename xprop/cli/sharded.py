"""``xprop train --distributed sharded``: each rank reads only its rows, the summary counts all.

:func:`load_sharded` opens this rank's shard (:func:`xprop.distributed.open_shard`)
and computes, over all shards, the class count and the feature scaler;
:func:`global_counts` sums the example counts and the test metrics of all
ranks after training. Both are collective: every rank calls them, in order.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy

from ..train import evaluate
from .common import label_targets, predicted_classes

__all__ = ["load_sharded", "global_counts"]


def _check_labels(y, args, rank) -> None:
    if y is None or not y.size:
        return
    if y.dtype.kind not in "iuf" or (y.dtype.kind == "f" and bool((y != numpy.round(y)).any())) \
            or int(y.min()) < 0:
        raise ValueError(f"--data {args.data}: the labels of rank {rank}'s rows are not integers ≥ 0")


def load_sharded(args, ctx, method):
    """``(ds, where, scaler)``: this rank's rows; the class count and scaler of all shards."""
    from ..distributed import DistributedError, global_scaler, open_shard  # noqa: PLC0415

    if args.data is None:
        raise ValueError("--distributed sharded needs --data: 'part-{rank}.npz' (one file per rank) "
                         "or one big .npz (numpy.savez) / X.npy that every rank reads its rows of")
    if args.test_fraction is not None:
        raise ValueError("--test-fraction does not apply to --distributed sharded: put the test rows "
                         "in the file(s) as X_test, y_test")
    X, y, X_test, y_test = open_shard(args.data, ctx.rank, ctx.size)
    for labels in (y, y_test):
        _check_labels(labels, args, ctx.rank)
    features = ctx.allgather(int(X.shape[1]), what="data shapes")
    if len(set(features)) != 1:
        raise DistributedError(f"--data {args.data}: the ranks' rows have different feature counts "
                               f"{features}; every shard must have the same columns")
    top = max((int(a.max()) for a in (y, y_test) if a is not None and a.size), default=-1)
    n_classes = int(ctx.allreduce_max([top], what="class count")[0]) + 1
    scaler = None if method is None else global_scaler(ctx, X, method)
    name = Path(args.data.replace("{rank}", "")).name.split(".")[0].rstrip("-_") or "data"
    ds = SimpleNamespace(X_train=X, y_train=y.astype(numpy.int64), X_test=X_test,
                         y_test=None if y_test is None else y_test.astype(numpy.int64), name=name,
                         n_features=features[0], n_classes=n_classes)
    where = {"dataset": name, "data_path": args.data, "label_column": None, "test_fraction": None,
             "split_seed": None, "sharded_over": ctx.size}
    return ds, where, scaler


def global_counts(run, ctx) -> dict:
    """Training and validation example counts and the test metrics, summed over the ranks."""
    args = run.args
    m = len(run.ds.y_train)
    stats = [m, max(1, round(args.validation * m)) if args.validation else 0, 0.0, 0.0, 0.0]
    if run.X_test is not None:
        test = evaluate(run.net, run.X_test, label_targets(args.output, run.n_out, run.ds.y_test))
        hits = float(numpy.sum(predicted_classes(run.net, run.X_test) == run.ds.y_test))
        stats[2:] = [test["loss"] * test["n"], hits, test["n"]]
    m, n_val, loss_sum, hits, n_test = ctx.allreduce_sum(stats, what="test metrics")
    test_line = None
    if n_test:
        test_line = (f"{hits / n_test:.4f} (loss {loss_sum / n_test:.4f}, {int(n_test)} examples "
                     f"over {ctx.size} ranks)")
    return {"m": int(m), "n_val": int(n_val), "test": test_line}
