"""``workbench report``: what a training run did (loss curve, induction score per recorded step), and
``RUN/report.html`` with the curves, the strongest induction head and the induction circuit over training."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from workbench.errors import MissingFileError


def register(app: typer.Typer) -> None:
    @app.command()
    def report(run: Path = typer.Argument(..., help="A training run folder (the --out of workbench train)."),
               html: bool = typer.Option(True, "--html/--no-html", help="Also write RUN/report.html."),
               circuit_steps: int = typer.Option(8, help="Checkpoints (spread over the run) that get a circuit."),
               method: str = typer.Option("eap-ig", help="Edge scores for the circuit: eap, eap-ig or exact."),
               threads: Optional[int] = typer.Option(None, help="CPU threads for torch (default: cores - 1, at least 1)."),
               progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar.")) -> None:
        """Print the loss-curve summary and, when recorded, the best head's induction score per step;
        write RUN/report.html (loss, head scores, the strongest induction head, the induction circuit)."""
        if not (run / "metrics.jsonl").is_file():
            raise MissingFileError(f"{run} is not a training run folder (no metrics.jsonl); "
                                   "pass the --out folder of `workbench train`")
        from workbench.training.summary import format_report
        summary_file = run / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
        typer.echo(format_report(run, summary))
        if html:
            from workbench.threads import use_threads
            use_threads(threads)
            write_html(run, circuit_steps, method, progress)


def write_html(run: Path, circuit_steps: int, method: str, progress: bool) -> Path:
    from workbench.analysis.circuits.eap import check_method
    check_method(method, 1)
    from tqdm import tqdm

    from workbench.report_page import build_report
    bar = tqdm(total=1, disable=not progress, dynamic_ncols=True, leave=False, unit="checkpoint")

    def on_step(step: int, i: int, n: int) -> None:
        bar.total, bar.n = n, i
        bar.set_description(f"circuit at step {step}", refresh=True)
    try:
        page = build_report(run, circuit_steps=circuit_steps, method=method, on_step=on_step)
    finally:
        bar.close()
    out = page.save(run / "report.html", title=f"report: {run.name}")
    typer.echo(f"wrote {out} (open it in a browser; it needs no network)")
    return out
