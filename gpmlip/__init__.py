"""gpmlip: Gaussian-process machine-learning interatomic potentials."""

from gpmlip.descriptors import SOAP, Environments
from gpmlip.errors import (
    DataError,
    GpmlipError,
    NotFittedError,
    NumericalError,
    SettingsError,
    StructureError,
    UnknownSpeciesError,
)

__version__ = "0.1.0"

__all__ = [
    "SOAP",
    "Environments",
    "GpmlipError",
    "SettingsError",
    "StructureError",
    "UnknownSpeciesError",
    "DataError",
    "NotFittedError",
    "NumericalError",
    "__version__",
]
