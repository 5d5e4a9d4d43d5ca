"""The checkpoint file: the one place its format is known.

A checkpoint is an ``.npz`` written atomically by :func:`xprop.io.write_npz_atomic`:

=====================  ==========================================================
arrays                 ``param.<name>`` the weights (net layout), ``opt.<name>.<buffer>``
                       the optimizer state, and per stateful callback
                       ``<prefix>.<name>`` (early stopping: ``best.<name>``, its
                       best weights)
``__meta__`` (JSON)    ``format_version``, ``kind: "checkpoint"``, ``xprop_version``,
                       ``architecture``, ``epoch`` (last completed), ``rng_state``
                       (the shuffling RNG), ``optimizer`` (name, hyperparameters,
                       step count ``t``), ``history``, per stateful callback its
                       entry (``early_stopping``: best loss, best epoch, bad epochs),
                       ``config`` (batch size, epochs, shuffle, seed, ranks)
=====================  ==========================================================

A stateful callback takes part with ``checkpoint_key`` (its metadata entry),
``array_prefix`` (its arrays' prefix), ``state_dict() -> (meta, arrays)`` and
``load_state_dict(meta, arrays)``. :func:`xprop.load` reads the weights of a
checkpoint as a model file (``param.*``).
"""

from __future__ import annotations

from ..io import FORMAT_VERSION, architecture, check_architecture, params_from_arrays, read_npz, write_npz_atomic
from ..version import __version__
from .history import History

__all__ = ["write_checkpoint", "read_checkpoint", "read_checkpoint_config"]


def write_checkpoint(path, net, optimizer, epoch: int, rng, history, config: dict, stateful=()) -> None:
    """Write the state of a run after ``epoch`` to ``path`` (atomically).

    Parameters
    ----------
    net : MLP
    optimizer : Optimizer
    epoch : int
        The last completed epoch.
    rng : numpy.random.Generator
        The shuffling RNG (its state now).
    history : History
    config : dict
        JSON-able settings of the run, stored for the reader.
    stateful : sequence of callbacks
        Each one's ``state_dict()`` is stored under its key and prefix.
    """
    arrays = {f"param.{k}": v for k, v in net.params.items()}
    state = optimizer.state_dict()
    arrays.update({f"opt.{k}": v for k, v in state["arrays"].items()})
    meta = {
        "format_version": FORMAT_VERSION, "kind": "checkpoint", "xprop_version": __version__,
        "architecture": architecture(net), "epoch": epoch, "rng_state": rng.bit_generator.state,
        "optimizer": {"name": optimizer.name, "hyperparameters": optimizer.hyperparameters(), "t": state["t"]},
        "history": history.to_dict(),
    }
    for cb in stateful:
        entry, cb_arrays = cb.state_dict()
        meta[cb.checkpoint_key] = entry
        arrays.update({f"{cb.array_prefix}.{k}": v for k, v in cb_arrays.items()})
    meta["config"] = config
    write_npz_atomic(path, arrays, meta)


def read_checkpoint(path, net, optimizer, rng, stateful=()) -> tuple[int, History]:
    """Restore a run from ``path`` into ``net``, ``optimizer``, ``rng`` and ``stateful``.

    Returns
    -------
    epoch : int
        The last completed epoch.
    history : History

    Raises
    ------
    ModelFileError, ValueError
        Not a checkpoint, another architecture, another optimizer.
    """
    arrays, meta = read_npz(path, "checkpoint")
    if meta.get("kind") != "checkpoint":
        raise ValueError(f"checkpoint {str(path)!r} is a {meta.get('kind')} file, not a checkpoint")
    check_architecture(net, meta["architecture"], path, "checkpoint")
    saved_opt = meta["optimizer"]["name"]
    if saved_opt != optimizer.name:
        raise ValueError(f"checkpoint {str(path)!r} was written with optimizer {saved_opt!r}; "
                         f"resume needs the same optimizer, got {optimizer.name!r}")
    params = params_from_arrays(net, _with_prefix(arrays, "param"), path, "checkpoint")
    net.set_params(params)
    optimizer.load_state_dict({"t": meta["optimizer"]["t"], "arrays": _with_prefix(arrays, "opt")},
                              net.params)
    rng.bit_generator.state = meta["rng_state"]
    for cb in stateful:
        cb.load_state_dict(dict(meta.get(cb.checkpoint_key, {})), _with_prefix(arrays, cb.array_prefix))
    return int(meta["epoch"]), History.from_dict(meta["history"])


def _with_prefix(arrays: dict, prefix: str) -> dict:
    """The arrays named ``<prefix>.<name>``, keyed by ``name``."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in arrays.items() if k.startswith(prefix + ".")}


def read_checkpoint_config(path) -> tuple[int, dict]:
    """``(epoch, config)`` of a checkpoint, without restoring anything (the CLI's resume check)."""
    _, meta = read_npz(path, "checkpoint")
    config = meta.get("config")
    return int(meta.get("epoch", 0)), (config if isinstance(config, dict) else {})
