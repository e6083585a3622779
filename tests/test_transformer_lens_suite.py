"""TransformerLens' own verification suite (transformer_lens.benchmarks) on every adapter.

Checks run, per architecture: forward pass and logits equivalence against the HF model,
loss equivalence, hook registry, forward hooks, critical forward hooks, hook functionality,
run_with_cache, activation cache, backward hooks, gradient computation, per-component output
equivalence (benchmark_all_components), and the multimodal forward and cache checks (these
run an image through the processor; TransformerLens' suite has no video check, so the video
path is verified in test_architectures.py). Generation benchmarks are not run: they are
text-quality checks that need a trained model.
"""

import pytest
import torch
import transformer_lens.benchmarks as tl_bench
from hf_reference import load_hf
from transformer_lens.benchmarks.component_benchmark import benchmark_all_components
from transformer_lens.benchmarks.multimodal import (
    benchmark_multimodal_cache,
    benchmark_multimodal_forward,
)

TEXT = "which way does the ball move ?"


@pytest.fixture(scope="module")
def results(arch, tiny_paths):
    from hooked_video import HookedVideoLLM

    path = tiny_paths[arch]
    bridge = HookedVideoLLM.from_pretrained(path).bridge
    reference = load_hf(path, bridge)
    with torch.no_grad():
        ref_logits = reference.eval()(input_ids=bridge.to_tokens(TEXT)).logits
    return [
        tl_bench.benchmark_forward_pass(bridge, TEXT, reference_logits=ref_logits),
        tl_bench.benchmark_logits_equivalence(bridge, TEXT, reference_logits=ref_logits),
        tl_bench.benchmark_loss_equivalence(bridge, TEXT),
        tl_bench.benchmark_hook_registry(bridge),
        tl_bench.benchmark_forward_hooks(bridge, TEXT),
        tl_bench.benchmark_critical_forward_hooks(bridge, TEXT),
        tl_bench.benchmark_hook_functionality(bridge, TEXT),
        tl_bench.benchmark_run_with_cache(bridge, TEXT),
        tl_bench.benchmark_activation_cache(bridge, TEXT),
        tl_bench.benchmark_backward_hooks(bridge, TEXT),
        tl_bench.benchmark_gradient_computation(bridge, TEXT),
        benchmark_all_components(bridge, reference),
        benchmark_multimodal_forward(bridge),
        benchmark_multimodal_cache(bridge),
    ]


def test_every_check_passes(results):
    failed = [f"{r.name}: {r.message}" for r in results if not r.passed]
    assert not failed, failed
    assert len(results) == 14


def test_checks_really_ran(results):
    by_name = {r.name: r for r in results}
    assert "Tensors match" in by_name["logits_equivalence"].message
    assert "successful" in by_name["multimodal_forward"].message  # not skipped
    assert "components produce equivalent outputs" in by_name["all_components"].message
