"""The sparse GP: solver against dense formulas, derivatives, likelihood, update, bad input."""

import numpy as np
import pytest

import gpmlip
from gpmlip.gp.covariance import force_prior_variance, force_rows, local_kernel
from gpmlip.data import load_frames
from gpmlip.gp.hyper import objective
from gpmlip.errors import DataError, SettingsError
from gpmlip.gp.observations import NoiseModel, compute_rows, observations
from gpmlip.testing import check_forces, check_stress

from conftest import SMALL_CU, SMALL_MULTI, finite_difference_gradient, cu_slab, emt_frames, ethanol


@pytest.fixture(scope="module")
def train():
    return emt_frames(6, seed=0)


@pytest.fixture(scope="module")
def model(train):
    return gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU), n_sparse=12, e0={"Cu": 0.0}).fit(train)


def dense_system(model, frames):
    """K_nm, y and the noise variances, assembled row by row with no Gram blocks."""
    frames = list(load_frames(frames))
    d = np.array([model.signal_variance_[int(z)] for z in model.sparse_.species])
    rows, ys, noise = [], [], []
    noise_model = NoiseModel(model.config_sigmas, model.stress_noise == "per_atom")
    for frame, fr in zip(frames, compute_rows(frames, model.descriptor.to_dict(), model.zeta,
                                              model.sparse_)):
        for group, k, y, scale in observations(frame, fr, model.e0_.of(frame.atoms.numbers),
                                               noise_model):
            s2 = 1.0 if group == "fixed" else model.noise_[group] ** 2
            rows.append(k * d)
            ys.append(y)
            noise.append(scale * s2)
    knm, y, lam = np.vstack(rows), np.concatenate(ys), np.concatenate(noise)
    kmm = model.kmm_ * np.sqrt(np.outer(d, d))
    return knm, y, lam, kmm, d


def test_solver_matches_dense_dtc(model, train):
    knm, y, lam, kmm, d = dense_system(model, train)
    # the DTC weights as a dense, stacked least-squares problem (numerically stable reference)
    u = np.linalg.cholesky(kmm).T
    stacked = np.vstack([knm / np.sqrt(lam)[:, None], u])
    alpha = np.linalg.lstsq(stacked, np.concatenate([y / np.sqrt(lam), np.zeros(len(u))]),
                            rcond=None)[0]
    test = emt_frames(1, seed=5)[0]
    env = model.descriptor.describe(test)
    expected = local_kernel(env.features, env.species, model.sparse_, model.zeta) * d @ alpha
    got = model.predict(test, forces=False).energies
    np.testing.assert_allclose(got, expected, rtol=1e-7, atol=1e-9)
    # log marginal likelihood: Q + Lambda with Q = K_nm K_mm^-1 K_mn
    v = np.linalg.solve(np.linalg.cholesky(kmm), knm.T).T
    cov = v @ v.T + np.diag(lam)
    chol = np.linalg.cholesky(cov)
    white = np.linalg.solve(chol, y)
    expected_ll = (-0.5 * white @ white - np.log(np.diag(chol)).sum()
                   - 0.5 * len(y) * np.log(2 * np.pi))
    assert model.log_likelihood == pytest.approx(expected_ll, rel=1e-6)


def test_all_environments_sparse_gives_the_exact_gp():
    frames = emt_frames(4, seed=3, repeat=1, labels=("energy",))
    soap = gpmlip.SOAP(**SMALL_CU)
    atoms_per = [len(f) for f in frames]
    everything = [(i, a) for i, n in enumerate(atoms_per) for a in range(n)]
    m = gpmlip.SparseGP(soap, e0={"Cu": 0.0}, jitter=1e-12, energy_sigma=0.01)
    m.fit(frames, sparse_atoms=everything)
    feats = np.vstack([soap.describe(f).features for f in frames])
    z = np.full(len(feats), 29)
    k = local_kernel(feats, z, gpmlip.gp.covariance.SparseSet(feats, z), 4)
    owner = np.repeat(np.arange(len(frames)), atoms_per)
    lmat = (owner[None, :] == np.arange(len(frames))[:, None]).astype(float)
    y = np.array([f.get_potential_energy() for f in frames])
    kee = lmat @ k @ lmat.T + np.diag(0.01 ** 2 * np.array(atoms_per))
    test = emt_frames(1, seed=9, repeat=1)[0]
    kt = local_kernel(soap.describe(test).features, np.full(len(test), 29),
                      gpmlip.gp.covariance.SparseSet(feats, z), 4)
    exact = kt @ lmat.T @ np.linalg.solve(kee, y)
    np.testing.assert_allclose(m.predict(test, forces=False).energies, exact, rtol=1e-6)


@pytest.mark.parametrize("build", [lambda: emt_frames(1, seed=7)[0], cu_slab])
def test_forces_and_stress_are_energy_derivatives(model, build):
    atoms = build()
    check_forces(model.predict, atoms, rtol=1e-5)
    if atoms.pbc.all():
        check_stress(model.predict, atoms, rtol=1e-5)


def test_multi_species_and_molecule_derivatives():
    frames = emt_frames(4, seed=1, alloy=True)
    m = gpmlip.SparseGP(gpmlip.SOAP(**SMALL_MULTI), n_sparse=6, e0="fit").fit(frames)
    atoms = emt_frames(1, seed=11, alloy=True)[0]
    check_forces(m.predict, atoms)
    check_stress(m.predict, atoms)
    assert set(m.sparse_.species.tolist()) == {29, 79}
    mol = ethanol()
    for a in mol:
        a.symbol = "Cu" if a.symbol != "Au" else "Au"
    mol.positions *= 1.8   # Cu-Cu distances of a sensible size
    check_forces(m.predict, mol)


def test_variances_known_and_unknown(model, train):
    p = model.predict(train[0], forces=False)
    u = p.local_std_normalised
    assert np.all((u >= 0) & (u <= 1)) and p.max_uncertainty == u.max()
    far = emt_frames(1, seed=2, rattle=0.0, strain=0.0)[0]
    far.set_cell(far.cell * 1.25, scale_atoms=True)    # 25 % stretched: never seen
    assert model.predict(far, forces=False).max_uncertainty > 2 * p.max_uncertainty
    np.testing.assert_allclose(p.local_variance, u ** 2 * model.signal_variance_[29])
    features = model.descriptor.describe(train[0]).features
    np.testing.assert_allclose(model.local_std_normalised(features, train[0].numbers), u,
                               rtol=1e-8)
    with pytest.warns(DeprecationWarning, match="local_std_normalised"):
        np.testing.assert_allclose(p.local_variance_normalised, u ** 2)


def test_force_std_is_dense_dtc_variance(train):
    """prior - Q_ff + k_f (K_mm + K_mn Lambda^-1 K_nm)^-1 k_f', assembled densely.

    The dense reference inverts K_mm and the posterior precision explicitly: it needs a
    well-conditioned K_mm (cond 3e7 with the hard cutoff here, 9e8 with the smooth one, where the
    explicit inverse itself is only good to ~1e-5 of the prior)."""
    model = gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU, weighting=None), n_sparse=12,
                            e0={"Cu": 0.0}).fit(train)
    knm, y, lam, kmm, d = dense_system(model, train)
    atoms = emt_frames(1, seed=8)[0]
    env = model.descriptor.describe(atoms, gradients=True)
    kf = force_rows(env, model.sparse_, model.zeta).reshape(3 * len(atoms), -1) * d
    prior = force_prior_variance(env, model.zeta, model.signal_variance_).ravel()
    nystroem = np.einsum("ij,ij->i", kf, np.linalg.solve(kmm, kf.T).T)
    sigma = np.linalg.inv(kmm + knm.T @ (knm / lam[:, None]))
    expected = prior - nystroem + np.einsum("ij,ij->i", kf, kf @ sigma)
    p = model.predict(atoms, force_std=True)
    assert p.force_std.shape == (len(atoms), 3)
    # prior - Q_ff cancels ~99 %: compare on the scale of the prior
    np.testing.assert_allclose(p.force_std.ravel() ** 2, expected, rtol=1e-5,
                               atol=1e-6 * prior.max())
    # the sparse points explain only part of the prior: DTC sits between the two
    weight_only = np.einsum("ij,ij->i", kf, kf @ sigma)
    assert np.all(p.force_std.ravel() ** 2 >= weight_only * (1 - 1e-6))
    assert np.all(p.force_std.ravel() ** 2 <= prior * (1 + 1e-6))


def test_likelihood_gradient_matches_finite_differences(model):
    theta = np.log([1.3, 0.004 ** 2, 0.07 ** 2, 0.002 ** 2])
    state, species = model.state, model.species
    _, grad = objective(state, species, theta)
    fd = finite_difference_gradient(lambda t: objective(state, species, t)[0], theta)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-4)


def test_optimise_improves_likelihood(train):
    m = gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU), n_sparse=12, e0={"Cu": 0.0},
                        force_sigma=0.5, energy_sigma=0.05).fit(train)
    before = m.log_likelihood
    result = m.optimise_hyperparameters()
    assert result.log_likelihood > before
    assert result.log_likelihood == pytest.approx(m.log_likelihood)
    assert result.values["forces"] < 0.5


def test_update_equals_refit(train):
    soap = gpmlip.SOAP(**SMALL_CU)
    first, second = train[:3], train[3:]
    m = gpmlip.SparseGP(soap, n_sparse=5, e0={"Cu": 0.0}).fit(first)
    m.update(second[:2], sparse_atoms=[(0, 0), (0, 3), (1, 5)])
    m.update(second[2:])
    ref = gpmlip.SparseGP(soap, e0={"Cu": 0.0}).fit(train, sparse_atoms=m.sparse_origin_)
    # the weights are large and cancel (|beta| ~ 1e4 with the smooth cutoff's similar
    # environments): compare them to 1e-6 and the predictions to 1e-8 eV
    np.testing.assert_allclose(m.posterior_.beta, ref.posterior_.beta, rtol=1e-6, atol=1e-10)
    atoms = emt_frames(1, seed=21)[0]
    a, b = m.predict(atoms), ref.predict(atoms)
    assert abs(a.energy - b.energy) < 1e-8
    np.testing.assert_allclose(a.forces, b.forces, atol=1e-8)
    np.testing.assert_allclose(a.local_variance, b.local_variance, atol=1e-8)


def test_update_by_variance_adds_sparse_points(model, train):
    m = gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU), n_sparse=4, e0={"Cu": 0.0}).fit(train[:2])
    before = m.n_sparse_points
    m.update(train[2:4], n_sparse=3)
    assert m.n_sparse_points == before + 3


@pytest.mark.parametrize("method", ["cur", "kmeans", "kmeans++", "random", "variance"])
def test_sparse_methods(train, method):
    m = gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU), n_sparse=10, sparse_method=method,
                        e0={"Cu": 0.0}).fit(train[:3])
    assert m.n_sparse_points == 10
    assert len({tuple(o) for o in m.sparse_origin_}) == 10


def test_bad_input_is_a_clear_error(train):
    soap = gpmlip.SOAP(**SMALL_CU)
    with pytest.raises(gpmlip.NotFittedError, match="fit"):
        gpmlip.SparseGP(soap).predict(train[0])
    with pytest.raises(gpmlip.DataError, match="n_sparse"):
        gpmlip.SparseGP(soap, n_sparse=1000, e0={"Cu": 0.0}).fit(train[:2])
    bad = train[0].copy()
    bad.calc = None
    with pytest.raises(gpmlip.DataError, match="no energy"):
        gpmlip.SparseGP(soap, e0={"Cu": 0.0}).fit([bad])
    nan = emt_frames(1, seed=4, labels=("energy",))[0]
    nan.calc.results["energy"] = float("nan")
    with pytest.raises(gpmlip.DataError):
        gpmlip.SparseGP(soap, e0={"Cu": 0.0}).fit([nan])
    m = gpmlip.SparseGP(soap, n_sparse=4, e0={"Cu": 0.0}).fit(train[:2])
    au = train[0].copy()
    au.numbers[0] = 79
    with pytest.raises(gpmlip.UnknownSpeciesError):
        m.predict(au)
    with pytest.raises(gpmlip.SettingsError):
        gpmlip.SparseGP(soap, force_sigma=-1).fit(train[:2])


def test_species_without_sparse_points_is_an_error():
    frames = emt_frames(2, seed=0)
    m = gpmlip.SparseGP(gpmlip.SOAP(**SMALL_MULTI), n_sparse=4, e0={"Cu": 0.0, "Au": 0.0})
    m.fit(frames)
    alloy = emt_frames(1, seed=1, alloy=True)[0]
    with pytest.raises(gpmlip.UnknownSpeciesError, match="Au"):
        m.predict(alloy)


def test_failed_update_leaves_the_model_unchanged(train, monkeypatch):
    m = gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU), n_sparse=4, e0={"Cu": 0.0}).fit(train[:2])
    atoms = train[5]
    before = m.predict(atoms)
    import gpmlip.gp.terms as terms_module

    def crash(*args, **kwargs):
        yield from ()
        raise RuntimeError("worker died")

    monkeypatch.setattr(terms_module, "compute_rows", crash)
    with pytest.raises(RuntimeError, match="worker died"):
        m.update(train[2:4], n_sparse=2)
    monkeypatch.undo()
    after = m.predict(atoms)
    assert m.n_sparse_points == 4 and len(m.frames_) == 2
    assert after.energy == before.energy
    m.update(train[2:4], n_sparse=2)          # and it still works
    assert m.n_sparse_points == 6


def test_sparse_atoms_one_format_in_fit_and_update(train):
    soap = gpmlip.SOAP(**SMALL_CU)
    m = gpmlip.SparseGP(soap, n_sparse=3, e0={"Cu": 0.0}).fit(train[:2])
    before = m.n_sparse_points
    m.update(train[2:4], sparse_atoms=[(1, 3)])     # frame 1 of those passed, atom 3
    assert m.n_sparse_points == before + 1
    np.testing.assert_array_equal(m.sparse_origin_[-1], [3, 3])
    m.update(train[4:5], n_sparse=3)                # three points, not atom 3
    assert m.n_sparse_points == before + 4
    with pytest.raises(SettingsError, match="not both"):
        m.update(train[5:6], n_sparse=2, sparse_atoms=[(0, 1)])
    with pytest.raises(SettingsError, match="pairs"):
        m.update(train[5:6], sparse_atoms=[3])
    with pytest.raises(DataError, match="does not exist"):
        m.update(train[5:6], sparse_atoms=[(1, 0)])
    with pytest.raises(TypeError):
        m.update(train[5:6], [3])                   # no positional sparse argument
    assert m.n_sparse_points == before + 4 and len(m.frames_) == 5


def test_update_refits_e0_when_a_new_composition_arrives():
    """An on-the-fly run that starts on Cu: its first CuAu label refits e0, and the model is
    then the fresh fit on the union (same sparse points); within that composition space e0
    then stays put."""
    soap = gpmlip.SOAP(**SMALL_MULTI)
    cu = emt_frames(2, seed=30)
    cuau = emt_frames(2, seed=31, alloy=True)
    m = gpmlip.SparseGP(soap, n_sparse=4).fit(cu[:1])
    assert m.e0_.method == "fit" and set(m.e0_.energies) == {29}
    m.update(cu[1:], n_sparse=2)
    e0_cu = dict(m.e0_.energies)
    m.update(cuau[:1], n_sparse=3)
    union = cu + cuau[:1]
    ref = gpmlip.SparseGP(soap).fit(union, sparse_atoms=m.sparse_origin_)
    assert set(m.e0_.energies) == {29, 79} and m.e0_.energies[29] != e0_cu[29]
    assert m.e0_.energies == pytest.approx(ref.e0_.energies, rel=1e-12)
    probe = emt_frames(1, seed=32, alloy=True)[0]
    a, b = m.predict(probe), ref.predict(probe)
    assert abs(a.energy - b.energy) < 1e-8
    np.testing.assert_allclose(a.energies, b.energies, atol=1e-8)
    np.testing.assert_allclose(a.forces, b.forces, atol=1e-8)
    np.testing.assert_allclose(a.local_variance, b.local_variance, atol=1e-8)
    e0 = dict(m.e0_.energies)
    m.update(cuau[1:])                 # same composition space: e0 is kept
    assert m.e0_.energies == e0


def test_inverse_factors_equal_triangular_solves(model, train):
    """Variances from the precomputed inverse factors equal the two triangular solves."""
    import dataclasses

    post = model.posterior_
    solves = dataclasses.replace(post, column_variance=None, _matrix=None)
    env = model.descriptor.describe(train[0])
    k = local_kernel(env.features, env.species, model.sparse_, model.zeta)
    sigma2 = np.full(len(k), model.signal_variance_[29])
    np.testing.assert_allclose(post.variance(k, sigma2), solves.variance(k, sigma2),
                               rtol=1e-7, atol=1e-12 * sigma2.max())


def test_pair_energies_refuse_coincident_atoms_and_nan_vectors():
    """The pair-list entry point (LAMMPS's) refuses what predict refuses."""
    from gpmlip.errors import StructureError

    model = gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU), n_sparse=5, e0={"Cu": 0.0}).fit(
        emt_frames(2, seed=4))
    z = np.array([29, 29])
    ok = model.pair_energies(z, [0, 1], [1, 0], [[2.5, 0, 0], [-2.5, 0, 0]], [29, 29])
    assert np.isfinite(ok.energies).all()
    with pytest.raises(StructureError, match="atoms overlap: centre 0 and neighbour 1"):
        model.pair_energies(z, [0, 1], [1, 0], [[1e-3, 0, 0], [-1e-3, 0, 0]], [29, 29])
    with pytest.raises(StructureError, match="NaN or infinite"):
        model.pair_energies(z, [0, 1], [1, 0], [[np.nan, 0, 0], [-2.5, 0, 0]], [29, 29])
