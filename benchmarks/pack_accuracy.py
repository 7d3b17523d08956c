"""Pack size and accuracy on every patient: each patient's OpenKBP CSVs against its packed copy, every voxel.

Usage: python benchmarks/pack_accuracy.py SPLIT_DIR [SPLIT_DIR ...] [--workers 2]
(split folders of OpenKBP patient CSVs, e.g. the unpacked train-pats/ and validation-pats/)
"""

from __future__ import annotations

import argparse
import tempfile
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from dosepred.io import openkbp_csv, pack, sources


def check(args: tuple[Path, Path]) -> tuple[int, float, float, bool]:
    folder, out = args
    original = openkbp_csv.read_patient(folder)
    path = out / f"{original.id}{pack.SUFFIX}"
    pack.write_patient(original, path)
    packed = pack.read_patient(path)
    masks_exact = (np.array_equal(original.possible_dose_mask, packed.possible_dose_mask)
                   and list(original.structures) == list(packed.structures)
                   and all(np.array_equal(m, packed.structures[r]) for r, m in original.structures.items()))
    return (path.stat().st_size, float(np.abs(original.ct - packed.ct).max()),
            float(np.abs(original.dose.astype(np.float64) - packed.dose).max()), masks_exact)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("splits", nargs="+", type=Path)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    folders = [p for split in args.splits for p in sources.find_patients(split)]
    with tempfile.TemporaryDirectory() as tmp, Pool(args.workers) as pool:
        results = pool.map(check, [(folder, Path(tmp)) for folder in folders], chunksize=4)
    sizes, ct_errors, dose_errors, exact = zip(*results)
    print(f"patients: {len(results)}   pack total: {sum(sizes) / 2**20:.2f} MiB   "
          f"max CT error: {max(ct_errors):g} HU   max dose error: {max(dose_errors):.6f} Gy   "
          f"masks identical: {all(exact)}")


if __name__ == "__main__":
    main()
