"""dosepred: 3D radiotherapy dose prediction (OpenKBP head and neck) with LE-NAS teachers and a distilled student."""

__version__ = "0.1.0"
