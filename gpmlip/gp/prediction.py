"""What predictions return: :class:`Prediction` (one structure) and :class:`PairEnergies` (a pair
list), and the two small conversions they share."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from gpmlip.descriptors.neighbours import PairList


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
        ``sqrt(local_variance) / sigma_z``, clipped to [0, 1]: 0 = known, 1 = unknown (with a
        two-body term, over the prior std of the whole local energy,
        ``sqrt(sigma_z^2 + delta^2 / 4 sum_{j,k in N(i)} k_2b(r_ij, r_ik))``).  The one
        novelty quantity of gpmlip: what the on-the-fly learner, the gate, the pool and the
        loop threshold (see :mod:`gpmlip.active.settings`).
    force_std : ndarray, shape (n_atoms, 3) or None
        Standard deviation of each force component, eV/Å, when asked for: calibrated when
        the model has a calibration (:meth:`SparseGP.calibrate`), else the raw one.
    force_std_raw : ndarray, shape (n_atoms, 3) or None
        The raw DTC std (Nystroem residual plus the uncertainty of the weights), uncalibrated.
    energy_std, energy_std_raw : float or None
        Std of the total energy, eV (with the covariance between the atoms' local energies),
        calibrated like the force std when the model is, and raw; when asked for.
    stress_std, stress_std_raw : ndarray, shape (3, 3) or None
        Std of every stress component, eV/Å³, calibrated (when the model has a stress
        calibration) and raw; when asked for.
    """

    energy: float
    energies: np.ndarray
    forces: np.ndarray | None
    stress: np.ndarray | None
    local_variance: np.ndarray
    local_std_normalised: np.ndarray
    force_std: np.ndarray | None = None
    force_std_raw: np.ndarray | None = None
    energy_std: float | None = None
    energy_std_raw: float | None = None
    stress_std: np.ndarray | None = None
    stress_std_raw: np.ndarray | None = None

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


@dataclass
class ForceUncertainty:
    """What :meth:`SparseGP.force_uncertainty` returns for one structure.

    Attributes
    ----------
    std : ndarray, shape (n_atoms, 3)
        Force std of every component, eV/Å: calibrated when the model has a calibration, else
        the raw DTC std.
    raw : ndarray, shape (n_atoms, 3)
        The raw DTC std.
    parts : ndarray, shape (n_atoms, 3, 3)
        The raw variance parts (:data:`gpmlip.gp.calibration.PARTS`) a calibration weighs.
    calibrated : bool
        Whether ``std`` is calibrated.
    """

    std: np.ndarray
    raw: np.ndarray
    parts: np.ndarray
    calibrated: bool


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
