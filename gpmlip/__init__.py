"""gpmlip: Gaussian-process machine-learning interatomic potentials."""

from gpmlip.data import (
    Dataset,
    Frame,
    LabelKeys,
    load_frames,
    reference_energies,
    train_test_split,
)
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
    "Dataset",
    "Frame",
    "LabelKeys",
    "load_frames",
    "reference_energies",
    "train_test_split",
    "GpmlipError",
    "SettingsError",
    "StructureError",
    "UnknownSpeciesError",
    "DataError",
    "NotFittedError",
    "NumericalError",
    "__version__",
]
