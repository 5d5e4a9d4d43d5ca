"""The command line, run the way a user runs it: ``python -m xprop ...`` in a subprocess.

Each subcommand is exercised through a real process (exit status, stdout,
stderr); the Ctrl-C path is tested in-process, where ``fit`` can be made to
raise KeyboardInterrupt after a given epoch.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

import xprop
import xprop.cli
from xprop.backend import cupy_status
from xprop.datasets import apply_scaler, load_digits
from xprop.tolerances import tolerance

COMMANDS = ["train", "evaluate", "predict", "gradcheck", "check", "info", "explain"]


def cli(cwd, *args, timeout=120):
    """Run ``python -m xprop *args`` in ``cwd``; stdout and stderr as UTF-8 text."""
    env = {k: v for k, v in os.environ.items() if k not in ("XPROP_BACKEND", "XPROP_TRACEBACK")}
    env.update(PYTHONIOENCODING="utf-8", TQDM_DISABLE="1")
    return subprocess.run([sys.executable, "-m", "xprop", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, encoding="utf-8", timeout=timeout,
                          check=False)


def summary_value(stdout, key):
    """The value after ``key:`` in train's summary."""
    match = re.search(rf"^{re.escape(key)}:\s+(.*)$", stdout, re.MULTILINE)
    assert match, f"no {key!r} line in:\n{stdout}"
    return match.group(1)


def one_error_line(proc, *parts):
    """Exit 1, and stderr is exactly one ``xprop: error:`` line holding every part."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("xprop: error: "), lines[0]
    assert "Traceback" not in proc.stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


def model_params(path):
    net = xprop.load(path, backend="numpy")
    return {k: xprop.to_numpy(v) for k, v in net.params.items()}


@pytest.fixture(scope="module")
def run3(tmp_path_factory):
    """One short training run on the digits: 3 epochs into ``run3/``."""
    cwd = tmp_path_factory.mktemp("cli")
    proc = cli(cwd, "train", "--epochs", 3, "--out", "run3", "--backend", "numpy")
    assert proc.returncode == 0, proc.stderr
    return cwd, cwd / "run3", proc


# ------------------------------------------------------------------------ train
def test_train_writes_model_history_checkpoint(run3):
    _, out, proc = run3
    for name in ("model.npz", "history.json", "checkpoint.npz"):
        assert (out / name).is_file(), name
    history = json.loads((out / "history.json").read_text())
    assert history["epoch"] == [1, 2, 3]
    assert len(history["loss"]) == len(history["val_accuracy"]) == 3

    # The model loads, carries what is needed to use it, and reproduces the printed accuracy.
    net = xprop.load(out / "model.npz", backend="numpy")
    meta = net.metadata
    assert net.sizes == (64, 128, 10)
    assert meta["dataset"] == "digits" and meta["n_classes"] == 10
    assert meta["scaler"]["method"] == "zscore"
    assert len(meta["scaler"]["shift"]) == len(meta["scaler"]["scale"]) == 64
    scaler = {k: np.asarray(meta["scaler"][k]) for k in ("shift", "scale")}
    digits = load_digits(scale=False)
    result = xprop.evaluate(net, apply_scaler(digits.X_test, scaler), digits.y_test)
    printed = summary_value(proc.stdout, "test accuracy")
    assert printed.startswith(f"{result['accuracy']:.4f} (loss {result['loss']:.4f}, 360 examples)")
    for key in ("backend", "architecture", "epochs", "final train", "final val", "seconds"):
        summary_value(proc.stdout, key)
    assert summary_value(proc.stdout, "epochs") == "3"


def test_train_draws_curves_png(run3):
    pytest.importorskip("matplotlib")
    _, out, _ = run3
    data = (out / "curves.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert 600 <= width <= 3000 and 200 <= height <= 2000 and width > height  # two panels side by side


def test_train_without_matplotlib_says_how_to_get_the_picture(tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None; from xprop.cli import main; "
            "sys.exit(main(['train', '--epochs', '1', '--out', 'run', '--backend', 'numpy']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, encoding="utf-8", timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert 'pip install "xprop[plot]"' in proc.stdout
    assert not (tmp_path / "run" / "curves.png").exists()
    assert (tmp_path / "run" / "model.npz").is_file()


def test_default_train_reaches_095_test_accuracy_within_60s(tmp_path):
    """The issue's convergence requirement: `xprop train` with its defaults, digits, ≥ 0.95."""
    t0 = time.perf_counter()
    proc = cli(tmp_path, "train", "--out", "run")
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    accuracy = float(summary_value(proc.stdout, "test accuracy").split()[0])
    assert accuracy >= 0.95, proc.stdout
    assert seconds < 60
    assert summary_value(proc.stdout, "epochs") == "30"
    assert "64-128-10, relu → softmax" in proc.stdout


def test_resume_continues_and_equals_an_uninterrupted_run(tmp_path):
    common = ("--backend", "numpy", "--no-progress")
    assert cli(tmp_path, "train", "--epochs", 2, "--out", "a", *common).returncode == 0
    resumed = cli(tmp_path, "train", "--epochs", 4, "--out", "a", "--resume", *common)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed after epoch 2" in resumed.stdout
    straight = cli(tmp_path, "train", "--epochs", 4, "--out", "b", *common)
    assert straight.returncode == 0, straight.stderr

    ha = json.loads((tmp_path / "a" / "history.json").read_text())
    hb = json.loads((tmp_path / "b" / "history.json").read_text())
    assert ha["epoch"] == [1, 2, 3, 4]
    assert ha["loss"] == hb["loss"] and ha["val_loss"] == hb["val_loss"]
    pa, pb = model_params(tmp_path / "a" / "model.npz"), model_params(tmp_path / "b" / "model.npz")
    assert pa.keys() == pb.keys()
    for name in pa:
        assert np.array_equal(pa[name], pb[name]), name  # bit for bit


def test_keyboard_interrupt_prints_resume_command_and_exits_130(tmp_path, monkeypatch, capsys):
    real_fit = xprop.cli.train.fit

    def fit_interrupted_after_epoch_2(*args, callbacks=None, **kwargs):
        def ctrl_c(record, net):
            if record["epoch"] == 2:
                raise KeyboardInterrupt

        return real_fit(*args, callbacks=[*(callbacks or []), ctrl_c], **kwargs)

    out = tmp_path / "run"
    argv = ["train", "--epochs", "4", "--out", str(out), "--backend", "numpy", "--no-progress"]
    monkeypatch.setattr(xprop.cli.train, "fit", fit_interrupted_after_epoch_2)
    assert xprop.cli.main(argv) == 130
    err = capsys.readouterr().err
    assert "interrupted at epoch 3 of 4" in err
    assert f"resume with: xprop train --epochs 4 --out {out} --backend numpy --no-progress --resume" in err
    assert "Traceback" not in err
    assert (out / "checkpoint.npz").is_file() and not (out / "model.npz").exists()

    monkeypatch.setattr(xprop.cli.train, "fit", real_fit)
    assert xprop.cli.main([*argv, "--resume"]) == 0
    assert "resumed after epoch 2" in capsys.readouterr().out
    assert json.loads((out / "history.json").read_text())["epoch"] == [1, 2, 3, 4]


def test_keyboard_interrupt_before_the_first_epoch(tmp_path, monkeypatch, capsys):
    def fit_interrupted_at_once(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(xprop.cli.train, "fit", fit_interrupted_at_once)
    assert xprop.cli.main(["train", "--out", str(tmp_path / "run"), "--backend", "numpy"]) == 130
    err = capsys.readouterr().err
    assert "interrupted at epoch 1 of 30; no epoch was completed and nothing was saved" in err
    # nothing to resume: the hint starts the run again (a --resume would be refused), and the
    # directory this command made is taken back
    assert f"start again with: xprop train --out {tmp_path / 'run'} --backend numpy" in err
    assert "--resume" not in err and not (tmp_path / "run").exists()


# ----------------------------------------------------------- evaluate / predict
def test_evaluate_uses_the_test_split_and_the_stored_scaler(run3):
    cwd, out, proc = run3
    ev = cli(cwd, "evaluate", out / "model.npz", "--backend", "numpy")
    assert ev.returncode == 0, ev.stderr
    assert "test split (360 examples)" in ev.stdout
    assert "zscore scaler stored in the model" in ev.stdout
    printed = summary_value(proc.stdout, "test accuracy").split()[0]
    assert summary_value(ev.stdout, "accuracy") == printed


def test_predict_writes_one_class_per_test_example(run3):
    cwd, out, _ = run3
    pred = cli(cwd, "predict", out / "model.npz", "--dataset", "digits", "--out", "preds.csv",
               "--backend", "numpy")
    assert pred.returncode == 0, pred.stderr
    lines = (cwd / "preds.csv").read_text().splitlines()
    assert len(lines) == 360
    classes = np.array([int(line) for line in lines])

    net = xprop.load(out / "model.npz", backend="numpy")
    scaler = {k: np.asarray(net.metadata["scaler"][k]) for k in ("shift", "scale")}
    digits = load_digits(scale=False)
    expected = xprop.to_numpy(net.predict(apply_scaler(digits.X_test, scaler)))
    assert np.array_equal(classes, expected)

    to_stdout = cli(cwd, "predict", out / "model.npz", "--dataset", "digits", "--backend", "numpy")
    assert to_stdout.returncode == 0
    assert to_stdout.stdout.splitlines() == lines


def test_predict_refuses_data_with_other_feature_count(run3, tmp_path):
    _, out, _ = run3
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "five.npz", X=rng.standard_normal((20, 5)), y=rng.integers(0, 2, 20))
    proc = cli(tmp_path, "predict", out / "model.npz", "--data", "five.npz")
    one_error_line(proc, "expects 64 features", "has 5")


def test_user_csv_with_held_out_test_split(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 3)) * 50 + 10
    y = (X[:, 0] > 10).astype(int)
    rows = "\n".join(",".join(f"{v:.6f}" for v in x) + f",{c}" for x, c in zip(X, y))
    (tmp_path / "points.csv").write_text("a,b,c,cls\n" + rows + "\n")
    train = cli(tmp_path, "train", "--data", "points.csv", "--label-column", "cls",
                "--test-fraction", 0.25, "--layers", "3,8,2", "--epochs", 3, "--out", "run",
                "--backend", "numpy")
    assert train.returncode == 0, train.stderr
    assert "150 train examples" in train.stdout and "50 test" in train.stdout
    # Evaluating on the training file again uses the same 50 held-out examples.
    ev = cli(tmp_path, "evaluate", "run/model.npz", "--data", "points.csv", "--backend", "numpy")
    assert ev.returncode == 0, ev.stderr
    assert "test split (50 examples)" in ev.stdout
    assert summary_value(ev.stdout, "accuracy") == summary_value(train.stdout, "test accuracy").split()[0]
    # Without --label-column the CSV has no "label" column: the error names the flag.
    one_error_line(cli(tmp_path, "train", "--data", "points.csv"), "--label-column", "'label'")


def test_predict_with_a_columns_layout_model(tmp_path):
    net = xprop.MLP([64, 16, 10], layout="columns", backend="numpy", seed=3)
    net.save(tmp_path / "columns.npz")
    proc = cli(tmp_path, "predict", "columns.npz", "--dataset", "digits", "--backend", "numpy")
    assert proc.returncode == 0, proc.stderr
    digits = load_digits(scale=False)  # no scaler stored: raw features
    expected = xprop.to_numpy(net.predict(digits.X_test.T))
    assert [int(v) for v in proc.stdout.split()] == expected.tolist()


# ------------------------------------------------------------ gradcheck / check
def test_gradcheck_passes_and_prints_a_table(tmp_path):
    proc = cli(tmp_path, "gradcheck")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert re.search(r"^backend\s+layout\s+param\s+shape\s+rel\. error\s+result$", out, re.MULTILINE)
    shapes_by_layout = {"rows": ("4×5", "5", "5×3", "3"), "columns": ("5×4", "5×1", "3×5", "3×1")}
    for layout, shapes in shapes_by_layout.items():
        for param, shape in zip(("W1", "b1", "W2", "b2"), shapes):
            assert re.search(rf"^numpy\s+{layout}\s+{param}\s+{shape}\s+\S+e-\d+\s+pass$", out,
                             re.MULTILINE), (layout, param, out)
    assert "PASSED" in out and "FAIL" not in out
    assert "cupy" in out


def test_gradcheck_fails_with_exit_1_when_the_numeric_gradient_is_off(tmp_path):
    # A central difference with step 0.5 is far from the derivative of tanh: the check must fail.
    proc = cli(tmp_path, "gradcheck", "--activation", "tanh", "--eps", "0.5", "--layout", "rows")
    assert proc.returncode == 1, proc.stdout
    assert "FAIL" in proc.stdout and "analytic" in proc.stdout


def test_check_lists_backends_and_skips_with_reason(tmp_path):
    proc = cli(tmp_path, "check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "numpy" in proc.stdout and "cupy" in proc.stdout
    usable, reason = cupy_status()
    if usable:
        assert "PASSED" in proc.stdout
    else:
        assert f"cupy: skipped ({reason})" in proc.stdout


# -------------------------------------------------------------- info / explain
def test_info_reports_versions_and_why_there_is_no_gpu(tmp_path):
    proc = cli(tmp_path, "info")
    assert proc.returncode == 0, proc.stderr
    assert re.search(rf"^numpy:\s+{re.escape(np.__version__)}$", proc.stdout, re.MULTILINE)
    assert re.search(rf"^xprop:\s+{re.escape(xprop.__version__)} ", proc.stdout, re.MULTILINE)
    assert re.search(r"^backends:\s+numpy", proc.stdout, re.MULTILINE)
    usable, reason = cupy_status()
    if not usable:
        assert reason in proc.stdout


def test_info_lists_gpus_where_cupy_is_usable(monkeypatch, capsys):
    # In-process, with the backend's answers replaced: the lines a GPU machine prints.
    device = {"id": 0, "name": "Test GPU", "total_bytes": 80 * 2**30, "free_bytes": 79 * 2**30}
    monkeypatch.setattr(xprop.cli.info, "cupy_status", lambda: (True, "ok: 1 device(s)"))
    monkeypatch.setattr(xprop.cli.info, "gpu_info", lambda: [device])
    assert xprop.cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^gpu 0:\s+Test GPU, 80\.0 GiB total, 79\.0 GiB free$", out, re.MULTILINE)


def test_explain_prints_shapes_for_both_layouts(tmp_path):
    proc = cli(tmp_path, "explain", "--layers", "4,3,2", "--batch", 5)
    assert proc.returncode == 0, proc.stderr
    lines = [line.strip() for line in proc.stdout.splitlines()]
    for expected in (
        # rows: examples are rows
        "Z1 (5×3) = A0 (5×4) @ W1 (4×3) + b1 (3)",
        "Z2 (5×2) = A1 (5×3) @ W2 (3×2) + b2 (2)",
        "dW2 (3×2) = (1/m) A1ᵀ (3×5) @ dZ2 (5×2)",
        "dA1 (5×3) = dZ2 (5×2) @ W2ᵀ (2×3)",
        "dZ1 (5×3) = dA1 (5×3) ∘ relu'(Z1) (5×3)",
        # columns: examples are columns
        "Z2 (2×5) = W2 (2×3) @ A1 (3×5) + b2 (2×1)",
        "dW2 (2×3) = (1/m) dZ2 (2×5) @ A1ᵀ (5×3)",
        "db2 (2×1) = (1/m) Σ over columns of dZ2 (2×5)",
        "dA1 (3×5) = W2ᵀ (3×2) @ dZ2 (2×5)",
    ):
        assert expected in lines, (expected, proc.stdout)
    assert any(line.startswith("dZ2 (5×2) = A2 (5×2) − Y (5×2)") for line in lines)  # fused delta


def test_explain_generic_output_delta_and_symbolic_batch(tmp_path):
    proc = cli(tmp_path, "explain", "--layers", "4,3,2", "--output", "identity", "--layout", "rows")
    assert proc.returncode == 0, proc.stderr
    lines = [line.strip() for line in proc.stdout.splitlines()]
    assert "Z2 (m×2) = A1 (m×3) @ W2 (3×2) + b2 (2)" in lines
    assert any(line.startswith("dZ2 (m×2) = dA2 (m×2) ∘ identity'(Z2) (m×2)") for line in lines)
    assert not any(line.startswith("Z2 (2×m)") for line in lines)  # rows only


# ------------------------------------------------------------ usage and errors
def test_bad_flag_is_a_one_line_usage_error(tmp_path):
    proc = cli(tmp_path, "train", "--no-such-flag")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("xprop train: error: unrecognized arguments: --no-such-flag")
    bad_value = cli(tmp_path, "train", "--layers", "64,x,10")
    assert bad_value.returncode == 2 and len(bad_value.stderr.strip().splitlines()) == 1
    assert "--layers" in bad_value.stderr


@pytest.mark.parametrize(
    "args, parts",
    [
        (["train", "--data", "missing.npz"], ["missing.npz", "does not exist"]),
        (["train", "--layers", "10,5,10", "--epochs", "1"], ["--layers", "64 features"]),
        (["train", "--layers", "64,5,3", "--epochs", "1"], ["--layers", "10 classes"]),
        (["train", "--resume"], ["--resume needs --out"]),
        (["train", "--resume", "--out", "nowhere"], ["nothing to resume", "checkpoint.npz"]),
        (["evaluate", "missing-model.npz"], ["missing-model.npz", "does not exist"]),
        (["train", "--optimizer", "sgd", "--lr", "1e4", "--epochs", "2", "--backend", "numpy"],
         ["training diverged", "epoch 1"]),
    ],
    ids=["missing-data", "layers-features", "layers-classes", "resume-no-out", "resume-no-ckpt",
         "missing-model", "diverged"],
)
def test_errors_are_one_line_without_traceback(tmp_path, args, parts):
    one_error_line(cli(tmp_path, *args), *parts)


def test_cupy_backend_where_unusable_says_why(tmp_path):
    usable, reason = cupy_status()
    if usable:
        pytest.skip("CuPy is usable here")
    proc = cli(tmp_path, "train", "--backend", "cupy", "--epochs", 1, "--out", "run")
    one_error_line(proc, "backend 'cupy' is not usable here", reason)


HELP_FLAGS = {
    "train": ["--data", "--dataset", "--layers", "--activation", "--output", "--optimizer", "--lr",
              "--momentum", "--weight-decay", "--epochs", "--batch-size", "--validation",
              "--patience", "--standardize", "--backend", "--dtype", "--seed", "--out", "--resume",
              "--no-progress", "--label-column", "--test-fraction"],
    "evaluate": ["MODEL", "--data", "--dataset", "--split", "--label-column", "--test-fraction"],
    "predict": ["MODEL", "--data", "--dataset", "--out"],
    "gradcheck": ["--layers", "--activation", "--output", "--dtype", "--batch", "--seed", "--eps"],
    "check": ["--layers", "--dtype", "--batch", "--seed"],
    "info": [],
    "explain": ["--layers", "--batch", "--activation", "--output", "--layout"],
}


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_exits_0_and_lists_the_flags(tmp_path, command):
    proc = cli(tmp_path, *([command] if command else []), "--help")
    assert proc.returncode == 0, proc.stderr
    if command is None:
        for name in COMMANDS:
            assert name in proc.stdout
    else:
        assert proc.stdout.startswith(f"usage: xprop {command}")
        for flag in HELP_FLAGS[command]:
            assert flag in proc.stdout, flag


def test_console_script_points_at_cli_main():
    try:
        scripts = importlib.metadata.entry_points(group="console_scripts", name="xprop")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        scripts = []
    if not scripts:
        pytest.skip("xprop is not installed as a distribution (no console_scripts entry)")
    assert next(iter(scripts)).value == "xprop.cli:main"


def test_doctor_prints_one_line_per_check_and_its_verdict():
    proc = subprocess.run([sys.executable, "-m", "xprop", "doctor"], capture_output=True, text=True,
                          timeout=60)
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("xprop doctor:"), proc.stdout
    checks = lines[:-1]
    assert {line.split()[1].rstrip(":") for line in checks} >= {"cupy-wheels", "cupy-device", "blas"}
    assert all(line.split()[0] in ("OK", "INFO", "WARN", "FAIL") for line in checks)
    failed = int(lines[-1].split(" failed")[0].rsplit(" ", 1)[-1])
    assert proc.returncode == (1 if failed else 0)
    as_json = subprocess.run([sys.executable, "-m", "xprop", "doctor", "--json"], capture_output=True,
                             text=True, timeout=60)
    assert len(json.loads(as_json.stdout)) == len(checks)


def test_gpu_mem_limit_flag_parses_sizes_and_refuses_numpy(tmp_path):
    bad = cli(tmp_path, "train", "--gpu-mem-limit", "lots", "--out", tmp_path / "a")
    assert bad.returncode == 2 and "--gpu-mem-limit" in bad.stderr and len(bad.stderr.splitlines()) == 1
    on_numpy = cli(tmp_path, "train", "--backend", "numpy", "--gpu-mem-limit", "1G", "--epochs", "1",
                   "--out", tmp_path / "b")
    one_error_line(on_numpy, "gpu_mem_limit", "cupy", "numpy")
    assert not (tmp_path / "b" / "model.npz").exists()


def test_train_distributed_on_two_ranks_matches_one_process(tmp_path):
    from xprop.distributed import find_mpiexec

    mpiexec = find_mpiexec()
    if mpiexec is None:
        pytest.skip("mpiexec not found (pip install 'xprop[dist]')")
    pytest.importorskip("mpi4py", reason="mpi4py not installed (pip install 'xprop[dist]')")
    env = {k: v for k, v in os.environ.items() if k not in ("XPROP_BACKEND", "XPROP_TRACEBACK")}
    env.update(TQDM_DISABLE="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    args = ["train", "--epochs", "3", "--dtype", "float64", "--optimizer", "sgd", "--momentum", "0.9",
            "--backend", "numpy"]
    two = subprocess.run([mpiexec, "-n", "2", sys.executable, "-m", "xprop", *args, "--distributed",
                          "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env,
                         timeout=120, cwd=tmp_path)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("test accuracy:") == 1          # only rank 0 reports
    assert "data-parallel over 2 MPI ranks" in two.stdout
    one = cli(tmp_path, *args, "--out", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    a, b = model_params(tmp_path / "two" / "model.npz"), model_params(tmp_path / "one" / "model.npz")
    bound = tolerance("backends", "float64")  # same math, summation split over two ranks
    for name in a:
        err = np.linalg.norm(a[name] - b[name]) / (np.linalg.norm(a[name]) + np.linalg.norm(b[name]))
        assert err <= bound, (name, err)
