"""Any ASE calculator as a baseline, built from a named factory so that it is storable as data.

A factory takes the baseline's settings as keyword arguments and returns a fresh ASE calculator.
Named factories live in :data:`CALCULATORS` (``d3``, ``d4``, ``lj`` built in; add yours with
:func:`register_calculator`); a model file stores the name and the settings and rebuilds the
calculator on load.  A bare callable also works, but cannot be stored: a model saved with one
must be given it again, ``load_model(path, baseline=factory)``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError

from gpmlip.baselines.base import Baseline, BaselineResult
from gpmlip.errors import SettingsError

log = logging.getLogger(__name__)

EXTRA_ADVICE = "install the dispersion extra: pip install 'gpmlip[dispersion]'"


def _d3(method: str = "PBE", damping: str = "d3bj", **kwargs):
    try:
        from dftd3.ase import DFTD3
    except ImportError:
        raise SettingsError(f"the d3 baseline needs the dftd3 package: {EXTRA_ADVICE}") from None
    return DFTD3(method=method, damping=damping, **kwargs)


def _d4(method: str = "PBE", **kwargs):
    try:
        from dftd4.ase import DFTD4
    except ImportError:
        raise SettingsError(f"the d4 baseline needs the dftd4 package: {EXTRA_ADVICE}") from None
    return DFTD4(method=method, **kwargs)


def _lj(**kwargs):
    from ase.calculators.lj import LennardJones

    return LennardJones(**kwargs)


CALCULATORS: dict[str, Callable[..., object]] = {"d3": _d3, "d4": _d4, "lj": _lj}
"""Name -> factory(**settings) -> ASE calculator."""

RESERVED = ("zbl", "callable", *CALCULATORS)
"""Names a user factory cannot take."""


def register_calculator(name: str, factory: Callable[..., object]) -> None:
    """Make ``factory(**settings)`` available as baseline ``name`` (in fits and on load).

    Register it before :func:`gpmlip.load_model` in every process that loads such a model.
    """
    if name in RESERVED:
        raise SettingsError(f"baseline name {name!r} is built in; choose another name")
    CALCULATORS[name] = factory


class CalculatorBaseline(Baseline):
    """An ASE calculator's energy, forces and stress as a baseline.

    Parameters
    ----------
    name : str
        A name in :data:`CALCULATORS`, or a label for ``factory``.
    settings : dict, optional
        Keyword arguments of the factory (stored in model files).
    factory : callable, optional
        ``factory(**settings)`` -> ASE calculator; default ``CALCULATORS[name]``.  A factory that
        is not registered makes a model that cannot be rebuilt from its file alone.
    """

    def __init__(self, name: str, settings: dict | None = None, *,
                 factory: Callable[..., object] | None = None) -> None:
        super().__init__()
        if factory is None and name not in CALCULATORS:
            raise SettingsError(f"unknown baseline {name!r}; known: zbl, "
                                f"{', '.join(CALCULATORS)} (or register_calculator(name, "
                                "factory))")
        self.name = name
        self._settings = dict(settings or {})
        self.registered = factory is None or CALCULATORS.get(name) is factory
        self.calc = (factory or CALCULATORS[name])(**self._settings)
        for prop in ("energy", "forces"):
            if prop not in getattr(self.calc, "implemented_properties", [prop]):
                raise SettingsError(f"baseline {name!r}: the calculator does not give {prop}")

    def settings(self) -> dict:
        return dict(self._settings)

    def to_dict(self) -> dict:
        if not self.registered:
            return {"name": "callable", "label": self.name, "settings": self.settings()}
        return super().to_dict()

    def compute(self, atoms: Atoms) -> BaselineResult:
        a = atoms.copy()
        a.calc = self.calc
        energy = float(a.get_potential_energy())
        forces = np.array(a.get_forces())
        stress = None
        if a.pbc.all() and abs(a.cell.volume) > 1e-8:
            stress = np.array(a.get_stress(voigt=False))
        try:
            energies = np.array(a.get_potential_energies())
        except (PropertyNotImplementedError, NotImplementedError, AttributeError):
            energies = np.full(len(a), energy / max(len(a), 1))   # shared equally
        return BaselineResult(energy, forces, stress, energies)
