"""The seven rules of docs/errors.md ("Rules"), each tried the way it is broken in practice.

Real processes and real signals wherever the machine allows: SIGTERM and a
double SIGINT sent to a training process, two ``xprop train`` processes on one
directory, a full disk made from a small tmpfs (when this user may mount one;
otherwise the write failure is simulated where the OS raises it), and
``mpiexec -n 2`` for the MPI cases.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

import xprop
import xprop.io
from xprop.datasets import apply_scaler, check_classes, fit_scaler, load_data
from xprop.io import JsonLines, ModelFileError, read_npz, write_text_atomic
from xprop.optim import SGD, Adam
from xprop.runlock import RunDirectoryInUse, RunLock
from xprop.signals import Terminated, deferred, terminate_as_interrupt
from xprop.train import fit

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


# ================================================================== helpers
def cli_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XPROP_BACKEND", "XPROP_TRACEBACK")}
    env.update(PYTHONIOENCODING="utf-8", TQDM_DISABLE="1", PYTHONPATH=str(ROOT),
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return env


def cli(cwd, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "xprop", *map(str, args)], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, encoding="utf-8", timeout=timeout, check=False)


def popen(cwd, *args):
    """A training process that takes Ctrl-C's default action even when pytest runs with SIGINT
    ignored (started in the background by a non-interactive shell)."""
    return subprocess.Popen([sys.executable, "-m", "xprop", *map(str, args)], cwd=cwd, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                            preexec_fn=_default_signals)  # noqa: PLW1509


def _default_signals():
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def one_error(proc, status=1) -> str:
    """``proc`` exited with ``status`` and said why in one line ``xprop: error: ...``."""
    assert proc.returncode == status, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{proc.stderr}"
    assert lines[0].startswith("xprop: error: "), lines[0]
    return lines[0]


def has(message: str, *parts: str) -> None:
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


def snapshot(directory: Path) -> dict:
    return {str(p.relative_to(directory)): p.read_bytes() if p.is_file() else None
            for p in sorted(directory.rglob("*"))}


def temporaries(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.name.endswith(".tmp"))


def wait_for(path: Path, proc, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the process ended ({proc.returncode}) before {path.name} appeared:\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.02)


def finish(proc, timeout=60):
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def small_npz(path: Path, m=60, k=4, classes=3, seed=0, X=None, y=None) -> Path:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, k)) if X is None else X
    y = np.arange(m) % classes if y is None else y
    np.savez(path, X=X, y=y)
    return path


TRAIN = ("--backend", "numpy", "--no-progress")
LONG = ("train", "--epochs", "1000", "--batch-size", "1", "--layers", "64,16,10", "--out", "run", *TRAIN)


@contextlib.contextmanager
def small_tmpfs(directory: Path, size: str):
    """A tmpfs of ``size`` mounted on ``directory``, or a skip naming why it cannot be."""
    directory.mkdir(parents=True, exist_ok=True)
    if not sys.platform.startswith("linux") or shutil.which("mount") is None:
        pytest.skip("no mount(8) here; the simulated full-disk tests cover this")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); the simulated full-disk "
                    "tests cover this")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def fill(directory: Path, leave: int) -> None:
    """Fill the file system of ``directory`` until about ``leave`` bytes are free."""
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    with open(directory / "filler", "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))
        fh.flush()
        os.fsync(fh.fileno())


# ============================================ rule 1: nothing overwritten, every write atomic
def test_predict_refuses_to_write_over_the_model_or_the_data_it_reads(tmp_path):
    assert cli(tmp_path, "train", "--epochs", 1, "--out", "run", *TRAIN).returncode == 0
    small = small_npz(tmp_path / "t.npz", k=64, classes=10)
    before = snapshot(tmp_path)
    for target, what in (("run/model.npz", "model"), ("t.npz", "data")):
        for force in ((), ("--force",)):
            proc = cli(tmp_path, "predict", "run/model.npz", "--data", "t.npz", "--split", "all",
                       "--out", target, *force)
            has(one_error(proc), f"--out {target!r}", f"the {what} file", "choose another --out")
    assert snapshot(tmp_path) == before
    assert small.exists()


def test_predict_out_over_an_existing_file_needs_force(tmp_path):
    assert cli(tmp_path, "train", "--epochs", 1, "--out", "run", *TRAIN).returncode == 0
    (tmp_path / "mine.txt").write_text("my notes\n")
    proc = cli(tmp_path, "predict", "run/model.npz", "--out", "mine.txt")
    has(one_error(proc), "'mine.txt' already exists", "--force")
    assert (tmp_path / "mine.txt").read_text() == "my notes\n"
    proc = cli(tmp_path, "predict", "run/model.npz", "--out", "mine.txt", "--force")
    assert proc.returncode == 0, proc.stderr
    assert len((tmp_path / "mine.txt").read_text().splitlines()) == 360


def test_train_refuses_a_directory_holding_files_of_its_own_names(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "history.json").write_text("not xprop's\n")
    before = snapshot(tmp_path)
    proc = cli(tmp_path, "train", "--epochs", 1, "--out", "out", *TRAIN)
    has(one_error(proc), "'out'", "history.json", "--force")
    assert snapshot(tmp_path) == before
    proc = cli(tmp_path, "train", "--epochs", 1, "--out", "out", "--force", *TRAIN)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "history.json").read_text())["epoch"] == [1]


def test_a_refused_command_creates_no_out_directory(tmp_path):
    # refused at the door (the data) and refused inside fit (finite data that overflows float32)
    big = small_npz(tmp_path / "big.npz", X=np.full((60, 4), 1e300))
    for args in (("--data", "missing.npz"), ("--data", big.name, "--standardize", "none")):
        proc = cli(tmp_path, "train", "--epochs", 1, "--out", "new/run", *args, *TRAIN)
        one_error(proc)
        assert not (tmp_path / "new").exists(), args


def test_a_failed_text_write_keeps_the_old_file_simulated(tmp_path, monkeypatch):
    path = tmp_path / "history.json"
    path.write_text("old\n")

    def fail(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError) as info:
        write_text_atomic(path, "new\n" * 1000)
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    has(str(info.value), f"cannot write {str(path)!r}", "No space left on device", "unchanged")
    assert path.read_text() == "old\n" and temporaries(tmp_path) == []


def test_a_full_disk_keeps_every_old_file_and_names_the_one_it_could_not_write(tmp_path):
    disk = tmp_path / "disk"
    with small_tmpfs(disk, "2m"):
        assert cli(disk, "train", "--epochs", 1, "--out", "run", "--layers", "64,16,10", *TRAIN).returncode == 0
        run = disk / "run"
        before = {p.name: p.read_bytes() for p in run.iterdir()}
        fill(disk, leave=2048)                 # less than one checkpoint
        proc = cli(disk, "train", "--epochs", 3, "--out", "run", "--layers", "64,16,10", "--resume", *TRAIN)
        line = one_error(proc)
        has(line, "cannot write", str(Path("run")), "No space left on device", "unchanged")
        after = {p.name: p.read_bytes() for p in run.iterdir()}
        log = "checkpoint.history.jsonl"     # append-only: it may hold epoch 2's line, which the
        assert after.pop(log).startswith(before.pop(log))   # checkpoint does not count
        assert after == before
        assert temporaries(disk) == []
        (disk / "filler").unlink()
        assert cli(disk, "train", "--epochs", 2, "--out", "run", "--layers", "64,16,10", "--resume",
                   *TRAIN).returncode == 0


def test_history_json_is_written_atomically(tmp_path, monkeypatch):
    history = xprop.History()
    history.append(epoch=1, loss=0.5, accuracy=None, val_loss=None, val_accuracy=None, seconds=1.0,
                   samples_per_s=1.0, memory_used_bytes=None, memory_total_bytes=None)
    path = tmp_path / "history.json"
    path.write_text("{}\n")
    monkeypatch.setattr(xprop.io, "_replace", lambda tmp, target: (_ for _ in ()).throw(
        OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError):
        history.to_json(path)
    monkeypatch.undo()
    assert path.read_text() == "{}\n" and temporaries(tmp_path) == []
    history.to_json(path)
    assert json.loads(path.read_text())["loss"] == [0.5]


# ============================================ rule 2: one run per directory
def test_two_trains_on_one_directory_one_is_refused(tmp_path):
    args = ("train", "--epochs", "40", "--out", "same", "--layers", "64,16,10", *TRAIN)
    procs = [popen(tmp_path, *args) for _ in range(2)]
    results = [(p, *finish(p, timeout=240)) for p in procs]
    statuses = sorted(p.returncode for p, _, _ in results)
    assert statuses == [0, 1], [(p.returncode, err) for p, _, err in results]
    (loser,) = [(p, err) for p, _, err in results if p.returncode == 1]
    lines = loser[1].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xprop: error: "), loser[1]
    assert ("in use by another xprop run" in lines[0]) or ("already holds a run" in lines[0]), lines[0]
    (winner,) = [out for p, out, _ in results if p.returncode == 0]
    # the winner's printed accuracy belongs to the weights on disk
    acc = float(re.search(r"test accuracy:\s+([\d.]+)", winner).group(1))
    again = cli(tmp_path, "evaluate", "same/model.npz")
    assert float(re.search(r"accuracy:\s+([\d.]+)", again.stdout).group(1)) == acc


def test_a_run_directory_in_use_is_named_so_before_its_files_are_judged(tmp_path):
    """A live run has written its history log but no checkpoint yet: a second train on that
    directory is told the directory is in use, not that a file is in the way (the state the
    race of two concurrent trains can catch the loser in)."""
    run = tmp_path / "same"
    run.mkdir()
    (run / "checkpoint.history.jsonl").write_text("")
    with RunLock(run):
        r = cli(tmp_path, "train", "--epochs", "1", "--out", "same", *TRAIN)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "in use by another xprop run" in lines[0], r.stderr
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.history.jsonl"]


def test_the_run_lock_refuses_a_second_holder_and_dies_with_its_process(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunDirectoryInUse) as info:
            RunLock(tmp_path).acquire()
        has(str(info.value), str(tmp_path), "in use by another xprop run")
    RunLock(tmp_path).acquire().release()   # released
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from xprop.runlock import RunLock; "
                               f"RunLock({str(tmp_path)!r}).acquire(); print('held', flush=True); "
                               "time.sleep(60)"], env=cli_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirectoryInUse):
            RunLock(tmp_path).acquire()
        holder.kill()                        # SIGKILL: no cleanup runs
        holder.wait(timeout=10)
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.communicate()
    RunLock(tmp_path).acquire().release()   # not stuck
    assert os.listdir(tmp_path) == []        # and nothing left behind


# ============================================ rule 3: a resume is the same run
@pytest.fixture
def run1(tmp_path):
    proc = cli(tmp_path, "train", "--epochs", 1, "--out", "run", "--layers", "64,16,10", *TRAIN)
    assert proc.returncode == 0, proc.stderr
    return tmp_path


@pytest.mark.parametrize("change,parts", [
    (("--data", "other.npz"), ("--data", "shape (1437, 64) in the checkpoint, (60, 64) now")),
    (("--standardize", "minmax"), ("--standardize", "zscore in the checkpoint, minmax now")),
    (("--lr", "0.01"), ("--lr", "0.001 in the checkpoint, 0.01 now")),
    (("--weight-decay", "0.1"), ("--weight-decay", "0 in the checkpoint, 0.1 now")),
    (("--validation", "0.2"), ("--validation", "0.1 in the checkpoint, 0.2 now")),
    (("--optimizer", "sgd"), ("--optimizer", "adam in the checkpoint, sgd now")),
    (("--activation", "tanh"), ("--activation", "relu in the checkpoint, tanh now")),
], ids=["data", "standardize", "lr", "weight-decay", "validation", "optimizer", "activation"])
def test_resume_refuses_another_run_naming_the_difference(run1, change, parts):
    small_npz(run1 / "other.npz", k=64, classes=10)
    before = snapshot(run1)
    proc = cli(run1, "train", "--epochs", 2, "--out", "run", "--layers", "64,16,10", "--resume", *change, *TRAIN)
    line = one_error(proc)
    has(line, "run/checkpoint.npz", "another run", *parts)
    assert snapshot(run1) == before


def test_resume_refuses_same_shaped_other_data(tmp_path):
    small_npz(tmp_path / "a.npz", seed=1)
    small_npz(tmp_path / "b.npz", seed=2)
    assert cli(tmp_path, "train", "--data", "a.npz", "--epochs", 1, "--out", "run", *TRAIN).returncode == 0
    proc = cli(tmp_path, "train", "--data", "b.npz", "--epochs", 2, "--out", "run", "--resume", *TRAIN)
    has(one_error(proc), "--data", "same shape (60, 4) but other values")


def test_fit_resume_refuses_other_data_and_other_hyperparameters(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 4)), np.arange(40) % 3
    ckpt = tmp_path / "ckpt.npz"
    fit(xprop.MLP([4, 5, 3], seed=0), X, y, epochs=1, batch_size=8, optimizer=Adam(lr=1e-2),
        checkpoint=ckpt, progress=False)
    before = ckpt.read_bytes()
    cases = [(dict(X=X + 1), ("X", "same shape (40, 4) but other values")),
             (dict(y=(y + 1) % 3), ("Y", "other values")),
             (dict(optimizer=Adam(lr=1e-3)), ("optimizer lr", "0.01 in the checkpoint, 0.001 now")),
             (dict(batch_size=4), ("batch_size", "8 in the checkpoint, 4 now"))]
    for change, parts in cases:
        kw = dict(X=X, y=y, optimizer=Adam(lr=1e-2), batch_size=8) | change
        with pytest.raises(ValueError) as info:
            fit(xprop.MLP([4, 5, 3], seed=0), kw["X"], kw["y"], epochs=2, batch_size=kw["batch_size"],
                optimizer=kw["optimizer"], checkpoint=ckpt, resume=True, progress=False)
        has(str(info.value), str(ckpt), "another run", *parts)
        assert ckpt.read_bytes() == before


def test_evaluating_a_checkpoint_applies_its_saved_scaler(run1):
    model = cli(run1, "evaluate", "run/model.npz")
    ckpt = cli(run1, "evaluate", "run/checkpoint.npz")
    assert model.returncode == 0 and ckpt.returncode == 0, (model.stderr, ckpt.stderr)
    acc = [re.search(r"accuracy:\s+([\d.]+)", p.stdout).group(1) for p in (model, ckpt)]
    assert acc[0] == acc[1] and float(acc[0]) > 0.2, acc   # chance: 0.1
    assert "zscore scaler" in ckpt.stdout


# ============================================ rule 4: data that cannot make a sensible model
def test_a_huge_label_is_refused_with_the_class_counts(tmp_path):
    y = np.arange(60) % 3
    y[7] = 3_000_000
    small_npz(tmp_path / "d.npz", y=y)
    proc = cli(tmp_path, "train", "--data", "d.npz", "--epochs", 1, "--out", "run", *TRAIN)
    has(one_error(proc), "labels go up to 3000000", "3000001 units", "only 4 distinct labels",
        "return_inverse")
    assert not (tmp_path / "run").exists()


def test_one_class_data_is_refused(tmp_path):
    small_npz(tmp_path / "d.npz", y=np.full(60, 2))
    proc = cli(tmp_path, "train", "--data", "d.npz", "--epochs", 1, "--out", "run", *TRAIN)
    has(one_error(proc), "all 60 labels are 2", "at least two classes")


def test_a_class_without_training_examples_is_warned_about():
    warnings = check_classes(np.array([0, 1, 3, 0, 1, 3]), np.array([2, 3]))
    assert warnings == ["1 of the 4 classes have no training example (class 2); the net cannot "
                        "learn to predict them"]
    assert check_classes(np.array([0, 1, 2])) == []


def test_a_label_of_1e20_is_reported_as_it_is(tmp_path):
    small_npz(tmp_path / "d.npz", y=np.r_[np.arange(59) % 3, 1e20].astype(float))
    proc = cli(tmp_path, "train", "--data", "d.npz", "--epochs", 1, "--out", "run", *TRAIN)
    has(one_error(proc), "1e+20", "index 59")
    net = xprop.MLP([2, 3, 3])
    with pytest.raises(ValueError, match=r"got values from 0 to 1e\+20"):
        fit(net, np.ones((2, 2)), np.array([0.0, 1e20]), epochs=1, progress=False)


def test_standardising_features_whose_squares_overflow_gives_unit_variance(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 3)) * 1e300
    scaler = fit_scaler(X, "zscore")
    Z = apply_scaler(X, scaler)
    assert np.all(np.isfinite(Z))
    np.testing.assert_allclose(Z.std(axis=0), 1.0, rtol=1e-12)
    np.testing.assert_allclose(Z.mean(axis=0), 0.0, atol=1e-12)
    # the CLI trains on it and learns (the class is the sign of feature 0)
    y = (X[:, 0] > 0).astype(int)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    proc = cli(tmp_path, "train", "--data", "d.npz", "--epochs", 20, "--test-fraction", "0.2",
               "--out", "run", *TRAIN)
    assert proc.returncode == 0, proc.stderr
    assert float(re.search(r"test accuracy:\s+([\d.]+)", proc.stdout).group(1)) > 0.9


def test_finite_data_beyond_float32_is_named_as_such_not_nan_or_inf(tmp_path):
    small_npz(tmp_path / "d.npz", X=np.full((60, 4), 1e300))
    proc = cli(tmp_path, "train", "--data", "d.npz", "--standardize", "none", "--epochs", 1, "--out", "run",
               *TRAIN)
    line = one_error(proc)
    has(line, "beyond the range of float32", "1e+300", "dtype")
    assert "NaN" not in line


def test_a_net_too_large_to_allocate_is_one_line(tmp_path):
    proc = cli(tmp_path, "train", "--layers", "64,4000000000,10", "--epochs", 1, "--out", "run", *TRAIN)
    has(one_error(proc), "64, 4000000000, 10", "cannot be allocated")
    assert not (tmp_path / "run").exists()


def test_an_optimizer_refuses_a_second_net():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((20, 4)), np.arange(20) % 3
    opt = Adam(lr=1e-2)
    first = xprop.MLP([4, 5, 3], seed=0)
    fit(first, X, y, epochs=1, batch_size=5, optimizer=opt, progress=False)
    second = xprop.MLP([4, 5, 3], seed=1)
    before = {k: np.array(v) for k, v in second.params.items()}
    with pytest.raises(ValueError, match=r"already holds the state of another net's parameters \(4 steps"):
        fit(second, X, y, epochs=1, batch_size=5, optimizer=opt, progress=False)
    for k, v in second.params.items():
        assert np.array_equal(v, before[k]), k
    opt.reset()                                  # starting afresh is allowed, and equals a new Adam
    fit(second, X, y, epochs=1, batch_size=5, optimizer=opt, progress=False)
    third = xprop.MLP([4, 5, 3], seed=1)
    fit(third, X, y, epochs=1, batch_size=5, optimizer=Adam(lr=1e-2), progress=False)
    for k in third.params:
        assert np.array_equal(second.params[k], third.params[k]), k


# ============================================ rule 5: signals
def _interrupted(err: str, name: str | None, total=1000):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    head = "xprop: interrupted" if name is None else f"xprop: terminated by {name}"
    match = re.fullmatch(head + rf" at epoch (\d+) of {total}; epochs 1-(\d+) are saved in (.+); "
                                r"resume with: (.+)", lines[0])
    assert match, lines[0]
    return match


def test_sigterm_is_handled_like_ctrl_c(tmp_path):
    proc = popen(tmp_path, *LONG)
    ckpt = tmp_path / "run" / "checkpoint.npz"
    wait_for(ckpt, proc)
    time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = finish(proc)
    assert proc.returncode == 143, (proc.returncode, err)
    match = _interrupted(err, "SIGTERM")
    saved = int(match.group(2))
    assert read_npz(ckpt, "checkpoint")[1]["epoch"] == saved
    command = shlex.split(match.group(4))
    assert command[1:] == [*LONG, "--resume"]
    assert temporaries(tmp_path) == []
    command[command.index("--epochs") + 1] = str(saved + 1)
    again = cli(tmp_path, *command[1:])
    assert again.returncode == 0 and f"resumed after epoch {saved}" in again.stdout, again.stderr


def test_sigterm_before_the_first_epoch_says_nothing_was_saved(tmp_path):
    args = ("train", "--epochs", "5", "--batch-size", "1", "--layers", "64,256,10", "--out", "run", *TRAIN)
    proc = popen(tmp_path, *args)
    time.sleep(0.3)
    wait_for(tmp_path / "run", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = finish(proc)
    assert proc.returncode == 143, err
    line = err.strip().splitlines()
    assert len(line) == 1, err
    if "saved in" not in line[0]:       # it landed before epoch 1 ended
        has(line[0], "xprop: terminated by SIGTERM at epoch 1 of 5", "nothing was saved",
            "start again with: xprop train")
        assert "--resume" not in line[0]


def test_repeated_signals_never_leave_temporary_files(tmp_path):
    # many checkpoint writes a second (tiny net, tiny data), signals in quick succession
    small_npz(tmp_path / "d.npz", m=8)
    for sig in (signal.SIGINT, signal.SIGTERM):
        for delay in (0.2, 0.35, 0.5):
            out = f"run-{sig.name}-{delay}"
            proc = popen(tmp_path, "train", "--data", "d.npz", "--epochs", "100000", "--batch-size", 8,
                         "--validation", "0", "--out", out, *TRAIN)
            wait_for(tmp_path / out / "checkpoint.npz", proc)
            time.sleep(delay)
            proc.send_signal(sig)
            time.sleep(0.001)
            proc.send_signal(sig)
            _, err = finish(proc)
            assert proc.returncode in (130, 143), err
            assert temporaries(tmp_path) == [], err
            read_npz(tmp_path / out / "checkpoint.npz", "checkpoint")


def test_deferred_delivers_a_held_back_sigint_after_the_block():
    order = []
    with pytest.raises(KeyboardInterrupt):
        with deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)                     # Python would run the handler here
            order.append("block finished")
    assert order == ["block finished"]


def test_terminate_as_interrupt_raises_terminated():
    with pytest.raises(Terminated) as info:
        with terminate_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    assert info.value.signum == signal.SIGTERM and isinstance(info.value, KeyboardInterrupt)
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None) or callable(signal.getsignal(signal.SIGTERM))


# ============================================ rule 6: one line, true words
def _corrupt_deflate(raw: bytes) -> bytes:
    """Flip 8 bytes right after the gzip header (10 bytes): the deflate stream's block headers,
    so zlib itself fails ("invalid code lengths set"), not only the CRC check."""
    bad = raw[:11] + bytes(b ^ 0xFF for b in raw[11:19]) + raw[19:]
    with pytest.raises(zlib.error):
        gzip.decompress(bad)
    return bad


def test_corrupted_deflate_in_a_gz_idx_file(tmp_path):
    images = (np.arange(50 * 28 * 28) % 7).astype(np.uint8).reshape(50, 28, 28)   # compressible
    header = bytes([0, 0, 8, 3]) + np.array([50, 28, 28], ">u4").tobytes()
    raw = gzip.compress(header + images.tobytes())
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(_corrupt_deflate(raw))
    labels = bytes([0, 0, 8, 1]) + np.array([50], ">u4").tobytes() + bytes(np.arange(50) % 10)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    with pytest.raises(ValueError, match="corrupted compressed data, error: Error -3"):
        load_data(tmp_path / "train-images-idx3-ubyte.gz")
    proc = cli(tmp_path, "train", "--data", "train-images-idx3-ubyte.gz", "--epochs", 1, "--out", "run", *TRAIN)
    has(one_error(proc), "train-images-idx3-ubyte.gz", "could not read")


def test_corrupted_deflate_in_a_compressed_npz(tmp_path):
    path = tmp_path / "d.npz"
    np.savez_compressed(path, X=np.random.default_rng(0).standard_normal((200, 4)), y=np.arange(200) % 3)
    raw = path.read_bytes()
    # flip bytes inside X's deflate stream (after its local header), not in the zip directory
    start = raw.index(b"X.npy") + 40
    path.write_bytes(raw[:start] + bytes(b ^ 0x5A for b in raw[start:start + 32]) + raw[start + 32:])
    with pytest.raises(ValueError, match="not a readable .npz file"):
        load_data(path)
    proc = cli(tmp_path, "train", "--data", "d.npz", "--epochs", 1, "--out", "run", *TRAIN)
    has(one_error(proc), "d.npz", "not a readable .npz file")
    # the same for a model file whose compressed data is damaged
    with pytest.raises(ModelFileError):
        read_npz(path)


def test_a_latin1_csv_names_the_line_and_the_encoding(tmp_path):
    (tmp_path / "d.csv").write_bytes("caf\u00e9,b,label\n1,2,0\n3,4,1\n".encode("latin-1"))
    proc = cli(tmp_path, "train", "--data", "d.csv", "--epochs", 1, "--out", "run", *TRAIN)
    has(one_error(proc), "d.csv", "line 1", "not UTF-8", "0xe9", "Latin-1")
    (tmp_path / "e.csv").write_bytes("a,b,label\n1,2,0\n3,4,1\n\u00e9,4,1\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"line 4: not UTF-8 text \(byte 0xe9 at position 1\)"):
        load_data(tmp_path / "e.csv")


# ============================================ rule 7: O(1) checkpoints
def test_a_checkpoint_write_does_not_grow_with_the_epochs(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((16, 4)), np.arange(16) % 3
    ckpt = tmp_path / "ckpt.npz"
    sizes, logs = [], []

    def record(rec, net):
        sizes.append(ckpt.stat().st_size)
        logs.append(sorted(p.name for p in tmp_path.iterdir()))

    fit(xprop.MLP([4, 5, 3], seed=0), X, y, epochs=300, batch_size=16, checkpoint=ckpt,
        callbacks=[record], progress=False)
    # the checkpoint's size does not grow with the epochs: only the digits of the epoch, the step
    # count and the RNG state in its metadata vary (by a few bytes; the whole history inside,
    # as before, added about 2 kB an epoch here)
    assert abs(sizes[-1] - sizes[1]) < 100, (sizes[1], sizes[-1])
    history = [p for p in tmp_path.iterdir() if p.name != "ckpt.npz"]
    assert len(history) == 1
    header, records, _ = JsonLines.read(history[0], 300)
    assert [r["epoch"] for r in records] == list(range(1, 301))


def test_the_history_log_is_append_only(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((16, 4)), np.arange(16) % 3
    ckpt = tmp_path / "ckpt.npz"
    seen = []

    def record(rec, net):
        log = [p for p in tmp_path.iterdir() if p.name != "ckpt.npz"][0]
        seen.append(log.read_bytes())

    fit(xprop.MLP([4, 5, 3], seed=0), X, y, epochs=5, batch_size=8, checkpoint=ckpt,
        callbacks=[record], progress=False)
    for before, after in zip(seen, seen[1:]):
        assert after.startswith(before) and after.count(b"\n") == before.count(b"\n") + 1


def test_an_old_checkpoint_with_its_history_inside_resumes_bit_for_bit(tmp_path):
    # written by xprop before the history moved out of the checkpoint (format 1, "history" in
    # the metadata): fit([4, 5, 3], seed=0) on this data, Adam(lr=1e-2), batch 8, seed 3, 2 epochs
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 4)), np.arange(40) % 3
    ckpt = tmp_path / "old.npz"
    shutil.copy(DATA / "checkpoint-history-inside.npz", ckpt)
    assert "history" in read_npz(ckpt, "checkpoint")[1]
    resumed = xprop.MLP([4, 5, 3], seed=99)
    h1 = fit(resumed, X, y, epochs=4, batch_size=8, seed=3, optimizer=Adam(lr=1e-2), checkpoint=ckpt,
             resume=True, progress=False)
    whole = xprop.MLP([4, 5, 3], seed=0)
    h2 = fit(whole, X, y, epochs=4, batch_size=8, seed=3, optimizer=Adam(lr=1e-2), progress=False)
    assert h1.epoch == [1, 2, 3, 4] and h1.loss == h2.loss
    for k in whole.params:
        assert np.array_equal(resumed.params[k], whole.params[k]), k
    xprop.load(ckpt)


def test_resume_ignores_history_lines_past_the_checkpoint(tmp_path):
    # a kill between the history line and the checkpoint leaves one line too many: resume cuts it
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((16, 4)), np.arange(16) % 3
    ckpt = tmp_path / "ckpt.npz"
    fit(xprop.MLP([4, 5, 3], seed=0), X, y, epochs=2, batch_size=8, checkpoint=ckpt, progress=False)
    (log,) = [p for p in tmp_path.iterdir() if p.name != "ckpt.npz"]
    with open(log, "ab") as fh:
        fh.write(b'{"epoch": 3, "loss": 1.0}\n{"epoch": 4, "lo')      # a stray line and a torn one
    net = xprop.MLP([4, 5, 3], seed=0)
    h = fit(net, X, y, epochs=4, batch_size=8, checkpoint=ckpt, resume=True, progress=False)
    whole = xprop.MLP([4, 5, 3], seed=0)
    h2 = fit(whole, X, y, epochs=4, batch_size=8, progress=False)
    assert h.epoch == [1, 2, 3, 4] and h.loss == h2.loss
    assert [r["epoch"] for r in JsonLines.read(log, 4)[1]] == [1, 2, 3, 4]


# ============================================ rule 5 under MPI: rank 0 speaks, one line
def _mpiexec():
    from xprop.distributed import find_mpiexec

    try:
        import mpi4py  # noqa: F401, PLC0415
    except ImportError:
        pytest.skip("mpi4py is not installed (pip install 'xprop[dist]')")
    mpiexec = find_mpiexec()
    if mpiexec is None:
        pytest.skip("no mpiexec next to this Python or on PATH (pip install 'xprop[dist]')")
    return mpiexec


def xprop_lines(err: str) -> list[str]:
    """What xprop said on stderr (not the launcher's own lines, e.g. "[mpiexec@host] ...")."""
    return [line for line in err.splitlines() if line.strip() and not line.startswith("[mpiexec@")]


def test_mpi_refusal_before_training_is_one_line_from_rank_0(tmp_path):
    mpiexec = _mpiexec()
    proc = subprocess.run([mpiexec, "-n", "2", sys.executable, "-m", "xprop", "train", "--distributed",
                           "--data", "missing.npz", "--out", "run", *TRAIN], cwd=tmp_path, env=cli_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = xprop_lines(proc.stderr)
    assert lines == ["xprop: error: --data: file 'missing.npz' does not exist"], proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("sig,head,status", [(signal.SIGINT, "xprop: interrupted", 130),
                                             (signal.SIGTERM, "xprop: terminated by SIGTERM", 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_mpi_signal_is_one_line_from_rank_0_with_a_true_resume_command(tmp_path, sig, head, status):
    mpiexec = _mpiexec()
    args = ["train", "--distributed", "--epochs", "1000", "--batch-size", "4", "--layers", "64,16,10",
            "--out", "run", *TRAIN]
    proc = subprocess.Popen([mpiexec, "-n", "2", sys.executable, "-m", "xprop", *args], cwd=tmp_path,
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_signals)  # noqa: PLW1509
    ckpt = tmp_path / "run" / "checkpoint.npz"
    wait_for(ckpt, proc, timeout=120)
    time.sleep(0.5)
    proc.send_signal(sig)
    _, err = finish(proc, timeout=60)
    assert proc.returncode == status, err
    lines = xprop_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    match = re.fullmatch(rf"{head} at epoch (\d+) of 1000; epochs 1-(\d+) are saved in (.+); "
                         r"resume with: (.+)", lines[0])
    assert match, lines[0]
    saved = int(match.group(2))
    assert read_npz(ckpt, "checkpoint")[1]["epoch"] == saved
    assert shlex.split(match.group(4))[1:] == [*args, "--resume"]
    assert temporaries(tmp_path) == []
