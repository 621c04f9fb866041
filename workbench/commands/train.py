"""``workbench train``: train a Phi-architecture model while recording activations."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        config: Optional[str] = typer.Argument(
            None, help="A TOML config, or a shipped example (default, phi2-gpu). None: the embedded default."),
        out: Path = typer.Option(..., "--out", "-o", help="Run folder (config, metrics, checkpoints, recording)."),
        max_steps: Optional[int] = typer.Option(None, help="Override schedule.max_steps."),
        checkpoint_every: Optional[int] = typer.Option(None, help="Override checkpoint.every (steps)."),
        record_every: Optional[int] = typer.Option(None, help="Override record.every (steps; 0: log-spaced only)."),
        device: Optional[str] = typer.Option(None, help="auto, cpu, cuda, cuda:N or mps (overrides system.device)."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its newest checkpoint."),
        seed: Optional[int] = typer.Option(None, help="Override the seed."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
    ) -> None:
        """Train (or resume) a run; prints a summary with the induction-score curve at the end.

        Under `torchrun --nproc_per_node N` the same command trains with DDP (or FSDP2: system.parallel).
        """
        from workbench.training.config import TrainConfig, load_config

        cfg_path = out / "config.toml"
        if resume and config is None and cfg_path.is_file():
            cfg = TrainConfig.from_toml(cfg_path)   # the run's own resolved config
        else:
            cfg = load_config(config)
        cfg = cfg.override(schedule__max_steps=max_steps, checkpoint__every=checkpoint_every,
                           record__every=record_every, system__device=device, seed=seed)

        from workbench.training.summary import format_report
        from workbench.training.trainer import Trainer
        trainer = Trainer(cfg, out, resume=resume, progress=progress)
        summary = trainer.fit()
        if trainer.dist.is_main:
            typer.echo(format_report(out, summary))
