"""A bad chemical symbol is one clear SettingsError at every public entry point."""

import pytest

import gpmlip
from gpmlip.data import load_frames, reference_energies
from gpmlip.errors import SettingsError
from gpmlip.labelling import LabelQueue
from gpmlip.species import atomic_number

from conftest import SMALL_CU, emt_frames


def test_helper():
    assert atomic_number("Cu") == atomic_number(29) == atomic_number("29") == 29
    for bad in ("cu", "Xx", 0, 200, 2.5, None):
        with pytest.raises(SettingsError, match="symbol|species|range"):
            atomic_number(bad, "species")


@pytest.mark.parametrize("entry", ["soap", "n_sparse", "signal_std", "e0", "reference",
                                   "load_frames", "queue"])
def test_bad_symbol_at_each_entry_point(entry, tmp_path):
    frames = emt_frames(2, seed=0)
    soap = gpmlip.SOAP(**SMALL_CU)
    calls = {
        "soap": lambda: gpmlip.SOAP(**{**SMALL_CU, "species": ["Cu", "Cuu"]}),
        "n_sparse": lambda: gpmlip.SparseGP(soap, n_sparse={"Cuu": 3}).fit(frames),
        "signal_std": lambda: gpmlip.SparseGP(soap, signal_std={"Cuu": 1.0}).fit(frames),
        "e0": lambda: gpmlip.SparseGP(soap, e0={"Cuu": 0.0}).fit(frames),
        "reference": lambda: reference_energies(load_frames(frames), {"Cuu": 0.0}),
        "load_frames": lambda: load_frames(frames, species=["Cuu"]),
        "queue": lambda: LabelQueue(tmp_path / "q.db", "emt", species=["Cuu"]),
    }
    with pytest.raises(SettingsError, match="'Cuu'.*(symbol|species)"):
        calls[entry]()


def test_check_known_names_the_unknown_and_the_known():
    from gpmlip.errors import UnknownSpeciesError
    from gpmlip.species import check_known

    check_known([29, 29, 79], [29, 79], what="x", owner="y", remedy="z")
    with pytest.raises(UnknownSpeciesError, match=r"frame 3: species \['Ag'\] unknown to the "
                       r"model \(it knows \['Cu', 'Au'\]\); do this"):
        check_known([29, 47], {79, 29}, what="frame 3", owner="the model", remedy="do this")
