"""Regenerate data/cu_emt_train.extxyz and data/cu_emt_test.extxyz (EMT-labelled 32-atom Cu).

    .venv/bin/python data/make_cu_emt.py

Three config_types: ``md300`` and ``md900`` (Langevin MD snapshots at 300 K and 900 K, 4 fs
steps, one frame every 40 steps) and ``strained`` (the perfect cell under random strains up to
3 %, rattled 0.05 Å).  Energies, forces and stresses from ASE's EMT; deterministic seeds.
"""

from pathlib import Path

import ase.io
import numpy as np
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.langevin import Langevin

HERE = Path(__file__).resolve().parent


def labelled(atoms, config_type):
    frame = atoms.copy()
    calc = EMT()
    frame.calc = calc
    values = {"energy": frame.get_potential_energy(), "forces": frame.get_forces(),
              "stress": frame.get_stress()}
    frame.calc = SinglePointCalculator(frame, **values)
    frame.info["config_type"] = config_type
    return frame


def md(temperature, n, seed):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    atoms.calc = EMT()
    dyn = Langevin(atoms, 4 * units.fs, temperature_K=temperature, friction=0.05 / units.fs,
                   fixcm=False, rng=np.random.default_rng(seed))
    out = []
    for _ in range(n):
        dyn.run(40)
        out.append(labelled(atoms, f"md{temperature}"))
    return out


def strained(n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
        eps = 0.03 * rng.uniform(-1, 1, (3, 3))
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.5 * (eps + eps.T)), scale_atoms=True)
        atoms.positions += 0.05 * rng.standard_normal(atoms.positions.shape)
        out.append(labelled(atoms, "strained"))
    return out


def main():
    train = md(300, 8, 0) + md(900, 8, 1) + strained(8, 2)
    test = md(300, 3, 10) + md(900, 3, 11) + strained(3, 12)
    ase.io.write(HERE / "cu_emt_train.extxyz", train, format="extxyz")
    ase.io.write(HERE / "cu_emt_test.extxyz", test, format="extxyz")
    print(f"wrote {len(train)} training and {len(test)} test frames to {HERE}")


if __name__ == "__main__":
    main()
