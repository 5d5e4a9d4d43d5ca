"""``xprop train``: train a network and write the run directory."""

from __future__ import annotations

import contextlib
import os
import shlex
import time
from datetime import datetime
from pathlib import Path

import numpy

from .. import plots
from ..datasets import apply_scaler, check_classes, fit_scaler
from ..distributed.errors import DistributedError
from ..fingerprint import differences, fingerprint
from ..io import read_npz
from ..network import MLP
from ..optim import SGD, Adam
from ..signals import exit_status, ignore_further, signal_name, terminate_as_interrupt
from ..train import TrainingDiverged, evaluate, fit
from ..train.checkpoint import read_checkpoint_config
from .sharded import global_counts, load_sharded
from ..train.checkpoint import history_path, read_checkpoint_config
from .rundir import check_run_directory, open_directory, remove_if_empty
from .common import (
    PROG,
    check_layers,
    byte_size,
    data_arguments,
    label_targets,
    load_raw,
    momentum_arg,
    net_arguments,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    one_line,
    predicted_classes,
    say,
    say_err,
    scaler_to_meta,
    validation_fraction,
)

STANDARDIZE = ("zscore", "minmax", "none")
_DIST_HELP = ("data-parallel over MPI: mpiexec -n N xprop train --distributed ... (needs xprop[dist]; "
              "see docs/distributed.md). full (the default): every rank loads the whole data; sharded: "
              "each rank only its rows, from --data 'part-{rank}.npz' or its rows of one big .npz / "
              "X.npy (memory-mapped)")
DEFAULT_HIDDEN = 128


def _default_out() -> Path:
    base = Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    out, i = base, 1
    while out.exists():
        i += 1
        out = base.with_name(f"{base.name}-{i}")
    return out


def _resume_command(argv, out, resume=True) -> str:
    """The command that continues this run: the same flags, with --out DIR and --resume
    (``resume=False``: the command that starts it again, without --resume)."""
    argv = list(argv)
    if not any(a == "--out" or a.startswith("--out=") for a in argv):
        argv += ["--out", str(out)]
    if resume and "--resume" not in argv:
        argv.append("--resume")
    if not resume:
        argv = [a for a in argv if a != "--resume"]
    return shlex.join([PROG, *argv])


def _saved_epochs(ckpt: Path) -> int:
    """Epochs held by the checkpoint on disk now (0: none, or none readable)."""
    if not ckpt.exists():
        return 0
    try:
        return int(read_npz(ckpt, "checkpoint")[1].get("epoch", 0))
    except (OSError, ValueError):
        return 0


def _interrupted_line(args, out: Path, exc: KeyboardInterrupt) -> str:
    """What to say when a signal stops training: the truth on disk, and the command that goes on."""
    name = signal_name(exc)
    head = "xprop: interrupted" if name == "SIGINT" else f"xprop: terminated by {name}"
    ckpt = out / "checkpoint.npz"
    saved = _saved_epochs(ckpt)
    if saved:
        return (f"{head} at epoch {saved + 1} of {args.epochs}; epochs 1-{saved} are saved in {ckpt}; "
                f"resume with: {_resume_command(args.argv, out)}")
    return (f"{head} at epoch 1 of {args.epochs}; no epoch was completed and nothing was saved; "
            f"start again with: {_resume_command(args.argv, out, resume=False)}")


def _make_optimizer(args):
    if args.optimizer == "adam":
        if args.momentum:
            raise ValueError("--momentum applies to --optimizer sgd (Adam's moments are built in)")
        return Adam(lr=1e-3 if args.lr is None else args.lr, weight_decay=args.weight_decay)
    return SGD(lr=0.1 if args.lr is None else args.lr, momentum=args.momentum,
               weight_decay=args.weight_decay)


# How the settings a resume must match are called on the command line.
_FLAGS = {"data": "--data", "labels": "--data (labels)", "standardize": "--standardize",
          "validation": "--validation", "patience": "--patience", "optimizer": "--optimizer",
          "lr": "--lr", "momentum": "--momentum", "weight_decay": "--weight-decay",
          "batch_size": "--batch-size", "seed": "--seed", "layers": "--layers",
          "activation": "--activation", "output": "--output", "loss": "--loss", "dtype": "--dtype"}


def _identity(args, ds, net, optimizer) -> dict:
    """The settings that make this run the run it is (a resume must match every one).

    Sharded, a rank holds its own rows only: fit compares the data, every shard's.
    """
    data = ({} if args.distributed == "sharded" else
            {"data": fingerprint(numpy, ds.X_train), "labels": fingerprint(numpy, ds.y_train)})
    return {**data, "standardize": args.standardize, "validation": args.validation, "patience": args.patience,
            "optimizer": optimizer.name, "lr": optimizer.lr, "momentum": getattr(optimizer, "momentum", 0.0),
            "weight_decay": optimizer.weight_decay, "batch_size": args.batch_size, "seed": args.seed,
            "layers": list(net.sizes), "activation": net.activation, "output": net.output,
            "loss": net.loss, "dtype": net.dtype_name}


def _checkpoint_epoch(ckpt: Path, args, identity: dict) -> int:
    """Epochs held by the checkpoint to resume; refuses one of another run, naming each difference."""
    epoch, config = read_checkpoint_config(ckpt)
    _, meta = read_npz(ckpt, "checkpoint")
    saved = (meta.get("metadata") or {}).get("run")
    if isinstance(saved, dict):
        diffs = differences(saved, identity, _FLAGS)
    else:   # a checkpoint written before runs recorded their flags
        diffs = [f"{flag}: {config[key]} in the checkpoint, {getattr(args, key)} now"
                 for key, flag in (("batch_size", "--batch-size"), ("seed", "--seed"))
                 if key in config and config[key] != getattr(args, key)]
    if diffs:
        raise ValueError(f"checkpoint {str(ckpt)!r} is from another run ({'; '.join(diffs)}); resume "
                         "with the same flags (only --epochs may change)")
    return epoch


class RankFailed(Exception):
    """Another rank of a --distributed job could not start (rank 0 reports its message)."""


class _Agreed(Exception):
    """Every rank stops before training; ``error`` is what rank 0 reports (None elsewhere)."""

    def __init__(self, error=None):
        super().__init__(error)
        self.error = error


class _Job:
    """What ``xprop train`` needs of an MPI job: one process unless --distributed.

    Attributes
    ----------
    ctx : xprop.distributed.Context or None
    is_root : bool
        This process writes the files and the summary.
    size : int
        Processes in the job.
    """

    def __init__(self, ctx=None):
        self.ctx = ctx
        self.is_root = ctx is None or ctx.is_root
        self.size = 1 if ctx is None else ctx.size

    def bcast(self, value):
        return value if self.ctx is None else self.ctx.bcast(value)

    def guard(self):
        """Abort every rank when one fails on its own (one process: nothing to do)."""
        if self.ctx is None:
            return contextlib.nullcontext()
        return self.ctx.fail_fast(passthrough=(TrainingDiverged, _Agreed))

    def agree(self, make):
        """``make()`` on every rank; if it fails on any, every rank stops and rank 0 says why.

        For the steps before training (flags, data, net, run directory), which
        every rank reaches: a rank that fails waits for the others instead of
        aborting them, so the job ends with one line from rank 0 and no
        traceback. Returns ``make()``'s value.
        """
        if self.ctx is None:
            return make()
        try:
            value, error = make(), None
        except (Exception, MemoryError) as exc:   # noqa: BLE001  (reported below, on rank 0)
            value, error = None, exc
        texts = self.ctx.allgather(None if error is None else one_line(error))
        failed = [(rank, text) for rank, text in enumerate(texts) if text is not None]
        if not failed:
            return value
        if not self.is_root:
            raise _Agreed()
        if error is not None:
            raise _Agreed(error)
        rank, text = failed[0]
        raise _Agreed(RankFailed(f"rank {rank} of {self.size}: {text}"))


def cmd_train(args) -> int:
    with terminate_as_interrupt():   # SIGTERM (docker stop, Slurm) stops training like Ctrl-C
        if not args.distributed:
            return _train(args, _Job())
        from .. import distributed  # noqa: PLC0415  (mpi4py only when asked for)

        job = _Job(distributed.init())   # before the net is built: picks this rank's GPU
        try:
            with job.guard():
                return _train(args, job)
        except _Agreed as agreed:          # refused before training, on every rank
            if agreed.error is None:
                return 1
            raise agreed.error from None
        except (TrainingDiverged, DistributedError):
            if job.is_root:    # raised alike on every rank; rank 0 says why
                raise
            return 1


def _run_directory(args, job) -> Path:
    """The run directory, checked against --resume and --force (the same one on every rank)."""
    if args.resume and args.out is None:
        raise ValueError("--resume needs --out DIR, the directory of the run to continue")
    if args.resume and args.force:
        raise ValueError("--force starts afresh and --resume continues: pass one of them")
    if args.patience is not None and not args.validation:
        raise ValueError("--patience (early stopping) needs --validation > 0")
    out = Path(args.out) if args.out is not None else _default_out()
    check_run_directory(args, out, probe_lock=job.is_root)   # rank 0 alone takes the lock later
    return out


class _Run:
    """The pieces of one ``xprop train``: data, scaler, net, optimizer, where it goes."""

    def __init__(self, args, job, out):
        self.args, self.job = args, job
        self.out = out
        self.ckpt = self.out / "checkpoint.npz"
        # Data, scaled with statistics of the training split only.
        self.method = None if args.standardize == "none" else args.standardize
        self.sharded, self.counts = args.distributed == "sharded", None
        if self.sharded:      # this rank's rows only; the statistics of all of them
            self.ds, self.where, self.scaler = load_sharded(args, job.ctx, self.method)
        else:
            self.ds, self.where = load_raw(args, seed=args.seed)
            self.scaler = None if self.method is None else fit_scaler(self.ds.X_train, self.method)
        ds = self.ds
        # a shard's labels are not the data's: the class check needs them all (not sharded)
        self.warnings = [] if self.sharded else check_classes(ds.y_train, ds.y_test, f"the data {ds.name!r}")
        self.X_train = apply_scaler(ds.X_train, self.scaler)
        self.X_test = None if ds.X_test is None else apply_scaler(ds.X_test, self.scaler)
        self.n_features, self.n_classes = ds.n_features, ds.n_classes
        layers = args.layers or [self.n_features, DEFAULT_HIDDEN, self.n_classes]
        check_layers(layers, self.n_features, self.n_classes, args.output)
        self.n_out = layers[-1]
        self.net = MLP(layers, activation=args.activation, output=args.output, loss=args.loss,
                       backend=args.backend, dtype=args.dtype, seed=args.seed)
        self.optimizer = _make_optimizer(args)
        self.identity = _identity(args, ds, self.net, self.optimizer)
        self.start = _checkpoint_epoch(self.ckpt, args, self.identity) if args.resume else 0
        self.metadata = {"dataset": ds.name, **{k: v for k, v in self.where.items() if k != "dataset"},
                         "scaler": scaler_to_meta(self.scaler), "n_classes": self.n_classes,
                         "n_features": self.n_features,
                         "targets": ("labels" if args.output == "softmax"
                                     else ("0/1" if self.n_out == 1 else "one-hot")),
                         "run": self.identity}


def _train(args, job) -> int:
    """``xprop train`` in one process, or as one rank of a --distributed job."""
    if args.resume and args.out is None:
        raise ValueError("--resume needs --out DIR, the directory of the run to continue")
    out = Path(job.bcast(str(Path(args.out) if args.out is not None else _default_out())))
    args.out = str(out)   # the timestamped default differs per rank: rank 0's wins
    run = job.agree(lambda: _Run(args, job, _run_directory(args, job)))
    lock, made = job.agree(lambda: open_directory(run.args, run.out, job.is_root))
    if not job.is_root:
        run.out.mkdir(parents=True, exist_ok=True)   # rank 0 made it (a file system of its own: here)
    if job.ctx is not None:
        job.ctx.interrupt_report = lambda exc: _interrupted_line(args, run.out, exc)
        job.ctx.failure_hint = lambda: _failure_hint(args, run.out)
    if job.is_root:
        for text in run.warnings:
            say_err(f"xprop: warning: {text}")
    t0 = time.perf_counter()
    try:
        history = fit(run.net, run.X_train, label_targets(args.output, run.n_out, run.ds.y_train),
                      epochs=args.epochs, batch_size=args.batch_size, optimizer=run.optimizer,
                      validation=args.validation or None, seed=args.seed,
                      progress=not args.no_progress, checkpoint=run.ckpt, resume=args.resume,
                      patience=args.patience,
                      distributed="sharded" if run.sharded else job.ctx is not None,
                      strict_device=args.strict_device, gpu_mem_limit=args.gpu_mem_limit,
                      rank_timeout=args.rank_timeout, overwrite=args.force, metadata=run.metadata)
        seconds = time.perf_counter() - t0
        if run.sharded:            # counts and test metrics of all shards (collective)
            run.counts = global_counts(run, job.ctx)
        if not job.is_root:
            return 0               # rank 0 writes the files and the summary
        wrote, curves_note = _write_run(run, history)
    except KeyboardInterrupt as exc:
        ignore_further()
        if job.is_root:
            remove_if_empty(made)
            lock.release()
        say_err(_interrupted_line(args, run.out, exc))
        return exit_status(exc)
    except BaseException:
        remove_if_empty(made)
        lock.release()
        raise
    lock.release()
    _summary(run, history, seconds, wrote)
    if curves_note:
        say(curves_note)
    return 0


def _failure_hint(args, out: Path) -> str:
    """What is on disk after a failure, and how to go on (true for what exists)."""
    saved = _saved_epochs(out / "checkpoint.npz")
    if saved:
        return (f"Epochs 1-{saved} are saved in {out / 'checkpoint.npz'}; resume with: "
                f"{_resume_command(args.argv, out)}")
    return "No epoch was saved."


def _write_run(run, history):
    """model.npz, history.json and (with matplotlib) curves.png; returns what was written."""
    ds, net = run.ds, run.net
    metadata = run.metadata
    out = run.out
    net.save(out / "model.npz", metadata)
    history.to_json(out / "history.json")
    wrote = ["model.npz", "history.json", "checkpoint.npz", history_path(run.ckpt).name]
    curves_note = None
    try:
        plots.plot_history(history, out / "curves.png",
                           title=f"{ds.name}: {'-'.join(map(str, net.sizes))} {net.activation}")
        wrote.append("curves.png")
    except ImportError:
        curves_note = (f"curves.png not drawn: matplotlib is not installed; {plots.PLOT_HINT} "
                       "to get the picture")
    return wrote, curves_note


def _data_line(run) -> str:
    args, ds, counts = run.args, run.ds, run.counts
    m = len(ds.y_train) if counts is None else counts["m"]
    n_val = (max(1, round(args.validation * m)) if args.validation else 0) if counts is None else counts["n_val"]
    data_line = f"{ds.name}: {m} train examples" + (f" in {run.job.size} shards" if counts else "")
    if n_val:
        data_line += f" ({m - n_val} fitted, {n_val} held out for validation)"
    if counts is not None:
        data_line += ", test split in the shards" if counts["test"] else ", no test split"
    else:
        data_line += f", {len(ds.y_test)} test" if run.X_test is not None else ", no test split"
    data_line += f"; {run.n_features} features, {run.n_classes} classes"
    data_line += f"; {run.method} standardisation (train statistics)" if run.method else "; not standardised"
    return data_line


def _optimizer_text(opt) -> str:
    opt_text = f"{opt.name} lr={opt.lr:g}"
    if getattr(opt, "momentum", 0):
        opt_text += f" momentum={opt.momentum:g}"
    if opt.weight_decay:
        opt_text += f" weight_decay={opt.weight_decay:g}"
    return opt_text


def _epochs_text(run, history) -> str:
    args, start = run.args, run.start
    epochs_text = f"{len(history)}"
    if start >= args.epochs:
        epochs_text += f" (the checkpoint already held {start} ≥ --epochs {args.epochs}; nothing trained)"
    elif start:
        epochs_text += f" (resumed after epoch {start})"
    if history.stopped_early:
        epochs_text += f", stopped early; best epoch {history.best_epoch} restored"
    return epochs_text


def _summary(run, history, seconds, wrote) -> None:
    """The lines ``xprop train`` prints at the end."""
    args, net, job = run.args, run.net, run.job
    lines = [
        ("backend", f"{net.backend} ({net.dtype_name})"
                    + (f", data-parallel over {job.size} MPI ranks" if job.ctx is not None else "")
                    + (" (each holding its shard)" if run.sharded else "")),
        ("architecture", (f"{'-'.join(map(str, net.sizes))}, {net.activation} → {net.output}, "
                          f"loss {net.loss}, {net.n_params} parameters")),
        ("data", _data_line(run)),
        ("optimizer", f"{_optimizer_text(run.optimizer)}, batch size {args.batch_size}"),
        ("epochs", _epochs_text(run, history)),
    ]
    last = history.last()
    if last:
        train = f"loss {last['loss']:.4f}"
        if last["accuracy"] is not None:
            train += f", accuracy {last['accuracy']:.4f}"
        lines.append(("final train", train))
        if last["val_loss"] is not None:
            val = f"loss {last['val_loss']:.4f}"
            if last["val_accuracy"] is not None:
                val += f", accuracy {last['val_accuracy']:.4f}"
            lines.append(("final val", val))
    if run.sharded:
        lines.append(("test accuracy", run.counts["test"] or "n/a (the shards hold no X_test, y_test)"))
    elif run.X_test is not None:
        y_test = label_targets(args.output, run.n_out, run.ds.y_test)
        test = evaluate(net, run.X_test, y_test)
        acc = float(numpy.mean(predicted_classes(net, run.X_test) == run.ds.y_test))
        lines.append(("test accuracy", f"{acc:.4f} (loss {test['loss']:.4f}, {test['n']} examples)"))
    else:
        lines.append(("test accuracy", "n/a (the data has no test split; pass --test-fraction F)"))
    lines.append(("seconds", f"{seconds:.2f}"))
    lines.append(("wrote", f"{run.out}{os.sep} " + ", ".join(wrote)))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        say(f"{key + ':':<{width + 1}} {value}")


def add_parsers(add) -> None:
    """The ``train`` subcommand."""
    # train
    p = add("train", "train a network and write model.npz, history.json, checkpoint.npz, curves.png",
            "Train an MLP. With no flags: the bundled digits, z-score standardisation with "
            "training statistics, 64-128-10 ReLU/softmax, Adam lr 1e-3, batch 32, 30 epochs, "
            "10% validation (about 0.97 test accuracy in under a second on a CPU).\n\n"
            "Writes into --out: model.npz (weights, architecture, dataset, scaler, class count), "
            "history.json, checkpoint.npz (after every epoch; --resume continues from it) and "
            "curves.png (needs matplotlib: pip install \"xprop[plot]\"). Ctrl-C stops training; "
            "the epochs completed so far stay in checkpoint.npz and the command that resumes "
            "is printed.")
    data = data_arguments(p, split=False, default_note="default: digits")
    data.add_argument("--standardize", choices=STANDARDIZE, default="zscore",
                   help="feature scaling fitted on the training split and stored in the model "
                        "(default: zscore)")
    net_arguments(p, layers=None,
                   layers_help="input features, units per layer, classes; must match the data "
                               f"(default: <features>,{DEFAULT_HIDDEN},<classes>, i.e. 64,128,10 "
                               "for digits)")
    g = p.add_argument_group("training")
    g.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="default: adam")
    g.add_argument("--lr", type=positive_float, help="learning rate (default: 1e-3 for adam, "
                                                      "0.1 for sgd)")
    g.add_argument("--momentum", type=momentum_arg, default=0.0, help="sgd momentum (default: 0)")
    g.add_argument("--weight-decay", type=nonnegative_float, default=0.0,
                   help="L2 penalty added to the gradient (default: 0)")
    g.add_argument("--epochs", type=positive_int, default=30,
                   help="total epochs, counting resumed ones (default: 30)")
    g.add_argument("--batch-size", type=positive_int, default=32, help="default: 32")
    g.add_argument("--validation", type=validation_fraction, default=0.1,
                   help="fraction of the training split held out for validation, 0 for none "
                        "(default: 0.1)")
    g.add_argument("--patience", type=positive_int, metavar="N",
                   help="stop when the validation loss has not improved for N epochs and keep "
                        "the best weights (default: off)")
    g.add_argument("--seed", type=nonnegative_int, default=0,
                   help="seed of the initial weights, shuffling, validation and test hold-out "
                        "(default: 0)")
    g.add_argument("--backend", choices=("auto", "numpy", "cupy"), default="auto",
                   help="auto: CuPy when a GPU is usable (or $XPROP_BACKEND), else NumPy "
                        "(default: auto)")
    g.add_argument("--distributed", nargs="?", const="full", choices=("full", "sharded"), help=_DIST_HELP)
    g.add_argument("--rank-timeout", type=positive_float, default=600.0, metavar="SECONDS",
                   help="--distributed: end the job when a rank waited this long for another (default: 600)")
    g.add_argument("--strict-device", action="store_true",
                   help="make any host/device copy or sync inside a training step an error (CuPy)")
    g.add_argument("--gpu-mem-limit", type=byte_size, metavar="BYTES",
                   help="cap CuPy's memory pool, e.g. 4G or 500M (CuPy backend only)")
    g = p.add_argument_group("output")
    g.add_argument("--out", metavar="DIR",
                   help="run directory (default: runs/<YYYYmmdd-HHMMSS>/)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out DIR from its checkpoint.npz (same flags, "
                        "larger --epochs; another run's data or flags are refused)")
    g.add_argument("--force", action="store_true",
                   help="start afresh in an --out DIR that holds a run or files of the names "
                        "this writes, writing over them")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress bar (it is off anyway when stderr is not a terminal)")
    p.set_defaults(func=cmd_train)
