"""``workbench demo``: run a Phi model with every hook cached and print what was found."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

DEFAULT_TEXT = "def add(a, b):\n    return a + b\n"


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(seed: int = typer.Option(0, help="Random seed for the tiny model and the tokens."),
             preset: str = typer.Option("tiny", help="Config preset (tiny, small, mid, phi-2, ...)."),
             checkpoint: Optional[Path] = typer.Option(
                 None, help="HF-format checkpoint folder (or hub id) to load instead of a random preset."),
             text: str = typer.Option(DEFAULT_TEXT, help="Prompt, used when the checkpoint has a tokenizer.")
             ) -> None:
        """Run a Phi model with every hook cached and summarise the activations."""
        import torch

        from workbench import PhiConfig, PhiModel
        from workbench.analysis.cache_summary import summarise_cache

        torch.manual_seed(seed)
        if checkpoint is not None:
            model = PhiModel.from_pretrained(str(checkpoint))
        else:
            model = PhiModel(PhiConfig.from_name(preset)).eval()
        if model.tokenizer is not None:
            tokens = model.to_tokens(text)                          # [1, pos]
        else:
            tokens = torch.randint(0, model.cfg.d_vocab, (2, 32))   # [batch, pos]
        model.set_use_attn_result(True)   # every hook, per-head results included
        with torch.no_grad():
            logits, cache = model.run_with_cache(tokens)
        typer.echo(summarise_cache(model, logits, cache))
