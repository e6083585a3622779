"""The paper's analysis modes on constructed cases whose expected numbers are computed here:
the accuracy rule, sample selection for the lens, per-task summaries, window styles, presets'
random fractions."""

import numpy as np
import pandas as pd
import pytest
from hf_reference import last_probs, load_hf

from hooked_video import HookedVideoLLM, flow, knockout, lens, pathways, viz
from hooked_video.analysis.accuracy import accuracy
from hooked_video.data import Sample


@pytest.fixture(scope="module")
def steered(deep_paths):
    """A tiny model whose last-position logits are set by the test: ``steered.logits`` maps a
    token string to its logit; every other token gets -10."""
    model = HookedVideoLLM.from_pretrained(deep_paths["llava_next_video"])
    vocab = model.tokenizer.get_vocab()
    model.logits = {}

    def steer(module, args, output):
        if model.logits:
            output[:, -1] = -10.0
            for token, value in model.logits.items():
                output[:, -1, vocab[token]] = value
        return output

    model.hf_model.lm_head.register_forward_hook(steer)
    return model


def samples(n=1, answers=None, tasks=None):
    rng = np.random.default_rng(0)
    answers = answers or [0] * n
    return [Sample(id=f"s{i}", video=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), question="what happens first ?",
                   options=["the ball falls", "the cup moves"], answer=answers[i], task=(tasks or ["t"] * n)[i])
            for i in range(n)]  # fmt: skip


# ----- 1. the accuracy rule ---------------------------------------------------------------------
# (logits, answer) -> correct under the released rule (decoded argmax, lower-cased, equals the
# letter) and under the option-letter rule, decided by hand
CASES = [
    ({"the": 5.0, "A": 3.0, "B": 1.0}, 0, False, True),  # a word on top: wrong for the paper
    ({"A": 5.0, "B": 1.0}, 0, True, True),
    ({"B": 5.0, "A": 1.0}, 0, False, False),
    ({"a": 5.0, "B": 3.0, "A": 1.0}, 0, True, False),  # "a" decodes to the letter, case ignored
]


@pytest.mark.parametrize(("logits", "answer", "paper", "options"), CASES)
def test_accuracy_rules(steered, logits, answer, paper, options):
    steered.logits = logits
    data = samples(answers=[answer])
    try:
        for rule, expected in (("vocab-argmax", paper), ("option-argmax", options)):
            table = accuracy(steered, data, num_frames=None, rule=rule, progress=False)
            assert table.loc["overall", "accuracy"] == float(expected) and table.attrs["rule"] == rule
            report = pathways.evaluate(steered, data, pathways.PathwaySpec(None, None, None), random_baseline=False,
                                       num_frames=None, rule=rule, progress=False)  # fmt: skip
            assert report.accuracy.loc["overall", "full"] == float(expected)
            base = flow.sweep(steered, data, targets=["cross-frame"], layers=[0], window=1, select="all",
                              num_frames=None, rule=rule, progress=False).attrs["baseline"][0]  # fmt: skip
            assert base["correct"] == expected
        assert accuracy(steered, data, num_frames=None, progress=False).attrs["rule"] == "vocab-argmax"  # the default
    finally:
        steered.logits = {}


# ----- 3. sample selection for the lens and answer probability ------------------------------------
def test_lens_run_selects_correct_samples_by_default(steered, tmp_path):
    steered.logits = {"A": 5.0, "B": 1.0}  # answers A: samples with answer 0 are right
    data = samples(4, answers=[0, 1, 0, 1])
    try:
        run = lens.run(steered, data, variant="unembed", norm="released", num_frames=None, out=tmp_path, progress=False)
        assert run.baseline.correct.tolist() == [True, False, True, False]
        assert set(run.top1.sample_id) == {"s0", "s2"} == set(run.answer_probability.sample_id)
        wrong = lens.run(steered, data, variant="unembed", norm="released", select="wrong", num_frames=None, progress=False)
        assert set(wrong.top1.sample_id) == {"s1", "s3"}
        # keyword counts of the run equal counts over per-prompt lens results of the selected samples
        prompts = [s.prepare(steered, num_frames=None) for s in data]
        results = [lens.logit_lens(steered, p, variant="unembed", top_k=1) for p in prompts]
        assert [r.correct for r in results] == [True, False, True, False]
        words = sorted({t.replace("▁", "") for r in results for l in range(r.n_layers) for t in r.tokens(l)})[:6]
        by_run = run.keyword_frequencies(words, steered.tokenizer, bin_size=1, min_count=0)
        by_results = lens.keyword_frequencies(results, words, steered.tokenizer, bin_size=1, min_count=0)
        pd.testing.assert_frame_equal(by_run.raw, by_results.raw)
        by_hand = {w: sum(t == w for i in (0, 2) for l in range(results[i].n_layers) for t in results[i].tokens(l)) for w in words}
        assert by_run.raw.drop("ALL").sum(axis=1).to_dict() == {w: c for w, c in by_hand.items() if w in by_run.raw.index}
        every = lens.keyword_frequencies(results, words, steered.tokenizer, bin_size=1, min_count=0, select="all")
        assert every.raw.loc["ALL"].sum() >= by_run.raw.loc["ALL"].sum()
        resumed = lens.run(steered, data, variant="unembed", norm="released", num_frames=None, out=tmp_path, progress=False)
        pd.testing.assert_frame_equal(resumed.answer_probability, run.answer_probability)
    finally:
        steered.logits = {}


def test_lens_run_takes_known_answers_and_runs_only_the_selected_samples(steered):
    """With ``known_correct`` (a sweep's baseline records), the lens selects by them and runs no forward
    for a sample they drop; with the sweep's own answers the run equals one that finds them itself."""
    steered.logits = {"A": 5.0, "B": 1.0}
    data = samples(4, answers=[0, 1, 0, 1])
    forwards = []
    counter = steered.hf_model.lm_head.register_forward_hook(lambda *args: forwards.append(1))
    try:
        sweep = flow.sweep(steered, data, targets=["cross-frame"], layers=[0], window=1, select="all", num_frames=None,
                           progress=False)  # fmt: skip
        answered = {b["sample_id"]: b["correct"] for b in sweep.attrs["baseline"]}
        assert answered == {"s0": True, "s1": False, "s2": True, "s3": False}
        forwards.clear()
        alone = lens.run(steered, data, variant="unembed", norm="released", num_frames=None, progress=False)
        assert len(forwards) == 4
        forwards.clear()
        told = lens.run(steered, data, variant="unembed", norm="released", num_frames=None, progress=False,
                        known_correct=answered)  # fmt: skip
        assert len(forwards) == 2  # the two wrongly answered samples are not run
        for table in ("baseline", "top1", "answer_probability"):
            pd.testing.assert_frame_equal(getattr(told, table), getattr(alone, table))
        flipped = lens.run(steered, data, variant="unembed", norm="released", num_frames=None, progress=False,
                           known_correct={"s0": False, "s1": True})  # s2, s3 found by their own forward
        assert flipped.baseline.correct.tolist() == [False, True, True, False]
        assert set(flipped.top1.sample_id) == {"s1", "s2"} == set(flipped.answer_probability.sample_id)
    finally:
        counter.remove()
        steered.logits = {}


# ----- 4. per-task results ------------------------------------------------------------------------
def test_summaries_are_per_task_unless_pooled():
    df = pd.DataFrame({"task": ["a", "a", "b", "b"], "target": "t", "condition": "c", "layer": 0,
                       "rel_change": [-10.0, -20.0, 0.0, 4.0]})  # fmt: skip
    per_task = flow.summarize(df).set_index("task")["mean"].to_dict()
    assert per_task == {"a": -15.0, "b": 2.0}
    assert flow.summarize(df, pool_tasks=True)["mean"].tolist() == [-6.5]
    fig = viz.knockout_curves(df.assign(target="cross-frame"))
    assert len(fig.axes) == 2  # one panel per task
    assert len(viz.knockout_curves(df.assign(target="cross-frame"), pool_tasks=True).axes) == 1


def test_curves_of_models_with_different_targets():
    image = pd.DataFrame({"task": "a", "target": "cross-frame", "condition": "cross-frame", "layer": [0, 1], "rel_change": [-1.0, 0.0]})
    video = pd.DataFrame({"task": "a", "target": "vql-to-ql", "condition": "video->last", "layer": [0, 1], "rel_change": [-9.0, -3.0]})
    fig = viz.knockout_curves({"image": image, "video-FT": video})
    assert len(fig.axes) == 2


def test_curves_name_each_condition_once_per_column_in_one_colour():
    rows = [{"task": task, "target": target, "condition": condition, "layer": layer, "rel_change": -float(layer)}
            for task in ("a", "b") for target, conditions in (("cross-frame", ["cross-frame"]), ("vql-to-ql", ["v->l", "q->l"]))
            for condition in conditions for layer in range(3)]  # fmt: skip
    df = pd.DataFrame(rows)
    df = df[~((df.task == "a") & (df.condition == "v->l"))]  # a condition missing from the first row's panel
    fig = viz.knockout_curves(df)
    (cross_a, vql_a), (cross_b, vql_b) = np.array(fig.axes).reshape(2, 2)
    assert [t.get_text() for t in cross_a.get_legend().get_texts()] == ["cross-frame"]
    assert [t.get_text() for t in vql_a.get_legend().get_texts()] == ["q->l", "v->l"]  # the column's every condition
    assert cross_b.get_legend() is None and vql_b.get_legend() is None
    colour = {ax: {line.get_label(): line.get_color() for line in ax.lines} for ax in (vql_a, vql_b)}
    assert colour[vql_a]["q->l"] == colour[vql_b]["q->l"] != colour[vql_b]["v->l"]


# ----- 6. window styles -----------------------------------------------------------------------------
def released_window(layer, k, n_layers, style):
    """The released code's layer lists, written out independently."""
    centre = list(range(max(0, layer - k // 2), min(n_layers, layer - (-k // 2))))
    return {"center": centre, "inverse": [l for l in range(n_layers) if l not in centre],
            "top_down": list(range(layer, n_layers)), "bottom_up": list(range(0, layer + 1))}[style]


@pytest.mark.parametrize("style", sorted(knockout.WINDOW_STYLES))
@pytest.mark.parametrize("k", [1, 3, 4, 9])
def test_window_styles_match_the_released_rule(style, k):
    for layer in range(6):
        assert knockout.window(layer, k, 6, style=style, even="below") == released_window(layer, k, 6, style)
        if k % 2:  # odd windows do not depend on the even rule
            assert knockout.window(layer, k, 6, style=style) == released_window(layer, k, 6, style)
    assert knockout.window(2, 4, 6) == [1, 2, 3, 4]  # default: the extra layer above the centre


def test_inverse_window_sweep_equals_explicit_masks(deep, deep_prompt, deep_paths, arch):
    hf = load_hf(deep_paths[arch], deep)
    df = flow.sweep(deep, [deep_prompt], targets=["cross-frame"], window=1, window_style="inverse", layers=[1, 2],
                    select="all", progress=False)  # fmt: skip
    mask = knockout.cross_frame(deep_prompt.token_map).additive_mask()
    answer = int(df.answer_token.iloc[0])
    for row in df.itertuples():
        blocked = [l for l in range(deep.cfg.n_layers) if l != row.layer]
        assert (row.window_start, row.window_end, row.n_blocked_layers) == (min(blocked), max(blocked), len(blocked))
        expected = last_probs(hf, deep_prompt.inputs, {l: mask for l in blocked})[0, answer]
        assert row.p_knockout == pytest.approx(float(expected), abs=1e-6)


# ----- 10. the random fraction of each preset ------------------------------------------------------
def test_presets_carry_the_released_random_fractions():
    paper_retention = {"llava-next-7b-video-ft": 0.42, "llava-next-13b-video-ft": 0.37,
                       "mini-internvl-4b-video-ft": 0.40, "videollama3-7b": 0.58}  # fmt: skip
    for name, retention in paper_retention.items():
        assert pathways.PathwaySpec.preset(name).random_fraction == pytest.approx(1 - retention)
    with pytest.raises(ValueError, match="random_fraction must be a number in"):
        pathways.PathwaySpec((0, 1), None, None, random_fraction=-0.2)


def test_evaluate_uses_the_presets_fraction(deep, frames, arch):
    if arch == "pllava":
        pytest.skip("the tiny PLLaVA pools any video to 16 tokens: too few beside the system prompt for 58% of all edges")
    # enough frames for the video to outweigh the system prompt 4:1 (so 58% of all edges can start there)
    question = ("what happens first ?", ["the ball falls", "the cup moves"])
    short = deep.prepare(frames, *question, answer=0, num_frames=None).token_map
    per_frame, other = len(short.video_group) / len(frames), short.n_positions - len(short.video_group)
    repeats = max(1, int(np.ceil(4 * other / per_frame / len(frames))))
    prompt = deep.prepare(np.repeat(frames, repeats, axis=0), *question, answer=0, num_frames=None)
    spec = pathways.PathwaySpec.preset("llava-next-7b-video-ft")
    with pytest.warns(UserWarning, match="32 layers"):
        report = pathways.evaluate(deep, [prompt], spec, progress=False)
    row = report.rows.iloc[0]
    n = prompt.n_positions
    assert row.random_fraction == 0.58
    assert (row.random_baseline - row.random_retained) / deep.cfg.n_layers == int(0.58 * n * (n + 1) / 2)


def released_token_range(tokens: list[str], substring: str) -> tuple[int, int]:
    """The released analyses' span rule: the first token range whose joined text covers the first
    occurrence of ``substring`` (spaces removed: these tokens are decoded one by one)."""
    text, substring = "".join(tokens), substring.replace(" ", "")
    where, start, length = text.index(substring), None, 0
    for i, token in enumerate(tokens):
        length += len(token)
        if start is None and length > where:
            start = i
        if length >= where + len(substring):
            return start, i + 1
    raise AssertionError(substring)


def test_videollama3_spans_are_the_released_spans(tiny_paths, frames):
    """The released VideoLLaMA3 analysis finds ``"{q}\\n"`` and ``"(X) {option}\\n"`` after the video's
    closing newline; the question block runs from there to the end of the last span."""
    from hooked_video import HookedVideoLLM

    model = HookedVideoLLM.from_pretrained(tiny_paths["video_llama_3"])
    question, options = "which way does the ball move ?", ["left", "right", "up"]
    prompt = model.prepare(frames, question, options, answer=1, num_frames=None)
    ids, newline = prompt.input_ids[0].tolist(), model.tokenizer.convert_tokens_to_ids("\n")
    start = [i for i, t in enumerate(ids) if t == newline][1] + 1  # after "user\n" and the video's "\n"
    tokens = prompt.str_tokens[start:]

    def span(text):
        a, b = released_token_range(tokens, text)
        return list(range(start + a, start + b))

    tm = prompt.token_map
    assert tm.question_without_options.tolist() == span(question + "\n")
    assert tm.true_option.tolist() == span("(B) right\n")
    assert tm.false_options.tolist() == span("(A) left\n") + span("(C) up\n")
    assert tm.question.tolist() == list(range(start, span("(C) up\n")[-1] + 1))


def released_videollama3_grid(height: int, width: int, n_frames: int, max_tokens: int, factor: int, min_tokens: int):
    """The released VideoLLaMA3 image processor's frame size (``simple_batched_resize``) with its
    whole-clip ``max_tokens``: every frame keeps at most max_tokens / n_frames merged tokens."""
    import math

    max_pixels, min_pixels = max_tokens * factor * factor // n_frames, min_tokens * factor * factor
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    if h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return n_frames, h // factor, w // factor


def test_videollama3_video_budget_is_the_released_one(tiny_paths):
    """8 x 12 x 12 merged tokens for the clip, as the released scripts' --max_visual_tokens; None
    gives the checkpoint's own budget."""
    from hooked_video import HookedVideoLLM

    model = HookedVideoLLM.from_pretrained(tiny_paths["video_llama_3"])
    assert model.family.max_visual_tokens == 8 * 12 * 12
    frames = np.random.default_rng(0).integers(0, 256, (8, 480, 640, 3), dtype=np.uint8)
    video = model.processor.video_processor
    factor = video.patch_size * video.merge_size
    expected = released_videollama3_grid(480, 640, 8, 8 * 12 * 12, factor, video.size["shortest_edge"] // factor**2)
    prompt = model.prepare(frames, "which way does the ball move ?", ["left", "right"], answer=1, num_frames=None)
    assert tuple(prompt.token_map.grid.shape) == expected and expected[1] * expected[2] <= 144
    assert len(prompt.token_map.video) == expected[0] * expected[1] * expected[2]
    small = frames[:, :176, :240]  # 11 x 15 cells: over the budget of 144 a frame, within the checkpoint's
    capped = model.prepare(small, "which way does the ball move ?", ["left", "right"], answer=1, num_frames=None)
    assert tuple(capped.token_map.grid.shape) == released_videollama3_grid(176, 240, 8, 8 * 12 * 12, factor, 16) == (8, 10, 14)
    model.family.max_visual_tokens = None
    uncapped = model.prepare(small, "which way does the ball move ?", ["left", "right"], answer=1, num_frames=None)
    assert tuple(uncapped.token_map.grid.shape) == (8, 11, 15)


def test_option_prediction_follows_the_papers_rule_by_default(steered, frames):
    """A top token outside the option letters is no answer under the paper's rule (the released
    code decodes the argmax over the whole vocabulary), while the letter rule still picks one."""
    from hooked_video.analysis.accuracy import option_prediction

    import torch

    model = steered
    prompt = model.prepare(frames, "which way does the ball move ?", ["left", "right"], answer=1, num_frames=None)
    logits = torch.zeros(1, 1, model.cfg.d_vocab)
    logits[0, 0, prompt.option_token_ids[1]] = 2.0
    logits[0, 0, model.tokenizer.convert_tokens_to_ids("ball")] = 5.0  # a word, not a letter, on top
    assert option_prediction(logits, prompt, model.tokenizer) is None
    assert option_prediction(logits, prompt, rule="option-argmax") == 1
    with pytest.raises(ValueError, match="pass the tokenizer"):
        option_prediction(logits, prompt)


def released_videollama3_frames(path, max_frames: int = 8):
    """The released VideoLLaMA3 loader, written out with PyAV: every frame decoded, indices
    ``linspace(0, n - 1, max_frames, dtype=int)``, times ``linspace(0, duration, n)`` at them."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
    n = len(decoded)
    indices = np.linspace(0, n - 1, max_frames, dtype=int)
    times = np.linspace(0.0, n / fps, n)[indices]
    return decoded[indices], [f"Time {round(float(t), 1)}s:" for t in times]


def test_videollama3_frames_and_times_are_the_released_ones(tiny_paths, tmp_path):
    """First and last frame included, each frame's real time in the prompt (not 0, 1, ..., 7 s)."""
    from hooked_video import HookedVideoLLM
    from hooked_video.core.video import save_video
    from hooked_video.data import Sample

    clip = np.random.default_rng(1).integers(0, 256, (75, 32, 32, 3), dtype=np.uint8)
    path = save_video(clip, tmp_path / "clip.mp4", fps=25)
    model = HookedVideoLLM.from_pretrained(tiny_paths["video_llama_3"])
    frames, labels = released_videollama3_frames(path)
    for prompt in (model.prepare(path, "which way does the ball move ?", ["left", "right"], answer=1),
                   Sample("s", path, "which way does the ball move ?", ["left", "right"], 1).prepare(model)):
        np.testing.assert_array_equal(prompt.frames, frames)
        text = "".join(prompt.str_tokens)
        assert [label.replace(" ", "") in text for label in labels] == [True] * 8, (labels, text[:300])
        assert "Time3.0s:" in text and "Time7.0s:" not in text  # 75 frames at 25 fps: 3 s, not 0..7 s
    reversed_prompt = __import__("hooked_video").patching.reverse_frames(model, prompt)
    assert reversed_prompt.frame_times == prompt.frame_times  # the same slots keep their times
    midpoints = HookedVideoLLM.from_pretrained(tiny_paths["llava_next_video"]).prepare(path, "which way ?", ["left", "right"])
    assert not np.array_equal(midpoints.frames[0], frames[0])  # other families keep segment midpoints
