"""The std of a structure's stress: error bars on a published stress (docs/theory.md §6).

A stress component is linear in the local energies, as a force is, so its DTC variance has the
same parts (:data:`gpmlip.gp.calibration.PARTS`): the Nystroem residual (the prior variance minus
what the sparse points explain) and the uncertainty of the weights, plus the label noise.  The
prior variance couples every pair of atoms of a species (a strain moves every atom):
:func:`gpmlip.gp.covariance.strain_prior_variance`, and each term's ``strain_prior``.  The
calibration weighs the parts as the force calibration does (one scale, or a weight per part
when the likelihood pays for it), fitted on honest stress residuals (the closed-form
leave-one-out of the training cells, or held-out cells).

Cost: the descriptor Jacobian of the structure (as the force std) plus O(n_species N^2 F) for the
prior.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from gpmlip.data.frames import Frame
from gpmlip.errors import StructureError
from gpmlip.gp import terms as gp_terms
from gpmlip.gp.calibration import Calibration, fit_with_noise
from gpmlip.gp.covariance import VOIGT, strain_prior_variance, strain_rows, voigt
from gpmlip.gp.observations import NoiseModel


def _volume(atoms: Atoms) -> float:
    volume = abs(atoms.cell.volume) if atoms.pbc.all() else 0.0
    if volume <= 1e-8:
        raise StructureError("a stress std needs a periodic cell with a volume")
    return volume


def stress_variance_parts(model, atoms: Atoms) -> np.ndarray:
    """The raw variance parts of the six Voigt stress components, (eV/Å³)^2, shape (6, 3):
    Nystroem residual, weights, label noise (see :data:`gpmlip.gp.calibration.PARTS`)."""
    model.check_fitted()
    volume = _volume(atoms)
    state = model.state
    env = model.descriptor.describe(atoms, gradients=True)
    rows = strain_rows(env, state.sparse, model.zeta) / volume
    prior = strain_prior_variance(env, model.zeta, state.species_signal_variance) / volume ** 2
    if state.terms:
        rows, prior = gp_terms.stress_rows(state.terms, state.signal_variance,
                                           model.descriptor.pair_list(atoms), rows, prior,
                                           volume)
    post = state.posterior
    total = post.dtc_variance(prior, rows, state.column_variance)
    weights = np.minimum(post.weight_variance(rows), total)
    scale = NoiseModel({}, model.stress_noise == "per_atom").scale(Frame(atoms), "stress")
    return np.column_stack([total - weights, weights,
                            np.full(6, state.noise["stress"] ** 2 * scale)])


def stress_std(model, atoms: Atoms) -> tuple[np.ndarray, np.ndarray]:
    """The stress std of every component, (3, 3) eV/Å³: calibrated (with the model's
    ``stress_calibration_``: the weighted parts, label noise included, as the force std's) and
    raw (the DTC std of the model's stress)."""
    parts = stress_variance_parts(model, atoms)
    raw = parts[:, 0] + parts[:, 1]
    cal = model.stress_calibration_
    calibrated = raw if cal is None else cal.variance(parts)
    return _full(np.sqrt(np.clip(calibrated, 0.0, None))), _full(np.sqrt(raw))


def _full(six: np.ndarray) -> np.ndarray:
    out = np.empty((3, 3))
    for v, (a, b) in enumerate(VOIGT):
        out[a, b] = out[b, a] = six[v]
    return out


def loo_stress_residuals(model, loo):
    """Stress residuals (eV/Å³), raw variance parts and noise variances of the left-out cells
    with stress labels (None without any): the Nystroem part of each cell, the weights part of
    its left-out prediction."""
    frames = model.training_frames
    res, parts, noise = [], [], []
    for i, r, v, n in zip(loo.frames, loo.stress_residual, loo.stress_variance,
                          loo.stress_noise_variance or [None] * len(loo.frames)):
        if r is None or n is None:
            continue
        nystroem = stress_variance_parts(model, frames[int(i)].atoms)[:, 0]
        res.append(r)
        parts.append(np.column_stack([nystroem, v]))
        noise.append(n)
    if not res:
        return None
    return np.concatenate(res), np.concatenate(parts), np.concatenate(noise)


def held_out_stress_residuals(model, data):
    """Stress residuals (eV/Å³), raw variance parts and noise variances of held-out labelled
    cells (None without any)."""
    res, parts, noise = [], [], []
    for frame in data:
        if frame.stress is None:
            continue
        pred = model.predict(frame.atoms, forces=False, variance=False)
        p = stress_variance_parts(model, frame.atoms)
        res.append(voigt(pred.stress) - voigt(frame.stress))
        parts.append(p[:, :2])
        noise.append(p[:, 2])
    if not res:
        return None
    return np.concatenate(res), np.concatenate(parts), np.concatenate(noise)


def fit_stress_calibration(residuals, parts, noise_variance, *, source: str) -> Calibration:
    """Weights of the stress variance parts from honest stress residuals, as the force
    calibration's (:func:`~gpmlip.gp.calibration.fit_calibration`, ``method="auto"``: one scale,
    or a weight per part when the likelihood pays for it; components fixed by symmetry, such as
    a cubic cell's shear, left out).  The noise part matters here: a stress label's noise is
    often as large as the model's std, and one scale on the model's std alone is dominated by
    the components whose std is small."""
    return fit_with_noise(residuals, parts, noise_variance, method="auto", quantity="stress",
                          source=source)
