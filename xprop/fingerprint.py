"""What makes a run the run it is: a fingerprint of its data and the differences of two runs.

A checkpoint records the fingerprint of the data it was trained on and the
settings of its run; a resume compares both with its own and refuses, naming
each difference, anything that would make it another run (docs/errors.md,
rule 3).
"""

from __future__ import annotations

import hashlib

import numpy

from .backend import to_numpy

__all__ = ["fingerprint", "combine", "differences"]

# Arrays up to this size are hashed whole; larger ones by a strided sample of rows.
WHOLE_BYTES = 16 * 2**20
SAMPLE_ROWS = 4096


def fingerprint(xp, a) -> dict:
    """Shape, dtype and a SHA-256 of ``a`` (a NumPy or CuPy array): cheap for any size.

    Up to 16 MiB the hash covers every byte; beyond, it covers 4,096 evenly
    spaced rows, the last row included, so another data set of the same
    shape is still told apart (two that differ only in rows between the
    samples are not).

    Returns
    -------
    dict
        ``{"shape": [...], "dtype": "float32", "sha256": "...", "sampled": bool}``
        (JSON-serialisable).
    """
    shape = [int(n) for n in a.shape]
    nbytes = getattr(a, "nbytes", 0)   # NumPy, CuPy (other namespaces: hashed whole)
    sampled = int(nbytes) > WHOLE_BYTES and len(shape) > 0 and shape[0] > SAMPLE_ROWS
    if sampled:
        idx = numpy.unique(numpy.linspace(0, shape[0] - 1, num=SAMPLE_ROWS).astype(numpy.int64))
        host = to_numpy(xp.take(a, xp.asarray(idx), axis=0))
    else:
        host = to_numpy(a)
    h = hashlib.sha256(str((host.dtype.str, shape)).encode())
    h.update(numpy.ascontiguousarray(host).tobytes())
    return {"shape": shape, "dtype": str(a.dtype), "sha256": h.hexdigest(), "sampled": bool(sampled)}


def combine(fingerprints: list) -> dict:
    """One fingerprint of row blocks given in order (the shards of a data set, one per rank)."""
    h = hashlib.sha256("".join(fp["sha256"] for fp in fingerprints).encode())
    first = fingerprints[0]
    shape = [sum(fp["shape"][0] for fp in fingerprints), *first["shape"][1:]]
    return {"shape": shape, "dtype": first["dtype"], "sha256": h.hexdigest(),
            "sampled": any(fp["sampled"] for fp in fingerprints)}


def _describe_data(saved: dict, now: dict) -> str:
    if saved.get("shape") != now.get("shape"):
        return f"shape {tuple(saved.get('shape', ()))} in the checkpoint, {tuple(now['shape'])} now"
    if saved.get("dtype") != now.get("dtype"):
        return f"dtype {saved.get('dtype')} in the checkpoint, {now['dtype']} now"
    return (f"same shape {tuple(now['shape'])} but other values (fingerprint "
            f"{str(saved.get('sha256'))[:12]} in the checkpoint, {now['sha256'][:12]} now)")


def differences(saved: dict, now: dict, names: dict | None = None) -> list[str]:
    """What differs between a checkpoint's run settings ``saved`` and this run's ``now``.

    Parameters
    ----------
    saved, now : dict
        Settings by key; a value that is a fingerprint (a dict with
        ``"sha256"``) is compared as data. Keys missing from ``saved`` (a
        checkpoint older than the setting) are not compared.
    names : dict, optional
        How to call each key in the message (``{"lr": "--lr"}``).

    Returns
    -------
    list of str
        ``"--lr: 0.001 in the checkpoint, 0.1 now"``, one per difference.
    """
    names = names or {}
    out = []
    for key, value in now.items():
        if key not in saved:
            continue
        old = saved[key]
        label = names.get(key, key)
        if isinstance(value, dict) and "sha256" in value:
            if not isinstance(old, dict) or old.get("sha256") != value["sha256"] \
                    or old.get("shape") != value["shape"]:
                out.append(f"{label}: {_describe_data(old if isinstance(old, dict) else {}, value)}")
        elif _normal(old) != _normal(value):
            out.append(f"{label}: {_text(old)} in the checkpoint, {_text(value)} now")
    return out


def _normal(v):
    """JSON round trip equivalence: tuples and lists alike."""
    if isinstance(v, (list, tuple)):
        return [_normal(x) for x in v]
    if isinstance(v, dict):
        return {k: _normal(x) for k, x in v.items()}
    return v


def _text(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if v is None:
        return "none"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_text(x) for x in v) + "]"
    return str(v)
