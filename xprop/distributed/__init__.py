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

The three reduction paths (MPI on the host buffer; NCCL on the device buffer;
CuPy without NCCL staged through the host, with a :class:`DistributedWarning`)
are described in :mod:`xprop.distributed.reducers`.

The package: ``errors`` (what is raised alike on every rank), ``shard`` (the
split and the flat gradient buffer, pure), ``reducers`` (the three paths),
``context`` (MPI, ranks, GPUs: :func:`init`), ``strategy`` (the data-parallel
training strategy and its per-run checks), ``sharded`` (each rank holds only
its rows: the rules and :class:`ShardedStrategy`), ``reference`` (a sharded
run replayed on one process: :func:`sharded_reference`), ``shardfiles``
(:func:`open_shard`: one file per rank, or rows of one big file memory-mapped),
``watchdog`` (the rank timeout), ``launch`` (finding ``mpiexec``).
Nothing here imports mpi4py at import time; :func:`init` does, the first
time distributed training is asked for, and ``import xprop`` does not import
this package at all. Every CuPy access goes through :mod:`xprop.backend`.
"""


from .context import Context, assign_gpus, import_mpi, init
from .errors import INSTALL_HINT, DistributedError, DistributedWarning
from .launch import find_mpiexec
from .reducers import HostReducer, NcclReducer, StagedReducer, choose_path, make_reducer
from .shard import GradBuffer, ShardPlan, shard_bounds, shard_sizes
from .strategy import DataParallel, DataParallelStrategy, sample_digest, state_digest
from .sharded import RankPlan, ShardedStrategy, epoch_key, epoch_plan, rank_order
from .reference import sharded_reference
from .shardfiles import global_scaler, open_shard
from .watchdog import Watchdog

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
    "epoch_plan",
    "make_reducer",
    "open_shard",
    "shard_bounds",
    "shard_sizes",
    "sharded_reference",
]
