"""The Phi-2 architecture, hookable, written top-down: LayerNorm -> Attention -> MLP -> Block -> PhiModel.

Phi's block is parallel: one LayerNorm feeds both attention and the MLP,
``resid_post = resid_pre + attn(ln1(x)) + mlp(ln1(x))``. Every activation
passes through a HookPoint named as in TransformerLens. Expensive activations
(the attention pattern, per-head outputs, LayerNorm scales) are only built when
a hook asks for them; otherwise the fused kernels run.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from workbench.hooks import HookedRootModule, HookPoint

from . import hf_format
from .config import PhiConfig
from .generate import generate
from .kv_cache import KVCache
from .rotary import apply_rotary, rotary_cos_sin
from .tl_bridge import to_transformer_lens
from .tl_api import TransformerLensAPI


class LayerNorm(nn.Module):
    """LayerNorm with ``hook_scale`` ``[batch, pos, 1]`` and ``hook_normalized`` ``[batch, pos, d_model]``.

    As in TransformerLens, ``hook_scale`` is ``sqrt(var + eps)`` and
    ``hook_normalized`` is ``(x - mean) / scale`` *before* the weight and bias; both
    are computed (and cached) in fp32 under half-precision weights, as TransformerLens
    and the fused kernel do, and the output is cast back to the input dtype.
    """

    def __init__(self, cfg: PhiConfig) -> None:
        super().__init__()
        self.eps = cfg.layer_norm_eps
        self.weight = nn.Parameter(torch.ones(cfg.d_model))
        self.bias = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.hook_scale.active or self.hook_normalized.active):  # fused kernel, same numbers
            return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        dtype = x.dtype
        x = x.float() if dtype not in (torch.float32, torch.float64) else x
        x = x - x.mean(-1, keepdim=True)
        # pow(0.5), not sqrt(): sqrt saves its output for backward, so a hook editing the
        # scale in place would break .backward(); pow saves only its input.
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).pow(0.5))
        out = self.hook_normalized(x / scale) * self.weight + self.bias
        return out.to(dtype)

    # TransformerLens's names for the affine parameters
    w = property(lambda self: self.weight, doc="``[d_model]`` (TransformerLens's name for the weight)")
    b = property(lambda self: self.bias, doc="``[d_model]`` (TransformerLens's name for the bias)")


class Attention(nn.Module):
    """Causal self-attention with partial rotary; q, k and v come from one fused projection."""

    def __init__(self, cfg: PhiConfig, layer: int) -> None:
        super().__init__()
        self.cfg, self.layer = cfg, layer
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)   # rows: [q; k; v], each head-major
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)     # HF's name for W_O
        self.scale = cfg.d_head ** -0.5
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()  # [batch, pos, head, d_head]
        self.hook_rot_q, self.hook_rot_k = HookPoint(), HookPoint()                   # [batch, pos, head, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, head, q_pos, k_pos], scaled, -inf above the diagonal
        self.hook_pattern = HookPoint()      # [batch, head, q_pos, k_pos]
        self.hook_z = HookPoint()            # [batch, pos, head, d_head]
        self.hook_result = HookPoint()       # [batch, pos, head, d_model], without the output bias

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                kv_cache: Optional[KVCache] = None) -> torch.Tensor:
        """``x`` ``[batch, pos, d_model]`` (normalised) -> attention output ``[batch, pos, d_model]``.

        ``x`` may also be a tuple of per-head inputs ``(q_in, k_in, v_in)``, each
        ``[batch, pos, head, d_model]`` (normalised): the split-input path of ``Block``.
        """
        if isinstance(x, tuple):
            q, k, v = self._project_per_head(*x)
        else:
            b, p, _ = x.shape
            qkv = self.qkv(x).view(b, p, 3, self.cfg.n_heads, self.cfg.d_head)
            # Three single views, not unbind(): autograd forbids in-place edits of the views a
            # multi-output op returns, and a hook may do `v[:, :, 0] = 0` with gradients on.
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        return self._attend(self.hook_q(q), self.hook_k(k), self.hook_v(v), cos, sin, kv_cache)

    def _project_per_head(self, q_in: torch.Tensor, k_in: torch.Tensor,
                          v_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each head's q, k, v ``[batch, pos, head, d_head]`` from its own input ``[batch, pos, head, d_model]``.

        One einsum per input with that head's slice of the fused weight: the same
        multiply-adds as the fused projection, not ``n_heads`` times more.
        """
        c = self.cfg
        w = self.qkv.weight.view(3, c.n_heads, c.d_head, c.d_model)   # [qkv, head, d_head, d_model]
        bias = self.qkv.bias.view(3, c.n_heads, c.d_head)
        return tuple(torch.einsum("bphm,hdm->bphd", t, w[i]) + bias[i] for i, t in enumerate((q_in, k_in, v_in)))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                kv_cache: Optional[KVCache]) -> torch.Tensor:
        """Rotary, scores/pattern (only when hooked) or SDPA, then the output projection."""
        b, p, h, dh = q.shape
        q = self.hook_rot_q(apply_rotary(q, cos, sin))
        k = self.hook_rot_k(apply_rotary(k, cos, sin))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [batch, head, pos, d_head]
        past = 0
        if kv_cache is not None:
            past = kv_cache.length
            k, v = kv_cache.update(self.layer, k, v)
        kp = k.shape[2]
        if self.hook_attn_scores.active or self.hook_pattern.active:
            # Scale q (pos x d_head) rather than the scores (pos x pos), and mask in place:
            # the explicit path then costs little more than SDPA.
            scores = (q * self.scale) @ k.transpose(-1, -2)          # [batch, head, q_pos, k_pos]
            future = torch.ones(p, kp, dtype=torch.bool, device=q.device).triu(diagonal=kp - p + 1)
            scores = self.hook_attn_scores(scores.masked_fill_(future, float("-inf")))
            if scores.dtype == torch.float32:
                pattern = scores.softmax(dim=-1)
                if pattern.requires_grad and self.hook_pattern.active:
                    pattern = pattern.clone()   # softmax saves its output: let a hook edit a copy in place
            else:  # half precision: softmax in fp32, as HF's eager attention does
                pattern = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
            z = self.hook_pattern(pattern) @ v                       # [batch, head, pos, d_head]
        elif past == 0 or p == 1:
            # One query attends to everything cached; a fresh sequence is plain causal.
            z = F.scaled_dot_product_attention(q, k, v, is_causal=past == 0 and p > 1, scale=self.scale)
        else:  # several new queries after a cache: causal mask offset by the cached length
            mask = torch.ones(p, kp, dtype=torch.bool, device=q.device).tril(diagonal=kp - p)
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        out, z = z, z.transpose(1, 2).contiguous()                   # [batch, pos, head, d_head]
        if self.hook_z.active and z.requires_grad and z.data_ptr() == out.data_ptr():
            z = z.clone()   # SDPA saves its output for backward: a hook may edit z in place only on a copy
        z = self.hook_z(z)
        if self.hook_result.active:
            w_o = self.dense.weight.view(self.cfg.d_model, h, dh)    # [d_model, head, d_head]
            result = self.hook_result(torch.einsum("bphd,mhd->bphm", z, w_o))
            return result.sum(2) + self.dense.bias
        return self.dense(z.reshape(b, p, h * dh))

    # TransformerLens-style weight views, for analysis (no copies).
    @property
    def W_Q(self) -> torch.Tensor:
        """``[head, d_model, d_head]``"""
        return self._w(0)

    @property
    def W_K(self) -> torch.Tensor:
        return self._w(1)

    @property
    def W_V(self) -> torch.Tensor:
        return self._w(2)

    @property
    def b_Q(self) -> torch.Tensor:
        """``[head, d_head]``"""
        return self.qkv.bias.view(3, self.cfg.n_heads, self.cfg.d_head)[0]

    @property
    def b_K(self) -> torch.Tensor:
        return self.qkv.bias.view(3, self.cfg.n_heads, self.cfg.d_head)[1]

    @property
    def b_V(self) -> torch.Tensor:
        return self.qkv.bias.view(3, self.cfg.n_heads, self.cfg.d_head)[2]

    @property
    def W_O(self) -> torch.Tensor:
        """``[head, d_head, d_model]``"""
        return self.dense.weight.view(self.cfg.d_model, self.cfg.n_heads, self.cfg.d_head).permute(1, 2, 0)

    @property
    def b_O(self) -> torch.Tensor:
        return self.dense.bias

    def _w(self, i: int) -> torch.Tensor:
        c = self.cfg
        return self.qkv.weight.view(3, c.n_heads, c.d_head, c.d_model)[i].transpose(1, 2)


class MLP(nn.Module):
    """fc1 -> gelu_new (tanh approximation) -> fc2."""

    def __init__(self, cfg: PhiConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_mlp)
        self.fc2 = nn.Linear(cfg.d_mlp, cfg.d_model)
        self.hook_pre = HookPoint()   # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.hook_pre(self.fc1(x))
        return self.fc2(self.hook_post(F.gelu(pre, approximate="tanh")))

    # TransformerLens-style weight views (no copies).
    @property
    def W_in(self) -> torch.Tensor:
        """``[d_model, d_mlp]``"""
        return self.fc1.weight.T

    @property
    def b_in(self) -> torch.Tensor:
        return self.fc1.bias

    @property
    def W_out(self) -> torch.Tensor:
        """``[d_mlp, d_model]``"""
        return self.fc2.weight.T

    @property
    def b_out(self) -> torch.Tensor:
        return self.fc2.bias


class Embed(nn.Embedding):
    """Token embedding; ``W_E`` ``[d_vocab, d_model]`` is its weight (TransformerLens's name)."""

    @property
    def W_E(self) -> torch.Tensor:
        return self.weight


class Unembed(nn.Linear):
    """The unembedding, with bias (untied from the embedding); ``W_U`` ``[d_model, d_vocab]``, ``b_U``."""

    @property
    def W_U(self) -> torch.Tensor:
        return self.weight.T

    @property
    def b_U(self) -> torch.Tensor:
        return self.bias


class Block(nn.Module):
    """Parallel block: ``resid_post = resid_pre + attn(ln1(x)) + mlp(ln1(x))``.

    Split inputs (TransformerLens's flags, off by default and free when off):
    with ``cfg.use_split_qkv_input`` each head reads its own copy of ``resid_pre``
    through ``hook_q_input`` / ``hook_k_input`` / ``hook_v_input`` ``[batch, pos, head, d_model]``,
    with ``cfg.use_attn_in`` one copy for q, k and v through ``hook_attn_in``, and
    with ``cfg.use_hook_mlp_in`` the MLP reads ``hook_mlp_in`` ``[batch, pos, d_model]``.
    Each copy goes through ``ln1`` on its own, so patching one head's key input
    changes that head's keys only (what edge-level circuit analysis needs).
    """

    def __init__(self, cfg: PhiConfig, layer: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.ln1 = LayerNorm(cfg)
        self.attn = Attention(cfg, layer)
        self.mlp = MLP(cfg)
        self.hook_resid_pre = HookPoint()   # [batch, pos, d_model]
        self.hook_attn_in = HookPoint()     # [batch, pos, head, d_model], cfg.use_attn_in only
        self.hook_q_input = HookPoint()     # [batch, pos, head, d_model], cfg.use_split_qkv_input only
        self.hook_k_input = HookPoint()
        self.hook_v_input = HookPoint()
        self.hook_mlp_in = HookPoint()      # [batch, pos, d_model], cfg.use_hook_mlp_in only
        self.hook_attn_out = HookPoint()    # [batch, pos, d_model]
        self.hook_mlp_out = HookPoint()     # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                kv_cache: Optional[KVCache] = None) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        c = self.cfg
        if c.use_split_qkv_input or c.use_attn_in or c.use_hook_mlp_in:
            attn_in, mlp_in = self._split_inputs(x)
        else:
            attn_in = mlp_in = self.ln1(x)
        attn_out = self.hook_attn_out(self.attn(attn_in, cos, sin, kv_cache))
        mlp_out = self.hook_mlp_out(self.mlp(mlp_in))
        return self.hook_resid_post(attn_out + mlp_out + x)  # HF's summation order

    def _split_inputs(self, x: torch.Tensor):
        """The normalised attention input (one tensor, or per-head q/k/v inputs) and MLP input."""
        c = self.cfg
        if c.use_split_qkv_input or c.use_attn_in:
            # A real copy per head (not an expand view), so a hook may edit one head in place.
            per_head = x.unsqueeze(2).repeat(1, 1, c.n_heads, 1)     # [batch, pos, head, d_model]
            if c.use_split_qkv_input:
                base = self.hook_attn_in(per_head) if c.use_attn_in else per_head
                attn_in = tuple(self.ln1(hook(base.clone())) for hook in
                                (self.hook_q_input, self.hook_k_input, self.hook_v_input))
            else:
                normed = self.ln1(self.hook_attn_in(per_head))
                attn_in = (normed, normed, normed)
        else:
            attn_in = self.ln1(x)
        mlp_in = self.ln1(self.hook_mlp_in(x.clone())) if c.use_hook_mlp_in else \
            (self.ln1(x) if isinstance(attn_in, tuple) else attn_in)
        return attn_in, mlp_in


class PhiModel(TransformerLensAPI, HookedRootModule):
    """A Phi-architecture causal LM with TransformerLens hook names and HF numerics.

    ``model(tokens)`` -> logits ``[batch, pos, d_vocab]``. ``tokens`` may be a
    ``LongTensor [batch, pos]`` or, with a tokenizer attached, a string or list of strings.
    TransformerLens's model API (token helpers, weight views, ``loss_fn``, hook
    switches, ...) comes from ``TransformerLensAPI`` (tl_api.py).
    """

    def __init__(self, cfg: PhiConfig, tokenizer=None) -> None:
        super().__init__()
        # A private copy: the model writes cfg.device/dtype and the hook switches, and two models
        # built from one config (a meta-device clone, say) must not change each other's.
        self.cfg = cfg = dataclasses.replace(cfg)
        self.tokenizer = tokenizer
        self.embed = Embed(cfg.d_vocab, cfg.d_model)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.ln_final = LayerNorm(cfg)
        self.unembed = Unembed(cfg.d_model, cfg.d_vocab)  # with bias; untied from embed
        self.setup()
        self._sync_cfg()
        if self.embed.weight.device.type != "meta":
            self.init_weights()

    def init_weights(self) -> None:
        """Normal(0, initializer_range) weights, zero biases, unit LayerNorms (HF's scheme)."""
        std = self.cfg.initializer_range
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # -- forward -------------------------------------------------------------
    def forward(self, input: Union[torch.Tensor, str, list], return_type: Optional[str] = "logits",
                loss_per_token: bool = False, prepend_bos: Optional[bool] = None,
                padding_side: Optional[str] = None, start_at_layer: Optional[int] = None,
                tokens: Optional[torch.Tensor] = None, stop_at_layer: Optional[int] = None,
                kv_cache: Optional[KVCache] = None) -> Optional[torch.Tensor]:
        """Run the model (TransformerLens's argument names and order).

        Args:
            input: token ids ``[batch, pos]`` (or text, with a tokenizer); with
                ``start_at_layer`` the residual stream ``[batch, pos, d_model]`` entering that block.
            return_type: ``"logits"``, ``"loss"`` (mean next-token cross-entropy, nats),
                ``"both"`` -> ``(logits, loss)``, or ``None``.
            prepend_bos, padding_side: for text input, as in ``to_tokens``.
            start_at_layer: run blocks from this one on (negative counts from the end).
            tokens: the token ids, needed for ``"loss"`` when starting from a residual.
            stop_at_layer: return the residual stream entering this block instead.
            kv_cache: a ``KVCache``; ``input`` then holds only the new tokens.
        """
        n = self.cfg.n_layers
        if start_at_layer is None:
            if not isinstance(input, torch.Tensor):
                input = self.to_tokens(input, prepend_bos=prepend_bos, padding_side=padding_side)
            tokens = input if input.ndim == 2 else input[None]
            x = self.hook_embed(self.embed(tokens))
            start = 0
        else:
            x, start = input, _start_layer(input, start_at_layer, n)
        stop = n if stop_at_layer is None else (stop_at_layer + n if stop_at_layer < 0 else stop_at_layer)
        if kv_cache is not None and stop < n:
            raise ValueError("kv_cache cannot be combined with stop_at_layer: the layers after the stop "
                             "would miss the new positions")
        past = kv_cache.length if kv_cache is not None else 0
        positions = torch.arange(past, past + x.shape[1], device=x.device)
        cos, sin = rotary_cos_sin(positions, self.cfg.rotary_dim, self.cfg.rope_theta, x.dtype)
        for block in self.blocks[start:stop]:
            x = block(x, cos, sin, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(x.shape[1])
        if stop_at_layer is not None:
            return x
        if return_type is None:
            return None
        logits = self.unembed(self.ln_final(x))              # [batch, pos, d_vocab]
        if return_type == "logits":
            return logits
        if tokens is None:
            raise ValueError("return_type='loss' needs tokens=...: the input was a residual stream")
        loss = lm_loss(logits, tokens, per_token=loss_per_token)
        if return_type == "loss":
            return loss
        if return_type == "both":
            return logits, loss
        raise ValueError(f"return_type must be 'logits', 'loss', 'both' or None, got {return_type!r}")

    _SWITCHED = {".attn.hook_result": "use_attn_result", ".hook_q_input": "use_split_qkv_input",
                 ".hook_k_input": "use_split_qkv_input", ".hook_v_input": "use_split_qkv_input",
                 ".hook_attn_in": "use_attn_in", ".hook_mlp_in": "use_hook_mlp_in"}

    def _fires_by_default(self, name: str) -> bool:
        """Hooks behind TransformerLens's switches join an unfiltered ``run_with_cache`` only when on."""
        if not name.endswith(("_input", "hook_result", "_in")):
            return True
        for suffix, switch in self._SWITCHED.items():
            if name.endswith(suffix):
                return getattr(self.cfg, switch)
        return True

    # -- device bookkeeping for tools that read cfg.device / cfg.dtype ----------
    def _sync_cfg(self) -> None:
        self.cfg.device = str(self.embed.weight.device)
        self.cfg.dtype = self.embed.weight.dtype

    def _apply(self, fn, recurse: bool = True):
        out = super()._apply(fn, recurse)
        self._sync_cfg()
        return out

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    # -- checkpoints, generation (implemented in sibling modules) -----------------
    # The training run folder a loaded checkpoint belongs to (set by from_pretrained), else None.
    run_dir: Optional[Path] = None

    @classmethod
    def from_pretrained(cls, path_or_hub_id: Union[str, Path], dtype: Optional[Union[torch.dtype, str]] = None,
                        device: Optional[Union[str, torch.device]] = None) -> "PhiModel":
        """Load an HF-format Phi checkpoint: a folder, a training run folder, or a hub id.

        Holds one copy of the weights while loading (each tensor is read straight into its
        final dtype and device). ``dtype`` defaults to float32. A training run folder loads
        its newest ``checkpoints/step_*``; then, and for a checkpoint folder inside a run,
        ``model.run_dir`` is that run folder's absolute Path (else None). Bad files raise
        ``workbench.errors`` types that name the file. See ``hf_format.load_pretrained``.
        """
        return hf_format.load_pretrained(path_or_hub_id, model_cls=cls, dtype=dtype, device=device)

    def save_pretrained(self, directory, max_shard_size: Optional[int] = None) -> None:
        """Write HF-format ``config.json`` + safetensors that ``transformers`` loads."""
        hf_format.save_pretrained(self, directory, max_shard_size=max_shard_size)

    @torch.no_grad()
    def generate(self, input, max_new_tokens: int = 20, temperature: float = 1.0,
                 top_k: Optional[int] = None, use_kv_cache: bool = True,
                 stop_at_eos: bool = False, seed: Optional[int] = None):
        """Sample a continuation; ``temperature=0`` is greedy. Text in gives text out."""
        return generate(self, input, max_new_tokens, temperature, top_k, use_kv_cache, stop_at_eos, seed)

    def to_transformer_lens(self, tokenizer_dir: Optional[str] = None):
        """An equivalent TransformerLens ``TransformerBridge`` over an HF model with our weights."""
        return to_transformer_lens(self, tokenizer_dir)


def _start_layer(x: torch.Tensor, start_at_layer: int, n_layers: int) -> int:
    """Check the residual input of ``start_at_layer`` and return the (non-negative) block index."""
    if not (x.is_floating_point() and x.ndim == 3):
        raise ValueError(f"start_at_layer needs the residual-stream tensor [batch, pos, d_model] entering "
                         f"that block as input, got {'token ids ' if not x.is_floating_point() else ''}"
                         f"of shape {tuple(x.shape)}")
    start = start_at_layer + n_layers if start_at_layer < 0 else start_at_layer
    if not 0 <= start < n_layers:
        raise ValueError(f"start_at_layer={start_at_layer} is out of range for a model with {n_layers} layers")
    return start


def lm_loss(logits: torch.Tensor, tokens: torch.Tensor, per_token: bool = False) -> torch.Tensor:
    """Next-token cross-entropy in nats: mean scalar, or ``[batch, pos-1]`` with ``per_token``."""
    b, p, v = logits.shape
    # Shift the targets, not the logits: logits[:, :-1] is not contiguous, and reshaping it
    # copied every logit (210 MB at batch 4 x 256 x 51200). The last position is ignored.
    targets = torch.full_like(tokens, -100, dtype=torch.long)
    targets[:, :-1] = tokens[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, v).float(), targets.reshape(-1), ignore_index=-100,
                          reduction="none" if per_token else "mean")
    return nll.view(b, p)[:, :-1] if per_token else nll
