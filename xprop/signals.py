"""SIGTERM handled like Ctrl-C, and signals held back while a file is committed.

``docker stop``, Kubernetes and Slurm end a job with SIGTERM, a terminal with
SIGINT (Ctrl-C). Inside :func:`terminate_as_interrupt` both stop training the
same way: a :class:`Terminated` (a ``KeyboardInterrupt``) is raised in the
main thread, training drops the step in progress, the checkpoint of the last
completed epoch stays, and ``xprop train`` prints how to resume and exits
128 + the signal number (130 for SIGINT, 143 for SIGTERM).

:func:`deferred` holds both signals back for the few lines that write a
temporary file and rename it over the target: a signal that arrives there
(a second Ctrl-C during the first one's cleanup, say) is delivered right after
the rename, so a write is always either complete or never started, and no
temporary file is left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

__all__ = ["Terminated", "deferred", "terminate_as_interrupt", "exit_status", "ignore_further",
           "handlers_kept"]

# The signals that ask a run to stop (SIGTERM does not exist on Windows' signal module
# under the same semantics, but the constant is there).
STOP_SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None))
                     if s is not None)


class Terminated(KeyboardInterrupt):
    """A stop signal other than SIGINT (SIGTERM) arrived; handled like Ctrl-C.

    Attributes
    ----------
    signum : int
        The signal number (``signal.SIGTERM``).
    """

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(f"terminated by {signal.Signals(self.signum).name}")


def exit_status(exc: KeyboardInterrupt) -> int:
    """The shell's status for a run stopped by ``exc``: 128 + the signal number."""
    return 128 + getattr(exc, "signum", int(signal.SIGINT))


def signal_name(exc: KeyboardInterrupt) -> str:
    """``"SIGTERM"`` for a :class:`Terminated`, else ``"SIGINT"``."""
    return signal.Signals(getattr(exc, "signum", int(signal.SIGINT))).name


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_terminated(signum, frame):
    raise Terminated(signum)


@contextlib.contextmanager
def terminate_as_interrupt():
    """SIGTERM raises :class:`Terminated` (a ``KeyboardInterrupt``) inside this block.

    Outside the main thread (where Python cannot install handlers) it does
    nothing. The previous handler is restored on exit.
    """
    if not _in_main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:   # unless the process is on its way out (ignore_further): then it stays ignored
        if signal.getsignal(signal.SIGTERM) is _raise_terminated:
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def deferred(signums=STOP_SIGNALS):
    """Hold back ``signums`` (SIGINT, SIGTERM) until the block ends, then deliver them.

    A signal that arrives inside the block is recorded instead of acted on;
    on exit the previous handlers are restored and each recorded signal is
    delivered once, in order of arrival: a Python handler is called (raising
    ``KeyboardInterrupt`` or :class:`Terminated` after the block), the default
    action is taken by sending the signal again, an ignored one is dropped.
    Python runs signal handlers in the main thread only, so this works
    whatever other threads (BLAS, tqdm) exist; called from another thread it
    holds nothing back.
    """
    if not _in_main_thread():
        yield
        return
    pending: list[int] = []

    def record(signum, frame):
        if signum not in pending:
            pending.append(signum)

    previous = {}
    try:
        for s in signums:
            previous[s] = signal.signal(s, record)
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in pending:
            _deliver(s, previous[s])


def _deliver(signum: int, handler) -> None:
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        os.kill(os.getpid(), signum)       # the default action: usually the end of the process
    # SIG_IGN (or None: a handler not installed from Python): dropped


def ignore_further() -> None:
    """Ignore SIGINT and SIGTERM from now on: the process is stopping after a first one.

    Called when a stop signal has been handled and the process is on its way
    out (saying what is saved, exiting with 128 + the signal): a second Ctrl-C
    there would only cut that short, with Python's traceback or a death by
    signal instead of the one line and the status.
    """
    if _in_main_thread():
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_IGN)


@contextlib.contextmanager
def handlers_kept():
    """Put SIGINT's and SIGTERM's handlers back as they were when the block ends.

    Around a command run in-process (``xprop.cli.main`` from Python or a
    test): :func:`ignore_further` inside it does not outlive the command.
    """
    if not _in_main_thread():
        yield
        return
    saved = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in saved.items():
            if handler is not None:
                signal.signal(s, handler)
