"""Ablation at equal compute: what each ingredient of the default model is worth on the validation patients.

Every variant starts from scratch from ``configs/full_cpu.yaml`` with one thing changed, trains for the same
compute and is scored on every validation patient, with and without test-time mirroring (TTA). Equal
compute: the 128^3 variants train the same number of steps (batch 1); the 64^3 variant trains
``--speedup-64`` times as many, the ratio of the measured step rates (the speed table in the README), so
each variant gets the same CPU time whatever else the machine is doing.

    python benchmarks/ablation.py --steps 700 [--runs runs/ablation] [--only base no-beams]

Finished variants are kept (their scores in RUNS/<variant>/scores.json), so the script can be run again
after an interruption; it prints the table as Markdown and writes it to RUNS/ablation.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dosepred.devices import resolve_device
from dosepred.engine.config import load_config
from dosepred.engine.trainer import Trainer, validation_scores
from dosepred.inference.loader import load_predictor
from dosepred.io import sources

BASE_CONFIG = Path("configs/full_cpu.yaml")

#: name -> (what changes, overrides of the base config). The base: 128^3, beam channels, DVH weight 0.3.
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "base": ("128³, beam channels, DVH loss 0.3 (the default's recipe)", []),
    "64": ("64³ instead of 128³", ["data.resolution=64"]),
    "no-beams": ("no beam-geometry channels", ["data.beam_angles=null"]),
    "no-dvh": ("no DVH loss (weight 0)", ["loss.dvh_weight=0.0"]),
    "dvh-1": ("DVH loss weight 1.0", ["loss.dvh_weight=1.0"]),
    "beam-rotation": ("+ rotations by multiples of 40° (probability 0.5)", ["data.beam_rotation=0.5"]),
}


def train_variant(run: Path, overrides: list[str], steps: int) -> None:
    config = load_config(BASE_CONFIG, [*overrides, f"optim.steps={steps}", f"validate_every={steps}",
                                       f"checkpoint_every={max(100, steps // 4)}"])
    resume = (run / "checkpoints" / "last.pt").is_file()
    trainer = Trainer(load_config(run / "config.yaml") if resume else config, run, resume=resume, overwrite=not resume)
    trainer.fit()


def score_model(folder: Path, validation: Path) -> dict[str, float]:
    """Dose and DVH scores of the exported model (float16 weights, as shipped), without and with TTA."""
    predictor = load_predictor(folder, device=resolve_device("auto"))
    paths = sources.find_patients(validation)
    plain, mirrored = (validation_scores(predictor, paths, tta=tta) for tta in (False, True))
    return {"patients": len(paths), "dose": plain["val_dose_score"], "dvh": plain["val_dvh_score"],
            "dose_tta": mirrored["val_dose_score"], "dvh_tta": mirrored["val_dvh_score"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=700, help="training steps of each 128^3 variant")
    parser.add_argument("--speedup-64", type=float, default=2.1,
                        help="64^3 steps per 128^3 step at equal CPU time (measured: 2.18 / 1.03 steps/s)")
    parser.add_argument("--runs", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), help="run these variants only")
    args = parser.parse_args()
    torch.manual_seed(0)
    validation = Path(load_config(BASE_CONFIG)["data"]["validation"])
    rows = []
    for name in args.only or list(VARIANTS):
        description, overrides = VARIANTS[name]
        run = args.runs / name
        steps = round(args.steps * args.speedup_64) if "data.resolution=64" in overrides else args.steps
        scores_file = run / "scores.json"
        if not scores_file.is_file():
            train_variant(run, overrides, steps)
            scores = {"variant": name, "steps": steps, **score_model(run / "best", validation)}
            scores_file.write_text(json.dumps(scores, indent=2) + "\n")
        rows.append((description, json.loads(scores_file.read_text())))
    table = ["| variant | steps | dose (Gy) | DVH (Gy) | dose, TTA (Gy) | DVH, TTA (Gy) |", "|---|---|---|---|---|---|"]
    table += [f"| {description} | {s['steps']} | {s['dose']:.3f} | {s['dvh']:.3f} | {s['dose_tta']:.3f} | "
              f"{s['dvh_tta']:.3f} |" for description, s in rows]
    text = "\n".join(table) + "\n"
    (args.runs / "ablation.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
