#!/usr/bin/env python
"""Training-step throughput of xprop against its matmul-only floor, PyTorch and scikit-learn.

One "step" is a full SGD step on a mini-batch: forward, loss, backward, update.
The contenders run interleaved, round by round, so a slow moment of a shared
machine hits all of them alike; the table reports the median and the best
round, and ratios per round (xprop / other), never a single absolute time.

Every contender trains on the same batches: by default consecutive slices of
the data, as a plain PyTorch loop over a tensor takes them; with ``--shuffle``
every contender reshuffles each epoch and gathers each batch's rows (xprop:
``fit``'s default shuffle; PyTorch: ``randperm`` and ``index_select``;
scikit-learn: ``shuffle=True``), which adds a copy of every batch that the
matmul-only floor does not pay.

    python scripts/bench.py                       # the three reference configs, 1 thread
    python scripts/bench.py --threads 1,2 --rounds 7 --json bench.json
    python scripts/bench.py --shuffle             # shuffled epochs: every batch gathered
    python scripts/bench.py --sizes 784-512-10:256 --quick
    python scripts/bench.py --backend cupy        # on a GPU
    python scripts/bench.py --distributed --ranks 1,2,4   # data-parallel over MPI (xprop[dist])

Contenders
----------
xprop    ``xprop.fit`` with plain SGD (its per-epoch timer, i.e. the step fit runs)
floor    only the matrix products of the same step, into preallocated buffers
torch    PyTorch eager: nn.Sequential, cross-entropy, torch.optim.SGD (if installed)
sklearn  MLPClassifier, one epoch of solver="sgd" (if installed; CPU only)
jax      JAX: the same SGD step as ``jax.jit(step)`` (if installed); compare on one pinned core
         (``taskset -c 0``): JAX's CPU runtime ignores thread settings

Memory mode
-----------
``--memory`` traces ``fit`` (tracemalloc) for SGD and Adam at each config and
compares the peak with params + optimizer state + one batch's forward cache;
it runs every config at two data-set sizes (``--steps`` batches and four
times as many) and reports how many bytes per training example the peak
grows by: what ``fit`` keeps per example (the epoch's permutation and the
predictions), which no budget of the net's size can cover.

PyTorch and scikit-learn are optional: the script says which it skipped and why.

Many models
-----------
``--many 8,64`` trains K models of one architecture at once, each on its own
shuffled batches (plain SGD, float32 by default), and reports samples/s summed
over the K models: ``xprop.fit_many``, K separate ``fit`` calls, the
batched-matmul floor (the step's GEMMs over a leading K axis, nothing else),
and, where installed, JAX ``jit(vmap(step))`` and ``torch.func.vmap``. JAX's
CPU runtime ignores thread settings: compare on one pinned core::

    taskset -c 0 python scripts/bench.py --many 8,64 --rounds 7

Distributed mode
----------------
``--distributed`` measures ``xprop.fit(..., distributed=True)``: for each
count in ``--ranks`` the script starts itself under ``mpiexec -n N`` (the
mpiexec beside this Python, else on PATH) and times one epoch per round at
the same global batch. It reports samples/s, the speed-up over 1 rank, and
the allreduce's share of the step (seconds inside the gradient allreduce,
device synchronised around it, over the epoch's seconds; waiting for a
slower rank counts as allreduce time). ``--threads`` is then the BLAS threads
of each rank. docs/distributed.md turns these numbers into a model of
multi-node scaling.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import xprop  # noqa: E402
from xprop.backend import backend_name, synchronize, to_numpy  # noqa: E402

CONFIGS = [((784, 256, 128, 10), 128), ((784, 1024, 1024, 10), 512), ((64, 32, 10), 32)]


def parse_sizes(text):
    """``"784-256-10:128,64-32-10:32"`` -> [((784, 256, 10), 128), ...]."""
    out = []
    for item in text.split(","):
        layers, _, batch = item.partition(":")
        out.append((tuple(int(n) for n in layers.split("-")), int(batch or 128)))
    return out


def step_flops(sizes, batch):
    """FLOPs of the step's matrix products: forward, dW, and dA except into the input."""
    flops = 0
    for l, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        mults = 2 if l == 0 else 3
        flops += mults * 2 * batch * n_in * n_out
    return flops


def make_data(sizes, batch, steps, seed=0):
    rng = numpy.random.default_rng(seed)
    m = batch * steps
    X = rng.standard_normal((m, sizes[0])).astype(numpy.float32)
    y = rng.integers(0, sizes[-1], m)
    return X, y


# ----------------------------------------------------------------- contenders
class XpropRunner:
    name = "xprop"

    def __init__(self, sizes, batch, steps, backend, dtype, shuffle):
        self.net = xprop.MLP(list(sizes), activation="relu", output="softmax", backend=backend,
                             dtype=dtype, seed=0)
        self.opt = xprop.SGD(lr=0.01)
        self.X, self.y = make_data(sizes, batch, steps)
        self.batch, self.shuffle, self.rounds = batch, shuffle, 0
        xp = self.net.xp
        self.X, self.y = xp.asarray(self.X), xp.asarray(self.y)  # data on the device once

    def run(self):
        self.rounds += 1   # a new shuffle every round, as epochs of one run would have
        h = xprop.fit(self.net, self.X, self.y, epochs=1, batch_size=self.batch,
                      optimizer=self.opt, progress=False, seed=self.rounds, shuffle=self.shuffle)
        return h.samples_per_s[-1]


class FloorRunner:
    """Only the GEMMs of a step, into preallocated outputs: what no step can beat."""

    name = "floor"

    def __init__(self, sizes, batch, steps, backend, dtype, shuffle):
        xp = self.xp = xprop.get_xp(backend)
        rng = numpy.random.default_rng(0)
        f = lambda *shape: xp.asarray(rng.standard_normal(shape).astype(dtype))  # noqa: E731
        self.W = [f(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
        self.A = [f(batch, n) for n in sizes]        # A_l buffers (A_0 = X)
        self.Z = [None] + [f(batch, n) for n in sizes[1:]]
        self.dW = [f(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
        self.dA = [f(batch, n) for n in sizes]
        self.steps, self.batch = steps, batch

    def run(self):
        xp, L = self.xp, len(self.W)
        t0 = time.perf_counter()
        for _ in range(self.steps):
            for l in range(L):
                xp.matmul(self.A[l], self.W[l], out=self.Z[l + 1])
            for l in range(L - 1, -1, -1):
                xp.matmul(self.A[l].T, self.Z[l + 1], out=self.dW[l])
                if l > 0:
                    xp.matmul(self.Z[l + 1], self.W[l].T, out=self.dA[l])
        synchronize(xp)
        return self.steps * self.batch / (time.perf_counter() - t0)


class TorchRunner:
    name = "torch"

    def __init__(self, sizes, batch, steps, backend, dtype, shuffle):
        import torch  # noqa: PLC0415

        self.torch = torch
        self.device = "cuda" if backend == "cupy" else "cpu"
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(torch.nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(torch.nn.ReLU())
        self.model = torch.nn.Sequential(*layers).to(self.device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01)
        self.loss = torch.nn.CrossEntropyLoss()
        X, y = make_data(sizes, batch, steps)
        self.X = torch.from_numpy(X).to(self.device)
        self.y = torch.from_numpy(y).to(self.device)
        self.steps, self.batch, self.shuffle = steps, batch, shuffle
        self.gen = torch.Generator(device=self.device).manual_seed(0)

    def run(self):
        torch = self.torch
        t0 = time.perf_counter()
        if self.shuffle:
            order = torch.randperm(len(self.X), generator=self.gen, device=self.device)
        for i in range(self.steps):
            if self.shuffle:
                idx = order[i * self.batch:(i + 1) * self.batch]
                xb, yb = self.X.index_select(0, idx), self.y.index_select(0, idx)
            else:
                xb = self.X[i * self.batch:(i + 1) * self.batch]
                yb = self.y[i * self.batch:(i + 1) * self.batch]
            self.opt.zero_grad(set_to_none=True)
            self.loss(self.model(xb), yb).backward()
            self.opt.step()
        if self.device == "cuda":
            torch.cuda.synchronize()
        return self.steps * self.batch / (time.perf_counter() - t0)


class SklearnRunner:
    name = "sklearn"

    def __init__(self, sizes, batch, steps, backend, dtype, shuffle):
        if backend == "cupy":
            raise RuntimeError("scikit-learn's MLP runs on the CPU only")
        from sklearn.neural_network import MLPClassifier  # noqa: PLC0415

        self.X, self.y = make_data(sizes, batch, steps)
        self.clf = MLPClassifier(hidden_layer_sizes=tuple(sizes[1:-1]), activation="relu",
                                 solver="sgd", learning_rate_init=0.01, momentum=0.0, alpha=0.0,
                                 batch_size=batch, max_iter=1, shuffle=shuffle, random_state=0)

    def run(self):
        from sklearn.exceptions import ConvergenceWarning  # noqa: PLC0415

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            t0 = time.perf_counter()
            self.clf.fit(self.X, self.y)
            return len(self.X) / (time.perf_counter() - t0)


def jax_setup(sizes, batch, steps, backend, dtype, K=None):
    """JAX, the bench's SGD step written for one model in ``jax.numpy``, initial params (with a
    leading K axis when ``K`` is given: for ``vmap``) and the data on JAX's device."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    if backend == "cupy" and jax.default_backend() != "gpu":
        raise RuntimeError("JAX has no GPU here")
    rng = numpy.random.default_rng(0)
    lead = () if K is None else (K,)
    params = [(jnp.asarray((rng.standard_normal((*lead, a, b)) * math.sqrt(2 / a)).astype(dtype)),
               jnp.zeros((*lead, b), dtype=dtype)) for a, b in zip(sizes[:-1], sizes[1:])]
    X, y = make_data(sizes, batch, steps)

    def loss(params, x, y):
        a = x
        for i, (W, b) in enumerate(params):
            a = a @ W + b
            if i < len(params) - 1:
                a = jax.nn.relu(a)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(a), y[:, None], axis=1))

    def step(params, x, y):
        grads = jax.grad(loss)(params, x, y)
        return jax.tree_util.tree_map(lambda p, g: p - 0.01 * g, params, grads)

    return jax, step, params, jnp.asarray(X.astype(dtype)), jnp.asarray(y)


class JaxJitRunner:
    """JAX: the same SGD step for one model as ``jit(step)``, on the same batches."""

    name = "jax"

    def __init__(self, sizes, batch, steps, backend, dtype, shuffle):
        jax, step, self.params, self.X, self.y = jax_setup(sizes, batch, steps, backend, dtype)
        self.jax, self.rng = jax, numpy.random.default_rng(0)
        self.steps, self.batch, self.shuffle = steps, batch, shuffle

        def gathered(params, X, y, idx):                 # shuffled: the batch's rows gathered
            return step(params, X[idx], y[idx])

        self.step = jax.jit(step)
        self.gathered = jax.jit(gathered)
        # consecutive batches sliced once here: a slice of a JAX array is a dispatch of its own
        self.slices = [(self.X[s * batch:(s + 1) * batch], self.y[s * batch:(s + 1) * batch])
                       for s in range(steps)]

    def run(self):
        jnp, b = self.jax.numpy, self.batch
        if self.shuffle:
            order = jnp.asarray(self.rng.permutation(len(self.X))[: self.steps * b].reshape(self.steps, b))
        t0 = time.perf_counter()
        p = self.params
        for s in range(self.steps):
            if self.shuffle:
                p = self.gathered(p, self.X, self.y, order[s])
            else:
                p = self.step(p, *self.slices[s])
        self.jax.block_until_ready(p)
        self.params = p
        return self.steps * b / (time.perf_counter() - t0)


RUNNERS = [XpropRunner, FloorRunner, TorchRunner, SklearnRunner, JaxJitRunner]


# ------------------------------------------------------- K models at once (--many K)
def many_orders(K, m, batch, steps, rng):
    """Each model's own batches for one round: ``(steps, K, batch)`` row indices."""
    idx = numpy.stack([rng.permutation(m)[:steps * batch].reshape(steps, batch) for _ in range(K)])
    return idx.transpose(1, 0, 2).copy()


class ManyRunner:
    """``xprop.fit_many``: K nets, each with its own seed (own shuffle: its own batches)."""

    name = "fit_many"

    def __init__(self, sizes, batch, steps, K, backend, dtype):
        self.nets = [xprop.MLP(list(sizes), activation="relu", output="softmax", backend=backend,
                               dtype=dtype, seed=i) for i in range(K)]
        X, y = make_data(sizes, batch, steps)
        xp = self.nets[0].xp
        self.X, self.y = xp.asarray(X), xp.asarray(y)
        self.batch, self.K, self.rounds = batch, K, 0

    def run(self):
        self.rounds += 1
        hists = xprop.fit_many(self.nets, self.X, self.y, epochs=1, batch_size=self.batch,
                               optimizer=xprop.SGD(lr=0.01), progress=False,
                               seed=[self.rounds * self.K + i for i in range(self.K)])
        return sum(h.samples_per_s[-1] for h in hists)


class SeparateRunner:
    """K ``xprop.fit`` calls, one after the other: what fit_many replaces."""

    name = "K fits"

    def __init__(self, sizes, batch, steps, K, backend, dtype):
        self.inner = ManyRunner(sizes, batch, steps, K, backend, dtype)

    def run(self):
        r = self.inner
        r.rounds += 1
        seconds = 0.0                                 # fit's own epoch timer, as fit_many's
        for i, net in enumerate(r.nets):
            h = xprop.fit(net, r.X, r.y, epochs=1, batch_size=r.batch, optimizer=xprop.SGD(lr=0.01),
                          progress=False, seed=r.rounds * r.K + i)
            seconds += h.seconds[-1]
        return r.K * int(r.X.shape[0]) / seconds


class ManyFloorRunner:
    """The batched-matmul floor: only the step's GEMMs for all K models, into buffers."""

    name = "floor"

    def __init__(self, sizes, batch, steps, K, backend, dtype):
        xp = self.xp = xprop.get_xp(backend)
        rng = numpy.random.default_rng(0)
        f = lambda *shape: xp.asarray(rng.standard_normal(shape).astype(dtype))  # noqa: E731
        self.W = [f(K, a, b) for a, b in zip(sizes[:-1], sizes[1:])]
        self.A = [f(K, batch, n) for n in sizes]
        self.Z = [None] + [f(K, batch, n) for n in sizes[1:]]
        self.dW = [f(K, a, b) for a, b in zip(sizes[:-1], sizes[1:])]
        self.dA = [f(K, batch, n) for n in sizes]
        self.steps, self.batch, self.K = steps, batch, K

    def run(self):
        xp, L = self.xp, len(self.W)
        t0 = time.perf_counter()
        for _ in range(self.steps):
            for l in range(L):
                xp.matmul(self.A[l], self.W[l], out=self.Z[l + 1])
            for l in range(L - 1, -1, -1):
                xp.matmul(self.A[l].transpose(0, 2, 1), self.Z[l + 1], out=self.dW[l])
                if l > 0:
                    xp.matmul(self.Z[l + 1], self.W[l].transpose(0, 2, 1), out=self.dA[l])
        synchronize(xp)
        return self.K * self.steps * self.batch / (time.perf_counter() - t0)


class JaxRunner:
    """JAX: one SGD step written for one model, ``jit(vmap(step))`` over the K models."""

    name = "jax vmap"

    def __init__(self, sizes, batch, steps, K, backend, dtype):
        jax, step, self.params, self.X, self.y = jax_setup(sizes, batch, steps, backend, dtype, K)
        self.jax, self.rng = jax, numpy.random.default_rng(0)
        self.steps, self.batch, self.K, self.m = steps, batch, K, len(self.X)

        many = jax.vmap(step)

        def step_all(params, X, y, idx):                  # idx : (K, batch), each model its rows
            return many(params, X[idx], y[idx])

        self.step_all = jax.jit(step_all)

    def run(self):
        idx = self.jax.numpy.asarray(many_orders(self.K, self.m, self.batch, self.steps, self.rng))
        t0 = time.perf_counter()
        p = self.params
        for s in range(self.steps):
            p = self.step_all(p, self.X, self.y, idx[s])
        self.jax.block_until_ready(p)
        self.params = p
        return self.K * self.steps * self.batch / (time.perf_counter() - t0)


class TorchVmapRunner:
    """PyTorch: ``torch.func.vmap`` of ``grad`` of a functional call, over stacked params."""

    name = "torch vmap"

    def __init__(self, sizes, batch, steps, K, backend, dtype):
        import copy  # noqa: PLC0415

        import torch  # noqa: PLC0415
        from torch.func import functional_call, grad, stack_module_state, vmap  # noqa: PLC0415

        self.torch = torch
        self.device = "cuda" if backend == "cupy" else "cpu"
        tdtype = getattr(torch, dtype)

        def make():
            layers = []
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
                layers.append(torch.nn.Linear(a, b))
                if i < len(sizes) - 2:
                    layers.append(torch.nn.ReLU())
            return torch.nn.Sequential(*layers).to(self.device, tdtype)

        models = [make() for _ in range(K)]
        params, buffers = stack_module_state(models)
        self.params = {k: v.detach() for k, v in params.items()}
        self.buffers = buffers
        base = copy.deepcopy(models[0]).to("meta")

        def loss(p, b, x, y):
            return torch.nn.functional.cross_entropy(functional_call(base, (p, b), (x,)), y)

        self.grads = vmap(grad(loss))
        X, y = make_data(sizes, batch, steps)
        self.X = torch.from_numpy(X).to(self.device, tdtype)
        self.y = torch.from_numpy(y).to(self.device)
        self.rng = numpy.random.default_rng(0)
        self.steps, self.batch, self.K, self.m = steps, batch, K, len(X)

    def run(self):
        torch = self.torch
        idx = torch.from_numpy(many_orders(self.K, self.m, self.batch, self.steps, self.rng)).to(self.device)
        t0 = time.perf_counter()
        with torch.no_grad():
            for s in range(self.steps):
                g = self.grads(self.params, self.buffers, self.X[idx[s]], self.y[idx[s]])
                for k, p in self.params.items():
                    p.sub_(g[k], alpha=0.01)
        if self.device == "cuda":
            torch.cuda.synchronize()
        return self.K * self.steps * self.batch / (time.perf_counter() - t0)


MANY_RUNNERS = [ManyRunner, SeparateRunner, ManyFloorRunner, JaxRunner, TorchVmapRunner]
MANY_CONFIGS = [((64, 32, 10), 32, 8), ((64, 32, 10), 32, 64), ((784, 256, 128, 10), 128, 8)]


def many_main(args):
    """``--many K``: K models of one architecture, each on its own batches, samples/s summed."""
    configs = [(sizes, batch, K) for sizes, batch in args.sizes for K in args.many] if args.sizes else (
        [c for c in MANY_CONFIGS if c[2] in args.many] or [(s, b, K) for s, b, _ in MANY_CONFIGS[::2]
                                                            for K in args.many])
    rows, skipped = [], {}
    for sizes, batch, K in configs:
        steps = args.steps or max(10, min(500, int(2e9 / (K * step_flops(sizes, batch)))))
        runners = []
        for cls in MANY_RUNNERS:
            try:
                runners.append(cls(sizes, batch, steps, K, args.backend, args.dtype))
            except ImportError as exc:
                skipped[cls.name] = f"not installed ({exc.name})"
            except RuntimeError as exc:
                skipped[cls.name] = str(exc)
        with threads(args.threads[0]):
            for r in runners:                         # warm-up round (and JIT compiles), not counted
                r.run()
            rounds = {r.name: [] for r in runners}
            for _ in range(args.rounds):
                for r in runners:
                    rounds[r.name].append(r.run())
        x = rounds["fit_many"]
        for name, values in rounds.items():
            row = {"config": "-".join(map(str, sizes)), "batch": batch, "K": K, "threads": args.threads[0],
                   "contender": name, "median": statistics.median(values), "best": max(values),
                   "rounds": values, "steps_per_round": steps}
            if name != "fit_many":
                row["fit_many_ratio_median"] = statistics.median(a / b for a, b in zip(x, values))
            rows.append(row)
    head = f"{'config':<16} {'batch':>5} {'K':>4} {'contender':<11} {'median/s':>12} {'best/s':>12} {'fit_many÷':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        ratio = f"{r['fit_many_ratio_median']:.2f}" if "fit_many_ratio_median" in r else ""
        print(f"{r['config']:<16} {r['batch']:>5} {r['K']:>4} {r['contender']:<11} {r['median']:>12,.0f} "
              f"{r['best']:>12,.0f} {ratio:>9}")
    print("samples/s summed over the K models, each model on its own batches; fit_many÷: its "
          "samples/s over the contender's (median of rounds)")
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    if args.json:
        args.json.write_text(json.dumps({"environment": environment(args.backend), "many": rows,
                                         "skipped": skipped, "argv": sys.argv[1:]}, indent=2))
        print(f"wrote {args.json}")
    return 0


@contextlib.contextmanager
def threads(n):
    """Pin BLAS (threadpoolctl) and PyTorch to ``n`` threads."""
    try:
        from threadpoolctl import threadpool_limits  # noqa: PLC0415
    except ImportError:
        threadpool_limits = None
    torch = sys.modules.get("torch")
    old = torch.get_num_threads() if torch else None
    if torch:
        torch.set_num_threads(n)
    ctx = threadpool_limits(limits=n) if threadpool_limits else contextlib.nullcontext()
    with ctx:
        yield
    if torch:
        torch.set_num_threads(old)


def bench_config(sizes, batch, args, skipped):
    # About 10 GFLOP of matrix products per round: ~0.1-0.3 s on a CPU core.
    steps = args.steps or max(10, min(2000, int(1e10 / step_flops(sizes, batch))))
    runners = []
    for cls in RUNNERS:
        if cls.name not in args.only:
            continue
        try:
            runners.append(cls(sizes, batch, steps, args.backend, args.dtype, args.shuffle))
        except ImportError as exc:
            skipped[cls.name] = f"not installed ({exc.name})"
        except RuntimeError as exc:
            skipped[cls.name] = str(exc)
    results = {}
    for n_threads in args.threads:
        with threads(n_threads):
            for r in runners:  # warm-up round, not counted
                r.run()
            rounds = {r.name: [] for r in runners}
            for _ in range(args.rounds):
                for r in runners:
                    rounds[r.name].append(r.run())
        results[n_threads] = rounds
    return steps, results


def summarise(sizes, batch, steps, results, shuffle=False):
    gflop = step_flops(sizes, batch) / batch / 1e9
    rows = []
    for n_threads, rounds in results.items():
        x = rounds.get("xprop")
        for name, values in rounds.items():
            row = {"config": "-".join(map(str, sizes)), "batch": batch, "threads": n_threads,
                   "shuffle": shuffle,
                   "contender": name, "median": statistics.median(values), "best": max(values),
                   "gflops_median": statistics.median(values) * gflop, "rounds": values,
                   "steps_per_round": steps}
            if x is not None and name != "xprop":
                per_round = [a / b for a, b in zip(x, values)]
                row["xprop_ratio_median"] = statistics.median(per_round)
                row["xprop_ratio_best"] = max(x) / max(values)
            rows.append(row)
    return rows


def print_table(rows):
    head = (f"{'config':<18} {'batch':>5} {'thr':>3} {'contender':<8} {'median/s':>11} "
            f"{'best/s':>11} {'GFLOP/s':>8} {'xprop÷ med':>10} {'xprop÷ best':>11}")
    print(head)
    print("-" * len(head))
    for r in rows:
        ratio_m = f"{r['xprop_ratio_median']:.2f}" if "xprop_ratio_median" in r else ""
        ratio_b = f"{r['xprop_ratio_best']:.2f}" if "xprop_ratio_best" in r else ""
        print(f"{r['config']:<18} {r['batch']:>5} {r['threads']:>3} {r['contender']:<8} "
              f"{r['median']:>11,.0f} {r['best']:>11,.0f} {r['gflops_median']:>8.1f} "
              f"{ratio_m:>10} {ratio_b:>11}")


def environment(backend):
    info = {"python": platform.python_version(), "machine": platform.machine(),
            "processor": platform.processor(), "numpy": numpy.__version__,
            "xprop": xprop.__version__, "backend": backend}
    for mod in ("torch", "sklearn"):
        if mod in sys.modules:
            info[mod] = sys.modules[mod].__version__
    try:
        from threadpoolctl import threadpool_info  # noqa: PLC0415

        info["blas"] = [{k: d.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
                        for d in threadpool_info()]
    except ImportError:
        pass
    if backend == "cupy":
        info["gpus"] = xprop.backend.gpu_info()
    return info


# ----------------------------------------------------------------- distributed
def dist_worker(args):
    """One rank of ``--distributed``: time fit(distributed=True); rank 0 writes the results."""
    from xprop import distributed  # noqa: PLC0415

    ctx = distributed.init(gpu=args.backend == "cupy")
    ctx.timing = True  # synchronise around the allreduce so its time is its own
    rows = []
    with threads(args.threads[0]):
        for sizes, batch in (args.sizes or CONFIGS):
            steps = args.steps or max(10, min(2000, int(1e10 / step_flops(sizes, batch))))
            net = xprop.MLP(list(sizes), activation="relu", output="softmax", backend=args.backend,
                            dtype=args.dtype, seed=0)
            X, y = make_data(sizes, batch, steps)
            X, y = net.xp.asarray(X), net.xp.asarray(y)
            opt = xprop.SGD(lr=0.01)
            per_round = []
            for i in range(args.rounds + 1):  # the first round warms up and is not counted
                ctx.stats.update(allreduce_calls=0, allreduce_seconds=0.0)
                h = xprop.fit(net, X, y, epochs=1, batch_size=batch, optimizer=opt, progress=False,
                              seed=i, distributed=True)
                mine = (h.seconds[-1], ctx.stats["allreduce_seconds"], ctx.stats["allreduce_calls"])
                everyone = ctx.comm.gather(mine, root=0)
                if i and ctx.is_root:
                    per_round.append(everyone)
            if ctx.is_root:
                nbytes = net.n_params * numpy.dtype(args.dtype).itemsize
                epoch_s = [r[0][0] for r in per_round]                       # rank 0's clock
                ar_s = [statistics.mean(x[1] for x in r) for r in per_round]  # mean over ranks
                calls = per_round[0][0][2]
                rows.append({"config": "-".join(map(str, sizes)), "batch": batch, "ranks": ctx.size,
                             "steps": calls, "param_bytes": nbytes,
                             "samples_per_s": [batch * steps / t for t in epoch_s],
                             "step_s": statistics.median(epoch_s) / calls,
                             "allreduce_s": statistics.median(ar_s) / calls,
                             "allreduce_share": statistics.median(a / t for a, t in zip(ar_s, epoch_s)),
                             "path": "nccl" if args.backend == "cupy" else "mpi"})
    if ctx.is_root:
        Path(args.dist_worker).write_text(json.dumps(rows))
    return 0


def dist_main(args, argv):
    """``--distributed``: run :func:`dist_worker` under mpiexec for every rank count."""
    import os  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    from xprop import distributed  # noqa: PLC0415

    mpiexec = distributed.find_mpiexec()
    if mpiexec is None:
        print(f"--distributed needs mpiexec: {distributed.INSTALL_HINT}", file=sys.stderr)
        return 2
    passed = [a for a in argv if a not in ("--distributed",)]
    passed = [a for i, a in enumerate(passed)
              if not (a.startswith("--ranks") or (i and passed[i - 1] == "--ranks")
                      or a.startswith("--json") or (i and passed[i - 1] == "--json"))]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads[0]),
               OPENBLAS_NUM_THREADS=str(args.threads[0]), MKL_NUM_THREADS=str(args.threads[0]))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.ranks:
            out = Path(tmp) / f"ranks{n}.json"
            cmd = [mpiexec, "-n", str(n), sys.executable, str(Path(__file__).resolve()), *passed,
                   "--dist-worker", str(out)]
            print(f"$ {' '.join(cmd)}", flush=True)
            proc = subprocess.run(cmd, env=env)
            if proc.returncode != 0:
                print(f"the {n}-rank run failed (exit {proc.returncode})", file=sys.stderr)
                return proc.returncode
            rows += json.loads(out.read_text())
    base = {(r["config"], r["batch"]): statistics.median(r["samples_per_s"]) for r in rows if r["ranks"] == 1}
    head = (f"{'config':<18} {'batch':>5} {'ranks':>5} {'median/s':>11} {'speed-up':>8} "
            f"{'step ms':>8} {'allred ms':>9} {'allred %':>8} {'MB/step':>7}")
    print(head)
    print("-" * len(head))
    for r in rows:
        med = statistics.median(r["samples_per_s"])
        one = base.get((r["config"], r["batch"]))
        r["speedup"] = med / one if one else None
        speedup = f"{r['speedup']:.2f}" if one else ""
        print(f"{r['config']:<18} {r['batch']:>5} {r['ranks']:>5} {med:>11,.0f} "
              f"{speedup:>8} {r['step_s'] * 1e3:>8.2f} "
              f"{r['allreduce_s'] * 1e3:>9.3f} {100 * r['allreduce_share']:>7.1f}% "
              f"{r['param_bytes'] / 1e6:>7.2f}")
    print(f"{args.threads[0]} BLAS thread(s) per rank; allreduce = seconds in the gradient "
          "allreduce (waiting for the slowest rank included) / epoch seconds")
    if args.json:
        args.json.write_text(json.dumps({"environment": environment(args.backend), "distributed": rows,
                                         "argv": sys.argv[1:]}, indent=2))
        print(f"wrote {args.json}")
    return 0


def digits_report(rounds, batch=32, hidden=128):
    """Seconds per epoch on the bundled digits: xprop.fit vs MLPClassifier, Adam, same net.

    Both train 64-128-10 ReLU/softmax with Adam (lr 1e-3) for one epoch per
    round at the same batch size; the rounds alternate. The ratio is
    sklearn seconds / xprop seconds per round.
    """
    from sklearn.exceptions import ConvergenceWarning  # noqa: PLC0415
    from sklearn.neural_network import MLPClassifier  # noqa: PLC0415

    d = xprop.load_digits()
    X, y = d.X_train.astype(numpy.float32), d.y_train
    net = xprop.MLP([64, hidden, 10], backend="numpy", seed=0)
    opt = xprop.Adam(lr=1e-3)
    clf = MLPClassifier(hidden_layer_sizes=(hidden,), solver="adam", learning_rate_init=1e-3,
                        alpha=0.0, batch_size=batch, max_iter=1, shuffle=True, random_state=0)
    xs, sk = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for r in range(rounds + 1):
            t0 = time.perf_counter()
            xprop.fit(net, X, y, epochs=1, batch_size=batch, optimizer=opt, progress=False, seed=r)
            t1 = time.perf_counter()
            clf.fit(X, y)
            t2 = time.perf_counter()
            if r:  # round 0 warms up
                xs.append(t1 - t0)
                sk.append(t2 - t1)
    ratios = [b / a for a, b in zip(xs, sk)]
    return {"batch": batch, "xprop_s_median": statistics.median(xs), "sklearn_s_median": statistics.median(sk),
            "ratio_median": statistics.median(ratios), "ratio_best": min(sk) / min(xs)}


def memory_report(sizes, batch, steps, optimizer, epochs=3):
    """Peak traced memory of ``fit`` against params + optimizer state + one batch's cache.

    NumPy reports its allocations to tracemalloc. The data and the net exist
    before tracing starts, so what is traced is what ``fit`` itself allocates;
    the budget is params + optimizer state + one batch's forward
    cache (X, and Z, A of every layer). ``growth`` is the traced memory after
    the last epoch minus after the first (0 means nothing accumulates).
    """
    import tracemalloc  # noqa: PLC0415

    X, y = make_data(sizes, batch, steps)
    net = xprop.MLP(list(sizes), backend="numpy", dtype="float32", seed=0)
    opt = xprop.SGD(lr=0.01) if optimizer == "sgd" else xprop.Adam(lr=1e-3)
    itemsize = 4
    params = net.n_params * itemsize
    state = params * len(opt.state_names)
    cache = batch * (sizes[0] + 2 * sum(sizes[1:])) * itemsize
    after_epoch = []
    # once untraced first: imports and other one-time allocations are not fit's memory
    xprop.fit(net.to(), X, y, epochs=1, batch_size=batch, optimizer=xprop.SGD(lr=0.01), progress=False)
    tracemalloc.start()
    try:
        xprop.fit(net, X, y, epochs=epochs, batch_size=batch, optimizer=opt, progress=False,
                  callbacks=[lambda rec, n: after_epoch.append(tracemalloc.get_traced_memory()[0])])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    budget = params + state + cache
    return {"config": "-".join(map(str, sizes)), "batch": batch, "examples": len(X),
            "optimizer": optimizer, "params_bytes": params, "state_bytes": state, "cache_bytes": cache,
            "budget_bytes": budget, "peak_traced_bytes": peak, "peak_over_budget": peak / budget,
            "growth_bytes": after_epoch[-1] - after_epoch[0]}


def print_memory(rows):
    print(f"{'config':<18} {'batch':>5} {'opt':<5} {'params':>9} {'state':>9} {'cache':>9} "
          f"{'examples':>8} {'peak (fit)':>11} {'÷ budget':>8} {'4x data':>8} {'B/example':>9} "
          f"{'growth':>7}")
    for r in rows:
        print(f"{r['config']:<18} {r['batch']:>5} {r['optimizer']:<5} {r['params_bytes']:>9,} "
              f"{r['state_bytes']:>9,} {r['cache_bytes']:>9,} {r['examples']:>8,} "
              f"{r['peak_traced_bytes']:>11,} {r['peak_over_budget']:>8.2f} "
              f"{r['peak_over_budget_4x']:>8.2f} {r['bytes_per_example']:>9.1f} {r['growth_bytes']:>7,}")
    print("÷ budget: peak over params + optimizer state + one batch's cache; 4x data: the same "
          "with four times the examples; B/example: what the peak grows by per example; growth: "
          "traced bytes after the last epoch minus after the first")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=parse_sizes, help="configs like 784-256-128-10:128,64-32-10:32")
    p.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--threads", default="1", help="comma-separated BLAS thread counts (default 1)")
    p.add_argument("--rounds", type=int, default=5, help="counted rounds per contender (default 5)")
    p.add_argument("--steps", type=int, default=None, help="steps per round (default: by config size)")
    p.add_argument("--only", default="xprop,floor,torch,sklearn,jax", help="contenders to run")
    p.add_argument("--quick", action="store_true", help="2 rounds of few steps: a smoke run")
    p.add_argument("--shuffle", action="store_true",
                   help="every contender reshuffles each epoch and gathers its batches")
    p.add_argument("--json", type=Path, default=None, help="write results and environment here")
    p.add_argument("--digits", action="store_true",
                   help="seconds per epoch on the bundled digits vs scikit-learn's MLPClassifier")
    p.add_argument("--memory", action="store_true",
                   help="peak traced memory of fit vs params + optimizer state + one batch's cache")
    p.add_argument("--distributed", action="store_true",
                   help="time fit(distributed=True) under mpiexec at each of --ranks (needs xprop[dist])")
    p.add_argument("--ranks", default="1,2", help="rank counts for --distributed (default 1,2)")
    p.add_argument("--dist-worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--many", default=None,
                   help="comma-separated K: K models at once (fit_many vs K fits, the batched-matmul "
                        "floor, JAX jit(vmap) and torch.func.vmap where installed)")
    args = p.parse_args(argv)
    args.threads = [int(t) for t in args.threads.split(",")]
    args.only = set(args.only.split(","))
    if args.quick:
        args.rounds, args.steps = 2, args.steps or 3
    configs = args.sizes or CONFIGS
    try:
        xprop.get_xp(args.backend)  # a clear error now if the backend is not usable
    except xprop.BackendError as exc:
        print(f"bench.py: error: {exc}", file=sys.stderr)
        return 2
    if args.dist_worker:
        return dist_worker(args)
    if args.many:
        args.many = [int(k) for k in args.many.split(",")]
        return many_main(args)
    if args.distributed:
        args.ranks = [int(n) for n in args.ranks.split(",")]
        return dist_main(args, sys.argv[1:] if argv is None else list(argv))
    if args.digits:
        with threads(args.threads[0]):
            r = digits_report(args.rounds)
        print(f"digits 64-128-10, Adam, batch {r['batch']}, one epoch: xprop {r['xprop_s_median'] * 1e3:.1f} ms, "
              f"scikit-learn {r['sklearn_s_median'] * 1e3:.1f} ms (medians); xprop faster by "
              f"{r['ratio_median']:.1f}x (median of rounds), {r['ratio_best']:.1f}x (best vs best)")
        if args.json:
            args.json.write_text(json.dumps({"environment": environment(args.backend), "digits": r}, indent=2))
        return 0
    if args.memory:
        rows = []
        for sizes, batch in configs:
            for opt in ("sgd", "adam"):
                steps = args.steps or 20
                row = memory_report(sizes, batch, steps, opt)
                big = memory_report(sizes, batch, 4 * steps, opt)
                row["peak_traced_bytes_4x"] = big["peak_traced_bytes"]
                row["peak_over_budget_4x"] = big["peak_over_budget"]
                row["bytes_per_example"] = ((big["peak_traced_bytes"] - row["peak_traced_bytes"])
                                            / (big["examples"] - row["examples"]))
                rows.append(row)
        print_memory(rows)
        if args.json:
            args.json.write_text(json.dumps({"environment": environment(args.backend),
                                             "memory": rows}, indent=2))
        return 0

    all_rows, skipped = [], {}
    for sizes, batch in configs:
        steps, results = bench_config(sizes, batch, args, skipped)
        all_rows += summarise(sizes, batch, steps, results, args.shuffle)
    print_table(all_rows)
    print("batches: " + ("shuffled every epoch, each gathered (--shuffle)" if args.shuffle
                         else "consecutive slices of the data, the same for every contender"))
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    if args.json:
        args.json.write_text(json.dumps({"environment": environment(args.backend), "rows": all_rows,
                                         "skipped": skipped, "argv": sys.argv[1:]}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
