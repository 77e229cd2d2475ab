"""Fit a sparse GP to EMT copper, check it on held-out frames, then run MD with it.

Run from the repository root::

    .venv/bin/python workflows/fit_demo.py [--frames 24] [--steps 200]

What it does: EMT Langevin MD of a 32-atom fcc Cu cell at 300 K and 1000 K gives labelled frames
(energy, forces, stress); a ``gpmlip.SparseGP`` is fitted on them; test errors against EMT are
printed together with the predicted uncertainties; the model then drives NVE MD (velocity Verlet,
1 fs) through ``gpmlip.GPCalculator`` and the total-energy drift is reported.  The model file is
saved and read back.  On-the-fly learning (the model asking EMT for labels when unsure) builds on
this and is the next step.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary
try:  # ase >= 3.29
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # older ase
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta
from ase.md.verlet import VelocityVerlet

import gpmlip


def emt_frames(n: int, temperature: float, seed: int) -> list:
    """``n`` EMT-labelled snapshots, 20 fs apart, from Langevin MD at ``temperature``."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    atoms.calc = EMT()
    thermalize_momenta(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
    dyn = Langevin(atoms, 2 * units.fs, temperature_K=temperature, friction=0.02, fixcm=False,
                   rng=np.random.default_rng(seed + 1))
    dyn.run(50)
    frames = []
    for _ in range(n):
        dyn.run(10)
        snap = atoms.copy()
        snap.calc = SinglePointCalculator(snap, energy=atoms.get_potential_energy(),
                                          forces=atoms.get_forces(), stress=atoms.get_stress())
        frames.append(snap)
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=24, help="training frames (half per T)")
    parser.add_argument("--steps", type=int, default=200, help="NVE steps with the model")
    parser.add_argument("--n-sparse", type=int, default=100)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    half = args.frames // 2
    train = emt_frames(half, 300, 0) + emt_frames(half, 1000, 10)
    test = emt_frames(4, 300, 100) + emt_frames(4, 1000, 110)
    soap = gpmlip.SOAP(["Cu"], r_cut=4.5, n_max=6, l_max=4, sigma=0.5, n_jobs=2)
    model = gpmlip.SparseGP(soap, zeta=4, n_sparse=args.n_sparse, e0={"Cu": 0.0})
    t0 = time.perf_counter()
    model.fit(train)
    fit_time = time.perf_counter() - t0
    hyper = model.optimise_hyperparameters()

    de, df, unc = [], [], []
    for atoms in test:
        p = model.predict(atoms)
        de.append((p.energy - atoms.get_potential_energy()) / len(atoms))
        df.append(p.forces - atoms.get_forces())
        unc.append(p.max_uncertainty)
    print(f"fitted {len(train)} frames, {model.n_sparse_points} sparse points in {fit_time:.1f} s")
    print("optimised hyper-parameters: "
          + ", ".join(f"{k} {v:.3g}" for k, v in hyper.values.items()))
    print(f"test energy MAE {1e3 * np.mean(np.abs(de)):.2f} meV/atom, force RMSE "
          f"{1e3 * np.sqrt(np.mean(np.square(df))):.1f} meV/Å, max uncertainty "
          f"{max(unc):.3f} (sqrt of normalised variance)")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cu.npz"
        model.save(path)
        model = gpmlip.load_model(path, n_jobs=2)
    atoms = test[-1].copy()
    atoms.calc = gpmlip.GPCalculator(model)
    thermalize_momenta(atoms, temperature_K=600, rng=np.random.default_rng(7))
    Stationary(atoms)
    energies = []
    dyn = VelocityVerlet(atoms, 1 * units.fs)
    dyn.attach(lambda: energies.append(atoms.get_total_energy() / len(atoms)), interval=5)
    t0 = time.perf_counter()
    dyn.run(args.steps)
    per_step = (time.perf_counter() - t0) / args.steps
    e = np.array(energies)
    drift = np.polyfit(np.arange(len(e)) * 5e-3, e, 1)[0]
    print(f"NVE with the model: {args.steps} steps of 1 fs, {1e3 * per_step:.0f} ms per step; "
          f"total energy drift {1e3 * drift:.2f} meV/atom/ps, spread "
          f"{1e3 * np.ptp(e):.2f} meV/atom; final max uncertainty "
          f"{atoms.calc.results['max_uncertainty']:.3f}")


if __name__ == "__main__":
    main()
