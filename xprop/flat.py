"""Parameter and gradient dicts whose arrays are views of one contiguous buffer.

``net.params`` (on NumPy and CuPy) and the training step's gradients are
:class:`FlatDict` objects: ``W1, b1, ..., WL, bL`` are reshaped views of one
1-D array, ``.flat``, in that order. An optimizer can then update every
parameter with a handful of whole-buffer operations instead of a handful per
parameter, and a distributed allreduce can send all gradients in one call.
The views behave exactly like separate arrays; assigning a new array to a key
breaks the sharing, and ``.flat`` becomes None so nobody relies on it.
"""

from __future__ import annotations

import math

__all__ = ["FlatDict", "flat_views"]


class FlatDict(dict):
    """A dict of arrays that are views of ``self.flat`` (or ``flat is None``)."""

    def __init__(self, flat, views):
        super().__init__(views)
        self.flat = flat

    def __setitem__(self, key, value):
        self.flat = None  # the new array is not a view of the buffer
        super().__setitem__(key, value)

    def update(self, *args, **kwargs):
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return self[key]


def flat_views(xp, shapes: dict, dtype, fill=None) -> FlatDict:
    """One zero-filled buffer and a view of it per name, shaped ``shapes[name]``."""
    total = sum(math.prod(shape) for shape in shapes.values())
    flat = xp.zeros((total,), dtype=dtype)
    views, offset = {}, 0
    for name, shape in shapes.items():
        n = math.prod(shape)
        views[name] = xp.reshape(flat[offset:offset + n], shape)
        offset += n
    return FlatDict(flat, views)
