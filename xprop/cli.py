"""The ``xprop`` command line (also ``python -m xprop``).

Subcommands::

    xprop train       train a network (default: the bundled digits), write model, history, curves
    xprop evaluate    loss and accuracy of a saved model on a dataset
    xprop predict     one prediction per example, to stdout or a file
    xprop gradcheck   analytic vs numeric gradients on every usable backend
    xprop check       the same net on every usable backend vs NumPy (does my GPU agree?)
    xprop info        versions, usable backends, GPU or why there is none
    xprop explain     the forward and backward equations with concrete shapes

Exit status: 0 success; 1 an error (one line ``xprop: error: ...`` on
stderr, no traceback; set ``XPROP_TRACEBACK=1`` to see one) or a failed
check; 2 a bad command line (argparse's usage error); 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import shlex
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

import numpy

from . import __version__, plots
from .activations import ACTIVATIONS, HIDDEN
from .backend import (
    BackendError,
    backend_name,
    backends,
    cupy_status,
    get_xp,
    gpu_info,
    to_numpy,
)
from .distributed import DistributedError
from .datasets import fit_scaler, apply_scaler, check_labels, load_data, load_digits
from .explain import explain
from .gradcheck import compare_backends, example_data, gradcheck
from .io import ModelFileError, load, read_npz
from .losses import LOSSES
from .network import MLP
from .optim import SGD, Adam
from .tolerances import tolerance
from .train import TrainingDiverged, evaluate, fit

__all__ = ["build_parser", "main"]

PROG = "xprop"
DATASETS = ("digits",)
STANDARDIZE = ("zscore", "minmax", "none")
OUTPUTS = tuple(ACTIVATIONS)
DEFAULT_HIDDEN = 128
# Errors that mean "the input was wrong", reported as one line and exit 1.
ERRORS = (ValueError, TypeError, OSError, ModelFileError, BackendError, TrainingDiverged,
          DistributedError)


# ------------------------------------------------------------------ argument types
def _layers(text: str) -> list[int]:
    """``"64,128,10"`` → ``[64, 128, 10]`` (argparse type)."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        sizes = []
    if len(sizes) < 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(
            f"expected at least two comma-separated positive integers like 64,128,10; got {text!r}")
    return sizes


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 1; got {text!r}")
    return value


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 0; got {text!r}")
    return value


def _number(text: str, lo: float, hi: float, lo_open: bool, hi_open: bool, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected {what}; got {text!r}")
    return value


def _positive_float(text):
    return _number(text, 0.0, float("inf"), True, True, "a number > 0")


def _nonnegative_float(text):
    return _number(text, 0.0, float("inf"), False, True, "a number ≥ 0")


def _momentum(text):
    return _number(text, 0.0, 1.0, False, True, "a number in [0, 1)")


def _validation(text):
    return _number(text, 0.0, 1.0, False, True, "a fraction in [0, 1) (0 = no validation)")


def _fraction(text):
    return _number(text, 0.0, 1.0, True, True, "a fraction in (0, 1)")


def _sizes_text(sizes) -> str:
    return ",".join(str(n) for n in sizes)


# ------------------------------------------------------------------------ output
_ASCII = str.maketrans({"×": "x", "ᵀ": ".T", "∘": "*", "Σ": "sum", "−": "-", "∂": "d", "≥": ">=",
                        "→": "->", "·": "*"})


def _out(text: str = "", file=None) -> None:
    """Print, falling back to ASCII where the terminal cannot encode ×, ᵀ, ∘."""
    file = sys.stdout if file is None else file
    try:
        print(text, file=file)
    except UnicodeEncodeError:
        print(text.translate(_ASCII).encode("ascii", "replace").decode("ascii"), file=file)


def _err(text: str) -> None:
    _out(text, file=sys.stderr)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in text:
        text = f"{text}: {exc.filename!r}"
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _table(header, rows) -> list[str]:
    """Left-aligned text columns."""
    rows = [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header).rstrip()] + [fmt.format(*r).rstrip() for r in rows]


def _shape(shape) -> str:
    return "×".join(str(n) for n in shape)


# -------------------------------------------------------------------------- data
def _data_arguments(p, *, split: bool, default_note: str) -> None:
    g = p.add_argument_group("data")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--data", metavar="PATH",
                     help="a .npz (arrays X, y, optional X_test, y_test), a .csv with a header row, "
                          "or MNIST IDX images (*-images-idx3-ubyte[.gz], labels beside it)")
    src.add_argument("--dataset", choices=DATASETS,
                     help=f"a dataset shipped with xprop ({default_note})")
    g.add_argument("--label-column", metavar="NAME",
                   help="CSV only: the column holding the labels (default: label)")
    g.add_argument("--test-fraction", type=_fraction, metavar="F",
                   help="hold out this fraction as the test split when the file has none "
                        "(ignored when it has one; digits has a fixed one)")
    if split:
        g.add_argument("--split", choices=("test", "train", "all"),
                       help="which examples to use (default: the test split if the data has one, "
                            "else all)")
        g.add_argument("--split-seed", type=_nonnegative_int, metavar="SEED",
                       help="seed of the --test-fraction hold-out (default: the model's when --data "
                            "is its training file, else 0)")
    return g


_FLAG_OF = {"path:": "--data:", "label_column:": "--label-column:", "test_fraction:": "--test-fraction:"}


def _load_raw(args, meta=None, seed=None):
    """The dataset named by --data/--dataset, unscaled, and how it was named.

    ``meta`` (a saved model's metadata) fills in --dataset when neither flag
    is given and the model was trained on a bundled dataset, and the
    held-out split settings when --data is the file the model was trained on.
    """
    if args.data is None and args.dataset is None:
        if meta is None:  # train: the bundled digits
            args.dataset = "digits"
        elif meta.get("dataset") in DATASETS and not meta.get("data_path"):
            args.dataset = meta["dataset"]
        elif meta.get("data_path"):
            raise ValueError(f"no data given: the model was trained on {meta['data_path']!r}; "
                             "pass --data PATH")
        else:
            raise ValueError("no data given: pass --data PATH (or --dataset digits)")
    meta = meta or {}
    if args.dataset == "digits":
        return load_digits(scale=False), {"dataset": "digits", "data_path": None}
    path = Path(args.data).expanduser()
    label_column, test_fraction = args.label_column, args.test_fraction
    if meta.get("data_path") and path.exists() and str(path.resolve()) == meta["data_path"]:
        # The training file again: hold out the same test examples as training did.
        label_column = meta.get("label_column") if label_column is None else label_column
        test_fraction = meta.get("test_fraction") if test_fraction is None else test_fraction
        seed = meta.get("split_seed") if seed is None else seed
    try:
        ds = load_data(path, label_column=label_column, test_fraction=test_fraction,
                       seed=0 if seed is None else seed)
    except (FileNotFoundError, ValueError, TypeError) as exc:
        # load_data names its arguments; say the flags instead.
        text = str(exc)
        for argument, flag in _FLAG_OF.items():
            if text.startswith(argument):
                text = flag + text[len(argument):]
        raise type(exc)(text) from None
    where = {"dataset": ds.name, "data_path": str(path.resolve()), "label_column": label_column,
             "test_fraction": test_fraction if ds.X_test is not None else None,
             "split_seed": 0 if seed is None else seed}
    return ds, where


def _scaler_to_meta(scaler):
    if scaler is None:
        return None
    return {"method": scaler["method"], "shift": numpy.asarray(scaler["shift"]).tolist(),
            "scale": numpy.asarray(scaler["scale"]).tolist()}


def _scaler_from_meta(scaler, n_features, path):
    if not scaler:
        return None
    try:
        shift, scale = numpy.asarray(scaler["shift"], float), numpy.asarray(scaler["scale"], float)
    except (KeyError, TypeError, ValueError):
        shift = scale = None
    if shift is None or shift.shape != (n_features,) or scale.shape != (n_features,):
        raise ModelFileError(f"model file {str(path)!r}: the stored scaler is not a shift and "
                             f"a scale of {n_features} numbers each")
    return {"method": scaler.get("method"), "shift": shift, "scale": scale}


def _pick_split(ds, split):
    """``(X, y, description)`` for --split (None: test if present, else all)."""
    has_test = ds.X_test is not None
    if split is None:
        split = "test" if has_test else "all"
    if split == "test":
        if not has_test:
            raise ValueError(f"the data {ds.name!r} has no test split; pass --test-fraction F "
                             "to hold one out, or --split all")
        return ds.X_test, ds.y_test, f"test split ({len(ds.y_test)} examples)"
    if split == "train":
        return ds.X_train, ds.y_train, f"train split ({len(ds.y_train)} examples)"
    if has_test:
        X = numpy.concatenate([ds.X_train, ds.X_test])
        y = numpy.concatenate([ds.y_train, ds.y_test])
    else:
        X, y = ds.X_train, ds.y_train
    note = "" if has_test else ", the data has no test split"
    return X, y, f"all {len(y)} examples{note}"


# ----------------------------------------------------------- classification glue
def _targets(output: str, n_out: int, y):
    """Targets for the net from integer labels: labels (softmax), 0/1 (one output), one-hot."""
    if output == "softmax":
        return y
    if n_out == 1:
        return y.astype(numpy.float64)
    return numpy.eye(n_out)[y]


def _in_layout(net, a):
    """Row-layout host data as ``net`` takes it (transposed for ``layout="columns"``)."""
    return a.T if net.layout == "columns" and a.ndim == 2 else a


def _classes(net, X):
    """Predicted class per example (host int64): argmax, or A > 0.5 for one output."""
    A = _in_layout(net, to_numpy(net.forward(_in_layout(net, X))[0]))
    if A.shape[1] == 1:
        return (A[:, 0] > 0.5).astype(numpy.int64)
    return numpy.argmax(A, axis=1)


def _check_layers(layers, n_features, n_classes, output, flag="--layers"):
    """Refuse a --layers list that does not fit the data, saying what it needs."""
    first, last = layers[0], layers[-1]
    example = _sizes_text([n_features, *layers[1:-1], n_classes])
    if first != n_features:
        raise ValueError(f"{flag} starts with {first} but the data has {n_features} features per "
                         f"example; the first entry must be {n_features} (e.g. {flag} {example})")
    ok = last == n_classes or (output != "softmax" and last == 1 and n_classes <= 2)
    if not ok:
        also = " (or 1 for a single 0/1 output)" if output != "softmax" and n_classes <= 2 else ""
        raise ValueError(f"{flag} ends with {last} but the data has {n_classes} classes "
                         f"(labels 0..{n_classes - 1}); the last entry must be {n_classes}{also} "
                         f"(e.g. {flag} {example})")


# ------------------------------------------------------------------------- train
def _default_out() -> Path:
    base = Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    out, i = base, 1
    while out.exists():
        i += 1
        out = base.with_name(f"{base.name}-{i}")
    return out


def _resume_command(argv, out) -> str:
    """The command that continues this run: the same flags, with --out DIR and --resume."""
    argv = list(argv)
    if not any(a == "--out" or a.startswith("--out=") for a in argv):
        argv += ["--out", str(out)]
    if "--resume" not in argv:
        argv.append("--resume")
    return shlex.join([PROG, *argv])


def _make_optimizer(args):
    if args.optimizer == "adam":
        if args.momentum:
            raise ValueError("--momentum applies to --optimizer sgd (Adam's moments are built in)")
        return Adam(lr=1e-3 if args.lr is None else args.lr, weight_decay=args.weight_decay)
    return SGD(lr=0.1 if args.lr is None else args.lr, momentum=args.momentum,
               weight_decay=args.weight_decay)


def _checkpoint_epoch(ckpt: Path, args) -> int:
    """Epochs held by the checkpoint to resume; refuses one from other settings."""
    _, meta = read_npz(ckpt, "checkpoint")
    config = meta.get("config")
    config = config if isinstance(config, dict) else {}
    for key, flag in (("batch_size", "--batch-size"), ("seed", "--seed")):
        if key in config and config[key] != getattr(args, key):
            raise ValueError(f"checkpoint {str(ckpt)!r} was written with {flag} {config[key]}; "
                             f"resume with the same {flag} (got {getattr(args, key)})")
    return int(meta.get("epoch", 0))


def cmd_train(args) -> int:
    if not args.distributed:
        return _train(args, None)
    from . import distributed  # noqa: PLC0415  (mpi4py only when asked for)

    ctx = distributed.init()   # before the net is built: picks this rank's GPU
    with ctx.fail_fast(passthrough=(TrainingDiverged,)):
        try:
            return _train(args, ctx)
        except TrainingDiverged:
            if ctx.is_root:    # every rank stops; one of them says why
                raise
            return 1


def _train(args, ctx) -> int:
    """``xprop train``; ``ctx`` is the MPI context of a ``--distributed`` run, else None."""
    if args.resume and args.out is None:
        raise ValueError("--resume needs --out DIR, the directory of the run to continue")
    if args.patience is not None and not args.validation:
        raise ValueError("--patience (early stopping) needs --validation > 0")
    out = Path(args.out) if args.out is not None else _default_out()
    if ctx is not None:        # the timestamped default differs per rank: rank 0's wins
        out = Path(ctx.bcast(str(out)))
    ckpt = out / "checkpoint.npz"
    if args.resume and not ckpt.exists():
        raise FileNotFoundError(f"nothing to resume: {str(ckpt)!r} does not exist")
    if not args.resume and ckpt.exists():
        raise ValueError(f"{str(out)!r} already holds a run (checkpoint.npz); pass --resume to "
                         "continue it, or choose another --out")

    # Data, scaled with statistics of the training split only.
    ds, where = _load_raw(args, seed=args.seed)
    method = None if args.standardize == "none" else args.standardize
    scaler = None if method is None else fit_scaler(ds.X_train, method)
    X_train = apply_scaler(ds.X_train, scaler)
    X_test = None if ds.X_test is None else apply_scaler(ds.X_test, scaler)
    n_features, n_classes = ds.n_features, ds.n_classes
    layers = args.layers or [n_features, DEFAULT_HIDDEN, n_classes]
    _check_layers(layers, n_features, n_classes, args.output)
    n_out = layers[-1]

    net = MLP(layers, activation=args.activation, output=args.output, loss=args.loss,
              backend=args.backend, dtype=args.dtype, seed=args.seed)
    optimizer = _make_optimizer(args)
    start = _checkpoint_epoch(ckpt, args) if args.resume else 0
    out.mkdir(parents=True, exist_ok=True)

    done = {"epoch": start}

    def track(record, _net):
        done["epoch"] = record["epoch"]

    t0 = time.perf_counter()
    try:
        history = fit(net, X_train, _targets(args.output, n_out, ds.y_train), epochs=args.epochs,
                      batch_size=args.batch_size, optimizer=optimizer,
                      validation=args.validation or None, seed=args.seed,
                      progress=not args.no_progress, checkpoint=ckpt, resume=args.resume,
                      patience=args.patience, callbacks=[track], distributed=ctx is not None,
                      strict_device=args.strict_device, gpu_mem_limit=args.gpu_mem_limit)
    except KeyboardInterrupt:
        n = done["epoch"]
        saved = (f"epochs 1-{n} are saved in {ckpt}" if n else "no epoch was completed, nothing saved")
        _err(f"xprop: interrupted at epoch {n + 1} of {args.epochs}; {saved}; "
             f"resume with: {_resume_command(args.argv, out)}")
        return 130
    seconds = time.perf_counter() - t0
    if ctx is not None and not ctx.is_root:
        return 0               # rank 0 writes the files and the summary

    metadata = {"dataset": ds.name, **{k: v for k, v in where.items() if k != "dataset"},
                "scaler": _scaler_to_meta(scaler), "n_classes": n_classes, "n_features": n_features,
                "targets": "labels" if args.output == "softmax" else ("0/1" if n_out == 1 else "one-hot")}
    net.save(out / "model.npz", metadata)
    history.to_json(out / "history.json")
    wrote = ["model.npz", "history.json", "checkpoint.npz"]
    curves_note = None
    try:
        plots.plot_history(history, out / "curves.png",
                           title=f"{ds.name}: {'-'.join(map(str, net.sizes))} {net.activation}")
        wrote.append("curves.png")
    except ImportError:
        curves_note = (f"curves.png not drawn: matplotlib is not installed; {plots.PLOT_HINT} "
                       "to get the picture")

    # Summary.
    last = history.last()
    m = len(ds.y_train)
    n_val = max(1, round(args.validation * m)) if args.validation else 0
    data_line = f"{ds.name}: {m} train examples"
    if n_val:
        data_line += f" ({m - n_val} fitted, {n_val} held out for validation)"
    data_line += f", {len(ds.y_test)} test" if X_test is not None else ", no test split"
    data_line += f"; {n_features} features, {n_classes} classes"
    data_line += f"; {method} standardisation (train statistics)" if method else "; not standardised"
    opt = optimizer
    opt_text = f"{opt.name} lr={opt.lr:g}"
    if getattr(opt, "momentum", 0):
        opt_text += f" momentum={opt.momentum:g}"
    if opt.weight_decay:
        opt_text += f" weight_decay={opt.weight_decay:g}"
    lines = [
        ("backend", f"{net.backend} ({net.dtype_name})"
                    + (f", data-parallel over {ctx.size} MPI ranks" if ctx is not None else "")),
        ("architecture", (f"{'-'.join(map(str, net.sizes))}, {net.activation} → {net.output}, "
                          f"loss {net.loss}, {net.n_params} parameters")),
        ("data", data_line),
        ("optimizer", f"{opt_text}, batch size {args.batch_size}"),
    ]
    epochs_text = f"{len(history)}"
    if start >= args.epochs:
        epochs_text += f" (the checkpoint already held {start} ≥ --epochs {args.epochs}; nothing trained)"
    elif start:
        epochs_text += f" (resumed after epoch {start})"
    if history.stopped_early:
        epochs_text += f", stopped early; best epoch {history.best_epoch} restored"
    lines.append(("epochs", epochs_text))
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
    if X_test is not None:
        y_test = _targets(args.output, n_out, ds.y_test)
        test = evaluate(net, X_test, y_test)
        acc = float(numpy.mean(_classes(net, X_test) == ds.y_test))
        lines.append(("test accuracy", f"{acc:.4f} (loss {test['loss']:.4f}, {test['n']} examples)"))
    else:
        lines.append(("test accuracy", "n/a (the data has no test split; pass --test-fraction F)"))
    lines.append(("seconds", f"{seconds:.2f}"))
    lines.append(("wrote", f"{out}{os.sep} " + ", ".join(wrote)))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        _out(f"{key + ':':<{width + 1}} {value}")
    if curves_note:
        _out(curves_note)
    return 0


# ---------------------------------------------------------------- evaluate/predict
def _model_and_data(args):
    net = load(args.model, backend=args.backend)
    meta = getattr(net, "metadata", None)
    meta = meta if isinstance(meta, dict) else {}
    ds, _ = _load_raw(args, meta, seed=args.split_seed)
    X, y, what = _pick_split(ds, args.split)
    k = net.sizes[0]
    if X.shape[1] != k:
        raise ValueError(f"the model {args.model!r} expects {k} features per example but the data "
                         f"{ds.name!r} has {X.shape[1]}")
    scaler = _scaler_from_meta(meta.get("scaler"), k, args.model)
    return net, meta, apply_scaler(X, scaler), y, what, scaler


def _n_classes(net, meta) -> int:
    n = meta.get("n_classes")
    if isinstance(n, int) and n >= 1:
        return n
    return net.sizes[-1] if net.sizes[-1] > 1 else 2


def cmd_evaluate(args) -> int:
    net, meta, X, y, what, scaler = _model_and_data(args)
    n_classes = _n_classes(net, meta)
    check_labels(y, n_classes)
    result = evaluate(net, _in_layout(net, X), _in_layout(net, _targets(net.output, net.sizes[-1], y)))
    acc = float(numpy.mean(_classes(net, X) == y))
    sizes = "-".join(map(str, net.sizes))
    scaled = f"{scaler['method']} scaler stored in the model" if scaler else "none"
    lines = [("model", (f"{args.model} ({sizes}, {net.activation} → {net.output}, "
                        f"{net.dtype_name} on {net.backend})")),
             ("data", f"{args.dataset or args.data}, {what}"),
             ("scaling", scaled),
             ("loss", f"{result['loss']:.4f}"),
             ("accuracy", f"{acc:.4f}")]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        _out(f"{key + ':':<{width + 1}} {value}")
    return 0


def cmd_predict(args) -> int:
    net, meta, X, _, what, _ = _model_and_data(args)
    if "n_classes" in meta or net.output == "softmax":
        rows = [str(int(c)) for c in _classes(net, X)]
    else:
        P = _in_layout(net, to_numpy(net.predict(_in_layout(net, X))))
        P = P.reshape(len(X), -1)
        rows = [",".join(f"{v:.9g}" if P.dtype.kind == "f" else str(v) for v in row) for row in P]
    text = "\n".join(rows) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
        _out(f"wrote {len(rows)} predictions for the {what} to {args.out}")
    return 0


# ------------------------------------------------------------- gradcheck / check


def _skipped_backends():
    usable, reason = cupy_status()
    return {} if usable else {"cupy": reason}


def cmd_gradcheck(args) -> int:
    layouts = ("rows", "columns") if args.layout == "both" else (args.layout,)
    rows, failures, reports = [], [], []
    for name in backends():
        for layout in layouts:
            net = MLP(args.layers, activation=args.activation, output=args.output, loss=args.loss,
                      backend=name, dtype=args.dtype, seed=args.seed, layout=layout)
            X, Y = example_data(net, args.batch, args.seed)
            report = gradcheck(net, X, Y, eps=args.eps)
            reports.append(report)
            for param, err in report.errors.items():
                ok = err <= report.tolerance and not report.kinks
                rows.append((name, layout, param, _shape(net.params[param].shape), f"{err:.3e}",
                             "pass" if ok else "FAIL"))
                if not ok:
                    idx, a, n, _ = report.worst[param]
                    failures.append(f"{name}/{layout} {param}{list(idx)}: analytic {a:.9g} vs "
                                    f"numeric {n:.9g}")
            if report.kinks:
                failures.append(f"{name}/{layout}: {report.kinks} pre-activation(s) within 10·eps of "
                                "the ReLU kink, where the numeric gradient is unreliable; "
                                "try another --seed")
    tol = reports[0].tolerance
    _out(f"gradcheck: {'-'.join(map(str, net.sizes))}, {net.activation} → {net.output} "
         f"(loss {net.loss}), {args.dtype}, batch {args.batch}, eps {args.eps:g}, "
         f"tolerance {tol:g} (relative error, analytic vs central differences in float64)")
    for line in _table(("backend", "layout", "param", "shape", "rel. error", "result"), rows):
        _out(line)
    for name, reason in _skipped_backends().items():
        _out(f"{name}: skipped ({reason})")
    for line in failures:
        _out(line)
    n_fail = sum(1 for r in rows if r[-1] != "pass")
    _out(f"{'FAILED' if n_fail or failures else 'PASSED'}: {len(rows) - n_fail} of {len(rows)} "
         "parameter checks passed")
    return 1 if (n_fail or failures) else 0


def cmd_check(args) -> int:
    net = MLP(args.layers, activation=args.activation, output=args.output, loss=args.loss,
              backend="numpy", dtype=args.dtype, seed=args.seed)
    X, Y = example_data(net, args.batch, args.seed)
    report = compare_backends(net, X, Y)
    tol = tolerance("backends", args.dtype)
    _out(f"check: the same {'-'.join(map(str, net.sizes))} net ({net.activation} → {net.output}, "
         f"{args.dtype}, batch {args.batch}) from identical weights on every usable backend, "
         "compared with numpy")
    _out(f"tolerance: {tol:g} (relative error; xprop/tolerances.py, 'backends', {args.dtype})")
    rows = [("numpy", "(reference)", "", "")]
    for name, errs in report.errors.items():
        for q, e in errs.items():
            rows.append((name, q, f"{e:.3e}", "pass" if e <= report.tolerance else "FAIL"))
    for line in _table(("backend", "quantity", "rel. error", "result"), rows):
        _out(line)
    for name, reason in report.skipped.items():
        _out(f"{name}: skipped ({reason})")
    if not report.errors:
        _out("nothing to compare: numpy is the only usable backend here")
        return 0
    _out(f"{'PASSED' if report.passed else 'FAILED'}: largest difference {report.max_error:.3e}")
    return 0 if report.passed else 1


# -------------------------------------------------------------------------- info
def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cupy_wheels() -> list[str]:
    """Installed CuPy distributions (read from package metadata; cupy is not imported)."""
    found = set()
    for dist in importlib.metadata.distributions():
        name = (dist.metadata.get("Name") or "").lower()
        if name == "cupy" or name.startswith("cupy-"):
            found.add(f"{name} {dist.version}")
    return sorted(found)


def _gib(n) -> str:
    return f"{n / 2**30:.1f} GiB"


def cmd_info(args) -> int:
    lines = [("xprop", f"{__version__} ({Path(__file__).resolve().parent})"),
             ("python", (f"{platform.python_version()} ({platform.python_implementation()}, "
                         f"{platform.system().lower()} {platform.machine()})")),
             ("numpy", numpy.__version__),
             ("tqdm", _dist_version("tqdm") or "not installed")]
    mpl = _dist_version("matplotlib")
    lines.append(("matplotlib", mpl or 'not installed (pip install "xprop[plot]" for curves.png)'))
    wheels = _cupy_wheels()
    cupy_text = ", ".join(wheels) if wheels else "not installed"
    if len(wheels) > 1:
        cupy_text += " (more than one CuPy wheel: uninstall all but one)"
    lines.append(("cupy", cupy_text))
    lines.append(("backends", ", ".join(backends()) + " (usable here)"))
    env = os.environ.get("XPROP_BACKEND", "").strip()
    try:
        auto = backend_name(get_xp("auto"))
    except (BackendError, ValueError) as exc:
        auto = f"unusable: {_one_line(exc)}"
    lines.append(("auto", f"{auto} (XPROP_BACKEND={env})" if env else f"{auto} (XPROP_BACKEND unset)"))
    usable, reason = cupy_status()
    if usable:
        try:
            devices = gpu_info()
        except Exception as exc:  # noqa: BLE001  (report it; `info` never fails on a device query)
            devices = []
            lines.append(("gpu", f"CuPy is usable ({reason}) but the device query failed: {exc}"))
        for d in devices:
            lines.append((f"gpu {d['id']}",
                          f"{d['name']}, {_gib(d['total_bytes'])} total, {_gib(d['free_bytes'])} free"))
    else:
        lines.append(("gpu", f"none usable: {reason}"))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        _out(f"{key + ':':<{width + 1}} {value}")
    return 0


# ----------------------------------------------------------------------- explain
def cmd_explain(args) -> int:
    _out(explain(args.layers, batch=args.batch, activation=args.activation, output=args.output,
                 loss=args.loss, layout=args.layout))
    return 0


# ------------------------------------------------------------------------ parser
def _net_arguments(p, *, layers, layers_help=None, dtype="float32", activation="relu"):
    g = p.add_argument_group("network")
    g.add_argument("--layers", type=_layers, default=layers, metavar="K,N1,...,NL",
                   help=layers_help or f"input features, units per layer, outputs (default: "
                                       f"{_sizes_text(layers)})")
    g.add_argument("--activation", choices=HIDDEN, default=activation,
                   help=f"hidden-layer activation (default: {activation})")
    g.add_argument("--output", choices=OUTPUTS, default="softmax",
                   help="output activation (default: softmax)")
    g.add_argument("--loss", choices=tuple(LOSSES),
                   help="default: the output's natural loss (softmax → cross_entropy, "
                        "sigmoid → binary_cross_entropy, else mse)")
    if dtype is not None:
        g.add_argument("--dtype", choices=("float32", "float64"), default=dtype,
                       help=f"parameter and activation dtype (default: {dtype})")
    return g


class _Formatter(argparse.HelpFormatter):
    """Wraps the description paragraph by paragraph (blank lines are kept)."""

    def _fill_text(self, text, width, indent):
        return "\n\n".join(textwrap.fill(" ".join(par.split()), width, initial_indent=indent,
                                         subsequent_indent=indent)
                           for par in text.split("\n\n"))


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error: ``xprop train: error: ... (see 'xprop train --help')``."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _byte_size(text: str) -> int:
    """``4G``, ``500M``, ``1024`` -> bytes (powers of 1024)."""
    units = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = (t[:-1], t[-1]) if t and t[-1] in units else (t, "")
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size like 4G, 500M or 1048576; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a size ≥ 1 byte; got {text!r}")
    return int(value)


def cmd_doctor(args) -> int:
    from . import doctor  # noqa: PLC0415

    return doctor.main(["--json"] if args.json else [])


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``xprop`` with every subcommand."""
    parser = _Parser(
        prog=PROG, allow_abbrev=False, formatter_class=_Formatter,
        description="Backpropagation from the derivation: train, check and explain hand-written "
                    "MLPs on NumPy or CuPy.",
        epilog="Run 'xprop COMMAND --help' for the flags of a command. Errors print one line; "
               "set XPROP_TRACEBACK=1 to get the traceback.")
    parser.add_argument("--version", action="version", version=f"xprop {__version__}")
    sub = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND",
                                parser_class=_Parser)

    parser.commands = {}

    def add(name, help_, description=None):
        description = description or f"{help_[0].upper()}{help_[1:]}."
        p = sub.add_parser(name, help=help_, description=description, allow_abbrev=False,
                           formatter_class=_Formatter)
        parser.commands[name] = p
        return p

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
    data = _data_arguments(p, split=False, default_note="default: digits")
    data.add_argument("--standardize", choices=STANDARDIZE, default="zscore",
                   help="feature scaling fitted on the training split and stored in the model "
                        "(default: zscore)")
    _net_arguments(p, layers=None,
                   layers_help="input features, units per layer, classes; must match the data "
                               f"(default: <features>,{DEFAULT_HIDDEN},<classes>, i.e. 64,128,10 "
                               "for digits)")
    g = p.add_argument_group("training")
    g.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="default: adam")
    g.add_argument("--lr", type=_positive_float, help="learning rate (default: 1e-3 for adam, "
                                                      "0.1 for sgd)")
    g.add_argument("--momentum", type=_momentum, default=0.0, help="sgd momentum (default: 0)")
    g.add_argument("--weight-decay", type=_nonnegative_float, default=0.0,
                   help="L2 penalty added to the gradient (default: 0)")
    g.add_argument("--epochs", type=_positive_int, default=30,
                   help="total epochs, counting resumed ones (default: 30)")
    g.add_argument("--batch-size", type=_positive_int, default=32, help="default: 32")
    g.add_argument("--validation", type=_validation, default=0.1,
                   help="fraction of the training split held out for validation, 0 for none "
                        "(default: 0.1)")
    g.add_argument("--patience", type=_positive_int, metavar="N",
                   help="stop when the validation loss has not improved for N epochs and keep "
                        "the best weights (default: off)")
    g.add_argument("--seed", type=_nonnegative_int, default=0,
                   help="seed of the initial weights, shuffling, validation and test hold-out "
                        "(default: 0)")
    g.add_argument("--backend", choices=("auto", "numpy", "cupy"), default="auto",
                   help="auto: CuPy when a GPU is usable (or $XPROP_BACKEND), else NumPy "
                        "(default: auto)")
    g.add_argument("--distributed", action="store_true",
                   help="data-parallel over MPI: mpiexec -n N xprop train --distributed ... "
                        "(needs xprop[dist]; see docs/distributed.md)")
    g.add_argument("--strict-device", action="store_true",
                   help="make any host/device copy or sync inside a training step an error (CuPy)")
    g.add_argument("--gpu-mem-limit", type=_byte_size, metavar="BYTES",
                   help="cap CuPy's memory pool, e.g. 4G or 500M (CuPy backend only)")
    g = p.add_argument_group("output")
    g.add_argument("--out", metavar="DIR",
                   help="run directory (default: runs/<YYYYmmdd-HHMMSS>/)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out DIR from its checkpoint.npz (same flags, "
                        "larger --epochs)")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress bar (it is off anyway when stderr is not a terminal)")
    p.set_defaults(func=cmd_train)

    # evaluate / predict
    for name, help_, func in (
        ("evaluate", "loss and accuracy of a saved model on a dataset", cmd_evaluate),
        ("predict", "one prediction per example (class index for classifiers)", cmd_predict),
    ):
        p = add(name, help_,
                f"{help_[0].upper()}{help_[1:]}. The features are scaled with the scaler stored in "
                "the model; uses the test split when the data has one (for the file the model "
                "was trained on, the same held-out examples), else every example.")
        p.add_argument("model", metavar="MODEL", help="a model.npz written by 'xprop train' or MLP.save")
        _data_arguments(p, split=True, default_note="default: the model's training dataset when "
                                                    "that was digits")
        p.add_argument("--backend", choices=("auto", "numpy", "cupy"), default="auto",
                       help="default: auto")
        if name == "predict":
            p.add_argument("--out", metavar="FILE",
                           help="write the predictions here, one per line (default: stdout)")
        p.set_defaults(func=func)

    # gradcheck
    p = add("gradcheck", "analytic vs numeric gradients on every usable backend",
            "Build a small net, compute its gradients by backprop and by central differences "
            "(float64, one parameter entry at a time: O(parameters) forward passes, keep it "
            "small), and print the relative error per parameter. Exit status 1 if any fails.")
    _net_arguments(p, layers=[4, 5, 3], dtype="float64")
    p.add_argument("--layout", choices=("rows", "columns", "both"), default="both",
                   help="examples as rows, as columns, or both (default: both)")
    p.add_argument("--batch", type=_positive_int, default=8, help="examples (default: 8)")
    p.add_argument("--eps", type=_positive_float, default=1e-6,
                   help="central-difference step (default: 1e-6)")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="weights and data (default: 0)")
    p.set_defaults(func=cmd_gradcheck)

    # check
    p = add("check", "does my GPU agree with my CPU? the same net on every backend vs NumPy",
            "Run the same forward and backward pass, from identical weights and data, on every "
            "usable backend and print each quantity's relative difference from NumPy. Backends "
            "that cannot run here are listed as skipped, with the reason. Exit status 1 if a "
            "backend disagrees beyond the tolerance table (xprop/tolerances.py).")
    _net_arguments(p, layers=[64, 128, 10], dtype="float32")
    p.add_argument("--batch", type=_positive_int, default=64, help="examples (default: 64)")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="weights and data (default: 0)")
    p.set_defaults(func=cmd_check)

    # info
    p = add("info", "versions, usable backends, the GPU or why there is none")
    p.set_defaults(func=cmd_info)

    # doctor
    p = add("doctor", "look at this machine: driver vs CuPy wheel, devices, caches, MPI/NCCL, BLAS",
            "One line per check with its fix; exit 1 when something is broken "
            "(see xprop/doctor.py for every check).")
    p.add_argument("--json", action="store_true", help="print the findings as a JSON list")
    p.set_defaults(func=cmd_doctor)

    # explain
    p = add("explain", "the forward and backward equations with concrete shapes",
            "Print, layer by layer, the forward and backward equations of a network with the "
            "shape of every array, taken from an actual MLP's forward and backward pass, e.g. "
            "'Z2 (m×2) = A1 (m×3) @ W2 (3×2) + b2 (2)'.")
    _net_arguments(p, layers=[4, 3, 2], dtype=None)
    p.add_argument("--batch", type=_positive_int, metavar="M",
                   help="substitute this batch size for m (default: write m)")
    p.add_argument("--layout", choices=("rows", "columns", "both"), default="both",
                   help="examples as rows, as columns, or both (default: both)")
    p.set_defaults(func=cmd_explain)
    return parser


def main(argv=None) -> int:
    """Run the command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the subcommand's parser, which names the right --help
        parser.commands.get(args.command, parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    args.argv = argv
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        _err("xprop: interrupted")
        return 130
    except BrokenPipeError:
        # The reader went away (xprop predict ... | head): stop quietly.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except ERRORS as exc:
        if os.environ.get("XPROP_TRACEBACK", "").strip() not in ("", "0"):
            raise
        _err(f"xprop: error: {_one_line(exc)}")
        return 1
