"""MD prediction speed of GAP, FLARE and gpmlip side by side, in one run (issue 14).

What is measured
----------------
Energy + forces of one MD step, per atom: for every code, sparse-point count, thread count and
system size, a fresh subprocess loads the fitted model, builds the system, makes one warm-up call
(reported as the *first-call latency*: it includes any compilation or set-up) and then repeated
calls, each on freshly displaced positions (N(0, 0.01 Å) about the rattled cell, so that nothing
is cached); the median over those calls, in ms per atom per step, is the number.  The codes run
one after another, never concurrently, and interleaved size by size, so that ratios within one
run are what count (this VM is shared and noisy; the 1-minute load average is recorded).

* **GAP**: quippy ``Potential`` (the ``gap_fit`` XML) as an ASE calculator.
* **FLARE**: ``SGP_Calculator`` around an ``SGP_Wrapper`` with the fitted B2 ``SparseGP``; it
  always computes variances as well (``--flare-variance``, default ``local``, its cheapest: the
  per-atom local uncertainty, like gpmlip's).  Row ``flare mean``: ``SparseGP.predict_mean``
  on a ``Structure``, mean only (what ``side_by_side_cu.py`` times).
* **gpmlip**: ``GPCalculator`` (the MD path).  Row ``gpmlip +var``: the same calculator also asked
  for ``local_std_normalised``, as the on-the-fly learner and the gate ask for it.  If
  ``GPCalculator`` takes a variance switch (a keyword named ``variance``, ``uncertainty`` ...), the
  MD row turns it off and the ``+var`` row on; today's calculator has none and always computes the
  local variances, so both rows then cost the same.  Row ``gpmlip predict``: ``model.predict(atoms,
  stress=False)`` (energies, forces, local variances; no stress, which the calculator adds for
  periodic cells).  Only the public API is used (``load_model``, ``GPCalculator``,
  ``SparseGP.predict``), so a faster engine behind it is measured without editing this script.

Every step asks for forces and takes the energy from the same call's results (``atoms.get_forces()``;
``calc.results["energy"]``): FLARE's calculator recomputes on every property request, so asking
for energy and forces separately would time it twice.

Also: peak RSS of each child (``getrusage``, self and reaped children; for gpmlip with ``n_jobs`` > 1
the Jacobians in ``/dev/shm`` are not in any RSS), the RSS after loading (before predicting), and a
fitted time-vs-size exponent (least-squares slope of log time per step against log atoms).

Models and systems
------------------
Models are fitted once per code and sparse count, each in its own subprocess, on the EMT Cu frames
of ``side_by_side_cu.py`` (108-atom fcc Cu, a = 3.61 Å, rattled 0.05-0.15 Å and strained), 8 frames
by default, more when the sparse count needs them (at least 1.25 environments per sparse point:
2000 sparse points take 24 frames).  Settings are ``side_by_side_cu.py``'s: SOAP n_max 8, l_max 6,
r_cut 5 Å, atom_sigma 0.5 Å, zeta 4, delta 1 eV, noise 1 meV/atom, 50 meV/Å, 1 meV/Å³; GAP soap
plus its 2-body term (15 sparse points; ``--gap-no-2b`` drops it), CUR sparse points; FLARE
B2 with n_max 8, l_max 6, Chebyshev radial basis, quadratic cutoff 5 Å, ``NormalizedDotProduct``
power 4 (the same exponent as zeta; power 2 would allow FLARE's quadratic mapping in LAMMPS, not
in Python), randomly chosen sparse atoms (FLARE has no CUR); gpmlip CUR.
Systems: fcc Cu, a = 3.6 Å, rattled N(0, 0.05 Å) (seeded), 108 / 864 / 6912 atoms (3^3, 6^3,
12^3 conventional cells, ``--sizes``).

Threads: each child gets OMP_NUM_THREADS = OPENBLAS_NUM_THREADS = MKL_NUM_THREADS =
NUMBA_NUM_THREADS = T (``--threads 1 2``), and gpmlip's ``load_model(n_jobs=T)`` where it takes it.

Guards: sizes run in increasing order; before a size, each code's time and memory are extrapolated
linearly in N from its largest measured size, and the size is recorded as "skipped: estimated X GB"
(over ``--max-gb``) instead of being run, and each row (variant) that no longer fits in
``--budget-s`` with the rows before it as "skipped: estimated X s".  A running
child whose RSS (with its worker processes) passes ``--max-gb`` is killed and recorded; so is one
that outlives its time limit.  Inside a child, repeated calls stop once they have used their share of
the budget (at least ``--n-min`` calls).

Issue 14's reference figures ("one thread each, one quiet run, 500 sparse points, SOAP n8 l6
r_cut 5, FLARE B2 with the same n, l, cutoff, fitted on 8 frames of 108-atom EMT Cu": gpmlip 4.4 /
5.1, GAP 2.5 / 3.0, FLARE 3.3 / 4.7 ms/atom at 108 / 864 atoms) name no script.  They fit
``side_by_side_cu.py``'s models and timing (8 training frames, ``--n-jobs 1``, one thread): its
GAP is soap + 2b, its FLARE row is ``predict_mean``, its gpmlip row ``GPCalculator``.  The
defaults here are those settings; in this script's first runs FLARE came out at 3.3-3.5 / 4.7-4.9
(both rows), GAP soap + 2b 2.3-3.4 / 2.3, GAP soap only 2.0-2.1 / 2.1, gpmlip 3.9-4.2 / 4.4-5.6.

Known limit of a peer: FLARE 1.4's Python ``Structure`` builds its neighbour list from dense
arrays of N^2 x (periodic images) rows, so it cannot build a 6912-atom cell (``std::bad_alloc``,
recorded as a failed row); FLARE runs large cells through its LAMMPS pair style instead.

Usage::

    /work/peers-venv/bin/python benchmarks/md_speed.py --quick            # < 3 min, 108 atoms
    /work/peers-venv/bin/python benchmarks/md_speed.py --sizes 108 864 --n-sparse 500 --threads 1
    /work/peers-venv/bin/python benchmarks/md_speed.py --n-sparse 500 2000 --threads 1 2 \\
        --json md_speed.json                                                # everything

A peer that is not installed is skipped with a message; gpmlip alone still runs.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import math
import os
import resource
import subprocess
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import side_by_side_cu as sbs  # noqa: E402

log = logging.getLogger("md_speed")

CODES = ("gap", "flare", "gpmlip")
LATTICE = 3.6  # Å, the test systems
RATTLE = 0.05  # Å
ENVS_PER_SPARSE = 1.25  # training environments per sparse point, at least
VARIANCE_SWITCHES = ("variance", "uncertainty", "uncertainties", "local_variance",
                     "compute_variance")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "NUMBA_NUM_THREADS")


# -- systems and models ----------------------------------------------------------------------
def fcc_cu(n_atoms: int, seed: int = 0):
    """Rattled fcc Cu of ``n_atoms`` = 4 k^3 atoms (k^3 conventional cells)."""
    from ase.build import bulk

    k = round((n_atoms / 4) ** (1 / 3))
    if 4 * k ** 3 != n_atoms:
        raise SystemExit(f"--sizes: {n_atoms} is not 4 k^3 (108, 864, 6912, ...)")
    atoms = bulk("Cu", "fcc", a=LATTICE, cubic=True).repeat(k)
    atoms.positions += np.random.default_rng([seed, n_atoms]).normal(0.0, RATTLE,
                                                                     atoms.positions.shape)
    return atoms


def n_train_for(args, n_sparse: int) -> int:
    return max(args.n_train, math.ceil(ENVS_PER_SPARSE * n_sparse / 108))


def data_for(args, n_sparse: int) -> dict:
    return sbs.ensure_data(SimpleNamespace(n_train=n_train_for(args, n_sparse), n_test=1,
                                           seed=args.seed, workdir=args.workdir))


def model_path(args, code: str, n_sparse: int) -> Path:
    suffix = {"gap": ".xml", "flare": ".json", "gpmlip": ".npz"}[code]
    two_body = "_2b" if code == "gap" and not args.gap_no_2b else ""
    return Path(args.workdir) / f"{code}_n{n_train_for(args, n_sparse)}_s{args.seed}_m{n_sparse}" \
                                f"{two_body}{suffix}"


def fit(code: str, args) -> dict:
    """Fit one code's model (in this process) and write it to :func:`model_path`."""
    data = data_for(args, args.n_sparse_one)
    path = model_path(args, code, args.n_sparse_one)
    train = sbs.read_frames(data["train"])
    t = time.perf_counter()
    if code == "gap":
        binary = sbs.gap_fit_binary()
        if binary is None:
            return {"status": "skipped", "reason": f"quippy-ase (gap_fit) is not installed in "
                    f"{sys.executable}; see /work/shared/anchors/install_peers.sh"}
        cmd, *_ = sbs.fit_gap(binary, data, path, args.n_sparse_one, two_body=not args.gap_no_2b)
        extra = {"command": cmd}
    elif code == "flare":
        try:
            from flare.bffs.sgp._C_flare import SparseGP
        except ImportError as exc:
            return {"status": "skipped", "reason": f"FLARE is not importable in {sys.executable}: "
                    f"{exc}; see /work/shared/anchors/install_peers.sh"}
        sgp, _b2, _kernel = sbs.fit_flare(train, args.n_sparse_one, args.seed, data["e0_Cu"])
        SparseGP.to_json(str(path), sgp)
        extra = {}
    else:
        desc = sbs.gpmlip_soap(1)
        model, kwargs = sbs.gpmlip_model(desc, args.n_sparse_one, data["e0_Cu"])
        model.fit(train)
        model.save(path)
        extra = {"settings": kwargs}
    return {"status": "ok", "model": str(path), "fit_s": time.perf_counter() - t,
            "n_train": len(train), "e0_Cu": data["e0_Cu"], **extra}


def gpmlip_steps(path: str, threads: int) -> list:
    """``(name, step)`` pairs for gpmlip, through its public API only."""
    import gpmlip

    kw = {"n_jobs": threads} if "n_jobs" in inspect.signature(gpmlip.load_model).parameters else {}
    model = gpmlip.load_model(path, **kw)
    params = inspect.signature(gpmlip.GPCalculator).parameters
    switch = next((name for name in VARIANCE_SWITCHES if name in params), None)
    md = gpmlip.GPCalculator(model, **({switch: False} if switch else {}))
    var = gpmlip.GPCalculator(model, **({switch: True} if switch else {}))

    def with_variance(atoms):
        energy_forces(atoms)
        atoms.calc.get_property("local_std_normalised", atoms)

    note = (f"variance switch GPCalculator({switch}=...)" if switch else
            "GPCalculator has no variance switch: it always computes local variances")
    return [("gpmlip", md, energy_forces, note), ("gpmlip +var", var, with_variance, note),
            ("gpmlip predict", None,
             lambda a: model.predict(a, forces=True, stress=False, variance=False),
             "model.predict(atoms, forces=True, stress=False, variance=False)")], model


def flare_steps(path: str, variance_type: str) -> list:
    from flare.bffs.sgp import SGP_Wrapper
    from flare.bffs.sgp._C_flare import B2, NormalizedDotProduct, SparseGP
    from flare.bffs.sgp.calculator import SGP_Calculator

    b2 = B2("chebyshev", "quadratic", [0.0, sbs.R_CUT], [], [1, sbs.N_MAX, sbs.L_MAX])
    kernels = [NormalizedDotProduct(sbs.SIGNAL_STD, sbs.ZETA)]
    sgp = SparseGP.from_json(path)
    wrapper = SGP_Wrapper(kernels, [b2], sbs.R_CUT, sgp.energy_noise, sgp.force_noise,
                          sgp.stress_noise, species_map={29: 0}, variance_type=variance_type)
    wrapper.sparse_gp = sgp

    def mean_only(atoms):
        sgp.predict_mean(sbs.flare_structure(atoms, b2))

    return [("flare", SGP_Calculator(wrapper), energy_forces,
             f"SGP_Calculator, variance_type={variance_type}"),
            ("flare mean", None, mean_only, "SparseGP.predict_mean (no variance)")], \
        (b2, kernels, sgp, wrapper)


def gap_steps(path: str) -> list:
    from quippy.potential import Potential

    pot = Potential(param_filename=path)
    return [("gap", pot, energy_forces, "quippy Potential")], pot


def energy_forces(atoms) -> None:
    """One MD step's evaluation: forces, and the energy from the same call."""
    atoms.get_forces()
    if "energy" not in atoms.calc.results:
        atoms.get_potential_energy()


def rss_mb(pid: int | str = "self") -> float:
    """Current resident set of a process, MB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def predict(code: str, args) -> dict:
    """Time one code at one size and thread count (in this process)."""
    path = args.model
    t = time.perf_counter()
    if code == "gap":
        steps, keep = gap_steps(path)
    elif code == "flare":
        steps, keep = flare_steps(path, args.flare_variance)
    else:
        steps, keep = gpmlip_steps(path, args.threads_one)
    load_s = time.perf_counter() - t
    if args.variants:
        steps = [step for step in steps if step[0] in args.variants.split(",")]
    atoms0 = fcc_cu(args.size, args.seed)
    rss_before = rss_mb()
    rows = []
    budget = args.budget_s / len(steps)
    for name, calc, step, note in steps:
        atoms = atoms0.copy()
        atoms.calc = calc
        try:
            timing = sbs.time_steps(atoms, step, args.n_repeat, budget_s=budget, n_min=args.n_min)
        except Exception as exc:  # e.g. MemoryError: the other rows still run
            log.error("%s failed at %d atoms:\n%s", name, args.size, traceback.format_exc())
            rows.append({"variant": name, "note": note, "status": "failed",
                         "reason": f"{type(exc).__name__}: {exc}"})
            continue
        rows.append({"variant": name, "note": note, "status": "ok", **timing})
        log.info("%s %d atoms, %d thread(s): %.3f ms/atom (first call %.2f s, %d calls)", name,
                 args.size, args.threads_one, timing["ms_per_atom"], timing["first_call_s"],
                 timing["n_calls"])
    close = getattr(getattr(keep, "descriptor", None), "close", None)
    if close:  # reap gpmlip's worker processes, so that RUSAGE_CHILDREN includes them
        close()
    peak = max(sbs.peak_mb(resource.RUSAGE_SELF), sbs.peak_mb(resource.RUSAGE_CHILDREN))
    return {"status": "ok", "variants": rows, "load_s": load_s, "rss_before_mb": rss_before,
            "peak_rss_mb": peak}


# -- the driver: one subprocess per fit and per (code, size, threads) -------------------------
def child_env(threads: int) -> dict:
    env = dict(os.environ)
    env.update({name: str(threads) for name in THREAD_VARIABLES})
    return env


def tree_rss_mb(pid: int) -> float:
    """RSS of ``pid`` and all its descendants, MB."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += rss_mb(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return total


def run_child(argv: list[str], out: Path, threads: int, timeout_s: float, max_gb: float) -> dict:
    """Run this script with ``argv`` in a subprocess; kill it past ``max_gb`` or ``timeout_s``."""
    out.unlink(missing_ok=True)
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--out", str(out)]
    proc = subprocess.Popen(cmd, env=child_env(threads), start_new_session=True)
    t0, high, why = time.perf_counter(), 0.0, None
    while proc.poll() is None:
        high = max(high, tree_rss_mb(proc.pid))
        if high > 1024 * max_gb:
            why = f"killed: RSS reached {high / 1024:.1f} GB (--max-gb {max_gb:g})"
        elif time.perf_counter() - t0 > timeout_s:
            why = f"killed: still running after {timeout_s:.0f} s"
        if why:
            os.killpg(proc.pid, 9)  # the child's own process group (start_new_session)
            proc.wait()
            break
        time.sleep(0.2)
    if why is None and proc.returncode == 0 and out.exists():
        return json.loads(out.read_text())
    return {"status": "failed", "reason": why or f"subprocess exited with {proc.returncode}",
            "watched_rss_mb": high}


def common_argv(args) -> list[str]:
    return ["--workdir", args.workdir, "--n-train", str(args.n_train), "--seed", str(args.seed),
            "--flare-variance", args.flare_variance] + (["--gap-no-2b"] if args.gap_no_2b else [])


def estimate(previous: dict | None, n_atoms: int) -> tuple[float, dict] | None:
    """GB, and s per row (warm-up + ``n_min`` calls), for ``n_atoms``, extrapolated linearly
    from the largest size measured."""
    if previous is None:
        return None
    n = previous["n_atoms"]
    base = previous["rss_before_mb"]
    gb = (base + (previous["peak_rss_mb"] - base) * n_atoms / n) / 1024
    seconds = {v["variant"]: (1 + v["n_min"]) * v["ms_per_atom"] * n_atoms / 1e3
               if v["status"] == "ok" else math.inf for v in previous["variants"]}
    return gb, {**seconds, **{v: math.inf for v in previous.get("not_run", [])}}


def within_budget(seconds: dict, budget: float) -> tuple[list, list]:
    """Rows (in order) whose estimated times fit in ``budget`` together, and the rest."""
    keep, total = [], 0.0
    for name, t in seconds.items():
        if total + t > budget:
            break
        keep.append(name)
        total += t
    return keep, [name for name in seconds if name not in keep]


def run_all(args) -> dict:
    rows, fits = [], {}
    load = [os.getloadavg()[0]]
    for n_sparse in args.n_sparse:
        data_for(args, n_sparse)
        for code in args.codes:
            log.info("fitting %s with %d sparse points", code, n_sparse)
            fits[code, n_sparse] = run_child(
                ["--fit", code, "--n-sparse", str(n_sparse)] + common_argv(args),
                Path(args.workdir) / f"fit_{code}_{n_sparse}.json", max(args.threads),
                args.fit_timeout_s, args.fit_max_gb)
            log.info("%s fit: %s", code, fits[code, n_sparse].get("status"))
    for n_sparse in args.n_sparse:
        for threads in args.threads:
            last: dict[str, dict] = {}
            for size in sorted(args.sizes):
                for code in args.codes:
                    key = {"code": code, "n_sparse": n_sparse, "threads": threads, "n_atoms": size}
                    fitted = fits[code, n_sparse]
                    if fitted.get("status") != "ok":
                        rows.append({**key, "status": fitted.get("status", "failed"),
                                     "reason": "fit: " + str(fitted.get("reason", ""))})
                        continue
                    guess = estimate(last.get(code), size)
                    if guess and guess[0] > args.max_gb:
                        rows.append({**key, "status": "skipped",
                                     "reason": f"estimated {guess[0]:.1f} GB "
                                               f"(--max-gb {args.max_gb:g})"})
                        continue
                    variants = []
                    if guess:
                        variants, over = within_budget(guess[1], args.budget_s)
                        rows += [{**key, "status": "skipped", "variants_skipped": [v],
                                  "reason": "failed at a smaller size" if math.isinf(guess[1][v])
                                  else f"estimated {guess[1][v]:.0f} s "
                                       f"(--budget-s {args.budget_s:g} for all rows)"}
                                 for v in over]
                        if not variants:
                            continue
                    log.info("timing %s: %d atoms, %d thread(s), %d sparse", code, size,
                             threads, n_sparse)
                    load0 = os.getloadavg()[0]
                    row = run_child(["--predict", code, "--model", fitted["model"], "--size",
                                     str(size), "--threads", str(threads), "--n-repeat",
                                     str(args.n_repeat), "--n-min", str(args.n_min),
                                     "--budget-s", str(args.budget_s),
                                     "--variants", ",".join(variants)] + common_argv(args),
                                    Path(args.workdir) / f"predict_{code}.json", threads,
                                    2 * args.budget_s + 300, args.max_gb)
                    row.update(key, loadavg_1min=[load0, os.getloadavg()[0]])
                    if row.get("status") == "ok":
                        for v in row["variants"]:
                            v["n_min"] = args.n_min
                        row["not_run"] = [v for v in (guess[1] if guess else {}) if v not in variants]
                        last[code] = row
                    rows.append(row)
    load.append(os.getloadavg()[0])
    return {"rows": rows, "fits": {f"{c}/{m}": v for (c, m), v in fits.items()},
            "settings": settings(args), "loadavg_1min": load,
            "when": time.strftime("%Y-%m-%d %H:%M:%S"), "python": sys.executable}


def settings(args) -> dict:
    return {"soap": f"n_max={sbs.N_MAX} l_max={sbs.L_MAX} r_cut={sbs.R_CUT} "
                    f"atom_sigma={sbs.ATOM_SIGMA} zeta={sbs.ZETA}",
            "gap": "soap" if args.gap_no_2b else "soap + distance_2b",
            "flare": f"B2 chebyshev quadratic n_max={sbs.N_MAX} l_max={sbs.L_MAX} "
                     f"cutoff={sbs.R_CUT}, NormalizedDotProduct power {sbs.ZETA}, "
                     f"SGP_Calculator variance_type={args.flare_variance}",
            "systems": f"fcc Cu a={LATTICE} rattled {RATTLE} Å", "sizes": sorted(args.sizes),
            "n_sparse": args.n_sparse, "threads": args.threads, "n_repeat": args.n_repeat,
            "n_min": args.n_min, "budget_s": args.budget_s, "max_gb": args.max_gb,
            "n_train": {m: n_train_for(args, m) for m in args.n_sparse}, "cores": os.cpu_count()}


# -- report -----------------------------------------------------------------------------------
def flat(rows: list[dict]) -> list[dict]:
    """One dict per (variant, sparse, threads, size); failed/skipped runs as one row per code."""
    out = []
    for row in rows:
        base = {k: row[k] for k in ("code", "n_sparse", "threads", "n_atoms")}
        if row.get("status") != "ok":
            for name in row.get("variants_skipped", [row["code"]]):
                out.append({**base, "variant": name, "status": row.get("status"),
                            "reason": row.get("reason", "")})
            continue
        for v in row["variants"]:
            out.append({**base, "status": "ok", **v, "peak_rss_mb": row["peak_rss_mb"],
                        "rss_before_mb": row["rss_before_mb"]})
    return out


def exponents(table: list[dict]) -> dict:
    """Least-squares slope of log(time per step) against log(atoms), per series."""
    series: dict[tuple, list] = {}
    for r in table:
        if r["status"] == "ok":
            series.setdefault((r["variant"], r["n_sparse"], r["threads"]), []).append(
                (r["n_atoms"], r["ms_per_atom"] * r["n_atoms"]))
    return {key: float(np.polyfit(np.log([n for n, _ in pts]), np.log([t for _, t in pts]), 1)[0])
            for key, pts in series.items() if len({n for n, _ in pts}) >= 2}


def report(result: dict) -> str:
    table = flat(result["rows"])
    ref = {(r["variant"], r["n_sparse"], r["threads"], r["n_atoms"]): r["ms_per_atom"]
           for r in table if r["status"] == "ok"}
    slopes = exponents(table)
    s = result["settings"]
    lines = [f"SOAP {s['soap']}; GAP {s['gap']}; FLARE {s['flare']}; {s['systems']}; "
             f"{s['cores']} cores; load average {result['loadavg_1min'][0]:.1f} -> "
             f"{result['loadavg_1min'][1]:.1f}", "",
             "| code | sparse | threads | atoms | ms/atom/step | best | first call s | calls | "
             "gpmlip/GAP | gpmlip/FLARE | gpmlip/FLARE mean | peak MB | exponent |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in table:
        head = f"| {r['variant']} | {r['n_sparse']} | {r['threads']} | {r['n_atoms']} |"
        if r["status"] != "ok":
            peak = f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") else ""
            lines.append(f"{head} {r['status']}: {r['reason']} | | | | | | | {peak} | |")
            continue
        key = (r["n_sparse"], r["threads"], r["n_atoms"])
        ratios = []
        for peer in ("gap", "flare", "flare mean"):
            other = ref.get((peer, *key))
            ratios.append(f"{r['ms_per_atom'] / other:.2f}" if r["code"] == "gpmlip" and other
                          else "")
        slope = slopes.get((r["variant"], r["n_sparse"], r["threads"]))
        lines.append(f"{head} {r['ms_per_atom']:.3f} | {r['best_ms_per_atom']:.3f} | "
                     f"{r['first_call_s']:.2f} | {r['n_calls']} | " + " | ".join(ratios) +
                     f" | {r['peak_rss_mb']:.0f} | {'' if slope is None else f'{slope:.2f}'} |")
    notes = sorted({f"{r['variant']}: {r['note']}" for r in table if r.get("note")})
    lines += ["", "exponent: slope of log(ms per step) vs log(atoms) over the sizes measured; "
              "peak MB: the child's ru_maxrss (model loading included)."] + notes
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[108, 864, 6912])
    parser.add_argument("--n-sparse", type=int, nargs="+", default=[500])
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--codes", nargs="+", choices=CODES, default=list(CODES))
    parser.add_argument("--n-train", type=int, default=8, help="training frames (at least)")
    parser.add_argument("--n-repeat", type=int, default=10, help="timed calls after the warm-up")
    parser.add_argument("--n-min", type=int, default=3, help="timed calls however long they take")
    parser.add_argument("--budget-s", type=float, default=300.0,
                        help="time for one code at one size (all its rows)")
    parser.add_argument("--max-gb", type=float, default=8.0, help="memory guard per child")
    parser.add_argument("--fit-timeout-s", type=float, default=1800.0)
    parser.add_argument("--fit-max-gb", type=float, default=16.0, help="memory guard per fit")
    parser.add_argument("--flare-variance", choices=("local", "SOR", "DTC"), default="local")
    parser.add_argument("--gap-no-2b", action="store_true",
                        help="GAP with SOAP only (default: soap + distance_2b, as side_by_side_cu.py)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="/tmp/gpmlip_md_speed")
    parser.add_argument("--quick", action="store_true", help="108 atoms, 50 sparse, 1 thread")
    parser.add_argument("--json", help="write all results to this file")
    # internal: one child's job
    parser.add_argument("--fit", choices=CODES, help=argparse.SUPPRESS)
    parser.add_argument("--predict", choices=CODES, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--variants", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        stream=sys.stderr)
    args.workdir = os.path.abspath(args.workdir)
    if args.quick:
        args.sizes, args.n_sparse, args.threads, args.n_repeat = [108], [50], [1], 3

    if args.fit or args.predict:
        args.n_sparse_one, args.threads_one = args.n_sparse[0], args.threads[0]
        try:
            row = fit(args.fit, args) if args.fit else predict(args.predict, args)
        except Exception as exc:  # a failing code is a row in the table, not a crash of the run
            log.error("%s failed:\n%s", args.fit or args.predict, traceback.format_exc())
            row = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
        Path(args.out).write_text(json.dumps(row, indent=1, default=float))
        return

    result = run_all(args)
    text = report(result)
    print("\n" + text)
    if args.json:
        Path(args.json).write_text(json.dumps({**result, "table": text}, indent=1, default=float))


if __name__ == "__main__":
    main()
