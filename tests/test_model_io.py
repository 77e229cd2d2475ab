"""Model files (npz + JSON, no pickle) and the ASE calculator."""

import json
import zipfile

import numpy as np
import pytest
from ase.md.verlet import VelocityVerlet
from ase import units

import gpmlip
from gpmlip.gp.container import FORMAT_VERSION

from conftest import SMALL_CU, emt_frames, ethanol


@pytest.fixture(scope="module")
def model():
    frames = emt_frames(4, seed=0)
    frames[1].info["config_type"] = "hot"
    return gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU), n_sparse=8, e0={"Cu": 0.0},
                           config_sigmas={"hot": {"forces": 0.2}}).fit(frames)


def test_round_trip_predicts_identically(model, tmp_path):
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = gpmlip.load_model(path)
    atoms = emt_frames(1, seed=3)[0]
    a, b = model.predict(atoms, force_std=True), loaded.predict(atoms, force_std=True)
    assert a.energy == b.energy
    np.testing.assert_array_equal(a.forces, b.forces)
    np.testing.assert_array_equal(a.stress, b.stress)
    np.testing.assert_array_equal(a.local_variance, b.local_variance)
    np.testing.assert_array_equal(a.force_std, b.force_std)
    # the loaded model can still be updated (it carries its training set)
    loaded.update(emt_frames(1, seed=4), n_sparse=2)
    assert loaded.n_sparse_points == model.n_sparse_points + 2


@pytest.mark.parametrize("e0", ["auto", {"Cu": -0.01}])
def test_loaded_model_refits_to_itself(tmp_path, e0):
    """fit, optimise, save, load, refit on the same data: the same model (the optimised signal
    level and the e0 rule travel with the file, not only the fitted values)."""
    frames = emt_frames(4, seed=11)
    model = gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU), n_sparse=8, e0=e0).fit(frames)
    model.optimise_hyperparameters(max_iterations=30)
    assert abs(model.signal_variance_[29] - 1.0) > 1e-3     # the optimum moved sigma_z
    model.save(tmp_path / "m.npz")
    loaded = gpmlip.load_model(tmp_path / "m.npz")
    refit = gpmlip.load_model(tmp_path / "m.npz").fit(frames)
    assert refit.signal_variance_ == pytest.approx(model.signal_variance_, rel=1e-14)
    assert refit.noise_ == pytest.approx(model.noise_, rel=1e-14)
    assert refit.e0_.energies == pytest.approx(model.e0_.energies, rel=1e-14)
    atoms = emt_frames(1, seed=12)[0]
    for other in (loaded, refit):
        a, b = model.predict(atoms, force_std=True), other.predict(atoms, force_std=True)
        assert b.energy == pytest.approx(a.energy, rel=1e-12, abs=1e-10)
        np.testing.assert_allclose(b.forces, a.forces, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(b.local_std_normalised, a.local_std_normalised, rtol=1e-8)


def test_file_is_data_not_pickle(model, tmp_path):
    path = tmp_path / "model.npz"
    model.save(path)
    with np.load(path, allow_pickle=False) as data:
        assert all(data[k].dtype != object for k in data.files)
        meta = json.loads(bytes(data["metadata.json"]).decode())
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["versions"]["dscribe"] and meta["descriptor"]["r_cut"] == 4.0


def _rewrite(path, out, change):
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(bytes(arrays["metadata.json"]).decode())
    change(meta, arrays)
    arrays["metadata.json"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(out, **arrays)


def test_bad_files_are_clear_errors(model, tmp_path):
    path = tmp_path / "model.npz"
    model.save(path)
    with pytest.raises(gpmlip.ModelFileError, match="version"):
        _rewrite(path, tmp_path / "v.npz", lambda m, a: m.update(format_version=99))
        gpmlip.load_model(tmp_path / "v.npz")
    with pytest.raises(gpmlip.ModelFileError, match="damaged"):
        _rewrite(path, tmp_path / "k.npz", lambda m, a: a.pop("kmm"))
        gpmlip.load_model(tmp_path / "k.npz")
    truncated = tmp_path / "t.npz"
    truncated.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(gpmlip.ModelFileError):
        gpmlip.load_model(truncated)
    with pytest.raises(gpmlip.ModelFileError):
        gpmlip.load_model(tmp_path / "missing.npz")
    pickled = tmp_path / "p.npz"
    np.savez(pickled, **{"metadata.json": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(gpmlip.ModelFileError):
        gpmlip.load_model(pickled)


def test_calculator_variance_on_demand(model):
    """Plain MD computes no variance; asking for it afterwards adds it without redoing forces."""
    atoms = emt_frames(1, seed=5)[0]
    atoms.calc = gpmlip.GPCalculator(model)
    forces = atoms.get_forces()
    assert "local_variance" not in atoms.calc.results
    calls = []
    original = model.predict
    model.predict = lambda *a, **k: calls.append(k) or original(*a, **k)
    try:
        v = atoms.calc.get_property("local_std_normalised", atoms)
    finally:
        del model.predict
    assert calls == [dict(forces=False, stress=False, variance=True, force_std=False,
                          energy_std=False, stress_std=False)]
    np.testing.assert_allclose(v, model.predict(atoms).local_std_normalised)
    np.testing.assert_array_equal(atoms.calc.results["forces"], forces)


def test_calculator_results_caching_and_reset(model):
    atoms = emt_frames(1, seed=5)[0]
    atoms.calc = gpmlip.GPCalculator(model, uncertainty=True, force_std=True)
    e = atoms.get_potential_energy()
    p = model.predict(atoms)
    assert e == pytest.approx(p.energy)
    np.testing.assert_allclose(atoms.get_forces(), p.forces)
    np.testing.assert_allclose(atoms.get_stress(voigt=False), p.stress)
    np.testing.assert_allclose(atoms.get_potential_energies().sum(), e)
    calc = atoms.calc
    assert calc.results["max_uncertainty"] == pytest.approx(p.max_uncertainty)
    assert calc.get_property("force_std", atoms).shape == (len(atoms), 3)
    calls = []
    original = model.predict
    model.predict = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        atoms.get_forces()
        assert not calls                      # cached
        model.update(emt_frames(1, seed=6))   # the model changed: results are stale
        atoms.get_potential_energy()
        assert calls
    finally:
        del model.predict


def test_calculator_on_molecule_has_no_stress():
    frames = emt_frames(2, seed=0)
    m = gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU), n_sparse=4, e0={"Cu": 0.0}).fit(frames)
    mol = ethanol()
    mol.set_chemical_symbols(["Cu"] * len(mol))
    mol.positions *= 1.8
    mol.calc = gpmlip.GPCalculator(m)
    assert np.isfinite(mol.get_forces()).all()
    with pytest.raises(Exception, match="stress"):
        mol.get_stress()


def test_ase_md_runs_with_the_calculator(model):
    atoms = emt_frames(1, seed=7, rattle=0.05)[0]
    atoms.calc = gpmlip.GPCalculator(model)
    VelocityVerlet(atoms, 1.0 * units.fs).run(5)
    assert np.isfinite(atoms.get_potential_energy())


@pytest.mark.parametrize("kind, text", [
    ("gap.xml", "an XML file (a GAP/QUIP potential .xml?)"),
    ("flare.json", "a JSON file (a FLARE model .json?)"),
    ("data.xyz", "an XYZ structure file"),
    ("other.npz", "an .npz archive but not a gpmlip model file"),
    ("objects.npz", "holds Python objects (pickled data)"),
    ("truncated.npz", "damaged or truncated"),
    ("folder", "is a directory"),
])
def test_foreign_and_damaged_files_say_what_they_are(model, tmp_path, kind, text):
    path = tmp_path / kind
    if kind == "gap.xml":
        path.write_text('<?xml version="1.0"?>\n<GAP_params label="GAP_2020"/>\n')
    elif kind == "flare.json":
        path.write_text('{"class": "SGP_Wrapper", "hyps": [1.0]}')
    elif kind == "data.xyz":
        from ase.io import write
        write(path, emt_frames(1, seed=1)[0], format="extxyz")
    elif kind == "other.npz":
        np.savez(path, weights=np.ones(3))
    elif kind == "objects.npz":
        np.savez(path, **{"metadata.json": np.array([{"a": 1}], dtype=object)})
    elif kind == "truncated.npz":
        model.save(tmp_path / "full.npz")
        path.write_bytes((tmp_path / "full.npz").read_bytes()[:3000])
    else:
        path.mkdir()
    with pytest.raises(gpmlip.ModelFileError) as err:
        gpmlip.load_model(path)
    assert text in str(err.value) and "allow_pickle" not in str(err.value)


def _poke(meta, arrays, what):
    if what == "nan stats":
        arrays["stats_forces_r"] = arrays["stats_forces_r"].copy()
        arrays["stats_forces_r"][0, 0] = np.nan
    elif what == "kmm":
        arrays["kmm"] = arrays["kmm"] * 1.01
    elif what == "zeta":
        meta["kernel"]["zeta"] = 1.5
    elif what == "noise":
        meta["noise"]["forces"] = -0.05
    elif what == "r_cut":
        meta["descriptor"]["r_cut"] = 3.9
    elif what == "weights":
        arrays["beta"] = arrays["beta"] * 1.5
    elif what == "inf e0":
        meta["e0"] = {k: float("inf") for k in meta["e0"]}


@pytest.mark.parametrize("what", ["nan stats", "kmm", "zeta", "noise", "r_cut", "weights",
                                  "inf e0"])
def test_a_file_with_wrong_values_is_refused_not_loaded(model, tmp_path, what):
    """A file loads exactly or not at all: values no model could have written are damage."""
    path = tmp_path / "model.npz"
    model.save(path)
    _rewrite(path, tmp_path / "bad.npz", lambda m, a: _poke(m, a, what))
    with pytest.raises(gpmlip.ModelFileError, match="damaged"):
        gpmlip.load_model(tmp_path / "bad.npz")
    gpmlip.load_model(path)   # the untouched file still loads


def test_a_file_too_large_or_with_foreign_arrays_is_refused_before_reading(model, tmp_path,
                                                                           monkeypatch):
    """An unused member, a total size over the limit or a zip bomb is refused from the archive's
    directory, before numpy reads any array (issue 31: a 2 GiB unused member took 22 s)."""
    import time

    path = tmp_path / "model.npz"
    model.save(path)
    _rewrite(path, tmp_path / "extra.npz",
             lambda m, a: a.update(junk=np.zeros(10)))
    with pytest.raises(gpmlip.ModelFileError, match=r"arrays no gpmlip model has \(\['junk'\]"):
        gpmlip.load_model(tmp_path / "extra.npz")

    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["frame_padding"] = np.zeros(2 ** 22)          # 32 MiB of zeros, compresses ~1000x
    np.savez_compressed(tmp_path / "bomb.npz", **arrays)
    with pytest.raises(gpmlip.ModelFileError, match="never writes compressed models"):
        gpmlip.load_model(tmp_path / "bomb.npz")
    monkeypatch.setenv("GPMLIP_MAX_MODEL_BYTES", str(path.stat().st_size // 2))
    t = time.perf_counter()
    with pytest.raises(gpmlip.ModelFileError, match="over the limit .* GPMLIP_MAX_MODEL_BYTES"):
        gpmlip.load_model(path)
    assert time.perf_counter() - t < 1.0
    monkeypatch.delenv("GPMLIP_MAX_MODEL_BYTES")
    assert gpmlip.load_model(path).is_fitted


def test_a_non_finite_prediction_is_an_error_not_a_number(model):
    """A fitted state that gives NaN (damage in memory or in a file that slipped through) is a
    NumericalError from predict, never a NaN energy (issue 31)."""
    import copy

    from gpmlip.errors import NumericalError

    broken = copy.deepcopy(model)
    broken.state.posterior.beta[0] = np.nan
    atoms = emt_frames(1, seed=7)[0]
    with pytest.raises(NumericalError, match="non-finite energy or force"):
        broken.predict(atoms)
    assert np.isfinite(model.predict(atoms).energy)
