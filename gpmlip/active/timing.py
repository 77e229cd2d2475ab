"""Where an on-the-fly run's time goes: seconds per phase, and a calculator that counts its own."""

from __future__ import annotations

import time
from contextlib import contextmanager

from ase.calculators.calculator import all_changes

from gpmlip.calculator import GPCalculator

PHASES = ("predict", "label", "update", "io")
"""The phases of a run (MD and everything else is the wall time minus their sum)."""


class PhaseTimers(dict):
    """Seconds spent per phase of a run (a dict, as the checkpoint and the summary store it)."""

    @classmethod
    def new(cls) -> PhaseTimers:
        """Every phase at zero."""
        return cls.fromkeys(PHASES, 0.0)

    @contextmanager
    def phase(self, name: str):
        """Add the time spent in the ``with`` block to phase ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self[name] += time.perf_counter() - start


class TimedCalculator(GPCalculator):
    """A :class:`~gpmlip.GPCalculator` (with local-energy variances) that adds the time of its
    calls to the ``predict`` phase of ``timers``."""

    def __init__(self, model, timers: PhaseTimers) -> None:
        super().__init__(model, uncertainty=True)
        self.timers = timers

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        with self.timers.phase("predict"):
            super().calculate(atoms, properties, system_changes)
