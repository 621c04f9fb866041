"""Every notebook in notebooks/ executes top to bottom on the venv's ``python3`` kernel without an error,
and prints what its prose claims.

Notebooks are stored without outputs (a circuitsvis figure carries a 1.3 MB script); the test
executes a copy in memory and never writes the file back.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import nbclient   # dev dependencies: pip install -e '.[dev]'
import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))

# What a notebook's prose says it shows, checked against what its cells printed, so that a notebook
# whose science breaks fails here rather than misleading a reader.
PRINTED = {
    "03_training_recording": [
        r"induction head: L1\.H\d, score (0\.[3-9]\d|1\.00) at step \d+ \(first above 0\.3 at recorded step \d+\)",
        r"head scores on repeated random tokens \(period 11, 2 repeats, ids \[0, 64\), after a BOS, the first 8 rows\) "
        r"from \S+config\.toml",
    ],
}


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 2, "notebooks/ should hold the researcher's path through the workbench"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    with_outputs = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not with_outputs, (f"{path.name}: cells {with_outputs} hold outputs; clear them before committing "
                              "(jupyter nbconvert --clear-output --inplace notebooks/*.ipynb)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_sets_threads_by_the_workbench_policy(path):
    """One thread policy (workbench.threads), set in the first code cell, no notebook-local thread counts."""
    nb = nbformat.read(path, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert "use_threads()" in code[0], f"{path.name}: call workbench.threads.use_threads() in the first cell"
    assert not any("set_num_threads" in src for src in code), f"{path.name} sets its own thread count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                                     resources={"metadata": {"path": str(tmp_path)}})
    # One OpenMP thread, as tests/conftest.py sets for the test process: tiny models gain nothing from
    # more, and spinning threads on a shared 2-core machine slow them many times over.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    try:
        client.execute(env=env)
    except nbclient.exceptions.CellExecutionError as e:   # the message holds the cell and the traceback
        pytest.fail(f"{path.name} failed:\n{e}")
    html = [o["data"]["text/html"] for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.get("output_type") in ("execute_result", "display_data") and "text/html" in o.get("data", {})]
    assert html, f"{path.name} shows no figure"
    for h in html:   # every figure renders offline
        assert "unpkg.com" not in h and not re.search(r"<script[^>]*\bsrc\s*=", h)
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                      if o.get("output_type") == "stream")
    for pattern in PRINTED.get(path.stem, []):
        assert re.search(pattern, printed), f"{path.name} did not print {pattern!r}; it printed:\n{printed[-3000:]}"
