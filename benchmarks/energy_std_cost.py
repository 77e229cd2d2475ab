"""What the energy std costs (issue 29 item 3): a prediction with and without it.

A Cu model (EMT, SOAP 4.5 / 6 / 4, 300 sparse points) fitted on 12 rattled 108-atom cells; on
fresh rattled cells of 108, 256 and 500 atoms, one thread, the median of ``--repeats`` calls of

* ``predict(atoms, variance=False)``: energy, forces, stress (what MD uses);
* ``predict(atoms)``: plus the local-energy variances;
* ``predict(atoms, energy_std=True)``: plus the std of the total energy;
* ``predict(atoms, force_std=True)``: the force std, for scale;

and the ratio of each to the first, in one run (ratios count on a noisy machine).

Run from the repository root::

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 .venv/bin/python benchmarks/energy_std_cost.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

import gpmlip

HERE = Path(__file__).resolve().parent


def cells(n_cells: int, repeat: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_cells):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)
        atoms.positions += rng.normal(0, 0.1, atoms.positions.shape)
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(),
                                           forces=atoms.get_forces(),
                                           stress=atoms.get_stress())
        out.append(atoms)
    return out


def median_seconds(fn, repeats: int) -> float:
    fn()                                   # warm (compiled engine, caches)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(HERE / "results" / "energy_std_cost.json"))
    args = p.parse_args()
    model = gpmlip.SparseGP(gpmlip.SOAP(["Cu"], 4.5, 6, 4), n_sparse=300, n_jobs=1,
                            e0={"Cu": 0.0}).fit(cells(12, 3, 0))
    results = []
    for repeat in (3, 4, 5):      # 108, 256, 500 atoms
        atoms = cells(1, repeat, 100 + repeat)[0]
        row = {"atoms": len(atoms)}
        for name, kw in (("energy_forces", {"variance": False}), ("local_variances", {}),
                         ("energy_std", {"energy_std": True}), ("force_std", {"force_std": True})):
            row[name + "_ms_per_atom"] = 1000 * median_seconds(
                lambda: model.predict(atoms, **kw), args.repeats) / len(atoms)
        base = row["energy_forces_ms_per_atom"]
        for name in ("local_variances", "energy_std", "force_std"):
            row[name + "_ratio"] = row[name + "_ms_per_atom"] / base
        results.append(row)
        print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": "benchmarks/energy_std_cost.py", "sparse_points":
                               model.n_sparse_points, "results": results}, indent=1))


if __name__ == "__main__":
    main()
