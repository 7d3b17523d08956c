"""The README's viewer screenshots, taken in real Chromium (Debian's, driven by Playwright).

Starts `streamlit run` on 127.0.0.1 as `dosepred app --data-root DIR` does, opens the first patient under
DIR (a validation patient: it has a reference dose), clicks the axial view near the highest target's
centre, zooms in, and saves the linked views, the side-by-side layout with the gamma map, and the
review section as PNGs in docs/images/.

    python docs/make_screenshots.py data/pack/val12
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: the benchmark's server start is shared
from benchmarks.viewer_open import CHROMIUM, start_server  # noqa: E402


def centre(page: Page, plane: str) -> tuple[float, float]:
    box = page.locator(f"figure.dp-panel[data-plane='{plane}'] canvas").first.bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def shoot(page: Page, path: Path, top: str, height: float) -> None:
    """A screenshot of the main column, ``height`` pixels down from the element with text ``top``."""
    first = page.get_by_text(top).first.bounding_box()
    page.screenshot(path=str(path), clip={"x": first["x"] - 10, "y": first["y"] - 10, "width": 1160, "height": height})
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="a folder of patients with reference doses")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    server, url = start_server(args.root)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1440, "height": 2000})
            page.goto(url)
            page.get_by_text("Patient under the data root").wait_for(timeout=300_000)
            page.get_by_text("Patient under the data root").click()
            page.get_by_text("OpenKBP dose score").wait_for(timeout=300_000)
            axial = page.locator("figure.dp-panel[data-plane='axial'] canvas").bounding_box()
            page.mouse.click(axial["x"] + 0.5 * axial["width"], axial["y"] + 0.42 * axial["height"])
            page.wait_for_timeout(3000)
            for plane, steps in (("axial", 3), ("coronal", 1), ("sagittal", 1)):  # zoom in about the crosshair
                page.mouse.move(axial["x"] + 0.5 * axial["width"], axial["y"] + 0.42 * axial["height"]) if plane == "axial" \
                    else page.mouse.move(*centre(page, plane))
                for _ in range(steps):
                    page.mouse.wheel(0, -100)
                    page.wait_for_timeout(200)
            page.mouse.move(axial["x"] + 0.55 * axial["width"], axial["y"] + 0.45 * axial["height"])
            shoot(page, args.out / "viewer_linked_views.png", "axial slice", 560)
            page.get_by_text("Side by side").click()
            page.get_by_text("gamma", exact=True).first.click()
            page.locator("figcaption", has_text="Gamma").wait_for(timeout=300_000)
            page.wait_for_timeout(2000)
            shoot(page, args.out / "viewer_side_by_side_gamma.png", "axial slice", 560)
            page.set_viewport_size({"width": 1440, "height": 3600})  # the app scrolls inside: show it all
            page.wait_for_timeout(3000)
            shoot(page, args.out / "viewer_objectives.png", "Plan objectives", 620)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
