"""Training statistics computed in chunks of structures on workers and joined exactly.

A structure's kernel rows depend on that structure alone, and the sparse GP needs them only
through the QR-compressed statistics of each noise group (:class:`~gpmlip.gp.solver.GramStats`:
``R`` with ``R'R = K~_mn W K~_nm`` and ``R'z = K~_mn W y``).  So a worker turns a chunk of
structures into that chunk's statistics, holding one structure's rows and O(m^2) for m sparse
points, and the client stacks the chunks' ``R`` factors and factors them again (a tall-skinny
QR, docs/theory.md §4): ``R'R`` is the same sum of Gram matrices however the structures are
split, so the model equals the one-process fit up to round-off, without ever forming the design
matrix or the Gram matrix.

Workers are any :class:`concurrent.futures.Executor`: local processes (``n_jobs``), or a
cluster through Parsl (:func:`gpmlip.labelling.parsl.parsl_executor`, the engine gpmlip already
uses to label structures on clusters).  A chunk whose worker is lost is computed again (at most
``retries`` times); the chunks are joined in their own order, not in the order they finish, so
the result does not depend on which worker was fast.
"""

from __future__ import annotations

import logging
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np

from gpmlip.gp.covariance import SparseSet
from gpmlip.data import Frame
from gpmlip.errors import GpmlipError, NumericalError
from gpmlip.gp.observations import NoiseModel, descriptor_for, observations
from gpmlip.gp.report import pressure_row
from gpmlip.gp.solver import GramStats
from gpmlip.gp.terms import training_rows
from gpmlip.parallel import mp_context

log = logging.getLogger(__name__)

CHUNKS_PER_WORKER = 2
"""Chunks per worker (of equal atom counts): enough to even out the workers, few enough that
joining the chunks' ``R`` factors (about ``2/3 m^3`` flops each) stays small beside computing
them."""
RETRIES = 2
"""How many times a chunk whose worker was lost is computed again before the fit fails."""


@dataclass(frozen=True)
class ChunkJob:
    """What a worker needs besides the structures: the model's columns and noise model.

    Attributes
    ----------
    settings : dict
        Descriptor settings (``descriptor.to_dict()``).
    zeta : int
    sparse : SparseSet
    terms : tuple of Term
        The GP's further terms (:mod:`gpmlip.gp.terms`; columns after the SOAP points).
    noise : NoiseModel
    groups : tuple of str
        The noise groups of the statistics.
    """

    settings: dict
    zeta: int
    sparse: SparseSet
    terms: tuple
    noise: NoiseModel
    groups: tuple[str, ...]

    @property
    def n_columns(self) -> int:
        """SOAP sparse points plus the terms' sparse sets."""
        return len(self.sparse) + sum(len(t) for t in self.terms)


@dataclass
class ChunkResult:
    """A chunk's statistics per noise group (:meth:`GramStats.compact`, what travels back) and
    its pressure rows (for the fit report)."""

    stats: dict[str, tuple]
    pressure: list[tuple[int, np.ndarray, float]]


def chunk_statistics(job: ChunkJob, frames: list[Frame], e0_totals: list[float],
                     indices: list[int]) -> ChunkResult:
    """The statistics of one chunk of structures (runs in a worker).

    Parameters
    ----------
    job : ChunkJob
    frames : list of Frame
        Structures with the labels the GP learns (baseline already subtracted).
    e0_totals : list of float
        Each structure's reference energy.
    indices : list of int
        Each structure's position in the training set (kept with its pressure row).
    """
    from threadpoolctl import threadpool_limits

    stats = {g: GramStats.empty(job.n_columns) for g in job.groups}
    pressure = []
    descriptor = descriptor_for(job.settings)
    with threadpool_limits(1):
        all_rows = training_rows(frames, job.settings, job.zeta, job.sparse, job.terms,
                                 descriptor.pair_list)
        for k, frame, e0, rows in zip(indices, frames, e0_totals, all_rows):
            for group, kr, y, scale in observations(frame, rows, e0, job.noise):
                stats[group].add(kr, y, scale)
            if frame.stress is not None and rows.stress is not None:
                pressure.append((k, pressure_row(rows.stress),
                                 -float(np.trace(frame.stress)) / 3.0))
    return ChunkResult({g: st.compact() for g, st in stats.items()}, pressure)


def _worker_lost(err: BaseException) -> bool:
    """A local pool whose process died, a pipe that broke, or a remote worker or manager lost
    (Parsl's ``WorkerLost``/``ManagerLost``)."""
    return isinstance(err, (BrokenProcessPool, EOFError, ConnectionError)) or \
        "Lost" in type(err).__name__


def chunks(weights, n_chunks: int) -> list[range]:
    """Structure indices in at most ``n_chunks`` contiguous chunks of nearly equal total weight
    (``weights``: each structure's cost, e.g. its atom count; an int ``n``: ``n`` equal
    structures); none empty."""
    w = np.ones(int(weights)) if np.ndim(weights) == 0 else np.asarray(weights, dtype=float)
    n = len(w)
    n_chunks = max(1, min(n, n_chunks))
    edges = np.concatenate([[0.0], np.cumsum(w)])
    cuts = np.searchsorted(edges, np.linspace(0, edges[-1], n_chunks + 1)[1:-1])
    bounds = np.unique(np.concatenate([[0], np.clip(cuts, 1, n - 1) if n > 1 else [], [n]]))
    return [range(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def statistics(job: ChunkJob, frames: list[Frame], e0_totals: list[float], stats: dict,
               *, executor: Executor | None = None, n_jobs: int = 2,
               chunk_count: int | None = None, retries: int = RETRIES,
               progress=None) -> list[tuple[int, np.ndarray, float]]:
    """Add the statistics of ``frames`` to ``stats`` (per group), computed chunk by chunk on
    workers; returns the pressure rows ``(index, row, label)`` in structure order.

    Parameters
    ----------
    job : ChunkJob
    frames : list of Frame
        The structures, labels as learnt.
    e0_totals : list of float
    stats : dict of GramStats
        Statistics to add to (modified in place, joined in chunk order).
    executor : Executor, optional
        Where chunks run (e.g. a Parsl executor); default ``n_jobs`` local processes.
    n_jobs : int
        Local worker processes when no executor is given; also sets the chunk count.
    chunk_count : int, optional
        Default :data:`CHUNKS_PER_WORKER` per worker.
    retries : int
        A chunk whose worker is lost (a broken process pool, a lost remote worker) runs again
        at most this many times; errors of gpmlip's own (bad data) are raised at once.
    progress : callable, optional
        Called with the number of structures of each chunk that finishes.
    """
    parts = chunks([f.n_atoms for f in frames],
                   chunk_count or CHUNKS_PER_WORKER * max(1, n_jobs))
    own = executor is None
    pool = executor
    results: dict[int, ChunkResult] = {}     # finished, not yet joined (out of order)
    joined = 0                               # chunks 0..joined-1 are in ``stats``
    pressure = []
    failures = dict.fromkeys(range(len(parts)), 0)

    def join_ready() -> None:
        """Join the finished chunks that are next in order (the client holds O(m^2) plus the
        chunks that finished early)."""
        nonlocal joined
        while joined in results:
            found = results.pop(joined)
            for group, st in found.stats.items():
                stats[group].merge(st)
            pressure.extend(found.pressure)
            joined += 1

    def submit(c: int):
        idx = list(parts[c])
        return pool.submit(chunk_statistics, job, [frames[i] for i in idx],
                           [e0_totals[i] for i in idx], idx)

    try:
        while joined < len(parts):
            if pool is None:
                pool = ProcessPoolExecutor(max(1, n_jobs), mp_context=mp_context("compute"))
            pending = {c: submit(c) for c in range(joined, len(parts)) if c not in results}
            broken = False
            for c, future in pending.items():
                try:
                    results[c] = future.result()
                    join_ready()
                except GpmlipError:
                    raise
                except Exception as err:   # noqa: BLE001 - a lost worker is retried, not others
                    if not _worker_lost(err):
                        raise
                    failures[c] += 1
                    log.warning("chunk %d of %d (%d structures) was lost (%s: %s); it runs "
                                "again (%d of %d retries)", c + 1, len(parts), len(parts[c]),
                                type(err).__name__, err, failures[c], retries)
                    if failures[c] > retries:
                        raise NumericalError(
                            f"chunk {c + 1} of the training set failed {failures[c]} times "
                            f"({type(err).__name__}: {err}); its workers keep dying (memory? "
                            "a killed job?): give fewer or larger workers, or fit in one "
                            "process") from err
                    broken = broken or isinstance(err, BrokenProcessPool)
                    continue
                if progress is not None:
                    progress(len(parts[c]))
            if broken and own:
                pool.shutdown(cancel_futures=True)
                pool = None
            elif broken and isinstance(pool, ProcessPoolExecutor):
                # a process pool that was given is unusable once a worker died: the rest runs
                # on local processes of our own
                log.warning("the process pool given lost a worker and cannot take work any "
                            "more; the remaining chunks run on %d local processes", n_jobs)
                own, pool = True, None
    finally:
        if own and pool is not None:
            pool.shutdown(cancel_futures=True)
    for st in stats.values():
        st.flush()
    log.info("training statistics: %d structures in %d chunks on %s", len(frames), len(parts),
             "local processes" if own else type(executor).__name__)
    return pressure
