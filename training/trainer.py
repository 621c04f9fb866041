"""The training loop: AdamW, warmup + cosine, clipping, accumulation, AMP, checkpoints, exact resume.

Step numbering: "step s" is the model after ``s`` optimizer updates. Step 0
is the initialisation; activations recorded at step ``s`` and the checkpoint
``step_s`` both describe that same model. The batch of update ``s + 1`` is a
pure function of ``(seed, s)`` (see ``data.Batches``), so resuming from the
checkpoint of step ``s`` replays exactly what the uninterrupted run would do.
"""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any, Optional

import torch

from workbench.errors import FileConflictError, InputError
from workbench.model import PhiConfig, PhiModel

from . import distributed as dist_
from . import run_state as ckpt
from .config import TrainConfig
from .data import Batches, TokenData, build_data, plan_batch
from .metrics import MetricsLog
from .schedule import make_scheduler, record_steps


def build_model(cfg: TrainConfig, data: TokenData) -> PhiModel:
    """A freshly initialised PhiModel for the config (seeded), with the data's vocabulary."""
    m = cfg.model
    overrides = {k: getattr(m, k) for k in ("d_model", "n_layers", "n_heads", "d_mlp", "n_ctx",
                                            "partial_rotary_factor", "rope_theta", "initializer_range")
                 if getattr(m, k) is not None}
    overrides.update(d_vocab=data.vocab_size, bos_token_id=data.eot, eos_token_id=data.eot)
    overrides["n_ctx"] = max(overrides.get("n_ctx", 0), cfg.data.seq_len,
                             1 + cfg.record.probe_period * cfg.record.probe_repeats)
    pcfg = PhiConfig.from_name(m.preset, **overrides)
    torch.manual_seed(cfg.seed)
    return PhiModel(pcfg, tokenizer=data.tokenizer)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: matrices (projections and embeddings) decay; biases and LayerNorm gains do not."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype, or None for fp32. ``auto``: bf16 on GPUs that support it, else fp16; fp32 on CPU."""
    if precision == "fp32" or (precision == "auto" and device.type == "cpu"):
        return None
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16 if device.type in ("cuda", "mps") else None
    return torch.bfloat16 if precision == "bf16" else torch.float16


def enable_activation_checkpointing(model: PhiModel) -> None:
    """Recompute each block's activations in the backward instead of storing them."""
    from torch.utils.checkpoint import checkpoint
    for block in model.blocks:
        inner = block.forward
        block.forward = (lambda *a, _f=inner, **k:  # type: ignore[method-assign]
                         checkpoint(_f, *a, use_reentrant=False, **k))


class Trainer:
    """One training run in ``run_dir``. ``Trainer(cfg, run_dir, resume=True).fit()``."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, resume: bool = False, progress: bool = True) -> None:
        self.cfg, self.run_dir, self.progress = cfg, Path(run_dir), progress
        self.dist = dist_.init_distributed(cfg.system.device)
        self.device = dist_.pick_device(cfg.system.device, self.dist.local_rank)
        if cfg.system.num_threads and self.device.type == "cpu":
            torch.set_num_threads(cfg.system.num_threads)
        self._prepare_run_dir(resume)
        # Rank 0 tokenizes (and caches the tokens in the run folder); the others read the cache.
        if self.dist.is_main:
            self.data = build_data(cfg.data, self.run_dir)
        dist_.barrier(self.dist)
        if not self.dist.is_main:
            self.data = build_data(cfg.data, self.run_dir)
        if self.dist.is_main and self.data.tokenizer is not None:
            self.data.tokenizer.save(self.run_dir / "tokenizer.json")
        self.batches = Batches(self.data, cfg.data, cfg.seed)
        self.micro, self.accum = plan_batch(cfg.data, self.dist.world)
        self.model = build_model(cfg, self.data).to(self.device)
        if cfg.system.activation_checkpointing:
            enable_activation_checkpointing(self.model)
        self.amp_dtype = autocast_dtype(cfg.system.precision, self.device)
        self.wrapped = dist_.wrap_model(self.model, self.dist, self.device, cfg.system.parallel)
        o = cfg.optimizer
        self.opt = torch.optim.AdamW(param_groups(self.model, o.weight_decay), lr=o.lr,
                                     betas=(o.beta1, o.beta2), eps=o.eps,
                                     fused=self.device.type == "cuda" or None)
        s = cfg.schedule
        self.sched = make_scheduler(self.opt, s.warmup_steps, s.max_steps, s.min_lr_ratio)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.forward = torch.compile(self.wrapped) if cfg.system.compile else self.wrapped
        self.step, self.tokens_seen = 0, 0
        if resume:
            self._resume()
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", enabled=self.dist.is_main)
        self.metrics.truncate_after(self.step)
        self.recorder = None
        if cfg.record.hooks:
            from .recorder import Recorder
            self.recorder = Recorder(self.model, cfg, self.run_dir, self.data, self.device,
                                     write=self.dist.is_main, resume_step=self.step if resume else None)
        self.record_at = set(record_steps(s.max_steps, cfg.record.every, cfg.record.log_spaced))

    # -- set-up ----------------------------------------------------------------
    def _prepare_run_dir(self, resume: bool) -> None:
        rd = self.run_dir
        if self.dist.is_main:
            if not resume and (rd / "metrics.jsonl").exists():
                raise FileConflictError(f"{rd} already holds a run (metrics.jsonl); pass --resume to continue "
                                      "it, or choose a new --out folder")
            rd.mkdir(parents=True, exist_ok=True)
            (rd / "config.toml").write_text(self.cfg.to_toml())
        dist_.barrier(self.dist)

    def _resume(self) -> None:
        if self.dist.is_main:
            ckpt.clean_partial(self.run_dir)
        dist_.barrier(self.dist)
        folder = ckpt.latest_checkpoint(self.run_dir)
        if folder is None:  # killed before its first checkpoint: start over
            return
        state = ckpt.load_trainer_state(folder)
        if state.get("world") not in (None, self.dist.world):
            raise InputError(f"{folder} was written by {state['world']} processes, this run has "
                             f"{self.dist.world}: resume with the same number of processes")
        dist_.load_model_state(self.wrapped, ckpt.load_model_state(folder), self.dist, self.cfg.system.parallel)
        dist_.load_optimizer_state(self.wrapped, self.opt, state["optimizer"], self.dist, self.cfg.system.parallel)
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])
        self.step, self.tokens_seen = state["step"], state["tokens"]

    # -- one update -------------------------------------------------------------
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer update (all micro-batches); returns (mean loss, grad norm) as device scalars."""
        micro = self.batches.micro_batches(self.step, self.dist.rank, self.dist.world, self.micro)
        total = torch.zeros((), device=self.device)
        for i, rows in enumerate(micro):
            rows = rows.to(self.device, non_blocking=True)
            last = i == len(micro) - 1
            # DDP: all-reduce gradients only on the last micro-batch.
            sync = (contextlib.nullcontext() if last or not hasattr(self.wrapped, "no_sync")
                    else self.wrapped.no_sync())
            with sync:
                with self._autocast():
                    logits = self.forward(rows[:, :-1])
                    loss = torch.nn.functional.cross_entropy(
                        logits.reshape(-1, logits.shape[-1]).float(), rows[:, 1:].reshape(-1))
                self.scaler.scale(loss / len(micro)).backward()
            total += loss.detach() / len(micro)
        self.scaler.unscale_(self.opt)
        clip = self.cfg.optimizer.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else float("inf"))
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += self.cfg.data.batch_size * self.cfg.data.seq_len
        return dist_.all_mean(total, self.dist), norm

    @torch.no_grad()
    def val_loss(self) -> Optional[float]:
        """Mean loss over the fixed validation batches (each rank a share; averaged)."""
        s = self.cfg.schedule
        batches = self.batches.val_batches(s.eval_batches * self.dist.world, self.micro)
        mine = batches[self.dist.rank::self.dist.world]
        if not mine:
            return None
        self.model.eval()
        total = torch.zeros((), device=self.device)
        for rows in mine:
            rows = rows.to(self.device)
            with self._autocast():
                total += self.model(rows, return_type="loss").float()
        self.model.train()
        return float(dist_.all_mean(total / len(mine), self.dist))

    def save(self) -> None:
        par = self.cfg.system.parallel
        full = dist_.full_state_dict(self.wrapped, self.dist, par)
        opt_state = dist_.optimizer_state(self.wrapped, self.opt, self.dist, par)
        if self.recorder is not None:
            self.recorder.flush()  # the recording reaches this step on disk before the checkpoint names it
        if self.dist.is_main:
            with torch.device("meta"):
                clone = PhiModel(self.model.cfg, tokenizer=self.data.tokenizer)
            clone.load_state_dict(full, assign=True)
            state = {"optimizer": opt_state, "scheduler": self.sched.state_dict(),
                     "scaler": self.scaler.state_dict(), "tokens": self.tokens_seen, "world": self.dist.world,
                     "data": {"next_batch_step": self.step, "seed": self.cfg.seed}}
            ckpt.save_checkpoint(self.run_dir, self.step, clone, state, self.cfg.checkpoint.keep_last)
        dist_.barrier(self.dist)

    # -- the loop --------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to ``schedule.max_steps``; returns a summary dict (also printed by the CLI)."""
        cfg, s = self.cfg, self.cfg.schedule
        self.model.train()
        bar = None
        if self.progress and self.dist.is_main:
            from tqdm.auto import tqdm
            bar = tqdm(total=s.max_steps, initial=self.step, unit="step", dynamic_ncols=True)
        t0 = last_t = time.perf_counter()
        start_step, last_tokens, final_val = self.step, self.tokens_seen, None
        loss_v = float("nan")
        try:
            while True:
                if self.recorder is not None and self.step in self.record_at:
                    self.recorder.record(self.step)
                if self.step >= s.max_steps:
                    break
                lr = self.sched.get_last_lr()[0]  # the lr this update uses
                loss, norm = self.train_step()
                row: dict[str, Any] = {}
                if self.step % s.log_every == 0 or self.step == s.max_steps:
                    now = time.perf_counter()
                    loss_v = float(loss)
                    tps = (self.tokens_seen - last_tokens) / max(now - last_t, 1e-9)
                    row = {"step": self.step, "loss": loss_v, "lr": lr,
                           "tokens": self.tokens_seen, "grad_norm": float(norm), "tok_per_s": round(tps, 1),
                           "elapsed_s": round(now - t0, 3)}
                    last_t, last_tokens = now, self.tokens_seen
                    if bar is not None:
                        bar.set_postfix(loss=f"{loss_v:.3f}", tok_s=f"{tps:,.0f}", refresh=False)
                if (s.eval_every and self.step % s.eval_every == 0) or self.step == s.max_steps:
                    final_val = self.val_loss()
                    if final_val is not None:
                        row = {**row, "step": self.step, "val_loss": final_val}
                self.metrics.write(row)
                every = cfg.checkpoint.every
                if (every and self.step % every == 0) or self.step == s.max_steps:
                    if self.recorder is not None and self.step in self.record_at:
                        self.recorder.record(self.step)  # before the checkpoint that names this step
                    self.save()
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            if self.recorder is not None:
                self.recorder.close()
            self.metrics.close()
        elapsed = time.perf_counter() - t0
        summary = {"run_dir": str(self.run_dir), "steps": self.step, "tokens": self.tokens_seen,
                   "final_loss": loss_v, "val_loss": final_val, "elapsed_s": round(elapsed, 2),
                   "tok_per_s": round((self.tokens_seen - start_step * cfg.data.batch_size * cfg.data.seq_len)
                                      / max(elapsed, 1e-9), 1),
                   "n_params": sum(p.numel() for p in self.model.parameters()),
                   "device": str(self.device), "world": self.dist.world}
        if self.dist.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        dist_.shutdown(self.dist)
        return summary


def train(cfg: TrainConfig, run_dir: Path, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir`` (continuing it with ``resume``); returns the summary dict."""
    return Trainer(cfg, run_dir, resume=resume, progress=progress).fit()
