"""Stacked descriptors (SOAP at two cutoffs): Jacobians, back-propagation, model and file."""

from __future__ import annotations

import numpy as np
import pytest

import gpmlip
from gpmlip.descriptors import descriptor_from_dict
from gpmlip.errors import SettingsError
from gpmlip.testing import check_forces, check_invariances, check_jacobian, \
    check_strain_jacobian, check_stress

from conftest import SMALL_MULTI, cu_slab, emt_frames


def stacked(species=("Cu",), weights=(1.0, 2.0)) -> gpmlip.Stacked:
    return gpmlip.Stacked([gpmlip.SOAP(list(species), r_cut=3.0, n_max=3, l_max=3, sigma=0.4),
                           gpmlip.SOAP(list(species), r_cut=4.5, n_max=4, l_max=2,
                                       weighting={"function": "poly", "r0": 5.5, "c": 1.0,
                                                  "m": 1.0})],
                          weights)


def test_parts_are_weighted_unit_vectors():
    desc, atoms = stacked(), emt_frames(1, seed=3)[0]
    q = desc.describe(atoms).features
    a, b = (p.describe(atoms).features for p in desc.parts)
    n = a.shape[1]
    assert q.shape[1] == n + b.shape[1] == desc.n_features
    np.testing.assert_allclose(np.linalg.norm(q[:, :n], axis=1), np.sqrt(1 / 3))
    np.testing.assert_allclose(q[:, n:] * np.sqrt(3 / 2), b / np.linalg.norm(b, axis=1)[:, None])
    assert desc.neighbour_cutoff == desc.parts[1].neighbour_cutoff


@pytest.mark.parametrize("build", [lambda: emt_frames(1, seed=5, repeat=1)[0], cu_slab])
def test_jacobians_against_finite_differences(build):
    desc, atoms = stacked(), build()
    assert check_jacobian(desc, atoms, rtol=1e-6, atom_indices=[0, 1]) < 1e-6
    if atoms.pbc.all():
        assert check_strain_jacobian(desc, atoms, rtol=1e-6) < 1e-6
    assert max(check_invariances(desc, atoms, tol=1e-10).values()) < 1e-10


def test_backward_equals_jacobian_product():
    desc, atoms = stacked(), emt_frames(1, seed=6)[0]
    env = desc.describe(atoms, gradients=True)
    grad = np.random.default_rng(0).normal(size=env.features.shape)
    pairs = desc.pair_list(atoms)
    per_pair = desc.backward(pairs, grad)
    forces = np.zeros((len(atoms), 3))       # dE/dr_j = sum_p dE/dr_ij (j) - (i)
    np.add.at(forces, pairs.neighbour, per_pair)
    np.add.at(forces, pairs.centre, -per_pair)
    np.testing.assert_allclose(forces, env.position_vjp(grad), atol=1e-10)


def test_model_forces_stress_and_file(tmp_path):
    desc = stacked(SMALL_MULTI["species"])
    frames = emt_frames(4, seed=1, alloy=True)
    model = gpmlip.SparseGP(desc, n_sparse=8, e0="fit").fit(frames)
    atoms = emt_frames(1, seed=11, alloy=True)[0]
    check_forces(model.predict, atoms)
    check_stress(model.predict, atoms)
    model.save(tmp_path / "m")
    again = gpmlip.load_model(tmp_path / "m")
    assert isinstance(again.descriptor, gpmlip.Stacked)
    assert gpmlip.gp.container.read_model_file(tmp_path / "m")[0]["format_version"] == 3
    a, b = model.predict(atoms), again.predict(atoms)
    np.testing.assert_allclose(b.energy, a.energy, rtol=1e-12)
    np.testing.assert_allclose(b.forces, a.forces, atol=1e-12)


def test_bad_settings_are_clear_errors():
    one = gpmlip.SOAP(["Cu"], r_cut=3.0, n_max=2, l_max=2)
    with pytest.raises(SettingsError, match="two or more"):
        gpmlip.Stacked([one])
    with pytest.raises(SettingsError, match="same species"):
        gpmlip.Stacked([one, gpmlip.SOAP(["Cu", "Au"], r_cut=3.0, n_max=2, l_max=2)])
    with pytest.raises(SettingsError, match="positive number per part"):
        gpmlip.Stacked([one, one], [1.0, -1.0])
    with pytest.raises(SettingsError, match="unknown to this gpmlip"):
        descriptor_from_dict({"type": "ACE"})
    assert descriptor_from_dict(stacked().to_dict()).to_dict() == stacked().to_dict()
