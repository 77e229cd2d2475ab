"""On-the-fly learning: an observer that labels uncertain MD frames and updates the model.

The learner does not build or own the dynamics: the user builds any ASE dynamics (Verlet,
Langevin, NPT, Berendsen, an optimiser) on atoms whose calculator is ``learner.calculator`` and
either calls ``learner.run(dyn, steps)`` or attaches the learner as an observer::

    learner.start(dyn)            # empty start: labels the first frame; resume: restores state
    dyn.attach(learner)           # called after every step
    dyn.run(1000)
    summary = learner.finish()

After every step the learner reads the largest normalised local-energy std ``u`` of the frame
(see :mod:`gpmlip.active.settings` for the thresholds).  When ``u > std_tolerance`` it calls the
labeller, writes the result to ``labels/`` *before* using it, adds the frame and its most
uncertain atoms (as sparse points) with :meth:`SparseGP.update`, re-optimises hyper-parameters on
schedule, and checkpoints the model, the MD state and its counters.  The dynamics goes on from
the labelled frame with the updated model.  What goes on disk is :mod:`gpmlip.active.records`
(in the layout of :mod:`gpmlip.active.rundir`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from ase.optimize.optimize import Dynamics

from gpmlip.active import mdstate, records
from gpmlip.active.rundir import RunDirectory, label_frame, write_json
from gpmlip.active.settings import OTFSettings, log_thresholds
from gpmlip.active.sparse import choose_sparse_atoms
from gpmlip.active.trigger import Trigger
from gpmlip.active.timing import PhaseTimers, TimedCalculator
from gpmlip.calculator import GPCalculator
from gpmlip.errors import GpmlipError, LabellerError, RunDirectoryError, SettingsError
from gpmlip.gp.files import load_model
from gpmlip.gp.model import SparseGP
from gpmlip.labelling.labellers import get_labeller, run_labeller
from gpmlip.progress import progress_bar

log = logging.getLogger(__name__)

class OnTheFlyLearner:
    """Label uncertain frames of a running dynamics and learn from them.

    Parameters
    ----------
    model : SparseGP or path
        An unfitted model (empty start: the first frame is labelled and seeds the sparse set),
        a fitted one, or a model file.  With ``initial_data`` an unfitted model is fitted first.
    labeller : str, dict, callable or Labeller
        The reference method (required: e.g. ``"emt"`` for tests, a GPAW dict, a factory of
        ASE calculators); see :func:`gpmlip.labelling.labellers.get_labeller`.
    directory : str or Path, default "otf_run"
        Where labels, checkpoints, the trajectory and the final model go.
    settings : OTFSettings or dict, optional
        Thresholds and schedule; keyword arguments override single fields.
    initial_data : path or list of structures, optional
        Labelled data to fit an unfitted model on before the run.
    callbacks : list of callable, optional
        ``callback(event, info)`` after ``"labelled"`` (label on disk, not yet used),
        ``"updated"`` (model updated and checkpointed), ``"checkpoint"`` and, on resume,
        ``"replayed"`` (a label found on disk after the checkpoint, now learnt).
    config_type : str, default "otf"
        ``config_type`` of the labelled frames (the gate uses "gate").

    Attributes
    ----------
    extra_state : dict
        Saved in every checkpoint and restored (updated in place) on resume: where a driver
        built on the learner (the uncertainty gate) keeps its own counters.
    """

    def __init__(self, model: SparseGP | str | Path, labeller,
                 directory: str | Path = "otf_run", *,
                 settings: OTFSettings | dict | None = None, initial_data=None,
                 callbacks: list[Callable] | None = None, config_type: str = "otf",
                 **overrides) -> None:
        if isinstance(model, (str, Path)):
            model = load_model(model)
        base = settings.to_dict() if isinstance(settings, OTFSettings) else dict(settings or {})
        self.settings = OTFSettings.from_dict({**base, **overrides})
        self.model = model
        if labeller is None:
            raise SettingsError("OnTheFlyLearner needs a labeller: the reference calculation "
                                "to run on uncertain frames, e.g. 'emt', {'name': 'gpaw', ...} "
                                "or a function returning an ASE calculator")
        self.labeller = get_labeller(labeller, timeout=self.settings.timeout)
        self.rundir = RunDirectory(directory)
        self.initial_data = initial_data
        self.callbacks = list(callbacks or [])
        self.config_type = config_type
        self.extra_state: dict = {}
        self.trigger = Trigger(self.settings)
        self.counters = {"steps": 0, "labels": 0, "failed": 0, "sparse_added": 0,
                         "optimisations": 0, "skipped_frames": 0}
        self.timers = PhaseTimers.new()
        self.n_applied = 0
        self._dyn = None
        self._calc: GPCalculator | None = None
        self._cooldown_until = -1
        self._label_steps: set[int] = set()   # steps labelled (their trajectory frame is marked)
        self._model_file: str | None = None
        self._budget_warned = False
        self._wall0 = 0.0
        self._wall_before = 0.0

    # -- public ----------------------------------------------------------------------------
    @property
    def calculator(self) -> GPCalculator:
        """The ASE calculator to put on the atoms (it follows model updates)."""
        if self._calc is None or self._calc.model is not self.model:
            self._calc = TimedCalculator(self.model, self.timers)
        return self._calc

    def start(self, dyn: Dynamics, *, resume: bool = False) -> None:
        """Prepare a run: resume from the directory, or fit / label the first frame.

        Parameters
        ----------
        dyn : ase dynamics or optimiser
            Its atoms get ``self.calculator``.
        resume : bool
            Continue the run in ``directory`` (required if it has one; without a run there,
            a fresh run starts).
        """
        self._dyn = dyn
        self.rundir.create()
        if self.rundir.has_run():
            if not resume:
                raise RunDirectoryError(f"{self.rundir.path} holds an earlier run: resume it "
                                        "(resume=True, or --resume) or choose a new directory")
            self._resume()
        elif resume:
            log.info("nothing to resume in %s: starting a new run", self.rundir.path)
        if not self.model.is_fitted and self.initial_data is not None:
            log.info("fitting the initial model on %s", self.initial_data)
            self.model.fit(self.initial_data)
        self._atoms().calc = self.calculator
        if not self.model.is_fitted:
            log.info("empty model: labelling the first frame%s", "; until a second label "
                     "gives residuals to calibrate on, the force trigger uses the raw std"
                     if self.settings.force_tolerance is not None else "")
            self.label(self._atoms(), np.ones(len(self._atoms())),
                       reason={"trigger": "empty", "text": "empty model: first frame"})
        elif self.rundir.read_checkpoint() is None:
            self._checkpoint(save_model=True)
        log_thresholds(self.settings, self.model.signal_variances)
        self._wall0 = time.perf_counter()

    def __call__(self) -> None:
        """The observer: check the current frame, label and learn if it is uncertain."""
        if self._dyn is None:
            raise GpmlipError("the learner was not started: call learner.start(dyn) before "
                              "dyn.run(), or use learner.run(dyn, steps)")
        atoms = self._atoms()
        step = int(getattr(self._dyn, "nsteps", 0))
        calc = atoms.calc
        if not isinstance(calc, GPCalculator) or calc.model is not self.model:
            raise GpmlipError("the atoms' calculator is not the learner's: set "
                              "atoms.calc = learner.calculator")
        std = calc.get_property("local_std_normalised", atoms)
        self.counters["steps"] = step
        labelled = False
        with self.timers.phase("predict"):     # the force std, when computed
            reason = self.trigger.check(self.model, atoms, std, step < self._cooldown_until,
                                        step)
        if self.trigger.last is not None:
            calc.results["force_std"] = self.trigger.last["force_std"]
        if reason is not None and self.budget_left():
            # the frame goes to disk before the label: a kill after the label's checkpoint
            # would otherwise lose it for good (resume keeps frames up to the checkpoint's step)
            self._write_frame(atoms, step, True)
            self.label(atoms, std, reason=reason)
            labelled = True
        elif step in self._label_steps or step % self.settings.trajectory_interval == 0:
            self._write_frame(atoms, step, step in self._label_steps)
        self.step_done(step, labelled)

    def step_done(self, step: int, labelled: bool = False) -> None:
        """Count the step and checkpoint the MD state on schedule (a label checkpoints itself).

        Drivers that decide themselves when to call :meth:`label` (the gate) call this after
        every step, so that a killed run resumes as an on-the-fly run does.
        """
        self.counters["steps"] = step
        if not labelled and step % self.settings.checkpoint_interval == 0:
            self._checkpoint(save_model=False)

    def run(self, dyn: Dynamics, steps: int, *, resume: bool = False, **irun_kwargs) -> dict:
        """Run ``dyn`` until its step counter reaches ``steps``, learning on the fly.

        Parameters
        ----------
        dyn : ase dynamics or optimiser
        steps : int
            Total steps of the run (a resumed run does only the ones that remain).
        resume : bool
            Continue the run in the learner's directory.
        irun_kwargs
            Passed to ``dyn.irun`` (e.g. ``fmax`` for an optimiser).

        Returns
        -------
        dict
            The summary (also written to ``summary.json``).
        """
        self.start(dyn, resume=resume)
        if not any(obs[0] is self for obs in getattr(dyn, "observers", [])):
            dyn.attach(self, interval=1)
        remaining = steps - int(getattr(dyn, "nsteps", 0))
        if remaining > 0:
            with progress_bar(total=remaining, desc="on the fly", unit="step") as bar:
                for _ in dyn.irun(steps=remaining, **irun_kwargs):
                    bar.update(1)
                    bar.set_postfix(labels=self.counters["labels"], refresh=False)
        return self.finish()

    def finish(self) -> dict:
        """Checkpoint, write the final model, the labelled set and the summary; return it."""
        with self.timers.phase("io"):
            self._checkpoint(save_model=False)
            self.model.save(self.rundir.path / "model.npz")
            self.rundir.export_labelled()
        summary = self.summary()
        write_json(self.rundir.path / "summary.json", summary)
        log.info("on-the-fly run done: %d steps, %d labels (%d failed), %d sparse points, "
                 "%.1f s", summary["steps"], summary["labels"], summary["failed_labels"],
                 summary["sparse_points"], summary["wall_seconds"])
        return summary

    def summary(self) -> dict:
        """Counts, timings, thresholds and where the files are."""
        wall = self._wall_before + (time.perf_counter() - self._wall0 if self._wall0 else 0.0)
        timers = {k: round(v, 3) for k, v in self.timers.items()}
        timers["md_and_other"] = round(max(wall - sum(self.timers.values()), 0.0), 3)
        return {
            "steps": self.counters["steps"], "labels": self.counters["labels"],
            "failed_labels": self.counters["failed"],
            "skipped_frames": self.counters["skipped_frames"],
            "labelled_frames": len(self.model.training_frames) if self.model.is_fitted else 0,
            "sparse_points": self.model.n_sparse_points,
            "optimisations": self.counters["optimisations"],
            "wall_seconds": round(wall, 3), "seconds": timers,
            "signal_std": {str(z): float(np.sqrt(v))
                           for z, v in self.model.signal_variances.items()},
            "calibration": None if self.model.calibration_ is None else
            self.model.calibration_.to_dict(),
            "threshold_equivalents": self.trigger.equivalents(),
            "label_reasons": records.reason_counts(self.rundir),
            **records.label_statistics(self.rundir),
            "settings": self.settings.to_dict(), "labeller": self.labeller.describe(),
            "directory": str(self.rundir.path.resolve()),
        }

    # -- labelling -------------------------------------------------------------------------
    def _atoms(self):
        atoms = getattr(self._dyn, "atoms", None)
        return getattr(atoms, "atoms", atoms)

    def budget_left(self) -> bool:
        """Whether the label budget (``max_labels``) allows another labeller call."""
        budget = self.settings.max_labels
        if budget is None or self.counters["labels"] < budget:
            return True
        if not self._budget_warned:
            log.warning("label budget of %d spent: the run goes on without labelling", budget)
            self._budget_warned = True
        return False

    def _choose_sparse(self, atoms, std: np.ndarray) -> list[int]:
        """Atoms above ``update_threshold``, greedily de-duplicated, per species."""
        s = self.settings
        return choose_sparse_atoms(self.model, atoms, std, s.update_threshold, s.max_atoms_added)

    def label(self, atoms, std: np.ndarray, reason: dict | None = None) -> bool:
        """Label the current frame now (with retries), write it, learn from it, checkpoint.

        Parameters
        ----------
        atoms : ase.Atoms
            The dynamics' current frame.
        std : ndarray, shape (n_atoms,)
            Its ``local_std_normalised`` (chooses the new sparse points).
        reason : dict, optional
            Why (recorded; :class:`~gpmlip.active.trigger.Trigger` makes it).

        Returns
        -------
        bool
            Whether a label succeeded (else the frame was skipped, or the run stops with
            :class:`~gpmlip.errors.LabellerError` under ``on_failure="stop"``).
        """
        s = self.settings
        attempts = 1 + (s.max_retries if s.on_failure == "retry" else 0)
        step = int(getattr(self._dyn, "nsteps", 0))
        self.counters["steps"] = step
        self._label_steps.add(step)
        before = records.model_view(self.model, atoms)
        for attempt in range(attempts):
            record = self._call_labeller(atoms, std, step, attempt, before, reason)
            self._emit("labelled", record)
            self._apply(record)
            if record["result"]["ok"]:
                self._cooldown_until = step + s.min_steps_between_labels
            self.rundir.append_event(records.label_event(record, self.model))   # dropped on resume if not
            self._checkpoint(save_model=record["result"]["ok"], md=record["md"])   # saved here
            self._emit("updated", record)
            if record["result"]["ok"]:
                return True
        self.counters["skipped_frames"] += 1
        if s.on_failure == "stop":
            raise LabellerError(f"the labeller failed at step {step}: "
                                f"{record['result']['error']} (run stopped; its files are in "
                                f"{self.rundir.path}; resume once the labeller is fixed)")
        self._cooldown_until = step + s.cooldown_steps
        log.warning("step %d left unlabelled after %d failed attempt(s); next try after step %d",
                    step, attempts, self._cooldown_until)
        return False

    def _call_labeller(self, atoms, std, step, attempt, before, reason=None) -> dict:
        """Call the labeller once and write the record to disk; nothing else."""
        index = self.n_applied + 1
        # everything that does not need the label is done first, so that the time between the
        # labeller returning and its result being on disk (where a kill costs a repeated
        # call) is only building and writing the record
        sparse = self._choose_sparse(atoms, std)
        md = mdstate.capture(self._dyn)
        started = records.now()
        with self.timers.phase("label"):
            result = run_labeller(self.labeller, atoms)
        record = records.label_record(
            index=index, step=step, attempt=attempt, config_type=self.config_type, atoms=atoms,
            result=result, labeller=self.labeller, started=started, std=std, sparse=sparse,
            md=md, before=before, reason=reason)
        with self.timers.phase("io"):
            self.rundir.write_label(record)
        return record

    def _apply(self, record: dict) -> None:
        """Learn from a label record (also used on resume: deterministic given the record)."""
        self.counters["labels"] += 1
        self.n_applied = record["index"]
        if not record["result"]["ok"]:
            self.counters["failed"] += 1
            return
        t = time.perf_counter()
        frame = label_frame(record)
        sparse = record["sparse_atoms"]
        if not self.model.is_fitted:
            self.model.fit([frame], sparse_atoms=[(0, a) for a in sparse])
        else:
            self.model.update([frame], sparse_atoms=[(0, a) for a in sparse])
        self.counters["sparse_added"] += len(sparse)
        n_ok = self.counters["labels"] - self.counters["failed"]
        s = self.settings
        if s.optimise_every and n_ok % s.optimise_every == 0 and n_ok <= s.optimise_until:
            result = self.model.optimise_hyperparameters()
            self.counters["optimisations"] += 1
            log.info("hyper-parameters re-optimised after %d labels: %s (log likelihood %.6g)",
                     n_ok, ", ".join(f"{k} {v:.4g}" for k, v in result.values.items()),
                     result.log_likelihood)
        self.trigger.learnt(self.model, record)
        record["update_seconds"] = time.perf_counter() - t
        self.timers["update"] += record["update_seconds"]

    def _emit(self, event: str, info: dict) -> None:
        for callback in self.callbacks:
            callback(event, info)

    # -- files -----------------------------------------------------------------------------
    def _write_frame(self, atoms, step: int, labelled: bool) -> None:
        with self.timers.phase("io"):
            self.rundir.append_trajectory(records.trajectory_frame(atoms, step, labelled))

    def _checkpoint(self, *, save_model: bool, md: dict | None = None) -> None:
        t = time.perf_counter()     # timed by hand: the checkpoint holds the timers
        md = md or mdstate.capture(self._dyn)
        state = records.checkpoint_state(
            n_labels=self.n_applied, md=md, counters=self.counters, timers=self.timers,
            cooldown_until=self._cooldown_until,
            wall_seconds=self._wall_before + (time.perf_counter() - self._wall0
                                              if self._wall0 else 0.0),
            model_file=self._model_file, extra=self.extra_state)
        self.rundir.write_checkpoint(state, self.model if save_model else None)
        if save_model:
            self._model_file = f"model-{self.n_applied:06d}.npz"
        self.timers["io"] += time.perf_counter() - t
        self._emit("checkpoint", state)

    def _resume(self) -> None:
        ck = records.read_checkpoint(self.rundir)
        labels = self.rundir.labels()          # read once: every label file, numbering checked
        md = None
        if ck is not None:
            records.check_checkpoint(self.rundir, ck, labels)
            if ck.get("model"):
                self.model = load_model(self.rundir.path / ck["model"],
                                        baseline=self.model.baseline)
                self._model_file = ck["model"]
            self.n_applied = ck["n_labels"]
            self.counters.update(ck["counters"])
            self.timers.update(ck["timers"])
            self._cooldown_until = ck["cooldown_until"]
            self._wall_before = ck.get("wall_seconds", 0.0)
            self.extra_state.update(ck.get("extra", {}))
            md = ck["md"]
            for record in labels[:self.n_applied]:   # the calibration's residuals
                self._label_steps.add(int(record["step"]))
                if record.get("residuals"):
                    self.trigger.history.append((np.asarray(record["residuals"]["force_error"]),
                                                 np.asarray(record["residuals"]["parts"])))
        checkpointed = self.n_applied
        pending = labels[checkpointed:]
        for record in pending:
            self._label_steps.add(int(record["step"]))
            log.info("applying label %d (on disk, not yet learnt from)", record["index"])
            self._apply(record)
            if record["result"]["ok"]:
                self._cooldown_until = record["step"] + self.settings.min_steps_between_labels
            md = record["md"]
            self._emit("replayed", record)
        if md is not None:
            mdstate.restore(self._dyn, md)
        # Events of labels after the checkpoint may or may not have reached the disk before the
        # kill: drop them and write them again, then checkpoint (a kill in between repeats this).
        self.rundir.rewind(int(self._dyn.nsteps), checkpointed)
        lost = records.missing_events(self.rundir, labels, checkpointed)
        if lost:
            log.warning("%s lacks the events of labels %s (truncated or damaged): rebuilt from "
                        "labels/ without the model size after each", self.rundir.events_path,
                        [e["label"] for e in lost])
            self.rundir.rewrite_events(records.merge_events(self.rundir.events(), lost))
        for record in pending:
            self.rundir.append_event(records.label_event(record, self.model))
        if pending:
            self._checkpoint(save_model=True)
        log.info("resumed %s at step %d with %d labels and %d sparse points",
                 self.rundir.path, self._dyn.nsteps, self.n_applied, self.model.n_sparse_points)
