"""Circuits: which heads and MLPs, joined by which edges, carry a behaviour (docs/circuits.md).

* ``Graph``: nodes ``input``, ``a{L}.h{H}``, ``m{L}``, ``logits``; an edge from every writer to every
  reader above it (heads read through q, k and v separately); scores, the chosen circuit, JSON.
* ``edge_attribution``: EAP and EAP-IG scores of every edge from a few passes.
* ``exact_edge_effects``, ``faithfulness``, ``faithfulness_curve``: exact checks by patching.
* ``find_circuit``: all of it for a task; ``circuits_across_steps``: at each checkpoint of a run.
"""
from .eap import METHODS, edge_attribution
from .evaluate import (MIB_FRACTIONS, exact_edge_effects, faithfulness, faithfulness_curve,
                       faithfulness_of_masks, make_baseline)
from .find import find_circuit
from .graph import Edge, FaithfulnessCurve, Graph, Layout, prune_edges
from .steps import circuits_across_steps, list_checkpoints

__all__ = ["Edge", "FaithfulnessCurve", "Graph", "Layout", "METHODS", "MIB_FRACTIONS", "circuits_across_steps",
           "edge_attribution", "exact_edge_effects", "faithfulness", "faithfulness_curve", "faithfulness_of_masks",
           "find_circuit", "list_checkpoints", "make_baseline", "prune_edges"]
