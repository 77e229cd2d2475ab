"""SOAP features and Jacobians: against dscribe, finite differences and symmetry."""

from __future__ import annotations

import numpy as np
import pytest
from dscribe.descriptors import SOAP as DscribeSOAP

import gpmlip
from gpmlip.testing import (
    check_features,
    check_invariances,
    check_jacobian,
    check_strain_jacobian,
)

from conftest import CU_SETTINGS, cu_bulk


def dscribe_reference(atoms, settings) -> np.ndarray:
    """dscribe's own periodic create (non-periodic for a structure without a cell)."""
    periodic = bool(atoms.pbc.any())
    settings = {k: v for k, v in settings.items() if v is not None}
    return DscribeSOAP(periodic=periodic, **settings).create(atoms)


def test_features_match_dscribe(system):
    name, atoms, soap, settings = system
    err = check_features(soap, atoms, dscribe_reference(atoms, settings), rtol=1e-8)
    assert err < 1e-8


def test_features_match_dscribe_periodic_on_molecule_in_a_box():
    from conftest import MULTI_SETTINGS, ethanol

    atoms = ethanol()
    atoms.set_cell([12.0, 12.0, 12.0])
    atoms.center()
    ref = DscribeSOAP(periodic=True, **MULTI_SETTINGS).create(atoms)
    check_features(gpmlip.SOAP(**MULTI_SETTINGS, weighting=None), atoms, ref)


def test_features_108_atoms_match_dscribe():
    atoms = cu_bulk(3)
    for w in ("smooth", None):
        soap = gpmlip.SOAP(**CU_SETTINGS, weighting=w)
        ref = dscribe_reference(atoms, {**CU_SETTINGS, "weighting": soap.settings.weighting_dict})
        check_features(soap, atoms, ref)


def test_jacobian_matches_finite_differences(system):
    name, atoms, soap, _ = system
    # Displacing every atom of the 32-atom bulk costs 192 descriptor calls: a spread subset is
    # enough there, every atom elsewhere.
    subset = [0, 7, 13, 31] if len(atoms) > 20 else None
    check_jacobian(soap, atoms, rtol=1e-6, atom_indices=subset)


def test_jacobian_includes_own_periodic_images():
    """In a 1-atom cell all neighbours are images of the centre: the Jacobian must be zero
    (moving the only atom translates the crystal) and the strain Jacobian must not be."""
    from conftest import cu_single

    soap = gpmlip.SOAP(**CU_SETTINGS)
    env = soap.describe(cu_single(), gradients=True)
    assert env.jacobian.shape[0] == 1
    scale = np.abs(env.strain_jacobian).max()
    assert scale > 1e-3
    assert np.abs(env.jacobian).max() < 1e-10 * scale


def test_strain_jacobian_matches_finite_differences(system):
    name, atoms, soap, _ = system
    check_strain_jacobian(soap, atoms, rtol=1e-6)


def test_invariances(system):
    name, atoms, soap, _ = system
    errors = check_invariances(soap, atoms, tol=1e-10)
    assert set(errors) >= {"translation", "rotation", "permutation"}


def test_jacobian_storage_is_linear_in_atoms():
    """One Jacobian row per (centre, distinct neighbour atom): O(N * neighbours), never N^2."""
    from gpmlip.descriptors import neighbour_list

    soap = gpmlip.SOAP(**CU_SETTINGS)
    atoms = cu_bulk(4)  # 256 atoms: the cell is wider than two cutoff spheres
    env = soap.describe(atoms, gradients=True)
    pairs = neighbour_list(atoms, soap.neighbour_cutoff)
    assert len(env.pair_centre) == len(pairs.centre) + len(atoms)
    per_atom = len(env.pair_centre) / len(atoms)
    assert per_atom < 150  # fcc Cu has 134 atoms within r_cut + padding = 6.86 Å
    # the neighbour count per atom does not grow with the cell
    big = cu_bulk(8)  # 2048 atoms
    big_pairs = neighbour_list(big, soap.neighbour_cutoff)
    assert abs(len(big_pairs.centre) / len(big) - len(pairs.centre) / len(atoms)) < 3


def test_vector_jacobian_products_match_dense():
    atoms = cu_bulk(2)
    env = gpmlip.SOAP(**CU_SETTINGS).describe(atoms, gradients=True)
    g = np.random.default_rng(0).normal(size=env.features.shape)
    dense = env.dense_jacobian()
    np.testing.assert_allclose(env.position_vjp(g), np.einsum("if,ijaf->ja", g, dense),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(env.strain_vjp(g), np.einsum("if,iabf->ab", g,
                                                            env.strain_jacobian))


def test_settings_round_trip():
    soap = gpmlip.SOAP(**CU_SETTINGS)
    again = gpmlip.SOAP.from_dict(soap.to_dict())
    assert again.settings == soap.settings
    assert again.n_features == soap.n_features == 252


@pytest.mark.parametrize("w0", [0.0, 0.3])
def test_soft_weighting_with_centre_weight(w0):
    """A softer poly weighting reaching past r_cut (r0 = r_cut + 1 Å, m = 1) with the centre
    atom's own density weighted by ``w0``: features equal dscribe's, Jacobians equal finite
    differences (dscribe computes no derivatives with a weighting)."""
    from conftest import MULTI_SETTINGS, triclinic_three_species

    for settings, atoms, subset in ((CU_SETTINGS, cu_bulk(), [0, 13, 31]),
                                    (MULTI_SETTINGS, triclinic_three_species(), None)):
        weighting = {"function": "poly", "r0": settings["r_cut"] + 1.0, "m": 1.0, "c": 1.0,
                     "w0": w0}
        soap = gpmlip.SOAP(**settings, weighting=weighting)
        ref = dscribe_reference(atoms, {**settings, "weighting": weighting})
        check_features(soap, atoms, ref)
        check_jacobian(soap, atoms, rtol=1e-6, atom_indices=subset)
        check_strain_jacobian(soap, atoms, rtol=1e-6)
    weighting = {"function": "poly", "r0": CU_SETTINGS["r_cut"] + 1.0, "m": 1.0, "c": 1.0}
    centre_free = gpmlip.SOAP(**CU_SETTINGS, weighting={**weighting, "w0": 0.0})
    with_centre = gpmlip.SOAP(**CU_SETTINGS, weighting={**weighting, "w0": 1.0})
    atoms = cu_bulk()
    assert not np.allclose(centre_free.describe(atoms).features,
                           with_centre.describe(atoms).features)
