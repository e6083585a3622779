"""Long videos: 16, 32 and 64 frames through the analyses, end to end, on tiny models."""

import numpy as np
import pytest

from hooked_video import flow, lens, viz


@pytest.mark.parametrize("n_frames", [16, 32, 64])
def test_long_video_runs_the_four_targets_and_the_lens(deep, n_frames):
    frames = np.random.default_rng(n_frames).integers(0, 256, (n_frames, 32, 32, 3), dtype=np.uint8)
    prompt = deep.prepare(frames, "what happens first ?", ["the ball falls", "the cup moves"], answer=0, num_frames=None)
    tm = prompt.token_map
    assert tm.n_input_frames == n_frames and tm.n_frames * tm.temporal_patch_size == n_frames
    df = flow.sweep(deep, [prompt], window=3, select="all", progress=False)
    assert len(df) == deep.cfg.n_layers * 11 and df.p_knockout.notna().all()
    run = lens.run(deep, [prompt], variant="unembed", norm="released", select="all", progress=False)
    assert len(run.top1) == deep.cfg.n_layers and len(run.top1.positions.iloc[0]) == len(tm.video)
    grid = viz.attention_to_video(deep, prompt, tm.question, range(deep.cfg.n_layers), knockout="cross-frame")
    assert grid.shape == tm.grid_shape
