"""Labels a user gives in other conventions or not at all, and frames built by hand."""

import logging

import numpy as np
import pytest
from ase.io import write

import gpmlip
from gpmlip.data import check_frames, load_frames
from gpmlip.errors import DataError

from conftest import SMALL_CU, emt_frames


def gap_style(tmp_path, prefix="dft_"):
    """An extxyz with GAP's ``dft_energy`` / ``dft_forces`` / ``dft_virial`` keys only."""
    images = []
    for atoms in emt_frames(3, seed=5):
        e, f, s = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(voigt=False)
        atoms.calc = None
        atoms.info[prefix + "energy"] = e
        atoms.arrays[prefix + "forces"] = f
        atoms.info[prefix + "virial"] = -s * atoms.get_volume()
        images.append(atoms)
    path = tmp_path / "gap.xyz"
    write(path, images)
    return path, images


@pytest.mark.parametrize("prefix", ["dft_", "DFT_", "REF_"])
def test_common_label_conventions_are_read(tmp_path, prefix, caplog):
    path, images = gap_style(tmp_path, prefix)
    with caplog.at_level(logging.INFO, logger="gpmlip.data"):
        data = load_frames(path)
    assert len(data) == 3 and f"energy = '{prefix}energy'" in caplog.text
    f = data[0]
    assert f.energy == pytest.approx(images[0].info[prefix + "energy"])
    np.testing.assert_allclose(f.forces, images[0].arrays[prefix + "forces"], atol=1e-7)   # text
    np.testing.assert_allclose(f.stress, -images[0].info[prefix + "virial"]
                               / images[0].get_volume(), atol=1e-9)


def test_unknown_label_keys_say_which_keys_the_file_has(tmp_path):
    path, _ = gap_style(tmp_path, "my_")
    with pytest.raises(DataError) as err:
        load_frames(path)
    text = str(err.value)
    assert "my_energy" in text and "my_forces" in text and "energy_key" in text


def test_training_without_forces_warns(caplog):
    frames = emt_frames(4, seed=6, labels=("energy",))
    with caplog.at_level(logging.WARNING, logger="gpmlip.data"):
        gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU), n_sparse=5, e0={"Cu": 0.0}).fit(frames)
    assert "none of the 4 frames has forces" in caplog.text
    caplog.clear()
    mixed = emt_frames(2, seed=7) + emt_frames(2, seed=8, labels=("energy",))
    with caplog.at_level(logging.WARNING, logger="gpmlip.data"):
        gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU), n_sparse=5, e0={"Cu": 0.0}).fit(mixed)
    assert "2 of 4 frames have forces labels, 2 have none" in caplog.text


@pytest.mark.parametrize("what", ["energy", "forces", "stress", "positions"])
def test_frames_built_by_hand_with_nan_labels_are_refused(what):
    frames = list(load_frames(emt_frames(3, seed=9)))
    bad = frames[1]
    if what == "positions":
        bad.atoms.positions[0, 0] = np.nan
    elif what == "energy":
        frames[1] = gpmlip.Frame(bad.atoms, energy=np.nan, forces=bad.forces)
    else:
        value = getattr(bad, what).copy()
        value.flat[0] = np.nan
        setattr(bad, what, value)
    model = gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU), n_sparse=5, e0={"Cu": 0.0})
    with pytest.raises(DataError, match=f"frame 1: has non-finite {what}"):
        model.fit(frames)
    assert not model.is_fitted
    good = gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU), n_sparse=5, e0={"Cu": 0.0}).fit(frames[:1])
    with pytest.raises(DataError, match="non-finite"):
        good.update(frames[1])
    with pytest.raises(DataError, match="forces have shape"):
        check_frames([gpmlip.Frame(frames[0].atoms, forces=np.zeros((2, 3)))])
