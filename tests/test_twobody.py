"""The two-body term (gpmlip.TwoBody): kernel rows, derivatives, invariances, cutoff, variances,
update, files, likelihood gradient and bad settings."""

import numpy as np
import pytest
from ase import Atoms

import gpmlip
from gpmlip.gp.covariance import force_prior_variance, force_rows, local_kernel, voigt
from gpmlip.data import load_frames
from gpmlip.errors import ModelFileError, SettingsError
from gpmlip.gp import twobody
from gpmlip.gp.hyper import objective
from gpmlip.gp.terms import with_term_rows
from gpmlip.gp.observations import NoiseModel, compute_rows, observations
from gpmlip.testing import check_forces, check_stress

from conftest import SMALL_CU, SMALL_MULTI, finite_difference_gradient, emt_frames

TERM = gpmlip.TwoBody(n_sparse=8, sigma=0.3)


@pytest.fixture(scope="module")
def train():
    return emt_frames(6, seed=0)


@pytest.fixture(scope="module")
def model(train):
    return gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU), n_sparse=12, e0={"Cu": 0.0},
                           two_body=TERM).fit(train)


@pytest.fixture(scope="module")
def alloy_model():
    return gpmlip.SparseGP(gpmlip.SOAP(**SMALL_MULTI), n_sparse=6, e0="fit",
                           two_body=gpmlip.TwoBody(n_sparse=6, r_cut=3.8)).fit(
        emt_frames(4, seed=1, alloy=True))


def _rows(term, soap, atoms, sr, skey):
    pairs = soap.pair_list(atoms)
    volume = abs(atoms.cell.volume)
    return twobody.frame_rows(term, pairs, sr, skey, forces=True, stress_volume=volume)


@pytest.mark.parametrize("alloy", [False, True])
def test_kernel_rows_are_derivatives_of_the_energy_row(alloy):
    soap = gpmlip.SOAP(**(SMALL_MULTI if alloy else SMALL_CU))
    term = gpmlip.TwoBody(n_sparse=7, transition_width=1.5).validated(soap.neighbour_cutoff)
    sr, skey = term.sparse_set(soap.species)
    atoms = emt_frames(1, seed=3, alloy=alloy)[0]
    energy, forces, stress = _rows(term, soap, atoms, sr, skey)
    h = 1e-6
    fd = np.zeros_like(forces)
    for a in range(len(atoms)):
        for x in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[a, x] += h
            minus.positions[a, x] -= h
            fd[3 * a + x] = -(_rows(term, soap, plus, sr, skey)[0]
                              - _rows(term, soap, minus, sr, skey)[0]) / (2 * h)
    np.testing.assert_allclose(forces, fd, atol=1e-7 * np.abs(forces).max())
    fd_s = np.zeros((3, 3, len(sr)))
    for x in range(3):
        for y in range(3):
            eps = np.zeros((3, 3))
            eps[x, y] = h
            out = []
            for sign in (1, -1):
                b = atoms.copy()
                b.set_cell(atoms.cell.array @ (np.eye(3) + sign * eps), scale_atoms=True)
                out.append(_rows(term, soap, b, sr, skey)[0])
            fd_s[x, y] = (out[0] - out[1]) / (2 * h) / atoms.get_volume()
    fd_s = 0.5 * (fd_s + fd_s.transpose(1, 0, 2))
    expected = np.array([voigt(fd_s[:, :, m]) for m in range(len(sr))]).T
    np.testing.assert_allclose(stress, expected, atol=1e-7 * np.abs(stress).max())
    # the energy row is the sum over unordered pairs, each species pair on its own columns
    assert np.all(energy[skey == 29029] > 0) if not alloy else np.all(energy >= 0)


def test_second_derivative_and_cutoff():
    term = gpmlip.TwoBody(r_cut=4.0, transition_width=1.2, length_scale=0.7).validated(4.0)
    r = np.array([1.3, 2.9, 3.3, 3.95])
    key = np.full(4, 29029)
    h = 1e-5
    fd = (term.kernel(r + h, key, r + h, key) - term.kernel(r + h, key, r - h, key)
          - term.kernel(r - h, key, r + h, key) + term.kernel(r - h, key, r - h, key)) / (4 * h * h)
    np.testing.assert_allclose(term.second_derivative(r, key), fd, atol=1e-5)
    _, dk = term.kernel(r, key, r[:2], key[:2], gradient=True)
    fd1 = (term.kernel(r + h, key, r[:2], key[:2]) - term.kernel(r - h, key, r[:2], key[:2])) / (2 * h)
    np.testing.assert_allclose(dk, fd1, atol=1e-8)
    fc, dfc = term.cutoff(np.array([2.0, 2.8, 4.0, 4.5]))
    np.testing.assert_allclose(fc, [1.0, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(dfc, 0.0, atol=1e-15)


@pytest.mark.parametrize("build", [lambda: emt_frames(1, seed=7)[0], lambda: emt_frames(
    1, seed=8, repeat=1)[0]])
def test_forces_and_stress_are_energy_derivatives(model, build):
    atoms = build()
    check_forces(model.predict, atoms, rtol=1e-5)
    check_stress(model.predict, atoms, rtol=1e-5)


def test_alloy_derivatives_and_invariances(alloy_model):
    atoms = emt_frames(1, seed=11, alloy=True)[0]
    check_forces(alloy_model.predict, atoms)
    check_stress(alloy_model.predict, atoms)
    p = alloy_model.predict(atoms)
    rot = np.linalg.qr(np.random.default_rng(0).standard_normal((3, 3)))[0]
    turned = atoms.copy()
    turned.set_cell(atoms.cell.array @ rot.T, scale_atoms=False)
    turned.positions = atoms.positions @ rot.T + 0.3
    q = alloy_model.predict(turned)
    assert q.energy == pytest.approx(p.energy, abs=1e-9)
    np.testing.assert_allclose(q.forces, p.forces @ rot.T, atol=1e-8)
    perm = np.random.default_rng(1).permutation(len(atoms))
    r = alloy_model.predict(atoms[perm])
    np.testing.assert_allclose(r.energies, p.energies[perm], atol=1e-10)
    np.testing.assert_allclose(p.forces.sum(axis=0), 0.0, atol=1e-9)


def test_two_body_changes_the_fit_and_its_energy_is_continuous_through_the_cutoff(model):
    soap_only = gpmlip.SparseGP(model.descriptor, n_sparse=12, e0={"Cu": 0.0}).fit(
        model.training_frames)
    r_cut = model.state.terms[0].term.r_cut
    beta2 = model.state.posterior.beta[-len(model.state.terms[0]):]
    assert np.abs(beta2).max() > 0
    term, two = model.state.terms[0].term, model.state.terms[0]

    def pair_energy(r):   # the fitted f(r) of the Cu-Cu pair
        k = term.kernel(np.array([r]), np.array([29029]), two.distances, two.keys)
        return float((k @ beta2)[0])

    assert pair_energy(r_cut - 1e-6) == pytest.approx(0.0, abs=1e-9)
    assert pair_energy(r_cut + 0.1) == 0.0
    # the dimer: the full model is continuous at the 2b cutoff (= SOAP cutoff here)
    energies = [model.predict(Atoms("Cu2", positions=[[0, 0, 0], [0, 0, r]]),
                              variance=False).energy for r in (r_cut - 1e-5, r_cut + 1e-5)]
    assert abs(energies[0] - energies[1]) < 1e-5
    atoms = emt_frames(1, seed=4)[0]
    assert model.predict(atoms).energy != pytest.approx(soap_only.predict(atoms).energy,
                                                        abs=1e-6)


def _dense(model, frames):
    """K_nm with all columns, y, noise, the block-diagonal K_mm and column variances."""
    state = model.state
    d = state.column_variance
    rows, ys, noise = [], [], []
    frames = list(load_frames(frames))
    soap_rows = compute_rows(frames, model.descriptor.to_dict(), model.zeta, state.sparse)
    for frame, fr in zip(frames, with_term_rows(soap_rows, frames, state.terms,
                                                   model.descriptor.pair_list)):
        for group, k, y, scale in observations(frame, fr, state.e0.of(frame.atoms.numbers),
                                               NoiseModel({}, model.stress_noise == "per_atom")):
            rows.append(k * d)
            ys.append(y)
            noise.append(scale * state.noise[group] ** 2)
    kmm = state.system_kmm * np.sqrt(np.outer(d, d))
    return np.vstack(rows), np.concatenate(ys), np.concatenate(noise), kmm, d


def test_energies_and_variances_are_the_dense_dtc(model, train):
    knm, y, lam, kmm, d = _dense(model, train)
    sigma = np.linalg.inv(kmm + knm.T @ (knm / lam[:, None]))
    # the DTC weights as a stacked least-squares problem (the explicit inverse is not accurate
    # enough for the mean: K_mm is close to singular)
    u = np.linalg.cholesky(kmm).T
    stacked = np.vstack([knm / np.sqrt(lam)[:, None], u])
    alpha = np.linalg.lstsq(stacked, np.concatenate([y / np.sqrt(lam), np.zeros(len(u))]),
                            rcond=None)[0]
    atoms = emt_frames(1, seed=5)[0]
    state = model.state
    env = model.descriptor.describe(atoms)
    pairs = model.descriptor.pair_list(atoms)
    k2 = twobody.evaluate(state.terms[0].term, pairs, state.terms[0].distances,
                          state.terms[0].keys, np.zeros(len(state.terms[0])), gradient=False,
                          rows=True)
    k = np.hstack([local_kernel(env.features, env.species, state.sparse, 4), k2.rows]) * d
    p = model.predict(atoms)
    np.testing.assert_allclose(p.energies, k @ alpha, rtol=1e-6, atol=1e-8)
    # the term's prior of a local energy, by brute force over pairs of neighbours
    r = np.linalg.norm(pairs.vector, axis=1)
    for i in (0, 5):
        ri = r[(pairs.centre == i) & (r < state.terms[0].term.r_cut)]
        key = np.full(len(ri), 29029)
        assert k2.prior[i] == pytest.approx(0.25 * state.terms[0].term.kernel(ri, key, ri,
                                                                               key).sum())
    prior = state.signal_variance[29] + state.signal_variance[0] * k2.prior
    expected = prior - np.einsum("ij,ij->i", k, np.linalg.solve(kmm, k.T).T) + np.einsum(
        "ij,ij->i", k, k @ sigma)
    np.testing.assert_allclose(p.local_variance, expected, rtol=1e-4, atol=1e-6 * prior.max())
    np.testing.assert_allclose(p.local_std_normalised, np.sqrt(p.local_variance / prior),
                               rtol=1e-10)


def test_force_std_is_the_dense_dtc_variance_with_the_term(train):
    """As tests/test_sgp.py's dense check, with the term's rows and prior force variance."""
    model = gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU, weighting=None), n_sparse=12,
                            e0={"Cu": 0.0}, two_body=gpmlip.TwoBody(n_sparse=6)).fit(train)
    knm, y, lam, kmm, d = _dense(model, train)
    state = model.state
    atoms = emt_frames(1, seed=8)[0]
    env = model.descriptor.describe(atoms, gradients=True)
    pairs = model.descriptor.pair_list(atoms)
    _, f2, _ = twobody.frame_rows(state.terms[0].term, pairs, state.terms[0].distances,
                                  state.terms[0].keys, forces=True, stress_volume=None)
    kf = np.hstack([force_rows(env, state.sparse, 4).reshape(3 * len(atoms), -1), f2]) * d
    prior = (force_prior_variance(env, 4, state.signal_variance).ravel()
             + state.signal_variance[0] * twobody.force_prior(state.terms[0].term, pairs,
                                                              len(atoms)).ravel())
    nystroem = np.einsum("ij,ij->i", kf, np.linalg.solve(kmm, kf.T).T)
    sigma = np.linalg.inv(kmm + knm.T @ (knm / lam[:, None]))
    expected = prior - nystroem + np.einsum("ij,ij->i", kf, kf @ sigma)
    p = model.predict(atoms, force_std=True)
    np.testing.assert_allclose(p.force_std.ravel() ** 2, expected, rtol=1e-5,
                               atol=1e-5 * prior.max())


def test_force_prior_is_the_covariance_of_sampled_pair_functions():
    """Sample f ~ GP on a fine grid; the variance of the resulting forces matches force_prior."""
    term = gpmlip.TwoBody(r_cut=4.0, length_scale=0.8).validated(4.0)
    soap = gpmlip.SOAP(**SMALL_CU)
    atoms = emt_frames(1, seed=2, repeat=1)[0]
    pairs = soap.pair_list(atoms)
    grid = np.linspace(1.0, 4.0, 400)
    key = np.full(len(grid), 29029)
    kgg = term.kernel(grid, key, grid, key) + 1e-10 * np.eye(len(grid))
    # f(r) = sum_g w_g k(r, g) with w ~ N(0, K_gg^-1): Cov f = k_rg K_gg^-1 k_gr ~ k
    _, f_rows, _ = twobody.frame_rows(term, pairs, grid, key, forces=True, stress_volume=None)
    approx = np.einsum("ij,ij->i", f_rows, np.linalg.solve(kgg, f_rows.T).T)
    np.testing.assert_allclose(twobody.force_prior(term, pairs, len(atoms)).ravel(), approx,
                               rtol=2e-3)


def test_likelihood_gradient_includes_the_two_body_signal(model):
    theta = np.log([1.3, 0.2, 0.004 ** 2, 0.07 ** 2, 0.002 ** 2])
    state, species = model.state, model.species
    value, grad = objective(state, species, theta)
    assert len(grad) == 5
    fd = finite_difference_gradient(lambda t: objective(state, species, t)[0], theta)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-4)
    m = gpmlip.SparseGP(model.descriptor, n_sparse=12, e0={"Cu": 0.0},
                        two_body=TERM).fit(model.training_frames)
    result = m.optimise_hyperparameters(max_iterations=20)
    assert "signal 2b" in result.values
    assert m.state.signal_variance[0] == pytest.approx(result.values["signal 2b"] ** 2)
    assert 0 not in m.signal_variances


def test_update_equals_refit(train):
    soap = gpmlip.SOAP(**SMALL_CU)
    m = gpmlip.SparseGP(soap, n_sparse=5, e0={"Cu": 0.0}, two_body=TERM).fit(train[:3])
    m.update(train[3:5], sparse_atoms=[(0, 0), (1, 5)])
    m.update(train[5:])
    ref = gpmlip.SparseGP(soap, e0={"Cu": 0.0}, two_body=TERM).fit(
        train, sparse_atoms=m.sparse_origin_)
    atoms = emt_frames(1, seed=21)[0]
    a, b = m.predict(atoms), ref.predict(atoms)
    assert abs(a.energy - b.energy) < 1e-8
    np.testing.assert_allclose(a.forces, b.forces, atol=1e-8)
    np.testing.assert_allclose(a.local_variance, b.local_variance, atol=1e-8)


def test_save_load_and_pair_energies(model, tmp_path):
    path = tmp_path / "m.npz"
    model.save(path)
    assert gpmlip.gp.container.read_metadata(path)["format_version"] == 2
    loaded = gpmlip.load_model(path)
    assert loaded.two_body == model.state.terms[0].term
    atoms = emt_frames(1, seed=9)[0]
    a, b = model.predict(atoms), loaded.predict(atoms)
    assert a.energy == pytest.approx(b.energy, abs=1e-10)
    np.testing.assert_allclose(a.forces, b.forces, atol=1e-10)
    np.testing.assert_allclose(a.local_std_normalised, b.local_std_normalised, atol=1e-10)
    # the LAMMPS entry point: a pair list in, the same energies and forces out
    from ase.neighborlist import neighbor_list

    i, j, d = neighbor_list("ijD", atoms, loaded.pair_cutoff)
    z = atoms.numbers
    out = loaded.pair_energies(z, i, j, d, z[j], std=True)
    np.testing.assert_allclose(out.energies, a.energies, atol=1e-10)
    forces = np.zeros((len(atoms), 3))
    np.add.at(forces, i, out.dE_dr)
    np.subtract.at(forces, j, out.dE_dr)
    np.testing.assert_allclose(forces, a.forces, atol=1e-9)
    np.testing.assert_allclose(out.std, a.local_std_normalised, atol=1e-10)
    # a model without the term still writes version 1
    plain = gpmlip.SparseGP(model.descriptor, n_sparse=4, e0={"Cu": 0.0}).fit(
        model.training_frames[:2])
    plain.save(tmp_path / "plain.npz")
    assert gpmlip.gp.container.read_metadata(tmp_path / "plain.npz")["format_version"] == 1
    assert gpmlip.load_model(tmp_path / "plain.npz").two_body is None


def test_calculator_with_two_body(model):
    atoms = emt_frames(1, seed=12)[0]
    atoms.calc = gpmlip.GPCalculator(model)
    assert atoms.get_potential_energy() == pytest.approx(model.predict(atoms).energy)


@pytest.mark.parametrize("kwargs, match", [
    (dict(r_cut=9.0), "exceeds the descriptor"),
    (dict(n_sparse=0), "n_sparse"),
    (dict(sigma=-1.0), "sigma"),
    (dict(length_scale=0.0), "length_scale"),
    (dict(r_cut=0.4), "r_min"),
    (dict(transition_width=5.0), "transition_width"),
])
def test_bad_settings_are_clear_errors(train, kwargs, match):
    m = gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU), n_sparse=4, two_body=gpmlip.TwoBody(**kwargs))
    with pytest.raises(SettingsError, match=match):
        m.fit(train[:2])
    assert not m.is_fitted
    with pytest.raises(SettingsError, match="TwoBody"):
        gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU), two_body={"r_cut": 3}).fit(train[:2])


def test_a_newer_format_version_is_refused(model, tmp_path):
    import json
    import zipfile

    path = tmp_path / "m.npz"
    model.save(path)
    data = dict(np.load(path))
    meta = json.loads(bytes(data["metadata.json"]).decode())
    meta["format_version"] = 4
    data["metadata.json"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(path, **data)
    assert zipfile.is_zipfile(path)
    with pytest.raises(ModelFileError, match="version 4"):
        gpmlip.load_model(path)


def test_local_std_from_descriptors_is_the_soap_terms(model):
    atoms = emt_frames(1, seed=13)[0]
    u = model.local_std_normalised(model.descriptor.describe(atoms).features, atoms.numbers)
    assert u.shape == (len(atoms),) and np.all((u >= 0) & (u <= 1))
    soap_only = model.state.replace(terms=())
    assert np.all(np.isfinite(u)) and soap_only.terms == ()
