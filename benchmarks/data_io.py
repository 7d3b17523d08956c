"""Data-layer numbers for the foundation issue, each beside a plain pandas-based path in the same run.

1. per-patient OpenKBP CSV read: dosepred (numpy's C parser) vs pandas.read_csv
2. per-patient convert: CSV -> NIfTI folder, CSV -> pack; the plain path: pandas read -> np.savez_compressed
3. pack size for all patients, per-patient load: pack vs npz vs pandas CSV read
4. scoring the validation split (prescription predictor): dosepred vs a pandas port of the official
   evaluation (pandas CSV loading, DataFrame of metrics); both must give the same scores

Usage: python benchmarks/data_io.py [--data DIR] [--limit N]
DIR holds train-pats/ and validation-pats/ (default: unpack ../shared/openkbp's tarballs to a temp folder).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tarfile
import tempfile
import time
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.trivial_predictors import prescription
from dosepred.io import nifti, openkbp_csv, pack
from dosepred.io.patient import CT_FILE_OFFSET, GRID_SHAPE, OARS, ROIS, TARGETS

SHARED = Path(__file__).resolve().parents[2] / "shared" / "openkbp"


def pandas_read_patient(folder: Path) -> dict[str, np.ndarray]:
    """The plain path: pandas.read_csv on every file, then dense arrays (as the official loader does)."""
    n = int(np.prod(GRID_SHAPE))
    arrays: dict[str, np.ndarray] = {}
    for name in ("ct", "dose"):
        frame = pd.read_csv(folder / f"{name}.csv", index_col=0)
        dense = np.zeros(n, dtype=np.float32)
        dense[frame.index.to_numpy()] = frame["data"].to_numpy()
        arrays[name] = dense.reshape(GRID_SHAPE)
    arrays["ct"] -= CT_FILE_OFFSET
    for name in ("possible_dose_mask", *ROIS):
        if (folder / f"{name}.csv").is_file():
            mask = np.zeros(n, dtype=bool)
            mask[pd.read_csv(folder / f"{name}.csv", index_col=0).index.to_numpy()] = True
            arrays[name] = mask.reshape(GRID_SHAPE)
    arrays["voxel_dimensions"] = np.loadtxt(folder / "voxel_dimensions.csv")
    return arrays


def pandas_score(reference_folders: list[Path], prediction_folder: Path) -> tuple[float, float]:
    """A pandas port of the official evaluation: DataFrames of DVH metrics, nanmean of |difference|."""
    columns = list(product(("D_0.1_cc", "mean"), OARS)) + list(product(("D_99", "D_95", "D_1"), TARGETS))
    ids = [folder.name for folder in reference_folders]
    reference_df = pd.DataFrame(index=ids, columns=pd.MultiIndex.from_tuples(columns), dtype=float)
    predicted_df = reference_df.copy()
    dose_errors = []
    for folder in reference_folders:
        data = pandas_read_patient(folder)
        frame = pd.read_csv(prediction_folder / f"{folder.name}.csv", index_col=0)
        predicted = np.zeros(int(np.prod(GRID_SHAPE)))
        predicted[frame.index.to_numpy()] = frame["data"].to_numpy()
        reference = data["dose"].ravel().astype(np.float64)
        dose_errors.append(np.sum(np.abs(reference - predicted)) / np.sum(data["possible_dose_mask"]))
        tenth_cc = np.maximum(1, np.round(100 / np.prod(data["voxel_dimensions"])))
        for frame_out, dose in ((reference_df, reference), (predicted_df, predicted)):
            for roi in ROIS:
                if roi not in data:
                    continue
                roi_dose = dose[data[roi].ravel()]
                if roi in OARS:
                    frame_out.at[folder.name, ("D_0.1_cc", roi)] = np.percentile(roi_dose, 100 - tenth_cc / len(roi_dose) * 100)
                    frame_out.at[folder.name, ("mean", roi)] = roi_dose.mean()
                else:
                    for metric, q in (("D_99", 1), ("D_95", 5), ("D_1", 99)):
                        frame_out.at[folder.name, (metric, roi)] = np.percentile(roi_dose, q)
    return float(np.mean(dose_errors)), float(np.nanmean(np.abs(reference_df - predicted_df).to_numpy()))


def timed(function, *args, **kwargs):
    """(result, seconds) of one call."""
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def summary(seconds: list[float]) -> str:
    ms = np.array(seconds) * 1000
    return f"median {np.median(ms):7.1f} ms   p90 {np.percentile(ms, 90):7.1f} ms   max {ms.max():7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="folder with train-pats/ and validation-pats/")
    parser.add_argument("--limit", type=int, help="only the first N patients for steps 1-3")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dosepred-bench-") as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "openkbp"
            for split in ("train-pats", "validation-pats"):
                with tarfile.open(SHARED / f"{split}.tar.xz") as archive:
                    archive.extractall(data, filter="data")
        folders = sorted(data.glob("*-pats/pt_*"), key=lambda p: int(p.name.split("_")[1]))[: args.limit]
        out = Path(tmp) / "out"
        t = {key: [] for key in ("read", "read_pandas", "nifti", "pack", "npz", "load_pack", "load_npz")}
        pack_bytes = npz_bytes = 0
        for i, folder in enumerate(folders):
            patient, seconds = timed(openkbp_csv.read_patient, folder)
            t["read"].append(seconds)
            arrays, seconds = timed(pandas_read_patient, folder)
            t["read_pandas"].append(seconds)
            t["nifti"].append(timed(nifti.write_patient, patient, out / "nifti" / patient.id)[1] + t["read"][-1])
            pack_file = out / "pack" / f"{patient.id}{pack.SUFFIX}"
            t["pack"].append(timed(pack.write_patient, patient, pack_file)[1] + t["read"][-1])
            npz_file = out / "npz" / f"{patient.id}.npz"
            npz_file.parent.mkdir(parents=True, exist_ok=True)
            t["npz"].append(timed(np.savez_compressed, npz_file, **arrays)[1] + t["read_pandas"][-1])
            t["load_pack"].append(timed(pack.read_patient, pack_file)[1])
            t["load_npz"].append(timed(lambda f: dict(np.load(f)), npz_file)[1])
            pack_bytes += pack_file.stat().st_size
            npz_bytes += npz_file.stat().st_size
            print(f"\r{i + 1}/{len(folders)} patients", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)

        print(f"patients: {len(folders)}")
        print(f"1. read one patient (CSV)     dosepred: {summary(t['read'])}")
        print(f"                              pandas:   {summary(t['read_pandas'])}")
        print(f"2. convert CSV -> NIfTI       dosepred: {summary(t['nifti'])}")
        print(f"   convert CSV -> pack        dosepred: {summary(t['pack'])}")
        print(f"   convert CSV -> npz         pandas:   {summary(t['npz'])}")
        print(f"3. size of all patients       pack: {pack_bytes / 2**20:.2f} MiB   npz (savez_compressed): "
              f"{npz_bytes / 2**20:.2f} MiB")
        print(f"   load one patient           pack:     {summary(t['load_pack'])}")
        print(f"                              npz:      {summary(t['load_npz'])}")
        print(f"                              pandas CSV read (above): {statistics.median(t['read_pandas']) * 1000:.1f} ms median")

        validation = [f for f in sorted(data.glob("validation-pats/pt_*"))]
        predictions = out / "prescription"
        for folder in validation:
            openkbp_csv.write_submission(prescription(openkbp_csv.read_patient(folder)), predictions / f"{folder.name}.csv")
        (ours, ours_seconds) = timed(score_with_dosepred, validation, predictions)
        (theirs, theirs_seconds) = timed(pandas_score, validation, predictions)
        print(f"4. score {len(validation)} validation patients   dosepred: {ours_seconds:6.1f} s   "
              f"pandas port of the official evaluation: {theirs_seconds:6.1f} s")
        print(f"   prescription predictor: dosepred dose {ours[0]:.4f} / DVH {ours[1]:.4f} Gy;   "
              f"pandas dose {theirs[0]:.4f} / DVH {theirs[1]:.4f} Gy")


def score_with_dosepred(reference_folders: list[Path], prediction_folder: Path) -> tuple[float, float]:
    from dosepred.metrics.folders import score_predictions

    evaluation = score_predictions(reference_folders[0].parent, prediction_folder)
    return evaluation.dose_score, evaluation.dvh_score


if __name__ == "__main__":
    main()
