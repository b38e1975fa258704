"""The neutral picker in a real JupyterLab, driven through headless Chromium (playwright), as a person uses it:
JupyterLab started the way `make lab` starts it (on notebooks/), the stored notebook 03 opened from the file
browser with its default parameters, Run All, then a click on a candidate.

The project is a copy (configs/, notebooks/, the session's clip store as data/processed/demo, and the run's
QA decisions as runs/demo/qa.csv) named by A2M_PROJECT_ROOT, so the test does not write into the checkout.
Skipped where Chromium (Debian package `chromium`) or playwright is missing; .ci/run installs Chromium.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from a2m_lib import rundir

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package")]
sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def jupyterlab(processed, qa_run, tmp_path):
    """JupyterLab on a copy of the project's notebooks/, whose relative paths lead to the session's clip store."""
    project = tmp_path / "project"
    shutil.copytree(REPO / "configs", project / "configs")
    shutil.copytree(REPO / "notebooks", project / "notebooks")
    (project / "data" / "processed").mkdir(parents=True)
    (project / "data" / "processed" / "demo").symlink_to(processed)
    (project / "runs" / "demo").mkdir(parents=True)
    shutil.copy(qa_run / "qa.csv", project / "runs" / "demo" / "qa.csv")  # what notebook 02 leaves behind
    port = _free_port()
    env = dict(os.environ, A2M_PROJECT_ROOT=str(project),
               PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    server = subprocess.Popen(  # as `make lab` does: jupyter lab notebooks/
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         "--IdentityProvider.token=a2m-test", "--allow-root", "--LabApp.news_url=None", "notebooks/"],
        env=env, cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # JupyterLab listens after 5-10 s here; wait up to 180 s (CI's 2 cores may be busy) and say so if it never does
        deadline = time.monotonic() + 180
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start listening on port {port} (exit code {server.poll()})")
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/lab?token=a2m-test", project / "runs" / "demo" / "neutral"
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
                    page.dblclick(".jp-DirListing-item:has-text('03_neutral_selection.ipynb')", timeout=90_000)
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
            deadline = time.monotonic() + 90  # the kernel writes the file within a second or two; 90 s of margin
            while time.monotonic() < deadline:
                saved = rundir.load_neutral(neutral_dir / "spk0.npz")
                if saved["chosen_by"] == "manual":
                    break
                time.sleep(0.5)
            page.wait_for_selector("text=chosen by manual", timeout=30_000)
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()
        finally:
            browser.close()
    assert (saved["chosen_by"], saved["clip_id"], saved["frame"]) == ("manual", clip_id, int(frame))
    assert np.isfinite(saved["mesh"]).all()
    recorded = {row["speaker"]: row for row in json.loads((neutral_dir / "choice.json").read_text())["speakers"]}
    assert (recorded["spk0"]["chosen_by"], recorded["spk0"]["frame"]) == ("manual", int(frame))  # the record says so too
    assert not [text for text in errors if "Error" in text], errors  # every cell ran with its defaults
