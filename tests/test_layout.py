"""The codebase's shape: stages depend on shared modules only, computing modules load no notebook or MediaPipe code."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = {"extract", "qa", "neutral", "train", "evaluate"}


def _relative_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.update([node.module.split(".")[0]] if node.module else [alias.name for alias in node.names])
    return found


def test_stages_depend_on_shared_modules_not_on_each_other():
    for stage in STAGES:
        imported = _relative_imports(REPO / "a2m_lib" / f"{stage}.py")
        assert not imported & (STAGES - {stage}), f"{stage}.py imports {imported & STAGES}"
    # Front ends may call the stages: the command line, and the notebooks' pictures and picker.
    front_ends = {"cli", "plots", "picker"}
    shared = [path for path in (REPO / "a2m_lib").rglob("*.py") if path.stem not in STAGES | front_ends]
    assert len(shared) > 20
    for path in shared:  # (a2m_lib/encoders/*'s level-1 imports stay inside that package)
        assert not _relative_imports(path) & STAGES or path.parent.name == "encoders", path.name


def test_computing_modules_import_without_matplotlib_ipywidgets_or_mediapipe():
    code = ("import sys\n"
            "for name in ('matplotlib', 'ipywidgets', 'mediapipe'): sys.modules[name] = None\n"
            "import a2m_lib.qa, a2m_lib.neutral, a2m_lib.train, a2m_lib.evaluate, a2m_lib.metrics, a2m_lib.regions\n"
            "import a2m_lib.mesh, a2m_lib.render, a2m_lib.rundir, a2m_lib.copies, a2m_lib.audio_frames\n")
    blocked = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert blocked.returncode == 0, blocked.stderr[-2000:]


# ------------------------------------------------------------------ model files never run code (issue 14)
