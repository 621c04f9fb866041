"""Training Phi-architecture models while recording activations (see docs/training.md).

``from workbench.training import TrainConfig, Trainer``; the CLI is ``workbench train``.
"""
from .config import ConfigError, TrainConfig, load_config

__all__ = ["ConfigError", "TrainConfig", "Trainer", "load_config", "train"]


def __getattr__(name: str):
    # The trainer imports torch; keep ``import workbench.training`` (and config parsing) light.
    if name in ("Trainer", "train"):
        from . import trainer
        return getattr(trainer, name)
    raise AttributeError(name)
