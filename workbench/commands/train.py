"""``workbench train``: train a Phi-architecture model while recording activations."""
from __future__ import annotations

import contextlib
import importlib.util
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Iterator, Optional

import typer


def shipped_configs() -> list[str]:
    """Names of the configs in ``workbench/training/configs`` (found without importing torch)."""
    spec = importlib.util.find_spec("workbench.training")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(list(spec.submodule_search_locations)[0]) / "configs"
    return sorted(p.stem for p in folder.glob("*.toml"))


def register(app: typer.Typer) -> None:
    names = ", ".join(shipped_configs())

    @app.command()
    def train(
        config: Optional[str] = typer.Argument(
            None, help=f"A TOML config, or a shipped one by name ({names}). None: the embedded default."),
        out: Path = typer.Option(..., "--out", "-o", help="Run folder (config, metrics, checkpoints, recording)."),
        max_steps: Optional[int] = typer.Option(None, help="Override schedule.max_steps."),
        checkpoint_every: Optional[int] = typer.Option(None, help="Override checkpoint.every (steps)."),
        record_every: Optional[int] = typer.Option(None, help="Override record.every (steps; 0: log-spaced only)."),
        device: Optional[str] = typer.Option(None, help="auto, cpu, cuda, cuda:N or mps (overrides system.device)."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its newest checkpoint "
                                    "(with the run's own config; a folder with no run yet starts one)."),
        seed: Optional[int] = typer.Option(None, help="Override the seed."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
    ) -> None:
        """Train (or resume) a run; prints a summary with the induction-score curve at the end.

        Ctrl-C or SIGTERM stops after the step in flight, saves a checkpoint (small models) and says how to resume.

        Under `torchrun --nproc_per_node N` the same command trains with DDP (or FSDP2: system.parallel).
        """
        warnings.formatwarning = lambda msg, *_a, **_k: f"warning: {msg}\n"
        from workbench.training.config import load_config

        cfg_path = out / "config.toml"
        if resume and config is None and cfg_path.is_file():
            from workbench.training.run_folder import run_config
            cfg = run_config(out)   # the run's own config
        else:
            cfg = load_config(config)
        cfg = cfg.override(schedule__max_steps=max_steps, checkpoint__every=checkpoint_every,
                           record__every=record_every, system__device=device, seed=seed)
        _run(cfg, out, resume, progress)


def _run(cfg, out: Path, resume: bool, progress: bool) -> None:
    from workbench.training.summary import format_report
    from workbench.training.trainer import Trainer

    with _stop_on_signals() as stopping:
        try:
            trainer = Trainer(cfg, out, resume=resume, progress=progress, log=typer.echo)
            stopping.trainer = trainer
            summary = trainer.fit()
        except KeyboardInterrupt:
            if stopping.signum is None:
                raise
            raise typer.Exit(EXIT_CODES[stopping.signum]) from None
        if trainer.stopped is not None:
            _report_stop(trainer, out)
            raise typer.Exit(EXIT_CODES[trainer.stopped.signum])
    if trainer.dist.is_main:
        typer.echo(format_report(out, summary))


def _report_stop(trainer, out: Path) -> None:
    s = trainer.stopped
    if not trainer.dist.is_main:
        return
    if s.resume_step is None:
        where = "no checkpoint yet, so --resume starts it over"
    elif s.resume_step == s.step:
        where = f"checkpoint saved at step {s.step:,}"
    else:
        where = f"--resume restarts from the checkpoint of step {s.resume_step:,}"
    typer.echo(f"\nstopped after step {s.step:,} of {trainer.cfg.schedule.max_steps:,} ({where}); "
               f"to continue: workbench train --out {out} --resume", err=True)


# Exit codes as a shell reports a process killed by the signal: 128 + its number.
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class _Stopping:
    """Signal handling for one training command. The first SIGINT/SIGTERM during set-up stops at
    once (nothing to save: every file is written atomically); during training it asks the trainer
    to stop after the step in flight. Later signals only say that it is stopping, so a second
    Ctrl-C never cuts the clean-up short or prints a traceback."""

    def __init__(self) -> None:
        self.trainer = None
        self.signum = None
        self.count = 0

    def handle(self, signum, frame) -> None:
        self.count += 1
        if self.count > 1:
            if self.count == 2:
                print("already stopping; the run folder stays resumable", file=sys.stderr, flush=True)
            return
        self.signum = signum
        if self.trainer is None:
            print("\nstopped while setting up (nothing to save yet); run the same command again to start",
                  file=sys.stderr, flush=True)
            raise KeyboardInterrupt
        self.trainer.request_stop(signum)
        print("\nstopping after the step in flight (and saving a checkpoint if that is quick) ...",
              file=sys.stderr, flush=True)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[_Stopping]:
    stopping = _Stopping()
    if threading.current_thread() is not threading.main_thread():
        yield stopping   # signal handlers can only be set in the main thread
        return
    previous = {s: signal.signal(s, stopping.handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stopping
    finally:
        if stopping.signum is None:   # after a signal the process is exiting: keep absorbing signals
            for s, h in previous.items():
                signal.signal(s, h)
