"""Fitting a model's calibrations (force, total-energy and stress stds) on one honest source:
closed-form leave-one-structure-out residuals of its training data, or held-out structures
(docs/theory.md §6).  :meth:`gpmlip.SparseGP.calibrate` keeps what this returns."""

from __future__ import annotations

import logging

from gpmlip.data import Dataset, load_frames
from gpmlip.gp import energy_std, stress_std
from gpmlip.gp.calibration import (Calibration, fit_calibration, held_out_residuals,
                                    leave_one_out_residuals, loo_subset)

log = logging.getLogger(__name__)


def fit_calibrations(model, frames=None, *, method: str = "auto", max_frames: int | None = 50
                     ) -> tuple[Calibration, Calibration | None, Calibration | None]:
    """The force, total-energy and stress calibrations of a fitted model (see
    :meth:`gpmlip.SparseGP.calibrate` for the arguments); the energy and stress ones are None
    without at least two residuals of their kind."""
    from gpmlip.gp.validation import leave_one_out

    model.check_fitted()
    if frames is None:
        loo = leave_one_out(model, frames=loo_subset(model, max_frames))
        residuals, parts = leave_one_out_residuals(model, loo=loo)
        source = "leave-one-out"
        energy = energy_std.loo_energy_residuals(model, loo)
        stress = stress_std.loo_stress_residuals(model, loo)
    else:
        data = frames if isinstance(frames, Dataset) else \
            load_frames(frames, species=model.species)
        residuals, parts = held_out_residuals(model, data)
        source = "held-out"
        energy = energy_std.held_out_energy_residuals(model, data)
        stress = stress_std.held_out_stress_residuals(model, data)
    force = fit_calibration(residuals, parts, method=method, source=source)
    energy_cal = stress_cal = None
    if energy is not None and len(energy[0]) >= 2:
        energy_cal = energy_std.fit_energy_calibration(*energy, source=source)
    if stress is not None and len(stress[0]) >= 2:
        stress_cal = stress_std.fit_stress_calibration(*stress, source=source)
    for cal in (force, energy_cal, stress_cal):
        if cal is not None:
            log.info("calibrated: %s", cal.describe())
    return force, energy_cal, stress_cal
