"""One search run: data, strategy, teacher selection, and the files it leaves in the run folder."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from dosepred.engine.config import save_config
from dosepred.io.files import remove_outputs
from dosepred.devices import resolve_device, set_threads
from dosepred.nas import selection
from dosepred.nas.evaluator import Evaluator, SearchData
from dosepred.nas.space import SearchSpace, genotype_key
from dosepred.nas.strategies import Budget, get_strategy
from dosepred.progress import Progress


#: What a search writes in its run folder.
OUTPUTS = ("config.yaml", "ranked.json", "teachers", "diversity.json", "log.json", "supernet.safetensors", "supernet",
           "scores.jsonl")


def run_search(config: dict[str, Any], output: Path, *, resume: bool = False, overwrite: bool = False,
               progress: Progress | None = None) -> str:
    """Search, select teachers, write ranked.json, teachers/teacher_*.json, diversity.json, log.json.

    A folder that holds a search is refused unless ``resume`` continues it (the supernet from its last
    checkpoint, in ``output/supernet``; strategies that train their own supernets start those again) or
    ``overwrite`` replaces it.
    """
    if (output / "config.yaml").exists() and not (resume or overwrite):
        raise FileExistsError(f"{output} holds a search already: --resume continues it, --overwrite replaces it")
    settings = config["search"]
    strategy = settings["strategy"]
    set_threads(config.get("threads"))
    torch.manual_seed(config["seed"])
    device = resolve_device(config["device"])
    search = get_strategy(strategy, **settings.get("options", {}))
    started = time.perf_counter()
    data = SearchData.from_config(config["data"], seed=config["seed"], validation_patients=settings["validation_patients"])
    if overwrite and not resume:  # the data read without a fault: only now do the replaced search's files go
        remove_outputs(output, OUTPUTS)
    output.mkdir(parents=True, exist_ok=True)
    save_config(config, output / "config.yaml")
    space = SearchSpace.from_config(config)
    budget = Budget(supernet_steps=settings["supernet_steps"], lr=settings["lr"], batch_size=settings["batch_size"],
                    max_sweeps=settings["max_sweeps"], device=device, run_dir=output, resume=resume)
    result = search.search(space, data, budget, progress)
    search_seconds = time.perf_counter() - started

    evaluator = Evaluator(data, device=device)
    # the pool: the best by estimated score, and whatever the strategy itself picked (still best first)
    picked = {genotype_key(entry["genotype"]) for entry in result.found}
    ranks = [rank for rank, entry in enumerate(result.ranked, start=1)
             if rank <= settings["pool"] or genotype_key(entry["genotype"]) in picked]
    pool = [result.ranked[rank - 1] for rank in ranks]
    predictions = [evaluator.predict(result.path(entry)) for entry in pool]
    chosen = selection.select_teachers([entry["estimated_dose_score"] for entry in pool], predictions, evaluator.mask,
                                       k=settings["teachers"], diversity_weight=settings["diversity_weight"])

    ranked = [{"rank": rank, **entry} for rank, entry in enumerate(result.ranked, start=1)]
    _write_json(output / "ranked.json", ranked)
    for number, index in enumerate(chosen.chosen, start=1):
        _write_json(output / "teachers" / f"teacher_{number}.json",
                    {"genotype": pool[index]["genotype"], "channels": pool[index].get("channels", list(space.channels)),
                     "stem_stride": space.stem_stride, "rank": ranks[index],
                     "estimated_dose_score": pool[index]["estimated_dose_score"], "strategy": strategy})

    def described(indices: list[int]) -> dict[str, Any]:
        return {"ranks": [ranks[i] for i in indices],
                **selection.describe_set(indices, predictions, evaluator.mask, evaluator.score)}

    report = {
        "rule": selection.__doc__.split("\n\n")[1].replace("\n", " "),
        "k": settings["teachers"], "diversity_weight": settings["diversity_weight"], "pool": len(pool),
        "selected": described(chosen.chosen), "top_k": described(chosen.top_k),
    }
    if len(result.found) > 1:  # the strategy's own picks (LE-NAS's hinge searches), as a set of their own
        report["found"] = described([i for i, entry in enumerate(pool) if genotype_key(entry["genotype"]) in picked])
    _write_json(output / "diversity.json", report)
    _write_json(output / "log.json", {"strategy": strategy, "search_seconds": search_seconds,
                                      "evaluated": len(ranked), "space_size": space.size(), "counts": result.counts,
                                      "log": result.log})
    if result.weights is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in result.weights.state_dict().items()},
                  output / "supernet.safetensors")
    return (f"{strategy}: searched {space.size():.2e} architectures in {search_seconds / 60:.1f} min, "
            f"{len(ranked)} evaluated; best estimated dose score {ranked[0]['estimated_dose_score']:.3f} Gy. "
            f"Teachers (ranks {report['selected']['ranks']}): mean pairwise distance "
            f"{chosen.diversity:.3f} Gy vs {chosen.top_k_diversity:.3f} Gy for the top {len(chosen.top_k)}. "
            f"Results in {output}")


def _write_json(path: Path, content: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2) + "\n")
