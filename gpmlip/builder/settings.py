"""The model builder's settings: what a candidate is, the data's length scales, sparse counts."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from ase.data import chemical_symbols

from gpmlip.data import Frame
from gpmlip.species import atomic_number

NEIGHBOURS_IN_CUTOFF = 30
"""Mean neighbour count the default cutoff holds: on Zuo 2020 it gives Mo 5.1, Si 5.4, Li 5.4 Å
against the paper's hand-chosen 5.2, 5.4, 4.8."""
R_CUT_RANGE = (3.0, 6.5)
DESCRIPTOR_FIELDS = ("r_cut", "r0", "m", "n_max", "l_max", "sigma", "second", "compression")
"""The :class:`Settings` fields of the descriptor (fixed when a descriptor is given)."""
MANY_SPECIES = 3
"""From this many species the builder's default SOAP is compressed (:data:`MANY_SPECIES_COMPRESSION`)."""
MANY_SPECIES_COMPRESSION = "mu1nu1"
"""dscribe's ``mu1nu1`` (each species against the summed density): features linear in the species
count.  On GFN2-xTB molecular MD (benchmarks/compression.py) its test errors were within 3-10 % of
the uncompressed SOAP's with 0.64x (3 species) and 0.39x (5 species) the features; ``crossover``
and ``mu2`` lost 50-130 % (docs/guide/descriptors.md)."""


def default_compression(n_species: int) -> str:
    """The SOAP compression a model of ``n_species`` species gets unless told otherwise:
    :data:`MANY_SPECIES_COMPRESSION` from :data:`MANY_SPECIES` species, else "off"."""
    return MANY_SPECIES_COMPRESSION if n_species >= MANY_SPECIES else "off"
START_NOISE = {"energy_sigma": 0.002, "force_sigma": 0.05, "virial_sigma": 0.5}
"""Starting noise levels (eV/atom, eV/Å, eV/atom of virial); the noise stage chooses them."""


@dataclass(frozen=True)
class Settings:
    """One candidate: the descriptor, kernel and sparse settings a model is built from.

    ``r0`` is the distance past ``r_cut`` (Å) at which the smooth weighting reaches zero and
    ``m`` its exponent (``r0=None``: no weighting, dscribe's hard cutoff); ``second`` is
    ``(r_cut, weight)`` of a second SOAP at a short cutoff (:class:`gpmlip.Stacked`) or None;
    ``compression`` dscribe's species compression of both SOAPs.
    """

    r_cut: float
    r0: float | None = 1.5
    m: float = 1.0
    n_max: int = 10
    l_max: int = 6
    sigma: float = 0.5
    zeta: int = 4
    second: tuple[float, float] | None = None
    sparse_method: str = "cur"
    compression: str = "off"

    def descriptor(self, species: Sequence[str], n_jobs: int = 1):
        """The SOAP (or two stacked) of these settings."""
        from gpmlip.descriptors import SOAP, Stacked

        weighting = None if self.r0 is None else {"function": "poly", "r0": self.r_cut + self.r0,
                                                  "c": 1.0, "m": self.m}
        first = SOAP(list(species), self.r_cut, self.n_max, self.l_max, self.sigma,
                     weighting=weighting, compression=self.compression, n_jobs=n_jobs)
        if self.second is None:
            return first
        r_short, weight = self.second
        other = SOAP(list(species), r_short, self.n_max, self.l_max, self.sigma,
                     weighting="smooth", compression=self.compression, n_jobs=n_jobs)
        return Stacked([first, other], [1.0, weight], n_jobs=n_jobs)

    def changes(self, reference: Settings) -> str:
        """What differs from ``reference``, e.g. ``"zeta 6, second 3.7 w0.5"``."""
        out = []
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(reference, f.name)
            if a != b:
                out.append(f"{f.name} {_short(a)}")
        return ", ".join(out) or "defaults"

    def to_dict(self) -> dict:
        """JSON-ready settings."""
        return {**dataclasses.asdict(self),
                "second": None if self.second is None else list(self.second)}


def _short(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return f"{value[0]:g} w{value[1]:g}"
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass
class Scales:
    """Length scales read from the data: the default cutoff and a short one (Å)."""

    r_cut: float
    r_short: float
    neighbours: float
    """Mean neighbour count within ``r_cut``."""


def data_scales(frames: Sequence[Frame], max_frames: int = 20) -> Scales:
    """The default cutoff and the short cutoff of a second SOAP, from the data's neighbours.

    ``r_cut``: the radius holding :data:`NEIGHBOURS_IN_CUTOFF` neighbours on average (over at
    most ``max_frames`` structures), rounded to 0.1 Å and kept within :data:`R_CUT_RANGE`
    (5 Å for data too sparse to reach the count, such as small molecules).  ``r_short``: the
    centre of the flattest stretch of the neighbour count between 0.5 and 0.8 ``r_cut`` (and
    0.3 Å past the nearest neighbours), the gap between coordination shells (Zuo 2020: Mo 3.7,
    Si 3.0, Li 4.0 Å; the short cutoffs chosen there by leave-one-out were 3.5, 3.2, 3.9).
    """
    from gpmlip.descriptors.neighbours import neighbour_list

    idx = np.unique(np.linspace(0, len(frames) - 1, min(max_frames, len(frames)))
                    .round().astype(int))
    grid = np.arange(1.0, 8.0 + 1e-9, 0.05)
    counts = []
    for i in idx:
        atoms = frames[i].atoms
        d = np.sort(neighbour_list(atoms, float(grid[-1])).distance)
        counts.append(np.searchsorted(d, grid, side="right") / len(atoms))
    count = np.mean(counts, axis=0)
    reached = count >= NEIGHBOURS_IN_CUTOFF
    r_cut = float(np.clip(np.round(grid[np.argmax(reached)], 1), *R_CUT_RANGE)) \
        if reached.any() else 5.0
    nearest = grid[np.argmax(count > 0.5)] if (count > 0.5).any() else 0.0
    window = np.arange(max(0.5 * r_cut, nearest + 0.3), 0.8 * r_cut, 0.05)
    if len(window) == 0:
        window = np.array([0.65 * r_cut])
    slope = np.interp(window + 0.3, grid, count) - np.interp(window - 0.3, grid, count)
    flat = np.flatnonzero(slope <= slope.min() + 1e-9)
    run = flat[: np.argmax(np.diff(np.append(flat, flat[-1] + 2)) > 1) + 1]   # first stretch
    r_short = float(np.round(window[run[len(run) // 2]], 1))
    return Scales(r_cut, r_short, float(np.interp(r_cut, grid, count)))


def screening_subset(frames: Sequence[Frame], n: int) -> np.ndarray:
    """``n`` structure indices spread over every config_type in proportion (deterministic)."""
    if n >= len(frames):
        return np.arange(len(frames))
    order = np.array(sorted(range(len(frames)), key=lambda i: (frames[i].config_type, i)))
    return np.sort(order[np.unique(np.linspace(0, len(order) - 1, n).round().astype(int))])


def default_sparse(frames: Sequence[Frame], species: Sequence[int],
                   limit: int = 1000) -> dict[str, int]:
    """Sparse points per species: ``limit`` (1000), at most a quarter of that species' atoms
    (>= 10)."""
    counts = {z: 0 for z in species}
    for f in frames:
        for z, c in zip(*np.unique(f.atoms.numbers, return_counts=True)):
            counts[int(z)] += int(c)
    return {chemical_symbols[z]: int(max(10, min(limit, c // 4))) for z, c in counts.items()}


def numbers(symbols: Sequence[str]) -> list[int]:
    """Atomic numbers of element symbols (checked)."""
    return [atomic_number(s, "species") for s in symbols]
