"""scikit-learn's own MLP test suite, run against xprop's estimators.

The installed scikit-learn ships ``sklearn/neural_network/tests/test_mlp.py``.
This test copies it into a temporary directory, changes exactly one line, the
import of ``MLPClassifier`` and ``MLPRegressor`` (now from
:mod:`xprop.estimators`), runs it with pytest in a subprocess and requires
every test to pass except the ones in :data:`EXCLUDED`.

How it is run
-------------
As scikit-learn runs it from an installed package: its ``sklearn.conftest``
is loaded as a plugin (it provides the ``global_random_seed`` fixture and
its pytest configuration) and a blank ini file replaces xprop's, so the
copied tests run with pytest's default warning handling, as they do in
scikit-learn's own default run (``SKLEARN_WARNINGS_AS_ERRORS`` unset), and
not under xprop's ``filterwarnings = error``: the copied tests were written
for the former (some let a ``ConvergenceWarning`` go by on purpose).

Excluded tests
--------------
Only tests that read or set scikit-learn's private attributes, whose
meaning is an implementation detail of scikit-learn's estimator, not of the
model, may be excluded; they are deselected (not run) through a one-hook
``conftest.py``. None is excluded today (see :data:`EXCLUDED`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

OLD_IMPORT = "from sklearn.neural_network import MLPClassifier, MLPRegressor"
NEW_IMPORT = "from xprop.estimators import MLPClassifier, MLPRegressor"
CUPY_IMPORT = "from xprop_cupy_estimators import MLPClassifier, MLPRegressor"

# For the GPU run: the same classes with backend="cupy" as the default, so that every
# estimator the suite builds (and clones, and pickles) trains on the GPU.
CUPY_MODULE = '''
import types
from xprop import estimators


def _on_cupy(cls):
    init = cls.__init__
    new_init = types.FunctionType(init.__code__, init.__globals__, init.__name__, init.__defaults__,
                                  init.__closure__)
    new_init.__kwdefaults__ = {**init.__kwdefaults__, "backend": "cupy"}
    return type(cls.__name__, (cls,), {"__init__": new_init, "__module__": __name__})


MLPClassifier = _on_cupy(estimators.MLPClassifier)
MLPRegressor = _on_cupy(estimators.MLPRegressor)
'''

# Tests excluded from the run, by name, with why. Empty: the three tests that read or set
# scikit-learn's private state (test_gradient calls _loss_grad_lbfgs, test_learning_rate_warmstart
# and test_adaptive_learning_rate read _optimizer.learning_rate, test_n_iter_no_change[_inf] read
# _no_improvement_count, test_fit sets _coef_velocity and friends) pass too, because the
# estimators keep those names with scikit-learn's meaning. A test that has to be excluded goes here.
EXCLUDED: dict[str, str] = {}

CONFTEST = '''
import json, os
_EXCLUDED = set(json.loads(os.environ["XPROP_SUITE_EXCLUDED"]))

def pytest_collection_modifyitems(config, items):
    keep = [item for item in items if item.originalname not in _EXCLUDED]
    gone = [item for item in items if item.originalname in _EXCLUDED]
    if gone:
        config.hook.pytest_deselected(items=gone)
        items[:] = keep
'''


def copied_suite(tmp_path: Path, backend: str = "numpy") -> Path:
    """scikit-learn's installed test_mlp.py in ``tmp_path`` with only the import changed.

    ``backend="cupy"``: the import is of xprop's classes with ``backend="cupy"`` as default.
    """
    sklearn = pytest.importorskip("sklearn", reason="scikit-learn (xprop's [sklearn] extra) is not installed")
    source = Path(sklearn.__file__).parent / "neural_network" / "tests" / "test_mlp.py"
    if not source.is_file():
        pytest.skip(f"this scikit-learn install does not ship its tests ({source} is missing)")
    text = source.read_text(encoding="utf-8")
    assert text.count(OLD_IMPORT) == 1, f"{source} no longer imports the estimators as {OLD_IMPORT!r}"
    new_import = NEW_IMPORT if backend == "numpy" else CUPY_IMPORT
    text = text.replace(OLD_IMPORT, new_import)
    if backend == "cupy":
        (tmp_path / "xprop_cupy_estimators.py").write_text(CUPY_MODULE, encoding="utf-8")
    assert "import MLP" not in text.replace(new_import, ""), "the copied suite must not reach scikit-learn's own MLP any other way"
    (tmp_path / "test_mlp.py").write_text(text, encoding="utf-8")
    (tmp_path / "conftest.py").write_text(CONFTEST, encoding="utf-8")
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    return tmp_path / "test_mlp.py"


def run_suite(tmp_path: Path, excluded, backend="numpy") -> dict[str, str]:
    """Run the copied suite; the outcome of each test id: passed, failed, error or skipped."""
    suite = copied_suite(tmp_path, backend)
    report = tmp_path / "report.xml"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               XPROP_SUITE_EXCLUDED=json.dumps(sorted(excluded)))
    env.pop("PYTHONWARNINGS", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "sklearn.conftest",
           "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path), f"--junitxml={report}",
           str(suite)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert report.is_file(), f"the copied suite did not run:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = case.get("name")
        kinds = {child.tag for child in case}
        outcomes[name] = ("failed" if "failure" in kinds else "error" if "error" in kinds
                          else "skipped" if "skipped" in kinds else "passed")
    outcomes["__output__"] = proc.stdout
    return outcomes


def test_the_cupy_classes_default_to_cupy_and_are_xprops_otherwise(tmp_path):
    copied_suite(tmp_path, "cupy")
    code = ("import xprop_cupy_estimators as m, xprop.estimators as e; "
            "print(m.MLPClassifier().backend, m.MLPRegressor(loss='poisson').get_params()['backend'], "
            "m.MLPClassifier(backend='numpy').backend, issubclass(m.MLPRegressor, e.MLPRegressor))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["cupy", "cupy", "numpy", "True"], out.stdout + out.stderr


def test_the_copy_imports_xprops_estimators_and_the_excluded_tests_exist(tmp_path):
    text = copied_suite(tmp_path).read_text(encoding="utf-8")
    assert text.count(NEW_IMPORT) == 1 and text.count("import MLP") == 1
    for name in EXCLUDED:
        assert f"def {name}(" in text, f"{name} is no longer in scikit-learn's test_mlp.py; drop it from EXCLUDED"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def test_scikit_learns_mlp_tests_pass_against_xprop(tmp_path, backend):
    outcomes = run_suite(tmp_path, EXCLUDED, backend)
    output = outcomes.pop("__output__")
    defined = set(re.findall(r"^def (test_\w+)\(", (tmp_path / "test_mlp.py").read_text(encoding="utf-8"), re.M))
    ran = {name.split("[")[0] for name in outcomes}
    assert ran == defined - set(EXCLUDED), (
        f"tests defined but not run: {sorted(defined - set(EXCLUDED) - ran)}\n{output[-4000:]}")
    not_passed = {name: outcome for name, outcome in outcomes.items() if outcome != "passed"}
    assert not not_passed, (
        f"{len(not_passed)} of {len(outcomes)} of scikit-learn's MLP tests did not pass against "
        f"xprop (backend={backend!r}): {not_passed}\n{output[-8000:]}"
    )
