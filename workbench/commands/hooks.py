"""``workbench hooks``: the hook points of a model, with the shape each caches, without loading its weights."""
from __future__ import annotations

import re
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command(no_args_is_help=True)
    def hooks(
        model: str = typer.Argument(..., help="HF-format checkpoint folder, hub id, or training run folder."),
        pattern: Optional[str] = typer.Argument(None, help="Only names matching this name, shorthand or glob, "
                                                           "e.g. 'blocks.0.*', listed one by one."),
        seq_len: int = typer.Option(16, help="Row width the shapes are shown for."),
    ) -> None:
        """List MODEL's hook names and the shape of one row of each (the names `workbench cache --hooks` takes).

        Example: workbench hooks ./phi-2 'blocks.0.attn.*'
        """
        from workbench.hooks.names import UnknownHookError, match_names
        from workbench.model import PhiConfig
        from workbench.errors import InputError
        from workbench.model.hf_format import find_checkpoint
        from workbench.store.capture import hook_shapes_of_config
        from workbench.store.inspect import plural

        cfg = PhiConfig.from_hf(find_checkpoint(model)[0])   # a bad checkpoint: a UserError, one line
        if seq_len < 1 or seq_len > cfg.n_ctx:
            raise InputError(f"--seq-len must be between 1 and the model's context ({cfg.n_ctx}), got {seq_len}")
        shapes = hook_shapes_of_config(cfg, seq_len)
        typer.echo(f"{model}: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads of {cfg.d_head}, "
                   f"d_mlp {cfg.d_mlp}, vocab {cfg.d_vocab:,}, context {cfg.n_ctx:,}")
        typer.echo(f"shapes of one row of {seq_len} tokens (the batch axis left out)\n")
        try:
            chosen = match_names(pattern, list(shapes)) if pattern else None
        except UnknownHookError as e:
            raise InputError(f"no hook point matches {e.name!r}; closest valid names: "
                             f"{', '.join(e.suggestions) or '(none close)'}. Run `workbench hooks {model}` "
                             "without a pattern to list them all") from None
        rows = _rows(shapes, cfg.n_layers, chosen)
        width = max(len(name) for name, _, _ in rows)
        for name, shape, note in rows:
            typer.echo(f"{name:<{width}}  {str(list(shape)):<18}{note}".rstrip())
        per_block = sum(1 for n in shapes if n.startswith("blocks.0."))
        typer.echo(f"\n{plural(len(shapes), 'hook point')} ({per_block} in each of {cfg.n_layers} blocks). Split inputs "
                   "are off by default: `workbench cache` switches one on when it is named exactly; "
                   "globs such as 'blocks.*.hook_resid_post' work.")


def _rows(shapes: dict, n_layers: int, chosen: Optional[list]) -> list[tuple[str, tuple, str]]:
    """``(name, shape, note)`` per line: every chosen name, or block 0's names as ``blocks.{0..L-1}``."""
    from workbench.store.capture import is_split_input
    note = lambda n: "split input: off unless switched on" if is_split_input(n) else ""  # noqa: E731
    if chosen is not None:
        return [(n, shapes[n], note(n)) for n in chosen]
    span = "{0}" if n_layers == 1 else f"{{0..{n_layers - 1}}}"
    rows = []
    for n, s in shapes.items():
        m = re.match(r"blocks\.(\d+)\.(.*)", n)
        if m is None:
            rows.append((n, s, note(n)))
        elif m.group(1) == "0":
            rows.append((f"blocks.{span}.{m.group(2)}", s, note(n)))
    return rows
