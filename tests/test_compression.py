"""dscribe's species compression in the engine: features against dscribe, every derivative
against finite differences, invariances, feature counts, model files and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from dscribe.descriptors import SOAP as DscribeSOAP

import gpmlip
from gpmlip.errors import SettingsError
from gpmlip.testing import (
    check_features,
    check_forces,
    check_invariances,
    check_jacobian,
    check_strain_jacobian,
    check_stress,
)

from conftest import MULTI_SETTINGS, emt_frames, ethanol, triclinic_three_species
from dscribe_oracle import reference_environments

MODES = ("crossover", "mu1nu1", "mu2")
WEIGHTS = {"H": 0.5, "C": 1.0, "O": 1.5, "Al": 0.8, "Si": 1.2}


def _soap(mode: str, weighting, species_weighting=None) -> gpmlip.SOAP:
    return gpmlip.SOAP(**MULTI_SETTINGS, weighting=weighting, compression=mode,
                       species_weighting=species_weighting)


def _dscribe(atoms, soap: gpmlip.SOAP) -> np.ndarray:
    s = soap.settings
    return DscribeSOAP(species=list(s.species), r_cut=s.r_cut, n_max=s.n_max, l_max=s.l_max,
                       sigma=s.sigma, weighting=s.weighting_dict,
                       compression=s.compression_dict,
                       periodic=bool(atoms.pbc.any())).create(atoms)


@pytest.mark.parametrize("mode", MODES + ("off",))
@pytest.mark.parametrize("weighting", ["smooth", None], ids=["smooth", "hard"])
@pytest.mark.parametrize("species_weighting", [None, WEIGHTS], ids=["unweighted", "weighted"])
def test_features_match_dscribe(mode, weighting, species_weighting):
    for atoms in (ethanol(), triclinic_three_species()):
        soap = _soap(mode, weighting, species_weighting)
        assert check_features(soap, atoms, _dscribe(atoms, soap), rtol=1e-8) < 1e-8


@pytest.mark.parametrize("mode", MODES)
def test_derivatives_match_finite_differences(mode):
    """Position and strain Jacobians (training rows) and the back-propagated forces and stress
    of a fitted model (prediction) against central differences."""
    for atoms in (ethanol(), triclinic_three_species()):
        soap = _soap(mode, "smooth", WEIGHTS)
        check_jacobian(soap, atoms, rtol=1e-6)
        if atoms.pbc.all():
            check_strain_jacobian(soap, atoms, rtol=1e-6)
    soap = gpmlip.SOAP(species=["Cu", "Au"], r_cut=4.0, n_max=3, l_max=2, compression=mode,
                       species_weighting={"Cu": 1.0, "Au": -0.7})
    model = gpmlip.SparseGP(soap, n_sparse=15, e0={"Cu": 0.0, "Au": 0.0}).fit(
        emt_frames(3, seed=0, alloy=True))
    atoms = emt_frames(1, seed=5, alloy=True)[0]
    check_forces(model.predict, atoms)
    check_stress(model.predict, atoms)


@pytest.mark.parametrize("mode", MODES)
def test_invariances(mode):
    for atoms in (ethanol(), triclinic_three_species()):
        errors = check_invariances(_soap(mode, "smooth", WEIGHTS), atoms, tol=1e-10)
        assert set(errors) >= {"translation", "rotation", "permutation"}


def test_feature_counts_follow_dscribe():
    """"off" grows with the square of the species count, crossover and mu1nu1 linearly, mu2 not
    at all; every count equals dscribe's."""
    species = ["H", "C", "N", "O", "S"]
    counts = {}
    for mode in MODES + ("off",):
        for k in (1, 3, 5):
            soap = gpmlip.SOAP(species=species[:k], r_cut=4.0, n_max=4, l_max=3,
                               compression=mode)
            ref = DscribeSOAP(species=species[:k], r_cut=4.0, n_max=4, l_max=3,
                              compression={"mode": mode}).get_number_of_features()
            assert soap.n_features == ref
            counts[mode, k] = soap.n_features
    # 5 equal-species blocks and 10 cross-species blocks of n_max^2 (l_max + 1) features
    assert counts["off", 5] == 5 * counts["off", 1] + 10 * 4 * 4 * 4
    assert counts["crossover", 5] == 5 * counts["crossover", 1]
    assert counts["mu1nu1", 5] == 5 * counts["mu1nu1", 1]
    assert counts["mu2", 5] == counts["mu2", 1]


@pytest.mark.parametrize("mode", MODES)
def test_compressed_model_round_trips_through_its_file(tmp_path, mode):
    soap = gpmlip.SOAP(species=["Cu", "Au"], r_cut=4.0, n_max=3, l_max=2, compression=mode,
                       species_weighting={"Cu": 1.0, "Au": 2.0})
    model = gpmlip.SparseGP(soap, n_sparse=10, e0={"Cu": 0.0, "Au": 0.0}).fit(
        emt_frames(2, seed=1, alloy=True))
    model.save(tmp_path / "model.npz")
    again = gpmlip.load_model(tmp_path / "model.npz")
    assert again.descriptor.settings == soap.settings
    atoms = emt_frames(1, seed=2, alloy=True)[0]
    a, b = model.predict(atoms), again.predict(atoms)
    assert a.energy == b.energy
    np.testing.assert_array_equal(a.forces, b.forces)


def test_uncompressed_settings_files_are_unchanged():
    """An uncompressed descriptor writes no compression keys: files read by earlier versions
    stay valid, and reading them gives "off"."""
    soap = gpmlip.SOAP(**MULTI_SETTINGS)
    data = soap.to_dict()
    assert "compression" not in data and "species_weighting" not in data
    assert gpmlip.SOAP.from_dict(data).settings.compression == "off"


def test_bad_compression_settings_are_clear_errors():
    with pytest.raises(SettingsError, match="compression='mu3'"):
        _soap("mu3", "smooth")
    with pytest.raises(SettingsError, match="give a weight for each"):
        _soap("mu2", "smooth", {"H": 1.0, "C": 1.0})
    with pytest.raises(SettingsError, match="finite"):
        _soap("mu2", "smooth", {**WEIGHTS, "O": float("nan")})
    with pytest.raises(SettingsError, match="no derivatives with compression"):
        reference_environments(_soap("mu1nu1", None), ethanol())


def test_settings_files_choose_the_compression():
    """``[descriptor] compression`` and ``species_weighting`` reach the SOAP; without them three
    species get the builder's default (mu1nu1) and one species none."""
    from gpmlip.cli import build, config

    desc = {"species": ["H", "C", "O"], "r_cut": 4.0, "compression": "crossover",
            "species_weighting": {"H": 0.5, "C": 1.0, "O": 1.0}}
    config.check({"descriptor": desc}, "test")
    soap = build.soap(desc)
    assert soap.settings.compression == "crossover"
    assert soap.settings.species_weighting_dict == {1: 0.5, 6: 1.0, 8: 1.0}
    assert build.soap({"species": ["H", "C", "O"], "r_cut": 4.0}).settings.compression == "mu1nu1"
    assert build.soap({"species": ["Cu"], "r_cut": 4.0}).settings.compression == "off"
    with pytest.raises(SettingsError, match="compression"):
        config.check({"descriptor": {"compression": 2}}, "test")
