"""The progress display: a token rate averaged over a window of wall time, one time estimate, status
lines without a bar. A fake clock drives it, so nothing here depends on the machine's speed."""
from __future__ import annotations

import pytest

from workbench.training import progress as prog
from workbench.training.progress import Progress, TokenRate, human_duration


def test_rate_is_averaged_over_the_window_not_the_last_step():
    r = TokenRate(window_s=30)
    assert r.rate() is None
    for t in range(0, 61):                   # 1,000 tokens a second for a minute ...
        r.add(float(t), 1000 * t)
    r.add(61.0, 1000 * 60 + 10)              # ... then one very slow step
    assert r.rate() == pytest.approx((60_010 - 31_000) / 30, rel=1e-9)   # barely moves
    assert 29 <= r.span_s <= 31


def test_one_estimate_line_then_status_lines_without_a_bar(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(prog.time, "perf_counter", lambda: clock[0])
    lines: list[str] = []
    p = Progress(total_steps=1000, start_step=0, tokens_per_step=2048, bar=False, log=lines.append)
    for step in range(1, 1001):
        clock[0] += 0.5                       # 2 steps a second: 4,096 tokens/s
        p.update(step, loss=3.0 if step % 10 == 0 else None)
    p.close()
    estimates = [ln for ln in lines if ln.startswith("speed")]
    assert len(estimates) == 1 and estimates[0].startswith("speed 4,096 tokens/s")
    assert "to go" in estimates[0]
    status = [ln for ln in lines if ln.startswith("step ")]
    assert len(status) == 8                   # one a minute over 500 s
    assert all("loss 3.000" in ln and "4,096 tokens/s" in ln for ln in status)


def test_human_duration():
    assert human_duration(42) == "42 s"
    assert human_duration(125) == "2 min 05 s"
    assert human_duration(3 * 3600 + 60) == "3 h 01 min"
