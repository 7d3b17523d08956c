"""The one error type of the data layer: it always names the file and the problem."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class PatientDataError(ValueError):
    """Raised for unreadable or invalid patient data; the message starts with the offending path."""

    def __init__(self, where: str | Path, problem: str) -> None:
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{where}: {problem}")


@contextmanager
def reading(path: str | Path) -> Iterator[None]:
    """Report the operating system's complaints about reading ``path`` as a PatientDataError."""
    try:
        yield
    except FileNotFoundError:
        raise PatientDataError(path, "file not found") from None
    except OSError as error:
        raise PatientDataError(path, f"cannot read ({error.strerror})") from None
