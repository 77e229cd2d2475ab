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
    call the labeller now and learn: the gate drives an :class:`~gpmlip.active.OnTheFlyLearner`
    on the same directory, so labels, retries, checkpoints (model and MD state), the final
    ``model.npz`` and resuming a killed run (``run(dyn, steps, resume=True)``) are the
    on-the-fly learner's, with the same label records (``config_type`` "gate").

Every decision is a line in ``events.jsonl``; :meth:`UncertaintyGate.summary` counts them.
Steps are counted as the learner counts them: ``steps`` is the dynamics' ``nsteps``, so
``run(dyn, 40)`` takes (and reports) 40 steps; like an ASE observer, the gate checks the
starting frame only when ``nsteps`` is 0.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path

import ase.io
from ase.optimize.optimize import Dynamics

from gpmlip.active import mdstate
from gpmlip.active.otf import OnTheFlyLearner
from gpmlip.active.rundir import RunDirectory, write_json
from gpmlip.active.settings import OTFSettings
from gpmlip.calculator import GPCalculator
from gpmlip.errors import GpmlipError, SettingsError, UncertaintyStop
from gpmlip.gp.model import SparseGP

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
        ``local_std_normalised`` (0-1) above which a frame is gated.
    force_threshold : float, optional
        eV/Å: gate only frames whose largest calibrated force std (raw without a
        calibration) also exceeds this; ``threshold`` is then the cheap pre-screen (below
        it no force std is computed).
    policy : {"warn", "queue", "stop", "label"}
    queue : object with ``add(structures, source=...)``, optional
        Needed by ``"queue"``.
    labeller : str, dict, callable or Labeller, optional
        Needed by ``"label"`` (see :func:`gpmlip.labelling.labellers.get_labeller`).
    max_atoms_added : int
        Sparse points added per species per label (``"label"``): the frame's atoms above a
        tenth of ``threshold``, greedily de-duplicated as in on-the-fly learning.
    min_steps_between : int
        Steps after a gated frame before the next one is acted on (a trajectory that wanders
        off stays off for a while; one action per excursion is usually enough).
    label_settings : dict, optional
        Further :class:`~gpmlip.active.OTFSettings` of the ``"label"`` policy's learner
        (``on_failure``, ``max_retries``, ``max_labels``, ``timeout``, ``optimise_every``,
        ``checkpoint_interval``...); by default it does not re-optimise hyper-parameters.
    callbacks : list of callable, optional
        Passed to the learner (``"label"``): ``callback(event, info)``.
    """

    def __init__(self, model: SparseGP, directory: str | Path, threshold: float, policy: str = "warn", *,
                 queue=None, labeller=None, max_atoms_added: int = 20,
                 min_steps_between: int = 10, label_settings: dict | None = None,
                 callbacks: list | None = None, force_threshold: float | None = None) -> None:
        if policy not in POLICIES:
            raise SettingsError(f"policy={policy!r}: choose one of {POLICIES}")
        if not 0 < threshold <= 1:
            raise SettingsError(f"threshold={threshold}: a normalised std in (0, 1], "
                                "typically 0.01-0.1 for production MD")
        if policy == "queue" and not hasattr(queue, "add"):
            raise SettingsError("policy 'queue' needs queue= (e.g. gpmlip.labelling.LabelQueue)")
        if policy == "label" and labeller is None:
            raise SettingsError("policy 'label' needs labeller= (e.g. 'emt' or a GPAW dict)")
        if label_settings and policy != "label":
            raise SettingsError("label_settings= is for policy 'label'")
        if force_threshold is not None and not 0 < force_threshold < 10:
            raise SettingsError(f"force_threshold={force_threshold}: a force std in eV/Å, "
                                "e.g. 0.05-0.3 for production MD")
        self.threshold = float(threshold)
        self.force_threshold = None if force_threshold is None else float(force_threshold)
        if self.force_threshold is not None and model.is_fitted and model.calibration_ is None:
            log.warning("the gate thresholds the force std at %g eV/Å, but the model is not "
                        "calibrated: its raw std is typically several times too small on new "
                        "data, so the gate may never fire; calibrate it first (`gpmlip "
                        "calibrate model.npz [held-out.xyz]`, or model.calibrate(...))",
                        self.force_threshold)
        self.policy = policy
        self.queue = queue
        self.min_steps_between = int(min_steps_between)
        self.rundir = RunDirectory(directory)
        self.rundir.create()
        self.stopped = False
        self._dyn = None
        # what a resumed "label" run gets back from the learner's checkpoint
        self._state = {"counts": {"steps": 0, "gated": 0, **{p: 0 for p in POLICIES}},
                       "max_std": 0.0, "quiet_until": -1}
        self._learner = None
        self._model = model
        self._calculator = None
        if policy == "label":
            settings = OTFSettings.from_dict({
                "std_tolerance": self.threshold, "update_threshold": self.threshold / 10,
                "max_atoms_added": int(max_atoms_added), "optimise_every": 0,
                "min_steps_between_labels": self.min_steps_between,
                "force_tolerance": self.force_threshold, **(label_settings or {})})
            self._learner = OnTheFlyLearner(model, labeller, directory, settings=settings,
                                            callbacks=[*(callbacks or []), self._replayed],
                                            config_type="gate")
            self._learner.extra_state = self._state
        else:
            self._calculator = GPCalculator(model, uncertainty=True)

    @property
    def model(self):
        """The model (for ``"label"`` the learner's: a resumed run loads its checkpoint's)."""
        return self._learner.model if self._learner is not None else self._model

    @property
    def calculator(self) -> GPCalculator:
        """The ASE calculator to put on the atoms (it follows the model)."""
        return self._learner.calculator if self._learner is not None else self._calculator

    @property
    def counts(self) -> dict:
        """Steps (``dyn.nsteps``), gated frames, and actions per policy."""
        return self._state["counts"]

    @property
    def max_std(self) -> float:
        """The largest ``local_std_normalised`` seen."""
        return self._state["max_std"]

    # -- driving -------------------------------------------------------------------------
    def start(self, dyn: Dynamics, *, resume: bool = False) -> None:
        """Bind the gate to ``dyn`` (its atoms must use :attr:`calculator`).

        ``resume`` (policy ``"label"``): continue the run in the directory as the on-the-fly
        learner does (model and MD state from the checkpoint, labels on disk re-applied).
        """
        if resume and self._learner is None:
            raise SettingsError(f"resume: only policy 'label' keeps a resumable run, not "
                                f"{self.policy!r}")
        self._dyn = dyn
        if self._learner is not None:
            self._learner.start(dyn, resume=resume)

    def run(self, dyn: Dynamics, steps: int, *, resume: bool = False, **irun_kwargs) -> dict:
        """Run ``dyn`` until its step counter reaches ``steps`` (or a ``"stop"``).

        Returns :meth:`finish`'s summary.  A resumed run (``resume=True``) does only the steps
        that remain.
        """
        from gpmlip.progress import progress_bar

        if self._dyn is not dyn:
            self.start(dyn, resume=resume)
        first = int(getattr(dyn, "nsteps", 0))
        remaining = steps - first
        if remaining > 0:
            with progress_bar(total=remaining, desc="gated MD", unit="step") as bar:
                for _ in dyn.irun(steps=remaining, **irun_kwargs):
                    if dyn.nsteps == first and first > 0:
                        continue          # a restored frame was checked before it was saved
                    if dyn.nsteps > first:
                        bar.update(1)
                    try:
                        self()
                    except UncertaintyStop:
                        break
        return self.finish()

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
        state = self._state
        state["counts"]["steps"] = step
        state["max_std"] = max(state["max_std"], float(std.max()))
        gated = std.max() > self.threshold and step >= state["quiet_until"]
        if gated and self.force_threshold is not None:
            fstd = float(self.model.force_uncertainty(atoms).std.max())
            state["max_force_std"] = max(state.get("max_force_std", 0.0), fstd)
            gated = fstd > self.force_threshold
        if gated:
            state["counts"]["gated"] += 1
            state["quiet_until"] = step + self.min_steps_between
            getattr(self, f"_{self.policy}")(atoms, std, step)
        if self._learner is not None:
            self._learner.step_done(step, labelled=gated)
    def _replayed(self, event: str, record: dict) -> None:
        """On resume, count a label the checkpoint did not (it was on disk, not yet learnt)."""
        if event != "replayed" or record["attempt"] != 0:
            return
        state = self._state
        state["counts"]["gated"] += 1
        state["counts"]["label"] += 1
        state["max_std"] = max(state["max_std"], record["max_std"])
        state["quiet_until"] = record["step"] + self.min_steps_between

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
        learner = self._learner
        if not learner.budget_left():
            return
        self.counts["label"] += 1
        if learner.label(atoms, std):      # on disk, learnt, checkpointed with this counter
            log.info("step %d: max std %.3g > %.3g, labelled and learnt (%d sparse points)",
                     step, std.max(), self.threshold, self.model.n_sparse_points)

    # -- results ---------------------------------------------------------------------------
    def finish(self) -> dict:
        """End the run: for ``"label"`` the learner writes ``model.npz`` (with every label),
        ``labelled.extxyz`` and its ``summary.json``; return :meth:`summary`."""
        if self._learner is not None and self._dyn is not None:
            self._learner.finish()
        return self.summary()

    def summary(self) -> dict:
        """Counts of steps, gated frames and actions, the largest std seen; also written."""
        out = {"policy": self.policy, "threshold": self.threshold,
               "force_threshold": self.force_threshold,
               "max_force_std_seen": self._state.get("max_force_std"), **self.counts,
               "max_std_seen": self.max_std, "stopped": self.stopped,
               "directory": str(self.rundir.path)}
        if self._learner is not None:
            c = self._learner.counters
            out.update(labels=c["labels"], failed_labels=c["failed"],
                       sparse_points=self.model.n_sparse_points,
                       model=str(self.rundir.path / "model.npz"))
        (Path(self.rundir.path) / "gate_summary.json").write_text(json.dumps(out, indent=1))
        return out
