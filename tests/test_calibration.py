"""Calibration metrics, the maximum-likelihood calibration, the model's calibrated std, the
force trigger of on-the-fly learning."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.md.langevin import Langevin

import gpmlip
from gpmlip.active import OnTheFlyLearner
from gpmlip.errors import DataError, SettingsError
from gpmlip.gp.calibration import Calibration, fit_calibration, force_variance_parts
from gpmlip.uncertainty import calibration_metrics, spearman_reference

from conftest import SMALL_CU, emt_frames


def synthetic(n=20000, seed=0):
    rng = np.random.default_rng(seed)
    std = np.exp(rng.normal(np.log(0.02), 0.5, n))
    return rng.normal(0.0, std), std


def test_calibrated_synthetic_case_passes_and_a_misscaled_one_fails():
    err, std = synthetic()
    good = calibration_metrics(err, std)
    assert good["zms"] == pytest.approx(1.0, abs=0.05)
    assert good["coverage_1std"] == pytest.approx(0.683, abs=0.02)
    assert good["coverage_2std"] == pytest.approx(0.954, abs=0.01)
    assert good["miscalibration_area"] < 0.02
    assert good["spearman"] == pytest.approx(good["spearman_reference"], abs=0.05)
    for factor in (0.4, 3.0):
        bad = calibration_metrics(err, factor * std)
        assert not 0.8 <= bad["zms"] <= 1.25
        assert abs(bad["coverage_1std"] - 0.683) > 0.05 and bad["miscalibration_area"] > 0.05
        assert bad["nll"] > good["nll"]


def test_spearman_reference_is_low_for_a_narrow_spread():
    rng = np.random.default_rng(1)
    narrow = np.exp(rng.normal(0, 0.1 * np.log(10), 5000))
    wide = np.exp(rng.normal(0, 0.5 * np.log(10), 5000))
    assert spearman_reference(narrow) < 0.35 < spearman_reference(wide)


def test_fit_calibration_recovers_a_scale_and_separate_parts():
    err, std = synthetic()
    parts = np.stack([0.5 * std ** 2, 0.5 * std ** 2, np.full_like(std, 0.01 ** 2)], -1)
    one = fit_calibration(3.0 * err, parts)
    assert one.method == "scale" and one.scale == pytest.approx(3.0, rel=0.03)
    rng = np.random.default_rng(2)
    mixed = rng.normal(0, np.sqrt(0.1 * std ** 2 + 0.01 ** 2))     # weights 0.1, 0.1, 1
    cal = fit_calibration(mixed, parts)
    assert cal.method == "parts"
    assert cal.weights["noise"] == pytest.approx(1.0, rel=0.1)
    assert cal.weights["residual"] + cal.weights["weights"] == pytest.approx(0.2, rel=0.15)
    assert calibration_metrics(mixed, cal.std(parts))["zms"] == pytest.approx(1, abs=0.05)
    assert Calibration.from_dict(json.loads(json.dumps(cal.to_dict()))) == cal
    with pytest.raises(DataError, match="same number"):
        calibration_metrics(err, std[:-1])
    with pytest.raises(DataError, match="no residuals"):
        fit_calibration([], np.zeros((0, 3)))


@pytest.fixture(scope="module")
def cu_model():
    frames = emt_frames(6, seed=3)
    model = gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU), n_sparse=20, n_jobs=1)
    model.fit(frames[:3])
    return model, frames[3:]


def test_model_calibration_scales_the_std_and_is_saved(cu_model, tmp_path):
    model, held_out = cu_model
    atoms = held_out[0].copy()
    raw = model.predict(atoms, force_std=True)
    assert model.calibration_ is None
    np.testing.assert_allclose(raw.force_std, raw.force_std_raw)
    # the raw std is the full DTC variance of the force components
    parts = force_variance_parts(model, atoms)
    state = model.state_
    env = model.descriptor.describe(atoms, gradients=True)
    from gpmlip.gp.covariance import force_prior_variance, force_rows
    rows = force_rows(env, state.sparse, model.zeta).reshape(3 * len(atoms), -1)
    prior = force_prior_variance(env, model.zeta, state.signal_variance).ravel()
    dtc = state.posterior.dtc_variance(prior, rows, state.column_variance)
    np.testing.assert_allclose((parts[..., 0] + parts[..., 1]).ravel(), dtc, rtol=1e-8,
                               atol=1e-14)
    assert np.all(parts[..., 2] == state.noise["forces"] ** 2)
    model.save(tmp_path / "raw.npz")
    assert gpmlip.load_model(tmp_path / "raw.npz").calibration_ is None   # no calibration: raw
    cal = model.calibrate(held_out, method="scale")
    pred = model.predict(atoms, force_std=True)
    np.testing.assert_allclose(pred.force_std, cal.scale * pred.force_std_raw, rtol=1e-10)
    errors = np.concatenate([(model.predict(f, stress=False).forces - f.get_forces()).ravel()
                             for f in held_out])
    stds = np.concatenate([model.predict(f, force_std=True).force_std.ravel()
                           for f in held_out])
    assert np.mean((errors / stds) ** 2) == pytest.approx(1.0, rel=1e-6)   # ML on the same set
    model.save(tmp_path / "cal.npz")
    loaded = gpmlip.load_model(tmp_path / "cal.npz")
    assert loaded.calibration_ == cal
    calc = gpmlip.GPCalculator(loaded, force_std=True)
    atoms.calc = calc
    np.testing.assert_allclose(calc.get_property("force_std", atoms), pred.force_std)
    np.testing.assert_allclose(calc.results["force_std_raw"], pred.force_std_raw)
    model.calibration_ = None


def test_force_trigger_records_why_and_calibrates(tmp_path):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    rng = np.random.default_rng(0)
    atoms.set_momenta(rng.normal(0, np.sqrt(63.5 * units.kB * 800), (len(atoms), 3)))
    model = gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU), n_sparse=20, n_jobs=1)
    learner = OnTheFlyLearner(model, "emt", tmp_path / "run", optimise_every=0,
                              force_tolerance=0.02)
    atoms.calc = learner.calculator
    dyn = Langevin(atoms, 5 * units.fs, temperature_K=800, friction=0.02 / units.fs,
                   fixcm=False, rng=np.random.default_rng(1))
    summary = learner.run(dyn, 40)
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "run/labels").glob("*"))]
    assert records[0]["reason"]["trigger"] == "empty"
    assert summary["labels"] >= 2
    for r in records[1:]:
        assert r["reason"]["trigger"] == "force"
        assert r["reason"]["max_force_std"] > r["reason"]["threshold"] >= 0.02
        assert len(r["residuals"]["force_error"]) == 3 * len(atoms)
    assert records[1]["reason"]["calibrated"] is False      # no residuals before label 2
    assert summary["calibration"]["source"] == "on-the-fly"
    assert summary["label_reasons"]["empty"] == 1
    assert summary["threshold_equivalents"]["force_tolerance_as_normalised_std"] > 0
    assert gpmlip.load_model(tmp_path / "run/model.npz").calibration_ is not None
    events = [json.loads(x) for x in (tmp_path / "run/events.jsonl").read_text().splitlines()]
    assert all("residuals" not in e for e in events)
    with pytest.raises(SettingsError, match="force_tolerance"):
        OnTheFlyLearner(model, "emt", tmp_path / "r2", adaptive_tolerance=True,
                        force_tolerance=None)


def test_gate_force_threshold_and_adaptive_trigger(cu_model, tmp_path):
    from gpmlip.active import UncertaintyGate
    from gpmlip.active.settings import OTFSettings
    from gpmlip.active.trigger import Trigger

    model, held_out = cu_model
    counts = {}
    for force_threshold in (5.0, 1e-4):
        atoms = held_out[0].copy()
        gate = UncertaintyGate(model, tmp_path / f"g{force_threshold}", threshold=1e-4,
                               policy="warn", min_steps_between=1,
                               force_threshold=force_threshold)
        atoms.calc = gate.calculator
        dyn = Langevin(atoms, 2 * units.fs, temperature_K=800, friction=0.02 / units.fs,
                       rng=np.random.default_rng(0))
        counts[force_threshold] = gate.run(dyn, 4)["gated"]
    assert counts[5.0] == 0 and counts[1e-4] >= 3
    trig = Trigger(OTFSettings(std_tolerance=1e-4, update_threshold=1e-5,
                               force_tolerance=1e-4, adaptive_tolerance=True,
                               force_check_interval=1))
    atoms = held_out[0]
    std = model.predict(atoms).local_std_normalised
    first = trig.check(model, atoms, std, False, 0)     # empty window: the floor decides
    assert first is not None and first["threshold"] == 1e-4
    again = trig.check(model, atoms, std, False, 1)     # same frame: not above 1.3 x its level
    assert again is None and trig.threshold() > 1e-4


def test_calibrate_without_frames_uses_leave_one_out(cu_model):
    """``calibrate()`` fits on the closed-form leave-one-structure-out residuals of the training
    set: its scale is the maximum-likelihood mean(r^2 / v) of exactly those residuals."""
    from gpmlip.gp.calibration import leave_one_out_residuals
    from gpmlip.gp.validation import leave_one_out

    model, _ = cu_model
    before = model.calibration_
    try:
        cal = model.calibrate(method="scale")
        assert cal.source == "leave-one-out"
        n_components = sum(3 * f.n_atoms for f in model.training_frames if f.forces is not None)
        assert cal.n == n_components
        residuals, parts = leave_one_out_residuals(model)
        loo = leave_one_out(model)
        np.testing.assert_allclose(np.abs(residuals), np.abs(loo.forces()), rtol=1e-12)
        np.testing.assert_allclose(parts[:, 1], loo.forces("variance"), rtol=1e-12)
        raw = parts[:, 0] + parts[:, 1]
        assert cal.scale ** 2 == pytest.approx(np.mean(residuals ** 2 / raw), rel=1e-6)
    finally:
        model.calibration_ = before


def test_calibration_is_a_fitted_attribute_with_a_deprecated_alias():
    model = gpmlip.SparseGP(gpmlip.SOAP(species=["Cu"], r_cut=4.0, n_max=2, l_max=2))
    assert model.calibration_ is None and model.energy_calibration_ is None
    with pytest.warns(DeprecationWarning, match="calibration_"):
        assert model.calibration is None
    with pytest.warns(DeprecationWarning, match="energy_calibration_"):
        model.energy_calibration = None


def test_components_fixed_by_symmetry_are_left_out_of_fits_and_scores():
    """A force on an atom at an inversion centre has a std of round-off and a label of noise:
    such components neither scale a calibration nor enter its scores."""
    from gpmlip.evaluate import calibration_report
    from gpmlip.gp.calibration import fit_calibration, free_components

    rng = np.random.default_rng(0)
    std = np.full(300, 0.02)
    err = rng.normal(0, 0.02, 300)
    parts = np.column_stack([std ** 2 / 2, std ** 2 / 2, np.zeros(300)])
    fixed = np.column_stack([np.full(30, 1e-34), np.full(30, 1e-34), np.zeros(30)])
    noise = rng.normal(0, 0.01, 30)                        # the labels' deviation from zero
    assert list(free_components([1.0, 2e-7, 0.5e-6, 0.0])) == [True, False, False, False]
    alone = fit_calibration(err, parts, method="scale")
    both = fit_calibration(np.r_[err, noise], np.r_[parts, fixed], method="scale")
    assert both.weights == alone.weights and both.n == 300
    records = [{"forces": np.zeros((100, 3)), "forces_pred": err.reshape(100, 3),
                "force_std": std.reshape(100, 3), "force_std_raw": std.reshape(100, 3)},
               {"forces": np.zeros((10, 3)), "forces_pred": noise.reshape(10, 3),
                "force_std": np.full((10, 3), 1e-17), "force_std_raw": np.full((10, 3), 1e-17)}]
    report = calibration_report(records)
    assert report["raw"]["zms"] == pytest.approx(np.mean((err / std) ** 2))
