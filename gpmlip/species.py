"""Chemical species given by users: symbols or atomic numbers, parsed in one place."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ase.data import atomic_numbers, chemical_symbols

import numpy as np

from gpmlip.errors import SettingsError, UnknownSpeciesError


def atomic_number(species, what: str = "species") -> int:
    """The atomic number of a symbol (``"Cu"``) or number (``29``, ``"29"``).

    Parameters
    ----------
    species : str or int
    what : str
        The setting it came from, named in the error message.

    Raises
    ------
    SettingsError
        If it is not a chemical element.
    """
    if isinstance(species, str):
        if species in atomic_numbers:
            return atomic_numbers[species]
        if species.strip().isdigit():
            species = int(species)
        else:
            raise SettingsError(f"{what}: unknown chemical symbol {species!r}; give a symbol "
                                "such as 'Cu' or 'Au' (capital first letter) or an atomic number")
    try:
        z = int(species)
    except (TypeError, ValueError):
        raise SettingsError(f"{what}: {species!r} is not a chemical species; use a symbol such "
                            "as 'Cu' or an atomic number") from None
    if not 0 < z < len(chemical_symbols) or z != species:
        raise SettingsError(f"{what}: atomic number {species!r} is out of range; use 1 to "
                            f"{len(chemical_symbols) - 1}")
    return z


def atomic_number_set(species: Iterable, what: str = "species") -> set[int]:
    """Atomic numbers of several species (see :func:`atomic_number`)."""
    if isinstance(species, (str, int)):
        species = [species]
    return {atomic_number(s, what) for s in species}


def by_atomic_number(values: Mapping, what: str) -> dict:
    """A mapping keyed by symbol or number, re-keyed by atomic number."""
    return {atomic_number(k, what): v for k, v in values.items()}


def symbol(z: int) -> str:
    """The chemical symbol of atomic number ``z`` (the number itself if it is no element)."""
    z = int(z)
    return chemical_symbols[z] if 0 < z < len(chemical_symbols) else str(z)


def check_known(numbers, known: Iterable[int], *, what: str, owner: str, remedy: str) -> None:
    """The one check that atoms are of species something was built for.

    Parameters
    ----------
    numbers : array of int
        Atomic numbers of the atoms given.
    known : iterable of int
        The species allowed.
    what : str
        What holds the atoms, e.g. ``"the structure"``, ``"candidate 3"``.
    owner : str
        What knows ``known``, e.g. ``"the descriptor"``.
    remedy : str
        What to do about it.

    Raises
    ------
    UnknownSpeciesError
        Naming the unknown species, the known ones and the remedy.
    """
    known = sorted({int(z) for z in known})
    unknown = sorted({int(z) for z in np.ravel(numbers)} - set(known))
    if unknown:
        raise UnknownSpeciesError(
            f"{what}: species {[symbol(z) for z in unknown]} unknown to {owner} (it knows "
            f"{[symbol(z) for z in known]}); {remedy}")
