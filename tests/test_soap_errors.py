"""Bad input to the descriptor: a clear gpmlip error that names the problem and the fix."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

import gpmlip
from gpmlip.errors import SettingsError, StructureError, UnknownSpeciesError

from conftest import CU_SETTINGS, cu_bulk


@pytest.fixture
def soap():
    return gpmlip.SOAP(**CU_SETTINGS)


@pytest.mark.parametrize("gradients", [False, True])
def test_unknown_species(soap, gradients):
    atoms = cu_bulk(1)
    atoms[0].symbol = "Ag"
    with pytest.raises(UnknownSpeciesError, match=r"\['Ag'\].*species=\['Cu', 'Ag'\]"):
        soap.describe(atoms, gradients=gradients)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_positions(soap, value):
    atoms = cu_bulk(1)
    atoms.positions[2, 1] = value
    with pytest.raises(StructureError, match=r"non-finite positions for atoms \[2\]"):
        soap.describe(atoms)


@pytest.mark.parametrize("r_cut", [0.0, -1.0, 0.5, float("nan")])
def test_bad_cutoff(r_cut):
    with pytest.raises(SettingsError, match="r_cut"):
        gpmlip.SOAP(["Cu"], r_cut=r_cut, n_max=4, l_max=4)


@pytest.mark.parametrize("n_max,l_max,word", [(0, 4, "n_max"), (21, 4, "n_max"), (2.5, 4, "n_max"),
                                              (4, -1, "l_max"), (4, 21, "l_max")])
def test_basis_out_of_range(n_max, l_max, word):
    with pytest.raises(SettingsError, match=word):
        gpmlip.SOAP(["Cu"], r_cut=4.0, n_max=n_max, l_max=l_max)


def test_bad_species_setting():
    with pytest.raises(SettingsError, match="unknown chemical symbol"):
        gpmlip.SOAP(["Xx"], r_cut=4.0, n_max=4, l_max=4)
    with pytest.raises(SettingsError, match="species is empty"):
        gpmlip.SOAP([], r_cut=4.0, n_max=4, l_max=4)


@pytest.mark.parametrize("gradients", [False, True])
def test_overlapping_atoms(soap, gradients):
    atoms = cu_bulk(1)
    atoms.positions[1] = atoms.positions[0] + [0.05, 0.0, 0.0]
    with pytest.raises(StructureError, match="overlap"):
        soap.describe(atoms, gradients=gradients)


def test_coincident_atoms(soap):
    atoms = cu_bulk(1)
    atoms.positions[1] = atoms.positions[0]
    with pytest.raises(StructureError, match="overlap"):
        soap.describe(atoms)


def test_overlap_through_periodic_image(soap):
    atoms = Atoms("Cu2", positions=[[0.01, 1.0, 1.0], [2.95, 1.0, 1.0]], cell=[3.0, 4.0, 4.0],
                  pbc=True)
    with pytest.raises(StructureError, match="overlap"):
        soap.describe(atoms)


def test_empty_atoms(soap):
    with pytest.raises(StructureError, match="no atoms"):
        soap.describe(Atoms())


def test_periodic_axis_without_cell(soap):
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [2.5, 0, 0]], pbc=True)
    with pytest.raises(StructureError, match="cell"):
        soap.describe(atoms)


def test_errors_share_one_base(soap):
    with pytest.raises(gpmlip.GpmlipError):
        soap.describe(Atoms())
