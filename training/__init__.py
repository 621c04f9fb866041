"""Training Phi-architecture models while recording activations (see docs/training.md).

``from workbench.training import TrainConfig, Trainer``; the CLI is ``workbench train``.
"""
from .config import ConfigError, TrainConfig, list_configs, load_config
from .run_state import list_checkpoints
from .trainer import Trainer, train

__all__ = ["ConfigError", "TrainConfig", "Trainer", "list_checkpoints", "list_configs", "load_config", "train"]
