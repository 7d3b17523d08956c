"""The stand-alone ground truth's sample spread over a search's ranking (benchmarks/nas_standalone.py --ranked)
and the merge of its per-seed results files; a search's own estimates read from its ranked list."""

from __future__ import annotations

import pytest

from benchmarks.nas_standalone import merge_results, ranked_sample


def test_the_sample_takes_first_last_and_evenly_spaced_ranks() -> None:
    ranked = [{"rank": rank, "genotype": {"rank": rank}} for rank in range(1, 102)]
    assert [g["rank"] for g in ranked_sample(5, ranked)] == [1, 26, 51, 76, 101]


@pytest.mark.parametrize("count, length", [(1, 10), (11, 10)])
def test_a_sample_the_ranking_cannot_hold_is_refused(count: int, length: int) -> None:
    with pytest.raises(ValueError, match="cannot spread"):
        ranked_sample(count, [{"genotype": {}}] * length)


def test_per_seed_files_merge_into_one_table_ordered_by_seed() -> None:
    def part(seed: int, architectures: int) -> dict:
        return {"recipe": "r", "architectures": [{"genotype": {"n": n}, "parameters": n, "runs": [{"seed": seed}]}
                                                 for n in range(architectures)]}

    table = {"architectures": []}
    for piece in (part(1, 2), part(0, 3), part(1, 2)):  # merging a file twice adds nothing
        merge_results(table, piece)
    assert [[run["seed"] for run in a["runs"]] for a in table["architectures"]] == [[0, 1], [0, 1], [0]]
    with pytest.raises(ValueError, match="another recipe"):
        merge_results(table, {**part(2, 1), "recipe": "other"})
    with pytest.raises(ValueError, match="architecture 0 differs"):
        merge_results(table, {"recipe": "r", "architectures": [{"genotype": {"n": 9}, "runs": []}]})


def test_a_searchs_own_estimates_are_read_by_genotype() -> None:
    from benchmarks.nas_ranking import ranked_estimates

    ranked = [{"genotype": {"n": n}, "estimated_dose_score": 10.0 + n} for n in range(5)]
    assert ranked_estimates(ranked, [{"n": 3}, {"n": 0}]) == [13.0, 10.0]
    with pytest.raises(ValueError, match=r"architectures \[1\] .* not in the ranked list"):
        ranked_estimates(ranked, [{"n": 0}, {"n": 7}])
