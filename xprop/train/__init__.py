"""Training: the loop and its parts.

============  ==================================================================
module        owns
============  ==================================================================
loop          ``fit`` and ``evaluate``: checking arguments, building the parts,
              running the epochs (:func:`~xprop.train.loop.run`)
strategy      how an epoch's steps run (:class:`LocalStrategy`; the data-parallel
              one is in :mod:`xprop.distributed`), what an epoch returns
callbacks     divergence guard, early stopping, checkpoint, progress bar, user
              callbacks ``cb(record, net)``
history       :class:`History`, :class:`TrainingDiverged`
checkpoint    the checkpoint file format, the only place it is known
data          fit's examples and mini-batches (never a copy of the data set)
many          ``fit_many``: K nets of one architecture trained as one stack
stacked       ``StackedStrategy``: K models' epochs as stacked steps
members       the stack as the loop's net, per-model callbacks (history,
              early stopping, divergence)
============  ==================================================================

See docs/architecture.md for the seams (step, strategy, callbacks) and the rules.
"""

from .callbacks import Callback, Checkpoint, DivergenceGuard, EarlyStopping, ProgressBar, UserCallback
from .history import History, TrainingDiverged
from .loop import Settings, TrainState, evaluate, fit, run
from .strategy import EpochResult, LocalStrategy, Strategy, Sums

__all__ = [
    "Callback",
    "Checkpoint",
    "DivergenceGuard",
    "EarlyStopping",
    "EpochResult",
    "History",
    "LocalStrategy",
    "ProgressBar",
    "Settings",
    "Strategy",
    "Sums",
    "TrainState",
    "TrainingDiverged",
    "UserCallback",
    "evaluate",
    "fit",
    "run",
]
