"""`gpmlip train`, `gpmlip eval`, `gpmlip info`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from gpmlip.cli import build, config

log = logging.getLogger("gpmlip.cli")


def train(args) -> int:
    """Fit a model to labelled files; write it and print the training (and test) errors."""
    from gpmlip.evaluate import error_table, format_table, predictions

    cfg = config.load(args.config) if args.config else {}
    desc = config.merge(cfg, "descriptor", species=args.species, r_cut=args.r_cut,
                        n_max=args.n_max, l_max=args.l_max, n_jobs=args.jobs)
    settings = config.merge(cfg, "model", n_sparse=args.n_sparse, zeta=args.zeta,
                            optimise={"none": False}.get(args.optimise, args.optimise))
    data_cfg = cfg.get("data", {})
    model = build.model(desc, settings)
    train_data = build.data(args.data or data_cfg.get("train", []), data_cfg, model.species)
    log.info("fitting %d frames", len(train_data))
    model.fit(train_data)
    chosen = build.optimise(model, settings.get("optimise", False))
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
        print(f"model written to {out} ({model.n_sparse_points} sparse points)\n")
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
    state = (model.calibration.describe() if model.calibration is not None else
             "none: the raw std (calibrate with model.calibrate(held_out_frames))")
    print(f"\nmodel calibration: {state}")
    for name, metrics in calibration.items():
        print(format_metrics(metrics, f"{name} force std"))
    return 0


def info(args) -> int:
    """What a model file holds."""
    from gpmlip.io import read_metadata

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
    return 0
