"""The recorder is the store's capture path plus a step index: same hooks, stop layer and shapes as
`workbench cache`; ln_final and split-input hooks record; the probe task is in the file."""
from __future__ import annotations

import torch

from helpers import cli
from workbench.store import ActivationStore, Recording
from workbench.store.capture import Capture
from workbench.training.config import load_config

HOOKS = ["hook_embed", "blocks.0.hook_k_input", "ln_final.hook_scale", "ln_final.hook_normalized"]


def test_recording_of_final_layernorm_and_split_inputs_equals_the_model(tmp_path, capsys):
    from workbench import PhiModel
    from workbench.training.trainer import train
    run = tmp_path / "run"
    cfg = load_config("tiny").override(system__num_threads=0, schedule__max_steps=2, checkpoint__every=0,
                                       record__hooks=HOOKS, record__dtype="float32", data__max_corpus_bytes=20000)
    train(cfg, run, progress=False)
    rec = ActivationStore.open(run / "activations.h5")
    assert isinstance(rec, Recording) and rec.steps == [0, 1, 2] and len(rec) == 3
    a = rec.attrs
    assert (a["probe_period"], a["probe_repeats"], a["probe_offset"], a["probe_repeated_rows"],
            a["probe_val_rows"]) == (6, 2, 1, 2, 1)
    assert a["probe_vocab_size"] == 300 and a["train_config"]["record"]["hooks"] == HOOKS
    assert a["model_config"]["d_model"] == 32 and a["tokenizer"]
    model = PhiModel.from_pretrained(run / "checkpoints" / "step_00000002")
    model.set_use_split_qkv_input(True)
    with torch.no_grad():
        _, ref = model.run_with_cache(rec.tokens[:], names_filter=HOOKS)
    for h in HOOKS:
        torch.testing.assert_close(rec.at_step(2)[h][:], ref[h], atol=1e-5, rtol=1e-5)
    assert rec.verify() == 3
    code, stdout, err = cli(capsys, "inspect", run / "activations.h5")
    assert code == 0, err
    assert "model        training run 'tiny'  (n_layers=2, d_model=32" in stdout and "model        ?" not in stdout
    assert ("probe task   2 rows of a random block of 6 tokens repeated 2 times (offset 1, ids < 300) "
            "+ 1 validation row") in stdout
    assert "recording    3 steps (0..2) x 3 probe rows x 13 tokens" in stdout


def test_capture_stops_where_the_hooks_end(tiny_model):
    assert Capture(tiny_model, "hook_embed").stop == 0              # the recorder once ran the whole model
    assert Capture(tiny_model, "blocks.0.*").stop == 1
    assert Capture(tiny_model, ["blocks.1.hook_resid_post"]).stop is None     # the last block: the whole stack
    full = Capture(tiny_model, "ln_final.hook_scale")
    assert full.stop is None and full.return_type == "logits"
    assert Capture(tiny_model, "blocks.*.hook_q_input").switched_on == ["set_use_split_qkv_input"]
    assert "blocks.0.hook_q_input" not in Capture(tiny_model, "blocks.0.*").names
    tiny_model.set_use_attn_in(True)           # switched on by the user: a glob includes it, nothing to switch
    cap = Capture(tiny_model, "blocks.0.*")
    assert "blocks.0.hook_attn_in" in cap.names and cap.switched_on == []
    assert tiny_model.cfg.use_split_qkv_input is False
    acts = Capture(tiny_model, "blocks.0.hook_v_input")(torch.zeros(1, 4, dtype=torch.long))
    assert acts["blocks.0.hook_v_input"].shape == (1, 4, 2, 160)
    assert tiny_model.cfg.use_split_qkv_input is False                  # switched back off after the forward
