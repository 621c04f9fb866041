"""``workbench demo`` runs; ``workbench --help`` and ``import workbench`` stay free of torch."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from helpers import make_tokenizer

from workbench.cli import app

ROOT = Path(__file__).parents[1]


def test_demo_runs_and_summarises_the_cache():
    result = CliRunner().invoke(app, ["demo", "--seed", "1"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "model: tiny" in out and "2 layers x 2 heads (d_head 80, rotary 32)" in out
    assert "cached 37 hook points" in out
    rows = [line for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 2  # one line per layer: residual norm and per-head attention entropy


def test_demo_rejects_an_unknown_preset():
    result = CliRunner().invoke(app, ["demo", "--preset", "phi-9"])
    assert result.exit_code != 0
    assert "unknown preset 'phi-9'" in str(result.exception)


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_help_does_not_import_torch():
    code = ("import sys\nsys.argv = ['workbench', '--help']\nfrom workbench.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass")
    modules = _modules_after(code)
    assert "typer" in modules and "workbench.commands.demo" in modules
    assert "torch" not in modules and "transformers" not in modules and "transformer_lens" not in modules


def test_import_workbench_is_lazy_but_phimodel_works():
    assert "torch" not in _modules_after("import workbench")
    modules = _modules_after("from workbench import PhiModel")
    assert "torch" in modules and "transformer_lens" not in modules and "transformers" not in modules


def test_demo_subprocess_exit_code_and_help():
    out = subprocess.run([sys.executable, "-m", "workbench.cli", "demo", "--help"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and "--preset" in out.stdout


def test_demo_loads_a_checkpoint_and_its_tokenizer(tiny_checkpoint):
    result = CliRunner().invoke(app, ["demo", "--checkpoint", str(tiny_checkpoint), "--text", "def f(x):"])
    assert result.exit_code == 0, result.output
    assert f"model: {tiny_checkpoint}" in result.output
    n_tokens = len(make_tokenizer().encode("def f(x):"))
    assert f"logits: (1, {n_tokens}, 512)" in result.output
