"""How far bf16 rounding alone moves the baseline answer probability, at a real model's shape (GPU).

The same prompt's P(answer) from the sweep engine's path (SDPA) and the hook path's reference
attention, in bfloat16, on the video embedded with the vision tower's eager attention and with
its SDPA attention; then the same with the language model cast to float32 (the value both bf16
paths approximate). ``--confident`` lifts the answer logit as in ``knockout_sweep.py``.

    python benchmarks/bf16_spread.py --preset llava-next-video-7b --confident 13 --out /tmp/bf16_spread.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from knockout_sweep import make_confident  # noqa: E402
from shapes import PRESETS, model_and_prompt, vision_attention  # noqa: E402

from hooked_video.runtime import attention  # noqa: E402


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="llava-next-video-7b")
    parser.add_argument("--confident", type=float, default=13.0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    model, prompt = model_and_prompt(args.preset, "cuda")
    make_confident(model, prompt, args.confident)
    def embed(implementation: str):
        with vision_attention(model, implementation):
            return model.embed(prompt)

    def p_answer(embedded, reference: bool) -> float:
        with attention.reference_attention() if reference else torch.no_grad():
            logits = model(embedded, logits_to_keep=1)
        return round(logits[0, -1].float().softmax(-1)[prompt.answer_token_id].item(), 5)

    embeddings = {name: embed(name) for name in ("eager", "sdpa")}
    result = {"preset": args.preset, "device": torch.cuda.get_device_name(), "confident": args.confident, "p_answer": {}}
    for name, embedded in embeddings.items():
        result["p_answer"][f"vision {name}, bf16"] = {"engine path": p_answer(embedded, False), "hook path": p_answer(embedded, True)}
    model.hf_model.float()
    for name, embedded in embeddings.items():
        embedded = dataclasses.replace(embedded, inputs_embeds=embedded.inputs_embeds.float())
        result["p_answer"][f"vision {name}, float32 LM"] = {"engine path": p_answer(embedded, False),
                                                             "hook path": p_answer(embedded, True)}  # fmt: skip
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
