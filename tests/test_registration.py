"""The new adapters reach TransformerLens: entry points and a plain boot_transformers."""

from importlib.metadata import entry_points

import torch
import transformers
from transformer_lens.model_bridge import TransformerBridge

from hooked_video.model.adapters import ADAPTERS, NEW_ARCHITECTURES


def test_entry_points_resolve_to_the_adapters():
    found = {ep.name: ep for ep in entry_points(group="transformer_lens.architectures")}
    for name in NEW_ARCHITECTURES:
        assert found[name].load() is ADAPTERS[name]


def test_plain_boot_transformers_uses_the_new_adapters(tiny_paths, frames):
    from transformers import AutoProcessor

    import hooked_video  # noqa: F401  (registers the adapters)

    for arch in ("llava_next_video", "qwen2_vl"):
        path = tiny_paths[arch]
        config = transformers.AutoConfig.from_pretrained(path)
        hf = getattr(transformers, config.architectures[0]).from_pretrained(path, attn_implementation="eager")
        processor = AutoProcessor.from_pretrained(path)
        reference = getattr(transformers, config.architectures[0]).from_pretrained(path, attn_implementation="eager")
        bridge = TransformerBridge.boot_transformers(str(path), hf_model=hf, device="cpu", tokenizer=processor.tokenizer)
        assert type(bridge.adapter).__name__ == ADAPTERS[config.architectures[0]].__name__
        text = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "what is this ?"}]}],
            add_generation_prompt=True, tokenize=False,
        )
        inputs = dict(processor(text=text, videos=[frames], return_tensors="pt"))
        ids = inputs.pop("input_ids")
        with torch.no_grad():
            torch.testing.assert_close(bridge(ids, **inputs), reference.eval()(input_ids=ids, **inputs).logits)


def test_importing_hooked_video_is_enough_for_transformer_lens_entry_points(tiny_paths):
    """In a fresh interpreter, ``import hooked_video`` (which stays light) and then TransformerLens'
    own ``boot_transformers`` on a folder of an architecture TransformerLens lacks: it boots."""
    import subprocess
    import sys

    script = (
        "import sys, hooked_video\n"
        "assert 'transformer_lens' not in sys.modules  # the import stays light\n"
        "from transformer_lens.model_bridge import TransformerBridge\n"
        f"bridge = TransformerBridge.boot_transformers({str(tiny_paths['video_llama_3'])!r}, device='cpu')\n"
        "print(type(bridge.adapter).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "VideoLlama3ArchitectureAdapter"
