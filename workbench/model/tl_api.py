"""TransformerLens's model API on PhiModel: tokens, weight views, loss, analysis helpers, hook switches.

Names, signatures and return conventions are TransformerLens 4.3's (its ``TransformerBridge``
and the ``HookedTransformer`` it replaced), so analysis code written for it runs unchanged.
Weight views are views of our fused parameters (no copies) in TransformerLens's layouts.
Two Phi facts show through: there is no positional embedding matrix (``W_pos`` raises;
Phi uses rotary positions), and the block is parallel, so the MLP reads what attention
reads: ``accumulated_bias(layer, mlp_input=True)`` adds no attention bias of ``layer``.

``QK``, ``OV`` and ``all_composition_scores`` return TransformerLens's ``FactoredMatrix``
(and use its composition-score code), so they import TransformerLens on first use.
"""
from __future__ import annotations

import sys
from typing import Any, Optional, Union

import numpy as np
import torch

from workbench.errors import InputError

from .tokenizer import Tokenizer


class TransformerLensAPI:
    """Mixin for PhiModel (which provides ``cfg``, ``tokenizer``, ``embed``, ``blocks``, ``unembed``)."""

    cfg: Any

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer; once TransformerLens is imported, its Hugging Face twin
        (``Tokenizer.hf``), which TransformerLens's utilities accept."""
        tok = self.__dict__.get("_tokenizer")
        if isinstance(tok, Tokenizer) and "transformer_lens" in sys.modules:
            return tok.hf
        return tok

    @tokenizer.setter
    def tokenizer(self, value: Any) -> None:
        self.__dict__["_tokenizer"] = value

    # -- hook switches (TransformerLens's; they change which hooks fire, not the numbers) ----
    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Include the per-head ``blocks.{i}.attn.hook_result`` in an unfiltered ``run_with_cache``.

        A hook or cache that names ``hook_result`` gets it either way; it costs a per-head
        output projection only in the layers where it is hooked.
        """
        self.cfg.use_attn_result = bool(use_attn_result)

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        """Per-head q/k/v inputs through ``blocks.{i}.hook_q_input|hook_k_input|hook_v_input``."""
        self.cfg.use_split_qkv_input = bool(use_split_qkv_input)

    def set_use_attn_in(self, use_attn_in: bool) -> None:
        """One per-head attention input through ``blocks.{i}.hook_attn_in``."""
        self.cfg.use_attn_in = bool(use_attn_in)

    def set_use_hook_mlp_in(self, use_hook_mlp_in: bool) -> None:
        """The MLP's own copy of its input through ``blocks.{i}.hook_mlp_in``."""
        self.cfg.use_hook_mlp_in = bool(use_hook_mlp_in)

    # -- tokens -------------------------------------------------------------------------
    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise InputError("this model has no tokenizer: load a checkpoint folder with tokenizer.json, "
                             "or set model.tokenizer = Tokenizer.from_file('tokenizer.json')")
        return self.tokenizer

    def to_tokens(self, input: Union[str, list[str]], prepend_bos: Optional[bool] = None,
                  padding_side: Optional[str] = None, move_to_device: bool = True,
                  truncate: bool = True) -> torch.Tensor:
        """Token ids ``[batch, pos]``; several texts are padded (right by default).

        ``prepend_bos=None`` uses ``cfg.default_prepend_bos`` (False: phi-2 adds no BOS).
        """
        prepend = self.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
        toks = self._need_tokenizer().to_tokens(input, prepend_bos=prepend, padding_side=padding_side)
        if truncate:
            toks = toks[:, : self.cfg.n_ctx]
        return toks.to(self.cfg.device) if move_to_device else toks

    def to_str_tokens(self, input: Any, prepend_bos: Optional[bool] = None,
                      padding_side: Optional[str] = None) -> list:
        """The text of each token: a list for one sequence (a ``[1, pos]`` tensor counts as one).

        A list of strings, or a ``[batch, pos]`` tensor with batch > 1, gives a list of lists.
        """
        tok = self._need_tokenizer()
        if isinstance(input, str):
            return tok.to_str_tokens(self.to_tokens(input, prepend_bos, padding_side, move_to_device=False)[0])
        if isinstance(input, list) and input and isinstance(input[0], str):
            return [self.to_str_tokens(item, prepend_bos, padding_side) for item in input]
        if isinstance(input, (torch.Tensor, np.ndarray)):
            input = torch.as_tensor(input)
            input = input.reshape(1) if input.ndim == 0 else input
            input = input[0] if input.ndim == 2 and input.shape[0] == 1 else input
        return tok.to_str_tokens(input)

    def to_string(self, tokens: Any) -> Union[str, list[str]]:
        """Decode ``[pos]`` (or a single id) to a string, ``[batch, pos]`` to a list of strings."""
        return self._need_tokenizer().to_string(tokens)

    def to_single_token(self, string: str) -> int:
        """The id of a string that is exactly one token (``AssertionError`` otherwise)."""
        token = self.to_tokens(string, prepend_bos=False, move_to_device=False).squeeze()
        if token.numel() != 1:
            raise AssertionError(f"Input string: {string} is not a single token!")
        return int(token.item())

    def to_single_str_token(self, int_token: int) -> str:
        """The text of one token id."""
        assert isinstance(int_token, int)
        return self.to_str_tokens(torch.tensor([int_token]))[0]

    def get_token_position(self, single_token: Union[str, int], input: Union[str, torch.Tensor],
                           mode: str = "first", prepend_bos: Optional[bool] = None,
                           padding_side: Optional[str] = None) -> int:
        """Position of ``single_token`` in ``input`` (text, ``[pos]`` or ``[1, pos]`` ids)."""
        tokens = self.to_tokens(input, prepend_bos, padding_side) if isinstance(input, str) else input
        if tokens.ndim == 2:
            assert tokens.shape[0] == 1, f"If tokens are rank two, they must have shape [1, seq_len], not {tokens.shape}"
            tokens = tokens[0]
        if isinstance(single_token, str):
            single_token = self.to_single_token(single_token)
        elif isinstance(single_token, torch.Tensor):
            single_token = int(single_token.item())
        indices = torch.arange(len(tokens), device=tokens.device)[tokens == single_token]
        assert len(indices) > 0, "The token does not occur in the prompt"
        if mode == "first":
            return int(indices[0].item())
        if mode == "last":
            return int(indices[-1].item())
        raise ValueError(f"mode must be 'first' or 'last', not {mode}")

    def input_to_embed(self, input: Union[str, list[str], torch.Tensor], prepend_bos: Optional[bool] = None,
                       padding_side: Optional[str] = None, attention_mask: Optional[torch.Tensor] = None):
        """``(residual entering block 0 [batch, pos, d_model], tokens, None, attention_mask)``.

        Resume the run with ``model(residual, start_at_layer=0, tokens=tokens)``. The third
        item (TransformerLens's shortformer positional embedding) is always None.
        """
        if isinstance(input, (str, list)):
            tokens = self.to_tokens(input, prepend_bos=prepend_bos, padding_side=padding_side)
        else:
            tokens = input[None] if input.ndim == 1 else input
        return self(tokens, stop_at_layer=0), tokens, None, attention_mask

    def loss_fn(self, logits: torch.Tensor, tokens: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                per_token: bool = False) -> torch.Tensor:
        """Next-token cross-entropy in nats: the mean, or ``[batch, pos - 1]`` with ``per_token``.

        With ``attention_mask`` ``[batch, pos]``, positions whose token or next token is
        masked out count zero and are left out of the mean (TransformerLens's rule).
        """
        from .model import lm_loss
        tokens = tokens.to(logits.device)
        if attention_mask is None:
            return lm_loss(logits, tokens, per_token=per_token)
        if attention_mask.shape != tokens.shape:
            raise ValueError(f"attention_mask must have the shape of tokens {tuple(tokens.shape)}, "
                             f"got {tuple(attention_mask.shape)}")
        mask = attention_mask.to(logits.device).bool()
        keep = mask[:, :-1] & mask[:, 1:]                                    # [batch, pos - 1]
        nll = lm_loss(logits, tokens, per_token=True).masked_fill(~keep, 0.0)
        return nll if per_token else nll.sum() / keep.sum()

    # -- weights in TransformerLens's layouts (views of our parameters) -----------------------
    @property
    def W_E(self) -> torch.Tensor:
        """``[d_vocab, d_model]``"""
        return self.embed.W_E

    @property
    def W_U(self) -> torch.Tensor:
        """``[d_model, d_vocab]``"""
        return self.unembed.W_U

    @property
    def b_U(self) -> torch.Tensor:
        """``[d_vocab]``"""
        return self.unembed.b_U

    def __getattr__(self, name: str) -> Any:
        # Here rather than a W_pos property: torch's Module.__getattr__ would replace the
        # property's AttributeError (and its message) with a generic one.
        if name == "W_pos":
            raise AttributeError("W_pos is only defined for models with a learned absolute positional embedding; "
                                 "Phi has rotary positions (positional_embedding_type='rotary')")
        return super().__getattr__(name)

    def _stack(self, part: str, attr: str) -> torch.Tensor:
        return torch.stack([getattr(getattr(b, part), attr) for b in self.blocks])

    W_Q = property(lambda self: self._stack("attn", "W_Q"), doc="``[layer, head, d_model, d_head]``")
    W_K = property(lambda self: self._stack("attn", "W_K"), doc="``[layer, head, d_model, d_head]``")
    W_V = property(lambda self: self._stack("attn", "W_V"), doc="``[layer, head, d_model, d_head]``")
    W_O = property(lambda self: self._stack("attn", "W_O"), doc="``[layer, head, d_head, d_model]``")
    b_Q = property(lambda self: self._stack("attn", "b_Q"), doc="``[layer, head, d_head]``")
    b_K = property(lambda self: self._stack("attn", "b_K"), doc="``[layer, head, d_head]``")
    b_V = property(lambda self: self._stack("attn", "b_V"), doc="``[layer, head, d_head]``")
    b_O = property(lambda self: self._stack("attn", "b_O"), doc="``[layer, d_model]``")
    W_in = property(lambda self: self._stack("mlp", "W_in"), doc="``[layer, d_model, d_mlp]``")
    W_out = property(lambda self: self._stack("mlp", "W_out"), doc="``[layer, d_mlp, d_model]``")
    b_in = property(lambda self: self._stack("mlp", "b_in"), doc="``[layer, d_mlp]``")
    b_out = property(lambda self: self._stack("mlp", "b_out"), doc="``[layer, d_model]``")

    @property
    def QK(self):
        """``FactoredMatrix`` ``W_Q @ W_K^T`` per layer and head ``[layer, head, d_model, d_model]``."""
        from transformer_lens.FactoredMatrix import FactoredMatrix
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self):
        """``FactoredMatrix`` ``W_V @ W_O`` per layer and head ``[layer, head, d_model, d_model]``."""
        from transformer_lens.FactoredMatrix import FactoredMatrix
        return FactoredMatrix(self.W_V, self.W_O)

    def tl_parameters(self) -> dict[str, torch.Tensor]:
        """Every weight under its TransformerLens name (``blocks.0.attn.W_Q``, ``unembed.W_U``, ...)."""
        out = {"embed.W_E": self.W_E}
        for i, b in enumerate(self.blocks):
            for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O"):
                out[f"blocks.{i}.attn.{name}"] = getattr(b.attn, name)
            for name in ("W_in", "W_out", "b_in", "b_out"):
                out[f"blocks.{i}.mlp.{name}"] = getattr(b.mlp, name)
            out[f"blocks.{i}.ln1.w"], out[f"blocks.{i}.ln1.b"] = b.ln1.weight, b.ln1.bias
        out["ln_final.w"], out["ln_final.b"] = self.ln_final.weight, self.ln_final.bias
        out["unembed.W_U"], out["unembed.b_U"] = self.W_U, self.b_U
        return out

    # -- analysis helpers -----------------------------------------------------------------
    def tokens_to_residual_directions(self, tokens: Union[str, int, torch.Tensor]) -> torch.Tensor:
        """Unembedding directions: ``[d_model]`` for one token (id or string), ``[*tokens.shape, d_model]``."""
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        if isinstance(tokens, torch.Tensor) and tokens.numel() == 1:
            tokens = int(tokens.item())
        return self.W_U[:, torch.as_tensor(tokens, device=self.W_U.device)].movedim(0, -1)

    def accumulated_bias(self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True) -> torch.Tensor:
        """Sum of the attention (``b_O``) and MLP output biases written before block ``layer``: ``[d_model]``.

        In Phi's parallel block the MLP reads the same residual as attention, so
        ``mlp_input=True`` adds nothing for ``layer`` itself.
        """
        total = torch.zeros(self.cfg.d_model, device=self.W_U.device, dtype=self.W_U.dtype)
        for b in self.blocks[:layer]:
            total = total + b.attn.b_O
            if include_mlp_biases:
                total = total + b.mlp.b_out
        return total

    def all_composition_scores(self, mode: str) -> torch.Tensor:
        """Q-, K- or V-composition scores of every head pair ``[layer, head, layer, head]``.

        Zero where the second head is not in a later layer (TransformerLens's definition).
        """
        from transformer_lens.utilities import composition_scores
        rights = {"Q": lambda: self.QK, "K": lambda: self.QK.T, "V": lambda: self.OV}
        if mode not in rights:
            raise ValueError(f"mode must be one of ['Q', 'K', 'V'] not {mode}")
        scores = composition_scores(self.OV, rights[mode](), broadcast_dims=True)
        idx = torch.arange(self.cfg.n_layers, device=scores.device)
        mask = idx[:, None, None, None] < idx[None, None, :, None]
        return torch.where(mask, scores, torch.zeros_like(scores))

    @property
    def all_head_labels(self) -> list[str]:
        """``["L0H0", "L0H1", ...]`` in layer-major order."""
        return [f"L{l}H{h}" for l in range(self.cfg.n_layers) for h in range(self.cfg.n_heads)]
