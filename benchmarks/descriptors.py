"""Descriptor benchmark: SOAP features and exact Jacobians for EMT-rattled fcc Cu.

Usage::

    python benchmarks/descriptors.py                 # 108, 256, 864, 2048 atoms
    python benchmarks/descriptors.py --sizes 108 256 --no-dscribe

Every measurement runs in a fresh subprocess so that its peak memory (ru_maxrss) is its own.  Each
timing is the median of several runs after one warm-up (worker start-up and the first touch of fresh
memory, which is slow on this VM); the best run is printed too.  SOAP n_max=8, l_max=6, r_cut=5.0 Å, sigma=0.5 Å.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

SETTINGS = dict(species=["Cu"], r_cut=5.0, n_max=8, l_max=6, sigma=0.5)
REPEATS = {108: 7, 256: 5, 864: 3, 2048: 3}


def cu_cell(n_atoms: int):
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.md.langevin import Langevin
    from ase import units

    rep = round((n_atoms / 4) ** (1 / 3))
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(rep)
    assert len(atoms) == n_atoms, f"{n_atoms} is not 4 k^3"
    atoms.rattle(0.1, seed=0)
    if n_atoms <= 256:  # a few EMT steps for a thermal-looking structure; rattle suffices beyond
        atoms.calc = EMT()
        Langevin(atoms, 2 * units.fs, temperature_K=800, friction=0.02, fixcm=False, rng=np.random.default_rng(0)).run(20)
    return atoms


def measure(mode: str, n_atoms: int, repeat: int) -> dict:
    """Run in the child: time one mode at one size."""
    import gpmlip

    atoms = cu_cell(n_atoms)
    if mode == "dscribe-numerical":
        from dscribe.descriptors import SOAP

        soap = SOAP(periodic=True, **SETTINGS)
        t = time.perf_counter()
        d, _ = soap.derivatives(atoms, method="numerical", attach=True)
        elapsed = time.perf_counter() - t
        out = {"seconds": elapsed, "jacobian_mb": d.nbytes / 1e6}
    else:
        n_jobs = 2 if mode.endswith("x2") else 1
        soap = gpmlip.SOAP(**SETTINGS, n_jobs=n_jobs)
        gradients = mode.startswith("jacobian")
        soap.describe(atoms, gradients=gradients)  # warm-up (worker start, first-touch memory)
        times, env = [], None
        for _ in range(repeat):
            del env  # so that peak memory is one result, not two
            t = time.perf_counter()
            env = soap.describe(atoms, gradients=gradients)
            times.append(time.perf_counter() - t)
            if gradients:
                pairs = len(env.pair_centre)
        soap.close()
        out = {"seconds": float(np.median(times)), "best_seconds": min(times),
               "jacobian_mb": env.nbytes / 1e6}
        # With worker processes the Jacobian lives in /dev/shm, which the parent's RSS misses.
        out["shared_mb"] = env.nbytes / 1e6 if gradients and n_jobs > 1 else 0.0
        if gradients:
            out["pairs_per_atom"] = pairs / n_atoms
    out.update(mode=mode, n_atoms=n_atoms,
               ms_per_atom=1e3 * out["seconds"] / n_atoms,
               peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def run_child(mode: str, n_atoms: int, repeat: int) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(n_atoms), str(repeat)],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} at {n_atoms} atoms failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[108, 256, 864, 2048])
    parser.add_argument("--no-dscribe", action="store_true", help="skip dscribe's numerical run")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, n, repeat = args.child
        print(json.dumps(measure(mode, int(n), int(repeat))))
        return

    rows = []
    for n in args.sizes:
        for mode in ("features", "jacobian x1", "jacobian x2"):
            row = run_child(mode, n, REPEATS.get(n, 2))
            rows.append(row)
            print(f"  measured {mode:12s} {n:5d} atoms: {row['ms_per_atom']:.3f} ms/atom", flush=True)
    if not args.no_dscribe and 108 in args.sizes:
        rows.append(run_child("dscribe-numerical", 108, 1))

    print("\nSOAP n_max=8 l_max=6 r_cut=5.0 sigma=0.5, fcc Cu, 2 cores\n")
    print(f"{'mode':<20}{'atoms':>7}{'median s':>10}{'ms/atom':>10}{'best ms/at':>11}{'pairs/atom':>12}"
          f"{'Jacobian MB':>13}{'peak RSS MB':>13}{'+shm MB':>9}")
    for r in rows:
        pairs = f"{r['pairs_per_atom']:.1f}" if "pairs_per_atom" in r else "-"
        best = 1e3 * r.get("best_seconds", r["seconds"]) / r["n_atoms"]
        print(f"{r['mode']:<20}{r['n_atoms']:>7}{r['seconds']:>10.3f}{r['ms_per_atom']:>10.3f}{best:>11.3f}"
              f"{pairs:>12}{r['jacobian_mb']:>13.1f}{r['peak_mb']:>13.0f}"
              f"{r.get('shared_mb', 0.0):>9.0f}")

    print()
    for mode in ("features", "jacobian x1", "jacobian x2"):
        sel = [r for r in rows if r["mode"] == mode]
        if len(sel) >= 2:
            slope = np.polyfit(np.log([r["n_atoms"] for r in sel]),
                               np.log([r["seconds"] for r in sel]), 1)[0]
            print(f"time exponent ({mode}): {slope:.3f}")
    ref = [r for r in rows if r["mode"] == "dscribe-numerical"]
    ours = [r for r in rows if r["mode"] == "jacobian x2" and r["n_atoms"] == 108]
    if ref and ours:
        print(f"dscribe periodic numerical derivatives at 108 atoms: {ref[0]['seconds']:.2f} s, "
              f"{ref[0]['jacobian_mb']:.0f} MB dense; gpmlip x2 is {ref[0]['seconds'] / ours[0]['seconds']:.1f}x "
              "faster")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
