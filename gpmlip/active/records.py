"""What an on-the-fly run writes: label records, events, trajectory frames and checkpoints.

:class:`~gpmlip.active.otf.OnTheFlyLearner` decides *when* to label and learn; this module
decides *what* goes on disk and reads it back (through :class:`~gpmlip.active.rundir.RunDirectory`,
which owns the files and their atomic writes).  Everything here is plain data in and out, so a
record built before a kill is replayed on resume exactly as it was first applied.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import numpy as np
from ase import Atoms

from gpmlip.active.rundir import RunDirectory, structure_dict
from gpmlip.errors import RunDirectoryError
from gpmlip.gp.model import SparseGP
from gpmlip.labelling.labellers import Labeller, LabelResult, provenance

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "gpmlip-otf-checkpoint"
CHECKPOINT_VERSION = 1


def now() -> str:
    """The current UTC time, ISO 8601 (start and end of a labeller call)."""
    return datetime.now(timezone.utc).isoformat()


def model_view(model: SparseGP, atoms: Atoms) -> dict:
    """The model's view of a frame before it sees the label (for the calibration record)."""
    if not model.is_fitted:
        return {}
    pred = model.predict(atoms, stress=False)
    fu = model.force_uncertainty(atoms)
    signal = model.signal_variances
    sigma = np.sqrt([signal[int(z)] for z in atoms.numbers])
    return {"forces": pred.forces, "parts": fu.parts, "force_std_raw": fu.raw,
            "force_std": fu.std,
            "energy_std": np.sqrt(pred.local_variance), "sigma": sigma}


def label_record(*, index: int, step: int, attempt: int, config_type: str, atoms: Atoms,
                 result: LabelResult, labeller: Labeller, started: str, std: np.ndarray,
                 sparse: list[int], md: dict, before: dict,
                 reason: dict | None = None) -> dict:
    """The record of one labeller call: structure, result, provenance, what to learn from it.

    Parameters
    ----------
    std : ndarray, shape (n_atoms,)
        The frame's normalised local-energy std (its maximum is recorded).
    sparse : list of int
        Atoms to add as sparse points if the label succeeded.
    md : dict
        The dynamics' state at the frame (:func:`gpmlip.active.mdstate.capture`).
    before : dict
        :func:`model_view` of the frame (empty for an unfitted model).
    reason : dict, optional
        Why the frame was labelled (:class:`~gpmlip.active.trigger.Trigger`; ``text`` is
        logged and counted in the summary).
    """
    record = {
        "index": index, "step": step, "attempt": attempt, "config_type": config_type,
        "structure": structure_dict(atoms), "result": result.to_dict(),
        "labeller": labeller.describe(),
        "provenance": {**provenance(), "start": started, "end": now()},
        "max_std": float(std.max()),
        "sparse_atoms": sparse if result.ok else [],
        "md": md,
        "reason": reason or {"trigger": "other", "text": "labelled by the caller"},
    }
    if result.ok and before:
        err = before["forces"] - result.forces
        record["before"] = {
            "force_rmse": float(np.sqrt(np.mean(err ** 2))),
            "force_max_error": float(np.abs(err).max()),
            "predicted_force_std": float(np.sqrt(np.mean(before["force_std"] ** 2))),
            "predicted_force_std_raw": float(np.sqrt(np.mean(before["force_std_raw"] ** 2))),
            "max_predicted_force_std": float(before["force_std"].max()),
            "max_energy_std": float(before["energy_std"].max()),
        }
        # the honest residuals the calibration is fitted on (not in events.jsonl)
        record["residuals"] = {"force_error": err.ravel().round(6).tolist(),
                               "parts": before["parts"].reshape(-1, 3).tolist()}
    return record


def record_event(record: dict) -> dict:
    """The ``events.jsonl`` fields a label record holds by itself (all but the model's size
    after the label): what :func:`label_event` writes and :func:`missing_events` rebuilds."""
    result, reason = record["result"], record.get("reason", {})
    return {"label": record["index"], "step": record["step"], "ok": result["ok"],
            "error": result["error"], "max_std": record["max_std"],
            "label_seconds": result["seconds"], "sparse_added": len(record["sparse_atoms"]),
            "reason": reason.get("text", ""), "trigger": reason.get("trigger", "other"),
            **({"force_threshold": reason["threshold"]} if "threshold" in reason else {}),
            **record.get("before", {})}


def label_event(record: dict, model: SparseGP) -> dict:
    """The ``events.jsonl`` line of a label record once the model has learnt from it (logged)."""
    result = record["result"]
    sigma = float(np.sqrt(max(model.signal_variances.values()))) if model.is_fitted else None
    event = {**record_event(record), "update_seconds": record.get("update_seconds", 0.0),
             "sparse_points": model.n_sparse_points, "signal_std": sigma}
    log.info("step %d: label %d %s (%s; labeller %.2f s, update %.2f s)%s; "
             "%d sparse points", record["step"], record["index"],
             "done" if result["ok"] else f"FAILED: {result['error']}",
             event["reason"] or f"max std {record['max_std']:.3f}",
             result["seconds"], event["update_seconds"],
             f"; force error before it {event['force_rmse']:.3f} eV/Å (predicted std "
             f"{event['predicted_force_std']:.3f})" if "force_rmse" in event else "",
             event["sparse_points"])
    return event


def label_statistics(rundir: RunDirectory) -> dict:
    """Median force error and predicted force std at the labelled frames (None before any)."""
    events = [e for e in rundir.events() if "force_rmse" in e]
    med = (lambda key: float(np.median([e[key] for e in events])) if events else None)
    return {"median_force_error_at_label": med("force_rmse"),
            "median_predicted_force_std_at_label": med("predicted_force_std")}


def reason_counts(rundir: RunDirectory) -> dict:
    """How many labels each trigger made (``empty``, ``force``, ``std``, ``other``)."""
    counts: dict[str, int] = {}
    for record in rundir.labels():
        if record["attempt"] == 0:
            kind = record.get("reason", {}).get("trigger", "other")
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def trajectory_frame(atoms: Atoms, step: int, labelled: bool) -> Atoms:
    """A copy of an MD frame with the calculator's per-atom results, for ``trajectory.extxyz``."""
    res = atoms.calc.results
    frame = atoms.copy()
    frame.calc = None
    frame.info.update(step=step, labelled=labelled,
                      max_std=float(res["local_std_normalised"].max()))
    frame.arrays["local_std"] = res["local_std_normalised"].copy()
    frame.arrays["local_energy"] = res["energies"].copy()
    frame.arrays["gp_forces"] = res["forces"].copy()
    if res.get("force_std") is not None:
        frame.arrays["force_std"] = np.asarray(res["force_std"]).copy()
    return frame


def checkpoint_state(*, n_labels: int, md: dict, counters: dict, timers: dict,
                     cooldown_until: int, wall_seconds: float, model_file: str | None,
                     extra: dict) -> dict:
    """The checkpoint of a run: what has been applied, the MD state and the counters."""
    return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "n_labels": n_labels, "step": md["nsteps"], "md": md, "counters": counters,
            "timers": timers, "cooldown_until": cooldown_until, "wall_seconds": wall_seconds,
            "model": model_file, "extra": extra}


def check_checkpoint(rundir: RunDirectory, ck: dict, labels: list[dict]) -> None:
    """Refuse a checkpoint that does not agree with the labels on disk.

    Every successful label saves the model as ``model-<n>.npz`` and checkpoints with
    ``n_labels = n``, so the checkpoint's count is at least its model's and every label between
    them failed; a count edited by hand (or a checkpoint from another run) would otherwise make
    the resume learn labels twice or skip them.
    """
    n = ck.get("n_labels")
    if not isinstance(n, int) or n < 0 or n > len(labels):
        raise RunDirectoryError(f"{rundir.checkpoint_path}: n_labels = {n!r}, but {len(labels)} "
                                f"labels are in {rundir.labels_dir}: the checkpoint was edited or "
                                "belongs to another run; restore it, or start a new run")
    name = ck.get("model")
    if name:
        try:
            k = int(str(name).removeprefix("model-").removesuffix(".npz"))
        except ValueError:
            raise RunDirectoryError(f"{rundir.checkpoint_path}: model {name!r} is not a "
                                    "checkpoint model name (model-<labels>.npz)") from None
        learnt = [r["index"] for r in labels[k:n] if r["result"]["ok"]]
        if k > n or learnt:
            raise RunDirectoryError(
                f"{rundir.checkpoint_path}: n_labels = {n} but its model {name} holds the labels "
                f"up to {k}" + (f", and labels {learnt} between them succeeded" if learnt else "")
                + ": the count was edited or the files mixed; restore the checkpoint (resuming "
                "would learn labels twice or skip them), or start a new run")


def missing_events(rundir: RunDirectory, labels: list[dict], n_labels: int) -> list[dict]:
    """Events of applied labels (index <= ``n_labels``) that ``events.jsonl`` lacks (a truncated
    or damaged file), rebuilt from the label records: everything but the model's size after
    the label (``sparse_points``, ``signal_std``, ``update_seconds``), marked ``rebuilt``."""
    have = {e.get("label") for e in rundir.events()}
    return [{**record_event(record), "rebuilt": True} for record in labels[:n_labels]
            if record["index"] not in have]


def merge_events(events: list[dict], rebuilt: list[dict]) -> list[dict]:
    """``events`` with ``rebuilt`` label events put back in label order (other lines, such as
    a gate's decisions, stay where they are)."""
    queue = sorted(rebuilt, key=lambda e: e["label"])
    out = []
    for event in events:
        while queue and "label" in event and queue[0]["label"] < event["label"]:
            out.append(queue.pop(0))
        out.append(event)
    return out + queue


def read_checkpoint(rundir: RunDirectory) -> dict | None:
    """The run's last checkpoint, checked for format and version (None if there is none)."""
    ck = rundir.read_checkpoint()
    if ck is not None and (ck.get("format") != CHECKPOINT_FORMAT
                           or ck.get("version") != CHECKPOINT_VERSION):
        raise RunDirectoryError(f"{rundir.checkpoint_path} is not a gpmlip on-the-fly "
                                f"checkpoint of version {CHECKPOINT_VERSION}")
    return ck
