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


def test_scenes_ask_different_questions_whose_answers_the_frames_hold():
    import numpy as np

    from hooked_video.zoo import scenes

    rng = np.random.default_rng(0)
    for name in scenes.SCENES:
        clips = scenes.scene_clips(name, rng, questions=2)
        assert len(clips) == 2 and clips[0].question != clips[1].question
        assert clips[0].frames is clips[1].frames  # two questions of one scene
        vocabulary = set(train.toy_words())
        for clip in clips:
            assert set(clip.question.split()) <= vocabulary and 0 <= clip.answer < len(clip.options)
    scene = scenes.moving_pair(np.random.default_rng(1))
    for question, options, answer in scene.questions[:2]:  # the named object really moves that way
        colour = question.split()[4]
        mask = (scene.frames == np.array(synthetic.COLOURS[colour], np.uint8)).all(-1)  # (T, H, W)
        ys, xs = zip(*[np.argwhere(frame).mean(0) for frame in mask[[0, -1]]])
        moved = {"left": xs[0] - xs[1], "right": xs[1] - xs[0], "up": ys[0] - ys[1], "down": ys[1] - ys[0]}
        assert max(moved, key=moved.get) == options[answer]
    still = scenes.static_pair(np.random.default_rng(2))
    assert (still.frames == still.frames[:1]).all()


def test_answer_text_batches_score_the_whole_answer_and_train(tmp_path):
    path = train.build_toy(tmp_path / "toy", sizes=train.TOY16_SIZES)
    hooked = HookedVideoLLM.from_pretrained(path)
    assert hooked.cfg.n_layers == 16
    batcher = train.TextBatcher(hooked, ["moving_pair", "action_antonym"], [1.0, 1.0], seed=0, device="cpu")
    input_ids, mask, pixels, last, targets, following = batcher(4)
    tok = hooked.tokenizer
    for row in range(4):
        assert input_ids[row, last[row]] == tok.convert_tokens_to_ids("(")
        scored = following[row][following[row] != -100].tolist()
        assert scored[0] == targets[row] and tok.convert_ids_to_tokens(scored[1]) == ")" and scored[-1] == tok.eos_token_id
        n = int(mask[row].sum())
        assert input_ids[row, last[row] + 1 : n].tolist() == scored  # next-token targets of the answer
    from transformers import LlavaNextVideoForConditionalGeneration

    model = LlavaNextVideoForConditionalGeneration.from_pretrained(path)
    value, accuracy = train.answer_text_loss(model, (input_ids, mask, pixels, last, targets, following))
    logits = model(input_ids=input_ids, attention_mask=mask, pixel_values_videos=pixels).logits
    by_hand = torch.nn.functional.cross_entropy(logits[following != -100], following[following != -100])
    torch.testing.assert_close(value, by_hand)
    assert 0 <= accuracy <= 1
    log = []
    train.train(model, hooked, ["static_pair"], [1.0], steps=2, lr=1e-3, batch_size=2, seed=0, device="cpu", log=log,
                phase="t", loss=train.answer_text_loss, batcher=train.TextBatcher, checkpoint=tmp_path / "c.safetensors")  # fmt: skip
    assert log[-1]["step"] == 2
