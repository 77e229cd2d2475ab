"""Objects the commands build from settings tables: descriptor, model, data, structure, dynamics."""

from __future__ import annotations

from contextlib import contextmanager

from pathlib import Path

import numpy as np

from gpmlip.errors import SettingsError

MODEL_KEYS = ("zeta", "n_sparse", "sparse_method", "energy_sigma", "force_sigma",
              "stress_sigma", "stress_noise", "virial_sigma", "signal_std", "e0", "seed",
              "baseline")


def _weighting(value):
    """``weighting`` of a settings table as SOAP takes it."""
    if value == "hard":
        return None
    if isinstance(value, dict):
        return {"function": "poly", **value}
    return value


def soap(desc: dict):
    """The SOAP descriptor of a ``[descriptor]`` table (species and r_cut required); with
    ``second = {r_cut = ..., ...}`` a :class:`gpmlip.Stacked` of the two (the table is checked
    by :func:`gpmlip.cli.config.check`).  Compression defaults to the model builder's choice:
    ``mu1nu1`` from :data:`~gpmlip.builder.settings.MANY_SPECIES` species, else off."""
    import gpmlip
    from gpmlip.builder.settings import default_compression

    missing = [k for k in ("species", "r_cut") if k not in desc]
    if missing:
        raise SettingsError(f"[descriptor] needs {', '.join(missing)} (e.g. species = [\"Cu\"], "
                            "r_cut = 4.5), in the settings file or as --species/--r-cut")
    first = gpmlip.SOAP(desc["species"], desc["r_cut"], desc.get("n_max", 6),
                        desc.get("l_max", 4), desc.get("sigma", 0.5),
                        weighting=_weighting(desc.get("weighting", "smooth")),
                        compression=desc.get("compression",
                                             default_compression(len(desc["species"]))),
                        species_weighting=desc.get("species_weighting"),
                        n_jobs=desc.get("n_jobs", 1))
    second = desc.get("second")
    if second is None:
        return first
    base = first.settings
    other = gpmlip.SOAP(desc["species"], second["r_cut"], second.get("n_max", base.n_max),
                        second.get("l_max", base.l_max), second.get("sigma", base.sigma),
                        weighting=_weighting(second.get("weighting", "smooth")),
                        compression=base.compression,
                        species_weighting=base.species_weighting_dict, n_jobs=first.n_jobs)
    return gpmlip.Stacked([first, other], [1.0, second.get("weight", 1.0)], n_jobs=first.n_jobs)


def model(desc: dict, settings: dict):
    """An unfitted SparseGP from ``[descriptor]`` and ``[model]`` tables."""
    import gpmlip

    kwargs = {k: settings[k] for k in MODEL_KEYS if k in settings}
    two_body = settings.get("two_body", False)
    if two_body:
        kwargs["two_body"] = _two_body(two_body)
    return gpmlip.SparseGP(soap(desc), **kwargs)


BUILDER_KEYS = ("r_cut", "n_max", "l_max", "sigma", "compression")
"""``[descriptor]`` keys the model builder takes as fixed settings (with weighting, second)."""


def cluster(cfg: dict, workers: int | None = None):
    """``(executor, workers)`` of the ``[cluster]`` table and ``--workers``: a Parsl executor
    (``parsl = "local"`` or ``"slurm"`` with :func:`gpmlip.labelling.parsl.slurm_config`'s keys)
    or None for local worker processes; ``workers`` None when neither gives a count."""
    table = dict(cfg.get("cluster", {}))
    count = workers if workers is not None else table.pop("workers", None)
    table.pop("workers", None)
    kind = table.pop("parsl", None)
    if kind is None:
        if table:
            raise SettingsError(f"[cluster] {sorted(table)} need parsl = \"slurm\" (or "
                                "\"local\"); for local processes give only workers = N")
        return None, count
    from gpmlip.labelling.parsl import local_config, parsl_executor, slurm_config

    if kind == "local":
        unknown = set(table) - {"run_dir"}
        if unknown:
            raise SettingsError(f"[cluster] parsl = \"local\" takes workers and run_dir, not "
                                f"{sorted(unknown)}")
        return parsl_executor(local_config(count or 2, run_dir=table.get("run_dir"))), count
    if kind == "slurm":
        if "partition" not in table:
            raise SettingsError("[cluster] parsl = \"slurm\" needs partition = \"...\"")
        return parsl_executor(slurm_config(**table)), count
    raise SettingsError(f"[cluster] parsl = {kind!r}: use \"local\" or \"slurm\"")


@contextmanager
def cluster_executor(cfg: dict, workers: int | None = None):
    """:func:`cluster` for the block: yields ``(executor, workers)`` and shuts the executor
    down after."""
    executor, count = cluster(cfg, workers)
    try:
        yield executor, count
    finally:
        if executor is not None:
            executor.shutdown()


@contextmanager
def cluster_for(model, cfg: dict):
    """Within the block, ``model``'s refits (:meth:`gpmlip.SparseGP.fit` and ``update``, as the
    on-the-fly learner and the loop make them) compute their statistics where ``[cluster]``
    says; the executor is shut down after."""
    with cluster_executor(cfg) as (executor, workers):
        model.executor = executor
        if workers is not None:
            model.n_jobs = workers
        try:
            yield model
        finally:
            model.executor = None


def builder_settings(desc: dict, settings: dict) -> dict:
    """Fixed :class:`gpmlip.builder.Settings` fields from ``[descriptor]`` and ``[model]``:
    what the user set is used as given and not screened."""
    fixed = {k: desc[k] for k in BUILDER_KEYS if k in desc}
    fixed.update({k: settings[k] for k in ("zeta", "sparse_method") if k in settings})
    weighting = desc.get("weighting")
    if weighting == "hard":
        fixed["r0"] = None
    elif weighting == "smooth":
        fixed.update(r0=0.0, m=2.0)
    elif isinstance(weighting, dict):
        if "r_cut" not in desc or "r0" not in weighting:
            raise SettingsError(f"[descriptor] weighting = {weighting}: give r0 in the table and "
                                "r_cut beside it (or leave both out: they are screened)")
        fixed.update(r0=float(weighting["r0"]) - float(desc["r_cut"]),
                     m=float(weighting.get("m", 2.0)))
    second = desc.get("second")
    if second is not None and not by_hand(desc):
        fixed["second"] = (float(second["r_cut"]), float(second.get("weight", 1.0)))
    return fixed


def by_hand(desc: dict) -> bool:
    """Whether ``[descriptor]`` is more than the model builder's settings express (a second SOAP
    with its own basis or weighting, species weights): then it is built as written and not
    screened."""
    return bool(set(desc.get("second") or {}) - {"r_cut", "weight"}) or \
        "species_weighting" in desc


def builder_model_kwargs(settings: dict) -> dict:
    """:class:`gpmlip.SparseGP` arguments of ``[model]`` that the builder passes through."""
    kwargs = {k: settings[k] for k in MODEL_KEYS
              if k in settings and k not in ("zeta", "n_sparse", "sparse_method", "seed")}
    two_body = settings.get("two_body", False)
    if two_body:
        kwargs["two_body"] = _two_body(two_body)
    return kwargs


def _two_body(two_body):
    import gpmlip

    try:
        return gpmlip.TwoBody(**(two_body if isinstance(two_body, dict) else {}))
    except TypeError as err:
        raise SettingsError(f"[model] two_body = {two_body}: {err}; the keys are those of "
                            "gpmlip.TwoBody (r_cut, sigma, length_scale, n_sparse, r_min, "
                            "transition_width)") from None


def optimise(model, how):
    """Apply ``[model] optimise`` to a fitted model: the model with the chosen levels and the
    chosen values (None: nothing done; the model given then)."""
    if how is True or how == "likelihood":
        return model, model.optimise_hyperparameters().values
    if how == "loo":
        from gpmlip.gp.validation import choose_noise

        choice = choose_noise(model)
        if model.calibration_ is not None:     # fitted for the old levels: fit it again
            choice.model.calibrate()
        return choice.model, {**{f"noise {g}": v for g, v in choice.noise.items()},
                              "loo MAE energy (eV/atom)": choice.loo_mae["energy"],
                              "loo MAE forces (eV/Å)": choice.loo_mae["forces"]}
    return model, None


def data(paths, settings: dict, species=None):
    """Labelled frames from one or more files, with the ``[data]`` table's label keys."""
    from gpmlip.data import Dataset, LabelKeys, load_frames

    if isinstance(paths, str):
        paths = [paths]
    if not paths:
        raise SettingsError("no data files: give them on the command line or as [data] train")
    keys = LabelKeys(**{name: settings[f"{name}_key"] for name in
                        ("energy", "forces", "stress", "virial", "config_type")
                        if f"{name}_key" in settings})
    frames = []
    for path in paths:
        if not Path(path).exists():
            raise SettingsError(f"no data file at {path}")
        on_error = settings.get("on_error", "raise")
        if on_error not in ("raise", "skip"):
            raise SettingsError(f"[data] on_error = {on_error!r}: use \"raise\" or \"skip\"")
        frames += list(load_frames(path, keys=keys, species=species, on_error=on_error))
    return Dataset(stress_labels(frames, settings))


def stress_labels(frames, settings: dict) -> list:
    """The ``[data]`` table's stress options: ``stresses = false`` drops every stress label
    (energies and forces only); ``pressure_offset_gpa = p`` subtracts a constant pressure ``p``
    (GPa) from every stress label, i.e. ``stress + p I`` (the fit report's Pulay-like offset)."""
    import dataclasses

    from ase.units import GPa

    keep = settings.get("stresses", True)
    offset = settings.get("pressure_offset_gpa")
    if keep and not offset:
        return list(frames)
    if not keep and offset:
        raise SettingsError("[data] stresses = false and pressure_offset_gpa both given: the "
                            "offset applies to stress labels, which stresses = false drops")
    return [dataclasses.replace(f, stress=None if not keep or f.stress is None
                                else f.stress + offset * GPa * np.eye(3)) for f in frames]


def structure(spec: str):
    """A structure from a file (its first frame) or a bulk spec ``"Cu fcc 3.61 3"``."""
    import ase.io
    from ase.build import bulk

    if Path(spec).exists():
        atoms = ase.io.read(spec, index=0)
        atoms.calc = None
        return atoms
    parts = spec.split()
    try:
        symbol, crystal, a, repeat = parts[0], parts[1], float(parts[2]), int(parts[3])
        return bulk(symbol, crystal, a=a, cubic=True).repeat(repeat)
    except (IndexError, ValueError, KeyError, RuntimeError) as err:
        raise SettingsError(f"structure {spec!r}: give a file that exists or a bulk spec "
                            f"'SYMBOL CRYSTAL A REPEAT' such as 'Cu fcc 3.61 3' ({err})") from None


def dynamics(atoms, md: dict):
    """Thermalised velocities and an ASE dynamics object from an ``[md]`` table."""
    from ase import units
    from ase.md.velocitydistribution import Stationary

    try:  # ase >= 3.29
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:  # older ase
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta

    temperature = float(md.get("temperature", 300.0))
    dt = float(md.get("timestep_fs", 2.0)) * units.fs
    seed = int(md.get("seed", 0))
    ensemble = md.get("ensemble", "langevin")
    thermalize_momenta(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
    Stationary(atoms)
    if ensemble == "verlet":
        from ase.md.verlet import VelocityVerlet
        return VelocityVerlet(atoms, dt)
    if ensemble == "berendsen":
        from ase.md.nvtberendsen import NVTBerendsen
        return NVTBerendsen(atoms, dt, temperature_K=temperature, taut=100 * units.fs)
    from ase.md.langevin import Langevin
    return Langevin(atoms, dt, temperature_K=temperature,
                    friction=float(md.get("friction_per_fs", 0.02)) / units.fs, fixcm=False,
                    rng=np.random.default_rng(seed + 1))
