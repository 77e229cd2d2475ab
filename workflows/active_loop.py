"""Batch active learning with the labelling queue: explore -> select -> label -> update.

Run from the repository root (EMT stands in for DFT; a few minutes on 2 cores)::

    .venv/bin/python workflows/active_loop.py [--directory runs/active_loop] [--workers 2]

Kill it at any moment (Ctrl-C, kill -9) and run the same command again: it resumes from the
queue database and the loop state in the directory, with no label lost or paid for twice.

The candidates come from short EMT-free explorations: each round runs Langevin MD *with the
current model* at 600-1400 K from the perfect 32-atom Cu cell and offers every 10th frame.  The
loop picks a diverse batch of the most uncertain frames (greedy conditioning), queues them in
``queue.db``, labels them with EMT in a local process pool (swap in
``gpmlip.labelling.parsl.parsl_executor(slurm_config(...))`` and a GPAW labeller for a cluster,
see ``workflows/parsl_slurm.py``), updates the model and repeats until no candidate is
uncertain (``--target-std``) or the label budget is spent.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from ase import units
from ase.build import bulk
from ase.md.langevin import Langevin

import gpmlip
from gpmlip.active.loop import run_loop
from gpmlip.labelling import LabelQueue


def explorer(seed: int = 0):
    """Candidates from short MD runs on the current model at rising temperatures."""
    rng = np.random.default_rng(seed)

    def explore(model) -> list:
        frames = []
        for temperature in (600, 1000, 1400):
            atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
            atoms.rattle(0.1, seed=int(rng.integers(1 << 30)))
            if model.is_fitted:
                atoms.calc = gpmlip.GPCalculator(model)
                dyn = Langevin(atoms, 4 * units.fs, temperature_K=temperature,
                               friction=0.05 / units.fs, fixcm=False,
                               rng=np.random.default_rng(int(rng.integers(1 << 30))))
                for _ in range(6):
                    dyn.run(10)
                    frames.append(atoms.copy())
            else:
                frames.append(atoms.copy())
        for f in frames:
            f.calc = None
        return frames

    return explore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--directory", type=Path, default=Path("runs/active_loop"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-labels", type=int, default=24)
    parser.add_argument("--target-std", type=float, default=0.002)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("gpmlip.gp", "gpmlip.data"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    args.directory.mkdir(parents=True, exist_ok=True)
    queue = LabelQueue(args.directory / "queue.db", "emt", species=["Cu"])
    model = gpmlip.SparseGP(gpmlip.SOAP(["Cu"], r_cut=4.5, n_max=6, l_max=4), n_sparse=20,
                            n_jobs=1)
    out = run_loop(model, args.directory / "loop", queue, explore=explorer(), batch=args.batch,
                   max_labels=args.max_labels, target_std=args.target_std,
                   max_workers=args.workers)
    print(f"\nstopped by {out['stopped_by']} after {out['rounds']} rounds: {out['labels']} labels, "
          f"{out['sparse_points']} sparse points; queue {out['counts']}")
    print(f"model: {out['model']}; labelled data: ase db {queue.path} (or queue.export(...))")


if __name__ == "__main__":
    main()
