"""TransformerLens 4.3.0's tests/unit/test_patching.py (MIT License, see LICENSE-TransformerLens),
run against workbench.analysis.patching instead of transformer_lens.patching.

One copy of the tests: this module runs the source of test_tl_patching.py with every import of
``transformer_lens.patching`` pointed at ``workbench.analysis.patching`` (same model, same
assertions), and marks the one case that fails on ours for a stated reason.
"""
from pathlib import Path

from tl_port import known_failure

_PORT = Path(__file__).with_name("test_tl_patching.py")
exec(compile(_PORT.read_text(encoding="utf-8").replace("transformer_lens.patching", "workbench.analysis.patching"),
             str(_PORT), "exec"), globals())

test_every_helpers_compute_the_baseline_once = known_failure(  # noqa: F821 (defined by the exec above)
    "workbench computes the baseline from the corrupted run each sweep makes anyway, so model.run_with_hooks "
    "is never called unpatched (the test counts those calls)")(test_every_helpers_compute_the_baseline_once)  # noqa: F821
