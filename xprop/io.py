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
import zlib
from pathlib import Path

import numpy

from .backend import to_numpy
from .signals import deferred
from .version import __version__

__all__ = ["FORMAT_VERSION", "ModelFileError", "save", "load", "write_npz_atomic", "write_text_atomic",
           "write_atomic", "read_npz", "JsonLines"]

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
    payload = {name: to_numpy(a) for name, a in arrays.items()}
    payload[_META] = numpy.array(json.dumps(meta))
    return write_atomic(path, lambda fh: numpy.savez(fh, **payload))


def write_text_atomic(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`write_atomic`)."""
    data = text.encode("utf-8")
    return write_atomic(path, lambda fh: fh.write(data))


def write_atomic(path, write) -> Path:
    """Call ``write(fh)`` on a temporary file beside ``path``, then rename it over ``path``.

    The temporary file is flushed and fsynced before the rename and the
    directory after it, so a crash at any moment leaves either the old file
    or the new one, complete. SIGINT and SIGTERM are held back from the
    creation of the temporary file to the rename (:func:`xprop.signals.deferred`):
    a Ctrl-C in the middle, or a second one during the first one's cleanup,
    takes effect after the write, never leaving a temporary file. An error
    removes the temporary file; only a hard kill (SIGKILL, power loss) can
    leave a hidden ``.<name>.*.tmp``, which is never read.

    Raises
    ------
    OSError
        As :func:`write_npz_atomic`: the old file is unchanged, the message
        names ``path``.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    with deferred():
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
        except OSError as exc:
            raise _write_error(exc, path) from exc
        try:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
            with os.fdopen(fd, "wb") as fh:
                write(fh)
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
    _fsync_directory(directory)
    return path


def _fsync_directory(directory) -> None:
    """Make a rename or a new file in ``directory`` durable (where the OS allows)."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


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
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as exc:
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


class JsonLines:
    """An append-only file of JSON records, one per line, after a header line.

    What a checkpoint keeps of a run's history (docs/errors.md, rule 7): an
    epoch costs one appended line (written and fsynced, with SIGINT/SIGTERM
    held back) however many came before, instead of a rewrite of the whole
    history. The checkpoint records how many lines belong to it; lines beyond
    that number (an epoch whose checkpoint was never written, or a line cut
    short by a kill) are ignored on reading and cut off by :meth:`resume`.

    Use :meth:`create` for a new file and :meth:`resume` for an existing one.
    """

    def __init__(self, path, fh):
        self.path, self._fh = Path(path), fh

    @classmethod
    def create(cls, path, header: dict, records=()) -> "JsonLines":
        """A new file holding ``header`` and ``records`` (written atomically), open for appending."""
        lines = [json.dumps(header)] + [json.dumps(r) for r in records]
        write_text_atomic(path, "\n".join(lines) + "\n")
        return cls(path, cls._open_append(path))

    @classmethod
    def read(cls, path, n: int, kind: str = "history file") -> tuple[dict, list, int]:
        """``(header, the first n records, byte offset after them)``.

        Raises
        ------
        FileNotFoundError
            No such file.
        ModelFileError
            Fewer than ``n`` complete records, or a line that is not JSON.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{kind} {str(path)!r} does not exist")
        records, header, offset = [], None, 0
        with open(path, "rb") as fh:
            for i, raw in enumerate(fh):
                if len(records) == n and header is not None:
                    break
                if not raw.endswith(b"\n"):
                    break                              # a line cut short: not a record
                try:
                    value = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise ModelFileError(f"{kind} {str(path)!r}, line {i + 1}: not a JSON "
                                         f"record ({exc})") from None
                if header is None:
                    header = value
                else:
                    records.append(value)
                offset += len(raw)
        if header is None or len(records) < n:
            raise ModelFileError(f"{kind} {str(path)!r} holds {len(records)} complete records; "
                                 f"the checkpoint needs {n}")
        return header, records, offset

    @classmethod
    def resume(cls, path, n: int, kind: str = "history file") -> tuple["JsonLines", dict, list]:
        """The file cut back to its header and first ``n`` records, open for appending."""
        header, records, offset = cls.read(path, n, kind)
        with deferred():
            os.truncate(path, offset)
        return cls(path, cls._open_append(path)), header, records

    @staticmethod
    def _open_append(path):
        try:
            return open(path, "ab")
        except OSError as exc:
            raise _write_error(exc, Path(path)) from exc

    def append(self, record: dict) -> None:
        """Append one record and fsync it.

        Raises
        ------
        OSError
            Naming the file (disk full, ...); the records before are intact.
        """
        line = (json.dumps(record) + "\n").encode("utf-8")
        with deferred():
            try:
                self._fh.write(line)
                self._fh.flush()
                os.fsync(self._fh.fileno())
            except OSError as exc:
                raise _write_error(exc, self.path) from exc

    def close(self) -> None:
        self._fh.close()
