"""Exercise the data layer on the Zuo et al. (2020) VASP sets in ../shared/data/zuo2020.

    python benchmarks/data_zuo2020.py [--data ../shared/data/zuo2020]

Loads every train/test file with all labels required, fits e0 by least squares (the sets have no
isolated-atom frames; the paper's GAP used e0 from isolated atoms, listed in that README), and makes
a stratified split, printing load time and a summary per file.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from gpmlip.data import load_frames, reference_energies, train_test_split

PAPER_E0 = {"Mo": -4.04, "Si": -0.79, "Li": -0.21}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "zuo2020"
    parser.add_argument("--data", type=Path, default=default)
    args = parser.parse_args()
    print(f"{'file':<16}{'load s':>8}  summary")
    for element in ("Mo", "Si", "Li"):
        for part in ("train", "test"):
            path = args.data / f"{element}_{part}.xyz"
            t = time.perf_counter()
            data = load_frames(path, species=[element], require=("energy", "forces", "stress"))
            elapsed = time.perf_counter() - t
            print(f"{path.name:<16}{elapsed:>8.2f}  {data.summary()}")
            if part == "train":
                fit = reference_energies(data, "fit")
                given = reference_energies(data, {element: PAPER_E0[element]})
                train, test = train_test_split(data, 0.1, seed=0)
                print(f"{'':<26}e0 fit {fit.to_dict()[element]:.4f} eV (residual "
                      f"{1e3 * fit.rmse_per_atom:.1f} meV/atom RMS); paper e0 "
                      f"{given.to_dict()[element]} eV; 10% stratified split -> "
                      f"{len(train)}/{len(test)} frames, test types {test.config_types()}")


if __name__ == "__main__":
    main()
