"""The checkpoint file: the one place its format is known.

A checkpoint is an ``.npz`` written atomically by :func:`xprop.io.write_npz_atomic`,
and beside it the run's history, one JSON line per epoch
(``<name>.history.jsonl`` for ``<name>.npz``, :class:`xprop.io.JsonLines`):

=====================  ==========================================================
arrays                 ``param.<name>`` the weights (net layout), ``opt.<name>.<buffer>``
                       the optimizer state, and per stateful callback
                       ``<prefix>.<name>`` (early stopping: ``best.<name>``, its
                       best weights)
``__meta__`` (JSON)    ``format_version``, ``kind: "checkpoint"``, ``xprop_version``,
                       ``architecture``, ``epoch`` (last completed), ``rng_state``
                       (the shuffling RNG), ``optimizer`` (name, hyperparameters,
                       step count ``t``), ``history_log`` (the history file's name,
                       its run id, the number of its records that belong to this
                       checkpoint, and the history's ``best_epoch`` and
                       ``stopped_early``), per stateful callback its entry
                       (``early_stopping``: best loss, best epoch, bad epochs),
                       ``config`` (batch size, epochs, shuffle, seed, ranks,
                       validation, patience, and the fingerprints of ``X`` and
                       ``Y``: what a resume must match), ``metadata`` (the
                       caller's, e.g. the command line's scaler and flags)
=====================  ==========================================================

Per epoch the cost is constant: one appended history line and a checkpoint
whose size does not grow with the epochs (docs/errors.md, rule 7). The line
goes first; a kill between the two leaves a line more than the checkpoint
counts, which a resume cuts off. A checkpoint from before the history log
(``history`` inside the metadata) still loads and resumes; its history moves
into a new log on the first write.

A stateful callback takes part with ``checkpoint_key`` (its metadata entry),
``array_prefix`` (its arrays' prefix), ``state_dict() -> (meta, arrays)`` and
``load_state_dict(meta, arrays)``. :func:`xprop.load` reads the weights of a
checkpoint as a model file (``param.*``).
"""

from __future__ import annotations

import uuid
from pathlib import Path

from ..fingerprint import differences
from ..io import (FORMAT_VERSION, JsonLines, ModelFileError, architecture, check_architecture,
                  params_from_arrays, read_npz, write_npz_atomic)
from ..version import __version__
from .history import History

__all__ = ["write_checkpoint", "read_checkpoint", "read_checkpoint_config", "history_path",
           "HistoryLog", "check_same_run"]


def history_path(path) -> Path:
    """The history log beside checkpoint ``path``: ``run/checkpoint.npz`` → ``run/checkpoint.history.jsonl``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.history.jsonl")


class HistoryLog:
    """The run's record on disk: its history, one JSON line per epoch, appended (O(1) per
    epoch), and the caller's ``metadata`` that every checkpoint of the run carries.

    Made lazily at the first epoch of a new run (so an interrupted first epoch
    leaves nothing), or reopened and cut back to the checkpoint's records on
    a resume.
    """

    def __init__(self, checkpoint, metadata=None):
        self.metadata = metadata   # the caller's description of the run, stored in every checkpoint
        self.path = history_path(checkpoint)
        self.run_id = uuid.uuid4().hex
        self.log = None
        self.pending = []      # records of a resumed old-format checkpoint, not yet on disk

    def resume(self, entry: dict | None, history: History) -> None:
        """Reopen the log named by a checkpoint's ``history_log`` entry (None: an old checkpoint)."""
        if entry is None:                       # the history was inside the checkpoint
            self.pending = [history.record(i) for i in range(len(history))]
            return
        self.run_id = entry.get("run", self.run_id)
        self.log, header, _ = JsonLines.resume(self.path, int(entry["records"]))
        if header.get("run") != self.run_id:
            self.log.close()
            raise ModelFileError(f"history file {str(self.path)!r} belongs to another run than the "
                                 "checkpoint beside it")

    def append(self, record: dict) -> None:
        if self.log is None:
            self.log = JsonLines.create(self.path, {"xprop_history": 1, "run": self.run_id}, self.pending)
            self.pending = []
        self.log.append(record)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None


def write_checkpoint(path, state, config: dict, stateful=(), log: HistoryLog | None = None) -> None:
    """Write the state of a run after its epoch ``state.epoch`` to ``path`` (atomically).

    Parameters
    ----------
    state : TrainState
        ``net``, ``optimizer``, ``epoch`` (the last completed), ``rng`` (the
        shuffling RNG, its state now) and ``history``, whose last record goes
        to ``log`` (appended) before the checkpoint is written.
    config : dict
        JSON-able settings of the run, stored for the reader (and a resume's check).
    stateful : sequence of callbacks
        Each one's ``state_dict()`` is stored under its key and prefix.
    log : HistoryLog
        The run's history file (None: a new one beside ``path``) and its
        ``metadata``, the caller's JSON-able description of the run, which
        :func:`xprop.load` returns as ``net.metadata``.
    """
    net, optimizer, epoch, rng, history = state.net, state.optimizer, state.epoch, state.rng, state.history
    if log is None:                 # a one-off write: the whole history into a new log
        log = HistoryLog(path)
        log.pending = [history.record(i) for i in range(len(history) - 1)]
    if len(history):
        log.append(history.last())
    arrays = {f"param.{k}": v for k, v in net.params.items()}
    state = optimizer.state_dict()
    arrays.update({f"opt.{k}": v for k, v in state["arrays"].items()})
    meta = {
        "format_version": FORMAT_VERSION, "kind": "checkpoint", "xprop_version": __version__,
        "architecture": architecture(net), "epoch": epoch, "rng_state": rng.bit_generator.state,
        "optimizer": {"name": optimizer.name, "hyperparameters": optimizer.hyperparameters(), "t": state["t"]},
        "history_log": {"file": log.path.name, "run": log.run_id, "records": len(history),
                        "best_epoch": history.best_epoch, "stopped_early": history.stopped_early},
    }
    for cb in stateful:
        entry, cb_arrays = cb.state_dict()
        meta[cb.checkpoint_key] = entry
        arrays.update({f"{cb.array_prefix}.{k}": v for k, v in cb_arrays.items()})
    meta["config"] = config
    if log.metadata is not None:
        meta["metadata"] = log.metadata
    write_npz_atomic(path, arrays, meta)


# How the checked settings are called in a refusal (fit's argument names).
_NAMES = {"X": "X", "Y": "Y", "batch_size": "batch_size", "shuffle": "shuffle", "seed": "seed",
          "validation": "validation", "patience": "patience"}


def check_same_run(path, meta: dict, optimizer, config: dict) -> None:
    """Refuse to resume the checkpoint ``meta`` (read from ``path``) as another run.

    Compares the optimizer's hyperparameters and every entry of ``config``
    that the checkpoint also recorded (older checkpoints recorded fewer:
    those are not compared); ``epochs`` may differ.

    Raises
    ------
    ValueError
        ``checkpoint '…' is from another run (X: same shape (40, 4) but other
        values …; optimizer lr: 0.01 in the checkpoint, 0.001 now); resume
        with the same data and settings (only epochs may change)``.
    """
    saved_opt = meta.get("optimizer", {})
    diffs = differences({f"optimizer {k}": v for k, v in saved_opt.get("hyperparameters", {}).items()},
                        {f"optimizer {k}": v for k, v in optimizer.hyperparameters().items()})
    saved = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    now = {k: v for k, v in config.items() if k not in ("epochs", "ranks")}
    diffs += differences(saved, now, _NAMES)
    if diffs:
        raise ValueError(f"checkpoint {str(path)!r} is from another run ({'; '.join(diffs)}); resume "
                         "with the same data and settings (only epochs may change)")


def read_checkpoint(path, net, optimizer, rng, stateful=(), config=None, log=None) -> tuple[int, History]:
    """Restore a run from ``path`` into ``net``, ``optimizer``, ``rng`` and ``stateful``.

    Parameters
    ----------
    config : dict, optional
        This run's settings (see :func:`check_same_run`), refused if they
        differ from the checkpoint's before anything is restored.
    log : HistoryLog, optional
        Reopened on the checkpoint's history file (cut back to its records).

    Returns
    -------
    epoch : int
        The last completed epoch.
    history : History

    Raises
    ------
    ModelFileError, ValueError
        Not a checkpoint, another architecture, another optimizer, another
        run (data, settings), a history file that is missing or short.
    """
    arrays, meta = read_npz(path, "checkpoint")
    if meta.get("kind") != "checkpoint":
        raise ValueError(f"checkpoint {str(path)!r} is a {meta.get('kind')} file, not a checkpoint")
    check_architecture(net, meta["architecture"], path, "checkpoint")
    saved_opt = meta["optimizer"]["name"]
    if saved_opt != optimizer.name:
        raise ValueError(f"checkpoint {str(path)!r} was written with optimizer {saved_opt!r}; "
                         f"resume needs the same optimizer, got {optimizer.name!r}")
    if config is not None:
        check_same_run(path, meta, optimizer, config)
    epoch = int(meta["epoch"])
    entry = meta.get("history_log")
    if isinstance(entry, dict):
        _, records, _ = JsonLines.read(history_path(path), int(entry["records"]))
        history = History.from_records(records, entry.get("best_epoch"), entry.get("stopped_early", False))
    else:                                       # written before the history log: inside
        history = History.from_dict(meta["history"])
        entry = None
    params = params_from_arrays(net, _with_prefix(arrays, "param"), path, "checkpoint")
    net.set_params(params)
    optimizer.load_state_dict({"t": meta["optimizer"]["t"], "arrays": _with_prefix(arrays, "opt")},
                              net.params)
    rng.bit_generator.state = meta["rng_state"]
    for cb in stateful:
        cb.load_state_dict(dict(meta.get(cb.checkpoint_key, {})), _with_prefix(arrays, cb.array_prefix))
    if log is not None:   # last: a refusal above leaves the history file as it was, and closed
        log.resume(entry, history)
    return epoch, history


def _with_prefix(arrays: dict, prefix: str) -> dict:
    """The arrays named ``<prefix>.<name>``, keyed by ``name``."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in arrays.items() if k.startswith(prefix + ".")}


def read_checkpoint_config(path) -> tuple[int, dict]:
    """``(epoch, config)`` of a checkpoint, without restoring anything (the CLI's resume check)."""
    _, meta = read_npz(path, "checkpoint")
    config = meta.get("config")
    return int(meta.get("epoch", 0)), (config if isinstance(config, dict) else {})
