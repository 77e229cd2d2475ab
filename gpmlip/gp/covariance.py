"""The chain rule, written once: local kernel + descriptor Jacobians -> energy, force, stress rows.

Every observation of a structure is linear in its local energies: the total energy is their sum,
forces are minus their position derivatives and the stress is their strain derivative over the
volume.  So the covariance between an observation and a sparse point ``x_m`` is the same linear
operator applied to ``k(q_i, x_m)``.  This module computes those rows for *unit* signal variance
(``sigma_z = 1``); the model scales them per species.

With ``c_im = q_hat_i . x_hat_m`` (zero when the species differ) and ``k = c^zeta``:

- energy row:  ``sum_i c_im^zeta``
- force row:   ``-sum_i dk_im/dq_i . dq_i/dr_j``
- stress row:  ``(1/V) sum_i dk_im/dq_i . dq_i/deps_ab`` (Voigt order xx, yy, zz, yz, xz, xy)

with ``dk_im/dq_i = zeta c_im^(zeta-1) (x_hat_m - c_im q_hat_i) / |q_i|``.  Forces need the Jacobian
only through products ``J @ x_hat`` computed block by block, never a dense (n, m, F) array.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse as sp

from gpmlip.descriptors.environments import Environments
from gpmlip.gp.kernels import NormalizedDotProduct, normalise

VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))
"""Stress components used as observations, in Voigt order."""

PAIR_BLOCK = 4096
"""Jacobian pairs contracted at once (bounds the (pairs, 3, m) intermediate)."""


@dataclass
class SparseSet:
    """Sparse (inducing) environments: normalised descriptors and species.

    Attributes
    ----------
    features : ndarray, shape (m, n_features)
        Descriptor vectors, normalised to unit length.
    species : ndarray of int, shape (m,)
    """

    features: np.ndarray
    species: np.ndarray

    def __post_init__(self) -> None:
        self.features = normalise(np.asarray(self.features, dtype=float))
        self.species = np.asarray(self.species, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.species)

    def columns(self, z: int) -> np.ndarray:
        """Indices of the sparse points of species ``z``."""
        return np.flatnonzero(self.species == z)


def unit_kernel(zeta: int, zq: np.ndarray, zx: np.ndarray) -> NormalizedDotProduct:
    """The kernel at unit signal variance for every species present."""
    return NormalizedDotProduct(zeta, {int(z): 1.0 for z in np.union1d(zq, zx)})


def local_kernel(features: np.ndarray, species: np.ndarray, sparse: SparseSet,
                 zeta: int) -> np.ndarray:
    """Unit-variance kernel ``k(q_i, x_m) = c_im^zeta`` (0 across species), shape (n, m)."""
    kernel = unit_kernel(zeta, species, sparse.species)
    return kernel(features, species, sparse.features, sparse.species)


def energy_rows(env: Environments, sparse: SparseSet, zeta: int) -> np.ndarray:
    """Covariance of the total energy with every sparse point, shape (m,)."""
    return local_kernel(env.features, env.species, sparse, zeta).sum(axis=0)


def _prefactor(env: Environments, sparse: SparseSet, zeta: int):
    """``delta(z) zeta c^(zeta-1) / |q_i|`` (n, m), the cosines (n, m) and q_hat (n, F)."""
    kernel = unit_kernel(zeta, env.species, sparse.species)
    qh, qn, _, c, pref = kernel.gradient_terms(env.features, env.species, sparse.features,
                                                sparse.species)
    return pref / qn, c, qh


def _species_blocks(species: np.ndarray, wanted: np.ndarray):
    """``(z, columns)`` for every species of ``wanted``; ``columns`` is a slice when the
    species' sparse points are contiguous (they are, as the model sorts them), else indices."""
    for z in np.unique(wanted):
        cols = np.flatnonzero(species == z)
        if len(cols) and cols[-1] - cols[0] + 1 == len(cols):
            yield int(z), slice(int(cols[0]), int(cols[-1]) + 1)
        elif len(cols):
            yield int(z), cols


def force_rows(env: Environments, sparse: SparseSet, zeta: int) -> np.ndarray:
    """Covariance of every force component with every sparse point, shape (n_atoms, 3, m).

    A centre covaries only with the sparse points of its own species, so each species' Jacobian
    pairs are contracted with that species' sparse points alone (the cost of a multi-species
    model falls by the number of species).
    """
    pref, c, qh = _prefactor(env, sparse, zeta)
    n, m = env.n_atoms, len(sparse)
    # dE/dr_j = sum_p pref[i_p] * (J_p . x_hat) - sum_p (J_p . q_hat_i) * (pref * c)[i_p]
    own = np.einsum("paf,pf->pa", env.jacobian, qh[env.pair_centre])             # (P, 3)
    out = np.empty((n, 3, m))
    for a in range(3):
        mix = sp.csr_matrix((own[:, a], (env.pair_atom, env.pair_centre)), shape=(n, n))
        out[:, a, :] = mix @ (pref * c)
    centre_species = env.species[env.pair_centre]
    for z, cols in _species_blocks(sparse.species, centre_species):
        pairs = np.flatnonzero(centre_species == z)
        x = sparse.features[cols].T                                              # (F, m_z)
        m_z = x.shape[1]
        for start in range(0, len(pairs), PAIR_BLOCK):
            idx = pairs[start:start + PAIR_BLOCK]
            jac = env.jacobian[idx]
            block = (jac.reshape(-1, jac.shape[2]) @ x).reshape(len(idx), 3, m_z)
            block *= pref[env.pair_centre[idx]][:, None, cols]
            scatter = sp.csr_matrix((np.ones(len(idx)), (env.pair_atom[idx],
                                                         np.arange(len(idx)))),
                                    shape=(n, len(idx)))
            out[:, :, cols] -= (scatter @ block.reshape(len(idx), 3 * m_z)).reshape(n, 3, m_z)
    return out


def strain_rows(env: Environments, sparse: SparseSet, zeta: int) -> np.ndarray:
    """``sum_i dk_im/dq_i . dq_i/deps_ab`` for the six Voigt components, shape (6, m).

    Divide by the volume for the stress (ASE sign convention).
    """
    pref, c, qh = _prefactor(env, sparse, zeta)
    rows = np.empty((6, len(sparse)))
    for v, (a, b) in enumerate(VOIGT):
        strain = 0.5 * (env.strain_jacobian[:, a, b] + env.strain_jacobian[:, b, a])  # (n, F)
        proj = strain @ sparse.features.T                                          # (n, m)
        own = np.einsum("if,if->i", strain, qh)
        rows[v] = (pref * (proj - own[:, None] * c)).sum(axis=0)
    return rows


def energy_gradient(env: Environments, sparse: SparseSet, zeta: int,
                    weights: np.ndarray) -> np.ndarray:
    """``d E / d q_i`` for ``E = sum_i sum_m weights_m c_im^zeta``, shape (n_atoms, n_features).

    Contract it with the Jacobian (:meth:`Environments.position_vjp`) for forces.
    """
    kernel = unit_kernel(zeta, env.species, sparse.species)
    return kernel.gradient_dot(env.features, env.species, sparse.features, sparse.species,
                               weights)


def voigt(stress: np.ndarray) -> np.ndarray:
    """3x3 -> the six Voigt components used as observations."""
    return np.array([stress[a, b] for a, b in VOIGT])


def force_prior_variance(env: Environments, zeta: int,
                         signal_variance: dict[int, float]) -> np.ndarray:
    """Prior variance of every force component, ``Var[F_a_alpha]``, shape (n_atoms, 3).

    ``F_a = -sum_i d eps_i / d r_a`` so its prior variance is
    ``sum_ij sigma_z^2 delta(z_i, z_j) (dq_i/dr_a)' d2k(q_i, q_j)/dq dq' (dq_j/dr_a)``.  With
    ``u_p = (I - q_hat_i q_hat_i') J_p / |q_i|`` for every Jacobian pair ``p = (i, a)`` and the
    cosines ``c_ij``, the mixed second derivative contracted with the two Jacobians is
    ``zeta (zeta - 1) c^(zeta-2) (u_p . q_hat_j)(u_q . q_hat_i) + zeta c^(zeta-1) u_p . u_q``.
    Each atom needs only the pairs that move it, so the cost is one small dense block per atom.
    """
    qh, qn = normalise(env.features), np.linalg.norm(env.features, axis=1)
    sig = np.array([signal_variance[int(z)] for z in env.species])
    out = np.zeros((env.n_atoms, 3))
    # pairs grouped by moved atom, then by centre species (centres of different species do
    # not covary): one dense block per (atom, species)
    key = env.pair_atom * (int(env.species.max()) + 1) + env.species[env.pair_centre]
    order = np.argsort(key, kind="stable")
    bounds = np.flatnonzero(np.r_[True, np.diff(key[order]) != 0, True])
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        pairs = order[lo:hi]
        a = env.pair_atom[pairs[0]]
        centre = env.pair_centre[pairs]
        q = qh[centre]                                                   # (P, F)
        c = np.clip(q @ q.T, -1.0, 1.0)
        jac = env.jacobian[pairs]                                        # (P, 3, F)
        u = (jac - np.einsum("paf,pf->pa", jac, q)[:, :, None] * q[:, None, :]) \
            / qn[centre][:, None, None]
        for alpha in range(3):
            ua = u[:, alpha, :]
            total = zeta * c ** (zeta - 1) * (ua @ ua.T)
            if zeta > 1:
                cross = ua @ q.T                                         # A_pq = u_p . q_hat_q
                total += zeta * (zeta - 1) * c ** (zeta - 2) * cross * cross.T
            out[a, alpha] += sig[centre[0]] * float(total.sum())
    return np.clip(out, 0.0, None)


def strain_prior_variance(env: Environments, zeta: int,
                          signal_variance: dict[int, float]) -> np.ndarray:
    """Prior variance of ``dE/deps_v`` for the six Voigt strains, shape (6,), eV^2 (divide by
    the squared volume for the stress).

    ``dE/deps_v = sum_i dq_i/deps_v . grad eps_i`` couples every pair of atoms of a species, so
    the variance is ``sum_ij sigma_z^2 delta(z_i, z_j) s_i' d2k(q_i, q_j)/dq dq' s_j`` with
    ``s_i`` the symmetrised strain Jacobian of ``q_i``; with ``u_i = (I - q_hat_i q_hat_i') s_i /
    |q_i|`` it is ``zeta (zeta - 1) c^(zeta-2) (u_i . q_hat_j)(u_j . q_hat_i) + zeta c^(zeta-1)
    u_i . u_j`` summed (as :func:`force_prior_variance`, with every atom in every term).
    """
    qh, qn = normalise(env.features), np.linalg.norm(env.features, axis=1)
    out = np.zeros(6)
    for z in np.unique(env.species):
        atoms = np.flatnonzero(env.species == z)
        q = qh[atoms]
        c = np.clip(q @ q.T, -1.0, 1.0)
        for v, (a, b) in enumerate(VOIGT):
            strain = 0.5 * (env.strain_jacobian[atoms, a, b] + env.strain_jacobian[atoms, b, a])
            u = (strain - np.einsum("if,if->i", strain, q)[:, None] * q) / qn[atoms, None]
            total = zeta * c ** (zeta - 1) * (u @ u.T)
            if zeta > 1:
                cross = u @ q.T                                       # A_ij = u_i . q_hat_j
                total += zeta * (zeta - 1) * c ** (zeta - 2) * cross * cross.T
            out[v] += signal_variance[int(z)] * float(total.sum())
    return np.clip(out, 0.0, None)

