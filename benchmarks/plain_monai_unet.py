"""The equal-budget baseline: a plain MONAI UNet trained by a minimal loop with default settings.

MONAI's tutorial UNet (channels 16-256, four stride-2 levels, 2 residual units), Adam at 1e-3, L1 over
the whole volume, no augmentation, no schedule, batch 2, at the same 64^3 inputs as dosepred's trainer,
for a fixed wall-clock budget. Then the final network is scored on the validation split exactly as
dosepred's trainer scores its own (full 128^3 grid, OpenKBP dose and DVH scores).

Usage: python benchmarks/plain_monai_unet.py --minutes 20 [--threads 1] [--train DIR] [--validation DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from monai.networks.nets import UNet

from dosepred.data.dataset import PatientSamples
from dosepred.engine.trainer import validation_scores
from dosepred.inference.predictor import Predictor
from dosepred.io import sources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, required=True, help="training wall-clock budget")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train", default="data/pack/train")
    parser.add_argument("--validation", default="data/pack/validation")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started = time.perf_counter()
    data = PatientSamples.from_source(args.train, resolution=args.resolution)
    network = UNet(spatial_dims=3, in_channels=10, out_channels=1, channels=(16, 32, 64, 128, 256),
                   strides=(2, 2, 2, 2), num_res_units=2)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    loss_function = torch.nn.L1Loss()
    rng = np.random.default_rng(0)
    steps = 0
    while time.perf_counter() - started < args.minutes * 60:
        batch = data.batch([int(i) for i in rng.choice(len(data), size=2, replace=False)], None)
        loss = loss_function(network(batch["image"]), batch["dose"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    trained_seconds = time.perf_counter() - started
    predictor = Predictor(network, resolution=args.resolution, device=torch.device("cpu"))
    scores = validation_scores(predictor, sources.find_patients(Path(args.validation)))
    result = {"steps": steps, "train_seconds": round(trained_seconds, 1),
              "parameters": sum(p.numel() for p in network.parameters()),
              **scores}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
