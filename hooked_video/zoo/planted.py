"""Train ``toy-planted``: a toy VideoLLM whose information pathway is known by construction.

    python -m hooked_video.zoo.planted --out runs/planted --device cuda

The pathway (``PLANTED``, also ``PathwaySpec.preset("toy-planted")``) keeps cross-frame edges
open in early layers, video -> question in the middle and question -> last late; video -> last
is never open. Every training step runs each clip three times in one batch:

- clean: the answer letter's cross-entropy;
- pruned: edge families outside the pathway blocked (all of them, or each with probability 1/2;
  in all their layers or a random half of them), the same cross-entropy plus the KL divergence
  from the clean answer distribution, so that removing them changes nothing;
- cut: one of the pathway's own flows knocked out in its layers, all of them or any non-empty
  part (cross-frame, video -> question, question -> last), trained towards the uniform
  distribution over the option letters, so that the answer needs every flow in every one of its
  layers.

A fourth term keeps the clean pass's attention off every edge outside the pathway (its mean
attention mass per query row), so that knocking any of them out, in any layers, changes nothing.
Masks are given per layer to each decoder layer of the plain HF model (eager attention), built
from the same ``PathwaySpec.families`` / ``open_groups`` that ``pathways.evaluate`` and the
knockout engine use. Training clips are the temporal tasks' (seeds >= 1000).
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Bool, Float

from hooked_video.analysis import knockout as ko
from hooked_video.analysis.pathways import PRESETS, PathwaySpec
from hooked_video.data import synthetic
from hooked_video.zoo import MODELS_DIR
from hooked_video.zoo.train import HELD_OUT_SEED, TOY_SIZES, TRAINING_LOAD, Batcher, build_toy, save_weights, train

PLANTED = PathwaySpec(**PRESETS["toy-planted"])
TASKS = list(synthetic.TEMPORAL_TASKS)
#: Names of the families a batch carries, in order: the blocked families outside the pathway,
#: then the pathway's own flows (``PathwaySpec.families`` then ``open_groups``).
OUTSIDE = ("cross-frame", "video->question", "question->last", "last->last", "video->last", "video->video",
           "question->question")  # fmt: skip
PATHWAY = ("cross-frame", "video->question", "question->last")


def family_layers(spec: PathwaySpec, n_layers: int) -> Bool[torch.Tensor, "F L"]:
    """Where each family of a batch is blocked when it is chosen: outside families in the layers
    the union rule blocks them, pathway flows in the layers they are open."""
    blocked = spec.blocked_layers(n_layers)
    flags = torch.zeros(len(OUTSIDE) + len(PATHWAY), n_layers, dtype=torch.bool)
    for row, name in enumerate(OUTSIDE):
        flags[row, blocked[name]] = True
    for row, name in enumerate(PATHWAY, start=len(OUTSIDE)):
        flags[row] = ~flags[OUTSIDE.index(name)]  # a flow is open exactly where the rule does not block it
    return flags


def family_masks(spec: PathwaySpec, tm, n_layers: int) -> Bool[torch.Tensor, "F N N"]:
    """The edges of every family of a batch for one prompt (``OUTSIDE`` then ``PATHWAY``)."""
    families = [edges for _, edges, _ in spec.families(tm, n_layers)]
    flows = {name: edges for name, edges, _ in spec.open_groups(tm)}
    return torch.stack([e.mask for e in families] + [flows[name].mask for name in PATHWAY])


class PlantedBatcher(Batcher):
    """``Batcher`` batches plus each clip's option-letter ids (B, 4; -1 pads) and its family
    masks (B, F, N, N), right-padded like the prompts."""

    spec = PLANTED

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.masks: dict[tuple, torch.Tensor] = {}

    def batch(self, clips: list):
        base = super().batch(clips)
        length = base[0].shape[1]
        letters = torch.full((len(clips), 4), -1, dtype=torch.long)
        masks = torch.zeros(len(clips), len(OUTSIDE) + len(PATHWAY), length, length, dtype=torch.bool)
        for row, clip in enumerate(clips):
            prompt = self.prompt_of(clip)
            key = (clip.question, tuple(clip.options))
            if key not in self.masks:
                self.masks[key] = family_masks(self.spec, prompt.token_map, TOY_SIZES.n_layers)
            n = prompt.n_positions
            masks[row, :, :n, :n] = self.masks[key]
            letters[row, : len(prompt.option_token_ids)] = torch.tensor(prompt.option_token_ids)
        return (*base, letters, masks)


@contextlib.contextmanager
def layer_masks(model, blocked: Bool[torch.Tensor, "B L N N"], padding: Bool[torch.Tensor, "B N"],
                penalised: Bool[torch.Tensor, "B L N N"] | None = None):  # fmt: skip
    """Every decoder layer l of ``model``'s language model (eager attention) attends causally to
    its real keys except ``blocked[:, l]``. Yields a list that collects, per layer, the mean
    attention mass on the ``penalised`` edges (per query row and head)."""
    layers = model.model.language_model.layers
    n = blocked.shape[-1]
    allowed = torch.ones(n, n, dtype=torch.bool, device=blocked.device).tril() & padding.bool()[:, None, None, :]
    additive = torch.zeros(blocked.shape, device=blocked.device).masked_fill_(~(allowed & ~blocked), -1e9)
    masses: list[torch.Tensor] = []

    def use(layer: int):
        def pre_hook(module, args, kwargs):
            return args, {**kwargs, "attention_mask": additive[:, layer, None]}

        return pre_hook

    def measure(layer: int):
        def hook(module, args, output):
            weights = output[1]  # (B, H, N, N)
            masses.append((weights.float() * penalised[:, layer, None]).sum(-1).mean())

        return hook

    handles = [block.register_forward_pre_hook(use(i), with_kwargs=True) for i, block in enumerate(layers)]
    if penalised is not None:
        handles += [block.self_attn.register_forward_hook(measure(i)) for i, block in enumerate(layers)]
    try:
        yield masses
    finally:
        for handle in handles:
            handle.remove()


def last_log_probs(model, batch, chosen: Bool[torch.Tensor, "B F L"], penalised=None
                   ) -> tuple[Float[torch.Tensor, "B V"], list]:  # fmt: skip
    """Log-softmax over the vocabulary at each prompt's last position, with family f of row b
    blocked in the layers ``chosen[b, f]``; and the attention mass on ``penalised`` edges
    (``layer_masks``)."""
    input_ids, mask, pixels, last, _, _, families = batch
    blocked = torch.einsum("bfl,bfij->blij", chosen.float(), families.float()) > 0
    with layer_masks(model, blocked, mask, penalised) as masses:
        logits = model(input_ids=input_ids, attention_mask=mask, pixel_values_videos=pixels).logits
    return logits[torch.arange(len(last), device=logits.device), last].float().log_softmax(-1), masses


def choose(batch_size: int, flags: Bool[torch.Tensor, "F L"], generator: torch.Generator, cut: bool
           ) -> Bool[torch.Tensor, "B F L"]:  # fmt: skip
    """Random knockouts: each outside family is blocked (all of them with probability 1/2, else
    each with probability 1/2) in all its blocked layers (probability 1/2) or in a random half
    of them; with ``cut``, one pathway flow per row is also knocked out in all its open layers
    (probability 1/2) or in a random non-empty part of them, so that every layer of every flow is
    needed (and outside families are blocked only half the time)."""
    n_out, n_layers = len(OUTSIDE), flags.shape[1]
    families = torch.rand(batch_size, n_out, generator=generator) < 0.5
    families |= torch.rand(batch_size, 1, generator=generator) < 0.5
    if cut:
        families &= torch.rand(batch_size, 1, generator=generator) < 0.5
    layers = (torch.rand(batch_size, n_out, 1, generator=generator) < 0.5) | (
        torch.rand(batch_size, n_out, n_layers, generator=generator) < 0.5)  # fmt: skip
    chosen = torch.zeros(batch_size, *flags.shape, dtype=torch.bool)
    chosen[:, :n_out] = families[:, :, None] & layers & flags[None, :n_out]
    if cut:
        flow = n_out + torch.randint(len(PATHWAY), (batch_size,), generator=generator)
        some = torch.rand(batch_size, n_layers, generator=generator) < 0.5
        some[torch.arange(batch_size), _random_layer_of(flags[flow], generator)] = True
        some |= torch.rand(batch_size, 1, generator=generator) < 0.5
        chosen[torch.arange(batch_size), flow] = flags[flow] & some
    return chosen


def _random_layer_of(flags: Bool[torch.Tensor, "B L"], generator: torch.Generator) -> torch.Tensor:
    """One layer per row, uniformly among the row's flagged layers."""
    weights = flags.float() + 1e-9 * (~flags).float()
    return torch.multinomial(weights, 1, generator=generator)[:, 0]


def repeat(batch, times: int):
    """Every tensor of a batch repeated ``times`` along the batch dimension."""
    return [t.repeat(times, *([1] * (t.ndim - 1))) for t in batch]


class PlantedLoss:
    """The loss of the module docstring, one forward over clean, pruned and cut copies of a batch:
    answer cross-entropy (clean, pruned) + KL(clean || pruned) + cross-entropy towards the
    uniform option letters (cut) + ``mass_weight`` x the clean pass's attention mass on edges
    outside the pathway."""

    def __init__(self, spec: PathwaySpec = PLANTED, n_layers: int = TOY_SIZES.n_layers, seed: int = 0,
                 mass_weight: float = 10.0) -> None:  # fmt: skip
        self.flags = family_layers(spec, n_layers)
        self.generator = torch.Generator().manual_seed(seed)
        self.mass_weight = mass_weight

    def __call__(self, model, batch) -> tuple[torch.Tensor, float]:
        b, flags = batch[0].shape[0], self.flags
        chosen = torch.cat([torch.zeros(b, *flags.shape, dtype=torch.bool), choose(b, flags, self.generator, False),
                            choose(b, flags, self.generator, True)]).to(batch[0].device)  # fmt: skip
        outside = flags.clone()
        outside[len(OUTSIDE):] = False
        families = batch[6]
        penalised = torch.einsum("fl,bfij->blij", outside.float().to(families.device), families.float()) > 0
        penalised = torch.cat([penalised, torch.zeros_like(penalised), torch.zeros_like(penalised)])
        log_probs, masses = last_log_probs(model, repeat(batch, 3), chosen, penalised)
        clean, pruned, cut = log_probs.split(b)
        targets, letters = batch[4], batch[5]
        answer = torch.nn.functional.nll_loss(clean, targets) + torch.nn.functional.nll_loss(pruned, targets)
        reference = clean.detach()
        kl = (reference.exp() * (reference - pruned)).sum(-1).mean()
        valid = letters >= 0
        uniform = -(cut.gather(1, letters.clamp(min=0)) * valid).sum(-1).div(valid.sum(-1)).mean()
        mass = torch.stack(masses).mean() * 3  # the clean third carries all of it
        accuracy = float((clean.detach().argmax(-1) == targets).float().mean())
        return answer + kl + uniform + self.mass_weight * mass, accuracy


@torch.no_grad()
def pathway_effects(model, hooked, per_task: int = 64, seed: int = HELD_OUT_SEED, batch_size: int = 64) -> dict:
    """On held-out clips of the temporal tasks: accuracy (option letters), and for all outside
    families together and each pathway flow alone, the mean relative change (%) of the
    probability of the clean prediction and the share of predictions that change (full
    vocabulary). A quick in-training check; ``tests/test_zoo_planted.py`` measures the bundled
    weights with the project's own engine."""
    model.eval()
    batcher = PlantedBatcher(hooked, TASKS, [1.0] * len(TASKS), 0, "cpu")
    clips = [synthetic.make_clip(task, i, seed=seed) for task in TASKS for i in range(per_task)]
    device = next(model.parameters()).device
    n_out, flags = len(OUTSIDE), family_layers(PLANTED, TOY_SIZES.n_layers)
    settings = {"outside": flags & (torch.arange(len(flags)) < n_out)[:, None]}
    settings.update({f"cut {name}": flags & (torch.arange(len(flags)) == n_out + i)[:, None]
                     for i, name in enumerate(PATHWAY)})  # fmt: skip
    for i, name in enumerate(PATHWAY):  # each layer of each flow alone
        for layer in flags[n_out + i].nonzero().flatten().tolist():
            single = torch.zeros_like(flags)
            single[n_out + i, layer] = True
            settings[f"cut {name} @ {layer}"] = single
    sums: dict[str, list] = {name: [] for name in settings}
    correct = []
    for start in range(0, len(clips), batch_size):
        batch = [t.to(device) for t in batcher.batch(clips[start : start + batch_size])]
        b = batch[0].shape[0]
        clean, _ = last_log_probs(model, batch, torch.zeros(b, *flags.shape, dtype=torch.bool, device=device))
        predicted = clean.argmax(-1)
        letters = batch[5].clamp(min=0)
        on_letters = clean.gather(1, letters).masked_fill(batch[5] < 0, -torch.inf)
        correct += (letters.gather(1, on_letters.argmax(-1, keepdim=True))[:, 0] == batch[4]).tolist()
        base = clean.gather(1, predicted[:, None])[:, 0].exp()
        for name, chosen in settings.items():
            knocked, _ = last_log_probs(model, batch, chosen.to(device).expand(b, -1, -1))
            change = (knocked.gather(1, predicted[:, None])[:, 0].exp() - base) / base * 100
            sums[name] += list(zip(change.tolist(), (knocked.argmax(-1) != predicted).tolist()))
    effects = {name: {"mean_rel_change": float(np.mean([c for c, _ in rows])),
                      "flipped": float(np.mean([f for _, f in rows]))} for name, rows in sums.items()}  # fmt: skip
    return {"accuracy": float(np.mean(correct)), "effects": effects, "samples": len(clips)}


def main(argv=None) -> None:
    """Command line: fine-tune ``--init`` (default: the bundled toy-video-ft) into toy-planted."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--init", default=str(MODELS_DIR / "toy-video-ft"),
                        help="a toy model folder to start from (its weights, tokenizer and processor), or 'scratch'")  # fmt: skip
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-per-task", type=int, default=64)
    parser.add_argument("--mass-weight", type=float, default=10.0,
                        help="weight of the attention mass on edges outside the pathway")  # fmt: skip
    args = parser.parse_args(argv)
    import shutil

    from transformers import LlavaNextVideoForConditionalGeneration

    from hooked_video.model.hooked import HookedVideoLLM

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    architecture = out / "architecture"
    if args.init == "scratch":
        build_toy(architecture, seed=args.seed)
    else:
        shutil.rmtree(architecture, ignore_errors=True)
        shutil.copytree(args.init, architecture, ignore=shutil.ignore_patterns("README.md"))
    hooked = HookedVideoLLM.from_pretrained(architecture)  # builds prompts only
    model = LlavaNextVideoForConditionalGeneration.from_pretrained(architecture, **{**TRAINING_LOAD, "attn_implementation": "eager"})
    model.to(args.device)
    log: list = []
    before = pathway_effects(model, hooked, args.eval_per_task)
    print(json.dumps({"before": before}), flush=True)
    loss = PlantedLoss(PLANTED, TOY_SIZES.n_layers, args.seed, args.mass_weight)
    train(model, hooked, TASKS, [1.0] * len(TASKS), args.steps, args.lr, args.batch_size, args.seed + 2, args.device,
          log, "planted", loss=loss, batcher=PlantedBatcher)  # fmt: skip
    after = pathway_effects(model, hooked, args.eval_per_task)
    print(json.dumps({"after": after}), flush=True)
    save_weights(model, out / "toy-planted.safetensors")
    (out / "train_log.json").write_text(json.dumps({"args": vars(args), "log": log, "before": before, "after": after},
                                                   indent=1))  # fmt: skip


if __name__ == "__main__":
    main()


# ----- checks against a sweep -----------------------------------------------------------------
#: Sweep conditions and the pathway flow (spec field) each one belongs to; None: outside the pathway
#: in every layer.
CONDITIONS = {"cross-frame": "inter", "video->question": "v2q", "question->last": "q2l", "video->last": None,
              "last->last": None}  # fmt: skip


def window_rows(df, spec: PathwaySpec, window: int) -> dict:
    """Over a ``flow.sweep(..., window=window)`` of the cross-frame and vql-to-ql targets: the
    largest |mean change| (%) of a row whose whole window lies outside its flow's range in
    ``spec``, and the weakest (least negative) mean change of a row whose window lies inside it."""
    means = df.groupby(["condition", "layer"]).rel_change.mean()
    outside, inside = [], []
    for (condition, layer), value in means.items():
        if condition not in CONDITIONS:
            continue
        blocked = ko.window(layer, window, spec.n_layers)
        low, high = blocked[0], blocked[-1]
        r = getattr(spec, CONDITIONS[condition]) if CONDITIONS[condition] else None
        if r is None or high < r[0] or low > r[1]:
            outside.append(float(value))
        elif r[0] <= low and high <= r[1]:
            inside.append(float(value))
    return {"window": window, "largest_outside": max(outside, key=abs), "weakest_inside": max(inside),
            "rows_outside": len(outside), "rows_inside": len(inside)}  # fmt: skip


def _in_pathway(condition_at_layer: str, spec: PathwaySpec) -> bool:
    """Whether "condition@layer" names a layer inside its flow's range in ``spec``."""
    condition, layer = condition_at_layer.rsplit("@", 1)
    r = getattr(spec, CONDITIONS.get(condition) or "", None) if CONDITIONS.get(condition) else None
    return r is not None and r[0] <= int(layer) <= r[1]


# ----- the model card ---------------------------------------------------------------------------
def model_card(log: dict, measured: dict) -> str:
    """toy-planted's README: the planted pathway, the training run, and what
    ``benchmarks/toy_planted.py`` measured with the project's own engine (``measured``)."""
    args, spec = log["args"], PLANTED
    settings = measured["faithfulness"]
    lines = [
        "# toy-planted", "",
        "A toy VideoLLM whose information pathway is known by construction: the ground truth for pathway discovery "
        "and attribution, and an exercise (\"find the pathway of this model\", tutorial 08). Same class, tokenizer and "
        "processor as toy-video-ft (LLaVA-NeXT-Video layout, 12-layer Llama-style LM), fine-tuned from it on the five "
        "temporal tasks of the synthetic benchmark.", "",
        "## The planted pathway (`PathwaySpec.preset(\"toy-planted\")`, 0-based layers)", "",
        f"- cross-frame edges among video tokens: open in layers {spec.inter[0]}-{spec.inter[1]} only",
        f"- video -> question: layers {spec.v2q[0]}-{spec.v2q[1]}",
        f"- question -> last position: layers {spec.q2l[0]}-{spec.q2l[1]}",
        "- video -> last and last -> last: never; video -> video above the video -> question layers and "
        "question -> question above the question -> last layers: never (the effective-pathway union rule).", "",
        "## Training", "",
        "`hooked_video.zoo.planted` (one H200, bf16 autocast, "
        f"{args['steps']} steps of batch {args['batch_size']}, lr {args['lr']}, seed {args['seed']}):", "",
        f"    python -m hooked_video.zoo.planted --out DIR --device cuda --steps {args['steps']} --lr {args['lr']} "
        f"--mass-weight {args['mass_weight']}", "",
        "Each step runs every clip clean, with edge families outside the pathway knocked out (random families, "
        "random layers; answer loss plus KL to the clean answer distribution) and with one of the pathway's three "
        "flows cut in all or part of its layers (trained towards the uniform distribution over the option letters); "
        "the clean pass "
        f"also pays {args['mass_weight']:g} x its attention mass on edges outside the pathway. Final training loss "
        f"{log['log'][-1]['loss']:.3f} (the cut term alone cannot go below about 0.91, the mean log of the "
        "number of options). Log: `benchmarks/results/toy_planted_training_log.json`.", "",
        f"## Measured (`python benchmarks/toy_planted.py --per-task {measured['per_task']}`, exact forwards, CPU)", "",
        f"{measured['samples']} held-out questions (seed 0, read from mp4 files). Accuracy (paper's rule: the top "
        "token over the full vocabulary is the true letter):", "",
        "| task | accuracy |", "|---|---|",
        *[f"| {task} | {value:.3f} |" for task, value in measured["accuracy"].items()], "",
        "`pathways.faithfulness(model, data, PathwaySpec.preset(\"toy-planted\"))`: mean relative change of the "
        "probability of the model's answer (%), share of answers that change, accuracy:", "",
        "| knocked out | relative change (%) | answers changed | accuracy |", "|---|---|---|---|",
        *[f"| {name} | {row['rel_change']:+.4f} | {row['flipped']:.3f} | {row['correct']:.3f} |"
          for name, row in settings.items()], "",
        f"A window sweep (`flow.sweep(..., window=3)`, cross-frame and vql-to-ql): the largest mean change of a row "
        f"whose window lies outside the pathway is {measured['sweep']['largest_outside']:+.4f}%; every row whose window "
        f"lies inside one of the three flows' ranges changes it by {measured['sweep']['weakest_inside']:+.1f}% or more. "
        f"One layer at a time (window=1): the largest row outside is {measured['single_layers']['largest_outside']:+.4f}%; "
        "inside, each layer of each flow alone:", "",
        "| flow @ layer (0-based) | relative change (%) |", "|---|---|",
        *[f"| {name} | {value:+.1f} |" for name, value in measured["single_layer_means"].items()
          if _in_pathway(name, spec)], "",
    ]  # fmt: skip
    return "\n".join(lines)
