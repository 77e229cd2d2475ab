"""Every covariance block against finite differences of the energy block (FLARE-style)."""

import numpy as np
import pytest

import gpmlip
from gpmlip.gp.covariance import (SparseSet, energy_gradient, energy_rows, force_prior_variance,
                               force_rows, local_kernel,
                               strain_rows, voigt)
from gpmlip.testing import finite_difference_jacobian, finite_difference_strain

from conftest import SYSTEMS


def _sparse(descriptor, atoms, m=4, seed=0):
    env = descriptor.describe(atoms)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(atoms), min(m, len(atoms)), replace=False)
    x = env.features[pick] + 0.05 * rng.random((len(pick), env.features.shape[1]))
    return SparseSet(x, env.species[pick])


@pytest.mark.parametrize("name", sorted(SYSTEMS))
@pytest.mark.parametrize("zeta", [2, 4])
def test_force_rows_are_minus_energy_row_gradient(name, zeta):
    build, settings = SYSTEMS[name]
    atoms, soap = build(), gpmlip.SOAP(**settings)
    sparse = _sparse(soap, atoms)
    rows = force_rows(soap.describe(atoms, gradients=True), sparse, zeta)
    fd = finite_difference_jacobian(lambda a: energy_rows(soap.describe(a), sparse, zeta), atoms)
    scale = np.abs(fd).max()
    assert scale > 0 or name == "cu_single"   # one atom: moving it is a translation
    np.testing.assert_allclose(rows, -fd, atol=max(1e-6 * scale, 1e-9))


@pytest.mark.parametrize("name", ["cu_bulk", "cu_single", "triclinic"])
def test_strain_rows_are_energy_row_strain_derivative(name):
    build, settings = SYSTEMS[name]
    atoms, soap = build(), gpmlip.SOAP(**settings)
    sparse = _sparse(soap, atoms)
    rows = strain_rows(soap.describe(atoms, gradients=True), sparse, 4)
    fd = finite_difference_strain(lambda a: energy_rows(soap.describe(a), sparse, 4), atoms)
    expected = voigt(0.5 * (fd + fd.transpose(1, 0, 2)))
    scale = np.abs(expected).max()
    np.testing.assert_allclose(rows, expected, atol=1e-6 * scale)


def test_energy_gradient_matches_weighted_force_rows(system):
    _, atoms, soap, _ = system
    sparse = _sparse(soap, atoms, m=5)
    env = soap.describe(atoms, gradients=True)
    w = np.random.default_rng(1).standard_normal(len(sparse))
    direct = -env.position_vjp(energy_gradient(env, sparse, 4, w))
    np.testing.assert_allclose(direct, force_rows(env, sparse, 4) @ w, atol=1e-10)


def test_species_never_correlate():
    build, settings = SYSTEMS["triclinic"]
    atoms, soap = build(), gpmlip.SOAP(**settings)
    env = soap.describe(atoms)
    sparse = SparseSet(env.features, env.species)
    k = local_kernel(env.features, env.species, sparse, 4)
    assert np.allclose(k, np.eye(len(atoms)) * np.diag(k))
    np.testing.assert_allclose(np.diag(k), 1.0)


def _prior_force_variance_fd(soap, atoms, zeta, sigma2, a, alpha, h=1e-3):
    """Mixed second difference of sum_ij sigma^2 delta(z) k(q_i(r + s e), q_j(r + t e)).

    The four kernel matrices are combined element by element before summing, so round-off
    does not grow with the number of pairs.
    """
    feats = {}
    for s in (+1, -1):
        moved = atoms.copy()
        moved.positions[a, alpha] += s * h
        feats[s] = soap.describe(moved)
    w = np.array([sigma2[int(z)] for z in atoms.numbers])
    mixed = 0.0
    for s in (+1, -1):
        for t in (+1, -1):
            es, et = feats[s], feats[t]
            mixed = mixed + s * t * local_kernel(es.features, es.species,
                                                 SparseSet(et.features, et.species), zeta)
    return float((w[:, None] * mixed).sum()) / (4 * h * h)


@pytest.mark.parametrize("name", ["cu_bulk", "molecule", "triclinic"])
@pytest.mark.parametrize("zeta", [1, 2, 4])
def test_force_prior_variance_is_mixed_second_derivative(name, zeta):
    build, settings = SYSTEMS[name]
    atoms, soap = build(), gpmlip.SOAP(**settings)
    sigma2 = {int(z): 0.5 + 0.3 * k for k, z in enumerate(sorted(set(atoms.numbers)))}
    prior = force_prior_variance(soap.describe(atoms, gradients=True), zeta, sigma2)
    assert prior.shape == (len(atoms), 3) and np.all(prior > 0)
    for a in (0, len(atoms) - 1):
        for alpha in range(3):
            fd = _prior_force_variance_fd(soap, atoms, zeta, sigma2, a, alpha)
            assert prior[a, alpha] == pytest.approx(fd, rel=2e-4, abs=1e-8 * prior.max())
