"""Sharded data-parallel training (fit(distributed="sharded")) and the rank timeout.

- the rules, pure: the local batch sizes of every step (against a brute-force
  sort of every row's time), each rank's order from the one shared RNG, the single-process
  reference against plain fit where they must coincide;
- data never whole: one file per rank, one big file memory-mapped, and a
  rank's peak memory (measured in a subprocess) is its shard plus one batch;
- real MPI jobs of 2 ranks with shards of different sizes, against
  ``sharded_reference`` to the float64 "backends" tolerance (1e-12);
- a real stopped rank (SIGSTOP) under mpiexec ends the job after the rank
  timeout, with one line naming it and the last completed step.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import xprop
import xprop.distributed as dist
from xprop.io import read_npz
from xprop.distributed import RankPlan, epoch_key, epoch_plan, open_shard, rank_order, sharded_reference
from xprop.distributed.watchdog import Watchdog
from xprop.tolerances import tolerance

from test_distributed import JOB_TIMEOUT, launch, needs_mpi, one_process, rel_err, results, worker


# ====================================================================== the rules
def brute_force_plan(sizes, B):
    """Every row of every rank at time (i + 1/2)/n_r, sorted (ties: lower rank first), cut in B's."""
    keys = sorted((Fraction(2 * i + 1, 2 * n), r) for r, n in enumerate(sizes) for i in range(n))
    ranks = [r for _, r in keys]
    B = min(B, len(ranks))
    return [[ranks[k:k + B].count(r) for r in range(len(sizes))] for k in range(0, len(ranks), B)]


@pytest.mark.parametrize("sizes,B", [([3, 5], 4), ([4, 4], 3), ([500, 937], 33), ([1, 1], 1),
                                     ([10, 0, 7], 4), ([2, 30, 5, 11], 7), ([6], 4), ([3, 5], 100)])
def test_local_batches_follow_the_global_order_of_every_rows_time(sizes, B):
    assert epoch_plan(sizes, B).tolist() == brute_force_plan(sizes, B)


def test_random_plans_match_the_brute_force_and_keep_the_sums():
    rng = np.random.default_rng(5)
    for _ in range(200):
        N = int(rng.integers(1, 6))
        sizes = rng.integers(0, 40, N).tolist()
        if sum(sizes) == 0:
            continue
        B = int(rng.integers(1, 50))
        counts = epoch_plan(sizes, B)
        assert counts.tolist() == brute_force_plan(sizes, B), (sizes, B)
        n = sum(sizes)
        Bm = min(B, n)
        assert counts.sum(axis=0).tolist() == sizes                     # every row once
        assert counts.sum(axis=1).tolist() == [min(Bm, n - s * Bm) for s in range(-(-n // Bm))]
        share = counts.sum(axis=1, keepdims=True) * np.asarray(sizes) / n
        assert np.all(np.abs(counts - share) < 2)                       # within a row or so of proportional


def test_a_worked_plan():
    # rank 0: 3 rows at times 1/6, 3/6, 5/6; rank 1: 5 rows at 1/10, 3/10, 5/10, 7/10, 9/10.
    # In time order: r1 r0 r1 [r0 r1 at 1/2: rank 0 first] r1 r0 r1 → batches of 4: {2, 2}, {1, 3}.
    assert epoch_plan([3, 5], 4).tolist() == [[2, 2], [1, 3]]


@pytest.mark.parametrize("sizes,B", [([500, 937], 33), ([10, 0, 7], 4), ([2, 30, 5, 11], 7)])
def test_a_ranks_plan_is_its_column(sizes, B):
    counts = epoch_plan(sizes, B)
    for r in range(len(sizes)):
        p = RankPlan(sizes, B, r)
        assert p.local_sizes.tolist() == counts[:, r].tolist()
        assert p.batch_sizes.tolist() == counts.sum(axis=1).tolist()
        assert p.weights == [m / b for m, b in zip(counts[:, r], counts.sum(axis=1))]
        assert p.offsets[-1] == sizes[r]


@pytest.mark.parametrize("bad", [[], [0, 0], [3, -1]])
def test_shard_sizes_must_hold_rows(bad):
    with pytest.raises(ValueError, match="shard sizes"):
        epoch_plan(bad, 4)


def test_each_rank_has_its_own_order_from_the_one_shared_rng():
    """An epoch's key is one draw of the run's shuffling RNG; rank r's order is the permutation
    of its rows by SeedSequence(key, spawn_key=(r,)): reproducible, per rank, whatever N."""
    key = epoch_key(np.random.default_rng(np.random.SeedSequence(7).spawn(2)[1]))
    assert key == int(np.random.default_rng(np.random.SeedSequence(7).spawn(2)[1]).integers(0, 2**63))
    a = rank_order(key, 1, 50)
    assert sorted(a.tolist()) == list(range(50))
    assert np.array_equal(a, rank_order(key, 1, 50))                     # reproducible
    assert not np.array_equal(a, rank_order(key, 0, 50))                 # per rank
    assert not np.array_equal(a, rank_order(key + 1, 1, 50))             # per epoch
    g = np.random.default_rng(np.random.SeedSequence(key, spawn_key=(1,)))
    expected = np.arange(50, dtype=np.int32)
    g.shuffle(expected)
    assert np.array_equal(a, expected)


# ====================================================== the single-process reference
def test_one_unshuffled_shard_is_plain_fit_bit_for_bit():
    """With one shard and no shuffling the reference is ordinary mini-batch training."""
    X, y = worker.digits()
    opt = {"name": "adam", "lr": 0.01}
    net, plain = worker.make_net(100), worker.make_net(100)
    h = sharded_reference(net, [(X, y)], epochs=2, batch_size=33, shuffle=False,
                          optimizer=worker.make_optimizer(opt))
    hp = xprop.fit(plain, X, y, epochs=2, batch_size=33, shuffle=False, progress=False,
                   optimizer=worker.make_optimizer(opt))
    for k in net.params:
        assert np.array_equal(net.params[k], plain.params[k]), k
    assert h.loss == hp.loss and h.accuracy == hp.accuracy


def test_the_reference_steps_on_the_rank_ordered_concatenation():
    """One SGD step (batch = all rows) from the same weights: the mean gradient over both shards."""
    X, y = worker.digits()
    Xa, ya, Xb, yb = X[:5], y[:5], X[5:12], y[5:12]
    net, single = worker.make_net(3), worker.make_net(3)
    sharded_reference(net, [(Xa, ya), (Xb, yb)], epochs=1, batch_size=100, optimizer=xprop.SGD(lr=0.5),
                      shuffle=False)
    grads = single.backward(single.forward(X[:12])[1], y[:12])
    for k, p in single.params.items():
        assert rel_err(net.params[k], p - 0.5 * grads[f"d{k}"]) <= tolerance("backends", "float64"), k


def test_the_reference_refuses_what_it_cannot_replay():
    X, y = worker.digits()
    with pytest.raises(ValueError, match="shards: expected a list"):
        sharded_reference(worker.make_net(0), [])
    with pytest.raises(ValueError, match="int seed"):
        sharded_reference(worker.make_net(0), [(X[:10], y[:10])], seed=None)
    with pytest.raises(ValueError, match="one \\(X_val, Y_val\\) per shard"):
        sharded_reference(worker.make_net(0), [(X[:10], y[:10])], validation=[(X[:2], y[:2])] * 2)


# ===================================================================== fit's arguments
def test_distributed_takes_true_false_or_sharded():
    X, y = worker.digits()
    with pytest.raises(TypeError, match="distributed must be True, False or 'sharded'; got 'shard'"):
        xprop.fit(worker.make_net(0), X, y, distributed="shard")


@pytest.mark.parametrize("bad", [0, -1, "10", float("nan"), float("inf"), True])
def test_rank_timeout_must_be_positive_seconds(bad):
    X, y = worker.digits()
    with pytest.raises(ValueError, match="rank_timeout must be a number of seconds > 0 or None"):
        xprop.fit(worker.make_net(0), X, y, epochs=1, rank_timeout=bad)


# ============================================================ data that is never whole
def test_one_file_per_rank(tmp_path):
    X, y = worker.digits()
    for r, (lo, hi) in enumerate([(0, 100), (100, 250)]):
        np.savez(tmp_path / f"part-{r}.npz", X=X[lo:hi], y=y[lo:hi])
    Xl, yl, Xt, yt = open_shard(str(tmp_path / "part-{rank}.npz"), 1, 2)
    assert np.array_equal(Xl, X[100:250]) and np.array_equal(yl, y[100:250]) and Xt is None


@pytest.mark.parametrize("layout", ["npz", "folder", "npy"])
def test_one_big_file_is_memory_mapped_row_range_by_row_range(tmp_path, layout):
    X = np.arange(50 * 4, dtype=np.float32).reshape(50, 4)
    y = np.arange(50) % 3
    if layout == "npz":
        path = tmp_path / "big.npz"
        np.savez(path, X=X, y=y, X_test=X[:7], y_test=y[:7])
    else:
        np.save(tmp_path / "X.npy", X)
        np.save(tmp_path / "y.npy", y)
        path = tmp_path if layout == "folder" else tmp_path / "X.npy"
    rows = []
    for r in range(3):
        Xl, yl, Xt, yt = open_shard(path, r, 3)
        assert isinstance(Xl, np.memmap) and not Xl.flags.writeable
        rows.append(np.asarray(Xl))
        assert np.array_equal(yl, y[[int(v) for v in Xl[:, 0] // 4]])
        if layout == "npz":
            assert np.array_equal(Xt, X[:7][np.array_split(np.arange(7), 3)[r]])
    assert [len(a) for a in rows] == [17, 17, 16]                      # numpy.array_split's rule
    assert np.array_equal(np.concatenate(rows), X)


def test_a_compressed_npz_cannot_be_read_by_rows(tmp_path):
    np.savez_compressed(tmp_path / "c.npz", X=np.zeros((4, 2)), y=np.zeros(4))
    with pytest.raises(ValueError, match=r"X.npy is compressed.*numpy.savez.*part-\{rank\}"):
        open_shard(tmp_path / "c.npz", 0, 2)


def test_a_big_file_without_labels_is_refused(tmp_path):
    np.savez(tmp_path / "b.npz", X=np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"no y array"):
        open_shard(tmp_path / "b.npz", 0, 2)


MEMORY_SCRIPT = textwrap.dedent("""
    import sys
    import xprop, xprop.distributed
    from xprop.distributed import open_shard
    xprop.distributed.init(gpu=False)                  # a job of one rank (MPI's own memory first)
    net = xprop.MLP([128, 64, 10], backend="numpy", dtype="float32", seed=0)
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    open("/proc/self/clear_refs", "w").write("5")      # reset the peak (VmHWM) to the current RSS
    base = status("VmRSS")
    X, y, _, _ = open_shard(sys.argv[1], 3, 8)
    xprop.fit(net, X, y, epochs=1, batch_size=256, distributed="sharded", progress=False)
    print(status("VmHWM") - base, X.nbytes, type(X).__name__)
""")



# the rank timeout of the tests that stop or hang a rank on purpose (seconds)
RANK_TIMEOUT = 2

@needs_mpi
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc peak RSS")
def test_a_ranks_peak_memory_is_its_shard_plus_a_batch_not_the_file(tmp_path):
    """Rank 3 of 8 trains an epoch on its rows of an 83 MB file: its peak resident memory
    (file pages it touched included) grows by its 10 MB shard plus a few MB (one batch, the net,
    code pages touched for the first time), far below the file."""
    rng = np.random.default_rng(0)
    path = tmp_path / "big.npz"
    np.savez(path, X=rng.standard_normal((160_000, 128), dtype=np.float32), y=rng.integers(0, 10, 160_000))
    script = tmp_path / "memory.py"
    script.write_text(MEMORY_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    out = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True,
                         timeout=JOB_TIMEOUT, env=env)
    assert out.returncode == 0, out.stderr
    growth, shard, kind = out.stdout.split()
    growth, shard = int(growth), int(shard)
    assert kind == "memmap" and shard == 20_000 * 128 * 4
    file_bytes = path.stat().st_size
    assert growth < shard + 8 * 2**20, f"peak grew by {growth / 1e6:.1f} MB for a {shard / 1e6:.1f} MB shard"
    assert growth < file_bytes / 4


# ============================================================== real MPI jobs: 2 ranks
SGD_M = {"name": "sgd", "lr": 0.1, "momentum": 0.9}
ADAM = {"name": "adam", "lr": 0.01}
SHARDS = [[0, 500], [500, 1437]]             # 500 and 937 rows: deliberately unequal
# name, optimizer, batch, validation
VAL_ROWS = [[1000, 1300], [1300, 1310]]   # rank 0 holds most of the validation set
SHARDED = [("sh-adam33", ADAM, 33, 0.2), ("sh-sgd32", SGD_M, 32, None), ("sh-adam1000", ADAM, 1000, None)]
EPOCHS = 3


@pytest.fixture(scope="module")
def sharded_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sharded")
    runs = [{"name": n, "optimizer": o, "batch_size": b, "validation": v, "epochs": EPOCHS,
             "checkpoint": "per-rank", "shards": SHARDS} for n, o, b, v in SHARDED]
    runs.append({"name": "sh-valpair", "optimizer": ADAM, "batch_size": 64, "epochs": EPOCHS,
                 "shards": SHARDS, "validation_rows": VAL_ROWS, "patience": 1})
    runs.append({"name": "sh-resume-full", "optimizer": SGD_M, "batch_size": 32, "epochs": EPOCHS,
                 "checkpoint": "shared", "shards": SHARDS})
    proc, _ = launch(tmp, runs)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return tmp


def reference(optimizer, batch, validation, shards=SHARDS, epochs=EPOCHS):
    X, y = worker.digits()
    net = worker.make_net(100)
    from threadpoolctl import threadpool_limits  # noqa: PLC0415

    with threadpool_limits(limits=1):
        h = sharded_reference(net, [(X[lo:hi], y[lo:hi]) for lo, hi in shards], epochs=epochs, batch_size=batch, optimizer=worker.make_optimizer(optimizer),
                              validation=validation, seed=0)
    return net, h


@needs_mpi
@pytest.mark.parametrize("name,optimizer,batch,validation", SHARDED, ids=[c[0] for c in SHARDED])
def test_two_ranks_with_unequal_shards_equal_the_reference(sharded_runs, name, optimizer, batch, validation):
    meta, ranks = results(sharded_runs, name)
    assert meta["size"] == 2 and meta["errors"] == [None, None]
    net, h = reference(optimizer, batch, validation)
    bound = tolerance("backends", "float64")                          # 1e-12
    for k, p in net.params.items():
        err = rel_err(ranks[0][k], p)
        assert err <= bound, f"{name}: {k}: 2 ranks vs sharded_reference: {err:.3g} > {bound}"
        assert np.array_equal(ranks[0][k], ranks[1][k]), f"{name}: {k} differs between the ranks"
    got = meta["history"]
    np.testing.assert_allclose(got["loss"], h.loss, rtol=bound)
    assert got["accuracy"] == h.accuracy
    if validation is not None:
        np.testing.assert_allclose(got["val_loss"], h.val_loss, rtol=bound)
        assert got["val_accuracy"] == h.val_accuracy


@needs_mpi
def test_a_validation_set_held_by_one_rank_and_early_stopping(sharded_runs):
    """Rank 0 passes 300 validation rows, rank 1 ten: the global metrics and the early stopping
    (patience 1, best weights restored) are the reference's."""
    meta, ranks = results(sharded_runs, "sh-valpair")
    assert meta["errors"] == [None, None]
    X, y = worker.digits()
    (a, b), (c, d) = VAL_ROWS
    net = worker.make_net(100)
    from threadpoolctl import threadpool_limits  # noqa: PLC0415

    with threadpool_limits(limits=1):
        h = sharded_reference(net, [(X[lo:hi], y[lo:hi]) for lo, hi in SHARDS], epochs=EPOCHS, batch_size=64, optimizer=worker.make_optimizer(ADAM),
                              validation=[(X[a:b], y[a:b]), (X[c:d], y[c:d])], seed=0)
    bound = tolerance("backends", "float64")
    np.testing.assert_allclose(meta["history"]["val_loss"], h.val_loss, rtol=bound)
    assert meta["history"]["val_accuracy"] == h.val_accuracy
    best = int(np.argmin(h.val_loss)) + 1
    assert meta["history"]["best_epoch"] == best
    if best == EPOCHS:      # nothing to restore: the final weights are the reference's
        for k, p in net.params.items():
            assert rel_err(ranks[0][k], p) <= bound, k


@needs_mpi
def test_sharded_training_is_not_the_full_data_run(sharded_runs):
    """The 2-rank sharded run is its own training (per-rank shuffles), not distributed=True's."""
    _, ranks = results(sharded_runs, "sh-sgd32")
    full, _ = one_process(SGD_M, 32, None)
    assert rel_err(ranks[0]["W1"], full.params["W1"]) > 1e-6


@needs_mpi
def test_rank_0_alone_writes_and_its_rng_state_is_every_ranks(sharded_runs):
    """The checkpoint holds the one shuffling RNG after an epoch key a epoch: every rank's shuffle
    state, since each rank's order derives from the key (rank_order)."""
    meta, _ = results(sharded_runs, "sh-sgd32")
    assert meta["writes"] == [EPOCHS, 0]
    assert list((sharded_runs / "sh-sgd32-rank1").iterdir()) == []
    _, ckpt = read_npz(sharded_runs / "sh-sgd32-rank0" / "checkpoint.npz", "checkpoint")
    config = ckpt["config"]
    assert config["shards"] == [500, 937] and config["ranks"] == 2 and config["distributed"] == "sharded"
    g = np.random.default_rng(np.random.SeedSequence(0).spawn(2)[1])
    for _ in range(EPOCHS):
        epoch_key(g)
    assert ckpt["rng_state"] == g.bit_generator.state


@needs_mpi
def test_a_killed_sharded_run_resumes_bit_for_bit(sharded_runs, tmp_path):
    run = {"name": "sh-resume-full", "optimizer": SGD_M, "batch_size": 32, "epochs": EPOCHS,
           "checkpoint": "shared", "shards": SHARDS, "fail": {"rank": 1, "step": 60, "how": "sigkill"}}
    proc, _ = launch(tmp_path, [run])
    assert proc.returncode != 0
    _, meta = read_npz(tmp_path / "sh-resume-full.ckpt.npz", "checkpoint")
    assert meta["epoch"] == 1
    resume = {k: v for k, v in run.items() if k != "fail"} | {"resume": True}
    proc, _ = launch(tmp_path, [resume])
    assert proc.returncode == 0, proc.stderr
    got, ranks = results(tmp_path, "sh-resume-full")
    _, whole = results(sharded_runs, "sh-resume-full")
    assert got["history"]["epoch"] == [1, 2, 3]
    for k in whole[0]:
        assert np.array_equal(ranks[0][k], whole[0][k]), k
        assert np.array_equal(ranks[1][k], whole[0][k]), k


# ================================================================ the rank timeout
def test_the_line_names_a_silent_rank_and_the_last_step():
    class Comm:
        def Get_rank(self):
            return 0

        def Get_size(self):
            return 3

    w = Watchdog(Comm(), 30, abort=None, MPI=None, grace=2)
    w.count_from(45, 60)                       # 45 steps an epoch, 60 done: epoch 2, step 15
    with w.waiting("gradient allreduce"):
        me = w._position()
    # rank 1 waits with us; rank 2 did not answer
    peer = me.copy()
    peer[0] = 1
    line = w.describe({1: peer, 2: None}, me, 31.0)
    assert "\n" not in line
    assert line.startswith("xprop: rank timeout: rank 0 waited 31.0 s")
    assert "gradient allreduce of epoch 2, step 16" in line
    assert "rank 2 of 3 did not answer within 2 s" in line and "rank 1 of 3" not in line
    assert "the last step it completed: epoch 2, step 15 (60 steps in all)" in line
    # rank 2 answers but is outside any collective: stuck on I/O
    stuck = me.copy()
    stuck[0], stuck[1], stuck[2], stuck[3] = 2, 0, -1, 59
    assert "the last step it completed: epoch 2, step 14" in w.describe({1: peer, 2: stuck}, me, 31.0)
    line = w.describe({1: peer, 2: stuck}, me, 31.0)
    assert "rank 2 of 3 is not in a collective (stuck on I/O or computing)" in line


def test_only_the_lowest_waiting_rank_speaks():
    class Comm:
        def __init__(self, rank):
            self.rank = rank

        def Get_rank(self):
            return self.rank

        def Get_size(self):
            return 3

    waiting, busy = np.array([0, 1, 0, 4]), np.array([0, 0, -1, 4])
    assert Watchdog(Comm(1), 5, None, None).defers({0: waiting, 2: None})        # rank 0 tells
    assert not Watchdog(Comm(1), 5, None, None).defers({0: busy, 2: None})       # rank 0 is stuck
    assert not Watchdog(Comm(1), 5, None, None).defers({0: None, 2: waiting})    # rank 0 is silent
    assert not Watchdog(Comm(0), 5, None, None).defers({1: waiting, 2: None})


@needs_mpi
def test_a_stopped_rank_ends_the_job_after_the_rank_timeout(tmp_path):
    """Rank 1 stops itself (SIGSTOP) in the update of its 60th step, after that step's allreduce
    (1437 rows in batches of 32 make 45 steps an epoch: step 60 is epoch 2, step 15). Rank 0
    waits in the next allreduce; after RANK_TIMEOUT s its watchdog asks rank 1, gets no answer, prints one line and aborts
    the job, which mpiexec then ends (the stopped rank with it)."""
    run = {"name": "stop", "optimizer": SGD_M, "batch_size": 32, "epochs": EPOCHS, "checkpoint": "shared",
           "shards": SHARDS, "rank_timeout": RANK_TIMEOUT, "fail": {"rank": 1, "step": 60, "how": "sigstop"}}
    proc, seconds = launch(tmp_path, [run])
    assert proc.returncode != 0
    assert seconds < JOB_TIMEOUT / 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("xprop: rank timeout")]
    assert len(lines) == 1, f"exit {proc.returncode}\nstderr:\n{proc.stderr}\nstdout:\n{proc.stdout}"
    line = lines[0]
    assert "rank 0 waited" in line and "gradient allreduce of epoch 2, step 16" in line
    assert "rank 1 of 2 did not answer" in line
    assert "the last step it completed: epoch 2, step 15 (60 steps in all)" in line
    _, meta = read_npz(tmp_path / "stop.ckpt.npz", "checkpoint")
    assert meta["epoch"] == 1                                          # the last checkpoint is intact


@needs_mpi
def test_a_rank_stuck_outside_the_collectives_is_named_too(tmp_path):
    """distributed=True, rank 1 hangs in a long sleep (alive: its watchdog answers); rank 0
    names it as outside any collective, and the job ends."""
    run = {"name": "hang", "optimizer": SGD_M, "batch_size": 32, "epochs": EPOCHS,
           "rank_timeout": RANK_TIMEOUT, "fail": {"rank": 1, "step": 10, "how": "hang"}}
    proc, seconds = launch(tmp_path, [run])
    assert proc.returncode != 0 and seconds < JOB_TIMEOUT / 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("xprop: rank timeout")]
    assert len(lines) == 1, f"exit {proc.returncode}\nstderr:\n{proc.stderr}\nstdout:\n{proc.stdout}"
    assert "rank 1 of 2 is not in a collective (stuck on I/O or computing)" in lines[0]
    assert "the last step it completed: epoch 1, step 10" in lines[0]     # its allreduce 10 returned


# ===================================================================== the CLI
def _cli(args, tmp, n=2):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    cmd = [sys.executable, "-m", "xprop", *args]
    if n:
        cmd = [dist.find_mpiexec(), "-n", str(n), *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=JOB_TIMEOUT, env=env, cwd=tmp)


@needs_mpi
def test_cli_per_rank_files_and_one_big_file_train_the_same_model(tmp_path):
    """Rank r's file holds exactly the rows rank r takes of the big file (array_split), so the two
    runs see the same shards: the same scaler, the same training, the same weights bit for bit."""
    d = xprop.load_digits(scale=False)
    np.savez(tmp_path / "big.npz", X=d.X_train, y=d.y_train, X_test=d.X_test, y_test=d.y_test)
    for r, (rows, test) in enumerate(zip(np.array_split(np.arange(len(d.y_train)), 2),
                                         np.array_split(np.arange(len(d.y_test)), 2))):
        np.savez(tmp_path / f"part-{r}.npz", X=d.X_train[rows], y=d.y_train[rows],
                 X_test=d.X_test[test], y_test=d.y_test[test])
    common = ["train", "--distributed", "sharded", "--epochs", "3", "--no-progress", "--rank-timeout", "60"]
    a = _cli([*common, "--data", "part-{rank}.npz", "--out", "a"], tmp_path)
    assert a.returncode == 0, a.stderr
    b = _cli([*common, "--data", "big.npz", "--out", "b"], tmp_path)
    assert b.returncode == 0, b.stderr
    assert "1437 train examples in 2 shards" in a.stdout and "(each holding its shard)" in a.stdout
    assert "360 examples over 2 ranks" in b.stdout
    with np.load(tmp_path / "a" / "model.npz") as ma, np.load(tmp_path / "b" / "model.npz") as mb:
        assert sorted(ma.files) == ["W1", "W2", "__meta__", "b1", "b2"]
        for k in ("W1", "b1", "W2", "b2"):
            assert np.array_equal(ma[k], mb[k]), k


def test_cli_sharded_needs_data_and_a_positive_timeout(tmp_path):
    out = _cli(["train", "--distributed", "sharded", "--out", "x"], tmp_path, n=0)
    assert out.returncode != 0 and "--distributed sharded needs --data" in out.stderr
    out = _cli(["train", "--rank-timeout", "0", "--out", "x"], tmp_path, n=0)
    assert out.returncode != 0 and "--rank-timeout" in out.stderr


@needs_mpi
def test_of_three_ranks_waiting_for_a_stopped_one_only_the_lowest_speaks(tmp_path):
    """Ranks 0 and 1 both wait for the stopped rank 2 and both time out: rank 1 hears that rank 0
    waits too and leaves the line to it, so the job ends with exactly one line."""
    run = {"name": "stop3", "optimizer": SGD_M, "batch_size": 32, "epochs": 2, "rank_timeout": RANK_TIMEOUT,
           "shards": [[0, 400], [400, 900], [900, 1437]], "fail": {"rank": 2, "step": 20, "how": "sigstop"}}
    proc, seconds = launch(tmp_path, [run], n=3)
    assert proc.returncode != 0 and seconds < JOB_TIMEOUT / 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("xprop: rank timeout")]
    assert len(lines) == 1, f"exit {proc.returncode}\nstderr:\n{proc.stderr}\nstdout:\n{proc.stdout}"
    assert "rank 0 waited" in lines[0] and "rank 2 of 3 did not answer" in lines[0]
    assert "rank 1 of 3" not in lines[0]                     # it waits with rank 0: not to blame
