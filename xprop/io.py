"""Model files and checkpoints: one ``.npz`` each, written atomically, read safely.

A file holds plain arrays plus one JSON document (``__meta__``, stored as a
unicode string array): no pickle, so loading never executes code. Writes go
to a temporary file in the same directory, are flushed and fsynced, and then
renamed over the target, so a crash mid-write never leaves a broken file in
place: the previous file stays until the new one is complete.

Arrays are always stored as host (NumPy) arrays in the net's layout, so a
file written from the GPU loads on a CPU-only machine with identical weights.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy

from .backend import to_numpy
from .version import __version__

__all__ = ["FORMAT_VERSION", "ModelFileError", "save", "load", "write_npz_atomic", "read_npz"]

FORMAT_VERSION = 1
_META = "__meta__"


class ModelFileError(ValueError):
    """A model or checkpoint file that cannot be used: wrong, truncated, newer."""


def write_npz_atomic(path, arrays: dict, meta: dict) -> Path:
    """Write ``arrays`` and the JSON ``meta`` to ``path`` atomically.

    Parameters
    ----------
    path : str or Path
        Target file. Its directory must exist and be writable.
    arrays : dict of str to array
        Any backend's arrays; they are copied to the host.
    meta : dict
        JSON-serialisable metadata.

    Raises
    ------
    OSError
        The directory is missing or read-only, or the disk is full; the file
        that was at ``path`` before is left untouched. The error keeps its
        errno and type (``PermissionError``, ``FileNotFoundError``, ...) and
        its message names ``path``.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    payload = {name: to_numpy(a) for name, a in arrays.items()}
    payload[_META] = numpy.array(json.dumps(meta))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise _write_error(exc, path) from exc
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as fh:
            numpy.savez(fh, **payload)
            fh.flush()
            os.fsync(fh.fileno())
        _replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise _write_error(exc, path) from exc
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def _write_error(exc: OSError, path: Path) -> OSError:
    """``exc`` restated with the target path (a write error from the OS names no file,
    or only the temporary one); same errno, so the same OSError subclass."""
    reason = exc.strerror or str(exc)
    text = f"cannot write {str(path)!r}: {reason}; the file that was there (if any) is unchanged"
    return OSError(exc.errno, text) if exc.errno is not None else OSError(text)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replace(tmp, path):
    """The commit point of an atomic write (a separate function so tests can crash here)."""
    os.replace(tmp, path)


def read_npz(path, kind: str = "model file") -> tuple[dict, dict]:
    """Read a file written by :func:`write_npz_atomic`.

    Returns
    -------
    arrays : dict of str to numpy.ndarray
    meta : dict

    Raises
    ------
    FileNotFoundError
        No such file.
    ModelFileError
        Not an npz, truncated or corrupted, no metadata, or a newer format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} {str(path)!r} does not exist")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head.startswith(b"PK"):  # else numpy.load takes it for a pickle and suggests allow_pickle
        got = "an empty file" if not head else f"a file starting with {head!r}"
        raise ModelFileError(f"{kind} {str(path)!r} is not a readable xprop .npz file (truncated or "
                             f"corrupted?): expected a zip archive (an .npz starts with b'PK'), got {got}")
    try:
        with open(path, "rb") as fh, numpy.load(fh, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise ModelFileError(
            f"{kind} {str(path)!r} is not a readable xprop .npz file (truncated or corrupted?): {exc}"
        ) from None
    if _META not in arrays:
        raise ModelFileError(f"{kind} {str(path)!r} is an .npz but not an xprop file (no metadata)")
    try:
        meta = json.loads(str(arrays.pop(_META)))
    except (json.JSONDecodeError, TypeError) as exc:
        raise ModelFileError(f"{kind} {str(path)!r} has unreadable metadata: {exc}") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{kind} {str(path)!r} has unreadable metadata: not a JSON object")
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise ModelFileError(f"{kind} {str(path)!r} has no format version")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{kind} {str(path)!r} has format version {version}, newer than this xprop "
            f"understands ({FORMAT_VERSION}); upgrade xprop"
        )
    return arrays, meta


def architecture(net) -> dict:
    """What it takes to rebuild ``net`` (everything but the weights)."""
    return {"layer_sizes": list(net.sizes), "activation": net.activation, "output": net.output,
            "loss": net.loss, "layout": net.layout, "dtype": net.dtype_name,
            "init": net.init, "seed": net.seed}


def check_architecture(net, arch: dict, path, kind: str) -> None:
    """Refuse a file whose architecture differs from ``net``'s."""
    mine = architecture(net)
    diffs = [f"{k}: file has {arch.get(k)!r}, net has {mine[k]!r}"
             for k in ("layer_sizes", "activation", "output", "loss", "layout") if arch.get(k) != mine[k]]
    if diffs:
        raise ModelFileError(f"{kind} {str(path)!r} is from another architecture ({'; '.join(diffs)})")


def params_from_arrays(net, arrays: dict, path, kind: str) -> dict:
    """Host parameter arrays checked against ``net``'s names and shapes."""
    out = {}
    for name, p in net.params.items():
        if name not in arrays:
            raise ModelFileError(f"{kind} {str(path)!r} lacks parameter {name!r}")
        a = arrays[name]
        if tuple(a.shape) != tuple(p.shape):
            raise ModelFileError(
                f"{kind} {str(path)!r}: parameter {name!r} has shape {tuple(a.shape)}, "
                f"expected {tuple(p.shape)}"
            )
        if a.dtype.kind != "f" or not numpy.all(numpy.isfinite(a)):
            raise ModelFileError(f"{kind} {str(path)!r}: parameter {name!r} is not finite floats")
        out[name] = a
    return out


def save(net, path, metadata: dict | None = None) -> Path:
    """Write ``net`` to ``path`` (``.npz``): weights, architecture, optional metadata."""
    meta = {"format_version": FORMAT_VERSION, "kind": "model", "xprop_version": __version__,
            "architecture": architecture(net), "metadata": metadata or {}}
    return write_npz_atomic(path, net.params, meta)


def load(path, backend="auto"):
    """Read a model file written by :meth:`MLP.save` onto ``backend``.

    Returns
    -------
    MLP
        With the saved weights; ``net.metadata`` holds the saved metadata.
    """
    from .network import MLP  # noqa: PLC0415

    arrays, meta = read_npz(path, "model file")
    arch = meta.get("architecture")
    if meta.get("kind") not in ("model", "checkpoint") or not isinstance(arch, dict):
        raise ModelFileError(f"model file {str(path)!r} has no architecture in its metadata")
    try:
        net = MLP(arch["layer_sizes"], activation=arch["activation"], output=arch["output"],
                  loss=arch["loss"], backend=backend, dtype=arch["dtype"], seed=arch.get("seed"),
                  init=arch.get("init"), layout=arch["layout"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"model file {str(path)!r} has an invalid architecture: {exc}") from None
    if meta["kind"] == "checkpoint":  # weights beside optimizer state, as "param.<name>"
        arrays = {k[len("param."):]: v for k, v in arrays.items() if k.startswith("param.")}
    host = params_from_arrays(net, arrays, path, "model file")
    net.set_params(host)
    net.metadata = meta.get("metadata", {})
    return net
