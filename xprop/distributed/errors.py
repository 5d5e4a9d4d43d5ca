"""The errors of distributed training (raised alike on every rank)."""

from __future__ import annotations

__all__ = ["DistributedError", "DistributedWarning", "INSTALL_HINT"]

INSTALL_HINT = "pip install 'xprop[dist]' (mpi4py and the mpich wheel)"


class DistributedError(RuntimeError):
    """Distributed training cannot go on; raised on every rank alike.

    Errors of this class are decided from information gathered from all
    ranks, so every rank raises the same one at the same point and no rank is
    left waiting in a collective.
    """


class DistributedWarning(RuntimeWarning):
    """Distributed training runs, but on a slower path than it could (e.g. no NCCL)."""
