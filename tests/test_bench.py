"""Smoke tests of scripts/bench.py: it runs, prints its table and writes its JSON.

Speed is never asserted here (the machines are shared and noisy); these tests
only keep the benchmark working, so the figures in docs/performance.md can
be reproduced with one command.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"


def bench(tmp_path, *args, timeout=240):
    proc = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_quick_run_prints_ratios_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = bench(tmp_path, "--quick", "--sizes", "16-8-4:8,12-6-3:5", "--only", "xprop,floor,torch,sklearn",
                 "--json", str(out))
    data = json.loads(out.read_text())
    rows = data["rows"]
    contenders = {r["contender"] for r in rows}
    assert {"xprop", "floor"} <= contenders
    assert {r["config"] for r in rows} == {"16-8-4", "12-6-3"}
    for r in rows:
        assert r["median"] > 0 and r["best"] >= r["median"] and len(r["rounds"]) == 2
        if r["contender"] != "xprop":
            assert r["xprop_ratio_median"] > 0
    for name in ("torch", "sklearn"):  # either measured or said why not
        assert name in contenders or f"skipped {name}:" in proc.stdout
    assert "numpy" in data["environment"] and "xprop÷ med" in proc.stdout


def test_memory_mode_reports_peak_against_the_budget(tmp_path):
    out = tmp_path / "mem.json"
    bench(tmp_path, "--memory", "--sizes", "20-10-5:16", "--steps", "4", "--json", str(out))
    rows = json.loads(out.read_text())["memory"]
    assert [r["optimizer"] for r in rows] == ["sgd", "adam"]
    for r in rows:
        assert r["budget_bytes"] == r["params_bytes"] + r["state_bytes"] + r["cache_bytes"]
        assert r["peak_traced_bytes"] > 0 and r["peak_over_budget"] > 0


def test_digits_mode_compares_with_scikit_learn(tmp_path):
    pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install 'xprop[sklearn]')")
    out = tmp_path / "digits.json"
    proc = bench(tmp_path, "--digits", "--rounds", "1", "--json", str(out))
    r = json.loads(out.read_text())["digits"]
    assert r["xprop_s_median"] > 0 and r["sklearn_s_median"] > 0
    assert "xprop faster by" in proc.stdout


def test_unusable_backend_is_a_clear_error(tmp_path):
    from xprop.backend import cupy_status

    if cupy_status()[0]:
        pytest.skip("CuPy is usable here; this test is about a machine without a GPU")
    proc = subprocess.run([sys.executable, str(BENCH), "--backend", "cupy", "--quick"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("bench.py: error: backend 'cupy' is not usable here")
    assert "Traceback" not in proc.stderr


def test_many_mode_compares_fit_many_with_k_fits_and_the_floor(tmp_path):
    out = tmp_path / "many.json"
    proc = bench(tmp_path, "--many", "2", "--sizes", "12-6-3:5", "--quick", "--json", str(out))
    data = json.loads(out.read_text())
    rows = data["many"]
    contenders = {r["contender"] for r in rows}
    assert {"fit_many", "K fits", "floor"} <= contenders
    for r in rows:
        assert r["K"] == 2 and r["config"] == "12-6-3" and r["median"] > 0 and len(r["rounds"]) == 2
        if r["contender"] != "fit_many":
            assert r["fit_many_ratio_median"] > 0
    for name in ("jax vmap", "torch vmap"):   # either measured or said why not
        assert name in contenders or f"skipped {name}:" in proc.stdout
