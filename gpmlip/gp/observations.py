"""Turning labelled frames into kernel rows, targets and noise scales, in parallel and in blocks.

A frame's rows are computed where its Jacobian is computed (a worker process) and only the rows
(at most ``3 n_atoms + 7`` by ``m``) travel back; the Jacobian is dropped at once.  Training memory
is therefore O(m^2) for the Gram blocks plus one Jacobian per worker.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from ase import Atoms

from gpmlip.gp.covariance import SparseSet, energy_rows, force_rows, strain_rows, voigt
from gpmlip.data.frames import Frame
from gpmlip.parallel import mp_context

WINDOW = 2
"""Frames in flight per worker: bounds memory while keeping workers busy."""


@dataclass
class NoiseModel:
    """Which noise group each observation belongs to, and its scale.

    Attributes
    ----------
    config_sigmas : dict
        config_type -> {"energy": eV/atom, "forces": eV/Å, "stress": eV/Å³}: fixed noise for the
        frames of that config_type (per-frame ``energy_sigma``/``force_sigma``/``virial_sigma``
        take precedence).
    stress_per_atom : bool
        True (GAP's ``sigma_per_atom``): the global stress level is a virial noise in eV per
        atom, and a stress component's variance is ``sigma^2 n_atoms / V^2`` (the virial's
        variance grows as n_atoms, stress = virial / V), so the weight of a cell's stress does
        not grow with its size.  False (models before this setting): the level is a stress
        noise in eV/Å³, the same for every cell.
    """

    config_sigmas: dict[str, dict[str, float]]
    stress_per_atom: bool = False

    def scale(self, frame: Frame, kind: str) -> float:
        """Factor on the global noise variance of one ``kind`` observation of ``frame``."""
        if kind == "energy":
            return float(frame.n_atoms)
        if kind == "stress" and self.stress_per_atom:
            return frame.n_atoms / frame.atoms.cell.volume ** 2
        return 1.0

    def fixed_sigma(self, frame: Frame, kind: str) -> float | None:
        """The frame's fixed noise for ``kind`` in model units, or None for the global level."""
        if kind == "energy" and frame.energy_sigma is not None:
            return frame.energy_sigma
        if kind == "forces" and frame.force_sigma is not None:
            return frame.force_sigma
        if kind == "stress" and frame.virial_sigma is not None:
            return frame.virial_sigma * frame.n_atoms / abs(frame.atoms.cell.volume)
        return self.config_sigmas.get(frame.config_type, {}).get(kind)


@dataclass
class FrameRows:
    """Kernel rows of one frame, for the sparse set they were computed with.

    ``energy`` (m,), ``forces`` (3 n_atoms, m) or None, ``stress`` (6, m) or None.
    """

    energy: np.ndarray
    forces: np.ndarray | None
    stress: np.ndarray | None


def observations(frame: Frame, rows: FrameRows, e0_total: float, noise: NoiseModel):
    """Yield ``(group, rows, y, scale)`` for each label of a frame.

    ``group`` is "energy", "forces", "stress" or "fixed"; ``scale`` multiplies the group's noise
    variance (or *is* the variance for "fixed").  Energy noise grows as sqrt(n_atoms).
    """
    labels = (("energy", rows.energy[None, :], np.array([frame.energy - e0_total]) if
               frame.energy is not None else None),
              ("forces", rows.forces, None if frame.forces is None else frame.forces.ravel()),
              ("stress", rows.stress, None if frame.stress is None else voigt(frame.stress)))
    for kind, k, y in labels:
        if y is None:
            continue
        sigma = noise.fixed_sigma(frame, kind)
        if sigma is None:
            yield kind, k, y, np.full(len(y), noise.scale(frame, kind))
        else:   # fixed levels: energy per atom (times n_atoms in variance), stress in eV/Å³
            scale = frame.n_atoms if kind == "energy" else 1.0
            yield "fixed", k, y, np.full(len(y), sigma ** 2 * scale)


# -- workers ---------------------------------------------------------------------------------
_DESCRIPTORS: dict[str, object] = {}


def descriptor_for(settings: dict):
    """The descriptor of ``settings`` (``descriptor.to_dict()``), built once per process: what
    a worker describes its structures with."""
    from gpmlip.descriptors.registry import descriptor_from_dict

    key = json.dumps(settings, sort_keys=True)
    if key not in _DESCRIPTORS:
        _DESCRIPTORS[key] = descriptor_from_dict(settings)
    return _DESCRIPTORS[key]


def frame_rows(settings: dict, zeta: int, sparse: SparseSet, atoms: Atoms, forces: bool,
               stress: bool) -> FrameRows:
    """Describe one structure and contract its Jacobian into kernel rows (runs in a worker)."""
    descriptor = descriptor_for(settings)
    env = descriptor.describe(atoms, gradients=forces or stress)
    e = energy_rows(env, sparse, zeta)
    f = force_rows(env, sparse, zeta).reshape(3 * len(atoms), -1) if forces else None
    s = strain_rows(env, sparse, zeta) / abs(atoms.cell.volume) if stress else None
    return FrameRows(e, f, s)


def _one_blas_thread() -> None:
    """Workers already use every core between them: one BLAS thread each."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def compute_rows(frames: Iterable[Frame], settings: dict, zeta: int, sparse: SparseSet, *,
                 n_jobs: int = 1) -> Iterator[FrameRows]:
    """Rows of every frame, in order, computed ``n_jobs`` at a time (what leave-one-out keeps
    per structure; a fit needs only their statistics: :mod:`gpmlip.gp.distributed`).

    Parameters
    ----------
    frames : iterable of Frame
    settings : dict
        Descriptor settings (``SOAP.to_dict()``).
    zeta : int
    sparse : SparseSet
    n_jobs : int
        Local worker processes (see :mod:`gpmlip.parallel`); this process when 1.
    """
    frames = list(frames)
    args = [(settings, zeta, sparse, f.atoms, f.forces is not None, f.stress is not None)
            for f in frames]
    if n_jobs <= 1 or len(frames) <= 1:
        for a in args:
            yield frame_rows(*a)
        return
    pool = ProcessPoolExecutor(n_jobs, mp_context=mp_context("compute"),
                               initializer=_one_blas_thread)
    try:
        window = WINDOW * max(n_jobs, 1)
        pending = [pool.submit(frame_rows, *a) for a in args[:window]]
        for i in range(len(args)):
            result = pending[i].result()
            pending[i] = None
            if i + window < len(args):
                pending.append(pool.submit(frame_rows, *args[i + window]))
            yield result
    finally:
        pool.shutdown(cancel_futures=True)
