"""ASE calculator over a fitted :class:`gpmlip.SparseGP`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from ase.stress import full_3x3_to_voigt_6_stress

if TYPE_CHECKING:
    from gpmlip.gp.model import SparseGP

UNCERTAINTY_RESULTS = {
    "local_variance": "per-atom predictive variance of the local energy, eV^2",
    "local_std_normalised": "sqrt(local_variance) over the species' signal std, in [0, 1]: the "
                            "novelty every threshold of gpmlip is on",
    "max_uncertainty": "max over atoms of local_std_normalised (what OTF and the gate threshold)",
    "force_std": "per-component force standard deviation, eV/Å, calibrated when the model has "
                 "a calibration (only with force_std=True)",
    "force_std_raw": "the raw (uncalibrated) DTC force std, eV/Å (only with force_std=True)",
    "energy_std": "std of the total energy, eV, calibrated when the model has an energy "
                  "calibration (only with error_bars=True)",
    "stress_std": "std of every stress component in ASE's Voigt order, eV/Å³, calibrated when "
                  "the model has a stress calibration (only with error_bars=True, periodic cells)",
}
"""Extra entries of ``calc.results`` and what they mean."""


class GPCalculator(Calculator):
    """Energies, forces, stress, local energies and uncertainties from a sparse GP model.

    Parameters
    ----------
    model : gpmlip.SparseGP
        A fitted model.  When it changes (``fit``/``update``/hyper-parameters), cached results
        are dropped on the next call.
    uncertainty : bool, default False
        Compute the local-energy variances with every call.  Without it they are computed only
        when asked for (``get_property("local_std_normalised", atoms)``), from the same
        descriptor pass when the forces are already known: plain MD pays nothing for them.
    force_std : bool, default False
        Also compute force uncertainties (needs the descriptor Jacobian: slower).
    error_bars : bool, default False
        Also the std of the total energy and of the stress (``energy_std``, ``stress_std``):
        error bars on what a user publishes, not for every MD step (see
        :meth:`SparseGP.predict`).

    Notes
    -----
    ``results`` holds, besides ASE's properties, the entries of :data:`UNCERTAINTY_RESULTS`.
    Read them with ``calc.get_property("local_std_normalised", atoms)`` or after any
    property call from ``calc.results``.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies",
                              "local_variance", "local_std_normalised", "max_uncertainty",
                              "force_std", "force_std_raw", "energy_std", "stress_std"]

    def __init__(self, model: SparseGP, *, uncertainty: bool = False, force_std: bool = False,
                 error_bars: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.uncertainty = uncertainty
        self.force_std = force_std
        self.error_bars = error_bars
        self._model_version = model.version

    def check_state(self, atoms, tol: float = 1e-15):
        """ASE's change detection, plus: a model that changed invalidates everything."""
        if self.model.version != self._model_version:
            self._model_version = self.model.version
            self.reset()
        return super().check_state(atoms, tol)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        """Fill ``self.results`` for ``atoms`` (see ASE's ``Calculator.calculate``)."""
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        if {"force_std", "force_std_raw"} & set(properties) and not self.force_std:
            raise PropertyNotImplementedError("create the calculator with force_std=True to get "
                                              "force uncertainties")
        if {"energy_std", "stress_std"} & set(properties) and not self.error_bars:
            raise PropertyNotImplementedError("create the calculator with error_bars=True to get "
                                              "the energy and stress stds")
        has_volume = atoms.pbc.all() and abs(atoms.cell.volume) > 1e-8
        if "stress" in properties and not has_volume:
            raise PropertyNotImplementedError("stress needs a periodic cell with a volume")
        want_var = self.uncertainty or any(p in UNCERTAINTY_RESULTS for p in properties)
        if not system_changes and "forces" in self.results and want_var:
            # same structure, forces known: add only what is missing
            pred = self.model.predict(
                atoms, forces=False, stress=False, variance=True,
                force_std=self.force_std and "force_std" not in self.results,
                energy_std=self.error_bars and "energy_std" not in self.results,
                stress_std=self.error_bars and has_volume and "stress_std" not in self.results)
            self._store_uncertainty(pred)
            return
        pred = self.model.predict(atoms, forces=True, stress=has_volume, variance=want_var,
                                  force_std=self.force_std and want_var,
                                  energy_std=self.error_bars and want_var,
                                  stress_std=self.error_bars and want_var and has_volume)
        self.results = {
            "energy": pred.energy,
            "free_energy": pred.energy,
            "energies": pred.energies,
            "forces": pred.forces,
        }
        if pred.stress is not None:
            self.results["stress"] = full_3x3_to_voigt_6_stress(pred.stress)
        if want_var:
            self._store_uncertainty(pred)

    def _store_uncertainty(self, pred) -> None:
        self.results.update({
            "local_variance": pred.local_variance,
            "local_std_normalised": pred.local_std_normalised,
            "max_uncertainty": pred.max_uncertainty,
        })
        if pred.force_std is not None:
            self.results["force_std"] = pred.force_std
            self.results["force_std_raw"] = pred.force_std_raw
        if pred.energy_std is not None:
            self.results["energy_std"] = pred.energy_std
        if pred.stress_std is not None:
            self.results["stress_std"] = full_3x3_to_voigt_6_stress(pred.stress_std)
