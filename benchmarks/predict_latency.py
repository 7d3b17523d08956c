"""Prediction latency per patient (with and without test-time mirroring) and peak memory.

Each configuration runs in a fresh subprocess so its peak resident memory is its own. Latency is the
wall time of ``Predictor.predict`` on a 128^3 patient (loading excluded), median over the patients after
one warm-up. On CUDA, pass --device cuda.

Usage: python benchmarks/predict_latency.py [-m MODEL] [--patients DIR] [--n 10] [--device cpu] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path



def measure(model: str | None, patients: str, n: int, device: str, tta: bool, threads: int) -> dict[str, float]:
    import numpy as np
    import torch

    from dosepred.io import sources
    from dosepred.inference.loader import load_predictor
    from dosepred.devices import resolve_device

    torch.set_num_threads(threads)
    predictor = load_predictor(model, device=resolve_device(device))
    cases = [sources.read_patient(p) for p in sources.find_patients(Path(patients))[: n + 1]]
    predictor.predict(cases[0], tta=tta)  # warm-up
    seconds = []
    for patient in cases[1:]:
        start = time.perf_counter()
        predictor.predict(patient, tta=tta)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    result = {"median_s": float(np.median(seconds)), "max_s": float(np.max(seconds)), "patients": len(seconds),
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.startswith("cuda"):
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--model", default=None, help="model name or folder (default: the shipped default)")
    parser.add_argument("--patients", default="data/pack/validation")
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", choices=("tta", "no-tta"), help=argparse.SUPPRESS)  # internal: one subprocess run
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.model, args.patients, args.n, args.device, args.one == "tta", args.threads)))
        return
    for mode in ("no-tta", "tta"):
        command = [sys.executable, __file__, "--one", mode, "--patients", args.patients, "--n", str(args.n),
                   "--device", args.device, "--threads", str(args.threads)] + (["-m", args.model] if args.model else [])
        result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        extra = f", peak GPU {result['peak_gpu_mib']:.0f} MiB" if "peak_gpu_mib" in result else ""
        print(f"{mode:7s} on {args.device} ({args.threads} threads): median {result['median_s']:.2f} s/patient, "
              f"max {result['max_s']:.2f} s over {result['patients']} patients; peak RSS {result['peak_rss_mib']:.0f} MiB"
              f"{extra}")


if __name__ == "__main__":
    main()
