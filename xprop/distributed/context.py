"""This process's place in an MPI job: :func:`init` (MPI started once per process) and the
:class:`Context` (rank, size, local rank, GPU, small collectives, fail-fast).

mpi4py is imported by :func:`import_mpi`, the first time distributed training
is asked for; nothing here imports it at import time.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
import warnings

import numpy

from .. import backend as _backend
from ..signals import ignore_further
from .errors import INSTALL_HINT, DistributedError, DistributedWarning

__all__ = ["assign_gpus", "import_mpi", "Context", "init"]


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
        self.watchdog = None                 # the rank timeout's thread while a fit runs
        self._watch_comm = None

    @property
    def is_root(self) -> bool:
        """Rank 0: the one that shows progress and writes files."""
        return self.rank == 0

    def __repr__(self) -> str:
        return (f"Context(rank={self.rank}, size={self.size}, local_rank={self.local_rank}, "
                f"gpu={self.gpu})")

    # ---- the rank timeout (xprop.distributed.watchdog)
    @contextlib.contextmanager
    def watched(self, timeout):
        """This rank's rank-timeout thread around the block (``timeout`` None: none).

        Collective the first time (a ``Dup`` of the communicator). Needs
        ``MPI_THREAD_MULTIPLE``; without it rank 0 warns
        (:class:`DistributedWarning`) and the block runs without a timeout.
        """
        if timeout is not None and self.size > 1:
            self.watchdog = self._start_watchdog(timeout)
        try:
            yield
        finally:
            if self.watchdog is not None:
                self.watchdog.stop()
                self.watchdog = None

    def _start_watchdog(self, timeout):
        from .watchdog import Watchdog  # noqa: PLC0415

        if self.MPI.Query_thread() < self.MPI.THREAD_MULTIPLE:
            if self.is_root:
                warnings.warn("xprop.distributed: the MPI library was not started with "
                              "MPI_THREAD_MULTIPLE, so the rank timeout cannot run; a stopped rank "
                              "would leave the others waiting", DistributedWarning, stacklevel=4)
            return None
        if self._watch_comm is None:
            self._watch_comm = self.comm.Dup()
        return Watchdog(self._watch_comm, timeout, self.comm.Abort, self.MPI).start()

    def waiting(self, what: str):
        """A block where this rank waits for the others (watched by the rank timeout)."""
        w = self.watchdog
        return contextlib.nullcontext() if w is None else w.waiting(what)

    # ---- small collectives (host, once per epoch or once per run)
    def allgather(self, obj, what: str = "allgather") -> list:
        with self.waiting(what):
            return list(self.comm.allgather(obj))

    def bcast(self, obj, root: int = 0, what: str = "broadcast"):
        with self.waiting(what):
            return self.comm.bcast(obj, root=root)

    def allreduce_sum(self, values, what: str = "small allreduce") -> numpy.ndarray:
        """Element-wise sum over ranks of a small float64 host vector."""
        buf = numpy.array(values, dtype=numpy.float64)
        with self.waiting(what):
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return buf

    def allreduce_max(self, values, what: str = "small allreduce") -> numpy.ndarray:
        """Element-wise maximum over ranks of a small float64 host vector."""
        buf = numpy.array(values, dtype=numpy.float64)
        with self.waiting(what):
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.MAX)
        return buf

    def any(self, flag: bool, what: str = "stop vote") -> bool:
        """True on every rank when ``flag`` is true on any."""
        return bool(self.allreduce_sum([1.0 if flag else 0.0], what=what)[0] > 0)

    # ---- failure: never leave a rank waiting
    @contextlib.contextmanager
    def fail_fast(self, passthrough=()):
        """Abort the whole job when this rank fails on its own, saying why in one line.

        An exception raised on one rank only (a bug in a callback, a full
        disk on rank 0, Ctrl-C) would leave the other ranks waiting forever in
        the next collective. Inside this block such an exception is reported
        in one line, ``xprop: error: rank r of n: <what>; ...`` with
        :attr:`failure_hint` (true for what is on disk), and ``MPI_Abort`` ends
        every rank, so ``mpiexec`` exits at once (``XPROP_TRACEBACK=1`` adds
        the traceback). Ctrl-C and SIGTERM reach every rank at once: rank 0
        reports them (:attr:`interrupt_report`, e.g. the command line's
        "resume with" line) and ends its process with 128 + the signal number,
        which ends the job; another
        rank stays quiet for :attr:`interrupt_grace` seconds, which rank 0's
        abort cuts short, and reports it itself only if rank 0 did not.
        :class:`DistributedError` and the classes in ``passthrough`` are
        raised alike on every rank and propagate normally; so does anything
        in a job of one rank.
        """
        try:
            yield
        except (DistributedError, *passthrough):
            raise
        except BaseException as exc:
            if self.size == 1:
                raise
            if isinstance(exc, KeyboardInterrupt):
                ignore_further()                       # on the way out: a second signal changes nothing
                if not self.is_root:
                    time.sleep(self.interrupt_grace)   # rank 0 speaks and aborts us meanwhile
                line = (self.interrupt_report(exc) if self.interrupt_report is not None
                        else f"xprop: rank {self.rank} of {self.size} interrupted ({type(exc).__name__}); "
                             "all ranks stopped. The checkpoint of the last completed epoch, if any, "
                             "is intact")
                status = 128 + getattr(exc, "signum", 2)
            else:
                detail = ""
                if os.environ.get("XPROP_TRACEBACK", "").strip() not in ("", "0"):
                    detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                what = "; ".join(t.strip() for t in (str(exc) or type(exc).__name__).splitlines() if t.strip())
                line = (f"{detail}xprop: error: rank {self.rank} of {self.size}: {what}; all ranks "
                        f"stopped (MPI_Abort) so that none waits forever. {self.failure_hint()}")
                status = 1
            sys.stderr.write(line.rstrip() + "\n")
            sys.stderr.flush()
            if isinstance(exc, KeyboardInterrupt):
                # Ending this process ends the job (the launcher stops the other ranks, even
                # one waiting in a collective), with 128 + the signal number and without
                # MPI_Abort's own line: the one line above stays the only one.
                sys.stdout.flush()
                os._exit(status)
            self.comm.Abort(status)
            raise  # pragma: no cover - Abort does not return

    # Set by the command line: what to say when this job is interrupted or fails on one rank.
    interrupt_report = None
    interrupt_grace = 5.0

    @staticmethod
    def failure_hint() -> str:
        return "The checkpoint of the last completed epoch, if any, is intact."

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
