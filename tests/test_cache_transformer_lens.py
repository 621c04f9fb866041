"""run_with_cache's cache is a transformer_lens.ActivationCache once TransformerLens is loaded, and only then."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from workbench.hooks import ActivationCache
from workbench.hooks.cache import TL_ONLY_METHODS

TOKENS = torch.randint(0, 512, (2, 7), generator=torch.Generator().manual_seed(3))


def test_import_workbench_does_not_import_transformer_lens():
    code = ("import sys, torch, workbench; from workbench import PhiModel, PhiConfig\n"
            "m = PhiModel(PhiConfig.from_name('tiny', n_layers=1))\n"
            "_, c = m.run_with_cache(torch.zeros(1, 3, dtype=torch.long))\n"
            "print(type(c).__mro__[1].__module__, 'transformer_lens' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["collections.abc", "False", "False"]   # a plain cache; neither package was imported


def test_cache_is_transformer_lens_type_once_it_is_loaded(tiny_model):
    tl = pytest.importorskip("transformer_lens")
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(TOKENS)
    assert isinstance(cache, tl.ActivationCache) and isinstance(cache, ActivationCache)
    resid, labels = cache.accumulated_resid(apply_ln=True, return_labels=True)   # TransformerLens's method
    assert resid.shape == (tiny_model.cfg.n_layers + 1, 2, 7, tiny_model.cfg.d_model) and labels[-1] == "final_post"


def test_plain_cache_upgrades_itself_for_transformer_lens_methods(tiny_model):
    tl = pytest.importorskip("transformer_lens")
    with torch.no_grad():
        _, made = tiny_model.run_with_cache(TOKENS)
    plain = ActivationCache(dict(made.cache_dict), tiny_model)      # the class TL-free code gets
    assert not isinstance(plain, tl.ActivationCache)
    stacked = plain.decompose_resid()                               # a TransformerLens-only method
    assert isinstance(plain, tl.ActivationCache)
    torch.testing.assert_close(stacked.sum(0), made["blocks.1.hook_resid_post"], atol=1e-5, rtol=0)
    with pytest.raises(AttributeError, match="no attribute 'run_with_cache'"):
        plain.run_with_cache                                        # not a TransformerLens cache method either


def test_transformer_lens_only_methods_are_listed():
    tl = pytest.importorskip("transformer_lens")
    theirs = {n for n in dir(tl.ActivationCache) if not n.startswith("_") and callable(getattr(tl.ActivationCache, n))}
    ours = {n for n in dir(ActivationCache) if not n.startswith("_")}
    assert TL_ONLY_METHODS == theirs - ours


def test_induction_loss_runs_on_phi():
    """transformer_lens.evals.induction_loss reads cfg.default_prepend_bos and draws ids up to 20000."""
    evals = pytest.importorskip("transformer_lens.evals")
    from workbench import PhiConfig, PhiModel
    torch.manual_seed(0)
    model = PhiModel(PhiConfig.from_name("tiny", d_vocab=20_100, n_layers=1)).eval()
    loss = evals.induction_loss(model, batch_size=2, subseq_len=16, device="cpu")
    assert loss.ndim == 0 and 9.0 < loss.item() < 11.0        # a random model: about ln(20100) = 9.9 nats


_FAULTS = """
import gc, resource, torch
from workbench import PhiConfig, PhiModel
from workbench.hooks import memory
torch.manual_seed(0)
m = PhiModel(PhiConfig(d_model=256, n_layers=4, n_heads=4, d_mlp=1024, d_vocab=4096, n_ctx=256,
                       partial_rotary_factor=0.5)).eval()
tokens = torch.randint(0, 4096, (4, 256))
faults = []
with torch.no_grad():
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        logits, cache = m.run_with_cache(tokens)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        size = cache.nbytes() + logits.numel() * 4
        del cache, logits
        gc.collect()
print(size, memory._keep, min(faults[1:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator policy")
def test_a_cache_reuses_the_memory_of_the_one_before():
    """After run_with_cache glibc keeps as much freed heap as the cache took, so a repeated cache
    page-faults (almost) nothing in: the cached megabytes come back from the heap, not the kernel.
    (With glibc's defaults the same loop takes 15-33 thousand faults here; docs/bench-model.md.)"""
    import os
    import platform
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, check=True,
                         env={**env, "WORKBENCH_KEEP_FREED_MEMORY": "1"}).stdout.split()
    size, keep, faults = map(int, out)
    assert size > 64 * 2**20                          # beyond what glibc keeps on its own
    assert keep >= 1.25 * size - 4096                 # the policy follows the largest cache and its output
    assert faults * 4096 < size / 10                  # the memory came back from the heap
    off = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, check=True,
                         env={**env, "WORKBENCH_KEEP_FREED_MEMORY": "0"}).stdout.split()
    assert int(off[1]) == -1                          # opted out: mallopt never called
