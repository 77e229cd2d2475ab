"""The stress std: its prior against finite differences of the kernel under two strains, its
DTC parts, its calibration, files and calculator results."""

from __future__ import annotations

import numpy as np
import pytest

import gpmlip
from gpmlip.errors import StructureError
from gpmlip.gp.covariance import VOIGT, strain_prior_variance
from gpmlip.gp.kernels import normalise
from gpmlip.gp.stress_std import stress_variance_parts
from gpmlip.gp.twobody import TwoBody, pair_geometry, strain_prior

from conftest import SMALL_MULTI, emt_frames, triclinic_three_species


def _strained(atoms, v: int, t: float):
    """``atoms`` under the symmetric strain of Voigt component ``v`` with amplitude ``t``
    (d/dt is the symmetrised strain derivative the stress uses)."""
    a, b = VOIGT[v]
    eps = np.zeros((3, 3))
    eps[a, b] += 0.5 * t
    eps[b, a] += 0.5 * t
    out = atoms.copy()
    out.set_cell(atoms.cell.array @ (np.eye(3) + eps).T, scale_atoms=True)
    return out


def _mixed(f, h):
    """d2 f(s, t) / ds dt at 0 by central differences."""
    return (f(h, h) - f(h, -h) - f(-h, h) + f(-h, -h)) / (4 * h * h)


@pytest.mark.parametrize("zeta", [1, 2, 4])
def test_soap_strain_prior_is_the_mixed_derivative_of_the_kernel(zeta):
    atoms = triclinic_three_species().repeat((2, 1, 1))
    soap = gpmlip.SOAP(species=["O", "Al", "Si"], r_cut=3.5, n_max=4, l_max=3)
    sigma2 = {8: 0.7, 13: 1.3, 14: 0.4}
    env = soap.describe(atoms, gradients=True)
    prior = strain_prior_variance(env, zeta, sigma2)
    z = atoms.numbers
    w = np.array([sigma2[int(x)] for x in z])
    for v in range(6):
        def cov(s, t):
            q1 = normalise(soap.describe(_strained(atoms, v, s)).features)
            q2 = normalise(soap.describe(_strained(atoms, v, t)).features)
            same = z[:, None] == z[None, :]
            return float((w[:, None] * same * (q1 @ q2.T) ** zeta).sum())
        assert prior[v] == pytest.approx(_mixed(cov, 1e-4), rel=2e-5, abs=1e-9)


def test_two_body_strain_prior_is_the_mixed_derivative_of_its_kernel():
    atoms = emt_frames(1, seed=3, alloy=True)[0]
    soap = gpmlip.SOAP(**SMALL_MULTI)
    term = TwoBody(length_scale=0.7).validated(soap.neighbour_cutoff)
    prior = strain_prior(term, soap.pair_list(atoms))
    for v in range(6):
        def cov(s, t):
            _, r1, k1 = pair_geometry(term, soap.pair_list(_strained(atoms, v, s)))
            _, r2, k2 = pair_geometry(term, soap.pair_list(_strained(atoms, v, t)))
            return 0.25 * float(term.kernel(r1, k1, r2, k2).sum())
        assert prior[v] == pytest.approx(_mixed(cov, 1e-4), rel=1e-5)


@pytest.fixture(scope="module", params=["soap", "soap+2b"])
def model(request):
    frames = emt_frames(6, seed=11, alloy=True)
    extra = {"two_body": TwoBody(n_sparse=6)} if request.param == "soap+2b" else {}
    return gpmlip.SparseGP(gpmlip.SOAP(**SMALL_MULTI), n_sparse=15,
                           e0={"Cu": 0.0, "Au": 0.0}, **extra).fit(frames)


def test_stress_std_parts_and_their_sum(model):
    atoms = emt_frames(1, seed=12, alloy=True)[0]
    parts = stress_variance_parts(model, atoms)
    assert parts.shape == (6, 3) and np.all(parts >= 0)
    pred = model.predict(atoms, stress_std=True)
    raw = np.sqrt(parts[:, 0] + parts[:, 1])
    assert pred.stress_std.shape == (3, 3) and np.allclose(pred.stress_std, pred.stress_std.T)
    assert [pred.stress_std_raw[a, b] for a, b in VOIGT] == pytest.approx(raw, rel=1e-12)
    # a structure far from the data (compressed by 6 %) is more uncertain
    far = atoms.copy()
    far.set_cell(atoms.cell.array * 0.94, scale_atoms=True)
    assert stress_variance_parts(model, far)[:, 0].sum() > parts[:, 0].sum()


def test_stress_calibration_from_leave_one_out_survives_save_and_load(model, tmp_path):
    assert model.stress_calibration_ is None
    atoms = emt_frames(1, seed=12, alloy=True)[0]
    raw = model.predict(atoms, stress_std=True).stress_std
    model.calibrate()
    cal = model.stress_calibration_
    assert cal is not None and cal.quantity == "stress" and cal.source == "leave-one-out"
    std = model.predict(atoms, stress_std=True).stress_std
    expected = np.sqrt(cal.variance(stress_variance_parts(model, atoms)))
    np.testing.assert_allclose([std[a, b] for a, b in VOIGT], expected, rtol=1e-10)
    assert not np.allclose(std, raw)
    model.save(tmp_path / "m.npz")
    back = gpmlip.load_model(tmp_path / "m.npz")
    assert back.stress_calibration_.to_dict() == cal.to_dict()
    np.testing.assert_allclose(back.predict(atoms, stress_std=True).stress_std, std,
                               rtol=1e-10)


def test_stress_std_needs_a_cell(model):
    molecule = emt_frames(1, seed=12, alloy=True)[0]
    molecule.pbc = False
    with pytest.raises(StructureError, match="periodic cell"):
        model.predict(molecule, stress=False, stress_std=True)


def test_the_calculator_reports_energy_and_stress_error_bars(model):
    from ase.calculators.calculator import PropertyNotImplementedError

    atoms = emt_frames(1, seed=12, alloy=True)[0]
    atoms.calc = gpmlip.GPCalculator(model, error_bars=True)
    stress_std = atoms.calc.get_property("stress_std", atoms)
    pred = model.predict(atoms, energy_std=True, stress_std=True)
    assert stress_std == pytest.approx([pred.stress_std[a, b] for a, b in VOIGT], rel=1e-12)
    assert atoms.calc.get_property("energy_std", atoms) == pytest.approx(pred.energy_std)
    atoms.calc = gpmlip.GPCalculator(model)
    with pytest.raises(PropertyNotImplementedError, match="error_bars=True"):
        atoms.calc.get_property("stress_std", atoms)


def test_error_bars_after_the_forces_are_known(model):
    atoms = emt_frames(1, seed=13, alloy=True)[0]
    atoms.calc = gpmlip.GPCalculator(model, error_bars=True)
    atoms.get_forces()
    assert "stress_std" not in atoms.calc.results      # plain MD pays nothing for them
    assert atoms.calc.get_property("stress_std", atoms).shape == (6,)
    assert atoms.calc.get_property("energy_std", atoms) > 0


def test_components_fixed_by_symmetry_do_not_enter_the_calibration():
    """A perfect cubic cell's shear has a std of round-off only; its label's tiny deviation
    (noise) must not blow the stress calibration up (it gave a scale of 1e13 on Zuo Mo)."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = emt_frames(5, seed=21)
    perfect = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    perfect.calc = EMT()
    stress = perfect.get_stress() + np.array([0, 0, 0, 2e-5, -1e-5, 3e-5])   # noisy shear
    perfect.calc = SinglePointCalculator(perfect, energy=perfect.get_potential_energy(),
                                         forces=perfect.get_forces(), stress=stress)
    model = gpmlip.SparseGP(gpmlip.SOAP(species=["Cu"], r_cut=4.0, n_max=4, l_max=3),
                            n_sparse=20, e0={"Cu": 0.0}).fit(frames + [perfect])
    parts = stress_variance_parts(model, perfect)
    shear = np.sqrt(parts[3:, 0] + parts[3:, 1])
    assert shear.max() < 1e-8 * np.sqrt(parts[:3, 0] + parts[:3, 1]).min()
    model.calibrate(max_frames=None)
    assert max(model.stress_calibration_.weights.values()) < 1e3
