"""The training loop: AdamW, warmup + cosine, clipping, accumulation, AMP, checkpoints, exact resume.

Step numbering: "step s" is the model after ``s`` optimizer updates. Step 0
is the initialisation; activations recorded at step ``s`` and the checkpoint
``step_s`` both describe that same model. The batch of update ``s + 1`` is a
pure function of ``(seed, s)`` (see ``data.Batches``), so resuming from the
checkpoint of step ``s`` replays exactly what the uninterrupted run would do.

Setting up checks everything before it changes anything on disk
(``run_folder.check_run_folder``, the data, the model config, the checkpoint's
state); only then does it write a new run's files, or cut a resumed run's
metrics and recording back to its checkpoint. After each update the loop
records the new step if it is scheduled, logs, evaluates and saves: each
model state is seen once, in that order.
"""
from __future__ import annotations

import contextlib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from torch.utils.checkpoint import checkpoint as recompute

from workbench.errors import DiskFullError, InputError, UserError
from workbench.model import PhiConfig, PhiModel
from workbench.model.meta_init import meta_device
from workbench.threads import use_threads

from . import distributed as dist_
from . import run_folder
from . import run_state
from .config import TrainConfig
from .data import Batches, TokenData, build_data, cache_data, plan_batch
from .files import free_bytes, is_disk_full, is_read_only, write_text_atomically
from .metrics import MetricsLog
from .progress import Progress
from .recorder import Recorder
from .schedule import make_scheduler, record_steps, snapshot_steps

# On a stop signal the trainer saves a checkpoint of the step it finished when the state to write
# (fp32 weights and AdamW's two moments: 12 bytes a parameter) is at most this big: a few seconds
# at this machine's ~390 MB/s. A bigger model stops at once and resumes from its last checkpoint.
STOP_SAVE_MAX_BYTES = 2 << 30


def model_config(cfg: TrainConfig, data: TokenData) -> PhiConfig:
    """The PhiConfig a run trains: the preset with the config's overrides and the data's vocabulary."""
    m = cfg.model
    overrides = {k: getattr(m, k) for k in ("d_model", "n_layers", "n_heads", "d_mlp", "n_ctx",
                                            "partial_rotary_factor", "rope_theta", "initializer_range")
                 if getattr(m, k) is not None}
    overrides.update(d_vocab=data.vocab_size, bos_token_id=data.eot, eos_token_id=data.eot)
    overrides["n_ctx"] = max(overrides.get("n_ctx", 0), cfg.data.seq_len,
                             1 + cfg.record.probe_period * cfg.record.probe_repeats)
    try:
        return PhiConfig.from_name(m.preset, **overrides)
    except UserError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"[model]: {e}") from None


def build_model(cfg: TrainConfig, data: TokenData, device: Optional[torch.device] = None) -> PhiModel:
    """A freshly initialised PhiModel for the config (seeded), with the data's vocabulary.

    ``device``: where the weights are created and initialised (a GPU initialises phi-2's 2.8 B
    parameters in a moment, a CPU takes tens of seconds); the default is the CPU.
    """
    pcfg = model_config(cfg, data)
    torch.manual_seed(cfg.seed)
    with torch.device(device or "cpu"):
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


def enable_recompute_activations(model: PhiModel) -> None:
    """Recompute each block's activations in the backward instead of storing them (less memory)."""
    for block in model.blocks:
        inner = block.forward
        block.forward = (lambda *a, _f=inner, **k:  # type: ignore[method-assign]
                         recompute(_f, *a, use_reentrant=False, **k))


def enable_activation_checkpointing(model: PhiModel) -> None:
    """Deprecated name of ``enable_recompute_activations`` (kept for one release)."""
    warnings.warn("enable_activation_checkpointing is renamed enable_recompute_activations; the old name "
                  "stops working in the next release", FutureWarning, stacklevel=2)
    enable_recompute_activations(model)


@dataclass
class Stopped:
    """How a run that was asked to stop ended: the step it finished and the checkpoint it resumes from."""
    signum: int
    step: int
    resume_step: Optional[int]   # None: no checkpoint yet, --resume starts over


class Trainer:
    """One training run in ``run_dir``. ``Trainer(cfg, run_dir, resume=True).fit()``.

    ``log`` receives one line for each thing set-up does (reading the corpus, training
    the tokenizer, ...) and the plan of the run; None prints nothing.
    """

    def __init__(self, cfg: TrainConfig, run_dir: Path, resume: bool = False, progress: bool = True,
                 log: Optional[Callable[[str], None]] = None) -> None:
        self.cfg, self.run_dir, self.progress = cfg, Path(run_dir), progress
        self.log = log or (lambda _msg: None)
        self.dist = dist_.init_distributed(cfg.system.device)
        self.device = dist_.pick_device(cfg.system.device, self.dist.local_rank)
        if self.device.type == "cpu":   # 0: the workbench's one thread policy (workbench.threads)
            use_threads(cfg.system.num_threads or None)
        self.stopped: Optional[Stopped] = None
        self._stop_signal: Optional[int] = None
        self.saved_step: Optional[int] = None   # the newest full checkpoint's step
        with self._disk_guard("setting up the run"):
            check = run_folder.check_run_folder(self.run_dir, cfg, resume, self.dist.world)
            resume_from = check.resume_from
            self.saved_step = resume_from.step if resume_from is not None else None
            self.data, pcfg = self._load_data(use_run_cache=check.started)
            if resume_from is not None:
                run_folder.check_checkpoint_model(resume_from.folder, pcfg)
            self._build()
            self.step, self.tokens_seen = 0, 0
            if resume_from is not None:
                self._restore(resume_from)
            # Every check has passed: from here on the run folder changes.
            self._prepare_files(resuming=resume_from is not None, started_over=check.started and not resume_from)
        self.record_at = set(record_steps(cfg.schedule.max_steps, cfg.record.every, cfg.record.log_spaced))
        self.snapshot_at = set(snapshot_steps(cfg.schedule.max_steps, cfg.checkpoint.log_spaced,
                                              sorted(self.record_at) if cfg.record.hooks else ()))

    # -- set-up ----------------------------------------------------------------
    def _load_data(self, use_run_cache: bool) -> tuple[TokenData, PhiConfig]:
        """The token data (checked) and the model config it gives.

        Rank 0 builds the data (a started run: from its own tokenizer and token cache)
        and caches it in the run folder; the other ranks then read that cache. A new
        run replaces whatever a killed attempt to create it left there.
        """
        data: Optional[TokenData] = None
        if self.dist.is_main:
            data = build_data(self.cfg.data, self.run_dir if use_run_cache else None, log=self.log)
            run_folder.check_data(self.cfg, data)
            # An impossible model, or a hook it does not have, is refused before anything is written.
            run_folder.check_record_hooks(self.cfg, model_config(self.cfg, data))
            self.run_dir.mkdir(parents=True, exist_ok=True)
            cache_data(data, self.run_dir, replace=not use_run_cache)
        dist_.barrier(self.dist)
        if data is None:
            data = build_data(self.cfg.data, self.run_dir)
        return data, model_config(self.cfg, data)

    def _build(self) -> None:
        """The model (seeded), its wrapping, the optimizer, the schedule and the grad scaler."""
        cfg = self.cfg
        self.micro, self.accum = plan_batch(cfg.data, self.dist.world)
        self.model = build_model(cfg, self.data, self.device)
        if cfg.system.recompute_activations:
            enable_recompute_activations(self.model)
        self.amp_dtype = autocast_dtype(cfg.system.precision, self.device)
        self.wrapped = dist_.wrap_model(self.model, self.dist, self.device, cfg.system.parallel)
        o, s = cfg.optimizer, cfg.schedule
        self.opt = torch.optim.AdamW(param_groups(self.model, o.weight_decay), lr=o.lr,
                                     betas=(o.beta1, o.beta2), eps=o.eps,
                                     fused=self.device.type == "cuda" or None)
        self.sched = make_scheduler(self.opt, s.warmup_steps, s.max_steps, s.min_lr_ratio)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.forward = torch.compile(self.wrapped) if cfg.system.compile else self.wrapped

    def _restore(self, r: run_folder.ResumePoint) -> None:
        par = self.cfg.system.parallel
        dist_.load_model_state(self.wrapped, run_state.load_model_state(r.folder), self.dist, par)
        dist_.load_optimizer_state(self.wrapped, self.opt, r.state["optimizer"], self.dist, par)
        self.sched.load_state_dict(r.state["scheduler"])
        self.scaler.load_state_dict(r.state["scaler"])
        run_state.set_rng_state(r.state["rng"])
        self.step, self.tokens_seen = r.state["step"], r.state["tokens"]

    def _prepare_files(self, resuming: bool, started_over: bool) -> None:
        """Write a new run's ``config.toml`` (which marks the run as started), or cut a resumed run
        back to its checkpoint; then open the recording and the metrics log."""
        rd = self.run_dir
        if self.dist.is_main:
            if not (rd / "config.toml").is_file():
                write_text_atomically(rd / "config.toml", self.cfg.to_toml())
            run_state.clean_partial(rd)
            if started_over:   # a resume with no checkpoint to resume from: nothing of the killed try stays
                for leftover in ("metrics.jsonl", "activations.h5", "summary.json"):
                    (rd / leftover).unlink(missing_ok=True)
        dist_.barrier(self.dist)
        self.batches = Batches(self.data, self.cfg.data, self.cfg.seed)
        self.recorder = self._open_recorder(resuming)
        self.metrics = MetricsLog(rd / "metrics.jsonl", enabled=self.dist.is_main)
        if self.dist.is_main:
            self.metrics.truncate_after(self.step)
            run_state.remove_after(rd, self.step)
            (rd / "summary.json").unlink(missing_ok=True)

    def _open_recorder(self, resuming: bool) -> Optional[Recorder]:
        if not self.cfg.record.hooks:
            return None
        path = self.run_dir / "activations.h5"
        try:
            return Recorder(self.model, self.cfg, self.run_dir, self.data, self.device,
                            write=self.dist.is_main, resume_step=self.step if resuming else None)
        except UserError as e:
            if not resuming or str(path) in str(e):
                raise
            raise type(e)(f"{path}: {e}") from None
        except (OSError, RuntimeError, ValueError, KeyError) as e:
            if not resuming or is_disk_full(e, path):
                raise
            raise run_folder.damaged_recording(path, e) from None

    @contextlib.contextmanager
    def _disk_guard(self, doing: str) -> Iterator[None]:
        """A full (or read-only) disk anywhere inside becomes one ``DiskFullError`` line."""
        try:
            yield
        except UserError:
            raise
        except Exception as e:
            if is_read_only(e):
                raise DiskFullError(f"{self.run_dir} is on a read-only filesystem ({doing}); "
                                    "choose another --out folder") from e
            if not is_disk_full(e, self.run_dir):
                raise
            free = free_bytes(self.run_dir)
            at = getattr(self, "saved_step", None)
            where = (f"it continues from checkpoint step {at}" if at is not None
                     else "it starts over (no checkpoint yet)")
            raise DiskFullError(f"disk full while {doing} in {self.run_dir} "
                                f"({(free or 0) / 1e6:.1f} MB free); free space and run with --resume: "
                                f"{where}") from e

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

    # -- saving -----------------------------------------------------------------
    def _full_model(self) -> Optional[PhiModel]:
        """On rank 0, the whole model as a plain PhiModel (gathered under FSDP); every rank must call it."""
        full = dist_.full_state_dict(self.wrapped, self.dist, self.cfg.system.parallel)
        if not self.dist.is_main:
            return None
        with meta_device():   # no random init of the clone (torch.device("meta") alone imports sympy, ~2 s)
            clone = PhiModel(self.model.cfg, tokenizer=self.data.tokenizer)
        clone.load_state_dict(full, assign=True)
        return clone

    def save(self) -> None:
        """A full checkpoint of the current step (for --resume); the recording reaches it first."""
        model = self._full_model()   # before the optimizer state: FSDP2 gathers in this order
        opt_state = dist_.optimizer_state(self.wrapped, self.opt, self.dist, self.cfg.system.parallel)
        if self.recorder is not None:
            self.recorder.flush()  # the recording reaches this step on disk before the checkpoint names it
        if self.dist.is_main:
            state = {"optimizer": opt_state, "scheduler": self.sched.state_dict(),
                     "scaler": self.scaler.state_dict(), "tokens": self.tokens_seen, "world": self.dist.world,
                     "data": {"next_batch_step": self.step, "seed": self.cfg.seed},
                     "config": self.cfg.to_dict()}
            run_state.save_checkpoint(self.run_dir, self.step, model, state, self.cfg.checkpoint.keep_last,
                                      keep_models=self.snapshot_at)
        self.saved_step = self.step
        dist_.barrier(self.dist)

    def save_snapshot(self) -> None:
        """A model-only folder of the current step (``checkpoint.log_spaced``)."""
        model = self._full_model()
        if self.dist.is_main:
            run_state.save_model_snapshot(self.run_dir, self.step, model)
        dist_.barrier(self.dist)

    def _save_if_due(self) -> None:
        every, s = self.cfg.checkpoint.every, self.step
        if s > 0 and ((every and s % every == 0) or s == self.cfg.schedule.max_steps):
            self.save()
        elif s in self.snapshot_at:
            self.save_snapshot()

    # -- stopping ---------------------------------------------------------------
    def request_stop(self, signum: int) -> None:
        """Ask the loop to stop after the update in flight (safe to call from a signal handler)."""
        if self._stop_signal is None:
            self._stop_signal = signum

    def _should_stop(self) -> bool:
        flag = self._stop_signal is not None
        if self.dist.enabled:   # every rank must stop after the same step, or collectives hang
            flag = bool(dist_.all_mean(torch.tensor(float(flag), device=self.device), self.dist) > 0)
            if flag and self._stop_signal is None:
                self._stop_signal = 15
        return flag

    def _stop(self) -> None:
        """After a stop request: save the finished step when that is cheap (see ``STOP_SAVE_MAX_BYTES``)."""
        n_params = sum(p.numel() for p in self.model.parameters())
        if self.step != self.saved_step and 12 * n_params <= STOP_SAVE_MAX_BYTES:
            self.save()
        self.stopped = Stopped(self._stop_signal or 2, self.step, self.saved_step)

    # -- the loop --------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to ``schedule.max_steps`` (or until ``request_stop``); returns the summary dict."""
        self.model.train()
        self._describe()
        t0 = time.perf_counter()
        start = self.step
        progress = Progress(self.cfg.schedule.max_steps, self.step, self._tokens_per_step(),
                            bar=self.progress and self.dist.is_main,
                            log=self.log if self.dist.is_main else None)
        self._last_log = (t0, self.tokens_seen)
        self.final_loss = self.final_val = None
        try:
            with self._disk_guard("training"):
                if self.step == 0:             # the initialisation; later steps right after their update
                    self._record_if_due()
                    self._save_if_due()
                while self.step < self.cfg.schedule.max_steps and not self._should_stop():
                    self._update(progress, t0)
                if self._stop_signal is not None:
                    self._stop()
        finally:
            progress.close()
            self._close()
        return self._finish(time.perf_counter() - t0, start)

    def _update(self, progress: Progress, t0: float) -> None:
        """One update, then everything that happens at the new step: record, log, evaluate, save."""
        lr = self.sched.get_last_lr()[0]  # the lr this update uses
        loss, norm = self.train_step()
        self._record_if_due()
        row = self._metrics_row(loss, norm, lr, t0)
        s = self.cfg.schedule
        if (s.eval_every and self.step % s.eval_every == 0) or self.step == s.max_steps:
            self.final_val = self.val_loss()
            if self.final_val is not None:
                row = {**row, "step": self.step, "val_loss": self.final_val}
        self.metrics.write(row)
        self._save_if_due()
        progress.update(self.step, row.get("loss"))

    def _record_if_due(self) -> None:
        if self.recorder is not None and self.step in self.record_at:
            self.recorder.record(self.step)

    def _metrics_row(self, loss: torch.Tensor, norm: torch.Tensor, lr: float, t0: float) -> dict[str, Any]:
        s = self.cfg.schedule
        if not (self.step % s.log_every == 0 or self.step == s.max_steps):
            return {}
        now = time.perf_counter()
        last_t, last_tokens = self._last_log
        self.final_loss = float(loss)
        tps = (self.tokens_seen - last_tokens) / max(now - last_t, 1e-9)
        self._last_log = (now, self.tokens_seen)
        return {"step": self.step, "loss": self.final_loss, "lr": lr, "tokens": self.tokens_seen,
                "grad_norm": float(norm), "tok_per_s": round(tps, 1), "elapsed_s": round(now - t0, 3)}

    def _tokens_per_step(self) -> int:
        return self.cfg.data.batch_size * self.cfg.data.seq_len

    def _describe(self) -> None:
        """The plan of the run, before the bar starts."""
        if not self.dist.is_main:
            return
        c, m = self.cfg, self.model.cfg
        n = sum(p.numel() for p in self.model.parameters())
        threads = f", {torch.get_num_threads()} thread(s)" if self.device.type == "cpu" else ""
        self.log(f"model: {m.n_layers} layers, d_model {m.d_model}, {m.n_heads} heads, vocab {m.d_vocab}: "
                 f"{n:,} parameters on {self.device}{threads}")
        self.log(f"data: {self.data.describe()}; {c.data.batch_size} x {c.data.seq_len} tokens a step")
        if self.recorder is not None:
            self.log(f"recording: {len(self.recorder.names)} hooks at {len(self.record_at):,} steps "
                     f"to {self.run_dir / 'activations.h5'}")
        remaining = c.schedule.max_steps - self.step
        verb = f"resuming at step {self.step:,}: " if self.step else ""
        tokens = remaining * self._tokens_per_step()
        amount = f"{tokens / 1e6:,.1f} M" if tokens >= 1e6 else f"{tokens:,}"
        self.log(f"{verb}training {remaining:,} steps ({amount} tokens)"
                 + (f", checkpoints every {c.checkpoint.every:,}" if c.checkpoint.every else ""))

    def _close(self) -> None:
        try:
            if self.recorder is not None:
                self.recorder.close()
        finally:
            self.metrics.close()

    def _finish(self, elapsed: float, start_step: int) -> dict[str, Any]:
        summary = {"run_dir": str(self.run_dir), "steps": self.step, "tokens": self.tokens_seen,
                   "final_loss": self.final_loss if self.final_loss is not None else float("nan"),
                   "val_loss": self.final_val, "elapsed_s": round(elapsed, 2),
                   "tok_per_s": round((self.step - start_step) * self._tokens_per_step() / max(elapsed, 1e-9), 1),
                   "n_params": sum(p.numel() for p in self.model.parameters()),
                   "device": str(self.device), "world": self.dist.world}
        if self.stopped is not None:
            summary["stopped"] = {"step": self.stopped.step, "resume_step": self.stopped.resume_step}
        elif self.dist.is_main:
            with self._disk_guard("writing summary.json"):
                write_text_atomically(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        dist_.shutdown(self.dist)
        return summary


def train(cfg: TrainConfig, run_dir: Path, resume: bool = False, progress: bool = True,
          log: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir`` (continuing it with ``resume``); returns the summary dict."""
    return Trainer(cfg, run_dir, resume=resume, progress=progress, log=log).fit()

