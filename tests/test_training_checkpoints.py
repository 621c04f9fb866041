"""Model snapshots at log-spaced steps (``checkpoint.log_spaced``), kept beside the full checkpoints,
each loadable on its own and equal to the model the recording saw at that step."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from workbench import PhiModel
from workbench.training.config import load_config
from workbench.training.run_state import STATE_FILE, list_checkpoints, save_checkpoint
from workbench.training.schedule import log_spaced_steps, record_steps, snapshot_steps


def test_log_spaced_steps_are_dense_early_and_include_both_ends():
    assert log_spaced_steps(20, 6) == [0, 1, 2, 4, 9, 20]
    assert log_spaced_steps(3000, 16) == [0, 1, 2, 3, 6, 10, 17, 31, 55, 97, 172, 305, 540, 956, 1693, 3000]
    assert log_spaced_steps(10, 1) == [10] and log_spaced_steps(10, 0) == []
    assert log_spaced_steps(3, 10) == [0, 1, 2, 3]   # a short run has fewer distinct steps


def test_snapshot_steps_move_to_the_nearest_recorded_step():
    recorded = record_steps(1500, 25, True)
    steps = snapshot_steps(1500, 28, recorded)
    assert set(steps) <= set(recorded) and steps[0] == 0 and steps[-1] == 1500
    assert [s for s in steps if 250 <= s <= 700] == [275, 375, 475, 650]   # dense through the default's transition
    assert snapshot_steps(20, 6) == log_spaced_steps(20, 6)               # no recording: the steps themselves


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from workbench.training.trainer import train
    out = tmp_path_factory.mktemp("snap") / "run"
    cfg = load_config("tiny").override(schedule__max_steps=20, checkpoint__every=5, checkpoint__keep_last=1,
                                       checkpoint__log_spaced=6)
    train(cfg, out, progress=False)
    return out


def test_snapshots_are_kept_beside_the_last_full_checkpoint(run):
    found = list_checkpoints(run)
    assert sorted(found) == [0, 1, 2, 4, 8, 20]        # full checkpoints 5, 10, 15 went (keep_last 1)
    assert [s for s, p in found.items() if (p / STATE_FILE).is_file()] == [20]
    for step, folder in found.items():
        assert folder == run / "checkpoints" / f"step_{step:08d}"
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}


def test_each_snapshot_is_the_model_the_recording_saw(run):
    from workbench.store import ActivationStore
    store = ActivationStore.open(run / "activations.h5")
    probe = store.tokens[:]
    name = "blocks.1.hook_resid_post"
    for step in list_checkpoints(run):                   # every snapshot step is a recorded step
        model = PhiModel.from_pretrained(list_checkpoints(run)[step])
        _, cache = model.run_with_cache(probe, names_filter=[name])
        torch.testing.assert_close(store.at_step(step)[name][:].float(), cache[name].float(), atol=2e-3, rtol=2e-3)
    first, last = (PhiModel.from_pretrained(list_checkpoints(run)[s]) for s in (0, 20))
    assert (first.W_E - last.W_E).abs().max() > 1e-3     # and they are different models


def test_keep_last_strips_the_trainer_state_of_a_snapshot_step_instead_of_deleting_it(tmp_path):
    from workbench import PhiConfig
    model = PhiModel(PhiConfig.from_name("tiny", d_model=16, n_layers=1, n_heads=2, d_mlp=32, d_vocab=20,
                                                partial_rotary_factor=0.5))
    state = {"optimizer": {}, "scheduler": {}, "scaler": {}, "tokens": 0}
    for step in (4, 8, 12):
        save_checkpoint(tmp_path, step, model, state, keep_last=1, keep_models={4})
    found = list_checkpoints(tmp_path)
    assert sorted(found) == [4, 12]
    assert not (found[4] / STATE_FILE).exists() and (found[12] / STATE_FILE).exists()
    PhiModel.from_pretrained(found[4])
