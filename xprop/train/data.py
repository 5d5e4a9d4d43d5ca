"""fit's examples and mini-batches: never a copy of the data set.

:class:`Examples` are rows of ``X`` and their targets (class labels stay
labels; a validation fraction splits the indices), :class:`Batches` gathers a
batch's rows into reused buffers, :func:`permutation` is an epoch's order.
"""

from __future__ import annotations

import numpy

from ..backend import supports_out, take_rows
from ..validation import check_inputs, check_targets, one_hot

__all__ = ["Examples", "Batches", "permutation", "split_validation", "examples_from"]


def _take(xp, a, idx):
    return xp.take(a, idx, axis=0)


class Examples:
    """fit's training (or validation) examples: rows of ``X`` and their targets, not copied.

    Attributes
    ----------
    X : (N, k)
        The inputs as given (row layout, the net's dtype).
    Y : (N, n_L) or None
        Target rows, or None when ``labels`` are kept instead.
    labels : (N,) int64 or None
        Class labels of a softmax net given labels: one-hot rows are built
        only for the rows in use (a batch, an evaluation chunk), never for the
        whole data set.
    rows : (m,) int or None
        The examples this set is made of (a validation fraction splits the
        indices, not the data), or None for all ``N`` in order.
    m : int
        Number of examples.
    """

    def __init__(self, net, X, Y, labels, rows=None):
        self.net, self.xp = net, net.xp
        self.X, self.Y, self.labels, self.rows = X, Y, labels, rows
        self.m = int(X.shape[0] if rows is None else rows.shape[0])

    def subset(self, rows):
        return Examples(self.net, self.X, self.Y, self.labels, rows)

    def targets(self, idx=None, lo=0, hi=None):
        """Target rows of examples ``idx`` (indices into X), or of rows ``lo:hi`` when idx is None."""
        xp, net = self.xp, self.net
        if self.labels is None:
            return self.Y[lo:hi] if idx is None else _take(xp, self.Y, idx)
        labels = self.labels[lo:hi] if idx is None else _take(xp, self.labels, idx)
        return one_hot(xp, labels, net.sizes[-1], net.dtype)

    def arrays(self):
        """``(X, Y)`` of this set as arrays (copies where it is a subset or holds labels)."""
        if self.rows is None:
            return self.X, self.targets()
        return _take(self.xp, self.X, self.rows), self.targets(self.rows)

    def truth(self):
        """The class of every example of X (softmax accuracy): the labels, or argmax of Y."""
        return self.labels if self.labels is not None else self.xp.argmax(self.Y, axis=1)


def permutation(rng, m: int):
    """``rng.permutation(m)``: the same order from the same draws, shuffled in place, as int32
    where ``m`` allows (4 bytes an example, the only array of fit that grows with the data
    besides the predictions)."""
    order = numpy.arange(m, dtype=numpy.int32 if m < 2**31 else numpy.int64)
    rng.shuffle(order)
    return order


def split_validation(net, data, validation, rng):
    """``(train, val)`` :class:`Examples`; a fraction splits the example indices with ``rng``."""
    xp = net.xp
    if validation is None:
        return data, None
    if isinstance(validation, float) and not isinstance(validation, bool):
        if not 0.0 < validation < 1.0:
            raise ValueError(f"validation as a fraction must be in (0, 1); got {validation!r}")
        m = data.m
        n_val = max(1, int(round(validation * m)))
        if n_val >= m:
            raise ValueError(f"validation={validation} leaves no training examples out of {m}")
        order = xp.asarray(permutation(rng, m))
        val_idx, train_idx = order[:n_val], order[n_val:]
        return data.subset(train_idx), data.subset(val_idx)
    if isinstance(validation, (tuple, list)) and len(validation) == 2:
        Xv = check_inputs(net, validation[0], name="validation X")
        Yv = check_targets(net, validation[1], Xv.shape[0], name="validation Y", keep_labels=True)
        return data, examples_from(net, Xv, Yv)
    raise TypeError(f"validation must be None, a fraction in (0, 1) or a pair (X_val, Y_val); got {type(validation).__name__}")


def examples_from(net, X, T):
    """A :class:`Examples` from checked inputs and ``check_targets(..., keep_labels=True)`` output."""
    if T.ndim == 1:                                      # softmax class labels, kept as labels
        return Examples(net, X, None, T)
    return Examples(net, X, T, None)


class Batches:
    """Mini-batches of ``B`` examples, gathered into reused buffers.

    ``batches(data, order)`` yields ``(i, X_b, Y_b)`` for the examples
    ``order`` of a :class:`Examples` (indices into ``data.X``, e.g. the epoch's
    order), ``B`` at a time, or, with ``order`` None, for ``data.X``'s rows as
    they are: slices, no copy. The rows of a batch are gathered from the
    (unshuffled) data straight into a buffer allocated once per batch size
    (``take`` with ``out=`` on NumPy and CuPy), so an epoch never copies the
    data set and the batch is still in cache when the first matrix product
    reads it; training and validation share the buffers. Class labels become
    the batch's one-hot rows in a buffer too. Other namespaces allocate each
    batch.
    """

    def __init__(self, net, B):
        self.net, self.xp, self.B = net, net.xp, B
        self.fast = supports_out(self.xp)
        self._buffers = {}
        self.eye = self.xp.eye(net.sizes[-1], dtype=net.dtype)   # row j: the one-hot row of class j

    def _buffer(self, n, data):
        """``(X_b, Y_b, labels_b)`` buffers of ``n ≤ B`` rows: the first rows of B-row arrays."""
        key = (n, data.X.shape[1], data.X.dtype)
        if key not in self._buffers:
            xp, net, B = self.xp, self.net, max(self.B, n)
            full = (B, data.X.shape[1], data.X.dtype)
            if full not in self._buffers:
                self._buffers[full] = (xp.empty((B, data.X.shape[1]), dtype=data.X.dtype),
                                       xp.empty((B, net.sizes[-1]), dtype=net.dtype),
                                       xp.empty((B,), dtype=xp.int64))
            self._buffers[key] = tuple(a[:n] for a in self._buffers[full])
        return self._buffers[key]

    def _one_hot(self, labels, Yb):
        # Y_b[i] = the one-hot row of class labels_i: rows of the identity, gathered
        return take_rows(self.xp, self.eye, labels, Yb)

    def __call__(self, data, order):
        xp, B = self.xp, self.B
        m = data.m if order is None else int(order.shape[0])
        for i in range(0, m, B):
            if order is None:
                Xb = data.X[i:i + B]
                if data.labels is None:
                    yield i, Xb, data.Y[i:i + B]
                elif self.fast:
                    yield i, Xb, self._one_hot(data.labels[i:i + B], self._buffer(Xb.shape[0], data)[1])
                else:
                    yield i, Xb, data.targets(lo=i, hi=i + B)
            elif self.fast:
                idx = order[i:i + B]
                Xb, Yb, lab = self._buffer(idx.shape[0], data)
                take_rows(xp, data.X, idx, Xb)
                if data.labels is None:
                    take_rows(xp, data.Y, idx, Yb)
                else:
                    self._one_hot(take_rows(xp, data.labels, idx, lab), Yb)
                yield i, Xb, Yb
            else:
                idx = order[i:i + B]
                yield i, _take(xp, data.X, idx), data.targets(idx)
