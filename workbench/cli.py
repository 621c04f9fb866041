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


COMMANDS = ("demo", "cache", "inspect", "hooks", "train", "report", "circuit")


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

EXIT_SIGINT, EXIT_SIGTERM = 130, 143


class Terminated(KeyboardInterrupt):
    """SIGTERM (what job schedulers send), delivered like Ctrl-C so the same clean-up runs."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def is_user_error(e: BaseException) -> bool:
    """A ``UserError``, or a hook name that matches no hook point (the hooks package knows no CLI)."""
    from workbench.errors import UserError
    names = sys.modules.get("workbench.hooks.names")   # never imported just to check: it imports torch
    return isinstance(e, UserError) or (names is not None and isinstance(e, names.UnknownHookError))


def _interrupt_behind(e: BaseException):
    """The KeyboardInterrupt (or ``Terminated``) a ``SystemExit`` was raised for, if any."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, KeyboardInterrupt):
            return e
        # ``raise typer.Exit(code) from None``: the command chose its exit code for that interrupt
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return None


def main() -> None:
    """Run the CLI: user errors are one line (exit 1); anything else is a bug and shows its traceback."""
    import signal
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        try:
            app()
        except SystemExit as e:   # typer turns an interrupt into a silent exit 130, even for SIGTERM
            interrupt = _interrupt_behind(e)
            if interrupt is None:
                raise
            raise interrupt from None
    except KeyboardInterrupt as e:
        # Commands that hold work in progress print how to resume before they get here.
        signal.signal(signal.SIGINT, signal.SIG_IGN)     # a second Ctrl-C must not interrupt the exit
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("terminated" if isinstance(e, Terminated) else "interrupted", file=sys.stderr)
        sys.exit(EXIT_SIGTERM if isinstance(e, Terminated) else EXIT_SIGINT)
    except Exception as e:
        if is_user_error(e) and not os.environ.get("WORKBENCH_DEBUG"):
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            print(f"error: {msg}", file=sys.stderr)
            sys.exit(1)
        import traceback
        traceback.print_exc()
        if not is_user_error(e):
            print("error: the traceback above is a bug in the workbench, not a problem with your input; "
                  "please report it with the command you ran", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
