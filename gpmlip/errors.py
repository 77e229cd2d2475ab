"""The gpmlip exception hierarchy.

Every error raised on user input derives from :class:`GpmlipError`, so a caller can catch all of
them in one place.  Each message names the problem *and* what to do about it.  This module imports
nothing from gpmlip.
"""

from __future__ import annotations


class GpmlipError(Exception):
    """Base class of every error gpmlip raises on purpose."""


class SettingsError(GpmlipError, ValueError):
    """A setting (descriptor, model or workflow parameter) is out of its allowed range."""


class StructureError(GpmlipError, ValueError):
    """An atomic structure cannot be described (empty, non-finite, overlapping, bad cell)."""


class UnknownSpeciesError(StructureError):
    """A structure contains a chemical species the descriptor or model was not built for."""


class DataError(GpmlipError, ValueError):
    """Labelled data is missing, non-finite, of the wrong shape or duplicated."""


class NotFittedError(GpmlipError, RuntimeError):
    """A model was used before it was fitted."""


class NumericalError(GpmlipError, ArithmeticError):
    """A linear-algebra step failed (e.g. a matrix would not factorise)."""


class ModelFileError(GpmlipError, ValueError):
    """A model file is damaged, of another format version, or not a gpmlip model."""


class LabellerError(GpmlipError, RuntimeError):
    """A labeller (the reference calculator, e.g. DFT) failed and the run was told to stop."""


class RunDirectoryError(GpmlipError, RuntimeError):
    """An active-learning run directory is missing, damaged, or belongs to another run."""


class LammpsError(GpmlipError, RuntimeError):
    """The LAMMPS plugin could not be built, or a LAMMPS run failed (message from LAMMPS)."""


class UncertaintyStop(GpmlipError, RuntimeError):
    """An uncertainty gate with policy "stop" stopped the dynamics (state saved; not a crash)."""


class QueueError(GpmlipError, RuntimeError):
    """A labelling-queue file cannot be used (damaged, not a queue, another labeller) or misused."""
