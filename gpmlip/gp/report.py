"""Fit report: are the stress labels consistent with the energies and forces?

After a fit with stresses, the model fitted to energies and forces alone (the same Gram blocks
without the stress group, one O(m^3) solve) predicts every training cell's pressure.  Stress
labels that the energies do not support show up as residuals (label minus that prediction): a
common offset (a Pulay-like stress from an incomplete plane-wave basis) or single cells far off
(surfaces and other cells with vacuum, where DFT stress is ill-defined).  Either pulls the
energies when stresses are fitted; the report says so and what to do.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np

from gpmlip.gp.solver import GramStats, Hyper, solve

log = logging.getLogger(__name__)

GPA = 160.21766208
"""eV/Å³ in GPa."""

OFFSET_GPA = 0.1
"""A mean pressure residual above this, and above 3 times its uncertainty (the standard error
of the mean and the energy+forces model's own uncertainty of the mean pressure), is flagged."""

OUTLIER_GPA = 1.0
"""A cell whose residual is this far from the median (and 5 robust std) is flagged."""


@dataclass
class FitReport:
    """Stress labels against the energy+forces model (pressures in GPa, label minus model).

    Attributes
    ----------
    n_stress_frames : int
    mean_pressure_residual, std_pressure_residual : float
    model_pressure_std : float
    slope, correlation : float
        Least-squares slope and correlation of the model's pressure against the labels.
    per_config_type : dict
        config_type -> mean pressure residual (GPa) and frames.
    outlier_frames : list of int
        Training frames whose stress disagrees with the energies.
    flags : list of str
        What is inconsistent and what to do (empty when nothing is).
    """

    n_stress_frames: int = 0
    mean_pressure_residual: float = 0.0
    std_pressure_residual: float = 0.0
    slope: float = float("nan")
    correlation: float = float("nan")
    per_config_type: dict = field(default_factory=dict)
    outlier_frames: list = field(default_factory=list)
    model_pressure_std: float = float("nan")
    """Posterior std (GPa) of the energy+forces model's mean pressure over the stress cells: an
    offset is judged only against it (the data may not determine the pressure at all)."""
    energy_chi2_increase: float = float("nan")
    """How much fitting the stresses worsens the fit to the energies (chi-square of the energy
    labels, with the stresses minus without): stresses that disagree with the energies pull
    them; an offset is flagged only when they do (a model that merely cannot tell the pressure
    from the energies fits the stresses without moving the energies)."""
    flags: list = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready."""
        return asdict(self)


def _chi2(stats: GramStats, beta: np.ndarray, sigma: float) -> float:
    """Chi-square of a noise group's labels under weights ``beta``, from its statistics:
    ``(y'Wy - 2 z'R beta + |R beta|^2) / sigma^2``."""
    stats.flush()
    rb = stats.r @ beta
    return float((stats.yy - 2.0 * stats.z @ rb + rb @ rb) / sigma ** 2)


def pressure_row(stress_rows: np.ndarray) -> np.ndarray:
    """Kernel row of the pressure ``-trace(stress)/3`` from Voigt stress rows (6, m)."""
    return -stress_rows[:3].sum(axis=0) / 3.0


def fit_report(state, pressure_rows: list[np.ndarray], pressure_labels: list[float],
               frames: list[int]) -> FitReport:
    """Compare stress labels with the pressure of the energy+forces model of ``state``.

    Parameters
    ----------
    state : FittedState
        Solved, with Gram statistics of every group.
    pressure_rows : list of ndarray (m,)
        :func:`pressure_row` of each stress-labelled training frame (unit-variance kernel).
    pressure_labels : list of float
        Their labelled pressures, eV/Å³.
    frames : list of int
        Their indices in ``state.frames``.
    """
    if not pressure_rows:
        return FitReport()
    stats = {g: st for g, st in state.stats.items() if g != "stress" and st.n}
    stats.setdefault("energy", GramStats.empty(len(state.column_keys)))
    posterior = solve(state.system_kmm, stats, Hyper(state.column_variance, dict(state.noise)))
    pred = np.array(pressure_rows) @ posterior.beta * GPA
    # how well the energies and forces determine the mean pressure: the posterior std of the
    # energy+forces model's mean pressure over these cells (large when, say, every cell has
    # the same volume, so that no energy difference fixes dE/dV)
    mean_row = np.mean(pressure_rows, axis=0)[None, :]
    model_std = float(np.sqrt(posterior.weight_variance(mean_row)[0])) * GPA
    label = np.array(pressure_labels) * GPA
    res = label - pred
    report = FitReport(len(res), float(res.mean()), float(res.std()))
    if len(res) > 2 and np.std(label) > 0 and np.std(pred) > 0:
        report.slope = float(np.polyfit(label, pred, 1)[0])
        report.correlation = float(np.corrcoef(label, pred)[0, 1])
    types = [state.frames[i].config_type for i in frames]
    for c in sorted(set(types)):
        sel = np.array([t == c for t in types])
        report.per_config_type[c] = {"frames": int(sel.sum()),
                                     "mean_pressure_residual": float(res[sel].mean())}
    sem = res.std() / np.sqrt(len(res)) if len(res) > 1 else np.inf
    report.model_pressure_std = model_std
    energy = state.stats.get("energy")
    n_energy = energy.n if energy is not None else 0
    if n_energy:
        report.energy_chi2_increase = (_chi2(energy, state.posterior.beta, state.noise["energy"])
                                       - _chi2(energy, posterior.beta, state.noise["energy"]))
    conflict = not n_energy or report.energy_chi2_increase > np.sqrt(2.0 * n_energy)
    if abs(report.mean_pressure_residual) > max(OFFSET_GPA, 3 * np.hypot(sem, model_std)) \
            and conflict:
        report.flags.append(
            f"the stress labels are offset from the energies by {report.mean_pressure_residual:+.2f}"
            f" GPa of pressure on average (label minus the energy+forces model, {len(res)} cells), "
            f"and fitting them worsens the energies (chi-square +{report.energy_chi2_increase:.3g}"
            f" over {n_energy} energies): a Pulay-like stress. Subtract it from the labels (settings file: [data] "
            "pressure_offset_gpa = <p>; Python: stress + p I with p in eV/Å³), or raise the "
            "virial noise ([model] virial_sigma; SparseGP(virial_sigma=...)), or fit energies "
            "and forces only ([data] stresses = false)")
    med = np.median(res)
    mad = 1.4826 * np.median(np.abs(res - med))
    bad = np.flatnonzero((np.abs(res - med) > max(OUTLIER_GPA, 5 * mad)))
    report.outlier_frames = [int(frames[k]) for k in bad]
    if len(bad):
        kinds = sorted({types[k] for k in bad})
        report.flags.append(
            f"{len(bad)} cells (config types {kinds}; training frames "
            f"{report.outlier_frames[:10]}{'...' if len(bad) > 10 else ''}) have a pressure "
            f"label more than {max(OUTLIER_GPA, 5 * mad):.2g} GPa from what their energies and "
            "forces imply (surfaces and cells with vacuum often do): drop their stress or give "
            "them a larger virial_sigma (a virial_sigma column in their extxyz info line, "
            "atoms.info['virial_sigma']; or config_sigmas in Python)")
    for flag in report.flags:
        log.warning("fit report: %s", flag)
    if not report.flags:
        log.info("fit report: stress labels consistent with the energies (mean pressure residual "
                 "%+.3f GPa, std %.3f, slope %.3f)", report.mean_pressure_residual,
                 report.std_pressure_residual, report.slope)
    return report
