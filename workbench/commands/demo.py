"""``workbench demo``: build a tiny model, run it with a cache, print what was found."""
from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(seed: int = typer.Option(0, help="Random seed for the tiny model and the tokens."),
             preset: str = typer.Option("tiny", help="Config preset (tiny, small, mid, phi-2, ...).")) -> None:
        """Run a tiny random Phi model with every hook cached and summarise the activations."""
        import torch

        from workbench import PhiConfig, PhiModel
        from workbench.analysis_demo import summarise_cache

        torch.manual_seed(seed)
        model = PhiModel(PhiConfig.from_name(preset)).eval()
        tokens = torch.randint(0, model.cfg.d_vocab, (2, 32))
        with torch.no_grad():
            logits, cache = model.run_with_cache(tokens)
        typer.echo(summarise_cache(model, logits, cache))
