"""Training steps/s and prediction s/patient at 64^3 and 128^3, fp32 against the fast path (bf16 autocast +
channels-last), on the CPU and, when there is one, the GPU.

Runs the project's own Trainer and Predictor on synthetic phantom patients (no data set needed), with
the data pipeline included (expansion and augmentation on the device): what a user's run will see.

    python benchmarks/training_speed.py [--steps 10] [--resolutions 64 128] [--network-channels 16 32 64 128]
    python benchmarks/training_speed.py --genotype TEACHER.json --stem-stride 1   # a searched network instead
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from dosepred.io import pack
from dosepred.io.phantom import make_phantom
from dosepred.devices import fast_path, hardware, resolve_device, set_threads
from dosepred.engine.config import load_config
from dosepred.engine.trainer import Trainer


def measure(root: Path, *, device: str, resolution: int, amp: bool, steps: int, channels: list[int],
            beams: bool, batch_size: int, threads: int | None, searched: dict | None = None) -> tuple[float, float]:
    """(training steps/s, prediction s/patient without TTA); ``searched``: the network section of a searched
    network to train instead of a U-Net of ``channels``."""
    overrides = [f"data.train={root}", f"data.validation={root}", f"data.resolution={resolution}",
                 f"device={device}", f"amp={str(amp).lower()}", f"optim.steps={steps + 2}", "validate_every=100000",
                 "checkpoint_every=100000", f"optim.batch_size={batch_size}", f"network.channels={channels}",
                 f"network.strides={[2] * (len(channels) - 1)}", "loss.dvh_weight=0.5",
                 f"threads={threads or 'null'}"]  # the trainer sets the threads it is told
    if beams:
        overrides.append("data.beam_angles=[0, 40, 80, 120, 160, 200, 240, 280, 320]")
    config = load_config(None, overrides)
    if searched is not None:
        config["network"] = searched
    with tempfile.TemporaryDirectory() as run:
        trainer = Trainer(config, run)
        for step in range(2):  # warm-up
            trainer.train_step(trainer.make_batch(step))
        sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        for step in range(2, steps + 2):
            trainer.train_step(trainer.make_batch(step))
        sync()
        steps_per_s = steps / (time.perf_counter() - start)
        from dosepred.inference.predictor import Predictor

        predictor = Predictor(trainer.network, resolution=resolution, device=trainer.device, amp=amp,
                              beam_angles=trainer.config["data"]["beam_angles"])
        patient = make_phantom()
        predictor.predict(patient, tta=False)
        sync()
        start = time.perf_counter()
        for _ in range(3):
            predictor.predict(patient, tta=False)
        sync()
        return steps_per_s, (time.perf_counter() - start) / 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--network-channels", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--no-beams", action="store_true", help="Without the two beam-geometry channels.")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--genotype", type=Path, help="Time this searched network (a genotype file with its "
                        "channels and stem_stride) instead of a U-Net of --network-channels.")
    parser.add_argument("--stem-stride", type=int, choices=(1, 2), help="Override the genotype file's stem_stride.")
    args = parser.parse_args()
    searched = None
    if args.genotype is not None:
        spec = json.loads(args.genotype.read_text())
        searched = {"name": "searched", "genotype": spec["genotype"], "channels": spec["channels"],
                    "stem_stride": args.stem_stride or spec.get("stem_stride", 1)}
    set_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory() as root:
        for seed in range(2):
            patient = make_phantom(seed=seed)
            patient.id = f"pt_{seed}"
            pack.write_patient(patient, Path(root) / f"{patient.id}.dpk")
        network = (f"{args.genotype} (stem stride {searched['stem_stride']})" if searched
                   else f"U-Net {args.network_channels}")
        print(f"network {network}, batch {args.batch_size}, beam channels {not args.no_beams}")
        print("| device | grid | precision | train steps/s | predict s/patient (no TTA) |")
        print("|---|---|---|---|---|")
        for device in devices:
            for resolution in args.resolutions:
                for amp in (False, True):
                    if amp and not fast_path(resolve_device(device)):
                        print(f"| {hardware(resolve_device(device))} | {resolution}³ | bf16 | no native bf16: fp32 kept | |")
                        continue
                    rate, latency = measure(Path(root), device=device, resolution=resolution, amp=amp,
                                            steps=args.steps, channels=args.network_channels,
                                            beams=not args.no_beams, batch_size=args.batch_size, threads=args.threads,
                                            searched=searched)
                    print(f"| {hardware(resolve_device(device))} | {resolution}³ | {'bf16 + channels-last' if amp else 'fp32'} "
                          f"| {rate:.2f} | {latency:.2f} |", flush=True)


if __name__ == "__main__":
    main()
