"""The normalised dot-product kernel: values, species separation, gradient vs finite differences."""

from __future__ import annotations

import numpy as np
import pytest

from gpmlip.errors import SettingsError, UnknownSpeciesError
from gpmlip.gp.kernels import NormalizedDotProduct


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(5, 7)) + 1.0
    x = rng.normal(size=(4, 7)) + 1.0
    zq = np.array([1, 1, 8, 8, 1])
    zx = np.array([1, 8, 1, 8])
    return q, zq, x, zx


@pytest.mark.parametrize("zeta", [1, 2, 4])
def test_values_and_species(data, zeta):
    q, zq, x, zx = data
    k = NormalizedDotProduct(zeta, {1: 2.0, 8: 0.5})
    K = k(q, zq, x, zx)
    qh = q / np.linalg.norm(q, axis=1, keepdims=True)
    xh = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert K[0, 0] == pytest.approx(2.0 * (qh[0] @ xh[0]) ** zeta)
    assert K[2, 1] == pytest.approx(0.5 * (qh[2] @ xh[1]) ** zeta)
    assert K[0, 1] == 0.0 and K[2, 0] == 0.0  # different species never correlate
    np.testing.assert_allclose(np.diag(k(q, zq, q, zq)), k.diag(q, zq))
    # scale invariance of the normalised kernel
    np.testing.assert_allclose(k(3.0 * q, zq, x, zx), K)


@pytest.mark.parametrize("zeta", [1, 2, 4])
def test_gradient_matches_finite_differences(data, zeta):
    q, zq, x, zx = data
    k = NormalizedDotProduct(zeta, {1: 2.0, 8: 0.5})
    grad = k.gradient(q, zq, x, zx)
    h = 1e-6
    fd = np.empty_like(grad)
    for f in range(q.shape[1]):
        dq = np.zeros_like(q)
        dq[:, f] = h
        fd[:, :, f] = (k(q + dq, zq, x, zx) - k(q - dq, zq, x, zx)) / (2 * h)
    assert np.abs(grad - fd).max() / np.abs(fd).max() < 1e-7
    w = np.random.default_rng(1).normal(size=len(x))
    np.testing.assert_allclose(k.gradient_dot(q, zq, x, zx, w), np.einsum("nmf,m->nf", grad, w),
                               rtol=1e-12, atol=1e-14)


def test_bad_settings_and_unknown_species(data):
    q, zq, x, zx = data
    with pytest.raises(SettingsError, match="zeta"):
        NormalizedDotProduct(0, {1: 1.0})
    with pytest.raises(SettingsError, match="signal variance"):
        NormalizedDotProduct(2, {1: -1.0})
    with pytest.raises(UnknownSpeciesError, match=r"\['O'\].*no signal variance"):
        NormalizedDotProduct(2, {1: 1.0})(q, zq, x, zx)


def test_round_trip():
    k = NormalizedDotProduct(4, {29: 1.5})
    assert NormalizedDotProduct.from_dict(k.to_dict()) == k
