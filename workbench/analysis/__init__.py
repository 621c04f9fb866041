"""Analyses on a PhiModel or an activation store: attention and head detection, probing,
activation / attribution / path patching, logit lens and direct logit attribution.

Import the submodules directly (``from workbench.analysis.attention import induction_score``);
nothing heavy is imported here.
"""
