"""a2m_lib.files: the write-then-rename helper."""

import re

import pytest

from a2m_lib import files
from tests.conftest import REPO


def test_one_write_then_rename_helper_leaves_no_torn_file(tmp_path):
    target = tmp_path / "table.csv"
    files.write_text(target, "old")
    with pytest.raises(RuntimeError):
        with files.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old" and not list(tmp_path.glob("*.part*"))
    hand_written = [f"{p.name}:{n}" for p in (REPO / "a2m_lib").glob("*.py") if p.name != "files.py"
                    for n, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"\.replace\((path|target)", line)]
    assert not hand_written, hand_written
