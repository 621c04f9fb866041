"""bench/gpu_check.sh --dry-run: the GPU check's own code, end to end, on a tiny config on CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_writes_every_section(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_TMP": str(tmp_path)}
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    for section in ("parity", "train_eager", "train_compiled", "forward_eager", "forward_compiled",
                    "recording", "cache", "eap"):
        assert "error" not in res[section] and "skipped" not in res[section], (section, res[section])
    par = res["parity"]
    assert par["fp32_max_abs_diff"] < 1e-4 and par["bf16_argmax_agreement_ours_vs_hf"] > 0.9
    for section in ("train_eager", "train_compiled", "forward_eager", "forward_compiled"):
        assert res[section]["tok_per_s"] > 0 and res[section]["mfu"] is None   # no GPU peak on CPU
    assert set(res["recording"]["median_ratio_vs_none"]) == {"four", "resid"}
    assert res["cache"]["cache_tok_per_s"] > 0 and res["cache"]["forward_only_tok_per_s"] > 0
    eap = res["eap"]
    assert eap["measured"] is True and eap["edges"] > 0 and eap["eap_s"] > 0 and eap["eap_vs_fwd_bwd"] > 0
    md = (tmp_path / "out" / "gpu_check.md").read_text()
    assert md.startswith("# GPU check (DRY RUN") and "## Circuit EAP at the phi-2 config" in md
    assert "one clean forward + backward" in md
