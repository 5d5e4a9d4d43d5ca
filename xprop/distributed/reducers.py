"""How the flat gradient buffer is summed over all ranks, in place: MPI, NCCL or staged.

NumPy
    MPI ``Allreduce(IN_PLACE)`` on the host buffer.
CuPy with NCCL
    NCCL's allreduce on the device buffer (``cupy.cuda.nccl``; the NCCL
    runtime comes from the ``nvidia-nccl-cu12`` or ``-cu13`` wheel, as CuPy's CUDA;
    :func:`xprop.backend.nccl_wheel`). MPI only carries the
    NCCL unique id from rank 0 to the others.
CuPy without NCCL
    The buffer is copied to the host, reduced by MPI and copied back, with a
    :class:`DistributedWarning` on rank 0.
"""

from __future__ import annotations

import warnings

import numpy

from .. import backend as _backend
from .errors import DistributedError, DistributedWarning

__all__ = ["choose_path", "HostReducer", "StagedReducer", "NcclReducer", "make_reducer"]


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
        f"libnccl; pip install {_backend.nccl_wheel()}); gradients go through host memory with an MPI "
        "allreduce instead, which is slower")


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
