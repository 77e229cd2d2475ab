"""Uncertainty-gated production MD: what to do when the model leaves what it knows.

:class:`UncertaintyGate` watches any ASE dynamics driven by a :class:`~gpmlip.GPCalculator`.
At every step it reads the largest normalised local-energy std ``u`` (the quantity the
on-the-fly learner thresholds, see :mod:`gpmlip.active.settings`); when ``u > threshold`` it
applies its policy:

``"warn"``
    log a warning and write the frame to ``gated.extxyz`` (with step and ``local_std``).
``"queue"``
    write the frame as for ``warn`` and add it to a labelling queue (anything with an
    ``add(structures, source=...)`` method, e.g. :class:`gpmlip.labelling.LabelQueue`); MD goes on.
``"stop"``
    write the frame and the MD state (``stop.json``: positions, momenta, cell, step, RNG and
    thermostat state) and stop cleanly: :meth:`UncertaintyGate.run` returns, and an attached
    gate raises :class:`~gpmlip.errors.UncertaintyStop` out of ``dyn.run``.
``"label"``
    call the labeller now, write the label to ``labels/`` before use, update the model with the
    frame and its uncertain atoms as new sparse points, and go on.

Every decision is a line in ``events.jsonl``; :meth:`UncertaintyGate.summary` counts them.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path

import ase.io
import numpy as np

from gpmlip.active import mdstate
from gpmlip.active.otf import choose_sparse_atoms
from gpmlip.active.rundir import RunDirectory, label_frame, structure_dict, write_json
from gpmlip.calculator import GPCalculator
from gpmlip.errors import GpmlipError, SettingsError, UncertaintyStop
from gpmlip.labellers import get_labeller, provenance, run_labeller

log = logging.getLogger(__name__)

POLICIES = ("warn", "queue", "stop", "label")


class UncertaintyGate:
    """Watch production MD and act when the model is unsure.

    Parameters
    ----------
    model : gpmlip.SparseGP
    directory : str or Path
        Where gated frames, events, labels and the stop state go (created).
    threshold : float
        Normalised local-energy std (0-1) above which a frame is gated.
    policy : {"warn", "queue", "stop", "label"}
    queue : object with ``add(structures, source=...)``, optional
        Needed by ``"queue"``.
    labeller : str, dict, callable or Labeller, optional
        Needed by ``"label"`` (see :func:`gpmlip.labellers.get_labeller`).
    max_atoms_added : int
        Sparse points added per species per label (``"label"``): the frame's atoms above a
        tenth of ``threshold``, greedily de-duplicated as in on-the-fly learning.
    min_steps_between : int
        Steps after a gated frame before the next one is acted on (a trajectory that wanders
        off stays off for a while; one action per excursion is usually enough).
    """

    def __init__(self, model, directory, threshold: float, policy: str = "warn", *,
                 queue=None, labeller=None, max_atoms_added: int = 20,
                 min_steps_between: int = 10) -> None:
        if policy not in POLICIES:
            raise SettingsError(f"policy={policy!r}: choose one of {POLICIES}")
        if not 0 < threshold <= 1:
            raise SettingsError(f"threshold={threshold}: a normalised std in (0, 1], "
                                "typically 0.01-0.1 for production MD")
        if policy == "queue" and not hasattr(queue, "add"):
            raise SettingsError("policy 'queue' needs queue= (e.g. gpmlip.labelling.LabelQueue)")
        if policy == "label" and labeller is None:
            raise SettingsError("policy 'label' needs labeller= (e.g. 'emt' or a GPAW dict)")
        self.model = model
        self.threshold = float(threshold)
        self.policy = policy
        self.queue = queue
        self.labeller = get_labeller(labeller) if labeller is not None else None
        self.max_atoms_added = int(max_atoms_added)
        self.min_steps_between = int(min_steps_between)
        self.rundir = RunDirectory(directory)
        self.rundir.create()
        self.calculator = GPCalculator(model)
        self.counts = {"steps": 0, "gated": 0, **{p: 0 for p in POLICIES}}
        self.max_std = 0.0
        self.stopped = False
        self._dyn = None
        self._quiet_until = -1
        self._labels = len(self.rundir.labels())

    # -- driving -------------------------------------------------------------------------
    def start(self, dyn) -> None:
        """Bind the gate to ``dyn`` (its atoms must use :attr:`calculator`)."""
        self._dyn = dyn

    def run(self, dyn, steps: int, **irun_kwargs) -> dict:
        """Run ``dyn`` for ``steps`` steps (or until a ``"stop"``); return :meth:`summary`."""
        from gpmlip.progress import progress_bar

        self.start(dyn)
        with progress_bar(total=steps + 1, desc="gated MD", unit="step") as bar:
            for _ in dyn.irun(steps=steps, **irun_kwargs):
                bar.update(1)
                try:
                    self()
                except UncertaintyStop:
                    break
        return self.summary()

    def __call__(self) -> None:
        """Observer hook: check the current frame."""
        if self._dyn is None:
            raise GpmlipError("call gate.start(dyn) before dyn.run(), or use gate.run(dyn, n)")
        atoms = self._dyn.atoms
        if atoms.calc is not self.calculator:
            raise GpmlipError("the atoms' calculator is not the gate's: atoms.calc = "
                              "gate.calculator")
        step = int(getattr(self._dyn, "nsteps", 0))
        std = self.calculator.get_property("local_std_normalised", atoms)
        self.counts["steps"] += 1
        self.max_std = max(self.max_std, float(std.max()))
        if std.max() <= self.threshold or step < self._quiet_until:
            return
        self.counts["gated"] += 1
        self._quiet_until = step + self.min_steps_between
        getattr(self, f"_{self.policy}")(atoms, std, step)

    # -- policies --------------------------------------------------------------------------
    def _record(self, atoms, std, step: int, **extra) -> None:
        frame = atoms.copy()
        frame.calc = None
        frame.arrays["local_std"] = std
        frame.info.update({"step": step, "max_std": float(std.max()), "policy": self.policy})
        ase.io.write(self.rundir.path / "gated.extxyz", frame, format="extxyz", append=True)
        event = {"step": step, "max_std": float(std.max()), "policy": self.policy,
                 "time": datetime.now(timezone.utc).isoformat(), **extra}
        self.rundir.append_event(event)
        self.counts[self.policy] += 1

    def _warn(self, atoms, std, step: int) -> None:
        log.warning("step %d: max normalised std %.3g > %.3g (frame written to %s)", step,
                    std.max(), self.threshold, self.rundir.path / "gated.extxyz")
        self._record(atoms, std, step)

    def _queue(self, atoms, std, step: int) -> None:
        frame = atoms.copy()
        frame.calc = None
        ids = self.queue.add([frame], source=f"gate step {step}")
        log.info("step %d: max std %.3g > %.3g, queued (row %s)", step, std.max(),
                 self.threshold, ids)
        self._record(atoms, std, step, queued=[int(i) for i in ids])

    def _stop(self, atoms, std, step: int) -> None:
        write_json(self.rundir.path / "stop.json",
                   {"step": step, "max_std": float(std.max()), "md": mdstate.capture(self._dyn)})
        self._record(atoms, std, step)
        self.stopped = True
        log.warning("step %d: max std %.3g > %.3g, MD stopped; state in %s", step, std.max(),
                    self.threshold, self.rundir.path / "stop.json")
        raise UncertaintyStop(f"step {step}: the model is unsure (max normalised std "
                              f"{std.max():.3g} > {self.threshold}); frame and MD state saved in "
                              f"{self.rundir.path}")

    def _label(self, atoms, std, step: int) -> None:
        t = time.perf_counter()
        result = run_labeller(self.labeller, atoms)
        self._labels += 1
        sparse = choose_sparse_atoms(self.model, atoms, std, self.threshold / 10,
                                     self.max_atoms_added) if result.ok else []
        record = {"index": self._labels, "step": step, "attempt": 0, "config_type": "gate",
                  "structure": structure_dict(atoms), "result": result.to_dict(),
                  "labeller": self.labeller.describe(), "provenance": provenance(),
                  "max_std": float(std.max()), "sparse_atoms": sparse}
        self.rundir.write_label(record)        # on disk before the model sees it
        if not result.ok:
            log.warning("step %d: labeller failed (%s); MD goes on unlabelled", step,
                        result.error)
            self._record(atoms, std, step, label=self._labels, ok=False, error=result.error)
            return
        sparse = record["sparse_atoms"]          # may be empty: the frame still adds data
        self.model.update([label_frame(record)], sparse_atoms=[(0, a) for a in sparse])
        self.calculator.reset()
        log.info("step %d: labelled and learnt (%.1f s, %d new sparse points)", step,
                 time.perf_counter() - t, len(sparse))
        self._record(atoms, std, step, label=self._labels, ok=True, new_sparse=len(sparse))

    # -- results ---------------------------------------------------------------------------
    def summary(self) -> dict:
        """Counts of steps, gated frames and actions, the largest std seen; also written."""
        out = {"policy": self.policy, "threshold": self.threshold, **self.counts,
               "max_std_seen": self.max_std, "stopped": self.stopped,
               "directory": str(self.rundir.path)}
        (Path(self.rundir.path) / "gate_summary.json").write_text(json.dumps(out, indent=1))
        return out
