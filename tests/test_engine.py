"""The compiled SOAP engine: back-propagation, training rows, threads, smoothness, pair list."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

import gpmlip
from gpmlip.gp.covariance import force_rows, strain_rows
from gpmlip.descriptors import _soap_kernels as kern
from gpmlip.descriptors.neighbours import PairList
from gpmlip.testing import check_forces, check_stress

from conftest import CU_SETTINGS, SMALL_CU, SMALL_MULTI, cu_bulk, emt_frames
from dscribe_oracle import reference_environments


def _gradient_of_positions(soap, atoms, grad):
    """d(sum_i grad_i . q_i)/dr from the engine's backward pass."""
    pairs = soap.pair_list(atoms)
    d_e = soap.backward(pairs, grad)
    out = np.zeros((len(atoms), 3))
    np.add.at(out, pairs.neighbour, d_e)
    np.add.at(out, pairs.centre, -d_e)
    strain = np.einsum("pa,pb->ab", d_e, pairs.vector)
    return out, strain


def test_backward_matches_finite_differences(system):
    """dE/dr and dE/deps of E = sum_i g_i . q_i (any g) against central differences."""
    name, atoms, soap, _ = system
    g = np.random.default_rng(0).normal(size=(len(atoms), soap.n_features))

    def energy(a):
        return float((soap.features(soap.pair_list(a)) * g).sum())

    grad, strain = _gradient_of_positions(soap, atoms, g)
    h = 1e-5
    atoms_to_move = [0, 7, 13, 31] if len(atoms) > 20 else range(len(atoms))
    scale = max(np.abs(grad).max(), np.abs(strain).max())   # a 1-atom cell has no force
    for i in atoms_to_move:
        for a in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, a] += h
            minus.positions[i, a] -= h
            fd = (energy(plus) - energy(minus)) / (2 * h)
            assert abs(fd - grad[i, a]) <= 1e-6 * scale, (name, i, a, fd, grad[i, a])
    if atoms.pbc.all():
        for a, b in ((0, 0), (1, 2), (2, 1)):
            eps = np.zeros((3, 3))
            eps[a, b] = h
            plus, minus = atoms.copy(), atoms.copy()
            plus.set_cell(atoms.cell.array @ (np.eye(3) + eps).T, scale_atoms=True)
            minus.set_cell(atoms.cell.array @ (np.eye(3) - eps).T, scale_atoms=True)
            fd = (energy(plus) - energy(minus)) / (2 * h)
            assert abs(fd - strain[a, b]) <= 1e-6 * np.abs(strain).max()


def test_training_rows_equal_the_dscribe_reference():
    """Force and stress kernel rows from the engine's Jacobian equal the dscribe-cluster ones."""
    atoms = cu_bulk(2)
    soap = gpmlip.SOAP(**CU_SETTINGS, weighting=None)
    model = gpmlip.SparseGP(soap, n_sparse=20, e0={"Cu": 0.0}).fit(emt_frames(2, seed=0))
    engine_env = soap.describe(atoms, gradients=True)
    reference = reference_environments(soap, atoms)
    np.testing.assert_allclose(engine_env.features, reference.features, rtol=0,
                               atol=1e-10 * np.abs(reference.features).max())
    for rows in (force_rows, strain_rows):
        a = rows(engine_env, model.sparse_, model.zeta)
        b = rows(reference, model.sparse_, model.zeta)
        # dscribe skips product-rule terms whose coefficients are both below 1e-8
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9 * np.abs(b).max())


def test_threads_equal_one_thread():
    """Each centre's outputs are computed by one thread: results are identical, not just close."""
    soap = gpmlip.SOAP(**SMALL_MULTI)
    atoms = emt_frames(1, seed=3, alloy=True)[0]
    pairs = soap.pair_list(atoms)
    eng = soap.engine
    order, arrays = eng._prepare(pairs)
    prm = eng._params()
    n, f = pairs.n_centres, eng.n_features
    out_p, out_s = np.empty((n, f)), np.empty((n, f))
    kern.power_spectrum(*arrays, prm, out_p)
    kern.power_spectrum_serial(*arrays, prm, out_s)
    np.testing.assert_array_equal(out_p, out_s)
    g = np.random.default_rng(1).normal(size=(n, f))
    b_p, b_s = np.empty((pairs.n_pairs, 3)), np.empty((pairs.n_pairs, 3))
    kern.backward(*arrays, prm, g, b_p)
    kern.backward_serial(*arrays, prm, g, b_s)
    np.testing.assert_array_equal(b_p, b_s)


def test_unsorted_pair_list_gives_the_same_result():
    soap = gpmlip.SOAP(**SMALL_CU)
    atoms = cu_bulk(1)
    pairs = soap.pair_list(atoms)
    perm = np.random.default_rng(2).permutation(pairs.n_pairs)
    shuffled = PairList(pairs.centre_species, pairs.centre[perm], pairs.vector[perm],
                        pairs.neighbour_species[perm], pairs.neighbour[perm])
    g = np.random.default_rng(3).normal(size=(len(atoms), soap.n_features))
    np.testing.assert_allclose(soap.features(shuffled), soap.features(pairs), rtol=1e-13)
    np.testing.assert_allclose(soap.backward(shuffled, g), soap.backward(pairs, g)[perm],
                               rtol=1e-12, atol=1e-14)


@pytest.fixture(scope="module")
def smooth_model():
    return gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU), n_sparse=20,
                           e0={"Cu": 0.0}).fit(emt_frames(4, seed=0))


def _pull_out(model, start: float, stop: float, h: float = 1e-3) -> float:
    """Largest trapezoid residual |E(x+h) - E(x) + (F(x) + F(x+h)) h / 2| along a path that
    pulls one atom of a cluster straight out through every neighbour's cutoff."""
    cluster = Atoms("Cu4", positions=[[0, 0, 0], [2.5, 0, 0], [1.25, 2.1, 0], [1.25, 0.7, 2.0]])
    direction = np.array([-1.0, -0.3, -0.2])
    direction /= np.linalg.norm(direction)
    worst, previous = 0.0, None
    for x in np.arange(start, stop, h):
        atoms = cluster.copy()
        atoms.positions[0] = x * direction
        p = model.predict(atoms, stress=False, variance=False)
        here = (p.energy, float(p.forces[0] @ direction))
        if previous is not None:
            worst = max(worst, abs(here[0] - previous[0] + (here[1] + previous[1]) * h / 2))
        previous = here
    return worst


def test_energy_is_smooth_through_the_cutoff(smooth_model):
    r0 = smooth_model.pair_cutoff
    # the pulled atom's distance to the others passes r0 = 4 Å around x = 1.6-3.5
    assert _pull_out(smooth_model, 1.0, r0 + 0.3) < 1e-8


def test_hard_cutoff_fails_the_smoothness_check():
    """The same check can fail: dscribe's unweighted density jumps at r_cut + padding."""
    model = gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU, weighting=None), n_sparse=20,
                            e0={"Cu": 0.0}).fit(emt_frames(4, seed=0))
    start = model.pair_cutoff - 2.6
    assert _pull_out(model, start, start + 0.4) > 1e-7


def test_forces_and_stress_match_finite_differences_smooth(smooth_model):
    atoms = emt_frames(1, seed=11)[0]
    check_forces(smooth_model.predict, atoms)
    check_stress(smooth_model.predict, atoms)


def test_pair_energies_equal_the_calculator(smooth_model):
    """The pair-list entry point (what LAMMPS calls) and GPCalculator agree."""
    atoms = emt_frames(1, seed=12)[0]
    calc = gpmlip.GPCalculator(smooth_model, uncertainty=True)
    atoms.calc = calc
    forces = atoms.get_forces()
    stress = atoms.get_stress(voigt=False)
    pairs = smooth_model.descriptor.pair_list(atoms)
    res = smooth_model.pair_energies(atoms.numbers, pairs.centre, pairs.neighbour,
                                     pairs.vector, pairs.neighbour_species, std=True)
    np.testing.assert_allclose(res.energies, atoms.get_potential_energies(), rtol=1e-12)
    f = np.zeros_like(forces)
    np.add.at(f, pairs.centre, res.dE_dr)
    np.add.at(f, pairs.neighbour, -res.dE_dr)
    np.testing.assert_allclose(f, forces, rtol=1e-10, atol=1e-12)
    virial = -np.einsum("pa,pb->ab", pairs.vector, res.dE_dr)
    np.testing.assert_allclose(-virial / atoms.get_volume(), stress, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(res.std, calc.results["local_std_normalised"],
                               rtol=1e-10)


def test_pair_energies_ignore_pairs_beyond_the_cutoff(smooth_model):
    atoms = emt_frames(1, seed=13)[0]
    pairs = smooth_model.descriptor.pair_list(atoms)
    far = np.array([[0.0, 0.0, smooth_model.pair_cutoff + 0.5]])
    base = smooth_model.pair_energies(atoms.numbers, pairs.centre, pairs.neighbour,
                                      pairs.vector, pairs.neighbour_species)
    more = smooth_model.pair_energies(
        atoms.numbers, np.r_[pairs.centre, 0], np.r_[pairs.neighbour, 1],
        np.vstack([pairs.vector, far]), np.r_[pairs.neighbour_species, 29])
    np.testing.assert_array_equal(more.energies, base.energies)
    assert np.all(more.dE_dr[-1] == 0.0)


def test_pair_energies_unknown_species_is_a_clear_error(smooth_model):
    with pytest.raises(gpmlip.UnknownSpeciesError, match="Au"):
        smooth_model.pair_energies([29, 29], [0], [1], [[2.5, 0, 0]], [79])
