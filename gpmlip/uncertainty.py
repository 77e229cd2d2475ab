"""How well predicted standard deviations match actual errors: the calibration metrics.

Every function takes flat arrays of errors (prediction minus reference) and predicted standard
deviations of the same quantities (e.g. force components, eV/Å) and returns plain numbers, so any
source of residuals (held-out frames, labels of an on-the-fly run before they were learnt,
leave-one-out residuals) is measured the same way.

* ``zms``: mean of ``z^2 = (error / std)^2``; 1 when calibrated, > 1 overconfident, < 1 too safe.
* ``coverage``: fraction of errors within ``k`` std; 68.3 % (k = 1) and 95.4 % (k = 2) for a
  calibrated Gaussian.
* ``miscalibration_area``: mean absolute gap between the observed and the expected fraction of
  errors inside the central interval, over all interval probabilities (0 when calibrated).
* ``nll``: mean Gaussian negative log likelihood of the errors.
* ``spearman`` and ``spearman_reference``: rank correlation of std with |error|, and the one a
  perfectly calibrated model with the same std values reaches (errors drawn from N(0, std^2),
  seeded): with a narrow spread of std even a perfect model has a low rho, so read the two
  together.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from gpmlip.errors import DataError

EXPECTED_COVERAGE = {1: 0.6827, 2: 0.9545}
"""Fraction of a Gaussian within 1 and 2 standard deviations."""


def _pair(errors, std) -> tuple[np.ndarray, np.ndarray]:
    e = np.ravel(np.asarray(errors, dtype=float))
    s = np.ravel(np.asarray(std, dtype=float))
    if e.shape != s.shape:
        raise DataError(f"errors ({e.size}) and std ({s.size}) must have the same number of "
                        "entries: one std per error")
    if e.size == 0:
        raise DataError("no errors to measure calibration on: give at least one")
    if not (np.all(np.isfinite(e)) and np.all(np.isfinite(s))) or np.any(s <= 0):
        raise DataError("errors must be finite and std positive (a zero std makes z infinite)")
    return e, s


def zms(errors, std) -> float:
    """Mean of ``(error / std)^2`` (1 when calibrated)."""
    e, s = _pair(errors, std)
    return float(np.mean((e / s) ** 2))


def coverage(errors, std, k: float) -> float:
    """Fraction of errors with ``|error| <= k std``."""
    e, s = _pair(errors, std)
    return float(np.mean(np.abs(e) <= k * s))


def miscalibration_area(errors, std, n_levels: int = 99) -> float:
    """Mean |observed - expected| fraction inside the central interval of probability p."""
    e, s = _pair(errors, std)
    z = np.sort(np.abs(e / s))
    p = np.linspace(0.01, 0.99, n_levels)
    half_width = stats.norm.ppf(0.5 + p / 2)
    observed = np.searchsorted(z, half_width, side="right") / len(z)
    return float(np.mean(np.abs(observed - p)))


def nll(errors, std) -> float:
    """Mean Gaussian negative log likelihood, ``0.5 log(2 pi s^2) + e^2 / (2 s^2)``."""
    e, s = _pair(errors, std)
    return float(np.mean(0.5 * np.log(2 * np.pi * s ** 2) + 0.5 * (e / s) ** 2))


def spearman(errors, std) -> float:
    """Spearman rank correlation between ``std`` and ``|error|``."""
    e, s = _pair(errors, std)
    if len(e) < 3 or np.ptp(s) == 0:
        return float("nan")
    return float(stats.spearmanr(s, np.abs(e)).statistic)


def spearman_reference(std, seed: int = 0, repeats: int = 5) -> float:
    """The Spearman rho of a perfectly calibrated model with these std values (seeded)."""
    s = np.ravel(np.asarray(std, dtype=float))
    rng = np.random.default_rng(seed)
    values = [spearman(rng.normal(0.0, s), s) for _ in range(repeats)]
    return float(np.mean(values))


def calibration_metrics(errors, std, seed: int = 0) -> dict[str, float]:
    """All metrics of this module in one dict (what ``gpmlip eval`` prints)."""
    e, s = _pair(errors, std)
    return {"n": int(len(e)), "rmse": float(np.sqrt(np.mean(e ** 2))),
            "rms_std": float(np.sqrt(np.mean(s ** 2))), "zms": zms(e, s),
            "coverage_1std": coverage(e, s, 1), "coverage_2std": coverage(e, s, 2),
            "miscalibration_area": miscalibration_area(e, s), "nll": nll(e, s),
            "spearman": spearman(e, s), "spearman_reference": spearman_reference(s, seed)}


def format_metrics(metrics: dict[str, float], title: str = "force calibration") -> str:
    """One readable paragraph of :func:`calibration_metrics` (std in eV/Å, shown in meV/Å)."""
    m = metrics
    return (f"{title} ({m['n']} components): RMSE {1000 * m['rmse']:.1f} meV/Å, RMS predicted "
            f"std {1000 * m['rms_std']:.1f} meV/Å; ZMS {m['zms']:.3g} (1 = calibrated); within "
            f"1 std {100 * m['coverage_1std']:.1f} % (68.3), within 2 std "
            f"{100 * m['coverage_2std']:.1f} % (95.4); miscalibration area "
            f"{m['miscalibration_area']:.3f}; NLL {m['nll']:.3f}; Spearman rho "
            f"{m['spearman']:.2f} (a calibrated model with these std: "
            f"{m['spearman_reference']:.2f})")
