"""Training on workers (issue 30): speed-up, memory per worker, a worker killed mid-fit.

Three measurements, each one run (ratios within a run count on a noisy machine):

``--part speedup``
    Zuo 2020 Mo (``<shared>/data/zuo2020/Mo_train.xyz``, 194 structures) with the builder's plain
    defaults and ``--sparse`` points (default 4000): the same fit (sparse points chosen once,
    then ``SparseGP.fit(..., sparse_atoms=...)``) on 1 and on 2 local worker processes, each with
    one BLAS and one numba thread (``ProcessPoolExecutor(n)`` as the executor, so both use the
    chunked path), wall time of the statistics and of the whole fit, peak RSS of the workers and
    of the client, and the largest relative difference of the test predictions (energies and
    forces) between the two fits.

``--part large``
    A synthetic set of ``--structures`` rattled 64-atom fcc Cu cells (EMT labels; the labels do
    not change the cost), ``--sparse`` points, on 2 workers: time per chunk, time to join the
    chunks, peak RSS per worker; the time on 64 workers projected from the measured per-structure
    and per-join costs (chunks computed in parallel, joins of ``3 m^3`` flops each in a binary
    tree), next to the design matrix GAP forms in memory (rows x m doubles).

``--part kill``
    Zuo Mo fitted on 2 workers while a worker process is killed with SIGKILL after ``--kill-after``
    seconds: the fit finishes (the lost chunk runs again) and its predictions equal an
    undisturbed fit's.

Usage (from the repository root; nothing else running)::

    .venv/bin/python benchmarks/distributed_fit.py --part speedup --sparse 4000
    .venv/bin/python benchmarks/distributed_fit.py --part large --structures 2000 --sparse 2000
    .venv/bin/python benchmarks/distributed_fit.py --part kill --sparse 1000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

import gpmlip
from gpmlip.parallel import mp_context

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "zuo2020"


def _one_thread() -> None:
    from threadpoolctl import threadpool_limits

    os.environ["NUMBA_NUM_THREADS"] = "1"
    threadpool_limits(1)


def peak_rss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0


def mo_model(sparse: int, data: Path) -> tuple:
    """The builder's plain-default Mo model spec, its frames and fixed sparse atoms."""
    from gpmlip.builder import Settings, data_scales
    from gpmlip.data import load_frames

    frames = list(load_frames(data / "Mo_train.xyz"))
    settings = Settings(r_cut=data_scales(frames).r_cut)

    def make(n_jobs: int = 1) -> gpmlip.SparseGP:
        return gpmlip.SparseGP(settings.descriptor(["Mo"]), zeta=settings.zeta,
                               n_sparse=sparse, sparse_method="cur", n_jobs=n_jobs,
                               e0="auto")

    # one CUR selection on all environments, shared by every fit
    from gpmlip.gp.selection import select

    soap = settings.descriptor(["Mo"])
    features = [soap.describe(f.atoms).features for f in frames]
    where = [(i, a) for i, f in enumerate(frames) for a in range(f.n_atoms)]
    x = np.array([features[i][a] for i, a in where])
    pick = select(x, min(sparse, len(where)), "cur", zeta=settings.zeta, seed=0, label="Mo")
    return make, frames, [where[k] for k in pick]


def timed_fit(make, frames, sparse_atoms, workers: int) -> tuple:
    pool = ProcessPoolExecutor(workers, mp_context=mp_context("compute"), initializer=_one_thread)
    try:
        model = make(n_jobs=workers)    # with an executor, n_jobs sets the chunk count
        start = time.perf_counter()
        model.fit(frames, sparse_atoms=sparse_atoms, executor=pool)
        return model, time.perf_counter() - start
    finally:
        pool.shutdown()


def relative_difference(a, b, frames) -> float:
    worst = 0.0
    for f in frames:
        pa, pb = a.predict(f.atoms, stress=False, variance=False), \
            b.predict(f.atoms, stress=False, variance=False)
        worst = max(worst, abs(pa.energy - pb.energy) / abs(pa.energy),
                    float(np.abs(pa.forces - pb.forces).max() / np.abs(pa.forces).max()))
    return worst


def speedup(args) -> dict:
    from gpmlip.data import load_frames

    make, frames, sparse_atoms = mo_model(args.sparse, Path(args.data))
    test = list(load_frames(Path(args.data) / "Mo_test.xyz"))[:10]
    one, t1 = timed_fit(make, frames, sparse_atoms, 1)
    two, t2 = timed_fit(make, frames, sparse_atoms, 2)
    return {"structures": len(frames), "atoms": sum(f.n_atoms for f in frames),
            "sparse_points": one.n_sparse_points, "fit_1_worker_s": t1, "fit_2_workers_s": t2,
            "speedup": t1 / t2, "max_relative_difference": relative_difference(one, two, test),
            "peak_rss_workers_mb": peak_rss_mb(resource.RUSAGE_CHILDREN),
            "peak_rss_client_mb": peak_rss_mb(resource.RUSAGE_SELF),
            "load_average": os.getloadavg()}


def large(args) -> dict:
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    from gpmlip.gp import distributed

    rng = np.random.default_rng(0)
    frames = []
    for _ in range(args.structures):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 4))
        atoms.positions += rng.normal(0, 0.08, atoms.positions.shape)
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(),
                                           forces=atoms.get_forces())
        frames.append(atoms)
    model = gpmlip.SparseGP(gpmlip.SOAP(["Cu"], 5.0, 8, 6), n_sparse=args.sparse,
                            sparse_method="random", e0={"Cu": 0.0})
    timings = {"join_s": 0.0}
    merge = distributed.GramStats.merge

    def timed_merge(self, other):
        start = time.perf_counter()
        merge(self, other)
        timings["join_s"] += time.perf_counter() - start

    distributed.GramStats.merge = timed_merge
    pool = ProcessPoolExecutor(2, mp_context=mp_context("compute"), initializer=_one_thread)
    try:
        start = time.perf_counter()
        model.fit(frames, executor=pool)
        wall = time.perf_counter() - start
    finally:
        pool.shutdown()
        distributed.GramStats.merge = merge
    m = model.n_sparse_points
    rows = sum(3 * len(a) + 1 for a in frames)
    n_chunks = len(distributed.chunks(len(frames), distributed.CHUNKS_PER_WORKER * 2))
    per_structure = (wall - timings["join_s"]) * 2 / len(frames)    # two workers in parallel
    join = timings["join_s"] / max(n_chunks - 1, 1)                  # the first is adopted
    projection = {}
    for workers in (2, 64):
        chunks = distributed.CHUNKS_PER_WORKER * workers
        # the chunks' work split over the workers, then the client's joins one after another
        projection[f"{args.project_structures} structures on {workers} workers"] = \
            per_structure * args.project_structures / workers + join * (chunks - 1)
    return {"structures": len(frames), "atoms_each": 64, "rows": rows, "sparse_points": m,
            "wall_s": wall, "join_s": timings["join_s"], "chunks": n_chunks,
            "seconds_per_structure_per_worker": per_structure,
            "projected_wall_s": projection,
            "peak_rss_workers_mb": peak_rss_mb(resource.RUSAGE_CHILDREN),
            "peak_rss_client_mb": peak_rss_mb(resource.RUSAGE_SELF),
            "design_matrix_gb": rows * m * 8 / 1e9,
            "gram_statistics_gb_per_worker": 3 * m * m * 8 / 1e9,
            "projected_design_matrix_gb": args.project_structures * 193 * m * 8 / 1e9,
            "note": "projection: the chunks' work split over the workers, then the client's "
                    "joins of 2 chunks per worker one after another (measured join time each)"}


def kill(args) -> dict:
    import psutil

    from gpmlip.data import load_frames

    make, frames, sparse_atoms = mo_model(args.sparse, Path(args.data))
    test = list(load_frames(Path(args.data) / "Mo_test.xyz"))[:5]
    reference, _ = timed_fit(make, frames, sparse_atoms, 2)
    killed = []

    def assassin():
        time.sleep(args.kill_after)
        children = psutil.Process().children(recursive=True)
        if children:
            os.kill(children[0].pid, signal.SIGKILL)
            killed.append(children[0].pid)

    thread = threading.Thread(target=assassin, daemon=True)
    thread.start()
    model, wall = timed_fit(make, frames, sparse_atoms, 2)
    thread.join()
    return {"killed_worker_pids": killed, "kill_after_s": args.kill_after, "fit_s": wall,
            "max_relative_difference_to_undisturbed": relative_difference(reference, model, test)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("speedup", "large", "kill"), required=True)
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--sparse", type=int, default=4000)
    p.add_argument("--structures", type=int, default=2000)
    p.add_argument("--kill-after", type=float, default=10.0)
    p.add_argument("--project-structures", type=int, default=20000,
                   help="--part large: the set size the time on 64 workers is projected for")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    result = {"speedup": speedup, "large": large, "kill": kill}[args.part](args)
    result["command"] = f"benchmarks/distributed_fit.py --part {args.part} --sparse {args.sparse}"
    text = json.dumps(result, indent=1, default=float)
    print(text)
    out = Path(args.out or HERE / "results" / f"distributed_{args.part}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
