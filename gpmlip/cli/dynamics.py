"""`gpmlip md` (optionally uncertainty-gated) and `gpmlip otf` (on-the-fly learning)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from gpmlip.cli import build, config
from gpmlip.errors import SettingsError

log = logging.getLogger("gpmlip.cli")


def md(args) -> int:
    """Run MD with a model; with --gate-threshold, act when the model is unsure."""
    import ase.io
    from ase import units

    import gpmlip
    from gpmlip.active import UncertaintyGate
    from gpmlip.progress import progress_bar

    cfg = config.load(args.config) if args.config else {}
    md_cfg = config.merge(cfg, "md", structure=args.structure, steps=args.steps,
                          temperature=args.temperature, timestep_fs=args.timestep,
                          ensemble=args.ensemble, trajectory=args.output,
                          interval=args.interval)
    gate_cfg = config.merge(cfg, "gate", threshold=args.gate_threshold, policy=args.gate_policy,
                            queue=args.queue, labeller=args.labeller,
                            force_threshold=args.gate_force_threshold)
    if "structure" not in md_cfg:
        raise gpmlip.errors.SettingsError("give a structure: a file or a bulk spec such as "
                                          "'Cu fcc 3.61 3' (--structure or [md] structure)")
    if args.resume and gate_cfg.get("policy") != "label":
        raise gpmlip.errors.SettingsError("--resume continues a gated run with --gate-policy "
                                          "label (the other policies keep no checkpoint)")
    model = gpmlip.load_model(args.model)
    atoms = build.structure(md_cfg["structure"])
    steps, interval = int(md_cfg.get("steps", 1000)), int(md_cfg.get("interval", 10))
    out = Path(md_cfg.get("trajectory", "md.extxyz"))
    gate = None
    if "threshold" in gate_cfg:
        queue = None
        if gate_cfg.get("policy") == "queue":
            from gpmlip.labelling import LabelQueue
            queue = LabelQueue(gate_cfg.get("queue", "queue.db"), gate_cfg.get("labeller"))
        directory = gate_cfg.get("directory", str(out.with_suffix("")) + "_gate")
        gate = UncertaintyGate(model, directory, gate_cfg["threshold"],
                               gate_cfg.get("policy", "warn"), queue=queue,
                               labeller=gate_cfg.get("labeller"),
                               force_threshold=gate_cfg.get("force_threshold"))
        atoms.calc = gate.calculator
    else:
        atoms.calc = gpmlip.GPCalculator(model)
    dyn = build.dynamics(atoms, md_cfg)
    tmp = out.with_name(out.name + ".part")
    if gate is not None:
        gate.start(dyn, resume=args.resume)     # a resumed run restores the MD state
    _keep_frames_until(tmp, out, int(dyn.nsteps) if args.resume else -1)

    def write_frame():
        frame = atoms.copy()
        frame.info.update({"step": dyn.nsteps, "energy": atoms.get_potential_energy(),
                           "temperature": atoms.get_temperature()})
        ase.io.write(tmp, frame, format="extxyz", append=True)

    dyn.attach(write_frame, interval=interval)
    monitor = EnergyMonitor(atoms, dyn)
    dyn.attach(monitor, interval=1)
    t0 = time.perf_counter()
    first = int(dyn.nsteps)
    if gate is not None:
        gate_summary = gate.run(dyn, steps)
    else:
        with progress_bar(total=steps, desc="MD", unit="step") as bar:
            for _ in dyn.irun(steps=steps):
                bar.update(1 if dyn.nsteps else 0)
    tmp.replace(out)
    seconds = time.perf_counter() - t0
    done = int(dyn.nsteps)
    summary = {"steps": done, "seconds": seconds, "trajectory": str(out),
               "ensemble": md_cfg.get("ensemble", "langevin"),
               "timestep_fs": float(dyn.dt / units.fs),
               "target_temperature_K": md_cfg.get("temperature"), **monitor.summary()}
    if gate is not None:
        summary["gate"] = gate_summary
    per_step = 1000 * seconds / max(done - first, 1)
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(f"{done} steps in {seconds:.1f} s ({per_step:.0f} ms/step); trajectory {out}")
    if monitor.steps:
        drift = summary["energy_drift_meV_atom_ps"]
        print(f"temperature: mean {summary['mean_temperature_K']:.0f} K over the run, final "
              f"{summary['final_temperature_K']:.0f} K"
              + (f" (target {summary['target_temperature_K']:g} K)"
                 if summary["target_temperature_K"] is not None else "")
              + f"; total energy drift {drift:+.3g} meV/atom/ps"
              + (" (NVE: this is the integration error)" if summary["ensemble"] == "verlet"
                 else " (thermostatted: the bath exchanges energy, so this is not an error)"))
    if gate is not None:
        print(f"gate: {gate.counts['gated']} of {gate_summary.get('steps', done)} steps over "
              f"the threshold {gate.threshold} ({gate.policy}); largest "
              f"normalised std {_fmt(gate_summary.get('max_std_seen'))}, largest force std "
              f"{_fmt(gate_summary.get('max_force_std_seen'), 1000)} meV/Å"
              + (f"; model with the new labels: {gate_summary['model']}"
                 if "model" in gate_summary else ""))
    return 0


def _fmt(value, scale: float = 1.0) -> str:
    return "-" if value is None else f"{scale * value:.3g}"


class EnergyMonitor:
    """Potential and kinetic energy of every MD step (attached to the dynamics): what
    `gpmlip md` reports as temperature and energy drift."""

    def __init__(self, atoms, dyn):
        self.atoms, self.dyn = atoms, dyn
        self.time_fs: list[float] = []
        self.total: list[float] = []
        self.temperature: list[float] = []

    @property
    def steps(self) -> int:
        return len(self.total)

    def __call__(self) -> None:
        from ase import units

        self.time_fs.append(self.dyn.nsteps * self.dyn.dt / units.fs)
        self.total.append(self.atoms.get_potential_energy() + self.atoms.get_kinetic_energy())
        self.temperature.append(self.atoms.get_temperature())

    def summary(self) -> dict:
        """Mean and final temperature (K) and the total-energy drift (meV/atom/ps, the slope of
        a straight line through every step)."""
        if len(self.total) < 2:
            t = self.atoms.get_temperature()
            return {"mean_temperature_K": t, "final_temperature_K": t,
                    "energy_drift_meV_atom_ps": 0.0}
        slope = np.polyfit(np.asarray(self.time_fs) / 1000.0, self.total, 1)[0]
        return {"mean_temperature_K": float(np.mean(self.temperature)),
                "final_temperature_K": float(self.temperature[-1]),
                "energy_drift_meV_atom_ps": float(1000 * slope / len(self.atoms))}


def _keep_frames_until(part: Path, final: Path, step: int) -> None:
    """Start ``part`` with the frames up to ``step`` of the run being resumed (from ``part`` if
    it was killed, else from ``final``); with ``step`` < 0 start it empty."""
    import ase.io

    source = part if part.exists() else final
    kept = [] if step < 0 or not source.exists() else [
        a for a in ase.io.read(source, ":", format="extxyz") if a.info.get("step", 0) <= step]
    part.unlink(missing_ok=True)
    if kept:
        ase.io.write(part, kept, format="extxyz")


RUN_SETTINGS = "cli_settings.json"
"""What `gpmlip otf` ran with ([md] but its step count, [otf], the labeller), in the run
directory: a resume with other settings would continue a different simulation silently."""


def _check_run_settings(directory: Path, current: dict, *, resume: bool) -> None:
    """Record the run's settings (new run) or refuse a resume whose settings differ."""
    path = directory / RUN_SETTINGS
    current = json.loads(json.dumps(current, sort_keys=True, default=str))
    if resume and path.exists():
        try:
            before = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise SettingsError(f"{path} is damaged ({err}); it records the settings of the run "
                                "being resumed: restore it, or delete it to resume unchecked") \
                from None
        differ = [f"[{table}] {key}: {before.get(table, {}).get(key)!r} then, "
                  f"{current.get(table, {}).get(key)!r} now"
                  for table in ("md", "otf")
                  for key in sorted(set(before.get(table, {})) | set(current.get(table, {})))
                  if before.get(table, {}).get(key) != current.get(table, {}).get(key)]
        if before.get("labeller") != current.get("labeller"):
            differ.append(f"labeller: {before.get('labeller')!r} then, "
                          f"{current.get('labeller')!r} now")
        if differ:
            raise SettingsError(f"--resume {directory}: the settings differ from the run's ("
                                + "; ".join(differ) + "); resume with the same settings file "
                                "(only [md] steps may change), or start a new run elsewhere")
        return
    if not resume and not (directory / "events.jsonl").exists():   # else the learner refuses
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(current, indent=1, sort_keys=True))
        os.replace(tmp, path)


def otf(args) -> int:
    """On-the-fly learning from a settings file; --resume continues a killed run."""
    import gpmlip
    from gpmlip.active import OnTheFlyLearner

    cfg = config.load(args.config)
    if args.validate < 0:
        raise SettingsError(f"--validate {args.validate}: give a number of frames >= 0")
    if args.resume is not None and not Path(args.resume, "events.jsonl").exists():
        raise gpmlip.errors.SettingsError(
            f"--resume {args.resume}: no on-the-fly run there (a run directory holds "
            "events.jsonl and labels/); give the directory of the killed run, or leave "
            "--resume out to start a new one")
    md_cfg = config.merge(cfg, "md", steps=args.steps)
    otf_cfg = config.merge(cfg, "otf", directory=args.directory)
    labeller = otf_cfg.pop("labeller", None)
    if labeller is None:
        raise gpmlip.errors.SettingsError("[otf] labeller is needed: the reference method for "
                                          "uncertain frames, e.g. labeller = \"emt\" or a "
                                          "[otf.labeller] table with name = \"gpaw\"")
    directory = args.resume or otf_cfg.pop("directory", None) or \
        time.strftime("runs/otf-%Y%m%d-%H%M%S")
    otf_cfg.pop("directory", None)
    model_file = cfg.get("model", {}).get("file")
    model = gpmlip.load_model(model_file) if model_file else \
        build.model(cfg.get("descriptor", {}), cfg.get("model", {}))
    if "structure" not in md_cfg:
        raise gpmlip.errors.SettingsError("[md] structure is needed: a file or a bulk spec "
                                          "such as 'Cu fcc 3.61 3'")
    _check_run_settings(Path(directory), {"md": {k: v for k, v in md_cfg.items() if k != "steps"},
                                          "otf": otf_cfg, "labeller": labeller},
                        resume=args.resume is not None)
    atoms = build.structure(md_cfg["structure"])
    learner = OnTheFlyLearner(model, labeller, directory, settings=otf_cfg)
    atoms.calc = learner.calculator
    dyn = build.dynamics(atoms, md_cfg)
    try:
        with build.cluster_for(model, cfg):
            summary = learner.run(dyn, int(md_cfg.get("steps", 1000)),
                                  resume=args.resume is not None)
    except KeyboardInterrupt:
        log.error("interrupted: every label so far is on disk in %s; continue with "
                  "`gpmlip otf %s --resume %s`", directory, args.config, directory)
        return 130
    if args.validate:
        from gpmlip.active.check import fresh_frame_check
        from gpmlip.active.rundir import write_json

        summary["fresh_frame_check"] = fresh_frame_check(learner.model, learner.labeller,
                                                         summary["directory"], args.validate)
        write_json(Path(summary["directory"]) / "summary.json", summary)
    if args.plot:
        from gpmlip.plots import otf_curve
        summary["plot"] = str(otf_curve(summary["directory"]))
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        t = summary["seconds"]
        print(f"{summary['steps']} steps, {summary['labels']} labels "
              f"({summary['failed_labels']} failed), {summary['sparse_points']} sparse points, "
              f"{summary['wall_seconds']:.0f} s (" +
              ", ".join(f"{k} {v:.0f} s" for k, v in t.items()) + ")")
        eq = summary.get("threshold_equivalents") or {}
        print(f"labels by reason: {summary.get('label_reasons')}; calibration: " +
              (f"x {summary['calibration']['weights']['residual'] ** 0.5:.3g} "
               f"({summary['calibration']['method']})" if summary.get("calibration") else "none") +
              (f"; force_tolerance {summary['settings']['force_tolerance']} eV/Å ~ normalised std "
               f"{eq['force_tolerance_as_normalised_std']:.3g}"
               if "force_tolerance_as_normalised_std" in eq else ""))
        check = summary.get("fresh_frame_check")
        if check and check["frames"]:
            print(f"final model on {check['frames']} unlabelled trajectory frames (labelled after "
                  f"the run): force MAE {check['force_mae_meV_A']:.1f} meV/Å, RMSE "
                  f"{check['force_rmse_meV_A']:.1f}" +
                  (f", energy MAE {check['energy_mae_meV_atom']:.2f} meV/atom"
                   if check["energy_mae_meV_atom"] is not None else "") +
                  f"; predicted force std RMS {check['force_std_rms_meV_A']:.1f} meV/Å "
                  f"({'calibrated' if check['calibrated'] else 'raw, uncalibrated'}; ZMS "
                  f"{check['force_zms']:.2f}, 1 is honest)")
        elif check:
            print(f"fresh-frame check: no frame could be labelled ({check['failed']} failed)")
        print(f"files: {summary['directory']}/ (model.npz, labelled.extxyz, trajectory.extxyz, "
              "events.jsonl, summary.json" + (", validation.extxyz" if check and check["frames"]
                                              else "") +
              (", otf_curve.png" if args.plot else "") + ")")
    return 0
