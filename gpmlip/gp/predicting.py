"""What a fitted sparse GP answers: energies, forces and stresses of a structure or a pair list,
and their uncertainties (the local-energy, force, total-energy and stress stds) with the
calibrations that make them honest.

:class:`Predicting` is the prediction half of :class:`gpmlip.SparseGP` (which also holds the
settings and the training, in :mod:`gpmlip.gp.model`); the numbers come from
:mod:`gpmlip.gp.evaluation` (a pair list), :mod:`gpmlip.gp.calibration`,
:mod:`gpmlip.gp.energy_std` and :mod:`gpmlip.gp.stress_std`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from ase import Atoms

from gpmlip.baselines import add_to_prediction
from gpmlip.data import Dataset
from gpmlip.descriptors.neighbours import PairList, check_separation
from gpmlip.errors import NumericalError, SettingsError
from gpmlip.gp import calibrate, evaluation
from gpmlip.gp import energy_std as energy_std_module
from gpmlip.gp import stress_std as stress_std_module
from gpmlip.gp.calibration import Calibration, force_variance_parts
from gpmlip.gp.prediction import (ForceUncertainty, PairEnergies, Prediction, normalised_std,
                                  pair_forces)
from gpmlip.species import check_known


class Predicting:
    """Prediction methods of :class:`gpmlip.SparseGP` (a mixin: it reads the model's
    ``descriptor``, ``state_``, ``baseline`` and calibrations)."""

    @property
    def pair_cutoff(self) -> float:
        """Distance (Å) beyond which a neighbour contributes nothing to a local energy."""
        return float(self.descriptor.neighbour_cutoff)

    def _check_species(self, numbers) -> None:
        """Atoms of the model's species that it has no sparse points for (never trained on):
        an error (species outside the descriptor's are the descriptor's error)."""
        known = set(self.state_.sparse.species.tolist())
        check_known(np.intersect1d(numbers, self.species), known, what="the structure",
                    owner="the model (no sparse points: it was not trained on them)",
                    remedy="add training structures that contain them")

    def pair_energies(self, centre_numbers, i, j, r_ij, neighbour_numbers, *,
                      std: bool = False) -> PairEnergies:
        """Per-atom energies and ``dE/dr_ij`` from a pair list: no ASE, no neighbour search.

        The entry point for any MD engine that owns its neighbour list (LAMMPS's pair style
        calls it); :meth:`predict` and :class:`gpmlip.GPCalculator` run on the same path.

        Parameters
        ----------
        centre_numbers : array of int, shape (n_centres,)
            Atomic numbers of the centres ``0 .. n_centres - 1``.
        i : array of int, shape (n_pairs,)
            Centre index of every pair.
        j : array of int, shape (n_pairs,)
            Neighbour index of every pair (not used for the energy; forces go to it).
        r_ij : array, shape (n_pairs, 3)
            ``r_j - r_i`` in Å; a periodic image or a ghost atom is its own pair.  Pairs
            farther than :attr:`pair_cutoff` may be included: they contribute nothing.
        neighbour_numbers : array of int, shape (n_pairs,)
            Atomic numbers of the neighbours.
        std : bool, default False
            Also the per-atom normalised local-energy std (costs the variance).

        Returns
        -------
        PairEnergies
            ``energies`` (n_centres,) in eV, summing to the total energy; ``dE_dr``
            (n_pairs, 3), with forces ``F_j -= dE_dr[p]``, ``F_i += dE_dr[p]`` and virial
            ``W = -sum_p r_ij (x) dE_dr[p]``; ``std`` (n_centres,) in [0, 1] or None.
        """
        self.check_fitted()
        if self.baseline is not None and self.pair_baseline is None:
            raise SettingsError(f"the model's baseline {self.baseline!r} is not a pair potential "
                                f"within the pair cutoff {self.pair_cutoff:g} Å: a pair list "
                                "cannot evaluate it (in LAMMPS add it as its own pair style)")
        pairs = PairList(centre_species=np.asarray(centre_numbers, dtype=np.int64),
                         centre=np.asarray(i, dtype=np.int64),
                         vector=np.asarray(r_ij, dtype=float),
                         neighbour_species=np.asarray(neighbour_numbers, dtype=np.int64),
                         neighbour=np.asarray(j, dtype=np.int64))
        check_separation(pairs.centre, pairs.neighbour, pairs.vector)
        self._check_species(pairs.centre_species)
        return evaluation.evaluate(self, pairs, gradient=True, variance=std)

    def local_std_normalised(self, features: np.ndarray, species: np.ndarray) -> np.ndarray:
        """:attr:`Prediction.local_std_normalised` of environments given by their descriptors.

        Parameters
        ----------
        features : ndarray, shape (n, n_features)
            Descriptor vectors (``descriptor.describe(atoms).features``; need not be unit length).
        species : ndarray of int, shape (n,)

        Returns
        -------
        ndarray, shape (n,)
            The normalised local-energy std, in [0, 1], that :meth:`predict` gives these atoms.
            With a two-body term (which needs the pair list, not the descriptor), it is the
            SOAP term's own: ``sqrt(v_SOAP) / sigma_z``.
        """
        self.check_fitted()
        species = np.asarray(species, dtype=np.int64)
        _, _, var, sigma2 = evaluation.local(self, np.asarray(features, dtype=float), species,
                                        gradient=False, variance=True)
        return normalised_std(var, sigma2)

    def energy_covariance(self, structures: Sequence[Atoms], *,
                          calibrated: bool = True) -> np.ndarray:
        """Posterior covariance of the total energies of ``structures``, eV^2, shape (k, k).

        The std of an energy difference ``E_a - E_b`` (a formation or surface energy, a barrier)
        is ``sqrt(C[a, a] + C[b, b] - 2 C[a, b])``: errors shared by similar environments cancel
        in it.  With ``calibrated`` (default) it is scaled by the model's energy calibration
        when it has one (:attr:`energy_calibration_`, fitted by :meth:`calibrate`; see
        :mod:`gpmlip.gp.energy_std`); else the raw DTC covariance.
        """
        cov = energy_std_module.energy_covariance(self, list(structures))
        return energy_std_module.calibrated(self, cov) if calibrated else cov

    def predict(self, atoms: Atoms, *, forces: bool = True, stress: bool = True,
                force_std: bool = False, variance: bool = True,
                energy_std: bool = False, stress_std: bool = False) -> Prediction:
        """Energy, forces, stress, local energies and their uncertainties for one structure.

        Parameters
        ----------
        atoms : ase.Atoms
        forces, stress : bool
            Compute them (by back-propagation through the descriptor: no Jacobian).
        force_std : bool
            Also the force uncertainty (needs the descriptor Jacobian and one kernel-row
            contraction per sparse point: for labelling decisions, not for every MD step):
            ``force_std`` is calibrated when :attr:`calibration_` is set (see :meth:`calibrate`),
            ``force_std_raw`` is the raw DTC std.
        energy_std : bool
            Also the std of the total energy (:meth:`energy_covariance`, with the covariance
            between the atoms' local energies; costs a kernel between all pairs of atoms):
            ``energy_std`` (calibrated when the model has an :attr:`energy_calibration_`) and
            ``energy_std_raw``.
        stress_std : bool
            Also the std of every stress component, (3, 3) eV/Å³ (needs the descriptor Jacobian,
            as the force std; a periodic cell): ``stress_std`` (calibrated when the model has a
            :attr:`stress_calibration_`) and ``stress_std_raw``.
        variance : bool, default True
            Compute the local-energy variances (plain MD does not need them); without them the
            variance fields of the result are None.
        """
        self.check_fitted()
        self._check_species(atoms.numbers)
        volume = abs(atoms.cell.volume) if atoms.pbc.all() else 0.0
        want_stress = stress and volume > 1e-8
        pairs = self.descriptor.pair_list(atoms)
        out = evaluation.evaluate(self, pairs, gradient=forces or want_stress, variance=variance)
        result = Prediction(energy=float(out.energies.sum()), energies=out.energies, forces=None,
                            stress=None, local_variance=out.variance,
                            local_std_normalised=out.std)
        if not np.isfinite(out.energies).all() or (out.dE_dr is not None
                                                   and not np.isfinite(out.dE_dr).all()):
            raise NumericalError("the model predicts a non-finite energy or force for finite "
                                 "positions: its file or its fitted state is damaged (load it "
                                 "again, or refit)")
        if forces:
            result.forces = pair_forces(pairs, out.dE_dr, len(atoms))
        if want_stress:
            s = np.einsum("pa,pb->ab", out.dE_dr, pairs.vector) / volume
            result.stress = 0.5 * (s + s.T)
        if force_std:
            fu = self.force_uncertainty(atoms)
            result.force_std, result.force_std_raw = fu.std, fu.raw
        if stress_std:
            result.stress_std, result.stress_std_raw = stress_std_module.stress_std(self, atoms)
        if energy_std:
            raw = energy_std_module.energy_covariance(self, [atoms])
            result.energy_std_raw = float(np.sqrt(max(raw[0, 0], 0.0)))
            result.energy_std = float(np.sqrt(max(energy_std_module.calibrated(self, raw)[0, 0],
                                                  0.0)))
        if self.baseline is not None and self.pair_baseline is None:
            add_to_prediction(result, self.baseline(atoms))
        return result

    def force_uncertainty(self, atoms: Atoms) -> ForceUncertainty:
        """The force std of every component (calibrated when :attr:`calibration_` is set), the raw
        DTC std and the raw variance parts: what :meth:`predict` reports as ``force_std``, the
        on-the-fly trigger and the gate threshold and the run records keep.

        Needs the descriptor Jacobian (see :meth:`predict`).
        """
        self.check_fitted()
        parts = force_variance_parts(self, atoms)
        raw = np.sqrt(parts[..., 0] + parts[..., 1])
        if self.calibration_ is None:
            return ForceUncertainty(raw, raw, parts, False)
        return ForceUncertainty(self.calibration_.std(parts), raw, parts, True)

    def calibrate(self, frames: Dataset | Sequence | str | os.PathLike | None = None, *,
                  method: str = "auto", max_frames: int | None = 50) -> Calibration:
        """Fit the force-std calibration on honest residuals and keep it.

        Parameters
        ----------
        frames : list of ase.Atoms, Dataset or a path, optional
            Labelled structures the model was *not* trained on (with forces).  Default: the
            closed-form leave-one-structure-out residuals of the training set
            (:func:`gpmlip.gp.calibration.leave_one_out_residuals`; at most 50 structures).
        method : {"auto", "scale", "parts"}
            See :func:`gpmlip.gp.calibration.fit_calibration`.
        max_frames : int, optional
            Without ``frames``: leave out at most this many training structures (each costs a
            force-variance evaluation); None: all.

        Returns
        -------
        Calibration
            Also stored as :attr:`calibration_` (and in the model file on :meth:`save`).
        """
        self.calibration_, self.energy_calibration_, self.stress_calibration_ = \
            calibrate.fit_calibrations(self, frames, method=method, max_frames=max_frames)
        return self.calibration_
