"""What a training run reports: the per-epoch :class:`History` and :class:`TrainingDiverged`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..io import write_text_atomic

__all__ = ["History", "TrainingDiverged", "RECORD_KEYS"]

# The per-epoch columns of a History, in the order of a record.
RECORD_KEYS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds", "samples_per_s",
               "memory_used_bytes", "memory_total_bytes")


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or inf during training."""

    def __init__(self, epoch: int, step: int, last_finite: float | None):
        last = "none" if last_finite is None else f"{last_finite:.6g}"
        super().__init__(
            f"training diverged: the loss became NaN/inf at epoch {epoch}, step {step} "
            f"(last finite loss {last}); lower the learning rate. "
            "The checkpoint of the last completed epoch, if any, is intact."
        )
        self.epoch, self.step, self.last_finite = epoch, step, last_finite


@dataclass
class History:
    """Per-epoch record of a training run.

    Every list has one entry per completed epoch. ``accuracy`` and
    ``val_accuracy`` are None for regression nets; ``val_*`` are None
    without validation data. ``memory_used_bytes`` / ``memory_total_bytes``
    are the CuPy memory pool's used and held bytes after each epoch (None on
    NumPy); the pool keeps freed blocks for reuse, so "total" is what
    ``nvidia-smi`` shows for the process, more than the live arrays need.
    ``diverged`` is None, or (``fit_many``, whose nets diverge one by one)
    ``{"epoch", "step", "last_finite"}`` where this net's loss became NaN/inf;
    its weights are then those of its last finite epoch.
    """

    epoch: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    accuracy: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    val_accuracy: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    samples_per_s: list = field(default_factory=list)
    memory_used_bytes: list = field(default_factory=list)
    memory_total_bytes: list = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False
    diverged: dict | None = None

    def __len__(self) -> int:
        return len(self.epoch)

    def append(self, **record) -> None:
        for key, value in record.items():
            getattr(self, key).append(value)

    def last(self) -> dict:
        """The latest epoch's record as a dict."""
        return self.record(-1) if self.epoch else {}

    def record(self, i: int) -> dict:
        """Epoch ``i``'s record (a position in the lists) as a dict."""
        return {k: getattr(self, k)[i] for k in RECORD_KEYS}

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, path=None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            write_text_atomic(Path(path), text + "\n")
        return text

    @classmethod
    def from_records(cls, records, best_epoch=None, stopped_early=False) -> "History":
        """A History from per-epoch records (dicts, e.g. the lines of a checkpoint's history log)."""
        h = cls(best_epoch=best_epoch, stopped_early=bool(stopped_early))
        for r in records:
            h.append(**{k: r.get(k) for k in RECORD_KEYS})
        return h

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        h = cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})
        for name in ("memory_used_bytes", "memory_total_bytes"):  # absent in older files
            column = getattr(h, name)
            column.extend([None] * (len(h.epoch) - len(column)))
        return h
