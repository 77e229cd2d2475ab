"""Reusable physics checks for descriptors (and later models): one call per property.

Each ``check_*`` function computes what it compares, raises ``AssertionError`` with the measured
error when the check fails, and returns the measured error so callers can report it.  A descriptor
here is anything with ``describe(atoms, gradients=bool) -> Environments``.

Examples
--------
>>> from gpmlip.testing import check_jacobian, check_invariances
>>> check_jacobian(soap, atoms)          # doctest: +SKIP
>>> check_invariances(soap, atoms)       # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from ase import Atoms
from scipy.spatial.transform import Rotation

from gpmlip.descriptors.protocol import Descriptor


def _features(descriptor: Descriptor, atoms: Atoms) -> np.ndarray:
    return descriptor.describe(atoms, gradients=False).features


def finite_difference_jacobian(
    fn: Callable[[Atoms], np.ndarray],
    atoms: Atoms,
    h: float = 1e-4,
    atom_indices: Sequence[int] | None = None,
) -> np.ndarray:
    """Central finite-difference derivative of ``fn(atoms)`` with respect to positions.

    Parameters
    ----------
    fn : callable
        Maps an ``Atoms`` to an array of any shape ``S``.
    atoms : ase.Atoms
        Not modified.
    h : float
        Displacement in Å.
    atom_indices : sequence of int, optional
        Atoms to displace (default: all).

    Returns
    -------
    ndarray, shape (len(atom_indices), 3) + S
    """
    idx = range(len(atoms)) if atom_indices is None else atom_indices
    out = []
    for j in idx:
        rows = []
        for a in range(3):
            vals = []
            for sign in (1.0, -1.0):
                moved = atoms.copy()
                moved.positions[j, a] += sign * h
                vals.append(np.asarray(fn(moved), dtype=float))
            rows.append((vals[0] - vals[1]) / (2 * h))
        out.append(np.stack(rows))
    return np.stack(out)


def finite_difference_strain(
    fn: Callable[[Atoms], np.ndarray], atoms: Atoms, h: float = 1e-5
) -> np.ndarray:
    """Central finite-difference derivative of ``fn`` under homogeneous strain ``r -> (1 + eps) r``.

    Cell and positions are both deformed.  Returns shape (3, 3) + S, index ``[a, b]`` for
    ``eps_ab``.
    """
    out = np.empty((3, 3), dtype=object)
    for a in range(3):
        for b in range(3):
            vals = []
            for sign in (1.0, -1.0):
                eps = np.eye(3)
                eps[a, b] += sign * h
                moved = atoms.copy()
                moved.set_cell(atoms.cell.array @ eps.T, scale_atoms=False)
                moved.positions = atoms.positions @ eps.T
                vals.append(np.asarray(fn(moved), dtype=float))
            out[a, b] = (vals[0] - vals[1]) / (2 * h)
    return np.array(out.tolist())


def _relative_error(actual: np.ndarray, expected: np.ndarray, floor: float = 1e-300) -> float:
    scale = max(np.abs(expected).max(), floor)
    return float(np.abs(actual - expected).max() / scale)


def check_features(descriptor: Descriptor, atoms: Atoms, reference: np.ndarray, rtol: float = 1e-8) -> float:
    """Compare the features (with and without gradients) with a reference array."""
    err = 0.0
    for gradients in (False, True):
        env = descriptor.describe(atoms, gradients=gradients)
        e = _relative_error(env.features, reference)
        assert e <= rtol, f"features (gradients={gradients}) differ from reference: rel {e:.3g}"
        err = max(err, e)
    return err


def check_jacobian(
    descriptor,
    atoms: Atoms,
    rtol: float = 1e-6,
    h: float = 1e-4,
    atom_indices: Sequence[int] | None = None,
) -> float:
    """Analytical Jacobian d q_i / d r_j against central finite differences.

    The error is the largest absolute deviation over all (i, j, component, feature) divided by the
    largest Jacobian entry (or by 1e-3 x the largest feature, when the Jacobian vanishes as in a
    1-atom cell).  Returns it; raises ``AssertionError`` if it exceeds ``rtol``.
    """
    idx = list(range(len(atoms))) if atom_indices is None else list(atom_indices)
    env = descriptor.describe(atoms, gradients=True)
    dense = env.dense_jacobian()[:, idx]  # (n_centres, len(idx), 3, F)
    fd = finite_difference_jacobian(lambda a: _features(descriptor, a), atoms, h, idx)
    fd = fd.transpose(2, 0, 1, 3)  # (len(idx), 3, n_centres, F) -> (n_centres, len(idx), 3, F)
    err = _relative_error(dense, fd, floor=1e-3 * np.abs(env.features).max())
    assert err <= rtol, f"Jacobian differs from finite differences: rel {err:.3g} > {rtol}"
    return err


def check_strain_jacobian(descriptor: Descriptor, atoms: Atoms, rtol: float = 1e-6, h: float = 1e-5) -> float:
    """Strain Jacobian d q_i / d eps_ab against finite differences of a strained structure."""
    env = descriptor.describe(atoms, gradients=True)
    fd = finite_difference_strain(lambda a: _features(descriptor, a), atoms, h)  # (3,3,n,F)
    err = _relative_error(env.strain_jacobian, fd.transpose(2, 0, 1, 3))
    assert err <= rtol, f"strain Jacobian differs from finite differences: rel {err:.3g} > {rtol}"
    return err


def _transform(atoms: Atoms, rotation: np.ndarray, shift: np.ndarray) -> Atoms:
    moved = atoms.copy()
    moved.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
    moved.positions = atoms.positions @ rotation.T + shift
    return moved


def check_invariances(
    descriptor, atoms: Atoms, tol: float = 1e-10, seed: int = 0, gradients: bool = True
) -> dict[str, float]:
    """Translation, rotation, same-species permutation and wrapping invariance.

    Features must be invariant; with ``gradients`` the Jacobian must rotate as a vector
    (``J' = R J``) and be permuted with the atoms.  Errors are relative to the largest entry
    (Jacobians: or to 1e-3 x the largest feature, when the Jacobian vanishes as in a 1-atom cell).

    Returns
    -------
    dict
        The measured relative error of each check.
    """
    rng = np.random.default_rng(seed)
    ref = descriptor.describe(atoms, gradients=gradients)
    errors: dict[str, float] = {}

    def compare(name: str, env, perm=None, rotation=None) -> None:
        p = np.arange(len(atoms)) if perm is None else perm
        errors[name] = _relative_error(env.features, ref.features[p])
        if gradients:
            r = np.eye(3) if rotation is None else rotation
            expected = np.einsum("ab,ijbf->ijaf", r, ref.dense_jacobian()[p][:, p])
            errors[name + " (Jacobian)"] = _relative_error(
                env.dense_jacobian(), expected, floor=1e-3 * np.abs(ref.features).max()
            )

    compare("translation", descriptor.describe(
        _transform(atoms, np.eye(3), rng.normal(size=3) * 3.0), gradients=gradients))
    rot = Rotation.random(random_state=seed).as_matrix()
    compare("rotation", descriptor.describe(
        _transform(atoms, rot, np.zeros(3)), gradients=gradients), rotation=rot)

    perm = np.arange(len(atoms))
    for z in np.unique(atoms.numbers):
        members = np.nonzero(atoms.numbers == z)[0]
        perm[members] = rng.permutation(members)
    compare("permutation", descriptor.describe(atoms[perm], gradients=gradients), perm=perm)

    if atoms.pbc.any():
        shifted = atoms.copy()
        lattice = rng.integers(-2, 3, size=(len(atoms), 3)) * atoms.pbc
        shifted.positions += lattice @ atoms.cell.array
        compare("lattice shift", descriptor.describe(shifted, gradients=gradients))
        wrapped = atoms.copy()
        wrapped.wrap()
        compare("wrap", descriptor.describe(wrapped, gradients=gradients))

    bad = {k: v for k, v in errors.items() if v > tol}
    assert not bad, f"invariance broken beyond {tol}: {bad}"
    return errors


def check_forces(predict: Callable[[Atoms], object], atoms: Atoms, rtol: float = 1e-5,
                 h: float = 1e-4) -> float:
    """Forces equal minus the finite-difference gradient of the energy.

    ``predict(atoms)`` returns an object with ``energy`` and ``forces`` (e.g. ``model.predict``).
    """
    forces = predict(atoms).forces
    grad = finite_difference_jacobian(lambda a: np.array(predict(a).energy), atoms, h)
    err = _relative_error(forces, -grad)
    if err > rtol:
        raise AssertionError(f"forces differ from -dE/dr (finite differences) by {err:.2e} "
                             f"relative (> {rtol:g})")
    return err


def check_stress(predict: Callable[[Atoms], object], atoms: Atoms, rtol: float = 1e-5,
                 h: float = 1e-5) -> float:
    """Stress (3x3, ASE sign) equals ``(1/V) dE/d eps`` by finite differences under strain."""
    stress = predict(atoms).stress
    expected = finite_difference_strain(lambda a: np.array(predict(a).energy), atoms, h)
    expected = expected / abs(atoms.cell.volume)
    err = _relative_error(stress, 0.5 * (expected + expected.T))
    if err > rtol:
        raise AssertionError(f"stress differs from (1/V) dE/d(strain) (finite differences) by "
                             f"{err:.2e} relative (> {rtol:g})")
    return err


def emt_md_frames(atoms: Atoms, n: int, *, temperature: float, every: int, seed: int,
                  dt_fs: float = 2.0, warmup: int = 150, info: dict | None = None,
                  rattle: float = 0.05) -> list[Atoms]:
    """``n`` frames of EMT Langevin MD from ``atoms`` (rattled by ``rattle`` Å with ``seed``;
    0: not rattled), one every ``every`` steps of ``dt_fs`` after ``warmup`` steps, labelled
    (energy, forces) on a single-point calculator; ``info`` goes into each frame's ``info``.
    For tests and benchmarks that need correlated MD frames."""
    from ase import units
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.md.langevin import Langevin

    atoms = atoms.copy()
    if rattle:
        atoms.rattle(rattle, seed=seed)
    atoms.calc = EMT()
    dyn = Langevin(atoms, dt_fs * units.fs, temperature_K=temperature,
                   friction=0.02 / units.fs, fixcm=False, rng=np.random.default_rng(seed))
    dyn.run(warmup)
    out = []
    for _ in range(n):
        dyn.run(every)
        frame = atoms.copy()
        frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy(),
                                           forces=atoms.get_forces())
        frame.info.update(info or {})
        out.append(frame)
    return out
