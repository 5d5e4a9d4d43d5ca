"""``xprop sweep``: every combination of the swept settings, one stacked run per architecture.

::

    xprop sweep --lr 1e-3,3e-3,1e-2 --weight-decay 0,1e-4 --seeds 8
    xprop sweep --optimizer sgd --lr 0.01,0.1 --momentum 0,0.9 --layers 64,128,10 --layers 64,32,10

Each group of combinations with the same layer sizes and batch size trains as
one :func:`xprop.fit_many` call (:mod:`xprop.sweep`); one progress bar counts
the epochs of every net of the sweep. The run directory gets ``sweep.csv``
and ``sweep.json`` (the ranked combinations; the JSON also every net's
result and the settings), ``sweep.png`` (the metric against each swept
value, the seeds as spread) and ``groups/`` (each group's checkpoint while it
trains, its results when done), which ``--resume`` continues from.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from .. import plots, sweep
from ..datasets import apply_scaler, fit_scaler
from ..train.checkpoint import read_checkpoint_config
from ..activations import HIDDEN
from ..losses import LOSSES
from .common import (
    OUTPUTS,
    check_layers,
    data_arguments,
    label_targets,
    layer_sizes_arg,
    load_raw,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    say,
    say_err,
    sizes_text,
    table,
    validation_fraction,
)
from .train import DEFAULT_HIDDEN, STANDARDIZE, _default_out, _resume_command

__all__ = ["add_parsers", "cmd_sweep"]


def _values(kind, name):
    """An argparse type: comma-separated values, each checked by ``kind``."""
    def parse(text):
        items = [t.strip() for t in str(text).split(",")]
        if not all(items):
            raise argparse.ArgumentTypeError(f"{name} must be comma-separated values, e.g. 1e-3,1e-2; got {text!r}")
        out = [kind(t) for t in items]
        if len(set(out)) != len(out):
            raise argparse.ArgumentTypeError(f"{name} lists a value twice: {text!r}")
        return out
    parse.__name__ = name
    return parse


def _momenta(text):
    values = _values(float, "--momentum")(text)
    for v in values:
        if not 0 <= v < 1:
            raise argparse.ArgumentTypeError(f"--momentum values must be in [0, 1); got {v:g}")
    return values


class _Sweep:
    """What one ``xprop sweep`` works on: data, groups, run directory."""

    def __init__(self, args):
        self.args = args
        if args.resume and args.out is None:
            raise ValueError("--resume needs --out DIR, the directory of the sweep to continue")
        if args.patience is not None and not args.validation:
            raise ValueError("--patience (early stopping) needs --validation > 0")
        if args.optimizer == "adam" and any(args.momentum):
            raise ValueError("--momentum applies to --optimizer sgd (Adam's moments are built in)")
        self.out = Path(args.out) if args.out is not None else _default_out()
        self.groups_dir = self.out / "groups"
        if args.resume and not self.groups_dir.is_dir():
            raise FileNotFoundError(f"nothing to resume: {str(self.groups_dir)!r} does not exist")
        if not args.resume and self.groups_dir.exists():
            raise ValueError(f"{str(self.out)!r} already holds a sweep (groups/); pass --resume to "
                             "continue it, or choose another --out")
        self.ds, self.where = load_raw(args, seed=args.seed)
        ds = self.ds
        method = None if args.standardize == "none" else args.standardize
        scaler = None if method is None else fit_scaler(ds.X_train, method)
        self.X = apply_scaler(ds.X_train, scaler)
        self.X_test = None if ds.X_test is None else apply_scaler(ds.X_test, scaler)
        layers = args.layers or [[ds.n_features, DEFAULT_HIDDEN, ds.n_classes]]
        for lay in layers:
            check_layers(lay, ds.n_features, ds.n_classes, args.output)
        if len({tuple(lay[-1:]) for lay in layers}) != 1:
            raise ValueError("every --layers must end with the same number of outputs")
        self.n_out = layers[0][-1]
        lrs = args.lr or [1e-3 if args.optimizer == "adam" else 0.1]
        seeds = list(range(args.seed, args.seed + args.seeds))
        self.groups = sweep.sweep_groups(layers, args.batch_size, lrs, args.weight_decay, args.momentum,
                                         seeds)
        self.Y = label_targets(args.output, self.n_out, ds.y_train)
        self.test = None if self.X_test is None else (self.X_test, label_targets(args.output, self.n_out,
                                                                                  ds.y_test))

    def files(self, group):
        return self.groups_dir / f"{group.name}.npz", self.groups_dir / f"{group.name}.json"

    def config(self) -> dict:
        a = self.args
        return {"dataset": self.ds.name, "data_path": self.where.get("data_path"),
                "optimizer": a.optimizer, "activation": a.activation, "output": a.output, "loss": a.loss,
                "dtype": a.dtype, "epochs": a.epochs, "validation": a.validation, "patience": a.patience,
                "standardize": a.standardize, "seeds": a.seeds, "seed": a.seed,
                "groups": [{"layers": list(g.layers), "batch_size": g.batch_size, "nets": len(g)}
                           for g in self.groups]}


def _done(s) -> int:
    """Net-epochs a resumed sweep finds done: finished groups, and each checkpoint's epochs."""
    done = 0
    for group in s.groups:
        ckpt, finished = s.files(group)
        if finished.exists():
            done += len(group) * s.args.epochs
        elif ckpt.exists():
            done += len(group) * read_checkpoint_config(ckpt)[0]
    return done


def _bar(total, initial, enabled):
    if not enabled:
        return None
    from tqdm.auto import tqdm  # noqa: PLC0415

    return tqdm(total=total, initial=initial, disable=None, unit="epoch", dynamic_ncols=True,
                desc="sweep (net-epochs)")


def _write_json_atomic(path, data):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _run_groups(s, bar, trained):
    """Every group's results: read back where a group is done, else trained (resumed).

    ``trained["n"]`` counts the net-epochs trained by this process."""
    args, results = s.args, []
    for group in s.groups:
        ckpt, done = s.files(group)
        if done.exists():
            results += json.loads(done.read_text())
            continue
        counted = {"n": 0}

        def tick(record, net):
            counted["n"] += 1
            trained["n"] += 1
            if bar is not None:
                bar.update(1)

        runs = sweep.run_group(
            group, s.X, s.Y, args.optimizer, test=s.test,
            net_options={"activation": args.activation, "output": args.output, "loss": args.loss,
                         "dtype": args.dtype, "backend": args.backend},
            fit_options={"epochs": args.epochs, "validation": args.validation or None,
                         "patience": args.patience, "checkpoint": ckpt,
                         "resume": args.resume and ckpt.exists(), "callbacks": tick})
        if bar is not None:                   # stopped or diverged nets: their epochs not run
            bar.update(len(group) * args.epochs - counted["n"])
        _write_json_atomic(done, runs)
        results += runs
    return results


def cmd_sweep(args) -> int:
    s = _Sweep(args)
    s.groups_dir.mkdir(parents=True, exist_ok=True)
    total = sum(len(g) for g in s.groups) * args.epochs
    initial = _done(s) if args.resume else 0
    bar = _bar(total, initial, not args.no_progress)
    trained = {"n": 0}
    t0 = time.perf_counter()
    try:
        results = _run_groups(s, bar, trained)
    except KeyboardInterrupt:
        say_err(f"xprop: sweep interrupted; finished groups and each running group's last epoch are "
                f"saved in {s.groups_dir}; resume with: {_resume_command(args.argv, s.out)}")
        return 130
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    rows = sweep.rank(sweep.summarize(results))
    wrote = [sweep.write_csv(s.out / "sweep.csv", rows).name,
             sweep.write_json(s.out / "sweep.json", rows, results, s.config()).name]
    metric = "val_accuracy" if rows and rows[0].get("val_accuracy_mean") is not None else "val_loss"
    try:
        plots.plot_sweep(rows, s.out / "sweep.png", metric=metric,
                         title=f"{s.ds.name}: {args.optimizer}, {args.epochs} epochs, {args.seeds} seeds")
        wrote.append("sweep.png")
        note = None
    except ImportError:
        note = f"sweep.png not drawn: matplotlib is not installed; {plots.PLOT_HINT}"
    _print_table(rows, args.top)
    n_nets = sum(len(g) for g in s.groups)
    resumed = (f" (resumed: {initial} of {total} net-epochs were done, {trained['n']} trained now)"
               if args.resume else "")
    say(f"{len(rows)} combinations × {args.seeds} seeds = {n_nets} nets in {len(s.groups)} stacked "
        f"run(s), {seconds:.1f} s{resumed}; wrote {s.out}{os.sep} " + ", ".join(wrote))
    if note:
        say(note)
    return 0


def _pm(row, name, digits=4):
    mean, sd = row.get(f"{name}_mean"), row.get(f"{name}_std")
    return "-" if mean is None else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _print_table(rows, top):
    header = ("rank", "layers", "batch", "lr", "weight decay", "momentum", "val acc", "test acc",
              "epochs", "diverged")
    shown = rows if top is None else rows[:top]
    body = []
    for r in shown:
        diverged = f"{r['diverged']}/{r['seeds']}" if r["diverged"] else "-"
        if r["diverged"] == r["seeds"]:
            diverged = f"all {r['seeds']}"
        body.append((r["rank"], sizes_text(r["layers"]), r["batch_size"], f"{r['lr']:g}",
                     f"{r['weight_decay']:g}", f"{r['momentum']:g}", _pm(r, "val_accuracy"),
                     _pm(r, "test_accuracy"), f"{r['epochs_mean']:g}", diverged))
    for line in table(header, body):
        say(line)
    if top is not None and len(rows) > top:
        say(f"(the best {top} of {len(rows)}; all in sweep.csv)")


def add_parsers(add) -> None:
    """The ``sweep`` subcommand."""
    p = add("sweep", "train every combination of learning rates, weight decays, ... as stacked runs",
            "Train every combination of the swept settings (comma-separated values) times --seeds "
            "seeds. Combinations with the same --layers and --batch-size train together as one "
            "stacked run (xprop.fit_many), each net exactly as 'xprop train --seed S' would train it "
            "alone (a --test-fraction hold-out is drawn once, with --seed, so that every combination "
            "is tested on the same examples). "
            "Prints the combinations ranked by validation accuracy (mean ± spread over seeds) and "
            "writes sweep.csv, sweep.json and sweep.png into --out. A combination whose nets "
            "diverge is a row that says so. Ctrl-C stops; --resume continues.")
    data = data_arguments(p, split=False, default_note="default: digits")
    data.add_argument("--standardize", choices=STANDARDIZE, default="zscore",
                      help="feature scaling fitted on the training split (default: zscore)")
    g = p.add_argument_group("network")
    g.add_argument("--layers", type=layer_sizes_arg, action="append", metavar="K,N1,...,NL",
                   help="layer sizes; repeat to sweep architectures (default: "
                        f"<features>,{DEFAULT_HIDDEN},<classes>)")
    g.add_argument("--activation", choices=HIDDEN, default="relu", help="default: relu")
    g.add_argument("--output", choices=OUTPUTS, default="softmax", help="default: softmax")
    g.add_argument("--loss", choices=tuple(LOSSES), help="default: the output's natural loss")
    g.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="default: float32")
    g = p.add_argument_group("swept settings (comma-separated values)")
    g.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="default: adam")
    g.add_argument("--lr", type=_values(positive_float, "--lr"),
                   help="learning rates (default: 1e-3 for adam, 0.1 for sgd)")
    g.add_argument("--weight-decay", type=_values(nonnegative_float, "--weight-decay"), default=[0.0],
                   help="L2 penalties (default: 0)")
    g.add_argument("--momentum", type=_momenta, default=[0.0], help="sgd momenta (default: 0)")
    g.add_argument("--batch-size", type=_values(positive_int, "--batch-size"), default=[32],
                   help="batch sizes (default: 32)")
    g.add_argument("--seeds", type=positive_int, default=1,
                   help="seeds per combination: --seed, --seed+1, ... (default: 1)")
    g = p.add_argument_group("training")
    g.add_argument("--seed", type=nonnegative_int, default=0, help="the first seed (default: 0)")
    g.add_argument("--epochs", type=positive_int, default=30, help="default: 30")
    g.add_argument("--validation", type=validation_fraction, default=0.1,
                   help="fraction held out for validation, 0 for none (default: 0.1)")
    g.add_argument("--patience", type=positive_int, metavar="N", help="early stopping (default: off)")
    g.add_argument("--backend", choices=("auto", "numpy", "cupy"), default="auto", help="default: auto")
    g = p.add_argument_group("output")
    g.add_argument("--out", metavar="DIR", help="run directory (default: runs/<YYYYmmdd-HHMMSS>/)")
    g.add_argument("--resume", action="store_true", help="continue the sweep in --out DIR")
    g.add_argument("--top", type=positive_int, metavar="N", help="print only the best N rows")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sweep)
