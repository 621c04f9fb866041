"""``workbench inspect``: describe an activation store file."""
from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command(no_args_is_help=True)
    def inspect(path: Path = typer.Argument(..., help="A .h5 file written by `workbench cache` or a training run."),
                verify: bool = typer.Option(False, "--verify", help="Also read every complete row (step) and "
                                                                    "check it against its stored checksum."),
                ) -> None:
        """Show a store's model, probe task, hooks (shapes, dtypes), complete rows, size, format and origin."""
        from workbench.store.inspect import describe
        typer.echo(describe(path, verify=verify))
