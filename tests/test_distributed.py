"""Tests for data-parallel training (xprop.distributed, fit(..., distributed=True)).

Two kinds:

- pure logic, in this process, with fake communicators and fake NCCL modules:
  the batch-split rule, the m_r/B weighting, the flat gradient buffer, the
  choice of GPU and reduction path, failing fast;
- real MPI jobs, ``mpiexec -n 2 python tests/dist_worker.py``, compared with a
  one-process fit run here. These are skipped, with the reason, where mpi4py
  or mpiexec is missing (``pip install 'xprop[dist]'``). Each job runs under a
  subprocess timeout, so a hang fails the test instead of the CI job.

Tolerance: 2 ranks against 1 process differ only in the order of the
floating-point sums (a gradient summed as two half-batch sums plus one
allreduce instead of one sum), which is what the "backends" entry of the
tolerance table bounds; ranks against each other must agree bit for bit.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import xprop
import xprop.distributed as dist
from xprop.distributed import (
    Context,
    DistributedError,
    DistributedWarning,
    GradBuffer,
    NcclReducer,
    ShardPlan,
    StagedReducer,
    assign_gpus,
    choose_path,
    make_reducer,
    shard_bounds,
    shard_sizes,
)
from xprop.fast import TrainStep
from xprop.flat import FlatDict
from xprop.io import read_npz
from xprop.tolerances import tolerance

HERE = Path(__file__).resolve().parent
WORKER = HERE / "dist_worker.py"
JOB_TIMEOUT = 60  # seconds; a job that hangs fails its test


def _load_worker():
    spec = importlib.util.spec_from_file_location("dist_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


worker = _load_worker()


def rel_err(a, b):
    """Norm-wise relative error, as xprop.tolerances defines it."""
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), np.finfo(float).tiny))


# ======================================================================== fakes
class FakeMPI:
    """The few names of mpi4py.MPI that xprop uses."""

    IN_PLACE = object()
    SUM = "sum"


class FakeComm:
    """A communicator of ``size`` ranks seen from rank ``rank``, without MPI.

    ``others`` gives what the other ranks contribute to allgather, in rank
    order without this rank (default: the same as this rank). Allreduce sums
    ``peer_values`` (arrays from the other ranks) into the buffer.
    """

    def __init__(self, rank=0, size=1, others=None, peer_values=()):
        self.rank, self.size, self.others = rank, size, others
        self.peer_values = list(peer_values)
        self.aborted = None
        self.calls = []

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    def allgather(self, obj):
        others = self.others if self.others is not None else [obj] * (self.size - 1)
        out = list(others)
        out.insert(self.rank, obj)
        return out

    def bcast(self, obj, root=0):
        self.calls.append(("bcast", obj))
        return obj

    def Bcast(self, buf, root=0):
        self.calls.append(("Bcast", buf.size))

    def Allreduce(self, sendbuf, recvbuf, op=None):
        assert sendbuf is FakeMPI.IN_PLACE and op == FakeMPI.SUM
        self.calls.append(("Allreduce", recvbuf.size))
        for v in self.peer_values:
            recvbuf += v

    def Abort(self, code):
        self.aborted = code
        raise SystemExit(f"aborted with {code}")


def fake_context(rank=0, size=1, **kw):
    return Context(FakeComm(rank, size, **kw), FakeMPI)


class FakeNccl:
    """Stands in for cupy.cuda.nccl: records the communicator and its calls."""

    NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM = 7, 8, 0

    def __init__(self):
        self.created = []
        self.reduced = []
        nccl = self

        class NcclCommunicator:
            def __init__(self, ndev, uid, rank):
                nccl.created.append((ndev, uid, rank))

            def allReduce(self, send, recv, count, dtype, op, stream):
                nccl.reduced.append((send, recv, count, dtype, op, stream))

        self.NcclCommunicator = NcclCommunicator

    @staticmethod
    def get_unique_id():
        return b"unique-id"


@pytest.fixture
def digits64():
    X, y = worker.digits()
    return X, y


# ===================================================== the split of a global batch
@pytest.mark.parametrize("N", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("B", [1, 2, 5, 32, 33, 359])
def test_shards_follow_numpy_array_split(B, N):
    """The first B mod N ranks get ⌈B/N⌉ rows, the rest ⌊B/N⌋, in rank order, covering the batch."""
    expected = np.array_split(np.arange(B), N)
    assert shard_sizes(B, N) == [len(part) for part in expected]
    for r, part in enumerate(expected):
        lo, hi = shard_bounds(B, N, r)
        assert list(range(lo, hi)) == part.tolist()


def test_a_batch_smaller_than_the_ranks_leaves_some_ranks_empty():
    assert shard_sizes(1, 2) == [1, 0]
    assert shard_sizes(2, 3) == [1, 1, 0]


@pytest.mark.parametrize("m,B,N", [(1437, 32, 2), (1437, 33, 2), (1437, 359, 2), (10, 4, 3), (5, 8, 3)])
def test_the_plans_of_all_ranks_cover_each_batch_once(m, B, N):
    plans = [ShardPlan(m, B, N, r) for r in range(N)]
    steps = -(-m // min(B, m))
    assert all(p.steps == steps for p in plans)
    for s in range(steps):
        rows = []
        for p in plans:
            rows += p.positions[p.offsets[s]:p.offsets[s + 1]].tolist()
        start = s * B
        assert rows == list(range(start, min(start + B, m)))            # every row once, in order
        assert sum(p.weights[s] for p in plans) == pytest.approx(1.0, abs=1e-15)
        assert all(p.weights[s] == p.local_sizes[s] / plans[0].batch_sizes[s] for p in plans)


def test_plan_with_a_last_batch_of_one_row_gives_rank_1_a_zero_weight():
    # 1437 = 4·359 + 1: the last global batch has one row, on rank 0.
    p0, p1 = ShardPlan(1437, 359, 2, 0), ShardPlan(1437, 359, 2, 1)
    assert p0.local_sizes == [180, 180, 180, 180, 1] and p1.local_sizes == [179, 179, 179, 179, 0]
    assert p1.weights[-1] == 0.0 and p0.weights[-1] == 1.0


# ===================================================== weighting: Σ_r (m_r/B) ḡ_r = ḡ
@pytest.mark.parametrize("layout", ["rows", "columns"])
@pytest.mark.parametrize("B,N", [(33, 2), (32, 3), (2, 3)])
def test_weighted_sum_over_fake_ranks_is_the_full_batch_mean_gradient(digits64, B, N, layout):
    """Each fake rank's TrainStep gives the mean gradient of its shard; weighted by m_r/B and
    summed, it is the mean gradient of the whole batch. A rank with no rows adds 0."""
    X, y = digits64
    net = xprop.MLP([64, 32, 10], output="softmax", backend="numpy", dtype="float64", seed=1,
                    layout=layout)
    Xb, yb = X[:B], y[:B]
    _, cache = net.forward(Xb.T if layout == "columns" else Xb)
    full = net.backward(cache, yb)
    Xr = xprop.validation.check_inputs(net, Xb.T if layout == "columns" else Xb)
    Yr = xprop.validation.check_targets(net, yb, B)
    total = {k: np.zeros_like(v) for k, v in full.items()}
    for r in range(N):
        lo, hi = shard_bounds(B, N, r)
        if hi == lo:
            continue                                   # zero rows: weight 0, nothing to add
        _, _, grads = TrainStep(net)(Xr[lo:hi], Yr[lo:hi])
        for k in total:
            total[k] += (hi - lo) / B * grads[k]
    for k in full:
        assert total[k].shape == full[k].shape
        assert rel_err(total[k], full[k]) <= tolerance("backends", "float64"), k


# ===================================================== the flat gradient buffer
@pytest.mark.parametrize("layout", ["rows", "columns"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_grad_buffer_pack_unpack_round_trip(layout, dtype):
    net = xprop.MLP([5, 4, 3], backend="numpy", dtype=dtype, seed=0, layout=layout)
    buf = GradBuffer(net)
    assert buf.flat.size == net.n_params and buf.flat.dtype == net.dtype
    assert buf.nbytes == net.n_params * np.dtype(dtype).itemsize
    rng = np.random.default_rng(0)
    grads = {f"d{k}": rng.standard_normal(p.shape).astype(dtype) for k, p in net.params.items()}
    buf.pack(grads)
    out = buf.unpack()
    assert list(out) == [f"d{k}" for k in net.params]
    for k, g in grads.items():
        assert out[k].shape == g.shape and out[k].dtype == g.dtype
        assert np.array_equal(out[k], g)
        assert np.shares_memory(out[k], buf.flat)           # views, not copies
    # the flat buffer holds the row-layout gradients one after another
    rows = [grads[f"d{k}"].T if (layout == "columns" and k.startswith("W")) else grads[f"d{k}"]
            for k in net.params]
    assert np.array_equal(buf.flat, np.concatenate([r.ravel() for r in rows]))
    buf.flat *= 2                                            # a reduction in place shows in the views
    assert np.array_equal(out["dW1"], 2 * grads["dW1"])
    if layout == "rows":   # laid out like net.params.flat: the optimizer can update the whole buffer
        assert isinstance(out, FlatDict) and out.flat is buf.flat
        assert [v.shape for v in out.values()] == [p.shape for p in net.params.values()]


@pytest.mark.parametrize("layout", ["rows", "columns"])
def test_train_step_writes_its_gradients_into_the_flat_buffer(digits64, layout):
    """After adopt(), packing is free: the step's grads are views of the buffer, equal to the reference."""
    X, y = digits64
    net = xprop.MLP([64, 32, 10], backend="numpy", dtype="float64", seed=3, layout=layout)
    buf, step = GradBuffer(net), TrainStep(net)
    buf.adopt(step)
    for m in (17, 5, 30):    # every batch size, smaller or larger than the first
        Xr = xprop.validation.check_inputs(net, X[:m].T if layout == "columns" else X[:m])
        Yr = xprop.validation.check_targets(net, y[:m], m)
        _, _, grads = step(Xr, Yr)
        assert grads is buf.grads
        _, cache = net.forward_rows(Xr)
        reference = net.grads_to_layout(net.backward_rows(cache, Yr))
        for k, g in grads.items():
            assert np.shares_memory(g, buf.flat)
            assert rel_err(g, reference[k]) <= tolerance("fast", "float64"), (m, k)


# ===================================================== GPUs and reduction paths
def test_ranks_seeing_the_same_gpus_take_their_local_rank():
    assert assign_gpus([["a", "b"], ["a", "b"]]) == [0, 1]


def test_ranks_with_their_own_visible_gpu_each_take_device_0():
    # a launcher that sets CUDA_VISIBLE_DEVICES per rank (srun --gpus-per-task=1)
    assert assign_gpus([["a"], ["b"], ["c"]]) == [0, 0, 0]


@pytest.mark.parametrize("visible", [[["a", "b"]] * 3, [["a"], ["a"]], [["a"], []]])
def test_a_local_rank_beyond_the_gpu_count_is_an_error(visible):
    """NCCL forbids two ranks on one GPU: local rank ≥ device count is refused, with the fix."""
    with pytest.raises(DistributedError, match=r"local rank \d+ has no GPU of its own.*-ppn"):
        assign_gpus(visible)


def test_select_gpu_with_too_few_gpus_reports_the_error(monkeypatch):
    """Rank 2 of 3 on a node with 2 GPUs: required → error; not required → recorded for later."""
    monkeypatch.setattr(xprop.backend, "gpu_bus_ids", lambda: ["a", "b"])
    used = []
    monkeypatch.setattr(xprop.backend, "use_device", used.append)
    ctx = Context(FakeComm(2, 3, others=[(0, 0, ["a", "b"]), (0, 1, ["a", "b"])]), FakeMPI, 2, 3, 0)
    with pytest.raises(DistributedError, match="local rank 2 has no GPU of its own"):
        ctx.select_gpu(required=True)
    ctx.select_gpu(required=False)
    assert ctx.gpu is None and "local rank 2" in ctx.gpu_error and used == []


def test_select_gpu_uses_the_local_rank(monkeypatch):
    monkeypatch.setattr(xprop.backend, "gpu_bus_ids", lambda: ["a", "b"])
    used = []
    monkeypatch.setattr(xprop.backend, "use_device", used.append)
    ctx = Context(FakeComm(1, 2, others=[(0, 0, ["a", "b"])]), FakeMPI, 1, 2, 0)
    ctx.select_gpu(required=True)
    assert ctx.gpu == 1 and used == [1] and ctx.gpu_error is None


def test_select_gpu_on_a_machine_without_gpus(monkeypatch):
    monkeypatch.setattr(xprop.backend, "gpu_bus_ids", lambda: [])
    ctx = fake_context(0, 2)
    ctx.select_gpu(required=False)
    assert ctx.gpu is None and ctx.gpu_error == "no rank sees a CUDA device"
    with pytest.raises(DistributedError, match="no rank sees a CUDA device"):
        ctx.select_gpu(required=True)


def test_the_nccl_hint_names_the_wheel_for_cupys_cuda(monkeypatch):
    monkeypatch.setattr(xprop.backend, "nccl_wheel", lambda: "nvidia-nccl-cu13")   # as with cupy-cuda13x
    _, warning = choose_path("cupy", [False, True])
    assert "pip install nvidia-nccl-cu13" in warning and "cu12" not in warning


def test_path_choice():
    assert choose_path("numpy", [False, False]) == ("mpi", None)
    assert choose_path("cupy", [True, True]) == ("nccl", None)
    path, warning = choose_path("cupy", [True, False])
    assert path == "staged" and "rank(s) 1" in warning and "nvidia-nccl-cu12" in warning
    assert "\n" not in warning                                   # one line
    with pytest.raises(DistributedError, match="NumPy or CuPy"):
        choose_path("array_api_strict", [False])


def test_without_nccl_the_gradients_are_staged_through_the_host_with_a_warning():
    ctx = fake_context(0, 2, peer_values=[np.full(6, 10.0, dtype=np.float32)])
    flat = np.arange(6, dtype=np.float32)
    with pytest.warns(DistributedWarning, match="NCCL is not available on any rank.*host memory"):
        reducer = make_reducer(ctx, flat, "cupy", None)
    assert isinstance(reducer, StagedReducer) and reducer.host.dtype == np.float32
    reducer.allreduce(flat)                                       # device → host, MPI, host → device
    assert np.array_equal(flat, np.arange(6, dtype=np.float32) + 10)


def test_only_rank_0_warns_about_the_slow_path():
    with pytest.warns(DistributedWarning):
        make_reducer(fake_context(0, 2), np.zeros(3), "cupy", None)
    import warnings  # noqa: PLC0415

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_reducer(fake_context(1, 2), np.zeros(3), "cupy", None)


def test_nccl_missing_on_one_rank_makes_every_rank_stage():
    """The path is chosen from what all ranks report, so no rank waits in NCCL for another in MPI."""
    ctx = fake_context(1, 2, others=[False])                     # rank 0 has no NCCL
    reducer = make_reducer(ctx, np.zeros(3), "cupy", FakeNccl())
    assert isinstance(reducer, StagedReducer)


def test_with_nccl_the_unique_id_goes_through_mpi_and_the_reduction_through_nccl():
    nccl = FakeNccl()
    ctx = fake_context(0, 2)
    flat = np.zeros(5, dtype=np.float64)
    reducer = make_reducer(ctx, flat, "cupy", nccl, pointer=lambda a: 1234, stream=lambda: 99)
    assert isinstance(reducer, NcclReducer)
    assert ("bcast", b"unique-id") in ctx.comm.calls             # rank 0's id, broadcast by MPI
    assert nccl.created == [(2, b"unique-id", 0)]
    reducer.allreduce(flat)
    # in place (send = recv), whole buffer, float64, sum, on the current stream; no MPI allreduce
    assert nccl.reduced == [(1234, 1234, 5, FakeNccl.NCCL_FLOAT64, FakeNccl.NCCL_SUM, 99)]
    assert not any(c[0] == "Allreduce" for c in ctx.comm.calls)


def test_the_host_path_is_one_in_place_allreduce_of_the_whole_buffer():
    ctx = fake_context(0, 2, peer_values=[np.ones(4)])
    reducer = make_reducer(ctx, np.zeros(4), "numpy", None)
    flat = np.arange(4.0)
    reducer.allreduce(flat)
    assert np.array_equal(flat, np.arange(4.0) + 1) and ctx.comm.calls == [("Allreduce", 4)]


# ===================================================== failing fast, checks
def test_an_error_on_one_rank_aborts_every_rank(capsys):
    ctx = fake_context(1, 2)
    with pytest.raises(SystemExit), ctx.fail_fast():
        raise RuntimeError("disk full")
    assert ctx.comm.aborted == 1
    err = capsys.readouterr().err
    # one line, no traceback (XPROP_TRACEBACK=1 adds it), with a hint true for any run
    assert err.strip().splitlines() == [
        "xprop: error: rank 1 of 2: disk full; all ranks stopped (MPI_Abort) so that none waits "
        "forever. The checkpoint of the last completed epoch, if any, is intact."], err


@pytest.mark.parametrize("exc", [DistributedError("same on every rank"), xprop.TrainingDiverged(1, 2, 0.5)])
def test_errors_raised_alike_on_every_rank_propagate(exc):
    ctx = fake_context(1, 2)
    with pytest.raises(type(exc)), ctx.fail_fast(passthrough=(xprop.TrainingDiverged,)):
        raise exc
    assert ctx.comm.aborted is None


def test_a_job_of_one_rank_raises_normally():
    ctx = fake_context(0, 1)
    with pytest.raises(RuntimeError), ctx.fail_fast():
        raise RuntimeError("x")
    assert ctx.comm.aborted is None


def test_ranks_called_with_different_arguments_are_refused():
    net = xprop.MLP([4, 3], backend="numpy", seed=0)
    ctx = fake_context(0, 2, others=[{"batch_size": 16, "epochs": 3}])
    dp = xprop.distributed.DataParallel(ctx, net)
    with pytest.raises(DistributedError, match="batch_size: rank 0 32, rank 1 16"):
        dp.agree({"batch_size": 32, "epochs": 3}, seed=0)


def test_without_a_seed_rank_0_draws_one_for_all():
    dp = xprop.distributed.DataParallel(fake_context(0, 2), xprop.MLP([4, 3], backend="numpy", seed=0))
    seed = dp.agree({}, seed=None)
    assert isinstance(seed, int) and ("bcast", seed) in dp.ctx.comm.calls


def test_the_state_hash_sees_one_changed_weight_and_the_optimizer_state():
    """What check_same_state compares: every weight (not a printed summary), the optimizer, the RNG."""
    net = xprop.MLP([300, 200, 10], backend="numpy", seed=0)
    opt, rng = xprop.SGD(momentum=0.9), np.random.default_rng(0)
    before = dist.state_digest(net, opt, rng)
    net.params["W1"][150, 100] += 1e-7                 # deep inside an array numpy prints as "..."
    assert dist.state_digest(net, opt, rng) != before
    before = dist.state_digest(net, opt, rng)
    opt.step(net.params, {f"d{k}": np.zeros_like(v) for k, v in net.params.items()})
    assert dist.state_digest(net, opt, rng) != before  # t and the momentum buffers count
    before = dist.state_digest(net, opt, rng)
    rng.random()
    assert dist.state_digest(net, opt, rng) != before


def test_ranks_starting_from_different_states_are_refused():
    net = xprop.MLP([4, 3], backend="numpy", seed=0)
    dp = xprop.distributed.DataParallel(fake_context(0, 2, others=["another digest"]), net)
    with pytest.raises(DistributedError, match=r"rank\(s\) \[1\] start from a different state.*same file"):
        dp.check_same_state(net, xprop.SGD(), np.random.default_rng(0), resumed=True)


def test_distributed_must_be_a_bool_or_sharded(digits64):
    X, y = digits64
    with pytest.raises(TypeError, match="distributed must be True, False or 'sharded'; got 'yes'"):
        xprop.fit(xprop.MLP([64, 10], backend="numpy"), X, y, distributed="yes")


def test_without_mpi4py_distributed_training_says_how_to_install_it(digits64, monkeypatch):
    X, y = digits64
    monkeypatch.setattr(dist.context, "_CONTEXT", None)
    monkeypatch.setitem(sys.modules, "mpi4py", None)                 # import mpi4py fails
    with pytest.raises(ImportError, match=re.escape("pip install 'xprop[dist]'")):
        xprop.fit(xprop.MLP([64, 10], backend="numpy"), X, y, epochs=1, distributed=True)


def test_importing_xprop_does_not_import_mpi4py():
    code = "import sys, xprop, xprop.distributed; print('mpi4py' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=JOB_TIMEOUT,
                         cwd=HERE.parent, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("optimizer", [{"name": "sgd", "lr": 0.1, "momentum": 0.9}, {"name": "adam", "lr": 0.01}])
def test_the_distributed_code_path_on_one_fake_rank_equals_plain_fit(digits64, optimizer, tmp_path):
    """The data-parallel strategy (plan, flat buffer, weights, reductions) with a one-rank fake
    communicator gives plain fit's weights and history bit for bit."""
    X, y = digits64
    common = dict(epochs=2, batch_size=33, validation=0.2, seed=0, progress=False)
    plain = worker.make_net(100)
    h_plain = xprop.fit(plain, X, y, optimizer=worker.make_optimizer(optimizer), **common)
    net = worker.make_net(100)
    strategy = dist.DataParallelStrategy(fake_context(0, 1))
    settings = xprop.train.Settings(epochs=2, batch_size=33, optimizer=worker.make_optimizer(optimizer),
                                    validation=0.2, shuffle=True, seed=0, checkpoint=tmp_path / "c.npz",
                                    resume=False, patience=None)
    h = xprop.train.run(net, X, y, settings, strategy)
    for k in net.params:
        assert np.array_equal(net.params[k], plain.params[k]), k
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert getattr(h, key) == getattr(h_plain, key), key
    assert read_npz(tmp_path / "c.npz", "checkpoint")[1]["config"]["ranks"] == 1


# ===================================================== real MPI jobs
def _mpi_unavailable():
    try:
        import mpi4py  # noqa: F401, PLC0415
    except ImportError:
        return "mpi4py is not installed (pip install 'xprop[dist]')"
    if dist.find_mpiexec() is None:
        return "no mpiexec next to this Python or on PATH (pip install 'xprop[dist]' brings mpich's)"
    return None


needs_mpi = pytest.mark.skipif(_mpi_unavailable() is not None, reason=str(_mpi_unavailable()))


def launch(tmp, runs, n=2, mpiexec=True):
    """Run the worker on ``n`` ranks over ``runs``; returns (CompletedProcess, seconds)."""
    tmp.mkdir(parents=True, exist_ok=True)
    spec = tmp / "spec.json"
    spec.write_text(json.dumps({"out": str(tmp), "size": n, "runs": runs}))
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(HERE.parent))
    cmd = [sys.executable, str(WORKER), str(spec)]
    if mpiexec:
        cmd = [dist.find_mpiexec(), "-n", str(n), *cmd]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=JOB_TIMEOUT, env=env)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the MPI job did not end within {JOB_TIMEOUT} s (a hang): {' '.join(cmd)}\n"
                    f"{exc.stderr}")
    return proc, time.perf_counter() - t0


def results(tmp, name, what="rank"):
    """The job's metadata and, per rank, its final parameters (``what="start"``: the first
    parameters its optimizer saw)."""
    meta = json.loads((tmp / f"{name}.json").read_text())
    with np.load(tmp / f"{name}.npz") as data:
        ranks = [{k.split(".", 1)[1]: data[k] for k in data.files if k.startswith(f"{what}{r}.")}
                 for r in range(meta["size"])]
    return meta, ranks


SGD_M = {"name": "sgd", "lr": 0.1, "momentum": 0.9}
ADAM = {"name": "adam", "lr": 0.01}
# (name, optimizer, batch size, validation): 33 does not divide by 2; 359 also leaves rank 1
# with no rows in the last batch (1437 = 4·359 + 1).
CASES = [("sgd32", SGD_M, 32, None), ("sgd33", SGD_M, 33, 0.2), ("adam32", ADAM, 32, None),
         ("adam33", ADAM, 33, 0.2), ("adam359", ADAM, 359, None)]
EPOCHS = 3


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One 2-rank job over every case (one mpiexec start for all)."""
    why = _mpi_unavailable()
    if why:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("two_ranks")
    runs = [{"name": n, "optimizer": o, "batch_size": b, "validation": v, "epochs": EPOCHS,
             "checkpoint": "per-rank"} for n, o, b, v in CASES]
    runs.append({"name": "diverge", "optimizer": {"name": "sgd", "lr": 1e9}, "batch_size": 32,
                 "epochs": 2, "checkpoint": "per-rank"})
    proc, _ = launch(tmp, runs)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return tmp


def one_process(optimizer, batch, validation):
    """The reference: plain fit here, with one BLAS thread like each rank (so that a
    bit-for-bit comparison does not depend on how a BLAS splits work between threads)."""
    X, y = worker.digits()
    net = worker.make_net(100)
    try:
        from threadpoolctl import threadpool_limits  # noqa: PLC0415
    except ImportError:
        threadpool_limits = None
    with threadpool_limits(limits=1) if threadpool_limits else contextlib.nullcontext():
        history = xprop.fit(net, X, y, epochs=EPOCHS, batch_size=batch,
                            optimizer=worker.make_optimizer(optimizer), validation=validation,
                            seed=0, progress=False)
    return net, history


@needs_mpi
@pytest.mark.parametrize("name,optimizer,batch,validation", CASES, ids=[c[0] for c in CASES])
def test_two_ranks_train_like_one_process(two_ranks, name, optimizer, batch, validation):
    """Same final weights (rank 1 started from other weights: only the broadcast makes them
    agree), same global training loss, accuracy and validation metrics."""
    meta, ranks = results(two_ranks, name)
    assert meta["size"] == 2 and meta["errors"] == [None, None]
    net, history = one_process(optimizer, batch, validation)
    bound = tolerance("backends", "float64")
    for k, p in net.params.items():
        err = rel_err(ranks[0][k], p)
        assert err <= bound, f"{name}: {k} of 2 ranks vs 1 process: relative error {err:.3g} > {bound}"
    h = meta["history"]
    assert h["epoch"] == history.epoch
    np.testing.assert_allclose(h["loss"], history.loss, rtol=bound)
    assert h["accuracy"] == history.accuracy               # counts of correct predictions: exact
    if validation is not None:
        np.testing.assert_allclose(h["val_loss"], history.val_loss, rtol=bound)
        assert h["val_accuracy"] == history.val_accuracy


@needs_mpi
@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_ranks_end_with_identical_weights(two_ranks, name):
    _, ranks = results(two_ranks, name)
    for k in ranks[0]:
        assert np.array_equal(ranks[0][k], ranks[1][k]), f"{name}: {k} differs between rank 0 and rank 1"


@needs_mpi
def test_every_rank_starts_from_rank_0s_weights(two_ranks):
    """Rank r builds its net with seed 100 + r; the first step of every rank sees rank 0's."""
    _, start = results(two_ranks, "sgd32", "start")
    initial = worker.make_net(100).params
    assert sorted(start[1]) == sorted(initial)
    for k, p in initial.items():
        assert np.array_equal(start[0][k], p), k
        assert np.array_equal(start[1][k], p), k
    assert not np.array_equal(worker.make_net(101).params["W1"], initial["W1"])   # rank 1's own differ


@needs_mpi
def test_only_rank_0_writes_the_checkpoint(two_ranks):
    meta, _ = results(two_ranks, "sgd32")
    assert meta["writes"] == [EPOCHS, 0]
    assert (two_ranks / "sgd32-rank0" / "checkpoint.npz").is_file()
    assert list((two_ranks / "sgd32-rank1").iterdir()) == []
    _, ckpt = read_npz(two_ranks / "sgd32-rank0" / "checkpoint.npz", "checkpoint")
    assert ckpt["epoch"] == EPOCHS and ckpt["config"]["ranks"] == 2


@needs_mpi
def test_divergence_on_the_ranks_stops_them_all(two_ranks):
    meta, _ = results(two_ranks, "diverge")
    assert [e["type"] for e in meta["errors"]] == ["TrainingDiverged", "TrainingDiverged"]
    assert meta["errors"][0]["message"] == meta["errors"][1]["message"]      # same epoch and step
    assert "epoch 1" in meta["errors"][0]["message"]
    assert meta["writes"] == [0, 0]                                          # nothing checkpointed


@needs_mpi
def test_ranks_given_different_arguments_stop_with_the_same_error(tmp_path):
    runs = [{"name": "odd", "optimizer": SGD_M, "batch_size": 32, "epochs": 1,
             "per_rank": {"1": {"batch_size": 16}}},
            {"name": "seeds", "optimizer": SGD_M, "batch_size": 32, "epochs": 1, "seed": None}]
    proc, _ = launch(tmp_path, runs)
    assert proc.returncode == 0, proc.stderr
    meta, _ = results(tmp_path, "odd")
    assert [e["type"] for e in meta["errors"]] == ["DistributedError"] * 2
    assert "batch_size: rank 0 32, rank 1 16" in meta["errors"][0]["message"]
    # seed=None on every rank: rank 0 draws one seed for all, so they still agree
    meta, ranks = results(tmp_path, "seeds")
    assert meta["errors"] == [None, None]
    assert all(np.array_equal(ranks[0][k], ranks[1][k]) for k in ranks[0])


@needs_mpi
def test_one_rank_without_mpiexec_equals_plain_fit_bit_for_bit(tmp_path):
    """A script with distributed=True run by plain python is a job of one rank: plain fit's result."""
    proc, _ = launch(tmp_path, [{"name": "solo", "optimizer": ADAM, "batch_size": 33, "epochs": EPOCHS,
                                 "validation": 0.2}], n=1, mpiexec=False)
    assert proc.returncode == 0, proc.stderr
    meta, ranks = results(tmp_path, "solo")
    net, history = one_process(ADAM, 33, 0.2)
    assert meta["size"] == 1
    for k, p in net.params.items():
        assert np.array_equal(ranks[0][k], p), k
    assert meta["history"]["loss"] == history.loss and meta["history"]["val_loss"] == history.val_loss


@needs_mpi
@pytest.mark.parametrize("how", ["sigkill", "raise"])
def test_a_rank_that_dies_ends_the_job_fast_and_the_checkpoint_resumes(two_ranks, tmp_path, how):
    """Rank 1 dies (SIGKILL) or raises at step 60 of 135 (epoch 2): the job ends at once with an
    error, not a hang; the checkpoint of epoch 1 is intact, and resuming on 2 ranks ends with the
    weights of the uninterrupted 2-rank run, bit for bit."""
    run = {"name": "job", "optimizer": SGD_M, "batch_size": 32, "epochs": EPOCHS, "checkpoint": "shared",
           "fail": {"rank": 1, "step": 60, "how": how}}
    proc, seconds = launch(tmp_path, [run])
    assert proc.returncode != 0, "the job should fail when a rank dies"
    assert seconds < JOB_TIMEOUT / 2
    if how == "raise":
        # one line from the failing rank (the other rank's worker may print its own traceback
        # when the abort cuts its collective short: that is this test's harness, not xprop)
        lines = [line for line in proc.stderr.splitlines() if line.startswith("xprop: error: rank")]
        assert lines == ["xprop: error: rank 1 of 2: injected failure at step 60; all ranks stopped "
                         "(MPI_Abort) so that none waits forever. The checkpoint of the last completed "
                         "epoch, if any, is intact."], proc.stderr
    ckpt = tmp_path / "job.ckpt.npz"
    _, meta = read_npz(ckpt, "checkpoint")                     # readable: not torn
    assert meta["epoch"] == 1
    resume = dict(run, resume=True)
    del resume["fail"]
    proc, _ = launch(tmp_path, [resume])
    assert proc.returncode == 0, proc.stderr
    got, ranks = results(tmp_path, "job")
    _, uninterrupted = results(two_ranks, "sgd32")
    assert got["history"]["epoch"] == [1, 2, 3]
    for k in uninterrupted[0]:
        assert np.array_equal(ranks[0][k], uninterrupted[0][k]), k
        assert np.array_equal(ranks[1][k], uninterrupted[0][k]), k
