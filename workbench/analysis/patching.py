"""Activation patching with TransformerLens 4.3's functions, signatures, options and results, batched.

``get_act_patch_X(model, corrupted_tokens, clean_cache, patching_metric)`` runs the
corrupted input with one activation (a layer, position, head ...) replaced by its value
from the clean run, for every such slice, and returns ``patching_metric`` of each patched
run in TransformerLens's layout (e.g. ``[n_layers, pos, n_heads]``). As in TransformerLens:

- ``generic_activation_patch(model, corrupted_tokens, clean_cache, patching_metric,
  patch_setter, activation_name, index_axis_names=None, index_df=None,
  return_index_df=False, *, reduce="scalar", baseline=False)``;
- ``reduce="mean"`` averages a ``[batch]`` metric, ``reduce="none"`` keeps it, a mapping
  of metrics evaluates them all on each patched run, ``baseline=True`` adds the unpatched
  corrupted run: those return TransformerLens's ``PatchingResult`` (mean, standard error,
  bootstrap intervals, permutation p-values), imported from TransformerLens on that path;
- the patch setters, ``make_df_from_ranges`` and the ``*_every`` helpers.

The difference is speed (patch_runs.py): with one of the patch setters below (or
TransformerLens's own), variants are batched and restart from the corrupted run at the
patched layer and position. A setter of your own runs one forward per patch, exactly as
TransformerLens does. ``max_batch_tokens=`` (keyword) bounds the tokens in one forward.
Phi has no ``resid_mid`` (parallel block), so there is no ``get_act_patch_resid_mid``.
"""
from __future__ import annotations

import functools
import importlib
import itertools
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import pandas as pd
import torch

from workbench.hooks import get_act_name

from .patch_runs import ACT_DIMS, _AXIS, auto_chunk, batched_sweep, check_inputs  # noqa: F401 (re-exported)

Metric = Callable[[torch.Tensor], torch.Tensor]
REDUCE_MODES = ("scalar", "mean", "none")


def __getattr__(name: str) -> Any:
    if name == "PatchingResult":   # TransformerLens's result class, imported on first use
        return importlib.import_module("transformer_lens.patching").PatchingResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_df_from_ranges(column_max_ranges: Sequence[int], column_names: Sequence[str]) -> pd.DataFrame:
    """Every combination of ``range(max)`` per column, last column fastest (TransformerLens's function)."""
    return pd.DataFrame(list(itertools.product(*[range(m) for m in column_max_ranges])), columns=column_names)


# -- patch setters: TransformerLens's, with the activation dims each index column addresses ------
def layer_pos_patch_setter(corrupted_activation, index, clean_activation):
    """index = [layer, pos]: activation ``[batch, pos, ...]``."""
    assert len(index) == 2
    layer, pos = index
    corrupted_activation[:, pos, ...] = clean_activation[:, pos, ...]
    return corrupted_activation


def layer_pos_head_vector_patch_setter(corrupted_activation, index, clean_activation):
    """index = [layer, pos, head_index]: activation ``[batch, pos, head_index, ...]``."""
    assert len(index) == 3
    layer, pos, head_index = index
    corrupted_activation[:, pos, head_index] = clean_activation[:, pos, head_index]
    return corrupted_activation


def layer_head_vector_patch_setter(corrupted_activation, index, clean_activation):
    """index = [layer, head_index]: activation ``[batch, pos, head_index, ...]``, every position."""
    assert len(index) == 2
    layer, head_index = index
    corrupted_activation[:, :, head_index] = clean_activation[:, :, head_index]
    return corrupted_activation


def layer_head_pattern_patch_setter(corrupted_activation, index, clean_activation):
    """index = [layer, head_index]: activation ``[batch, head_index, dest_pos, src_pos]``."""
    assert len(index) == 2
    layer, head_index = index
    corrupted_activation[:, head_index, :, :] = clean_activation[:, head_index, :, :]
    return corrupted_activation


def layer_head_pos_pattern_patch_setter(corrupted_activation, index, clean_activation):
    """index = [layer, head_index, dest_pos]: activation ``[batch, head_index, dest_pos, src_pos]``."""
    assert len(index) == 3
    layer, head_index, dest_pos = index
    corrupted_activation[:, head_index, dest_pos, :] = clean_activation[:, head_index, dest_pos, :]
    return corrupted_activation


def layer_head_dest_src_pos_pattern_patch_setter(corrupted_activation, index, clean_activation):
    """index = [layer, head_index, dest_pos, src_pos]: activation ``[batch, head_index, dest_pos, src_pos]``."""
    assert len(index) == 4
    layer, head_index, dest_pos, src_pos = index
    corrupted_activation[:, head_index, dest_pos, src_pos] = clean_activation[:, head_index, dest_pos, src_pos]
    return corrupted_activation


# setter name -> the activation dims (without batch) its index columns after ``layer`` address
_SETTER_DIMS = {"layer_pos_patch_setter": (0,), "layer_pos_head_vector_patch_setter": (0, 1),
                "layer_head_vector_patch_setter": (1,), "layer_head_pattern_patch_setter": (0,),
                "layer_head_pos_pattern_patch_setter": (0, 1),
                "layer_head_dest_src_pos_pattern_patch_setter": (0, 1, 2)}


def _batchable_dims(patch_setter: Callable) -> Optional[tuple[int, ...]]:
    """The patched dims of one of the known setters (ours or TransformerLens's), else None."""
    name = getattr(patch_setter, "__name__", "")
    module = getattr(patch_setter, "__module__", "")
    if name in _SETTER_DIMS and module in (__name__, "transformer_lens.patching"):
        return _SETTER_DIMS[name]
    return None


# -- the generic sweep ---------------------------------------------------------------------
def generic_activation_patch(model, corrupted_tokens: torch.Tensor, clean_cache, patching_metric: Union[Metric, Mapping[str, Metric]],
                             patch_setter: Callable, activation_name: str,
                             index_axis_names: Optional[Sequence[str]] = None, index_df: Optional[pd.DataFrame] = None,
                             return_index_df: bool = False, *, reduce: str = "scalar", baseline: bool = False,
                             max_batch_tokens: Optional[int] = None):
    """Patch each slice of ``activation_name`` named by ``index_axis_names`` (first ``"layer"``) or ``index_df``.

    Returns ``[*axis sizes]`` metric values (one per ``index_df`` row when it is given), as
    TransformerLens's function of the same name, or a ``PatchingResult`` with
    ``reduce="none"``, ``baseline=True`` or a mapping of metrics. The metric returns a scalar
    under ``reduce="scalar"`` and a ``[batch]`` tensor otherwise.
    """
    if model.training:
        raise ValueError("activation patching needs the model in evaluation mode (dropout and the like "
                         "would make patched runs differ by chance): call model.eval() first")
    if reduce not in REDUCE_MODES:
        raise ValueError(f"reduce must be one of {REDUCE_MODES}, got {reduce!r}")
    metrics = dict(patching_metric) if isinstance(patching_metric, Mapping) else {"metric": patching_metric}
    if not metrics:
        raise ValueError("patching_metric mapping must contain at least one metric")
    want_result = isinstance(patching_metric, Mapping) or reduce == "none" or baseline
    if want_result and return_index_df:
        raise ValueError("return_index_df only applies to the tensor return; a PatchingResult carries index_df")
    clean = check_inputs(model, corrupted_tokens, clean_cache, activation_name)
    tokens = corrupted_tokens.to(model.device)
    index_df, cell_shape = _index(model, tokens, activation_name, index_axis_names, index_df)
    evaluate = _evaluator(metrics, reduce != "scalar", tokens.shape[0])
    rows = torch.tensor(index_df.to_numpy(), dtype=torch.long).reshape(len(index_df), -1)
    dims = _batchable_dims(patch_setter)
    with torch.no_grad():
        if dims is not None and len(dims) == rows.shape[1] - 1:
            values, corrupted_logits = batched_sweep(model, tokens, clean, activation_name, rows, dims, evaluate,
                                                     max_batch_tokens)
        else:
            values = _loop_sweep(model, tokens, clean_cache, activation_name, rows, patch_setter, evaluate)
            corrupted_logits = model(tokens) if baseline else None
        base = evaluate(corrupted_logits) if baseline else None   # the unpatched corrupted run
    store = values.movedim(0, 1).reshape(len(metrics), *cell_shape, *values.shape[2:]).to(model.device)
    base = None if base is None else base.to(model.device)          # [metric, *cells, batch?], [metric, batch?]
    if reduce == "mean":
        store, base = store.mean(-1), (None if base is None else base.mean(-1))
    if not want_result:
        return (store[0], index_df) if return_index_df else store[0]
    multi = isinstance(patching_metric, Mapping)
    return __getattr__("PatchingResult")(
        values=store if multi else store[0], axis_names=[] if index_axis_names is None else list(index_axis_names),
        index_df=index_df, metric_names=list(metrics), reduced=reduce != "none",
        baseline=None if base is None else (base if multi else base[0]), has_metric_axis=multi)


def _index(model, tokens: torch.Tensor, activation_name: str, index_axis_names: Optional[Sequence[str]],
           index_df: Optional[pd.DataFrame]) -> tuple[pd.DataFrame, tuple[int, ...]]:
    """The rows to patch and the shape of the output cells (flat when ``index_df`` is given)."""
    if index_df is not None:
        if index_axis_names is not None:
            raise ValueError("give index_axis_names or index_df, not both")
        return index_df, (len(index_df),)
    if not index_axis_names or index_axis_names[0] != "layer":
        raise ValueError(f"index_axis_names must start with 'layer', got {index_axis_names}")
    sizes = {"layer": model.cfg.n_layers, "pos": tokens.shape[-1], "head_index": model.cfg.n_heads}
    sizes.update(src_pos=sizes["pos"], dest_pos=sizes["pos"], head=sizes["head_index"])
    ranges = [sizes[a] for a in index_axis_names]
    return make_df_from_ranges(ranges, index_axis_names), tuple(ranges)


def _evaluator(metrics: dict[str, Metric], per_example: bool, batch: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """logits -> ``[n_metrics, batch?]``, checking each metric's output shape as TransformerLens does."""
    def evaluate(logits: torch.Tensor) -> torch.Tensor:
        rows = []
        for name, fn in metrics.items():
            out = torch.as_tensor(fn(logits))
            if per_example and (out.ndim != 1 or out.shape[0] != batch):
                raise ValueError(f"patching_metric {name!r} must return a [batch] tensor of length {batch} "
                                 f"under reduce='mean' or 'none', got shape {tuple(out.shape)}")
            if not per_example and out.ndim != 0:
                raise ValueError(f"patching_metric {name!r} must return a scalar under reduce='scalar', got shape "
                                 f"{tuple(out.shape)}; return a [batch] tensor and pass reduce='mean' or "
                                 "reduce='none' to keep per-example values")
            rows.append(out.detach().float().cpu())
        return torch.stack(rows)
    return evaluate


def _loop_sweep(model, tokens: torch.Tensor, clean_cache, activation_name: str, rows: torch.Tensor,
                patch_setter: Callable, evaluate: Callable) -> torch.Tensor:
    """One full forward per row with ``patch_setter`` applied (any setter): ``[n_rows, n_metrics, batch?]``."""
    out = []
    for index in rows.tolist():
        name = get_act_name(activation_name, index[0])
        clean_act = clean_cache[name]

        def hook(act, hook, index=index, clean_act=clean_act):
            return patch_setter(act.clone() if act.requires_grad else act, index, clean_act)
        out.append(evaluate(model.run_with_hooks(tokens, fwd_hooks=[(name, hook)])))
    return torch.stack(out)


# -- the named sweeps (TransformerLens's partials) -----------------------------------------
def _sweep(setter: Callable, activation_name: str, axes: tuple[str, ...], doc: str) -> Callable:
    fn = functools.partial(generic_activation_patch, patch_setter=setter, activation_name=activation_name,
                           index_axis_names=axes)
    fn.__doc__ = (f"Activation patching of {doc}: returns ``[{', '.join(axes)}]`` values of ``patching_metric`` "
                  "(or a ``PatchingResult`` with reduce='none', baseline=True or several metrics).\n\n"
                  "Args: model, corrupted_tokens ``[batch, pos]``, clean_cache (``run_with_cache`` of the clean "
                  "tokens), patching_metric (logits -> scalar); keywords reduce, baseline, max_batch_tokens.")
    return fn


get_act_patch_resid_pre = _sweep(layer_pos_patch_setter, "resid_pre", ("layer", "pos"),
                                 "the residual stream entering each block, by position")
get_act_patch_attn_out = _sweep(layer_pos_patch_setter, "attn_out", ("layer", "pos"),
                                "each attention layer's output, by position")
get_act_patch_mlp_out = _sweep(layer_pos_patch_setter, "mlp_out", ("layer", "pos"), "each MLP's output, by position")
get_act_patch_attn_head_out_by_pos = _sweep(layer_pos_head_vector_patch_setter, "z", ("layer", "pos", "head"),
                                            "each head's output (z), by position")
get_act_patch_attn_head_q_by_pos = _sweep(layer_pos_head_vector_patch_setter, "q", ("layer", "pos", "head"),
                                          "each head's queries, by position")
get_act_patch_attn_head_k_by_pos = _sweep(layer_pos_head_vector_patch_setter, "k", ("layer", "pos", "head"),
                                          "each head's keys, by position")
get_act_patch_attn_head_v_by_pos = _sweep(layer_pos_head_vector_patch_setter, "v", ("layer", "pos", "head"),
                                          "each head's values, by position")
get_act_patch_attn_head_pattern_by_pos = _sweep(layer_head_pos_pattern_patch_setter, "pattern",
                                                ("layer", "head_index", "dest_pos"),
                                                "each head's attention pattern, by destination position")
get_act_patch_attn_head_pattern_dest_src_pos = _sweep(layer_head_dest_src_pos_pattern_patch_setter, "pattern",
                                                      ("layer", "head_index", "dest_pos", "src_pos"),
                                                      "each (destination, source) entry of each head's pattern")
get_act_patch_attn_head_out_all_pos = _sweep(layer_head_vector_patch_setter, "z", ("layer", "head"),
                                             "each head's output (z), all positions")
get_act_patch_attn_head_q_all_pos = _sweep(layer_head_vector_patch_setter, "q", ("layer", "head"),
                                           "each head's queries, all positions")
get_act_patch_attn_head_k_all_pos = _sweep(layer_head_vector_patch_setter, "k", ("layer", "head"),
                                           "each head's keys, all positions")
get_act_patch_attn_head_v_all_pos = _sweep(layer_head_vector_patch_setter, "v", ("layer", "head"),
                                           "each head's values, all positions")
get_act_patch_attn_head_pattern_all_pos = _sweep(layer_head_pattern_patch_setter, "pattern", ("layer", "head_index"),
                                                 "each head's attention pattern, all positions")


# -- several sweeps at once (TransformerLens's *_every helpers) ------------------------------
_HEAD_TYPES = ("out", "q", "k", "v", "pattern")
_BLOCK_TYPES = ("resid_pre", "attn_out", "mlp_out")
_RENAMES = {"head_index": "head", "dest_pos": "pos"}


def _run_sweeps(sweeps: Sequence[Callable], model, corrupted_tokens, clean_cache, metric, kwargs: dict) -> list:
    """Run each sweep (a requested baseline by the first one only): ``[(result, its axis names)]``."""
    baseline = bool(kwargs.pop("baseline", False))
    return [(sweep(model, corrupted_tokens, clean_cache, metric, baseline=baseline and i == 0, **kwargs),
             [_RENAMES.get(n, n) for n in sweep.keywords["index_axis_names"]]) for i, sweep in enumerate(sweeps)]


def _stack_results(results: list, axis_order: tuple[str, ...], type_names: Sequence[str]):
    """Stack ``[(sweep result, axis names)]`` on a leading ``patch_type`` axis, axes permuted to ``axis_order``.

    All tensors give a tensor; otherwise a ``PatchingResult`` (plain tensors among them, from
    the sweeps that did not compute the baseline, are reduced values without a metric axis).
    """
    typed = [r for r, _ in results if not isinstance(r, torch.Tensor)]
    lead = 1 if typed and typed[0].has_metric_axis else 0
    values = []
    for r, names in results:
        v = r if isinstance(r, torch.Tensor) else r.values
        perm = list(range(lead)) + [lead + names.index(n) for n in axis_order]
        values.append(v.permute(*perm, *range(lead + len(names), v.ndim)))
    stacked = torch.stack(values, dim=lead)
    if not typed:
        return stacked
    first = typed[0]
    cells = list(stacked.shape[lead:lead + 1 + len(axis_order)])
    return __getattr__("PatchingResult")(
        values=stacked, axis_names=["patch_type", *axis_order],
        index_df=make_df_from_ranges(cells, ["patch_type", *axis_order]), metric_names=list(first.metric_names),
        reduced=first.reduced, baseline=first.baseline, has_metric_axis=first.has_metric_axis,
        patch_type_names=list(type_names))


def get_act_patch_attn_head_all_pos_every(model, corrupted_tokens, clean_cache, metric, **kwargs):
    """Every head's output, query, key, value and pattern, all positions: ``[5, n_layers, n_heads]``."""
    results = _run_sweeps((get_act_patch_attn_head_out_all_pos, get_act_patch_attn_head_q_all_pos,
                           get_act_patch_attn_head_k_all_pos, get_act_patch_attn_head_v_all_pos,
                           get_act_patch_attn_head_pattern_all_pos), model, corrupted_tokens, clean_cache, metric, kwargs)
    return _stack_results(results, ("layer", "head"), _HEAD_TYPES)


def get_act_patch_attn_head_by_pos_every(model, corrupted_tokens, clean_cache, metric, **kwargs):
    """Every head's output, query, key, value and pattern, by position: ``[5, n_layers, pos, n_heads]``."""
    results = _run_sweeps((get_act_patch_attn_head_out_by_pos, get_act_patch_attn_head_q_by_pos,
                           get_act_patch_attn_head_k_by_pos, get_act_patch_attn_head_v_by_pos,
                           get_act_patch_attn_head_pattern_by_pos), model, corrupted_tokens, clean_cache, metric, kwargs)
    return _stack_results(results, ("layer", "pos", "head"), _HEAD_TYPES)


def get_act_patch_block_every(model, corrupted_tokens, clean_cache, metric, **kwargs):
    """The residual stream entering each block, each attention output and each MLP output: ``[3, n_layers, pos]``."""
    results = _run_sweeps((get_act_patch_resid_pre, get_act_patch_attn_out, get_act_patch_mlp_out),
                          model, corrupted_tokens, clean_cache, metric, kwargs)
    return _stack_results(results, ("layer", "pos"), _BLOCK_TYPES)
