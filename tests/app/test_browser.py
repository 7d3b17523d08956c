"""The viewer in a real browser: Debian's chromium driven by Playwright against `streamlit run` on 127.0.0.1.

Writes browser-artifacts/viewer.png (screenshot) and browser-artifacts/viewer_timing.txt (seconds from
page load to the displayed phantom prediction).
"""

from __future__ import annotations

import io
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "browser-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed "
                                "(apt-get install chromium); .ci/run installs it")
sync_playwright = pytest.importorskip("playwright.sync_api", reason="needs the playwright package").sync_playwright
pytest.importorskip("streamlit", reason="the viewer needs the 'app' extra")


@pytest.fixture(scope="module")
def viewer_url():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "dosepred" / "app" / "main.py"), "--server.address", "127.0.0.1",
         "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
         "--client.toolbarMode", "minimal"],  # as `dosepred app` starts it
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the Streamlit server did not start")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_browser_shows_the_phantom_prediction_and_survives_a_bad_upload(viewer_url: str, tmp_path: Path) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1900})
        started = time.perf_counter()
        page.goto(viewer_url)
        page.get_by_text("OpenKBP dose score").wait_for(timeout=240_000)
        elapsed = time.perf_counter() - started
        page.locator('[data-testid="stVegaLiteChart"]').first.wait_for(timeout=60_000)
        assert page.get_by_text("Research use only").first.is_visible()
        assert page.get_by_text("Metrics").first.is_visible()
        assert page.get_by_text("Deploy").count() == 0
        assert page.locator("canvas.dp-canvas").count() == 3
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "viewer.png"), full_page=True)
        (ARTIFACTS / "viewer_timing.txt").write_text(f"page load to displayed phantom prediction: {elapsed:.1f} s\n")

        evil = io.BytesIO()
        with zipfile.ZipFile(evil, "w") as archive:
            archive.writestr("../../escape.csv", ",data\n1,1\n")
        (tmp_path / "evil.zip").write_bytes(evil.getvalue())
        page.get_by_text("Upload", exact=True).click()
        page.locator('input[type="file"]').set_input_files(str(tmp_path / "evil.zip"))
        page.get_by_text("unsafe path in the archive").wait_for(timeout=60_000)
        assert not (tmp_path.parent / "escape.csv").exists()
        page.get_by_text("Phantom (embedded)").click()
        page.get_by_text("OpenKBP dose score").wait_for(timeout=120_000)  # still working
        browser.close()


def test_browser_predicts_a_clinic_dicom_zip_on_its_ct(viewer_url: str, tmp_path: Path) -> None:
    from dosepred.io.dicom_export import write_dicom_patient
    from dosepred.io.phantom import make_phantom

    write_dicom_patient(make_phantom((64, 64, 64)), tmp_path / "clinic_1", pixel_spacing=3.0,
                        extra_rois={"CTV_7000": "PTV70"})
    with zipfile.ZipFile(tmp_path / "clinic_1.zip", "w") as archive:
        for path in sorted((tmp_path / "clinic_1").iterdir()):
            archive.write(path, f"clinic_1/{path.name}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1900})
        page.goto(viewer_url)
        page.get_by_text("Upload", exact=True).wait_for(timeout=240_000)
        page.get_by_text("Upload", exact=True).click()
        page.locator('input[type="file"]').set_input_files(str(tmp_path / "clinic_1.zip"))
        page.get_by_text("the clinic CT resampled onto the model's grid").wait_for(timeout=240_000)
        assert page.get_by_text("not known to the model: CTV_7000").first.is_visible()  # the unmapped ROI, named
        page.get_by_text("ROI names and the structures they became").click()
        page.get_by_text("Parotid_L").first.wait_for(timeout=30_000)
        page.get_by_text("Dose (DICOM RT Dose)").first.wait_for(timeout=120_000)
        assert page.get_by_text("lie on the patient's own CT").first.is_visible()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "viewer_dicom.png"), full_page=True)
        browser.close()


def test_browser_review_click_links_the_views_and_the_report_downloads(viewer_url: str, tmp_path: Path) -> None:
    """Click a view: the crosshair moves in the others; hover reads values out; the wheel zooms; side by side
    shows the difference map against the phantom's reference; the report downloads."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1900})
        page.goto(viewer_url)
        page.get_by_text("OpenKBP dose score").wait_for(timeout=240_000)
        axial = page.locator("figure.dp-panel[data-plane='axial'] canvas")
        axial.wait_for(timeout=60_000)
        assert page.locator("figcaption", has_text="coronal 65/128").count() == 1
        box = axial.bounding_box()
        # the phantom is 128 voxels a side, the axial view's rows run anterior-posterior (axis 0), its columns
        # right-left (axis 1): the click's row is the coronal slice, its column the sagittal slice
        x, y = 0.3 * box["width"] + 1, 0.6 * box["height"] + 1
        row, column = int(y / box["height"] * 128), int(x / box["width"] * 128)
        page.mouse.click(box["x"] + x, box["y"] + y)
        page.locator("figcaption", has_text=f"coronal {row + 1}/128").wait_for(timeout=60_000)
        page.locator("figcaption", has_text=f"sagittal {column + 1}/128").wait_for(timeout=60_000)
        assert page.locator("figcaption", has_text="axial 65/128").count() == 1  # its own slice stays
        readout = page.locator("figure.dp-panel[data-plane='coronal'] .dp-readout")
        assert readout.inner_text().startswith(f"voxel ({row}, {column}, 64) · CT")  # the crosshair's values
        centre = page.locator("figure.dp-panel[data-plane='axial'] canvas").bounding_box()
        page.mouse.move(centre["x"] + centre["width"] / 2 + 1, centre["y"] + centre["height"] / 2 + 1)
        hovered = page.locator("figure.dp-panel[data-plane='axial'] .dp-readout").inner_text()
        assert hovered.startswith("voxel (64, 64, 64)") and "predicted" in hovered and "reference" in hovered
        page.mouse.wheel(0, -300)  # zoom in about the centre: the voxel under the cursor stays put
        page.wait_for_timeout(300)
        page.mouse.move(centre["x"] + centre["width"] / 2 + 1, centre["y"] + centre["height"] / 2 + 1)
        assert page.locator("figure.dp-panel[data-plane='axial'] .dp-readout").inner_text().startswith("voxel (64, 64, 64)")
        page.mouse.move(centre["x"] + centre["width"] / 2 + 41, centre["y"] + centre["height"] / 2 + 1)
        zoomed = page.locator("figure.dp-panel[data-plane='axial'] .dp-readout").inner_text()
        unzoomed_column = 64 + int(40 / (centre["width"] / 128))
        assert zoomed.startswith("voxel (64, ") and int(zoomed.split(", ")[1]) < unzoomed_column  # magnified
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "viewer_linked_views.png"), full_page=True)

        page.get_by_text("Side by side").click()
        page.locator("figcaption", has_text="Difference · axial 65/128").wait_for(timeout=120_000)
        assert page.locator("figcaption", has_text="Reference · axial 65/128").count() == 1
        assert page.get_by_text("predicted - reference (Gy)").count() >= 1  # the difference map's colour bar
        page.screenshot(path=str(ARTIFACTS / "viewer_side_by_side.png"), full_page=True)

        # a button of the run that "Side by side" started, not a stale one of the run before
        page.locator("[data-testid='stApp'][data-test-script-state='notRunning']").wait_for(timeout=120_000)
        with page.expect_download(timeout=120_000) as download:
            page.get_by_text("Download the review report (HTML)").click()
        report = download.value.path().read_text(encoding="utf-8")
        assert download.value.suggested_filename == "phantom_review.html"
        assert "Plan objectives" in report and "data:image/png;base64," in report
        browser.close()
