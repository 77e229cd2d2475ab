"""What ``pair_style gpmlip``'s embedded Python calls.

The plugin calls :func:`load` once per ``pair_style`` line, :meth:`PairModel.numbers` for
``pair_coeff``, and :meth:`PairModel.compute` on every force evaluation with one rank's pairs.
Any exception raised here becomes a LAMMPS error carrying its type and message.

Model specifications accepted by :func:`load`:

``PATH`` (a ``.npz`` file)
    a gpmlip model file, read by :func:`gpmlip.load_model`.
``python:MODULE:FACTORY``
    ``MODULE.FACTORY()`` -- any object with ``species``, ``pair_cutoff`` and ``pair_energies``
    (the pair-list entry point of :class:`gpmlip.SparseGP`).  Meant for tests and benchmarks
    with stand-in models (the tests' many-body toy, ``tests/lammps_toy.py``).
"""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path
from typing import Protocol

import numpy as np

from gpmlip.errors import ModelFileError, UnknownSpeciesError


def _from_spec(spec: str):
    if spec.startswith("python:"):
        try:
            _, module, factory = spec.split(":", 2)
        except ValueError:
            raise ModelFileError(f"{spec!r}: expected python:MODULE:FACTORY") from None
        return getattr(importlib.import_module(module), factory)()
    path = Path(spec)
    if not path.is_file():
        raise ModelFileError(f"model file {spec} does not exist")
    import gpmlip

    return gpmlip.load_model(path)


LOCAL_RANK_VARIABLES = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "PMI_SIZE")
"""Environment variables that MPI launchers (MPICH's hydra, Open MPI) set to the ranks on a node."""


def share_cores() -> int:
    """Give each MPI rank its share of the node's cores for the engine's and BLAS's threads
    (unless ``NUMBA_NUM_THREADS`` is set): two ranks with two threads each on two cores run at
    half speed.  Returns the engine's thread count."""
    import numba

    if "NUMBA_NUM_THREADS" not in os.environ:
        ranks = next((int(os.environ[v]) for v in LOCAL_RANK_VARIABLES
                      if os.environ.get(v, "").isdigit()), 1)
        if ranks > 1:
            share = max(1, (os.cpu_count() or 1) // ranks)
            numba.set_num_threads(min(numba.config.NUMBA_NUM_THREADS, share))
            from threadpoolctl import threadpool_limits

            threadpool_limits(share)   # the kernel's matrix products (BLAS) too
    return numba.get_num_threads()


def load(spec: str) -> "PairModel":
    """The model named by ``spec`` (see the module docstring), wrapped for the plugin."""
    share_cores()
    model = _from_spec(spec)
    missing = [a for a in ("species", "pair_cutoff", "pair_energies") if not hasattr(model, a)]
    if missing:
        raise ModelFileError(f"{spec}: the model has no {', '.join(missing)} (this gpmlip "
                             "version's SparseGP lacks the pair-list entry point)")
    return PairModel(model)


class PairEnergyModel(Protocol):
    """What the plugin needs of a model: :class:`gpmlip.SparseGP`, or a stand-in such as
    the tests' many-body toy (``tests/lammps_toy.py``)."""

    species: tuple[int, ...]
    pair_cutoff: float

    def pair_energies(self, centre_numbers, i, j, r_ij, neighbour_numbers, *, std=False): ...


class PairModel:
    """A model with the pair-list interface, as the plugin sees it."""

    def __init__(self, model: PairEnergyModel) -> None:
        self.model = model
        self.species = tuple(int(z) for z in model.species)
        self.cutoff = float(model.pair_cutoff)

    def numbers(self, symbols: list[str]) -> list[int]:
        """Atomic numbers of pair_coeff's elements; each must be one of the model's species."""
        from ase.data import atomic_numbers, chemical_symbols

        known = " ".join(chemical_symbols[z] for z in self.species)
        out = []
        for s in symbols:
            z = atomic_numbers.get(s)
            if z is None:
                raise UnknownSpeciesError(f"{s!r} is not an element symbol (model species: "
                                          f"{known})")
            if z not in self.species:
                raise UnknownSpeciesError(f"element {s} is not a species of the model "
                                          f"(model species: {known})")
            out.append(z)
        return out

    def compute(self, centre_numbers, i, j, r_ij, neighbour_numbers, energies_out, dE_dr_out,
                std_out) -> float:
        """One force evaluation: buffers from LAMMPS in, results written into the out buffers.

        Inputs are copied (they are views of LAMMPS memory that end with the call), so the model
        may keep what it is given.  Returns the seconds spent in ``pair_energies``.
        """
        n = len(memoryview(energies_out)) // 8
        cz = np.frombuffer(centre_numbers, dtype=np.int64).copy()
        ii = np.frombuffer(i, dtype=np.int64).copy()
        jj = np.frombuffer(j, dtype=np.int64).copy()
        r = np.frombuffer(r_ij, dtype=np.float64).reshape(-1, 3).copy()
        nz = np.frombuffer(neighbour_numbers, dtype=np.int64).copy()
        start = time.perf_counter()
        res = self.model.pair_energies(cz, ii, jj, r, nz, std=std_out is not None)
        seconds = time.perf_counter() - start
        e = np.asarray(res.energies, dtype=np.float64)
        d = np.asarray(res.dE_dr, dtype=np.float64)
        if e.shape != (n,) or d.shape != r.shape:
            raise ValueError(f"pair_energies returned energies {e.shape} and dE_dr {d.shape} "
                             f"for {n} centres and {len(r)} pairs")
        np.frombuffer(energies_out, dtype=np.float64)[:] = e
        np.frombuffer(dE_dr_out, dtype=np.float64).reshape(-1, 3)[:] = d
        if std_out is not None:
            s = np.asarray(res.std, dtype=np.float64)
            if s.shape != (n,):
                raise ValueError(f"pair_energies(std=True) returned std {s.shape} for {n} "
                                 "centres")
            np.frombuffer(std_out, dtype=np.float64)[:] = s
        return seconds
