"""Throughput of the labelling queue: labels per minute per executor, and queue overhead per label.

Runs EMT on rattled 32-atom fcc Cu (cheap: measures the machinery) and a labeller that sleeps a
fixed 0.5 s before EMT (a stand-in for DFT: shows the parallel speed-up) on the local process
pool with 1 and 2 workers and on Parsl's local HighThroughputExecutor (2 workers, if Parsl is
installed).  Executor start-up (workers started and gpmlip imported in each, by one warm-up call per
worker) is timed separately, not in the labels per minute.  The queue
overhead is add + claim + complete per row with a precomputed result, no executor.

    .venv/bin/python benchmarks/queue_throughput.py

Writes benchmarks/results/queue_throughput.json and prints a markdown table.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT

HERE = Path(__file__).resolve().parent
N_EMT, N_SLEEP, N_OVERHEAD, SLEEP = 64, 8, 200, 0.5


class Sleepy(EMT):
    """EMT after a fixed sleep."""

    def __init__(self, seconds: float = SLEEP):
        super().__init__()
        self.seconds = seconds

    def calculate(self, *args, **kwargs):
        time.sleep(self.seconds)
        super().calculate(*args, **kwargs)


def sleepy(seconds: float = SLEEP) -> Sleepy:
    """Factory of :class:`Sleepy` (module level: workers import it as queue_throughput.sleepy)."""
    return Sleepy(seconds)


def structures(n: int, seed: int = 0):
    out = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)   # 32 atoms
        atoms.rattle(0.05, seed=seed * 10_000 + i)
        out.append(atoms)
    return out


def run_case(workdir: Path, name: str, labeller, n: int, make_executor) -> dict:
    from gpmlip.labelling.labellers import Labeller
    from gpmlip.labelling import LabelQueue, label_queue
    from queue_throughput import sleepy

    queue = LabelQueue(workdir / f"{name}.db", labeller)
    queue.add(structures(n))
    t0 = time.perf_counter()
    executor, workers = make_executor()
    # start every worker and import gpmlip there: start-up is reported, not counted as labelling
    from gpmlip.labelling import label_structure

    warm = [executor.submit(label_structure, Labeller("sleepy", sleepy, {"seconds": 0.3}),
                            structures(1, seed=99)[0]) for _ in range(workers)]
    [f.result() for f in warm]
    startup = time.perf_counter() - t0
    try:
        summary = label_queue(queue, executor=executor, lease_seconds=120)
    finally:
        executor.shutdown()
    assert summary["done"] == n, summary
    return {"case": name, "labels": n, "seconds": summary["seconds"],
            "labels_per_minute": summary["labels_per_minute"], "startup_seconds": startup}


def overhead(workdir: Path) -> dict:
    from gpmlip.labelling.labellers import LabelResult
    from gpmlip.labelling import LabelQueue

    queue = LabelQueue(workdir / "overhead.db", "emt")
    frames = structures(N_OVERHEAD, seed=7)
    result = LabelResult(True, 1.0, np.zeros((32, 3)), np.zeros(6), seconds=0.0)
    t0 = time.perf_counter()
    queue.add(frames)
    t1 = time.perf_counter()
    claimed = [queue.claim(1, "bench", 60)[0][0] for _ in range(N_OVERHEAD)]
    t2 = time.perf_counter()
    for rid in claimed:
        queue.complete(rid, result, {"host": "bench"}, "bench")
    t3 = time.perf_counter()
    assert queue.counts()["done"] == N_OVERHEAD
    ms = lambda dt: 1000.0 * dt / N_OVERHEAD   # noqa: E731
    return {"rows": N_OVERHEAD, "add_ms": ms(t1 - t0), "claim_ms": ms(t2 - t1),
            "complete_ms": ms(t3 - t2), "total_ms": ms(t3 - t0)}


def main() -> None:
    sys.path.insert(0, str(HERE))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")])
    from queue_throughput import sleepy as importable_sleepy   # picklable by module name

    from gpmlip.labelling.labellers import Labeller
    from gpmlip.labelling import process_pool

    sleep_lab = Labeller("sleepy", importable_sleepy, {"seconds": SLEEP})
    executors = {"process pool, 1 worker": lambda: (process_pool(1), 1),
                 "process pool, 2 workers": lambda: (process_pool(2), 2)}
    try:
        from gpmlip.labelling.parsl import local_config, parsl_executor

        import parsl

        executors["Parsl local HTEX, 2 workers"] = (
            lambda: (parsl_executor(local_config(2, run_dir=tempfile.mkdtemp(prefix="parsl-"))), 2))
        parsl_version = parsl.__version__
    except ImportError:
        parsl_version = None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for ex_name, make in executors.items():
            for lab_name, lab, n in (("EMT 32 atoms", "emt", N_EMT),
                                     (f"sleep {SLEEP:g} s + EMT", sleep_lab, N_SLEEP)):
                case = run_case(workdir, f"case{len(rows)}", lab, n, make)
                case.update({"executor": ex_name, "labeller": lab_name})
                rows.append(case)
                print(f"{ex_name:30s} {lab_name:20s} {case['labels_per_minute']:8.1f} labels/min",
                      file=sys.stderr)
        cost = overhead(workdir)
    out = {"machine": {"host": platform.node(), "cpus": os.cpu_count(),
                       "python": platform.python_version()},
           "parsl": parsl_version, "throughput": rows, "overhead": cost}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "queue_throughput.json").write_text(json.dumps(out, indent=2) + "\n")
    print("| executor | labeller | labels | seconds | labels/min | executor start-up (s) |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['executor']} | {r['labeller']} | {r['labels']} | {r['seconds']:.2f} | "
              f"{r['labels_per_minute']:.1f} | {r['startup_seconds']:.2f} |")
    print()
    print(f"Queue overhead ({cost['rows']} rows of 32 atoms, no executor): add "
          f"{cost['add_ms']:.2f} ms, claim {cost['claim_ms']:.2f} ms, complete "
          f"{cost['complete_ms']:.2f} ms; total {cost['total_ms']:.2f} ms per label.")


if __name__ == "__main__":
    main()
