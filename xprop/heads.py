"""What the output layer's kind means outside the math: targets, predictions, accuracy.

A net's ``output`` activation decides more than ``g_L``: what its targets look
like, what a prediction is, and whether "correct" means anything. That
knowledge lives here, one :class:`Head` per kind, instead of an
``if net.output == "softmax"`` wherever it is needed:

============  =======================  ======================  ==========================
head          targets                  prediction              correct (per example)
============  =======================  ======================  ==========================
``classes``   one-hot rows or labels   ``argmax_j A_ij``       1 when the argmaxes agree
``binary``    0/1 per output           ``A_ij > 0.5``          ``n_L`` decisions
``values``    any real values          ``A`` itself            — (no accuracy)
============  =======================  ======================  ==========================

Only ``xp`` operations on arrays in the row layout (``A, Y : (m, n_L)``).
"""

from __future__ import annotations

__all__ = ["Head", "HEADS", "get_head"]


class Head:
    """The output kind ``values``: regression, no accuracy.

    Attributes
    ----------
    name : str
    takes_labels : bool
        Targets may be given as 1-D class labels ``(m,)``.
    rows_are_distributions : bool
        Target rows must be one-hot (or probability) rows summing to 1.
    counts : bool
        ``correct`` counts something (accuracy is defined).
    """

    name = "values"
    takes_labels = False
    rows_are_distributions = False
    counts = False

    def outputs_per_example(self, n_out: int) -> int:
        """Decisions per example that ``correct`` counts (the accuracy's denominator per row)."""
        return 1

    def correct(self, xp, A, Y):
        """Number of correct decisions in a batch: a 0-d device int64, or None.

        Parameters
        ----------
        A : (m, n_L)
            The net's output.
        Y : (m, n_L)
            The target rows.
        """
        return None

    def predict(self, xp, A):
        """The prediction from ``A : (m, n_L)``: here ``A`` itself."""
        return A

    def example_targets(self, rng, m: int, n_out: int):
        """Targets for ``m`` examples drawn with the host RNG ``rng`` (checks, explanations)."""
        return rng.standard_normal((m, n_out))


class ClassHead(Head):
    """Softmax: one class per example; targets are one-hot rows or labels."""

    name = "classes"
    takes_labels = True
    rows_are_distributions = True
    counts = True

    def correct(self, xp, A, Y):
        hits = xp.argmax(A, axis=1) == xp.argmax(Y, axis=1)
        return xp.sum(xp.astype(hits, xp.int64))

    def predict(self, xp, A):
        """Class indices ``(m,)``."""
        return xp.argmax(A, axis=1)

    def example_targets(self, rng, m, n_out):
        """Labels ``(m,)``."""
        return rng.integers(0, n_out, size=m)


class BinaryHead(Head):
    """Sigmoid: ``n_L`` independent yes/no decisions per example, at 0.5."""

    name = "binary"
    counts = True

    def outputs_per_example(self, n_out):
        return n_out

    def correct(self, xp, A, Y):
        hits = (A > 0.5) == (Y > 0.5)
        return xp.sum(xp.astype(hits, xp.int64))

    def predict(self, xp, A):
        """0/1 ``(m, n_L)`` int64."""
        return xp.astype(A > 0.5, xp.int64)

    def example_targets(self, rng, m, n_out):
        return rng.integers(0, 2, size=(m, n_out)).astype("float64")


HEADS = {"softmax": ClassHead(), "sigmoid": BinaryHead()}
_VALUES = Head()


def get_head(output: str) -> Head:
    """The :class:`Head` of an output activation (``values`` for every other one)."""
    return HEADS.get(output, _VALUES)
