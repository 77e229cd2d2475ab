"""The optional quantum-chemistry labellers (opt-in: ``pytest -m dft``, needs tblite / GPAW)."""

from __future__ import annotations

import numpy as np
import pytest
from ase import units
from ase.build import bulk, molecule
from ase.md.verlet import VelocityVerlet

import gpmlip
from gpmlip.active import OnTheFlyLearner
from gpmlip.labelling.labellers import get_labeller, run_labeller

pytestmark = pytest.mark.dft


@pytest.mark.parametrize("timeout", [None, 120.0])
def test_tblite_labels_water(timeout):
    pytest.importorskip("tblite")
    water = molecule("H2O")
    water.rattle(0.02, seed=0)
    result = run_labeller(get_labeller("tblite", timeout=timeout), water)
    assert result.ok, result.error
    assert result.stress is None and np.abs(result.forces.sum(axis=0)).max() < 1e-3


def test_tblite_on_the_fly_water(tmp_path):
    pytest.importorskip("tblite")
    water = molecule("H2O")
    water.set_momenta(np.random.default_rng(0).normal(0, 0.5, (3, 3)))
    model = gpmlip.SparseGP(gpmlip.SOAP(["H", "O"], 4.0, 4, 3), n_jobs=1)
    learner = OnTheFlyLearner(model, "tblite", tmp_path / "run", optimise_every=0)
    water.calc = learner.calculator
    summary = learner.run(VelocityVerlet(water, 0.5 * units.fs), 20)
    assert summary["labels"] >= 2 and summary["failed_labels"] == 0


def test_gpaw_labels_aluminium():
    pytest.importorskip("gpaw")
    atoms = bulk("Al", "fcc", a=4.05)
    result = run_labeller(get_labeller({"name": "gpaw", "ecut": 250, "kpts": [3, 3, 3]},
                                       timeout=300), atoms)
    assert result.ok, result.error
    assert np.abs(result.forces).max() < 1e-4 and np.all(np.isfinite(result.stress))
