"""The one shape of progress report: the library calls it as long work advances, the CLI draws it."""
from collections.abc import Callable

Progress = Callable[[str, int, int], None]
"""``progress(phase, done, total)``; the library itself never prints."""
