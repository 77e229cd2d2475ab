"""On-the-fly learning benchmark: 108-atom fcc Cu, EMT as the labeller, Langevin at 800 K.

Run from the repository root::

    .venv/bin/python benchmarks/otf.py [--steps 2000] [--std-tolerance 0.01]

The task (structure, thermostat, held-out frames) is defined in ``benchmarks/otf_common.py`` and
shared with ``benchmarks/otf_flare.py`` (FLARE, run in the peers' venv).  From an empty model the
learner runs ``--steps`` Langevin steps of 5 fs.  Reported: labeller (DFT) calls, sparse-set size,
wall time by phase, the final model's force RMSE/MAE on held-out EMT frames at 800 K and 1200 K,
the Spearman rank correlation between predicted force std and actual force error (per
component), the fraction of components whose error exceeds twice the predicted std (with and
without the force noise added to the std), and the cost of a learner step without a label
against plain prediction.  FLARE's numbers are read from ``/work/peer_results/flare_otf.json``
when that file exists.  Results go to ``benchmarks/results/otf.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from otf_common import force_errors, heldout_frames, initial_atoms, make_langevin  # noqa: E402

import gpmlip  # noqa: E402
from gpmlip.active import OnTheFlyLearner  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FLARE_JSON = Path("/work/peer_results/flare_otf.json")


def calibration(model, frames) -> dict:
    """Force errors of ``model`` and how its predicted force std ranks and bounds them."""
    preds = [model.predict(f, stress=False, force_std=True) for f in frames]
    errors = force_errors([p.forces for p in preds], frames)
    err = np.abs(np.concatenate([(p.forces - f.get_forces()).ravel() for p, f in
                                 zip(preds, frames)]))
    std = np.concatenate([p.force_std.ravel() for p in preds])
    total = np.sqrt(std ** 2 + model.noise["forces"] ** 2)
    return {**errors, "spearman_std_vs_error": float(spearmanr(std, err).statistic),
            "fraction_error_above_2std": float(np.mean(err > 2 * std)),
            "fraction_error_above_2std_with_noise": float(np.mean(err > 2 * total)),
            "median_predicted_std": float(np.median(std))}


def step_cost(model, learner_dir: Path, steps: int) -> dict:
    """Seconds per MD step: plain prediction, plain calculator, learner without labels."""
    atoms = initial_atoms(seed=7)
    atoms.rattle(0.05, seed=7)
    t = time.perf_counter()
    for _ in range(steps):
        model.predict(atoms, stress=False)
    predict = (time.perf_counter() - t) / steps

    atoms = initial_atoms(seed=7)
    atoms.calc = gpmlip.GPCalculator(model)
    dyn = make_langevin(atoms, seed=7)
    dyn.run(1)
    t = time.perf_counter()
    dyn.run(steps)
    plain = (time.perf_counter() - t) / steps

    atoms = initial_atoms(seed=7)
    learner = OnTheFlyLearner(model, "emt", learner_dir, std_tolerance=1.0,
                              update_threshold=1.0)
    atoms.calc = learner.calculator
    dyn = make_langevin(atoms, seed=7)
    learner.start(dyn)
    dyn.attach(learner)
    dyn.run(1)
    t = time.perf_counter()
    dyn.run(steps)
    observed = (time.perf_counter() - t) / steps
    assert learner.counters["labels"] == 0
    return {"predict_s": predict, "md_step_plain_calculator_s": plain,
            "md_step_with_learner_s": observed, "learner_over_plain": observed / plain,
            "learner_over_predict": observed / predict}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--std-tolerance", type=float, default=0.01)
    parser.add_argument("--update-threshold", type=float, default=None,
                        help="default: the learner's")
    parser.add_argument("--max-atoms-added", type=int, default=None,
                        help="sparse points added per label and species (default: the learner's)")
    parser.add_argument("--soap", default="4.5,6,4", help="r_cut,n_max,l_max")
    parser.add_argument("--cost-steps", type=int, default=30)
    parser.add_argument("--out", type=Path, default=RESULTS / "otf.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    r_cut, n_max, l_max = args.soap.split(",")
    soap = gpmlip.SOAP(["Cu"], float(r_cut), int(n_max), int(l_max))

    frames = heldout_frames()
    run_dir = RESULTS / f"{args.out.stem}_run"
    shutil.rmtree(run_dir, ignore_errors=True)
    atoms = initial_atoms()
    learner = OnTheFlyLearner(gpmlip.SparseGP(soap, n_jobs=1), "emt", run_dir,
                              std_tolerance=args.std_tolerance,
                              **{k: v for k, v in (("update_threshold", args.update_threshold),
                                                   ("max_atoms_added", args.max_atoms_added))
                                 if v is not None})
    atoms.calc = learner.calculator
    cpu = time.process_time()
    summary = learner.run(make_langevin(atoms), args.steps)
    summary["cpu_seconds"] = time.process_time() - cpu

    result = {"task": {"atoms": 108, "temperature_K": 800, "timestep_fs": 5.0,
                       "steps": args.steps, "soap": args.soap,
                       "std_tolerance": args.std_tolerance,
                       "update_threshold": learner.settings.update_threshold,
                       "max_atoms_added": learner.settings.max_atoms_added},
              "run": summary, "heldout": calibration(learner.model, frames),
              "cost": step_cost(learner.model, RESULTS / "otf_cost_run", args.cost_steps)}
    shutil.rmtree(RESULTS / "otf_cost_run", ignore_errors=True)
    if FLARE_JSON.exists():
        result["flare"] = json.loads(FLARE_JSON.read_text())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))

    h, c = result["heldout"], result["cost"]
    per_t = h["per_temperature"]
    print(f"\n{args.steps} steps: {summary['labels']} labeller calls, "
          f"{summary['sparse_points']} sparse points, wall {summary['wall_seconds']:.0f} s "
          f"({', '.join(f'{k} {v:.0f} s' for k, v in summary['seconds'].items())})")
    print(f"held-out force RMSE {h['overall']['rmse_meV_A']:.1f} meV/Å (800 K "
          f"{per_t['800']['rmse_meV_A']:.1f}, 1200 K {per_t['1200']['rmse_meV_A']:.1f}); "
          f"MAE {h['overall']['mae_meV_A']:.1f}")
    print(f"Spearman(std, |error|) {h['spearman_std_vs_error']:.2f}; error > 2 std: "
          f"{100 * h['fraction_error_above_2std']:.0f}% "
          f"({100 * h['fraction_error_above_2std_with_noise']:.0f}% with the noise)")
    print(f"step cost: predict {1000 * c['predict_s']:.0f} ms, MD step "
          f"{1000 * c['md_step_plain_calculator_s']:.0f} ms plain, "
          f"{1000 * c['md_step_with_learner_s']:.0f} ms with the learner "
          f"({c['learner_over_plain']:.2f}x)")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
