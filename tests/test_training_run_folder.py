"""The run folder keeps its data whatever goes wrong: files written once and atomically, every
check before any change, a folder a kill left half-created still resumable, bad input one line.

Each test starts from a copy of one short run (tiny config, 10 steps, checkpoints at 5 and 10,
recorded at 7 steps) made once per module, and runs ``workbench train`` in-process.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import h5py
import pytest

from helpers import assert_one_line_error, cli, tiny_config_file

RECORDED = [0, 1, 2, 4, 5, 8, 10]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _recorded(run: Path) -> list[int]:
    with h5py.File(run / "activations.h5", "r") as f:
        return [int(s) for s in f["steps"][: int(f.attrs["n_steps"])]]


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    return tiny_config_file(tmp_path_factory.mktemp("cfg"), schedule__max_steps=10)


@pytest.fixture(scope="module")
def finished(config, tmp_path_factory) -> Path:
    from workbench.training.config import TrainConfig
    from workbench.training.trainer import train
    run = tmp_path_factory.mktemp("finished") / "run"
    train(TrainConfig.from_toml(config), run, progress=False)
    assert _steps(run) == list(range(1, 11)) and _recorded(run) == RECORDED
    return run


@pytest.fixture()
def run(finished, tmp_path) -> Path:
    """A copy of the finished run, cut back as if it had been killed after step 10's recording
    but before its checkpoint: resuming it continues from step 5."""
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    shutil.rmtree(copy / "checkpoints" / "step_00000010")
    (copy / "summary.json").unlink()
    return copy


def test_resume_never_rewrites_config_or_tokenizer(run, config, capsys):
    before = {n: ((run / n).stat().st_ino, (run / n).stat().st_mtime_ns, _digest(run / n))
              for n in ("config.toml", "tokenizer.json")}
    code, _, err = cli(capsys, "train", config, "--out", run, "--no-progress", "--resume")
    assert code == 0, err
    assert _steps(run) == list(range(1, 11)) and _recorded(run) == RECORDED
    after = {n: ((run / n).stat().st_ino, (run / n).stat().st_mtime_ns, _digest(run / n))
             for n in ("config.toml", "tokenizer.json")}
    assert after == before
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]   # no temporary file left behind


def test_config_toml_is_written_atomically_and_marks_the_run(finished):
    from workbench.training.config import TrainConfig
    text = (finished / "config.toml").read_text()
    assert TrainConfig.from_toml(finished / "config.toml").schedule.max_steps == 10
    assert text.endswith("\n") and "[checkpoint]" in text


def _unchanged(run: Path, before: dict) -> None:
    assert {n: _digest(run / n) for n in before} == before


def test_resume_with_another_d_model_is_one_line_and_changes_nothing(run, config, tmp_path, capsys):
    before = {n: _digest(run / n) for n in ("metrics.jsonl", "activations.h5", "config.toml")}
    other = tmp_path / "wide.toml"
    other.write_text(config.read_text().replace("d_model = 32", "d_model = 64"))
    code, _, err = cli(capsys, "train", other, "--out", run, "--no-progress", "--resume")
    assert_one_line_error(code, err, "model.d_model 32 -> 64", "--resume")
    _unchanged(run, before)


def test_edited_config_toml_that_no_longer_matches_the_checkpoint_is_one_line(run, capsys):
    before = {n: _digest(run / n) for n in ("metrics.jsonl", "activations.h5")}
    toml = run / "config.toml"
    # A config.toml cut at a line boundary still parses (the rest takes defaults): the checkpoint
    # remembers the config it was trained with, so the resume refuses instead of training on.
    toml.write_text(toml.read_text().split("[record]")[0])
    code, _, err = cli(capsys, "train", "--out", run, "--no-progress", "--resume")
    assert_one_line_error(code, err, "step_00000005 was trained with another config", "record.hooks")
    _unchanged(run, before)


def test_checkpoints_that_is_a_file_cuts_nothing(run, config, capsys):
    # Today's defect: this wiped metrics.jsonl and cut the recording from 7 steps to 5, then failed.
    before = {n: _digest(run / n) for n in ("metrics.jsonl", "activations.h5")}
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").write_text("not a folder")
    code, _, err = cli(capsys, "train", config, "--out", run, "--no-progress", "--resume")
    assert_one_line_error(code, err, "checkpoints is a file", "move the file away")
    _unchanged(run, before)
    assert _recorded(run) == RECORDED


def test_truncated_trainer_state_names_the_file_and_what_to_do(run, config, capsys):
    before = {n: _digest(run / n) for n in ("metrics.jsonl", "activations.h5")}
    state = run / "checkpoints" / "step_00000005" / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:300])
    code, _, err = cli(capsys, "train", config, "--out", run, "--no-progress", "--resume")
    assert_one_line_error(code, err, str(state), "is damaged", "delete", "start the run over")
    _unchanged(run, before)
    # Following the advice works: without that checkpoint the resume starts over, and completes.
    shutil.rmtree(state.parent)
    code, _, err = cli(capsys, "train", config, "--out", run, "--no-progress", "--resume")
    assert code == 0, err
    assert _steps(run) == list(range(1, 11)) and _recorded(run) == RECORDED


def test_damaged_recording_on_resume_names_the_file(run, config, capsys):
    before = {n: _digest(run / n) for n in ("metrics.jsonl",)}
    rec = run / "activations.h5"
    data = bytearray(rec.read_bytes())
    data[:64] = b"\x17" * 64          # the superblock: no HDF5 reader can open it
    rec.write_bytes(bytes(data))
    code, _, err = cli(capsys, "train", config, "--out", run, "--no-progress", "--resume")
    assert_one_line_error(code, err, str(rec))
    _unchanged(run, before)           # nothing else was cut back


@pytest.mark.parametrize("text, needle", [("[model\n", "damaged"), ("", "is empty")])
def test_damaged_config_toml_on_resume_names_the_file(run, capsys, text, needle):
    (run / "config.toml").write_text(text)
    code, _, err = cli(capsys, "train", "--out", run, "--no-progress", "--resume")
    assert_one_line_error(code, err, str(run / "config.toml"), needle)


def test_unknown_record_hook_is_refused_before_anything_is_written(config, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(config.read_text().replace('"blocks.1.hook_resid_post"]', '"blocks.1.hook_resid_psot"]'))
    code, _, err = cli(capsys, "train", bad, "--out", tmp_path / "run", "--no-progress")
    assert_one_line_error(code, err, "blocks.1.hook_resid_psot", "blocks.1.hook_resid_post")
    assert "recording" not in err and not (tmp_path / "run" / "config.toml").exists()


def test_kill_before_config_toml_leaves_a_folder_that_trains(config, tmp_path, capsys):
    """A kill while the folder was being created, before config.toml: what it left is overwritten."""
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / "data" / ".train.npy.tmp-99").write_bytes(b"\x93NUMPY")   # a write cut short
    (run / "tokenizer.json").write_text("{")                            # (an older, non-atomic writer)
    for extra in ([], ["--resume"]):
        code, _, err = cli(capsys, "train", config, "--out", run, "--no-progress", *extra)
        assert code == 0, err
        assert _steps(run) == list(range(1, 11)) and _recorded(run) == RECORDED
        shutil.rmtree(run)
        (run / "data").mkdir(parents=True)
        (run / "tokenizer.json").write_text("{")


@pytest.mark.parametrize("recording", [b"", b"\x89HDF\r\n\x1a\n" + b"\0" * 40])
def test_kill_after_config_toml_before_the_first_checkpoint_starts_over(finished, config, tmp_path, capsys,
                                                                        recording):
    """config.toml written, the recording cut short at creation, a metrics line half written."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.toml", "tokenizer.json"):
        shutil.copy(finished / name, run / name)
    (run / "activations.h5").write_bytes(recording)
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 5.7}\n{"step": 2, "lo')
    code, _, err = cli(capsys, "train", config, "--out", run, "--no-progress")
    assert_one_line_error(code, err, "already holds a run", "--resume")
    code, _, err = cli(capsys, "train", config, "--out", run, "--no-progress", "--resume")
    assert code == 0, err
    assert _steps(run) == list(range(1, 11)) and _recorded(run) == RECORDED
    assert _losses(run) == _losses(finished)   # started over: the same run, bit for bit


def _losses(run: Path) -> list[tuple]:
    return [(r["step"], r.get("loss"), r.get("val_loss"))
            for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def test_probe_val_rows_beyond_the_data_is_one_line_before_anything_is_written(config, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(config.read_text().replace("probe_val_rows = 1", "probe_val_rows = 100000"))
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", bad, "--out", run, "--no-progress")
    assert_one_line_error(code, err, "record.probe_val_rows is 100000", "windows")
    assert not (run / "config.toml").exists()   # not a run: the same --out works once fixed


def test_binary_input_is_one_line_naming_the_file(config, tmp_path, capsys):
    blob = tmp_path / "blob.txt"
    blob.write_bytes(b"text at first\n" + bytes(range(256)) * 4)
    (tmp_path / "ok.txt").write_text("plain text\n" * 100)
    bad = tmp_path / "bad.toml"
    bad.write_text(config.read_text().replace('sources = ["stdlib"]', f'sources = ["{tmp_path}"]'))
    code, _, err = cli(capsys, "train", bad, "--out", tmp_path / "run", "--no-progress")
    assert_one_line_error(code, err, str(blob), "binary")


@pytest.mark.parametrize("line, needle", [
    ("num_threads = -1", "system.num_threads must be >= 0"),
    ("lr = -0.001", "optimizer.lr must be > 0"),
    ("beta2 = 1.5", "optimizer.beta2 must be in [0, 1)"),
    ("warmup_steps = -5", "schedule.warmup_steps must be >= 0"),
    ("vocab_size = 5", "data.vocab_size is 5"),
])
def test_bad_config_values_are_one_line_naming_the_key(tmp_path, capsys, line, needle):
    section = {"num_threads": "system", "lr": "optimizer", "beta2": "optimizer", "warmup_steps": "schedule",
               "vocab_size": "data"}[line.split(" =")[0]]
    p = tmp_path / "c.toml"
    p.write_text(f"[{section}]\n{line}\n")
    code, _, err = cli(capsys, "train", p, "--out", tmp_path / "run", "--no-progress")
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "run").exists()
