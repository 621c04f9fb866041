"""The docs stand on their own: every project file they name exists, and none points outside the project."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A path into the project: one of its top-level folders, then a file with a known suffix.
PROJECT_PATH = re.compile(r"(?<![\w./-])((?:docs|bench|tests|notebooks|workbench|training|hooks|scripts|\.ci)/"
                          r"[\w./-]*\w\.(?:md|py|ipynb|toml|sh|js|css))")


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_named_project_files_exist(doc):
    text = doc.read_text()
    missing = sorted({p for p in PROJECT_PATH.findall(text) if not (ROOT / p).exists() and "*" not in p})
    assert not missing, f"{doc.name} names files that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_no_pointer_outside_the_project(doc):
    text = doc.read_text()
    assert "DESIGN.md" not in text and "../shared" not in text, f"{doc.name} points outside the project"
