"""The workbench's own packages cannot be shadowed by a researcher's hooks.py or training.py beside a notebook.

``hooks`` and ``training`` install as ``workbench.hooks`` and ``workbench.training``; Python puts the
current directory first on ``sys.path`` for ``python -c``, ``python -m`` and Jupyter kernels, so
files with those common names there must not change what the workbench imports.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

SHADOWS = {
    "training.py": "raise ImportError('the notebook folder training.py was imported')\n",
    "hooks.py": "raise ImportError('the notebook folder hooks.py was imported')\n",
}


@pytest.fixture
def folder_with_shadows(tmp_path):
    for name, text in SHADOWS.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "store").mkdir()     # a plain folder named like a room
    return tmp_path


def test_import_workbench_ignores_training_and_hooks_in_the_current_folder(folder_with_shadows):
    code = ("import workbench, workbench.training, workbench.hooks, workbench.training.trainer\n"
            "from workbench.hooks import HookPoint\n"
            "assert 'training' not in __import__('sys').modules and 'hooks' not in __import__('sys').modules\n"
            "print(workbench.training.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=folder_with_shadows, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert str(folder_with_shadows) not in out.stdout


def test_workbench_train_runs_beside_a_training_py(folder_with_shadows):
    code = "import sys; from workbench.cli import main; sys.argv = ['workbench'] + sys.argv[1:]; main()"
    out = subprocess.run([sys.executable, "-c", code, "train", "tiny", "--out", "run", "--max-steps", "2",
                          "--no-progress"], cwd=folder_with_shadows, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (folder_with_shadows / "run" / "metrics.jsonl").is_file()
