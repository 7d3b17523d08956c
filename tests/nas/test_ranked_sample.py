"""The ground truth's sample spread over a search's ranking (benchmarks/nas_standalone.py --ranked)."""

from __future__ import annotations

import pytest

from benchmarks.nas_standalone import ranked_sample


def test_the_sample_takes_first_last_and_evenly_spaced_ranks() -> None:
    ranked = [{"rank": rank, "genotype": {"rank": rank}} for rank in range(1, 102)]
    assert [g["rank"] for g in ranked_sample(5, ranked)] == [1, 26, 51, 76, 101]


@pytest.mark.parametrize("count, length", [(1, 10), (11, 10)])
def test_a_sample_the_ranking_cannot_hold_is_refused(count: int, length: int) -> None:
    with pytest.raises(ValueError, match="cannot spread"):
        ranked_sample(count, [{"genotype": {}}] * length)
