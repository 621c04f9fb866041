"""Probes: agreement with scikit-learn, streaming from a store, sequence split, control tasks."""
import pytest
import torch

from workbench.analysis.probing import (TensorSource, control_labels, probes_across_steps, split_rows,
                                        train_probes)


def _synthetic(rows=120, pos=6, d=12, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, pos, d, generator=g) * 2 + 1
    w = torch.randn(d, classes, generator=g)
    y = (x @ w + 0.5 * torch.randn(rows, pos, classes, generator=g)).argmax(-1)   # [rows, pos]
    tokens = torch.randint(0, 50, (rows, pos), generator=g)
    return tokens, x, y


def test_logistic_probe_agrees_with_sklearn():
    from sklearn.linear_model import LogisticRegression
    tokens, x, y = _synthetic()
    src = TensorSource(tokens, {"h": x})
    val = split_rows(len(src), 0.25, seed=0)
    res = train_probes(src, "h", y, epochs=40, batch_size=16, lr=0.05, val_mask=val)["h"]
    d = x.shape[-1]
    xtr, ytr = x[~val].reshape(-1, d).numpy(), y[~val].reshape(-1).numpy()
    xva, yva = x[val].reshape(-1, d), y[val].reshape(-1)
    sk = LogisticRegression(C=10.0, max_iter=2000).fit(xtr, ytr)
    sk_acc = float((torch.as_tensor(sk.predict(xva.numpy())) == yva).float().mean())
    ours = res.probe.predict(xva)
    assert res.val["n"] == yva.numel()                       # every token of the validation rows
    assert abs(res.val["accuracy"] - sk_acc) < 0.05
    assert res.val["accuracy"] > 0.7                          # well above chance (1/3)
    agree = float((ours == torch.as_tensor(sk.predict(xva.numpy()))).float().mean())
    assert agree > 0.9
    assert res.history[-1] < res.history[0]                   # training reduced the loss
    pc = res.val["per_class"]
    assert [c["support"] for c in pc] == torch.bincount(yva, minlength=3).tolist()


def test_linear_probe_recovers_a_linear_target():
    tokens, x, _ = _synthetic(rows=80, d=8)
    target = x @ torch.arange(1.0, 9.0) + 0.1 * torch.randn(x.shape[:2], generator=torch.Generator().manual_seed(1))
    res = train_probes(TensorSource(tokens, {"h": x}), "h", target, kind="linear", epochs=60, lr=0.1)["h"]
    assert res.val["r2"] > 0.95 and res.val["mse"] < 0.1 * target.var()


def test_split_is_by_sequence_and_per_row_labels_need_pos():
    mask = split_rows(50, 0.2, seed=3)
    assert mask.sum() == 10 and torch.equal(mask, split_rows(50, 0.2, seed=3))
    tokens, x, y = _synthetic(rows=40)
    src = TensorSource(tokens, {"h": x})
    with pytest.raises(ValueError, match="pos="):
        train_probes(src, "h", y[:, 0], epochs=1)
    res = train_probes(src, "h", y[:, -1], pos=-1, epochs=2)["h"]
    assert res.train["n"] + res.val["n"] == 40
    with pytest.raises(KeyError, match="hh"):
        train_probes(src, "hh", y, epochs=1)


def test_control_task_and_selectivity():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 30, (100, 5), generator=g)
    x = torch.randn(100, 5, 10, generator=g)
    y = (x[..., 0] > 0).long()                                # decodable from x, unrelated to token identity
    ctrl = control_labels(30, y, seed=0)
    assert ctrl.shape == (30,) and set(ctrl.tolist()) <= {0, 1}
    res = train_probes(TensorSource(tokens, {"h": x}), "h", y, control=True, epochs=20, lr=0.05)["h"]
    assert res.val["accuracy"] > 0.9
    assert res.control["accuracy"] < 0.8                       # x carries no token identity
    assert res.selectivity == pytest.approx(res.val["accuracy"] - res.control["accuracy"])
    assert res.summary()["selectivity"] == res.selectivity


def test_probes_stream_from_a_store_like_memory(tmp_path):
    from workbench.store import ActivationStore, StoreWriter
    tokens, x, y = _synthetic(rows=60, d=8)
    x = x.half()
    hooks = {"a": ((6, 8), torch.float16), "b": ((6, 8), torch.float16)}
    with StoreWriter(tmp_path / "s.h5", hooks=hooks, seq_len=6) as w:
        for i in range(0, 60, 16):
            w.append(tokens[i:i + 16], {"a": x[i:i + 16], "b": -x[i:i + 16]})
    store = ActivationStore.open(tmp_path / "s.h5")
    kw = dict(epochs=3, batch_size=8, seed=1)
    from_store = train_probes(store, ["a", "b"], y, **kw)      # both hooks in one pass
    in_memory = train_probes(TensorSource(tokens, {"a": x, "b": -x}), ["a", "b"], y, **kw)
    for h in ("a", "b"):
        assert from_store[h].val["accuracy"] == pytest.approx(in_memory[h].val["accuracy"])
        torch.testing.assert_close(from_store[h].probe.linear.weight, in_memory[h].probe.linear.weight)
    with pytest.raises(KeyError, match="blocks.0.hook_resid_post"):   # names the missing hook
        train_probes(store, "blocks.0.hook_resid_post", y, epochs=1)


def test_probes_across_recorded_steps(tmp_path):
    from workbench.store import ActivationStore, RecordingWriter
    tokens, x, y = _synthetic(rows=30, d=8)
    with RecordingWriter(tmp_path / "r.h5", hooks={"h": ((6, 8), torch.float32)}, seq_len=6,
                         probe_tokens=tokens) as w:
        w.append_step(0, {"h": torch.randn_like(x)})            # before training: noise
        w.append_step(10, {"h": x})                              # after: the signal
    rows = probes_across_steps(ActivationStore.open(tmp_path / "r.h5"), "h", y, epochs=15, lr=0.05)
    assert [r["step"] for r in rows] == [0, 10]
    assert rows[1]["val_accuracy"] > rows[0]["val_accuracy"] + 0.2
