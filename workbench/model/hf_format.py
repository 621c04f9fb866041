"""HF-format checkpoints in and out.

Loading builds the model on the meta device and assigns the loaded tensors
(``load_state_dict(assign=True)``), so phi-2 needs one copy of its weights in
memory, not two. Every tensor name and shape is checked against the config
before anything is read, and a mismatch names the tensor and both shapes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator, Mapping, Optional, Union

import torch

from .config import PhiConfig
from .model import PhiModel
from .weight_map import from_hf, hf_names, to_hf

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as a Phi model; the message says why and what to do."""


def resolve_checkpoint(path_or_hub_id: Union[str, Path]) -> Path:
    """A local folder as is; anything else is treated as a hub id and downloaded."""
    path = Path(path_or_hub_id).expanduser()
    if path.is_dir():
        return path if (path / "config.json").is_file() else latest_run_checkpoint(path)
    if path.exists():
        raise CheckpointError(f"{path} is a file; pass the checkpoint folder that holds config.json")
    name = str(path_or_hub_id)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise CheckpointError(f"no checkpoint folder at {name}")
    try:
        from huggingface_hub import snapshot_download
        local = snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt"])
    except Exception as e:  # offline, unknown repo, no permission: one clear line
        raise CheckpointError(
            f"could not fetch {name!r} from the Hugging Face hub ({type(e).__name__}); "
            "if you are offline, pass a local HF-format folder with config.json and model.safetensors") from None
    return Path(local)


def latest_run_checkpoint(run_dir: Path) -> Path:
    """The newest ``RUN/checkpoints/step_XXXXXXXX/`` of a training run folder."""
    steps = sorted(p for p in (run_dir / "checkpoints").glob("step_*") if (p / "config.json").is_file())
    if not steps:
        raise CheckpointError(f"{run_dir} holds no config.json and no training checkpoints "
                              "(checkpoints/step_*/config.json): pass an HF-format folder or a run folder")
    return steps[-1]


class _LazyTensors(Mapping):
    """``name -> tensor`` over safetensors or pytorch_model.bin files, read on access."""

    def __init__(self, folder: Path, device: str) -> None:
        self.where: dict[str, object] = {}
        self.shapes: dict[str, tuple] = {}
        self._open = []
        files = _weight_files(folder)
        for f in files:
            if f.suffix == ".safetensors":
                from safetensors import safe_open
                h = safe_open(str(f), framework="pt", device=device)
                self._open.append(h)
                for k in h.keys():
                    self.where[k] = h
                    self.shapes[k] = tuple(h.get_slice(k).get_shape())
            else:
                sd = torch.load(str(f), map_location="cpu", weights_only=True, mmap=True)
                for k, v in sd.items():
                    self.where[k] = sd
                    self.shapes[k] = tuple(v.shape)

    def __getitem__(self, k: str) -> torch.Tensor:
        src = self.where[k]
        return src[k] if isinstance(src, dict) else src.get_tensor(k)

    def __iter__(self) -> Iterator[str]:
        return iter(self.where)

    def __len__(self) -> int:
        return len(self.where)


def _weight_files(folder: Path) -> list[Path]:
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            weight_map = json.loads((folder / index).read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not (folder / f).is_file()]
            if missing:
                raise CheckpointError(f"{index} in {folder} lists shard files that are missing: {missing}")
            return [folder / f for f in files]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (folder / single).is_file():
            return [folder / single]
    raise CheckpointError(f"no weights in {folder}: expected one of {', '.join(WEIGHT_FILES)}")


def load_pretrained(path_or_hub_id: Union[str, Path], dtype: Optional[torch.dtype] = None,
                    device: Optional[Union[str, torch.device]] = None) -> PhiModel:
    """Load a Phi checkpoint in HF format; returns the model in eval mode.

    ``dtype`` defaults to float32 (exact parity with ``transformers``' fp32
    logits); pass ``torch.bfloat16`` to halve memory. The tokenizer is loaded
    from ``tokenizer.json`` when the folder has one.
    """
    folder = resolve_checkpoint(path_or_hub_id)
    cfg = PhiConfig.from_hf(folder)
    if cfg.name == "custom":
        cfg.name = str(path_or_hub_id)
    dtype = dtype or torch.float32
    device = str(device) if device is not None else "cpu"
    tensors = _LazyTensors(folder, device="cpu" if device.startswith("mps") else device)
    _check_names_and_shapes(tensors, cfg)
    state = {k: v.to(dtype) for k, v in from_hf(tensors, cfg.n_layers).items()}
    with torch.device("meta"):
        model = PhiModel(cfg)
    model.load_state_dict(state, assign=True, strict=True)
    model.to(device)
    if (folder / "tokenizer.json").is_file():
        from .tokenizer import Tokenizer
        model.tokenizer = Tokenizer.from_file(folder / "tokenizer.json", bos_token_id=cfg.bos_token_id)
    return model.eval()


def _check_names_and_shapes(tensors: _LazyTensors, cfg: PhiConfig) -> None:
    with torch.device("meta"):
        meta = PhiModel(cfg)
    expected = {k: tuple(v.shape) for k, v in to_hf(meta.state_dict(), cfg.n_layers).items()}
    assert set(expected) == set(hf_names(cfg.n_layers))
    # Old Phi checkpoints carry rotary inv_freq buffers; they are recomputed, not loaded.
    found = {k: s for k, s in tensors.shapes.items() if not k.endswith("inv_freq")}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [(k, found[k], expected[k]) for k in expected if k in found and found[k] != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
    for k, got, want in wrong[:8]:
        problems.append(f"{k} has shape {list(got)} in the checkpoint but the config needs {list(want)}")
    if problems:
        raise CheckpointError("checkpoint does not match its config.json: " + "; ".join(problems))


def save_pretrained(model: PhiModel, directory: Union[str, Path], max_shard_size: Optional[int] = None) -> None:
    """Write ``config.json`` and safetensors (sharded above ``max_shard_size`` bytes), plus the tokenizer.

    Each file is written to a temporary name and renamed, so a crash never
    leaves a half-written file under a final name.
    """
    from safetensors.torch import save_file
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu() for k, v in to_hf(model.state_dict(), model.cfg.n_layers).items()}
    hf_cfg = model.cfg.to_hf()
    hf_cfg["torch_dtype"] = hf_cfg["dtype"] = str(model.dtype).replace("torch.", "")
    shards = _shard(tensors, max_shard_size)
    for old in directory.glob("model*.safetensors*"):
        old.unlink()
    if len(shards) == 1:
        _atomic(directory / "model.safetensors", lambda p: save_file(shards[0], p, metadata={"format": "pt"}))
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            _atomic(directory / name, lambda p, s=shard: save_file(s, p, metadata={"format": "pt"}))
            weight_map.update({k: name for k in shard})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        _atomic(directory / "model.safetensors.index.json",
                lambda p: Path(p).write_text(json.dumps(index, indent=2)))
    if model.tokenizer is not None:
        _atomic(directory / "tokenizer.json", lambda p: model.tokenizer.tok.save(p))
    _atomic(directory / "config.json", lambda p: Path(p).write_text(json.dumps(hf_cfg, indent=2)))


def _shard(tensors: dict[str, torch.Tensor], max_size: Optional[int]) -> list[dict[str, torch.Tensor]]:
    if not max_size:
        return [tensors]
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, t in tensors.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_size:
            shards.append({})
            size = 0
        shards[-1][k] = t
        size += n
    return shards


def _atomic(final: Path, write) -> None:
    tmp = final.with_name(final.name + ".tmp")
    write(str(tmp))
    os.replace(tmp, final)
