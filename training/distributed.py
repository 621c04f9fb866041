"""Devices and processes: device choice, torchrun/DDP/FSDP2 set-up, and collective helpers.

``torchrun --nproc_per_node N workbench train ...`` runs the same command in N
processes; torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` variables switch
this module on. Parallelism is applied from outside the model (torchtitan's
way): the single-device ``PhiModel`` is wrapped in DDP, or sharded block by
block with FSDP2's ``fully_shard`` when it does not fit on one device.

Recording under several processes: the probe set is replicated, so rank 0
alone writes ``activations.h5`` (one file, no virtual dataset to join). Under
DDP rank 0 runs the probe forward on its own replica; under FSDP every rank
joins the probe forward (it gathers sharded weights) and rank 0 writes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from workbench.errors import InputError

# FSDP2 and torch.distributed.checkpoint are imported where they are used, under several processes
# only: importing them costs 5.3 s on this 2-core machine under load (torch.distributed.fsdp 4.9 s,
# .checkpoint.state_dict 0.4 s), which every single-process run would otherwise pay at start-up.


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> cuda > mps > cpu; a forced device that is missing is a one-line ``ValueError``."""
    req = requested.lower()
    if req == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if req.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {requested} was asked for, but this torch build sees no CUDA GPU "
                             f"(torch {torch.__version__}); use --device cpu or auto")
        dev = torch.device(req)
        return torch.device("cuda", dev.index if dev.index is not None else local_rank)
    if req == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise InputError("--device mps was asked for, but MPS is not available here; use --device cpu or auto")
        return torch.device("mps")
    if req == "cpu":
        return torch.device("cpu")
    raise InputError(f"unknown device {requested!r}; use auto, cpu, cuda, cuda:N or mps")


def init_distributed(device_request: str) -> Dist:
    """Join the torchrun process group when launched by torchrun; a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and not device_request.lower().startswith("cpu")
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank=rank, world=world, local_rank=local)


def wrap_model(model: nn.Module, d: Dist, device: torch.device, parallel: str) -> nn.Module:
    """DDP (replicated) or FSDP2 (sharded per block, then the root); unchanged for one process."""
    if not d.enabled:
        return model
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The PhiModel under DDP / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or getattr(model, "_orig_mod")
    return model


def full_state_dict(model: nn.Module, d: Dist, parallel: str) -> Optional[dict]:
    """The whole model's state dict on CPU (gathered from shards under FSDP); every rank must call it."""
    if d.enabled and parallel == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, d: Dist, parallel: str) -> dict:
    """The optimizer state to checkpoint (gathered under FSDP); every rank must call it."""
    if d.enabled and parallel == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        return get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return opt.state_dict()


def load_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, state: dict, d: Dist, parallel: str) -> None:
    if d.enabled and parallel == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True))
        return
    opt.load_state_dict(state)


def load_model_state(model: nn.Module, state: dict, d: Dist, parallel: str) -> None:
    if d.enabled and parallel == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
        return
    unwrap(model).load_state_dict(state)


def all_mean(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """Mean of a tensor over processes (itself for one process)."""
    if not d.enabled:
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / d.world


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
