"""The repo's promises about itself: pins agree, notebooks are clean, thin and parameterised."""
import json
import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_MODULES = {"01_extract": "extract", "02_alignment_qa": "qa", "03_neutral_selection": "neutral",
                    "04_train": "train", "05_evaluate": "evaluate", "06_compare": "compare"}


def _pins(requirements):
    pins = {}
    for requirement in requirements:
        name, _, version = requirement.partition("==")
        pins[re.sub(r"[-_.]+", "-", name.lower())] = version
    return pins


def test_environment_yml_pins_agree_with_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    expected = _pins(project["dependencies"] + project["optional-dependencies"]["dev"])
    assert all(version for version in expected.values()), "every dependency is pinned with =="
    environment = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    assert _pins([r for r in pip_section if not r.startswith("-e")]) == expected
    assert "python=3.11" in environment["dependencies"]


def test_notebooks_are_stored_without_outputs_and_have_parameters():
    books = sorted((REPO / "notebooks").glob("*.ipynb"))
    assert [b.stem for b in books] == list(NOTEBOOK_MODULES)
    for book in books:
        cells = json.loads(book.read_text())["cells"]
        code = [c for c in cells if c["cell_type"] == "code"]
        assert all(not c["outputs"] and c["execution_count"] is None for c in code), f"{book.name} has outputs"
        assert "parameters" in code[0]["metadata"].get("tags", []), f"{book.name}: first code cell must be parameters"
        source = "".join("".join(c["source"]) for c in code)
        assert f"{NOTEBOOK_MODULES[book.stem]}." in source, f"{book.name} must call a2m_lib.{NOTEBOOK_MODULES[book.stem]}"
        longest = max(len("".join(c["source"]).splitlines()) for c in code)
        assert longest <= 8, f"{book.name} holds logic ({longest}-line cell); move it into a2m_lib"


def test_ci_calls_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme
    assert "make test" in (REPO / ".ci" / "run").read_text()
