"""The sparse Gaussian-process potential: its settings, fitting and updating, hyper-parameters and
files; what it predicts is :mod:`gpmlip.gp.predicting`."""

from __future__ import annotations

import copy
import logging
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import Executor

import numpy as np
from ase import Atoms

from gpmlip.baselines import Baseline, BaselineSpec, make_baseline
from gpmlip.data import Dataset, Frame, as_frames, reference_energies, warn_missing_labels
from gpmlip.data.reference import ReferenceEnergies
from gpmlip.descriptors.protocol import Descriptor
from gpmlip.errors import DataError, NotFittedError, SettingsError
from gpmlip.gp import hyper, training
from gpmlip.gp.calibration import Calibration
from gpmlip.gp.container import model_settings, write_model_file
from gpmlip.gp.covariance import SparseSet
from gpmlip.gp.predicting import Predicting
from gpmlip.gp.state import FittedState
from gpmlip.gp.twobody import TwoBody

log = logging.getLogger(__name__)

TrainingData = Dataset | Frame | Sequence[Frame] | Sequence[Atoms] | str | os.PathLike
"""What :meth:`SparseGP.fit` and :meth:`SparseGP.update` accept as labelled structures."""

DEFAULT_SIGMAS = {"energy": 0.005, "forces": 0.05, "stress": 0.001, "virial": 0.5}
"""Default noise: eV/atom (times sqrt(n_atoms) per structure), eV/Å, eV/Å³ (0.16 GPa) with
``stress_noise="absolute"``, and eV/atom of virial (times sqrt(n_atoms), divided by the volume for a
stress) with ``stress_noise="per_atom"`` (the default).  The virial default 0.5 was measured on
the Zuo 2020 Li, Si, Mo sets (benchmarks/stress_noise_sweep.py): test energy MAE within 1 % of the
energy+forces fit on all three, stress MAE lower on all three; 0.2 cost Mo 4 % and 0.1 16 %."""

STRESS_NOISE = ("per_atom", "absolute")


class SparseGP(Predicting):
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
        self.calibration_: Calibration | None = None   # of the force std; None: raw
        self.energy_calibration_: Calibration | None = None   # of the energy std; None: raw
        self.stress_calibration_: Calibration | None = None   # of the stress std; None: raw
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

    def _deprecated_calibration(name: str):
        def get(self):
            warnings.warn(f"SparseGP.{name} is deprecated: use {name}_ (a fitted attribute, as "
                          "state_ and fit_report_)", DeprecationWarning, stacklevel=2)
            return getattr(self, name + "_")

        def set_(self, value):
            warnings.warn(f"SparseGP.{name} is deprecated: use {name}_", DeprecationWarning,
                          stacklevel=2)
            setattr(self, name + "_", value)
        return property(get, set_, doc=f"Deprecated alias of ``{name}_``.")

    calibration = _deprecated_calibration("calibration")
    energy_calibration = _deprecated_calibration("energy_calibration")
    del _deprecated_calibration

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
    def pair_baseline(self) -> Baseline | None:
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
        self.calibration_ = None   # fitted for other data: calibrate again
        self.energy_calibration_ = self.stress_calibration_ = None
        e0 = self.e0 if isinstance(self.e0, ReferenceEnergies) else \
            reference_energies(Dataset(self.learnt_labels(frames)), self.e0)
        signal = {z: float(s) ** 2 for z, s in
                  training.per_species(self.signal_std, self.species, "signal_std").items()}
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
            origin = training.select_sparse(self, empty, frames, features, self.n_sparse,
                                            self.sparse_method)
        else:
            origin = training.sparse_pairs(sparse_atoms, frames)
        self.state_, self.fit_report_ = training.grown(self, empty, frames, features, origin,
                                                       executor or self.executor, report=True)
        return self

    def set_state(self, state: FittedState) -> None:
        """Install ``state`` with its posterior solved (O(m^3), no kernel rows recomputed): what
        :func:`gpmlip.load_model` does with a state read from a file.  To change
        hyper-parameters use :meth:`with_hyperparameters`, which returns a new model."""
        self.state_ = training.solved(self, state)

    def with_hyperparameters(self, *, noise: dict[str, float] | None = None,
                             signal_variance: dict[int, float] | None = None,
                             drop: Sequence[str] = ()) -> SparseGP:
        """A new model: this one re-solved with other noise levels or signal variances (O(m^3),
        no kernel row recomputed); this one is left as it is.

        Parameters
        ----------
        noise : dict, optional
            ``energy`` (eV/atom), ``forces`` (eV/Å), ``stress`` levels to change.
        signal_variance : dict, optional
            Signal-variance key (atomic number, or a term's key) -> variance (eV^2) to change.
        drop : sequence of str
            Label groups ("energy", "forces", "stress") to leave out of the fit, e.g.
            ``drop=("stress",)`` for the energy+forces model of a fit that had stresses.

        Returns
        -------
        SparseGP
            Sharing this model's settings and training data; without a calibration (it was
            fitted for other variances).
        """
        state = self.state
        bad = set(drop) - set(state.stats)
        if bad:
            raise SettingsError(f"drop={sorted(bad)}: groups are {sorted(state.stats)}")
        stats = {g: (st.empty(len(st.z)) if g in drop else st) for g, st in state.stats.items()}
        new = copy.copy(self)
        new.calibration_ = new.energy_calibration_ = new.stress_calibration_ = None
        new.state_ = training.solved(self, state.replace(
            noise={**state.noise, **(noise or {})}, stats=stats,
            signal_variance={**state.signal_variance, **(signal_variance or {})}))
        return new

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
            origin = training.select_sparse(self, state, frames, features, n_sparse, "variance",
                                            cap=True)
        elif sparse_atoms is not None:
            origin = training.sparse_pairs(sparse_atoms, frames)
        else:
            origin = np.zeros((0, 2), dtype=np.int64)
        origin[:, 0] += len(state.frames)
        e0 = training.grown_e0(self, state, frames)
        base = state if e0 is None else state.replace(e0=e0)
        # a new state, swapped in only when complete: a failed update leaves the model as it was
        self.state_, _ = training.grown(self, base, frames, features, origin,
                                        executor or self.executor, rebuild=e0 is not None)
        return self

    def optimise_hyperparameters(self, *, max_iterations: int = 200):
        """Maximise the log marginal likelihood over signal and noise levels, then re-solve.

        Returns
        -------
        gpmlip.gp.hyper.HyperResult
            Optimal values, likelihood before and after, and any parameter stuck at a bound.
        """
        state = self.state
        result = hyper.optimise(state, self.species, max_iterations=max_iterations)
        self.state_ = training.solved(self, state.replace(signal_variance=result.signal_variance,
                                                 noise=result.noise))
        result.log_likelihood = self.log_likelihood
        log.info("hyper-parameters: %s; log likelihood %.6g -> %.6g (%d evaluations)",
                 {k: f"{v:.4g}" for k, v in result.values.items()},
                 result.initial_log_likelihood, result.log_likelihood, result.n_evaluations)
        return result

    # -- files -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the model as npz + JSON metadata (see :mod:`gpmlip.gp.container`); never pickle."""
        write_model_file(path, self.state, model_settings(self))
