"""One rank of the distributed tests: ``mpiexec -n N python tests/dist_worker.py SPEC.json``.

SPEC holds ``{"out": DIR, "runs": [RUN, ...]}``; every rank runs every RUN in
order with ``xprop.fit(..., distributed=True)`` and rank 0 writes, per run,
``DIR/NAME.npz`` (the final parameters of every rank, gathered, as
``rank<r>.<param>``, and the parameters each rank's optimizer first saw, as
``start<r>.<param>``) and ``DIR/NAME.json`` (history, checkpoint writes per
rank, the exception if any, the world size).

A RUN is a dict:

``name``        file stem of the results
``optimizer``   ``{"name": "sgd" | "adam", ...hyperparameters}``
``batch_size``, ``epochs``, ``validation`` (a fraction or null), ``shuffle``
``checkpoint``  "shared" (one path for all ranks), "per-rank" (DIR/NAME-rank<r>/,
                to see which ranks write) or null
``resume``      resume from the shared checkpoint
``net_seed``    the net's seed on rank 0; rank r uses ``net_seed + r``, so only the
                broadcast of rank 0's weights can make the ranks agree
``fail``        ``{"rank": r, "step": k, "how": "sigkill" | "exit" | "raise"}``: that rank
                dies (or raises) at its k-th optimizer step
``per_rank``    ``{"<r>": {key: value}}``: arguments that differ on rank r (a mistake fit
                must refuse)
``shards``      ``[[lo, hi], ...]``: rank r trains with ``distributed="sharded"`` on rows
                ``lo:hi`` of the data only (its shard)
``rank_timeout`` fit's rank_timeout (default: fit's)
``validation_rows`` ``[[lo, hi], ...]``: rank r's validation pair is rows ``lo:hi`` of the data
``patience``    fit's patience
``fail.how``    also "sigstop" (the rank stops itself) and "hang" (it sleeps for an hour)

The data and the net are built by :func:`digits` and :func:`make_net`, which
the tests import to build the one-process reference the same way.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import xprop  # noqa: E402
import xprop.distributed  # noqa: E402
import xprop.train.checkpoint  # noqa: E402
from xprop.optim import SGD, Adam  # noqa: E402

LAYERS = [64, 32, 10]


def digits():
    """The bundled digits' training split, z-scored with its own statistics (float64)."""
    ds = xprop.load_digits()
    mu = ds.X_train.mean(axis=0)
    sd = ds.X_train.std(axis=0)
    sd[sd == 0] = 1.0
    return (ds.X_train - mu) / sd, ds.y_train


def make_net(seed):
    return xprop.MLP(LAYERS, activation="relu", output="softmax", backend="numpy",
                     dtype="float64", seed=seed)


def make_optimizer(spec, fail=None, rank=0):
    """The optimizer of ``spec``; it keeps the weights it first saw (``first_params``) and, if
    ``fail`` names this rank, dies or raises at the given step."""
    spec = dict(spec)
    cls = {"sgd": SGD, "adam": Adam}[spec.pop("name")]
    fail = fail if fail is not None and fail["rank"] == rank else None

    class Watched(cls):
        first_params = None

        def step(self, params, grads):
            if self.first_params is None:
                self.first_params = {k: np.array(v, copy=True) for k, v in params.items()}
            if fail is not None and self.t + 1 == fail["step"]:
                if fail["how"] == "sigkill":
                    os.kill(os.getpid(), signal.SIGKILL)
                elif fail["how"] == "sigstop":
                    os.kill(os.getpid(), signal.SIGSTOP)
                elif fail["how"] == "hang":
                    time.sleep(3600)
                elif fail["how"] == "exit":
                    os._exit(3)
                raise RuntimeError(f"injected failure at step {fail['step']}")
            super().step(params, grads)

    return Watched(**spec)


def run(ctx, X, y, out, spec):
    from mpi4py import MPI  # noqa: PLC0415

    comm, rank = ctx.comm, ctx.rank
    spec = {**spec, **spec.get("per_rank", {}).get(str(rank), {})}
    name = spec["name"]
    net = make_net(spec.get("net_seed", 100) + rank)
    opt = make_optimizer(spec["optimizer"], spec.get("fail"), rank)
    ckpt = None
    if spec.get("checkpoint") == "shared":
        ckpt = out / f"{name}.ckpt.npz"
    elif spec.get("checkpoint") == "per-rank":
        (out / f"{name}-rank{rank}").mkdir(exist_ok=True)
        ckpt = out / f"{name}-rank{rank}" / "checkpoint.npz"

    writes = [0]
    original = xprop.train.checkpoint.write_npz_atomic

    def counting(*args, **kwargs):
        writes[0] += 1
        return original(*args, **kwargs)

    xprop.train.checkpoint.write_npz_atomic = counting
    error = None
    history = None
    distributed = True
    if spec.get("shards"):
        lo, hi = spec["shards"][rank]
        X, y = X[lo:hi], y[lo:hi]
        distributed = "sharded"
    extra = {"rank_timeout": spec["rank_timeout"]} if "rank_timeout" in spec else {}
    validation = spec.get("validation")
    if spec.get("validation_rows"):          # this rank's part of a validation set: rows of the data
        lo, hi = spec["validation_rows"][rank]
        Xa, ya = digits()
        validation = (Xa[lo:hi], ya[lo:hi])
    if spec.get("patience"):
        extra["patience"] = spec["patience"]
    try:
        history = xprop.fit(net, X, y, epochs=spec["epochs"], batch_size=spec["batch_size"],
                            optimizer=opt, validation=validation,
                            shuffle=spec.get("shuffle", True), seed=spec.get("seed", 0),
                            progress=False, checkpoint=ckpt, resume=spec.get("resume", False),
                            distributed=distributed, **extra)
    except (xprop.TrainingDiverged, xprop.distributed.DistributedError) as exc:
        error = {"type": type(exc).__name__, "message": str(exc)}
    finally:
        xprop.train.checkpoint.write_npz_atomic = original

    params = comm.gather({k: np.asarray(v) for k, v in net.params.items()}, root=0)
    first = comm.gather(opt.first_params, root=0)
    write_counts = comm.gather(writes[0], root=0)
    errors = comm.gather(error, root=0)
    if rank == 0:
        arrays = {f"rank{r}.{k}": v for r, p in enumerate(params) for k, v in p.items()}
        arrays.update({f"start{r}.{k}": v for r, p in enumerate(first) if p for k, v in p.items()})
        np.savez(out / f"{name}.npz", **arrays)
        (out / f"{name}.json").write_text(json.dumps({
            "size": ctx.size, "writes": write_counts, "errors": errors,
            "history": None if history is None else history.to_dict(),
            "mpi": MPI.Get_library_version().splitlines()[0],
        }, indent=1))


def main(argv):
    spec = json.loads(Path(argv[1]).read_text())
    ctx = xprop.distributed.init(gpu=False)
    expected = spec.get("size")
    if expected is not None and ctx.size != expected:
        sys.stderr.write(f"dist_worker: MPI world has {ctx.size} rank(s), expected {expected}: "
                         "mpiexec and mpi4py come from different MPI libraries?\n")
        return 2
    out = Path(spec["out"])
    X, y = digits()
    for r in spec["runs"]:
        try:
            run(ctx, X, y, out, r)
        except Exception:
            traceback.print_exc()
            ctx.comm.Abort(1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
