"""Sparse Gaussian process on local atomic energies: selection, solver, model."""

from gpmlip.gp.model import Prediction, SparseGP

__all__ = ["SparseGP", "Prediction"]
