"""The faithfulness-size curve of a search, with what it is judged against: random pruning of
the same sizes (the paper's random baseline, several seeds) and the model's preset pathway,
every point an exact figure over the same samples."""

from __future__ import annotations

import numpy as np
import pandas as pd

from hooked_video.analysis.pathways import (
    PRESETS,
    PathwaySpec,
    causal_edges,
    preset_for,
    random_layer_edges,
    random_ranks,
    sample_seed,
)
from hooked_video.analysis.random_pruning import RANDOM_DRAW
from hooked_video.core.checks import InvalidInputError

#: About how many sizes of the path get random-pruning points (the found pathway's size always does).
RANDOM_POINTS = 10
FIGURES = ["retention", "rel_change", "flipped", "accuracy"]


def resolve_preset(model, preset: PathwaySpec | str | None) -> PathwaySpec | None:
    """A preset argument as a spec: a spec, a preset name, "auto" (the preset measured on
    ``model``, else none) or None."""
    if preset is None or isinstance(preset, PathwaySpec):
        return preset
    if preset == "auto":
        name = preset_for(model)
        return PathwaySpec.preset(name) if name else None
    if preset not in PRESETS:
        raise InvalidInputError(f"preset={preset!r}: a PathwaySpec, 'auto', None or one of {sorted(PRESETS)}")
    return PathwaySpec.preset(preset)


def _reachable(scorer, fraction: float) -> bool:
    """Whether every prompt has enough causal pairs at or after the video start to prune ``fraction``."""
    for prompt in scorer.prompts:
        n, start = prompt.n_positions, int(prompt.token_map.video_group.min())
        if int(fraction * causal_edges(n)) > causal_edges(n - start):  # as random_layer_edges counts
            return False
    return True


def random_name(fraction: float, seed: int) -> str:
    """A random-pruning setting's name: the exact fraction (nearby sizes must not share rows), the
    seed and the draw (rows of the earlier ``randperm`` draw, stored without it, are not reused)."""
    return f"random {fraction!r} seed {seed} {RANDOM_DRAW}"


def random_setting(scorer, fraction: float, seed: int, orders: dict | None = None) -> dict:
    """The random baseline pruning ``fraction`` of each layer's causal edges, one draw per sample
    and layer (seeded by ``seed`` and the sample id, as ``pathways.evaluate`` draws). ``orders``:
    a dict the settings of several fractions share, holding the last (sample, seed)'s random order
    (``pathways.random_ranks``): each fraction's draw is a prefix of it."""
    name = random_name(fraction, seed)
    orders = {} if orders is None else orders

    def edges_of(i, prompt):
        if (i, seed) not in orders:
            orders.clear()  # one order at a time: (layers, N, N) int32 each
            device = scorer.runners[i].device if i in scorer.runners else None
            orders[i, seed] = random_ranks(prompt.token_map, scorer.n_layers, sample_seed(seed, scorer.ids[i]), device)
        return random_layer_edges(prompt.token_map, scorer.n_layers, fraction, sample_seed(seed, scorer.ids[i]),
                                  orders[i, seed])  # fmt: skip

    return {name: edges_of}


def preset_row(scorer, preset: PathwaySpec) -> dict:
    """The preset scored on the scorer's samples, as a curve row."""
    preset.check_model(scorer.model)
    figures = scorer.score_pathway(preset.describe(), preset)
    return {"pathway": "preset", "step": np.nan, "seed": np.nan, **figures}


def random_rows(scorer, fractions: dict, seeds: int, key: str = "step") -> tuple[list[dict], list]:
    """Random pruning at each ``fractions`` value (point -> pruned share; the point goes in the
    rows' column ``key``), ``seeds`` seeds each, all scored side by side: (rows, points whose
    share the paper's rule cannot reach on these prompts)."""
    skipped = [point for point, fraction in fractions.items() if not _reachable(scorer, fraction)]
    reached = {point: fraction for point, fraction in fractions.items() if point not in skipped}
    settings, orders = {}, {}
    for seed in range(seeds):  # seed by seed: every fraction of a sample and seed reads one random order
        for fraction in reached.values():
            settings.update(random_setting(scorer, fraction, seed, orders))
    points = [(point, seed, random_name(fraction, seed)) for point, fraction in reached.items() for seed in range(seeds)]
    scored = scorer.score(settings)  # all points of a sample side by side in the engine
    return [{"pathway": "random", key: point, "seed": seed, **scored[name]} for point, seed, name in points], skipped


def baselines(scorer, found, preset: PathwaySpec | None, seeds: int) -> pd.DataFrame | None:
    """``found.path`` as the "discovered" curve, plus random pruning at about ``RANDOM_POINTS`` of
    its sizes and at the found pathway's (``seeds`` seeds each), plus ``preset``: one row per point
    (pathway, step, seed, retention, rel_change, flipped, accuracy). None with neither."""
    if not seeds and preset is None:
        return None
    path = found.path
    rows = [{"pathway": "discovered", "step": int(r.step), "seed": np.nan, **{k: r[k] for k in FIGURES}}
            for _, r in path.iterrows()]  # fmt: skip
    if preset is not None:
        rows.append(preset_row(scorer, preset))
    steps = sorted(set(np.linspace(0, len(path) - 1, min(RANDOM_POINTS, len(path))).round().astype(int).tolist())
                   | ({found.step} if found.step is not None else set()))  # fmt: skip
    fractions = {step: 1 - float(path.loc[step, "retention"]) for step in steps} if seeds else {}
    random, skipped = random_rows(scorer, fractions, seeds)
    table = pd.DataFrame(rows + random)
    table.attrs["unreachable_steps"] = skipped
    table.attrs["full_accuracy"] = scorer.full_accuracy
    return table
