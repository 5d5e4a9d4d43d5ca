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
import json
import math
import time
from pathlib import Path

import numpy

from .backend import memory_pool_bytes, to_numpy
from .io import FORMAT_VERSION, architecture, check_architecture, read_npz, write_npz_atomic
from .network import MLP
from .optim import Adam, Optimizer, make_optimizer
from .stacked import ARCHITECTURE_FIELDS, Stack, StackedOptimizer, StackedStep, gather_rows, reference_step
from .train import History, TrainingDiverged, _outputs_per_example, _permutation, _progress_bar
from .validation import check_inputs, check_positive_int, check_seed, check_targets

__all__ = ["fit_many"]

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
class _Source:
    """Examples a set of batches is gathered from: X rows and their targets (labels or rows)."""

    def __init__(self, net, X, T):
        xp = net.xp
        self.X = X
        self.labels = T if T.ndim == 1 else None
        self.Y = None if T.ndim == 1 else T
        self.truth = None
        if net.output == "softmax":
            self.truth = self.labels if self.labels is not None else xp.argmax(self.Y, axis=1)


class _Plan:
    """The batches of K models over one epoch: which rows each step gathers, and its constants.

    The same every epoch but for the rows themselves (the shuffle), so the
    per-step constants (``s``, counts, which rows are real) are made once.

    Parameters
    ----------
    sizes : list of int
        Examples per model (in the stack's order).
    batch : list of int
        Batch size per model.
    scale : list of float
        Per model, what ``1/m_i`` is multiplied by (plain SGD's lr, else 1).
    all_models : bool
        Every step holds all K models (validation: a model out of rows gets
        an empty, fully masked batch) instead of the first ``k_s``.
    """

    def __init__(self, net, sizes, batch, scale, all_models=False):
        K = len(sizes)
        self.K, self.sizes, self.batch = K, list(sizes), list(batch)
        self.counts = [math.ceil(m / B) for m, B in zip(sizes, batch)]   # steps per model
        self.n_steps = max(self.counts)
        self.steps = []                                    # (k, m, n_valid, offset, consts, s)
        cache, offset = {}, 0
        for s in range(self.n_steps):
            k = K if all_models else sum(1 for c in self.counts if c > s)
            n = tuple(max(0, min(batch[j], sizes[j] - s * batch[j])) for j in range(k))
            m = max(n)
            key = (k, n)
            if key not in cache:
                cache[key] = self._constants(net, k, m, n, scale)
            self.steps.append((k, m, n, offset, cache[key], s))
            offset += k * m
        self.total = offset
        # the fully regular steps (every model a full batch of one size): built in one go
        B0 = batch[0]
        self.regular = 0 if len(set(batch)) != 1 else min(m // B0 for m in sizes)

    @staticmethod
    def _constants(net, k, m, n, scale):
        """``(s, counts, row_counts, valid)`` of a step of ``k`` models with ``n`` rows each:
        ``row_counts`` and ``valid`` (k, m) are None unless the batch is padded."""
        xp, dtype, host_dtype = net.xp, net.dtype, numpy.dtype(net.dtype_name)
        s_host = numpy.asarray([scale[j] / n[j] if n[j] else 0.0 for j in range(k)])  # fit's s = scale / m
        counts = xp.reshape(xp.asarray([float(c or 1) for c in n], dtype=dtype), (k, 1, 1))
        if all(c == m for c in n):
            return xp.reshape(xp.asarray(s_host.astype(host_dtype)), (k, 1, 1)), counts, None, None
        valid = numpy.arange(m)[None, :] < numpy.asarray(n)[:, None]          # (k, m): real rows
        s = xp.asarray((valid * s_host[:, None]).astype(host_dtype)[:, :, None])
        return s, counts, list(n), xp.asarray(valid)

    def indices(self, orders):
        """All steps' row indices, one host array (step after step, ``k × m`` each)."""
        out = numpy.empty((self.total,), dtype=orders[0].dtype)
        done = 0
        if self.regular:
            B, R = self.batch[0], self.regular
            block = out[:R * self.K * B].reshape(R, self.K, B)
            for j, o in enumerate(orders):
                block[:, j, :] = o[:R * B].reshape(R, B)
            done = R
        for k, m, n, offset, _, s in self.steps[done:]:
            view = out[offset:offset + k * m].reshape(k, m)
            for j in range(k):
                B = self.batch[j]
                rows = orders[j][s * B:s * B + n[j]]
                view[j, :n[j]] = rows
                view[j, n[j]:] = orders[j][0]             # padding: a real row, masked out
        return out


class _Gather:
    """Batch buffers of K models, filled by one ``take`` per array from a flat index."""

    def __init__(self, net, K, capacity, fast):
        xp = net.xp
        self.xp, self.fast, self.net = xp, fast, net
        self.k_in, self.n_out = net.sizes[0], net.sizes[-1]
        self.eye = xp.eye(self.n_out, dtype=net.dtype)
        if fast:
            self.Xb = xp.empty((K * capacity, self.k_in), dtype=net.dtype)
            self.Yb = xp.empty((K * capacity, self.n_out), dtype=net.dtype)
            self.lab = xp.empty((K * capacity,), dtype=xp.int64)

    def __call__(self, src, idx, k, m):
        xp, n = self.xp, k * m
        if self.fast:
            Xb = gather_rows(xp, True, src.X, idx, self.Xb[:n])
            if src.labels is None:
                Yb = gather_rows(xp, True, src.Y, idx, self.Yb[:n])
            else:
                lab = gather_rows(xp, True, src.labels, idx, self.lab[:n])
                Yb = gather_rows(xp, True, self.eye, lab, self.Yb[:n])
        else:
            Xb = xp.take(src.X, idx, axis=0)
            Yb = (xp.take(src.Y, idx, axis=0) if src.labels is None
                  else xp.take(self.eye, xp.take(src.labels, idx, axis=0), axis=0))
        Xb = xp.reshape(Xb, (k, m, self.k_in))
        Yb = xp.reshape(Yb, (k, m, self.n_out))
        return Xb, Yb


def _hits(net, xp, AL, Yb, truth_b, valid):
    """Correct predictions per model ``(k,)`` int64 (None for regression nets)."""
    if net.output == "softmax":
        hits = xp.argmax(AL, axis=2) == truth_b
        if valid is not None:
            hits = hits & valid
        return xp.sum(xp.astype(hits, xp.int64), axis=1)
    if net.output == "sigmoid":
        hits = (AL > 0.5) == (Yb > 0.5)
        if valid is not None:
            hits = hits & valid[:, :, None]
        return xp.sum(xp.astype(hits, xp.int64), axis=(1, 2))
    return None


# --------------------------------------------------------------- checkpoints
def _state_arrays(stack, opt, best):
    arrays = {f"param.{k}": v for k, v in stack.params.items()}
    for s in opt.state_names:
        arrays.update({f"opt.{s}.{k}": v for k, v in opt.state[s].items()})
    if best is not None:
        arrays.update({f"best.{k}": v for k, v in best.items()})
    return arrays


def _write_checkpoint(path, stack, opt, best, epoch, members, config):
    from . import __version__  # noqa: PLC0415

    meta = {
        "format_version": FORMAT_VERSION, "kind": "checkpoint-many", "xprop_version": __version__,
        "architecture": architecture(stack.net), "epoch": epoch, "K": stack.K,
        "order": [mb["index"] for mb in members],
        "optimizer": {"name": opt.opts[0].name, "t": [int(t) for t in opt.t],
                      "hyperparameters": [o.hyperparameters() for o in opt.opts]},
        "members": [{"rng_state": mb["rng"].bit_generator.state, "history": mb["history"].to_dict(),
                     "early": mb["early"], "frozen": mb["frozen"]} for mb in members],
        "config": config,
    }
    write_npz_atomic(path, _state_arrays(stack, opt, best), meta)


def _read_checkpoint(path, stack, opt, best, members, config):
    arrays, meta = read_npz(path, "checkpoint")
    if meta.get("kind") != "checkpoint-many":
        raise ValueError(f"checkpoint {str(path)!r} is a {meta.get('kind')} file, not a fit_many checkpoint")
    check_architecture(stack.net, meta["architecture"], path, "checkpoint")
    if meta["K"] != stack.K or meta["order"] != [mb["index"] for mb in members]:
        raise ValueError(f"checkpoint {str(path)!r} holds {meta['K']} nets trained with other sizes or "
                         f"rows; resume needs the same {stack.K} nets, rows and batch size")
    saved = meta["optimizer"]
    if saved["name"] != opt.opts[0].name or saved["hyperparameters"] != json.loads(json.dumps(
            [o.hyperparameters() for o in opt.opts])):
        raise ValueError(f"checkpoint {str(path)!r} was written with other optimizers "
                         f"({saved['name']} {saved['hyperparameters']}); resume needs the same ones")
    for key in ("batch_size", "shuffle", "seeds", "validation"):
        if meta["config"].get(key) != config.get(key):
            raise ValueError(f"checkpoint {str(path)!r} was written with {key}={meta['config'].get(key)!r}; "
                             f"resume needs the same, got {config.get(key)!r}")
    xp = stack.xp
    for name, p in stack.params.items():
        p[...] = xp.asarray(arrays[f"param.{name}"], dtype=stack.dtype)
    for s in opt.state_names:
        for name, p in opt.state[s].items():
            p[...] = xp.asarray(arrays[f"opt.{s}.{name}"], dtype=stack.dtype)
    opt.t[:] = saved["t"]
    if best is not None and f"best.{next(iter(best))}" in arrays:
        for name, p in best.items():
            p[...] = xp.asarray(arrays[f"best.{name}"], dtype=stack.dtype)
    for mb, saved_mb in zip(members, meta["members"]):
        mb["rng"].bit_generator.state = saved_mb["rng_state"]
        mb["history"] = History.from_dict(saved_mb["history"])
        mb["early"] = dict(saved_mb["early"])
        mb["frozen"] = saved_mb["frozen"]
    return int(meta["epoch"])


# ------------------------------------------------------------------ fit_many
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
    K = len(nets)
    net0 = nets[0]
    epochs = check_positive_int("epochs", epochs)
    batch_size = check_positive_int("batch_size", batch_size)
    seeds = [check_seed(s) for s in _per_member("seed", seed, K)]
    patiences = _per_member("patience", patience, K)
    for i, p in enumerate(patiences):
        if p is not None:
            patiences[i] = check_positive_int("patience" if K == 1 else f"patience[{i}]", p)
            if validation is None:
                raise ValueError("patience (early stopping) needs validation data; pass validation=0.1 "
                                 "or (X_val, Y_val)")
    opts, from_template = _optimizers(optimizer, K)
    per_cb = _callbacks(callbacks, K)
    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint=<path> to resume from")
    if checkpoint is not None and not Path(checkpoint).parent.is_dir():
        raise FileNotFoundError(f"checkpoint {str(checkpoint)!r}: its directory "
                                f"{str(Path(checkpoint).parent)!r} does not exist; create it first")

    xp = net0.xp
    Xr = check_inputs(net0, X)
    N = int(Xr.shape[0])
    T = check_targets(net0, Y, N, keep_labels=True)
    source = _Source(net0, Xr, T)
    row_sets = _rows(rows, K, N)
    val_source = None
    if isinstance(validation, (tuple, list)) and not isinstance(validation, str):
        if len(validation) != 2:
            raise TypeError("validation must be None, a fraction in (0, 1) or a pair (X_val, Y_val)")
        Xv = check_inputs(net0, validation[0], name="validation X")
        Tv = check_targets(net0, validation[1], Xv.shape[0], name="validation Y", keep_labels=True)
        val_source = _Source(net0, Xv, Tv)
    elif validation is not None:
        if not isinstance(validation, float) or isinstance(validation, bool):
            raise TypeError("validation must be None, a fraction in (0, 1) or a pair (X_val, Y_val); "
                            f"got {type(validation).__name__}")
        if not 0.0 < validation < 1.0:
            raise ValueError(f"validation as a fraction must be in (0, 1); got {validation!r}")

    # ---- each model's own split and shuffle stream, as fit draws them
    members = []
    for i in range(K):
        split_seq, shuffle_seq = numpy.random.SeedSequence(seeds[i]).spawn(2)
        base = row_sets[i]
        train, val = base, None
        if isinstance(validation, float):
            m_all = base.shape[0]
            n_val = max(1, int(round(validation * m_all)))
            if n_val >= m_all:
                raise ValueError(f"validation={validation} leaves no training examples out of {m_all}"
                                 + (f" for net {i}" if K > 1 else ""))
            order = _permutation(numpy.random.default_rng(split_seq), m_all)
            val, train = base[order[:n_val]], base[order[n_val:]]
        elif val_source is not None:
            val = numpy.arange(int(val_source.X.shape[0]), dtype=_index_type(int(val_source.X.shape[0])))
        m = int(train.shape[0])
        B = min(batch_size, m)
        members.append({
            "index": i, "net": nets[i], "train": train, "val": val, "m": m, "B": B,
            "steps": math.ceil(m / B), "rng": numpy.random.default_rng(shuffle_seq),
            "history": History(), "frozen": None, "patience": patiences[i], "callbacks": per_cb[i],
            "early": {"best_loss": None, "best_epoch": None, "bad_epochs": 0},
        })
    # the stack's order: most steps first, so the models with a batch in step s are a prefix
    members.sort(key=lambda mb: -mb["steps"])
    order_nets = [mb["net"] for mb in members]
    stack = Stack(order_nets)
    opt = StackedOptimizer([opts[mb["index"]] for mb in members], stack)
    fast = stack.fast
    step = StackedStep(stack) if fast else reference_step(stack)
    scale = [sc if sc is not None else 1.0 for sc in opt.scale]
    plan = _Plan(net0, [mb["m"] for mb in members], [mb["B"] for mb in members], scale)
    val_plan = None
    if validation is not None:
        val_plan = _Plan(net0, [int(mb["val"].shape[0]) for mb in members],
                         [mb["B"] for mb in members], [1.0] * K, all_models=True)
        val_idx = xp.asarray(val_plan.indices([mb["val"] for mb in members]))
        val_src = source if val_source is None else val_source
    capacity = max(mb["B"] for mb in members)
    gather = _Gather(net0, K, capacity, fast)
    best = None
    if any(p is not None for p in patiences):
        best = stack.views(xp.empty((K, stack.P), dtype=stack.dtype)) if fast else {
            name: xp.asarray(p, copy=True) for name, p in stack.params.items()}

    config = {"batch_size": batch_size, "epochs": epochs, "shuffle": bool(shuffle), "seeds": seeds,
              "validation": validation if not isinstance(validation, (tuple, list)) else "pair"}
    start = 0
    if resume and Path(checkpoint).exists():
        start = _read_checkpoint(checkpoint, stack, opt, best, members, config)
        for j, mb in enumerate(members):
            stack.store(j, mb["net"])

    losses = xp.zeros((plan.n_steps, K), dtype=stack.dtype)
    correct = xp.zeros((K,), dtype=xp.int64)
    bar = _progress_bar((epochs - start) * plan.n_steps, progress)
    counts_out = [_outputs_per_example(net0)] * K
    try:
        for epoch in range(start + 1, epochs + 1):
            live = [mb["frozen"] is None for mb in members]
            if not any(live):
                break
            bar.set_description(f"epoch {epoch}/{epochs}")
            t0 = time.perf_counter()
            orders = []
            for mb in members:                      # every model draws its permutation, as fit does
                perm = _permutation(mb["rng"], mb["m"]) if shuffle else None
                orders.append(mb["train"] if perm is None else mb["train"][perm])
            idx_all = xp.asarray(plan.indices(orders))
            runs_of = {}
            correct[...] = 0
            with numpy.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
                for k, m, n, offset, consts, s in plan.steps:
                    s_col, counts, row_counts, valid = consts
                    idx = idx_all[offset:offset + k * m]
                    Xb, Yb = gather(source, idx, k, m)
                    J, AL, G = step(Xb, Yb, s_col, counts, row_counts)
                    losses[s, :k] = J
                    if source.truth is not None:
                        truth_b = xp.reshape(xp.take(source.truth, idx, axis=0), (k, m))
                    else:
                        truth_b = None
                    c = _hits(net0, xp, AL, Yb, truth_b, valid)
                    if c is not None:
                        correct[:k] += c
                    if opt.scratch is None and fast:
                        opt.scratch = step.scratch()
                    runs = runs_of.get(k)
                    if runs is None:
                        runs = runs_of[k] = opt.runs(live[:k])
                    opt.step(stack.params, step.grads if fast else G, runs)
                    bar.update(1)
            batch_losses = to_numpy(losses).astype(numpy.float64)
            n_correct = to_numpy(correct)
            row_ok = _rows_finite(stack)
            seconds = time.perf_counter() - t0
            used, total = memory_pool_bytes(xp)
            val_losses = val_correct = None
            if val_plan is not None:
                val_losses, val_correct = _validate(step, stack, val_plan, val_idx, val_src, gather, fast)
            postfix = {}
            for j, mb in enumerate(members):
                if not live[j]:
                    continue
                hist, net = mb["history"], mb["net"]
                bl = numpy.ascontiguousarray(batch_losses[:mb["steps"], j])
                bad = numpy.flatnonzero(~numpy.isfinite(bl))
                if bad.size or not row_ok[j]:
                    stp = int(bad[0]) + 1 if bad.size else mb["steps"]
                    finite = bl[:stp - 1]
                    last = (float(finite[-1]) if finite.size else (hist.loss[-1] if hist.loss else None))
                    hist.diverged = {"epoch": epoch, "step": stp, "last_finite": last}
                    mb["frozen"] = "diverged"
                    stack.load(j, net)                 # back to its last finite epoch (finite compute)
                    continue
                sizes = numpy.minimum(mb["B"], mb["m"] - mb["B"] * numpy.arange(mb["steps"])).astype(
                    numpy.float64)
                loss = float(bl @ sizes / mb["m"])
                acc = None if net0.output not in ("softmax", "sigmoid") else (
                    int(n_correct[j]) / (mb["m"] * counts_out[j]))
                val_loss = val_acc = None
                if val_losses is not None:
                    mv = int(mb["val"].shape[0])
                    nv = val_plan.counts[j]
                    vsizes = numpy.minimum(mb["B"], mv - mb["B"] * numpy.arange(nv)).astype(numpy.float64)
                    val_loss = float(numpy.ascontiguousarray(val_losses[:nv, j]) @ vsizes) / mv
                    if val_correct is not None:
                        val_acc = int(val_correct[j]) / (mv * counts_out[j])
                hist.append(epoch=epoch, loss=loss, accuracy=acc, val_loss=val_loss, val_accuracy=val_acc,
                            seconds=seconds, samples_per_s=mb["m"] / seconds,
                            memory_used_bytes=used, memory_total_bytes=total)
                stack.store(j, net)                    # the net holds its latest finite epoch
                stop = False
                if mb["patience"] is not None:
                    early = mb["early"]
                    if early["best_loss"] is None or val_loss < early["best_loss"]:
                        early.update(best_loss=val_loss, best_epoch=epoch, bad_epochs=0)
                        _copy_row(stack, best, j)
                    else:
                        early["bad_epochs"] += 1
                        stop = early["bad_epochs"] >= mb["patience"]
                    hist.best_epoch = early["best_epoch"]
                for cb in mb["callbacks"]:
                    if cb(hist.last(), net):
                        stop = True
                if stop:
                    hist.stopped_early = True
                    mb["frozen"] = "stopped"
                postfix.setdefault("loss", loss)
            done = sum(mb["frozen"] is not None for mb in members)
            if postfix:
                bar.set_postfix({"best loss": f"{min(h['history'].loss[-1] for h in members if h['history'].loss):.4f}",
                                 "finished": f"{done}/{K}"}, refresh=False)
            if checkpoint is not None:
                _write_checkpoint(checkpoint, stack, opt, best, epoch, members, config)
            if all(mb["frozen"] == "diverged" for mb in members):
                last = members[-1]["history"].diverged
                exc = TrainingDiverged(last["epoch"], last["step"], last["last_finite"])
                exc.args = (f"every one of the {K} nets diverged; " + exc.args[0],)
                exc.histories = _in_order(members, "history")
                raise exc
    finally:
        bar.close()
    for j, mb in enumerate(members):
        if mb["patience"] is not None and mb["early"]["best_epoch"] is not None:
            _restore_best(stack, best, j, mb["net"])
    if not from_template:
        opt.write_back(lambda j: members[j]["net"].params)
        for j, mb in enumerate(members):
            opts[mb["index"]] = opt.opts[j]
    return _in_order(members, "history")


def _in_order(members, key):
    out = [None] * len(members)
    for mb in members:
        out[mb["index"]] = mb[key]
    return out


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
            flat = xp.reshape(p, (stack.K, -1))
            ok &= to_numpy(xp.all(xp.isfinite(flat), axis=1)).astype(bool)
        return ok


def _copy_row(stack, best, j):
    if stack.flat is not None:
        best.flat[j] = stack.flat[j]
    else:
        for name, p in stack.params.items():
            best[name][j, ...] = p[j, ...]


def _restore_best(stack, best, j, net):
    if stack.flat is not None:
        if getattr(net.params, "flat", None) is not None:
            net.params.flat[...] = best.flat[j]
        else:
            for name, p in net.params.items():
                p[...] = best[name][j]
        return
    xp = stack.xp
    for name in stack.shapes:
        net.params[name] = xp.asarray(best[name][j, ...], copy=True)


def _validate(step, stack, plan, idx_all, src, gather, fast):
    """Every model's validation batch losses ``(steps, K)`` (host) and correct counts ``(K,)``."""
    xp, net, K = stack.xp, stack.net, stack.K
    losses = []
    correct = None
    with numpy.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        for k, m, n, offset, consts, _ in plan.steps:
            _, counts, row_counts, valid = consts
            idx = idx_all[offset:offset + k * m]
            Xb, Yb = gather(src, idx, k, m)
            J, AL = step.cost(Xb, Yb, counts, row_counts)
            losses.append(J)
            truth_b = xp.reshape(xp.take(src.truth, idx, axis=0), (k, m)) if src.truth is not None else None
            c = _hits(net, xp, AL, Yb, truth_b, valid)
            if c is not None:
                correct = c if correct is None else correct + c
    host = to_numpy(xp.stack(losses)).astype(numpy.float64)
    return host, (None if correct is None else to_numpy(correct))
