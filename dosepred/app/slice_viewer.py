"""The linked slice views: a Streamlit component (HTML canvas, no build step) drawing ``dosepred.visual.panels``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

CSS = """
.dp-views { font: 13px sans-serif; color: var(--st-text-color, #222); }
.dp-legend { display: flex; flex-wrap: wrap; gap: 4px 16px; align-items: center; margin-bottom: 6px; }
.dp-item { display: inline-flex; align-items: center; gap: 5px; }
.dp-swatch { display: inline-block; width: 22px; height: 0; border-top: 3px solid; }
.dp-isodose { border-top: 2px dashed #fff; background: #333; height: 6px; }
.dp-bar { display: inline-block; width: 140px; height: 10px; border: 1px solid #888; }
.dp-row { display: grid; gap: 10px; margin-bottom: 8px; }
.dp-panel { margin: 0; }
.dp-panel figcaption { font-weight: 600; margin-bottom: 3px; }
.dp-canvas { width: 100%; display: block; cursor: crosshair; background: #000; }
.dp-readout { font-family: monospace; font-size: 12px; min-height: 1.4em; margin-top: 3px; }
"""

_views = st.components.v2.component("dosepred.slice_views", css=CSS,
                                    js=(Path(__file__).with_name("slice_viewer.js")).read_text())


def slice_views(panels: list[dict[str, Any]], legend: dict[str, Any], *, key: str, on_click) -> Any:  # noqa: ANN001
    """Draw a row of panels under their legend; ``on_click`` runs (before the rerun) when a panel is clicked, with the click in
    ``st.session_state[key].click``: {"panel": number, "plane": ..., "row": ..., "column": ...}."""
    return _views(data={"panels": panels, "legend": legend}, key=key, on_click_change=on_click)
