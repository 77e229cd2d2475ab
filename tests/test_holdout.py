"""Leave-one-config-type-out: refits on the other types, scored on the held-out one."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import gpmlip
from gpmlip.data import Dataset
from gpmlip.errors import DataError
from gpmlip.evaluate import calibration_report, predictions
from gpmlip.holdout import leave_config_types_out, refit_copy

from conftest import emt_frames


@pytest.fixture(scope="module")
def data():
    frames = emt_frames(3, seed=1, rattle=0.05) + emt_frames(3, seed=2, rattle=0.2)
    for i, atoms in enumerate(frames):
        atoms.info["config_type"] = "cold" if i < 3 else "hot"
    return Dataset(gpmlip.load_frames(frames))


@pytest.fixture(scope="module")
def model(data):
    return gpmlip.SparseGP(gpmlip.SOAP(["Cu"], 4.0, 4, 3), n_sparse=40, e0={"Cu": 0.0},
                           energy_sigma=0.003, force_sigma=0.04).fit(data)


def test_refit_copy_reproduces_the_model(model, data):
    again = refit_copy(model).fit(data)
    atoms = emt_frames(1, seed=9)[0]
    a, b = model.predict(atoms), again.predict(atoms)
    assert a.energy == pytest.approx(b.energy, rel=1e-10)
    np.testing.assert_allclose(a.forces, b.forces, rtol=0, atol=1e-10)


def test_each_type_is_scored_by_a_refit_that_never_saw_it(model, data):
    rows = leave_config_types_out(model, data, max_frames=None)
    assert [r["config_type"] for r in rows] == ["cold", "hot"]
    for r in rows:
        assert r["frames"] == 3 and r["train_frames"] == 3
        assert r["raw"]["zms"] > 0 and r["calibrated"]["zms"] > 0
    # the same numbers by hand: refit on "cold", calibrate by leave-one-out, score "hot"
    cold = [f for f in data if f.config_type == "cold"]
    hot = [f for f in data if f.config_type == "hot"]
    refit = refit_copy(model)
    refit.n_sparse = {29: 40}
    refit.fit(cold)
    refit.calibrate(max_frames=None)
    report = calibration_report(predictions(refit, Dataset(hot), force_std=True))
    assert rows[1]["raw"]["zms"] == pytest.approx(report["raw"]["zms"], rel=1e-8)
    assert rows[1]["calibrated"]["zms"] == pytest.approx(report["calibrated"]["zms"], rel=1e-8)
    # the hot frames are new to a model fitted on cold ones: larger errors than in-sample
    assert rows[1]["force_mae_meV_A"] > 0
    # the energy and stress error bars, by hand
    bars = rows[1]["error_bars"]
    assert bars["energy"]["n"] == 3 and bars["stress"]["n"] == 18
    e = [(refit.predict(f.atoms, energy_std=True), f.energy) for f in hot]
    zms = np.mean([(p.energy - ref) ** 2 / p.energy_std ** 2 for p, ref in e])
    assert bars["energy"]["zms"] == pytest.approx(zms, rel=1e-8)
    assert refit.stress_calibration_ is not None and bars["stress"]["zms_raw"] > 0


def test_bad_requests_are_clear_errors(model, data):
    with pytest.raises(DataError, match="not in the data"):
        leave_config_types_out(model, data, config_types=["liquid"])
    one = Dataset([f for f in data if f.config_type == "cold"])
    with pytest.raises(DataError, match="one config type"):
        leave_config_types_out(model, one)


def test_gpmlip_eval_leaves_config_types_out(model, data, tmp_path):
    model.save(tmp_path / "m.npz")
    data.write(tmp_path / "d.extxyz")
    proc = subprocess.run([sys.executable, "-m", "gpmlip.cli", "eval", str(tmp_path / "m.npz"),
                           str(tmp_path / "d.extxyz"), "--leave-out-config-types", "hot"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "held-out type" in proc.stdout and "hot" in proc.stdout
    assert "cold " not in proc.stdout.split("held-out type")[1]
