"""What the analyses read: the declared interfaces of a cache file, a recording and in-memory rows.

Probes, attention figures and head detection take any ``ActivationSource``: a cache
file (``CacheStore``), one step of a training recording (``recording.at_step(s)``), or
in-memory tensors (``analysis.probe_data.TensorSource``). A training recording as a
whole is a ``StepSource``: one ``ActivationSource`` per recorded step. Check with
``isinstance(x, ActivationSource)``; no other attribute sniffing is needed.

``len()`` and indexing mean one thing per type: an ``ActivationSource`` counts rows and
``source[hook]`` is ``[rows, *row_shape]``; a ``StepSource`` counts steps and
``recording[hook]`` is ``[steps, rows, *row_shape]``.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping, Optional, Protocol, Sequence, Union, runtime_checkable


@runtime_checkable
class ActivationSource(Protocol):
    """Rows of token ids and, per hook, their activations."""

    hooks: Mapping[str, tuple]        # {hook name: (row_shape, torch dtype)}
    tokens: Any                       # sliceable [rows, pos] -> LongTensor
    attrs: Mapping[str, Any]          # provenance: model_config, tokenizer, probe task, ... ({} in memory)

    def __len__(self) -> int:         # rows
        ...

    def __getitem__(self, hook: str) -> Any:   # sliceable [rows, *row_shape] -> tensor
        ...

    def __contains__(self, hook: object) -> bool:
        ...

    def iter_batches(self, hooks: Optional[Union[str, Sequence[str]]] = None, batch_size: int = 64,
                     rows: Optional[slice] = None) -> Iterator[tuple[Any, dict[str, Any]]]:
        """``(tokens [b, pos], {hook: [b, *row_shape]})`` in row order."""
        ...


@runtime_checkable
class StepSource(Protocol):
    """A training recording: the same probe rows, recorded at each of ``steps``."""

    steps: list[int]
    attrs: Mapping[str, Any]

    def at_step(self, step: int) -> ActivationSource:
        ...

    def __len__(self) -> int:         # recorded steps
        ...
