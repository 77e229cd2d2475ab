"""A small on-the-fly run, executed as a subprocess by the kill -9 tests.

    python tests/otf_job.py DIR [--steps N] [--resume] [--kill-at EVENT:K]

32-atom EMT Cu, Langevin at 800 K.  The labeller is EMT wrapped so that every call that
*completes* appends ``end <structure hash>`` to ``DIR/../calls.log`` (fsync'ed): the test compares
that log with the labels on disk.  ``--kill-at labelled:2`` makes the process SIGKILL itself when
the learner reports that event for the 2nd time; ``--kill-at labeller:3`` kills it inside the 3rd
labeller call, before the result exists; ``--kill-at event:2`` right after the 2nd label's line in
``events.jsonl``, before the checkpoint that follows it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import sys
from pathlib import Path

import numpy as np
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.md.langevin import Langevin

import gpmlip
from gpmlip.active import OnTheFlyLearner

SOAP = dict(species=["Cu"], r_cut=4.0, n_max=4, l_max=3, sigma=0.5)


def structure_hash(atoms) -> str:
    """The same hash the test computes from a label record."""
    return hashlib.sha256(np.round(atoms.positions, 8).tobytes()).hexdigest()[:16]


def make_labeller(log_path: Path, kill_call: int | None):
    """A factory of EMT calculators that log completed calls (and may kill the process)."""
    calls = {"n": 0}

    class LoggedEMT(EMT):
        def calculate(self, atoms=None, properties=("energy",), system_changes=()):
            calls["n"] += 1
            if kill_call is not None and calls["n"] == kill_call:
                os.kill(os.getpid(), signal.SIGKILL)
            super().calculate(atoms, properties, system_changes)
            with open(log_path, "a") as fh:
                fh.write(f"end {structure_hash(atoms)}\n")
                fh.flush()
                os.fsync(fh.fileno())

    def factory():
        return LoggedEMT()

    return factory


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory", type=Path)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill-at", default=None)
    parser.add_argument("--baseline", default=None, help="a baseline spec as JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    kill_event, kill_count = (args.kill_at.split(":") + [None])[:2] if args.kill_at else (None, None)
    kill_count = int(kill_count) if kill_count else None
    seen = {"n": 0}

    def killer(event, info):
        if event == kill_event:
            seen["n"] += 1
            if seen["n"] == kill_count:
                os.kill(os.getpid(), signal.SIGKILL)

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    rng = np.random.default_rng(0)
    atoms.set_momenta(rng.normal(0, np.sqrt(63.5 * units.kB * 800), (len(atoms), 3)))
    baseline = None if args.baseline is None else json.loads(args.baseline)
    model = gpmlip.SparseGP(gpmlip.SOAP(**SOAP), n_jobs=1, baseline=baseline)
    labeller = make_labeller(args.directory.parent / "calls.log",
                             kill_count if kill_event == "labeller" else None)
    learner = OnTheFlyLearner(model, labeller, args.directory, std_tolerance=0.01,
                              update_threshold=0.005, optimise_every=3, optimise_until=6,
                              trajectory_interval=5, checkpoint_interval=20,
                              callbacks=[killer])
    if kill_event == "event":      # killed right after the K-th events.jsonl line of a label
        append = learner.rundir.append_event

        def append_then_kill(event):
            append(event)
            if "label" in event:
                seen["n"] += 1
                if seen["n"] == kill_count:
                    os.kill(os.getpid(), signal.SIGKILL)

        learner.rundir.append_event = append_then_kill
    atoms.calc = learner.calculator
    dyn = Langevin(atoms, 5 * units.fs, temperature_K=800, friction=0.02 / units.fs, fixcm=False,
                   rng=np.random.default_rng(1))
    summary = learner.run(dyn, args.steps, resume=args.resume)
    print(summary["labels"], summary["steps"])


if __name__ == "__main__":
    sys.exit(main())
