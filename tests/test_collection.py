"""The GPU tests are collected on a machine that has only what the GPU run needs.

A GPU machine may have CuPy, NumPy and pytest but not the optional test
dependencies (array-api-strict, scikit-learn, pandas). A test module that
imports one of them at its top stops collection there ("errors during
collection") and ``pytest -m gpu`` then runs no GPU test at all. This test
runs ``pytest -m gpu --collect-only`` twice in subprocesses, once as is and
once with those three modules made unimportable (a plugin on a temporary
``PYTHONPATH`` that refuses to import them, as on a machine without them),
and requires the same, non-empty list of GPU tests and no collection error.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OPTIONAL = ("array_api_strict", "sklearn", "pandas")

BLOCKER = textwrap.dedent(f"""\
    # A pytest plugin (-p xprop_block_optional) that makes these modules unimportable.
    import importlib.abc
    import sys

    BLOCKED = {OPTIONAL!r}


    class _Absent(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}} (made absent)", name=name)
            return None


    for _name in list(sys.modules):
        if _name.split(".")[0] in BLOCKED:
            del sys.modules[_name]
    sys.meta_path.insert(0, _Absent())
""")


def collect_gpu_tests(tmp_path: Path, *, block: bool) -> list[str]:
    env = dict(os.environ)
    env.pop("XPROP_REQUIRE_GPU", None)
    paths = [str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    args = [sys.executable, "-m", "pytest", "-m", "gpu", "--collect-only", "-q", "-p", "no:cacheprovider",
            "-W", "error", str(ROOT / "tests")]
    if block:
        plugins = tmp_path / "plugins"
        plugins.mkdir()
        (plugins / "xprop_block_optional.py").write_text(BLOCKER)
        paths.insert(0, str(plugins))
        args[3:3] = ["-p", "xprop_block_optional"]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    result = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    out = result.stdout + result.stderr
    assert result.returncode == 0, f"collection failed (exit {result.returncode}):\n{out[-4000:]}"
    return sorted(line for line in result.stdout.splitlines() if "::" in line)


@pytest.mark.slow
def test_every_gpu_test_is_collected_without_the_optional_test_dependencies(tmp_path):
    for name in ("full", "bare"):
        (tmp_path / name).mkdir()
    full = collect_gpu_tests(tmp_path / "full", block=False)
    bare = collect_gpu_tests(tmp_path / "bare", block=True)
    assert len(full) > 50, f"only {len(full)} GPU tests collected: {full}"
    missing = sorted(set(full) - set(bare))
    assert not missing, (f"{len(missing)} of {len(full)} GPU tests are not collected without "
                         f"{', '.join(OPTIONAL)}: {missing[:20]}")
    assert len(bare) == len(full)


def test_the_blocker_really_makes_the_modules_absent(tmp_path):
    """The check above means something only if the plugin hides the modules."""
    (tmp_path / "xprop_block_optional.py").write_text(BLOCKER)
    code = ("import xprop_block_optional, importlib\n"
            f"for name in {OPTIONAL!r}:\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except ImportError:\n"
            "        print(name, 'absent')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(tmp_path)), check=True)
    assert out.stdout.split("\n")[:3] == [f"{name} absent" for name in OPTIONAL], out.stdout + out.stderr
