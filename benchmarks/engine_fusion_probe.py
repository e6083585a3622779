"""What fusing the engine's element-wise work would buy (a probe for the next optimisation; GPU, Llama LMs).

Times the four-target engine sweep of one sample at the 7B shape (median of 3 after a first call,
which includes any compilation) as it is, then with each decoder layer's RMSNorm through
``torch.nn.functional.rms_norm``, then with RMSNorm and the MLP compiled by ``torch.compile``
(dynamic shapes), then with the rotary embedding compiled too; prints the largest change of a
knockout probability against the unmodified sweep. The changes are made to this process's model
only; the package does not compile anything.

    python benchmarks/engine_fusion_probe.py
"""

import json
import sys
import time
from functools import partial
from pathlib import Path

import torch
import transformers.models.llama.modeling_llama as ml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from knockout_sweep import timed  # noqa: E402
from shapes import model_and_prompt  # noqa: E402

from hooked_video import flow  # noqa: E402
from hooked_video.fastpath import layer_module  # noqa: E402

def rms_norm_fewer_passes(norm, hidden: torch.Tensor) -> torch.Tensor:
    """LlamaRMSNorm's arithmetic (float32 statistics, cast, then the weight) through one fused call."""
    normed = torch.nn.functional.rms_norm(hidden.float(), (hidden.shape[-1],), None, norm.variance_epsilon)
    return norm.weight * normed.to(hidden.dtype)


def main() -> None:
    model, prompt = model_and_prompt("llava-next-video-7b", "cuda")
    layers = [layer_module(block) for block in model.bridge.blocks]
    norms = [norm for layer in layers for norm in (layer.input_layernorm, layer.post_attention_layernorm)]

    def sweep():
        return flow.sweep(model, [prompt], window=9, select="all", engine="fast", progress=False)

    def measure(variant: str, reference=None):
        start = time.perf_counter()
        rows = sweep()
        torch.cuda.synchronize()
        first = time.perf_counter() - start
        result = {"variant": variant, "first_s": round(first, 2), "median_s": round(timed(sweep, "cuda", 3), 3)}
        if reference is not None:
            result["max_p_knockout_change"] = float((rows.p_knockout - reference.p_knockout).abs().max())
        print(json.dumps(result), flush=True)
        return rows

    base = measure("as is")
    for norm in norms:
        norm.forward = partial(rms_norm_fewer_passes, norm)
    measure("rms_norm fused", base)
    compiled_norm = torch.compile(ml.LlamaRMSNorm.forward, dynamic=True)
    compiled_mlp = torch.compile(ml.LlamaMLP.forward, dynamic=True)
    for norm in norms:
        norm.forward = partial(compiled_norm, norm)
    for layer in layers:
        layer.mlp.forward = partial(compiled_mlp, layer.mlp)
    measure("compiled RMSNorm and MLP", base)
    ml.apply_rotary_pos_emb = torch.compile(ml.apply_rotary_pos_emb, dynamic=True)
    measure("compiled RMSNorm, MLP and rotary embedding", base)


if __name__ == "__main__":
    main()
