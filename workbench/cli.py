"""The ``workbench`` command.

Each verb lives in ``workbench/commands/<verb>.py`` and registers itself with
``register(app)``. Those modules import only typer at the top, so
``workbench --help`` starts without importing torch; the work itself imports
lazily inside each command.
"""
from __future__ import annotations

import importlib
import os
import sys

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Phi-2 interpretability workbench: cache activations, train with recording, analyse.")

@app.callback()
def _root() -> None:
    """Phi-2 interpretability workbench. Run `workbench VERB --help` for each verb."""


COMMANDS = ("demo", "cache", "inspect", "train", "report")


def _register_all() -> None:
    for verb in COMMANDS:
        try:
            module = importlib.import_module(f"workbench.commands.{verb}")
        except ModuleNotFoundError as e:
            if e.name == f"workbench.commands.{verb}":
                continue  # verb not built yet
            raise
        module.register(app)


_register_all()

# Errors a user can fix: one line, no traceback (set WORKBENCH_DEBUG=1 to see it).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError,
                                                KeyError, PermissionError, OSError)


def main() -> None:
    try:
        app()
    except USER_ERRORS as e:
        if os.environ.get("WORKBENCH_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
