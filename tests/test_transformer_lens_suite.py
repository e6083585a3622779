"""TransformerLens' own verification suite (transformer_lens.benchmarks) on every adapter.

Checks run, per architecture: forward pass and logits equivalence against the HF model,
loss equivalence, hook registry, forward hooks, critical forward hooks, hook functionality,
run_with_cache, activation cache, backward hooks, gradient computation, per-component output
equivalence (benchmark_all_components), the multimodal forward, generation and cache checks
(these run an image through the processor; TransformerLens' suite has no video check, so the
video path is verified in test_architectures.py), and the text generation checks (generation,
with the KV cache, repeated calls: mechanics, not text quality, which needs a trained model).

TransformerLens' generation checks only ask for new tokens, so KV-cached greedy generation
through ``bridge.generate`` (fast paths on, and the reference attention path) is also compared
token for token with Hugging Face's ``generate``, for TransformerLens' image prompt and for this
package's video prompt.
"""

import contextlib

import pytest
import torch
import transformer_lens.benchmarks as tl_bench
from hf_reference import load_hf
from transformer_lens.benchmarks.component_benchmark import benchmark_all_components
from transformer_lens.benchmarks.multimodal import (
    _prepare_test_inputs,
    benchmark_multimodal_cache,
    benchmark_multimodal_forward,
    benchmark_multimodal_generation,
)

from hooked_video.runtime import attention

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
        benchmark_multimodal_generation(bridge, max_new_tokens=3),
        benchmark_multimodal_cache(bridge),
        tl_bench.benchmark_generation(bridge, TEXT, max_new_tokens=3),
        tl_bench.benchmark_generation_with_kv_cache(bridge, TEXT, max_new_tokens=3),
        tl_bench.benchmark_multiple_generation_calls(bridge, [TEXT, "what happens first ?"], max_new_tokens=2),
    ]


def test_every_check_passes(results):
    failed = [f"{r.name}: {r.message}" for r in results if not r.passed]
    assert not failed, failed
    assert len(results) == 18


def test_checks_really_ran(results):
    by_name = {r.name: r for r in results}
    assert "Tensors match" in by_name["logits_equivalence"].message
    assert "successful" in by_name["multimodal_forward"].message  # not skipped
    assert "successful" in by_name["multimodal_generation"].message
    assert "successful" in by_name["generation_with_kv_cache"].message
    assert "components produce equivalent outputs" in by_name["all_components"].message


NEW_TOKENS = 4  # a prefill and three KV-cached decoding steps


@pytest.fixture(scope="module")
def hf(arch, tiny_paths, hooked):
    return load_hf(tiny_paths[arch], hooked)


def _image_inputs(bridge):
    """TransformerLens' multimodal benchmark prompt (an image through the processor)."""
    ids, inputs, _ = _prepare_test_inputs(bridge)
    assert ids is not None
    return ids, inputs


def _video_inputs(prompt):
    inputs = dict(prompt.inputs)
    return inputs.pop("input_ids"), inputs


@pytest.mark.parametrize("path", ["fast", "reference"])
@pytest.mark.parametrize("modality", ["image", "video"])
def test_kv_cached_generation_equals_hf_generate(hooked, prompt, hf, modality, path, one_thread):
    bridge = hooked.bridge
    ids, inputs = _image_inputs(bridge) if modality == "image" else _video_inputs(prompt)
    with torch.no_grad():
        theirs = hf.generate(input_ids=ids, **inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    if path == "fast":  # no hook anywhere: every block runs its HF shadow with the SDPA attention
        assert all(block.use_shadow() for block in bridge.blocks)
    with attention.reference_attention() if path == "reference" else contextlib.nullcontext():
        ours = bridge.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, stop_at_eos=False,
                               use_past_kv_cache=True, return_type="tokens", verbose=False, **inputs)  # fmt: skip
    assert ours[0, ids.shape[1] :].tolist() == theirs[0, ids.shape[1] :].tolist()
