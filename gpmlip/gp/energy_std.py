"""Error bars on what users publish: the posterior covariance of total energies, so the std of a
structure's energy and of an energy difference between structures (docs/theory.md §6).

A total energy is the sum of its local energies, a linear observation of the GP, so its
predictive variance is that of one observation with rows ``r_A = sum_{i in A} k(q_i, X)`` and
prior variance ``sum_{i, j in A} k(q_i, q_j)``: the covariance between the atoms' local energies
counts, which the sum of the per-atom variances leaves out.  For two structures the same
operator gives their covariance, so ``Var[E_A - E_B] = Var[E_A] + Var[E_B] - 2 Cov[E_A, E_B]``
(two structures that share environments, as a vacancy cell and its bulk, have correlated
errors that cancel in the difference).  The covariance is the DTC one of
:meth:`gpmlip.gp.solver.Posterior.dtc_variance`, written for several observations at once:
``P - N diag(c) N' + W W'`` with ``N = R L^-T`` (what the sparse points explain) and
``W = R R^-1`` (the uncertainty of the weights).  The calibrated energy std is the raw one
times one factor fitted, like the force std's, by maximum likelihood on honest total-energy
residuals (leave-one-structure-out or held-out structures; :meth:`SparseGP.calibrate` fits both).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms

from gpmlip.gp.covariance import local_kernel
from gpmlip.gp.calibration import Calibration, fit_with_noise
from gpmlip.gp.kernels import NormalizedDotProduct


def _structure_terms(model, atoms: Atoms):
    """Features, species, unit energy rows (m_all,) and each term's energy geometry."""
    state = model.state
    pairs = model.descriptor.pair_list(atoms)
    features = model.descriptor.features(pairs)
    species = np.asarray(pairs.centre_species, dtype=np.int64)
    rows = local_kernel(features, species, state.sparse, model.zeta).sum(axis=0)
    rows = np.concatenate([rows, *(t.frame_rows(pairs, forces=False, stress_volume=None)[0]
                                   for t in state.terms)])
    return features, species, rows, [t.energy_geometry(pairs) for t in state.terms]


def _prior(model, a, b) -> float:
    """Prior covariance of two structures' total energies (eV^2)."""
    state = model.state
    kernel = NormalizedDotProduct(model.zeta, state.species_signal_variance)
    out = float(kernel(a[0], a[1], b[0], b[1]).sum())
    for t, ga, gb in zip(state.terms, a[3], b[3]):
        out += state.signal_variance[t.key] * t.energy_prior(ga, gb)
    return out


def _rows_and_prior(model, structures):
    terms = [_structure_terms(model, atoms) for atoms in structures]
    rows = np.array([t[2] for t in terms])
    prior = np.array([[_prior(model, a, b) if j >= i else 0.0 for j, b in enumerate(terms)]
                      for i, a in enumerate(terms)])
    return rows, prior + np.triu(prior, 1).T


def energy_covariance(model, structures: Sequence[Atoms]) -> np.ndarray:
    """Raw (DTC) posterior covariance of the total energies of ``structures``, eV^2, (k, k).

    The diagonal is each structure's energy variance; a baseline added to the model is
    deterministic and adds nothing.
    """
    model.check_fitted()
    rows, prior = _rows_and_prior(model, structures)
    nystroem, weights = _factors(model, rows)
    cov = prior - (nystroem * model.state.column_variance) @ nystroem.T + weights @ weights.T
    return 0.5 * (cov + cov.T)


def _factors(model, rows):
    l_inv_t, r_inv = model.state.posterior.inverse_factors
    return rows @ l_inv_t, rows @ r_inv


def energy_variance_parts(model, structures: Sequence[Atoms]) -> np.ndarray:
    """The two raw parts of each structure's energy variance, eV^2, shape (k, 2): the Nystroem
    residual (prior minus what the sparse points explain) and the uncertainty of the weights;
    their sum is the diagonal of :func:`energy_covariance`."""
    model.check_fitted()
    rows, prior = _rows_and_prior(model, structures)
    nystroem, weights = _factors(model, rows)
    residual = np.diag(prior) - (nystroem ** 2 * model.state.column_variance).sum(axis=1)
    return np.column_stack([np.clip(residual, 0.0, None), (weights ** 2).sum(axis=1)])


def fit_energy_calibration(residuals, parts, noise_variance, *, source: str) -> Calibration:
    """One scale on the raw energy std from honest total-energy residuals (eV) and their raw
    parts (``(n, 2)``, :func:`energy_variance_parts`, the weights part of the left-out
    prediction for leave-one-out) and label-noise variances (eV^2): the maximum-likelihood
    factor, as the force calibration's first stage (few residuals: one parameter)."""
    return fit_with_noise(residuals, parts, noise_variance, method="scale", quantity="energy",
                          source=source)


def calibrated(model, covariance: np.ndarray) -> np.ndarray:
    """The covariance scaled by the model's energy calibration (one factor squared); the raw
    covariance for a model without one."""
    cal = model.energy_calibration_
    return covariance if cal is None else covariance * cal.weights["residual"]


def difference_std(covariance: np.ndarray, a: int = 0, b: int = 1) -> float:
    """Std of ``E_a - E_b`` from an energy covariance, eV."""
    var = covariance[a, a] + covariance[b, b] - 2 * covariance[a, b]
    return float(np.sqrt(max(var, 0.0)))


def loo_energy_residuals(model, loo):
    """Total-energy residuals (eV), raw variance parts and noise variances (eV^2) of the
    left-out structures with energy labels (None without any)."""
    ok = np.isfinite(loo.energy_residual)
    if not ok.any():
        return None
    n = loo.n_atoms[ok].astype(float)
    frames = model.training_frames
    parts = energy_variance_parts(
        model, [frames[int(i)].atoms for i in loo.frames[ok]])
    parts[:, 1] = loo.energy_variance[ok] * n ** 2     # the left-out prediction's weights
    return loo.energy_residual[ok] * n, parts, loo.energy_noise_variance[ok] * n ** 2


def held_out_energy_residuals(model, data):
    """Total-energy residuals (eV), raw variance parts and noise variances (eV^2) of held-out
    labelled structures with energies (None without any)."""
    with_energy = [f for f in data if f.energy is not None]
    if not with_energy:
        return None
    atoms = [f.atoms for f in with_energy]
    pred = np.array([model.predict(a, forces=False, stress=False, variance=False).energy
                     for a in atoms])
    ref = np.array([f.energy for f in with_energy])
    n = np.array([f.n_atoms for f in with_energy], dtype=float)
    return (pred - ref, energy_variance_parts(model, atoms),
            model.state.noise["energy"] ** 2 * n ** 2)
