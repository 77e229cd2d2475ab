"""Drain a :class:`~gpmlip.labelling.queue.LabelQueue` through any ``concurrent.futures`` executor.

Only the coordinating process (the one calling :func:`label_queue`) opens the queue file.  It
claims rows, sends ``(labeller, atoms)`` to the executor, and stores each result as it comes
back.  Workers, local processes or Parsl workers on other nodes, never touch the database:
they run :func:`label_structure` and return plain numbers.

Everything sent to a worker is pickled by the executor, so a custom labeller factory must be a
module-level function of an importable module (not a lambda, a closure or a function defined
in ``__main__`` of a notebook) when a process pool or Parsl runs it; built-in labellers
(``"emt"``, ``"lj"``, ``"gpaw"``, ``"tblite"``) are.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import platform
import socket
import time
import uuid

import numpy as np
from ase import Atoms

from gpmlip.errors import SettingsError
from gpmlip.labelling.labellers import Labeller, LabelResult, provenance, run_labeller
from gpmlip.labelling.queue import LabelQueue
from gpmlip.parallel import die_with_parent, mp_context
from gpmlip.version import __version__

log = logging.getLogger(__name__)


def label_structure(labeller: Labeller, atoms: Atoms) -> dict:
    """Label one structure; what a worker runs.  Never raises for a calculator failure.

    Returns
    -------
    dict
        ``{"result": LabelResult.to_dict(), "provenance": {...}}``, JSON-serialisable: host,
        pid, start and end (unix time), package versions of gpmlip, ase and numpy, labeller.
    """
    started = time.time()
    result = run_labeller(labeller, atoms)
    prov = {**provenance(), "gpmlip": __version__, "numpy": np.__version__,
            "labeller": labeller.name, "started": started, "finished": time.time()}
    return {"result": result.to_dict(), "provenance": prov}


def default_worker_name() -> str:
    """``host:pid:random``, unique per coordinator."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def process_pool(max_workers: int = 1) -> cf.ProcessPoolExecutor:
    """A process pool started with ``forkserver`` (``spawn`` where that is missing).

    ``fork`` is avoided: the coordinator may run threads (Parsl, BLAS, a renewal loop), and a
    forked child can inherit a lock held by one of them and hang (see :mod:`gpmlip.parallel`).
    """
    if max_workers < 1:
        raise SettingsError(f"max_workers={max_workers}: use 1 or more")
    return cf.ProcessPoolExecutor(max_workers, mp_context=mp_context("isolated"),
                                  initializer=die_with_parent, initargs=(os.getpid(),))


class _Run:
    """Book-keeping of one :func:`label_queue` call."""

    def __init__(self, queue: LabelQueue, worker: str, lease_seconds: float, progress: bool):
        self.queue, self.worker, self.lease = queue, worker, lease_seconds
        self.progress = progress
        self.in_flight: dict[cf.Future, int] = {}
        self.stats = {"done": 0, "failed": 0, "retried": 0, "ignored": 0, "lost": 0}

    def store(self, fut: cf.Future) -> bool:
        """Write one finished future; False if the executor itself failed (broken pool)."""
        row_id = self.in_flight.pop(fut)
        try:
            out = fut.result()
        except Exception as err:   # noqa: BLE001 - the worker died or the executor broke
            log.warning("row %d: the executor failed (%s: %s); its lease will lapse and the row "
                        "will be claimed again", row_id, type(err).__name__, err)
            self.stats["lost"] += 1
            return not isinstance(err, cf.BrokenExecutor)
        result = LabelResult.from_dict(out["result"])
        state = self.queue.complete(row_id, result, out["provenance"], self.worker)
        self.stats[{None: "ignored", "queued": "retried"}.get(state, state)] += 1
        if self.progress:
            log.info("row %d %s (%d done, %d failed, %d in flight)", row_id,
                     "labelled" if result.ok else f"failed: {result.error}",
                     self.stats["done"], self.stats["failed"], len(self.in_flight))
        return True


def label_queue(queue: LabelQueue, labeller=None, *, executor: cf.Executor | None = None,
                max_workers: int = 1, lease_seconds: float = 600.0, batch: int | None = None,
                worker: str | None = None, wait: bool = True, progress: bool = False) -> dict:
    """Label every claimable row of ``queue``; return a summary.

    Parameters
    ----------
    queue : LabelQueue
    labeller : str, dict, callable or Labeller, optional
        Default: the queue's own.  Must match the queue's record.
    executor : concurrent.futures.Executor, optional
        Where labels run: e.g. :func:`gpmlip.labelling.parsl.parsl_executor`.  Default: a
        :func:`process_pool` of ``max_workers``, shut down at the end.  A given executor is
        left running.
    max_workers : int
        Size of the default pool.
    lease_seconds : float
        How long a claimed row stays ours without news.  Leases of rows in flight are renewed
        every third of this, so it only needs to exceed the time a dead coordinator should
        block its rows, not the time a label takes.
    batch : int, optional
        Rows kept in flight (claimed and submitted), default ``2 * max_workers``.
    worker : str, optional
        Name recorded as the lease owner (default ``host:pid:random``).
    wait : bool
        When nothing is left to claim, wait for rows other workers hold until they finish or
        their leases expire (then take them over), so the call returns with nothing queued or
        running.  False: return as soon as this call has nothing in flight.
    progress : bool
        Log every stored result at INFO level.

    Returns
    -------
    dict
        ``done``, ``failed`` (rows this call moved to failed), ``retried`` (failed attempts
        sent back to queued), ``ignored`` (results whose lease another worker had taken),
        ``lost`` (executor errors, e.g. a killed worker), ``seconds``, ``labels_per_minute``,
        ``worker`` and ``counts`` (the queue's state counts at the end).
    """
    lab = queue.check_labeller(labeller)
    if not lease_seconds > 0:
        raise SettingsError(f"lease_seconds={lease_seconds}: use a positive number")
    batch = int(batch or 2 * max_workers)
    if batch < 1:
        raise SettingsError(f"batch={batch}: use 1 or more")
    own = executor is None
    executor = process_pool(max_workers) if own else executor
    run = _Run(queue, worker or default_worker_name(), lease_seconds, progress)
    start = last_renew = time.monotonic()
    log.info("labelling %s with %s as %s (%d rows in flight at most)", queue.path, lab.name,
             run.worker, batch)
    try:
        while True:
            if len(run.in_flight) < batch:
                for row_id, atoms in queue.claim(batch - len(run.in_flight), run.worker,
                                                 lease_seconds):
                    run.in_flight[executor.submit(label_structure, lab, atoms)] = row_id
            if not run.in_flight:
                counts = queue.counts()
                if not wait or counts["queued"] + counts["running"] == 0:
                    break
                expiry = queue.next_lease_expiry()
                pause = 1.0 if expiry is None else expiry - time.time() + 0.05
                time.sleep(min(max(pause, 0.05), 5.0, lease_seconds / 3))
                continue
            timeout = max(0.0, lease_seconds / 3 - (time.monotonic() - last_renew))
            finished, _ = cf.wait(run.in_flight, timeout=timeout,
                                  return_when=cf.FIRST_COMPLETED)
            healthy = all([run.store(fut) for fut in finished])
            if not healthy and own:
                log.warning("the process pool broke (a worker was killed); starting a new one")
                executor.shutdown(wait=False, cancel_futures=True)
                for fut in list(run.in_flight):
                    cf.wait([fut])
                    run.store(fut)
                executor = process_pool(max_workers)
            if time.monotonic() - last_renew >= lease_seconds / 3:
                for rid in queue.renew(list(run.in_flight.values()), run.worker, lease_seconds):
                    log.warning("row %d: lease lost to another worker", rid)
                last_renew = time.monotonic()
    finally:
        if own:
            executor.shutdown(wait=True, cancel_futures=True)
    seconds = time.monotonic() - start
    summary = {**run.stats, "seconds": seconds,
               "labels_per_minute": 60.0 * run.stats["done"] / seconds if seconds > 0 else 0.0,
               "worker": run.worker, "host": platform.node(), "counts": queue.counts()}
    log.info("labelling finished: %s", summary)
    return summary
