"""Checkpoints in and out: every HF weight format and dtype, one copy of the weights, the hub, run folders,
save_pretrained round trips, and every bad model file answered with one line that names it."""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.overrides import TorchFunctionMode
from torch.profiler import ProfilerActivity, profile

import workbench.model.hf_format as hf_format
import workbench.model.weight_files as weight_files
from helpers import assert_one_line_error, cli, save_checkpoint
from workbench.errors import DamagedFileError, InputError, MissingFileError, UserError
from workbench.model import PhiConfig, PhiModel
from workbench.model.hf_format import load_pretrained
from workbench.model.meta_init import meta_device
from workbench.model.weight_map import from_hf, hf_shapes, to_hf

TOKENS = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(3))
FORMATS = ["safetensors", "sharded", "bin", "bin-sharded"]


def write_checkpoint(hf, folder: Path, fmt: str, dtype: torch.dtype) -> Path:
    """``hf``'s weights in ``dtype`` as one safetensors file, safetensors shards, or a legacy pytorch_model.bin."""
    hf = hf.to(dtype)
    try:
        save_checkpoint(hf, folder, **({"max_shard_size": "300KB"} if fmt == "sharded" else {}))
        if fmt.startswith("bin"):
            # transformers 5 always writes safetensors (safe_serialization=False is ignored), so write
            # the legacy pickles the way transformers 4 did: pytorch_model.bin, or shards and an index.
            (folder / "model.safetensors").unlink()
            state = hf.state_dict()
            if fmt == "bin":
                torch.save(state, folder / "pytorch_model.bin")
            else:
                names = list(state)
                halves = {"pytorch_model-00001-of-00002.bin": names[::2], "pytorch_model-00002-of-00002.bin": names[1::2]}
                for file, part in halves.items():
                    torch.save({k: state[k] for k in part}, folder / file)
                index = {"metadata": {}, "weight_map": {k: file for file, part in halves.items() for k in part}}
                (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    finally:
        hf.to(torch.float32)
    if fmt == "sharded":
        assert len(list(folder.glob("model-*.safetensors"))) > 1
    return folder


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


# -- every format and dtype loads exactly ------------------------------------------------------------
@pytest.mark.parametrize("stored,loaded", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                           (torch.bfloat16, torch.bfloat16)])
@pytest.mark.parametrize("fmt", FORMATS)
@torch.no_grad()
def test_every_format_and_dtype_loads_what_transformers_loads(tiny_hf, tmp_path, fmt, stored, loaded):
    from transformers import PhiForCausalLM
    write_checkpoint(tiny_hf, tmp_path, fmt, stored)
    model = PhiModel.from_pretrained(tmp_path, dtype=loaded)
    hf = PhiForCausalLM.from_pretrained(tmp_path, dtype=loaded).eval()
    ours = to_hf(model.state_dict(), model.cfg.n_layers)
    theirs = hf.state_dict()
    assert set(ours) == set(theirs)
    for name, t in theirs.items():   # bit-equal, whatever the conversion
        assert ours[name].dtype == loaded and torch.equal(ours[name], t), name
    if loaded == torch.float32:
        torch.testing.assert_close(model(TOKENS), hf(TOKENS).logits, atol=1e-5, rtol=0)
    if stored == torch.float32:
        torch.testing.assert_close(model(TOKENS), tiny_hf(TOKENS).logits, atol=1e-5, rtol=0)
    assert model.tokenizer is not None and not model.training and model.dtype == loaded
    assert model.cfg.device == "cpu" and all(p.device.type == "cpu" for p in model.parameters())


def test_the_shape_table_matches_the_model(tiny_hf):
    for cfg in (PhiConfig.from_name("phi-2"), PhiConfig.from_name("tiny"), PhiConfig.from_name("small")):
        with torch.device("meta"):
            meta = PhiModel(cfg)
        assert {k: tuple(v.shape) for k, v in to_hf(meta.state_dict(), cfg.n_layers).items()} == hf_shapes(cfg)
    assert set(hf_shapes(PhiConfig.from_name("tiny"))) == {k for k in tiny_hf.state_dict()}


@torch.no_grad()
def test_an_in_memory_transformers_model_converts_exactly(tiny_hf):
    cfg = PhiConfig.from_hf(tiny_hf.config.to_dict())
    model = PhiModel(cfg)
    model.load_state_dict(from_hf(tiny_hf.state_dict(), cfg))
    torch.testing.assert_close(model(TOKENS), tiny_hf(TOKENS).logits, atol=1e-5, rtol=0)
    back = to_hf(model.state_dict(), cfg.n_layers)
    assert all(torch.equal(back[k], v) for k, v in tiny_hf.state_dict().items())
    with pytest.raises(ValueError, match="shape"):
        from_hf(tiny_hf.state_dict(), PhiConfig.from_name("small"))


# -- one copy of the weights ----------------------------------------------------------------------
def allocated_peak_and_end(fn, trace: Path) -> tuple[int, int]:
    """Peak and final bytes held by torch's CPU allocator while ``fn`` runs, counted from its start.

    Read from the profiler's allocation events, so it is exact and independent of the machine's load.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    prof.export_chrome_trace(str(trace))
    events = [e for e in json.loads(trace.read_text())["traceEvents"] if e.get("name") == "[memory]"]
    now = peak = 0
    for e in sorted(events, key=lambda e: e["ts"]):
        if e["args"]["Device Type"] == 0:   # CPU
            now += e["args"]["Bytes"]
            peak = max(peak, now)
    return peak, now


@pytest.mark.parametrize("stored,loaded", [(torch.bfloat16, torch.float32), (torch.float32, torch.float32),
                                           (torch.bfloat16, torch.bfloat16)])
@pytest.mark.parametrize("fmt", ["safetensors", "sharded"])
def test_a_load_holds_the_weights_plus_one_staging_buffer(tiny_hf, tmp_path, monkeypatch, fmt, stored, loaded):
    write_checkpoint(tiny_hf, tmp_path / "ckpt", fmt, stored)
    staging = 64 << 10
    monkeypatch.setattr(weight_files, "STAGING_BYTES", staging)
    # One reader, in this thread: the profiler sees only the thread that runs it (n readers hold n buffers).
    monkeypatch.setattr(hf_format, "LOAD_WORKERS", 1)
    PhiModel.from_pretrained(tmp_path / "ckpt", dtype=loaded)   # warm up: lazy imports, caches
    box = []
    peak, end = allocated_peak_and_end(lambda: box.append(PhiModel.from_pretrained(tmp_path / "ckpt", dtype=loaded)),
                                       tmp_path / "trace.json")
    weights = weight_bytes(box[0])
    assert weights > 1_500_000   # MBs: large against the staging buffer
    # The model owns its parameters (allocated during the load, not views of a mapped file) and nothing
    # else survives; the peak is the weights plus the staging buffer, needed only to convert.
    # (A few bytes of bookkeeping pass through the allocator too: 16 measured; 4 KiB allowed.)
    assert end == weights
    assert peak <= weights + (staging if stored != loaded else 0) + 4096


@pytest.mark.parametrize("workers", [1, 2, 5])
def test_any_number_of_readers_loads_the_same_bits(tiny_hf, tiny_checkpoint, tmp_path, monkeypatch, workers):
    write_checkpoint(tiny_hf, tmp_path, "sharded", torch.bfloat16)
    monkeypatch.setattr(weight_files, "STAGING_BYTES", 32 << 10)   # several chunks per tensor
    monkeypatch.setattr(hf_format, "LOAD_WORKERS", workers)
    model = PhiModel.from_pretrained(tmp_path)
    expected = {k: v.to(torch.bfloat16).float() for k, v in PhiModel.from_pretrained(tiny_checkpoint).state_dict().items()}
    for k, v in model.state_dict().items():
        assert torch.equal(v, expected[k]), k


@pytest.mark.parametrize("workers", [1, 3])
def test_a_file_cut_while_loading_is_one_clear_error(tiny_checkpoint, tmp_path, monkeypatch, workers):
    """The header was checked, then the file shrank (a copy still running): the reader says so, whichever thread."""
    shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "model.safetensors"
    original = weight_files.read_safetensors_header

    def header_then_cut(p):
        found = original(p)
        _cut(p, 0.5)
        return found
    monkeypatch.setattr(weight_files, "read_safetensors_header", header_then_cut)
    monkeypatch.setattr(hf_format, "LOAD_WORKERS", workers)
    with pytest.raises(DamagedFileError, match=rf"{path} is damaged or incomplete \(it ended while its tensors"):
        PhiModel.from_pretrained(tmp_path / "ckpt")


def test_parameters_do_not_alias_the_file(tiny_checkpoint):
    model = PhiModel.from_pretrained(tiny_checkpoint)
    ptrs = [p.data_ptr() for p in model.parameters()]
    assert len(set(ptrs)) == len(ptrs)
    before = model.embed.weight.clone()
    with torch.no_grad():
        model.embed.weight.add_(1.0)   # writable, private memory
    assert torch.equal(PhiModel.from_pretrained(tiny_checkpoint).embed.weight, before)


# -- where a checkpoint comes from ------------------------------------------------------------------
def test_folder_problems_are_clear(tiny_hf, tmp_path):
    ckpt = save_checkpoint(tiny_hf, tmp_path / "ckpt", with_tokenizer=False)
    with pytest.raises(MissingFileError, match="is a file; pass the checkpoint folder"):
        PhiModel.from_pretrained(ckpt / "config.json")
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(MissingFileError, match="no weights in .*model.safetensors"):
        PhiModel.from_pretrained(ckpt)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingFileError, match="no config.json and no training checkpoints"):
        PhiModel.from_pretrained(empty)
    with pytest.raises(MissingFileError, match="no checkpoint folder at ./nowhere"):
        PhiModel.from_pretrained("./nowhere")


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
    assert lines[0].startswith("MissingFileError: could not fetch 'nobody-here/no-such-phi-model'")
    assert "offline, pass a local HF-format folder" in lines[0]


def test_training_run_folder_loads_its_newest_checkpoint_and_sets_run_dir(tiny_model, tmp_path, monkeypatch):
    run = tmp_path / "run"
    tiny_model.save_pretrained(run / "checkpoints" / "step_00000010")
    with torch.no_grad():
        tiny_model.unembed.bias.add_(1.0)
    tiny_model.save_pretrained(run / "checkpoints" / "step_00000020")
    loaded = PhiModel.from_pretrained(run)
    assert torch.equal(loaded.unembed.bias, tiny_model.unembed.bias)
    assert loaded.run_dir == run.resolve()
    assert PhiModel.from_pretrained(run / "checkpoints" / "step_00000010").run_dir == run.resolve()
    monkeypatch.chdir(run / "checkpoints" / "step_00000010")   # a relative path inside the run
    assert PhiModel.from_pretrained(".").run_dir == run.resolve()


def test_run_dir_is_none_outside_a_run(tiny_checkpoint, tiny_model):
    assert tiny_model.run_dir is None
    assert PhiModel(PhiConfig.from_name("tiny")).run_dir is None


def test_loads_with_dtype_and_device(tiny_checkpoint):
    model = PhiModel.from_pretrained(tiny_checkpoint, dtype=torch.float16, device="cpu")
    assert model.dtype == torch.float16 and model.cfg.device == "cpu"
    assert PhiModel.from_pretrained(tiny_checkpoint, dtype="bfloat16").dtype == torch.bfloat16
    with pytest.raises(InputError, match="dtype must be a floating-point torch dtype.*int8"):
        PhiModel.from_pretrained(tiny_checkpoint, dtype=torch.int8)
    with pytest.raises(InputError, match="device 'bogus' is not a torch device"):
        PhiModel.from_pretrained(tiny_checkpoint, device="bogus")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="device 'cuda' is not available on this machine"):
            PhiModel.from_pretrained(tiny_checkpoint, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the GPU machine)")
@torch.no_grad()
def test_loads_straight_onto_a_gpu(tiny_checkpoint, tiny_model):
    model = PhiModel.from_pretrained(tiny_checkpoint, device="cuda")
    assert all(p.device.type == "cuda" for p in model.parameters()) and model.cfg.device.startswith("cuda")
    torch.testing.assert_close(model(TOKENS.cuda()).cpu(), tiny_model(TOKENS), atol=1e-4, rtol=0)


# -- hf_format knows no model class --------------------------------------------------------------------
def test_the_loader_modules_do_not_import_the_model():
    """The model imports hf_format at the top; hf_format, weight_files and weight_map take the class instead."""
    root = Path(__file__).parents[1] / "workbench" / "model"
    for module in ("hf_format.py", "weight_files.py", "weight_map.py", "config.py"):
        tree = ast.parse((root / module).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert not (node.level == 1 and node.module == "model"), module
                assert node.module != "workbench.model.model", module
        # Imports at the top: none inside a function, except the hub download's (measured to pay).
        for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
            inner = [n for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))]
            assert not inner or fn.name == "_download", (module, fn.name)


def test_meta_device_skips_initialisers_only_on_meta():
    """normal_ on meta runs torch's Python reference, whose first use imports sympy (seconds): skipped.

    A recording mode below meta_device() sees what meta_device() lets through.
    """
    class Seen(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.names.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    with Seen() as seen, meta_device():
        model = PhiModel(PhiConfig.from_name("tiny"))
        real = torch.nn.init.normal_(torch.zeros(4, device="cpu"))
    assert all(p.is_meta for p in model.parameters())
    assert real.abs().sum() > 0                           # a real tensor is still initialised
    assert seen.names.count("normal_") == 1               # ... and only that one got through
    assert "kaiming_uniform_" not in seen.names and "uniform_" not in seen.names


def test_load_pretrained_builds_the_class_it_is_given(tiny_checkpoint):
    class Sub(PhiModel):
        pass
    model = load_pretrained(tiny_checkpoint, model_cls=Sub)
    assert type(model) is Sub and Sub.from_pretrained(tiny_checkpoint).__class__ is Sub


def test_the_old_error_name_still_catches_with_a_warning(tiny_hf, tmp_path):
    import workbench.model.hf_format as hf_format
    with pytest.warns(FutureWarning, match="CheckpointError is deprecated"):
        old = hf_format.CheckpointError
    with pytest.raises(old):
        PhiModel.from_pretrained(tmp_path / "nowhere")


# -- save_pretrained ----------------------------------------------------------------------------------
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


def test_rotary_inv_freq_buffers_of_old_checkpoints_are_ignored(tiny_hf, tmp_path):
    ckpt = save_checkpoint(tiny_hf, tmp_path, with_tokenizer=False)
    _edit_weights(ckpt, lambda t: t.update({"model.layers.0.self_attn.rotary_emb.inv_freq": torch.zeros(16)}))
    with torch.no_grad():
        torch.testing.assert_close(PhiModel.from_pretrained(ckpt)(TOKENS), tiny_hf(TOKENS).logits, atol=1e-5, rtol=0)


# -- every bad model file: one line naming the file, through the API and the CLI ----------------------
def _edit_weights(folder: Path, edit) -> None:
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def _edit_config(folder: Path, edit) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    edit(cfg)
    (folder / "config.json").write_text(json.dumps(cfg))


def _cut(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _shrink_k(t):
    t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][:, :100].clone()


def _garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(4096))


def _bin_garbage(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not really a zip" * 50)


def _lose_a_shard(folder: Path) -> None:
    PhiModel.from_pretrained(folder).save_pretrained(folder, max_shard_size=300_000)   # replaces the file
    sorted(folder.glob("model-*.safetensors"))[1].unlink()


def _bad_index(folder: Path) -> None:
    _lose_a_shard(folder)
    (folder / "model.safetensors.index.json").write_text('{"weight_map": {"a": ')


BAD = {  # name -> (how to break a good checkpoint folder, error type, what the line must say)
    "truncated safetensors": (lambda f: _cut(f / "model.safetensors", 0.6), DamagedFileError,
                              ["model.safetensors is damaged or incomplete", "cut short", "save the checkpoint again"]),
    "garbage safetensors": (lambda f: _garbage(f / "model.safetensors"), DamagedFileError,
                            ["model.safetensors is damaged or incomplete", "not a safetensors file"]),
    "safetensors header not JSON": (lambda f: (f / "model.safetensors").write_bytes(
        (20).to_bytes(8, "little") + b"{not json at all....." + b"\0" * 64), DamagedFileError,
        ["model.safetensors", "header is not valid JSON"]),
    "truncated tokenizer.json": (lambda f: _cut(f / "tokenizer.json", 0.5), DamagedFileError,
                                 ["tokenizer.json is not a readable tokenizer.json"]),
    "hidden_size a string": (lambda f: _edit_config(f, lambda c: c.update(hidden_size="160")), InputError,
                             ["config.json: hidden_size must be a positive integer, got '160'"]),
    "zero heads": (lambda f: _edit_config(f, lambda c: c.update(num_attention_heads=0)), InputError,
                   ["config.json: num_attention_heads must be a positive integer, got 0"]),
    "negative mlp width": (lambda f: _edit_config(f, lambda c: c.update(intermediate_size=-640)), InputError,
                           ["config.json: intermediate_size must be a positive integer, got -640"]),
    "zero vocab": (lambda f: _edit_config(f, lambda c: c.update(vocab_size=0)), InputError,
                   ["vocab_size must be a positive integer, got 0"]),
    "zero layer norm eps": (lambda f: _edit_config(f, lambda c: c.update(layer_norm_eps=-1e-5)), InputError,
                            ["layer_norm_eps must be a number at least 0"]),
    "missing hidden_size": (lambda f: _edit_config(f, lambda c: c.pop("hidden_size")), InputError,
                            ["config.json has no hidden_size", "a Phi config.json needs"]),
    "config not JSON": (lambda f: _cut(f / "config.json", 0.5), DamagedFileError,
                        ["config.json is not valid JSON", "line"]),
    "config a list": (lambda f: (f / "config.json").write_text("[1, 2]"), InputError,
                      ["config.json holds a JSON list"]),
    "tensors do not match config": (lambda f: _edit_weights(f, _shrink_k), InputError,
                                    ["do not match its config.json", "k_proj.weight has shape [160, 100]",
                                     "the config needs [160, 160]"]),
    "missing tensor": (lambda f: _edit_weights(f, lambda t: t.pop("model.layers.1.mlp.fc2.bias")), InputError,
                       ["missing tensors: model.layers.1.mlp.fc2.bias"]),
    "unexpected tensor": (lambda f: _edit_weights(f, lambda t: t.update({"model.layers.0.extra.weight":
                                                                          torch.zeros(3)})), InputError,
                          ["unexpected tensors: model.layers.0.extra.weight"]),
    "index names missing shards": (_lose_a_shard, MissingFileError,
                                   ["model.safetensors.index.json names shard files that are not in",
                                    "model-00002-of-"]),
    "index not JSON": (_bad_index, DamagedFileError, ["model.safetensors.index.json is damaged", "not valid JSON"]),
    "garbage pytorch_model.bin": (_bin_garbage, DamagedFileError,
                                  ["pytorch_model.bin is damaged or incomplete", "not a readable PyTorch state dict"]),
}


@pytest.fixture()
def bad_checkpoint(request, tiny_checkpoint, tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, folder)
    breaker, error, needles = BAD[request.param]
    breaker(folder)
    return folder, error, needles


@pytest.mark.parametrize("bad_checkpoint", list(BAD), indirect=True)
def test_bad_model_file_raises_a_user_error_naming_it(bad_checkpoint):
    folder, error, needles = bad_checkpoint
    with pytest.raises(error) as e:
        PhiModel.from_pretrained(folder)
    assert isinstance(e.value, UserError)
    message = str(e.value)
    assert "\n" not in message and str(folder) in message
    for n in needles:
        assert n in message


@pytest.mark.parametrize("bad_checkpoint", list(BAD), indirect=True)
def test_bad_model_file_is_one_line_in_the_cli(bad_checkpoint, capsys):
    folder, _, needles = bad_checkpoint
    code, _, err = cli(capsys, "demo", "--checkpoint", folder)
    assert_one_line_error(code, err, str(folder), *needles)


@pytest.mark.parametrize("bad_checkpoint", ["truncated safetensors", "zero heads"], indirect=True)
def test_bad_model_file_is_one_line_in_cache_and_writes_nothing(bad_checkpoint, tmp_path, capsys):
    folder, _, needles = bad_checkpoint
    (tmp_path / "in.txt").write_text("def f(x):\n    return x\n" * 40)
    code, _, err = cli(capsys, "cache", folder, "-i", tmp_path / "in.txt", "-k", "resid_post0",
                       "-o", tmp_path / "out.h5")
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "out.h5").exists()
