"""What `workbench report` reads: the one metrics reader, and the induction curve from the analysis code."""
import json

import pytest

from helpers import UNIFORM_INDUCTION, ideal_induction, uniform_attention, write_recording
from workbench.errors import DamagedFileError
from workbench.run_files import read_metrics
from workbench.training.metrics import MetricsLog
from workbench.training.summary import format_report, induction_curve


def test_induction_curve_is_the_best_head_per_step_on_the_runs_task(tmp_path):
    period, n = 5, 11
    final = ideal_induction(3, period, 1)
    final[:, [0, 1]] = final[:, [1, 0]]                  # the induction head is head 1 this time
    write_recording(tmp_path / "activations.h5", {0: uniform_attention(3, 2, n), 50: final}, n_rep=3, period=period)
    curve = induction_curve(tmp_path / "activations.h5")
    assert [c["step"] for c in curve] == [0, 50]
    assert curve[0]["score"] == pytest.approx(UNIFORM_INDUCTION, abs=1e-4)
    assert (curve[1]["score"], curve[1]["layer"], curve[1]["head"]) == (1.0, 0, 1)
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 4 - s / 25}) + "\n"
                                                    for s in range(0, 51, 10)))
    report = format_report(tmp_path)
    assert "loss 4.000 -> 2.000" in report and "step     50: 1.000" in report and "L0.H1" in report


def test_a_recording_without_repeated_rows_has_no_curve(tmp_path):
    write_recording(tmp_path / "a.h5", {0: uniform_attention(2, 2, 11)}, n_rep=2, period=5,
                    extra_attrs={"probe_repeated_rows": 0})
    assert induction_curve(tmp_path / "a.h5") == []


def test_one_metrics_reader_for_the_trainer_the_report_and_the_figures(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    for step in (10, 20, 30):
        log.write({"step": step, "loss": 1.0 / step})
    log.close()
    with path.open("a") as f:
        f.write('{"step": 40, "lo')                      # a run killed mid-line
    assert [r["step"] for r in read_metrics(tmp_path)] == [10, 20, 30]
    MetricsLog(path).truncate_after(20)                   # resume from the step-20 checkpoint
    assert [r["step"] for r in read_metrics(path)] == [10, 20]
    assert path.read_text().endswith("}\n")
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(DamagedFileError, match="metrics.jsonl:2 is not JSON"):
        read_metrics(path)
    with pytest.raises(FileNotFoundError, match="no metrics file"):
        read_metrics(tmp_path / "elsewhere")
