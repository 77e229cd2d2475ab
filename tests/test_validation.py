"""Leave-one-structure-out residuals against brute-force refits; stress noise per atom; LOO noise."""

import numpy as np
import pytest

import gpmlip
from gpmlip.gp.validation import choose_noise, leave_one_out

from conftest import SMALL_CU, emt_frames


@pytest.fixture(scope="module")
def train():
    # one bigger cell (108 atoms): energy and stress noise scale with it
    return emt_frames(4, seed=3) + emt_frames(1, seed=4, repeat=3)


SPARSE = [(0, a) for a in range(0, 32, 3)]      # every sparse point from frame 0 (never left out)


def fitted(frames, **kw):
    settings = dict(n_sparse=0, e0={"Cu": 0.0}, energy_sigma=0.003, force_sigma=0.05,
                    virial_sigma=0.05, n_jobs=1)
    settings.update(kw)
    return gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU), **settings).fit(frames, sparse_atoms=SPARSE)


@pytest.mark.parametrize("stress_noise", ["per_atom", "absolute"])
def test_leave_one_out_equals_refits(train, stress_noise):
    model = fitted(train, stress_noise=stress_noise)
    loo = leave_one_out(model, frames=[1, 2, 3, 4])
    for k, i in enumerate(loo.frames):
        rest = [f for j, f in enumerate(train) if j != i]
        refit = fitted(rest, stress_noise=stress_noise)
        left = train[i]
        p = refit.predict(left, force_std=True)
        n = len(left)
        e_ref = left.get_potential_energy()
        assert loo.energy_residual[k] == pytest.approx((e_ref - p.energy) / n, rel=1e-6,
                                                       abs=1e-10)
        np.testing.assert_allclose(loo.force_residual[k], left.get_forces() - p.forces,
                                   rtol=1e-6, atol=1e-9)
        from ase.stress import full_3x3_to_voigt_6_stress
        np.testing.assert_allclose(loo.stress_residual[k],
                                   full_3x3_to_voigt_6_stress(
                                       left.get_stress(voigt=False) - p.stress),
                                   rtol=1e-5, atol=1e-10)
        # prediction variance from the weights: the refit's force std is the DTC variance, which
        # adds the (structure-independent) Nystroem term; compare the weight part directly
        rows_var = loo.force_variance[k]
        assert np.all(rows_var > 0)
        assert np.all(rows_var <= p.force_std ** 2 * (1 + 1e-6) + 1e-12)
        noise = refit.noise["forces"] ** 2
        np.testing.assert_allclose(loo.force_noise_variance[k], noise)


def test_leave_one_out_from_cached_rows_equals_one_structure_at_a_time(train):
    """choose_noise's cached path whitens all rows in one triangular solve: same numbers."""
    from gpmlip.gp.validation import structure_rows

    model = fitted(train)
    frames = [0, 2, 4]
    one = leave_one_out(model, frames=frames)
    batched = leave_one_out(model, cache=list(structure_rows(model, frames)))
    np.testing.assert_allclose(batched.energy_residual, one.energy_residual, rtol=1e-10)
    np.testing.assert_allclose(batched.energy_variance, one.energy_variance, rtol=1e-10)
    for a, b in zip(batched.force_residual + batched.force_variance,
                    one.force_residual + one.force_variance):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-14)
    from gpmlip.gp.validation import _whitened

    cache = list(structure_rows(model, frames))
    whole = _whitened(model.state.posterior, cache, model.noise)
    chunked = _whitened(model.state.posterior, cache, model.noise, chunk_bytes=1)  # one a chunk
    assert len(whole) == len(chunked) == len(frames)
    for a, b in zip(whole, chunked):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_leave_one_out_variance_is_the_refit_weight_variance(train):
    from gpmlip.gp.validation import structure_rows

    model = fitted(train)
    loo = leave_one_out(model, frames=[2])
    refit = fitted([f for j, f in enumerate(train) if j != 2])
    rows = next(structure_rows(model, [2])).rows
    expected = refit.state.posterior.weight_variance(rows)
    n = len(train[2])
    assert loo.energy_variance[0] == pytest.approx(expected[0] / n ** 2, rel=1e-6)
    np.testing.assert_allclose(loo.force_variance[0].ravel(), expected[1:1 + 3 * n], rtol=1e-6)


def test_stress_noise_per_atom_does_not_grow_with_cell_size(train):
    """The same strained cell, repeated: per atom its stress weighs like one cell; absolute, 8x."""
    base = train[1]
    big = base.repeat(2)
    from ase.calculators.singlepoint import SinglePointCalculator
    big.calc = SinglePointCalculator(big, stress=base.get_stress())
    per_atom = fitted([train[0]], stress_noise="per_atom")
    frame = gpmlip.data.frames.Frame(atoms=big, energy=None, forces=None,
                                     stress=base.get_stress(voigt=False))
    from gpmlip.gp.observations import NoiseModel
    small = gpmlip.data.frames.Frame(atoms=base, energy=None, forces=None,
                                     stress=base.get_stress(voigt=False))
    for model, ratio in ((per_atom, 1 / 8), (fitted([train[0]], stress_noise="absolute"), 1)):
        nm = NoiseModel({}, model.stress_noise == "per_atom")
        # variance ratio big/small: N x8, V^2 x64 -> 1/8 (the stress of 8x the atoms is 8x as
        # well determined, like its virial per atom); absolute: the same
        assert nm.scale(frame, "stress") / nm.scale(small, "stress") == pytest.approx(ratio)
    assert per_atom.noise["stress"] == 0.05


def test_old_files_keep_absolute_stress_noise(train, tmp_path):
    import json

    model = fitted(train, stress_noise="absolute", stress_sigma=0.002)
    path = tmp_path / "m.npz"
    model.save(path)
    # a file from before the setting: no "stress_noise" key
    with np.load(path, allow_pickle=False) as data:
        arrays = dict(data)
    meta = json.loads(arrays["metadata.json"].tobytes())
    del meta["settings"]["stress_noise"]
    arrays["metadata.json"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(path, **arrays)
    old = gpmlip.load_model(path)
    assert old.stress_noise == "absolute" and old.stress_sigma == 0.002
    assert old.predict(train[1]).energy == pytest.approx(model.predict(train[1]).energy, rel=1e-10)
    new = fitted(train)
    new.save(tmp_path / "n.npz")
    back = gpmlip.load_model(tmp_path / "n.npz")
    assert back.stress_noise == "per_atom" and back.virial_sigma == 0.05


def test_choose_noise_does_not_worsen_loo_and_calibrates(train):
    model = fitted(train, energy_sigma=0.05, force_sigma=0.5)   # badly chosen levels
    ll0 = model.log_likelihood
    choice = choose_noise(model, max_frames=None, sweeps=1)
    assert choice.criterion <= 1.0
    assert choice.loo_mae["forces"] <= choice.initial_loo_mae["forces"] * 1.0001
    assert choice.initial_log_likelihood == pytest.approx(ll0)
    assert model.log_likelihood == ll0 and model.noise["forces"] == 0.5   # left as it was
    assert choice.model.noise == choice.noise
    zms = leave_one_out(choice.model, frames=choice.frames).zms()
    assert np.nanmean([zms["energy"], zms["forces"]]) == pytest.approx(1.0, rel=1e-6)


def test_choose_noise_leaves_out_every_structure_unless_memory_caps_it(train, caplog):
    from gpmlip.gp.validation import _subset

    model = fitted(train)
    assert list(_subset(model, None, 1e9)) == list(range(len(train)))
    assert len(_subset(model, 2, 1e9)) == 2
    one = (1 + 3 * 108 + 6) * len(model.state.sparse) * 8    # the 108-atom cell's rows
    with caplog.at_level("WARNING", logger="gpmlip.gp.validation"):
        capped = _subset(model, None, 1.2 * one)   # the two largest do not fit
    assert len(capped) == 1 and "1 of 5 structures" in caplog.text
    choice = choose_noise(model, sweeps=1, factors=(0.5, 2.0), calibrate=False)
    assert list(choice.frames) == list(range(len(train)))


def test_with_hyperparameters_drop_stress(train):
    stressed = fitted(train)
    e_with = stressed.predict(train[1]).energy
    model = stressed.with_hyperparameters(drop=("stress",))
    assert stressed.predict(train[1]).energy == e_with      # a new model; this one unchanged
    ef = fitted([gpmlip.data.frames.Frame(atoms=a, energy=a.get_potential_energy(),
                                          forces=a.get_forces()) for a in train])
    assert model.predict(train[1]).energy == pytest.approx(ef.predict(train[1]).energy, rel=1e-8)
    assert model.predict(train[1]).energy != pytest.approx(e_with, rel=1e-8)


def test_fit_report_flags_a_pulay_offset(train, caplog):
    from ase.calculators.singlepoint import SinglePointCalculator

    clean = fitted(train)
    assert clean.fit_report_.n_stress_frames == len(train)
    shifted = []
    for a in train:   # every stress label 2 GPa more compressive: stress - p I
        b = a.copy()
        s = a.get_stress(voigt=False) - 2.0 / 160.21766208 * np.eye(3)
        b.calc = SinglePointCalculator(b, energy=a.get_potential_energy(), forces=a.get_forces(),
                                       stress=s)
        shifted.append(b)
    report = fitted(shifted).fit_report_
    assert report.mean_pressure_residual == pytest.approx(
        clean.fit_report_.mean_pressure_residual + 2.0, abs=1e-6)
    assert any("Pulay" in f for f in report.flags)
    assert abs(report.mean_pressure_residual) > 2 * abs(clean.fit_report_.mean_pressure_residual)
    assert "mean_pressure_residual" in report.to_dict()


@pytest.mark.parametrize("extra", [{"two_body": "yes"}, {"baseline": "zbl"}])
def test_leave_one_out_with_two_body_or_baseline_equals_refits(train, extra):
    """The LOO rows carry the two-body columns and the labels minus the baseline of the fit."""
    if "two_body" in extra:
        extra = {"two_body": gpmlip.TwoBody(n_sparse=8)}
    else:
        extra = {"baseline": {"name": "zbl", "inner": 1.6, "outer": 2.6}}
    frames = train[:4]
    model = fitted(frames, **extra)
    loo = leave_one_out(model, frames=[2])
    refit = fitted([f for j, f in enumerate(frames) if j != 2], **extra)
    p = refit.predict(frames[2])
    np.testing.assert_allclose(loo.force_residual[0], frames[2].get_forces() - p.forces,
                               rtol=1e-6, atol=1e-9)


def test_fit_report_raises_no_pressure_alarm_when_the_data_cannot_fix_the_pressure():
    """Rattled cells at one volume with exact (EMT) stresses: the energies cannot determine
    dE/dV, so a pressure offset between labels and the energy+forces model is not evidence of
    a Pulay stress and is not flagged (it was, at -5 GPa)."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = []
    for i in range(5):
        atoms = bulk("Cu", cubic=True).repeat(2)
        atoms.rattle(0.05, seed=i)
        atoms.calc = EMT()
        labels = dict(energy=atoms.get_potential_energy(), forces=atoms.get_forces(),
                      stress=atoms.get_stress())
        atoms.calc = SinglePointCalculator(atoms, **labels)
        frames.append(atoms)
    model = gpmlip.SparseGP(gpmlip.SOAP(["Cu"], 4.5, 6, 4), n_sparse=50).fit(frames)
    report = model.fit_report_
    assert report.model_pressure_std > abs(report.mean_pressure_residual) / 3
    assert not [f for f in report.flags if "Pulay" in f]


def test_fit_report_flags_an_offset_only_when_the_stresses_pull_the_energies(train):
    """A small model of exact (EMT) labels mispredicts the pressure by 2 GPa but fits the
    stresses without moving its energies: no Pulay alarm (it was raised). A 2 GPa shift of the
    labels does pull the energies, and is flagged."""
    from ase.calculators.singlepoint import SinglePointCalculator

    from conftest import emt_frames

    frames = emt_frames(6, seed=1)
    small = gpmlip.SparseGP(gpmlip.SOAP(["Cu"], 4.0, 4, 3), n_sparse=20, e0={"Cu": 0.0})
    report = small.fit(frames).fit_report_
    assert abs(report.mean_pressure_residual) > 1.0          # the model is off by GPa
    assert report.energy_chi2_increase < np.sqrt(2 * len(frames))
    assert not [f for f in report.flags if "Pulay" in f]
    shifted = []
    for a in frames:
        b = a.copy()
        b.calc = SinglePointCalculator(b, energy=a.get_potential_energy(), forces=a.get_forces(),
                                       stress=a.get_stress(voigt=False)
                                       - 2.0 / 160.21766208 * np.eye(3))
        shifted.append(b)
    pulled = gpmlip.SparseGP(gpmlip.SOAP(["Cu"], 4.5, 6, 4), n_sparse=50).fit(shifted).fit_report_
    assert pulled.energy_chi2_increase > np.sqrt(2 * len(frames))
    assert any("Pulay" in f and "worsens the energies" in f for f in pulled.flags)
