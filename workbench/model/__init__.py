"""The hookable Phi model, its config, checkpoints, tokenizer and generation."""
from .config import PRESETS, PhiConfig
from .kv_cache import KVCache
from .model import PhiModel, lm_loss
from .tokenizer import Tokenizer

__all__ = ["PRESETS", "PhiConfig", "PhiModel", "KVCache", "Tokenizer", "lm_loss"]
