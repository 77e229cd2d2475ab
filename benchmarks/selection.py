"""Label efficiency of batch selection from a pool: greedy (diverse) vs top-k vs random.

Run from the repository root::

    .venv/bin/python benchmarks/selection.py [--pool-per-t 500] [--batch 5] [--labels 60]

The pool: 32-atom fcc Cu, EMT Langevin MD at 300, 600, 900 and 1200 K, one frame every 5 steps
of 4 fs (``--pool-per-t`` frames per temperature).  Held-out: 10 frames per temperature from
independent runs.  Every method starts from the same 2 random pool frames and the same model
(SOAP r_cut 4.5 Å, n_max 6, l_max 4, zeta 4, fixed noise 2 meV/atom and 30 meV/Å), then repeats:
select ``--batch`` frames, label them (their stored EMT results), update the model with
``--sparse-per-frame`` (default 10) new sparse points per frame (greedy: the atoms its
conditioning added; top-k and random: highest variance), and measure the held-out force RMSE.
``--score`` chooses how greedy and top-k score a structure (``max`` or ``rms``).  Results go to
``benchmarks/results/selection.json``; the learning curves are printed as a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
from ase.build import bulk

import gpmlip
from gpmlip.active import select_batch
from gpmlip.testing import emt_md_frames

RESULTS = Path(__file__).resolve().parent / "results"
TEMPERATURES = (300, 600, 900, 1200)


def md_frames(temperature: float, n: int, seed: int, every: int = 5) -> list:
    return emt_md_frames(bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2), n,
                         temperature=temperature, every=every, seed=seed, dt_fs=4.0,
                         warmup=200, info={"temperature": temperature})


def force_rmse(model, frames) -> float:
    err = [model.predict(f, stress=False).forces - f.get_forces() for f in frames]
    return 1000 * float(np.sqrt(np.mean(np.concatenate(err) ** 2)))


def start_model(frames):
    """The benchmarks' model (SOAP r_cut 4.5 Å, n_max 6, l_max 4, fixed noise) fitted on
    ``frames``."""
    soap = gpmlip.SOAP(["Cu"], r_cut=4.5, n_max=6, l_max=4)
    model = gpmlip.SparseGP(soap, n_sparse=20, e0="fit", energy_sigma=0.002, force_sigma=0.03,
                            n_jobs=1)
    return model.fit(frames)


def curve(method: str, pool, features, test, start, args) -> list[dict]:
    model = start_model([pool[i] for i in start])
    labelled = list(start)
    points = [{"labels": len(labelled), "rmse": force_rmse(model, test),
               "sparse": model.n_sparse_points}]
    rng = np.random.default_rng(args.seed + 1)
    while len(labelled) < args.labels:
        left = [i for i in range(len(pool)) if i not in set(labelled)]
        t = time.perf_counter()
        if method == "random":
            picks = [left[i] for i in rng.choice(len(left), args.batch, replace=False)]
            sparse = args.sparse_per_frame * args.batch
        else:
            sel = select_batch(model, [pool[i] for i in left], args.batch, method=method,
                               features=[features[i] for i in left],
                               atoms_per_pick=args.sparse_per_frame,
                               score=args.score)
            picks = [left[i] for i in sel.indices]
            sparse = ([(i, a) for i, atoms in enumerate(sel.added_atoms)
                       for a in atoms[:args.sparse_per_frame] or [0]]
                      if method == "greedy" else args.sparse_per_frame * args.batch)
        seconds = time.perf_counter() - t
        picked = [pool[i] for i in picks]
        if isinstance(sparse, int):
            model.update(picked, n_sparse=sparse)
        else:
            model.update(picked, sparse_atoms=sparse)
        labelled += picks
        temps = [pool[i].info["temperature"] for i in picks]
        points.append({"labels": len(labelled), "rmse": force_rmse(model, test),
                       "sparse": model.n_sparse_points, "select_s": seconds,
                       "picked_temperatures": temps})
        logging.info("%s: %d labels, %d sparse, force RMSE %.1f meV/Å (picked T %s)", method,
                     len(labelled), model.n_sparse_points, points[-1]["rmse"], temps)
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool-per-t", type=int, default=500)
    parser.add_argument("--batch", type=int, default=5)
    parser.add_argument("--labels", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sparse-per-frame", type=int, default=10)
    parser.add_argument("--methods", default="greedy,topk,random")
    parser.add_argument("--score", choices=["max", "rms"], default="max",
                        help="structure score for greedy and top-k (see select_batch)")
    parser.add_argument("--out", type=Path, default=RESULTS / "selection.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("gpmlip.gp").setLevel(logging.WARNING)

    t = time.perf_counter()
    pool = [f for k, T in enumerate(TEMPERATURES) for f in md_frames(T, args.pool_per_t, k)]
    test = [f for k, T in enumerate(TEMPERATURES) for f in md_frames(T, 10, 100 + k, every=25)]
    soap = gpmlip.SOAP(["Cu"], r_cut=4.5, n_max=6, l_max=4)
    features = [soap.describe(f).features for f in pool]
    logging.info("pool of %d frames and %d held-out frames in %.0f s", len(pool), len(test),
                 time.perf_counter() - t)
    start = list(np.random.default_rng(args.seed).choice(len(pool), 2, replace=False))
    result = {"pool": len(pool), "test": len(test), "batch": args.batch, "curves": {}}
    for method in args.methods.split(","):
        result["curves"][method] = curve(method, pool, features, test, start, args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))

    curves = result["curves"]
    print("\n| labels | " + " | ".join(f"{m} RMSE meV/Å" for m in curves) + " |")
    print("|---:|" + "---:|" * len(curves))
    for k in range(len(next(iter(curves.values())))):
        row = [curves[m][k] for m in curves]
        print(f"| {row[0]['labels']} | " + " | ".join(f"{p['rmse']:.1f}" for p in row) + " |")
    if "random" in curves and "greedy" in curves:
        final = curves["random"][-1]["rmse"]
        reach = next((p["labels"] for p in curves["greedy"] if p["rmse"] <= final), None)
        print(f"\nrandom's final error {final:.1f} meV/Å at {curves['random'][-1]['labels']} "
              f"labels; greedy reaches it at {reach} labels")
        result["greedy_labels_to_random_final"] = reach
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
