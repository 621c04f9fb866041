"""HF-format checkpoints in and out.

Loading holds one copy of the weights. The config is read and every tensor
name and shape is checked against it before a byte of weights is read; then
each tensor of ours is allocated once, in its final dtype on its final device,
and filled straight from the file (q, k and v into their rows of the fused
projection), converting through one small staging buffer when the stored dtype
differs. The model is built on the meta device and takes those tensors as its
parameters (``load_state_dict(assign=True)``). Peak memory: the weights plus
``weight_files.STAGING_BYTES``; figures in docs/bench-load.md.

This module does not import the model (``load_pretrained`` takes its class), so
``model.py`` can import it at the top without a cycle.
"""
from __future__ import annotations

import json
import math
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar, Union

import torch
from safetensors.torch import save_file

from workbench.errors import InputError, MissingFileError, UserError

from .config import PhiConfig
from .meta_init import meta_device
from .tokenizer import Tokenizer
from .weight_files import WEIGHT_FILES, WeightFiles  # noqa: F401  (WEIGHT_FILES: its old home, still importable)
from .weight_map import hf_shapes, load_plan, to_hf

M = TypeVar("M", bound=torch.nn.Module)
# Threads that read a checkpoint. Measured on phi-1.5 (bf16 file -> fp32) on a busy 2-core machine:
# 2 threads took the load from 1.75x to 1.15-1.3x of transformers' time (which uses min(4, cores)).
LOAD_WORKERS = min(4, os.cpu_count() or 1)


def __getattr__(name: str) -> Any:
    if name == "CheckpointError":   # before the errors of workbench.errors; remove one release on
        warnings.warn("workbench.model.hf_format.CheckpointError is deprecated: catch workbench.errors.UserError "
                      "(or InputError, MissingFileError, DamagedFileError)", FutureWarning, stacklevel=2)
        return UserError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- finding the checkpoint ----------------------------------------------------------------------
def find_checkpoint(path_or_hub_id: Union[str, Path]) -> tuple[Path, Optional[Path]]:
    """The checkpoint folder to load, and the training run folder it belongs to (else None).

    A folder with ``config.json`` loads as is; a training run folder loads its newest
    ``checkpoints/step_*``; anything else that looks like ``owner/name`` is fetched from
    the Hugging Face hub.
    """
    path = Path(path_or_hub_id).expanduser()
    if path.is_dir():
        folder = path if (path / "config.json").is_file() else latest_run_checkpoint(path)
        return folder, run_folder_of(folder)
    if path.exists():
        raise MissingFileError(f"{path} is a file; pass the checkpoint folder that holds config.json")
    name = str(path_or_hub_id)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise MissingFileError(f"no checkpoint folder at {name}")
    return _download(name), None


def _download(hub_id: str) -> Path:
    # Imported here: huggingface_hub's download machinery costs ~0.45 s to import (measured on a
    # busy 2-core machine), which every local load would otherwise pay.
    from huggingface_hub import snapshot_download
    try:
        local = snapshot_download(hub_id, allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt"])
    except Exception as e:  # offline, unknown repo, no permission: one clear line
        raise MissingFileError(
            f"could not fetch {hub_id!r} from the Hugging Face hub ({type(e).__name__}); "
            "if you are offline, pass a local HF-format folder with config.json and model.safetensors") from None
    return Path(local)


def latest_run_checkpoint(run_dir: Path) -> Path:
    """The newest ``RUN/checkpoints/step_XXXXXXXX/`` of a training run folder."""
    steps = sorted(p for p in (run_dir / "checkpoints").glob("step_*") if (p / "config.json").is_file())
    if not steps:
        raise MissingFileError(f"{run_dir} holds no config.json and no training checkpoints "
                               "(checkpoints/step_*/config.json): pass an HF-format folder or a run folder")
    return steps[-1]


def run_folder_of(checkpoint: Path) -> Optional[Path]:
    """The training run folder (absolute) of a ``RUN/checkpoints/step_XXXXXXXX`` folder, else None."""
    folder = checkpoint.resolve()
    if folder.parent.name == "checkpoints" and re.fullmatch(r"step_\d+", folder.name):
        return folder.parent.parent
    return None


# -- reading ---------------------------------------------------------------------------------------
def check_against_config(shapes: dict[str, tuple[int, ...]], cfg: PhiConfig, folder: Path) -> None:
    """Every tensor the config needs is stored, with its shape, and nothing else (``InputError`` if not)."""
    expected = hf_shapes(cfg)
    # Old Phi checkpoints carry rotary inv_freq buffers; they are recomputed, not loaded.
    found = {k: s for k, s in shapes.items() if not k.endswith("inv_freq")}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [(k, found[k], expected[k]) for k in expected if k in found and tuple(found[k]) != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
    for k, got, want in wrong[:8]:
        problems.append(f"{k} has shape {list(got)} in the checkpoint but the config needs {list(want)}")
    if problems:
        raise InputError(f"the weights in {folder} do not match its config.json: " + "; ".join(problems)
                         + "; the two come from different models: save or download the checkpoint again")


def read_state_dict(folder: Path, cfg: PhiConfig, dtype: torch.dtype = torch.float32,
                    device: Union[str, torch.device] = "cpu", workers: Optional[int] = None) -> dict[str, torch.Tensor]:
    """Our state dict from a checkpoint folder, each tensor allocated once in ``dtype`` on ``device``.

    ``workers`` threads (default ``LOAD_WORKERS``) fill tensors side by side: most of a load is
    the kernel handing out fresh pages and the copies into them, which run in parallel. Peak
    memory: the weights plus one staging buffer per worker (``weight_files.STAGING_BYTES``).
    """
    with WeightFiles(folder) as files:
        check_against_config(files.shapes, cfg, folder)
        plan = load_plan(cfg)
        # Allocated up front; on the CPU no page is resident until a worker writes it.
        state = {ours: torch.empty(shape, dtype=dtype, device=device) for ours, shape, _ in plan}

        def fill(ours: str, parts: tuple[str, ...]) -> None:
            flat, start = state[ours].view(-1), 0
            for name in parts:   # q, k, v fill consecutive rows of the fused projection
                n = math.prod(files.shapes[name])
                files.read_into(name, flat[start:start + n])
                start += n

        workers = workers or LOAD_WORKERS
        if workers == 1:
            for ours, _, parts in plan:
                fill(ours, parts)
            return state
        pool = ThreadPoolExecutor(workers, thread_name_prefix="load")
        try:
            for done in [pool.submit(fill, ours, parts) for ours, _, parts in plan]:
                done.result()   # the first failure (a damaged file) is raised here
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return state


def read_tokenizer(folder: Path, cfg: PhiConfig) -> Optional[Tokenizer]:
    """The folder's ``tokenizer.json``, or None when it has none."""
    path = folder / "tokenizer.json"
    return Tokenizer.from_file(path, bos_token_id=cfg.bos_token_id) if path.is_file() else None


def load_pretrained(path_or_hub_id: Union[str, Path], *, model_cls: Callable[[PhiConfig], M],
                    dtype: Optional[Union[torch.dtype, str]] = None,
                    device: Optional[Union[str, torch.device]] = None) -> M:
    """Load a Phi checkpoint in HF format into ``model_cls(cfg)``; returns it in eval mode.

    ``dtype`` defaults to float32 (exact parity with ``transformers``' fp32 logits).
    The tokenizer comes from ``tokenizer.json`` when the folder has one; ``run_dir``
    is the training run folder the checkpoint belongs to (else None).
    """
    folder, run_dir = find_checkpoint(path_or_hub_id)
    cfg = PhiConfig.from_hf(folder)
    if cfg.name == "custom":
        cfg.name = str(path_or_hub_id)
    dtype, device = _parse_dtype(dtype), _parse_device(device)
    tokenizer = read_tokenizer(folder, cfg)   # before the weights: a bad file fails in a moment
    state = read_state_dict(folder, cfg, dtype, device)
    with meta_device():
        model = model_cls(cfg)
    model.load_state_dict(state, assign=True, strict=True)   # the tensors become the parameters: no copy
    del state
    model.to(device)   # moves nothing (it is all there); lets the model note its device (cfg.device)
    model.tokenizer = tokenizer
    model.run_dir = run_dir
    return model.eval()


def _parse_dtype(dtype: Optional[Union[torch.dtype, str]]) -> torch.dtype:
    if dtype is None:
        return torch.float32
    parsed = getattr(torch, dtype.removeprefix("torch."), None) if isinstance(dtype, str) else dtype
    if not isinstance(parsed, torch.dtype) or not parsed.is_floating_point:
        raise InputError(f"dtype must be a floating-point torch dtype such as torch.float32 or 'bfloat16', "
                         f"got {dtype!r}")
    return parsed


def _parse_device(device: Optional[Union[str, torch.device]]) -> torch.device:
    try:
        parsed = torch.device(device if device is not None else "cpu")
    except (RuntimeError, TypeError):
        raise InputError(f"device {device!r} is not a torch device: use cpu, cuda, cuda:1, mps ...") from None
    available = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}.get(parsed.type)
    if available is not None and not available():
        raise InputError(f"device {str(device)!r} is not available on this machine (this torch sees no "
                         f"{parsed.type.upper()} device); use cpu")
    return parsed


# -- writing ---------------------------------------------------------------------------------------
def save_pretrained(model: torch.nn.Module, directory: Union[str, Path], max_shard_size: Optional[int] = None) -> None:
    """Write ``config.json`` and safetensors (sharded above ``max_shard_size`` bytes), plus the tokenizer.

    ``model`` is a ``PhiModel`` (its ``cfg``, ``state_dict()``, ``dtype`` and ``tokenizer``).
    Each file is written to a temporary name and renamed, so a crash never
    leaves a half-written file under a final name.
    """
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


def shard_groups(sizes: dict[str, int], max_size: Optional[int]) -> list[list[str]]:
    """Names in order, cut into groups of at most ``max_size`` bytes (a larger tensor gets a group of its own)."""
    groups: list[list[str]] = [[]]
    size = 0
    for name, n in sizes.items():
        if max_size and groups[-1] and size + n > max_size:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += n
    return groups


def _shard(tensors: dict[str, torch.Tensor], max_size: Optional[int]) -> list[dict[str, torch.Tensor]]:
    sizes = {k: t.numel() * t.element_size() for k, t in tensors.items()}
    return [{k: tensors[k] for k in group} for group in shard_groups(sizes, max_size)]


def _atomic(final: Path, write) -> None:
    tmp = final.with_name(final.name + ".tmp")
    write(str(tmp))
    os.replace(tmp, final)

