"""On-the-fly learning demo: 108-atom fcc Cu heated to 800 K, EMT as the "DFT".

Run from the repository root::

    .venv/bin/python workflows/otf_demo.py [--steps 1000] [--directory runs/otf_demo-...]
    .venv/bin/python workflows/otf_demo.py --resume runs/otf_demo-...   # after a kill

From an empty model, Langevin MD (5 fs steps) runs on the sparse GP; whenever an atom's normalised
uncertainty exceeds ``--std-tolerance`` the frame is labelled by EMT, written to disk, and the
model is updated (new sparse points from that frame's most uncertain atoms) before MD goes on.
At the end the model is checked against fresh EMT frames at 800 K, the summary is printed, and
the run directory holds the labels, the trajectory with per-atom uncertainties, the events, the
final model and the summary.  Copy this file and change the structure, the labeller (``"gpaw"``,
``"tblite"``, a function returning any ASE calculator) and the dynamics for your system.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary

try:  # ase >= 3.29
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # older ase
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta

import gpmlip
from gpmlip.active import OnTheFlyLearner

TEMPERATURE = 800.0


def copper(seed: int) -> "Atoms":  # noqa: F821
    """The perfect 108-atom cell with 800 K velocities."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3)
    thermalize_momenta(atoms, temperature_K=TEMPERATURE, rng=np.random.default_rng(seed))
    Stationary(atoms)
    return atoms


def langevin(atoms, seed: int) -> Langevin:
    return Langevin(atoms, 5 * units.fs, temperature_K=TEMPERATURE, friction=0.02 / units.fs,
                    fixcm=False, rng=np.random.default_rng(seed))


def check(model, n_frames: int = 4) -> str:
    """Force errors of the model on fresh EMT frames from the same thermostat."""
    atoms = copper(seed=100)
    atoms.calc = EMT()
    dyn = langevin(atoms, seed=101)
    dyn.run(300)
    errors, stds = [], []
    for _ in range(n_frames):
        dyn.run(50)
        pred = model.predict(atoms, stress=False, force_std=True)
        errors.append(pred.forces - atoms.get_forces())
        stds.append(pred.force_std)
    err, std = np.concatenate(errors).ravel(), np.concatenate(stds).ravel()
    total = np.sqrt(std ** 2 + model.noise_["forces"] ** 2)
    return (f"force RMSE {1000 * np.sqrt(np.mean(err ** 2)):.0f} meV/Å, MAE "
            f"{1000 * np.mean(np.abs(err)):.0f} meV/Å on {n_frames} fresh EMT frames at 800 K; "
            f"{100 * np.mean(np.abs(err) < 2 * total):.0f}% of components within 2 predicted std")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="MD steps of 5 fs")
    parser.add_argument("--directory", type=Path, default=None,
                        help="run directory (default: runs/otf_demo-<time>)")
    parser.add_argument("--resume", type=Path, default=None, metavar="DIR",
                        help="continue the run in DIR (e.g. after it was killed)")
    parser.add_argument("--std-tolerance", type=float, default=0.003)
    parser.add_argument("--update-threshold", type=float, default=0.001)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("gpmlip.gp", "gpmlip.data"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    directory = args.resume or args.directory or \
        Path("runs") / time.strftime("otf_demo-%Y%m%d-%H%M%S")
    model = gpmlip.SparseGP(gpmlip.SOAP(["Cu"], r_cut=4.5, n_max=4, l_max=3), n_jobs=1)
    learner = OnTheFlyLearner(model, "emt", directory, std_tolerance=args.std_tolerance,
                              update_threshold=args.update_threshold)
    atoms = copper(seed=0)
    atoms.calc = learner.calculator
    summary = learner.run(langevin(atoms, seed=1), args.steps, resume=args.resume is not None)

    t = summary["seconds"]
    print(f"\nOn-the-fly learning of EMT Cu (108 atoms, 800 K, {summary['steps']} steps of 5 fs)")
    print(f"  labeller calls   {summary['labels']} ({summary['failed_labels']} failed)")
    print(f"  sparse points    {summary['sparse_points']}")
    print(f"  wall time        {summary['wall_seconds']:.0f} s: prediction {t['predict']:.0f} s, "
          f"labelling {t['label']:.1f} s, updates {t['update']:.0f} s, files {t['io']:.1f} s, "
          f"MD and other {t['md_and_other']:.0f} s")
    print(f"  final model      {check(learner.model)}")
    print(f"  files            {summary['directory']}/ (model.npz, labelled.extxyz, "
          "trajectory.extxyz, events.jsonl, summary.json)")


if __name__ == "__main__":
    main()
