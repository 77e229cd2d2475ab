"""The sparse Gaussian-process potential: fit, update, predict with variances."""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from threadpoolctl import threadpool_limits

from gpmlip.covariance import (SparseSet, unit_kernel, force_prior_variance, force_rows,
                               local_kernel)
from gpmlip.descriptors.engine import PairList
from gpmlip.data import Dataset, Frame, load_frames, reference_energies
from gpmlip.data.reference import ReferenceEnergies
from gpmlip.errors import DataError, NotFittedError, SettingsError, UnknownSpeciesError
from gpmlip.gp import selection
from gpmlip.gp.observations import NoiseModel, compute_rows, observations
from gpmlip.gp.solver import GROUPS, GramStats, Hyper, Posterior, solve
from gpmlip.species import by_atomic_number

log = logging.getLogger(__name__)

PREDICT_BLOCK = 512
"""Atoms whose kernel rows are formed at once in prediction (bounds the atoms x sparse block)."""

DEFAULT_SIGMAS = {"energy": 0.005, "forces": 0.05, "stress": 0.001}
"""Default noise: eV/atom (times sqrt(n_atoms) per structure), eV/Å, eV/Å³ (0.16 GPa)."""


@dataclass
class Prediction:
    """What :meth:`SparseGP.predict` returns.

    Attributes
    ----------
    energy : float
        Total energy, eV.
    energies : ndarray, shape (n_atoms,)
        Local energies including e0; they sum to ``energy``.
    forces : ndarray, shape (n_atoms, 3) or None
    stress : ndarray, shape (3, 3) or None
        ASE sign convention, eV/Å³ (None for a structure without a cell volume).
    local_variance : ndarray, shape (n_atoms,)
        Predictive variance of each local energy, eV² (Nystroem residual plus the uncertainty
        of the weights).
    local_std_normalised : ndarray, shape (n_atoms,)
        ``sqrt(local_variance) / sigma_z``, clipped to [0, 1]: 0 = known, 1 = unknown.  The one
        novelty quantity of gpmlip: what the on-the-fly learner, the gate, the pool and the
        loop threshold (see :mod:`gpmlip.active.settings`).
    force_std : ndarray, shape (n_atoms, 3) or None
        Standard deviation of each force component from the uncertainty of the weights
        (the DTC term ``k_F' A^-1 k_F``), when asked for.
    """

    energy: float
    energies: np.ndarray
    forces: np.ndarray | None
    stress: np.ndarray | None
    local_variance: np.ndarray
    local_std_normalised: np.ndarray
    force_std: np.ndarray | None = None

    @property
    def max_uncertainty(self) -> float:
        """``local_std_normalised.max()``: the number on-the-fly learning thresholds."""
        if self.local_std_normalised is None:
            raise ValueError("predicted without variances: use predict(..., variance=True)")
        return float(self.local_std_normalised.max())

    @property
    def local_variance_normalised(self) -> np.ndarray:
        """Deprecated: ``local_std_normalised ** 2``; threshold the std instead."""
        warnings.warn("Prediction.local_variance_normalised is deprecated: use "
                      "local_std_normalised (a std, the quantity every threshold is on)",
                      DeprecationWarning, stacklevel=2)
        return self.local_std_normalised ** 2


def normalised_std(variance: np.ndarray, signal_variance: np.ndarray) -> np.ndarray:
    """``sqrt(variance / signal_variance)`` clipped to [0, 1] (see ``Prediction``)."""
    return np.sqrt(np.clip(variance / signal_variance, 0.0, 1.0))


@dataclass
class PairEnergies:
    """What :meth:`SparseGP.pair_energies` returns.

    Attributes
    ----------
    energies : ndarray, shape (n_centres,)
        Local energies including e0, eV.
    dE_dr : ndarray, shape (n_pairs, 3)
        Derivative of the total energy with respect to every pair vector ``r_ij``.
    std : ndarray, shape (n_centres,) or None
        Normalised local-energy std in [0, 1] (when asked for).
    variance : ndarray, shape (n_centres,) or None
        Local-energy variance in eV^2 (when asked for).
    """

    energies: np.ndarray
    dE_dr: np.ndarray | None
    std: np.ndarray | None = None
    variance: np.ndarray | None = None


def pair_forces(pairs: PairList, d_e: np.ndarray, n_atoms: int) -> np.ndarray:
    """Forces from ``dE/dr_ij``: ``F_j -= dE/dr_ij`` and ``F_i += dE/dr_ij``, shape (n, 3)."""
    out = np.empty((n_atoms, 3))
    for a in range(3):
        out[:, a] = (np.bincount(pairs.centre, d_e[:, a], minlength=n_atoms)
                     - np.bincount(pairs.neighbour, d_e[:, a], minlength=n_atoms))
    return out


def _per_species(value, species: Sequence[int], name: str) -> dict[int, float]:
    if isinstance(value, dict):
        out = by_atomic_number(value, name)
        missing = [chemical_symbols[z] for z in species if z not in out]
        if missing:
            raise SettingsError(f"{name} gives no value for {missing}; add them")
        return {z: out[z] for z in species}
    return {z: value for z in species}


def _sparse_pairs(sparse_atoms, frames: list[Frame]) -> np.ndarray:
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


class SparseGP:
    """Sparse GP on local atomic energies (GAP-style), trained on energies, forces and stresses.

    Parameters
    ----------
    descriptor : gpmlip.SOAP
        Per-atom descriptor with Jacobians.
    zeta : int, default 4
        Exponent of the normalised dot-product kernel.
    n_sparse : int or dict, default 200
        Sparse points per species (a dict maps symbol or Z to a count).
    sparse_method : {"cur", "kmeans++", "random", "variance"}
        How :meth:`fit` chooses them (see :func:`gpmlip.gp.selection.select`).
    signal_std : float or dict, default 1.0
        ``sigma_z`` in eV per species: prior spread of a local energy (GAP's ``delta``).
    energy_sigma, force_sigma, stress_sigma : float
        Noise in eV/atom (scaled by sqrt(n_atoms) for a structure), eV/Å and eV/Å³.
    config_sigmas : dict, optional
        config_type -> {"energy": ..., "forces": ..., "stress": ...}: fixed noise overrides.
        Per-structure ``energy_sigma``/``force_sigma``/``virial_sigma`` in ``atoms.info`` win.
    e0 : dict or {"auto", "isolated", "fit"}
        Reference energies per species (see :func:`gpmlip.reference_energies`).
    jitter : float, default 1e-8
        Added to the diagonal of the unit-variance sparse kernel matrix.
    seed : int, default 0
        Seed of the randomised sparse selections.
    n_jobs : int, optional
        Worker processes for the Jacobians of training frames (default: the descriptor's).
    """

    def __init__(self, descriptor, *, zeta: int = 4, n_sparse: int | dict = 200,
                 sparse_method: str = "cur", signal_std: float | dict = 1.0,
                 energy_sigma: float = DEFAULT_SIGMAS["energy"],
                 force_sigma: float = DEFAULT_SIGMAS["forces"],
                 stress_sigma: float = DEFAULT_SIGMAS["stress"],
                 config_sigmas: dict | None = None, e0: dict | str = "auto",
                 jitter: float = 1e-8, seed: int = 0, n_jobs: int | None = None) -> None:
        self.descriptor = descriptor
        self.zeta = zeta
        self.n_sparse = n_sparse
        self.sparse_method = sparse_method
        self.signal_std = signal_std
        self.energy_sigma = energy_sigma
        self.force_sigma = force_sigma
        self.stress_sigma = stress_sigma
        self.config_sigmas = config_sigmas or {}
        self.e0 = e0
        self.jitter = jitter
        self.seed = seed
        self.n_jobs = descriptor.n_jobs if n_jobs is None else n_jobs
        self.version = 0
        self.posterior_: Posterior | None = None

    # -- state -----------------------------------------------------------------------------
    @property
    def species(self) -> tuple[int, ...]:
        """Atomic numbers the model was built for."""
        return tuple(self.descriptor.species)

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` (or loading) has happened."""
        return self.posterior_ is not None

    @property
    def n_sparse_points(self) -> int:
        """Number of sparse points in the model."""
        return len(self.sparse_) if self.is_fitted else 0

    @property
    def log_likelihood(self) -> float:
        """DTC log marginal likelihood of the training data at the current hyper-parameters."""
        self._check_fitted()
        return self.posterior_.log_likelihood

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError("the model is not fitted: call model.fit(frames) or "
                                 "gpmlip.load_model(path) first")

    def _validate_settings(self) -> None:
        if self.zeta not in range(1, 13):
            raise SettingsError(f"zeta={self.zeta}: use a small positive integer (2 or 4)")
        for name in ("energy_sigma", "force_sigma", "stress_sigma", "jitter"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise SettingsError(f"{name}={value}: use a positive number")

    def _frames(self, frames) -> list[Frame]:
        if isinstance(frames, Dataset):
            data = list(frames)
            bad = {z for f in data for z in f.atoms.numbers} - set(self.species)
            if bad:
                raise UnknownSpeciesError(
                    f"the data contain {[chemical_symbols[z] for z in sorted(bad)]}, which the "
                    f"descriptor does not know; build the SOAP with those species")
            return data
        if isinstance(frames, Frame):
            return [frames]
        if isinstance(frames, (list, tuple)) and frames and all(isinstance(f, Frame)
                                                                for f in frames):
            return list(frames)
        return list(load_frames(frames, species=self.species))

    def _features(self, frames: list[Frame]) -> list[np.ndarray]:
        return [self.descriptor.describe(f.atoms).features for f in frames]

    # -- fitting ---------------------------------------------------------------------------
    def fit(self, frames, *, sparse_atoms: Sequence[tuple[int, int]] | None = None,
            executor: Executor | None = None) -> SparseGP:
        """Choose sparse points and solve for the weights.

        Parameters
        ----------
        frames : list of ase.Atoms, Dataset, list of Frame, or a file path
            Labelled structures; each may have any of energy, forces, stress.
        sparse_atoms : sequence of (frame index, atom index) pairs, optional
            Use exactly these environments as sparse points instead of ``n_sparse``; frame
            indices count the frames passed in (the same format as in :meth:`update`).
        executor : concurrent.futures.Executor, optional
            Where the training Jacobians are computed (default: ``n_jobs`` local processes).

        Returns
        -------
        SparseGP
            ``self``.
        """
        self._validate_settings()
        frames = self._frames(frames)
        if not frames:
            raise DataError("no training frames: give at least one labelled structure")
        self.posterior_ = None   # a fit that fails half-way leaves an unfitted model
        self.e0_ = self.e0 if isinstance(self.e0, ReferenceEnergies) else \
            reference_energies(Dataset(frames), self.e0)
        self.signal_variance_ = {z: float(s) ** 2 for z, s in
                                 _per_species(self.signal_std, self.species, "signal_std").items()}
        self.noise_ = {"energy": float(self.energy_sigma), "forces": float(self.force_sigma),
                       "stress": float(self.stress_sigma)}
        self.frames_: list[Frame] = []
        self.features_: list[np.ndarray] = []
        self.sparse_ = SparseSet(np.zeros((0, self.descriptor.n_features)), np.zeros(0, int))
        self.sparse_origin_ = np.zeros((0, 2), dtype=np.int64)
        self.kmm_ = np.zeros((0, 0))
        self.stats_ = {g: GramStats.empty(0) for g in (*GROUPS, "fixed")}
        features = self._features(frames)
        if sparse_atoms is None:
            origin = self._select(frames, features, self.n_sparse, self.sparse_method)
        else:
            origin = _sparse_pairs(sparse_atoms, frames)
        self._add(frames, features, origin, executor)
        return self

    def _select(self, frames, features, n_sparse, method, cap: bool = False) -> np.ndarray:
        """(frame, atom) pairs of new sparse points, per species; ``cap`` limits each count to
        the environments available instead of raising."""
        counts = _per_species(n_sparse, self.species, "n_sparse")
        picked = []
        for z in self.species:
            where = [(i, a) for i, f in enumerate(frames)
                     for a in np.flatnonzero(f.atoms.numbers == z)]
            if not where:
                if counts[z] and not cap:
                    log.warning("no %s environments in the training data: no sparse points "
                                "for it", chemical_symbols[z])
                continue
            candidates = np.array([features[i][a] for i, a in where])
            idx = selection.select(candidates, min(counts[z], len(where)) if cap else counts[z],
                                   method, zeta=self.zeta, seed=self.seed,
                                   existing=self.sparse_.features[self.sparse_.species == z],
                                   label=chemical_symbols[z])
            picked.extend(where[k] for k in idx)
        return np.array(picked, dtype=np.int64).reshape(-1, 2)

    def _add(self, new_frames, new_features, origin, executor, rebuild: bool = False) -> None:
        """Add frames and sparse points (origin indices refer to ``self.frames_ + new_frames``);
        ``rebuild``: recompute every frame's observations (e0 changed)."""
        frames = self.frames_ + list(new_frames)
        features = self.features_ + list(new_features)
        m_old = len(self.sparse_)
        if len(origin):
            for i, a in origin:
                if not (0 <= i < len(frames) and 0 <= a < frames[i].n_atoms):
                    raise DataError(f"sparse atom ({i}, {a}) does not exist in the training data")
            x_new = np.array([features[i][a] for i, a in origin])
            z_new = np.array([frames[i].atoms.numbers[a] for i, a in origin])
            self.sparse_ = SparseSet(np.vstack([self.sparse_.features, x_new]),
                                     np.concatenate([self.sparse_.species, z_new]))
            self.sparse_origin_ = np.vstack([self.sparse_origin_, origin])
            self._grow_kmm(m_old)
        if len(self.sparse_) > m_old or rebuild:
            # New kernel columns: every known frame contributes to them.  Its Jacobian is
            # recomputed (never stored) and its rows are folded in again for all columns.
            self.stats_ = {g: GramStats.empty(len(self.sparse_)) for g in self.stats_}
            todo = frames
        else:
            todo = list(new_frames)
        rows = compute_rows(todo, self.descriptor.to_dict(), self.zeta, self.sparse_,
                            executor=executor, n_jobs=self.n_jobs)
        noise = NoiseModel(self.config_sigmas)
        # While worker processes use the cores, this process's BLAS gets one thread: OpenBLAS
        # threads spin-wait, and oversubscribed they made the QR updates 50x slower (measured).
        parallel = executor is not None or self.n_jobs > 1
        from gpmlip.progress import progress_bar

        bar = progress_bar(total=len(todo), desc="kernel rows", unit="frame")
        with threadpool_limits(1 if parallel else None), bar:
            for k, (frame, frame_rows) in enumerate(zip(todo, rows)):
                bar.update(1)
                e0 = self.e0_.of(frame.atoms.numbers)
                for group, kr, y, scale in observations(frame, frame_rows, e0, noise):
                    self.stats_[group].add(kr, y, scale)
                if (k + 1) % 10 == 0 or k + 1 == len(todo):
                    log.info("kernel rows: %d/%d frames", k + 1, len(todo))
        self.frames_ = frames
        self.features_ = features
        self._solve()

    def _grow_kmm(self, m_old: int) -> None:
        x, z = self.sparse_.features, self.sparse_.species
        k_new = local_kernel(x, z, SparseSet(x[m_old:], z[m_old:]), self.zeta)   # (m, m_new)
        kmm = np.zeros((len(z), len(z)))
        kmm[:m_old, :m_old] = self.kmm_
        kmm[:, m_old:] = k_new
        kmm[m_old:, :] = k_new.T
        kmm[np.arange(m_old, len(z)), np.arange(m_old, len(z))] += self.jitter
        self.kmm_ = kmm

    def _hyper(self) -> Hyper:
        column = np.array([self.signal_variance_[int(z)] for z in self.sparse_.species])
        return Hyper(column, dict(self.noise_))

    def _solve(self) -> None:
        stats = {g: st for g, st in self.stats_.items() if st.n}
        self.posterior_ = solve(self.kmm_, stats, self._hyper())
        self.version += 1
        log.info("solved: %d sparse points, %d observations, log likelihood %.6g",
                 len(self.sparse_), sum(st.n for st in stats.values()),
                 self.posterior_.log_likelihood)

    def update(self, frames, *, n_sparse: int | dict | None = None,
               sparse_atoms: Sequence[tuple[int, int]] | None = None,
               executor: Executor | None = None) -> SparseGP:
        """Add labelled structures (and sparse points) without recomputing what is known.

        Parameters
        ----------
        frames : list of ase.Atoms, list of Frame, Dataset or path
        n_sparse : int or dict, optional
            New sparse points per species (a dict maps symbol or Z to a count), chosen among the
            new frames' environments by highest remaining variance.
        sparse_atoms : sequence of (frame index, atom index) pairs, optional
            Exactly these environments as new sparse points; frame indices count the frames
            passed in (the format of :meth:`fit`).  Give ``n_sparse`` or ``sparse_atoms`` (or
            neither: no new sparse points), not both.
        executor : concurrent.futures.Executor, optional

        Notes
        -----
        New frames cost their own Jacobians.  New sparse points also need the Jacobians of every
        earlier training frame (recomputed, never stored).  If anything fails (a bad frame, a
        worker that dies) the model is left exactly as it was before the call.
        """
        self._check_fitted()
        if n_sparse is not None and sparse_atoms is not None:
            raise SettingsError("give update() n_sparse (how many new sparse points per species) "
                                "or sparse_atoms (which ones), not both")
        if n_sparse is not None and not isinstance(n_sparse, (int, np.integer, dict)):
            raise SettingsError(f"n_sparse={n_sparse!r}: a count (int) or a dict species -> "
                                "count; to name atoms use sparse_atoms=[(frame, atom), ...]")
        frames = self._frames(frames)
        features = self._features(frames)
        if n_sparse is not None:
            origin = self._select(frames, features, n_sparse, "variance", cap=True)
        elif sparse_atoms is not None:
            origin = _sparse_pairs(sparse_atoms, frames)
        else:
            origin = np.zeros((0, 2), dtype=np.int64)
        origin[:, 0] += len(self.frames_)
        saved = self._state()
        try:
            e0 = self._grown_e0(frames)
            if e0 is not None:
                self.e0_ = e0
            self._add(frames, features, origin, executor, rebuild=e0 is not None)
        except BaseException:
            self.__dict__.update(saved)   # a failed update leaves the model as it was
            raise
        return self

    def _grown_e0(self, new_frames: list[Frame]) -> ReferenceEnergies | None:
        """e0 refitted on all frames if the new ones widen the composition space, else None.

        With ``e0`` "auto", "fit" or "isolated", e0 is re-derived (as a fresh fit on the union
        would) when the compositions of the energy-labelled frames span more dimensions than
        before, e.g. the first CuAu frame of a run that started on pure Cu.  Within the same
        composition space e0 stays as it is, so that the model does not drift label by label.
        """
        if not isinstance(self.e0, str):
            return None
        species = sorted({int(z) for f in self.frames_ + new_frames for z in f.atoms.numbers})

        def rank(frames) -> int:
            counts = [[np.count_nonzero(f.atoms.numbers == z) for z in species]
                      for f in frames if f.energy is not None]
            return int(np.linalg.matrix_rank(np.array(counts, dtype=float))) if counts else 0

        if rank(self.frames_ + new_frames) == rank(self.frames_):
            return None
        e0 = reference_energies(Dataset(self.frames_ + new_frames), self.e0)
        if e0.energies == self.e0_.energies:
            return None
        log.info("the compositions span more species than before: e0 refitted from %s to %s "
                 "eV; energy rows rebuilt", self.e0_.to_dict(), e0.to_dict())
        return e0

    def _state(self) -> dict:
        """References to everything :meth:`_add` replaces, and copies of what it mutates."""
        names = ("frames_", "features_", "sparse_", "sparse_origin_", "kmm_", "posterior_",
                 "version", "e0_")
        state = {n: getattr(self, n) for n in names}
        state["stats_"] = {g: copy.deepcopy(st) for g, st in self.stats_.items()}
        return state

    def optimise_hyperparameters(self, *, max_iterations: int = 200):
        """Maximise the log marginal likelihood over signal and noise levels, then re-solve.

        Returns
        -------
        gpmlip.gp.hyper.HyperResult
            Optimal values, likelihood before and after, and any parameter stuck at a bound.
        """
        from gpmlip.gp.hyper import optimise

        self._check_fitted()
        return optimise(self, max_iterations=max_iterations)

    # -- prediction ------------------------------------------------------------------------
    @property
    def pair_cutoff(self) -> float:
        """Distance (Å) beyond which a neighbour contributes nothing to a local energy."""
        return float(self.descriptor.neighbour_cutoff)

    def _check_species(self, numbers) -> None:
        missing = sorted(set(np.asarray(numbers).tolist()) - set(self.sparse_.species.tolist()))
        if missing and set(missing) <= set(self.species):
            raise UnknownSpeciesError(
                f"the model has no sparse points for {[chemical_symbols[z] for z in missing]}: "
                "it was not trained on them; add training structures that contain them")

    def _local(self, features: np.ndarray, species: np.ndarray, *, gradient: bool,
               variance: bool):
        """Local energies (with e0), dE/dq per atom and local variances, in blocks of atoms so
        that the (atoms x sparse) kernel block stays small."""
        post = self.posterior_
        kernel = unit_kernel(self.zeta, species, self.sparse_.species)
        e0 = np.array([self.e0_.energies[int(z)] for z in species])
        sigma2 = np.array([self.signal_variance_[int(z)] for z in species])
        energies = np.empty(len(species))
        grad = np.empty_like(features) if gradient else None
        var = np.empty(len(species)) if variance else None
        x, zx = self.sparse_.features, self.sparse_.species   # unit rows already
        for a in range(0, len(species), PREDICT_BLOCK):
            b = min(a + PREDICT_BLOCK, len(species))
            values, g, k = kernel.local_terms(features[a:b], species[a:b], x, zx, post.beta,
                                              gradient=gradient, rows=variance)
            energies[a:b] = values + e0[a:b]
            if gradient:
                grad[a:b] = g
            if variance:
                var[a:b] = post.variance(k, sigma2[a:b])
        return energies, grad, var, sigma2

    def pair_energies(self, centre_numbers, i, j, r_ij, neighbour_numbers, *,
                      std: bool = False) -> PairEnergies:
        """Per-atom energies and ``dE/dr_ij`` from a pair list: no ASE, no neighbour search.

        The entry point for any MD engine that owns its neighbour list (LAMMPS's pair style
        calls it); :meth:`predict` and :class:`gpmlip.GPCalculator` run on the same path.

        Parameters
        ----------
        centre_numbers : array of int, shape (n_centres,)
            Atomic numbers of the centres ``0 .. n_centres - 1``.
        i : array of int, shape (n_pairs,)
            Centre index of every pair.
        j : array of int, shape (n_pairs,)
            Neighbour index of every pair (not used for the energy; forces go to it).
        r_ij : array, shape (n_pairs, 3)
            ``r_j - r_i`` in Å; a periodic image or a ghost atom is its own pair.  Pairs
            farther than :attr:`pair_cutoff` may be included: they contribute nothing.
        neighbour_numbers : array of int, shape (n_pairs,)
            Atomic numbers of the neighbours.
        std : bool, default False
            Also the per-atom normalised local-energy std (costs the variance).

        Returns
        -------
        PairEnergies
            ``energies`` (n_centres,) in eV, summing to the total energy; ``dE_dr``
            (n_pairs, 3), with forces ``F_j -= dE_dr[p]``, ``F_i += dE_dr[p]`` and virial
            ``W = -sum_p r_ij (x) dE_dr[p]``; ``std`` (n_centres,) in [0, 1] or None.
        """
        self._check_fitted()
        pairs = PairList(centre_species=np.asarray(centre_numbers, dtype=np.int64),
                         centre=np.asarray(i, dtype=np.int64),
                         vector=np.asarray(r_ij, dtype=float),
                         neighbour_species=np.asarray(neighbour_numbers, dtype=np.int64),
                         neighbour=np.asarray(j, dtype=np.int64))
        self._check_species(pairs.centre_species)
        return self._evaluate(pairs, gradient=True, variance=std)

    def _evaluate(self, pairs: PairList, *, gradient: bool, variance: bool) -> PairEnergies:
        features = self.descriptor.features(pairs)
        energies, grad, var, sigma2 = self._local(features, pairs.centre_species,
                                                  gradient=gradient, variance=variance)
        d_e = self.descriptor.backward(pairs, grad) if gradient else None
        std = None if var is None else normalised_std(var, sigma2)
        return PairEnergies(energies=energies, dE_dr=d_e, std=std, variance=var)

    def local_std_normalised(self, features: np.ndarray, species: np.ndarray) -> np.ndarray:
        """:attr:`Prediction.local_std_normalised` of environments given by their descriptors.

        Parameters
        ----------
        features : ndarray, shape (n, n_features)
            Descriptor vectors (``descriptor.describe(atoms).features``; need not be unit length).
        species : ndarray of int, shape (n,)

        Returns
        -------
        ndarray, shape (n,)
            The normalised local-energy std, in [0, 1], that :meth:`predict` gives these atoms.
        """
        self._check_fitted()
        species = np.asarray(species, dtype=np.int64)
        _, _, var, sigma2 = self._local(np.asarray(features, dtype=float), species,
                                        gradient=False, variance=True)
        return normalised_std(var, sigma2)

    def predict(self, atoms: Atoms, *, forces: bool = True, stress: bool = True,
                force_std: bool = False, variance: bool = True) -> Prediction:
        """Energy, forces, stress, local energies and their uncertainties for one structure.

        Parameters
        ----------
        atoms : ase.Atoms
        forces, stress : bool
            Compute them (by back-propagation through the descriptor: no Jacobian).
        force_std : bool
            Also the force uncertainty (needs the descriptor Jacobian and one kernel-row
            contraction per sparse point: for labelling decisions, not for every MD step).
        variance : bool, default True
            Compute the local-energy variances (plain MD does not need them); without them the
            variance fields of the result are None.
        """
        self._check_fitted()
        self._check_species(atoms.numbers)
        volume = abs(atoms.cell.volume) if atoms.pbc.all() else 0.0
        want_stress = stress and volume > 1e-8
        pairs = self.descriptor.pair_list(atoms)
        out = self._evaluate(pairs, gradient=forces or want_stress, variance=variance)
        result = Prediction(energy=float(out.energies.sum()), energies=out.energies, forces=None,
                            stress=None, local_variance=out.variance,
                            local_std_normalised=out.std)
        if forces:
            result.forces = pair_forces(pairs, out.dE_dr, len(atoms))
        if want_stress:
            s = np.einsum("pa,pb->ab", out.dE_dr, pairs.vector) / volume
            result.stress = 0.5 * (s + s.T)
        if force_std:
            result.force_std = self._force_std(atoms)
        return result

    def _force_std(self, atoms: Atoms) -> np.ndarray:
        """DTC standard deviation of every force component, shape (n_atoms, 3)."""
        env = self.descriptor.describe(atoms, gradients=True)
        rows = force_rows(env, self.sparse_, self.zeta).reshape(3 * len(atoms), -1)
        prior = force_prior_variance(env, self.zeta, self.signal_variance_).ravel()
        columns = np.array([self.signal_variance_[int(z)] for z in self.sparse_.species])
        return np.sqrt(self.posterior_.dtc_variance(prior, rows, columns)).reshape(-1, 3)

    # -- files -----------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the model as npz + JSON metadata (see :mod:`gpmlip.io`); never pickle."""
        from gpmlip.io import save_model

        save_model(self, path)
