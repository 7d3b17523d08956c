"""Ranking quality of a search: Kendall tau between the supernet's estimates and stand-alone training.

Takes a search run folder, picks architectures spread evenly over its ranking (plus its selected
teachers), trains each stand-alone with the same short budget (same data, resolution and steps; the
training samples are cached once and shared), and scores each on the whole validation split with the
OpenKBP dose score on the full 128^3 grid. Prints the table, Kendall tau-b, and the teachers' diversity.

Usage: python benchmarks/nas_ranking.py RUN_DIR [--architectures 8] [--steps 300] [--threads 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import time
from pathlib import Path

import numpy as np
import yaml

from dosepred.data.dataset import PatientSamples
from dosepred.engine.config import load_config
from dosepred.engine.trainer import Trainer


def kendall_tau_b(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b (ties counted as neither concordant nor discordant)."""
    concordant = discordant = ties_x = ties_y = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            ties_x += 1
        elif dy == 0:
            ties_y += 1
        elif dx == dy:
            concordant += 1
        else:
            discordant += 1
    denominator = np.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return float((concordant - discordant) / denominator) if denominator else float("nan")


class SharedDataTrainer(Trainer):
    """A trainer that reuses training samples cached once for every architecture."""

    shared: PatientSamples | None = None

    def build_data(self):  # noqa: ANN201
        if SharedDataTrainer.shared is None:
            SharedDataTrainer.shared, validation = super().build_data()
            return SharedDataTrainer.shared, validation
        from dosepred.io import sources

        data = self.config["data"]
        return SharedDataTrainer.shared, sources.find_patients(Path(data["validation"]))[: data["max_validation_patients"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--architectures", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    search = yaml.safe_load((args.run / "config.yaml").read_text())  # the search run's resolved config
    ranked = json.loads((args.run / "ranked.json").read_text())
    teachers = [json.loads(p.read_text()) for p in sorted((args.run / "teachers").glob("teacher_*.json"))]
    positions = sorted({int(round(p)) for p in np.linspace(0, len(ranked) - 1, args.architectures)}
                       | {t["rank"] - 1 for t in teachers})
    base = load_config(None, [f"threads={args.threads}", "device=cpu", f"seed={search['seed']}",
                              f"optim.steps={args.steps}", f"validate_every={args.steps}",
                              f"checkpoint_every={args.steps}", "optim.warmup_steps=20"])
    base["data"] = copy.deepcopy(search["data"])
    rows = []
    for position in positions:
        entry = ranked[position]
        config = copy.deepcopy(base)
        config["network"] = {"name": "searched", "genotype": entry["genotype"], "channels": search["search"]["channels"]}
        started = time.perf_counter()
        trainer = SharedDataTrainer(config, Path("runs") / "nas_ranking" / f"rank_{position + 1}")
        history = trainer.fit()
        rows.append({"rank": position + 1, "estimated_dose_score": entry["estimated_dose_score"],
                     "standalone_dose_score": history[-1]["val_dose_score"],
                     "standalone_dvh_score": history[-1]["val_dvh_score"],
                     "teacher": any(t["rank"] == position + 1 for t in teachers),
                     "parameters": sum(p.numel() for p in trainer.network.parameters()),
                     "seconds": round(time.perf_counter() - started, 1)})
        print(json.dumps(rows[-1]), flush=True)
    tau = kendall_tau_b([r["estimated_dose_score"] for r in rows], [r["standalone_dose_score"] for r in rows])
    diversity = json.loads((args.run / "diversity.json").read_text())
    print(f"\narchitectures: {len(rows)} (ranks {[r['rank'] for r in rows]}), {args.steps} steps each at "
          f"{search['data']['resolution']}^3, scored on the full validation split (128^3)")
    print(f"{'rank':>6} {'estimated':>10} {'stand-alone dose':>17} {'DVH':>7} {'params':>9}  teacher")
    for r in rows:
        print(f"{r['rank']:>6} {r['estimated_dose_score']:>10.3f} {r['standalone_dose_score']:>17.3f} "
              f"{r['standalone_dvh_score']:>7.3f} {r['parameters']:>9}  {'yes' if r['teacher'] else ''}")
    print(f"Kendall tau-b (estimated vs stand-alone dose score): {tau:.3f}")
    print(f"teachers ranks {diversity['selected']['ranks']}: mean pairwise distance "
          f"{diversity['selected']['mean_pairwise_distance_gy']:.3f} Gy; plain top-{diversity['k']}: "
          f"{diversity['top_k']['mean_pairwise_distance_gy']:.3f} Gy")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "kendall_tau_b": tau, "diversity": diversity}, indent=2) + "\n")


if __name__ == "__main__":
    main()
