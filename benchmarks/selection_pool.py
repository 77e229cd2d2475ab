"""Batch selection on a redundant pool with rare configurations: labels to reach random's error.

Run from the repository root (about 10 minutes on one shared core)::

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/selection_pool.py

The pool is what an MD-driven user has: 32-atom fcc Cu, EMT Langevin MD at 800 K with 2 fs
steps, one frame every ``--every`` steps (default 2: frames 4 fs apart, heavy redundancy,
``--bulk`` of them), plus ``--rare`` frames of each of three rare kinds: a vacancy (31 atoms,
800 K), a (111) surface (32-atom slab, 800 K) and a hot frame (32 atoms, 1600 K).  The held-out set
covers the same four kinds (``--test-per-kind`` frames each, independent runs, frames 40 fs apart).
Every method starts from the same 2 bulk frames and the same model (SOAP r_cut 4.5 Å, n_max 6,
l_max 4, zeta 4, fixed noise 2 meV/atom and 30 meV/Å) and repeats: select ``--batch`` frames,
label them (their stored EMT results), update the model with ``--sparse-per-frame`` new sparse
points per frame (greedy: the atoms its conditioning added; the others: highest variance), and
measure the held-out force RMSE.  Random runs with ``--random-seeds`` seeds; its final error is
the mean over seeds at ``--labels``.  A method "reaches" it at the first label count whose error
is at or below it; the ratio to random's label count is the issue's figure (goal <= 0.5).

``--methods`` is a comma list of ``method:score[:nodup]`` (``greedy:max``, ``greedy:rms``,
``topk:max``, ...; ``nodup`` turns off select_batch's copy rule, ``duplicate=0``).
``--report`` redraws the figure and table from the JSON (e.g. of a run stopped early).  Results go to ``benchmarks/results/selection_pool.json`` and a PNG next to it.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
from ase.build import bulk, fcc111

import gpmlip
from gpmlip.active import select_batch
from gpmlip.testing import emt_md_frames
from selection import start_model

RESULTS = Path(__file__).resolve().parent / "results"
KINDS = ("bulk", "vacancy", "surface", "hot")


def _structure(kind: str, seed: int):
    if kind == "surface":
        atoms = fcc111("Cu", size=(2, 2, 8), a=3.61, vacuum=6.0)
    else:
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
        if kind == "vacancy":
            del atoms[int(np.random.default_rng(seed).integers(len(atoms)))]
    return atoms


def md_frames(kind: str, n: int, seed: int, every: int, warmup: int = 150) -> list:
    """``n`` frames of ``kind`` (see the module docstring), ``every`` MD steps of 2 fs apart."""
    return emt_md_frames(_structure(kind, seed), n, temperature=1600 if kind == "hot" else 800,
                         every=every, seed=seed, warmup=warmup, info={"kind": kind})


def force_rmse(model, frames) -> dict:
    """Held-out force RMSE (meV/Å): over all frames and per kind."""
    err = {k: [] for k in KINDS}
    for f in frames:
        err[f.info["kind"]].append(model.predict(f, stress=False).forces - f.get_forces())
    out = {k: 1000 * float(np.sqrt(np.mean(np.concatenate(e) ** 2))) for k, e in err.items() if e}
    out["all"] = 1000 * float(np.sqrt(np.mean(np.concatenate(sum(err.values(), [])) ** 2)))
    return out


def curve(spec: str, pool, features, test, start, args, seed: int = 0) -> list[dict]:
    method, score, rule = (spec.split(":") + ["", ""])[:3]
    model = start_model([pool[i] for i in start])
    labelled = list(start)
    points = [{"labels": len(labelled), "rmse": force_rmse(model, test),
               "sparse": model.n_sparse_points}]
    while len(labelled) < args.labels:
        taken = set(labelled)
        left = [i for i in range(len(pool)) if i not in taken]
        t = time.perf_counter()
        sel = select_batch(model, [pool[i] for i in left], args.batch, method=method,
                           features=[features[i] for i in left],
                           seed=1000 * seed + len(labelled),          # a new draw every round
                           atoms_per_pick=args.sparse_per_frame, score=score or "max",
                           duplicate=0.0 if rule == "nodup" else 1e-12)
        picks = [left[i] for i in sel.indices]
        seconds = time.perf_counter() - t
        picked = [pool[i] for i in picks]
        if method == "greedy":
            model.update(picked, sparse_atoms=[(i, a) for i, atoms in enumerate(sel.added_atoms)
                                               for a in atoms[:args.sparse_per_frame] or [0]])
        else:
            model.update(picked, n_sparse=args.sparse_per_frame * args.batch)
        labelled += picks
        points.append({"labels": len(labelled), "rmse": force_rmse(model, test),
                       "sparse": model.n_sparse_points, "select_s": seconds,
                       "picked": [pool[i].info["kind"] for i in picks], "indices": picks})
        logging.info("%s (seed %d): %d labels, %d sparse, force RMSE %.1f meV/Å, picked %s",
                     spec, seed, len(labelled), model.n_sparse_points,
                     points[-1]["rmse"]["all"], points[-1]["picked"])
    return points


def labels_to_reach(points: list[dict], target: float) -> int | None:
    return next((p["labels"] for p in points if p["rmse"]["all"] <= target), None)


def per_kind_reach(result: dict, points: list[dict]) -> dict:
    """Per held-out kind: random's final error there (mean over seeds), labels to reach it."""
    finals = [c[-1]["rmse"] for n, c in result["curves"].items() if n.startswith("random")]
    out = {}
    for kind in KINDS:
        target = float(np.mean([f[kind] for f in finals]))
        out[kind] = {"random_final_rmse": target,
                     "labels": next((p["labels"] for p in points if p["rmse"][kind] <= target),
                                    None)}
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in result["curves"].items():
        style = dict(color="0.6", lw=0.8) if name.startswith("random") else dict(marker="o", ms=3)
        ax.plot([p["labels"] for p in points], [p["rmse"]["all"] for p in points],
                label=(name if not name.startswith("random") else
                       "random (each seed)" if name.endswith("#0") else "_nolegend_"),
                **style)
    ax.axhline(result["random_final_rmse"], color="k", ls=":", lw=0.8)
    ax.set_xlabel("labelled frames")
    ax.set_ylabel("held-out force RMSE (meV/Å)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("pool: 800 K MD 4 fs apart + vacancy, surface, hot frames", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def report(result: dict, out: Path) -> None:
    """The PNG next to ``out`` and the table and label counts on stdout."""
    plot(result, out.with_suffix(".png"))
    n_random = sum(name.startswith("random") for name in result["curves"])
    curves = result["curves"]
    print("\n| labels | " + " | ".join(curves) + " |")
    print("|---:|" + "---:|" * len(curves))
    for k in range(len(next(iter(curves.values())))):
        row = [curves[m][k] for m in curves]
        print(f"| {row[0]['labels']} | " + " | ".join(f"{p['rmse']['all']:.1f}" for p in row)
              + " |")
    print(f"\nrandom's final error (mean of {n_random} seeds) "
          f"{result['random_final_rmse']:.1f} meV/Å at {result['random_final_labels']} labels")
    for spec, r in result["reach"].items():
        print(f"{spec}: reaches it at {r['labels']} labels (fraction {r['fraction']}); per kind "
              + ", ".join(f"{k} {v['random_final_rmse']:.1f} at {v['labels']}"
                          for k, v in r["per_kind"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bulk", type=int, default=300)
    parser.add_argument("--every", type=int, default=2)
    parser.add_argument("--rare", type=int, default=4)
    parser.add_argument("--test-per-kind", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--labels", type=int, default=34)
    parser.add_argument("--sparse-per-frame", type=int, default=10)
    parser.add_argument("--random-seeds", type=int, default=5)
    parser.add_argument("--methods",
                        default="greedy:max,greedy:rms,greedy:max:nodup,topk:max,topk:rms")
    parser.add_argument("--out", type=Path, default=RESULTS / "selection_pool.json")
    parser.add_argument("--report", action="store_true",
                        help="only plot and print the results already in --out")
    args = parser.parse_args()
    if args.report:
        return report(json.loads(args.out.read_text()), args.out)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for name in ("gpmlip.gp", "gpmlip.data", "gpmlip.active.pool"):
        logging.getLogger(name).setLevel(logging.WARNING)

    t = time.perf_counter()
    pool = md_frames("bulk", args.bulk, 0, args.every)
    for k, kind in enumerate(KINDS[1:]):
        pool += md_frames(kind, args.rare, 10 + k, 10)
    test = [f for k, kind in enumerate(KINDS)
            for f in md_frames(kind, args.test_per_kind, 100 + k, 20)]
    soap = gpmlip.SOAP(["Cu"], r_cut=4.5, n_max=6, l_max=4)
    features = [soap.describe(f).features for f in pool]
    logging.info("pool of %d frames and %d held-out frames in %.0f s", len(pool), len(test),
                 time.perf_counter() - t)
    start = [0, args.bulk // 2]
    result = {"pool": len(pool), "pool_kinds": {k: sum(f.info["kind"] == k for f in pool)
                                                for k in KINDS},
              "test": len(test), "batch": args.batch, "labels": args.labels,
              "sparse_per_frame": args.sparse_per_frame, "curves": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for s in range(args.random_seeds):
        result["curves"][f"random#{s}"] = curve("random", pool, features, test, start, args, s)
        args.out.write_text(json.dumps(result, indent=1))
    finals = [result["curves"][f"random#{s}"][-1] for s in range(args.random_seeds)]
    result["random_final_labels"] = finals[0]["labels"]
    result["random_final_rmse"] = float(np.mean([p["rmse"]["all"] for p in finals]))
    result["reach"] = {}
    for spec in args.methods.split(","):
        points = curve(spec, pool, features, test, start, args)
        result["curves"][spec] = points
        reach = labels_to_reach(points, result["random_final_rmse"])
        result["reach"][spec] = {"labels": reach, "fraction": None if reach is None else
                                 reach / result["random_final_labels"],
                                 "per_kind": per_kind_reach(result, points)}
        args.out.write_text(json.dumps(result, indent=1))
    report(result, args.out)

if __name__ == "__main__":
    main()
