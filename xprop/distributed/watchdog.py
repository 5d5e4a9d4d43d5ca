"""A job that cannot hang forever: the rank timeout of distributed training.

Every rank runs one daemon thread. The training loop marks where it waits
for the other ranks (each collective: the gradient allreduce of a step, the
sums at the end of an epoch, ...); the thread looks every ``poll`` seconds
whether its rank has been waiting in one collective for more than
``timeout`` seconds. If so, it asks every other rank, on a communicator of
its own, where that rank is; each rank's thread answers with its position
(waiting or not, in what, the last step it completed). A rank that does not
answer within ``grace`` seconds is silent: stopped (SIGSTOP), or stuck
holding the Python interpreter. A rank that answers but is not waiting
where the others are is stuck outside the collectives (I/O, a long
computation). The lowest waiting rank prints one line naming the silent or
stuck ranks and the last step every rank completed, and ends the whole job
with ``MPI_Abort``; the others defer to it (and abort themselves after
another ``grace`` if it did not).

Nothing is sent while training goes well: each thread keeps one receive
posted for questions and tests it now and then. The collectives themselves
are untouched (the same blocking, in-place allreduce), so the arithmetic
and its cost per step are those of a job without a timeout, plus setting
two attributes around each collective.

Needs ``MPI_THREAD_MULTIPLE`` (mpi4py asks for it by default; MPICH and Open
MPI provide it). Where the library gives less, :class:`Watchdog` cannot run
and :func:`start` says so.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time

import numpy

__all__ = ["Watchdog"]

_QUERY, _REPLY = 7301, 7302
# a position, as sent: [rank, waiting (0/1), label (index, -1: none), steps completed]
_FIELDS = 4


class Watchdog:
    """The rank-timeout thread of one rank (see the module docstring).

    Parameters
    ----------
    comm : mpi4py communicator
        A communicator of its own (a ``Dup`` of the job's): the questions and
        answers never match a message of the training.
    timeout : float
        Seconds a rank may wait in one collective.
    abort : callable
        ``abort(code)`` ends the job (``COMM_WORLD.Abort``).
    MPI : module
        ``mpi4py.MPI``.
    out : file, optional
        Where the line goes (stderr).
    grace, poll : float, optional
        Seconds to wait for answers; seconds between looks.
    """

    def __init__(self, comm, timeout, abort, MPI, out=None, grace=None, poll=None):
        self.comm, self.MPI, self.abort = comm, MPI, abort
        self.rank, self.size = int(comm.Get_rank()), int(comm.Get_size())
        self.timeout = float(timeout)
        self.grace = float(grace if grace is not None else min(max(self.timeout / 4, 1.0), 10.0))
        self.poll = float(poll if poll is not None else min(max(self.timeout / 20, 0.05), 1.0))
        self.out = out
        self.labels: list[str] = []
        # where the main thread is: set by the strategy, read by the thread
        self.steps = 0                               # steps per epoch (0: not known yet)
        self.total = 0                               # gradient allreduces completed, resumed ones included
        self._waiting = None                         # (label index, since)
        self._stop = threading.Event()
        self._thread = None
        self._request = None
        self._question = numpy.zeros(1, numpy.int64)
        self._sends = []                             # (request, buffer): buffers live until sent

    # ---- the training loop's side (main thread)
    def _label(self, label: str) -> int:
        if label not in self.labels:
            self.labels.append(label)
        return self.labels.index(label)

    @contextlib.contextmanager
    def waiting(self, label: str):
        """Mark the block as waiting for the other ranks (a collective)."""
        self._waiting = (self._label(label), time.monotonic())
        try:
            yield
        finally:
            self._waiting = None

    def count_from(self, steps: int, done: int) -> None:
        """Epochs of ``steps`` steps, ``done`` of them completed before (a resume)."""
        self.steps, self.total = int(steps), int(done)

    def step_done(self) -> None:
        """A gradient allreduce completed: the step counts as completed."""
        self.total += 1

    def where(self, total: int) -> str:
        """``"epoch e, step s"`` of the ``total``-th step (1-based), or the count alone."""
        if total <= 0:
            return "none yet"
        if not self.steps:
            return f"step {total}"
        return f"epoch {(total - 1) // self.steps + 1}, step {(total - 1) % self.steps + 1}"

    # ---- the thread
    def start(self) -> "Watchdog":
        self._request = self.comm.Irecv(self._question, source=self.MPI.ANY_SOURCE, tag=_QUERY)
        self._thread = threading.Thread(target=self._run, name="xprop-rank-timeout", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """End the thread (collective-free): cancel the posted receive."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if self._request is not None:
            self._request.Cancel()
            self._request.Wait()
            self._request = None

    def _position(self) -> numpy.ndarray:
        w = self._waiting
        return numpy.array([self.rank, w is not None, -1 if w is None else w[0], self.total],
                           dtype=numpy.int64)

    def _send(self, buf, dest, tag) -> None:
        self._sends = [(req, b) for req, b in self._sends if not req.Test()]
        self._sends.append((self.comm.Isend(buf, dest=dest, tag=tag), buf))

    def _answer(self) -> None:
        """Answer a question that has arrived, if any (with this rank's position)."""
        status = self.MPI.Status()
        while self._request is not None and self._request.Test(status):
            source = status.Get_source()
            self._send(self._position(), source, _REPLY)
            self._request = self.comm.Irecv(self._question, source=self.MPI.ANY_SOURCE, tag=_QUERY)

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            self._answer()
            w = self._waiting
            if w is not None and time.monotonic() - w[1] > self.timeout:
                self._expire(w)
                return

    def _ask(self) -> dict:
        """Every other rank's position, or None for a rank that did not answer within ``grace``."""
        mine = numpy.array([self.rank], dtype=numpy.int64)
        peers = [r for r in range(self.size) if r != self.rank]
        answers = {r: numpy.zeros(_FIELDS, numpy.int64) for r in peers}
        receives = {r: self.comm.Irecv(answers[r], source=r, tag=_REPLY) for r in peers}
        for r in peers:
            self._send(mine, r, _QUERY)
        deadline = time.monotonic() + self.grace
        done = {}
        while time.monotonic() < deadline and len(done) < len(peers):
            self._answer()                           # the others ask too
            for r, req in receives.items():
                if r not in done and req.Test():
                    done[r] = answers[r]
            time.sleep(0.01)
        return {r: done.get(r) for r in peers}

    def _expire(self, w) -> None:
        waited = time.monotonic() - w[1]
        positions = self._ask()
        me = self._position()
        if self.defers(positions):   # a lower waiting rank tells; give it time, then tell anyway
            end = time.monotonic() + 2 * self.grace
            while time.monotonic() < end:
                self._answer()
                time.sleep(0.05)
        self._tell(positions, me, waited)
        self.abort(1)

    def defers(self, positions: dict) -> bool:
        """Whether a lower rank that answered is waiting too (and will print the line itself)."""
        return any(p is not None and p[1] and r < self.rank for r, p in positions.items())

    def describe(self, positions: dict, me: numpy.ndarray, waited: float) -> str:
        """The one line that ends the job (see the module docstring)."""
        label = self.labels[int(me[2])] if me[2] >= 0 else "a collective"
        done = int(me[3])
        here = (f"gradient allreduce of {self.where(done + 1)}" if label == "gradient allreduce"
                else f"{label} (after {self.where(done)})")
        silent = [r for r, p in positions.items() if p is None]
        stuck = [(r, p) for r, p in positions.items()
                 if p is not None and not (p[1] and int(p[2]) == int(me[2]) and int(p[3]) == done)]
        parts = []
        if silent:
            parts.append(f"rank {', '.join(map(str, silent))} of {self.size} did not answer within "
                         f"{self.grace:.3g} s (stopped, or stuck holding the Python interpreter); the "
                         f"last step it completed: {self.where(done)} ({done} steps in all)")
        for r, p in stuck:
            other = self.labels[int(p[2])] if p[1] and 0 <= p[2] < len(self.labels) else None
            state = f"waits in the {other}" if other else "is not in a collective (stuck on I/O or computing)"
            parts.append(f"rank {r} of {self.size} {state}; the last step it completed: "
                         f"{self.where(int(p[3]))}")
        if not parts:
            parts.append("every rank waits in the same collective (a deadlock in the collective "
                         f"itself); the last step completed: {self.where(done)}")
        return (f"xprop: rank timeout: rank {self.rank} waited {waited:.1f} s (rank timeout "
                f"{self.timeout:g} s) in the {here}; " + "; ".join(parts) +
                "; aborting all ranks (MPI_Abort). The last checkpoint written is intact: resume from it.")

    def _tell(self, positions, me, waited) -> None:
        out = self.out or sys.stderr
        out.write(self.describe(positions, me, waited) + "\n")
        out.flush()
