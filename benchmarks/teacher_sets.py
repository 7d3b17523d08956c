"""Teacher sets of a finished search, as its supernet sees them: for each set of ranks, the mean pairwise
distance of the members' predictions, the estimated dose score of their ensemble (the mean prediction) and that
of the best member — what a set's diversity buys before any teacher is trained.

Reads RUN/config.yaml, RUN/ranked.json and RUN/supernet.safetensors (a plain supernet: LE-NAS or random
search); scores on the search's own validation patients at its working resolution.

Usage: python benchmarks/teacher_sets.py RUN --sets 1,2,3 1,16,12 [--threads 2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from dosepred.data.dataset import PatientSamples
from dosepred.engine.config import SEARCH_DEFAULTS, load_config
from dosepred.io import sources
from dosepred.nas.evaluator import Evaluator, SearchData
from dosepred.nas.selection import describe_set
from dosepred.nas.space import SearchSpace
from dosepred.nas.supernet import SupernetPath, make_supernet


def ranks(text: str) -> list[int]:
    values = [int(part) for part in text.split(",")]
    if len(values) < 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text}: give two or more ranks (1 = best), separated by commas")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a search run folder (dosepred search -o RUN)")
    parser.add_argument("--sets", type=ranks, nargs="+", required=True, help="sets of ranks, e.g. 1,2,3 1,16,12")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = load_config(args.run / "config.yaml", defaults=SEARCH_DEFAULTS)
    ranked = json.loads((args.run / "ranked.json").read_text())
    if max(max(s) for s in args.sets) > len(ranked):
        parser.error(f"the run ranked {len(ranked)} architectures")
    supernet = make_supernet(SearchSpace.from_config(config))
    supernet.load_state_dict(load_file(str(args.run / "supernet.safetensors")))
    data = config["data"]
    paths = sources.find_patients(Path(data["validation"]))[: config["search"]["validation_patients"]]
    validation = PatientSamples(paths, resolution=data["resolution"], beam_angles=data["beam_angles"])
    evaluator = Evaluator(SearchData(None, validation.batch(range(len(validation)), None)), device=torch.device("cpu"))

    predictions: dict[int, torch.Tensor] = {}
    print("| ranks | estimates (Gy) | mean pairwise distance (Gy) | ensemble estimate (Gy) | gain over the best member (Gy) |")
    print("|---|---|---|---|---|")
    for chosen in args.sets:
        for rank in chosen:
            if rank not in predictions:
                predictions[rank] = evaluator.predict(SupernetPath(supernet, ranked[rank - 1]["genotype"]))
        members = [predictions[rank] for rank in chosen]
        summary = describe_set(list(range(len(members))), members, evaluator.mask, evaluator.score)
        estimates = " / ".join(f"{ranked[rank - 1]['estimated_dose_score']:.3f}" for rank in chosen)
        gain = summary["best_member_estimated_dose_score"] - summary["ensemble_estimated_dose_score"]
        print(f"| {', '.join(map(str, chosen))} | {estimates} | {summary['mean_pairwise_distance_gy']:.3f} | "
              f"{summary['ensemble_estimated_dose_score']:.3f} | {gain:.3f} |")


if __name__ == "__main__":
    main()
