"""Bad inputs and faults, as a table: each row does one bad thing with a real tiny model and real
files, and names the error it must raise and a phrase of its message. The phrase holds what is
at fault (the file, the entry or sample, the argument), so every message is checked to name it.

The CLI rows call ``hooked_video.app.cli.main`` in-process: exit code 2, one line on stderr
(progress bars aside), no traceback. Files the user owns are checked byte for byte.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hooked_video import HookedVideoLLM, PromptLayoutError, UnsupportedArchitectureError, VideoError, flow, lens, pathways
from hooked_video import save_video
from hooked_video.analysis.accuracy import accuracy
from hooked_video.core.checks import InvalidInputError
from hooked_video.app.cli import main
from hooked_video.data import TOMATO, AnnotationError, MCQADataset, Sample, TVBench, open_dataset, synthetic
from hooked_video.data.mcqa import open_questions
from hooked_video.model.loading import CheckpointError, ModelNotFoundError
from hooked_video.runtime.store import ResultsCorruptError, ResultsMismatchError, load_results
from hooked_video.zoo.tiny import TinySizes, build_tiny

Q, OPTS = "which way does the ball move ?", ["left", "right"]
DROP = object()  # an entry field to leave out


# ----- the world the rows act on ---------------------------------------------------------------
class World:
    """A tiny model, videos, a TVBench and a TOMATO folder, and helpers to write bad files."""

    def __init__(self, root: Path, model_path: Path) -> None:
        self.d, self.model_path = root, model_path
        self.m = HookedVideoLLM.from_pretrained(model_path)
        rng = np.random.default_rng(0)
        self.frames = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
        for i in range(2):
            save_video(rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), root / f"v{i}.mp4")
        (root / "folder.mp4").mkdir()
        (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
        (root / "text.mp4").write_text("this is not a video\n")
        (root / "empty.mp4").write_bytes(b"")
        (root / "afile.txt").write_text("a file, not a folder\n")
        (root / "invalid.json").write_text('[{"video": "v0.mp4", "question": ')
        (root / "plain").mkdir()
        self.data = self.write("data.json", [self.entry(id=f"clip{i}", video=f"v{i}.mp4") for i in range(2)])
        self.samples = [Sample(id=f"s{i}", video=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), question=Q,
                               options=OPTS, answer=i % 2, task="t") for i in range(2)]  # fmt: skip
        self.tvb = self.tvbench("tvbench")
        self.tomato = root / "tomato"
        for folder in ("jsons", "videos/human"):
            (self.tomato / folder).mkdir(parents=True)
        shutil.copy(root / "v0.mp4", self.tomato / "videos" / "human" / "k1.mp4")
        self.tomato_entries({"q1": self.tomato_entry()})
        self.fields = {"d": str(root), "tvb": str(self.tvb), "tomato": str(self.tomato), "model": str(model_path)}

    # -- files --
    def path(self, name: str, fresh: bool = True) -> Path:
        path = self.d / name
        if fresh and path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        return path

    def write(self, name: str, content) -> Path:
        path = self.d / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content if isinstance(content, str) else json.dumps(content))
        return path

    @staticmethod
    def entry(**changes) -> dict:
        entry = {"id": "e0", "video": "v0.mp4", "question": Q, "options": list(OPTS), "answer": "right", "task": "direction"}
        entry.update(changes)
        return {k: v for k, v in entry.items() if v is not DROP}

    def bad(self, name: str, *entries) -> Path:
        """An annotation file (next to the videos) holding ``entries``."""
        return self.write(f"{name}.json", list(entries))

    def tvbench(self, name: str, entries=None, task: str = "moving_direction") -> Path:
        root = self.d / name
        (root / "json").mkdir(parents=True, exist_ok=True)
        (root / "video" / task).mkdir(parents=True, exist_ok=True)
        shutil.copy(self.d / "v0.mp4", root / "video" / task / "a.mp4")
        if entries is None:
            entries = [{"video": "a.mp4", "question": Q, "candidates": list(OPTS), "answer": "left"}]
        content = entries if isinstance(entries, (str, bytes)) else json.dumps(entries)
        path = root / "json" / f"{task}.json"
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        return root

    @staticmethod
    def tomato_entry(**changes) -> dict:
        entry = {"question": Q, "options": list(OPTS), "answer": 1, "demonstration_type": "human", "key": "k1"}
        entry.update(changes)
        return {k: v for k, v in entry.items() if v is not DROP}

    def tomato_entries(self, entries) -> Path:
        (self.tomato / "jsons" / "direction.json").write_text(json.dumps(entries))
        return self.tomato

    def model_variant(self, name: str, edit) -> Path:
        """A copy of the tiny model folder, changed by ``edit(folder)``."""
        folder = self.path(f"models/{name}")
        shutil.copytree(self.model_path, folder)
        edit(folder)
        return folder

    # -- analyses --
    def sweep(self, samples=None, **kwargs):
        args = dict(targets=["cross-frame"], window=1, select="all", num_frames=None, progress=False)
        return flow.sweep(self.m, self.samples if samples is None else samples, **{**args, **kwargs})

    def lens(self, samples=None, **kwargs):
        args = dict(variant="unembed", norm="released", select="all", num_frames=None, progress=False)
        return lens.run(self.m, self.samples if samples is None else samples, **{**args, **kwargs})

    def prune(self, samples=None, spec=None, **kwargs):
        spec = spec or pathways.PathwaySpec(inter=(0, 1), v2q=(0, 1), q2l=(1, 1), n_layers=2)
        args = dict(num_frames=None, progress=False)
        return pathways.evaluate(self.m, self.samples if samples is None else samples, spec, **{**args, **kwargs})

    def prompt(self, **kwargs):
        return self.m.prepare(self.frames, Q, OPTS, num_frames=None, **kwargs)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def quiet_loading():
    """Transformers' weight-loading progress bar is not part of an error message."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    yield
    logging.enable_progress_bar()


@pytest.fixture(scope="module")
def w(tiny_paths, tmp_path_factory, one_thread, quiet_loading):
    world = World(tmp_path_factory.mktemp("world"), tiny_paths["llava_next_video"])
    short = build_tiny("llava_next_video", world.d / "short-context", TinySizes(max_positions=64))
    world.short = HookedVideoLLM.from_pretrained(short)
    world.tvb_snapshot = snapshot(world.tvb)
    return world


def message_of(error: BaseException) -> str:
    return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)


def row(case_id: str, action, error: type, *phrases: str, after=None, marks=()):
    """One case: ``action(world)`` must raise ``error`` whose message holds every phrase
    (formatted with the world's paths: {d}, {tvb}, {tomato}, {model}); ``after(world)`` then checks more."""
    return pytest.param(action, error, phrases, after, id=case_id, marks=marks)


# ----- prepare() --------------------------------------------------------------------------------
def _many(n: int) -> list[str]:
    return [f"choice {i}" for i in range(n)]


def _placeholders_mismatch(w):
    prompt = w.prompt()
    ids, video = prompt.input_ids, prompt.token_map.video
    fewer = torch.cat([ids[:, : video[0]], ids[:, video[0] + 1 :]], dim=1)
    w.m.run_with_cache(dataclasses.replace(prompt, inputs={**prompt.inputs, "input_ids": fewer,
                                                           "attention_mask": torch.ones_like(fewer)}))  # fmt: skip


def _two_videos(w):
    prompt = w.prompt()
    ids = prompt.input_ids.clone()
    ids[0, 2] = w.m.family.video_token_id
    w.m(dataclasses.replace(prompt, inputs={**prompt.inputs, "input_ids": ids}))


PREPARE = [
    row("options-one-string", lambda w: w.m.prepare(w.frames, Q, "left", num_frames=None), InvalidInputError,
        "options must be a list of strings, got a single string 'left'"),
    row("options-non-string", lambda w: w.m.prepare(w.frames, Q, ["left", 3], num_frames=None), InvalidInputError,
        "options[1] must be a non-empty string, got int 3"),
    row("options-empty-option", lambda w: w.m.prepare(w.frames, Q, ["left", ""], num_frames=None), InvalidInputError,
        "options[1] must be a non-empty string, got str ''"),
    row("options-blank-option", lambda w: w.m.prepare(w.frames, Q, ["  ", "left"], num_frames=None), InvalidInputError,
        "options[0] must be a non-empty string"),
    row("options-one", lambda w: w.m.prepare(w.frames, Q, ["left"], num_frames=None), InvalidInputError,
        "options has one option ('left')"),
    row("options-27", lambda w: w.m.prepare(w.frames, Q, _many(27), num_frames=None), InvalidInputError,
        "options has 27 options; at most 26"),
    row("options-duplicate", lambda w: w.m.prepare(w.frames, Q, ["left", "left"], num_frames=None), InvalidInputError,
        "options[0] and options[1] are both 'left'"),
    row("options-dict", lambda w: w.m.prepare(w.frames, Q, {"a": 1, "b": 2}, num_frames=None), InvalidInputError,
        "options must be a list of strings, got dict"),
    row("options-set", lambda w: w.m.prepare(w.frames, Q, {"left", "right"}, num_frames=None), InvalidInputError,
        "options must be a list of strings, got set"),
    row("answer-1.7", lambda w: w.prompt(answer=1.7), InvalidInputError,
        "answer must be an integer index or the text of an option, got float 1.7"),
    row("answer-True", lambda w: w.prompt(answer=True), InvalidInputError, "answer must be an integer index", "got bool True"),
    row("answer-0.9", lambda w: w.prompt(answer=0.9), InvalidInputError, "answer must be an integer index", "got float 0.9"),
    row("answer-1.0", lambda w: w.prompt(answer=1.0), InvalidInputError, "answer must be an integer index", "got float 1.0"),
    row("answer-letter", lambda w: w.prompt(answer="B"), InvalidInputError,
        "answer 'B' is not among the options ['left', 'right'] (a letter is not accepted"),
    row("answer-other-text", lambda w: w.prompt(answer="up"), InvalidInputError, "answer 'up' is not among the options"),
    row("answer-minus-1", lambda w: w.prompt(answer=-1), InvalidInputError, "answer index -1 is outside the 2 options"),
    row("answer-out-of-range", lambda w: w.prompt(answer=2), InvalidInputError, "answer index 2 is outside the 2 options (0..1)"),
    row("answer-without-options", lambda w: w.m.prepare(w.frames, Q, answer=0, num_frames=None), InvalidInputError,
        "answer needs options=[...]"),
    row("question-empty", lambda w: w.m.prepare(w.frames, "", OPTS, num_frames=None), InvalidInputError, "question is empty"),
    row("question-blank", lambda w: w.m.prepare(w.frames, "   ", OPTS, num_frames=None), InvalidInputError, "question is empty"),
    row("question-int", lambda w: w.m.prepare(w.frames, 5, OPTS, num_frames=None), InvalidInputError,
        "question must be a string, got int 5"),
    row("question-None", lambda w: w.m.prepare(w.frames, None, OPTS, num_frames=None), InvalidInputError,
        "question must be a string, got NoneType None"),
    row("question-bytes", lambda w: w.m.prepare(w.frames, b"why ?", OPTS, num_frames=None), InvalidInputError,
        "question must be a string, got bytes"),
    row("template-unknown", lambda w: w.prompt(template="bogus"), InvalidInputError, "unknown template 'bogus'; templates:"),
    row("template-int", lambda w: w.prompt(template=5), InvalidInputError, "template must be"),
    row("processor-kwargs-int", lambda w: w.prompt(processor_kwargs=5), InvalidInputError, "processor_kwargs"),
    row("fps-negative", lambda w: w.prompt(fps=-1), InvalidInputError, "fps must be a positive number of frames per second, got -1"),
    row("fps-zero", lambda w: w.prompt(fps=0), InvalidInputError, "fps must be a positive number", "got 0"),
    row("fps-string", lambda w: w.prompt(fps="2"), InvalidInputError, "fps must be a positive number", "got '2'"),
    row("fps-bool", lambda w: w.prompt(fps=True), InvalidInputError, "fps must be a positive number", "got True"),
    row("video-missing", lambda w: w.m.prepare(w.d / "missing.mp4", Q, OPTS), VideoError, "video file not found: {d}/missing.mp4"),
    row("video-corrupt", lambda w: w.m.prepare(w.d / "corrupt.mp4", Q, OPTS), VideoError, "could not decode video {d}/corrupt.mp4"),
    row("video-text-file", lambda w: w.m.prepare(w.d / "text.mp4", Q, OPTS), VideoError, "could not decode video {d}/text.mp4"),
    row("video-empty-file", lambda w: w.m.prepare(w.d / "empty.mp4", Q, OPTS), VideoError, "could not decode video {d}/empty.mp4"),
    row("video-directory", lambda w: w.m.prepare(w.d / "folder.mp4", Q, OPTS), VideoError,
        "video path {d}/folder.mp4 is a folder, not a video file"),
    row("video-as-string-path", lambda w: w.m.prepare(str(w.d / "missing.mp4"), Q, OPTS), VideoError,
        "video file not found: {d}/missing.mp4"),
    row("frames-ndim-3", lambda w: w.m.prepare(w.frames[..., 0], Q, OPTS, num_frames=None), VideoError,
        "frames must have shape (T, H, W, 3), got (4, 32, 32)"),
    row("frames-4-channels", lambda w: w.m.prepare(np.zeros((4, 32, 32, 4), np.uint8), Q, OPTS, num_frames=None), VideoError,
        "frames must have shape (T, H, W, 3), got (4, 32, 32, 4)"),
    row("frames-float", lambda w: w.m.prepare(w.frames.astype(np.float32), Q, OPTS, num_frames=None), VideoError,
        "frames must be uint8 in 0..255, got dtype float32"),
    row("frames-float-tensor", lambda w: w.m.prepare(torch.rand(4, 32, 32, 3), Q, OPTS, num_frames=None), VideoError,
        "frames must be uint8 in 0..255, got dtype float32"),
    row("frames-zero-length", lambda w: w.m.prepare(np.zeros((0, 32, 32, 3), np.uint8), Q, OPTS, num_frames=None), VideoError,
        "the video has no frames: frames of shape (0, 32, 32, 3)"),
    row("frames-zero-length-sampled", lambda w: w.m.prepare(np.zeros((0, 32, 32, 3), np.uint8), Q, OPTS, num_frames=4),
        VideoError, "the video has no frames"),
    row("frames-None", lambda w: w.m.prepare(None, Q, OPTS, num_frames=None), VideoError, "cannot read frames from NoneType"),
    row("frames-list-of-ints", lambda w: w.m.prepare([1, 2, 3], Q, OPTS, num_frames=None), VideoError,
        "cannot read frames from list"),
    row("frames-fewer-than-num-frames", lambda w: w.m.prepare(w.frames, Q, OPTS, num_frames=8), VideoError,
        "the video has 4 frames, fewer than the 8 asked for", "num_frames=..."),
    row("file-fewer-than-num-frames", lambda w: w.m.prepare(w.d / "v0.mp4", Q, OPTS, num_frames=16), VideoError,
        "the video has 8 frames, fewer than the 16 asked for", "num_frames=..."),
    row("num-frames-0", lambda w: w.m.prepare(w.frames, Q, OPTS, num_frames=0), VideoError, "num_frames must be an integer >= 1, got 0"),
    row("num-frames-minus-2", lambda w: w.m.prepare(w.frames, Q, OPTS, num_frames=-2), VideoError,
        "num_frames must be an integer >= 1, got -2"),
    row("num-frames-2.5", lambda w: w.m.prepare(w.frames, Q, OPTS, num_frames=2.5), VideoError,
        "num_frames must be an integer >= 1, got 2.5"),
    row("num-frames-4.0-equal-length", lambda w: w.m.prepare(w.frames, Q, OPTS, num_frames=4.0), VideoError,
        "num_frames must be an integer >= 1, got 4.0"),
    row("num-frames-True", lambda w: w.m.prepare(w.frames[:1], Q, OPTS, num_frames=True), VideoError,
        "num_frames must be an integer >= 1, got True"),
    row("num-frames-0-file", lambda w: w.m.prepare(w.d / "v0.mp4", Q, OPTS, num_frames=0), VideoError,
        "num_frames must be an integer >= 1, got 0"),
    row("num-frames-None-file", lambda w: w.m.prepare(w.d / "v0.mp4", Q, OPTS, num_frames=None), VideoError,
        "num_frames=None is only for in-memory frames"),
    row("option-letter-outside-vocabulary", lambda w: w.m.prepare(w.frames, Q, _many(9), num_frames=None), PromptLayoutError,
        "option letter 'I' is not in the tokenizer's vocabulary", "use at most 8 options"),
    row("prompt-longer-than-context", lambda w: w.short.prepare(w.frames, Q, OPTS, num_frames=None), PromptLayoutError,
        "more than the model's context of 64", "num_frames=..."),
    row("placeholders-do-not-match-features", _placeholders_mismatch, PromptLayoutError,
        "15 video placeholder tokens but the video gives 16"),
    row("two-videos-in-one-prompt", _two_videos, PromptLayoutError, "found 2 runs"),
    row("batch-of-unequal-prompts", lambda w: w.m([w.prompt(), w.m.prepare(w.frames, Q, OPTS + ["up"], num_frames=None)]),
        PromptLayoutError, "prompts of different lengths"),
    row("free-form-true-option", lambda w: w.m.prepare(w.frames, "what is in this video ?", num_frames=None).token_map.true_option,
        AttributeError, "no answer"),
    row("free-form-answer-token", lambda w: w.prompt().answer_token_id, AttributeError,
        "this prompt has no answer: pass answer=..."),
    row("token-map-frame-out-of-range", lambda w: w.prompt().token_map.frame(4), IndexError, "has 4 frames"),
]


# ----- datasets ----------------------------------------------------------------------------------
def _mcqa(name: str, *entries, **kwargs):
    return lambda w: MCQADataset(w.bad(name, *entries), **kwargs)


def _field(name: str, **changes):
    """MCQADataset of one entry with ``changes``; the phrase names file and entry."""
    return _mcqa(name, World.entry(**changes))


DATASETS = [
    row("mcqa-missing-file", lambda w: MCQADataset(w.d / "nowhere.json"), FileNotFoundError,
        "annotation file {d}/nowhere.json does not exist"),
    row("mcqa-folder-as-file", lambda w: MCQADataset(w.d / "plain"), IsADirectoryError, "annotation file {d}/plain is a folder"),
    row("mcqa-invalid-json", lambda w: MCQADataset(w.d / "invalid.json"), AnnotationError, "{d}/invalid.json: not valid JSON"),
    row("mcqa-not-utf8", lambda w: MCQADataset(w.write("latin1.json", json.dumps([World.entry(question="où ?")], ensure_ascii=False).encode("latin-1"))),
        AnnotationError, "{d}/latin1.json: not UTF-8 text"),
    row("mcqa-top-level-object", lambda w: MCQADataset(w.write("object.json", {"entries": []})), AnnotationError,
        "{d}/object.json: expected a list of entries, got dict"),
    row("mcqa-entry-not-object", _mcqa("str_entry", "v0.mp4"), AnnotationError, "{d}/str_entry.json, entry 0: expected an object, got str"),
    row("mcqa-second-entry-bad", _mcqa("second", World.entry(), World.entry(id="e1", answer="up")), AnnotationError,
        "{d}/second.json, entry 1: answer 'up' is not among the options"),
    row("mcqa-missing-video", _field("no_video", video=DROP), AnnotationError, "{d}/no_video.json, entry 0: missing field(s) ['video']"),
    row("mcqa-missing-question", _field("no_question", question=DROP), AnnotationError,
        "{d}/no_question.json, entry 0: missing field(s) ['question']"),
    row("mcqa-missing-options", _field("no_options", options=DROP), AnnotationError,
        "{d}/no_options.json, entry 0: missing field(s) ['options']"),
    row("mcqa-missing-answer", _field("no_answer", answer=DROP), AnnotationError,
        "{d}/no_answer.json, entry 0: missing field(s) ['answer']"),
    row("mcqa-null-answer", _field("null_answer", answer=None), AnnotationError,
        "{d}/null_answer.json, entry 0: missing field(s) ['answer']"),
    row("mcqa-options-string", _field("options_string", options="left, right"), AnnotationError,
        "{d}/options_string.json, entry 0: options must be a list of strings, got a single string"),
    row("mcqa-answer-float", _field("answer_float", answer=1.0), AnnotationError,
        "{d}/answer_float.json, entry 0: answer must be an integer index or the text of an option, got float 1.0"),
    row("mcqa-answer-bool", _field("answer_bool", answer=True), AnnotationError,
        "{d}/answer_bool.json, entry 0: answer must be an integer index", "got bool True"),
    row("mcqa-answer-letter", _field("answer_letter", answer="B"), AnnotationError,
        "{d}/answer_letter.json, entry 0: answer 'B' is not among the options", "a letter is not accepted"),
    row("mcqa-answer-not-among", _field("answer_other", answer="up"), AnnotationError,
        "{d}/answer_other.json, entry 0: answer 'up' is not among the options"),
    row("mcqa-answer-index-out-of-range", _field("answer_index", answer=2), AnnotationError,
        "{d}/answer_index.json, entry 0: answer index 2 is outside the 2 options"),
    row("mcqa-question-int", _field("question_int", question=5), AnnotationError,
        "{d}/question_int.json, entry 0: question must be a string, got int 5"),
    row("mcqa-question-empty", _field("question_empty", question=""), AnnotationError,
        "{d}/question_empty.json, entry 0: question is empty"),
    row("mcqa-video-file-missing", _field("video_gone", video="gone.mp4"), AnnotationError,
        "{d}/video_gone.json, entry 0: video file {d}/gone.mp4 does not exist"),
    row("mcqa-video-not-string", _field("video_int", video=5), AnnotationError,
        "{d}/video_int.json, entry 0: video must be a file path (a string), got int"),
    row("mcqa-video-empty-string", _field("video_empty", video=""), AnnotationError,
        "{d}/video_empty.json, entry 0: video is an empty path"),
    row("mcqa-video-folder", _field("video_folder", video="folder.mp4"), AnnotationError,
        "{d}/video_folder.json, entry 0: video {d}/folder.mp4 is a folder"),
    row("mcqa-start-negative", _field("start_negative", start=-1), AnnotationError,
        "{d}/start_negative.json, entry 0: start must be a non-negative number of seconds, got -1"),
    row("mcqa-start-after-end", _field("start_after_end", start=5, end=2), AnnotationError,
        "{d}/start_after_end.json, entry 0: start 5 is not before end 2"),
    row("mcqa-start-equals-end", _field("start_equals_end", start=2, end=2), AnnotationError,
        "{d}/start_equals_end.json, entry 0: start 2 is not before end 2"),
    row("mcqa-start-string", _field("start_string", start="1"), AnnotationError,
        "{d}/start_string.json, entry 0: start must be a non-negative number of seconds, got '1'"),
    row("mcqa-start-NaN", _field("start_nan", start=float("nan")), AnnotationError,
        "{d}/start_nan.json, entry 0: start must be a non-negative number of seconds, got nan"),
    row("mcqa-end-Infinity", _field("end_inf", end=float("inf")), AnnotationError,
        "{d}/end_inf.json, entry 0: end must be a non-negative number of seconds, got inf"),
    row("mcqa-id-bool", _field("id_bool", id=True), AnnotationError,
        "{d}/id_bool.json, entry 0: id must be a string or an integer, got bool True"),
    row("mcqa-id-float", _field("id_float", id=1.5), AnnotationError,
        "{d}/id_float.json, entry 0: id must be a string or an integer, got float 1.5"),
    row("mcqa-task-int", _field("task_int", task=3), AnnotationError, "{d}/task_int.json, entry 0: task must be a string, got int 3"),
    row("mcqa-27-options", _field("options_27", options=_many(27), answer=0), AnnotationError,
        "{d}/options_27.json, entry 0: options has 27 options"),
    row("mcqa-one-option", _field("options_1", options=["left"], answer=0), AnnotationError,
        "{d}/options_1.json, entry 0: options has one option"),
    row("mcqa-duplicate-options", _field("options_dup", options=["left", "left"], answer=0), AnnotationError,
        "{d}/options_dup.json, entry 0: options[0] and options[1] are both 'left'"),
    row("mcqa-empty-options", _field("options_empty", options=[], answer=0), AnnotationError,
        "{d}/options_empty.json, entry 0: options is empty"),
    row("mcqa-duplicate-ids", _mcqa("dup_ids", World.entry(), World.entry(video="v1.mp4")), AnnotationError,
        "{d}/dup_ids.json, entry 1: id 'e0' is already the id of entry 0"),
    row("mcqa-list-entry-missing-field", lambda w: MCQADataset([{"video": str(w.d / "v0.mp4"), "question": Q}]), AnnotationError,
        "<list>, entry 0: missing field(s) ['options', 'answer']"),
    row("mcqa-entries-dict", lambda w: MCQADataset({"video": "v0.mp4"}), AnnotationError,
        "entries must be a JSON file's path or a list of entries, got dict"),
    row("mcqa-short-windows-bogus", lambda w: MCQADataset(w.data, short_windows="bogus"), InvalidInputError,
        "short_windows must be one of ('error', 'repeat'), got 'bogus'"),
    row("tvbench-unknown-task", lambda w: TVBench(w.tvb, tasks=["Object Shuffle"]), FileNotFoundError,
        "no annotation file for task(s) ['object_shuffle'] in {tvb}/json"),
    row("tvbench-time-windows-bogus", lambda w: TVBench(w.tvb, time_windows="bogus"), ValueError,
        "time_windows must be one of ('bound-tasks', 'all', 'none'), got 'bogus'"),
    row("tvbench-short-windows-bogus", lambda w: TVBench(w.tvb, short_windows="sometimes"), InvalidInputError,
        "short_windows must be one of ('error', 'repeat'), got 'sometimes'"),
    row("tvbench-not-a-tvbench-folder", lambda w: TVBench(w.d / "plain"), FileNotFoundError,
        "{d}/plain/json does not exist: is {d}/plain a TVBench folder?"),
    row("tvbench-invalid-json", lambda w: TVBench(w.tvbench("tvb_invalid", "[{")), AnnotationError,
        "{d}/tvb_invalid/json/moving_direction.json: not valid JSON"),
    row("tvbench-not-utf8", lambda w: TVBench(w.tvbench("tvb_latin1", '[{"question": "où"}]'.encode("latin-1"))), AnnotationError,
        "{d}/tvb_latin1/json/moving_direction.json: not UTF-8 text"),
    row("tvbench-top-level-object", lambda w: TVBench(w.tvbench("tvb_object", {"a": 1})), AnnotationError,
        "{d}/tvb_object/json/moving_direction.json: expected a list of entries"),
    row("tvbench-entry-not-object", lambda w: TVBench(w.tvbench("tvb_list_entry", [["a.mp4"]])), AnnotationError,
        "{d}/tvb_list_entry/json/moving_direction.json, entry 0: expected an object, got list"),
    row("tvbench-missing-candidates", lambda w: TVBench(w.tvbench("tvb_no_cand", [{"video": "a.mp4", "question": Q, "answer": "left"}])),
        AnnotationError, "{d}/tvb_no_cand/json/moving_direction.json, entry 0: missing field(s) ['candidates']"),
    row("tvbench-answer-letter", lambda w: TVBench(w.tvbench("tvb_letter", [{"video": "a.mp4", "question": Q, "candidates": OPTS,
                                                                            "answer": "A"}])),  # fmt: skip
        AnnotationError, "{d}/tvb_letter/json/moving_direction.json, entry 0: answer 'A' is not among the options"),
    row("tvbench-missing-video", lambda w: TVBench(w.tvbench("tvb_gone", [{"video": "gone.mp4", "question": Q, "candidates": OPTS,
                                                                          "answer": "left"}])),  # fmt: skip
        AnnotationError, "entry 0: video file {d}/tvb_gone/video/moving_direction/gone.mp4 does not exist"),
    row("tvbench-bound-task-start-after-end",
        lambda w: TVBench(w.tvbench("tvb_window", [{"video": "a.mp4", "question": Q, "candidates": OPTS, "answer": "left",
                                                    "start": 3, "end": 1}], task="action_sequence")),  # fmt: skip
        AnnotationError, "{d}/tvb_window/json/action_sequence.json, entry 0: start 3 is not before end 1"),
    row("tomato-not-a-tomato-folder", lambda w: TOMATO(w.d / "plain"), FileNotFoundError,
        "{d}/plain/jsons does not exist: is {d}/plain a TOMATO folder?"),
    row("tomato-invalid-json", lambda w: (w.tomato / "jsons" / "direction.json").write_text('{"q1": ') and TOMATO(w.tomato),
        AnnotationError, "{tomato}/jsons/direction.json: not valid JSON"),
    row("tomato-unknown-task", lambda w: TOMATO(w.tomato, tasks=["speed"]), FileNotFoundError,
        "no annotation file for task(s) ['speed'] in {tomato}/jsons"),
    row("tomato-not-an-object", lambda w: TOMATO(w.tomato_entries([w.tomato_entry()])), AnnotationError,
        "{tomato}/jsons/direction.json: expected an object of entries keyed by id"),
    row("tomato-answer-out-of-range", lambda w: TOMATO(w.tomato_entries({"q2": w.tomato_entry(answer=5)})), AnnotationError,
        "{tomato}/jsons/direction.json, entry 'q2': answer index 5 is outside the 2 options"),
    row("tomato-missing-key", lambda w: TOMATO(w.tomato_entries({"q3": w.tomato_entry(key=DROP)})), AnnotationError,
        "{tomato}/jsons/direction.json, entry 'q3': missing field(s) ['key']"),
    row("tomato-missing-video", lambda w: TOMATO(w.tomato_entries({"q4": w.tomato_entry(key="nope")})), AnnotationError,
        "entry 'q4': video file {tomato}/videos/human/nope.mp4 does not exist"),
    row("tomato-entry-not-object", lambda w: TOMATO(w.tomato_entries({"q5": ["a"]})), AnnotationError,
        "{tomato}/jsons/direction.json, entry 'q5': expected an object, got list"),
    row("tomato-answer-bool", lambda w: TOMATO(w.tomato_entries({"q6": w.tomato_entry(answer=True)})), AnnotationError,
        "entry 'q6': answer must be an integer index", "got bool True"),
    row("open-dataset-neither-folder", lambda w: open_dataset(w.d / "plain"), FileNotFoundError,
        "{d}/plain is a folder but neither a TVBench folder (json/, video/) nor a TOMATO folder (jsons/, videos/)"),
    row("open-dataset-missing-path", lambda w: open_dataset(w.d / "nowhere"), FileNotFoundError,
        "{d}/nowhere does not exist: give a TVBench folder (json/, video/), a TOMATO folder"),
    row("open-dataset-json-tasks-match-nothing", lambda w: open_dataset(w.data, tasks=["nope"]), AnnotationError,
        "{d}/data.json: no sample has task ['nope']; tasks in the file: ['direction']"),
    row("open-dataset-tvbench-tasks-match-nothing", lambda w: open_dataset(w.tvb, tasks=["nope"]), FileNotFoundError,
        "no annotation file for task(s) ['nope'] in {tvb}/json"),
    row("open-questions-missing-file", lambda w: open_questions(w.d / "nowhere.json"), FileNotFoundError,
        "annotation file {d}/nowhere.json does not exist"),
    row("open-questions-invalid-json", lambda w: open_questions(w.d / "invalid.json"), AnnotationError,
        "{d}/invalid.json: not valid JSON"),
    row("open-questions-not-utf8", lambda w: open_questions(w.write("oq_latin1.json", '[{"question": "où"}]'.encode("latin-1"))),
        AnnotationError, "{d}/oq_latin1.json: not UTF-8 text"),
    row("open-questions-not-a-list", lambda w: open_questions(w.write("oq_object.json", {"video": "v0.mp4"})), AnnotationError,
        "{d}/oq_object.json: expected a list of entries"),
    row("open-questions-no-question", lambda w: open_questions(w.write("oq_noq.json", [{"video": "v0.mp4"}])), AnnotationError,
        "{d}/oq_noq.json, entry 0: needs a 'video' path and a 'question' string"),
    row("open-questions-empty-question", lambda w: open_questions(w.write("oq_empty.json", [{"video": "v0.mp4", "question": " "}])),
        AnnotationError, "{d}/oq_empty.json, entry 0: question is empty"),
    row("open-questions-missing-video", lambda w: open_questions(w.write("oq_gone.json", [{"video": "gone.mp4", "question": Q}])),
        AnnotationError, "{d}/oq_gone.json, entry 0: video file {d}/gone.mp4 does not exist"),
    row("open-questions-id-bool", lambda w: open_questions(w.write("oq_id.json", [{"video": "v0.mp4", "question": Q, "id": False}])),
        AnnotationError, "{d}/oq_id.json, entry 0: id must be a string or an integer, got bool False"),
    row("open-questions-duplicate-ids",
        lambda w: open_questions(w.write("oq_dup.json", [{"video": "v0.mp4", "question": Q, "id": "a"}] * 2)),
        AnnotationError, "{d}/oq_dup.json, entry 1: id 'a' is already the id of entry 0"),
]


# ----- analyses and results folders --------------------------------------------------------------
def _twice(first, second):
    def run(w):
        first(w)
        second(w)

    return run


def _other_samples(w):
    return [dataclasses.replace(s, answer=1 - s.answer) for s in w.samples]


def _duplicate_ids(w):
    return [w.samples[0], dataclasses.replace(w.samples[1], id=w.samples[0].id)]


def _corrupt_db(w, name: str) -> Path:
    folder = w.path(f"runs/{name}")
    folder.mkdir(parents=True)
    (folder / "results.sqlite").write_bytes(b"SQLite format 2\x00" + bytes(range(256)) * 8)
    return folder


def _legacy_folder(w) -> Path:
    folder = w.path("runs/legacy")
    folder.mkdir(parents=True)
    (folder / "rows.jsonl").write_text('{"sample_id": "a", "layer": 0}\n{"sample_id": "b", "lay\n{"sample_id": "c", "layer": 2}\n')
    return folder


def _empty_folder(w) -> Path:
    folder = w.path("runs/empty")
    folder.mkdir(parents=True)
    return folder


SPEC = dict(v2q=None, q2l=None)

ANALYSES = [
    row("flow-unknown-target", lambda w: w.sweep(targets=["bogus"]), KeyError, "unknown target 'bogus'; known:"),
    row("flow-no-targets", lambda w: w.sweep(targets=[]), ValueError, "targets must be a non-empty list"),
    row("flow-window-0", lambda w: w.sweep(window=0), InvalidInputError, "window must be at least 1, got 0"),
    row("flow-window-minus-1", lambda w: w.sweep(window=-1), InvalidInputError, "window must be at least 1, got -1"),
    row("flow-window-2.5", lambda w: w.sweep(window=2.5), InvalidInputError, "window must be an integer, got float 2.5"),
    row("flow-layer-out-of-range", lambda w: w.sweep(layers=[0, 5]), InvalidInputError, "swept layer 5 is outside layers 0..1"),
    row("flow-layer-negative", lambda w: w.sweep(layers=[-1]), InvalidInputError, "a swept layer must be at least 0, got -1"),
    row("flow-layer-1.5", lambda w: w.sweep(layers=[1.5]), InvalidInputError, "a swept layer must be an integer, got float 1.5"),
    row("flow-no-layers", lambda w: w.sweep(layers=[]), InvalidInputError, "layers"),
    row("flow-batch-size-0", lambda w: w.sweep(batch_size=0), InvalidInputError, "batch_size must be at least 1, got 0"),
    row("flow-select-bogus", lambda w: w.sweep(select="bogus"), ValueError, "select must be one of ('correct', 'wrong', 'all'), got 'bogus'"),
    row("flow-rule-bogus", lambda w: w.sweep(rule="bogus"), ValueError, "rule must be one of", "got 'bogus'"),
    row("flow-window-style-bogus", lambda w: w.sweep(window_style="bogus"), ValueError, "window style must be one of", "got 'bogus'"),
    row("flow-even-window-bogus", lambda w: w.sweep(window=2, even_window="bogus"), ValueError,
        "even must be 'above' or 'below', got 'bogus'"),
    row("flow-engine-bogus", lambda w: w.sweep(engine="bogus"), ValueError, "engine must be one of ('auto', 'fast', 'compiled', 'hooks'), got 'bogus'"),
    row("flow-duplicate-ids", lambda w: w.sweep(_duplicate_ids(w)), InvalidInputError, "samples: items 0 and 1 share the id 's0'"),
    row("flow-prompt-without-answer", lambda w: w.sweep([w.prompt()]), ValueError, "sample '0' has no answer"),
    row("flow-num-frames-0", lambda w: w.sweep(MCQADataset(w.data), num_frames=0), VideoError, "num_frames must be an integer >= 1, got 0"),
    row("flow-dict-sample-bad", lambda w: w.sweep([{"video": str(w.d / "v0.mp4"), "question": Q, "options": OPTS}]),
        AnnotationError, "<samples>, entry 0: missing field(s) ['answer']"),
    row("flow-open-ended-anchor-0", lambda w: flow.sweep_open_ended(w.m, [{"video": w.frames, "question": Q}], anchor=0),
        ValueError, "anchor is 1-based", "got 0"),
    row("flow-open-ended-anchor-True", lambda w: flow.sweep_open_ended(w.m, [{"video": w.frames, "question": Q}], anchor=True),
        ValueError, "anchor is 1-based", "got True"),
    row("flow-open-ended-unknown-target", lambda w: flow.sweep_open_ended(w.m, [], targets=["vql-to-ql"]), KeyError,
        "unknown target 'vql-to-ql'"),
    row("flow-open-ended-duplicate-ids",
        lambda w: flow.sweep_open_ended(w.m, [{"id": "a", "video": w.frames, "question": Q}] * 2, progress=False),
        InvalidInputError, "items 0 and 1 share the id 'a'"),
    row("lens-variant-bogus", lambda w: w.lens(variant="bogus"), ValueError, "variant must be one of", "got 'bogus'"),
    row("lens-norm-bogus", lambda w: w.lens(norm="bogus"), ValueError, "norm must be one of", "got 'bogus'"),
    row("lens-select-bogus", lambda w: w.lens(select="bogus"), ValueError, "select must be one of", "got 'bogus'"),
    row("lens-rule-bogus", lambda w: w.lens(rule="bogus"), ValueError, "rule must be one of", "got 'bogus'"),
    row("lens-duplicate-ids", lambda w: w.lens(_duplicate_ids(w)), InvalidInputError, "share the id 's0'"),
    row("prune-random-fraction-negative", lambda w: w.prune(random_fraction=-0.1), ValueError,
        "random_fraction must be a number in [0, 1)", "got -0.1"),
    row("prune-random-fraction-1.5", lambda w: w.prune(random_fraction=1.5), ValueError, "random_fraction must be a number", "got 1.5"),
    row("prune-random-fraction-bogus", lambda w: w.prune(random_fraction="bogus"), ValueError,
        "random_fraction must be a number in [0, 1), 'run' or 'sample', got 'bogus'"),
    row("prune-random-fraction-True", lambda w: w.prune(random_fraction=True), ValueError, "random_fraction must be a number", "got True"),
    row("prune-duplicate-ids", lambda w: w.prune(_duplicate_ids(w)), InvalidInputError, "share the id 's0'"),
    row("prune-rule-bogus", lambda w: w.prune(rule="bogus"), ValueError, "rule must be one of", "got 'bogus'"),
    row("prune-seed-string", lambda w: w.prune(seed="x"), InvalidInputError, "seed"),
    row("spec-reversed-range", lambda w: pathways.PathwaySpec(inter=(3, 1), **SPEC), ValueError,
        "inter=(3, 1): a range is (first, last) with 0 <= first <= last"),
    row("spec-negative-range", lambda w: pathways.PathwaySpec(inter=(-1, 1), **SPEC), ValueError, "inter=(-1, 1): a range is"),
    row("spec-range-past-depth", lambda w: pathways.PathwaySpec(inter=(0, 4), v2q=None, q2l=None, n_layers=4), ValueError,
        "inter=(0, 4): a range is", "n_layers - 1"),
    row("spec-float-bound", lambda w: pathways.PathwaySpec(inter=(0, 1.5), **SPEC), ValueError, "inter=(0, 1.5)"),
    row("spec-random-fraction", lambda w: pathways.PathwaySpec(inter=None, v2q=None, q2l=None, random_fraction=1.5), ValueError,
        "random_fraction must be a number in [0, 1)", "got 1.5"),
    row("spec-unknown-preset", lambda w: pathways.PathwaySpec.preset("bogus"), KeyError, "unknown preset 'bogus'; presets:"),
    row("spec-from-sweep-without-targets", lambda w: pathways.PathwaySpec.from_sweep(w.sweep(targets=["vql-to-ql"])), ValueError,
        "the sweep has no cross-frame/cross-frame rows"),
    row("accuracy-rule-bogus", lambda w: accuracy(w.m, MCQADataset(w.data), rule="bogus"), ValueError, "rule must be one of", "got 'bogus'"),
    row("resume-flow-other-settings", _twice(lambda w: w.sweep(out=w.path("runs/settings")), lambda w: w.sweep(window=2, out=w.d / "runs/settings")),
        ResultsMismatchError, "{d}/runs/settings holds results of a run with other settings (window: stored 1, now 2)"),
    row("resume-flow-other-samples",
        _twice(lambda w: w.sweep(out=w.path("runs/samples")), lambda w: w.sweep(_other_samples(w), out=w.d / "runs/samples")),
        ResultsMismatchError, "{d}/runs/samples holds results of other samples under the ids ['s0', 's1']"),
    row("resume-lens-other-settings",
        _twice(lambda w: w.lens(out=w.path("runs/lens_settings")), lambda w: w.lens(norm="final", out=w.d / "runs/lens_settings")),
        ResultsMismatchError, "{d}/runs/lens_settings holds results of a run with other settings (norm: stored 'released', now 'final')"),
    row("resume-lens-other-samples",
        _twice(lambda w: w.lens(out=w.path("runs/lens_samples")), lambda w: w.lens(_other_samples(w), out=w.d / "runs/lens_samples")),
        ResultsMismatchError, "{d}/runs/lens_samples holds results of other samples under the ids ['s0', 's1']"),
    row("resume-prune-other-settings",
        _twice(lambda w: w.prune(out=w.path("runs/prune_settings")), lambda w: w.prune(seed=1, out=w.d / "runs/prune_settings")),
        ResultsMismatchError, "{d}/runs/prune_settings holds results of a run with other settings (seed: stored 0, now 1)"),
    row("resume-prune-other-samples",
        _twice(lambda w: w.prune(out=w.path("runs/prune_samples")), lambda w: w.prune(_other_samples(w), out=w.d / "runs/prune_samples")),
        ResultsMismatchError, "{d}/runs/prune_samples holds results of other samples under the ids ['s0', 's1']"),
    row("resume-other-analysis", _twice(lambda w: w.sweep(out=w.path("runs/kind")), lambda w: w.lens(out=w.d / "runs/kind")),
        ResultsMismatchError, "{d}/runs/kind holds results of a 'flow.sweep' run, not 'lens.run'"),
    row("results-folder-is-a-file", lambda w: w.sweep(out=w.d / "afile.txt"), NotADirectoryError,
        "the results folder {d}/afile.txt is a file"),
    row("results-folder-is-a-file-lens", lambda w: w.lens(out=w.d / "afile.txt"), NotADirectoryError,
        "the results folder {d}/afile.txt is a file"),
    row("results-folder-is-a-file-prune", lambda w: w.prune(out=w.d / "afile.txt"), NotADirectoryError,
        "the results folder {d}/afile.txt is a file"),
    row("results-sqlite-corrupt", lambda w: w.sweep(out=_corrupt_db(w, "corrupt")), ResultsCorruptError,
        "{d}/runs/corrupt/results.sqlite is not a readable results database"),
    row("results-sqlite-corrupt-load", lambda w: load_results(_corrupt_db(w, "corrupt_load")), ResultsCorruptError,
        "{d}/runs/corrupt_load/results.sqlite is not a readable results database"),
    row("results-legacy-jsonl-corrupt-line", lambda w: load_results(_legacy_folder(w)), ResultsCorruptError,
        "{d}/runs/legacy/rows.jsonl, line 2: not a JSON result row"),
    row("flow-load-empty-folder", lambda w: flow.load(_empty_folder(w)),
        FileNotFoundError, "{d}/runs/empty holds no sweep results"),
    row("flow-load-missing-folder", lambda w: flow.load(w.d / "runs/nowhere"), FileNotFoundError,
        "{d}/runs/nowhere holds no sweep results"),
    row("flow-load-lens-folder", lambda w: flow.load(w.lens(out=w.path("runs/a_lens")) and w.d / "runs/a_lens"), ValueError,
        "{d}/runs/a_lens"),
]


# ----- loading -----------------------------------------------------------------------------------
def _weights(edit):
    def change(folder: Path) -> None:
        from safetensors.torch import load_file, save_file

        tensors = load_file(folder / "model.safetensors")
        edit(tensors)
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})

    return change


def _drop_layer(tensors):
    for key in [k for k in tensors if "language_model.model.layers.1." in k]:
        del tensors[key]


def _nan(tensors):
    key = next(k for k in tensors if "layers.0.mlp.down_proj" in k)
    tensors[key] = torch.full_like(tensors[key], float("nan"))


def _llama_folder(w) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = w.path("models/llama")
    LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32)).save_pretrained(folder)  # fmt: skip
    return folder


def _lora_folder(w, **settings) -> Path:
    folder = w.path("models/lora")
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, **settings}))
    return folder


def _corrupt_lora_folder(w) -> Path:
    folder = _lora_folder(w)
    (folder / "adapter_config.json").write_text("{")
    return folder


def _load(w, name, edit, **kwargs):
    return HookedVideoLLM.from_pretrained(w.model_variant(name, edit), **kwargs)


LOADING = [
    row("load-missing-folder", lambda w: HookedVideoLLM.from_pretrained(w.d / "no_model"), ModelNotFoundError,
        "no model folder at '{d}/no_model'"),
    row("load-folder-typo", lambda w: HookedVideoLLM.from_pretrained(w.d / "plian"), ModelNotFoundError,
        "no model folder at '{d}/plian'; did you mean '{d}/plain'?"),
    row("load-zoo-typo", lambda w: HookedVideoLLM.from_pretrained("toy-vide-ft"), ModelNotFoundError,
        "no model at 'toy-vide-ft'", "did you mean 'toy-video-ft'?"),
    row("load-folder-without-config", lambda w: _load(w, "nocfg", lambda f: (f / "config.json").unlink()), CheckpointError,
        "{d}/models/nocfg is not a model folder"),
    row("load-empty-folder", lambda w: HookedVideoLLM.from_pretrained(w.d / "plain"), CheckpointError, "{d}/plain is not a model folder"),
    row("load-corrupt-config", lambda w: _load(w, "badcfg", lambda f: (f / "config.json").write_text("{oops")), CheckpointError,
        "{d}/models/badcfg/config.json: not a valid JSON config"),
    row("load-config-not-object", lambda w: _load(w, "listcfg", lambda f: (f / "config.json").write_text("[1, 2]")), CheckpointError,
        "{d}/models/listcfg/config.json: a model config is a JSON object, got a list"),
    row("load-file-as-model", lambda w: HookedVideoLLM.from_pretrained(w.model_path / "config.json"), CheckpointError,
        "{model}/config.json is a file; give the model's folder"),
    row("load-missing-layer", lambda w: _load(w, "missing", _weights(_drop_layer)), CheckpointError,
        "{d}/models/missing: the checkpoint does not match the model: 9 missing weights",
        "model.language_model.layers.1.", "strict=False"),
    row("load-unexpected-key", lambda w: _load(w, "extra", _weights(lambda t: t.update({"model.language_model.extra.weight": torch.zeros(2)}))),
        CheckpointError, "{d}/models/extra: the checkpoint does not match the model: 1 unexpected weights (model.language_model.extra.weight)"),
    row("load-nan-weights", lambda w: _load(w, "nan", _weights(_nan)), CheckpointError,
        "{d}/models/nan: 1 weights hold NaN or infinite values (model.language_model.layers.0.mlp.down_proj.weight)"),
    row("load-truncated-weights",
        lambda w: _load(w, "truncated", lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:999])),
        CheckpointError, "{d}/models/truncated/model.safetensors: the weights file cannot be read"),
    row("load-no-weights", lambda w: _load(w, "noweights", lambda f: (f / "model.safetensors").unlink()), OSError,
        "{d}/models/noweights"),
    row("load-dtype-bogus", lambda w: HookedVideoLLM.from_pretrained(w.model_path, dtype="bogus"), ValueError,
        "dtype must be a torch dtype or one of 'float32', 'bfloat16', 'float16', got 'bogus'"),
    row("load-dtype-int", lambda w: HookedVideoLLM.from_pretrained(w.model_path, dtype=3), ValueError,
        "dtype must be a torch dtype", "got 3"),
    row("load-unsupported-architecture", lambda w: HookedVideoLLM.from_pretrained(_llama_folder(w)), UnsupportedArchitectureError,
        "architecture 'LlamaForCausalLM' is not supported by hooked_video; supported:", "Qwen2VLForConditionalGeneration"),
    row("load-lora-without-base", lambda w: HookedVideoLLM.from_pretrained(_lora_folder(w)), CheckpointError,
        "{d}/models/lora holds a LoRA adapter, not a whole model", "base_model=..."),
    row("load-lora-base-unavailable", lambda w: HookedVideoLLM.from_pretrained(_lora_folder(w, base_model_name_or_path="org/missing-base")),
        CheckpointError, "{d}/models/lora holds a LoRA adapter", "its adapter names 'org/missing-base', which is not available here"),
    row("load-lora-corrupt-adapter-config", lambda w: HookedVideoLLM.from_pretrained(_corrupt_lora_folder(w)),
        CheckpointError, "{d}/models/lora/adapter_config.json: not a valid JSON config"),
]


# ----- files never lost ---------------------------------------------------------------------------
def _tvbench_untouched(w) -> None:
    assert snapshot(w.tvb) == w.tvb_snapshot
    assert not (w.tvb / "synthetic.json").exists()


FILES = [
    row("synthetic-into-a-real-tvbench", lambda w: synthetic.generate(w.tvb, tasks=["moving_direction"], per_task=2, progress=False),
        FileExistsError, "{tvb} already holds json/ or video/ files that hooked_video did not generate", after=_tvbench_untouched),
]

MATRIX = PREPARE + DATASETS + ANALYSES + LOADING + FILES


@pytest.mark.parametrize("action, error, phrases, after", MATRIX)
def test_bad_input(w, action, error, phrases, after):
    with pytest.raises(error) as info:
        action(w)
    message = message_of(info.value)
    assert "\n" not in message.strip() or isinstance(info.value, (KeyError,)), message
    for phrase in phrases:
        assert phrase.format(**w.fields) in message
    if after is not None:
        after(w)


def test_matrix_size():
    assert len(MATRIX) + len(CLI) >= 140


# ----- CLI ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_runs(w):
    """A finished flow run (both targets the pathways need) and a lens folder, made through the CLI."""
    flow_out, lens_out = w.path("cli/flow"), w.path("cli/lens")
    args = ["flow", "--model", str(w.model_path), "--data", str(w.data), "--out", str(flow_out), "--window", "1",
            "--target", "cross-frame", "--target", "vql-to-ql", "--frames", "4", "--select", "all"]  # fmt: skip
    assert main(args) == 0
    assert main(["lens", "--model", str(w.model_path), "--data", str(w.data), "--out", str(lens_out), "--variant", "embed",
                 "--norm", "released", "--select", "all", "--frames", "4"]) == 0  # fmt: skip
    w.write("other_data.json", [World.entry(id=f"clip{i}", video=f"v{i}.mp4", answer="left") for i in range(2)])
    w.write("keywords_invalid.json", '{"spatial": [')
    return flow_out, lens_out


def analysis(command: str, *extra: str, out: str = "{fresh}", data: str = "{d}/data.json", model: str = "{model}"):
    """CLI arguments of an analysis (templates: {d}, {tvb}, {model}, {fresh}: a new folder)."""
    base = [command, "--model", model, "--data", data, "--out", out, "--frames", "4"]
    if command == "lens" and "--variant" not in extra:
        base += ["--variant", "embed"]
    if command == "lens" and "--norm" not in extra and "no-norm" not in extra:
        base += ["--norm", "released"]
    return [a for a in base + list(extra) if a != "no-norm"]


def cli_row(case_id: str, argv: list[str], *phrases: str, after=None, marks=()):
    return pytest.param(argv, phrases, after, id=case_id, marks=marks)


RERUN = ["--window", "1", "--target", "cross-frame", "--target", "vql-to-ql", "--select", "all"]

CLI = [
    cli_row("samples-0", analysis("flow", "--samples", "0"), "hooked-video flow: error: argument --samples: expected a number of at least 1, got 0"),
    cli_row("samples-minus-1", analysis("flow", "--samples", "-1"), "argument --samples: expected a number of at least 1, got -1"),
    cli_row("samples-abc", analysis("flow", "--samples", "abc"), "argument --samples: expected a whole number, got 'abc'"),
    cli_row("task-matches-nothing-json", analysis("flow", "--task", "nope"), "{d}/data.json: no sample has task ['nope']"),
    cli_row("task-matches-nothing-tvbench", analysis("flow", "--task", "nope", data="{tvb}"),
            "no annotation file for task(s) ['nope'] in {tvb}/json"),
    cli_row("dtype-bogus", analysis("flow", "--dtype", "bogus"), "dtype must be a torch dtype or one of", "got 'bogus'"),
    cli_row("model-missing", analysis("flow", model="{d}/no_model"), "no model folder at '{d}/no_model'"),
    cli_row("model-file", analysis("flow", model="{d}/afile.txt"), "{d}/afile.txt is a file; give the model's folder"),
    cli_row("data-missing", analysis("flow", data="{d}/nowhere.json"), "{d}/nowhere.json does not exist: give a TVBench folder"),
    cli_row("data-invalid-json", analysis("flow", data="{d}/invalid.json"), "{d}/invalid.json: not valid JSON"),
    cli_row("data-bad-entry", analysis("lens", data="{d}/answer_letter_cli.json"),
            "{d}/answer_letter_cli.json, entry 0: answer 'B' is not among the options"),
    cli_row("data-neither-folder", analysis("prune", "--preset", "llava-next-7b-video-ft", data="{d}/plain"),
            "{d}/plain is a folder but neither a TVBench folder (json/, video/) nor a TOMATO folder (jsons/, videos/)"),
    cli_row("window-0", analysis("flow", "--window", "0"), "argument --window: expected a number of at least 1, got 0"),
    cli_row("target-bogus", analysis("flow", "--target", "bogus"), "unknown target(s) ['bogus']"),
    cli_row("sweep-range-abc", analysis("flow", "--sweep-range", "abc"), "argument --sweep-range: expected START-STOP (e.g. 5-20), got 'abc'"),
    cli_row("sweep-range-reversed", analysis("flow", "--sweep-range", "3-1", "--target", "cross-frame", "--window", "1"), "sweep-range"),
    cli_row("batch-size-0", analysis("flow", "--batch-size", "0"), "argument --batch-size: expected a number of at least 1, got 0"),
    cli_row("frames-0", analysis("flow", "--frames", "0"), "argument --frames: expected a number of at least 1, got 0"),
    cli_row("anchor-0", analysis("flow", "--open-ended", "--anchor", "0"), "argument --anchor: expected a number of at least 1, got 0"),
    cli_row("open-ended-missing-video", analysis("flow", "--open-ended", data="{d}/oq_gone_cli.json"),
            "{d}/oq_gone_cli.json, entry 0: video file {d}/gone.mp4 does not exist"),
    cli_row("open-ended-task-matches-nothing", analysis("flow", "--open-ended", "--task", "nope", "--window", "1"), "['nope']"),
    cli_row("preset-bogus", analysis("prune", "--preset", "bogus"), "unknown preset 'bogus'"),
    cli_row("prune-neither-preset-nor-sweep", analysis("prune"), "give exactly one of --preset NAME or --from-sweep SWEEP_DIR"),
    cli_row("prune-both-preset-and-sweep", analysis("prune", "--preset", "llava-next-7b-video-ft", "--from-sweep", "{d}/cli/flow"),
            "give exactly one of --preset NAME or --from-sweep SWEEP_DIR"),
    cli_row("random-fraction-negative", analysis("prune", "--random-fraction", "-0.1"),
            "argument --random-fraction: expected a number in [0, 1), 'run', 'sample' or 'preset', got '-0.1'"),
    cli_row("random-fraction-2", analysis("prune", "--random-fraction", "2"), "argument --random-fraction: expected a number in [0, 1)",
            "got '2'"),
    cli_row("random-fraction-abc", analysis("prune", "--random-fraction", "abc"), "argument --random-fraction:", "got 'abc'"),
    cli_row("random-fraction-preset-with-sweep", analysis("prune", "--from-sweep", "{d}/cli/flow", "--random-fraction", "preset"),
            "--random-fraction preset needs --preset"),
    cli_row("threshold-abc", analysis("prune", "--from-sweep", "{d}/cli/flow", "--threshold", "abc"),
            "argument --threshold: invalid float value: 'abc'"),
    cli_row("from-sweep-missing", analysis("prune", "--from-sweep", "{d}/no_sweep"), "--from-sweep {d}/no_sweep is not a folder"),
    cli_row("from-sweep-lens-folder", analysis("prune", "--from-sweep", "{d}/cli/lens"), "{d}/cli/lens"),
    cli_row("keywords-missing", analysis("lens", "--select", "all", "--keywords", "{d}/no_keywords.json"),
            "--keywords file {d}/no_keywords.json does not exist"),
    cli_row("keywords-invalid-json", analysis("lens", "--select", "all", "--keywords", "{d}/keywords_invalid.json"),
            "{d}/keywords_invalid.json"),
    cli_row("keywords-missing-nothing-selected",
            analysis("lens", "--select", "correct", "--keywords", "{d}/no_keywords.json"),
            "{d}/no_keywords.json"),
    cli_row("lens-without-norm", analysis("lens", "no-norm"), "the following arguments are required: --norm"),
    cli_row("lens-norm-bogus", analysis("lens", "--norm", "bogus"), "argument --norm: invalid choice: 'bogus'"),
    cli_row("min-count-negative", analysis("lens", "--min-count", "-1"), "argument --min-count: expected a number of at least 0, got -1"),
    cli_row("tokens-missing-video", ["tokens", "{model}", "{d}/missing.mp4", "-q", "which way ?", "-o", "left", "-o", "right"],
            "video file not found: {d}/missing.mp4"),
    cli_row("tokens-answer-out-of-range", ["tokens", "{model}", "{d}/v0.mp4", "-q", "which way ?", "-o", "left", "-o", "right",
                                           "--answer", "5", "--frames", "4"], "answer index 5 is outside the 2 options"),
    cli_row("tokens-one-option", ["tokens", "{model}", "{d}/v0.mp4", "-q", "which way ?", "-o", "left", "--frames", "4"],
            "options has one option ('left')"),
    cli_row("tokens-frames-0", ["tokens", "{model}", "{d}/v0.mp4", "-q", "which way ?", "--frames", "0"],
            "argument --frames: expected a number of at least 1, got 0"),
    cli_row("info-missing-model", ["info", "{d}/no_model"], "no model folder at '{d}/no_model'"),
    cli_row("info-zoo-typo", ["info", "toy-vide-ft"], "did you mean 'toy-video-ft'?"),
    cli_row("rerun-other-settings", analysis("flow", *RERUN[2:], "--window", "2", out="{d}/cli/flow"),
            "{d}/cli/flow holds results of a run with other settings (window: stored 1, now 2)"),
    cli_row("rerun-other-data", analysis("flow", *RERUN, out="{d}/cli/flow", data="{d}/other_data.json"),
            "{d}/cli/flow holds results of other samples under the ids ['clip0', 'clip1']"),
    cli_row("rerun-other-analysis", analysis("lens", "--select", "all", out="{d}/cli/flow"),
            "{d}/cli/flow holds results of a 'flow.sweep' run, not 'lens.run'"),
    cli_row("out-is-a-file", analysis("flow", *RERUN, out="{d}/afile.txt"), "the results folder {d}/afile.txt is a file"),
    cli_row("unknown-subcommand", ["floww", "--model", "x"], "argument command: invalid choice: 'floww'"),
    cli_row("no-subcommand", [], "the following arguments are required: command"),
    cli_row("build-tiny-unknown-arch", ["build-tiny", "gpt2", "{d}/cli/gpt2"], "argument arch: invalid choice: 'gpt2'"),
    cli_row("reproduce-data-missing", ["reproduce", "--model", "{model}", "--data", "{d}/nowhere", "--out", "{d}/cli/paper"],
            "{d}/nowhere does not exist: give a TVBench folder (json/, video/), a TOMATO folder"),
    cli_row("reproduce-without-data", ["reproduce", "--model", "{model}", "--out", "{d}/cli/paper"],
            "the following arguments are required: --data"),
    cli_row("demo-samples-0", ["demo", "--samples", "0", "--out", "{d}/cli/demo"], "argument --samples: expected a number of at least 1, got 0"),
    cli_row("demo-data-real-tvbench", ["demo", "--samples", "2", "--data", "{tvb}", "--out", "{d}/cli/demo"],
            "{tvb} already holds json/ or video/ files that hooked_video did not generate",
            after=lambda w: _demo_wrote_nothing(w)),
]


def _demo_wrote_nothing(w) -> None:
    _tvbench_untouched(w)
    assert not (w.d / "cli/demo").exists()


def _is_progress_bar(line: str) -> bool:
    return "|" in line and ("it/s]" in line or "s/it]" in line or "?it/s" in line)


@pytest.mark.parametrize("argv, phrases, after", CLI)
def test_cli_bad_input(w, cli_runs, capsys, tmp_path, argv, phrases, after):
    w.bad("answer_letter_cli", World.entry(answer="B"))
    w.write("oq_gone_cli.json", [{"video": "gone.mp4", "question": Q}])
    fields = {**w.fields, "fresh": str(tmp_path / "out")}  # a results folder of this case's own
    args = [a.format(**fields) for a in argv]
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as exit:  # argparse's errors
        code = exit.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and not _is_progress_bar(line)]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("hooked-video"), err
    for phrase in phrases:
        assert phrase.format(**fields) in lines[0]
    if after is not None:
        after(w)


def test_cli_error_after_loading_is_one_stderr_line(w, capsys, tmp_path):
    from transformers.utils import logging

    logging.enable_progress_bar()
    try:
        argv = analysis("flow", "--sweep-range", "0-99", out=str(tmp_path / "out"))  # known after loading only
        code = main([a.format(**w.fields) for a in argv])
    finally:
        logging.disable_progress_bar()
    err = capsys.readouterr().err
    assert code == 2 and "swept layer" in err and "is outside layers" in err
    assert len([line for line in err.replace("\r", "\n").splitlines() if line.strip()]) == 1, err


# ----- the rest: what loads or runs, and leaves the user's files alone -----------------------------
def test_answer_by_text_and_free_form_prompt(w):
    assert w.prompt(answer="right").answer == 1
    prompt = w.m.prepare(w.frames, "what is in this video ?", num_frames=None)
    tm = prompt.token_map
    assert [prompt.str_tokens[i] for i in tm.question_without_options] == "what is in this video ?".split()
    assert tm.options == [] and prompt.option_token_ids == []


def test_not_strict_loads_and_warns_with_the_missing_weights(w):
    folder = w.model_variant("missing_not_strict", _weights(_drop_layer))
    with pytest.warns(UserWarning, match=r"9 missing weights \(model\.language_model\.layers\.1\..*loading anyway") as record:
        model = HookedVideoLLM.from_pretrained(folder, strict=False)
    assert str(folder) in str(record[0].message)
    assert model.cfg.n_layers == 2


def test_skip_invalid_reports_each_skipped_entry_by_name(w, capsys):
    path = w.bad("mixed", World.entry(id="good0"), World.entry(id="bad1", answer="B"), World.entry(id="good2", video="v1.mp4"),
                 World.entry(id="bad3", video="gone.mp4"))  # fmt: skip
    capsys.readouterr()
    data = MCQADataset(path, skip_invalid=True)
    out = capsys.readouterr().out
    assert [s.id for s in data] == ["good0", "good2"]
    assert len(data.skipped) == 2
    assert f"{path}, entry 1: answer 'B'" in data.skipped[0] and f"{path}, entry 3: video file" in data.skipped[1]
    assert "skipped 2 invalid entries" in out and all(reason in out for reason in data.skipped)
    tvb = w.tvbench("tvb_mixed", [{"video": "a.mp4", "question": Q, "candidates": OPTS, "answer": "left"},
                                  {"video": "a.mp4", "question": Q, "candidates": OPTS, "answer": 7}])  # fmt: skip
    lenient = TVBench(tvb, skip_invalid=True)
    assert len(lenient) == 1 and "moving_direction.json, entry 1: answer index 7" in lenient.skipped[0]


def test_cli_leaves_the_users_summary_alone(w, capsys):
    out = w.path("user/cli")
    out.mkdir(parents=True)
    (out / "summary.json").write_text("my own summary\n")
    argv = analysis("flow", "--target", "cross-frame", "--window", "1", "--select", "all", out=str(out))
    code = main([a.format(**w.fields) for a in argv])
    capsys.readouterr()
    assert code == 2 or (out / "summary.json").read_text() == "my own summary\n"


USER_FILES = {"notes.txt": "my notes\n", "rows.jsonl": '{"sample_id": "mine", "layer": 0}\n', "config.json": '{"mine": 1}',
              "results.sqlite.bak": "my backup", "sub/keep.txt": "x"}  # fmt: skip


@pytest.mark.parametrize("name", ["flow", "lens", "prune"])
def test_an_analysis_leaves_the_users_files_alone(w, name):
    out = w.path(f"user/{name}")
    for file, text in USER_FILES.items():
        (out / file).parent.mkdir(parents=True, exist_ok=True)
        (out / file).write_text(text)
    before = snapshot(out)
    run = {"flow": w.sweep, "lens": w.lens, "prune": w.prune}[name]
    run(out=out)
    run(out=out)  # a resume
    run(out=out, resume=False)  # starting over deletes the database only
    after = snapshot(out)
    assert {k: after[k] for k in before} == before
    assert set(after) - set(before) <= {"results.sqlite", "results.sqlite-wal", "results.sqlite-shm", ".hooked-video.lock"}
    table = {"flow": "rows", "lens": "lens", "prune": "rows"}[name]
    assert "mine" not in set(load_results(out, table).sample_id)  # the user's rows.jsonl is not read as results
