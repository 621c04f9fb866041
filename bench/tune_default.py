"""When does a variant of the default config form its induction head? (How the default was chosen.)

    python bench/tune_default.py '{"optimizer__lr": 0.01}' '{"model__d_model": 64, "model__d_mlp": 256}' \\
        --seeds 0 1 --stop 700

Each variant is the shipped default with ``section__key`` overrides; it trains through
``Trainer.train_step`` (the trainer's own update) for ``--stop`` steps of its full schedule, and
every ``--every`` steps scores induction on the default's probe rows (period 16, the recorder's
probe set) with ``workbench.analysis.attention.induction_score``. It prints, per variant and
seed, the first step at which a layer-1 head scores above 0.5, the score and training loss at each
scored step, and the wall time.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from workbench.analysis.attention import induction_score
from workbench.training.config import load_config
from workbench.training.recorder import Recorder
from workbench.training.trainer import Trainer

THRESHOLD = 0.5


def best_layer1_head(rec: Recorder, period: int, rows: int) -> float:
    """The best layer-1 head's mean induction score on the repeated probe rows."""
    pattern = rec.capture()["blocks.1.attn.hook_pattern"][:rows].float()      # [rows, head, q, k]
    return float(induction_score(pattern, period, offset=1).mean(0).max())


def run_variant(changes: dict, seed: int, stop: int, every: int, folder: Path) -> dict:
    cfg = load_config("default").override(seed=seed, record__hooks=["blocks.1.attn.hook_pattern"],
                                          record__probe_val_rows=0, checkpoint__every=0,
                                          checkpoint__log_spaced=0, schedule__eval_every=0, **changes)
    tr = Trainer(cfg, Path(tempfile.mkdtemp(dir=folder)), progress=False)
    rec = tr.recorder
    t0, first, curve, losses = time.perf_counter(), None, [], []
    while tr.step < min(stop, cfg.schedule.max_steps):
        loss, _ = tr.train_step()
        losses.append(float(loss))
        if tr.step % every == 0:
            score = best_layer1_head(rec, cfg.record.probe_period, cfg.record.probe_rows)
            curve.append((tr.step, round(score, 3), round(sum(losses[-every:]) / every, 3)))
            if first is None and score > THRESHOLD:
                first = tr.step
    rec.close()
    return {"changes": changes, "seed": seed, "first_step_above_0.5": first, "wall_s": round(time.perf_counter() - t0),
            "curve": curve}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="*", default=["{}"], help="JSON dicts of section__key overrides")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--stop", type=int, default=700, help="train this many steps of the full schedule")
    ap.add_argument("--every", type=int, default=25)
    a = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="tune-") as tmp:
        for v in a.variants:
            for seed in a.seeds:
                r = run_variant(json.loads(v), seed, a.stop, a.every, Path(tmp))
                print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
