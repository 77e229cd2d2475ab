"""`gpmlip train` as a new user runs it on Zuo et al. (2020) Mo, Si, Li: the model builder's defaults.

For each element, in its own process and one after the other (the machine's 2 cores are the
builder's), the command

    gpmlip train {El}_train.xyz --test {El}_test.xyz -o {El}.npz --json [extra flags]

with nothing else set (species, cutoff and every setting from the builder), then the test MAE
of energies (meV/atom) and forces (eV/Å) against the better of GAP and MTP in the paper, the wall
time of the whole command (descriptors, screening, final fit, noise search, calibration, and the
training- and test-set error tables) and what the builder chose (``gpmlip info``).  The test set
only measures: the builder never sees it.

Usage::

    .venv/bin/python benchmarks/build_model_zuo2020.py --elements Mo Si Li
    .venv/bin/python benchmarks/build_model_zuo2020.py --elements Mo --extra=--no-tune --tag plain
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "zuo2020"
GOAL = {"Mo": (2.24, 0.09), "Si": (2.21, 0.06), "Li": (0.49, 0.01)}
"""Test MAE of the better of GAP and MTP in the paper: meV/atom, eV/Å."""


def run(element: str, out: Path, extra: list[str], tag: str, data: Path = DATA) -> dict:
    model = out / f"{element}_{tag}.npz"
    cmd = [sys.executable, "-m", "gpmlip.cli", "train", str(data / f"{element}_train.xyz"),
           "--test", str(data / f"{element}_test.xyz"), "-o", str(model), "--json", *extra]
    print("running", " ".join(cmd), flush=True)
    load = os.getloadavg()
    t = time.perf_counter()
    with open(out / f"{element}_{tag}.log", "w") as log:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"{element} failed: see {out / f'{element}_{tag}.log'}")
    report = json.loads(proc.stdout)
    test = report["test"]["all"]
    info = subprocess.run([sys.executable, "-m", "gpmlip.cli", "info", str(model), "--json"],
                          capture_output=True, text=True, check=True)
    build = json.loads(info.stdout).get("build")
    e, f = test["energy_meV_atom"]["mae"], test["force_meV_A"]["mae"] / 1000
    return {"element": element, "command": " ".join(cmd[1:]), "seconds": seconds,
            "loadavg_before": load, "loadavg_after": os.getloadavg(),
            "test_mae_e_mev_atom": e, "test_mae_f_ev_a": f,
            "goal": GOAL[element], "ratio_e": e / GOAL[element][0], "ratio_f": f / GOAL[element][1],
            "sparse_points": report["sparse_points"], "build": build}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--elements", nargs="+", default=["Mo", "Si", "Li"])
    p.add_argument("--extra", default="", help="further `gpmlip train` flags, space-separated")
    p.add_argument("--tag", default="default", help="name of this run's files")
    p.add_argument("--out", default=str(HERE / "results" / "build_model"))
    p.add_argument("--data", default=str(DATA), help="folder of the Zuo 2020 extxyz files")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for el in args.elements:
        r = run(el, out, args.extra.split(), args.tag, Path(args.data))
        results.append(r)
        print(f"{el}: test MAE {r['test_mae_e_mev_atom']:.3f} meV/atom ({r['ratio_e']:.2f}x goal "
              f"{r['goal'][0]}), {r['test_mae_f_ev_a']:.4f} eV/Å ({r['ratio_f']:.2f}x goal "
              f"{r['goal'][1]}), {r['seconds']:.0f} s; chose "
              f"{(r['build'] or {}).get('chosen_changes')}", flush=True)
        (out / f"{el}_{args.tag}.json").write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
