"""Error bars on total energies and energy differences (gpmlip.gp.energy_std, issue 29)."""

import json

import numpy as np
import pytest

import gpmlip
from gpmlip.gp.covariance import local_kernel
from gpmlip.gp.kernels import NormalizedDotProduct

from conftest import emt_frames


@pytest.fixture(scope="module")
def frames():
    return emt_frames(8, seed=5, alloy=True)


@pytest.fixture(scope="module")
def model(frames):
    return gpmlip.SparseGP(gpmlip.SOAP(["Cu", "Au"], 4.0, 4, 3), n_sparse=15,
                           e0={"Cu": 0.0, "Au": 0.0}).fit(frames[:6])


def dense_local_covariance(model, atoms):
    """Posterior covariance of every pair of local energies of ``atoms`` (n, n), formed densely
    from the per-atom kernel rows and the atom-atom prior."""
    state = model.state
    pairs = model.descriptor.pair_list(atoms)
    q = model.descriptor.features(pairs)
    z = pairs.centre_species
    rows = local_kernel(q, z, state.sparse, model.zeta)                      # (n, m)
    prior = NormalizedDotProduct(model.zeta, state.signal_variance)(q, z, q, z)
    l_inv_t, r_inv = state.posterior.inverse_factors
    nys, w = rows @ l_inv_t, rows @ r_inv
    return prior - (nys * state.column_variance) @ nys.T + w @ w.T


def test_energy_std_is_the_std_of_the_summed_local_energies(model, frames):
    """Var[E] = 1' C 1 over the full local-energy covariance (not the sum of its diagonal),
    whose diagonal is the local variance predict() gives."""
    atoms = frames[6]
    dense = dense_local_covariance(model, atoms)
    pred = model.predict(atoms, energy_std=True)
    np.testing.assert_allclose(np.diag(dense), pred.local_variance, rtol=1e-7,
                               atol=1e-12 * dense.max())
    assert pred.energy_std_raw ** 2 == pytest.approx(dense.sum(), rel=1e-8)
    # the covariances count: local energies are not observed one by one, only their sums, so
    # their errors are strongly anti-correlated and the total is far better known
    assert pred.energy_std_raw < 0.1 * np.sqrt(pred.local_variance.sum())


def test_energy_difference_std_matches_a_dense_reference(model, frames):
    a, b = frames[6], frames[7]
    cov = model.energy_covariance([a, b], calibrated=False)
    # the cross-covariance summed from the two cells' per-atom rows and atom-atom prior
    pairs_a, pairs_b = (model.descriptor.pair_list(x) for x in (a, b))
    qa, qb = model.descriptor.features(pairs_a), model.descriptor.features(pairs_b)
    za, zb = pairs_a.centre_species, pairs_b.centre_species
    state = model.state
    ra = local_kernel(qa, za, state.sparse, model.zeta).sum(axis=0)
    rb = local_kernel(qb, zb, state.sparse, model.zeta).sum(axis=0)
    prior_ab = NormalizedDotProduct(model.zeta, state.signal_variance)(qa, za, qb, zb).sum()
    l_inv_t, r_inv = state.posterior.inverse_factors
    cross = (prior_ab - (ra @ l_inv_t * state.column_variance) @ (rb @ l_inv_t)
             + (ra @ r_inv) @ (rb @ r_inv))
    assert cov[0, 1] == pytest.approx(cross, rel=1e-8)
    assert cov[0, 0] == pytest.approx(dense_local_covariance(model, a).sum(), rel=1e-8)
    std = gpmlip.gp.energy_std.difference_std(cov)
    assert std ** 2 == pytest.approx(cov[0, 0] + cov[1, 1] - 2 * cross, rel=1e-8)


def test_invariances_and_a_supercell(model, frames):
    """A copy shifted and rotated has the same std and is fully correlated (its difference
    std is 0); a doubled cell has twice the energy, so four times the variance."""
    a = frames[6]
    moved = a.copy()
    moved.rotate(37, "z", rotate_cell=True)
    moved.translate([0.3, -0.2, 0.5])
    double = a.repeat((2, 1, 1))
    cov = model.energy_covariance([a, moved, double], calibrated=False)
    assert cov[1, 1] == pytest.approx(cov[0, 0], rel=1e-8)
    assert gpmlip.gp.energy_std.difference_std(cov, 0, 1) < 1e-6 * np.sqrt(cov[0, 0])
    assert cov[2, 2] == pytest.approx(4 * cov[0, 0], rel=1e-7)
    assert cov[0, 2] == pytest.approx(2 * cov[0, 0], rel=1e-7)


def test_two_body_term_enters_the_energy_covariance(frames):
    """With a two-body term: the dense local covariance (SOAP rows and prior, plus each atom's
    half of its pairs' two-body rows and prior) has predict()'s local variances on its
    diagonal and the energy variance as its sum."""
    from gpmlip.gp import twobody

    m = gpmlip.SparseGP(gpmlip.SOAP(["Cu", "Au"], 4.0, 4, 3), n_sparse=15,
                        e0={"Cu": 0.0, "Au": 0.0},
                        two_body=gpmlip.TwoBody(n_sparse=6, sigma=0.3)).fit(frames[:6])
    a = frames[6]
    state, two = m.state, m.state.terms[0]
    pairs = m.descriptor.pair_list(a)
    q, z = m.descriptor.features(pairs), pairs.centre_species
    idx, r, key = twobody.pair_geometry(two.term, pairs)
    half = np.zeros((len(a), len(idx)))
    half[pairs.centre[idx], np.arange(len(idx))] = 0.5
    rows = np.hstack([local_kernel(q, z, state.sparse, m.zeta),
                      half @ two.term.kernel(r, key, two.distances, two.keys)])
    soap_var = {k: v for k, v in state.signal_variance.items() if k != twobody.KEY}
    prior = (NormalizedDotProduct(m.zeta, soap_var)(q, z, q, z)
             + state.signal_variance[twobody.KEY] * half @ two.term.kernel(r, key, r, key)
             @ half.T)
    l_inv_t, r_inv = state.posterior.inverse_factors
    nys, w = rows @ l_inv_t, rows @ r_inv
    dense = prior - (nys * state.column_variance) @ nys.T + w @ w.T
    pred = m.predict(a, energy_std=True)
    np.testing.assert_allclose(np.diag(dense), pred.local_variance, rtol=1e-7,
                               atol=1e-12 * dense.max())
    assert pred.energy_std_raw ** 2 == pytest.approx(dense.sum(), rel=1e-8)
    cov = m.energy_covariance([a, a.repeat((1, 2, 1))], calibrated=False)
    assert cov[1, 1] == pytest.approx(4 * cov[0, 0], rel=1e-7)


def test_energy_calibration_from_leave_one_out_and_files(model, frames, tmp_path):
    m = gpmlip.SparseGP(model.descriptor, n_sparse=15, e0={"Cu": 0.0, "Au": 0.0}).fit(frames[:6])
    m.calibrate(max_frames=6)
    cal = m.energy_calibration_
    assert cal is not None and cal.quantity == "energy" and cal.source == "leave-one-out"
    assert cal.n == 6 and "energy std x" in cal.describe()
    pred = m.predict(frames[7], energy_std=True)
    assert pred.energy_std == pytest.approx(cal.scale * pred.energy_std_raw, rel=1e-10)
    m.save(tmp_path / "m.npz")
    back = gpmlip.load_model(tmp_path / "m.npz")
    assert back.energy_calibration_.to_dict() == json.loads(json.dumps(cal.to_dict()))
    assert back.predict(frames[7], energy_std=True).energy_std == pytest.approx(pred.energy_std)
    # a file from before the energy calibration loads raw
    with np.load(tmp_path / "m.npz", allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(bytes(arrays["metadata.json"]).decode())
    del meta["energy_calibration"]
    arrays["metadata.json"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(tmp_path / "old.npz", **arrays)
    old = gpmlip.load_model(tmp_path / "old.npz")
    assert old.energy_calibration_ is None and old.calibration_ is not None
    p = old.predict(frames[7], energy_std=True)
    assert p.energy_std == p.energy_std_raw
    # held-out energies calibrate it too
    m.calibrate(frames[6:])
    assert m.energy_calibration_.source == "held-out" and m.energy_calibration_.n == 2
