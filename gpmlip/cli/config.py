"""Settings files (TOML) for the command line: one schema, checked key by key.

A file has one table per part of the job; every key is optional and command-line flags override
it.  A misspelt key or a wrong type is an error that names the table, the key and what is
allowed::

    [descriptor]            # SOAP
    species = ["Cu"]
    r_cut = 4.5
    n_max = 6
    l_max = 4
    weighting = "smooth"    # default; "hard", or a dscribe poly table {r0 = 5.5, m = 1}
    compression = "mu1nu1"  # dscribe's species compression: "off", "crossover", "mu1nu1", "mu2"
                            # (gpmlip train: "mu1nu1" from 3 species, else "off")
    species_weighting = {H = 0.5, O = 1.0}   # optional: weight of each species' density
    second = {r_cut = 3.2}  # optional: a second SOAP joined to the first (gpmlip.Stacked);
                            # keys r_cut, n_max, l_max, sigma, weighting, weight

    [model]
    tune = true             # gpmlip train: settings chosen by leave-one-out (gpmlip.build_model)
    budget = 480            # its wall-time budget, seconds
    zeta = 4
    n_sparse = 200
    optimise = true         # marginal likelihood; "loo": noise by leave-one-out error
    two_body = true         # or a table of gpmlip.TwoBody settings {sigma = 0.5}
    baseline = {name = "zbl", inner = 1.0, outer = 2.0}   # or "d3", see gpmlip.baselines
    energy_sigma = 0.002    # noise levels (eV/atom, eV/Å, eV/atom of virial) and the signal
    force_sigma = 0.05      # std (eV, or a table per species) fixed by hand
    virial_sigma = 0.5
    signal_std = 1.0

    [data]
    train = ["data/cu_emt.extxyz"]
    energy_key = "dft_energy"   # label keys other than the usual ones (read by themselves)
    on_error = "skip"       # drop invalid frames (listed) instead of stopping
    stresses = false        # fit energies and forces only
    pressure_offset_gpa = 0.5   # or: subtract a constant (Pulay-like) pressure from the labels

    [md]
    structure = "data/cu_emt.extxyz"   # first frame used; or a bulk spec such as "Cu fcc 3.61 2"
    temperature = 800.0
    timestep_fs = 5.0
    steps = 1000

    [cluster]               # where training statistics are computed (gpmlip.gp.distributed)
    workers = 2             # local worker processes (the same as --workers)
    parsl = "slurm"         # or "local": Parsl workers; "slurm" takes the keys of
    partition = "cpu"       # gpmlip.labelling.parsl.slurm_config (walltime, nodes_per_block,
    worker_init = "source ~/venvs/gpmlip/bin/activate"   # max_blocks, account, ...)

    [otf]                   # gpmlip.active.OTFSettings keys, plus:
    labeller = "emt"        # or a table: {name = "gpaw", ecut = 300, kpts = [2, 2, 2]}
    directory = "runs/otf"
"""

from __future__ import annotations

import logging
import os
import tomllib
from dataclasses import fields
from pathlib import Path

from gpmlip.active.settings import OTFSettings
from gpmlip.errors import SettingsError

log = logging.getLogger("gpmlip.cli")

NUMBER = (int, float)

SCHEMA: dict[str, dict[str, tuple]] = {
    "descriptor": {"species": (list,), "r_cut": NUMBER, "n_max": (int,), "l_max": (int,),
                   "sigma": NUMBER, "weighting": (str, dict), "n_jobs": (int,),
                   "second": (dict,), "compression": (str,), "species_weighting": (dict,)},
    "model": {"zeta": (int,), "n_sparse": (int, dict), "sparse_method": (str,),
              "energy_sigma": NUMBER, "force_sigma": NUMBER, "stress_sigma": NUMBER,
              "stress_noise": (str,), "virial_sigma": NUMBER, "e0": (str, dict),
              "optimise": (bool, str), "file": (str,), "seed": (int,), "baseline": (str, dict),
              "two_body": (bool, dict), "tune": (bool,), "budget": NUMBER,
              "signal_std": (int, float, dict)},
    "data": {"train": (str, list), "test": (str, list), "energy_key": (str,),
             "forces_key": (str,), "stress_key": (str,), "virial_key": (str,),
             "config_type_key": (str,), "on_error": (str,), "stresses": (bool,),
             "pressure_offset_gpa": NUMBER},
    "md": {"structure": (str,), "ensemble": (str,), "temperature": NUMBER,
           "timestep_fs": NUMBER, "friction_per_fs": NUMBER, "steps": (int,), "seed": (int,),
           "trajectory": (str,), "interval": (int,)},
    "otf": {**{f.name: (object,) for f in fields(OTFSettings)}, "labeller": (str, dict),
            "directory": (str,)},
    "gate": {"threshold": NUMBER, "force_threshold": NUMBER, "policy": (str,), "queue": (str,), "labeller": (str, dict),
             "directory": (str,)},
    "cluster": {"workers": (int,), "parsl": (str,), "partition": (str,), "walltime": (str,),
                "nodes_per_block": (int,), "max_blocks": (int,), "cores_per_node": (int,),
                "cores_per_worker": NUMBER, "max_workers_per_node": (int,), "account": (str,),
                "qos": (str,), "worker_init": (str,), "scheduler_options": (str,),
                "address": (str,), "run_dir": (str,)},
    "learn": {"pool": (str, list), "queue": (str,), "labeller": (str, dict),
              "directory": (str,), "batch": (int,), "method": (str,), "max_labels": (int,),
              "target_std": NUMBER, "workers": (int,), "lease_seconds": NUMBER,
              "timeout": NUMBER},
}
SECOND_KEYS = ("r_cut", "n_max", "l_max", "sigma", "weighting", "weight")
"""Keys of ``[descriptor] second`` (a second SOAP; the rest default to the first's)."""
ENSEMBLES = ("langevin", "verlet", "berendsen")
OPTIMISE = ("likelihood", "loo")
"""``[model] optimise``: maximise the marginal likelihood (``true`` means this) or choose the noise
levels by leave-one-structure-out error on energies and forces together
(:func:`gpmlip.gp.validation.choose_noise`)."""


POSITIVE, NON_NEGATIVE, AT_LEAST_ONE = "> 0", ">= 0", ">= 1"
RANGES: dict[tuple[str, str], str] = {
    ("descriptor", "r_cut"): POSITIVE, ("descriptor", "n_max"): AT_LEAST_ONE,
    ("descriptor", "l_max"): NON_NEGATIVE, ("descriptor", "sigma"): POSITIVE,
    ("descriptor", "n_jobs"): AT_LEAST_ONE,
    ("model", "zeta"): AT_LEAST_ONE, ("model", "n_sparse"): AT_LEAST_ONE,
    ("model", "energy_sigma"): POSITIVE, ("model", "force_sigma"): POSITIVE,
    ("model", "stress_sigma"): POSITIVE, ("model", "virial_sigma"): POSITIVE,
    ("model", "budget"): POSITIVE, ("model", "signal_std"): POSITIVE,
    ("md", "temperature"): NON_NEGATIVE, ("md", "timestep_fs"): POSITIVE,
    ("md", "friction_per_fs"): NON_NEGATIVE, ("md", "steps"): NON_NEGATIVE,
    ("md", "interval"): AT_LEAST_ONE,
    ("gate", "threshold"): POSITIVE, ("gate", "force_threshold"): POSITIVE,
    ("learn", "batch"): AT_LEAST_ONE, ("learn", "max_labels"): AT_LEAST_ONE,
    ("learn", "target_std"): POSITIVE, ("learn", "workers"): AT_LEAST_ONE,
    ("learn", "lease_seconds"): POSITIVE, ("learn", "timeout"): POSITIVE,
}
"""Allowed ranges of numeric settings (command-line flags are checked through the same tables)."""


def _in_range(value, rule: str) -> bool:
    if isinstance(value, dict):   # per-species values
        return all(_in_range(v, rule) for v in value.values())
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return True   # the type check speaks for it
    if value != value or value in (float("inf"), float("-inf")):
        return False
    return {POSITIVE: value > 0, NON_NEGATIVE: value >= 0, AT_LEAST_ONE: value >= 1}[rule]


def _type_name(types: tuple) -> str:
    names = {int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "a table", bool: "true or false", object: "a value"}
    if float in types:
        types = tuple(t for t in types if t is not int)
    return " or ".join(dict.fromkeys(names[t] for t in types))


def check(config: dict, source: str = "settings") -> dict:
    """Validate a settings mapping against :data:`SCHEMA`; return it unchanged."""
    for table, values in config.items():
        if table not in SCHEMA:
            raise SettingsError(f"{source}: unknown table [{table}]; allowed tables: "
                                f"{', '.join(SCHEMA)}")
        if not isinstance(values, dict):
            raise SettingsError(f"{source}: [{table}] must be a table of keys")
        for key, value in values.items():
            if key not in SCHEMA[table]:
                raise SettingsError(f"{source}: unknown key {key!r} in [{table}]; allowed: "
                                    f"{', '.join(SCHEMA[table])}")
            types = SCHEMA[table][key]
            ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types
                                                   and object not in types)
            if not ok:
                raise SettingsError(f"{source}: [{table}] {key} = {value!r} must be "
                                    f"{_type_name(types)}")
            rule = RANGES.get((table, key))
            if rule is not None and not _in_range(value, rule):
                raise SettingsError(f"{source}: [{table}] {key} = {value!r} must be a finite "
                                    f"number {rule}")
    optimise = config.get("model", {}).get("optimise")
    if isinstance(optimise, str) and optimise not in OPTIMISE:
        raise SettingsError(f"{source}: [model] optimise = {optimise!r}; allowed: true, false, "
                            + ", ".join(f'"{o}"' for o in OPTIMISE))
    descriptor = config.get("descriptor", {})
    second = descriptor.get("second")
    if second is not None:
        unknown = sorted(set(second) - set(SECOND_KEYS))
        if unknown or "r_cut" not in second:
            raise SettingsError(f"{source}: [descriptor] second = {second}: "
                                + (f"unknown keys {unknown}; " if unknown else "r_cut is missing; ")
                                + f"allowed: {', '.join(SECOND_KEYS)} (r_cut required)")
    for where, table in (("weighting", descriptor), ("second weighting", second or {})):
        weighting = table.get("weighting")
        if isinstance(weighting, str) and weighting not in ("smooth", "hard"):
            raise SettingsError(f"{source}: [descriptor] {where} = {weighting!r}; allowed: "
                                '"smooth", "hard" or a table such as {r0 = 6.2, m = 1}')
    ensemble = config.get("md", {}).get("ensemble")
    if ensemble is not None and ensemble not in ENSEMBLES:
        raise SettingsError(f"{source}: [md] ensemble = {ensemble!r}; allowed: "
                            f"{', '.join(ENSEMBLES)}")
    return config


INPUT_PATHS = (("data", "train"), ("data", "test"), ("md", "structure"), ("model", "file"),
               ("learn", "pool"))
"""Settings naming files to read: relative paths are relative to the settings file."""


def _relative_to(base: Path, value, source: str):
    """``value`` (a path or list of paths) resolved against ``base`` where the file is there;
    a path found only from the working directory is kept, with a warning."""
    if isinstance(value, list):
        return [_relative_to(base, v, source) for v in value]
    if not isinstance(value, str) or Path(value).is_absolute():
        return value
    there = base / value
    if there.exists():
        return str(there)
    if Path(value).exists():
        log.warning("%s: %s is read from the working directory; paths in a settings file are "
                    "relative to the file (write %s)", source, value,
                    os.path.relpath(Path(value).resolve(), base.resolve()))
    return value


def load(path) -> dict:
    """Read and validate a TOML settings file; input paths in it are relative to it."""
    path = Path(path)
    if not path.exists():
        raise SettingsError(f"no settings file at {path}")
    try:
        with open(path, "rb") as fh:
            config = tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise SettingsError(f"{path} is not valid TOML: {err}") from None
    config = check(config, str(path))
    for table, key in INPUT_PATHS:
        if key in config.get(table, {}):
            config[table][key] = _relative_to(path.parent, config[table][key], str(path))
    return config


def merge(config: dict, table: str, **overrides) -> dict:
    """``config[table]`` with the command-line values that were given (not None) on top."""
    out = dict(config.get(table, {}))
    out.update({k: v for k, v in overrides.items() if v is not None})
    check({table: out}, "command line")
    return out
