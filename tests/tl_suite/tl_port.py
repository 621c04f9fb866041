"""The port's harness: the tiny random PhiModel every ported TransformerLens test runs on.

TransformerLens's tests boot gpt2/distilgpt2 (downloaded) as a ``TransformerBridge``. Here
the model construction is the one thing changed: ``phi_model()`` is a 6-layer random
Phi (distilgpt2's depth, so layer indices in the tests stay valid) with a byte-level BPE
trained offline on the tests' own prompts, so their words are single tokens as in gpt2's
vocabulary. Numbers that TransformerLens pinned for gpt2 are recomputed through
``phi_bridge()``: TransformerLens's own ``TransformerBridge`` over the same weights.
"""
from __future__ import annotations

import functools

import torch

from workbench.model import PhiConfig, PhiModel, Tokenizer

NAMES = ["John", "Mary", "Tom", "James", "Dan", "Sid", "Martin", "Amy", "Alice", "Bob", "Charlie",
         "Smith", "Doe"]
SENTENCES = [
    "When John and Mary went to the shops, John gave the bag to Mary",
    "When Tom and James went to the park, James gave the ball to Tom",
    "When Dan and Sid went to the shops, Sid gave an apple to Dan",
    "After Martin and Amy went to the park, Amy gave a drink to Martin",
    "Then, John and Mary went to the store. John gave the milk to Mary",
    "Alice and Bob went to the market to buy eggs. Bob handed the bread to Alice",
    "Alice met with Bob. Bob gave the ball to Alice. Charlie said hello to Alice with a book",
    "Hello, world! Goodbye, world! hello world, the world is big. The capital of France is Paris.",
    "The quick brown fox jumps over the lazy dog. Natural language processing is fun.",
    "Why did the elephant cross the road? Take the super highway. Some prompt about a test, one two three four five six seven.",
    " four token sequence seven token sequence one two three 2 2 2 seven token seq",
    "A different prompt entirely, of another length. The cat sat on the mat in the house.",
    "def add(a, b):\n    return a + b\n\nclass Point:\n    def __init__(self, x, y):\n        self.x = x\n",
]
VOCAB = 1024


@functools.lru_cache(maxsize=None)
def phi_tokenizer() -> Tokenizer:
    corpus = SENTENCES * 20 + ["hello", "Hello", "test", "The", "Why"] * 30 + [" ".join(NAMES)] * 40 + [f" {n} and {m}" for n in NAMES for m in NAMES] * 3
    return Tokenizer.train_bpe(corpus, vocab_size=VOCAB)


def _randomise(model: PhiModel, seed: int) -> PhiModel:
    """Weights with some structure: larger init than HF's 0.02, random LayerNorms and biases."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif "ln" in name:
                p.copy_(1 + torch.randn(p.shape, generator=g) * 0.1)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.08)
    return model


def new_phi_model(seed: int = 0, dtype: torch.dtype = torch.float32, n_layers: int = 6) -> PhiModel:
    """A fresh model (for tests that change it); ``phi_model()`` is the shared read-only one."""
    tok = phi_tokenizer()
    cfg = PhiConfig(d_model=64, n_layers=n_layers, n_heads=4, d_mlp=256, d_vocab=tok.vocab_size, n_ctx=128,
                    partial_rotary_factor=0.5, bos_token_id=tok.bos_token_id, eos_token_id=tok.bos_token_id,
                    name="tiny-phi-tl-suite")
    return _randomise(PhiModel(cfg, tokenizer=tok), seed).to(dtype).eval()


@functools.lru_cache(maxsize=None)
def phi_model(seed: int = 0) -> PhiModel:
    return new_phi_model(seed)


@functools.lru_cache(maxsize=None)
def phi_bridge(seed: int = 0):
    """TransformerLens's TransformerBridge over the same weights (and tokenizer) as ``phi_model(seed)``."""
    return phi_model(seed).to_transformer_lens()


# -- how the port marks what it could not take over unchanged ---------------------------------
import pytest  # noqa: E402  (test-only module)
from beartype.roar import BeartypeCallHintParamViolation  # noqa: E402
from jaxtyping import TypeCheckError as JaxtypingTypeCheckError  # noqa: E402
from typeguard import TypeCheckError as TypeguardTypeCheckError  # noqa: E402

# TransformerLens's tests/typecheck_errors.py: the errors a runtime type-check rejection can surface as.
TYPECHECK_ERRORS = (BeartypeCallHintParamViolation, JaxtypingTypeCheckError, TypeguardTypeCheckError)


def not_applicable(reason: str):
    """A test that cannot apply to Phi or to a model that is not a bridge (counted as not applicable)."""
    return pytest.mark.skip(reason=f"not applicable: {reason}")


def known_failure(reason: str):
    """A test that applies but fails on PhiModel, for the reason given (listed in docs/model.md).

    Strict: if it starts passing, the run fails until the mark (and the docs) are updated.
    """
    return pytest.mark.xfail(reason=reason, strict=True)


class BridgeGoldens:
    """Stands in for TransformerLens's golden dataset (HookedTransformer captures of gpt2, downloaded).

    Each artifact a ported test reads is computed through ``phi_bridge()`` on the same
    weights instead: ``scalars``, ``tensors(group)``, ``has(group)``, ``hook_manifest``.
    """

    SHORT_PROMPT = "The capital of France is Paris."
    GRAD_NAMES = ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_z", "blocks.2.hook_resid_post"]

    def __init__(self, bridge) -> None:
        self.bridge = bridge

    def has(self, group: str) -> bool:
        return group in ("gradients", "views", "state_dict")

    @functools.cached_property
    def scalars(self) -> dict:
        text, head, hook = "Natural language processing", 0, "blocks.0.attn.hook_v"

        def ablate(activation, hook):
            activation[:, :, head, :] = 0
            return activation
        with torch.no_grad():
            orig = self.bridge(text, return_type="loss").item()
            ablated = self.bridge.run_with_hooks(text, return_type="loss", fwd_hooks=[(hook, ablate)]).item()
        return {"short_prompt": self.SHORT_PROMPT,
                "ablation": {"text": text, "head": head, "hook": hook, "orig_loss": orig, "ablated_loss": ablated}}

    def tensors(self, group: str) -> dict:
        b = self.bridge
        if group == "views":
            return {"W_E": b.W_E.detach().clone(), "W_U": b.W_U.detach().clone()}
        if group == "state_dict":
            return {k: v.detach().clone() for k, v in b.tl_parameters().items()}
        if group == "gradients":
            _, cache = b.run_with_cache(self.SHORT_PROMPT, return_type="loss", names_filter=self.GRAD_NAMES,
                                        incl_bwd=True)
            b.zero_grad(set_to_none=True)
            return {k: v.detach().clone() for k, v in cache.items() if k.endswith("_grad")}
        raise KeyError(group)

    @functools.cached_property
    def hook_manifest(self) -> dict:
        with torch.no_grad():
            _, cache = self.bridge.run_with_cache(self.SHORT_PROMPT)
        return {k: list(v.shape) for k, v in cache.items() if isinstance(v, torch.Tensor)}
