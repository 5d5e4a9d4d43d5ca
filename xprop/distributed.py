"""Data-parallel training over MPI: one process per rank, gradients averaged every step.

The design of Horovod and ChainerMN. The same script runs under
``mpiexec -n N``; every rank holds the full data and the same net, starts from
rank 0's weights, shuffles with the same seed, and trains on its own slice of
every global batch. Before each optimizer step the gradients of all ranks are
summed by one allreduce, weighted so that the sum is exactly the mean over the
whole global batch::

    ḡ_r = (1/m_r) Σ_{i ∈ shard r} ∇L_i          what a rank's backward computes
    ḡ   = Σ_r (m_r / B) ḡ_r = (1/B) Σ_i ∇L_i       the allreduce of the weighted ḡ_r

so N ranks take the same steps as one process on the full batch (up to the
order of the floating-point sums). The optimizer then runs on every rank with
identical gradients, so weights and optimizer state stay identical.

The split of a global batch of B examples over N ranks is NumPy's
``array_split`` rule: the first ``B mod N`` ranks get ``⌈B/N⌉`` examples, the
others ``⌊B/N⌋``. A rank that gets none (B < N, e.g. a last batch of 1)
contributes a zero gradient with weight 0.

The reduction goes over one contiguous buffer holding every gradient, reused
across steps: one collective per step, whatever the number of layers. The
fast training step writes its ``dW_l`` and ``db_l`` straight into views of
that buffer, so packing costs nothing.

Paths
-----
NumPy
    MPI ``Allreduce(IN_PLACE)`` on the host buffer.
CuPy with NCCL
    NCCL's allreduce on the device buffer (``cupy.cuda.nccl``; the NCCL
    runtime comes from the ``nvidia-nccl-cu12`` wheel). MPI only carries the
    NCCL unique id from rank 0 to the others.
CuPy without NCCL
    The buffer is copied to the host, reduced by MPI and copied back, with a
    :class:`DistributedWarning` on rank 0.

This module does not import mpi4py at import time; :func:`init` does, the
first time distributed training is asked for. Every CuPy access goes through
:mod:`xprop.backend`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy

from . import backend as _backend
from .backend import backend_name, to_numpy
from .flat import flat_views

__all__ = [
    "Context",
    "DistributedError",
    "DistributedWarning",
    "GradBuffer",
    "ShardPlan",
    "assign_gpus",
    "choose_path",
    "find_mpiexec",
    "init",
    "make_reducer",
    "shard_bounds",
    "shard_sizes",
]

INSTALL_HINT = "pip install 'xprop[dist]' (mpi4py and the mpich wheel)"


class DistributedError(RuntimeError):
    """Distributed training cannot go on; raised on every rank alike.

    Errors of this class are decided from information gathered from all
    ranks, so every rank raises the same one at the same point and no rank is
    left waiting in a collective.
    """


class DistributedWarning(RuntimeWarning):
    """Distributed training runs, but on a slower path than it could (e.g. no NCCL)."""


# --------------------------------------------------------------------------
# Splitting a global batch (pure)
# --------------------------------------------------------------------------
def shard_sizes(B: int, N: int) -> list[int]:
    """Examples per rank for a global batch of ``B`` over ``N`` ranks.

    ``numpy.array_split``'s rule: the first ``B mod N`` ranks get one more.

    >>> shard_sizes(33, 2), shard_sizes(1, 2)
    ([17, 16], [1, 0])
    """
    base, extra = divmod(int(B), int(N))
    return [base + (1 if r < extra else 0) for r in range(int(N))]


def shard_bounds(B: int, N: int, rank: int) -> tuple[int, int]:
    """``(lo, hi)``: rank ``rank``'s rows ``lo:hi`` of a global batch of ``B``."""
    base, extra = divmod(int(B), int(N))
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


class ShardPlan:
    """Which rows of each epoch one rank trains on, fixed for a whole run.

    An epoch of ``m`` examples in (shuffled) ``order`` is cut into global
    batches of ``B`` (the last one partial); this rank takes its
    :func:`shard_bounds` of each. Its rows for the whole epoch are gathered
    once per epoch into local arrays, in which step ``s`` is the slice
    ``offsets[s]:offsets[s + 1]``.

    Attributes
    ----------
    steps : int
    batch_sizes : ndarray (steps,) float64
        ``B_s``, the global batch sizes.
    local_sizes : list of int
        ``m_rs``, this rank's rows per step (0 when a batch has fewer rows than ranks).
    weights : list of float
        ``m_rs / B_s``, the factor a rank's mean gradient gets before the sum.
    offsets : list of int
        Step boundaries in the local arrays.
    positions : ndarray (Σ m_rs,) int64
        This rank's positions in the epoch order, step after step.
    """

    def __init__(self, m: int, B: int, size: int, rank: int):
        self.m, self.B, self.size, self.rank = int(m), int(B), int(size), int(rank)
        starts = list(range(0, self.m, self.B))
        self.steps = len(starts)
        self.batch_sizes = numpy.array([min(self.B, self.m - s) for s in starts], dtype=numpy.float64)
        self.local_sizes, self.weights, self.offsets, pieces = [], [], [0], []
        for start, Bs in zip(starts, self.batch_sizes.astype(int)):
            lo, hi = shard_bounds(Bs, self.size, self.rank)
            pieces.append(numpy.arange(start + lo, start + hi, dtype=numpy.int64))
            self.local_sizes.append(hi - lo)
            self.weights.append((hi - lo) / Bs)
            self.offsets.append(self.offsets[-1] + hi - lo)
        self.positions = numpy.concatenate(pieces) if pieces else numpy.zeros(0, numpy.int64)
        self.nonempty = numpy.flatnonzero(numpy.asarray(self.local_sizes) > 0)


# --------------------------------------------------------------------------
# The flat gradient buffer (pure)
# --------------------------------------------------------------------------
class GradBuffer:
    """Every gradient of a net in one contiguous array, plus views of it.

    The buffer holds, parameter after parameter (``W1, b1, W2, ...``), the
    row-layout gradients ``dW_l : (n_{l-1}, n_l)`` and ``db_l : (n_l,)``, each
    C-contiguous. ``rows`` maps ``"dW1", "db1", ...`` to those views;
    ``grads`` maps the same names to views shaped like ``net.params`` (the
    transposes in the column layout), which the optimizer takes. In the row
    layout ``grads`` is a :class:`~xprop.flat.FlatDict` laid out like the
    net's parameter buffer, so the optimizer updates all parameters with
    whole-buffer operations.

    Parameters
    ----------
    net : MLP

    Attributes
    ----------
    flat : array (n_params,)
        On the net's backend, in its dtype; what the allreduce reduces.
    """

    def __init__(self, net):
        xp, sizes = net.xp, net.sizes
        shapes = {}
        for name in net.params:                      # W1, b1, W2, ... as the params are ordered
            l = int(name[1:])
            shapes[f"d{name}"] = (sizes[l - 1], sizes[l]) if name[0] == "W" else (sizes[l],)
        self.rows = flat_views(xp, shapes, net.dtype)
        self.flat = self.rows.flat
        if net.layout == "rows":
            self.grads = self.rows
        else:
            self.grads = {name: (view.T if name.startswith("dW") else xp.reshape(view, (-1, 1)))
                          for name, view in self.rows.items()}
        self.layout = net.layout

    @property
    def nbytes(self) -> int:
        return int(self.flat.size) * int(self.flat.dtype.itemsize)

    def pack(self, grads) -> None:
        """Copy ``grads`` (shaped like the params) into the buffer; free when they are its views."""
        for name, view in self.grads.items():
            g = grads[name]
            if g is not view:
                view[...] = g

    def unpack(self) -> dict:
        """The gradients, shaped like the params: views of the buffer (no copy)."""
        return self.grads

    def adopt(self, step) -> None:
        """Make a :class:`~xprop.fast.TrainStep` write its gradients here, whatever the batch size.

        The step's ``dW_l``, ``db_l`` become this buffer's row-layout views, so
        its matrix products write the gradients in place and the returned
        ``grads`` are :attr:`grads`.
        """
        L = len(self.rows) // 2
        dW, db = [None] * (L + 1), [None] * (L + 1)
        for name, view in self.rows.items():
            kind, l = name[:2], int(name[2:])
            (dW if kind == "dW" else db)[l] = view
        step.adopt_gradients(dW, db, self.grads)


# --------------------------------------------------------------------------
# Choosing the GPU and the reduction path (pure)
# --------------------------------------------------------------------------
def assign_gpus(visible: list[list[str]]) -> list[int]:
    """The device index each rank of one node uses; never one GPU for two ranks.

    Parameters
    ----------
    visible : list of list of str
        For every rank of a node, in local-rank order, the bus ids of the GPUs
        it sees, in its device order.

    Returns
    -------
    list of int
        The device index (in that rank's own numbering) of each rank. Ranks
        that all see the same GPUs get device ``local_rank``; ranks that see
        different GPUs (a launcher that sets ``CUDA_VISIBLE_DEVICES`` per rank)
        each get the first one no lower rank took.

    Raises
    ------
    DistributedError
        A rank finds no GPU of its own (its local rank ≥ the device count):
        NCCL cannot run two ranks on one GPU.
    """
    taken, out = set(), []
    for local_rank, ids in enumerate(visible):
        free = [i for i, bus in enumerate(ids) if bus not in taken]
        if not free:
            distinct = len({bus for ids_ in visible for bus in ids_})
            raise DistributedError(
                f"local rank {local_rank} has no GPU of its own: the {len(visible)} ranks on this node "
                f"see {distinct} distinct GPU(s) (this rank sees {len(ids)}), and NCCL cannot run two "
                f"ranks on one GPU; start at most {distinct} rank(s) per node "
                f"(mpiexec -ppn {max(distinct, 1)}), or train on the CPU (backend='numpy')")
        taken.add(ids[free[0]])
        out.append(free[0])
    return out


def choose_path(backend: str, nccl_ok: list[bool]) -> tuple[str, str | None]:
    """How gradients are reduced, from what every rank reported.

    Parameters
    ----------
    backend : str
        ``"numpy"`` or ``"cupy"`` (the net's backend, the same on every rank).
    nccl_ok : list of bool
        Per rank, whether ``cupy.cuda.nccl`` loaded there.

    Returns
    -------
    path : {"mpi", "nccl", "staged"}
        ``"mpi"``: host buffers, MPI allreduce. ``"nccl"``: device buffers,
        NCCL allreduce. ``"staged"``: device buffers copied to the host for an
        MPI allreduce and back.
    warning : str or None
        One line for a :class:`DistributedWarning` when the path is slower
        than it could be.
    """
    if backend == "numpy":
        return "mpi", None
    if backend != "cupy":
        raise DistributedError(f"distributed training runs on NumPy or CuPy; the net runs on {backend}")
    if all(nccl_ok):
        return "nccl", None
    missing = [r for r, ok in enumerate(nccl_ok) if not ok]
    where = "any rank" if len(missing) == len(nccl_ok) else f"rank(s) {', '.join(map(str, missing))}"
    return "staged", (
        f"xprop.distributed: NCCL is not available on {where} (cupy.cuda.nccl could not load "
        "libnccl; pip install nvidia-nccl-cu12); gradients go through host memory with an MPI "
        "allreduce instead, which is slower")


# --------------------------------------------------------------------------
# Reducers: sum the flat buffer over all ranks, in place
# --------------------------------------------------------------------------
class HostReducer:
    """MPI ``Allreduce(IN_PLACE, SUM)`` of a NumPy buffer."""

    path = "mpi"

    def __init__(self, comm, MPI):
        self.comm, self.MPI = comm, MPI

    def allreduce(self, flat) -> None:
        self.comm.Allreduce(self.MPI.IN_PLACE, flat, op=self.MPI.SUM)


class StagedReducer:
    """Device buffer → host, MPI allreduce, host → device (CuPy without NCCL)."""

    path = "staged"

    def __init__(self, comm, MPI, flat, to_host=None, from_host=None):
        self.comm, self.MPI = comm, MPI
        self.host = numpy.empty((int(flat.size),), dtype=numpy.dtype(str(flat.dtype)))
        self.to_host = to_host or _backend.copy_to_host
        self.from_host = from_host or _backend.copy_from_host

    def allreduce(self, flat) -> None:
        self.to_host(flat, self.host)
        self.comm.Allreduce(self.MPI.IN_PLACE, self.host, op=self.MPI.SUM)
        self.from_host(self.host, flat)


class NcclReducer:
    """NCCL allreduce on the device, on CuPy's current stream.

    MPI broadcasts rank 0's NCCL unique id; ``NcclCommunicator`` is then
    created collectively on every rank for its current GPU.
    """

    path = "nccl"

    def __init__(self, comm, rank, size, nccl, dtype_name, pointer=None, stream=None):
        uid = nccl.get_unique_id() if rank == 0 else None
        uid = comm.bcast(uid, root=0)
        self.nccl = nccl
        self.comm = nccl.NcclCommunicator(size, uid, rank)
        self.dtype = {"float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64}[dtype_name]
        self.pointer = pointer or _backend.device_pointer
        self.stream = stream or _backend.current_stream_pointer

    def allreduce(self, flat) -> None:
        ptr = self.pointer(flat)
        self.comm.allReduce(ptr, ptr, int(flat.size), self.dtype, self.nccl.NCCL_SUM, self.stream())


def make_reducer(ctx, flat, backend: str, nccl, **nccl_hooks):
    """The reducer for ``flat`` on every rank (collective: :func:`choose_path` on what all report).

    Parameters
    ----------
    ctx : Context
    flat : array
        The gradient buffer.
    backend : {"numpy", "cupy"}
    nccl : module or None
        This rank's ``cupy.cuda.nccl`` (:func:`xprop.backend.nccl_module`).
    **nccl_hooks
        ``pointer``, ``stream`` for :class:`NcclReducer` (tests pass fakes).
    """
    path, warning = choose_path(backend, ctx.allgather(nccl is not None))
    if warning and ctx.is_root:
        warnings.warn(warning, DistributedWarning, stacklevel=2)
    if path == "mpi":
        return HostReducer(ctx.comm, ctx.MPI)
    if path == "staged":
        return StagedReducer(ctx.comm, ctx.MPI, flat)
    return NcclReducer(ctx.comm, ctx.rank, ctx.size, nccl, str(flat.dtype), **nccl_hooks)


# --------------------------------------------------------------------------
# The process-wide context (MPI is initialised once per process)
# --------------------------------------------------------------------------
def import_mpi():
    """``mpi4py.MPI``, or an ImportError that says how to get it."""
    try:
        from mpi4py import MPI  # noqa: PLC0415  (only when distributed training is asked for)
    except (ImportError, OSError) as exc:
        raise ImportError(
            f"distributed training needs mpi4py and an MPI library ({exc}); {INSTALL_HINT}, "
            "then start the script with mpiexec -n N python script.py") from exc
    return MPI


class Context:
    """This process's place in the job: rank, size, local rank, GPU, and the communicator.

    Made by :func:`init`. ``stats`` counts the gradient allreduces and the
    seconds spent in them (with ``timing = True`` the device is synchronised
    around each one, so CuPy's asynchronous NCCL calls are timed honestly).
    """

    def __init__(self, comm, MPI, local_rank: int = 0, local_size: int = 1, node: int = 0):
        self.comm, self.MPI = comm, MPI
        self.rank, self.size = int(comm.Get_rank()), int(comm.Get_size())
        self.local_rank, self.local_size, self.node = int(local_rank), int(local_size), int(node)
        self.gpu: int | None = None          # device index this rank uses (CuPy)
        self.gpu_error: str | None = None    # why no GPU could be given (same on every rank)
        self.timing = False
        self.stats = {"allreduce_calls": 0, "allreduce_seconds": 0.0}

    @property
    def is_root(self) -> bool:
        """Rank 0: the one that shows progress and writes files."""
        return self.rank == 0

    def __repr__(self) -> str:
        return (f"Context(rank={self.rank}, size={self.size}, local_rank={self.local_rank}, "
                f"gpu={self.gpu})")

    # ---- small collectives (host, once per epoch or once per run)
    def allgather(self, obj) -> list:
        return list(self.comm.allgather(obj))

    def bcast(self, obj, root: int = 0):
        return self.comm.bcast(obj, root=root)

    def allreduce_sum(self, values) -> numpy.ndarray:
        """Element-wise sum over ranks of a small float64 host vector."""
        buf = numpy.array(values, dtype=numpy.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return buf

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any."""
        return bool(self.allreduce_sum([1.0 if flag else 0.0])[0] > 0)

    # ---- failure: never leave a rank waiting
    @contextlib.contextmanager
    def fail_fast(self, passthrough=()):
        """Abort the whole job when this rank fails on its own.

        An exception raised on one rank only (a bug in a callback, a full
        disk on rank 0, Ctrl-C) would leave the other ranks waiting forever in
        the next collective. Inside this block such an exception is printed
        with its traceback and ``MPI_Abort`` ends every rank, so ``mpiexec``
        exits with an error at once. :class:`DistributedError` and the
        classes in ``passthrough`` are raised alike on every rank and
        propagate normally; so does anything in a job of one rank.
        """
        try:
            yield
        except (DistributedError, *passthrough):
            raise
        except BaseException as exc:
            if self.size == 1:
                raise
            detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            sys.stderr.write(
                f"{detail}xprop: rank {self.rank} of {self.size} failed ({type(exc).__name__}: {exc}); "
                "aborting all ranks (MPI_Abort) so that none waits forever. The last checkpoint "
                "written is intact: resume from it with the same command.\n")
            sys.stderr.flush()
            self.comm.Abort(1)
            raise  # pragma: no cover - Abort does not return

    def select_gpu(self, required: bool = False) -> None:
        """Give this rank its own GPU (collective: every rank must call it).

        Every rank reports the bus ids of the GPUs it sees; :func:`assign_gpus`
        decides node by node from the same gathered list on every rank, so a
        failure is the same on all ranks. Sets :attr:`gpu`, or :attr:`gpu_error`
        (raised at once when ``required``, else when a CuPy net is trained).
        """
        ids = _backend.gpu_bus_ids()
        everyone = self.allgather((self.node, self.local_rank, ids))
        nodes: dict = {}
        for node, local_rank, visible in everyone:
            nodes.setdefault(node, {})[local_rank] = visible
        mine, errors = None, []
        if not any(visible for _, _, visible in everyone):
            errors.append("no rank sees a CUDA device")
        else:
            for node, ranks in sorted(nodes.items()):
                order = sorted(ranks)
                try:
                    indices = assign_gpus([ranks[k] for k in order])
                except DistributedError as exc:
                    errors.append(f"on the node of rank {node}: {exc}")
                    continue
                if node == self.node:
                    mine = indices[order.index(self.local_rank)]
        if errors:
            self.gpu_error = errors[0]
            if required:
                raise DistributedError(self.gpu_error)
            return
        _backend.use_device(mine)
        self.gpu = mine


_CONTEXT: Context | None = None


def init(gpu=None) -> Context:
    """Start MPI (once per process) and give this rank its GPU.

    Call it at the top of a script run under ``mpiexec``, **before** building
    the net: the net's arrays are made on the GPU that is current then.
    ``fit(..., distributed=True)`` calls it too (a no-op the second time).

    Parameters
    ----------
    gpu : bool or None
        None: pick a GPU when CuPy is usable, and say why not later, if a
        CuPy net is trained. True: a GPU is required (DistributedError if this
        rank cannot have one of its own). False: never touch the GPU.

    Returns
    -------
    Context
        ``rank``, ``size``, ``local_rank``, ``is_root``, ``gpu``, ``comm``.
    """
    global _CONTEXT
    if _CONTEXT is None:
        MPI = import_mpi()
        comm = MPI.COMM_WORLD
        local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
        node = local.bcast(comm.Get_rank(), root=0)   # a node is named by its lowest global rank
        ctx = Context(comm, MPI, local.Get_rank(), local.Get_size(), node)
        local.Free()
        _CONTEXT = ctx
        if gpu is not False:
            ctx.select_gpu(required=bool(gpu))
    elif gpu and _CONTEXT.gpu is None:
        raise DistributedError(_CONTEXT.gpu_error or "init() ran before without a GPU")
    return _CONTEXT


# --------------------------------------------------------------------------
# The per-run machinery fit uses
# --------------------------------------------------------------------------
def _digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, numpy.ndarray):
            h.update(str((part.dtype.str, part.shape)).encode())
            h.update(numpy.ascontiguousarray(part).tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()


def sample_digest(xp, a, rows: int = 256) -> str:
    """A hash of the shape and of up to ``rows`` evenly spaced rows of ``a``.

    Cheap enough for any data set, and enough to notice ranks that were given
    different data (e.g. each loaded its own shard by hand).
    """
    m = int(a.shape[0])
    idx = numpy.unique(numpy.linspace(0, m - 1, num=min(rows, m)).astype(numpy.int64))
    return _digest(list(a.shape), to_numpy(xp.take(a, xp.asarray(idx), axis=0)))


def state_digest(net, optimizer, rng) -> str:
    """Hash of the weights, optimizer state and shuffling RNG: equal on every rank or wrong."""
    state = optimizer.state_dict()
    arrays = [to_numpy(p) for p in net.params.values()]
    arrays += [to_numpy(state["arrays"][k]) for k in sorted(state["arrays"])]
    return _digest(list(net.params), sorted(state["arrays"]), state["t"], rng.bit_generator.state,
                   *arrays)


class DataParallel:
    """The gradient buffer, the reducer and the checks of one distributed fit.

    Parameters
    ----------
    ctx : Context
    net : MLP
        On NumPy or CuPy; with CuPy, on the GPU :func:`init` gave this rank.
    nccl : module or None, optional
        ``cupy.cuda.nccl`` to use (default: :func:`xprop.backend.nccl_module`).
    """

    _UNSET = object()

    def __init__(self, ctx: Context, net, nccl=_UNSET):
        self.ctx, self.net, self.xp = ctx, net, net.xp
        name = backend_name(net.xp)
        if name not in ("numpy", "cupy"):  # the same on every rank: a plain error is safe
            raise DistributedError(f"distributed training runs on NumPy or CuPy; the net runs on {name}")
        if name == "cupy":
            if ctx.gpu_error is not None:
                raise DistributedError(f"cannot train a CuPy net on {ctx.size} rank(s): {ctx.gpu_error}")
            here = _backend.device_index(net.device)
            # (with init(gpu=False) the script chose the devices itself: nothing to compare)
            wrong = [(r, h, g) for r, (h, g) in enumerate(ctx.allgather((here, ctx.gpu)))
                     if g is not None and h != g]
            if wrong:
                r, h, g = wrong[0]
                raise DistributedError(
                    f"rank {r}'s net is on GPU {h} but init() gave that rank GPU {g}; call "
                    "xprop.distributed.init() at the top of the script, before building the net")
        self.grads = GradBuffer(net)
        if nccl is DataParallel._UNSET:
            nccl = _backend.nccl_module() if name == "cupy" else None
        self.reducer = make_reducer(ctx, self.grads.flat, name, nccl)
        self.path = self.reducer.path
        self.plan = None
        self._local = None

    # ---- before training
    def agree(self, signature: dict, seed):
        """Check that every rank was called alike; the seed all ranks use.

        ``signature`` is a JSON-able dict of what must be equal on every rank
        (sizes, hyperparameters, data digests). A ``seed`` of None is replaced
        by one drawn on rank 0, so that all ranks shuffle alike.
        """
        everyone = self.ctx.allgather(signature)
        diffs = sorted({k for other in everyone for k in set(other) | set(everyone[0])
                        if other.get(k) != everyone[0].get(k)})
        if diffs:
            detail = "; ".join(f"{k}: " + ", ".join(f"rank {r} {s.get(k)!r}" for r, s in enumerate(everyone))
                               for k in diffs[:4])
            raise DistributedError(
                f"the {self.ctx.size} ranks called fit differently ({detail}); every rank must get "
                "the same data (in full) and the same arguments")
        if seed is None:
            seed = self.ctx.bcast(int(numpy.random.SeedSequence().entropy) if self.ctx.is_root else None)
        return seed

    def broadcast_params(self, net) -> None:
        """Give every rank rank 0's weights (one broadcast of a host buffer)."""
        host = numpy.concatenate([to_numpy(p).ravel() for p in net.params.values()])
        self.ctx.comm.Bcast(host, root=0)
        params, offset = {}, 0
        for name, p in net.params.items():
            n = int(p.size)
            params[name] = host[offset:offset + n].reshape(tuple(p.shape))
            offset += n
        net.set_params(params)

    def check_same_state(self, net, optimizer, rng, resumed: bool) -> None:
        """Refuse to train when ranks start from different weights or optimizer state."""
        digests = self.ctx.allgather(state_digest(net, optimizer, rng))
        odd = [r for r, d in enumerate(digests) if d != digests[0]]
        if odd:
            why = ("every rank reads the checkpoint on resume: it must be the same file on every "
                   "node (a shared filesystem, or copy it)" if resumed else "the weights were broadcast")
            raise DistributedError(f"rank(s) {odd} start from a different state than rank 0; {why}")

    def prepare(self, step, m: int, B: int) -> ShardPlan:
        """Plan the run's shards and point the step's gradient buffers at the flat buffer."""
        self.plan = ShardPlan(m, B, self.ctx.size, self.ctx.rank)
        if any(self.plan.local_sizes):
            self.grads.adopt(step)
        return self.plan

    def local_rows(self, X, Y, order):
        """This rank's rows of the epoch, step after step (``order`` None: unshuffled, cached)."""
        if order is None:
            if self._local is None:
                idx = self.xp.asarray(self.plan.positions)
                self._local = (self.xp.take(X, idx, axis=0), self.xp.take(Y, idx, axis=0))
            return self._local
        idx = self.xp.asarray(order[self.plan.positions])
        return self.xp.take(X, idx, axis=0), self.xp.take(Y, idx, axis=0)

    # ---- every step
    def allreduce(self) -> None:
        """Sum the flat gradient buffer over all ranks, in place."""
        flat = self.grads.flat
        if not self.ctx.timing:
            t0 = time.perf_counter()
            self.reducer.allreduce(flat)
        else:
            _backend.synchronize(self.xp)
            t0 = time.perf_counter()
            self.reducer.allreduce(flat)
            _backend.synchronize(self.xp)
        stats = self.ctx.stats
        stats["allreduce_seconds"] += time.perf_counter() - t0
        stats["allreduce_calls"] += 1


# --------------------------------------------------------------------------
# Launching
# --------------------------------------------------------------------------
def find_mpiexec() -> str | None:
    """The ``mpiexec`` next to this Python (the mpich wheel puts it there), else on PATH."""
    beside = Path(sys.executable).parent / ("mpiexec.exe" if os.name == "nt" else "mpiexec")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("mpiexec")
