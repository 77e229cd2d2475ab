"""Isolated-atom reference energies e0: given, read from isolated-atom frames, or fitted."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from ase.data import chemical_symbols

from gpmlip.data.dataset import Dataset
from gpmlip.errors import DataError
from gpmlip.species import by_atomic_number

log = logging.getLogger(__name__)

ISOLATED_TYPES = frozenset({"isolated_atom", "IsolatedAtom", "isolated"})


@dataclass(frozen=True)
class ReferenceEnergies:
    """Per-species energies subtracted from total energies before fitting.

    Attributes
    ----------
    energies : dict
        Atomic number -> e0 in eV.
    method : str
        ``"given"``, ``"isolated"`` or ``"fit"``.
    rmse_per_atom : float or None
        For ``"fit"``: RMS residual of the linear fit, eV/atom (how much is left for the model).
    """

    energies: dict[int, float]
    method: str
    rmse_per_atom: float | None = None

    def of(self, numbers: np.ndarray) -> float:
        """Sum of e0 over the given atomic numbers."""
        try:
            return float(sum(self.energies[int(z)] for z in numbers))
        except KeyError as exc:
            raise DataError(f"no reference energy e0 for {chemical_symbols[int(exc.args[0])]}; "
                            "give it or add isolated-atom frames") from None

    def to_dict(self) -> dict:
        """JSON-ready: symbol -> e0."""
        return {chemical_symbols[z]: e for z, e in sorted(self.energies.items())}


def _is_isolated(frame) -> bool:
    return frame.n_atoms == 1 and frame.energy is not None and (
        frame.config_type in ISOLATED_TYPES or not frame.atoms.pbc.any()
    )


def reference_energies(dataset: Dataset, e0: dict | str = "auto") -> ReferenceEnergies:
    """Work out e0 for every species in ``dataset``.

    Parameters
    ----------
    dataset : Dataset
    e0 : dict or {"auto", "isolated", "fit"}
        A dict (symbol or atomic number -> eV) is used as given and must cover every species;
        ``"isolated"`` takes 1-atom frames (``config_type`` IsolatedAtom/isolated_atom, or
        non-periodic); ``"fit"`` solves least squares of total energy on composition;
        ``"auto"`` uses isolated atoms when every species has one, else fits.

    Returns
    -------
    ReferenceEnergies
    """
    species = dataset.species
    if isinstance(e0, dict):
        given = {z: float(v) for z, v in by_atomic_number(e0, "e0").items()}
        missing = [chemical_symbols[z] for z in species if z not in given]
        if missing:
            raise DataError(f"e0 has no energy for {missing}; add them to the e0 dict")
        return ReferenceEnergies({z: given[z] for z in species}, "given")
    if e0 not in ("auto", "isolated", "fit"):
        raise DataError(f"e0={e0!r}: give a dict, or 'auto', 'isolated' or 'fit'")

    isolated = {}
    for frame in dataset:
        if _is_isolated(frame):
            isolated.setdefault(int(frame.atoms.numbers[0]), frame.energy)
    if e0 in ("auto", "isolated") and all(z in isolated for z in species):
        return ReferenceEnergies({z: isolated[z] for z in species}, "isolated")
    if e0 == "isolated":
        missing = [chemical_symbols[z] for z in species if z not in isolated]
        raise DataError(f"no isolated-atom frame for {missing}; add them, give e0 as a dict, "
                        "or use e0='fit'")
    return _fit(dataset, species)


def _fit(dataset: Dataset, species: tuple[int, ...]) -> ReferenceEnergies:
    rows = [f for f in dataset if f.energy is not None]
    if not rows:
        raise DataError("cannot fit e0: no frame has an energy; give e0 as a dict")
    counts = np.array([[np.count_nonzero(f.atoms.numbers == z) for z in species] for f in rows],
                      dtype=float)
    energies = np.array([f.energy for f in rows])
    solution, _, rank, _ = np.linalg.lstsq(counts, energies, rcond=None)
    if rank < len(species):
        log.warning("e0 fit is under-determined (the compositions span %d of %d species): "
                    "using the minimum-norm solution; give e0 as a dict to be exact",
                    rank, len(species))
    n_atoms = counts.sum(axis=1)
    rmse = float(np.sqrt(np.mean(((energies - counts @ solution) / n_atoms) ** 2)))
    result = ReferenceEnergies({z: float(e) for z, e in zip(species, solution)}, "fit", rmse)
    log.info("fitted e0 %s eV; residual %.4g eV/atom RMS", result.to_dict(), rmse)
    return result
