"""The GP as a sum of terms: the SOAP kernel plus terms on the pair list (docs/theory.md §4).

The energy is a sum of independent GPs.  The SOAP term's columns come first in every kernel row
(its sparse environments), then each further term's columns (its own sparse set, e.g. the
two-body term's sparse distances), and ``K_mm`` is block diagonal.  Everything outside a term
sees only the :class:`Term` protocol, so a new term (a three-body term, a second SOAP with its
own sparse set) is one class and one entry in :data:`TERM_TYPES`; nothing else branches on a
term's kind.

:func:`training_rows` is the one place a training structure's kernel rows are built: the fit,
the streamed update, the workers of a distributed fit and leave-one-out all call it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from gpmlip.data.frames import Frame
from gpmlip.descriptors.neighbours import PairList
from gpmlip.gp.covariance import SparseSet
from gpmlip.gp.observations import FrameRows, compute_rows
from gpmlip.gp.twobody import TwoBodySparse


@runtime_checkable
class Term(Protocol):
    """A term of the GP beyond the SOAP kernel, evaluated on the descriptor's pair list.

    Attributes
    ----------
    key : int
        Its signal variance's key in ``signal_variance`` dicts (not an atomic number: <= 0).
    name : str
        Its hyper-parameter's label (``"signal <name>"``).
    parameter : str
        The :class:`~gpmlip.SparseGP` keyword of its settings, and its key in model files.
    format_version : int
        The model-file version a model with this term is written as.
    kmm : ndarray, shape (m_t, m_t)
        Unit-variance kernel of its sparse set, jitter included.
    sigma : float
        The signal std a fit starts from.
    """

    key: int
    name: str
    parameter: str
    format_version: int
    kmm: np.ndarray
    sigma: float

    def __len__(self) -> int: ...

    def settings(self, sigma: float): ...

    def frame_rows(self, pairs: PairList, *, forces: bool, stress_volume: float | None): ...

    def local(self, pairs: PairList, beta: np.ndarray, *, gradient: bool, rows: bool): ...

    def force_prior(self, pairs: PairList, n_atoms: int) -> np.ndarray: ...

    def strain_prior(self, pairs: PairList) -> np.ndarray: ...

    def energy_geometry(self, pairs: PairList): ...

    def energy_prior(self, a, b) -> float: ...

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict]: ...


TERM_TYPES: dict[str, type] = {TwoBodySparse.parameter: TwoBodySparse}
"""Model-file key (a term's ``parameter``) -> its class, for reading files back."""


def terms_from_arrays(arrays, meta: dict) -> tuple:
    """The terms stored in a model file's arrays and metadata (see :meth:`Term.to_arrays`)."""
    return tuple(cls.from_arrays(arrays, meta[key]) for key, cls in TERM_TYPES.items()
                 if meta.get(key) is not None)


def with_term_rows(rows: Iterable[FrameRows], frames: Sequence[Frame], terms: Sequence,
                   pair_list: Callable) -> Iterator[FrameRows]:
    """SOAP ``rows`` with every term's columns appended, frame by frame (pair lists are cheap:
    this process)."""
    for frame, soap in zip(frames, rows):
        if not terms:
            yield soap
            continue
        pairs = pair_list(frame.atoms)
        volume = abs(frame.atoms.cell.volume) if soap.stress is not None else None
        parts = [t.frame_rows(pairs, forces=soap.forces is not None, stress_volume=volume)
                 for t in terms]
        yield FrameRows(np.concatenate([soap.energy, *(p[0] for p in parts)]),
                        None if soap.forces is None else np.hstack([soap.forces,
                                                                    *(p[1] for p in parts)]),
                        None if soap.stress is None else np.hstack([soap.stress,
                                                                    *(p[2] for p in parts)]))


def training_rows(frames: Sequence[Frame], descriptor_settings: dict, zeta: int,
                  sparse: SparseSet, terms: Sequence, pair_list: Callable, *,
                  n_jobs: int = 1) -> Iterator[FrameRows]:
    """Kernel rows of training structures for every column (SOAP, then each term), in order.

    Parameters
    ----------
    frames : sequence of Frame
    descriptor_settings : dict
        ``descriptor.to_dict()`` (the SOAP rows are computed in workers that rebuild it).
    zeta : int
    sparse : SparseSet
        The SOAP sparse points.
    terms : sequence of Term
    pair_list : callable
        ``descriptor.pair_list`` (the terms' rows are computed on it, here).
    n_jobs : int
        Worker processes for the SOAP rows.
    """
    rows = compute_rows(frames, descriptor_settings, zeta, sparse, n_jobs=n_jobs)
    return with_term_rows(rows, frames, terms, pair_list)


def force_rows(terms: Sequence, signal_variance: dict, pairs: PairList, soap_rows: np.ndarray,
               soap_prior: np.ndarray, n_atoms: int) -> tuple[np.ndarray, np.ndarray]:
    """Force rows (3n, m_all) with every term's columns, and the force prior variance (3n,)
    with every term's part (eV^2/Å^2): what the force std of a structure needs."""
    rows, prior = [soap_rows], soap_prior
    for t in terms:
        rows.append(t.frame_rows(pairs, forces=True, stress_volume=None)[1])
        prior = prior + signal_variance[t.key] * t.force_prior(pairs, n_atoms).ravel()
    return (np.hstack(rows) if len(rows) > 1 else soap_rows), prior


def stress_rows(terms: Sequence, signal_variance: dict, pairs: PairList, soap_rows: np.ndarray,
                soap_prior: np.ndarray, volume: float) -> tuple[np.ndarray, np.ndarray]:
    """Stress rows (6, m_all) with every term's columns, and the stress prior variance (6,)
    with every term's part (eV^2/Å^6): what the stress std of a structure needs (the SOAP
    rows and prior already divided by the volume)."""
    rows, prior = [soap_rows], soap_prior
    for t in terms:
        rows.append(t.frame_rows(pairs, forces=False, stress_volume=volume)[2])
        prior = prior + signal_variance[t.key] * t.strain_prior(pairs) / volume ** 2
    return (np.hstack(rows) if len(rows) > 1 else soap_rows), prior


def column_blocks(n_soap: int, terms: Sequence) -> list[slice]:
    """The columns of each term in a kernel row (after the ``n_soap`` SOAP columns)."""
    out, start = [], n_soap
    for t in terms:
        out.append(slice(start, start + len(t)))
        start += len(t)
    return out


def keys(terms: Sequence) -> set[int]:
    """The signal-variance keys of the terms (every other key is an atomic number)."""
    return {t.key for t in terms}
