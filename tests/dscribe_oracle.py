"""The dscribe oracle of the descriptor's Jacobians: dscribe's analytical derivatives of local
clusters (a test helper; gpmlip computes Jacobians with its engine).

dscribe (2.1) has analytical SOAP derivatives only for non-periodic systems, and its periodic
numerical derivatives are dense in N².  Exact periodic derivatives come from *local clusters*: for
every centre i a non-periodic cluster holds i and every periodic image within the neighbour cutoff
(``r_cut`` plus the reach of dscribe's Gaussian density); dscribe gives the analytical derivatives
of i's descriptor with the centre attached to atom i (``attach=True``: without it the centre's
self-derivative is wrong), and the rows of images of the same atom are summed onto the real atom.
The same cluster gives the strain derivative from the relative vectors.  About 5 ms per centre.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from ase import Atoms

from gpmlip.descriptors import SOAP, Environments
from gpmlip.descriptors.neighbours import neighbour_list
from gpmlip.errors import SettingsError


@lru_cache(maxsize=16)
def _dscribe(settings):
    from dscribe.descriptors import SOAP as DSOAP

    return DSOAP(species=list(settings.species), r_cut=settings.r_cut, n_max=settings.n_max,
                 l_max=settings.l_max, sigma=settings.sigma, rbf=settings.rbf, periodic=False,
                 weighting=settings.weighting_dict, compression=settings.compression_dict)


def _describe_clusters(
    settings,
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
    otherwise allocates.
    """
    soap = _dscribe(settings)
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


def reference_environments(soap: SOAP, atoms: Atoms) -> Environments:
    """Features and Jacobians of every atom from dscribe's analytical derivatives of local
    clusters.  dscribe has no derivatives with a weighting or with the mu1nu1/mu2 compressions,
    so this needs ``weighting=None`` and compression "off" or "crossover"."""
    settings = soap.settings
    if settings.weighting is not None:
        raise SettingsError("dscribe computes no derivatives with a weighting; the "
                            "reference Jacobian needs SOAP(..., weighting=None)")
    if settings.compression not in ("off", "crossover"):
        raise SettingsError(f"dscribe computes no derivatives with compression "
                            f"{settings.compression!r}; the reference Jacobian needs "
                            "'off' or 'crossover' (the engine's are checked against finite "
                            "differences)")
    soap.check_structure(atoms)
    n_atoms = len(atoms)
    pairs = neighbour_list(atoms, soap.neighbour_cutoff)
    sizes = np.diff(pairs.start) + 1
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    is_centre = np.zeros(offsets[-1], dtype=bool)
    is_centre[offsets[:-1]] = True
    positions = np.zeros((offsets[-1], 3))
    positions[~is_centre] = pairs.vector
    atom_index = np.empty(offsets[-1], dtype=np.int64)
    atom_index[offsets[:-1]] = np.arange(n_atoms)
    atom_index[~is_centre] = pairs.neighbour
    keys = np.unique(np.repeat(np.arange(n_atoms), sizes) * n_atoms + atom_index)
    pair_centre, pair_atom = np.divmod(keys, n_atoms)
    pair_start = np.searchsorted(pair_centre, np.arange(n_atoms + 1))
    features, strain, jacobian = _describe_clusters(settings, atoms.numbers[atom_index],
                                                    positions, atom_index, offsets, pair_start)
    return Environments(features=features, species=atoms.numbers.copy(),
                        pair_centre=pair_centre, pair_atom=pair_atom, jacobian=jacobian,
                        strain_jacobian=strain)
