"""Training a sparse GP: choosing sparse points, growing a fitted state by structures and sparse
points, refitting e0 when the compositions widen, solving (docs/theory.md §4).

Each function takes the model for its settings (public attributes only) and returns a new
:class:`~gpmlip.gp.state.FittedState`; the model swaps it in when the whole step succeeded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from ase.data import chemical_symbols

from gpmlip.data import Dataset, Frame, reference_energies
from gpmlip.data.reference import ReferenceEnergies
from gpmlip.errors import DataError, SettingsError
from gpmlip.gp import distributed, selection
from gpmlip.gp import report as fit_report
from gpmlip.gp import terms as gp_terms
from gpmlip.gp.covariance import SparseSet, local_kernel
from gpmlip.gp.observations import NoiseModel, observations
from gpmlip.gp.solver import GramStats, Hyper, solve
from gpmlip.gp.state import FittedState
from gpmlip.progress import progress_bar
from gpmlip.species import by_atomic_number

log = logging.getLogger(__name__)


def per_species(value, species: Sequence[int], name: str) -> dict[int, float]:
    """``value`` (one number, or a dict symbol or Z -> number) per atomic number of ``species``."""
    if isinstance(value, dict):
        out = by_atomic_number(value, name)
        missing = [chemical_symbols[z] for z in species if z not in out]
        if missing:
            raise SettingsError(f"{name} gives no value for {missing}; add them")
        return {z: out[z] for z in species}
    return {z: value for z in species}


def sparse_pairs(sparse_atoms, frames: list[Frame]) -> np.ndarray:
    """``sparse_atoms`` as an (n, 2) array of (frame, atom) indices into ``frames``, checked."""
    advice = "sparse_atoms: give (frame index, atom index) pairs, e.g. [(0, 3), (0, 7), (1, 2)]"
    try:
        origin = np.asarray(sparse_atoms, dtype=np.int64)
    except (TypeError, ValueError):
        raise SettingsError(advice) from None
    if origin.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if origin.ndim != 2 or origin.shape[1] != 2:
        raise SettingsError(advice)
    for i, a in origin:
        if not (0 <= i < len(frames) and 0 <= a < frames[i].n_atoms):
            raise DataError(f"sparse atom ({i}, {a}) does not exist in the frames given "
                            f"({len(frames)} frames; frame indices count from 0)")
    return origin


def select_sparse(model, state: FittedState, frames, features, n_sparse, method,
                  cap: bool = False) -> np.ndarray:
    """(frame, atom) pairs of new sparse points, per species; ``cap`` limits each count to
    the environments available instead of raising."""
    counts = per_species(n_sparse, model.species, "n_sparse")
    picked = []
    for z in model.species:
        where = [(i, a) for i, f in enumerate(frames)
                 for a in np.flatnonzero(f.atoms.numbers == z)]
        if not where:
            if counts[z] and not cap:
                log.warning("no %s environments in the training data: no sparse points "
                            "for it", chemical_symbols[z])
            continue
        candidates = np.array([features[i][a] for i, a in where])
        idx = selection.select(candidates, min(counts[z], len(where)) if cap else counts[z],
                               method, zeta=model.zeta, seed=model.seed,
                               existing=state.sparse.features[state.sparse.species == z],
                               label=chemical_symbols[z])
        picked.extend(where[k] for k in idx)
    return np.array(picked, dtype=np.int64).reshape(-1, 2)


def grown(model, state: FittedState, new_frames, new_features, origin, executor,
          rebuild: bool = False, report: bool = False):
    """``state`` with frames and sparse points added (origin indices refer to
    ``state.frames + new_frames``), solved, and the fit report (with ``report``, else None);
    ``rebuild``: recompute every frame's observations (e0 changed).  ``state`` itself is not
    modified."""
    frames = state.frames + list(new_frames)
    features = state.features + list(new_features)
    sparse, sparse_origin, kmm = state.sparse, state.sparse_origin, state.kmm
    m_old = len(sparse)
    if len(origin):
        for i, a in origin:
            if not (0 <= i < len(frames) and 0 <= a < frames[i].n_atoms):
                raise DataError(f"sparse atom ({i}, {a}) does not exist in the training data")
        x_new = np.array([features[i][a] for i, a in origin])
        z_new = np.array([frames[i].atoms.numbers[a] for i, a in origin])
        sparse = SparseSet(np.vstack([sparse.features, x_new]),
                           np.concatenate([sparse.species, z_new]))
        sparse_origin = np.vstack([sparse_origin, origin])
        kmm = grown_kmm(kmm, sparse, m_old, model.zeta, model.jitter)
    m_all = len(sparse) + sum(len(t) for t in state.terms)
    if len(sparse) > m_old or rebuild or len(state.stats["energy"].z) != m_all:
        # New kernel columns: every known frame contributes to them.  Its Jacobian is
        # recomputed (never stored) and its rows are folded in again for all columns.
        stats = {g: GramStats.empty(m_all) for g in state.stats}
        todo = frames
    else:
        stats = state.copied_stats()
        todo = list(new_frames)
    noise = NoiseModel(model.config_sigmas, model.stress_noise == "per_atom")
    learnt = model.learnt_labels(todo)
    e0_totals = [state.e0.of(f.atoms.numbers) for f in todo]
    bar = progress_bar(total=len(todo), desc="kernel rows", unit="frame")
    if executor is not None or (model.n_jobs > 1 and len(todo) > 1):
        # chunks of structures on workers, their statistics joined exactly (TSQR)
        job = distributed.ChunkJob(model.descriptor.to_dict(), model.zeta, sparse,
                                   state.terms, noise, tuple(stats))
        with bar:
            found = distributed.statistics(job, learnt, e0_totals, stats,
                                           executor=executor, n_jobs=model.n_jobs,
                                           progress=bar.update)
        pressure = ([p[1] for p in found], [p[2] for p in found], [p[0] for p in found])
    else:
        pressure = streamed(model, todo, learnt, e0_totals, sparse, state.terms, noise, stats,
                            bar)
    out = solved(model, state.replace(frames=frames, features=features, sparse=sparse,
                                      sparse_origin=sparse_origin, kmm=kmm, stats=stats))
    return out, (fit_report.fit_report(out, *pressure) if report else None)


def streamed(model, todo, learnt, e0_totals, sparse, terms, noise, stats, bar):
    """Rows of every structure in this process, folded into ``stats`` one at a time;
    returns the pressure rows, labels and structure indices (for the fit report)."""
    rows = gp_terms.training_rows(todo, model.descriptor.to_dict(), model.zeta, sparse, terms,
                                  model.descriptor.pair_list)
    pressure = ([], [], [])
    with bar:
        for k, (frame, frame_rows) in enumerate(zip(learnt, rows)):
            bar.update(1)
            for group, kr, y, scale in observations(frame, frame_rows, e0_totals[k], noise):
                stats[group].add(kr, y, scale)
            if frame.stress is not None and frame_rows.stress is not None:
                pressure[0].append(fit_report.pressure_row(frame_rows.stress))
                pressure[1].append(-float(np.trace(frame.stress)) / 3.0)
                pressure[2].append(k)
            if (k + 1) % 10 == 0 or k + 1 == len(todo):
                log.info("kernel rows: %d/%d frames", k + 1, len(todo))
    return pressure


def grown_kmm(kmm_old: np.ndarray, sparse: SparseSet, m_old: int, zeta: int,
              jitter: float) -> np.ndarray:
    """The unit-variance ``K_mm`` of ``sparse`` from that of its first ``m_old`` points."""
    x, z = sparse.features, sparse.species
    k_new = local_kernel(x, z, SparseSet(x[m_old:], z[m_old:]), zeta)   # (m, m_new)
    kmm = np.zeros((len(z), len(z)))
    kmm[:m_old, :m_old] = kmm_old
    kmm[:, m_old:] = k_new
    kmm[m_old:, :] = k_new.T
    kmm[np.arange(m_old, len(z)), np.arange(m_old, len(z))] += jitter
    return kmm


def solved(model, state: FittedState) -> FittedState:
    """``state`` with its posterior solved and the model's next version number."""
    stats = {g: st for g, st in state.stats.items() if st.n}
    posterior = solve(state.system_kmm, stats,
                      Hyper(state.column_variance, dict(state.noise)))
    log.info("solved: %d sparse points, %d observations, log likelihood %.6g",
             len(state.sparse), sum(st.n for st in stats.values()),
             posterior.log_likelihood)
    return state.replace(posterior=posterior, version=model.version + 1)


def grown_e0(model, state: FittedState, new_frames: list[Frame]) -> ReferenceEnergies | None:
    """e0 refitted on all frames if the new ones widen the composition space, else None.

    With ``e0`` "auto", "fit" or "isolated", e0 is re-derived (as a fresh fit on the union
    would) when the compositions of the energy-labelled frames span more dimensions than
    before, e.g. the first CuAu frame of a run that started on pure Cu.  Within the same
    composition space e0 stays as it is, so that the model does not drift label by label.
    """
    if not isinstance(model.e0, str):
        return None
    old = state.frames
    species = sorted({int(z) for f in old + new_frames for z in f.atoms.numbers})

    def rank(frames) -> int:
        counts = [[np.count_nonzero(f.atoms.numbers == z) for z in species]
                  for f in frames if f.energy is not None]
        return int(np.linalg.matrix_rank(np.array(counts, dtype=float))) if counts else 0

    if rank(old + new_frames) == rank(old):
        return None
    e0 = reference_energies(Dataset(model.learnt_labels(old + new_frames)), model.e0)
    if e0.energies == state.e0.energies:
        return None
    log.info("the compositions span more species than before: e0 refitted from %s to %s "
             "eV; energy rows rebuilt", state.e0.to_dict(), e0.to_dict())
    return e0
