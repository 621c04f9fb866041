"""Record activations on a fixed probe set during training, into ``RUN/activations.h5``.

The probe set is fixed for the whole run and stored in the file (``tokens``):
``probe_rows`` repeated random-token sequences ``[BOS, A, A, ...]`` (where
induction heads show) and optionally ``probe_val_rows`` windows of validation
text. At each scheduled step the model runs the probe set once, under
``no_grad`` in eval mode, through the store's one capture path
(``workbench.store.capture.Capture``: the same hook resolution, stop layer and
grab as ``workbench cache``), and the activations go to
``RecordingWriter.append_step``: the recorder is capture plus a step index. The
training forward itself carries no hooks, so it keeps its fused kernels.

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

from workbench.errors import InputError
from workbench.store import RecordingWriter
from workbench.store import format as fmt
from workbench.store.capture import Capture
from workbench.analysis.tasks import repeated_random_tokens

from .config import TrainConfig
from .data import TokenData, synthetic_vocab

PROBE_SEED_OFFSET = 7919  # the probe set must not coincide with any training batch's synthetic rows


def probe_tokens(cfg: TrainConfig, data: TokenData) -> torch.Tensor:
    """The fixed probe set ``[rows, 1 + probe_period * probe_repeats]`` (repeated rows first)."""
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
            raise InputError(f"record.probe_val_rows needs at least {width} validation tokens "
                             f"(1 + probe_period x probe_repeats), the data has {len(val)}: "
                             "set record.probe_val_rows = 0 or give more validation data")
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
        self.capture = Capture(model, list(cfg.record.hooks))
        self.names = self.capture.names
        self.tokens = probe_tokens(cfg, data)
        self.last_step = -1
        self.writer: Optional[RecordingWriter] = None
        if not (write or self.collective):
            return
        shapes = self._in_eval(lambda: self.capture.shapes(self.tokens.shape[1]))  # FSDP: every rank runs it
        if write:
            self.writer = self._open_writer(shapes, data, resume_step)

    def _open_writer(self, shapes: dict, data: TokenData, resume_step: Optional[int]) -> RecordingWriter:
        r = self.cfg.record
        hooks = {n: (shapes[n], r.dtype) for n in self.names}
        row_bytes = self.tokens.shape[0] * sum(_numel(s) for s in shapes.values()) * fmt.itemsize(fmt.dtype_name(r.dtype))
        queue = max(1, r.queue_size) * row_bytes
        seq_len = self.tokens.shape[1]
        if resume_step is not None and self.path.exists():
            # Resume checks a file a SIGKILL left open, then drops steps past the checkpoint.
            w = RecordingWriter(self.path, hooks, seq_len=seq_len, mode="a", max_queue_bytes=queue,
                                drop_steps_after=resume_step)
            self.last_step = w.steps[-1] if w.steps else -1
            return w
        attrs = {"source": "workbench train", "run_name": self.cfg.name, "model_config": self.model.cfg.to_dict(),
                 "probe_period": r.probe_period, "probe_repeats": r.probe_repeats,
                 "probe_offset": 1 if data.eot is not None else 0,   # the BOS before the repeated block
                 "probe_repeated_rows": r.probe_rows, "probe_val_rows": r.probe_val_rows,
                 "probe_vocab_size": synthetic_vocab(self.cfg.data, data.vocab_size),
                 "train_config": self.cfg.to_dict()}
        if data.tokenizer is not None:
            attrs["tokenizer"] = data.tokenizer.tok.to_str()
        return RecordingWriter(self.path, hooks, seq_len=seq_len, attrs=attrs, mode="w",
                               probe_tokens=self.tokens, max_queue_bytes=queue)

    def _in_eval(self, fn):
        was_training = self.model.training
        self.model.eval()
        try:
            return fn()
        finally:
            self.model.train(was_training)

    def capture_probe(self) -> dict[str, torch.Tensor]:
        """One probe forward: ``{hook: [rows, *row_shape]}`` on the model's device."""
        return self._in_eval(lambda: self.capture(self.tokens.to(self.device, non_blocking=True)))

    def record(self, step: int) -> None:
        """Record ``step`` unless it is already recorded (idempotent, so resume and checkpoints can call it)."""
        if step <= self.last_step:
            return
        if not (self.write or self.collective):
            return
        acts = self.capture_probe()
        if self.writer is not None:
            self.writer.append_step(step, acts, copy=False)   # fresh tensors: handed over
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
