"""Cheap physical invariances of a fitted model: momentum, extensivity, rotations."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import gpmlip

from conftest import SMALL_MULTI, emt_frames


@pytest.fixture(scope="module")
def model():
    frames = emt_frames(3, seed=40, alloy=True)
    return gpmlip.SparseGP(gpmlip.SOAP(**SMALL_MULTI), n_sparse=10).fit(frames)


@pytest.fixture(scope="module")
def atoms():
    return emt_frames(1, seed=41, alloy=True)[0]


def test_forces_sum_to_zero(model, atoms):
    forces = model.predict(atoms).forces
    assert np.abs(forces).max() > 1e-3                   # not trivially zero
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-10)


def test_a_supercell_is_copies_of_the_cell(model, atoms):
    cell = model.predict(atoms)
    big = model.predict(atoms.repeat((2, 1, 3)))
    assert big.energy == pytest.approx(6 * cell.energy, rel=1e-10)
    np.testing.assert_allclose(big.energies, np.tile(cell.energies, 6), atol=1e-10)
    np.testing.assert_allclose(big.forces, np.tile(cell.forces, (6, 1)), atol=1e-10)
    np.testing.assert_allclose(big.local_std_normalised, np.tile(cell.local_std_normalised, 6),
                               atol=1e-10)
    np.testing.assert_allclose(big.stress, cell.stress, atol=1e-10)


def test_forces_rotate_with_the_structure(model, atoms):
    rot = Rotation.from_euler("zyx", [0.7, -0.4, 1.9]).as_matrix()
    turned = atoms.copy()
    turned.set_cell(atoms.cell.array @ rot.T, scale_atoms=False)
    turned.positions = atoms.positions @ rot.T
    a, b = model.predict(atoms), model.predict(turned)
    assert b.energy == pytest.approx(a.energy, rel=1e-10)
    np.testing.assert_allclose(b.energies, a.energies, atol=1e-10)
    np.testing.assert_allclose(b.forces, a.forces @ rot.T, atol=1e-9)
    np.testing.assert_allclose(b.stress, rot @ a.stress @ rot.T, atol=1e-10)
    np.testing.assert_allclose(b.local_std_normalised, a.local_std_normalised, atol=1e-9)
