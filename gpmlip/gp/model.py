"""The sparse Gaussian-process potential: fit, update, predict with variances."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import Executor

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from gpmlip.baselines import Baseline, BaselineSpec, add_to_prediction, make_baseline
from gpmlip.gp.covariance import SparseSet, unit_kernel, local_kernel
from gpmlip.descriptors.engine import PairList
from gpmlip.descriptors.neighbours import check_separation
from gpmlip.descriptors.protocol import Descriptor
from gpmlip.data import (Dataset, Frame, as_frames, load_frames, reference_energies,
                         warn_missing_labels)
from gpmlip.data.reference import ReferenceEnergies
from gpmlip.errors import (DataError, NotFittedError, NumericalError, SettingsError,
                           UnknownSpeciesError)
from gpmlip.gp import hyper, selection
from gpmlip.gp.calibration import (Calibration, fit_calibration, force_variance_parts,
                                    held_out_residuals, leave_one_out_residuals, loo_subset)
from gpmlip.gp import report as fit_report
from gpmlip.gp import distributed
from gpmlip.gp.observations import NoiseModel, observations
from gpmlip.gp.prediction import ForceUncertainty, PairEnergies, Prediction, normalised_std, pair_forces
from gpmlip.gp.solver import GramStats, Hyper, solve
from gpmlip.gp.state import FittedState
from gpmlip.gp import energy_std as energy_std_module
from gpmlip.gp import terms as gp_terms
from gpmlip.gp.twobody import TwoBody
from gpmlip.gp.container import write_model_file
from gpmlip.gp.kernels import NormalizedDotProduct
from gpmlip.progress import progress_bar
from gpmlip.species import atomic_number, by_atomic_number

log = logging.getLogger(__name__)

PREDICT_BLOCK = 512
"""Atoms whose kernel rows are formed at once in prediction (bounds the atoms x sparse block)."""

TrainingData = Dataset | Frame | Sequence[Frame] | Sequence[Atoms] | str | os.PathLike
"""What :meth:`SparseGP.fit` and :meth:`SparseGP.update` accept as labelled structures."""

DEFAULT_SIGMAS = {"energy": 0.005, "forces": 0.05, "stress": 0.001, "virial": 0.5}
"""Default noise: eV/atom (times sqrt(n_atoms) per structure), eV/Å, eV/Å³ (0.16 GPa) with
``stress_noise="absolute"``, and eV/atom of virial (times sqrt(n_atoms), divided by the volume for a
stress) with ``stress_noise="per_atom"`` (the default).  The virial default 0.5 was measured on
the Zuo 2020 Li, Si, Mo sets (benchmarks/stress_noise_sweep.py): test energy MAE within 1 % of the
energy+forces fit on all three, stress MAE lower on all three; 0.2 cost Mo 4 % and 0.1 16 %."""

STRESS_NOISE = ("per_atom", "absolute")


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
    descriptor : Descriptor
        Per-atom descriptor with Jacobians and a pair-list path (:class:`gpmlip.SOAP`, or any
        :class:`~gpmlip.descriptors.Descriptor`).
    zeta : int, default 4
        Exponent of the normalised dot-product kernel.
    n_sparse : int or dict, default 200
        Sparse points per species (a dict maps symbol or Z to a count).
    sparse_method : {"cur", "kmeans", "kmeans++", "random", "variance"}
        How :meth:`fit` chooses them (see :func:`gpmlip.gp.selection.select`).
    signal_std : float or dict, default 1.0
        ``sigma_z`` in eV per species: prior spread of a local energy (GAP's ``delta``).
    energy_sigma, force_sigma : float
        Noise in eV/atom (scaled by sqrt(n_atoms) for a structure) and eV/Å.
    stress_noise : {"per_atom", "absolute"}, default "per_atom"
        How stress labels are weighted.  ``"per_atom"`` (GAP's ``sigma_per_atom=T``): the noise
        is ``virial_sigma`` eV per atom on the virial, scaled by sqrt(n_atoms), so a stress
        component's std is ``virial_sigma sqrt(n_atoms) / V`` and a cell's stress weighs the
        same whatever its size.  ``"absolute"`` (models fitted before this setting, which load
        with it): ``stress_sigma`` eV/Å³ for every cell.
    virial_sigma : float, default 0.5
        Virial noise in eV/atom (``stress_noise="per_atom"``).
    stress_sigma : float, default 0.001
        Stress noise in eV/Å³ (``stress_noise="absolute"``).
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
    baseline : str, dict, Baseline or callable, optional
        A physical model learnt on top of (see :mod:`gpmlip.baselines`): ``"zbl"``,
        ``{"name": "zbl", "inner": 1.0, "outer": 2.0}``, ``"d3"``, any registered ASE
        calculator, or a calculator factory.  Its energy, forces and stress are subtracted from
        every label and added to every prediction; it adds no variance.
    two_body : TwoBody, optional
        Add GAP's two-body term (a GP on pair distances per species pair, with its own signal
        std) to the SOAP kernel; see :mod:`gpmlip.gp.twobody`.
    """

    def __init__(self, descriptor: Descriptor, *, zeta: int = 4, n_sparse: int | dict = 200,
                 sparse_method: str = "cur", signal_std: float | dict = 1.0,
                 energy_sigma: float = DEFAULT_SIGMAS["energy"],
                 force_sigma: float = DEFAULT_SIGMAS["forces"],
                 stress_sigma: float = DEFAULT_SIGMAS["stress"],
                 stress_noise: str = "per_atom", virial_sigma: float = DEFAULT_SIGMAS["virial"],
                 config_sigmas: dict | None = None, e0: dict | str = "auto",
                 jitter: float = 1e-8, seed: int = 0, n_jobs: int | None = None,
                 baseline: BaselineSpec = None,
                 two_body: TwoBody | None = None) -> None:
        self.descriptor = descriptor
        self.zeta = zeta
        self.n_sparse = n_sparse
        self.sparse_method = sparse_method
        self.signal_std = signal_std
        self.energy_sigma = energy_sigma
        self.force_sigma = force_sigma
        self.stress_sigma = stress_sigma
        self.stress_noise = stress_noise
        self.virial_sigma = virial_sigma
        self.config_sigmas = config_sigmas or {}
        self.e0 = e0
        self.jitter = jitter
        self.seed = seed
        self.n_jobs = descriptor.n_jobs if n_jobs is None else n_jobs
        self.baseline: Baseline | None = make_baseline(baseline, descriptor.species)
        self.two_body = two_body
        self.state_: FittedState | None = None
        self.calibration: Calibration | None = None   # of the force std; None: raw
        self.energy_calibration: Calibration | None = None   # of the energy std; None: raw
        self.fit_report_ = None   # a gpmlip.gp.report.FitReport after fit
        self.build_report_: dict | None = None   # how gpmlip.build_model chose the settings
        self._version = 0   # of the last state, so that a refit keeps counting up
        self.executor: Executor | None = None
        """Where :meth:`fit` and :meth:`update` compute the training statistics when given no
        executor (e.g. a Parsl executor on a cluster, :mod:`gpmlip.gp.distributed`; what the
        on-the-fly learner's refits use); a run-time setting, never saved."""

    # -- state -----------------------------------------------------------------------------
    @property
    def state(self) -> FittedState:
        """The fitted state (frames, sparse points, Gram statistics, posterior, ...)."""
        self.check_fitted()
        return self.state_

    @property
    def version(self) -> int:
        """Counts solves (fit, update, hyper-parameters, load): changes when predictions may."""
        return self._version if self.state_ is None else self.state_.version

    @property
    def species(self) -> tuple[int, ...]:
        """Atomic numbers the model was built for."""
        return tuple(self.descriptor.species)

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` (or loading) has happened."""
        return self.state_ is not None

    @property
    def n_sparse_points(self) -> int:
        """Number of sparse points in the model."""
        return len(self.state_.sparse) if self.is_fitted else 0

    @property
    def log_likelihood(self) -> float:
        """DTC log marginal likelihood of the training data at the current hyper-parameters."""
        return self.state.posterior.log_likelihood

    @property
    def training_frames(self) -> list[Frame]:
        """The labelled structures the model was trained on, in the order added (a copy)."""
        return list(self.state.frames)

    @property
    def sparse_set(self) -> SparseSet:
        """The sparse points: unit-length features (m, n_features) and species (m,)."""
        return self.state.sparse

    @property
    def signal_variances(self) -> dict[int, float]:
        """Fitted ``sigma_z^2`` per atomic number, eV^2 (a copy; without the terms' signal
        variances, which are ``state.signal_variance[term.key]``)."""
        return self.state.species_signal_variance

    @property
    def noise(self) -> dict[str, float]:
        """Fitted noise standard deviations (a copy): ``energy`` eV/atom, ``forces``, ``stress``."""
        return dict(self.state.noise)

    # Fitted attributes in scikit-learn's style, read-only views of ``state``.
    posterior_ = property(lambda self: None if self.state_ is None else self.state_.posterior,
                          doc="``state.posterior`` (None before fitting).")
    frames_ = property(lambda self: self._fitted("frames"), doc="``state.frames``.")
    features_ = property(lambda self: self._fitted("features"), doc="``state.features``.")
    sparse_ = property(lambda self: self._fitted("sparse"), doc="``state.sparse``.")
    sparse_origin_ = property(lambda self: self._fitted("sparse_origin"),
                              doc="``state.sparse_origin``.")
    kmm_ = property(lambda self: self._fitted("kmm"), doc="``state.kmm``.")
    stats_ = property(lambda self: self._fitted("stats"), doc="``state.stats``.")
    e0_ = property(lambda self: self._fitted("e0"), doc="``state.e0``.")
    signal_variance_ = property(lambda self: self._fitted("signal_variance"),
                                doc="``state.signal_variance``.")
    noise_ = property(lambda self: self._fitted("noise"), doc="``state.noise``.")

    def _fitted(self, name: str):
        if self.state_ is None:
            raise AttributeError(f"{name}_: the model is not fitted")
        return getattr(self.state_, name)

    def check_fitted(self) -> None:
        """Raise :class:`~gpmlip.NotFittedError` unless the model is fitted."""
        if not self.is_fitted:
            raise NotFittedError("the model is not fitted: call model.fit(frames) or "
                                 "gpmlip.load_model(path) first")

    def _validate_settings(self) -> None:
        if self.zeta not in range(1, 13):
            raise SettingsError(f"zeta={self.zeta}: use a small positive integer (2 or 4)")
        if self.stress_noise not in STRESS_NOISE:
            raise SettingsError(f"stress_noise={self.stress_noise!r}: use one of {STRESS_NOISE}")
        for name in ("energy_sigma", "force_sigma", "stress_sigma", "virial_sigma", "jitter"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise SettingsError(f"{name}={value}: use a positive number")
        if self.two_body is not None and not isinstance(self.two_body, TwoBody):
            raise SettingsError(f"two_body={self.two_body!r}: give a gpmlip.TwoBody(...)")

    @property
    def term_settings(self) -> list:
        """The settings of the GP's terms beyond SOAP (each has ``fitted(...)`` giving its
        :class:`~gpmlip.gp.terms.Term`): the two-body term's, if set."""
        return [t for t in (self.two_body,) if t is not None]

    def _frames(self, frames: TrainingData) -> list[Frame]:
        """Labelled frames from any :data:`TrainingData`, every label checked (frames built by
        hand too: a NaN label would give a NaN model)."""
        return as_frames(frames, species=self.species)

    def learnt_labels(self, frames: list[Frame]) -> list[Frame]:
        """The frames with the baseline subtracted from their labels: what the GP learns.

        Parameters
        ----------
        frames : list of Frame

        Returns
        -------
        list of Frame
            ``frames`` itself without a baseline, else new frames with the residual labels.
        """
        return frames if self.baseline is None else [self.baseline.residual(f) for f in frames]

    @property
    def _pair_baseline(self) -> Baseline | None:
        """The baseline if it is a pair potential within :attr:`pair_cutoff` (added on the pair
        list, so in LAMMPS too), else None."""
        b = self.baseline
        return b if b is not None and b.cutoff is not None and b.cutoff <= self.pair_cutoff \
            else None

    def _features(self, frames: list[Frame]) -> list[np.ndarray]:
        return [self.descriptor.describe(f.atoms).features for f in frames]

    # -- fitting ---------------------------------------------------------------------------
    def fit(self, frames: TrainingData, *, sparse_atoms: Sequence[tuple[int, int]] | None = None,
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
        warn_missing_labels(frames)
        self._version = self.version
        self.state_ = None   # a fit that fails half-way leaves an unfitted model
        self.calibration = None   # fitted for other data: calibrate again
        self.energy_calibration = None
        e0 = self.e0 if isinstance(self.e0, ReferenceEnergies) else \
            reference_energies(Dataset(self.learnt_labels(frames)), self.e0)
        signal = {z: float(s) ** 2 for z, s in
                  _per_species(self.signal_std, self.species, "signal_std").items()}
        noise = {"energy": float(self.energy_sigma), "forces": float(self.force_sigma),
                 "stress": float(self.virial_sigma if self.stress_noise == "per_atom"
                                 else self.stress_sigma)}
        empty = FittedState.empty(self.descriptor.n_features, e0, signal, noise,
                                  version=self._version)
        terms = tuple(t.fitted(self.descriptor.neighbour_cutoff, self.species, self.jitter)
                      for t in self.term_settings)
        signal.update({t.key: t.sigma ** 2 for t in terms})
        empty = empty.replace(signal_variance=signal, terms=terms)
        features = self._features(frames)
        if sparse_atoms is None:
            origin = self._select(empty, frames, features, self.n_sparse, self.sparse_method)
        else:
            origin = _sparse_pairs(sparse_atoms, frames)
        self.state_ = self._grown(empty, frames, features, origin, executor or self.executor,
                                  report=True)
        return self

    def _select(self, state: FittedState, frames, features, n_sparse, method,
                cap: bool = False) -> np.ndarray:
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
                                   existing=state.sparse.features[state.sparse.species == z],
                                   label=chemical_symbols[z])
            picked.extend(where[k] for k in idx)
        return np.array(picked, dtype=np.int64).reshape(-1, 2)

    def _grown(self, state: FittedState, new_frames, new_features, origin, executor,
               rebuild: bool = False, report: bool = False) -> FittedState:
        """``state`` with frames and sparse points added (origin indices refer to
        ``state.frames + new_frames``), solved; ``rebuild``: recompute every frame's
        observations (e0 changed).  ``state`` itself is not modified."""
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
            kmm = self._grown_kmm(kmm, sparse, m_old)
        m_all = len(sparse) + sum(len(t) for t in state.terms)
        if len(sparse) > m_old or rebuild or len(state.stats["energy"].z) != m_all:
            # New kernel columns: every known frame contributes to them.  Its Jacobian is
            # recomputed (never stored) and its rows are folded in again for all columns.
            stats = {g: GramStats.empty(m_all) for g in state.stats}
            todo = frames
        else:
            stats = state.copied_stats()
            todo = list(new_frames)
        noise = NoiseModel(self.config_sigmas, self.stress_noise == "per_atom")
        learnt = self.learnt_labels(todo)
        e0_totals = [state.e0.of(f.atoms.numbers) for f in todo]
        bar = progress_bar(total=len(todo), desc="kernel rows", unit="frame")
        if executor is not None or (self.n_jobs > 1 and len(todo) > 1):
            # chunks of structures on workers, their statistics joined exactly (TSQR)
            job = distributed.ChunkJob(self.descriptor.to_dict(), self.zeta, sparse,
                                       state.terms, noise, tuple(stats))
            with bar:
                found = distributed.statistics(job, learnt, e0_totals, stats,
                                               executor=executor, n_jobs=self.n_jobs,
                                               progress=bar.update)
            pressure = ([p[1] for p in found], [p[2] for p in found], [p[0] for p in found])
        else:
            pressure = self._streamed(todo, learnt, e0_totals, sparse, state.terms, noise,
                                      stats, bar)
        solved = self._solved(state.replace(frames=frames, features=features, sparse=sparse,
                                            sparse_origin=sparse_origin, kmm=kmm, stats=stats))
        if report:
            self.fit_report_ = fit_report.fit_report(solved, *pressure)
        return solved

    def _streamed(self, todo, learnt, e0_totals, sparse, terms, noise, stats, bar):
        """Rows of every structure in this process, folded into ``stats`` one at a time;
        returns the pressure rows, labels and structure indices (for the fit report)."""
        rows = gp_terms.training_rows(todo, self.descriptor.to_dict(), self.zeta, sparse, terms,
                                      self.descriptor.pair_list)
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

    def _grown_kmm(self, kmm_old: np.ndarray, sparse: SparseSet, m_old: int) -> np.ndarray:
        x, z = sparse.features, sparse.species
        k_new = local_kernel(x, z, SparseSet(x[m_old:], z[m_old:]), self.zeta)   # (m, m_new)
        kmm = np.zeros((len(z), len(z)))
        kmm[:m_old, :m_old] = kmm_old
        kmm[:, m_old:] = k_new
        kmm[m_old:, :] = k_new.T
        kmm[np.arange(m_old, len(z)), np.arange(m_old, len(z))] += self.jitter
        return kmm

    def _solved(self, state: FittedState) -> FittedState:
        """``state`` with its posterior solved and the next version number."""
        stats = {g: st for g, st in state.stats.items() if st.n}
        posterior = solve(state.system_kmm, stats,
                          Hyper(state.column_variance, dict(state.noise)))
        log.info("solved: %d sparse points, %d observations, log likelihood %.6g",
                 len(state.sparse), sum(st.n for st in stats.values()),
                 posterior.log_likelihood)
        return state.replace(posterior=posterior, version=self.version + 1)

    def resolve(self, state: FittedState) -> None:
        """Install ``state`` with its posterior solved again (O(m^3), no kernel rows recomputed).

        For a state derived from :attr:`state` with other noise levels, signal variances or Gram
        statistics (``state.replace(...)``); see ``gpmlip.gp.validation.set_hyperparameters``.
        """
        self.state_ = self._solved(state)

    def update(self, frames: TrainingData, *, n_sparse: int | dict | None = None,
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
        state = self.state
        if n_sparse is not None and sparse_atoms is not None:
            raise SettingsError("give update() n_sparse (how many new sparse points per species) "
                                "or sparse_atoms (which ones), not both")
        if n_sparse is not None and not isinstance(n_sparse, (int, np.integer, dict)):
            raise SettingsError(f"n_sparse={n_sparse!r}: a count (int) or a dict species -> "
                                "count; to name atoms use sparse_atoms=[(frame, atom), ...]")
        frames = self._frames(frames)
        features = self._features(frames)
        if n_sparse is not None:
            origin = self._select(state, frames, features, n_sparse, "variance", cap=True)
        elif sparse_atoms is not None:
            origin = _sparse_pairs(sparse_atoms, frames)
        else:
            origin = np.zeros((0, 2), dtype=np.int64)
        origin[:, 0] += len(state.frames)
        e0 = self._grown_e0(state, frames)
        base = state if e0 is None else state.replace(e0=e0)
        # a new state, swapped in only when complete: a failed update leaves the model as it was
        self.state_ = self._grown(base, frames, features, origin, executor or self.executor,
                                  rebuild=e0 is not None)
        return self

    def _grown_e0(self, state: FittedState,
                  new_frames: list[Frame]) -> ReferenceEnergies | None:
        """e0 refitted on all frames if the new ones widen the composition space, else None.

        With ``e0`` "auto", "fit" or "isolated", e0 is re-derived (as a fresh fit on the union
        would) when the compositions of the energy-labelled frames span more dimensions than
        before, e.g. the first CuAu frame of a run that started on pure Cu.  Within the same
        composition space e0 stays as it is, so that the model does not drift label by label.
        """
        if not isinstance(self.e0, str):
            return None
        old = state.frames
        species = sorted({int(z) for f in old + new_frames for z in f.atoms.numbers})

        def rank(frames) -> int:
            counts = [[np.count_nonzero(f.atoms.numbers == z) for z in species]
                      for f in frames if f.energy is not None]
            return int(np.linalg.matrix_rank(np.array(counts, dtype=float))) if counts else 0

        if rank(old + new_frames) == rank(old):
            return None
        e0 = reference_energies(Dataset(self.learnt_labels(old + new_frames)), self.e0)
        if e0.energies == state.e0.energies:
            return None
        log.info("the compositions span more species than before: e0 refitted from %s to %s "
                 "eV; energy rows rebuilt", state.e0.to_dict(), e0.to_dict())
        return e0

    def optimise_hyperparameters(self, *, max_iterations: int = 200):
        """Maximise the log marginal likelihood over signal and noise levels, then re-solve.

        Returns
        -------
        gpmlip.gp.hyper.HyperResult
            Optimal values, likelihood before and after, and any parameter stuck at a bound.
        """
        state = self.state
        result = hyper.optimise(state, self.species, max_iterations=max_iterations)
        self.state_ = self._solved(state.replace(signal_variance=result.signal_variance,
                                                 noise=result.noise))
        result.log_likelihood = self.log_likelihood
        log.info("hyper-parameters: %s; log likelihood %.6g -> %.6g (%d evaluations)",
                 {k: f"{v:.4g}" for k, v in result.values.items()},
                 result.initial_log_likelihood, result.log_likelihood, result.n_evaluations)
        return result

    # -- prediction ------------------------------------------------------------------------
    @property
    def pair_cutoff(self) -> float:
        """Distance (Å) beyond which a neighbour contributes nothing to a local energy."""
        return float(self.descriptor.neighbour_cutoff)

    def _check_species(self, numbers) -> None:
        known = set(self.state_.sparse.species.tolist())
        missing = sorted(set(np.asarray(numbers).tolist()) - known)
        if missing and set(missing) <= set(self.species):
            raise UnknownSpeciesError(
                f"the model has no sparse points for {[chemical_symbols[z] for z in missing]}: "
                "it was not trained on them; add training structures that contain them")

    def _local(self, features: np.ndarray, species: np.ndarray, *, gradient: bool,
               variance: bool, extra: Sequence | None = None):
        """Local energies (with e0), dE/dq per atom and local variances, in blocks of atoms so
        that the (atoms x sparse) kernel block stays small; ``extra``: each term's local rows
        and priors on the structure's pair list (``Term.local``), joined to the SOAP rows for
        the variances (their energies are added by the caller); None without a pair list (the
        SOAP term's own variance).  The returned prior variance is sigma_z^2 plus the terms'."""
        state = self.state_
        post = state.posterior
        kernel = unit_kernel(self.zeta, species, state.sparse.species)
        e0 = np.array([state.e0.energies[int(z)] for z in species])
        sigma2 = np.array([state.signal_variance[int(z)] for z in species])
        for t, local in zip(state.terms, extra or ()):
            if local.prior is not None:
                sigma2 = sigma2 + state.signal_variance[t.key] * local.prior
        m = len(state.sparse)
        energies = np.empty(len(species))
        grad = np.empty_like(features) if gradient else None
        var = np.empty(len(species)) if variance else None
        x, zx = state.sparse.features, state.sparse.species
        for a in range(0, len(species), PREDICT_BLOCK):
            b = min(a + PREDICT_BLOCK, len(species))
            values, g, k = kernel.local_terms(features[a:b], species[a:b], x, zx, post.beta[:m],
                                              gradient=gradient, rows=variance)
            if variance and state.terms:
                k = np.hstack([k, *(local.rows[a:b] for local in extra)] if extra is not None
                              else [k, np.zeros((b - a, state.n_columns - m))])
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
        self.check_fitted()
        if self.baseline is not None and self._pair_baseline is None:
            raise SettingsError(f"the model's baseline {self.baseline!r} is not a pair potential "
                                f"within the pair cutoff {self.pair_cutoff:g} Å: a pair list "
                                "cannot evaluate it (in LAMMPS add it as its own pair style)")
        pairs = PairList(centre_species=np.asarray(centre_numbers, dtype=np.int64),
                         centre=np.asarray(i, dtype=np.int64),
                         vector=np.asarray(r_ij, dtype=float),
                         neighbour_species=np.asarray(neighbour_numbers, dtype=np.int64),
                         neighbour=np.asarray(j, dtype=np.int64))
        check_separation(pairs.centre, pairs.neighbour, pairs.vector)
        self._check_species(pairs.centre_species)
        return self._evaluate(pairs, gradient=True, variance=std)

    def _evaluate(self, pairs: PairList, *, gradient: bool, variance: bool) -> PairEnergies:
        features = self.descriptor.features(pairs)
        state = self.state_
        beta = state.posterior.beta
        extra = [t.local(pairs, beta[cols], gradient=gradient, rows=variance) for t, cols in
                 zip(state.terms, gp_terms.column_blocks(len(state.sparse), state.terms))]
        energies, grad, var, sigma2 = self._local(features, pairs.centre_species,
                                                  gradient=gradient, variance=variance,
                                                  extra=extra)
        d_e = self.descriptor.backward(pairs, grad) if gradient else None
        for local in extra:
            energies = energies + local.energies
            d_e = d_e + local.dE_dr if gradient else None
        if self._pair_baseline is not None:
            e_b, d_b = self._pair_baseline.pair_terms(pairs.centre_species, pairs.centre,
                                                      pairs.vector, pairs.neighbour_species)
            energies = energies + e_b
            d_e = None if d_e is None else d_e + d_b
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
            With a two-body term (which needs the pair list, not the descriptor), it is the
            SOAP term's own: ``sqrt(v_SOAP) / sigma_z``.
        """
        self.check_fitted()
        species = np.asarray(species, dtype=np.int64)
        _, _, var, sigma2 = self._local(np.asarray(features, dtype=float), species,
                                        gradient=False, variance=True)
        return normalised_std(var, sigma2)

    def energy_covariance(self, structures: Sequence[Atoms], *,
                          calibrated: bool = True) -> np.ndarray:
        """Posterior covariance of the total energies of ``structures``, eV^2, shape (k, k).

        The std of an energy difference ``E_a - E_b`` (a formation or surface energy, a barrier)
        is ``sqrt(C[a, a] + C[b, b] - 2 C[a, b])``: errors shared by similar environments cancel
        in it.  With ``calibrated`` (default) it is scaled by the model's energy calibration
        when it has one (:attr:`energy_calibration`, fitted by :meth:`calibrate`; see
        :mod:`gpmlip.gp.energy_std`); else the raw DTC covariance.
        """
        cov = energy_std_module.energy_covariance(self, list(structures))
        return energy_std_module.calibrated(self, cov) if calibrated else cov

    def predict(self, atoms: Atoms, *, forces: bool = True, stress: bool = True,
                force_std: bool = False, variance: bool = True,
                energy_std: bool = False) -> Prediction:
        """Energy, forces, stress, local energies and their uncertainties for one structure.

        Parameters
        ----------
        atoms : ase.Atoms
        forces, stress : bool
            Compute them (by back-propagation through the descriptor: no Jacobian).
        force_std : bool
            Also the force uncertainty (needs the descriptor Jacobian and one kernel-row
            contraction per sparse point: for labelling decisions, not for every MD step):
            ``force_std`` is calibrated when :attr:`calibration` is set (see :meth:`calibrate`),
            ``force_std_raw`` is the raw DTC std.
        energy_std : bool
            Also the std of the total energy (:meth:`energy_covariance`, with the covariance
            between the atoms' local energies; costs a kernel between all pairs of atoms):
            ``energy_std`` (calibrated when the model has an :attr:`energy_calibration`) and
            ``energy_std_raw``.
        variance : bool, default True
            Compute the local-energy variances (plain MD does not need them); without them the
            variance fields of the result are None.
        """
        self.check_fitted()
        self._check_species(atoms.numbers)
        volume = abs(atoms.cell.volume) if atoms.pbc.all() else 0.0
        want_stress = stress and volume > 1e-8
        pairs = self.descriptor.pair_list(atoms)
        out = self._evaluate(pairs, gradient=forces or want_stress, variance=variance)
        result = Prediction(energy=float(out.energies.sum()), energies=out.energies, forces=None,
                            stress=None, local_variance=out.variance,
                            local_std_normalised=out.std)
        if not np.isfinite(out.energies).all() or (out.dE_dr is not None
                                                   and not np.isfinite(out.dE_dr).all()):
            raise NumericalError("the model predicts a non-finite energy or force for finite "
                                 "positions: its file or its fitted state is damaged (load it "
                                 "again, or refit)")
        if forces:
            result.forces = pair_forces(pairs, out.dE_dr, len(atoms))
        if want_stress:
            s = np.einsum("pa,pb->ab", out.dE_dr, pairs.vector) / volume
            result.stress = 0.5 * (s + s.T)
        if force_std:
            fu = self.force_uncertainty(atoms)
            result.force_std, result.force_std_raw = fu.std, fu.raw
        if energy_std:
            raw = energy_std_module.energy_covariance(self, [atoms])
            result.energy_std_raw = float(np.sqrt(max(raw[0, 0], 0.0)))
            result.energy_std = float(np.sqrt(max(energy_std_module.calibrated(self, raw)[0, 0],
                                                  0.0)))
        if self.baseline is not None and self._pair_baseline is None:
            add_to_prediction(result, self.baseline(atoms))
        return result

    def force_uncertainty(self, atoms: Atoms) -> ForceUncertainty:
        """The force std of every component (calibrated when :attr:`calibration` is set), the raw
        DTC std and the raw variance parts: what :meth:`predict` reports as ``force_std``, the
        on-the-fly trigger and the gate threshold and the run records keep.

        Needs the descriptor Jacobian (see :meth:`predict`).
        """
        self.check_fitted()
        parts = force_variance_parts(self, atoms)
        raw = np.sqrt(parts[..., 0] + parts[..., 1])
        if self.calibration is None:
            return ForceUncertainty(raw, raw, parts, False)
        return ForceUncertainty(self.calibration.std(parts), raw, parts, True)

    def calibrate(self, frames: TrainingData | None = None, *,
                  method: str = "auto", max_frames: int | None = 50) -> Calibration:
        """Fit the force-std calibration on honest residuals and keep it.

        Parameters
        ----------
        frames : list of ase.Atoms, Dataset or a path, optional
            Labelled structures the model was *not* trained on (with forces).  Default: the
            closed-form leave-one-structure-out residuals of the training set
            (:func:`gpmlip.gp.calibration.leave_one_out_residuals`; at most 50 structures).
        method : {"auto", "scale", "parts"}
            See :func:`gpmlip.gp.calibration.fit_calibration`.
        max_frames : int, optional
            Without ``frames``: leave out at most this many training structures (each costs a
            force-variance evaluation); None: all.

        Returns
        -------
        Calibration
            Also stored as :attr:`calibration` (and in the model file on :meth:`save`).
        """
        from gpmlip.gp.validation import leave_one_out

        self.check_fitted()
        if frames is None:
            loo = leave_one_out(self, frames=loo_subset(self, max_frames))
            residuals, parts = leave_one_out_residuals(self, loo=loo)
            source = "leave-one-out"
            energy = self._loo_energy_residuals(loo)
        else:
            data = frames if isinstance(frames, Dataset) else \
                load_frames(frames, species=self.species)
            residuals, parts = held_out_residuals(self, data)
            source = "held-out"
            energy = self._held_out_energy_residuals(data)
        self.calibration = fit_calibration(residuals, parts, method=method, source=source)
        log.info("calibrated: %s", self.calibration.describe())
        if energy is not None and len(energy[0]) >= 2:
            self.energy_calibration = energy_std_module.fit_energy_calibration(*energy,
                                                                               source=source)
            log.info("calibrated: %s", self.energy_calibration.describe())
        return self.calibration

    def _loo_energy_residuals(self, loo):
        """Total-energy residuals (eV), raw variance parts and noise variances (eV^2) of the
        left-out structures with energy labels (None without any)."""
        ok = np.isfinite(loo.energy_residual)
        if not ok.any():
            return None
        n = loo.n_atoms[ok].astype(float)
        frames = self.training_frames
        parts = energy_std_module.energy_variance_parts(
            self, [frames[int(i)].atoms for i in loo.frames[ok]])
        parts[:, 1] = loo.energy_variance[ok] * n ** 2     # the left-out prediction's weights
        return loo.energy_residual[ok] * n, parts, loo.energy_noise_variance[ok] * n ** 2

    def _held_out_energy_residuals(self, data):
        with_energy = [f for f in data if f.energy is not None]
        if not with_energy:
            return None
        atoms = [f.atoms for f in with_energy]
        pred = np.array([self.predict(a, forces=False, stress=False, variance=False).energy
                         for a in atoms])
        ref = np.array([f.energy for f in with_energy])
        n = np.array([f.n_atoms for f in with_energy], dtype=float)
        return (pred - ref, energy_std_module.energy_variance_parts(self, atoms),
                self.state.noise["energy"] ** 2 * n ** 2)

    # -- files -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the model as npz + JSON metadata (see :mod:`gpmlip.gp.container`); never pickle."""
        write_model_file(path, self.state, self._file_settings())

    def _file_settings(self) -> dict:
        """The settings a model file stores beside the state (what
        :func:`gpmlip.gp.files.load_model` reads)."""
        return {
            "descriptor": self.descriptor.to_dict(),
            "kernel": NormalizedDotProduct(self.zeta, self.signal_variances).to_dict(),
            "config_sigmas": self.config_sigmas,
            "baseline": None if self.baseline is None else self.baseline.to_dict(),
            "e0_setting": _e0_setting(self.e0),
            "settings": {"n_sparse": self.n_sparse, "sparse_method": self.sparse_method,
                         "jitter": self.jitter, "seed": self.seed,
                         "stress_noise": self.stress_noise},
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
            "energy_calibration": None if self.energy_calibration is None else
            self.energy_calibration.to_dict(),
            "build": self.build_report_,
        }


def _e0_setting(e0):
    """The model's ``e0`` argument as JSON: a mode string, or symbol -> eV."""
    if isinstance(e0, ReferenceEnergies):
        return e0.to_dict()
    if isinstance(e0, dict):
        return {chemical_symbols[atomic_number(k, "e0")]: float(v) for k, v in e0.items()}
    return e0
