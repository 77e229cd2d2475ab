"""Labeller calls against held-out force error: gpmlip and FLARE on-the-fly, swept, in one run.

Run from the repository root in the peers' venv (so that FLARE is importable) with this
checkout's gpmlip first on the path::

    PYTHONPATH=$PWD nice -n 10 /work/peers-venv/bin/python benchmarks/otf_sweep.py \\
        --steps 300 --gpmlip-trigger std_tolerance=0.0015,0.003,0.006,0.012 \\
        --flare-tolerance=-0.002,-0.005,-0.01,-0.02

The task is ``benchmarks/otf_common.py``'s (108-atom fcc Cu, EMT, Langevin 800 K, 5 fs, empty
start; held-out EMT frames at 800 K and 1200 K).  Every setting is one on-the-fly run of
``--steps`` steps from the same start.

* ``--gpmlip-trigger KEY=V1,V2,...`` (repeatable): one gpmlip run per value, with ``KEY=V``
  passed as a keyword argument to :class:`~gpmlip.active.OnTheFlyLearner`, so any trigger the
  learner accepts works (``std_tolerance=...``, ``force_tolerance=...`` once it exists).
  ``--gpmlip-trigger none``: no gpmlip run.  ``--gpmlip-option KEY=V`` (repeatable) is passed to every gpmlip run.  A value that is not a
  number is passed as a string (``true``/``false``/``none`` as Python's).
* ``--flare-tolerance T1,T2,...``: one FLARE run (``benchmarks/otf_flare.py``) per FLARE
  ``std_tolerance_factor`` (negative: absolute threshold on its normalised local std), with its
  ``update_threshold`` set to ``--flare-update-fraction`` times ``|T|``.

Measured per run: labeller calls and the final model's held-out force RMSE (and, for gpmlip,
the held-out RMSE after every label, through a learner callback).  The passive reference: an
offline gpmlip fit (same descriptor and defaults) on ``k`` frames drawn at random from an 800 K
EMT trajectory of ``--steps`` steps from the same start (``--passive-seeds`` draws), for every
``k`` of a geometric ladder (1, 2, 3, 4, 7, 10, 17, 27, ...) or a run's final count that a gpmlip
run reached, with as many sparse points as that run had after ``k`` labels.

Comparison at equal calls: each code's curve is its runs' (calls, RMSE) points, the RMSE at a
call count taken as the median over runs with that count; between counts it is interpolated
linearly in (log calls, log RMSE).  The ratio gpmlip / FLARE is evaluated at every gpmlip point
inside FLARE's range of calls (no extrapolation), and for gpmlip's model after each of its
first k labels (``ratio_after_k_labels``, the median over runs).  ``--reanalyse`` redoes the analysis of the
runs already in ``--out`` (e.g. after an interrupted sweep).  Results: ``benchmarks/results/otf_sweep.json``
and ``otf_sweep.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import otf_common as common  # noqa: E402

RESULTS = common.RESULTS_DIR


def parse_value(text: str):
    """``"0.01"`` -> 0.01, ``"5"`` -> 5, ``"true"`` -> True, ``"none"`` -> None, else the text."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def parse_triggers(items: list[str]) -> list[dict]:
    """``["std_tolerance=0.003,0.01"]`` -> ``[{"std_tolerance": 0.003}, {"std_tolerance": 0.01}]``."""
    out = []
    for item in items:
        if item.strip().lower() == "none":          # no gpmlip runs (e.g. a FLARE-only part)
            continue
        key, _, values = item.partition("=")
        if not key or not values:
            raise SystemExit(f"--gpmlip-trigger {item!r}: write KEY=V1,V2,...")
        out += [{key.strip(): parse_value(v)} for v in values.split(",") if v.strip()]
    return out


def parse_options(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key or not value:
            raise SystemExit(f"--gpmlip-option {item!r}: write KEY=VALUE")
        out[key.strip()] = parse_value(value)
    return out


def rmse(model, frames) -> float:
    preds = [model.predict(f, stress=False).forces for f in frames]
    return common.force_errors(preds, frames)["overall"]["rmse_meV_A"]


def gpmlip_run(kwargs: dict, args, frames) -> dict:
    import gpmlip
    from gpmlip.active import OnTheFlyLearner

    soap = gpmlip.SOAP(["Cu"], *(float(x) if i == 0 else int(x)
                                 for i, x in enumerate(args.soap.split(","))))
    run_dir = Path("/tmp") / f"otf_sweep_gpmlip_{os.getpid()}"
    shutil.rmtree(run_dir, ignore_errors=True)
    after_label: list[dict] = []

    def on_event(event: str, info: dict) -> None:
        if event == "updated" and info["result"]["ok"]:
            after_label.append({"calls": len(after_label) + 1, "step": int(info["step"]),
                                "sparse": learner.model.n_sparse_points,
                                "rmse_meV_A": rmse(learner.model, frames)})

    learner = OnTheFlyLearner(gpmlip.SparseGP(soap, n_jobs=1), "emt", run_dir,
                              callbacks=[on_event], **args.gpmlip_options, **kwargs)
    atoms = common.initial_atoms(seed=args.seed)
    atoms.calc = learner.calculator
    t = time.perf_counter()
    summary = learner.run(common.make_langevin(atoms, seed=args.seed), args.steps)
    wall = time.perf_counter() - t
    shutil.rmtree(run_dir, ignore_errors=True)
    final = rmse(learner.model, frames)
    logging.info("gpmlip %s: %d calls, %d sparse, RMSE %.1f meV/Å, %.0f s", kwargs,
                 summary["labels"], summary["sparse_points"], final, wall)
    return {"code": "gpmlip", "trigger": kwargs, "options": args.gpmlip_options,
            "calls": int(summary["labels"]), "sparse": int(summary["sparse_points"]),
            "rmse_meV_A": final, "wall_s": wall, "after_each_label": after_label}


def flare_run(tol: float, args) -> dict:
    import otf_flare
    out = Path("/tmp") / f"otf_sweep_flare_{os.getpid()}.json"
    out.unlink(missing_ok=True)
    upd = args.flare_update_fraction * abs(tol)
    run = otf_flare.main(["--steps", str(args.steps), "--std-tolerance", str(tol),
                          "--update-threshold", str(upd), "--n-dtc-per-t", "0",
                          "--seed", str(args.seed), "--out", str(out)])
    out.unlink(missing_ok=True)
    r = run["results"]
    logging.info("FLARE tol %g: %d calls, %d sparse, RMSE %.1f meV/Å, %.0f s", tol,
                 r["dft_calls"], r["sparse_size"], r["rmse_meV_A"], r["otf_wall_s"])
    return {"code": "flare", "std_tolerance_factor": tol, "update_threshold": upd,
            "calls": int(r["dft_calls"]), "sparse": int(r["sparse_size"]),
            "rmse_meV_A": float(r["rmse_meV_A"]), "wall_s": float(r["otf_wall_s"])}


def passive(ks: list[int], sparse: dict[int, int], args, frames) -> dict:
    """Offline fits on k random frames of an 800 K EMT trajectory (``--passive-seeds`` draws)."""
    import gpmlip
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = common.initial_atoms(seed=args.seed)
    atoms.calc = EMT()
    dyn = common.make_langevin(atoms, seed=args.seed)
    traj = []
    for _ in range(args.steps):
        dyn.run(1)
        f = atoms.copy()
        f.calc = SinglePointCalculator(f, energy=atoms.get_potential_energy(),
                                       forces=atoms.get_forces())
        traj.append(f)
    soap_args = [float(x) if i == 0 else int(x) for i, x in enumerate(args.soap.split(","))]
    out = {}
    for k in ks:
        values = []
        for seed in range(args.passive_seeds):
            pick = np.random.default_rng(1000 + seed).choice(len(traj), k, replace=False)
            model = gpmlip.SparseGP(gpmlip.SOAP(["Cu"], *soap_args), n_jobs=1,
                                    n_sparse=min(sparse[k], 108 * k))
            model.fit([traj[i] for i in pick])
            values.append(rmse(model, frames))
        out[str(k)] = {"rmse_meV_A": values, "median_meV_A": float(np.median(values)),
                       "sparse": int(model.n_sparse_points)}
        logging.info("passive k=%d: RMSE %s meV/Å", k, [round(v, 1) for v in values])
    return out


def curve(runs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Call counts (sorted, unique) and the median RMSE over the runs with each count."""
    calls = sorted({r["calls"] for r in runs})
    return (np.array(calls, float),
            np.array([np.median([r["rmse_meV_A"] for r in runs if r["calls"] == c])
                      for c in calls]))


def loglog_interp(x: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    return np.exp(np.interp(np.log(x), np.log(xs), np.log(ys)))


def compare(gp_runs: list[dict], fl_runs: list[dict]) -> dict:
    gx, gy = curve(gp_runs)
    fx, fy = curve(fl_runs)
    inside = (gx >= fx.min()) & (gx <= fx.max())
    ratio = gy[inside] / loglog_interp(gx[inside], fx, fy)
    after = {}                      # gpmlip's model after k labels (within its runs)
    for k in sorted({a["calls"] for r in gp_runs for a in r["after_each_label"]}):
        if fx.min() <= k <= fx.max():
            med = np.median([a["rmse_meV_A"] for r in gp_runs for a in r["after_each_label"]
                             if a["calls"] == k])
            after[str(k)] = float(med / loglog_interp(np.array([k]), fx, fy)[0])
    return {"ratio_after_k_labels": after,
            "gpmlip_curve": {"calls": gx.tolist(), "rmse_meV_A": gy.tolist()},
            "flare_curve": {"calls": fx.tolist(), "rmse_meV_A": fy.tolist()},
            "ratio_at_gpmlip_calls": {str(int(c)): float(r) for c, r in zip(gx[inside], ratio)},
            "max_ratio": float(ratio.max()) if len(ratio) else None,
            "goal_ratio_le_0.5_everywhere": bool(len(ratio) and ratio.max() <= 0.5)}


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for code, style in (("gpmlip", "o-"), ("flare", "s-")):
        runs = [r for r in result["runs"] if r["code"] == code]
        if runs:
            x, y = curve(runs)
            ax.plot(x, y, style, label=f"{code} (one run per tolerance)")
    for r in result["runs"]:
        if r["code"] == "gpmlip" and r["after_each_label"]:
            a = r["after_each_label"]
            ax.plot([p["calls"] for p in a], [p["rmse_meV_A"] for p in a], ":", color="C0",
                    alpha=0.4, lw=1)
    if result.get("passive"):
        ks = sorted(int(k) for k in result["passive"])
        ax.plot(ks, [result["passive"][str(k)]["median_meV_A"] for k in ks], "^--",
                color="grey", label="gpmlip offline, k random 800 K frames")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("labeller (EMT) calls")
    ax.set_ylabel("held-out force RMSE (meV/Å)")
    ax.set_title(f"108 Cu, EMT, 800 K, {result['steps']} steps")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--soap", default="4.5,6,4", help="r_cut,n_max,l_max (gpmlip)")
    p.add_argument("--gpmlip-trigger", action="append", default=[],
                   help="KEY=V1,V2,...: one gpmlip run per value (repeatable)")
    p.add_argument("--gpmlip-option", action="append", default=[],
                   help="KEY=VALUE passed to every gpmlip learner (repeatable)")
    p.add_argument("--flare-tolerance", default="-0.002,-0.005,-0.01,-0.02",
                   help="FLARE std_tolerance_factor values, comma-separated ('' for none)")
    p.add_argument("--flare-update-fraction", type=float, default=0.5)
    p.add_argument("--passive-seeds", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS / "otf_sweep.json")
    p.add_argument("--reanalyse", action="store_true",
                   help="no new runs: passive fits, comparison and plot for the runs in --out")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for name in ("gpmlip.gp", "gpmlip.active", "gpmlip.labelling"):
        logging.getLogger(name).setLevel(logging.WARNING)
    args.gpmlip_options = parse_options(args.gpmlip_option)
    triggers = parse_triggers(args.gpmlip_trigger or ["std_tolerance=0.0015,0.003,0.006,0.012"])
    flare_tols = [float(t) for t in args.flare_tolerance.split(",") if t.strip()]

    frames = common.heldout_frames()
    result = {"steps": args.steps, "seed": args.seed, "soap": args.soap,
              "command": " ".join(sys.argv), "runs": []}
    png = args.out.with_suffix(".png")

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))

    jobs = [("gpmlip", t) for t in triggers] + [("flare", t) for t in flare_tols]
    jobs.sort(key=lambda j: ([t for t in triggers] if j[0] == "gpmlip" else flare_tols).index(
        j[1]))                     # alternate the codes: a partial run has points of both
    if args.reanalyse:            # analyse (passive, comparison, plot) the runs in --out
        result = json.loads(args.out.read_text())
        jobs = []
    for code, setting in jobs:
        if code == "gpmlip":
            result["runs"].append(gpmlip_run(setting, args, frames))
            save()
            continue
        tol = setting
        try:
            result["runs"].append(flare_run(tol, args))
        except Exception as exc:          # a FLARE crash must not lose gpmlip's runs
            logging.exception("FLARE run with tolerance %g failed", tol)
            result["runs"].append({"code": "flare", "std_tolerance_factor": tol,
                                   "error": repr(exc)})
        save()
    ok = [r for r in result["runs"] if "error" not in r]
    gp_runs = [r for r in ok if r["code"] == "gpmlip"]
    fl_runs = [r for r in ok if r["code"] == "flare"]
    reached = {a["calls"] for r in gp_runs for a in r["after_each_label"]}
    # the passive fits cost the most: every run's final count plus a geometric ladder
    ladder = {int(round(1.6 ** i)) for i in range(12)}
    ks = sorted(reached & (ladder | {r["calls"] for r in gp_runs}))
    if args.passive_seeds and ks:
        sparse = {k: max(a["sparse"] for r in gp_runs for a in r["after_each_label"]
                         if a["calls"] == k) for k in ks}
        result["passive"] = passive(ks, sparse, args, frames)
        active = {}
        for k in ks:
            vals = [a["rmse_meV_A"] for r in gp_runs for a in r["after_each_label"]
                    if a["calls"] == k]
            active[str(k)] = {"active_median_meV_A": float(np.median(vals)),
                              "passive_median_meV_A": result["passive"][str(k)]["median_meV_A"]}
        result["active_vs_passive"] = active
        result["active_no_worse_at_every_k"] = all(
            v["active_median_meV_A"] <= v["passive_median_meV_A"] for v in active.values())
    if gp_runs and fl_runs:
        result["comparison"] = compare(gp_runs, fl_runs)
    save()
    plot(result, png)

    print(common.summary_table([{"code": r["code"],
                                 "setting": str(r.get("trigger", r.get("std_tolerance_factor"))),
                                 "calls": r.get("calls", "-"), "sparse": r.get("sparse", "-"),
                                 "RMSE meV/Å": r.get("rmse_meV_A", float("nan")),
                                 "wall s": r.get("wall_s", float("nan"))}
                                for r in result["runs"]]))
    if "comparison" in result:
        c = result["comparison"]
        print("gpmlip/FLARE RMSE ratio at gpmlip's call counts:", c["ratio_at_gpmlip_calls"],
              "goal (<= 0.5 everywhere):", c["goal_ratio_le_0.5_everywhere"])
    if "active_vs_passive" in result:
        print("active vs passive (median RMSE meV/Å):", result["active_vs_passive"])
    print(f"written to {args.out} and {png}")
    return result


if __name__ == "__main__":
    main()
