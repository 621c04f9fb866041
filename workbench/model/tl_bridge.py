"""Hand a PhiModel to TransformerLens: a ``TransformerBridge`` over an HF model holding our weights.

TransformerLens is imported here (its cost: docs/bench-model.md), never by ``import workbench``.
The bridge boots offline from an in-memory ``PhiForCausalLM`` plus a tokenizer
saved in a local folder; booting rewires the modules of the model it is given,
so it gets a fresh HF model, never one the caller holds.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional


def to_hf_model(model):
    """A ``transformers.PhiForCausalLM`` with the same weights (copied), in eval mode."""
    from transformers import PhiConfig as HFPhiConfig, PhiForCausalLM

    from .weight_map import to_hf
    hf_cfg = model.cfg.to_hf()
    hf_cfg.pop("architectures")
    hf_cfg.pop("model_type")
    cfg = HFPhiConfig(**hf_cfg)
    hf = PhiForCausalLM(cfg).to(model.dtype)
    state = to_hf(model.state_dict(), model.cfg.n_layers)
    hf.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=True)
    return hf.to(model.device).eval()


def to_transformer_lens(model, tokenizer_dir: Optional[str] = None):
    """An equivalent TransformerLens ``TransformerBridge`` (logits equal ours)."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedTokenizerFast

    if tokenizer_dir is None:
        tokenizer_dir = tempfile.mkdtemp(prefix="workbench-tok-")
        _save_hf_tokenizer(model, Path(tokenizer_dir))
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    hf = to_hf_model(model)
    bridge = TransformerBridge.boot_transformers("microsoft/phi-2", hf_model=hf, tokenizer=tokenizer,
                                                 device=str(model.device), dtype=model.dtype)
    # Booting from an in-memory model skips TransformerLens's tokenizer probe and leaves
    # tokenizer_prepends_bos at True, which makes its to_tokens drop a real first token
    # (or keep no BOS) for tokenizers like phi-2's that add none: probe it as TL's loader does.
    probe = bridge.tokenizer.encode("a")
    bridge.cfg.tokenizer_prepends_bos = len(probe) > 1 and probe[0] == bridge.tokenizer.bos_token_id
    bridge.cfg.default_prepend_bos = model.cfg.default_prepend_bos
    return bridge


def _save_hf_tokenizer(model, folder: Path) -> None:
    """A tokenizer folder ``transformers`` can read: the model's own, or a byte-level stand-in."""
    from transformers import PreTrainedTokenizerFast
    folder.mkdir(parents=True, exist_ok=True)
    if model.tokenizer is not None:
        tok_obj = model.tokenizer.tok
    else:  # TL needs some tokenizer to boot; ids are what matter for activations.
        from .tokenizer import Tokenizer
        tok_obj = Tokenizer.train_bpe(["a b c"], vocab_size=300).tok
    fast = PreTrainedTokenizerFast(tokenizer_object=tok_obj, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    fast.save_pretrained(str(folder))
