"""Baselines by name and settings: what a ``[model] baseline = ...`` line or a model file holds."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from gpmlip.baselines.base import Baseline
from gpmlip.baselines.calculators import CALCULATORS, CalculatorBaseline
from gpmlip.baselines.zbl import ZBL
from gpmlip.errors import SettingsError

BUILDERS: dict[str, Callable[..., Baseline]] = {"zbl": ZBL}
"""Built-in baselines that are not ASE calculators."""

BaselineSpec = Baseline | str | Mapping | Callable | None
"""A :class:`Baseline`; a name (``"zbl"``, ``"d3"``, ...); ``{"name": ..., **settings}``; or a
factory returning an ASE calculator."""


def make_baseline(spec: BaselineSpec, species=None) -> Baseline | None:
    """Build a baseline from ``spec`` (see :data:`BaselineSpec`); None stays None.

    Parameters
    ----------
    spec : Baseline, str, dict, callable or None
    species : sequence of int, optional
        The model's species, checked against the baseline's settings.

    Raises
    ------
    SettingsError
        Unknown name, bad settings, or a stored user callable that was not re-supplied.
    """
    if spec is None:
        return None
    if isinstance(spec, Baseline):
        baseline = spec
    elif isinstance(spec, str):
        baseline = _named(spec, {})
    elif isinstance(spec, Mapping):
        settings = dict(spec)
        name = settings.pop("name", None)
        if not isinstance(name, str):
            raise SettingsError(f"baseline {dict(spec)!r}: give its name, e.g. "
                                "{name = \"zbl\", inner = 1.0, outer = 2.0}")
        if name == "callable":
            raise SettingsError(
                f"the model's baseline is a user-supplied calculator factory "
                f"({settings.get('label')!r}) that a file cannot store: give it again, "
                "load_model(path, baseline=factory), or register it with "
                "gpmlip.baselines.register_calculator(name, factory) before training")
        baseline = _named(name, settings)
    elif callable(spec):
        baseline = CalculatorBaseline(getattr(spec, "__qualname__", "callable"), factory=spec)
    else:
        raise SettingsError(f"baseline={spec!r}: give a name (\"zbl\", \"d3\", ...), a dict with "
                            "a name and settings, a Baseline, or a calculator factory")
    if species is not None:
        baseline.check_species(species)
    return baseline


def _named(name: str, settings: dict) -> Baseline:
    if name in BUILDERS:
        try:
            return BUILDERS[name](**settings)
        except TypeError as exc:
            raise SettingsError(f"baseline {name!r}: {exc}; see help(gpmlip.baselines."
                                f"{BUILDERS[name].__name__})") from None
    if name in CALCULATORS:
        return CalculatorBaseline(name, settings)
    raise SettingsError(f"unknown baseline {name!r}; known: {', '.join([*BUILDERS, *CALCULATORS])}"
                        " (or register_calculator(name, factory) for your own ASE calculator)")


def stored_baseline(stored: dict | None, given: BaselineSpec, path) -> Baseline | None:
    """The baseline a loaded model gets: the file's (``stored``), or ``given`` when the file
    holds a user callable that must be re-supplied.  ``path`` names the file in errors."""
    if given is None:
        if stored is None:
            return None
        try:
            return make_baseline(stored)
        except SettingsError as exc:
            raise SettingsError(f"{path}: the model's baseline cannot be rebuilt: {exc}") from None
    if stored is None:
        raise SettingsError(f"{path} was trained without a baseline; load it without one")
    built = make_baseline(given)
    if stored.get("name") != "callable" and built.to_dict() != stored:
        raise SettingsError(f"{path} was trained with baseline {stored}, not {built.to_dict()}; "
                            "load it without baseline= to get its own")
    return built
