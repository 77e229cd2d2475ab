"""Hyper-parameters by maximising the DTC log marginal likelihood (O(m^3) per evaluation).

Pure functions of a :class:`~gpmlip.gp.state.FittedState`: :func:`optimise` returns the optimal
values and :meth:`gpmlip.SparseGP.optimise_hyperparameters` applies them (a new, re-solved state).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from ase.data import chemical_symbols
from scipy.optimize import minimize

from gpmlip.errors import NumericalError
from gpmlip.gp.solver import Hyper, log_likelihood_and_gradient
from gpmlip.gp.state import FittedState

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
        Name -> optimal standard deviation ("signal Cu", "signal 2b" for the two-body term,
        "energy", "forces", "stress").
    log_likelihood : float
        At the optimum (of the re-solved model, once the model has applied the values).
    initial_log_likelihood : float
    at_bound : list of str
        Names whose optimum sits on a bound (the model may want a wider range or more data).
    success : bool
    message : str
    n_evaluations : int
    signal_variance : dict
        Atomic number -> optimal ``sigma_z^2`` (species without sparse points unchanged).
    noise : dict
        Optimal ``energy``, ``forces``, ``stress`` standard deviations (unchanged without data).
    """

    values: dict[str, float]
    log_likelihood: float
    initial_log_likelihood: float
    at_bound: list[str]
    success: bool
    message: str
    n_evaluations: int
    signal_variance: dict[int, float]
    noise: dict[str, float]


def _parameters(state: FittedState, species: Sequence[int]):
    """(kind, key, name) of every free hyper-parameter with data behind it."""
    stats = {g: st for g, st in state.stats.items() if st.n}
    present = set(state.column_keys.tolist())
    params = [("signal", z, f"signal {chemical_symbols[z]}") for z in species if z in present]
    params += [("signal", t.key, f"signal {t.name}") for t in state.terms if t.key in present]
    params += [("noise", g, g) for g in ("energy", "forces", "stress") if g in stats]
    return params, stats


def _values(state: FittedState, params, theta: np.ndarray):
    """Signal variances and noise levels with ``theta`` (log variances) put in."""
    variances = dict(state.signal_variance)
    noise = dict(state.noise)
    for (kind, key, _), t in zip(params, theta):
        if kind == "signal":
            variances[key] = float(np.exp(t))
        else:
            noise[key] = float(np.exp(0.5 * t))
    return variances, noise


def objective(state: FittedState, species: Sequence[int], theta: np.ndarray):
    """Negative log likelihood and its gradient at ``theta`` = log variances (see ``_parameters``)."""
    params, stats = _parameters(state, species)
    variances, noise = _values(state, params, theta)
    value, grad = log_likelihood_and_gradient(state.system_kmm, state.column_keys, stats,
                                              Hyper(np.zeros(0), noise), variances)
    return -value, -np.array([grad[(kind, key)] for kind, key, _ in params])


def optimise(state: FittedState, species: Sequence[int], *,
             max_iterations: int = 200) -> HyperResult:
    """Maximise the log marginal likelihood over signal variances and noise levels.

    Uses L-BFGS-B in log-variance coordinates with the analytical gradient and the ranges of
    :data:`BOUNDS`; warns when an optimum sits on a bound.  ``state`` is not changed: the result
    carries the optimal ``signal_variance`` and ``noise`` for the model to apply, and
    ``log_likelihood`` is the optimiser's value until the model re-solves.
    """
    params, _ = _parameters(state, species)
    theta0 = np.array([np.log(state.signal_variance[key]) if kind == "signal"
                       else 2 * np.log(state.noise[key]) for kind, key, _ in params])
    bounds = [tuple(2 * np.log(BOUNDS["signal" if kind == "signal" else key]))
              for kind, key, _ in params]
    initial = -objective(state, species, theta0)[0]
    n_calls = 0

    def fun(theta):
        nonlocal n_calls
        n_calls += 1
        try:
            return objective(state, species, theta)
        except (np.linalg.LinAlgError, ValueError, NumericalError):
            return 1e300, np.zeros_like(theta)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = minimize(fun, theta0, jac=True, method="L-BFGS-B", bounds=bounds,
                       options={"maxiter": max_iterations})
    values, at_bound = {}, []
    for (kind, key, name), t, (lo, hi) in zip(params, res.x, bounds):
        values[name] = float(np.exp(0.5 * t))
        if min(t - lo, hi - t) < 1e-3:
            at_bound.append(name)
    if at_bound:
        log.warning("hyper-parameters %s stopped at a bound of their range %s: the data may "
                    "not determine them: add labels of that kind, or fix them (settings "
                    "file: [model] energy_sigma, force_sigma, virial_sigma, signal_std, "
                    "without optimise; Python: the SparseGP arguments of those names)",
                    at_bound, {n: BOUNDS.get(n.split()[0]) for n in at_bound})
    signal_variance, noise = _values(state, params, res.x)
    result = HyperResult(values, float(-res.fun), float(initial), at_bound, bool(res.success),
                         str(res.message), n_calls, signal_variance, noise)
    if not res.success:
        log.warning("hyper-parameter optimisation did not converge: %s", res.message)
    return result
