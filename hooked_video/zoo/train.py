"""Train the bundled toy VideoLLMs on the synthetic benchmark (CPU works, slowly; GPU is quick).

    python -m hooked_video.zoo.train --out runs/toys --device cuda        # both models
    python -m hooked_video.zoo.train --out runs/toys --image-steps 50 --video-steps 50   # smoke run

``toy-image`` learns the single-frame tasks from static clips (every frame the same, as an image
model sees one picture); ``toy-video-ft`` starts from it and is fine-tuned on the temporal tasks
with single-frame tasks mixed in, as the paper's models are image models fine-tuned on video.
Training clips come from seeds >= 1000; the held-out benchmark uses seed 0, so they never overlap.
The loss is the cross-entropy of the option letter after ``Best option:(``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from hooked_video.data import synthetic
from hooked_video.zoo import scenes
from hooked_video.zoo.tiny import BASE_WORDS, TinySizes, build_tiny

#: The toy architecture: LLaVA-NeXT-Video layout (CLIP-style tower, projector, 2x2 pooling,
#: Llama-style LM), 64x64 frames in 8x8 patches -> 4x4 video tokens per frame.
TOY_SIZES = TinySizes(d_model=128, n_layers=12, n_heads=4, n_kv_heads=4, d_mlp=384, vision_width=64,
                      vision_layers=4, image_size=64, patch_size=8, max_positions=1024)  # fmt: skip
#: The deeper pair (toy16-image, toy16-video-ft): the same, with 16 language-model layers.
TOY16_SIZES = dataclasses.replace(TOY_SIZES, n_layers=16)
TRAIN_SEED = 1000
#: How the training scripts load a toy: SDPA attention, and no Hugging Face hub kernels (transformers
#: 5.25 kernelizes on ``model.train()`` when the ``kernels`` package is installed, which needs the hub).
TRAINING_LOAD = dict(attn_implementation="sdpa", use_kernels=False, dtype=torch.float32)
HELD_OUT_SEED = 0


def toy_words() -> list[str]:
    """The toy models' vocabulary: the base words and the synthetic benchmark's words."""
    return list(dict.fromkeys([*BASE_WORDS, *synthetic.vocabulary()]))


def build_toy(path: str | Path, seed: int = 0, sizes: TinySizes = TOY_SIZES) -> Path:
    """A randomly initialised toy model with its tokenizer and processor, saved to ``path``."""
    return build_tiny("llava_next_video", path, sizes, words=toy_words(), seed=seed)


class Batcher:
    """Training batches built the way ``HookedVideoLLM.prepare`` builds prompts.

    Prompt ids come from the model's own processor (cached per question text; the video
    placeholder expands to the same count for every clip), pixel values are normalised exactly as
    the video processor does for 64x64 frames (checked by a test).
    """

    def __init__(self, hooked, tasks: list[str], weights: list[float], seed: int, device) -> None:
        self.hooked, self.tasks, self.device = hooked, tasks, device
        self.weights = np.array(weights, float) / sum(weights)
        self.rng = np.random.default_rng(seed)
        self.counter = {t: 0 for t in tasks}
        vp = hooked.processor.video_processor
        self.mean = torch.tensor(vp.image_mean).view(1, 1, 3, 1, 1)
        self.std = torch.tensor(vp.image_std).view(1, 1, 3, 1, 1)
        self.prompts: dict[tuple, tuple] = {}

    def pixel_values(self, frames: np.ndarray) -> torch.Tensor:
        """(B, T, H, W, 3) uint8 -> (B, T, 3, H, W) normalised float."""
        x = torch.from_numpy(frames).permute(0, 1, 4, 2, 3).float() / 255.0
        return (x - self.mean) / self.std

    def prompt_of(self, clip):
        """The clip's ``VideoPrompt`` (its frames aside, the same for every clip with the same
        question and options: cached per question and options)."""
        key = (clip.question, tuple(clip.options))
        if key not in self.prompts:
            self.prompts[key] = self.hooked.prepare(clip.frames, clip.question, clip.options, clip.answer, num_frames=None)
        return self.prompts[key]

    def prompt_ids(self, clip) -> tuple[list[int], int]:
        """(token ids, the true option letter's id) of a clip's prompt."""
        prompt = self.prompt_of(clip)
        return prompt.input_ids[0].tolist(), prompt.option_token_ids[clip.answer]

    def clips(self, batch_size: int) -> list:
        """``batch_size`` fresh training clips, tasks drawn by their weights; a task may be a
        scene of ``zoo.scenes`` (two different questions of one scene)."""
        clips = []
        for task in self.rng.choice(self.tasks, batch_size, p=self.weights):
            if task in scenes.SCENES:
                clips += scenes.scene_clips(task, self.rng, questions=2)
            else:
                clips.append(synthetic.make_clip(task, int(self.rng.integers(0, 10**9)), seed=TRAIN_SEED))
        return clips[:batch_size]

    def __call__(self, batch_size: int):
        return self.batch(self.clips(batch_size))

    def batch(self, clips: list):
        """(input_ids, attention mask, pixel values, last positions, answer-letter ids) of ``clips``,
        right-padded to the longest prompt."""
        batch_size = len(clips)
        ids, targets = zip(*(self.prompt_ids(c) for c in clips))
        length = max(map(len, ids))
        pad = self.hooked.tokenizer.pad_token_id
        input_ids = torch.full((batch_size, length), pad, dtype=torch.long)
        mask = torch.zeros(batch_size, length, dtype=torch.long)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        frames = np.stack([c.frames for c in clips])
        last = torch.tensor([len(s) - 1 for s in ids])
        return (input_ids.to(self.device), mask.to(self.device), self.pixel_values(frames).to(self.device),
                last.to(self.device), torch.tensor(targets, device=self.device))  # fmt: skip


class TextBatcher(Batcher):
    """``Batcher`` batches whose prompts go on with the whole answer, ``A ) left </s>``, and
    the (B, L) next-token targets of those answer tokens (-100 elsewhere): trains the unembedding
    of the option words, as a language model's answers do."""

    def prompt_ids(self, clip) -> tuple[list[int], int]:
        ids, letter = super().prompt_ids(clip)
        tokenizer = self.hooked.tokenizer
        answer = tokenizer.encode(f") {clip.options[clip.answer]}", add_special_tokens=False)
        return ids + [letter, *answer, tokenizer.eos_token_id], letter

    def batch(self, clips: list):
        input_ids, mask, pixels, _, targets = super().batch(clips)
        # each prompt's own last position (the answer follows it), from the cached prompts
        last = torch.tensor([self.prompt_of(c).n_positions - 1 for c in clips], device=input_ids.device)
        following = torch.full_like(input_ids, -100)
        following[:, :-1] = torch.where(mask[:, 1:].bool(), input_ids[:, 1:], -100)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        following[positions[None] < last[:, None]] = -100  # only the answer is predicted
        return input_ids, mask, pixels, last, targets, following


def answer_text_loss(model, batch) -> tuple[torch.Tensor, float]:
    """Cross-entropy of the whole answer (letter, bracket, option words, end): a ``TextBatcher``
    batch; the accuracy is the option letter's at the prompt's last position."""
    input_ids, mask, pixels, last, targets, following = batch
    logits = model(input_ids=input_ids, attention_mask=mask, pixel_values_videos=pixels).logits.float()
    final = logits[torch.arange(len(last), device=logits.device), last]
    accuracy = float((final.detach().argmax(-1) == targets).float().mean())
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), following.flatten(), ignore_index=-100), accuracy


class BatchStream(torch.utils.data.IterableDataset):
    """Endless batches from a batcher (``Batcher`` or a subclass); each DataLoader worker draws
    from its own seed."""

    def __init__(self, hooked, tasks, weights, seed: int, batch_size: int, batcher=None) -> None:
        self.args = (hooked, tasks, weights, seed)
        self.batch_size, self.batcher = batch_size, batcher or Batcher

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        hooked, tasks, weights, seed = self.args
        batcher = self.batcher(hooked, tasks, weights, seed * 1000 + (info.id if info else 0), "cpu")
        while True:
            yield batcher(self.batch_size)


def answer_loss(model, batch) -> tuple[torch.Tensor, float]:
    """Option-letter cross-entropy at the last prompt position, and the batch's accuracy."""
    input_ids, mask, pixels, last, targets = batch
    logits = model(input_ids=input_ids, attention_mask=mask, pixel_values_videos=pixels).logits
    final = logits[torch.arange(len(last), device=logits.device), last].float()
    accuracy = float((final.detach().argmax(-1) == targets).float().mean())
    return torch.nn.functional.cross_entropy(final, targets), accuracy


def train(model, hooked, tasks: list[str], weights: list[float], steps: int, lr: float, batch_size: int, seed: int,
          device, log: list, phase: str, loss=answer_loss, batcher=None, workers: int = 6,
          checkpoint: Path | None = None) -> None:  # fmt: skip
    """AdamW with linear warm-up and cosine decay on ``loss(model, batch) -> (loss, accuracy)``
    (default: the option-letter cross-entropy), batches from ``batcher`` (default ``Batcher``);
    the weights go to ``checkpoint`` every 500 steps, if given.

    ``model`` is a plain HF model (trained without TransformerLens hooks); ``hooked`` only
    builds the prompts."""
    model.train()
    workers = 0 if str(device) == "cpu" else workers
    stream = BatchStream(hooked, tasks, weights, seed, batch_size, batcher)
    stream = iter(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers,
                                              prefetch_factor=4 if workers else None))  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if str(device).startswith("cuda") else torch.autocast("cpu", enabled=False)
    start, running = time.time(), []
    for step in range(steps):
        batch = [t.to(device, non_blocking=True) for t in next(stream)]
        with autocast:
            value, accuracy = loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        running.append((float(value.detach()), accuracy))
        if (step + 1) % 100 == 0 or step + 1 == steps:
            loss_mean, acc = np.mean(running, axis=0)
            log.append({"phase": phase, "step": step + 1, "loss": float(loss_mean), "train_accuracy": float(acc),
                        "seconds": round(time.time() - start, 1)})  # fmt: skip
            print(json.dumps(log[-1]), flush=True)
            running = []
        if checkpoint and (step + 1) % 500 == 0:
            save_weights(model, checkpoint)
    model.eval()


@torch.no_grad()
def held_out_accuracy(hooked, per_task: int = 64, tasks=None, seed: int = HELD_OUT_SEED, batch: int = 32,
                      model=None) -> dict[str, float]:  # fmt: skip
    """Option-letter accuracy per task on held-out clips (in memory, the clips that
    ``synthetic.generate(seed=0)`` writes), prompts from ``hooked.prepare``; the forward runs on
    ``model`` (default: the hooked model's own)."""
    from hooked_video.model.hooked import batch_inputs, inputs_for

    model = model or hooked.hf_model
    model.eval()
    results = {}
    for task in tasks or list(synthetic.TASKS):
        correct = 0
        prompts = [None] * per_task
        for i in range(per_task):
            clip = synthetic.make_clip(task, i, seed=seed)
            prompts[i] = hooked.prepare(clip.frames, clip.question, clip.options, clip.answer, num_frames=None)
        by_length: dict[int, list] = {}
        for p in prompts:
            by_length.setdefault(p.n_positions, []).append(p)
        for group in by_length.values():
            for start in range(0, len(group), batch):
                chunk = group[start : start + batch]
                logits = model(**inputs_for(model, batch_inputs(chunk)), logits_to_keep=1).logits[:, -1]
                for p, row in zip(chunk, logits):
                    correct += int(row[p.option_token_ids].argmax()) == p.answer
        results[task] = correct / per_task
    return results


def save_weights(model, path: Path) -> None:
    """Weights only, float16 safetensors (the architecture files come from ``build_toy``)."""
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float16).contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path))


def main(argv=None) -> None:
    """Command line: train toy-image, then fine-tune it into toy-video-ft, and write both."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--image-steps", type=int, default=3000)
    parser.add_argument("--video-steps", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-per-task", type=int, default=64, help="held-out clips per task (0: no evaluation)")
    parser.add_argument("--layers", type=int, default=TOY_SIZES.n_layers, help="language-model layers (toy16: 16)")
    parser.add_argument("--scenes", action="store_true",
                        help="mix in two-object scenes whose questions choose what to read (zoo.scenes)")
    parser.add_argument("--answer-text", action="store_true",
                        help="train on the whole answer ('A ) left </s>'), not only its letter")
    parser.add_argument("--video-from-scratch", action="store_true",
                        help="train the video model from a fresh initialisation instead of the image model")
    parser.add_argument("--workers", type=int, default=6, help="data-loading processes (GPU runs)")
    args = parser.parse_args(argv)
    from transformers import LlavaNextVideoForConditionalGeneration

    from hooked_video.model.hooked import HookedVideoLLM

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    sizes = dataclasses.replace(TOY_SIZES, n_layers=args.layers)
    architecture = build_toy(out / "architecture", seed=args.seed, sizes=sizes)
    hooked = HookedVideoLLM.from_pretrained(architecture)  # builds prompts only

    def fresh():
        return LlavaNextVideoForConditionalGeneration.from_pretrained(architecture, **TRAINING_LOAD).to(args.device)

    phase = dict(lr=args.lr, batch_size=args.batch_size, device=args.device, workers=args.workers,
                 loss=answer_text_loss if args.answer_text else answer_loss,
                 batcher=TextBatcher if args.answer_text else Batcher)  # fmt: skip
    single, temporal = list(synthetic.SINGLE_FRAME_TASKS), list(synthetic.TEMPORAL_TASKS)
    image_tasks, image_weights = single + ["static_pair"] * args.scenes, [1.0] * (len(single) + args.scenes)
    video_tasks = temporal + single + ["moving_pair", "size_pair", "static_pair"] * args.scenes
    video_weights = [3.0] * len(temporal) + [1.0] * len(single) + [3.0, 3.0, 1.0] * args.scenes
    log: list = []
    model = fresh()
    train(model, hooked, image_tasks, image_weights, args.image_steps, seed=args.seed, log=log, phase="image",
          checkpoint=out / "toy-image.safetensors", **phase)  # fmt: skip
    save_weights(model, out / "toy-image.safetensors")
    image_acc = held_out_accuracy(hooked, args.eval_per_task, model=model) if args.eval_per_task else {}
    print(json.dumps({"toy-image": image_acc}), flush=True)
    if args.video_from_scratch:
        model = fresh()
    train(model, hooked, video_tasks, video_weights, args.video_steps, seed=args.seed + 1, log=log, phase="video-ft",
          checkpoint=out / "toy-video-ft.safetensors", **{**phase, "lr": args.lr / 2})  # fmt: skip
    save_weights(model, out / "toy-video-ft.safetensors")
    video_acc = held_out_accuracy(hooked, args.eval_per_task, model=model) if args.eval_per_task else {}
    print(json.dumps({"toy-video-ft": video_acc}), flush=True)
    (out / "train_log.json").write_text(json.dumps({"args": vars(args), "log": log, "held_out": {
        "toy-image": image_acc, "toy-video-ft": video_acc}}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()


# ----- bundling ------------------------------------------------------------------------------------
CARD_INTRO = {
    "toy-image": "Trained on the single-frame tasks only, shown as static clips (every frame the same), "
    "as an image model sees one picture. It has never needed to compare frames.",
    "toy-video-ft": "toy-image fine-tuned on the five temporal tasks (3:1 mixed with the single-frame "
    "tasks), as the paper's models are image models fine-tuned on video.",
    "toy16-image": "Trained on still pictures only (static clips, every frame the same): the single-frame tasks and "
    "two-object still scenes whose questions choose what to read (`hooked_video.zoo.scenes`). It has never needed "
    "to compare frames.",
    "toy16-video-ft": "toy16-image fine-tuned on the five temporal tasks and on two-object scenes that move or change "
    "size, where several questions about different objects and attributes are asked of one clip (mixed with the "
    "still tasks), as the paper's models are image models fine-tuned on video.",
}
#: Bundled name of each model a training run writes (``toy-image.safetensors``, ``toy-video-ft.safetensors``),
#: by the run's language-model depth.
PAIR_NAMES = {12: {"toy-image": "toy-image", "toy-video-ft": "toy-video-ft"},
              16: {"toy-image": "toy16-image", "toy-video-ft": "toy16-video-ft"}}  # fmt: skip


def bundle(run_dir: str | Path, models_dir: str | Path, benchmark: dict | None = None, findings: str | None = None) -> None:
    """Assemble the run's two models in ``models_dir`` under their bundled names (``PAIR_NAMES``):
    architecture, tokenizer and processor from ``build_toy``, the trained float16 weights of
    ``run_dir``, and a model card with the run's held-out accuracies (and ``benchmark``: accuracies
    measured on the written mp4 files, by bundled name)."""
    import shutil

    run_dir, models_dir = Path(run_dir), Path(models_dir)
    log = json.loads((run_dir / "train_log.json").read_text())
    sizes = dataclasses.replace(TOY_SIZES, n_layers=log["args"].get("layers", TOY_SIZES.n_layers))
    for stem, name in PAIR_NAMES[sizes.n_layers].items():
        folder = models_dir / name
        shutil.rmtree(folder, ignore_errors=True)
        build_toy(folder, sizes=sizes)
        shutil.copyfile(run_dir / f"{stem}.safetensors", folder / "model.safetensors")
        (folder / "README.md").write_text(model_card(name, stem, log, (benchmark or {}).get(name), findings))


def model_card(name: str, stem: str, log: dict, benchmark: dict | None, findings: str | None = None) -> str:
    """A bundled model's README: training settings, losses, held-out and benchmark accuracies, findings."""
    args = log["args"]
    layers = args.get("layers", TOY_SIZES.n_layers)
    phases = {p: [r for r in log["log"] if r["phase"] == p][-1] for p in ("image", "video-ft")}
    held = log["held_out"][stem] or benchmark or {}
    flags = "".join(f" --{flag}" for flag in ("scenes", "answer-text", "video-from-scratch") if args.get(flag.replace("-", "_")))
    target = "the whole answer (`A ) left </s>`)" if args.get("answer_text") else "the option letter after `Best option:(`"
    lines = [
        f"# {name}", "", CARD_INTRO[name], "",
        "## Model", "",
        f"LLaVA-NeXT-Video layout (`LlavaNextVideoForConditionalGeneration`): CLIP-style vision tower "
        f"({TOY_SIZES.vision_layers} layers, width {TOY_SIZES.vision_width}, 64x64 frames, 8x8 patches), MLP projector, "
        f"2x2 average pooling (16 tokens per frame), Llama-style LM ({layers} layers, d_model "
        f"{TOY_SIZES.d_model}, {TOY_SIZES.n_heads} heads), word-level tokenizer, Vicuna-style chat template. "
        "Weights in float16.", "",
        "## Data and training", "",
        "Synthetic benchmark (`hooked_video.data.synthetic`), 8 frames of 64x64, training clips from seeds "
        f">= 1000, held-out clips from seed 0. Cross-entropy of {target}, AdamW, "
        "warm-up and cosine decay, batch " + str(args["batch_size"]) + ", bf16 on one GPU.", "",
        f"    python -m hooked_video.zoo.train --out DIR --device cuda --image-steps {args['image_steps']} "
        f"--video-steps {args['video_steps']} --batch-size {args['batch_size']} --lr {args['lr']} --seed {args['seed']}"
        + (f" --layers {layers}" if layers != TOY_SIZES.n_layers else "") + flags,
        "",
        f"- image phase: {args['image_steps']} steps, final train loss {phases['image']['loss']:.4f}",
    ]
    if stem == "toy-video-ft":
        start = "a fresh initialisation" if args.get("video_from_scratch") else "the image model"
        lines.append(f"- video phase: {args['video_steps']} steps from {start} at lr {args['lr'] / 2:g}, final train loss "
                     f"{phases['video-ft']['loss']:.4f}")  # fmt: skip
    in_run = bool(log["held_out"][stem])
    lines += ["", "## Held-out accuracy", "",
              "Per task, held-out clips" + (" (in memory, measured by the training run)" if in_run else "")
              + (", read back from the written mp4 files (`python benchmarks/toy_accuracy.py`)" if benchmark else "")
              + ":", "",
              "| task | kind | chance | accuracy |" + (" accuracy (mp4 benchmark) |" if benchmark and in_run else ""),
              "|---|---|---|---|" + ("---|" if benchmark and in_run else "")]  # fmt: skip
    for task, value in held.items():
        spec = synthetic.TASKS[task]
        row = f"| {task} | {spec.kind} | {1 / len(synthetic.make_clip(task, 0).options):.2f} | {value:.3f} |"
        if benchmark and in_run:
            row += f" {benchmark.get(task, float('nan')):.3f} |"
        lines.append(row)
    lines += ["", "## What it shows and what it does not", "",
              "It is a teaching model: tiny, trained on coloured shapes, with options in a fixed order per "
              "task. Which of the paper's findings the pair reproduces is measured by `hooked-video demo`:", "",
              findings or "(not measured yet)"]  # fmt: skip
    return "\n".join(lines) + "\n"
