"""Baselines inside the model (issue 17): ZBL physics, labels minus baseline, predictions plus it,
files, CLI settings and bad settings."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones
from ase.calculators.singlepoint import SinglePointCalculator

import gpmlip
from gpmlip.baselines import ZBL, CalculatorBaseline, make_baseline, zbl_energy
from gpmlip.errors import SettingsError
from gpmlip.testing import check_forces, check_stress

from conftest import SMALL_CU, SMALL_MULTI

ZBL_CU = {"name": "zbl", "inner": 1.6, "outer": 2.4}


def squeezed(n: int, seed: int, a: float = 3.2, rattle: float = 0.12):
    """Compressed, rattled fcc Cu (nearest neighbours ~2.1-2.4 Å, inside ZBL's range), EMT labels."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat(2)
        atoms.positions += rattle * rng.standard_normal(atoms.positions.shape)
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(),
                                           forces=atoms.get_forces(), stress=atoms.get_stress())
        out.append(atoms)
    return out


def minus(baseline, frames):
    """The frames with the baseline subtracted by hand, through ASE only."""
    out = []
    for a in frames:
        b = baseline.compute(a)
        c = a.copy()
        c.calc = SinglePointCalculator(
            c, energy=a.get_potential_energy() - b.energy, forces=a.get_forces() - b.forces,
            stress=a.get_stress() - b.stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]])
        out.append(c)
    return out


@pytest.fixture(scope="module")
def fitted():
    frames = squeezed(4, seed=1)
    with_b = gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU), n_sparse=24, baseline=ZBL_CU).fit(frames)
    by_hand = gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU), n_sparse=24).fit(
        minus(with_b.baseline, frames))
    return with_b, by_hand


# -- ZBL physics -------------------------------------------------------------------------------
def test_zbl_switch_takes_energy_force_and_curvature_to_zero_at_outer():
    z = ZBL(1.0, 2.0)
    r = np.linspace(0.3, 2.2, 4001)
    e, de = z.pair(r, 29, 29)
    h = 1e-6
    ep, _ = z.pair(r + h, 29, 29)
    em, _ = z.pair(r - h, 29, 29)
    smooth = np.abs(r - 2.0) > 2 * h
    assert np.allclose(de[smooth], ((ep - em) / (2 * h))[smooth], rtol=1e-6, atol=1e-7)
    near = 2.0 - 1e-4
    e1, d1 = z.pair(np.array([near]), 29, 29)
    assert abs(e1[0]) < 1e-9 and abs(d1[0]) < 1e-5
    assert np.all(e[r >= 2.0] == 0)
    # below inner: ZBL itself shifted by the constant C only
    lo = r < 1.0
    shift = e[lo] - zbl_energy(r[lo], 29, 29)
    assert np.ptp(shift) < 1e-9 and abs(shift[0]) > 1e-3


def test_zbl_known_value():
    # Cu-Cu at 1 Å: a = 0.4685 / (2 * 29^0.23); the screening function by hand
    a = 0.46850 / (2 * 29 ** 0.23)
    x = 1.0 / a
    phi = (0.18175 * np.exp(-3.19980 * x) + 0.50986 * np.exp(-0.94229 * x)
           + 0.28022 * np.exp(-0.40290 * x) + 0.02817 * np.exp(-0.20162 * x))
    assert zbl_energy(1.0, 29, 29) == pytest.approx(14.399645 * 29 * 29 * phi, rel=1e-12)


@pytest.mark.parametrize("pairs", [None, {"Cu-Au": [1.2, 2.1]}])
def test_zbl_forces_and_stress_against_finite_differences(pairs):
    atoms = bulk("Cu", "fcc", a=3.0, cubic=True).repeat(2)
    atoms.numbers[::3] = 79
    atoms.rattle(0.15, seed=2)
    z = ZBL(1.5, 2.4, pairs=pairs)
    assert z.compute(atoms).energy > 0.1      # the test sees the repulsion
    check_forces(z.compute, atoms, rtol=1e-6)
    check_stress(z.compute, atoms, rtol=1e-6)


# -- the model ---------------------------------------------------------------------------------
def test_fit_with_baseline_equals_fit_on_labels_minus_baseline(fitted):
    with_b, by_hand = fitted
    assert np.allclose(with_b.state.posterior.beta, by_hand.state.posterior.beta, rtol=1e-9,
                       atol=1e-12)
    assert with_b.state.e0.energies == pytest.approx(by_hand.state.e0.energies)
    atoms = squeezed(1, seed=9, a=3.1)[0]
    p, q, b = with_b.predict(atoms), by_hand.predict(atoms), with_b.baseline.compute(atoms)
    assert b.energy > 0.5
    assert p.energy == pytest.approx(q.energy + b.energy, rel=1e-10)
    assert np.allclose(p.forces, q.forces + b.forces, atol=1e-9)
    assert np.allclose(p.stress, q.stress + b.stress, atol=1e-11)
    assert np.allclose(p.energies, q.energies + b.energies, atol=1e-10)
    # the baseline adds no variance
    assert np.array_equal(p.local_variance, q.local_variance)


def test_total_forces_and_stress_against_finite_differences(fitted):
    model = fitted[0]
    atoms = squeezed(1, seed=5, a=3.1)[0]
    check_forces(model.predict, atoms, rtol=1e-5)
    check_stress(model.predict, atoms, rtol=1e-5)


def test_calculator_and_pair_list_see_the_baseline(fitted):
    model = fitted[0]
    atoms = squeezed(1, seed=6, a=3.1)[0]
    calc = gpmlip.GPCalculator(model)
    atoms.calc = calc
    assert atoms.get_potential_energy() == pytest.approx(model.predict(atoms).energy, rel=1e-12)
    pairs = model.descriptor.pair_list(atoms)
    out = model.pair_energies(pairs.centre_species, pairs.centre, pairs.neighbour, pairs.vector,
                              pairs.neighbour_species)
    assert out.energies.sum() == pytest.approx(model.predict(atoms).energy, rel=1e-12)


def test_update_subtracts_the_baseline_too(fitted):
    with_b, by_hand = fitted
    extra = squeezed(2, seed=7)
    m1 = _copy(with_b).update(extra, n_sparse=4)
    m2 = _copy(by_hand).update(minus(with_b.baseline, extra), n_sparse=4)
    assert np.allclose(m1.state.posterior.beta, m2.state.posterior.beta, rtol=1e-8, atol=1e-12)


def _copy(model):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        model.save(Path(d) / "m.npz")
        return gpmlip.load_model(Path(d) / "m.npz")


def test_save_and_load_predict_identically(fitted, tmp_path):
    model = fitted[0]
    model.save(tmp_path / "m.npz")
    loaded = gpmlip.load_model(tmp_path / "m.npz")
    assert isinstance(loaded.baseline, ZBL) and loaded.baseline.to_dict() == model.baseline.to_dict()
    atoms = squeezed(1, seed=8, a=3.1)[0]
    p, q = model.predict(atoms), loaded.predict(atoms)
    assert p.energy == q.energy and np.array_equal(p.forces, q.forces)
    assert np.array_equal(p.stress, q.stress)


def test_old_file_without_baseline_key_loads(fitted, tmp_path, monkeypatch):
    model = fitted[1]
    import gpmlip.gp.model as model_module
    from gpmlip.gp.container import model_settings

    settings = model_settings(model)
    del settings["baseline"]
    monkeypatch.setattr(model_module, "model_settings", lambda m: settings)
    model.save(tmp_path / "old.npz")
    monkeypatch.undo()
    loaded = gpmlip.load_model(tmp_path / "old.npz")
    assert loaded.baseline is None
    atoms = squeezed(1, seed=8, a=3.1)[0]
    assert loaded.predict(atoms).energy == model.predict(atoms).energy


def test_ase_calculator_baseline_added_on_whole_structures(tmp_path):
    lj = {"name": "lj", "sigma": 2.3, "epsilon": 0.05, "rc": 7.0}
    frames = squeezed(3, seed=2, a=3.4)
    model = gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU), n_sparse=16, baseline=lj).fit(frames)
    by_hand = gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU), n_sparse=16).fit(
        minus(model.baseline, frames))
    atoms = squeezed(1, seed=4, a=3.4)[0]
    ref = LennardJones(sigma=2.3, epsilon=0.05, rc=7.0)
    atoms.calc = ref
    e_lj = atoms.get_potential_energy()
    assert model.predict(atoms).energy == pytest.approx(by_hand.predict(atoms).energy + e_lj,
                                                        rel=1e-10)
    check_forces(model.predict, atoms, rtol=1e-5)
    check_stress(model.predict, atoms, rtol=1e-5)
    with pytest.raises(SettingsError, match="not a pair potential"):
        model.pair_energies([29], [], [], np.zeros((0, 3)), [])
    model.save(tmp_path / "lj.npz")
    assert gpmlip.load_model(tmp_path / "lj.npz").predict(atoms).energy == \
        model.predict(atoms).energy


def _my_factory():
    return LennardJones(sigma=2.3, epsilon=0.02, rc=6.0)


def test_user_callable_must_be_given_again_on_load(tmp_path):
    frames = squeezed(2, seed=3, a=3.4)
    model = gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU), n_sparse=8, baseline=_my_factory).fit(frames)
    model.save(tmp_path / "c.npz")
    from gpmlip.gp.container import model_settings

    meta = json.dumps(model_settings(model)["baseline"])
    assert "callable" in meta and "_my_factory" in meta
    with pytest.raises(SettingsError, match="load_model\\(path, baseline=factory\\)"):
        gpmlip.load_model(tmp_path / "c.npz")
    again = gpmlip.load_model(tmp_path / "c.npz", baseline=_my_factory)
    atoms = squeezed(1, seed=4, a=3.4)[0]
    assert again.predict(atoms).energy == model.predict(atoms).energy
    with pytest.raises(SettingsError, match="without a baseline"):
        plain = gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU), n_sparse=8).fit(frames)
        plain.save(tmp_path / "p.npz")
        gpmlip.load_model(tmp_path / "p.npz", baseline=_my_factory)


@pytest.mark.parametrize("spec, match", [
    ({"name": "zbl", "inner": 2.0, "outer": 1.0}, "inner < outer"),
    ({"name": "zbl", "inner": -1.0, "outer": 1.0}, "inner < outer"),
    ({"name": "zbl", "pairs": {"Cu-Au": [1.0, 2.0]}}, "species the model does not have"),
    ({"name": "zbl", "pairs": {"Cu-Xx": [1.0, 2.0]}}, "not an element"),
    ({"name": "zbl", "pairs": {"CuAu": [1.0, 2.0]}}, "not a species pair"),
    ({"name": "zbl", "pairs": {"Cu-Cu": [2.0]}}, "inner, outer"),
    ({"name": "zbl", "radius": 2.0}, "radius"),
    ("zbll", "unknown baseline 'zbll'"),
    ({"inner": 1.0}, "give its name"),
    (3.0, "give a name"),
])
def test_bad_baseline_settings_are_clear_errors(spec, match):
    with pytest.raises(SettingsError, match=match):
        gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU), baseline=spec)


def test_per_pair_radii_for_known_species():
    model = gpmlip.SparseGP(gpmlip.SOAP(**SMALL_MULTI),
                            baseline={"name": "zbl", "pairs": {"Au-Cu": [1.2, 2.2]}})
    assert model.baseline.radii(79, 29) == (1.2, 2.2)
    assert model.baseline.radii(29, 29) == (1.0, 2.0)
    styles, coeffs = model.baseline.lammps_lines(["Cu", "Au"])
    assert styles == ["zbl 1 2", "zbl 1.2 2.2"]
    assert "pair_coeff 1 2 zbl 2 29 79" in coeffs and "pair_coeff 1 1 zbl 1 29 29" in coeffs


def test_cli_config_takes_a_baseline():
    from gpmlip.cli import build, config

    cfg = config.check({"model": {"baseline": {"name": "zbl", "inner": 1.1, "outer": 2.1}}})
    model = build.model({"species": ["Cu"], "r_cut": 4.0, "n_max": 3, "l_max": 2},
                        cfg["model"])
    assert isinstance(model.baseline, ZBL) and model.baseline.outer == 2.1
    with pytest.raises(SettingsError, match="baseline"):
        config.check({"model": {"baseline": 2.0}})


def test_d3_baseline_is_dftd3_when_installed():
    pytest.importorskip("dftd3")
    from dftd3.ase import DFTD3

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    b = make_baseline("d3").compute(atoms)
    atoms.calc = DFTD3(method="PBE", damping="d3bj")
    assert b.energy == pytest.approx(atoms.get_potential_energy(), rel=1e-12)
    assert isinstance(make_baseline({"name": "d3", "method": "PBE"}), CalculatorBaseline)


def test_cli_trains_a_model_with_a_baseline(tmp_path):
    """`gpmlip train` with `[model] baseline = {...}` writes a model file that rebuilds it."""
    import subprocess
    import sys
    from pathlib import Path

    data = Path(__file__).resolve().parent.parent / "data" / "cu_emt_train.extxyz"
    (tmp_path / "s.toml").write_text('[descriptor]\nspecies = ["Cu"]\nr_cut = 4.0\nn_max = 3\n'
                                     'l_max = 2\n[model]\nn_sparse = 10\ntune = false\n'
                                     'baseline = {name = "zbl", inner = 1.1, outer = 2.1}\n')
    proc = subprocess.run([sys.executable, "-m", "gpmlip.cli", "train", "-c", tmp_path / "s.toml",
                           data, "-o", tmp_path / "m.npz", "-q"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert gpmlip.load_model(tmp_path / "m.npz").baseline.to_dict() == \
        {"name": "zbl", "inner": 1.1, "outer": 2.1, "pairs": {}}
    info = subprocess.run([sys.executable, "-m", "gpmlip.cli", "info", tmp_path / "m.npz"],
                          capture_output=True, text=True, timeout=120).stdout
    assert '"name": "zbl"' in info
