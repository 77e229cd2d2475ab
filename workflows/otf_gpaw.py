"""On-the-fly learning with real DFT: GPAW (PBE, plane waves) labels a small aluminium cell.

NEEDS GPAW, which the default install does not have.  On Debian/Ubuntu::

    apt-get install -y libxc-dev libopenblas-dev libopenmpi-dev
    .venv/bin/pip install -e ".[gpaw]"          # builds GPAW (~75 s); brings its PAW setups
    OMP_NUM_THREADS=1 .venv/bin/python workflows/otf_gpaw.py [--steps 1000]

(One BLAS thread per process: on a busy 2-core machine GPAW was 5-8x slower without it.)
A 4-atom cubic fcc Al cell runs Langevin MD at 600 K with 2 fs steps; GPAW (PW 250 eV, 2x2x2
k-points, PBE) is called only when the GP is unsure, each call in a child process with a time
limit, and every result is on disk before it is used.  Resume a killed run with ``--resume DIR``.
At the end the model is compared with GPAW on a few frames it has not seen.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
from ase import units
from ase.build import bulk
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary

try:  # ase >= 3.29
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # older ase
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta

import gpmlip
from gpmlip.active import OnTheFlyLearner
from gpmlip.labelling.labellers import get_labeller, run_labeller

LABELLER = {"name": "gpaw", "ecut": 250, "kpts": [2, 2, 2], "xc": "PBE"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="MD steps of 2 fs")
    parser.add_argument("--resume", type=Path, default=None, metavar="DIR")
    parser.add_argument("--check-frames", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("gpmlip.gp").setLevel(logging.WARNING)

    directory = args.resume or Path("runs") / time.strftime("otf_gpaw-%Y%m%d-%H%M%S")
    atoms = bulk("Al", "fcc", a=4.05, cubic=True)
    thermalize_momenta(atoms, temperature_K=600, rng=np.random.default_rng(0))
    Stationary(atoms)
    model = gpmlip.SparseGP(gpmlip.SOAP(["Al"], r_cut=5.0, n_max=6, l_max=4), n_jobs=1)
    learner = OnTheFlyLearner(model, LABELLER, directory, std_tolerance=0.01,
                              update_threshold=0.001, timeout=600, optimise_every=4)
    atoms.calc = learner.calculator
    dyn = Langevin(atoms, 2 * units.fs, temperature_K=600, friction=0.02 / units.fs,
                   fixcm=False, rng=np.random.default_rng(1))
    summary = learner.run(dyn, args.steps, resume=args.resume is not None)

    # fresh frames from the learner's own trajectory, labelled now by GPAW
    import ase.io

    traj = ase.io.read(Path(directory) / "trajectory.extxyz", ":")
    unseen = [a for a in traj if not a.info.get("labelled")][-args.check_frames:]
    lab = get_labeller(LABELLER, timeout=600)
    errors = []
    for frame in unseen:
        result = run_labeller(lab, frame)
        if result.ok:
            errors.append(learner.model.predict(frame, stress=False).forces - result.forces)
    rmse = 1000 * np.sqrt(np.mean(np.concatenate(errors) ** 2)) if errors else float("nan")
    t = summary["seconds"]
    print(f"\nOn-the-fly learning of Al with GPAW ({summary['steps']} steps of 2 fs, 600 K)")
    print(f"  GPAW calls       {summary['labels']} ({summary['failed_labels']} failed), "
          f"{t['label']:.0f} s in GPAW")
    print(f"  sparse points    {summary['sparse_points']}")
    print(f"  wall time        {summary['wall_seconds']:.0f} s")
    print(f"  check            force RMSE {rmse:.0f} meV/Å against GPAW on {len(errors)} "
          "trajectory frames that were not labelled")
    print(f"  files            {summary['directory']}")


if __name__ == "__main__":
    main()
