"""Checkpoints in and out: HF weight formats, precise errors, the hub, save_pretrained round trips."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import save_checkpoint
from workbench.model import PhiModel
from workbench.model.hf_format import CheckpointError

TOKENS = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("fmt", ["safetensors", "sharded", "bin"])
@torch.no_grad()
def test_loads_every_hf_weight_format(tiny_hf, tmp_path, fmt):
    kwargs = {"safetensors": {}, "sharded": {"max_shard_size": "300KB"}, "bin": {}}[fmt]
    save_checkpoint(tiny_hf, tmp_path, **kwargs)
    if fmt == "bin":
        # transformers 5 always writes safetensors (safe_serialization=False is ignored), so write
        # the legacy pickle the way transformers 4 did: one state dict in pytorch_model.bin.
        (tmp_path / "model.safetensors").unlink()
        torch.save(tiny_hf.state_dict(), tmp_path / "pytorch_model.bin")
    expected = {"safetensors": "model.safetensors", "sharded": "model.safetensors.index.json",
                "bin": "pytorch_model.bin"}[fmt]
    assert (tmp_path / expected).is_file()
    if fmt == "sharded":
        assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    model = PhiModel.from_pretrained(tmp_path)
    torch.testing.assert_close(model(TOKENS), tiny_hf(TOKENS).logits, atol=1e-5, rtol=0)
    assert model.tokenizer is not None and not model.training


def _edit_weights(folder: Path, edit) -> None:
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.fixture()
def checkpoint_copy(tiny_hf, tmp_path) -> Path:
    return save_checkpoint(tiny_hf, tmp_path, with_tokenizer=False)


def test_missing_tensor_is_named(checkpoint_copy):
    _edit_weights(checkpoint_copy, lambda t: t.pop("model.layers.1.mlp.fc2.bias"))
    with pytest.raises(CheckpointError, match=r"missing tensors: model\.layers\.1\.mlp\.fc2\.bias"):
        PhiModel.from_pretrained(checkpoint_copy)


def test_unexpected_tensor_is_named(checkpoint_copy):
    _edit_weights(checkpoint_copy, lambda t: t.update({"model.layers.0.extra.weight": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensors: model\.layers\.0\.extra\.weight"):
        PhiModel.from_pretrained(checkpoint_copy)


def test_misshaped_tensor_names_both_shapes(checkpoint_copy):
    def shrink(t):
        t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][:, :100].clone()
    _edit_weights(checkpoint_copy, shrink)
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.self_attn\.k_proj\.weight has shape "
                                              r"\[160, 100\] in the checkpoint but the config needs \[160, 160\]"):
        PhiModel.from_pretrained(checkpoint_copy)


def test_rotary_inv_freq_buffers_of_old_checkpoints_are_ignored(checkpoint_copy, tiny_hf):
    _edit_weights(checkpoint_copy, lambda t: t.update({"model.layers.0.self_attn.rotary_emb.inv_freq":
                                                       torch.zeros(16)}))
    model = PhiModel.from_pretrained(checkpoint_copy)
    torch.testing.assert_close(model(TOKENS), tiny_hf(TOKENS).logits, atol=1e-5, rtol=0)


def test_folder_problems_are_clear(checkpoint_copy, tmp_path):
    (checkpoint_copy / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights in .*model.safetensors"):
        PhiModel.from_pretrained(checkpoint_copy)
    with pytest.raises(CheckpointError, match="is a file; pass the checkpoint folder"):
        PhiModel.from_pretrained(checkpoint_copy / "config.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no config.json and no training checkpoints"):
        PhiModel.from_pretrained(empty)
    with pytest.raises(CheckpointError, match="no checkpoint folder at ./nowhere"):
        PhiModel.from_pretrained("./nowhere")


def test_sharded_index_naming_a_missing_shard(tiny_hf, tmp_path):
    save_checkpoint(tiny_hf, tmp_path, with_tokenizer=False, max_shard_size="300KB")
    next(tmp_path.glob("model-*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match="lists shard files that are missing"):
        PhiModel.from_pretrained(tmp_path)


def test_hub_id_offline_is_one_clear_line():
    """A fresh interpreter, as a user's would be: HF_HUB_OFFLINE is read when huggingface_hub loads."""
    code = ("from workbench import PhiModel\n"
            "try:\n    PhiModel.from_pretrained('nobody-here/no-such-phi-model')\n"
            "except Exception as e:\n    print(type(e).__name__ + ': ' + str(e))\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).parents[1])
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1, out.stdout + out.stderr
    assert lines[0].startswith("CheckpointError: could not fetch 'nobody-here/no-such-phi-model'")
    assert "offline, pass a local HF-format folder" in lines[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_save_pretrained_loads_in_transformers_with_identical_logits(tiny_model, tmp_path, dtype):
    from transformers import PhiForCausalLM
    model = tiny_model.to(dtype)
    model.save_pretrained(tmp_path)
    hf = PhiForCausalLM.from_pretrained(tmp_path, dtype=dtype).eval()
    assert hf.dtype == dtype
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == str(dtype)[6:]
    torch.testing.assert_close(hf(TOKENS).logits, model(TOKENS), atol=1e-5 if dtype == torch.float32 else 0.1,
                               rtol=0)


@pytest.mark.parametrize("shard", [None, 200_000])
@torch.no_grad()
def test_save_then_load_round_trips_exactly(tiny_model, tmp_path, shard):
    tiny_model.save_pretrained(tmp_path, max_shard_size=shard)
    assert (tmp_path / ("model.safetensors" if shard is None else "model.safetensors.index.json")).is_file()
    assert not list(tmp_path.glob("*.tmp"))
    again = PhiModel.from_pretrained(tmp_path)
    for (k, a), (k2, b) in zip(tiny_model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    assert again.to_string(again.to_tokens("def f(x):")[0]) == "def f(x):"
    assert again.cfg.to_dict() | {"name": ""} == tiny_model.cfg.to_dict() | {"name": ""}


def test_resaving_a_sharded_folder_as_one_file_leaves_no_stale_shards(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path, max_shard_size=200_000)
    tiny_model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("model*")) == ["model.safetensors"]
    PhiModel.from_pretrained(tmp_path)


def test_loads_with_dtype_and_device(tiny_checkpoint):
    model = PhiModel.from_pretrained(tiny_checkpoint, dtype=torch.float16, device="cpu")
    assert model.dtype == torch.float16 and model.cfg.device == "cpu"


def test_training_run_folder_loads_its_newest_checkpoint(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "checkpoints" / "step_00000010")
    with torch.no_grad():
        tiny_model.unembed.bias.add_(1.0)
    tiny_model.save_pretrained(tmp_path / "checkpoints" / "step_00000020")
    loaded = PhiModel.from_pretrained(tmp_path)
    assert torch.equal(loaded.unembed.bias, tiny_model.unembed.bias)
