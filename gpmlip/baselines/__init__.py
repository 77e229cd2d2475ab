"""Physical baselines a model learns on top of: core repulsion, dispersion, any ASE calculator.

``SparseGP(descriptor, baseline="zbl")`` subtracts the baseline's energy, forces and stress from
every label and adds them to every prediction; the baseline adds no variance.
"""

from gpmlip.baselines.base import (Baseline, BaselineCalculator, BaselineResult,
                                  add_to_prediction)
from gpmlip.baselines.calculators import CALCULATORS, CalculatorBaseline, register_calculator
from gpmlip.baselines.registry import BaselineSpec, make_baseline, stored_baseline
from gpmlip.baselines.zbl import ZBL, zbl_energy

__all__ = ["Baseline", "BaselineCalculator", "BaselineResult", "BaselineSpec", "CALCULATORS", "CalculatorBaseline",
           "ZBL", "add_to_prediction", "make_baseline", "register_calculator",
           "stored_baseline", "zbl_energy"]
