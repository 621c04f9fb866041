"""Record activations on a fixed probe set during training, into ``RUN/activations.h5``.

The probe set is fixed for the whole run and stored in the file (``tokens``):
``probe_rows`` repeated random-token sequences ``[BOS, A, A, ...]`` (where
induction heads show) and optionally ``probe_val_rows`` windows of validation
text. At each scheduled step the model runs the probe set once, under
``no_grad`` in eval mode, with caching hooks on the requested names, and the
cached tensors go to ``StoreWriter.append_step``. The training forward itself
carries no hooks, so it keeps its fused kernels.

On a GPU the writer starts non-blocking copies into pinned host buffers and
records a CUDA event; its background thread waits on the event and writes,
so the step only waits for disk when the writer's bounded queue is full.
On resume the recording is cut back to the checkpoint's step, then continued:
no step is duplicated or missing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from .config import TrainConfig
from .data import TokenData, synthetic_vocab

PROBE_SEED_OFFSET = 7919  # the probe set must not coincide with any training batch's synthetic rows


def probe_tokens(cfg: TrainConfig, data: TokenData) -> torch.Tensor:
    """The fixed probe set ``[rows, 1 + probe_period * probe_repeats]`` (repeated rows first)."""
    from workbench.tasks import repeated_random_tokens
    r = cfg.record
    width = 1 + r.probe_period * r.probe_repeats
    parts = []
    if r.probe_rows:
        parts.append(repeated_random_tokens(r.probe_rows, r.probe_period, n_repeats=r.probe_repeats,
                                            vocab_size=synthetic_vocab(cfg.data, data.vocab_size),
                                            seed=cfg.seed + PROBE_SEED_OFFSET,
                                            bos_token_id=data.eot))
    if r.probe_val_rows:
        val = data.val
        if len(val) < width:
            raise ValueError(f"record.probe_val_rows needs at least {width} validation tokens, have {len(val)}")
        starts = torch.linspace(0, len(val) - width, r.probe_val_rows).long().tolist()
        parts.append(torch.stack([torch.as_tensor(val[s:s + width].astype("int64")) for s in starts]))
    return torch.cat(parts)


class Recorder:
    """Runs the probe set at scheduled steps and streams the activations to the store.

    Args:
        model: the unwrapped ``PhiModel`` (its hooks are used; under FSDP the sharded root).
        write: False on ranks other than 0 (they skip the forward under DDP).
        resume_step: the checkpoint step a resumed run continues from (None: a new recording).
    """

    def __init__(self, model, cfg: TrainConfig, run_dir: Path, data: TokenData, device: torch.device,
                 write: bool = True, resume_step: Optional[int] = None) -> None:
        self.model, self.cfg, self.device, self.write = model, cfg, device, write
        self.collective = cfg.system.parallel == "fsdp" and torch.distributed.is_available() \
            and torch.distributed.is_initialized()
        self.path = Path(run_dir) / "activations.h5"
        self.names = model.resolve_hooks(list(cfg.record.hooks))
        self.tokens = probe_tokens(cfg, data)
        # The probe forward stops after the last block a hook lives in (no unembedding either).
        layers = [int(n.split(".")[1]) if n.startswith("blocks.") else None for n in self.names]
        self.stop_at = None if None in layers or not layers else max(layers) + 1
        self.last_step = -1
        self.writer = None
        if not (write or self.collective):
            return
        shapes = self._shapes()  # under FSDP a forward is collective: every rank runs it
        if not write:
            return
        from workbench.store import StoreWriter
        dtype = cfg.record.dtype
        hooks = {n: (shapes[n], dtype) for n in self.names}
        r = cfg.record
        attrs = {"source": "workbench train", "run_name": cfg.name, "model_config": model.cfg.to_dict(),
                 "probe_period": r.probe_period, "probe_repeats": r.probe_repeats, "probe_offset": 1,
                 "probe_repeated_rows": r.probe_rows, "probe_val_rows": r.probe_val_rows,
                 "train_config": cfg.to_dict()}
        if data.tokenizer is not None:
            attrs["tokenizer"] = data.tokenizer.tok.to_str()
        row_bytes = sum(self.tokens.shape[0] * _numel(s) * (4 if dtype == "float32" else 2) for s, _ in hooks.values())
        queue = max(1, r.queue_size) * row_bytes
        if resume_step is not None and self.path.exists():
            # Resume mode repairs a file a SIGKILL left open and drops steps past the checkpoint.
            self.writer = StoreWriter(self.path, hooks=hooks, seq_len=self.tokens.shape[1], mode="a",
                                      steps=True, max_queue_bytes=queue, drop_steps_after=resume_step)
            self.last_step = self.writer.steps[-1] if self.writer.steps else -1
        else:
            self.writer = StoreWriter(self.path, hooks=hooks, seq_len=self.tokens.shape[1], attrs=attrs,
                                      mode="w", steps=True, probe_tokens=self.tokens, max_queue_bytes=queue)

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        """Each hook's row shape (without the batch axis), from a forward of one probe row."""
        shapes: dict[str, tuple[int, ...]] = {}

        def grab(t: torch.Tensor, hook) -> None:
            shapes[hook.name] = tuple(t.shape[1:])
        with torch.no_grad():
            self.model.run_with_hooks(self.tokens[:1].to(self.device), return_type=None,
                                      stop_at_layer=self.stop_at, fwd_hooks=[(n, grab) for n in self.names])
        return shapes

    @torch.no_grad()
    def capture(self) -> dict[str, torch.Tensor]:
        """One probe forward: ``{hook: [rows, *row_shape]}`` on the model's device."""
        was_training = self.model.training
        self.model.eval()
        acts: dict[str, torch.Tensor] = {}

        def keep(t: torch.Tensor, hook) -> None:
            acts[hook.name] = t.detach()
        try:
            self.model.run_with_hooks(self.tokens.to(self.device, non_blocking=True), return_type=None,
                                      stop_at_layer=self.stop_at, fwd_hooks=[(n, keep) for n in self.names])
        finally:
            self.model.train(was_training)
        return acts

    def record(self, step: int) -> None:
        """Record ``step`` unless it is already recorded (idempotent, so resume and checkpoints can call it)."""
        if step <= self.last_step:
            return
        if not (self.write or self.collective):
            return
        acts = self.capture()
        if self.writer is not None:
            self.writer.append_step(step, acts)
        self.last_step = step

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
