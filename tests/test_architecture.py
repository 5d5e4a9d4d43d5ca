"""The rules of docs/architecture.md, read from the source with ``ast``.

- Imports go down the layers (module-level imports; the deferred ones the
  document names are the only upward ones), so there are no import cycles.
- The math never imports training, distributed, CLI, estimator or fast-step code.
- Only the backend imports CuPy, only the distributed package mpi4py, only the
  estimators scikit-learn, only the CLI argparse (anywhere in a module).
- No module over 500 lines, no function over 60 lines or 8 parameters, except
  the ones listed below with the reason.
- The version is written in one place.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "xprop"

# docs/architecture.md, "Import rules": imports go down this list, never up.
LAYERS = [
    {"version", "backend", "tolerances", "flat", "signals", "runlock"},
    {"activations", "losses", "init", "heads", "kernels", "validation", "network", "optim"},
    {"fast", "step", "stacked", "stacked_optim"},
    {"gradcheck", "explain", "io", "datasets", "plots", "fingerprint"},
    {"train", "sweep"},
    {"distributed"},
    {"estimators", "cli", "doctor", "__main__"},
    {"__init__"},   # the package itself: imports the public names of every layer
]
MATH = {"activations", "losses", "init", "heads", "kernels", "validation", "network", "optim"}
NOT_FOR_MATH = ("train", "distributed", "cli", "fast", "step", "stacked", "stacked_optim", "sweep",
                "estimators", "doctor")

# The deferred (function-level) imports that go up a layer, each named in docs/architecture.md.
DEFERRED_UP = {
    ("train.loop", "distributed"),     # fit(distributed=True): the data-parallel strategy
    ("network", "io"),                 # MLP.save
    ("__init__", "distributed"),       # xprop.distributed on first use
}

# Third-party imports only one part may make: name -> the top-level part allowed.
OWNED = {"cupy": {"backend"}, "cupyx": {"backend"}, "mpi4py": {"distributed"},
         "sklearn": {"estimators"}, "argparse": {"cli"}}

MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_PARAMETERS = 500, 60, 8
# Over the limits, and why that one is better as it is.
LONG_MODULES = {
    "backend": "the one door to the hardware: every CuPy question (import, usability, devices, "
               "transfers, streams, NCCL, kernels' fuse) in one module by design",
    "doctor": "one checklist of the machine (driver, wheels, device, kernel cache, CUDA headers, MPI, "
              "NCCL, BLAS, memory), each check beside its probe and fix",
}
LONG_FUNCTIONS = {
    "explain.explain_layout": "the equations of one layout as one table, written top to bottom",
}
MANY_PARAMETERS = {
    "train.loop.fit": "the public signature (unchanged)",
    "train.loop.run": "fit's parts, passed on as they are",
    "train.many.fit_many": "the public signature: fit's, plus rows",
    "network.MLP.__init__": "the public signature (unchanged)",
    "estimators._base.BaseMLP.__init__": "scikit-learn estimators name every hyperparameter in __init__",
    "estimators._classifier.MLPClassifier.__init__": "scikit-learn's MLPClassifier signature, plus the extras",
    "estimators._regressor.MLPRegressor.__init__": "scikit-learn's MLPRegressor signature, plus the extras",
    "kernels.adam_update": "the update's four arrays and Adam's hyperparameters and step count",
    "kernels._adam": "one fused elementwise kernel: cupy.fuse takes its operands and scalars as arguments",
}


def modules():
    """``{dotted name below xprop: Path}`` of every module."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = modules()


def resolve(module: str, path: Path, node) -> list:
    """The xprop modules (dotted, below xprop) an import statement names, or [] for others."""
    is_package = path.name == "__init__.py"
    if isinstance(node, ast.Import):
        return [n.name[len("xprop."):] if n.name != "xprop" else "__init__"
                for n in node.names if n.name == "xprop" or n.name.startswith("xprop.")]
    if node.level == 0:
        if node.module != "xprop" and not (node.module or "").startswith("xprop."):
            return []
        base = node.module[len("xprop."):] if node.module != "xprop" else ""
    else:
        here = module.split(".") if module != "__init__" else []
        if not is_package:
            here = here[:-1]
        up = node.level - 1
        base_parts = here[:len(here) - up] if up else here
        base = ".".join(base_parts + ([node.module] if node.module else []))
    targets = []
    for alias in node.names:
        candidate = f"{base}.{alias.name}" if base else alias.name
        if candidate in MODULES:
            targets.append(candidate)         # a submodule imported by name
        else:
            targets.append(base or "__init__")
    return targets


def imports(module: str, path: Path):
    """``(target, deferred, node)`` for every import of an xprop module in ``module``."""
    tree = ast.parse(path.read_text(), str(path))
    top = set()
    for node in tree.body:
        for sub in ast.walk(node):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                break
            top.add(id(sub))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target in resolve(module, path, node):
                yield target, id(node) not in top, node


def third_party(path: Path):
    """Top-level names of every module imported anywhere in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for n in node.names:
                yield n.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], node.lineno


def layer(module: str) -> int:
    top = module.split(".")[0]
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"xprop.{module} is in no layer of docs/architecture.md")


def part(module: str) -> str:
    return module.split(".")[0]


def test_every_module_has_a_layer():
    for module in MODULES:
        layer(module)


def test_imports_go_down_the_layers():
    wrong = []
    for module, path in MODULES.items():
        for target, deferred, node in imports(module, path):
            if part(target) == part(module):
                continue
            if layer(target) > layer(module):
                if deferred and (module, part(target)) in DEFERRED_UP:
                    continue
                kind = "deferred import" if deferred else "import"
                wrong.append(f"xprop/{path.relative_to(PACKAGE)}:{node.lineno}: {kind} of xprop.{target} "
                             f"(layer {layer(target)}) from layer {layer(module)}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    graph = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for target, deferred, _ in imports(module, path):
            if not deferred and target != module:
                graph[module].add(target)
    seen, stack, cycles = set(), [], []

    def visit(m):
        if m in stack:
            cycles.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        stack.append(m)
        for t in sorted(graph[m]):
            visit(t)
        stack.pop()
        seen.add(m)

    for m in sorted(graph):
        visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if part(m) in MATH))
def test_the_math_never_imports_training_distributed_cli_or_fast_code(module):
    bad = [f"line {node.lineno}: xprop.{t}" for t, _, node in imports(module, MODULES[module])
           if part(t) in NOT_FOR_MATH]
    assert not bad, f"xprop.{module} imports " + ", ".join(bad)


def test_only_their_owners_import_cupy_mpi4py_sklearn_and_argparse():
    wrong = []
    for module, path in MODULES.items():
        for name, lineno in third_party(path):
            owners = OWNED.get(name)
            if owners is not None and part(module) not in owners:
                wrong.append(f"xprop/{path.relative_to(PACKAGE)}:{lineno} imports {name} "
                             f"(only {', '.join(sorted(owners))} may)")
    assert not wrong, "\n".join(wrong)


def test_modules_are_at_most_500_lines_or_say_why():
    long = {m: len(p.read_text().splitlines()) for m, p in MODULES.items()}
    over = {m: n for m, n in long.items() if n > MAX_MODULE_LINES and m not in LONG_MODULES}
    assert not over, f"modules over {MAX_MODULE_LINES} lines: {over}"
    stale = [m for m in LONG_MODULES if long.get(m, 0) <= MAX_MODULE_LINES]
    assert not stale, f"listed as long but not (any more): {stale}"


def functions():
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for child in node.body:
                    if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        child.qual = f"{module}.{node.name}.{child.name}"
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield getattr(node, "qual", f"{module}.{node.name}"), node


def body_lines(node) -> int:
    """Lines of a function without its docstring."""
    first = node.body[0]
    start = node.lineno
    if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant) \
            and isinstance(first.value.value, str) and len(node.body) > 1:
        start = first.end_lineno
    return node.end_lineno - start


def test_functions_are_at_most_60_lines_or_say_why():
    lines = {q: body_lines(n) for q, n in functions()}
    over = {q: n for q, n in lines.items() if n > MAX_FUNCTION_LINES and q not in LONG_FUNCTIONS}
    assert not over, f"functions over {MAX_FUNCTION_LINES} lines (docstring excluded): {over}"
    stale = [q for q in LONG_FUNCTIONS if lines.get(q, 0) <= MAX_FUNCTION_LINES]
    assert not stale, f"listed as long but not (any more): {stale}"


def test_functions_take_at_most_8_parameters_or_say_why():
    def count(n):
        a = n.args
        names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
        return len([x for x in names if x not in ("self", "cls")])

    counts = {q: count(n) for q, n in functions()}
    over = {q: n for q, n in counts.items() if n > MAX_PARAMETERS and q not in MANY_PARAMETERS}
    assert not over, f"functions with more than {MAX_PARAMETERS} parameters: {over}"
    stale = [q for q in MANY_PARAMETERS if counts.get(q, 0) <= MAX_PARAMETERS]
    assert not stale, f"listed with many parameters but not (any more): {stale}"


def test_the_version_is_written_in_one_place():
    pattern = re.compile(r"""__version__\s*=\s*["']""")
    where = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if pattern.search(p.read_text())]
    assert where == ["xprop/version.py"], where
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert not re.search(r"^version\s*=\s*[\"']", pyproject, re.MULTILINE), "pyproject.toml writes a version"
    assert 'attr = "xprop.version.__version__"' in pyproject
