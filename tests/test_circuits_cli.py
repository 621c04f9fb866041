"""`workbench circuit`, `workbench report`'s page, circuits across checkpoints, and bad input as one clear line."""
from __future__ import annotations

import json
import re

import pytest
import torch

from helpers import assert_one_line_error, cli
from workbench.analysis.circuits import Graph, circuits_across_steps, edge_attribution, find_circuit, list_checkpoints
from workbench.errors import InputError
from workbench.analysis.tasks import induction_task

from test_circuits_eap import random_model


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A seconds-long training run with a recording and a checkpoint every 5 steps."""
    from workbench.training import TrainConfig, train
    from workbench.training.config import load_config
    assert TrainConfig   # the public names used by notebooks
    cfg = load_config("tiny").override(schedule__max_steps=15, checkpoint__every=5, record__every=5,
                                       data__synthetic_vocab_size=40)
    folder = tmp_path_factory.mktemp("run") / "run"
    train(cfg, folder, progress=False)
    return folder


def payload(html_text: str) -> dict:
    m = re.search(r'<script type="application/json" id="[^"]+-data">(.*?)</script>', html_text, re.S)
    return json.loads(m.group(1))


def test_circuit_command_writes_the_page_and_the_json(run, tmp_path, capsys):
    code, out, err = cli(capsys, "circuit", run, "--task", "induction", "--out", tmp_path / "c.html",
                         "--json", tmp_path / "c.json", "--method", "eap", "--prompts", "4", "--no-progress")
    assert code == 0, err
    assert "faithfulness" in out and re.search(r"circuit +\d+ of \d+ edges", out)
    assert "period 6 over tokens < 40" in out                       # the run's own probe settings
    g = Graph.from_json(tmp_path / "c.json")
    assert g.metadata["task"]["params"]["period"] == 6 and g.metadata["method"] == "eap"
    data = payload((tmp_path / "c.html").read_text())
    assert len(data["graphs"]) == 1 and len(data["edges"]) == g.n_edges


def test_circuit_across_steps_has_one_graph_per_checkpoint(run, tmp_path, capsys):
    code, out, err = cli(capsys, "circuit", run, "--across-steps", "--method", "eap", "--prompts", "4",
                         "--out", tmp_path / "s.html", "--json", tmp_path / "s.json", "--no-progress")
    assert code == 0, err
    steps = list(list_checkpoints(run))
    assert steps == [5, 10, 15]
    graphs = [Graph.from_dict(d) for d in json.loads((tmp_path / "s.json").read_text())]
    assert [g.metadata["step"] for g in graphs] == steps
    data = payload((tmp_path / "s.html").read_text())
    assert [g["step"] for g in data["graphs"]] == steps and data["head_curve"]["steps"][-1] == 15


def test_one_checkpoint_by_step(run, tmp_path, capsys):
    code, out, err = cli(capsys, "circuit", run, "--step", "10", "--method", "eap", "--prompts", "4",
                         "--json", tmp_path / "one.json", "--no-progress")
    assert code == 0, err
    assert Graph.from_json(tmp_path / "one.json").metadata["step"] == 10


@pytest.mark.parametrize("args, needle", [
    (["--method", "acdc"], "unknown method 'acdc'"),
    (["--step", "7"], "step 7 has no checkpoint"),
    (["--task", "nonsense"], "unknown task 'nonsense'"),
    (["--across-steps", "--step", "5"], "not both"),
    (["--task", "ioi"], "cannot build IOI prompts"),
])
def test_bad_options_are_one_line(run, capsys, args, needle):
    code, out, err = cli(capsys, "circuit", run, *args, "--no-progress")
    assert_one_line_error(code, err, needle)


def test_jsonl_task_with_unequal_lengths_is_one_line(run, tmp_path, capsys):
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"clean": [1, 2, 3, 4], "corrupted": [5, 6, 7, 8], "answer": 3, "wrong": 4}) + "\n"
                 + json.dumps({"clean": [1, 2, 3], "corrupted": [5, 6, 7, 8], "answer": 3, "wrong": 4}) + "\n")
    code, out, err = cli(capsys, "circuit", run, "--task", f, "--no-progress")
    assert_one_line_error(code, err, "pairs.jsonl:2", "clean and corrupted token lengths differ")


def test_jsonl_task_runs(run, tmp_path, capsys):
    f = tmp_path / "pairs.jsonl"
    rows = [{"clean": [1, 2, 3, 4, 5], "corrupted": [9, 2, 3, 4, 5], "answer": 6, "wrong": 7},
            {"clean": [3, 2, 1, 4, 5], "corrupted": [3, 8, 1, 4, 5], "answer": 6, "wrong": 8}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = cli(capsys, "circuit", run, "--task", f, "--method", "exact", "--edges", "5",
                         "--json", tmp_path / "j.json", "--no-progress")
    assert code == 0, err
    g = Graph.from_json(tmp_path / "j.json")
    assert g.metadata["task"]["name"] == "pairs" and g.metadata["method"] == "exact"
    assert bool(torch.isfinite(g.exact[g.layout.valid]).all())          # exact: every edge patched


def test_report_writes_the_html_page(run, capsys):
    code, out, err = cli(capsys, "report", run, "--circuit-steps", "2", "--method", "eap", "--no-progress")
    assert code == 0, err
    page = (run / "report.html").read_text()
    for heading in ("Loss", "Induction score of every head", "The strongest induction head", "Induction circuit"):
        assert f">{heading}</h2>" in page
    assert [g["step"] for g in payload(page)["graphs"]] == [5, 15]
    assert not re.search(r"""<script[^>]*\bsrc\s*=""", page)


def test_api_errors_are_user_errors():
    model = random_model(n_layers=2, n_heads=2, dtype=torch.float32)
    task = induction_task(n_prompts=3, period=4, vocab_size=40, bos_token_id=47)
    with pytest.raises(InputError, match="must return a scalar"):
        edge_attribution(model, task.clean_tokens, task.corrupted_tokens, lambda lg: lg[:, -1, 0])
    with pytest.raises(InputError, match="differ in shape"):
        edge_attribution(model, task.clean_tokens, task.corrupted_tokens[:, :-1], task.metric)
    with pytest.raises(InputError, match="unknown method"):
        find_circuit(model, task, method="acdc")
    with pytest.raises(InputError, match="does not depend on the logits"):
        edge_attribution(model, task.clean_tokens, task.corrupted_tokens, lambda lg: torch.tensor(1.0))


def test_across_steps_names_the_saved_steps(run):
    with pytest.raises(InputError, match=r"step 3 has no checkpoint .* saved steps: 5, 10, 15"):
        circuits_across_steps(run, "induction", steps=[3])
