"""SOAP descriptors from dscribe, with exact analytical Jacobians for periodic systems.

dscribe (2.1) only offers analytical SOAP derivatives for non-periodic systems, and its periodic
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
import multiprocessing
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from gpmlip.descriptors.environments import Environments
from gpmlip.descriptors.neighbours import find_neighbours, min_distance, wrap
from gpmlip.descriptors.shared import SharedSpec, allocate, release, shared_memory_available
from gpmlip.errors import SettingsError, StructureError, UnknownSpeciesError
from gpmlip.species import atomic_number_set

log = logging.getLogger(__name__)

MIN_DISTANCE = 0.1
"""Atoms closer than this (Å) are rejected as overlapping."""


@dataclass(frozen=True)
class SOAPSettings:
    """The settings that define a SOAP descriptor (what a model file stores)."""

    species: tuple[int, ...]
    r_cut: float
    n_max: int
    l_max: int
    sigma: float = 0.5
    rbf: str = "gto"

    def to_dict(self) -> dict:
        """JSON-ready dictionary."""
        return {**asdict(self), "species": list(self.species)}


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
    if settings.rbf not in ("gto", "polynomial"):
        raise SettingsError(f"rbf={settings.rbf!r}: use 'gto' or 'polynomial'")


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
    """Smooth Overlap of Atomic Positions power spectrum with exact, linear-scaling Jacobians.

    Parameters
    ----------
    species : sequence of str or int
        Every chemical species the structures may contain.
    r_cut : float
        Cutoff radius in Å (> 1).
    n_max : int
        Number of radial basis functions (1-20).
    l_max : int
        Maximum spherical-harmonic degree (0-20).
    sigma : float, default 0.5
        Width of the Gaussian atomic density in Å.  Smaller is more resolving but reaches less far
        past the cutoff (dscribe pads the cutoff by ``sigma * sqrt(-2 ln 0.001)``), so it is also a
        speed knob: the Jacobian's cost follows the number of neighbours within ``r_cut + padding``.
    rbf : {"gto", "polynomial"}, default "gto"
        Radial basis.
    n_jobs : int, default 1
        Worker processes for Jacobians of large structures.  Ignored when ``executor`` is given to
        :meth:`describe`.

    Notes
    -----
    Features equal dscribe's periodic ``SOAP.create`` (same settings, ``periodic=True``) for any
    ``pbc``.  Jacobians come from the local-cluster construction described in the module docstring;
    they are exact (tests compare them with central finite differences).

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
        rbf: str = "gto",
        n_jobs: int = 1,
    ) -> None:
        self.settings = SOAPSettings(
            species=_species_numbers(species),
            r_cut=float(r_cut),
            n_max=n_max,
            l_max=l_max,
            sigma=float(sigma),
            rbf=rbf,
        )
        _validate_settings(self.settings)
        if int(n_jobs) < 1:
            raise SettingsError(f"n_jobs={n_jobs}: use 1 or more worker processes")
        self.n_jobs = int(n_jobs)
        self._pool: ProcessPoolExecutor | None = None

    # -- settings --------------------------------------------------------------------------
    @property
    def species(self) -> tuple[int, ...]:
        """Atomic numbers the descriptor knows, sorted."""
        return self.settings.species

    @property
    def n_features(self) -> int:
        """Length of one atom's descriptor vector."""
        return int(_dscribe(self.settings, False).get_number_of_features())

    @property
    def cutoff_padding(self) -> float:
        """How far past ``r_cut`` dscribe's Gaussian densities reach, in Å."""
        return float(_dscribe(self.settings, False).get_cutoff_padding())

    @property
    def neighbour_cutoff(self) -> float:
        """Radius of the local clusters: ``r_cut + cutoff_padding``."""
        return self.settings.r_cut + self.cutoff_padding

    def to_dict(self) -> dict:
        """JSON-ready settings, the inverse of :meth:`from_dict`."""
        return {"type": "SOAP", **self.settings.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> SOAP:
        """Rebuild from :meth:`to_dict` output."""
        data = dict(data)
        if data.pop("type", "SOAP") != "SOAP":
            raise SettingsError("descriptor settings are not for SOAP")
        return cls(**data)

    def __repr__(self) -> str:
        s = self.settings
        sym = [chemical_symbols[z] for z in s.species]
        return f"SOAP(species={sym}, r_cut={s.r_cut}, n_max={s.n_max}, l_max={s.l_max}, sigma={s.sigma})"

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
        d = min_distance(pos, atoms.cell.array, atoms.pbc, MIN_DISTANCE)
        if d < MIN_DISTANCE:
            raise StructureError(
                f"atoms overlap: two atoms (or periodic images) are {d:.3g} Å apart, closer than "
                f"{MIN_DISTANCE} Å; check the positions and the cell"
            )

    # -- computation -----------------------------------------------------------------------
    def describe(
        self, atoms: Atoms, gradients: bool = False, *, executor: Executor | None = None
    ) -> Environments:
        """Describe every atom of a structure.

        Parameters
        ----------
        atoms : ase.Atoms
            Molecule, slab or bulk: any ``pbc`` and any cell, however small.
        gradients : bool, default False
            Also compute the sparse Jacobian and the strain Jacobian.
        executor : concurrent.futures.Executor, optional
            Where to compute the Jacobian blocks; default: this descriptor's own process pool when
            ``n_jobs > 1``, else in this process.

        Returns
        -------
        Environments
        """
        self.check_structure(atoms)
        if not gradients:
            return Environments(features=self._create(atoms), species=atoms.numbers.copy())
        return self._describe_with_gradients(atoms, executor)

    def _create(self, atoms: Atoms) -> np.ndarray:
        pbc = np.asarray(atoms.pbc, dtype=bool)
        if not pbc.any():
            return _dscribe(self.settings, False).create(atoms)
        system = Atoms(numbers=atoms.numbers, positions=atoms.positions, pbc=pbc)
        system.set_cell(wrap(atoms.positions, atoms.cell.array, pbc)[0])
        return _dscribe(self.settings, True).create(system)

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
            ctx = multiprocessing.get_context("fork")
            self._pool = ProcessPoolExecutor(max_workers=self.n_jobs, mp_context=ctx)
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
