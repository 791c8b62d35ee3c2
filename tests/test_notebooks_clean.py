"""The tutorial notebooks are committed without outputs: no stored results, no execution counts,
no widget state.  Outputs belong to whoever runs the notebook; in git they only bloat diffs and
go stale.  (Executing them is `make test`'s job: ``pytest --nbmake notebooks/``.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no .ipynb files"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stripped(path: Path):
    nb = json.loads(path.read_text())
    problems = []
    for n, cell in enumerate(nb["cells"], 1):
        if cell["cell_type"] != "code":
            continue
        if cell.get("outputs"):
            problems.append(f"cell {n} has {len(cell['outputs'])} output(s)")
        if cell.get("execution_count") is not None:
            problems.append(f"cell {n} has execution_count {cell['execution_count']}")
    if "widgets" in nb.get("metadata", {}):
        problems.append("notebook metadata stores widget state")
    assert not problems, (
        f"{path.name} is not stripped ({'; '.join(problems)}); clear it with "
        f"`jupyter nbconvert --clear-output --inplace {path.relative_to(path.parents[1])}`"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_reads_like_a_tutorial(path: Path):
    """Prose between the code: a title first and at least one markdown cell per three code
    cells."""
    cells = json.loads(path.read_text())["cells"]
    assert cells and cells[0]["cell_type"] == "markdown", f"{path.name} must open with prose"
    code = sum(c["cell_type"] == "code" for c in cells)
    prose = sum(c["cell_type"] == "markdown" for c in cells)
    assert prose * 3 >= code, f"{path.name}: {prose} markdown cells for {code} code cells"
