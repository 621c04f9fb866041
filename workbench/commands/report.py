"""``workbench report``: what a training run did (loss curve, induction score per recorded step)."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from workbench.errors import MissingFileError


def register(app: typer.Typer) -> None:
    @app.command()
    def report(run: Path = typer.Argument(..., help="A training run folder (the --out of workbench train).")) -> None:
        """Print the loss-curve summary and, when recorded, the best head's induction score per step."""
        if not (run / "metrics.jsonl").is_file():
            raise MissingFileError(f"{run} is not a training run folder (no metrics.jsonl); "
                                    "pass the --out folder of `workbench train`")
        from workbench.training.summary import format_report
        summary_file = run / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
        typer.echo(format_report(run, summary))
