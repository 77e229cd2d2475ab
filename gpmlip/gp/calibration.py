"""Calibrated force uncertainty: weights of the variance parts fitted by maximum likelihood.

The raw DTC force variance of a component is the sum of two parts, and a third is the noise:

* ``"residual"``: prior variance minus what the sparse points explain (Nystroem residual),
* ``"weights"``: the uncertainty of the weights on the sparse basis (the posterior part),
* ``"noise"``: the fitted force noise ``sigma_F^2`` (the model's own error floor).

A calibration is a non-negative weight per part, so that the calibrated variance is
``sum_k w_k v_k``.  :func:`fit_calibration` takes residuals and the raw parts of their variance,
from any honest source (held-out frames, the labels of an on-the-fly run before they were
learnt, leave-one-structure-out residuals), and maximises the Gaussian likelihood:

1. one scale on the raw std (``w_residual = w_weights = alpha^2``, ``w_noise = 0``): the closed
   form ``alpha^2 = mean(r^2 / v)``;
2. a weight per part (L-BFGS-B on the log weights), kept only if it improves the log likelihood
   by more than BIC's ``0.5 log(n)`` per extra parameter.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

from gpmlip.gp.covariance import force_prior_variance, force_rows
from gpmlip.errors import DataError
from gpmlip.gp import terms as gp_terms

log = logging.getLogger(__name__)

PARTS = ("residual", "weights", "noise")
"""The variance parts a calibration weights, in the order of the last axis of ``parts``."""

CALIBRATION_VERSION = 1


@dataclass
class Calibration:
    """Weights of the force variance parts (see the module docstring).

    Attributes
    ----------
    weights : dict
        Part name -> weight (``PARTS``); the calibrated variance is ``sum_k w_k v_k``.
    method : str
        ``"scale"`` (one factor on the raw std) or ``"parts"`` (a weight per part).
    n : int
        Residuals it was fitted on.
    source : str
        Where the residuals came from ("held-out", "on-the-fly", "leave-one-out", ...).
    nll : float
        Mean negative log likelihood of the fit residuals under the calibration.
    info : dict
        Anything else worth keeping (e.g. the one-scale fit when ``method`` is "parts").
    """

    weights: dict[str, float]
    method: str = "scale"
    n: int = 0
    source: str = ""
    nll: float = float("nan")
    info: dict = field(default_factory=dict)
    quantity: str = "force"
    """What it calibrates: "force" (per component) or "energy" (total energies)."""

    @property
    def scale(self) -> float:
        """The factor on the raw std when ``method`` is "scale" (else the mean-square ratio
        at the fit residuals is in ``info``)."""
        return float(np.sqrt(self.weights["residual"]))

    def variance(self, parts: np.ndarray) -> np.ndarray:
        """Calibrated variance from raw parts, shape ``parts.shape[:-1]``."""
        w = np.array([self.weights[p] for p in PARTS])
        return np.asarray(parts) @ w

    def std(self, parts: np.ndarray) -> np.ndarray:
        """Calibrated std from raw parts (clipped at a tiny positive value)."""
        return np.sqrt(np.clip(self.variance(parts), 1e-30, None))

    def to_dict(self) -> dict:
        """JSON-ready (what the model file stores)."""
        return {"version": CALIBRATION_VERSION, "weights": dict(self.weights),
                "method": self.method, "n": self.n, "source": self.source, "nll": self.nll,
                "info": self.info, "quantity": self.quantity}

    @classmethod
    def from_dict(cls, data: dict | None) -> Calibration | None:
        """Read :meth:`to_dict` (None stays None: an uncalibrated model)."""
        if not data:
            return None
        return cls(weights={p: float(data["weights"][p]) for p in PARTS},
                   method=data.get("method", "scale"), n=int(data.get("n", 0)),
                   source=data.get("source", ""), nll=float(data.get("nll", float("nan"))),
                   info=dict(data.get("info", {})), quantity=str(data.get("quantity", "force")))

    def describe(self) -> str:
        """One line for logs."""
        if self.method == "scale":
            return (f"{self.quantity} std x {self.scale:.3g} (one scale, {self.n} residuals, "
                    f"{self.source})")
        w = ", ".join(f"{p} x {np.sqrt(v):.3g}" for p, v in self.weights.items())
        return f"{self.quantity} std from parts ({w}; {self.n} residuals, {self.source})"


def _mean_nll(r2: np.ndarray, var: np.ndarray) -> float:
    return float(np.mean(0.5 * np.log(2 * np.pi * var) + 0.5 * r2 / var))


SYMMETRY_TOLERANCE = 1e-6
"""A raw std below this fraction of the largest in a set is round-off: a component the
structure's symmetry fixes (a force on an atom at an inversion centre, a cubic cell's shear)."""


def free_components(raw_std) -> np.ndarray:
    """Which components of a set have a std: one that symmetry fixes has a raw std of round-off
    (any invariant energy gives it the symmetric value), and its label's deviation from that
    value is noise no std describes; calibrations and scores leave such components out.  True
    where the raw std exceeds :data:`SYMMETRY_TOLERANCE` of the set's largest."""
    raw_std = np.ravel(np.asarray(raw_std, dtype=float))
    if not raw_std.size:
        return np.zeros(0, dtype=bool)
    return raw_std > SYMMETRY_TOLERANCE * raw_std.max()


def fit_calibration(residuals, parts, *, method: str = "auto",
                    source: str = "") -> Calibration:
    """Maximum-likelihood weights of the variance parts for these residuals.

    Parameters
    ----------
    residuals : array, shape (n,) or any shape
        Prediction minus reference (e.g. force components, eV/Å), honest: the model did not
        learn them.
    parts : array, shape residuals.shape + (3,)
        The raw variance parts of each residual, in the order of :data:`PARTS`
        (:func:`force_variance_parts` gives them for a structure).
    method : {"auto", "scale", "parts"}
        One scale on the raw std, a weight per part, or the parts only when the likelihood
        gain pays for the extra parameters (BIC).
    source : str
        Stored with the calibration.

    Returns
    -------
    Calibration

    Components fixed by symmetry (:func:`free_components`) are left out.
    """
    if method not in ("auto", "scale", "parts"):
        raise DataError(f"method={method!r}: use 'auto', 'scale' or 'parts'")
    r = np.ravel(np.asarray(residuals, dtype=float))
    v = np.asarray(parts, dtype=float).reshape(len(r), len(PARTS)) if r.size else \
        np.zeros((0, len(PARTS)))
    if r.size == 0:
        raise DataError("no residuals to calibrate on: give at least one labelled, held-out "
                        "structure")
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(v))) or np.any(v < 0):
        raise DataError("residuals must be finite and variance parts finite and >= 0")
    free = free_components(np.sqrt(v[:, 0] + v[:, 1]))
    r, v = r[free], v[free]
    raw = v[:, 0] + v[:, 1]
    ok = raw > 0
    if not ok.any():
        raise DataError("every raw variance is zero: nothing to scale")
    r2 = r ** 2
    alpha2 = float(np.mean(r2[ok] / raw[ok]))
    alpha2 = max(alpha2, 1e-12)
    floor = 1e-30
    scale_var = np.clip(alpha2 * raw, floor, None)
    scale_nll = _mean_nll(r2, scale_var)
    scale = Calibration(weights={"residual": alpha2, "weights": alpha2, "noise": 0.0},
                        method="scale", n=len(r), source=source, nll=scale_nll)
    if method == "scale":
        return scale
    # a weight per part, in log space; a part that is zero everywhere keeps weight 0
    present = np.flatnonzero(v.max(axis=0) > 0)
    typical = np.array([np.mean(v[:, k]) for k in present])

    def objective(logw):
        w = np.exp(logw)
        var = np.clip(v[:, present] @ w, floor, None)
        g_var = 0.5 / var - 0.5 * r2 / var ** 2
        return _mean_nll(r2, var), (v[:, present] * g_var[:, None]).mean(axis=0) * w

    # starts: each part carrying an equal share of the one-scale mean variance, and the
    # one-scale fit with the noise nearly off; the best end point wins
    share = alpha2 * np.mean(raw) / (len(present) * typical)
    starts = [np.log(np.maximum(share, 1e-30))]
    if "noise" in [PARTS[k] for k in present]:
        second = np.log(np.maximum(alpha2 * np.ones(len(present)), 1e-30))
        j = [PARTS[k] for k in present].index("noise")
        second[j] = np.log(max(1e-3 * alpha2 * np.mean(raw) / typical[j], 1e-30))
        starts.append(second)
    res = min((minimize(objective, x0, jac=True, method="L-BFGS-B",
                        bounds=[(-70.0, 30.0)] * len(present)) for x0 in starts),
              key=lambda out: out.fun)
    weights = dict.fromkeys(PARTS, 0.0)
    for k, lw in zip(present, res.x):
        weights[PARTS[k]] = float(np.exp(lw))
    parts_nll = float(res.fun)
    gain = len(r) * (scale_nll - parts_nll)
    penalty = 0.5 * np.log(len(r)) * (len(present) - 1)
    if method == "parts" or gain > penalty:
        return Calibration(weights=weights, method="parts", n=len(r), source=source,
                           nll=parts_nll, info={"scale": float(np.sqrt(alpha2)),
                                                "scale_nll": scale_nll,
                                                "log_likelihood_gain": float(gain)})
    scale.info = {"parts_weights": weights, "log_likelihood_gain": float(gain)}
    return scale


def force_variance_parts(model, atoms) -> np.ndarray:
    """The raw variance parts (:data:`PARTS`) of every force component, shape (n, 3, 3).

    ``parts[..., 0] + parts[..., 1]`` is the raw DTC force variance (``force_std_raw ** 2``);
    ``parts[..., 2]`` is ``sigma_F^2`` for every component.
    """
    model.check_fitted()
    env = model.descriptor.describe(atoms, gradients=True)
    state = model.state_
    rows = force_rows(env, state.sparse, model.zeta).reshape(3 * len(atoms), -1)
    prior = force_prior_variance(env, model.zeta, state.signal_variance).ravel()
    if state.terms:
        rows, prior = gp_terms.force_rows(state.terms, state.signal_variance,
                                          model.descriptor.pair_list(atoms), rows, prior,
                                          len(atoms))
    post = state.posterior
    total = post.dtc_variance(prior, rows, state.column_variance)
    weights = post.weight_variance(rows) if rows.shape[1] else np.zeros_like(total)
    weights = np.minimum(weights, total)
    out = np.empty((len(total), len(PARTS)))
    out[:, 0] = total - weights
    out[:, 1] = weights
    out[:, 2] = state.noise["forces"] ** 2
    return out.reshape(len(atoms), 3, len(PARTS))


def fit_with_noise(residuals, parts, noise_variance, *, method: str, quantity: str,
                   source: str) -> Calibration:
    """:func:`fit_calibration` of a quantity whose raw parts (``(n, 2)``: Nystroem residual,
    weights) and label-noise variances come apart (total energies, stresses)."""
    parts = np.column_stack([np.asarray(parts, dtype=float),
                             np.asarray(noise_variance, dtype=float)])
    cal = fit_calibration(np.asarray(residuals, dtype=float), parts, method=method,
                          source=source)
    cal.quantity = quantity
    return cal


def held_out_residuals(model, frames) -> tuple[np.ndarray, np.ndarray]:
    """Force residuals (prediction - reference) and their raw variance parts on labelled frames.

    Returns
    -------
    residuals : ndarray, shape (n_components,)
    parts : ndarray, shape (n_components, 3)
    """
    from gpmlip.data import Dataset, load_frames

    data = frames if isinstance(frames, Dataset) else load_frames(frames, species=model.species)
    res, parts = [], []
    for frame in data:
        if frame.forces is None:
            continue
        pred = model.predict(frame.atoms, stress=False, variance=False)
        res.append(np.ravel(pred.forces - frame.forces))
        parts.append(force_variance_parts(model, frame.atoms).reshape(-1, len(PARTS)))
    if not res:
        raise DataError("none of the frames has forces: calibration needs labelled forces")
    return np.concatenate(res), np.concatenate(parts)


def loo_subset(model, max_frames: int | None = 50) -> np.ndarray:
    """At most ``max_frames`` training-structure indices, evenly spread (all for None)."""
    idx = np.arange(len(model.training_frames))
    if max_frames is not None and len(idx) > max_frames:
        idx = np.unique(np.linspace(0, len(idx) - 1, max_frames).round().astype(int))
    return idx


def leave_one_out_residuals(model, *, max_frames: int | None = 50, loo=None
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form leave-one-structure-out force residuals and their variance parts.

    Each training structure's forces are predicted by the model refitted without it (same
    sparse points and hyper-parameters; :func:`gpmlip.gp.validation.leave_one_out`); the parts
    are the model's Nystroem residual for that structure, the left-out prediction's weight
    variance and the force noise, so the calibration describes the current model, not the
    earlier ones of an on-the-fly run.

    Parameters
    ----------
    model : SparseGP
        Fitted, with force labels on at least one structure.
    max_frames : int, optional
        Use at most this many structures, evenly spread over the training set (each costs one
        Jacobian); None: all.
    loo : LeaveOneOut, optional
        Already computed (:func:`gpmlip.gp.validation.leave_one_out`); ``max_frames`` is then
        not used.

    Returns
    -------
    residuals : ndarray, shape (n_components,)
    parts : ndarray, shape (n_components, 3)
    """
    from gpmlip.gp.validation import leave_one_out

    frames = model.training_frames
    if loo is None:
        loo = leave_one_out(model, frames=loo_subset(model, max_frames))
    res, parts = [], []
    for k, i in enumerate(loo.frames):
        r = loo.force_residual[k]
        if r is None:
            continue
        nystroem = force_variance_parts(model, frames[int(i)].atoms)[..., 0].ravel()
        parts.append(np.column_stack([nystroem, np.ravel(loo.force_variance[k]),
                                      np.ravel(loo.force_noise_variance[k])]))
        res.append(np.ravel(r))
    if not res:
        raise DataError("no training structure has forces: leave-one-out calibration needs "
                        "force labels (or calibrate on held-out frames)")
    return np.concatenate(res), np.concatenate(parts)
