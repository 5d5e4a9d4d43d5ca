"""``xprop info``, ``xprop doctor`` and ``xprop explain``: this machine, and the equations."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path

import numpy

from ..version import __version__
from ..backend import BackendError, backend_name, backends, cupy_status, get_xp, gpu_info
from ..explain import explain
from .common import net_arguments, one_line, positive_int, say


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cupy_wheels() -> list[str]:
    """Installed CuPy distributions (read from package metadata; cupy is not imported)."""
    found = set()
    for dist in importlib.metadata.distributions():
        name = (dist.metadata.get("Name") or "").lower()
        if name == "cupy" or name.startswith("cupy-"):
            found.add(f"{name} {dist.version}")
    return sorted(found)


def _gib(n) -> str:
    return f"{n / 2**30:.1f} GiB"


def cmd_info(args) -> int:
    lines = [("xprop", f"{__version__} ({Path(__file__).resolve().parent.parent})"),
             ("python", (f"{platform.python_version()} ({platform.python_implementation()}, "
                         f"{platform.system().lower()} {platform.machine()})")),
             ("numpy", numpy.__version__),
             ("tqdm", _dist_version("tqdm") or "not installed")]
    mpl = _dist_version("matplotlib")
    lines.append(("matplotlib", mpl or 'not installed (pip install "xprop[plot]" for curves.png)'))
    wheels = _cupy_wheels()
    cupy_text = ", ".join(wheels) if wheels else "not installed"
    if len(wheels) > 1:
        cupy_text += " (more than one CuPy wheel: uninstall all but one)"
    lines.append(("cupy", cupy_text))
    lines.append(("backends", ", ".join(backends()) + " (usable here)"))
    env = os.environ.get("XPROP_BACKEND", "").strip()
    try:
        auto = backend_name(get_xp("auto"))
    except (BackendError, ValueError) as exc:
        auto = f"unusable: {one_line(exc)}"
    lines.append(("auto", f"{auto} (XPROP_BACKEND={env})" if env else f"{auto} (XPROP_BACKEND unset)"))
    usable, reason = cupy_status()
    if usable:
        try:
            devices = gpu_info()
        except Exception as exc:  # noqa: BLE001  (report it; `info` never fails on a device query)
            devices = []
            lines.append(("gpu", f"CuPy is usable ({reason}) but the device query failed: {exc}"))
        for d in devices:
            lines.append((f"gpu {d['id']}",
                          f"{d['name']}, {_gib(d['total_bytes'])} total, {_gib(d['free_bytes'])} free"))
    else:
        lines.append(("gpu", f"none usable: {reason}"))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        say(f"{key + ':':<{width + 1}} {value}")
    return 0


def cmd_doctor(args) -> int:
    from .. import doctor  # noqa: PLC0415

    return doctor.main(["--json"] if args.json else [])


def cmd_explain(args) -> int:
    say(explain(args.layers, batch=args.batch, activation=args.activation, output=args.output,
                 loss=args.loss, layout=args.layout))
    return 0


def add_parsers(add) -> None:
    """The ``info``, ``doctor`` and ``explain`` subcommands."""
    # info
    p = add("info", "versions, usable backends, the GPU or why there is none")
    p.set_defaults(func=cmd_info)

    # doctor
    p = add("doctor", "look at this machine: driver vs CuPy wheel, devices, caches, MPI/NCCL, BLAS",
            "One line per check with its fix; exit 1 when something is broken "
            "(see xprop/doctor.py for every check).")
    p.add_argument("--json", action="store_true", help="print the findings as a JSON list")
    p.set_defaults(func=cmd_doctor)

    # explain
    p = add("explain", "the forward and backward equations with concrete shapes",
            "Print, layer by layer, the forward and backward equations of a network with the "
            "shape of every array, taken from an actual MLP's forward and backward pass, e.g. "
            "'Z2 (m×2) = A1 (m×3) @ W2 (3×2) + b2 (2)'.")
    net_arguments(p, layers=[4, 3, 2], dtype=None)
    p.add_argument("--batch", type=positive_int, metavar="M",
                   help="substitute this batch size for m (default: write m)")
    p.add_argument("--layout", choices=("rows", "columns", "both"), default="both",
                   help="examples as rows, as columns, or both (default: both)")
    p.set_defaults(func=cmd_explain)
