"""A two-body term added to the SOAP kernel (GAP's ``soap + distance_2b``).

The energy gets a sum over pairs of a GP on the pair distance,

    E_2b = sum_{i<j} f_{z_i z_j}(r_ij),   f ~ GP(0, delta^2 k(r, r')),
    k(r, r') = fc(r) fc(r') exp(-(r - r')^2 / (2 theta^2)),

one function per unordered species pair, with a smooth cosine cutoff ``fc`` (1 below
``r_cut - transition_width``, 0 at ``r_cut``, C^1), its own signal variance ``delta^2`` and a
uniform grid of sparse distances per species pair (GAP's ``sparse_method=uniform``).  The model
stays linear in the weights of all sparse basis functions: the two-body sparse points are extra
columns of every kernel row and an extra block of a block-diagonal ``K_mm``.

The term lives on the pair list that the descriptor already builds (ordered pairs: each
unordered pair appears once from each end), so each centre carries half of each of its pairs,
``eps_i^2b = 1/2 sum_{j in N(i)} f(r_ij)``: the per-atom energies still sum to the total and the
LAMMPS pair style needs nothing new.  Its cutoff may not exceed the descriptor's
``neighbour_cutoff``.

In the model's signal-variance dictionaries the term's ``delta^2`` is stored under the key
:data:`KEY` (0, no element), so the solver and the likelihood treat it as one more column group.

References: A. P. Bartók and G. Csányi, Int. J. Quantum Chem. 115, 1051 (2015), section 4
(sums of descriptors and kernels in GAP); V. L. Deringer and G. Csányi, Phys. Rev. B 95, 094203
(2017) (2b + SOAP).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

import numpy as np

from gpmlip.gp.covariance import VOIGT
from gpmlip.descriptors.neighbours import PairList
from gpmlip.errors import SettingsError

KEY = 0
"""Key of the two-body signal variance in ``signal_variance`` dicts and column keys."""

BLOCK = 8192
"""Pairs whose kernel values are formed at once."""


def pair_key(z1: np.ndarray, z2: np.ndarray) -> np.ndarray:
    """One integer per unordered species pair: ``1000 min(z) + max(z)``."""
    z1, z2 = np.asarray(z1, dtype=np.int64), np.asarray(z2, dtype=np.int64)
    return 1000 * np.minimum(z1, z2) + np.maximum(z1, z2)


@dataclass(frozen=True)
class TwoBody:
    """Settings of the two-body term of a :class:`~gpmlip.SparseGP`.

    Parameters
    ----------
    r_cut : float, optional
        Cutoff in Å (default: the descriptor's neighbour cutoff; may not exceed it).
    sigma : float, default 0.5
        Signal std ``delta`` of a pair energy, eV (a hyper-parameter:
        :meth:`~gpmlip.SparseGP.optimise_hyperparameters` fits it as "signal 2b").
    length_scale : float, default 1.0
        ``theta`` of the squared-exponential kernel in r, Å (GAP's ``theta_uniform``).
    n_sparse : int, default 20
        Sparse distances per species pair, a uniform grid on ``[r_min, r_cut)``.
    r_min : float, default 0.5
        Shortest sparse distance, Å.
    transition_width : float, default 1.0
        Width of the cosine cutoff below ``r_cut``, Å (GAP's ``cutoff_transition_width``).
    """

    r_cut: float | None = None
    sigma: float = 0.5
    length_scale: float = 1.0
    n_sparse: int = 20
    r_min: float = 0.5
    transition_width: float = 1.0

    def validated(self, neighbour_cutoff: float) -> TwoBody:
        """These settings with ``r_cut`` filled in, checked against the descriptor's cutoff."""
        r_cut = float(neighbour_cutoff if self.r_cut is None else self.r_cut)
        for name in ("sigma", "length_scale", "transition_width", "r_min"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise SettingsError(f"TwoBody({name}={value}): use a positive number")
        if int(self.n_sparse) != self.n_sparse or self.n_sparse < 1:
            raise SettingsError(f"TwoBody(n_sparse={self.n_sparse}): use a positive integer "
                                "(sparse distances per species pair; 15-30 is usual)")
        if not r_cut > self.r_min:
            raise SettingsError(f"TwoBody(r_cut={r_cut}) must exceed r_min={self.r_min}")
        if r_cut > neighbour_cutoff + 1e-12:
            raise SettingsError(f"TwoBody(r_cut={r_cut}) exceeds the descriptor's neighbour "
                                f"cutoff ({neighbour_cutoff:.4g} Å), whose pair list the term "
                                "uses: lower it, or raise the SOAP cutoff")
        if self.transition_width > r_cut:
            raise SettingsError(f"TwoBody(transition_width={self.transition_width}) exceeds "
                                f"r_cut={r_cut}: use a width below the cutoff")
        return TwoBody(r_cut, float(self.sigma), float(self.length_scale), int(self.n_sparse),
                       float(self.r_min), float(self.transition_width))

    def to_dict(self) -> dict:
        """JSON-ready settings."""
        return asdict(self)

    def fitted(self, neighbour_cutoff: float, species, jitter: float) -> TwoBodySparse:
        """The term a fit starts from (validated settings, the sparse grid of every species pair
        of ``species``): the :class:`~gpmlip.gp.terms.Term` of these settings."""
        return TwoBodySparse.build(self.validated(neighbour_cutoff), species, jitter)

    @classmethod
    def from_dict(cls, data: dict) -> TwoBody:
        """Inverse of :meth:`to_dict`."""
        return cls(**data)

    # -- the kernel -------------------------------------------------------------------------
    def cutoff(self, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``fc(r)`` and ``fc'(r)``."""
        start = self.r_cut - self.transition_width
        x = np.clip((r - start) / self.transition_width, 0.0, 1.0)
        fc = 0.5 * (1.0 + np.cos(np.pi * x))
        dfc = np.where((x > 0) & (x < 1), -0.5 * np.pi * np.sin(np.pi * x)
                       / self.transition_width, 0.0)
        return fc, dfc

    def kernel(self, r: np.ndarray, key: np.ndarray, sr: np.ndarray, skey: np.ndarray,
               gradient: bool = False):
        """Unit-variance ``k(r_p, s_m)`` (P, m), 0 across species pairs, and ``dk/dr_p``."""
        fc, dfc = self.cutoff(r)
        fs, _ = self.cutoff(sr)
        diff = r[:, None] - sr[None, :]
        e = np.exp(-0.5 * (diff / self.length_scale) ** 2) * (key[:, None] == skey[None, :])
        k = fc[:, None] * fs[None, :] * e
        if not gradient:
            return k
        dk = (dfc[:, None] * fs[None, :] * e
              - fc[:, None] * fs[None, :] * e * diff / self.length_scale ** 2)
        return k, dk

    def second_derivative(self, r: np.ndarray, key: np.ndarray, r2: np.ndarray | None = None,
                          key2: np.ndarray | None = None) -> np.ndarray:
        """``d^2 k(r_p, r_q) / dr_p dr_q`` between the pairs given (P, P), or between them and
        ``r2``/``key2`` (P, Q); unit variance."""
        r2, key2 = (r, key) if r2 is None else (r2, key2)
        fc, dfc = self.cutoff(r)
        fc2, dfc2 = self.cutoff(r2)
        t2 = self.length_scale ** 2
        d = r[:, None] - r2[None, :]
        e = np.exp(-0.5 * d ** 2 / t2) * (key[:, None] == key2[None, :])
        return e * (dfc[:, None] * dfc2[None, :] + (dfc[:, None] * fc2[None, :]
                                                    - fc[:, None] * dfc2[None, :]) * d / t2
                    + fc[:, None] * fc2[None, :] * (1.0 / t2 - d ** 2 / t2 ** 2))

    def sparse_set(self, species) -> tuple[np.ndarray, np.ndarray]:
        """The uniform grid of sparse distances (m2,) and their pair keys (m2,)."""
        zs = sorted(int(z) for z in species)
        keys = [1000 * a + b for i, a in enumerate(zs) for b in zs[i:]]
        grid = self.r_min + (self.r_cut - self.r_min) * np.arange(self.n_sparse) / self.n_sparse
        return np.tile(grid, len(keys)), np.repeat(np.array(keys, dtype=np.int64), len(grid))

    def kmm(self, sr: np.ndarray, skey: np.ndarray, jitter: float) -> np.ndarray:
        """Unit-variance ``K_mm`` of the sparse distances, with ``jitter`` on the diagonal."""
        return self.kernel(sr, skey, sr, skey) + jitter * np.eye(len(sr))


@dataclass
class PairTerms:
    """The two-body term on one pair list (see :func:`evaluate`)."""

    energies: np.ndarray
    dE_dr: np.ndarray | None
    rows: np.ndarray | None
    prior: np.ndarray | None


def pair_geometry(term: TwoBody, pairs: PairList):
    """Indices, distances and species-pair keys of the pairs inside the term's cutoff."""
    r = np.linalg.norm(pairs.vector, axis=1)
    inside = r < term.r_cut
    idx = np.flatnonzero(inside)
    key = pair_key(pairs.centre_species[pairs.centre[idx]], pairs.neighbour_species[idx])
    return idx, r[idx], key


def evaluate(term: TwoBody, pairs: PairList, sr: np.ndarray, skey: np.ndarray,
             beta: np.ndarray, *, gradient: bool, rows: bool) -> PairTerms:
    """Local two-body energies, ``dE/dr_ij`` and (for variances) kernel rows and priors.

    Parameters
    ----------
    beta : ndarray, shape (m2,)
        Weights of the unit-variance sparse distances.
    gradient : bool
        Compute ``dE_dr`` (n_pairs, 3).
    rows : bool
        Compute ``rows`` (n_centres, m2), the unit-variance covariance of each local energy with
        the sparse distances, and ``prior`` (n_centres,), its unit-variance prior variance
        ``1/4 sum_{p, q in N(i)} k(r_p, r_q)``.
    """
    n = pairs.n_centres
    idx, r, key = pair_geometry(term, pairs)
    centre = pairs.centre[idx]
    energies = np.zeros(n)
    d_e = np.zeros((pairs.n_pairs, 3)) if gradient else None
    k_rows = np.zeros((n, len(sr))) if rows else None
    for a in range(0, len(idx), BLOCK):
        b = min(a + BLOCK, len(idx))
        out = term.kernel(r[a:b], key[a:b], sr, skey, gradient=gradient)
        k = out[0] if gradient else out
        energies += 0.5 * np.bincount(centre[a:b], k @ beta, minlength=n)
        if gradient:
            d_e[idx[a:b]] = (0.5 * (out[1] @ beta) / r[a:b])[:, None] * pairs.vector[idx[a:b]]
        if rows:
            np.add.at(k_rows, centre[a:b], 0.5 * k)
    prior = _prior(term, centre, r, key, n) if rows else None
    return PairTerms(energies, d_e, k_rows, prior)


def _prior(term: TwoBody, centre, r, key, n) -> np.ndarray:
    """``1/4 sum_{p, q in N(i)} k(r_p, r_q)`` per centre, padded blocks of centres."""
    out = np.zeros(n)
    if not len(centre):
        return out
    order = np.argsort(centre, kind="stable")
    counts = np.bincount(centre, minlength=n)
    width = int(counts.max())
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(len(order)) - start[centre[order]]
    rr = np.full((n, width), np.nan)
    kk = np.full((n, width), -1, dtype=np.int64)
    rr[centre[order], slot] = r[order]
    kk[centre[order], slot] = key[order]
    fc = np.nan_to_num(term.cutoff(np.nan_to_num(rr, nan=term.r_cut))[0])
    step = max(1, 2 ** 22 // max(width * width, 1))
    for a in range(0, n, step):
        b = min(a + step, n)
        d = rr[a:b, :, None] - rr[a:b, None, :]
        e = np.exp(-0.5 * np.nan_to_num(d, nan=np.inf) ** 2 / term.length_scale ** 2)
        same = kk[a:b, :, None] == kk[a:b, None, :]
        out[a:b] = 0.25 * np.einsum("ip,ipq,iq->i", fc[a:b], e * same, fc[a:b])
    return out


def frame_rows(term: TwoBody, pairs: PairList, sr: np.ndarray, skey: np.ndarray, *,
               forces: bool, stress_volume: float | None):
    """Unit-variance covariance of a structure's energy (m2,), forces (3n, m2) and stress
    (6, m2) with the sparse distances (forces/stress None when not asked for).

    ``stress_volume``: the cell volume for stress rows (None: no stress rows).
    """
    n = pairs.n_centres
    idx, r, key = pair_geometry(term, pairs)
    m = len(sr)
    energy = np.zeros(m)
    f_rows = np.zeros((n, 3, m)) if forces else None
    s_rows = np.zeros((6, m)) if stress_volume is not None else None
    for a in range(0, len(idx), BLOCK):
        b = min(a + BLOCK, len(idx))
        k, dk = term.kernel(r[a:b], key[a:b], sr, skey, gradient=True)
        energy += 0.5 * k.sum(axis=0)
        vec = pairs.vector[idx[a:b]]
        unit = vec / r[a:b, None]
        # dE_m / d r_ij  (P, 3, m)
        d_e = 0.5 * unit[:, :, None] * dk[:, None, :]
        if forces:
            np.add.at(f_rows, pairs.centre[idx[a:b]], d_e)
            np.subtract.at(f_rows, pairs.neighbour[idx[a:b]], d_e)
        if s_rows is not None:
            for v, (x, y) in enumerate(VOIGT):
                s_rows[v] += 0.5 * (d_e[:, x, :] * vec[:, y, None]
                                    + d_e[:, y, :] * vec[:, x, None]).sum(axis=0)
    if s_rows is not None:
        s_rows /= stress_volume
    return energy, None if f_rows is None else f_rows.reshape(3 * n, m), s_rows


def force_prior(term: TwoBody, pairs: PairList, n_atoms: int) -> np.ndarray:
    """Unit-variance prior variance of every force component from the term, (n_atoms, 3).

    ``F_a = sum_p g_pa f'(r_p)`` with ``g_pa = 1/2 r_hat_p (delta(a, i_p) - delta(a, j_p))``,
    so ``Var[F_a_alpha] = sum_pq g_pa g_qa d2k(r_p, r_q)/dr_p dr_q``.
    """
    idx, r, key = pair_geometry(term, pairs)
    unit = pairs.vector[idx] / r[:, None]
    centre, neighbour = pairs.centre[idx], pairs.neighbour[idx]
    out = np.zeros((n_atoms, 3))
    for a in range(n_atoms):
        sel = np.flatnonzero((centre == a) | (neighbour == a))
        if not len(sel):
            continue
        sign = 0.5 * ((centre[sel] == a).astype(float) - (neighbour[sel] == a))
        d2 = term.second_derivative(r[sel], key[sel])
        g = sign[:, None] * unit[sel]                                   # (P, 3)
        out[a] = np.einsum("pa,pq,qa->a", g, d2, g)
    return np.clip(out, 0.0, None)


def strain_prior(term: TwoBody, pairs: PairList) -> np.ndarray:
    """Unit-variance prior variance of ``dE/deps_v`` from the term for the six Voigt strains (6,).

    ``dE/deps_ab = 1/2 sum_p f'(r_p) g_p,ab`` with ``g_p,ab = r_pa r_pb / r_p``, so the variance is
    ``1/4 sum_pq g_p g_q d2k(r_p, r_q)/dr_p dr_q``, in blocks of pairs.
    """
    idx, r, key = pair_geometry(term, pairs)
    vec = pairs.vector[idx]
    g = np.stack([vec[:, a] * vec[:, b] / r for a, b in VOIGT], axis=1)     # (P, 6)
    out = np.zeros(6)
    step = 2048
    for a in range(0, len(idx), step):
        for b in range(0, len(idx), step):
            d2 = term.second_derivative(r[a:a + step], key[a:a + step], r[b:b + step],
                                        key[b:b + step])
            out += 0.25 * np.einsum("pv,pq,qv->v", g[a:a + step], d2, g[b:b + step])
    return np.clip(out, 0.0, None)


@dataclass
class TwoBodySparse:
    """The two-body term of a fitted state: its settings, sparse distances and ``K_mm`` block.

    Implements :class:`gpmlip.gp.terms.Term` (the model and its solver see only that protocol).

    Attributes
    ----------
    term : TwoBody
        Validated settings (``r_cut`` filled in).
    distances : ndarray, shape (m2,)
    keys : ndarray of int, shape (m2,)
        Species pair of each sparse distance (:func:`pair_key`).
    kmm : ndarray, shape (m2, m2)
        Unit-variance kernel matrix of the sparse distances, jitter included.
    """

    term: TwoBody
    distances: np.ndarray
    keys: np.ndarray
    kmm: np.ndarray

    key = KEY
    name = "2b"
    parameter = "two_body"
    format_version = 2

    @classmethod
    def build(cls, term: TwoBody, species, jitter: float) -> TwoBodySparse:
        """The uniform sparse grid for every species pair of ``species``."""
        sr, skey = term.sparse_set(species)
        return cls(term, sr, skey, term.kmm(sr, skey, jitter))

    def __len__(self) -> int:
        return len(self.distances)

    @property
    def sigma(self) -> float:
        """The signal std a fit starts from, eV."""
        return self.term.sigma

    def settings(self, sigma: float) -> TwoBody:
        """The settings that rebuild this term with signal std ``sigma``."""
        return dataclasses.replace(self.term, sigma=float(sigma))

    def frame_rows(self, pairs: PairList, *, forces: bool, stress_volume: float | None):
        """Unit-variance energy (m2,), force (3n, m2) and stress (6, m2) rows of a structure."""
        return frame_rows(self.term, pairs, self.distances, self.keys, forces=forces,
                          stress_volume=stress_volume)

    def local(self, pairs: PairList, beta: np.ndarray, *, gradient: bool,
              rows: bool) -> PairTerms:
        """Local energies, ``dE/dr_ij``, rows and unit priors on a pair list (:func:`evaluate`)."""
        return evaluate(self.term, pairs, self.distances, self.keys, beta, gradient=gradient,
                        rows=rows)

    def force_prior(self, pairs: PairList, n_atoms: int) -> np.ndarray:
        """Unit-variance prior variance of every force component, (n_atoms, 3)."""
        return force_prior(self.term, pairs, n_atoms)

    def strain_prior(self, pairs: PairList) -> np.ndarray:
        """Unit-variance prior variance of ``dE/deps_v`` for the six Voigt strains, (6,)."""
        return strain_prior(self.term, pairs)

    def energy_geometry(self, pairs: PairList):
        """What :meth:`energy_prior` needs of a structure: its pair distances and keys."""
        _, r, key = pair_geometry(self.term, pairs)
        return r, key

    def energy_prior(self, a, b) -> float:
        """Unit-variance prior covariance of two structures' total energies from this term."""
        return 0.25 * float(self.term.kernel(a[0], a[1], b[0], b[1]).sum())

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict]:
        """Arrays and JSON metadata for a model file."""
        return ({"twobody_distances": self.distances, "twobody_keys": self.keys,
                 "twobody_kmm": self.kmm}, self.term.to_dict())

    @classmethod
    def from_arrays(cls, arrays, settings: dict) -> TwoBodySparse:
        """Inverse of :meth:`to_arrays`."""
        return cls(TwoBody.from_dict(settings), np.array(arrays["twobody_distances"]),
                   np.array(arrays["twobody_keys"], dtype=np.int64),
                   np.array(arrays["twobody_kmm"]))
