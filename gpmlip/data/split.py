"""Seeded train/test splits, optionally stratified by config_type."""

from __future__ import annotations

import numpy as np

from gpmlip.data.dataset import Dataset
from gpmlip.errors import DataError


def train_test_split(
    dataset: Dataset, test_fraction: float = 0.1, *, seed: int = 0, stratify: bool = True
) -> tuple[Dataset, Dataset]:
    """Split frames into a training and a test set.

    Parameters
    ----------
    dataset : Dataset
    test_fraction : float
        Fraction of frames (of each config_type when stratified) in the test set, in (0, 1).
    seed : int
        Seed of ``numpy.random.default_rng``: the same seed gives the same split.
    stratify : bool
        Split every config_type separately, so each is represented in both sets in proportion.

    Returns
    -------
    train, test : Dataset
    """
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction={test_fraction}: use a number between 0 and 1")
    rng = np.random.default_rng(seed)
    if stratify:
        groups: dict[str, list[int]] = {}
        for i, frame in enumerate(dataset):
            groups.setdefault(frame.config_type, []).append(i)
        group_list = [groups[k] for k in sorted(groups)]
    else:
        group_list = [list(range(len(dataset)))]
    test: list[int] = []
    for members in group_list:
        n_test = int(round(test_fraction * len(members)))
        test.extend(rng.permutation(members)[:n_test].tolist())
    test_set = set(test)
    if not test_set or len(test_set) == len(dataset):
        raise DataError(f"test_fraction={test_fraction} leaves one set empty for "
                        f"{len(dataset)} frames; change it")
    train = [i for i in range(len(dataset)) if i not in test_set]
    return dataset.subset(train), dataset.subset(sorted(test_set))
