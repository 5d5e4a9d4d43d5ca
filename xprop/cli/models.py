"""``xprop evaluate`` and ``xprop predict``: a saved model on a dataset."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy

from ..backend import to_numpy
from ..datasets import apply_scaler, check_labels
from ..io import load, write_text_atomic
from ..train import evaluate
from .common import data_arguments, in_layout, label_targets, load_raw, pick_split, predicted_classes, say, scaler_from_meta


def _model_and_data(args):
    net = load(args.model, backend=args.backend)
    meta = getattr(net, "metadata", None)
    meta = meta if isinstance(meta, dict) else {}
    ds, _ = load_raw(args, meta, seed=args.split_seed)
    X, y, what = pick_split(ds, args.split)
    k = net.sizes[0]
    if X.shape[1] != k:
        raise ValueError(f"the model {args.model!r} expects {k} features per example but the data "
                         f"{ds.name!r} has {X.shape[1]}")
    scaler = scaler_from_meta(meta.get("scaler"), k, args.model)
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
    result = evaluate(net, in_layout(net, X), in_layout(net, label_targets(net.output, net.sizes[-1], y)))
    acc = float(numpy.mean(predicted_classes(net, X) == y))
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
        say(f"{key + ':':<{width + 1}} {value}")
    return 0


def _check_predictions_path(args) -> None:
    """Refuse a --out that is a file this command reads, or any existing file without --force."""
    out = Path(args.out)
    reads = [("model", Path(args.model))]
    if args.data is not None:
        reads.append(("data", Path(args.data).expanduser()))
    for what, path in reads:
        if out.exists() and path.exists() and out.samefile(path):
            raise ValueError(f"--out {args.out!r} is the {what} file this command reads; choose "
                             "another --out")
    if out.is_dir():
        raise IsADirectoryError(f"--out {args.out!r} is a directory; give a file name")
    if out.exists() and not args.force:
        raise FileExistsError(f"--out {args.out!r} already exists; pass --force to write over it, or "
                              "choose another --out")


def cmd_predict(args) -> int:
    if args.out is not None:
        _check_predictions_path(args)
    net, meta, X, _, what, _ = _model_and_data(args)
    if "n_classes" in meta or net.output == "softmax":
        rows = [str(int(c)) for c in predicted_classes(net, X)]
    else:
        P = in_layout(net, to_numpy(net.predict(in_layout(net, X))))
        P = P.reshape(len(X), -1)
        rows = [",".join(f"{v:.9g}" if P.dtype.kind == "f" else str(v) for v in row) for row in P]
    text = "\n".join(rows) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        write_text_atomic(Path(args.out), text)
        say(f"wrote {len(rows)} predictions for the {what} to {args.out}")
    return 0


def add_parsers(add) -> None:
    """The ``evaluate`` and ``predict`` subcommands."""
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
        data_arguments(p, split=True, default_note="default: the model's training dataset when "
                                                    "that was digits")
        p.add_argument("--backend", choices=("auto", "numpy", "cupy"), default="auto",
                       help="default: auto")
        if name == "predict":
            p.add_argument("--out", metavar="FILE",
                           help="write the predictions here, one per line (default: stdout); an "
                                "existing file needs --force, and the model or data file read is "
                                "always refused")
            p.add_argument("--force", action="store_true",
                           help="write --out over an existing file (never over the model or the data)")
        p.set_defaults(func=func)
