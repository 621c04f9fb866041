"""``workbench inspect``: describe an activation store file."""
from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command(no_args_is_help=True)
    def inspect(path: Path = typer.Argument(..., help="A .h5 file written by `workbench cache` or a training run.")
                ) -> None:
        """Show a store's model, hooks (shapes, dtypes), complete rows, size, format version and origin."""
        from workbench.store.inspect import describe
        typer.echo(describe(path))
