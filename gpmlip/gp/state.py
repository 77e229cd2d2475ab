"""What a fitted sparse GP is: one object holding everything ``fit`` and ``update`` produce.

:class:`FittedState` is the model's only fitted data.  ``fit`` and ``update`` build a new state and
swap it in when they succeed (so a failed update leaves the old one in place), hyper-parameter
optimisation returns values the model turns into a new state, and :mod:`gpmlip.gp.container` writes and
reads a state through :meth:`FittedState.to_arrays` / :meth:`FittedState.from_arrays`.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from scipy.linalg import block_diag

from gpmlip.gp.covariance import SparseSet
from gpmlip.data.frames import Frame
from gpmlip.data.reference import ReferenceEnergies
from gpmlip.gp.solver import GROUPS, GramStats, Posterior
from gpmlip.gp import terms as gp_terms

STAT_GROUPS = (*GROUPS, "fixed")
"""Noise groups with Gram statistics (``fixed``: observations with per-structure noise)."""


@dataclass(frozen=True)
class FittedState:
    """Everything a fitted :class:`~gpmlip.SparseGP` knows beyond its settings.

    Attributes
    ----------
    frames : list of Frame
        Training structures, in the order they were added.
    features : list of ndarray, each (n_atoms, n_features)
        Their descriptors (kept; Jacobians are recomputed when needed, never stored).
    sparse : SparseSet
        Sparse points, shape (m, n_features), unit length, with species (m,).
    sparse_origin : ndarray of int, shape (m, 2)
        (frame index, atom index) each sparse point was taken from.
    kmm : ndarray, shape (m, m)
        Unit-variance sparse kernel matrix with jitter on the diagonal.
    stats : dict
        Noise group -> :class:`~gpmlip.gp.solver.GramStats`.
    posterior : Posterior or None
        The solved weights and factors (None in a state not solved yet).
    e0 : ReferenceEnergies
    signal_variance : dict
        Atomic number -> ``sigma_z^2`` (eV^2).
    noise : dict
        ``energy`` (eV/atom), ``forces`` (eV/Å), ``stress`` (eV/Å^3) standard deviations.
    version : int
        Counts solves; a calculator resets its cache when it changes.
    terms : tuple of Term
        The GP's terms beyond SOAP (:mod:`gpmlip.gp.terms`, e.g. the two-body term): their
        sparse sets are the last columns of every kernel row, in order, and each one's signal
        variance is ``signal_variance[term.key]``.
    """

    frames: list[Frame]
    features: list[np.ndarray]
    sparse: SparseSet
    sparse_origin: np.ndarray
    kmm: np.ndarray
    stats: dict[str, GramStats]
    posterior: Posterior | None
    e0: ReferenceEnergies
    signal_variance: dict[int, float]
    noise: dict[str, float]
    version: int = 0
    terms: tuple = ()

    @classmethod
    def empty(cls, n_features: int, e0: ReferenceEnergies, signal_variance: dict[int, float],
              noise: dict[str, float], version: int = 0) -> FittedState:
        """A state with no frames and no sparse points (what :meth:`SparseGP.fit` grows)."""
        return cls(frames=[], features=[],
                   sparse=SparseSet(np.zeros((0, n_features)), np.zeros(0, int)),
                   sparse_origin=np.zeros((0, 2), dtype=np.int64), kmm=np.zeros((0, 0)),
                   stats={g: GramStats.empty(0) for g in STAT_GROUPS}, posterior=None, e0=e0,
                   signal_variance=dict(signal_variance), noise=dict(noise), version=version)

    def replace(self, **changes) -> FittedState:
        """A copy with ``changes`` (other fields shared, not copied)."""
        return dataclasses.replace(self, **changes)

    def copied_stats(self) -> dict[str, GramStats]:
        """Deep copies of the Gram statistics, for a new state that adds rows to them."""
        return {g: copy.deepcopy(st) for g, st in self.stats.items()}

    @property
    def n_columns(self) -> int:
        """Columns of every kernel row: the SOAP sparse points, then each term's sparse set."""
        return len(self.sparse) + sum(len(t) for t in self.terms)

    @property
    def column_keys(self) -> np.ndarray:
        """Signal-variance key of every column: the SOAP points' species, then each term's
        key for each of its columns, shape (m_all,)."""
        return np.concatenate([self.sparse.species, *(np.full(len(t), t.key, dtype=np.int64)
                                                      for t in self.terms)])

    @property
    def column_variance(self) -> np.ndarray:
        """Signal variance of every column (SOAP points, then the terms), shape (m_all,)."""
        return np.array([self.signal_variance[int(z)] for z in self.column_keys])

    @property
    def system_kmm(self) -> np.ndarray:
        """Block-diagonal unit-variance ``K_mm`` of all columns (SOAP, then the terms)."""
        if not self.terms:
            return self.kmm
        return block_diag(self.kmm, *(t.kmm for t in self.terms))

    @property
    def species_signal_variance(self) -> dict[int, float]:
        """``sigma_z^2`` per atomic number: the signal variances without the terms' keys."""
        skip = gp_terms.keys(self.terms)
        return {z: v for z, v in self.signal_variance.items() if z not in skip}

    # -- model files -------------------------------------------------------------------------
    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict]:
        """The state as npz arrays and JSON-ready metadata (see :mod:`gpmlip.gp.container`).

        Returns
        -------
        arrays : dict of str -> ndarray
        metadata : dict
            ``signal_variance``, ``noise``, ``e0``, ``e0_method``, ``config_types``,
            ``log_likelihood``.
        """
        arrays = {
            "sparse_features": self.sparse.features,
            "sparse_species": self.sparse.species,
            "sparse_origin": self.sparse_origin,
            "kmm": self.kmm,
            "features": np.concatenate(self.features),
            **_frames_to_arrays(self.frames),
        }
        if self.posterior is not None:
            arrays["beta"] = self.posterior.beta
        for name, st in self.stats.items():
            arrays.update(st.to_arrays(f"stats_{name}_"))
        stored = {}
        for t in self.terms:
            extra, stored[t.parameter] = t.to_arrays()
            arrays.update(extra)
        meta = {
            "signal_variance": {str(z): float(v) for z, v in self.signal_variance.items()},
            "noise": dict(self.noise),
            "e0": {str(z): e for z, e in self.e0.energies.items()},
            "e0_method": self.e0.method,
            "config_types": [f.config_type for f in self.frames],
            "log_likelihood": None if self.posterior is None else self.posterior.log_likelihood,
        }
        meta.update(stored)
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict) -> FittedState:
        """Inverse of :meth:`to_arrays`; the posterior is left to be solved (None).

        Raises KeyError, TypeError or ValueError on missing or malformed data.
        """
        # already unit length: keep the bits (SparseSet would normalise them again)
        sparse = SparseSet(arrays["sparse_features"], arrays["sparse_species"])
        sparse.features = arrays["sparse_features"]
        split = np.cumsum(arrays["frame_n_atoms"])[:-1]
        return cls(
            frames=_frames_from_arrays(arrays, meta["config_types"]),
            features=np.split(arrays["features"], split),
            sparse=sparse,
            sparse_origin=arrays["sparse_origin"],
            kmm=arrays["kmm"],
            stats={g: GramStats.from_arrays(arrays, f"stats_{g}_") for g in STAT_GROUPS},
            posterior=None,
            e0=ReferenceEnergies({int(z): float(e) for z, e in meta["e0"].items()},
                                 meta["e0_method"]),
            signal_variance={int(z): float(v) for z, v in meta["signal_variance"].items()},
            noise={k: float(v) for k, v in meta["noise"].items()},
            terms=gp_terms.terms_from_arrays(arrays, meta),
        )


def _frames_to_arrays(frames: list[Frame]) -> dict[str, np.ndarray]:
    n = np.array([f.n_atoms for f in frames], dtype=np.int64)
    nan3 = np.full((3, 3), np.nan)
    return {
        "frame_n_atoms": n,
        "frame_numbers": np.concatenate([f.atoms.numbers for f in frames]),
        "frame_positions": np.concatenate([f.atoms.positions for f in frames]),
        "frame_cells": np.array([f.atoms.cell.array for f in frames]).reshape(-1, 3, 3),
        "frame_pbc": np.array([f.atoms.pbc for f in frames], dtype=bool).reshape(-1, 3),
        "frame_energy": np.array([np.nan if f.energy is None else f.energy for f in frames]),
        "frame_forces": np.concatenate([np.full((f.n_atoms, 3), np.nan) if f.forces is None
                                        else f.forces for f in frames]),
        "frame_stress": np.array([nan3 if f.stress is None else f.stress
                                  for f in frames]).reshape(-1, 3, 3),
        "frame_sigmas": np.array([[np.nan if s is None else s for s in
                                   (f.energy_sigma, f.force_sigma, f.virial_sigma)]
                                  for f in frames]).reshape(-1, 3),
    }


def _frames_from_arrays(arrays, config_types: list[str]) -> list[Frame]:
    frames = []
    starts = np.concatenate([[0], np.cumsum(arrays["frame_n_atoms"])])
    for i, (a, b) in enumerate(zip(starts[:-1], starts[1:])):
        atoms = Atoms(numbers=arrays["frame_numbers"][a:b], positions=arrays["frame_positions"][a:b],
                      cell=arrays["frame_cells"][i], pbc=arrays["frame_pbc"][i])
        energy = float(arrays["frame_energy"][i])
        forces = arrays["frame_forces"][a:b]
        stress = arrays["frame_stress"][i]
        sigmas = [None if np.isnan(s) else float(s) for s in arrays["frame_sigmas"][i]]
        frames.append(Frame(atoms=atoms, energy=None if np.isnan(energy) else energy,
                            forces=None if np.isnan(forces).all() else np.array(forces),
                            stress=None if np.isnan(stress).all() else np.array(stress),
                            config_type=config_types[i], energy_sigma=sigmas[0],
                            force_sigma=sigmas[1], virial_sigma=sigmas[2], index=i,
                            source="model file"))
    return frames
