"""SOAP descriptors as dscribe defines them, computed by the compiled engine.

:class:`SOAP` computes features, forces (by back-propagation) and Jacobians with
:class:`gpmlip.descriptors.engine.SOAPEngine` from a pair list (docs/theory.md §2-3).  dscribe
stays the definition: :meth:`SOAP.reference_features` calls its ``create``, and the tests compare
every feature with it and, through an oracle built on dscribe's analytical derivatives of local
clusters (``tests/dscribe_oracle.py``), every Jacobian.  This module is the only one in gpmlip that
imports dscribe.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from gpmlip.descriptors.engine import COMPRESSIONS, SOAPEngine, species_weights
from gpmlip.descriptors.environments import Environments
from gpmlip.descriptors.neighbours import PairList, neighbour_list, wrap
from gpmlip.errors import SettingsError, StructureError
from gpmlip.species import atomic_number_set, by_atomic_number, check_known, symbol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SOAPSettings:
    """The settings that define a SOAP descriptor (what a model file stores)."""

    species: tuple[int, ...]
    r_cut: float
    n_max: int
    l_max: int
    sigma: float = 0.5
    rbf: str = "gto"
    weighting: tuple | None = None
    """dscribe's weighting dictionary as sorted (key, value) items (hashable), or None."""
    compression: str = "off"
    """dscribe's compression mode (see :data:`gpmlip.descriptors.engine.COMPRESSIONS`)."""
    species_weighting: tuple | None = None
    """dscribe's species weighting as sorted (atomic number, weight) items, or None (all 1)."""

    @property
    def weighting_dict(self) -> dict | None:
        """The weighting as dscribe takes it."""
        return dict(self.weighting) if self.weighting else None

    @property
    def species_weighting_dict(self) -> dict | None:
        """The species weighting as dscribe takes it (atomic number -> weight)."""
        return dict(self.species_weighting) if self.species_weighting else None

    @property
    def compression_dict(self) -> dict:
        """dscribe's ``compression`` argument."""
        return {"mode": self.compression, "species_weighting": self.species_weighting_dict}

    def to_dict(self) -> dict:
        """JSON-ready dictionary (the compression keys only when they are not the default, so
        that files of uncompressed models read by earlier versions stay the same)."""
        out = {**asdict(self), "species": list(self.species), "weighting": self.weighting_dict}
        out.pop("compression")
        out.pop("species_weighting")
        if self.compression != "off":
            out["compression"] = self.compression
        if self.species_weighting is not None:
            out["species_weighting"] = {str(z): w for z, w in self.species_weighting}
        return out


def _species_numbers(species) -> tuple[int, ...]:
    out = atomic_number_set(species, "species")
    if not out:
        raise SettingsError("species is empty: give every chemical species the data contains")
    return tuple(sorted(out))


def _validate_settings(settings: SOAPSettings) -> None:
    if not np.isfinite(settings.r_cut) or settings.r_cut <= 1.0:
        raise SettingsError(
            f"r_cut={settings.r_cut} Å: the cutoff must be larger than 1 Å (typical 4-6 Å)"
        )
    if int(settings.n_max) != settings.n_max or not 1 <= settings.n_max <= 20:
        raise SettingsError(f"n_max={settings.n_max}: use an integer from 1 to 20 (typical 6-10)")
    if int(settings.l_max) != settings.l_max or not 0 <= settings.l_max <= 20:
        raise SettingsError(f"l_max={settings.l_max}: use an integer from 0 to 20 (typical 4-8)")
    if not np.isfinite(settings.sigma) or settings.sigma <= 0:
        raise SettingsError(f"sigma={settings.sigma} Å: use a positive width (typical 0.3-0.7)")
    if settings.compression not in COMPRESSIONS:
        raise SettingsError(f"compression={settings.compression!r}: use one of {COMPRESSIONS} "
                            "(dscribe's modes; 'off' keeps every species pair)")
    if settings.rbf != "gto":
        raise SettingsError(f"rbf={settings.rbf!r}: only the 'gto' radial basis is supported")
    w = settings.weighting_dict
    if w is not None:
        if w.get("function") != "poly" or set(w) - {"function", "r0", "c", "m", "w0"}:
            raise SettingsError(f"weighting={w}: use {{'function': 'poly', 'r0': ..., 'm': ..., "
                                "'c': ...}} (dscribe's poly weighting) or None")
        r0, m, c = float(w.get("r0", 0)), float(w.get("m", 0)), float(w.get("c", 1.0))
        if not (np.isfinite(r0) and 1.0 < r0 and np.isfinite(m) and m >= 1 and c > 0):
            raise SettingsError(f"weighting={w}: r0 must exceed 1 Å, m must be >= 1 (smooth "
                                "energy and forces need it) and c > 0")


SMOOTH_M = 2.0
"""Exponent of the default smooth cutoff (see :func:`smooth_weighting`)."""


def smooth_weighting(r_cut: float, r0: float | None = None, m: float = SMOOTH_M) -> dict:
    """The default smooth cutoff: dscribe's ``poly`` weighting reaching zero at ``r0``.

    ``w(r) = (1 + 2x^3 - 3x^2)^m``, ``x = r / r0``; ``r0`` defaults to ``r_cut`` (see
    docs/guide/descriptors.md for the measurements behind the defaults, and docs/benchmarks.md
    for DFT data sets where ``r0 = r_cut + 1 or 1.5, m = 1`` does better: the model builder's
    default).
    """
    return {"function": "poly", "r0": float(r_cut if r0 is None else r0), "c": 1.0,
            "m": float(m)}


def _weighting_items(weighting, r_cut: float) -> tuple | None:
    if weighting is None:
        return None
    if isinstance(weighting, str):
        if weighting != "smooth":
            raise SettingsError(f"weighting={weighting!r}: use 'smooth', None or a dscribe "
                                "poly weighting dict")
        weighting = smooth_weighting(r_cut)
    if not isinstance(weighting, dict):
        raise SettingsError(f"weighting={weighting!r}: give a dict, 'smooth' or None")
    out = {k: (v if k == "function" else float(v)) for k, v in weighting.items()}
    out.setdefault("c", 1.0)
    return tuple(sorted(out.items()))


def _species_weighting_items(weights, species: tuple[int, ...]) -> tuple | None:
    if weights is None:
        return None
    if not isinstance(weights, dict):
        raise SettingsError(f"species_weighting={weights!r}: give a dict species -> weight")
    out = {z: float(w) for z, w in by_atomic_number(weights, "species_weighting").items()}
    species_weights(species, out)     # checked where the engine reads them
    return tuple(sorted(out.items()))


@lru_cache(maxsize=16)
def _dscribe(settings: SOAPSettings, periodic: bool):
    """One dscribe SOAP object per settings (cached: building the GTO basis costs time)."""
    from dscribe.descriptors import SOAP as DSOAP

    return DSOAP(
        species=list(settings.species),
        r_cut=settings.r_cut,
        n_max=settings.n_max,
        l_max=settings.l_max,
        sigma=settings.sigma,
        rbf=settings.rbf,
        periodic=periodic,
        weighting=settings.weighting_dict,
        compression=settings.compression_dict,
    )


class SOAP:
    """Smooth Overlap of Atomic Positions power spectrum, its forces and Jacobians.

    Parameters
    ----------
    species : sequence of str or int
        Every chemical species the structures may contain.
    r_cut : float
        Cutoff radius in Å (> 1); it places dscribe's GTO radial basis.
    n_max : int
        Number of radial basis functions (1-20).
    l_max : int
        Maximum spherical-harmonic degree (0-20).
    sigma : float, default 0.5
        Width of the Gaussian atomic density in Å.
    weighting : "smooth", dict or None, default "smooth"
        ``"smooth"``: dscribe's ``poly`` weighting from :func:`smooth_weighting`, which takes each
        neighbour's density to zero at ``r0`` with continuous derivatives, so energy and forces
        are smooth through the cutoff and only neighbours within ``r0`` are visited.  A dict is
        dscribe's weighting dictionary (``poly`` only).  None: no weighting, dscribe's hard
        density cutoff at ``r_cut + 3.7 sigma`` (what models before format 2 used).
    compression : {"off", "crossover", "mu1nu1", "mu2"}, default "off"
        dscribe's species compression (Darby et al. 2022): "off" keeps every species pair
        (features grow with the square of the species count), "crossover" only equal species,
        "mu1nu1" each species against the summed density (both linear in the species count),
        "mu2" the summed density alone.  See docs/guide/descriptors.md for accuracy and cost.
    species_weighting : dict, optional
        Species -> weight of its density (dscribe's ``species_weighting``); every species must
        be given.  None: all 1.
    rbf : {"gto"}
        Radial basis (the engine implements dscribe's GTO basis).
    n_jobs : int, default 1
        Worker processes for the reference path and for training frames.  The engine itself uses
        the process's numba threads (``NUMBA_NUM_THREADS``).

    Notes
    -----
    Features equal dscribe's ``SOAP.create`` with the same settings (``periodic=True`` for any
    ``pbc``); the tests check them against dscribe and the derivatives against finite
    differences.

    References
    ----------
    A. P. Bartók, R. Kondor, G. Csányi, Phys. Rev. B 87, 184115 (2013);
    L. Himanen et al., Comput. Phys. Commun. 247, 106949 (2020) (dscribe).
    """

    def __init__(
        self,
        species,
        r_cut: float,
        n_max: int,
        l_max: int,
        sigma: float = 0.5,
        *,
        weighting: str | dict | None = "smooth",
        compression: str = "off",
        species_weighting: dict | None = None,
        rbf: str = "gto",
        n_jobs: int = 1,
    ) -> None:
        numbers = _species_numbers(species)
        self.settings = SOAPSettings(
            species=numbers,
            r_cut=float(r_cut),
            n_max=n_max,
            l_max=l_max,
            sigma=float(sigma),
            rbf=rbf,
            weighting=_weighting_items(weighting, float(r_cut)),
            compression=str(compression),
            species_weighting=_species_weighting_items(species_weighting, numbers),
        )
        _validate_settings(self.settings)
        if int(n_jobs) < 1:
            raise SettingsError(f"n_jobs={n_jobs}: use 1 or more worker processes")
        self.n_jobs = int(n_jobs)
        self._engine: SOAPEngine | None = None

    # -- settings --------------------------------------------------------------------------
    @property
    def species(self) -> tuple[int, ...]:
        """Atomic numbers the descriptor knows, sorted."""
        return self.settings.species

    @property
    def engine(self) -> SOAPEngine:
        """The compiled engine for these settings."""
        if self._engine is None:
            s = self.settings
            self._engine = SOAPEngine(s.species, s.r_cut, s.n_max, s.l_max, s.sigma,
                                      s.weighting_dict, compression=s.compression,
                                      species_weighting=s.species_weighting_dict)
        return self._engine

    @property
    def n_features(self) -> int:
        """Length of one atom's descriptor vector."""
        return self.engine.n_features

    @property
    def cutoff_padding(self) -> float:
        """How far past ``r_cut`` dscribe's Gaussian densities reach, in Å."""
        return self.engine.padding

    @property
    def neighbour_cutoff(self) -> float:
        """Radius within which neighbours contribute: ``r0`` with a smooth cutoff, else
        ``r_cut + cutoff_padding``."""
        return self.engine.cutoff

    @property
    def smooth(self) -> bool:
        """Whether the energy is smooth through the cutoff (a weighting that vanishes at r0)."""
        return self.settings.weighting is not None

    def to_dict(self) -> dict:
        """JSON-ready settings, the inverse of :meth:`from_dict`."""
        return {"type": "SOAP", **self.settings.to_dict()}

    @classmethod
    def from_dict(cls, data: dict, *, n_jobs: int = 1) -> SOAP:
        """Rebuild from :meth:`to_dict` output (files without ``weighting`` have none)."""
        data = dict(data)
        if data.pop("type", "SOAP") != "SOAP":
            raise SettingsError("descriptor settings are not for SOAP")
        data.setdefault("weighting", None)
        return cls(**data, n_jobs=n_jobs)

    def __repr__(self) -> str:
        s = self.settings
        sym = [chemical_symbols[z] for z in s.species]
        extra = "" if s.compression == "off" else f", compression={s.compression!r}"
        if s.species_weighting:
            extra += f", species_weighting={s.species_weighting_dict}"
        return (f"SOAP(species={sym}, r_cut={s.r_cut}, n_max={s.n_max}, l_max={s.l_max}, "
                f"sigma={s.sigma}, weighting={s.weighting_dict}{extra})")

    # -- validation ------------------------------------------------------------------------
    def check_structure(self, atoms: Atoms) -> None:
        """Raise a :class:`~gpmlip.errors.StructureError` if ``atoms`` cannot be described."""
        if len(atoms) == 0:
            raise StructureError("the structure has no atoms; give at least one atom")
        pos = atoms.get_positions()
        if not np.isfinite(pos).all():
            bad = np.unique(np.nonzero(~np.isfinite(pos))[0])
            raise StructureError(
                f"non-finite positions for atoms {bad[:10].tolist()}; check the structure "
                "(a diverged MD step or a failed read)"
            )
        if not np.isfinite(atoms.cell.array).all():
            raise StructureError("the cell has non-finite entries; check atoms.cell")
        unknown = sorted(set(atoms.numbers.tolist()) - set(self.species))
        check_known(atoms.numbers, self.species, what="the structure", owner="the descriptor",
                    remedy="build the descriptor with species="
                    f"{[symbol(z) for z in (*self.species, *unknown)]} or remove those atoms")

    # -- the engine path -------------------------------------------------------------------
    def pair_list(self, atoms: Atoms) -> PairList:
        """Every neighbour (periodic images included) within :attr:`neighbour_cutoff`.

        Raises a :class:`~gpmlip.errors.StructureError` for atoms closer than 0.1 Å.
        """
        self.check_structure(atoms)
        return neighbour_list(atoms, self.neighbour_cutoff)

    def features(self, pairs: PairList) -> np.ndarray:
        """Descriptor of every centre of a pair list, shape (n_centres, n_features)."""
        return self.engine.features(pairs)

    def backward(self, pairs: PairList, grad: np.ndarray) -> np.ndarray:
        """``dE/dr_ij`` for every pair given ``grad = dE/dq`` per centre (see the engine)."""
        return self.engine.backward(pairs, grad)

    def describe(self, atoms: Atoms, gradients: bool = False) -> Environments:
        """Describe every atom of a structure.

        Parameters
        ----------
        atoms : ase.Atoms
            Molecule, slab or bulk: any ``pbc`` and any cell, however small.
        gradients : bool, default False
            Also compute the sparse Jacobian and the strain Jacobian (for training rows and
            force uncertainties; prediction back-propagates instead).

        Returns
        -------
        Environments
        """
        pairs = self.pair_list(atoms)
        if not gradients:
            return Environments(features=self.features(pairs), species=atoms.numbers.copy())
        features, jac = self.engine.jacobian(pairs)
        return environments_from_pairs(features, pairs, jac)

    # -- the dscribe reference path ----------------------------------------------------------
    def reference_features(self, atoms: Atoms) -> np.ndarray:
        """Features from dscribe's own ``create`` (the definition the engine is tested against)."""
        self.check_structure(atoms)
        pbc = np.asarray(atoms.pbc, dtype=bool)
        if not pbc.any():
            return _dscribe(self.settings, False).create(atoms)
        system = Atoms(numbers=atoms.numbers, positions=atoms.positions, pbc=pbc)
        system.set_cell(wrap(atoms.positions, atoms.cell.array, pbc)[0])
        return _dscribe(self.settings, True).create(system)

    def close(self) -> None:
        """Nothing to release (the engine uses threads); kept so that every descriptor can be
        closed the same way (:meth:`gpmlip.Stacked.close`)."""


def environments_from_pairs(features: np.ndarray, pairs: PairList,
                            jac: np.ndarray) -> Environments:
    """Per-pair Jacobians ``d q_i / d r_ij`` -> :class:`Environments` (images summed onto their
    atom, the centre's own derivative ``-sum_j d q_i / d r_ij`` added, strain derivatives
    ``d q_i / d eps_ab = sum_j (d q_i / d r_ij)_a (r_ij)_b``)."""
    from gpmlip.descriptors._soap_kernels import assemble_jacobian

    n = pairs.n_centres
    centre = np.asarray(pairs.centre, dtype=np.int64)
    key = centre * n + np.asarray(pairs.neighbour, dtype=np.int64)
    own = np.arange(n, dtype=np.int64) * (n + 1)
    keys = np.union1d(key, own)
    jacobian = np.zeros((len(keys), 3, features.shape[1]))
    strain = np.zeros((n, 3, 3, features.shape[1]))
    assemble_jacobian(centre, np.searchsorted(keys, key), np.searchsorted(keys, own),
                      np.ascontiguousarray(jac), np.ascontiguousarray(pairs.vector, dtype=float),
                      jacobian, strain)
    pair_centre, pair_atom = np.divmod(keys, n)
    return Environments(features=features, species=np.asarray(pairs.centre_species).copy(),
                        pair_centre=pair_centre, pair_atom=pair_atom, jacobian=jacobian,
                        strain_jacobian=strain)
