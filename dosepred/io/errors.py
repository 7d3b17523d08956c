"""The one error type of the data layer: it always names the file and the problem."""

from __future__ import annotations

from pathlib import Path


class PatientDataError(ValueError):
    """Raised for unreadable or invalid patient data; the message starts with the offending path."""

    def __init__(self, where: str | Path, problem: str) -> None:
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{where}: {problem}")
