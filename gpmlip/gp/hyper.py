"""Hyper-parameters by maximising the DTC log marginal likelihood (O(m^3) per evaluation)."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
from ase.data import chemical_symbols
from scipy.optimize import minimize

from gpmlip.errors import NumericalError
from gpmlip.gp.solver import Hyper, log_likelihood_and_gradient

log = logging.getLogger(__name__)

BOUNDS = {"signal": (1e-3, 1e2), "energy": (1e-5, 1.0), "forces": (1e-4, 10.0),
          "stress": (1e-6, 1.0)}
"""Allowed ranges of the standard deviations (eV, eV/atom, eV/Å, eV/Å³)."""


@dataclass
class HyperResult:
    """Outcome of :func:`optimise`.

    Attributes
    ----------
    values : dict
        Name -> optimal standard deviation ("signal Cu", "energy", "forces", "stress").
    log_likelihood : float
        At the optimum.
    initial_log_likelihood : float
    at_bound : list of str
        Names whose optimum sits on a bound (the model may want a wider range or more data).
    success : bool
    message : str
    n_evaluations : int
    """

    values: dict[str, float]
    log_likelihood: float
    initial_log_likelihood: float
    at_bound: list[str]
    success: bool
    message: str
    n_evaluations: int


def _parameters(model):
    """(kind, key, name) of every free hyper-parameter with data behind it."""
    stats = {g: st for g, st in model.stats_.items() if st.n}
    present = set(model.sparse_.species.tolist())
    params = [("signal", z, f"signal {chemical_symbols[z]}") for z in model.species
              if z in present]
    params += [("noise", g, g) for g in ("energy", "forces", "stress") if g in stats]
    return params, stats


def objective(model, theta: np.ndarray):
    """Negative log likelihood and its gradient at ``theta`` = log variances (see ``_parameters``)."""
    params, stats = _parameters(model)
    variances = dict(model.signal_variance_)
    noise = dict(model.noise_)
    for (kind, key, _), t in zip(params, theta):
        if kind == "signal":
            variances[key] = float(np.exp(t))
        else:
            noise[key] = float(np.exp(0.5 * t))
    value, grad = log_likelihood_and_gradient(model.kmm_, model.sparse_.species, stats,
                                              Hyper(np.zeros(0), noise), variances)
    return -value, -np.array([grad[(kind, key)] for kind, key, _ in params])


def optimise(model, *, max_iterations: int = 200) -> HyperResult:
    """Maximise the log marginal likelihood over signal variances and noise levels.

    Uses L-BFGS-B in log-variance coordinates with the analytical gradient and the ranges of
    :data:`BOUNDS`; warns when an optimum sits on a bound.  The model is re-solved at the optimum.
    """
    params, _ = _parameters(model)
    theta0 = np.array([np.log(model.signal_variance_[key]) if kind == "signal"
                       else 2 * np.log(model.noise_[key]) for kind, key, _ in params])
    bounds = [tuple(2 * np.log(BOUNDS["signal" if kind == "signal" else key]))
              for kind, key, _ in params]
    initial = -objective(model, theta0)[0]
    n_calls = 0

    def fun(theta):
        nonlocal n_calls
        n_calls += 1
        try:
            return objective(model, theta)
        except (np.linalg.LinAlgError, ValueError, NumericalError):
            return 1e300, np.zeros_like(theta)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = minimize(fun, theta0, jac=True, method="L-BFGS-B", bounds=bounds,
                       options={"maxiter": max_iterations})
    values, at_bound = {}, []
    for (kind, key, name), t, (lo, hi) in zip(params, res.x, bounds):
        values[name] = float(np.exp(0.5 * t))
        if kind == "signal":
            model.signal_variance_[key] = float(np.exp(t))
        else:
            model.noise_[key] = float(np.exp(0.5 * t))
        if min(t - lo, hi - t) < 1e-3:
            at_bound.append(name)
    if at_bound:
        log.warning("hyper-parameters %s stopped at a bound of their range %s: the data may "
                    "not determine them (add labels of that kind, or fix them by hand)",
                    at_bound, {n: BOUNDS.get(n.split()[0]) for n in at_bound})
    model._solve()
    result = HyperResult(values, model.log_likelihood, float(initial), at_bound,
                         bool(res.success), str(res.message), n_calls)
    log.info("hyper-parameters: %s; log likelihood %.6g -> %.6g (%d evaluations)",
             {k: f"{v:.4g}" for k, v in values.items()}, initial, result.log_likelihood,
             n_calls)
    if not res.success:
        log.warning("hyper-parameter optimisation did not converge: %s", res.message)
    return result
