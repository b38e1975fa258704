"""The 3D viewer (a2m view, a2m_lib.viewer): one HTML file, opened in a real browser (Debian's chromium through
playwright), draws the meshes, has no console errors, and shows the frame of the audio's current time."""
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from a2m_lib import regions, viewer
from a2m_lib.mesh import reference_mesh

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _prediction(path: Path, seconds: float = 4.0, fps: float = 30.0) -> Path:
    """An evaluation-style file: truth and model whose mouths open and close, on every frame but two, with audio."""
    n_frames = int(seconds * fps)
    reference = reference_mesh()[: regions.N_LANDMARKS].astype(np.float32)
    truth = np.repeat(reference[None], n_frames, 0)
    lower = regions.LIPS[reference[regions.LIPS, 1] > reference[[regions.UPPER_INNER_LIP, regions.LOWER_INNER_LIP], 1].mean()]
    truth[:, lower, 1] += 0.8 * np.abs(np.sin(np.arange(n_frames) / 6))[:, None]
    frames = np.delete(np.arange(n_frames), [10, 11])  # two frames without a face
    t = np.arange(int(seconds * 16000)) / 16000
    np.savez(path, model=truth[frames] * 0.98, truth=truth[frames], frames=frames, fps=fps, clip_id="clip_0",
             speaker="spk0", audio=(0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sample_rate=16000)
    return path


def test_the_page_is_one_file_with_everything_inside(tmp_path):
    page = viewer.write_html(_prediction(tmp_path / "clip.npz"), tmp_path / "view.html").read_text()
    assert page.count("data:text/javascript;base64,") == 2 and "data:audio/wav;base64," in page
    assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page  # nothing fetched
    assert '"truth"' in page and '"model"' in page and '"frames": 120' in page
    shown = viewer.read_prediction(tmp_path / "clip.npz")
    assert shown["meshes"]["truth"].shape == (120, 468, 3)
    np.testing.assert_array_equal(shown["meshes"]["truth"][10], shown["meshes"]["truth"][9])  # a gap shows the frame before
    edges = {tuple(edge) for edge in viewer.wireframe().tolist()}
    assert (regions.UPPER_INNER_LIP, regions.LOWER_INNER_LIP) not in edges  # nothing drawn across the opening
    (tmp_path / "old.npz").write_bytes((tmp_path / "clip.npz").read_bytes())
    with np.load(tmp_path / "old.npz") as data:
        np.savez(tmp_path / "old.npz", **{k: data[k] for k in data.files if k != "audio"})
    with pytest.raises(viewer.ViewError, match="old.npz holds no audio.*again"):
        viewer.page(tmp_path / "old.npz")


def test_a2m_view_writes_the_page_from_the_command_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "a2m_lib.cli", "view", str(_prediction(tmp_path / "p.npz")), "--out",
                             str(tmp_path / "v.html")], capture_output=True, text=True)
    assert result.returncode == 0 and (tmp_path / "v.html").stat().st_size > 500_000, result.stderr


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
def test_the_viewer_draws_and_follows_the_audio_in_a_browser(tmp_path):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    page_file = viewer.write_html(_prediction(tmp_path / "clip.npz"), tmp_path / "view.html")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", "--autoplay-policy=no-user-gesture-required",
            "--use-angle=swiftshader", "--enable-unsafe-swiftshader"])  # WebGL on the CPU: no GPU here
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            errors = []
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(page_file.as_uri())
            page.wait_for_function("window.a2mViewer && window.a2mViewer.ready", timeout=60_000)
            assert page.evaluate("window.a2mViewer.faces") == ["truth", "model"]
            drawn = page.evaluate("""() => {
                const canvas = document.querySelector('canvas'), gl = canvas.getContext('webgl2');
                const pixels = new Uint8Array(4 * canvas.width * canvas.height);
                gl.readPixels(0, 0, canvas.width, canvas.height, gl.RGBA, gl.UNSIGNED_BYTE, pixels);
                let inked = 0; for (let i = 0; i < pixels.length; i += 4) if (pixels[i + 1] < 200) inked++;
                return inked; }""")
            assert drawn > 500, drawn  # the wireframes, points and lips (a blank canvas is white)
            for seconds in (1.0, 2.5, 0.2):  # scrubbing the audio moves the picture to that frame
                page.evaluate(f"document.getElementById('audio').currentTime = {seconds}")
                page.wait_for_function(f"window.a2mViewer.frame() === {int(seconds * 30)}", timeout=10_000)
            page.click("#play")
            time.sleep(1.2)
            playing = page.evaluate("[document.getElementById('audio').currentTime, window.a2mViewer.frame()]")
            assert playing[0] > 0.5 and abs(playing[1] - int(playing[0] * 30)) <= 2, playing  # within a frame or two
            page.fill("#scrub", "90")
            page.dispatch_event("#scrub", "input")
            assert abs(page.evaluate("document.getElementById('audio').currentTime") - 90.5 / 30) < 0.05
        finally:
            browser.close()
    assert not errors, errors
