"""The SOAP engine: dscribe's power spectrum from a pair list, forces by back-propagation.

dscribe defines the descriptor (its GTO radial basis, its normalisation and feature order); this
module computes the same numbers itself, compiled with numba, from a *pair list* (centre ``i``,
displacement ``r_ij = r_j - r_i`` with periodic images as their own pairs, species of both), so
that any neighbour source plugs in: ours (:func:`gpmlip.descriptors.neighbours.neighbour_list`) or LAMMPS's.

Three operations, all linear in the number of pairs:

- :meth:`SOAPEngine.features`: ``q_i`` for every centre, equal to dscribe's ``SOAP.create``;
- :meth:`SOAPEngine.backward`: given ``g_i = dE/dq_i`` for every centre, ``dE/dr_ij`` for every
  pair, by back-propagation through the power spectrum and the expansion coefficients: the
  Jacobian is never formed, memory stays O(pairs);
- :meth:`SOAPEngine.jacobian`: ``dq_i/dr_ij`` per pair, for training rows.

The closed form (docs/theory.md §2-3): with ``b_lk = alpha_lk eta / (alpha_lk + eta)``,
``B_lnk = beta_lnk (pi / (alpha_lk + eta))^(3/2) (eta / (alpha_lk + eta))^l`` and real solid
harmonics ``S_lm``, ``c_nlm = sum_j w_j sum_k B_lnk exp(-b_lk r_j^2) S_lm(r_j)`` and
``p_nn'l = pi sqrt(8 / (2l + 1)) sum_m c_nlm c_n'lm``.  The weight ``w_j`` is 1, or dscribe's
``poly`` weighting ``c (1 + 2x^3 - 3x^2)^m`` (``x = r/r0``), which takes every neighbour's density
smoothly to zero at ``r0``: the energy is then smooth through the cutoff and only neighbours within
``r0`` are visited.  dscribe refuses derivatives with weighting; the engine includes ``w'``.
"""

from __future__ import annotations

import logging
import os
import threading
from functools import lru_cache
from math import factorial, pi, sqrt

import numpy as np

from gpmlip.descriptors.neighbours import PairList
from gpmlip.errors import SettingsError
from gpmlip.species import check_known

log = logging.getLogger(__name__)

_PID = os.getpid()
_PARALLEL = threading.Lock()

PARALLEL_MIN_PAIRS = 16384
"""Below this many pairs the one-thread kernels run: waking threads costs more than the work."""

THRESHOLD = 1e-3
"""dscribe's density threshold: the Gaussian reaches ``sigma sqrt(-2 ln THRESHOLD)`` past r_cut."""


@lru_cache(maxsize=32)
def _basis(r_cut: float, n_max: int, l_max: int, sigma: float):
    """dscribe's GTO basis (alphas, betas) turned into the engine's b (L, K) and B (L, N, K)."""
    from dscribe.descriptors import SOAP as DSOAP

    # dscribe computes its basis in its constructor; its own function is the definition.
    alphas, betas = DSOAP(species=[1], r_cut=r_cut, n_max=n_max, l_max=l_max,
                          sigma=sigma).get_basis_gto(r_cut, n_max, l_max)
    eta = 1.0 / (2.0 * sigma ** 2)
    b = np.empty((l_max + 1, n_max))
    B = np.empty((l_max + 1, n_max, n_max))
    for l in range(l_max + 1):
        a = alphas[l]
        b[l] = a * eta / (a + eta)
        B[l] = betas[l] * ((pi / (a + eta)) ** 1.5 * (eta / (a + eta)) ** l)[None, :]
    return b, B


@lru_cache(maxsize=32)
def _harmonic_norms(l_max: int) -> np.ndarray:
    """Normalisation of the orthonormal real spherical harmonics, index ``l*l + l + m``."""
    out = np.empty((l_max + 1) ** 2)
    for l in range(l_max + 1):
        for m in range(-l, l + 1):
            am = abs(m)
            val = sqrt((2 * l + 1) / (4 * pi) * factorial(l - am) / factorial(l + am))
            out[l * l + l + m] = val * (sqrt(2.0) if m else 1.0)
    return out


COMPRESSIONS = ("off", "crossover", "mu1nu1", "mu2")
"""dscribe's compression modes (Darby, Kermode and Csányi, npj Comput. Mater. 8, 166 (2022)):

- ``"off"``: every species pair (features grow with the square of the species count);
- ``"crossover"``: equal species only, ``p^{ZZ}_{nn'l}`` (linear in the species count);
- ``"mu1nu1"``: each species against the summed density, ``sum_m c^Z_{nlm} sum_z c^z_{n'lm}``
  (linear in the species count, every ``(n, n')``);
- ``"mu2"``: the summed density alone (independent of the species count).
"""


@lru_cache(maxsize=32)
def _feature_map(n_species: int, n_max: int, l_max: int, compression: str = "off"):
    """(s1, s2, n, n2, l) of every feature in dscribe's order for a compression mode, and the
    number of coefficient channels (the species, plus the mixed density at index ``n_species``
    for ``mu1nu1`` and ``mu2``).

    Species blocks first (pairs s1 <= s2 for "off"), then l, then n <= n2 within a channel or
    every (n, n2) across two channels.
    """
    mix = n_species
    if compression == "off":
        blocks = [(s1, s2) for s1 in range(n_species) for s2 in range(s1, n_species)]
    elif compression == "crossover":
        blocks = [(s, s) for s in range(n_species)]
    elif compression == "mu1nu1":
        blocks = [(s, mix) for s in range(n_species)]
    elif compression == "mu2":
        blocks = [(mix, mix)]
    else:
        raise SettingsError(f"compression={compression!r}: use one of {COMPRESSIONS}")
    rows = []
    for s1, s2 in blocks:
        for l in range(l_max + 1):
            for n in range(n_max):
                for n2 in range(n if s1 == s2 else 0, n_max):
                    rows.append((s1, s2, n, n2, l))
    arr = np.array(rows, dtype=np.int64).reshape(-1, 5)
    n_channels = n_species + (compression in ("mu1nu1", "mu2"))
    return tuple(np.ascontiguousarray(arr[:, k]) for k in range(5)) + (n_channels,)


def species_weights(species, weighting: dict | None) -> np.ndarray:
    """The weight of each of ``species`` (atomic numbers, sorted) from ``weighting`` (atomic
    number -> weight; None: all 1), checked: every species given, no other, all finite."""
    species = [int(z) for z in species]
    if weighting is None:
        return np.ones(len(species))
    from ase.data import chemical_symbols

    given = {int(z): float(w) for z, w in dict(weighting).items()}
    if set(given) != set(species):
        raise SettingsError(f"species_weighting gives {sorted(chemical_symbols[z] for z in given)}"
                            f"; give a weight for each of {[chemical_symbols[z] for z in species]}"
                            " and no other")
    if not all(np.isfinite(w) for w in given.values()):
        raise SettingsError(f"species_weighting={weighting}: use finite weights")
    return np.array([given[z] for z in species])


def poly_weight(r: np.ndarray, r0: float, c: float = 1.0, m: float = 2.0) -> np.ndarray:
    """dscribe's ``poly`` weighting ``c (1 + 2x^3 - 3x^2)^m`` for ``x = r/r0 <= 1``, else 0."""
    x = np.clip(np.asarray(r, dtype=float) / r0, 0.0, 1.0)
    return c * (1.0 + 2.0 * x ** 3 - 3.0 * x ** 2) ** m


class SOAPEngine:
    """dscribe's SOAP power spectrum (GTO basis) and its derivatives from a pair list.

    Parameters
    ----------
    species : sequence of int
        Atomic numbers, any order (features follow dscribe: sorted by atomic number).
    r_cut, n_max, l_max, sigma :
        As in dscribe; ``r_cut`` places the radial basis.
    weighting : dict, optional
        dscribe's weighting dictionary; only ``{"function": "poly", "r0", "c", "m"}`` (and an
        optional ``"w0"`` for the centre's own density) is supported.  Without it neighbours are
        visited to ``r_cut + sigma sqrt(-2 ln 0.001)``, as dscribe does.
    compression : str
        dscribe's compression mode (:data:`COMPRESSIONS`); "off" by default.
    species_weighting : dict, optional
        Atomic number -> weight of that species' density (dscribe's ``species_weighting``);
        every species must be given.  None: all 1.
    """

    def __init__(self, species, r_cut: float, n_max: int, l_max: int, sigma: float,
                 weighting: dict | None = None, compression: str = "off",
                 species_weighting: dict | None = None) -> None:
        self.species = tuple(sorted(int(z) for z in species))
        self.r_cut, self.n_max, self.l_max, self.sigma = float(r_cut), int(n_max), int(l_max), \
            float(sigma)
        self.padding = self.sigma * sqrt(-2.0 * np.log(THRESHOLD))
        self._b, self._B = _basis(self.r_cut, self.n_max, self.l_max, self.sigma)
        self._norm = _harmonic_norms(self.l_max)
        self._pref = np.array([pi * sqrt(8.0 / (2 * l + 1)) for l in range(self.l_max + 1)])
        self.compression = str(compression)
        *fmap, self._n_channels = _feature_map(len(self.species), self.n_max, self.l_max,
                                               self.compression)
        self._fmap = tuple(fmap)
        self._species_weights = species_weights(self.species, species_weighting)
        self.weighting = dict(weighting) if weighting else None
        self.cutoff = self.r_cut + self.padding
        self._wtype, self._r0, self._wc, self._wm, self._w0 = 0, 1.0, 1.0, 1.0, 1.0
        if self.weighting:
            if self.weighting.get("function") != "poly":
                raise SettingsError(f"weighting {self.weighting!r}: the engine supports only "
                                    "{'function': 'poly', 'r0': ..., 'c': ..., 'm': ...}")
            r0 = float(self.weighting["r0"])
            wc = float(self.weighting.get("c", 1.0))
            wm = float(self.weighting.get("m", 1.0))
            if not (r0 > 0 and wc > 0 and wm >= 1):
                raise SettingsError(f"poly weighting r0={r0}, c={wc}, m={wm}: use r0 > 0, c > 0 "
                                    "and m >= 1 (m < 1 has no derivative at r0)")
            self._wtype, self._r0, self._wc, self._wm = 1, r0, wc, wm
            self._w0 = float(self.weighting.get("w0", wc))
            self.cutoff = min(r0, self.cutoff)
        self._index = {z: k for k, z in enumerate(self.species)}
        self._lut = np.full(max(self.species) + 1, -1, dtype=np.int64)
        for z, k in self._index.items():
            self._lut[z] = k

    @property
    def n_features(self) -> int:
        """Length of one descriptor vector."""
        return len(self._fmap[0])

    # -- input ---------------------------------------------------------------------------
    def _channels(self, numbers: np.ndarray, what: str) -> np.ndarray:
        numbers = np.asarray(numbers, dtype=np.int64)
        ok = (numbers >= 0) & (numbers < len(self._lut))
        idx = np.full(len(numbers), -1, dtype=np.int64)
        idx[ok] = self._lut[numbers[ok]]
        if (idx < 0).any():
            check_known(numbers, self.species, what=f"the pair list's {what}",
                        owner="the descriptor",
                        remedy="build it with those species")
        return idx

    def _prepare(self, pairs: PairList):
        centre = np.asarray(pairs.centre, dtype=np.int64)
        n = pairs.n_centres
        if len(centre) and (centre.min() < 0 or centre.max() >= n):
            raise ValueError("pair centre indices must lie in [0, n_centres)")
        order = None
        if len(centre) > 1 and (np.diff(centre) < 0).any():
            order = np.argsort(centre, kind="stable")
            centre = centre[order]
        vec = np.ascontiguousarray(pairs.vector if order is None else pairs.vector[order],
                                   dtype=float)
        nbr = self._channels(pairs.neighbour_species if order is None
                             else np.asarray(pairs.neighbour_species)[order], "neighbours")
        cen = self._channels(pairs.centre_species, "centres")
        start = np.searchsorted(centre, np.arange(n + 1)).astype(np.int64)
        return order, (start, vec, nbr, cen)

    def _params(self) -> tuple:
        return (int(self.l_max), int(self.n_max), int(len(self.species)), self._b, self._B,
                self._norm, self._pref, *self._fmap, float(self.cutoff ** 2), int(self._wtype),
                float(self._r0), float(self._wc), float(self._wm), float(self._w0),
                self._species_weights, int(self._n_channels))

    @staticmethod
    def _run(name: str, *args) -> None:
        """Call the threaded kernel, or the one-thread kernel for small pair lists, in a forked
        child (OpenMP is not fork-safe: see :mod:`gpmlip.parallel`) or while another Python thread
        runs a threaded one."""
        from gpmlip.descriptors import _soap_kernels as kern

        big = len(args[1]) >= PARALLEL_MIN_PAIRS
        if big and os.getpid() == _PID and _PARALLEL.acquire(blocking=False):
            try:
                getattr(kern, name)(*args)
            finally:
                _PARALLEL.release()
        else:
            getattr(kern, name + "_serial")(*args)

    # -- operations ----------------------------------------------------------------------
    def features(self, pairs: PairList) -> np.ndarray:
        """Power spectrum of every centre, shape (n_centres, n_features)."""
        _, arrays = self._prepare(pairs)
        out = np.empty((pairs.n_centres, self.n_features))
        self._run("power_spectrum", *arrays, self._params(), out)
        return out

    def backward(self, pairs: PairList, grad: np.ndarray) -> np.ndarray:
        """``dE/dr_ij`` for every pair, shape (n_pairs, 3), given ``grad = dE/dq`` per centre.

        Forces: ``F_j -= dE/dr_ij``, ``F_i += dE/dr_ij``; virial ``W = -sum r_ij (x) dE/dr_ij``.
        """
        grad = np.ascontiguousarray(grad, dtype=float)
        if grad.shape != (pairs.n_centres, self.n_features):
            raise ValueError(f"grad has shape {grad.shape}; expected "
                             f"({pairs.n_centres}, {self.n_features})")
        order, arrays = self._prepare(pairs)
        out = np.empty((pairs.n_pairs, 3))
        self._run("backward", *arrays, self._params(), grad, out)
        if order is not None:
            unsorted = np.empty_like(out)
            unsorted[order] = out
            out = unsorted
        return out

    def jacobian(self, pairs: PairList) -> tuple[np.ndarray, np.ndarray]:
        """Features (n_centres, F) and ``d q_i / d r_ij`` per pair, shape (n_pairs, 3, F)."""
        order, arrays = self._prepare(pairs)
        feats = np.empty((pairs.n_centres, self.n_features))
        out = np.empty((pairs.n_pairs, 3, self.n_features))
        self._run("pair_jacobian", *arrays, self._params(), feats, out)
        if order is not None:
            unsorted = np.empty_like(out)
            unsorted[order] = out
            out = unsorted
        return feats, out
