"""Describe an EMT-rattled Cu cell with SOAP and exact Jacobians, and print a timing table.

This is what the README's first command runs until the on-the-fly learning demo exists.

    python workflows/descriptor_demo.py [--atoms 108] [--jobs 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.md.langevin import Langevin

import gpmlip
from gpmlip.descriptors import find_neighbours
from gpmlip.testing import finite_difference_jacobian


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--atoms", type=int, default=108, help="4 k^3 atoms (default 108)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes for Jacobians")
    args = parser.parse_args()

    rep = round((args.atoms / 4) ** (1 / 3))
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(rep)
    atoms.rattle(0.1, seed=0)
    atoms.calc = EMT()
    t = time.perf_counter()
    Langevin(atoms, 2 * units.fs, temperature_K=800, friction=0.02, fixcm=False,
             rng=np.random.default_rng(0)).run(50)
    t_md = time.perf_counter() - t
    print(f"{len(atoms)}-atom fcc Cu, 50 EMT Langevin steps at 800 K ({t_md:.2f} s); "
          f"EMT energy {atoms.get_potential_energy():.4f} eV")

    soap = gpmlip.SOAP(["Cu"], r_cut=5.0, n_max=8, l_max=6, sigma=0.5, n_jobs=args.jobs)
    print(soap, f"-> {soap.n_features} features per atom")
    rows = []
    t = time.perf_counter()
    pairs = find_neighbours(atoms.positions, atoms.cell.array, atoms.pbc, soap.neighbour_cutoff)
    rows.append(("neighbour search", time.perf_counter() - t))
    t = time.perf_counter()
    features = soap.describe(atoms).features
    rows.append(("features", time.perf_counter() - t))
    env = soap.describe(atoms, gradients=True)  # warm-up: starts the worker processes
    times = []
    for _ in range(3):
        del env
        t = time.perf_counter()
        env = soap.describe(atoms, gradients=True)
        times.append(time.perf_counter() - t)
    rows.append((f"features + Jacobians ({args.jobs} proc, median)", float(np.median(times))))
    soap.close()

    print(f"\n{'step':<40}{'s':>9}{'ms/atom':>10}")
    for name, sec in rows:
        print(f"{name:<40}{sec:>9.3f}{1e3 * sec / len(atoms):>10.3f}")
    print(f"\nneighbours within r_cut + padding ({soap.neighbour_cutoff:.2f} Å): "
          f"{len(pairs.centre) / len(atoms):.1f} per atom")
    print(f"Jacobian: {len(env.pair_centre)} (centre, atom) pairs, {env.nbytes / 1e6:.1f} MB")
    print(f"features identical with and without gradients: "
          f"max |diff| = {np.abs(env.features - features).max():.1e}")

    # Spot check: one atom's column of the Jacobian against central finite differences.
    fd = finite_difference_jacobian(lambda a: soap.describe(a).features, atoms, 1e-4, [5])[0]
    exact = env.dense_jacobian()[:, 5].transpose(1, 0, 2)
    err = np.abs(fd - exact).max() / np.abs(exact).max()
    print(f"Jacobian column of atom 5 vs finite differences: relative error {err:.1e}")


if __name__ == "__main__":
    main()
