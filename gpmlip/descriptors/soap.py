"""SOAP descriptors as dscribe defines them, computed by the compiled engine, with dscribe kept as
the reference path.

:class:`SOAP` computes features, forces (by back-propagation) and Jacobians with
:class:`gpmlip.descriptors.engine.SOAPEngine` from a pair list.  The reference path below is what
the engine is tested against.  dscribe (2.1) only offers analytical SOAP derivatives for non-periodic systems, and its periodic
numerical derivatives are dense in N².  :class:`SOAP` gets exact periodic derivatives in linear time
by the *local-cluster* construction: for every centre i it builds a non-periodic cluster holding i
and every periodic image within ``r_cut + padding`` (the reach of dscribe's Gaussian density), asks
dscribe for the analytical derivatives of i's descriptor with the centre attached to atom i
(``attach=True``: without it the centre's self-derivative is wrong), then sums the rows of images of
the same atom onto the real atom.  The same cluster gives the strain derivative (virial) from the
relative vectors.  This module is the only one in gpmlip that imports dscribe.
"""

from __future__ import annotations

import logging
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from gpmlip.descriptors.engine import COMPRESSIONS, PairList, SOAPEngine, species_weights
from gpmlip.descriptors.environments import Environments
from gpmlip.descriptors.neighbours import (check_separation, find_neighbours,
                                          has_coincident_atoms, wrap)
from gpmlip.descriptors.shared import SharedSpec, allocate, release, shared_memory_available
from gpmlip.errors import SettingsError, StructureError, UnknownSpeciesError
from gpmlip.parallel import mp_context
from gpmlip.species import atomic_number_set, by_atomic_number

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


def _describe_clusters(
    settings: SOAPSettings,
    numbers: np.ndarray,
    positions: np.ndarray,
    atom_index: np.ndarray,
    offsets: np.ndarray,
    pair_offsets: np.ndarray,
    out: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, strain Jacobians and image-summed Jacobians of a block of local clusters.

    Cluster c occupies rows ``offsets[c]:offsets[c + 1]`` of the concatenated input arrays; its
    first row is the centre, placed at the origin; ``atom_index`` maps every row to the real atom.
    Its Jacobian goes to rows ``pair_offsets[c]:pair_offsets[c + 1]`` of the output, one row per
    distinct real atom in increasing index order.  Writes into ``out`` when given (serial use);
    otherwise allocates (worker processes, which only take and return arrays).
    """
    soap = _dscribe(settings, False)
    n_centres = len(offsets) - 1
    n_feat = soap.get_number_of_features()
    if out is None:
        out = (
            np.empty((n_centres, n_feat)),
            np.empty((n_centres, 3, 3, n_feat)),
            np.empty((pair_offsets[-1], 3, n_feat)),
        )
    features, strain, jacobian = out
    for c in range(n_centres):
        s, e = offsets[c], offsets[c + 1]
        cluster = Atoms(numbers=numbers[s:e], positions=positions[s:e])
        d, f = soap.derivatives(cluster, centers=[0], attach=True, method="analytical")
        d = d[0]  # (n_cluster, 3, n_feat)
        features[c] = f[0]
        # d q / d eps_ab = sum_k (dq/dr_ka) (r_k - r_centre)_b ; the centre sits at the origin.
        strain[c] = np.tensordot(positions[s:e], d, axes=(0, 0)).transpose(1, 0, 2)
        idx = atom_index[s:e]
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        target = jacobian[pair_offsets[c]:pair_offsets[c + 1]]
        if len(target) == len(idx):  # no periodic image of any atom: a permutation suffices
            np.take(d, order, axis=0, out=target)
        else:
            first = np.flatnonzero(np.r_[True, sorted_idx[1:] != sorted_idx[:-1]])
            np.add.reduceat(d[order], first, axis=0, out=target)
    return out


def _describe_clusters_shared(spec: SharedSpec, rows: tuple[int, int, int, int], *args) -> None:
    """Worker entry point: compute a block and write it straight into shared memory."""
    a, b, pa, pb = rows
    out = (spec.view("features", a, b), spec.view("strain", a, b), spec.view("jacobian", pa, pb))
    _describe_clusters(*args, out=out)


BLOCK_SIZE = 32
"""Centres per block of Jacobian work: bounds the transient memory to one block."""


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
        self._pool: ProcessPoolExecutor | None = None
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
        if unknown:
            known = [chemical_symbols[z] for z in self.species]
            missing = [chemical_symbols[z] for z in unknown]
            raise UnknownSpeciesError(
                f"species {missing} are not in this descriptor (it knows {known}); build the "
                f"descriptor with species={known + missing} or remove those atoms"
            )

    # -- the engine path -------------------------------------------------------------------
    def pair_list(self, atoms: Atoms) -> PairList:
        """Every neighbour (periodic images included) within :attr:`neighbour_cutoff`.

        Raises a :class:`~gpmlip.errors.StructureError` for atoms closer than 0.1 Å.
        """
        self.check_structure(atoms)
        pairs = find_neighbours(atoms.positions, atoms.cell.array, atoms.pbc,
                                self.neighbour_cutoff)
        if has_coincident_atoms(atoms.positions, atoms.cell.array, atoms.pbc):
            raise StructureError("atoms overlap: two atoms sit on the same position; check the "
                                 "positions")
        check_separation(pairs.centre, pairs.neighbour, pairs.vector)
        numbers = np.asarray(atoms.numbers, dtype=np.int64)
        return PairList(centre_species=numbers, centre=pairs.centre, vector=pairs.vector,
                        neighbour_species=numbers[pairs.neighbour], neighbour=pairs.neighbour)

    def features(self, pairs: PairList) -> np.ndarray:
        """Descriptor of every centre of a pair list, shape (n_centres, n_features)."""
        return self.engine.features(pairs)

    def backward(self, pairs: PairList, grad: np.ndarray) -> np.ndarray:
        """``dE/dr_ij`` for every pair given ``grad = dE/dq`` per centre (see the engine)."""
        return self.engine.backward(pairs, grad)

    def describe(
        self, atoms: Atoms, gradients: bool = False, *, executor: Executor | None = None
    ) -> Environments:
        """Describe every atom of a structure.

        Parameters
        ----------
        atoms : ase.Atoms
            Molecule, slab or bulk: any ``pbc`` and any cell, however small.
        gradients : bool, default False
            Also compute the sparse Jacobian and the strain Jacobian (for training rows and
            force uncertainties; prediction back-propagates instead).
        executor : ignored
            Kept for the reference path's signature; the engine uses threads.

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

    def reference_environments(self, atoms: Atoms, *,
                               executor: Executor | None = None) -> Environments:
        """Features and Jacobians from dscribe's analytical derivatives of local clusters.

        The pre-engine path (~5 ms per centre): for tests.  dscribe has no derivatives with a
        weighting, so this needs ``weighting=None``.
        """
        if self.settings.weighting is not None:
            raise SettingsError("dscribe computes no derivatives with a weighting; the "
                                "reference Jacobian needs SOAP(..., weighting=None)")
        if self.settings.compression not in ("off", "crossover"):
            raise SettingsError(f"dscribe computes no derivatives with compression "
                                f"{self.settings.compression!r}; the reference Jacobian needs "
                                "'off' or 'crossover' (the engine's are checked against finite "
                                "differences)")
        self.check_structure(atoms)
        return self._describe_with_gradients(atoms, executor)

    def _describe_with_gradients(self, atoms: Atoms, executor: Executor | None) -> Environments:
        n_atoms = len(atoms)
        pairs = find_neighbours(atoms.positions, atoms.cell.array, atoms.pbc, self.neighbour_cutoff)
        sizes = np.diff(pairs.start) + 1
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        is_centre = np.zeros(offsets[-1], dtype=bool)
        is_centre[offsets[:-1]] = True
        positions = np.zeros((offsets[-1], 3))
        positions[~is_centre] = pairs.vector
        atom_index = np.empty(offsets[-1], dtype=np.int64)
        atom_index[offsets[:-1]] = np.arange(n_atoms)
        atom_index[~is_centre] = pairs.neighbour
        numbers = atoms.numbers[atom_index]
        # The sparse pattern (unique real atoms per centre, sorted), known before any work is done,
        # so the output is allocated once and filled block by block.
        keys = np.unique(np.repeat(np.arange(n_atoms), sizes) * n_atoms + atom_index)
        pair_centre, pair_atom = np.divmod(keys, n_atoms)
        pair_start = np.searchsorted(pair_centre, np.arange(n_atoms + 1))

        n_feat = self.n_features
        shapes = {"features": (n_atoms, n_feat), "strain": (n_atoms, 3, 3, n_feat),
                  "jacobian": (len(keys), 3, n_feat)}
        blocks = [(a, min(a + BLOCK_SIZE, n_atoms)) for a in range(0, n_atoms, BLOCK_SIZE)]
        args = [
            (self.settings, numbers[offsets[a]:offsets[b]], positions[offsets[a]:offsets[b]],
             atom_index[offsets[a]:offsets[b]], offsets[a:b + 1] - offsets[a],
             pair_start[a:b + 1] - pair_start[a])
            for a, b in blocks
        ]
        own_pool = executor is None
        pool = executor if executor is not None else self._executor(len(blocks))
        n_bytes = 8 * sum(int(np.prod(s)) for s in shapes.values())
        if pool is not None and own_pool and shared_memory_available(n_bytes):
            # Our own workers share this machine's memory: they write the blocks in place.
            spec, arrays = allocate(shapes)
            try:
                rows = [(a, b, pair_start[a], pair_start[b]) for a, b in blocks]
                list(pool.map(_describe_clusters_shared, [spec] * len(blocks), rows,
                              *zip(*args)))
            finally:
                release(spec)
        else:
            arrays = {name: np.empty(shape) for name, shape in shapes.items()}
            outs = [(arrays["features"][a:b], arrays["strain"][a:b],
                     arrays["jacobian"][pair_start[a]:pair_start[b]]) for a, b in blocks]
            if pool is None:
                for arg, out in zip(args, outs):
                    _describe_clusters(*arg, out=out)
            else:  # a foreign executor (maybe remote): results travel back by value
                for out, result in zip(outs, pool.map(_describe_clusters, *zip(*args))):
                    for target, value in zip(out, result):
                        target[...] = value
        return Environments(
            features=arrays["features"],
            species=atoms.numbers.copy(),
            pair_centre=pair_centre,
            pair_atom=pair_atom,
            jacobian=arrays["jacobian"],
            strain_jacobian=arrays["strain"],
        )

    def _executor(self, n_blocks: int) -> Executor | None:
        if self.n_jobs == 1 or n_blocks < 2:
            return None
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.n_jobs,
                                             mp_context=mp_context("compute"))
        return self._pool

    def close(self) -> None:
        """Shut down the worker processes (if any were started)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_pool"] = None
        return state

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


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
