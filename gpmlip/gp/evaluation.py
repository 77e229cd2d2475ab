"""Evaluating a fitted sparse GP on a structure's pair list: local energies, their gradients
with respect to the descriptor and the pair vectors, and local-energy variances, the SOAP term
and every further term together (docs/theory.md §3-4)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gpmlip.descriptors.neighbours import PairList
from gpmlip.gp import terms as gp_terms
from gpmlip.gp.covariance import unit_kernel
from gpmlip.gp.prediction import PairEnergies, normalised_std

PREDICT_BLOCK = 512
"""Atoms whose kernel rows are formed at once in prediction (bounds the atoms x sparse block)."""


def local(model, features: np.ndarray, species: np.ndarray, *, gradient: bool,
          variance: bool, extra: Sequence | None = None):
    """Local energies (with e0), dE/dq per atom and local variances, in blocks of atoms so
    that the (atoms x sparse) kernel block stays small; ``extra``: each term's local rows
    and priors on the structure's pair list (``Term.local``), joined to the SOAP rows for
    the variances (their energies are added by the caller); None without a pair list (the
    SOAP term's own variance).  The returned prior variance is sigma_z^2 plus the terms'."""
    state = model.state
    post = state.posterior
    kernel = unit_kernel(model.zeta, species, state.sparse.species)
    e0 = np.array([state.e0.energies[int(z)] for z in species])
    sigma2 = np.array([state.signal_variance[int(z)] for z in species])
    for t, part in zip(state.terms, extra or ()):
        if part.prior is not None:
            sigma2 = sigma2 + state.signal_variance[t.key] * part.prior
    m = len(state.sparse)
    energies = np.empty(len(species))
    grad = np.empty_like(features) if gradient else None
    var = np.empty(len(species)) if variance else None
    x, zx = state.sparse.features, state.sparse.species
    for a in range(0, len(species), PREDICT_BLOCK):
        b = min(a + PREDICT_BLOCK, len(species))
        values, g, k = kernel.local_terms(features[a:b], species[a:b], x, zx, post.beta[:m],
                                          gradient=gradient, rows=variance)
        if variance and state.terms:
            k = np.hstack([k, *(part.rows[a:b] for part in extra)] if extra is not None
                          else [k, np.zeros((b - a, state.n_columns - m))])
        energies[a:b] = values + e0[a:b]
        if gradient:
            grad[a:b] = g
        if variance:
            var[a:b] = post.variance(k, sigma2[a:b])
    return energies, grad, var, sigma2


def evaluate(model, pairs: PairList, *, gradient: bool, variance: bool) -> PairEnergies:
    """Per-atom energies, ``dE/dr_ij`` (with ``gradient``) and local variances and normalised
    stds (with ``variance``) on a pair list: every term, and a pair baseline, included."""
    features = model.descriptor.features(pairs)
    state = model.state
    beta = state.posterior.beta
    extra = [t.local(pairs, beta[cols], gradient=gradient, rows=variance) for t, cols in
             zip(state.terms, gp_terms.column_blocks(len(state.sparse), state.terms))]
    energies, grad, var, sigma2 = local(model, features, pairs.centre_species,
                                        gradient=gradient, variance=variance, extra=extra)
    d_e = model.descriptor.backward(pairs, grad) if gradient else None
    for part in extra:
        energies = energies + part.energies
        d_e = d_e + part.dE_dr if gradient else None
    if model.pair_baseline is not None:
        e_b, d_b = model.pair_baseline.pair_terms(pairs.centre_species, pairs.centre,
                                                  pairs.vector, pairs.neighbour_species)
        energies = energies + e_b
        d_e = None if d_e is None else d_e + d_b
    std = None if var is None else normalised_std(var, sigma2)
    return PairEnergies(energies=energies, dE_dr=d_e, std=std, variance=var)
