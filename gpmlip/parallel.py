"""The one place that chooses how gpmlip starts worker processes.

Two kinds of child process exist, and each gets one start method:

``"compute"`` -> ``fork``
    Workers that run gpmlip's own numerical code: descriptor blocks and training kernel rows
    (:mod:`gpmlip.descriptors.soap`, :mod:`gpmlip.gp.observations`) and the one-shot child that
    runs a labeller under a time limit (:func:`gpmlip.labelling.labellers.run_labeller`).  A
    forked child starts at once with the parent's imports, compiled numba kernels and descriptor
    settings (``spawn`` would re-import numba and dscribe and load every kernel again in each
    worker).  Fork is not safe in general once threads have started: numba's OpenMP threading
    layer and libgomp keep thread pools whose state a forked child inherits but whose threads it
    does not, so a threaded kernel or OpenMP BLAS call in the child can hang.  gpmlip's children
    never make one: the SOAP engine runs its one-thread kernels in a forked child (it compares
    the process id with the one it was imported in), the training-row workers start with one
    BLAS thread, and the labeller child runs under ``threadpool_limits(1)``.

``"isolated"`` -> ``forkserver`` (``spawn`` on macOS or where forkserver is missing)
    Long-lived pools that run arbitrary user code (labellers drained from a queue,
    :func:`gpmlip.labelling.runner.process_pool`) while the coordinator runs threads of its own
    (Parsl, lease renewal, BLAS): a forked child could inherit a lock one of them holds and hang.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from multiprocessing.context import BaseContext

from gpmlip.errors import SettingsError

KINDS = ("compute", "isolated")


def start_method(kind: str = "compute") -> str:
    """The start method for a child process of ``kind`` (see the module docstring)."""
    if kind == "compute":
        return "fork"
    if kind == "isolated":
        methods = multiprocessing.get_all_start_methods()
        return "forkserver" if "forkserver" in methods and sys.platform != "darwin" else "spawn"
    raise SettingsError(f"process kind {kind!r}: use one of {KINDS}")


def die_with_parent(coordinator: int | None = None, poll_seconds: float = 1.0) -> None:
    """End this process when its parent, or the ``coordinator`` process, dies.

    The initializer of pool workers and the first call of the labeller's child process: a
    coordinator killed with SIGKILL must not leave them running a labeller for nobody.  The
    kernel ends the process with its parent (Linux ``PR_SET_PDEATHSIG``; nothing elsewhere);
    a pool worker's parent is the forkserver, which outlives the coordinator, so a daemon
    thread also checks every ``poll_seconds`` that ``coordinator`` is alive.
    """
    import signal
    import threading

    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):     # 1 = PR_SET_PDEATHSIG
            pass
    if coordinator is not None:
        threading.Thread(target=end_when_gone, args=(coordinator, [os.getpid()], poll_seconds),
                         name="gpmlip-coordinator-watch", daemon=True).start()


def end_when_gone(coordinator: int, targets: list[int], poll_seconds: float = 1.0) -> None:
    """Wait until process ``coordinator`` is gone, then send SIGTERM to ``targets``: the watch
    of :func:`die_with_parent` (its own process) and of the Parsl interchange's watchdog
    (:mod:`gpmlip.labelling.parsl`)."""
    import signal
    import time

    while True:
        try:
            os.kill(coordinator, 0)
        except ProcessLookupError:
            break
        except PermissionError:       # alive, another user's: cannot happen for a parent
            pass
        time.sleep(poll_seconds)
    for pid in targets:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def mp_context(kind: str = "compute") -> BaseContext:
    """``multiprocessing`` context for a child process of ``kind``: ``"compute"`` (gpmlip's own
    fork-aware numerical workers) or ``"isolated"`` (pools running user code beside threads)."""
    return multiprocessing.get_context(start_method(kind))
