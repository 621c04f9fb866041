"""Linear and logistic-regression probes trained on activations streamed from a store.

``train_probes(source, hooks, labels)`` trains one probe per hook in ONE pass over
the data per epoch: each batch of rows is read once (``source.iter_batches``) and
feeds every hook's probe, so memory is one batch of rows whatever the store size
(larger-than-memory stores work). ``source`` is an ``ActivationStore``, one step of
a recording (``store.at_step(s)``), or an in-memory ``TensorSource``.

* Train/validation split by sequence (row), never by token, so no sequence is in both.
* Labels per row ``[rows]`` (with ``pos`` picking the position) or per token
  ``[rows, pos]``; negative labels mean "ignore this token".
* ``kind="logistic"``: multinomial logistic regression (accuracy, loss, per-class
  precision/recall/F1). ``kind="linear"``: least squares on a real target (MSE, R^2).
* ``control=True`` (Hewitt & Liang 2019): each token type gets a random label drawn from
  the real label distribution; a probe trained on that control task says what a
  probe of this capacity gets by memorising token identity, and
  ``selectivity = accuracy - control accuracy``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence, Union

import torch
from torch import nn

from .probe_data import TensorSource, batch_features, check_hooks, to_label_tensor


class Probe(nn.Module):
    """``(x - mean) / std -> Linear (-> * y_std + y_mean)``; ``x`` ``[n, d_in]`` -> ``[n, n_out]``.

    Logistic probes output logits; linear probes output the predicted target, trained on a
    standardised target (``raw=True`` gives that standardised output).
    """

    def __init__(self, d_in: int, n_out: int, mean: torch.Tensor, std: torch.Tensor,
                 y_mean: float = 0.0, y_std: float = 1.0) -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, n_out)
        nn.init.zeros_(self.linear.weight)  # deterministic start (no global RNG)
        nn.init.zeros_(self.linear.bias)
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float())
        self.register_buffer("y_mean", torch.tensor(float(y_mean)))
        self.register_buffer("y_std", torch.tensor(float(y_std)))

    def forward(self, x: torch.Tensor, raw: bool = False) -> torch.Tensor:
        out = self.linear((x.float() - self.mean) / self.std)
        return out if raw else out * self.y_std + self.y_mean

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class ids ``[n]`` (logistic) or values ``[n]`` (linear)."""
        out = self(x)
        return out.argmax(-1) if out.shape[-1] > 1 else out[:, 0]


@dataclass
class ProbeResult:
    """One hook's probe and its metrics (``train``/``val`` dicts; ``control`` if asked)."""

    hook: str
    kind: str
    probe: Probe
    train: dict
    val: dict
    control_probe: Optional[Probe] = None
    control: Optional[dict] = None
    history: list = field(default_factory=list)  # mean training loss per epoch

    @property
    def selectivity(self) -> Optional[float]:
        """Validation accuracy minus control-task validation accuracy (Hewitt & Liang 2019)."""
        if self.control is None:
            return None
        return self.val["accuracy"] - self.control["accuracy"]

    def summary(self) -> dict:
        """A flat dict for a table row."""
        row: dict[str, Any] = {"hook": self.hook, "kind": self.kind}
        row.update({f"train_{k}": v for k, v in self.train.items() if not isinstance(v, (list, dict))})
        row.update({f"val_{k}": v for k, v in self.val.items() if not isinstance(v, (list, dict))})
        if self.control is not None:
            row["control_val_accuracy"] = self.control["accuracy"]
            row["selectivity"] = self.selectivity
        return row


def split_rows(n_rows: int, val_fraction: float = 0.2, seed: int = 0) -> torch.Tensor:
    """A boolean ``[n_rows]`` mask, True for validation rows (whole sequences)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = max(1, int(round(n_rows * val_fraction)))
    if n_val >= n_rows:
        raise ValueError(f"{n_rows} rows are too few to split into train and validation")
    perm = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed))
    mask = torch.zeros(n_rows, dtype=torch.bool)
    mask[perm[:n_val]] = True
    return mask


def control_labels(vocab_size: int, labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A control task: ``[vocab_size]`` random class per token type, drawn from the label distribution."""
    valid = labels[labels >= 0].long()
    freq = torch.bincount(valid).float()
    return torch.multinomial(freq / freq.sum(), vocab_size, replacement=True,
                             generator=torch.Generator().manual_seed(seed + 1))


def _blocks(n_rows: int, batch_size: int, seed: Optional[int]) -> list[slice]:
    starts = list(range(0, n_rows, batch_size))
    if seed is not None:
        order = torch.randperm(len(starts), generator=torch.Generator().manual_seed(seed)).tolist()
        starts = [starts[i] for i in order]
    return [slice(s, min(s + batch_size, n_rows)) for s in starts]


def _stream(source, hooks: list[str], batch_size: int, seed: Optional[int]
            ) -> Iterator[tuple[slice, torch.Tensor, dict[str, torch.Tensor]]]:
    """``(rows, tokens, {hook: acts})`` one row block at a time, blocks in shuffled order."""
    for rows in _blocks(len(source), batch_size, seed):
        for tokens, acts in source.iter_batches(hooks, batch_size=batch_size, rows=rows):
            yield rows, tokens, acts


def train_probes(source, hooks: Union[str, Sequence[str]], labels, kind: str = "logistic",
                 pos: Optional[int] = None, val_fraction: float = 0.2, epochs: int = 10, batch_size: int = 32,
                 lr: float = 1e-2, weight_decay: float = 0.0, control: bool = False, seed: int = 0,
                 n_classes: Optional[int] = None, device: Union[str, torch.device] = "cpu",
                 val_mask: Optional[torch.Tensor] = None) -> dict[str, ProbeResult]:
    """Train one probe per hook on activations streamed from ``source``.

    Args:
        source: ``ActivationStore``, ``store.at_step(s)``, or ``TensorSource``.
        hooks: hook name(s); each stored as ``[rows, pos, d]`` (or ``[rows, d]``).
        labels: ``[rows]`` (needs ``pos`` for ``[rows, pos, d]`` activations) or ``[rows, pos]``;
            ints for ``"logistic"`` (negative = ignore), floats for ``"linear"`` (NaN = ignore).
        pos: the position read for per-row labels (e.g. ``-1``).
        epochs, batch_size (rows per step), lr, weight_decay: Adam training settings.
        control: also train a control-task probe and report selectivity (logistic only).
        val_mask: ``[rows]`` bool, True = validation; default a random ``val_fraction`` of rows.
    Returns:
        ``{hook: ProbeResult}``.
    """
    if kind not in ("logistic", "linear"):
        raise ValueError(f"kind must be 'logistic' or 'linear', got {kind!r}")
    if control and kind != "logistic":
        raise ValueError("control tasks are defined for classification probes (kind='logistic')")
    hooks = [hooks] if isinstance(hooks, str) else list(hooks)
    check_hooks(source, hooks)
    n_rows = len(source)
    y_all = to_label_tensor(labels, n_rows, kind)
    is_val = split_rows(n_rows, val_fraction, seed) if val_mask is None else val_mask.bool()
    if is_val.shape != (n_rows,):
        raise ValueError(f"val_mask must be [rows] = [{n_rows}], got {tuple(is_val.shape)}")
    task = _ProbeTraining(source, hooks, y_all, is_val, kind, pos, batch_size, device)
    stats, vocab = task.feature_stats()                                  # pass 1
    task.set_up(stats, vocab, n_classes, control, seed, lr, weight_decay)
    history = task.fit(epochs, seed)                                     # passes 2..
    metrics = evaluate_probes(source, task.probes, y_all, is_val, kind, pos, batch_size, task.n_out, device)
    cmetrics = (evaluate_probes(source, task.cprobes, y_all, is_val, kind, pos, batch_size, task.n_out, device,
                                ctrl_map=task.ctrl_map) if control else {})
    return {h: ProbeResult(h, kind, task.probes[h], metrics[h]["train"], metrics[h]["val"],
                           task.cprobes.get(h), cmetrics[h]["val"] if control else None, history[h])
            for h in hooks}


class _ProbeTraining:
    """The state of one ``train_probes`` call: the data it streams, the probes, the optimiser."""

    def __init__(self, source, hooks: list[str], y_all: torch.Tensor, is_val: torch.Tensor, kind: str,
                 pos: Optional[int], batch_size: int, device: Union[str, torch.device]) -> None:
        self.source, self.hooks, self.y_all, self.is_val = source, hooks, y_all, is_val
        self.kind, self.pos, self.batch_size, self.device = kind, pos, batch_size, device
        self.probes: dict[str, Probe] = {}
        self.cprobes: dict[str, Probe] = {}
        self.ctrl_map: Optional[torch.Tensor] = None
        self.n_out = 1
        self.y_mean, self.y_std = 0.0, 1.0

    def _features(self, acts: torch.Tensor, rows: slice, tokens: torch.Tensor):
        """``(x [n, d], y [n], token ids [n])`` of the training tokens in one batch of rows."""
        return batch_features(acts, self.y_all[rows], tokens, ~self.is_val[rows], self.pos, self.kind)

    def feature_stats(self) -> tuple[dict[str, list], int]:
        """Pass 1: per hook ``[count, sum, sum of squares]`` of the training features (float64), and the vocab
        size seen; standardised probes train well with one learning rate."""
        stats: dict[str, list] = {}
        vocab = 0
        for rows, tokens, acts in _stream(self.source, self.hooks, self.batch_size, None):
            vocab = max(vocab, int(tokens.max()) + 1)
            for h in self.hooks:
                x = self._features(acts[h], rows, tokens)[0].double()
                s = stats.setdefault(h, [0, 0.0, 0.0])
                s[0] += x.shape[0]
                s[1] = s[1] + x.sum(0)
                s[2] = s[2] + (x * x).sum(0)
        if not stats or stats[self.hooks[0]][0] == 0:
            raise ValueError("no labelled training tokens: check labels (negative/NaN ones are ignored) and pos")
        return stats, vocab

    def set_up(self, stats: dict[str, list], vocab: int, n_classes: Optional[int], control: bool, seed: int,
               lr: float, weight_decay: float) -> None:
        """Probes standardised by ``stats`` (and, for ``linear``, by the target's mean/std), the control
        task's labels, one Adam over every probe."""
        y = self.y_all
        if self.kind == "logistic":
            self.n_out = n_classes or int(y[y >= 0].max()) + 1
        else:  # standardise the target too, so one lr suits any target scale
            y_train = y[~self.is_val]
            y_train = y_train[~torch.isnan(y_train)].double()
            self.y_mean, self.y_std = float(y_train.mean()), float(y_train.std().clamp_min(1e-6))
        self.ctrl_map = control_labels(vocab, y, seed) if control else None

        def make(h: str) -> Probe:
            n, s1, s2 = stats[h]
            mean = s1 / n
            std = (s2 / n - mean ** 2).clamp_min(0).sqrt().clamp_min(1e-6)
            return Probe(mean.shape[0], self.n_out, mean.float(), std.float(), self.y_mean, self.y_std).to(self.device)

        self.probes = {h: make(h) for h in self.hooks}
        self.cprobes = {h: make(h) for h in self.hooks} if control else {}
        params = [p for m in list(self.probes.values()) + list(self.cprobes.values()) for p in m.parameters()]
        self.opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
        self.loss_fn = nn.CrossEntropyLoss() if self.kind == "logistic" else nn.MSELoss()

    def fit(self, epochs: int, seed: int) -> dict[str, list]:
        """Passes 2..: stream the rows in shuffled blocks, one Adam step per batch for every probe;
        returns each hook's mean training loss per epoch."""
        history: dict[str, list] = {h: [] for h in self.hooks}
        for epoch in range(epochs):
            sums = {h: [0.0, 0] for h in self.hooks}
            for rows, tokens, acts in _stream(self.source, self.hooks, self.batch_size, seed + 1000 + epoch):
                self._step(rows, tokens, acts, sums)
            for h in self.hooks:
                history[h].append(sums[h][0] / max(1, sums[h][1]))
        return history

    def _step(self, rows: slice, tokens: torch.Tensor, acts: dict[str, torch.Tensor], sums: dict[str, list]) -> None:
        """One optimiser step on one batch: the sum of every probe's (and control probe's) loss."""
        self.opt.zero_grad(set_to_none=True)
        total = None
        for h in self.hooks:
            x, y, t = self._features(acts[h], rows, tokens)
            if x.shape[0] == 0:
                continue
            x, y = x.to(self.device), y.to(self.device)
            out = self.probes[h](x, raw=True)
            if self.kind == "logistic":
                loss = self.loss_fn(out, y)
            else:
                loss = self.loss_fn(out[:, 0], (y - self.y_mean) / self.y_std)
            sums[h][0] += float(loss.detach()) * x.shape[0]
            sums[h][1] += x.shape[0]
            if self.cprobes:
                loss = loss + self.loss_fn(self.cprobes[h](x), self.ctrl_map[t].to(self.device))
            total = loss if total is None else total + loss
        if total is not None:
            total.backward()
            self.opt.step()


@torch.no_grad()
def evaluate_probes(source, probes: dict[str, Probe], labels: torch.Tensor, is_val: torch.Tensor, kind: str,
                    pos: Optional[int], batch_size: int, n_out: int, device="cpu",
                    ctrl_map: Optional[torch.Tensor] = None) -> dict[str, dict]:
    """Streamed metrics for each probe on the train and validation rows.

    Logistic: ``accuracy``, ``loss`` (mean cross-entropy, nats), ``n``, ``per_class``
    (``[{class, precision, recall, f1, support}]``). Linear: ``mse``, ``r2``, ``n``.
    With ``ctrl_map`` the labels are the control task's.
    """
    hooks = list(probes)
    acc: dict = {h: {s: _Acc(kind, n_out) for s in ("train", "val")} for h in hooks}
    for rows, tokens, acts in _stream(source, hooks, batch_size, None):
        for h in hooks:
            for split, keep in (("train", ~is_val[rows]), ("val", is_val[rows])):
                x, y, t = batch_features(acts[h], labels[rows], tokens, keep, pos, kind)
                if x.shape[0] == 0:
                    continue
                if ctrl_map is not None:
                    y = ctrl_map[t]
                acc[h][split].add(probes[h](x.to(device)).cpu(), y)
    return {h: {s: a.result() for s, a in d.items()} for h, d in acc.items()}


class _Acc:
    """Streaming metric sums for one split."""

    def __init__(self, kind: str, n_out: int) -> None:
        self.kind, self.n = kind, 0
        self.loss = 0.0
        self.conf = torch.zeros(n_out, n_out, dtype=torch.long)  # [true, predicted]
        self.sy = self.syy = self.sse = 0.0

    def add(self, out: torch.Tensor, y: torch.Tensor) -> None:
        self.n += y.shape[0]
        if self.kind == "logistic":
            self.loss += float(nn.functional.cross_entropy(out, y, reduction="sum"))
            k = self.conf.shape[0]
            self.conf += torch.bincount(y * k + out.argmax(-1), minlength=k * k).view(k, k)
        else:
            yd = y.double()
            self.sse += float(((out[:, 0].double() - yd) ** 2).sum())
            self.sy += float(yd.sum())
            self.syy += float((yd * yd).sum())

    def result(self) -> dict:
        if self.n == 0:
            return {"n": 0}
        if self.kind == "linear":
            var = self.syy / self.n - (self.sy / self.n) ** 2
            return {"n": self.n, "mse": self.sse / self.n,
                    "r2": 1.0 - (self.sse / self.n) / var if var > 0 else math.nan}
        tp = self.conf.diag().double()
        pred, true = self.conf.sum(0).double(), self.conf.sum(1).double()
        prec = torch.where(pred > 0, tp / pred.clamp_min(1), torch.zeros_like(tp))
        rec = torch.where(true > 0, tp / true.clamp_min(1), torch.zeros_like(tp))
        f1 = torch.where(prec + rec > 0, 2 * prec * rec / (prec + rec).clamp_min(1e-12), torch.zeros_like(tp))
        per_class = [{"class": c, "precision": float(prec[c]), "recall": float(rec[c]), "f1": float(f1[c]),
                      "support": int(true[c])} for c in range(len(tp))]
        return {"n": self.n, "accuracy": float(tp.sum()) / self.n, "loss": self.loss / self.n,
                "macro_f1": float(f1[true > 0].mean()) if (true > 0).any() else math.nan, "per_class": per_class}


def probes_across_steps(store, hooks: Union[str, Sequence[str]], labels, steps: Optional[Sequence[int]] = None,
                        **kwargs: Any) -> list[dict]:
    """Train probes at every recorded step of a training recording (``store.steps``).

    The same validation rows are used at every step. Returns one ``ProbeResult.summary()``
    row per (step, hook), with a ``step`` column: a table to plot against training.
    """
    steps = list(store.steps if steps is None else steps)
    if not steps:
        raise ValueError("this store has no recorded steps: probes_across_steps needs a training recording")
    n_rows = len(store.at_step(steps[0]))
    if "val_mask" not in kwargs:
        kwargs["val_mask"] = split_rows(n_rows, kwargs.pop("val_fraction", 0.2), kwargs.get("seed", 0))
    out = []
    for s in steps:
        for h, r in train_probes(store.at_step(s), hooks, labels, **kwargs).items():
            out.append({"step": s, **r.summary()})
    return out


__all__ = ["Probe", "ProbeResult", "TensorSource", "control_labels", "evaluate_probes", "probes_across_steps",
           "split_rows", "train_probes"]
