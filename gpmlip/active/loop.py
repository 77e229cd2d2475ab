"""The active-learning loop: explore -> select -> label (queue + executor) -> update, restartable.

Each round takes candidates (a fixed pool, or a function that explores with the current model,
e.g. short MD runs), selects a diverse uncertain batch (:func:`~gpmlip.active.select_batch`),
puts it in a :class:`~gpmlip.labelling.LabelQueue`, labels it through an executor, and updates
the model with the rows that came back.  It stops when the pool's largest normalised std is
below ``target_std`` or ``max_labels`` rows have been learnt.

What survives a kill: the queue holds every structure and label (labels are never lost or paid
for twice, see :mod:`gpmlip.labelling`); the directory holds ``model-NNNN.npz`` and
``state.json`` (which model file is current and which queue rows it has learnt), written model
first, state last, both atomically.  On restart the loop loads the model ``state.json`` names,
labels what is still queued, learns the done rows the model has not seen, and goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from ase import Atoms

from gpmlip.active.pool import select_batch
from gpmlip.active.rundir import read_json, write_json
from gpmlip.errors import SettingsError
from gpmlip.gp.model import SparseGP
from gpmlip.labelling.queue import LabelQueue, content_key

log = logging.getLogger(__name__)

STATE_FORMAT = "gpmlip-active-loop"


def run_loop(model: SparseGP, directory: str | Path, queue: LabelQueue, *, pool: Sequence[Atoms] | None = None,
             explore: Callable | None = None, executor=None, max_workers: int = 1,
             batch: int = 5, method: str = "greedy", max_labels: int = 50,
             target_std: float = 0.01, sparse_per_frame: int = 10, max_rounds: int = 100,
             lease_seconds: float = 600.0, seed: int = 0) -> dict:
    """Run (or resume) the loop; return a summary.

    Parameters
    ----------
    model : gpmlip.SparseGP
        Fitted, or unfitted (the first round then labels ``batch`` random candidates).  Ignored
        when ``directory`` has a state from an earlier run (that model is loaded instead).
    directory : str or Path
        Model files and ``state.json``.
    queue : gpmlip.labelling.LabelQueue
    pool : sequence of ase.Atoms, optional
        Fixed candidates.  Give this or ``explore``.
    explore : callable, optional
        ``explore(model) -> list of Atoms``: new candidates each round.
    executor : concurrent.futures.Executor, optional
        Where labels run (default: a local process pool of ``max_workers``).
    batch, method : int, str
        Structures per round and how they are chosen (``"greedy"``, ``"topk"``, ``"random"``).
    max_labels : int
        Stop once the model has learnt this many rows.
    target_std : float
        Stop once no candidate's largest normalised std exceeds this.
    sparse_per_frame : int
        New sparse points per learnt structure (greedy: the atoms its selection conditioned on).
    max_rounds : int
    lease_seconds : float
        Lease of a claimed row (see :func:`gpmlip.labelling.label_queue`): after a kill, rows
        the dead run held are taken over once it expires.
    seed : int
        For the first, random batch of an unfitted model.
    """
    from gpmlip.gp.files import load_model
    from gpmlip.labelling import label_queue

    if (pool is None) == (explore is None):
        raise SettingsError("give the loop a pool= of candidates or an explore= function")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state_path = directory / "state.json"
    if state_path.exists():
        state = read_json(state_path)
        if state.get("format") != STATE_FORMAT:
            raise SettingsError(f"{state_path} is not a gpmlip active-loop state")
        if state["model"]:
            model = load_model(directory / state["model"], n_jobs=model.n_jobs,
                               baseline=model.baseline)
        log.info("resuming %s: round %d, %d rows learnt", directory, state["round"],
                 len(state["applied"]))
    else:
        state = {"format": STATE_FORMAT, "round": 0, "model": None, "applied": [],
                 "history": []}
    rng = np.random.default_rng(seed)
    pool_features = None     # a fixed pool is described once
    stop = "max_rounds"
    sparse_hint: dict[int, list[int]] = {}     # queue row id -> atoms the selection chose
    for _ in range(max_rounds):
        if len(state["applied"]) >= max_labels:
            stop = "max_labels"
            break
        counts = queue.counts()
        if counts["queued"] + counts["running"] == 0:
            candidates = list(pool) if pool is not None else list(explore(model))
            if pool is not None and pool_features is None and model.is_fitted:
                pool_features = [model.descriptor.describe(a).features for a in candidates]
            labeller = queue.check_labeller(None)
            seen = {row.content_key for row in queue.rows()}  # queued once, ever
            keep = [k for k, a in enumerate(candidates)
                    if content_key(a, labeller) not in seen]
            feats = [pool_features[k] for k in keep] if pool_features is not None else None
            candidates = [candidates[k] for k in keep]
            if not candidates:
                stop = "no candidates"
                break
            n = min(batch, max_labels - len(state["applied"]), len(candidates))
            if model.is_fitted:
                sel = select_batch(model, candidates, n, method=method, seed=seed,
                                   features=feats)
                if sel.initial_scores.max() <= target_std:
                    stop = "target_std"
                    break
                picks, chosen = sel.indices, sel.added_atoms or [[]] * len(sel.indices)
                score = float(sel.initial_scores.max())
            else:
                picks, score = list(rng.choice(len(candidates), n, replace=False)), 1.0
                chosen = [[]] * len(picks)
            ids = queue.add([candidates[k] for k in picks], source=f"round {state['round'] + 1}")
            sparse_hint.update({i: a[:sparse_per_frame] for i, a in zip(ids, chosen)})
            log.info("round %d: queued rows %s (largest std %.3g)", state["round"] + 1, ids,
                     score)
        summary = label_queue(queue, executor=executor, max_workers=max_workers,
                              lease_seconds=lease_seconds)
        new = [f for f in queue.frames("done") if f.info["queue_id"] not in state["applied"]]
        state["round"] += 1
        if new:
            if model.is_fitted:
                hints = [sparse_hint.get(f.info["queue_id"]) for f in new]
                if all(h for h in hints):
                    model.update(new, sparse_atoms=[(i, a) for i, h in enumerate(hints)
                                                       for a in h])
                else:
                    model.update(new, n_sparse=sparse_per_frame * len(new))
            else:
                model.fit(new)
            name = f"model-{state['round']:04d}.npz"
            model.save(directory / name)                   # model first ...
            state["model"] = name
            state["applied"] += [int(f.info["queue_id"]) for f in new]
        state["history"].append({"round": state["round"], "learnt": len(new),
                                 "labels": len(state["applied"]),
                                 "sparse": model.n_sparse_points,
                                 "failed": summary["failed"]})
        write_json(state_path, state)                      # ... state last
        log.info("round %d: learnt %d rows (%d in total), %d sparse points", state["round"],
                 len(new), len(state["applied"]), model.n_sparse_points)
    result = {"stopped_by": stop, "rounds": state["round"], "labels": len(state["applied"]),
              "sparse_points": model.n_sparse_points, "counts": queue.counts(),
              "model": str(directory / state["model"]) if state["model"] else None,
              "history": state["history"]}
    return result

