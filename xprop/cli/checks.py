"""``xprop gradcheck`` and ``xprop check``: gradients and backends checked."""

from __future__ import annotations

from ..backend import backends, cupy_status
from ..gradcheck import compare_backends, example_data, gradcheck
from ..network import MLP
from ..tolerances import tolerance
from .common import net_arguments, nonnegative_int, positive_float, positive_int, say, shape_text, table


def _skipped_backends():
    usable, reason = cupy_status()
    return {} if usable else {"cupy": reason}


def cmd_gradcheck(args) -> int:
    layouts = ("rows", "columns") if args.layout == "both" else (args.layout,)
    rows, failures, reports = [], [], []
    for name in backends():
        for layout in layouts:
            net = MLP(args.layers, activation=args.activation, output=args.output, loss=args.loss,
                      backend=name, dtype=args.dtype, seed=args.seed, layout=layout)
            X, Y = example_data(net, args.batch, args.seed)
            report = gradcheck(net, X, Y, eps=args.eps)
            reports.append(report)
            for param, err in report.errors.items():
                ok = err <= report.tolerance and not report.kinks
                rows.append((name, layout, param, shape_text(net.params[param].shape), f"{err:.3e}",
                             "pass" if ok else "FAIL"))
                if not ok:
                    idx, a, n, _ = report.worst[param]
                    failures.append(f"{name}/{layout} {param}{list(idx)}: analytic {a:.9g} vs "
                                    f"numeric {n:.9g}")
            if report.kinks:
                failures.append(f"{name}/{layout}: {report.kinks} pre-activation(s) within 10·eps of "
                                "the ReLU kink, where the numeric gradient is unreliable; "
                                "try another --seed")
    tol = reports[0].tolerance
    say(f"gradcheck: {'-'.join(map(str, net.sizes))}, {net.activation} → {net.output} "
         f"(loss {net.loss}), {args.dtype}, batch {args.batch}, eps {args.eps:g}, "
         f"tolerance {tol:g} (relative error, analytic vs central differences in float64)")
    for line in table(("backend", "layout", "param", "shape", "rel. error", "result"), rows):
        say(line)
    for name, reason in _skipped_backends().items():
        say(f"{name}: skipped ({reason})")
    for line in failures:
        say(line)
    n_fail = sum(1 for r in rows if r[-1] != "pass")
    say(f"{'FAILED' if n_fail or failures else 'PASSED'}: {len(rows) - n_fail} of {len(rows)} "
         "parameter checks passed")
    return 1 if (n_fail or failures) else 0


def cmd_check(args) -> int:
    net = MLP(args.layers, activation=args.activation, output=args.output, loss=args.loss,
              backend="numpy", dtype=args.dtype, seed=args.seed)
    X, Y = example_data(net, args.batch, args.seed)
    report = compare_backends(net, X, Y)
    tol = tolerance("backends", args.dtype)
    say(f"check: the same {'-'.join(map(str, net.sizes))} net ({net.activation} → {net.output}, "
         f"{args.dtype}, batch {args.batch}) from identical weights on every usable backend, "
         "compared with numpy")
    say(f"tolerance: {tol:g} (relative error; xprop/tolerances.py, 'backends', {args.dtype})")
    rows = [("numpy", "(reference)", "", "")]
    for name, errs in report.errors.items():
        for q, e in errs.items():
            rows.append((name, q, f"{e:.3e}", "pass" if e <= report.tolerance else "FAIL"))
    for line in table(("backend", "quantity", "rel. error", "result"), rows):
        say(line)
    for name, reason in report.skipped.items():
        say(f"{name}: skipped ({reason})")
    if not report.errors:
        say("nothing to compare: numpy is the only usable backend here")
        return 0
    say(f"{'PASSED' if report.passed else 'FAILED'}: largest difference {report.max_error:.3e}")
    return 0 if report.passed else 1


def add_parsers(add) -> None:
    """The ``gradcheck`` and ``check`` subcommands."""
    # gradcheck
    p = add("gradcheck", "analytic vs numeric gradients on every usable backend",
            "Build a small net, compute its gradients by backprop and by central differences "
            "(float64, one parameter entry at a time: O(parameters) forward passes, keep it "
            "small), and print the relative error per parameter. Exit status 1 if any fails.")
    net_arguments(p, layers=[4, 5, 3], dtype="float64")
    p.add_argument("--layout", choices=("rows", "columns", "both"), default="both",
                   help="examples as rows, as columns, or both (default: both)")
    p.add_argument("--batch", type=positive_int, default=8, help="examples (default: 8)")
    p.add_argument("--eps", type=positive_float, default=1e-6,
                   help="central-difference step (default: 1e-6)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="weights and data (default: 0)")
    p.set_defaults(func=cmd_gradcheck)

    # check
    p = add("check", "does my GPU agree with my CPU? the same net on every backend vs NumPy",
            "Run the same forward and backward pass, from identical weights and data, on every "
            "usable backend and print each quantity's relative difference from NumPy. Backends "
            "that cannot run here are listed as skipped, with the reason. Exit status 1 if a "
            "backend disagrees beyond the tolerance table (xprop/tolerances.py).")
    net_arguments(p, layers=[64, 128, 10], dtype="float32")
    p.add_argument("--batch", type=positive_int, default=64, help="examples (default: 64)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="weights and data (default: 0)")
    p.set_defaults(func=cmd_check)
