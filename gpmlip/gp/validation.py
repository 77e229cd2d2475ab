"""Leave-one-structure-out residuals and variances of a fitted sparse GP, in closed form.

The DTC sparse GP is Bayesian linear regression on the sparse basis: observations ``y = K w + e``
with unit-variance kernel rows ``K`` (n x m), noise ``Lambda`` (diagonal) and posterior precision
``A = R'R`` of the weights (:class:`~gpmlip.gp.solver.Posterior`).  For the block ``I`` of rows of
one training structure (its energy, force and stress labels together), with residual
``r_I = y_I - K_I beta``, ``S = K_I A^-1 K_I'`` and ``G = Lambda_I - S``, the model refitted
without that structure predicts (Woodbury identity; docs/theory.md §5)

    r_-I = Lambda_I G^-1 r_I                 (= (I - H_II)^-1 r_I, H the hat matrix)
    C_-I = S + S G^-1 S                      (covariance of the prediction from the weights)

exactly, sparse points and hyper-parameters unchanged.  A structure's rows are recomputed from the
stored training frames (one Jacobian at a time, the way :meth:`SparseGP.fit` computes them), so
memory is O(m^2 + rows of one structure), unless ``cache`` keeps them for repeated evaluations.

:func:`choose_noise` picks the noise levels that minimise the leave-one-out error on energies and
forces together, and then one common scale of signal and noise variances that calibrates the
leave-one-out variances (mean squared z-score 1).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.linalg import solve_triangular

from gpmlip.errors import NumericalError
from gpmlip.gp.observations import NoiseModel, observations
from gpmlip.gp.solver import GROUPS
from gpmlip.gp.terms import training_rows
from gpmlip.progress import progress_bar

log = logging.getLogger(__name__)


@dataclass
class StructureRows:
    """One training structure's observations: rows (n, m), targets, noise groups and scales."""

    frame: int
    n_atoms: int
    rows: np.ndarray
    y: np.ndarray
    group: np.ndarray      # (n,) str: "energy", "forces", "stress" or "fixed"
    scale: np.ndarray      # (n,) variance factor (the variance itself for "fixed")

    def noise_variance(self, noise: dict[str, float]) -> np.ndarray:
        """Noise variance of each row at the noise levels ``noise``."""
        level = np.array([1.0 if g == "fixed" else noise[g] ** 2 for g in self.group])
        return self.scale * level


@dataclass
class LeaveOneOut:
    """Leave-one-structure-out residuals (label minus prediction) and their variances.

    Per structure ``I`` of the training set, the prediction is that of the model refitted
    without ``I`` (same sparse points and hyper-parameters), in closed form.  Variances are those
    of that prediction from the uncertain weights (``variance``, the Bayesian-linear-model part
    of the predictive variance) and of the label noise (``noise_variance``); a calibrated model
    has ``mean(residual^2 / (variance + noise_variance))`` near 1.

    Attributes
    ----------
    frames : ndarray of int, shape (n_structures,)
        Index of each structure in ``model.training_frames``.
    n_atoms : ndarray of int, shape (n_structures,)
    energy_residual, energy_variance, energy_noise_variance : ndarray, shape (n_structures,)
        Energy per atom: eV/atom and (eV/atom)^2 (NaN for a structure without an energy label).
    force_residual, force_variance, force_noise_variance : list of ndarray, each (n_atoms, 3)
        eV/Å and (eV/Å)^2 (None for a structure without force labels).
    stress_residual, stress_variance : list of ndarray (6,) or None
        Voigt order xx, yy, zz, yz, xz, xy; eV/Å³ and (eV/Å³)^2.
    noise : dict
        Noise levels the residuals were computed at.
    stress_noise_variance : list of ndarray (6,) or None
        The stress labels' noise variances, (eV/Å³)^2.
    """

    frames: np.ndarray
    n_atoms: np.ndarray
    energy_residual: np.ndarray
    energy_variance: np.ndarray
    energy_noise_variance: np.ndarray
    force_residual: list
    force_variance: list
    force_noise_variance: list
    stress_residual: list
    stress_variance: list
    noise: dict
    stress_noise_variance: list | None = None

    def forces(self, what: str = "residual") -> np.ndarray:
        """All force components concatenated: ``what`` in residual, variance, noise_variance."""
        items = [x for x in getattr(self, f"force_{what}") if x is not None]
        return np.concatenate([x.ravel() for x in items]) if items else np.zeros(0)

    def mae(self) -> dict[str, float]:
        """``energy`` (eV/atom) and ``forces`` (eV/Å) mean absolute leave-one-out errors."""
        e = self.energy_residual[np.isfinite(self.energy_residual)]
        f = self.forces()
        return {"energy": float(np.mean(np.abs(e))) if len(e) else float("nan"),
                "forces": float(np.mean(np.abs(f))) if len(f) else float("nan")}

    def zms(self) -> dict[str, float]:
        """Mean squared z-score (residual^2 / (variance + noise variance)) for E and F."""
        ok = np.isfinite(self.energy_residual)
        e = self.energy_residual[ok] ** 2 / (self.energy_variance[ok]
                                             + self.energy_noise_variance[ok])
        f = self.forces() ** 2 / (self.forces("variance") + self.forces("noise_variance"))
        return {"energy": float(np.mean(e)) if len(e) else float("nan"),
                "forces": float(np.mean(f)) if len(f) else float("nan")}


def structure_rows(model, frames: Sequence[int] | None = None):
    """Yield the :class:`StructureRows` of training structures (all, or the indices ``frames``).

    Recomputes each structure's kernel rows (its SOAP Jacobian) in ``model.n_jobs`` workers.
    """
    state = model.state
    idx = range(len(state.frames)) if frames is None else [int(i) for i in frames]
    chosen = model.learnt_labels([state.frames[i] for i in idx])   # minus a baseline, if any
    noise = NoiseModel(model.config_sigmas, model.stress_noise == "per_atom")
    rows = training_rows(chosen, model.descriptor.to_dict(), model.zeta, state.sparse,
                         state.terms, model.descriptor.pair_list, n_jobs=model.n_jobs)
    for i, frame, fr in zip(idx, chosen, rows):
        parts = list(observations(frame, fr, state.e0.of(frame.atoms.numbers), noise))
        if not parts:
            continue
        yield StructureRows(
            i, frame.n_atoms, np.vstack([k for _, k, _, _ in parts]),
            np.concatenate([y for _, _, y, _ in parts]),
            np.concatenate([[g] * len(y) for g, _, y, _ in parts]),
            np.concatenate([s for _, _, _, s in parts]))


def _kinds(frame, group: np.ndarray) -> np.ndarray:
    """Label kind of each row ("energy", "forces", "stress"), fixed-noise rows included: the
    order is always energy, forces, stress (see :func:`observations`)."""
    sizes = [1 if frame.energy is not None else 0, 0 if frame.forces is None else
             frame.forces.size, 0 if frame.stress is None else 6]
    kinds = np.repeat(["energy", "forces", "stress"], sizes)
    if len(kinds) != len(group):
        raise NumericalError("internal: rows and labels of a structure do not match")
    return kinds


def _whitened(posterior, blocks: Sequence[StructureRows], noise: dict[str, float],
              chunk_bytes: float = 2.5e8) -> list:
    """``Lambda_I^-1/2 K_I R^-1`` of each block: one triangular solve (BLAS 3) per chunk of
    blocks of at most ``chunk_bytes`` rows, so the copies stay small next to the cached rows."""
    out, chunk, size = [], [], 0
    for i, b in enumerate(blocks):
        chunk.append(b.rows / np.sqrt(b.noise_variance(noise))[:, None])
        size += chunk[-1].nbytes
        if size >= chunk_bytes or i == len(blocks) - 1:
            solved = solve_triangular(posterior.r, np.concatenate(chunk).T, trans="T",
                                      check_finite=False).T
            out += np.split(solved, np.cumsum([len(x) for x in chunk])[:-1])
            chunk, size = [], 0
    return out


def loo_block(posterior, block: StructureRows, noise: dict[str, float],
              whitened: np.ndarray | None = None):
    """Leave-one-out residuals and prediction variances of one structure's rows.

    Returns ``(residual, variance, noise_variance)``, each (n_rows,), in label units (energy per
    structure).  ``whitened``: the block's ``Lambda^-1/2 K_I R^-1`` if already computed.
    """
    lam = block.noise_variance(noise)
    root = np.sqrt(lam)
    resid = (block.y - block.rows @ posterior.beta) / root
    if whitened is None:
        whitened = _whitened(posterior, [block], noise)[0]
    # whitened: S~ = V V', V = Lambda^-1/2 K_I R^-1 = U s W'; (I - S~)^-1 = I + U h/(1-h) U'
    u, sv, _ = np.linalg.svd(whitened, full_matrices=False)
    h = sv ** 2
    if h.size and h.max() >= 1.0 - 1e-12:
        raise NumericalError(
            f"leave-one-out of training structure {block.frame}: its labels alone determine "
            "weights the rest of the data does not (hat-matrix eigenvalue 1); raise the noise "
            "sigmas or the jitter")
    gain = h / (1.0 - h)
    loo = resid + u @ (gain * (u.T @ resid))
    variance = np.einsum("ik,k,ik->i", u, gain, u)
    return root * loo, lam * variance, lam


def leave_one_out(model, *, frames: Sequence[int] | None = None,
                  cache: list[StructureRows] | None = None) -> LeaveOneOut:
    """Closed-form leave-one-structure-out residuals and variances of a fitted model.

    Parameters
    ----------
    model : SparseGP
        Fitted.
    frames : sequence of int, optional
        Indices into ``model.training_frames`` to leave out one at a time (default: all).
    cache : list of StructureRows, optional
        Rows computed before by :func:`structure_rows` (for repeated evaluations, as in
        :func:`choose_noise`); default: recomputed, one structure in memory at a time.

    Returns
    -------
    LeaveOneOut
        Energy residuals per atom (eV/atom), force residuals (eV/Å), stress residuals, each with
        the variance of the left-out prediction and the noise variance.

    Notes
    -----
    Exact for the DTC model with the sparse points and hyper-parameters held fixed: a refit
    without structure ``I`` that re-selected its sparse points would differ.  Cost per structure
    O(n_I m^2) after its rows.
    """
    state = model.state
    noise = dict(state.noise)
    out = {k: [] for k in ("frames", "n", "e", "ev", "en", "f", "fv", "fn", "s", "sv", "sn")}
    blocks = cache if cache is not None else structure_rows(model, frames)
    # cached rows: one triangular solve for all of them (a BLAS-3 call, no m x m inverse)
    whitened = _whitened(state.posterior, cache, noise) if cache is not None else None
    bar = progress_bar(total=len(cache) if cache is not None else
                       len(frames if frames is not None else state.frames),
                       desc="leave-one-out", unit="frame")
    with bar:
        for i, block in enumerate(blocks):
            bar.update(1)
            frame = state.frames[block.frame]
            resid, var, lam = loo_block(state.posterior, block, noise,
                                        None if whitened is None else whitened[i])
            kinds = _kinds(frame, block.group)
            n = block.n_atoms
            out["frames"].append(block.frame)
            out["n"].append(n)
            e = kinds == "energy"
            out["e"].append(resid[e][0] / n if e.any() else np.nan)
            out["ev"].append(var[e][0] / n ** 2 if e.any() else np.nan)
            out["en"].append(lam[e][0] / n ** 2 if e.any() else np.nan)
            f = kinds == "forces"
            for key, x in (("f", resid), ("fv", var), ("fn", lam)):
                out[key].append(x[f].reshape(-1, 3) if f.any() else None)
            s = kinds == "stress"
            out["s"].append(resid[s] if s.any() else None)
            out["sv"].append(var[s] if s.any() else None)
            out["sn"].append(lam[s] if s.any() else None)
    return LeaveOneOut(np.array(out["frames"], dtype=int), np.array(out["n"], dtype=int),
                       np.array(out["e"]), np.array(out["ev"]), np.array(out["en"]),
                       out["f"], out["fv"], out["fn"], out["s"], out["sv"], noise, out["sn"])


@dataclass
class NoiseChoice:
    """Outcome of :func:`choose_noise`.

    Attributes
    ----------
    model : SparseGP
        The model re-solved with the chosen levels (the one searched is left as it was).
    noise, signal_variance : dict
        Chosen levels.
    criterion, initial_criterion : float
        ``(MAE_E / MAE_E0 + MAE_F / MAE_F0) / 2`` of leave-one-out errors (0-subscript: at the
        starting levels), chosen and initial (1.0).
    loo_mae, initial_loo_mae : dict
        Leave-one-out MAE of energies (eV/atom) and forces (eV/Å).
    log_likelihood, initial_log_likelihood : float
        The marginal likelihood at the chosen and starting levels (the other criterion).
    calibration_scale : float
        Factor applied to all variances (signal and noise) so that the leave-one-out z-scores of
        energies and forces have mean square 1 (it leaves the mean unchanged).
    n_evaluations : int
    frames : ndarray of int
        Training structures the leave-one-out errors were measured on.
    """

    model: object
    noise: dict
    signal_variance: dict
    criterion: float
    initial_criterion: float
    loo_mae: dict
    initial_loo_mae: dict
    log_likelihood: float
    initial_log_likelihood: float
    calibration_scale: float
    n_evaluations: int
    frames: np.ndarray


def _subset(model, max_frames: int | None, max_bytes: float) -> np.ndarray:
    state = model.state
    n_rows = np.array([(f.energy is not None) + (0 if f.forces is None else f.forces.size)
                       + (0 if f.stress is None else 6) for f in state.frames])
    per_frame = n_rows * len(state.sparse) * 8
    k = len(state.frames) if max_frames is None else min(max_frames, len(state.frames))
    wanted = k
    while k > 1 and np.sort(per_frame)[-k:].sum() > max_bytes:
        k -= 1
    if k < wanted:
        log.warning("leave-one-out on %d of %d structures: the rows of more would exceed "
                    "max_bytes = %.3g; raise it to use more", k, wanted, max_bytes)
    return np.unique(np.linspace(0, len(state.frames) - 1, k).round().astype(int))


def choose_noise(model, *, groups: Sequence[str] = ("energy", "forces", "stress"),
                 factors: Sequence[float] = (0.25, 0.5, 0.71, 1.41, 2.0, 4.0), sweeps: int = 2,
                 max_frames: int | None = None, max_bytes: float = 1e9,
                 calibrate: bool = True,
                 cache: list[StructureRows] | None = None) -> NoiseChoice:
    """Choose noise levels by leave-one-structure-out error on energies and forces together.

    Criterion: ``(MAE_E / MAE_E0 + MAE_F / MAE_F0) / 2``, the leave-one-out MAEs relative to
    those at the starting levels, so that neither kind can be traded away for the other (a
    likelihood dominated by the 3N force rows can give up all energy accuracy).  Coordinate
    search: each group's level is multiplied by each of ``factors`` in turn, the best kept,
    ``sweeps`` times.  Stresses are weighted by their level but not scored.  Then, with
    ``calibrate``, signal and noise variances are scaled together so that the leave-one-out
    z-scores have mean square 1.  The result is a new model (``NoiseChoice.model``); the one
    given is left as it was.

    Parameters
    ----------
    model : SparseGP
        Fitted.
    groups : sequence of str
        Noise levels to choose (those without data are skipped).
    factors : sequence of float
    sweeps : int
    max_frames : int, optional
        Leave out at most this many structures (evenly spread over the training set; default:
        every one); their rows are cached, within ``max_bytes`` of memory (fewer structures are
        left out, and a warning logged, when they would not fit).  A subset can mislead: on
        Zuo 2020 Mo with one SOAP, levels chosen on 30 of 194 structures raised the test
        errors from 2.32 meV/atom / 0.090 eV/Å to 2.85 / 0.094 (docs/benchmarks.md).
    max_bytes : float
    calibrate : bool
    cache : list of StructureRows, optional
        Rows computed before by :func:`structure_rows` for this model (every structure, or
        those to leave out): not computed again (``max_frames`` and ``max_bytes`` then do not
        apply).

    Returns
    -------
    NoiseChoice
    """
    state = model.state
    if cache is None:
        frames = _subset(model, max_frames, max_bytes)
        cache = list(structure_rows(model, frames))
    else:
        frames = np.array([block.frame for block in cache], dtype=int)
    present = [g for g in groups if g in GROUPS and state.stats[g].n]
    start = dict(state.noise)
    initial_ll = model.log_likelihood
    n_eval = 0

    def evaluate(noise):
        nonlocal n_eval
        n_eval += 1
        return leave_one_out(model.with_hyperparameters(noise=noise), cache=cache).mae()

    mae0 = evaluate(start)

    def score(mae):
        terms = [mae[k] / mae0[k] for k in ("energy", "forces")
                 if np.isfinite(mae0[k]) and mae0[k] > 0]
        return float(np.mean(terms))

    best, best_score, best_mae = dict(start), 1.0, mae0
    for _ in range(sweeps):
        improved = False
        for g in present:
            centre = best[g]
            for f in factors:
                trial = {**best, g: centre * f}
                try:
                    mae = evaluate(trial)
                except NumericalError:
                    continue
                if score(mae) < best_score - 1e-6:
                    best, best_score, best_mae, improved = trial, score(mae), mae, True
        if not improved:
            break
    chosen = model.with_hyperparameters(noise=best)
    scale = 1.0
    if calibrate:
        loo = leave_one_out(chosen, cache=cache)
        zms = loo.zms()
        scale = float(np.nanmean([zms["energy"], zms["forces"]]))
        chosen = model.with_hyperparameters(
            noise={g: v * np.sqrt(scale) for g, v in best.items()},
            signal_variance={z: v * scale for z, v in state.signal_variance.items()})
    state = chosen.state
    log.info("noise by leave-one-out on %d structures: %s (criterion 1 -> %.3f; LOO MAE E %.3g "
             "-> %.3g eV/atom, F %.3g -> %.3g eV/Å; log likelihood %.6g -> %.6g; variances x%.3g)",
             len(frames), {g: f"{v:.3g}" for g, v in state.noise.items()}, best_score,
             mae0["energy"], best_mae["energy"], mae0["forces"], best_mae["forces"], initial_ll,
             chosen.log_likelihood, scale)
    return NoiseChoice(chosen, dict(state.noise), dict(state.signal_variance), best_score, 1.0,
                       best_mae, mae0, chosen.log_likelihood, initial_ll, scale, n_eval, frames)
