"""``workbench circuit``: find the circuit of a task (EAP / EAP-IG / exact), check it, draw it."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from workbench.errors import InputError, MissingFileError

METHODS = ("eap", "eap-ig", "exact")


def register(app: typer.Typer) -> None:
    @app.command(no_args_is_help=True)
    def circuit(
        model: str = typer.Argument(..., help="A training run folder, an HF-format checkpoint folder, or a hub id."),
        task: str = typer.Option("induction", "--task", "-t",
                                 help="induction, ioi, or a .jsonl file of {clean, corrupted, answer, wrong} pairs."),
        method: str = typer.Option("eap-ig", "--method", "-m", help="eap, eap-ig (default) or exact."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the interactive page here (.html)."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write the graph as JSON here."),
        edges: Optional[int] = typer.Option(None, "--edges", "-n",
                                            help="Circuit size (top edges). Default: the smallest reaching --target."),
        target: float = typer.Option(0.8, help="Faithfulness the default circuit must reach."),
        steps: int = typer.Option(5, help="EAP-IG integration steps."),
        prompts: int = typer.Option(16, help="Clean/corrupted prompt pairs (induction, ioi)."),
        seed: int = typer.Option(1, help="Seed of the generated prompts."),
        check: int = typer.Option(20, help="Check this many of the best edges by exact patching."),
        period: Optional[int] = typer.Option(None, help="Induction: period of the repeated block (default: the run's probes)."),
        alphabet: Optional[int] = typer.Option(None, help="Induction: token ids below this (default: the run's probes)."),
        step: Optional[int] = typer.Option(None, "--step", help="A run: analyse the checkpoint of this training step."),
        across_steps: bool = typer.Option(False, "--across-steps",
                                          help="A run: one circuit per saved checkpoint, with a step slider."),
        max_steps: int = typer.Option(12, help="With --across-steps: at most this many checkpoints, spread over the run."),
        device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, mps ..."),
        threads: Optional[int] = typer.Option(None, help="CPU threads for torch (default: cores - 1, at least 1)."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    ) -> None:
        """Find, check and draw the circuit of a task.

        Example: workbench circuit runs/default --task induction --out circuit.html
        """
        from workbench.threads import use_threads
        use_threads(threads)
        run_circuit(model, task, method, out, json_out, edges, target, steps, prompts, seed, check, period,
                    alphabet, step, across_steps, max_steps, device, progress)


def _check_options(method: str, out: Optional[Path], json_out: Optional[Path], edges: Optional[int], target: float,
                   steps: int, prompts: int) -> None:
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose eap, eap-ig or exact")
    for p in (out, json_out):
        if p is not None and p.is_dir():
            raise InputError(f"{p} is a folder; pass a file name such as {p / 'circuit.html'}")
    if edges is not None and edges < 1:
        raise InputError(f"--edges must be at least 1, got {edges}")
    if not 0 < target <= 1.5:
        raise InputError(f"--target is a faithfulness (1 = the clean model), got {target}")
    if steps < 1 or prompts < 1:
        raise InputError("--steps and --prompts must be at least 1")


def run_circuit(model: str, task: str = "induction", method: str = "eap-ig", out: Optional[Path] = None,
                json_out: Optional[Path] = None, edges: Optional[int] = None, target: float = 0.8, steps: int = 5,
                prompts: int = 16, seed: int = 1, check: int = 20, period: Optional[int] = None,
                alphabet: Optional[int] = None, step: Optional[int] = None, across_steps: bool = False,
                max_steps: int = 12, device: str = "cpu", progress: bool = True) -> None:
    """The body of ``workbench circuit``."""
    _check_options(method, out, json_out, edges, target, steps, prompts)
    run_dir = Path(model) if (Path(model) / "checkpoints").is_dir() else None
    if (across_steps or step is not None) and run_dir is None:
        raise InputError(f"--{'across-steps' if across_steps else 'step'} needs a training run folder "
                         f"(with checkpoints/), got {model}")
    if across_steps and step is not None:
        raise InputError("pass --step (one checkpoint) or --across-steps (all of them), not both")

    import torch

    from workbench import PhiModel
    from workbench.analysis.circuits import find_circuit
    from workbench.analysis.tasks import circuit_task

    if not Path(model).exists() and "/" not in model:
        raise MissingFileError(f"{model} does not exist (a run folder, a checkpoint folder, or a hub id like org/name)")
    source = model
    if step is not None:
        from workbench.analysis.circuits.steps import pick_steps
        source = pick_steps(run_dir, [step])[step]
    phi = PhiModel.from_pretrained(source, device=device).eval()
    spec = circuit_task(task, phi, run_dir=run_dir, n_prompts=prompts, seed=seed, period=period, vocab_size=alphabet)
    kwargs = dict(method=method, steps=steps, n_edges=edges, target=target, check=check)
    with torch.no_grad():
        clean, corrupted = (float(spec.metric(phi(t.to(phi.device)))) for t in (spec.clean_tokens, spec.corrupted_tokens))
    where = f" (step {step})" if step is not None else ""
    typer.echo(f"model   {model}{where}: {phi.cfg.n_layers} layers x {phi.cfg.n_heads} heads on {device}")
    typer.echo(f"task    {spec.name}: {spec.description}")
    typer.echo(f"metric  {spec.metric_name}: clean {clean:.4g}, corrupted {corrupted:.4g}")
    typer.echo(f"method  {method.upper()}" + (f" ({steps} steps)" if method == "eap-ig" else ""))
    head_scores = None
    if across_steps:
        graphs = _across_steps(run_dir, spec, device, max_steps, progress, kwargs)
        head_scores = _head_scores(run_dir)
        final = graphs[-1]
    else:
        final = _with_bar(progress, lambda cb: find_circuit(phi, spec, progress=cb, **kwargs))
        if step is not None:
            final.metadata["step"] = step
        graphs = [final]
    _summary(final)
    _write(graphs, head_scores, json_out, out, title=f"{spec.name} circuit: {model}")


def _write(graphs, head_scores, json_out: Optional[Path], out: Optional[Path], title: str) -> None:
    """Write the graph(s) as JSON (one graph, or a list of one per step) and/or the HTML page."""
    from workbench.viz import circuit_graph

    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        if len(graphs) == 1:
            graphs[0].to_json(json_out)
        else:   # one graph per step: a JSON list of graphs (Graph.from_dict reads each)
            import json
            json_out.write_text(json.dumps([g.to_dict() for g in graphs], allow_nan=False) + "\n", encoding="utf-8")
        typer.echo(f"wrote   {json_out}")
    if out is not None:
        circuit_graph(graphs, head_scores=head_scores).save(out, title=title)
        typer.echo(f"wrote   {out} (open it in a browser; it needs no network)")
    if out is None and json_out is None:
        typer.echo("(no --out or --json given: nothing written)")


def _with_bar(progress: bool, work):
    from tqdm import tqdm
    bar = tqdm(total=1, disable=not progress, dynamic_ncols=True, leave=False)

    def cb(stage: str, done: int, total: int) -> None:
        bar.total = total
        bar.set_description(stage, refresh=False)
        bar.n = done
        bar.refresh()
    try:
        return work(cb)
    finally:
        bar.close()


def _across_steps(run_dir: Path, spec, device: str, max_steps: int, progress: bool, kwargs: dict) -> list:
    from tqdm import tqdm

    from workbench.analysis.circuits import circuits_across_steps
    bar = tqdm(total=1, disable=not progress, dynamic_ncols=True, leave=False, unit="step")

    def on_step(step: int, i: int, n: int) -> None:
        bar.total = n
        bar.n = i
        bar.set_description(f"checkpoint step {step}", refresh=True)
    try:
        find_kwargs = {k: v for k, v in kwargs.items() if k != "steps"}
        graphs = circuits_across_steps(run_dir, spec, max_steps=max_steps, device=device, on_step=on_step,
                                       ig_steps=kwargs["steps"], **find_kwargs)
    finally:
        bar.close()
    for g in graphs:
        typer.echo(f"  step {g.metadata['step']:>7}: {int(g.in_graph.sum()):>4} edges, faithfulness "
                   f"{g.faithfulness:.3f}" + ("" if g.curve is None else f", area {g.curve.area:.3f}"))
    return graphs


def _head_scores(run_dir: Path):
    """The induction-score table of the run's recording, or None when it has none."""
    rec = run_dir / "activations.h5"
    if not rec.is_file():
        return None
    from workbench.analysis.heads import scores_across_steps
    from workbench.store import ActivationStore
    with ActivationStore.open(rec) as store:
        try:
            return scores_across_steps(store)
        except (ValueError, KeyError):
            return None


def _summary(graph) -> None:
    kept, total = int(graph.in_graph.sum()), graph.n_edges
    meta = graph.metadata
    typer.echo(f"circuit {kept} of {total} edges ({100 * kept / total:.1f}%), {meta.get('chosen_by', '')}")
    area = f" (area under the faithfulness curve {graph.curve.area:.3f})" if graph.curve is not None else ""
    typer.echo(f"faithfulness {graph.faithfulness:.3f}{area}")
    typer.echo(f"  {'edge':<22} {'score':>9} {'exact':>9}")
    for name in graph.circuit_edges()[:12]:
        w, r = graph.layout.parse_edge(name)
        ex = float(graph.exact[w, r])
        typer.echo(f"  {name:<22} {float(graph.scores[w, r]):>9.4f} {ex:>9.4f}" if ex == ex else
                   f"  {name:<22} {float(graph.scores[w, r]):>9.4f} {'':>9}")
    if kept > 12:
        typer.echo(f"  ... and {kept - 12} more")
