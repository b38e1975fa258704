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


# ------------------------------------------------------------------ one spelling of each run file (rundir.py)
RUN_FILES = ("config.yaml", "run.json", "qa.csv", "choice.json", "splits.csv", "train_log.csv", "train_summary.json",
             "metrics.json", "articulation.json")
RUN_FOLDERS = ("neutral", "checkpoints", "renders", "predictions", "tensorboard")  # (notebooks/ is also the repo's)


def _strings_outside_docstrings(tree: ast.AST) -> list[ast.Constant]:
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [node for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_a_run_files_name_is_spelled_in_rundir_alone():
    """Every module but rundir.py names a run's files and folders through rundir (rundir.splits(run_dir), ...): a file
    name in a string, a message included, or a folder joined as `run_dir / "neutral"`, fails here. Docstrings and
    comments may mention them."""
    offenders = []
    for path in sorted((REPO / "a2m_lib").rglob("*.py")):
        if path.name == "rundir.py":
            continue
        tree = ast.parse(path.read_text())
        for node in _strings_outside_docstrings(tree):
            if any(name in node.value for name in RUN_FILES) or any(f"{name}/" in node.value for name in RUN_FOLDERS):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
        for node in ast.walk(tree):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant) \
                    and node.right.value in RUN_FOLDERS + RUN_FILES:
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: / {node.right.value!r}")
    assert not offenders, "\n".join(offenders)
    # and the test sees what it claims to: a module that spelled one would be caught
    caught = _strings_outside_docstrings(ast.parse('"""splits.csv in a docstring"""\nx = f"see {d}/splits.csv"'))
    assert [c.value for c in caught] == ["see ", "/splits.csv"]  # the f-string's pieces; not the docstring
