"""`gpmlip train`, `gpmlip eval`, `gpmlip calibrate`, `gpmlip info`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from gpmlip.cli import build, config

log = logging.getLogger("gpmlip.cli")

BUDGET = 480.0
"""Default wall-time budget of ``gpmlip train``'s model builder, seconds."""


def train(args) -> int:
    """Build a model from labelled files (settings chosen by leave-one-out unless --no-tune);
    write it and print the training (and test) errors."""
    cfg = config.load(args.config) if args.config else {}
    with build.cluster_executor(cfg, args.jobs) as (executor, workers):
        return _train(args, cfg, executor, workers)


def _train(args, cfg: dict, executor, workers: int | None) -> int:
    from gpmlip.builder import build_model
    from gpmlip.evaluate import error_table, format_table, predictions

    desc = config.merge(cfg, "descriptor", species=args.species, r_cut=args.r_cut,
                        n_max=args.n_max, l_max=args.l_max, sigma=args.sigma, n_jobs=workers,
                        compression=args.compression)
    settings = config.merge(cfg, "model", n_sparse=args.n_sparse, zeta=args.zeta,
                            optimise={"none": False}.get(args.optimise, args.optimise),
                            budget=args.budget, tune=False if args.no_tune else None)
    data_cfg = cfg.get("data", {})
    train_data = build.data(args.data or data_cfg.get("train", []), data_cfg,
                            desc.get("species"))
    tune = settings.get("tune", True)
    log.info("building a model on %d frames (%s)", len(train_data),
             f"tuning in {settings.get('budget', BUDGET):g} s" if tune else "plain defaults")
    model = build_model(train_data, budget=float(settings.get("budget", BUDGET)), tune=tune,
                        species=desc.get("species"), n_sparse=settings.get("n_sparse"),
                        settings=build.builder_settings(desc, settings),
                        seed=settings.get("seed", 0), n_jobs=desc.get("n_jobs"),
                        model_kwargs=build.builder_model_kwargs(settings),
                        descriptor=build.soap(desc) if build.by_hand(desc) else None,
                        executor=executor)
    model, chosen = build.optimise(model, settings.get("optimise", False))
    if chosen:
        log.info("hyper-parameters (%s): %s", settings["optimise"],
                 {k: float(f"{v:.6g}") for k, v in chosen.items()})
    out = Path(args.output)
    model.save(out)
    report = {"model": str(out), "sparse_points": model.n_sparse_points,
              "train": error_table(predictions(model, train_data, progress=True))}
    test = args.test or data_cfg.get("test")
    if test:
        report["test"] = error_table(predictions(model, build.data(test, data_cfg,
                                                                   model.species),
                                                 progress=True))
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"model written to {out} ({model.n_sparse_points} sparse points)")
        print(describe_build(model.build_report_) + "\n")
        print("training errors (MAE / RMSE)\n" + format_table(report["train"]))
        if "test" in report:
            print("\ntest errors (MAE / RMSE)\n" + format_table(report["test"]))
    return 0


def evaluate(args) -> int:
    """Error table of a model on labelled files, per config_type; optional plots."""
    import gpmlip
    from gpmlip.evaluate import calibration_report, error_table, format_table, predictions
    from gpmlip.uncertainty import format_metrics

    model = gpmlip.load_model(args.model)
    data = build.data(args.data, {}, model.species)
    if args.leave_out_config_types is not None:
        from gpmlip.holdout import format_rows, leave_config_types_out

        rows = leave_config_types_out(model, data, config_types=args.leave_out_config_types or None,
                                      progress=True)
        print(json.dumps(rows, indent=1) if args.json else format_rows(rows))
        return 0
    records = predictions(model, data, force_std=True, progress=True)
    table = error_table(records)
    calibration = calibration_report(records)
    if args.plot:
        from gpmlip.plots import parity_plots
        written = parity_plots(records, args.plot)
        log.info("plots written: %s", ", ".join(str(p) for p in written))
    if args.json:
        print(json.dumps({**table, "force_calibration": calibration}, indent=1))
        return 0
    print(format_table(table))
    state = (model.calibration_.describe() if model.calibration_ is not None else
             "none: the raw std, typically several times too small on new data "
             "(calibrate it: gpmlip calibrate MODEL [held-out.xyz])")
    print(f"\nmodel calibration: {state}")
    for name, metrics in calibration.items():
        print(format_metrics(metrics, f"{name} force std"))
    return 0


def calibrate(args) -> int:
    """Calibrate a model's force std on held-out data or leave-one-out; write it."""
    import gpmlip
    from gpmlip.errors import SettingsError

    if args.max_frames < 1:
        raise SettingsError(f"--max-frames {args.max_frames}: give at least 1")
    model = gpmlip.load_model(args.model)
    if args.data:
        data = build.data(args.data, {}, model.species)
        cal = model.calibrate(data)
    else:
        cal = model.calibrate(max_frames=args.max_frames)
    out = Path(args.output or args.model)
    model.save(out)
    if args.json:
        print(json.dumps({"model": str(out), "calibration": cal.to_dict()}, indent=1))
    else:
        print(f"{cal.describe()}; written to {out}")
    return 0


def info(args) -> int:
    """What a model file holds."""
    from gpmlip.gp.container import read_metadata

    meta = read_metadata(args.model)
    if args.json:
        print(json.dumps(meta, indent=1))
        return 0
    d = meta["descriptor"]
    types: dict[str, int] = {}
    for t in meta["config_types"]:
        types[t] = types.get(t, 0) + 1
    print(f"gpmlip model {args.model} (format version {meta['format_version']})")
    print(f"  written by    {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}")
    print(f"  descriptor    {json.dumps(d)}")
    print(f"  kernel        {json.dumps(meta['kernel'])}")
    print(f"  noise         {json.dumps(meta['noise'])}")
    print(f"  e0 (eV)       {json.dumps(meta['e0'])} ({meta['e0_method']})")
    print(f"  baseline      {json.dumps(meta.get('baseline'))}")
    import numpy as np
    from ase.data import chemical_symbols

    with np.load(args.model, allow_pickle=False) as npz:
        z, n = np.unique(npz["sparse_species"], return_counts=True)
    sparse = ", ".join(f"{chemical_symbols[int(a)]} {int(b)}" for a, b in zip(z, n))
    print(f"  sparse points {sparse}")
    print(f"  training set  {len(meta['config_types'])} frames: {json.dumps(types)}")
    print(f"  settings      {json.dumps(meta['settings'])}")
    print(f"  log likelihood {meta['log_likelihood']:.6g}")
    if meta.get("build"):
        print(describe_build(meta["build"], indent="  "))
    return 0


def describe_build(build: dict | None, indent: str = "") -> str:
    """How the model builder chose a model's settings, as text (its screening table too)."""
    if not build:
        return f"{indent}settings: given by hand (not built by gpmlip.build_model)"
    lines = [f"{indent}settings      {'tuned' if build['tuned'] else 'plain defaults'}: "
             f"{build['chosen_changes']} (of {json.dumps(build['defaults'])}), "
             f"{build['seconds']:.0f} s of a {build['budget_s']:.0f} s budget"]
    for stage, what in build["stages"].items():
        lines.append(f"{indent}  {stage}: {what}")
    if build["screen"]:
        lines.append(f"{indent}  screened (leave-one-out MAE E meV/atom, F eV/Å; criterion "
                     "relative to the defaults, smaller is better):")
        for row in build["screen"]:
            mae = row["loo_mae"]
            score = ("-" if row["criterion"] is None else f"{row['criterion']:.3f}")
            nums = ("" if mae is None else
                    f"{1e3 * mae['energy']:.3f} / {mae['forces']:.4f}  ")
            lines.append(f"{indent}    {row['stage']:>13}  {row['candidate']:<32} {nums}"
                         f"{score}  ({row['frames']} structures, {row['seconds']:.0f} s)"
                         + ("" if row["status"] == "ok" else f"  {row['status']}"))
    return "\n".join(lines)
