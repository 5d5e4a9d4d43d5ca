"""``xprop sweep`` run the way a user runs it (``python -m xprop sweep`` in a subprocess), and the
library under it (:mod:`xprop.sweep`)."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import xprop
from xprop import sweep

ROOT = Path(__file__).resolve().parent.parent


def cli(cwd, *args, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "xprop", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_sweep_on_the_digits_ranks_every_combination_and_writes_its_files(tmp_path):
    proc = cli(tmp_path, "sweep", "--lr", "1e-3,1e-2", "--weight-decay", "0,1e-4", "--seeds", "2",
               "--layers", "64,32,10", "--layers", "64,16,10", "--epochs", "2", "--out", "run",
               "--no-progress")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "run"
    rows = read_csv(out / "sweep.csv")
    assert len(rows) == 2 * 2 * 2                      # lr × weight decay × layers
    assert [int(r["rank"]) for r in rows] == list(range(1, 9))
    val = [float(r["val_accuracy_mean"]) for r in rows]
    assert val == sorted(val, reverse=True)
    assert all(r["seeds"] == "2" and r["diverged"] == "0" for r in rows)
    data = json.loads((out / "sweep.json").read_text())
    assert len(data["runs"]) == 16 and data["config"]["groups"][0]["nets"] == 8
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "val acc" in proc.stdout and "8 combinations × 2 seeds = 16 nets in 2 stacked run(s)" in proc.stdout
    # the table's best row is the CSV's first
    best = rows[0]
    assert f"{float(best['val_accuracy_mean']):.4f} ± {float(best['val_accuracy_std']):.4f}" in proc.stdout


def test_each_net_of_a_sweep_is_the_net_fit_trains_alone():
    ds = xprop.load_digits()
    group = sweep.sweep_groups([[64, 16, 10]], [32], [1e-2, 3e-2], [0.0, 1e-3], [0.0], [0, 5])[0]
    runs = sweep.run_group(group, ds.X_train, ds.y_train, "adam", test=(ds.X_test, ds.y_test),
                           net_options={"dtype": "float64", "backend": "numpy"},
                           fit_options={"epochs": 2, "validation": 0.1})
    assert len(runs) == 8
    for r in runs[::3]:
        net = xprop.MLP([64, 16, 10], dtype="float64", backend="numpy", seed=r["seed"])
        h = xprop.fit(net, ds.X_train, ds.y_train, epochs=2, batch_size=32, validation=0.1, seed=r["seed"],
                      optimizer=xprop.Adam(lr=r["lr"], weight_decay=r["weight_decay"]), progress=False)
        assert (r["val_accuracy"], r["val_loss"], r["loss"]) == (h.val_accuracy[-1], h.val_loss[-1], h.loss[-1])
        assert r["test_accuracy"] == xprop.evaluate(net, ds.X_test, ds.y_test)["accuracy"]


def test_a_diverging_combination_is_a_row_that_says_so(tmp_path):
    proc = cli(tmp_path, "sweep", "--optimizer", "sgd", "--lr", "0.05,1e4", "--seeds", "2", "--epochs", "2",
               "--layers", "64,16,10", "--out", "run", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    rows = read_csv(tmp_path / "run" / "sweep.csv")
    bad = [r for r in rows if r["lr"] == "10000.0"]
    assert len(bad) == 1 and bad[0]["diverged"] == "2" and bad[0]["rank"] == "2"
    assert bad[0]["val_accuracy_mean"] == ""
    assert "all 2" in proc.stdout


def test_ctrl_c_then_resume_gives_the_uninterrupted_sweep(tmp_path):
    args = ["sweep", "--lr", "1e-3,1e-2", "--seeds", "2", "--layers", "64,32,10", "--layers", "64,16,10",
            "--epochs", "15", "--no-progress"]
    whole = cli(tmp_path, *args, "--out", "whole")
    assert whole.returncode == 0, whole.stderr

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "xprop", *args, "--out", "cut"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = tmp_path / "cut" / "groups" / "64-32-10_b32.npz"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "sweep interrupted" in err and "--resume" in err and "--out cut" in err
    assert not (tmp_path / "cut" / "sweep.csv").exists()

    resumed = cli(tmp_path, *args, "--out", "cut", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert read_csv(tmp_path / "cut" / "sweep.csv") == read_csv(tmp_path / "whole" / "sweep.csv")
    words = resumed.stdout.split("(resumed: ")[1].split(" ")
    done, now = int(words[0]), int(words[6])
    assert 0 < done and done + now == 8 * 15  # it went on from the checkpoint, not from the start


@pytest.mark.parametrize("args, words", [
    (["--resume"], "--resume needs --out DIR"),
    (["--momentum", "0.9"], "--momentum applies to --optimizer sgd"),
    (["--patience", "2", "--validation", "0"], "--patience (early stopping) needs --validation > 0"),
    (["--layers", "64,32,9"], "--layers ends with 9 but the data has 10 classes"),
])
def test_bad_sweeps_are_one_line_errors(tmp_path, args, words):
    proc = cli(tmp_path, "sweep", "--epochs", "1", *args)
    assert proc.returncode == 1
    assert proc.stderr.startswith("xprop: error: ") and words in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_a_sweep_directory_is_not_overwritten(tmp_path):
    assert cli(tmp_path, "sweep", "--epochs", "1", "--out", "run", "--no-progress").returncode == 0
    before = (tmp_path / "run" / "sweep.csv").read_text()
    proc = cli(tmp_path, "sweep", "--epochs", "1", "--out", "run", "--lr", "0.5")
    assert proc.returncode == 1 and "already holds a sweep" in proc.stderr
    assert (tmp_path / "run" / "sweep.csv").read_text() == before


def test_swept_values_are_checked_by_the_parser(tmp_path):
    proc = cli(tmp_path, "sweep", "--lr", "1e-3,,1e-2")
    assert proc.returncode == 2 and "--lr must be comma-separated values" in proc.stderr
    proc = cli(tmp_path, "sweep", "--lr", "1e-3,1e-3")
    assert proc.returncode == 2 and "--lr lists a value twice" in proc.stderr
