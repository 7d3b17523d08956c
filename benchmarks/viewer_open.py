"""Time from opening the viewer to its DVH, in real Chromium (Debian's, driven by Playwright).

Starts `streamlit run` on 127.0.0.1 as `dosepred app` does, opens the page on the embedded phantom and
times until the prediction's scores and the DVH chart are shown; then a click on the axial view, until the
coronal and sagittal views show the slices through the clicked voxel.
Each run is a fresh server (a cold model load) unless --warm reuses one for the later runs.

    python benchmarks/viewer_open.py [--runs 3] [--warm]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

APP = Path(__file__).resolve().parents[1] / "dosepred" / "app" / "main.py"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def start_server(data_root: Path | None = None) -> tuple[subprocess.Popen, str]:
    """`streamlit run` on a free port of 127.0.0.1, as `dosepred app [--data-root DIR]` starts it; (process, URL)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {**os.environ, **({"DOSEPRED_DATA_ROOT": str(data_root.resolve())} if data_root else {})}
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(APP), "--server.address", "127.0.0.1",
                               "--server.port", str(port), "--server.headless", "true",
                               "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal"],
                              env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return server, url
        except OSError:
            time.sleep(0.25)
    server.terminate()
    raise SystemExit("the Streamlit server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warm", action="store_true", help="one server for every run (the model stays loaded)")
    args = parser.parse_args()
    server, url = start_server()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            for run in range(args.runs):
                if run and not args.warm:
                    server.terminate()
                    server.wait(timeout=30)
                    server, url = start_server()
                page = browser.new_page(viewport={"width": 1500, "height": 1900})
                started = time.perf_counter()
                page.goto(url)
                page.get_by_text("OpenKBP dose score").wait_for(timeout=300_000)
                scores = time.perf_counter() - started
                page.locator('[data-testid="stVegaLiteChart"]').first.wait_for(timeout=300_000)
                dvh = time.perf_counter() - started
                axial = page.locator("figure.dp-panel[data-plane='axial'] canvas").bounding_box()
                row = int((0.6 * axial["height"] + 1) / axial["height"] * 128)
                clicked = time.perf_counter()
                page.mouse.click(axial["x"] + 0.3 * axial["width"] + 1, axial["y"] + 0.6 * axial["height"] + 1)
                page.locator("figcaption", has_text=f"coronal {row + 1}/128").wait_for(timeout=60_000)
                click = time.perf_counter() - clicked
                print(f"run {run + 1} ({'warm' if run and args.warm else 'cold'} server): scores {scores:.1f} s, "
                      f"DVH {dvh:.1f} s after opening the page; a click to the linked views {click:.2f} s", flush=True)
                page.close()
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
