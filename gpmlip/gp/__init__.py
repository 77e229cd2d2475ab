"""Sparse Gaussian process on local atomic energies: selection, solver, state, model."""

from gpmlip.gp.files import load_model
from gpmlip.gp.model import SparseGP
from gpmlip.gp.prediction import Prediction
from gpmlip.gp.state import FittedState
from gpmlip.gp.twobody import TwoBody

__all__ = ["SparseGP", "Prediction", "FittedState", "load_model", "TwoBody"]
