"""Short range (issue 17): a 100 eV collision no training frame covered, with and without ZBL.

Truth: EMT + ZBL (gpmlip's ZBL, inner 1.0 Å, outer 2.0 Å: zero at every distance the training MD
visits).  Training: 32-atom fcc Cu, Langevin MD with the truth at 300, 600, 900 and 1200 K, 8
frames each (energies, forces, stress).  Two models fitted on the same frames: ``plain`` (no
baseline) and ``zbl`` (``baseline={"name": "zbl", "inner": 1.0, "outer": 2.0}``).  Event: in a
108-atom cell one atom is sent at ``--energy`` eV (default 100) head-on towards its nearest
neighbour along [110]; NVE (velocity Verlet, 0.05 fs) with the truth and with each model.
Reported: closest approach of the collision pair in each run, and the energy error of each model
along the truth's trajectory (at the truth's closest approach, and the largest).

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 nice -n 10 .venv/bin/python \
        benchmarks/baseline_short_range.py [--energy 100] [--out benchmarks/results/baseline_short_range.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.mixing import SumCalculator
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet

import gpmlip
from gpmlip.baselines import ZBL, BaselineCalculator
from gpmlip.errors import GpmlipError

ZBL_SPEC = {"name": "zbl", "inner": 1.0, "outer": 2.0}
SOAP = dict(species=["Cu"], r_cut=4.5, n_max=6, l_max=4, sigma=0.5)
RESULTS = Path(__file__).resolve().parent / "results"


def truth():
    return SumCalculator([EMT(), BaselineCalculator(ZBL(ZBL_SPEC["inner"], ZBL_SPEC["outer"]))])


def training_frames(per_temperature: int = 8) -> list:
    frames = []
    for k, temperature in enumerate((300, 600, 900, 1200)):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
        atoms.calc = truth()
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature,  # noqa
                                     rng=np.random.default_rng(k))
        dyn = Langevin(atoms, 2 * units.fs, temperature_K=temperature,
                       friction=0.02 / units.fs, rng=np.random.default_rng(10 + k))
        dyn.run(200)
        for _ in range(per_temperature):
            dyn.run(25)
            a = atoms.copy()
            a.calc = SinglePointCalculator(a, energy=atoms.get_potential_energy(),
                                           forces=atoms.get_forces(), stress=atoms.get_stress())
            frames.append(a)
    return frames


def min_distance(frames) -> float:
    from ase.neighborlist import neighbor_list

    return min(float(neighbor_list("d", a, 3.0).min()) for a in frames)


def collision_cell(energy_ev: float):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3)
    pka = 13                                   # an interior atom; its [110] neighbour is ahead
    target = pka + 0
    d = atoms.positions - atoms.positions[pka]
    d -= np.round(d @ np.linalg.inv(atoms.cell.array)) @ atoms.cell.array
    direction = np.array([1.0, 1.0, 0.0]) / np.sqrt(2)
    along = d @ direction
    perp = np.linalg.norm(d - np.outer(along, direction), axis=1)
    target = int(np.argmin(np.where((along > 0.5) & (perp < 0.1), along, np.inf)))
    mass = atoms.get_masses()[pka]
    momenta = np.zeros((len(atoms), 3))
    momenta[pka] = direction * np.sqrt(2 * mass * energy_ev)
    atoms.set_momenta(momenta)
    return atoms, pka, target


def run(atoms, calc, pair, steps: int, dt_fs: float):
    atoms = atoms.copy()
    atoms.set_momenta(atoms.get_momenta())
    atoms.calc = calc
    dyn = VelocityVerlet(atoms, dt_fs * units.fs)
    traj, dist, status = [], [], "ok"
    for step in range(steps):
        try:
            dyn.run(1)
        except GpmlipError as err:
            status = f"{type(err).__name__} at step {step}: {err}"
            break
        dist.append(float(atoms.get_distance(*pair, mic=True)))
        traj.append(atoms.copy())
    return traj, np.array(dist), status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--energy", type=float, default=100.0, help="eV given to one atom")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--dt", type=float, default=0.05, help="fs")
    parser.add_argument("--out", type=Path, default=RESULTS / "baseline_short_range.json")
    args = parser.parse_args()

    t0 = time.perf_counter()
    frames = training_frames()
    d_train = min_distance(frames)
    models = {"plain": gpmlip.SparseGP(gpmlip.SOAP(**SOAP), n_sparse=150),
              "zbl": gpmlip.SparseGP(gpmlip.SOAP(**SOAP), n_sparse=150, baseline=ZBL_SPEC)}
    for m in models.values():
        m.fit(frames)
    t_fit = time.perf_counter() - t0
    atoms, pka, target = collision_cell(args.energy)
    ref_traj, ref_d, _ = run(atoms, truth(), (pka, target), args.steps, args.dt)
    k_min = int(np.argmin(ref_d))
    ref_energy = np.array([_energy(truth(), a) for a in ref_traj])
    report = {"collision_energy_eV": args.energy, "timestep_fs": args.dt, "steps": args.steps,
              "training_frames": len(frames), "closest_pair_in_training_A": d_train,
              "zbl_settings": ZBL_SPEC, "truth": {
                  "closest_approach_A": float(ref_d.min()),
                  "energy_at_closest_eV": float(ref_energy[k_min] - ref_energy[0]),
                  # how much of it is EMT's own short-range repulsion (which no frame showed)
                  "emt_part_at_closest_eV": float(_energy(EMT(), ref_traj[k_min])
                                                  - _energy(EMT(), ref_traj[0]))},
              "fit_seconds": t_fit}
    for name, model in models.items():
        _, d, status = run(atoms, gpmlip.GPCalculator(model), (pka, target), args.steps, args.dt)
        err = np.array([model.predict(a, stress=False, variance=False).energy
                        for a in ref_traj]) - ref_energy
        report[name] = {"closest_approach_A": float(d.min()) if len(d) else None,
                        "closest_approach_error_A": float(d.min() - ref_d.min()) if len(d)
                        else None,
                        "status": status,
                        "energy_error_at_truth_closest_eV": float(err[k_min]),
                        "max_abs_energy_error_on_truth_path_eV": float(np.abs(err).max()),
                        "energy_error_in_training_range_eV": float(err[0])}
    report["seconds"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


def _energy(calc, atoms) -> float:
    a = atoms.copy()
    a.calc = calc
    return float(a.get_potential_energy())


if __name__ == "__main__":
    main()
