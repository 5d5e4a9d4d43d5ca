"""How a global batch is split over the ranks, and the flat gradient buffer they reduce (pure).

The split of a global batch of B examples over N ranks is NumPy's
``array_split`` rule: the first ``B mod N`` ranks get ``⌈B/N⌉`` examples, the
others ``⌊B/N⌋``. A rank that gets none (B < N, e.g. a last batch of 1)
contributes a zero gradient with weight 0.
"""

from __future__ import annotations

import numpy

from ..flat import flat_views

__all__ = ["shard_sizes", "shard_bounds", "ShardPlan", "GradBuffer"]


def shard_sizes(B: int, N: int) -> list[int]:
    """Examples per rank for a global batch of ``B`` over ``N`` ranks.

    ``numpy.array_split``'s rule: the first ``B mod N`` ranks get one more.

    >>> shard_sizes(33, 2), shard_sizes(1, 2)
    ([17, 16], [1, 0])
    """
    base, extra = divmod(int(B), int(N))
    return [base + (1 if r < extra else 0) for r in range(int(N))]


def shard_bounds(B: int, N: int, rank: int) -> tuple[int, int]:
    """``(lo, hi)``: rank ``rank``'s rows ``lo:hi`` of a global batch of ``B``."""
    base, extra = divmod(int(B), int(N))
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


class ShardPlan:
    """Which rows of each epoch one rank trains on, fixed for a whole run.

    An epoch of ``m`` examples in (shuffled) ``order`` is cut into global
    batches of ``B`` (the last one partial); this rank takes its
    :func:`shard_bounds` of each. Its rows for the whole epoch are gathered
    once per epoch into local arrays, in which step ``s`` is the slice
    ``offsets[s]:offsets[s + 1]``.

    Attributes
    ----------
    steps : int
    batch_sizes : ndarray (steps,) float64
        ``B_s``, the global batch sizes.
    local_sizes : list of int
        ``m_rs``, this rank's rows per step (0 when a batch has fewer rows than ranks).
    weights : list of float
        ``m_rs / B_s``, the factor a rank's mean gradient gets before the sum.
    offsets : list of int
        Step boundaries in the local arrays.
    positions : ndarray (Σ m_rs,) int64
        This rank's positions in the epoch order, step after step.
    """

    def __init__(self, m: int, B: int, size: int, rank: int):
        self.m, self.B, self.size, self.rank = int(m), int(B), int(size), int(rank)
        starts = list(range(0, self.m, self.B))
        self.steps = len(starts)
        self.batch_sizes = numpy.array([min(self.B, self.m - s) for s in starts], dtype=numpy.float64)
        self.local_sizes, self.weights, self.offsets, pieces = [], [], [0], []
        for start, Bs in zip(starts, self.batch_sizes.astype(int)):
            lo, hi = shard_bounds(Bs, self.size, self.rank)
            pieces.append(numpy.arange(start + lo, start + hi, dtype=numpy.int64))
            self.local_sizes.append(hi - lo)
            self.weights.append((hi - lo) / Bs)
            self.offsets.append(self.offsets[-1] + hi - lo)
        self.positions = numpy.concatenate(pieces) if pieces else numpy.zeros(0, numpy.int64)
        self.nonempty = numpy.flatnonzero(numpy.asarray(self.local_sizes) > 0)


class GradBuffer:
    """Every gradient of a net in one contiguous array, plus views of it.

    The buffer holds, parameter after parameter (``W1, b1, W2, ...``), the
    row-layout gradients ``dW_l : (n_{l-1}, n_l)`` and ``db_l : (n_l,)``, each
    C-contiguous. ``rows`` maps ``"dW1", "db1", ...`` to those views;
    ``grads`` maps the same names to views shaped like ``net.params`` (the
    transposes in the column layout), which the optimizer takes. In the row
    layout ``grads`` is a :class:`~xprop.flat.FlatDict` laid out like the
    net's parameter buffer, so the optimizer updates all parameters with
    whole-buffer operations.

    Parameters
    ----------
    net : MLP

    Attributes
    ----------
    flat : array (n_params,)
        On the net's backend, in its dtype; what the allreduce reduces.
    """

    def __init__(self, net):
        xp, sizes = net.xp, net.sizes
        shapes = {}
        for name in net.params:                      # W1, b1, W2, ... as the params are ordered
            l = int(name[1:])
            shapes[f"d{name}"] = (sizes[l - 1], sizes[l]) if name[0] == "W" else (sizes[l],)
        self.rows = flat_views(xp, shapes, net.dtype)
        self.flat = self.rows.flat
        if net.layout == "rows":
            self.grads = self.rows
        else:
            self.grads = {name: (view.T if name.startswith("dW") else xp.reshape(view, (-1, 1)))
                          for name, view in self.rows.items()}
        self.layout = net.layout

    @property
    def nbytes(self) -> int:
        return int(self.flat.size) * int(self.flat.dtype.itemsize)

    def pack(self, grads) -> None:
        """Copy ``grads`` (shaped like the params) into the buffer; free when they are its views."""
        for name, view in self.grads.items():
            g = grads[name]
            if g is not view:
                view[...] = g

    def unpack(self) -> dict:
        """The gradients, shaped like the params: views of the buffer (no copy)."""
        return self.grads

    def adopt(self, step) -> None:
        """Make a :class:`~xprop.fast.TrainStep` write its gradients here, whatever the batch size.

        The step's ``dW_l``, ``db_l`` become this buffer's row-layout views, so
        its matrix products write the gradients in place and the returned
        ``grads`` are :attr:`grads`.
        """
        L = len(self.rows) // 2
        dW, db = [None] * (L + 1), [None] * (L + 1)
        for name, view in self.rows.items():
            kind, l = name[:2], int(name[2:])
            (dW if kind == "dW" else db)[l] = view
        step.adopt_gradients(dW, db, self.grads)
