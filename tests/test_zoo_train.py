"""The toy-model training script: batches built like model.prepare, a real optimisation step."""

import torch

from hooked_video import HookedVideoLLM
from hooked_video.data import synthetic
from hooked_video.zoo import train


def test_batches_match_prepare_and_a_few_steps_run(tmp_path):
    path = train.build_toy(tmp_path / "toy")
    hooked = HookedVideoLLM.from_pretrained(path)
    batcher = train.Batcher(hooked, ["moving_direction", "colour"], [1.0, 1.0], seed=0, device="cpu")
    clip = synthetic.make_clip("moving_direction", 2, seed=train.TRAIN_SEED)
    prompt = hooked.prepare(clip.frames, clip.question, clip.options, clip.answer, num_frames=None)
    torch.testing.assert_close(batcher.pixel_values(clip.frames[None]), prompt.inputs["pixel_values_videos"], atol=1e-6, rtol=0)
    ids, target = batcher.prompt_ids(clip)
    assert ids == prompt.input_ids[0].tolist() and target == prompt.answer_token_id

    input_ids, mask, pixels, last, targets = batcher(4)
    assert input_ids.shape[0] == 4 and pixels.shape == (4, 8, 3, 64, 64)
    assert (input_ids[torch.arange(4), last] == hooked.tokenizer.convert_tokens_to_ids("(")).all()

    from transformers import LlavaNextVideoForConditionalGeneration

    model = LlavaNextVideoForConditionalGeneration.from_pretrained(path)
    before = {k: v.clone() for k, v in model.state_dict().items() if "vision_tower" in k and "weight" in k}
    log = []
    train.train(model, hooked, ["colour"], [1.0], steps=2, lr=1e-3, batch_size=2, seed=0, device="cpu", log=log, phase="t")
    assert log and log[-1]["step"] == 2
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the vision tower learns too
    accuracy = train.held_out_accuracy(hooked, per_task=2, tasks=["colour", "shape"], model=model)
    assert set(accuracy) == {"colour", "shape"} and all(0 <= a <= 1 for a in accuracy.values())
    train.save_weights(model, tmp_path / "w.safetensors")
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "w.safetensors")
    assert weights.keys() == model.state_dict().keys() and next(iter(weights.values())).dtype == torch.float16
