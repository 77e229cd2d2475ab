"""`gpmlip select`, `gpmlip label`, `gpmlip learn`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from gpmlip.errors import SettingsError
from gpmlip.cli import build, config

log = logging.getLogger("gpmlip.cli")


def _read_pool(paths) -> list:
    import ase.io

    from gpmlip.errors import SettingsError

    pool = []
    for path in [paths] if isinstance(paths, str) else paths:
        if not Path(path).exists():
            raise SettingsError(f"no candidate file at {path}")
        pool += ase.io.read(path, ":")
    for atoms in pool:
        atoms.calc = None
    return pool


def select(args) -> int:
    """Score a pool of candidates with a model; write (and optionally queue) a batch."""
    import ase.io

    import gpmlip
    from gpmlip.active import select_batch

    model = gpmlip.load_model(args.model)
    pool = _read_pool(args.pool)
    sel = select_batch(model, pool, args.n, method=args.method, seed=args.seed)
    batch = [pool[i] for i in sel.indices]
    for atoms, i, score in zip(batch, sel.indices, sel.scores):
        atoms.info.update({"pool_index": int(i), "score": float(score)})
    if args.output:
        tmp = Path(args.output + ".part")
        ase.io.write(tmp, batch, format="extxyz")
        tmp.replace(args.output)
    queued = None
    if args.queue:
        from gpmlip.labelling import LabelQueue
        queued = LabelQueue(args.queue, args.labeller).add(batch, source=f"select {args.pool[0]}")
    result = {"picked": sel.indices, "scores": sel.scores, "method": sel.method,
              "pool": len(pool), "pool_max_score": float(sel.initial_scores.max()),
              "output": args.output, "queued_rows": queued}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"picked {len(batch)} of {len(pool)} candidates ({sel.method}): "
              f"{sel.indices}; normalised std {sel.scores[0]:.3g} -> {sel.scores[-1]:.3g}")
        if args.output:
            print(f"written to {args.output}")
        if queued:
            print(f"queued as rows {queued} in {args.queue}")
    return 0


def label(args) -> int:
    """Label what a queue holds, on a local process pool or a Parsl configuration."""
    from gpmlip.labelling import LabelQueue, label_queue

    from gpmlip.labelling.labellers import get_labeller

    queue = LabelQueue(args.queue, args.labeller)
    labeller = None
    if args.timeout is not None:
        if queue.labeller is None:
            raise SettingsError(f"{args.queue} records no built-in labeller to time: give "
                                "--labeller")
        labeller = get_labeller(queue.labeller, timeout=args.timeout)
    executor = None
    if args.parsl:
        from gpmlip.labelling.parsl import local_config, parsl_executor
        if args.parsl != "local":
            raise SettingsError(f"--parsl {args.parsl!r}: only 'local' from the command line; "
                                "for Slurm use a Python script (workflows/parsl_slurm.py)")
        executor = parsl_executor(local_config(args.workers))
    try:
        summary = label_queue(queue, labeller, executor=executor, max_workers=args.workers,
                              lease_seconds=args.lease, progress=True)
    finally:
        if executor is not None:
            executor.shutdown()
    if args.export:
        queue.export(args.export)
    print(json.dumps(summary, indent=1) if args.json else
          f"{summary['done']} labelled, {summary['failed']} failed in {summary['seconds']:.1f} s;"
          f" queue now {summary['counts']}" +
          (f"; done rows written to {args.export}" if args.export else ""))
    return 0


def learn(args) -> int:
    """The explore-select-label-update loop over a pool file, from a settings file."""
    import gpmlip
    from gpmlip.active.loop import run_loop
    from gpmlip.labelling import LabelQueue

    cfg = config.load(args.config)
    loop = config.merge(cfg, "learn", max_labels=args.max_labels)
    if "pool" not in loop:
        raise gpmlip.errors.SettingsError("[learn] pool is needed: extxyz file(s) of candidates")
    directory = Path(loop.get("directory", "runs/learn"))
    directory.mkdir(parents=True, exist_ok=True)
    labeller = loop.get("labeller")
    if loop.get("timeout") is not None:
        if labeller is None:
            raise gpmlip.errors.SettingsError("[learn] timeout needs [learn] labeller")
        from gpmlip.labelling.labellers import get_labeller
        labeller = get_labeller(labeller, timeout=loop["timeout"])
    queue = LabelQueue(loop.get("queue", str(directory / "queue.db")), labeller)
    model_file = cfg.get("model", {}).get("file")
    model = gpmlip.load_model(model_file) if model_file else \
        build.model(cfg.get("descriptor", {}), cfg.get("model", {}))
    try:
        with build.cluster_for(model, cfg):
            out = run_loop(model, directory / "loop", queue, pool=_read_pool(loop["pool"]),
                           batch=loop.get("batch", 5), method=loop.get("method", "greedy"),
                           max_labels=loop.get("max_labels", 50),
                           target_std=loop.get("target_std", 0.01),
                           max_workers=loop.get("workers", 1),
                           lease_seconds=loop.get("lease_seconds", 600.0))
    except KeyboardInterrupt:
        log.error("interrupted: the queue and %s hold everything so far; run the same command "
                  "again to continue", directory)
        return 130
    print(json.dumps(out, indent=1) if args.json else
          f"stopped by {out['stopped_by']} after {out['rounds']} rounds: {out['labels']} labels, "
          f"{out['sparse_points']} sparse points; model {out['model']}")
    return 0
