"""On-the-fly learning in-process: dynamics kinds, failure policies, budget, settings."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.md.langevin import Langevin
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS

import gpmlip
from gpmlip.active import OnTheFlyLearner, OTFSettings
from gpmlip.errors import GpmlipError, LabellerError, RunDirectoryError, SettingsError

from conftest import SMALL_CU, emt_frames


def hot_cu(seed: int = 0):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    rng = np.random.default_rng(seed)
    atoms.set_momenta(rng.normal(0, np.sqrt(63.5 * units.kB * 800), (len(atoms), 3)))
    return atoms


def new_model():
    return gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU), n_sparse=20, n_jobs=1)


def langevin(atoms):
    return Langevin(atoms, 5 * units.fs, temperature_K=800, friction=0.02 / units.fs,
                    fixcm=False, rng=np.random.default_rng(1))


class FailingEMT(EMT):
    """Fails on the calls whose number is in ``fail``."""

    calls = 0
    fail: set = set()

    def calculate(self, *args, **kwargs):
        type(self).calls += 1
        if type(self).calls in self.fail:
            raise RuntimeError(f"SCF failed on call {type(self).calls}")
        super().calculate(*args, **kwargs)


def failing(fail):
    cls = type("Failing", (FailingEMT,), {"calls": 0, "fail": set(fail)})
    return lambda: cls()


def test_empty_start_labels_and_learns(tmp_path):
    atoms = hot_cu()
    learner = OnTheFlyLearner(new_model(), "emt", tmp_path / "run", optimise_every=0)
    atoms.calc = learner.calculator
    summary = learner.run(langevin(atoms), 30)
    assert summary["steps"] == 30 and summary["labels"] >= 2
    assert summary["sparse_points"] >= summary["labels"]
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "run/labels").glob("*"))]
    assert records[0]["step"] == 0 and records[0]["max_std"] == 1.0
    # each labelled frame is now known: its uncertainty fell below the tolerance
    model = gpmlip.load_model(tmp_path / "run/model.npz")
    for record in records:
        positions = np.array(record["structure"]["positions"])
        probe = atoms.copy()
        probe.positions = positions
        assert record["max_std"] > learner.settings.std_tolerance or record["index"] == 1
        assert model.predict(probe).max_uncertainty < learner.settings.std_tolerance
    # the saved model reproduces the learner's predictions
    np.testing.assert_allclose(model.predict(atoms).forces, learner.model.predict(atoms).forces,
                               atol=1e-8)
    assert (tmp_path / "run/labelled.extxyz").exists()


def test_observer_mode_with_velocity_verlet(tmp_path):
    atoms = hot_cu()
    learner = OnTheFlyLearner(new_model(), "emt", tmp_path / "run", optimise_every=0)
    atoms.calc = learner.calculator
    dyn = VelocityVerlet(atoms, 2 * units.fs)
    learner.start(dyn)
    dyn.attach(learner)
    dyn.run(20)
    summary = learner.finish()
    assert summary["steps"] == 20 and summary["labels"] >= 2


@pytest.mark.parametrize("kind", ["npt_berendsen", "nvt_berendsen"])
def test_barostat_and_thermostat_dynamics(tmp_path, kind):
    """Cell-changing NPT (needs the model's stress) and NVT Berendsen, resumed after a stop."""
    from ase.md.nptberendsen import NPTBerendsen
    from ase.md.nvtberendsen import NVTBerendsen

    def build(atoms):
        if kind == "npt_berendsen":
            return NPTBerendsen(atoms, 2 * units.fs, temperature_K=800, pressure_au=
                                5.0 * units.GPa, taut=50 * units.fs, taup=200 * units.fs,
                                compressibility_au=4.6e-6 / units.bar)
        return NVTBerendsen(atoms, 2 * units.fs, temperature_K=800, taut=50 * units.fs)

    atoms = hot_cu()
    volume = atoms.get_volume()
    learner = OnTheFlyLearner(new_model(), "emt", tmp_path / "run", optimise_every=0)
    atoms.calc = learner.calculator
    learner.run(build(atoms), 15)
    restored = hot_cu(seed=5)                 # resume with nothing left to run: state only
    peek = OnTheFlyLearner(new_model(), "emt", tmp_path / "run", optimise_every=0)
    restored.calc = peek.calculator
    peek.run(build(restored), 15, resume=True)
    np.testing.assert_allclose(restored.cell, atoms.cell, atol=1e-12)
    np.testing.assert_allclose(restored.get_momenta(), atoms.get_momenta(), atol=1e-12)
    again = hot_cu(seed=5)
    resumed = OnTheFlyLearner(new_model(), "emt", tmp_path / "run", optimise_every=0)
    again.calc = resumed.calculator
    summary = resumed.run(build(again), 30, resume=True)
    assert summary["steps"] == 30 and summary["labels"] >= 2
    if kind == "npt_berendsen":      # 5 GPa squeezes the cell, and the resumed run kept it
        assert again.get_volume() < volume
        assert not np.allclose(again.cell, hot_cu().cell)


def test_observer_needs_start(tmp_path):
    learner = OnTheFlyLearner(new_model(), "emt", tmp_path / "run")
    with pytest.raises(GpmlipError, match="start"):
        learner()


def test_optimiser_from_a_given_model(tmp_path):
    model = new_model().fit(emt_frames(3, seed=2))
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.rattle(0.15, seed=3)
    learner = OnTheFlyLearner(model, "emt", tmp_path / "run", optimise_every=0)
    atoms.calc = learner.calculator
    summary = learner.run(BFGS(atoms, logfile=None), 15, fmax=0.01)
    assert summary["labelled_frames"] == 3 + summary["labels"]
    assert (tmp_path / "run/checkpoint.json").exists()


@pytest.mark.parametrize("policy, fail, labels, failed", [
    ("retry", {2}, None, 1),        # call 2 fails, its retry succeeds
    ("skip", {2, 3, 4}, None, 3),   # failures are recorded, the run goes on
])
def test_failure_policies(tmp_path, policy, fail, labels, failed):
    atoms = hot_cu()
    learner = OnTheFlyLearner(new_model(), failing(fail), tmp_path / "run", on_failure=policy,
                              optimise_every=0, cooldown_steps=3)
    atoms.calc = learner.calculator
    summary = learner.run(langevin(atoms), 30)
    assert summary["failed_labels"] == failed
    assert summary["labelled_frames"] == summary["labels"] - failed
    errors = [json.loads(line)["error"] for line in
              (tmp_path / "run/events.jsonl").read_text().splitlines()]
    assert sum("SCF failed" in e for e in errors) == failed


def test_stop_policy_stops_with_the_failure_on_disk(tmp_path):
    atoms = hot_cu()
    learner = OnTheFlyLearner(new_model(), failing({2}), tmp_path / "run", on_failure="stop")
    atoms.calc = learner.calculator
    with pytest.raises(LabellerError, match="SCF failed on call 2"):
        learner.run(langevin(atoms), 30)
    record = json.loads((tmp_path / "run/labels/000002.json").read_text())
    assert record["result"]["ok"] is False and "SCF failed" in record["result"]["error"]
    assert json.loads((tmp_path / "run/checkpoint.json").read_text())["n_labels"] == 2


def test_label_budget(tmp_path):
    atoms = hot_cu()
    learner = OnTheFlyLearner(new_model(), "emt", tmp_path / "run", max_labels=2,
                              optimise_every=0)
    atoms.calc = learner.calculator
    assert learner.run(langevin(atoms), 30)["labels"] == 2


def test_the_labeller_is_required(tmp_path):
    """No silent EMT: a learner without a labeller is an error, not an EMT run."""
    with pytest.raises(TypeError):
        OnTheFlyLearner(new_model(), directory=tmp_path / "run")
    with pytest.raises(SettingsError, match="needs a labeller"):
        OnTheFlyLearner(new_model(), None, tmp_path / "run")


def test_settings_are_validated():
    with pytest.raises(SettingsError, match="std_tolerans.*allowed"):
        OTFSettings.from_dict({"std_tolerans": 0.1})
    with pytest.raises(SettingsError, match="update_threshold"):
        OTFSettings(std_tolerance=0.01, update_threshold=0.02)
    with pytest.raises(SettingsError, match="on_failure"):
        OTFSettings(on_failure="ignore")


def test_resume_needs_the_same_structure(tmp_path):
    atoms = hot_cu()
    learner = OnTheFlyLearner(new_model(), "emt", tmp_path / "run", optimise_every=0)
    atoms.calc = learner.calculator
    learner.run(langevin(atoms), 5)
    other = bulk("Cu", "fcc", a=3.6, cubic=True)
    again = OnTheFlyLearner(new_model(), "emt", tmp_path / "run")
    other.calc = again.calculator
    with pytest.raises(RunDirectoryError, match="same structure"):
        again.run(langevin(other), 10, resume=True)


@pytest.mark.parametrize("bad", [{"std_tolerance": "0.1"}, {"max_labels": 2.5},
                                 {"adaptive_tolerance": 1}, {"max_retries": True},
                                 {"on_failure": 3}])
def test_otf_settings_of_the_wrong_type_are_one_clear_error(bad):
    """[otf] values are type-checked (a string tolerance was a raw TypeError; issue 31)."""
    from gpmlip.active import OTFSettings
    from gpmlip.errors import SettingsError

    key = next(iter(bad))
    with pytest.raises(SettingsError, match=f"^{key}="):
        OTFSettings.from_dict(bad)
