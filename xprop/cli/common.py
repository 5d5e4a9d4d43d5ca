"""What every ``xprop`` subcommand shares: argument types, output, data loading, parser classes.

The only module of the command line that knows how text reaches the
terminal (:func:`say` falls back to ASCII where ×, ᵀ, ∘ cannot be encoded)
and how the data flags turn into arrays.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import numpy

from ..activations import ACTIVATIONS, HIDDEN
from ..backend import to_numpy
from ..datasets import load_data, load_digits
from ..io import ModelFileError
from ..losses import LOSSES

PROG = "xprop"
DATASETS = ("digits",)
OUTPUTS = tuple(ACTIVATIONS)


# ------------------------------------------------------------------ argument types
def layer_sizes_arg(text: str) -> list[int]:
    """``"64,128,10"`` → ``[64, 128, 10]`` (argparse type)."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        sizes = []
    if len(sizes) < 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(
            f"expected at least two comma-separated positive integers like 64,128,10; got {text!r}")
    return sizes


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 1; got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 0; got {text!r}")
    return value


def number_in(text: str, lo: float, hi: float, lo_open: bool, hi_open: bool, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected {what}; got {text!r}")
    return value


def positive_float(text):
    return number_in(text, 0.0, float("inf"), True, True, "a number > 0")


def nonnegative_float(text):
    return number_in(text, 0.0, float("inf"), False, True, "a number ≥ 0")


def momentum_arg(text):
    return number_in(text, 0.0, 1.0, False, True, "a number in [0, 1)")


def validation_fraction(text):
    return number_in(text, 0.0, 1.0, False, True, "a fraction in [0, 1) (0 = no validation)")


def open_fraction(text):
    return number_in(text, 0.0, 1.0, True, True, "a fraction in (0, 1)")


def sizes_text(sizes) -> str:
    return ",".join(str(n) for n in sizes)


def net_arguments(p, *, layers, layers_help=None, dtype="float32", activation="relu"):
    g = p.add_argument_group("network")
    g.add_argument("--layers", type=layer_sizes_arg, default=layers, metavar="K,N1,...,NL",
                   help=layers_help or f"input features, units per layer, outputs (default: "
                                       f"{sizes_text(layers)})")
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


class Formatter(argparse.HelpFormatter):
    """Wraps the description paragraph by paragraph (blank lines are kept)."""

    def _fill_text(self, text, width, indent):
        return "\n\n".join(textwrap.fill(" ".join(par.split()), width, initial_indent=indent,
                                         subsequent_indent=indent)
                           for par in text.split("\n\n"))


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error: ``xprop train: error: ... (see 'xprop train --help')``."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def byte_size(text: str) -> int:
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


# ------------------------------------------------------------------------ output
_ASCII = str.maketrans({"×": "x", "ᵀ": ".T", "∘": "*", "Σ": "sum", "−": "-", "∂": "d", "≥": ">=",
                        "→": "->", "·": "*"})


def say(text: str = "", file=None) -> None:
    """Print, falling back to ASCII where the terminal cannot encode ×, ᵀ, ∘."""
    file = sys.stdout if file is None else file
    try:
        print(text, file=file)
    except UnicodeEncodeError:
        print(text.translate(_ASCII).encode("ascii", "replace").decode("ascii"), file=file)


def say_err(text: str) -> None:
    say(text, file=sys.stderr)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in text:
        text = f"{text}: {exc.filename!r}"
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def table(header, rows) -> list[str]:
    """Left-aligned text columns."""
    rows = [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header).rstrip()] + [fmt.format(*r).rstrip() for r in rows]


def shape_text(shape) -> str:
    return "×".join(str(n) for n in shape)


# -------------------------------------------------------------------------- data
def data_arguments(p, *, split: bool, default_note: str) -> None:
    g = p.add_argument_group("data")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--data", metavar="PATH",
                     help="a .npz (arrays X, y, optional X_test, y_test), a .csv with a header row, "
                          "or MNIST IDX images (*-images-idx3-ubyte[.gz], labels beside it)")
    src.add_argument("--dataset", choices=DATASETS,
                     help=f"a dataset shipped with xprop ({default_note})")
    g.add_argument("--label-column", metavar="NAME",
                   help="CSV only: the column holding the labels (default: label)")
    g.add_argument("--test-fraction", type=open_fraction, metavar="F",
                   help="hold out this fraction as the test split when the file has none "
                        "(ignored when it has one; digits has a fixed one)")
    if split:
        g.add_argument("--split", choices=("test", "train", "all"),
                       help="which examples to use (default: the test split if the data has one, "
                            "else all)")
        g.add_argument("--split-seed", type=nonnegative_int, metavar="SEED",
                       help="seed of the --test-fraction hold-out (default: the model's when --data "
                            "is its training file, else 0)")
    return g


_FLAG_OF = {"path:": "--data:", "label_column:": "--label-column:", "test_fraction:": "--test-fraction:"}


def load_raw(args, meta=None, seed=None):
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


def scaler_to_meta(scaler):
    if scaler is None:
        return None
    return {"method": scaler["method"], "shift": numpy.asarray(scaler["shift"]).tolist(),
            "scale": numpy.asarray(scaler["scale"]).tolist()}


def scaler_from_meta(scaler, n_features, path):
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


def pick_split(ds, split):
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
def label_targets(output: str, n_out: int, y):
    """Targets for the net from integer labels: labels (softmax), 0/1 (one output), one-hot."""
    if output == "softmax":
        return y
    if n_out == 1:
        return y.astype(numpy.float64)
    return numpy.eye(n_out)[y]


def in_layout(net, a):
    """Row-layout host data as ``net`` takes it (transposed for ``layout="columns"``)."""
    return a.T if net.layout == "columns" and a.ndim == 2 else a


def predicted_classes(net, X):
    """Predicted class per example (host int64): argmax, or A > 0.5 for one output."""
    A = in_layout(net, to_numpy(net.forward(in_layout(net, X))[0]))
    if A.shape[1] == 1:
        return (A[:, 0] > 0.5).astype(numpy.int64)
    return numpy.argmax(A, axis=1)


def check_layers(layers, n_features, n_classes, output, flag="--layers"):
    """Refuse a --layers list that does not fit the data, saying what it needs."""
    first, last = layers[0], layers[-1]
    example = sizes_text([n_features, *layers[1:-1], n_classes])
    if first != n_features:
        raise ValueError(f"{flag} starts with {first} but the data has {n_features} features per "
                         f"example; the first entry must be {n_features} (e.g. {flag} {example})")
    ok = last == n_classes or (output != "softmax" and last == 1 and n_classes <= 2)
    if not ok:
        also = " (or 1 for a single 0/1 output)" if output != "softmax" and n_classes <= 2 else ""
        raise ValueError(f"{flag} ends with {last} but the data has {n_classes} classes "
                         f"(labels 0..{n_classes - 1}); the last entry must be {n_classes}{also} "
                         f"(e.g. {flag} {example})")
