"""Progress in a log file: rich draws bars only on a terminal, so elsewhere the CLI prints plain lines."""

from __future__ import annotations

import io

from rich.console import Console

from dosepred.cli.common import LoggedProgress


def lines(output: io.StringIO) -> list[str]:
    return [line for line in output.getvalue().splitlines() if line.startswith("work:")]


def test_a_log_gets_the_start_rate_limited_updates_and_the_end_of_each_task() -> None:
    output = io.StringIO()
    with LoggedProgress(console=Console(file=output), interval=3600) as progress:
        task = progress.add_task("work", total=10)
        progress.update(task, completed=1)
        progress.update(task, completed=5)  # within the interval: no line
        progress.advance(task, 5)
        progress.update(task, completed=10)  # finished already: no second end line
    assert [line.split(" (")[0] for line in lines(output)] == ["work: 1/10", "work: 10/10"]
    assert "━" not in output.getvalue()  # no bar drawn at the end as well


def test_with_no_interval_every_update_is_a_line_and_open_totals_are_fine() -> None:
    output = io.StringIO()
    with LoggedProgress(console=Console(file=output), interval=0) as progress:
        task = progress.add_task("work", total=None)
        for done in (1, 2, 3):
            progress.update(task, completed=done)
    assert [line.split(" (")[0] for line in lines(output)] == ["work: 1", "work: 2", "work: 3"]


def test_a_terminal_gets_the_bars_only() -> None:
    output = io.StringIO()
    with LoggedProgress(console=Console(file=output, force_terminal=True), interval=0) as progress:
        task = progress.add_task("work", total=2)
        progress.update(task, completed=1)
    assert "work: 1/2 (" not in output.getvalue()
