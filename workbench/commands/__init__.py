"""One module per ``workbench`` verb; each imports only typer at module level."""
