"""``python -m dosepred.cli`` (and ``torchrun -m dosepred.cli train ...``)."""

from dosepred.cli import app

app()
