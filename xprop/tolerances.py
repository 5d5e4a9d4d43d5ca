"""The one tolerance table of xprop.

Every comparison in the library (``gradcheck``, ``compare_backends``,
``xprop check``) and in the test suite reads its bound from here. Errors are
norm-wise relative errors per parameter::

    err(a, b) = ‖a − b‖₂ / max(‖a‖₂ + ‖b‖₂, tiny)

``gradcheck``
    Analytic gradient in the net's dtype against a central-difference numeric
    gradient computed in float64 (eps = 1e-6). In float64 both are accurate
    to ~1e-9 and 1e-6 is the customary bound. In float32 the analytic
    gradient carries float32 rounding (unit roundoff 6e-8, grown through a few
    layers of sums; observed up to ~2e-7 on small nets), so the bound is 1e-5.
``backends``
    The same forward/backward from the same weights on two backends (NumPy
    vs CuPy): only the order of summation in the matrix products differs, so
    the bound is a few hundred units of roundoff: 1e-5 in float32, 1e-12 in
    float64.
``fast``
    A fast path against its plain reference on the same backend (same
    operations, possibly fused or reordered): 1e-6 in float32, 1e-13 in float64.
"""

TOLERANCES = {
    "gradcheck": {"float64": 1e-6, "float32": 1e-5},
    "backends": {"float64": 1e-12, "float32": 1e-5},
    "fast": {"float64": 1e-13, "float32": 1e-6},
}


def tolerance(check: str, dtype) -> float:
    """The bound for ``check`` ("gradcheck", "backends", "fast") at ``dtype``."""
    name = str(getattr(dtype, "name", dtype)).rsplit(".", 1)[-1]
    return TOLERANCES[check][name]
