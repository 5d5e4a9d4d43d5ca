"""The one tolerance table of xprop.

Every comparison in the library (``gradcheck``, ``compare_backends``,
``xprop check``) and in the test suite reads its bound from here. Errors are
norm-wise relative errors per parameter (except the training step's ``fast``
comparison, below)::

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
    operations, possibly fused or reordered). For elementwise overrides the
    error is the relative one above. The training step sums in another order
    (``db`` as a matrix-vector product, the softmax-CE cost from row sums) and
    scales ``dZ_L`` by ``1/m`` before summing instead of after, so each of its
    outputs is compared with the standard forward error bound of sums and dot
    products instead, against the magnitude of the terms summed::

        ‖fast − ref‖₂ ≤ tol · ‖scale‖₂,   scale of dW_l = |A_{l-1}|ᵀ D_l / m,
        db_l: Σ_i D_l[i] / m,   J: (1/m) Σ_i Σ |terms of L_i|,   A_L: |A_L|

    with ``D_L = |dZ_L|`` and ``D_{l-1} = (D_l |W_l|ᵀ) ∘ |g'(Z_{l-1})|`` (tests/
    conftest.py, ``summed_magnitudes``). Relative to the result itself the
    two orders may differ by far more: a bias gradient 69 times smaller than
    the sum of its terms' magnitudes differed by 1.4e-6 in float32, which is
    about one unit of roundoff of the terms' magnitude. ``D_{l-1}`` is
    propagated rather than taken as ``|dZ_{l-1}|`` because a roundoff in
    ``dZ_l`` reaches ``dZ_{l-1}`` through ``dZ_l W_lᵀ``, which can cancel too
    (with ``|dZ_{l-1}|`` as the scale, errors of 70 u were seen in float64).

    Against that scale each path is within ``γ_k = k·u/(1 − k·u)`` of the exact
    value, ``k`` the roundings along the longest chain (the batch sum, one dot
    product of ``n_l`` terms and a few elementwise operations per layer), so
    the two differ by at most ``2γ_k``; independent roundings grow like ``√k``,
    not ``k``, and the worst case (~200 u for the nets the tests draw: up to
    4 weight layers of 1–16 units, batches of 1–33) is never approached. The
    bound is the same multiple of the unit roundoff ``u`` in both dtypes,
    about 4 u per layer for up to 4 layers: 1e-6 in float32 (16.8 u, u = 2⁻²⁴)
    and 2e-15 in float64 (18 u, u = 2⁻⁵³; the former 1e-13 was 900 u and let
    a ×(1 + 100 ε) error in every ``db`` through). Over 46,000 random nets per
    dtype the largest error seen was 6.4 u in float64 and 5.9 u in float32
    (about 3.5 u with one weight layer, growing with depth).
``many``
    ``fit_many`` against ``fit`` alone, the weights and History after whole
    trainings (tests/test_many.py). On NumPy every operation on a model's
    slice of the stack is the one ``fit`` performs for it (batched ``matmul``
    calls the same BLAS routine per slice), and the results agree bit for
    bit; the bound is for backends whose batched products may sum in another
    order than their single ones (cuBLAS strided-batched GEMM), where roundoff
    then grows through the epochs: 1e-12 in float64, and in float32 the fast
    step's bound.
``sklearn``
    xprop's estimators against scikit-learn's on the same data, seed and
    parameters: the largest difference of any weight after the fit,
    relative to the largest weight of that layer. Both draw the same initial
    weights and permutations and apply the same update rules, so the only
    difference is the summation order inside the backward pass (xprop adds
    ``(α/m)·W`` to ``Aᵀ·dZ/m``; scikit-learn divides ``Aᵀ·dZ + α·W`` by
    ``m``): a few units of roundoff per step, which SGD and Adam do not
    amplify (observed ≤ 3.3e-16 in float64 after 30 epochs of digits, every
    solver option) and L-BFGS's line search does a little (≤ 3.4e-13 after
    30 iterations; the tests run 10). 1e-12 in float64. In float32 xprop's
    Adam step is computed in float32 and scikit-learn's in float64 (its rate
    is a NumPy float64): 1e-4 after the few epochs the tests run.
``targets``
    How far a row of softmax targets may be from summing to 1 (absolute) and
    still count as a distribution: the fused ``A − Y`` output delta needs the
    sum. One-hot rows and labels smoothed in float32 sum to 1 within a few
    units of roundoff; 1e-3 / 1e-6 leave room for targets written to text
    files with a few digits, and refuse anything that is not a distribution.
"""

TOLERANCES = {
    "gradcheck": {"float64": 1e-6, "float32": 1e-5},
    "backends": {"float64": 1e-12, "float32": 1e-5},
    "targets": {"float64": 1e-6, "float32": 1e-3},
    "fast": {"float64": 2e-15, "float32": 1e-6},
    "many": {"float64": 1e-12, "float32": 1e-6},
    "sklearn": {"float64": 1e-12, "float32": 1e-4},
}


def tolerance(check: str, dtype) -> float:
    """The bound for ``check`` ("gradcheck", "backends", "targets", "fast", "many", "sklearn") at ``dtype``."""
    name = str(getattr(dtype, "name", dtype)).rsplit(".", 1)[-1]
    return TOLERANCES[check][name]
