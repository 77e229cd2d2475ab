"""Label efficiency of batch selection from a pool: greedy (diverse) vs top-k vs random.

Run from the repository root::

    nice -n 10 .venv/bin/python benchmarks/selection.py [--pool-md 300] [--batch 4] [--labels 30]

The pool (realistic: heavy redundancy plus a few rare configurations): ``--pool-md`` frames of
32-atom fcc Cu, EMT Langevin MD at 800 K with a 2 fs step, one frame every 2 steps (4 fs apart),
then ``--pool-rare`` frames each of a vacancy (31 atoms, 800 K), a (111) surface slab (16 atoms,
800 K) and a hot crystal (1600 K).  Held-out: the same mixture from independent runs (12 bulk
frames, 2 of each rare kind, frames 100 fs apart).  Every method starts from the same 2 random
bulk frames and the same model (SOAP r_cut 4.5 Å, n_max 6, l_max 4, zeta 4, fixed noise
2 meV/atom and 30 meV/Å), then repeats: select ``--batch`` frames, label them (their stored EMT
results), update the model with ``--sparse-per-frame`` (default 10) new sparse points per frame
(greedy: the atoms its conditioning added; top-k and random: highest variance), and measure the
held-out force RMSE.  ``--methods`` lists NAME:SCORE pairs (``greedy:max``, ``greedy:sum``,
``topk:max``, ... see ``select_batch``); random is run with ``--random-seeds`` seeds and its final
error is their mean.  Reported: labels each method needs to reach random's final error, and
as a fraction of random's labels (goal <= 0.5).  Results go to
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


def _run(atoms, temperature: float, n: int, seed: int, every: int, warm: int = 100,
         kind: str = "bulk") -> list:
    return emt_md_frames(atoms, n, temperature=temperature, every=every, seed=seed,
                         warmup=warm, info={"kind": kind}, rattle=0.0)


def crystal() -> "Atoms":
    return bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)


def pool_frames(n_md: int, n_rare: int, seed: int, every: int = 2) -> list:
    """``n_md`` frames of 32-atom Cu at 800 K, ``every`` 2-fs steps apart, then ``n_rare``
    frames each of a vacancy (31 atoms, 800 K), a (111) surface slab (800 K) and a hot
    crystal (1600 K), the rare ones 50 steps apart."""
    from ase.build import fcc111
    frames = _run(crystal(), 800, n_md, seed, every)
    vac = crystal()
    del vac[0]
    frames += _run(vac, 800, n_rare, seed + 1, 50, kind="vacancy")
    slab = fcc111("Cu", (2, 2, 4), a=3.61, vacuum=6.0)
    frames += _run(slab, 800, n_rare, seed + 2, 50, kind="surface")
    frames += _run(crystal(), 1600, n_rare, seed + 3, 50, kind="hot")
    return frames


def force_rmse(model, frames) -> float:
    err = [model.predict(f, stress=False).forces - f.get_forces() for f in frames]
    return 1000 * float(np.sqrt(np.mean(np.concatenate(err) ** 2)))


def start_model(frames):
    """The benchmarks' model (SOAP r_cut 4.5 Å, n_max 6, l_max 4, fixed noise) fitted on
    ``frames`` (also used by selection_pool.py)."""
    soap = gpmlip.SOAP(["Cu"], r_cut=4.5, n_max=6, l_max=4)
    model = gpmlip.SparseGP(soap, n_sparse=20, e0="fit", energy_sigma=0.002, force_sigma=0.03,
                            n_jobs=1)
    return model.fit(frames)


def curve(method: str, pool, features, test, start, args, seed: int = 0) -> list[dict]:
    """One learning curve; ``method`` is ``random``, ``topk:SCORE`` or ``greedy:SCORE``."""
    name, _, score = method.partition(":")
    model = start_model([pool[i] for i in start])
    labelled = list(start)
    points = [{"labels": len(labelled), "rmse": force_rmse(model, test),
               "sparse": model.n_sparse_points}]
    rng = np.random.default_rng(seed + 1)
    while len(labelled) < args.labels:
        taken = set(labelled)
        left = [i for i in range(len(pool)) if i not in taken]
        t = time.perf_counter()
        if name == "random":
            picks = [left[i] for i in rng.choice(len(left), args.batch, replace=False)]
            sparse = args.sparse_per_frame * args.batch
        else:
            sel = select_batch(model, [pool[i] for i in left], args.batch, method=name,
                               features=[features[i] for i in left],
                               atoms_per_pick=args.sparse_per_frame, score=score or "max")
            picks = [left[i] for i in sel.indices]
            sparse = ([(i, a) for i, atoms in enumerate(sel.added_atoms)
                       for a in atoms[:args.sparse_per_frame] or [0]]
                      if name == "greedy" else args.sparse_per_frame * args.batch)
        seconds = time.perf_counter() - t
        picked = [pool[i] for i in picks]
        if isinstance(sparse, int):
            model.update(picked, n_sparse=sparse)
        else:
            model.update(picked, sparse_atoms=sparse)
        labelled += picks
        kinds = [pool[i].info["kind"] for i in picks]
        points.append({"labels": len(labelled), "rmse": force_rmse(model, test),
                       "sparse": model.n_sparse_points, "select_s": seconds,
                       "picked": [int(i) for i in picks], "picked_kinds": kinds})
        logging.info("%s: %d labels, %d sparse, force RMSE %.1f meV/Å (picked %s)", method,
                     len(labelled), model.n_sparse_points, points[-1]["rmse"], kinds)
    return points


def labels_to_reach(points: list[dict], target: float) -> int | None:
    """First label count at which a curve's RMSE is at or below ``target``."""
    return next((p["labels"] for p in points if p["rmse"] <= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool-md", type=int, default=300)
    parser.add_argument("--pool-rare", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--labels", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--random-seeds", type=int, default=3)
    parser.add_argument("--sparse-per-frame", type=int, default=10)
    parser.add_argument("--methods", default="greedy:max,greedy:sum,topk:max",
                        help="comma-separated NAME:SCORE (random is always run)")
    parser.add_argument("--out", type=Path, default=RESULTS / "selection.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("gpmlip.gp").setLevel(logging.WARNING)

    t = time.perf_counter()
    pool = pool_frames(args.pool_md, args.pool_rare, seed=args.seed)
    test = pool_frames(12, 2, seed=100 + args.seed, every=50)
    soap = gpmlip.SOAP(["Cu"], r_cut=4.5, n_max=6, l_max=4)
    features = [soap.describe(f).features for f in pool]
    logging.info("pool of %d frames and %d held-out frames in %.0f s", len(pool), len(test),
                 time.perf_counter() - t)
    start = [int(i) for i in np.random.default_rng(args.seed).choice(args.pool_md, 2,
                                                                     replace=False)]
    result = {"pool": len(pool), "pool_md": args.pool_md, "pool_rare_per_kind": args.pool_rare,
              "test": len(test), "batch": args.batch, "start": start, "curves": {}}
    methods = [m for m in args.methods.split(",") if m] + [
        f"random#{s}" for s in range(args.random_seeds)]
    for method in methods:
        name, _, s = method.partition("#")
        result["curves"][method] = curve(name, pool, features, test, start, args,
                                         seed=args.seed + int(s or 0))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))

    curves = result["curves"]
    randoms = [c for m, c in curves.items() if m.startswith("random")]
    final = float(np.mean([c[-1]["rmse"] for c in randoms]))
    n_final = randoms[0][-1]["labels"]
    print("\n| labels | " + " | ".join(f"{m} RMSE meV/Å" for m in curves) + " |")
    print("|---:|" + "---:|" * len(curves))
    for k in range(len(next(iter(curves.values())))):
        row = [curves[m][k] for m in curves]
        print(f"| {row[0]['labels']} | " + " | ".join(f"{p['rmse']:.1f}" for p in row) + " |")
    result["random_final_rmse"] = final
    result["labels_to_random_final"] = {m: labels_to_reach(c, final) for m, c in curves.items()
                                        if not m.startswith("random")}
    result["fraction_of_random_labels"] = {
        m: (v / n_final if v is not None else None)
        for m, v in result["labels_to_random_final"].items()}
    print(f"\nrandom's final error (mean of {len(randoms)} seeds) {final:.1f} meV/Å at {n_final} "
          f"labels; labels to reach it: {result['labels_to_random_final']}")
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
