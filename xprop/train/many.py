"""``fit_many``: K nets of one architecture trained at once, as one stacked step.

A seed study, a learning-rate sweep, k-fold cross-validation or a bootstrap
ensemble is K trainings of the same architecture. ``fit_many`` runs them as
one: the parameters of the K nets are stacked (:mod:`xprop.stacked`), every
step is one batched forward/backward pass and one update of all of them, and
every model still gets exactly its own training::

    fit_many(nets, X, Y, **kw)[i]  ≡  fit(nets[i], X[rows[i]], Y[rows[i]], **kw_i)

Each model draws its own hold-out split and shuffle orders from its own seed
with the very calls ``fit`` makes (``SeedSequence(seed).spawn(2)``: one stream
for the validation split, one for the epochs' permutations), trains on its
own batches of ``min(batch_size, m_i)`` examples, and keeps its own optimizer
state, history, early stopping and divergence. On NumPy every operation on a
model's slice is the operation ``fit`` performs for it alone, so the weights
and History numbers agree bit for bit in practice (the tests hold them to the
tolerance table's bounds).

Unequal sizes
-------------
With ``rows`` of different lengths (k-fold folds), models differ in their
number of steps per epoch and in the size of their last batch. The models are
ordered by their number of steps (most first), so the ones with a batch in
step ``s`` are always the first ``k_s`` of the stack and the step runs on
those alone; a model without a batch in a step is not touched (its weights,
optimizer state and step count ``t`` stay as they are). Within a step the
batches of different sizes share one padded batch: each model's missing rows
are masked out of its output delta and its cost, each with its own ``1/m_i``
(see :mod:`xprop.stacked`).

A model in trouble
------------------
A model whose loss becomes NaN or inf (or whose weights stop being finite)
is frozen at the weights of its last finite epoch, and its History says where
(``history.diverged``); the others go on, unchanged by it. Only when every
model has diverged does ``fit_many`` raise :class:`~xprop.train.TrainingDiverged`.
A model whose patience runs out (or whose callback returns True) stops being
updated and, with patience, gets its best weights back, as ``fit`` does.
"""

from __future__ import annotations

import copy
import math

import numpy

from ..backend import to_numpy
from ..network import MLP
from ..optim import Adam, Optimizer, make_optimizer
from ..stacked import ARCHITECTURE_FIELDS, ReferenceStackedStep, Stack, StackedStep
from ..stacked_optim import StackedOptimizer
from ..validation import check_inputs, check_positive_int, check_seed
from .history import History
from .loop import Settings, run
from .members import Members, MembersGuard, StackNet
from .stacked import StackedStrategy

__all__ = ["fit_many", "check_nets"]

_FIELD_WORDS = {"sizes": "layer sizes", "activation": "activation", "output": "output", "loss": "loss",
                "dtype_name": "dtype", "backend": "backend", "layout": "layout"}


# ----------------------------------------------------------------- arguments
def check_nets(nets) -> list:
    """The nets as a list, all of one architecture; a clear error names the first that differs."""
    if isinstance(nets, MLP) or not isinstance(nets, (list, tuple)):
        raise TypeError(f"nets must be a list of MLPs; got {type(nets).__name__}")
    nets = list(nets)
    if not nets:
        raise ValueError("nets is empty: fit_many needs at least one MLP")
    for i, net in enumerate(nets):
        if not isinstance(net, MLP):
            raise TypeError(f"nets[{i}] must be an MLP; got {type(net).__name__}")
    seen = {}
    for i, net in enumerate(nets):
        if id(net) in seen:
            raise ValueError(f"nets[{i}] is the same object as nets[{seen[id(net)]}]; each model must be "
                             "its own MLP (build K nets, e.g. with different seeds)")
        seen[id(net)] = i
    first = nets[0]
    for i, net in enumerate(nets[1:], start=1):
        for name in ARCHITECTURE_FIELDS:
            a, b = getattr(net, name), getattr(first, name)
            if a != b:
                raise ValueError(
                    f"nets[{i}] differs from nets[0] in its {_FIELD_WORDS[name]}: {a!r} vs {b!r}; "
                    "fit_many stacks nets of one architecture (same layer sizes, activation, output, "
                    "loss, dtype, backend and layout)")
    return nets


def _per_member(name, value, K):
    """A list of K values: a list/tuple of K as given, anything else repeated."""
    if isinstance(value, (list, tuple)):
        if len(value) != K:
            raise ValueError(f"{name} as a list must have one entry per net ({K}); got {len(value)}")
        return list(value)
    return [value] * K


def _optimizers(optimizer, K):
    """K optimizers of one class: copies of one template, or K instances as given."""
    if isinstance(optimizer, (list, tuple)):
        opts = _per_member("optimizer", optimizer, K)
        for i, o in enumerate(opts):
            if not isinstance(o, Optimizer):
                raise TypeError(f"optimizer[{i}] must be an xprop optimizer; got {type(o).__name__}")
            if type(o) is not type(opts[0]):
                raise TypeError(f"optimizer[{i}] is a {type(o).__name__} and optimizer[0] a "
                                f"{type(opts[0]).__name__}: the K optimizers must be of one class")
        if len({id(o) for o in opts}) != K:
            raise ValueError("the K optimizers must be K distinct instances (each holds its net's state); "
                             "pass one instance to use it as a template for all")
        return opts, False
    if optimizer is None:
        template = Adam()
    elif isinstance(optimizer, str):
        template = make_optimizer(optimizer)
    elif isinstance(optimizer, Optimizer):
        template = optimizer
    else:
        raise TypeError("optimizer must be an xprop optimizer, 'sgd', 'adam', None or a list of K "
                        f"optimizers; got {type(optimizer).__name__}")
    return [_own_copy(template) for _ in range(K)], True


def _own_copy(opt):
    """A copy of an optimizer with its own state (arrays copied; modules and caches not)."""
    new = copy.copy(opt)
    new.state = {name: {s: opt._xp[name].asarray(a, copy=True) for s, a in st.items()}
                 for name, st in opt.state.items()}
    new._xp, new._scratch, new._flat = dict(opt._xp), {}, None
    return new


def _rows(rows, K, N):
    """K host index arrays into X (None: every model trains on all N rows); int32 where N allows,
    4 bytes an example like fit's permutation."""
    itype = _index_type(N)
    if rows is None:
        return [numpy.arange(N, dtype=itype)] * K
    if not isinstance(rows, (list, tuple)):
        raise TypeError(f"rows must be None or a list of {K} index arrays; got {type(rows).__name__}")
    if len(rows) != K:
        raise ValueError(f"rows must hold one index array per net ({K}); got {len(rows)}")
    out = []
    for i, r in enumerate(rows):
        a = numpy.asarray(to_numpy(r) if hasattr(r, "__array_namespace__") else r)
        if a.ndim != 1 or a.dtype.kind not in "iu" and not (a.size == 0):
            raise TypeError(f"rows[{i}] must be a 1-D array of integer row indices; got "
                            f"{a.ndim}-D {a.dtype}")
        if a.size == 0:
            raise ValueError(f"rows[{i}] is empty: model {i} would have no training examples")
        if a.min() < -N or a.max() >= N:
            raise IndexError(f"rows[{i}] holds indices outside X's {N} rows "
                             f"(from {int(a.min())} to {int(a.max())})")
        out.append(numpy.where(a < 0, a + N, a).astype(itype))
    return out


def _index_type(N):
    return numpy.int32 if N < 2**31 else numpy.int64


def _callbacks(callbacks, K):
    """Per member, a list of functions ``cb(record, net)``."""
    if callbacks is None:
        return [[] for _ in range(K)]
    if callable(callbacks):
        return [[callbacks] for _ in range(K)]
    callbacks = list(callbacks)
    if callbacks and all(isinstance(c, (list, tuple)) for c in callbacks):
        if len(callbacks) != K:
            raise ValueError(f"callbacks as per-net lists must have {K} entries; got {len(callbacks)}")
        per = [list(c) for c in callbacks]
    else:
        per = [callbacks for _ in range(K)]
    for i, cbs in enumerate(per):
        if not all(callable(cb) for cb in cbs):
            raise TypeError(f"callbacks of net {i} must be functions cb(record, net); got "
                            f"{[type(cb).__name__ for cb in cbs]}")
    return per


# ------------------------------------------------------------------ the data
def fit_many(nets, X, Y, epochs=20, batch_size=128, optimizer=None, validation=None, shuffle=True,
             seed=0, progress=True, checkpoint=None, resume=False, patience=None, callbacks=None,
             rows=None, distributed=False):
    """Train K nets of one architecture at once, each exactly as ``fit`` would alone.

    Parameters
    ----------
    nets : list of MLP
        K ≥ 1 nets with the same layer sizes, activation, output, loss,
        dtype, backend and layout, trained in place; they stay ordinary,
        independent nets.
    X : array, ``(N, k)`` (rows) or ``(k, N)`` (columns)
    Y : array
        Targets for X, as ``fit`` takes them.
    epochs, batch_size, validation, shuffle, progress
        As for :func:`xprop.fit`; the same for every model. A validation
        fraction is drawn per model, from the model's own seed and rows.
    optimizer : Optimizer, {"sgd", "adam"}, None or list of K Optimizers
        One instance is a template: each net trains with its own copy (its
        own state). K instances of one class (SGD or Adam) give each net its
        own hyperparameters; afterwards each holds its net's state, as after
        ``fit``.
    seed : int, None or list of K
        Each model's seed of its hold-out split and shuffling (a scalar: the
        same for all).
    checkpoint : str or Path, optional
        One file holding the whole stack (every model's weights, optimizer
        state, RNG state, history, early-stopping state), written atomically
        after every epoch.
    resume : bool
        Continue from ``checkpoint`` if it exists: bit for bit the run that
        was not interrupted.
    patience : int, None or list of K
        Early stopping per model (needs validation).
    callbacks : callable, list of callables, or list of K lists
        Called as ``cb(record, nets[i])`` after each of model i's epochs; True
        stops that model.
    rows : None or list of K index arrays
        Model i trains on ``X[rows[i]], Y[rows[i]]`` (k-fold training sets,
        bootstrap samples; sizes may differ); None: every model on all of X.
    distributed : bool
        Must be False: fit_many does not run over MPI.

    Returns
    -------
    list of History
        One per net. ``history.diverged`` is None, or ``{"epoch", "step",
        "last_finite"}`` for a net whose loss became NaN/inf there (its
        weights are those of its last finite epoch).

    Raises
    ------
    TrainingDiverged
        Only when every net diverged (``.histories`` holds the K histories).
    """
    if distributed is not False:
        raise ValueError(f"fit_many does not run distributed (got distributed={distributed!r}); train "
                         "the nets in one process, or call fit(..., distributed=True) per net")
    nets = check_nets(nets)
    K, net0 = len(nets), nets[0]
    epochs = check_positive_int("epochs", epochs)
    batch_size = check_positive_int("batch_size", batch_size)
    seeds = [check_seed(s) for s in _per_member("seed", seed, K)]
    patiences = _patiences(patience, K, validation)
    opts, from_template = _optimizers(optimizer, K)
    per_cb = _callbacks(callbacks, K)
    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint=<path> to resume from")
    _check_validation(validation)
    N = _examples(net0, X)
    members = []
    for i, r in enumerate(_rows(rows, K, N)):
        mb = _member(i, nets[i], r, validation, batch_size, seeds[i])
        mb.update(patience=patiences[i], callbacks=per_cb[i])
        members.append(mb)
    # the stack's order: most steps first, so the models with a batch in step s are a prefix
    members.sort(key=lambda mb: -mb["steps"])
    stack = Stack([mb["net"] for mb in members])
    opt = StackedOptimizer([opts[mb["index"]] for mb in members], stack)
    step = StackedStep(stack) if stack.fast else ReferenceStackedStep(stack)
    strategy = StackedStrategy(members, [sc if sc is not None else 1.0 for sc in opt.scale], validation)
    best = None
    if any(p is not None for p in patiences):
        best = (stack.views(stack.xp.empty((K, stack.P), dtype=stack.dtype)) if stack.fast else
                {name: stack.xp.asarray(p, copy=True) for name, p in stack.params.items()})
    team = Members(members, stack, opt, best, write_back=not from_template)
    settings = Settings(epochs, batch_size, opt, validation, shuffle, seeds[0], checkpoint, resume, None)
    run(StackNet(stack), X, Y, settings, strategy, (), progress, step=step, guard=MembersGuard(team),
        early=team)
    return team.histories()


def _patiences(patience, K, validation):
    out = _per_member("patience", patience, K)
    for i, p in enumerate(out):
        if p is not None:
            out[i] = check_positive_int("patience" if K == 1 else f"patience[{i}]", p)
            if validation is None:
                raise ValueError("patience (early stopping) needs validation data; pass validation=0.1 "
                                 "or (X_val, Y_val)")
    return out


def _check_validation(validation):
    if validation is None or isinstance(validation, (tuple, list)):
        return
    if not isinstance(validation, float) or isinstance(validation, bool):
        raise TypeError("validation must be None, a fraction in (0, 1) or a pair (X_val, Y_val); "
                        f"got {type(validation).__name__}")
    if not 0.0 < validation < 1.0:
        raise ValueError(f"validation as a fraction must be in (0, 1); got {validation!r}")


def _examples(net, X) -> int:
    """The number of examples in ``X`` (checked as fit checks it when it is not plainly 2-D)."""
    shape = getattr(X, "shape", None)
    if shape is None or len(shape) != 2:
        X = check_inputs(net, X)                  # raises the error fit would
        return int(X.shape[0])
    return int(shape[0] if net.layout == "rows" else shape[1])


def _member(i, net, rows, validation, batch_size, seed):
    """One model: its rows, the sizes of its split and batches, its RNG streams (as fit draws them)."""
    split_seq, shuffle_seq = numpy.random.SeedSequence(seed).spawn(2)
    m_all = int(rows.shape[0])
    n_val = 0
    if isinstance(validation, float):
        n_val = max(1, int(round(validation * m_all)))
        if n_val >= m_all:
            raise ValueError(f"validation={validation} leaves no training examples out of {m_all} "
                             f"for net {i}")
    m = m_all - n_val
    B = min(batch_size, m)
    return {"index": i, "net": net, "rows": rows, "seed": seed, "split_rng": numpy.random.default_rng(split_seq),
            "rng": numpy.random.default_rng(shuffle_seq), "m": m, "B": B, "steps": math.ceil(m / B),
            "history": History(), "frozen": None, "live": True,
            "early": {"best_loss": None, "best_epoch": None, "bad_epochs": 0}}
