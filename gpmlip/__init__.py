"""gpmlip: Gaussian-process machine-learning interatomic potentials."""

from gpmlip.data import (
    Dataset,
    Frame,
    LabelKeys,
    load_frames,
    reference_energies,
    train_test_split,
)
from gpmlip.calculator import GPCalculator
from gpmlip.descriptors import SOAP, Stacked
from gpmlip.errors import (
    DataError,
    GpmlipError,
    NotFittedError,
    NumericalError,
    SettingsError,
    StructureError,
    ModelFileError,
    UnknownSpeciesError,
)
from gpmlip.gp import Prediction, SparseGP, TwoBody, load_model
from gpmlip.builder import build_model
from gpmlip.active import OnTheFlyLearner, OTFSettings, UncertaintyGate, select_batch
from gpmlip.labelling import LabelQueue, label_queue
from gpmlip.version import __version__

__all__ = [
    "SOAP",
    "Stacked",
    "SparseGP",
    "build_model",
    "OnTheFlyLearner",
    "OTFSettings",
    "UncertaintyGate",
    "select_batch",
    "LabelQueue",
    "label_queue",
    "TwoBody",
    "Prediction",
    "GPCalculator",
    "load_model",
    "ModelFileError",
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
