"""The data layer: loading from every source, validation, e0 and splits."""

from __future__ import annotations

import logging
from pathlib import Path

import ase.db
import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

import gpmlip
from gpmlip.data import LabelKeys, load_frames, reference_energies, train_test_split
from gpmlip.errors import DataError

MO = Path(__file__).resolve().parents[1] / "data" / "zuo2020_Mo_test.xyz"


def emt_frames(n=6, seed=0, config_types=("a", "b")):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.rattle(0.1, seed=int(rng.integers(1 << 30)))
        atoms.calc = EMT()
        atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        atoms.info["config_type"] = config_types[i % len(config_types)]
        out.append(atoms)
    return out


def test_real_vasp_extxyz():
    data = load_frames(MO, species=["Mo"], require=("energy", "forces", "stress"))
    assert len(data) == 23 and data.n_atoms == 1189
    assert data.config_types() == {"AIMD-NVT": 12, "Elastic": 6, "Vacancy": 3, "Surface": 2}
    raw = ase.io.read(MO, ":")
    np.testing.assert_allclose(data[5].forces, raw[5].get_forces())
    np.testing.assert_allclose(data[5].stress, raw[5].get_stress(voigt=False))
    assert data[5].energy == pytest.approx(raw[5].get_potential_energy())


def test_list_of_atoms_from_calculator():
    frames = emt_frames()
    data = load_frames(frames)
    assert len(data) == 6
    np.testing.assert_allclose(data[2].forces, frames[2].get_forces())
    np.testing.assert_allclose(data[2].stress, frames[2].get_stress(voigt=False))
    assert data[2].config_type == "a"


def test_gap_style_keys_and_virial():
    atoms = emt_frames(1)[0]
    stress = atoms.get_stress(voigt=False)
    plain = atoms.copy()  # no calculator: labels only in info/arrays
    plain.info["DFT_energy"] = atoms.get_potential_energy()
    plain.arrays["DFT_forces"] = atoms.get_forces()
    plain.info["DFT_virial"] = (-stress * atoms.get_volume()).reshape(9)
    plain.info.update(energy_sigma=0.002, force_sigma=0.04, virial_sigma=0.02)
    keys = LabelKeys(energy="DFT_energy", forces="DFT_forces", virial="DFT_virial")
    frame = load_frames([plain], keys=keys)[0]
    np.testing.assert_allclose(frame.stress, stress, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(frame.forces, atoms.get_forces())
    assert (frame.energy_sigma, frame.force_sigma, frame.virial_sigma) == (0.002, 0.04, 0.02)


def test_ase_db(tmp_path):
    frames = emt_frames(4)
    path = tmp_path / "train.db"
    with ase.db.connect(path) as db:
        for atoms in frames:
            db.write(atoms, config_type=atoms.info["config_type"], force_sigma=0.07)
    data = load_frames(path)
    assert len(data) == 4
    assert data[1].config_type == "b" and data[1].force_sigma == 0.07
    np.testing.assert_allclose(data[3].forces, frames[3].get_forces())
    assert data[3].energy == pytest.approx(frames[3].get_potential_energy())


def test_write_round_trip(tmp_path):
    data = load_frames(emt_frames(3))
    data.write(tmp_path / "out.xyz")
    again = load_frames(tmp_path / "out.xyz")
    for a, b in zip(data, again):
        np.testing.assert_allclose(a.forces, b.forces)
        np.testing.assert_allclose(a.stress, b.stress, atol=1e-12)
        assert a.config_type == b.config_type
    assert not (tmp_path / "out.xyz.tmp").exists()


def broken_frames():
    frames = emt_frames(6)
    frames[1].calc = None  # no labels at all
    frames[2].calc.results["energy"] = float("nan")
    frames[3].calc.results["forces"] = np.zeros((2, 3))
    frames[4] = frames[0].copy()
    frames[4].calc = frames[0].calc
    return frames


def test_invalid_frames_listed_by_number():
    with pytest.raises(DataError) as err:
        load_frames(broken_frames())
    text = str(err.value)
    assert "4 of 6 frames" in text
    assert "frame 1: has no energy, forces or stress" in text
    assert "frame 2: has non-finite energy" in text
    assert "frame 3: forces have shape (2, 3); expected (4, 3)" in text
    assert "frame 4: duplicates frame 0" in text
    assert '[data] on_error = "skip"' in text and 'on_error="skip"' in text


def test_frames_with_the_same_problem_are_one_line():
    frames = emt_frames(12)
    with pytest.raises(DataError) as err:
        load_frames(frames, species=["Mo"])
    text = str(err.value)
    assert "12 of 12 frames" in text and "... (12 frames): contains species ['Cu']" in text
    assert text.count("contains species") == 1


def test_skip_mode_counts_and_warns(caplog):
    with caplog.at_level(logging.WARNING):
        data = load_frames(broken_frames(), on_error="skip")
    assert len(data) == 2 and sorted(data.skipped) == [1, 2, 3, 4]
    assert "Skipping" in caplog.text
    assert "4 frames skipped" in data.summary()


def test_unknown_species_and_required_labels():
    frames = emt_frames(2)
    with pytest.raises(DataError, match=r"frames 0, 1: contains species \['Cu'\] not in \['Mo'\]"):
        load_frames(frames, species=["Mo"])
    frames[1].calc.results.pop("stress")
    with pytest.raises(DataError, match="frame 1: has no stress"):
        load_frames(frames, require=("stress",))


def test_bad_sigma_and_missing_file(tmp_path):
    frames = emt_frames(1)
    frames[0].info["force_sigma"] = -1
    with pytest.raises(DataError, match="force_sigma"):
        load_frames(frames)
    with pytest.raises(DataError, match="no such file"):
        load_frames(tmp_path / "missing.xyz")


def test_e0_given_isolated_and_fit():
    data = load_frames(emt_frames(4))
    assert reference_energies(data, {"Cu": -1.5}).energies == {29: -1.5}
    with pytest.raises(DataError, match=r"no energy for \['Cu'\]"):
        reference_energies(data, {"Ag": -1.0})
    with pytest.raises(DataError, match="no isolated-atom frame"):
        reference_energies(data, "isolated")

    # two species, energies exactly linear in composition plus small noise: the fit recovers e0
    rng = np.random.default_rng(1)
    frames = []
    for i in range(12):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((1, 1, 2))
        atoms.rattle(0.05, seed=i)
        n_ag = int(rng.integers(0, 8))
        atoms.numbers[:n_ag] = 47
        atoms.info["energy"] = -3.0 * (8 - n_ag) - 2.0 * n_ag + rng.normal(scale=1e-3)
        frames.append(atoms)
    ref = reference_energies(load_frames(frames), "fit")
    assert ref.method == "fit"
    assert ref.energies[29] == pytest.approx(-3.0, abs=1e-2)
    assert ref.energies[47] == pytest.approx(-2.0, abs=1e-2)
    assert ref.rmse_per_atom < 1e-3

    isolated = frames[:2] + [bulk("Cu").copy(), bulk("Ag").copy()]
    for atoms, e in zip(isolated[2:], (-0.1, -0.2)):
        atoms.pbc = False
        atoms.info = {"energy": e, "config_type": "IsolatedAtom"}
    ref = reference_energies(load_frames(isolated), "auto")
    assert ref.method == "isolated" and ref.energies == {29: -0.1, 47: -0.2}


def test_split_is_seeded_stratified_and_complete():
    data = load_frames(emt_frames(20, config_types=("a", "a", "a", "b")))
    train, test = train_test_split(data, 0.2, seed=3)
    again = train_test_split(data, 0.2, seed=3)[1]
    keys = lambda d: [f.content_key for f in d]
    assert keys(test) == keys(again)
    assert keys(test) != keys(train_test_split(data, 0.2, seed=4)[1])
    assert sorted(keys(train) + keys(test)) == sorted(keys(data))
    assert test.config_types() == {"a": 3, "b": 1}
    with pytest.raises(DataError):
        train_test_split(data, 1.5)


def test_public_names():
    assert gpmlip.load_frames is load_frames
