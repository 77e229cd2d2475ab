"""Labellers: every way a reference calculation can fail becomes a failed label, not a crash."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from gpmlip.errors import SettingsError
from gpmlip.labelling.labellers import Labeller, LabelResult, get_labeller, run_labeller


def cu():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=0)
    return atoms


class Raising(EMT):
    def calculate(self, *args, **kwargs):
        raise RuntimeError("SCF did not converge")


class NaNForces(EMT):
    def calculate(self, *args, **kwargs):
        super().calculate(*args, **kwargs)
        self.results["forces"][0, 0] = np.nan


class Hanging(EMT):
    def calculate(self, *args, **kwargs):
        time.sleep(60)


class Crashing(EMT):
    def calculate(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("timeout", [None, 20.0])
def test_emt_labels_match_emt(timeout):
    atoms = cu()
    result = run_labeller(get_labeller("emt", timeout=timeout), atoms)
    ref = atoms.copy()
    ref.calc = EMT()
    assert result.ok and result.error == ""
    assert result.energy == pytest.approx(ref.get_potential_energy(), abs=1e-12)
    np.testing.assert_allclose(result.forces, ref.get_forces(), atol=1e-12)
    np.testing.assert_allclose(result.stress, ref.get_stress(), atol=1e-12)
    assert atoms.calc is None   # the input is not modified


def test_lj_from_config_mapping():
    lab = get_labeller({"name": "lj", "sigma": 2.3, "epsilon": 0.4, "rc": 6.0})
    assert lab.describe()["settings"] == {"sigma": 2.3, "epsilon": 0.4, "rc": 6.0}
    assert run_labeller(lab, cu()).ok


@pytest.mark.parametrize("calc, timeout, message", [
    (Raising, None, "SCF did not converge"),
    (Raising, 20.0, "SCF did not converge"),
    (NaNForces, None, "non-finite forces"),
    (Hanging, 1.0, "timed out after 1 s"),
    (Crashing, 20.0, "process died"),
])
def test_failures_are_results(calc, timeout, message):
    start = time.perf_counter()
    result = run_labeller(Labeller(calc.__name__, calc, timeout=timeout), cu())
    assert not result.ok and message in result.error
    assert result.forces is None
    assert time.perf_counter() - start < 15


def test_label_result_round_trips_json():
    result = run_labeller(get_labeller("emt"), cu())
    back = LabelResult.from_dict(result.to_dict())
    assert back.energy == result.energy
    np.testing.assert_array_equal(back.forces, result.forces)


@pytest.mark.parametrize("spec", ["vasp", {"name": "nope"}, 42])
def test_unknown_labellers_are_named(spec):
    with pytest.raises(SettingsError, match="labeller"):
        get_labeller(spec)


def test_missing_optional_labeller_says_what_to_install():
    try:
        import tblite  # noqa: F401
    except ImportError:
        result = run_labeller(get_labeller("tblite"), cu())
        assert not result.ok and "pip install" in result.error
    else:
        pytest.skip("tblite is installed here")
