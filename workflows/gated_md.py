"""Uncertainty-gated production MD: run with a trained model, act when it is unsure.

Run from the repository root::

    .venv/bin/python workflows/gated_md.py --model runs/active_loop/loop/model-0003.npz \
        [--policy warn|queue|stop|label] [--threshold 0.01] [--temperature 1200] [--steps 500]

Without ``--model`` a small model is first fitted to 10 EMT frames at 300 K, so that heating to
``--temperature`` takes it somewhere it has not been.  The gate checks every step's largest
normalised local-energy std: ``warn`` logs and writes the frame to ``gated.extxyz``; ``queue``
also adds it to ``queue.db`` for labelling later (``gpmlip.labelling.label_queue``); ``stop``
saves the frame and the MD state and ends the run; ``label`` labels with EMT at once, updates
the model and goes on (the updated model is written to ``model.npz`` in the directory).  The
summary counts every decision.
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
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.langevin import Langevin

import gpmlip
from gpmlip.active import UncertaintyGate
from gpmlip.labelling import LabelQueue


def cold_model() -> gpmlip.SparseGP:
    """A model that has only seen Cu at 300 K."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    atoms.calc = EMT()
    dyn = Langevin(atoms, 4 * units.fs, temperature_K=300, friction=0.05 / units.fs,
                   fixcm=False, rng=np.random.default_rng(0))
    frames = []
    for _ in range(10):
        dyn.run(20)
        f = atoms.copy()
        f.calc = SinglePointCalculator(f, energy=atoms.get_potential_energy(),
                                       forces=atoms.get_forces())
        frames.append(f)
    model = gpmlip.SparseGP(gpmlip.SOAP(["Cu"], r_cut=4.5, n_max=6, l_max=4), n_sparse=30,
                            n_jobs=1).fit(frames)
    model.optimise_hyperparameters()      # noise and signal levels set what "unsure" means
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--policy", choices=["warn", "queue", "stop", "label"], default="queue")
    parser.add_argument("--threshold", type=float, default=0.01)
    parser.add_argument("--temperature", type=float, default=1200)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--directory", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("gpmlip.gp", "gpmlip.data"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    model = gpmlip.load_model(args.model) if args.model else cold_model()
    directory = args.directory or Path("runs") / time.strftime("gated_md-%Y%m%d-%H%M%S")
    directory.mkdir(parents=True, exist_ok=True)
    queue = LabelQueue(directory / "queue.db", "emt") if args.policy == "queue" else None
    gate = UncertaintyGate(model, directory, args.threshold, args.policy, queue=queue,
                           labeller="emt" if args.policy == "label" else None)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    atoms.calc = gate.calculator
    dyn = Langevin(atoms, 4 * units.fs, temperature_K=args.temperature,
                   friction=0.02 / units.fs, fixcm=False, rng=np.random.default_rng(1))
    summary = gate.run(dyn, args.steps)
    print(f"\n{summary['steps']} steps at {args.temperature:.0f} K, policy {args.policy}, "
          f"threshold {args.threshold}: {summary['gated']} frames gated (largest std "
          f"{summary['max_std_seen']:.3f}){'; stopped' if summary['stopped'] else ''}")
    if queue is not None:
        print(f"queue {queue.path}: {queue.counts()}; label with "
              "gpmlip.labelling.label_queue(LabelQueue(path))")
    if args.policy == "label":
        print(f"model with the {summary['labels']} new labels: {summary['model']}; files: "
              f"{directory}/ (labels/, labelled.extxyz, events.jsonl, gate_summary.json)")
    else:
        print(f"files: {directory}/ (gated.extxyz, events.jsonl, gate_summary.json)")


if __name__ == "__main__":
    main()
