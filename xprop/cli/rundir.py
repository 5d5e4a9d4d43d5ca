"""What ``xprop train`` may write into its run directory, and when.

Rule 1 of docs/errors.md: a fresh run refuses a directory that holds a run
(``checkpoint.npz``) or any file of the names it writes, unless ``--force``;
the directory is created only once the command is accepted (everything
checked, the data loaded, the net built), and taken back if the run ends
without saving anything. Rule 2: the run holds the directory's lock
(:class:`xprop.runlock.RunLock`) from its creation to the end.
"""

from __future__ import annotations

from pathlib import Path

from ..runlock import RunLock
from ..train.checkpoint import history_path

__all__ = ["RUN_FILES", "check_run_directory", "make_directory", "remove_if_empty", "open_directory"]

# What a run writes into its directory (besides the checkpoint and its history log).
RUN_FILES = ("model.npz", "history.json", "curves.png")


def check_run_directory(args, out: Path, *, probe_lock: bool = True) -> None:
    """Refuse to write over files this run did not make (rule 1) unless --force.

    With ``probe_lock`` a directory that a live run holds (rule 2) is refused first, as in use
    (its files are that run's, still being written); :func:`open_directory`, which holds the
    lock itself, checks again without the probe.
    """
    if probe_lock and out.is_dir():
        RunLock(out).acquire().release()   # RunDirectoryInUse while another run holds it
    ckpt = out / "checkpoint.npz"
    if args.resume and not ckpt.exists():
        raise FileNotFoundError(f"nothing to resume: {str(ckpt)!r} does not exist")
    if args.resume or args.force:
        return
    if ckpt.exists():
        raise ValueError(f"{str(out)!r} already holds a run (checkpoint.npz); pass --resume to "
                         "continue it, --force to start afresh over it, or choose another --out")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {str(out)!r} is a file, not a directory")
    taken = [name for name in (*RUN_FILES, history_path(ckpt).name) if (out / name).exists()]
    if taken:
        raise FileExistsError(f"{str(out)!r} already holds {', '.join(taken)}, which this run would "
                              "write over; pass --force to do so, or choose another --out")


def make_directory(out: Path) -> list[Path]:
    """Create ``out`` (and missing parents); returns the directories made, outermost first."""
    made = []
    for d in reversed([out, *out.parents]):
        if not d.exists():
            made.append(d)
    out.mkdir(parents=True, exist_ok=True)
    return made


def remove_if_empty(made: list[Path]) -> None:
    """Take back the directories this command made, if nothing was written into them."""
    for d in reversed(made):
        try:
            d.rmdir()
        except OSError:
            return


def open_directory(args, out: Path, is_root: bool):
    """Make the run directory and take its lock (rank 0 only); check it again under the lock.

    Returns ``(lock, made)``: the lock to release and the directories made
    (to take back with :func:`remove_if_empty` if the run saves nothing).
    """
    made = make_directory(out) if is_root else []
    lock = RunLock(out)
    if is_root:
        lock.acquire()   # refused: the directory stays (the run holding it may use what we made)
        try:
            check_run_directory(args, out, probe_lock=False)   # another run may have finished meanwhile
        except BaseException:
            remove_if_empty(made)
            lock.release()
            raise
    return lock, made
