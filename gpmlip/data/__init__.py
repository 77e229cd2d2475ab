"""Labelled data in: loading, validation, reference energies and splits."""

from gpmlip.data.dataset import (Dataset, LabelKeys, as_frames, check_frames, label_summary,
                                  load_frames, warn_missing_labels)
from gpmlip.data.frames import Frame
from gpmlip.data.reference import ReferenceEnergies, reference_energies
from gpmlip.data.split import train_test_split

__all__ = ["Frame", "Dataset", "LabelKeys", "load_frames", "as_frames", "check_frames",
           "label_summary",
           "warn_missing_labels", "ReferenceEnergies",
           "reference_energies", "train_test_split"]
