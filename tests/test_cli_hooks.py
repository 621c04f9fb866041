"""`workbench hooks MODEL`: the hook names and the shape each caches, from the config alone."""
from __future__ import annotations

from helpers import assert_one_line_error, cli


def test_lists_every_hook_point_with_its_shape(tiny_checkpoint, tiny_model, capsys):
    code, stdout, err = cli(capsys, "hooks", tiny_checkpoint, "--seq-len", 5)
    assert code == 0, err
    assert "2 layers, d_model 160, 2 heads of 80, d_mlp 640, vocab 512, context 256" in stdout
    lines = {ln.split()[0]: ln for ln in stdout.splitlines() if ln.startswith(("hook_", "blocks.", "ln_final"))}
    assert "[5, 160]" in lines["hook_embed"] and "[2, 5, 5]" in lines["blocks.{0..1}.attn.hook_pattern"]
    assert "[5, 2, 160]" in lines["blocks.{0..1}.hook_q_input"] and "split input" in lines["blocks.{0..1}.hook_q_input"]
    assert "[5, 1]" in lines["ln_final.hook_scale"]
    per_block = {n.split(".", 2)[2] for n in tiny_model.hook_dict if n.startswith("blocks.0.")}
    assert {k.split("}.", 1)[1] for k in lines if k.startswith("blocks.")} == per_block
    assert f"{len(tiny_model.hook_dict)} hook points" in stdout


def test_a_pattern_lists_names_one_by_one(tiny_checkpoint, capsys):
    code, stdout, err = cli(capsys, "hooks", tiny_checkpoint, "blocks.1.attn.hook_[qk]")
    assert code == 0, err
    names = [ln.split()[0] for ln in stdout.splitlines() if ln.startswith("blocks.")]
    assert names == ["blocks.1.attn.hook_q", "blocks.1.attn.hook_k"]
    code, _, err = cli(capsys, "hooks", tiny_checkpoint, "blocks.1.hook_reid_post")
    assert_one_line_error(code, err, "closest valid names", "blocks.1.hook_resid_post", "without a pattern")
    assert "hook_dict" not in err
    code, _, err = cli(capsys, "hooks", tiny_checkpoint, "--seq-len", 9999)
    assert_one_line_error(code, err, "--seq-len must be between 1 and the model's context (256)")
