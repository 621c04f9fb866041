"""`workbench train --help` lists every shipped config, found without importing torch."""
from __future__ import annotations

import subprocess
import sys

from helpers import cli
from workbench.training.config import list_configs


def test_help_lists_every_shipped_config(capsys):
    code, out, _ = cli(capsys, "train", "--help")
    assert code == 0
    flat = " ".join(out.replace("│", " ").split())   # rich draws a box around the help
    assert set(list_configs()) >= {"default", "phi2-gpu", "tiny"}
    assert "(" + ", ".join(list_configs()) + ")" in flat


def test_listing_the_configs_imports_no_torch():
    code = ("import sys; from workbench.commands.train import shipped_configs; "
            "names = shipped_configs(); assert 'torch' not in sys.modules, 'torch imported'; print(names)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert eval(r.stdout) == list_configs()
