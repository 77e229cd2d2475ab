"""MD throughput of ``pair_style gpmlip`` in LAMMPS: sizes, ranks, interface overhead, memory.

What is done
------------
For each ``--sizes`` N (fcc Cu cubic cells: 864 = 4 x 6^3, 6912 = 4 x 12^3, 55296 = 4 x 24^3
atoms, a = 3.61 Å, Maxwell-Boltzmann velocities at 300 K, seed 1) and each ``--ranks`` K, one NVE
run of ``--steps`` steps (1 fs, neighbour skin 1 Å, no dump) is made with
``mpirun -np K lmp`` through :func:`gpmlip.lammps.run_md`.  The model is ``--model``: a gpmlip
``.npz`` file (its elements must include ``--element``) or, by default, the toy stand-in
``python:lammps_toy:make`` from ``tests/lammps_toy.py`` (a second-moment tight-binding potential in numpy, cutoff 5 Å,
about 78 pairs per atom).

Reported metrics (per run), read from the LAMMPS log
-----------------------------------------------------
* atom-steps/s: N x steps / LAMMPS "Loop time" (setup excluded);
* overhead %: time in the pair style outside the model's ``pair_energies`` call (pair-list
  gather, copies, the Python bridge, force scatter), over the total time in the pair style,
  both summed over ranks (the plugin's finish() line);
* scaling: throughput on K ranks / throughput on 1 rank, same N (strong scaling; on this 2-core
  machine 2 ranks is the ceiling);
* memory: peak resident set (LAMMPS + Python + model) of the largest rank, MiB.

Run ``python benchmarks/lammps_md.py --sizes 864 6912`` (toy, a few minutes on 2 cores); results go
to ``benchmarks/results/lammps_md.json``.  Figures with the toy measure the interface and LAMMPS,
not a GP model.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

import numpy as np
from ase import units
from ase.build import bulk

import gpmlip.lammps as gl

TOY = "python:lammps_toy:make"
# the toy is a test double: LAMMPS (a subprocess) imports it from tests/
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parents[1] / "tests"),
                                                         os.environ.get("PYTHONPATH")]))
LOOP = re.compile(r"Loop time of ([\d.eE+-]+) on (\d+) procs for (\d+) steps with (\d+) atoms")
PAIR = re.compile(r"pair_style gpmlip: (\d+) force calls, ([\d.eE+-]+) s in the pair style, "
                  r"([\d.eE+-]+) s in the Python bridge call, ([\d.eE+-]+) s in the model's "
                  r"pair_energies, .*peak memory ([\d.]+) MiB")


def cell(n_atoms: int, element: str, a: float):
    reps = round((n_atoms / 4) ** (1 / 3))
    if 4 * reps ** 3 != n_atoms:
        raise SystemExit(f"--sizes: {n_atoms} is not 4 n^3 (fcc cubic cells)")
    atoms = bulk(element, "fcc", a=a, cubic=True).repeat(reps)
    rng = np.random.default_rng(1)
    atoms.set_momenta(rng.normal(size=(len(atoms), 3))
                      * np.sqrt(300.0 * units.kB * atoms.get_masses())[:, None])
    return atoms


def measure(atoms, model: str, steps: int, ranks: int) -> dict:
    res = gl.run_md(atoms, model, steps=steps, interval=steps, ensemble="nve", nprocs=ranks)
    loop, pair = LOOP.findall(res.log), PAIR.findall(res.log)
    if not loop or not pair:
        raise SystemExit(f"no timing lines in the LAMMPS output of {res.directory}")
    seconds, _, n_steps, n_atoms = loop[-1]
    _, total, bridge, inside, rss = (float(v) for v in pair[-1])
    seconds, n_steps, n_atoms = float(seconds), int(n_steps), int(n_atoms)
    return {"atoms": n_atoms, "ranks": ranks, "steps": n_steps, "loop_s": seconds,
            "atom_steps_per_s": n_atoms * n_steps / seconds,
            "pair_s": total, "bridge_s": bridge, "model_s": inside,
            "overhead_pct": 100.0 * (total - inside) / total,
            "overhead_us_per_atom_step": 1e6 * (total - inside) / (n_atoms * (n_steps + 1)),
            "peak_mib_per_rank": rss}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=TOY, help="model file (.npz) or python:MODULE:FACTORY")
    p.add_argument("--element", default="Cu")
    p.add_argument("--lattice", type=float, default=3.61, help="fcc lattice constant, Å")
    p.add_argument("--sizes", type=int, nargs="+", default=[864, 6912, 55296])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--atom-steps", type=float, default=2e5,
                   help="atoms x steps per run; steps = max(10, this / atoms) (default 2e5)")
    p.add_argument("--output", default=str(Path(__file__).parent / "results" / "lammps_md.json"))
    args = p.parse_args(argv)

    rows = []
    for n in args.sizes:
        atoms = cell(n, args.element, args.lattice)
        steps = max(10, int(args.atom_steps / n))
        for k in args.ranks:
            start = time.perf_counter()
            row = measure(atoms, args.model, steps, k)
            row["wall_s"] = time.perf_counter() - start
            base = next((r for r in rows if r["atoms"] == n and r["ranks"] == 1), None)
            row["scaling_vs_1_rank"] = (row["atom_steps_per_s"] / base["atom_steps_per_s"]
                                        if base else None)
            rows.append(row)
            print(f"{n:6d} atoms {k} rank(s) {row['steps']:4d} steps: "
                  f"{row['atom_steps_per_s']:10.0f} atom-steps/s, overhead "
                  f"{row['overhead_pct']:4.1f}% ({row['overhead_us_per_atom_step']:.2f} us/atom-step), "
                  f"scaling {row['scaling_vs_1_rank'] or 1.0:.2f}, "
                  f"{row['peak_mib_per_rank']:.0f} MiB/rank", flush=True)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "runs": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
