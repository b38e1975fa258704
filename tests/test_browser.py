"""The neutral picker in a real JupyterLab, driven through headless Chromium (playwright).

Skipped where Chromium (Debian package `chromium`) or playwright is missing; .ci/run installs Chromium.
"""
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import papermill
import pytest

from a2m_lib import neutral

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package")]
sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def jupyterlab(processed, tmp_path):
    """JupyterLab serving a parameterised copy of notebook 03 over the session's clip store."""
    papermill.execute_notebook(
        str(REPO / "notebooks" / "03_neutral_selection.ipynb"), str(tmp_path / "03.ipynb"), prepare_only=True,
        parameters=dict(config_path=str(REPO / "configs" / "demo.yaml"), run_dir=str(tmp_path / "run"),
                        overrides={"data.processed": str(processed)}))
    port = _free_port()
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         "--IdentityProvider.token=a2m-test", f"--ServerApp.root_dir={tmp_path}", "--allow-root",
         "--LabApp.news_url=None"], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/lab/tree/03.ipynb?token=a2m-test", tmp_path / "run" / "neutral"
    finally:
        server.terminate()
        server.wait(20)


def test_clicking_a_candidate_in_jupyterlab_writes_the_neutral(jupyterlab):
    url, neutral_dir = jupyterlab
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            for attempt in range(2):  # a second go from a fresh page load, should the UI miss a click
                try:
                    page.goto(url)
                    page.wait_for_selector(".jp-Notebook", timeout=90_000)
                    page.wait_for_selector(".jp-StatusBar-TextItem:has-text('Idle')", timeout=90_000)  # kernel ready
                    page.click(".lm-MenuBar-itemLabel:text-is('Run')", timeout=30_000)
                    page.click(".lm-Menu-itemLabel:text-is('Run All Cells')", timeout=30_000)
                    page.wait_for_selector('button:has-text("use this frame")', timeout=150_000)
                    break
                except Exception:
                    page.screenshot(path=str(neutral_dir.parents[1] / f"failure{attempt}.png"), full_page=True)
                    if attempt:
                        errors = page.locator(".jp-OutputArea-output[data-mime-type*='stderr']").all_inner_texts()
                        raise AssertionError(f"no picker appeared; stderr outputs: {errors[-3:]}; "
                                             f"screenshots in {neutral_dir.parents[1]}")
            labels = page.locator(".widget-html-content").all_inner_texts()
            second = next(text for text in labels if text.startswith("#2 "))  # "#2 <clip_id>:<frame> · score …"
            clip_id, frame = second.split()[1].rsplit(":", 1)
            page.locator('button:has-text("use this frame")').nth(1).click()
            deadline = time.time() + 30
            while time.time() < deadline:
                saved = neutral.load_neutral(neutral_dir / "spk0.npz")
                if saved["chosen_by"] == "manual":
                    break
                time.sleep(0.5)
            page.wait_for_selector("text=chosen by manual", timeout=30_000)
        finally:
            browser.close()
    assert (saved["chosen_by"], saved["clip_id"], saved["frame"]) == ("manual", clip_id, int(frame))
    assert np.isfinite(saved["mesh"]).all()
