"""Video prompts: the paper's multiple-choice template, written with the model's own chat template
or as the released code's conversation ("map-the-flow"), built with the model's processor, and
aligned token by token with the text it came from.

The processor replaces the single video placeholder by the video's region: one token per video
feature, and whatever frame text and markers it writes. To know which tokens hold the question
and each option, the rendered text is tokenized once more with character offsets and *without*
expansion; outside the region the two token sequences must be equal (only the placeholder and
special marker tokens next to it may be rewritten), which is checked, so every span is exact.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field, replace

import torch

from hooked_video.model.tokens import PromptLayoutError, TextSpans, TokenMap

#: System prompt of the paper's LLaVA experiments (MVBench-style).
PAPER_SYSTEM_PROMPT = (
    "Carefully watch the video and pay attention to the cause and sequence of events, the detail "
    "and movement of objects, and the action and pose of persons. Based on your observations, "
    "select the best option that accurately addresses the question."
)
LETTERS = string.ascii_uppercase


#: System prompt of the released open-ended (VCGBench-style) evaluation.
OPEN_ENDED_SYSTEM_PROMPT = (
    "Carefully watch the video and pay attention to the cause and sequence of events, the detail and movement of "
    "objects, and the action and pose of persons. Based on your observations, answer the question concisely."
)
#: System prompt of the released VCGBench conversation (the open-ended appendix analysis).
VCGBENCH_SYSTEM_PROMPT = (
    "You are Video-ChatGPT, a large vision-language assistant. You are able to understand the video content that the "
    "user provides, and assist the user with a variety of tasks using natural language.Follow the instructions "
    "carefully and explain your answers in detail based on the provided video."
)
#: Conversations a template can be written in besides the model's chat template.
CONVERSATIONS = ("chat-template", "map-the-flow")


@dataclass(frozen=True)
class PromptTemplate:
    """How the user turn and the answer prefix are written.

    The multiple-choice default gives ``Question: {q}\nOptions:\n(A) {c0}\n(B) {c1}\nOnly give
    the best option.`` and pre-fills the assistant turn with ``Best option:(``, so the last token
    is ``(`` and the next token is an option letter. ``free_form()`` has no options and no prefix.

    ``conversation="chat-template"`` renders the turns with the model's chat template;
    ``"map-the-flow"`` writes the released code's conversation verbatim (see ``named``):
    ``{system}\n {user}{video}\n {user}{user text} {assistant}{answer prefix}`` with the
    ``roles`` ("USER: ", "ASSISTANT:" for Vicuna; "<|user|>\n", "<|assistant|>\n" for Phi-3).
    """

    question_label: str = "Question: "
    options_header: str = "\nOptions:\n"
    option_format: str = "({letter}) {option}"
    option_separator: str = "\n"
    instruction: str = "\nOnly give the best option."
    answer_prefix: str = "Best option:("
    system_prompt: str | None = PAPER_SYSTEM_PROMPT
    conversation: str = "chat-template"
    roles: tuple[str, str] = ("USER: ", "ASSISTANT:")
    #: the question's and each option's span take the newline that follows them (the released
    #: VideoLLaMA3 analysis finds ``"{q}\n"`` and ``"(A) {c0}\n"`` in the prompt)
    spans_take_newline: bool = False
    #: what follows the system prompt in a ``"map-the-flow"`` conversation
    system_separator: str = "\n "

    def __post_init__(self) -> None:
        if self.conversation not in CONVERSATIONS:
            raise ValueError(f"conversation must be one of {CONVERSATIONS}, got {self.conversation!r}")

    @classmethod
    def free_form(cls, system_prompt: str | None = None) -> "PromptTemplate":
        """A template with no question label, instruction or answer prefix (open-ended prompts)."""
        return cls(question_label="", instruction="", answer_prefix="", system_prompt=system_prompt)

    @classmethod
    def named(cls, name: str) -> "PromptTemplate":
        """A template by name (``TEMPLATES``): "default" (the paper's wording in the model's chat
        template), "map-the-flow" (the released code's exact prompt for the LLaVA-NeXT-Video-FT
        models: a second ``USER:`` turn, untyped, and a space before ``\nOnly``),
        "map-the-flow-phi3" (the same for Mini-InternVL-4B), "map-the-flow-videollama3"
        (VideoLLaMA3's instruction, no system prompt, no answer prefix), their open-ended
        variants, "map-the-flow-vcgbench" (the released open-ended analysis' VCGBench
        conversation for the LLaVA-NeXT-Video-FT models), "free-form"."""
        if name not in TEMPLATES:
            from hooked_video.core.checks import InvalidInputError

            raise InvalidInputError(f"unknown template {name!r}; templates: {sorted(TEMPLATES)}")
        return TEMPLATES[name]()

    def render_user_text(self, question: str, options: list[str]) -> tuple[str, dict]:
        """The user turn's text and the character spans [start, stop) of its parts."""
        text = self.question_label
        spans: dict = {"block_start": 0, "question": (len(text), len(text) + len(question))}
        text += question
        option_spans = []
        if options:
            text += self.options_header
            for i, option in enumerate(options):
                if i:
                    text += self.option_separator
                piece = self.option_format.format(letter=LETTERS[i], option=option)
                option_spans.append((len(text), len(text) + len(piece)))
                text += piece
        spans["options"] = option_spans
        spans["block_stop"] = len(text)
        text += self.instruction
        if self.spans_take_newline:
            spans["question"], *option_spans = [(a, b + 1) if text[b : b + 1] == "\n" else (a, b)
                                                for a, b in [spans["question"], *option_spans]]  # fmt: skip
            spans["options"] = option_spans
            spans["block_stop"] = max(b for _, b in [spans["question"], *option_spans])
        return text, spans

    def render_conversation(self, user_text: str, video: str) -> str:
        """The whole prompt of a ``"map-the-flow"`` conversation, up to the assistant's turn."""
        user, assistant = self.roles
        system = f"{self.system_prompt}{self.system_separator}" if self.system_prompt else ""
        return f"{system}{user}{video}\n {user}{user_text} {assistant}"


PHI3_ROLES = ("<|user|>\n", "<|assistant|>\n")
#: VideoLLaMA3's own multiple-choice instruction (the paper runs it without an answer prefix).
VIDEOLLAMA3_INSTRUCTION = "\nAnswer with the option's letter from the given choices directly and only give the best option."

TEMPLATES = {
    "default": PromptTemplate,
    "map-the-flow": lambda: PromptTemplate(instruction=" \nOnly give the best option.", conversation="map-the-flow"),
    "map-the-flow-open-ended": lambda: PromptTemplate(question_label="", instruction="", answer_prefix="",
                                                      system_prompt=OPEN_ENDED_SYSTEM_PROMPT, conversation="map-the-flow"),
    "map-the-flow-vcgbench": lambda: PromptTemplate(question_label="", instruction="", answer_prefix="",
                                                    system_prompt=VCGBENCH_SYSTEM_PROMPT, system_separator=" ",
                                                    conversation="map-the-flow"),
    "map-the-flow-phi3": lambda: PromptTemplate(instruction=" \nOnly give the best option.", conversation="map-the-flow",
                                                roles=PHI3_ROLES),
    "map-the-flow-phi3-open-ended": lambda: PromptTemplate(question_label="", instruction="", answer_prefix="",
                                                           system_prompt=OPEN_ENDED_SYSTEM_PROMPT,
                                                           conversation="map-the-flow", roles=PHI3_ROLES),
    "map-the-flow-videollama3": lambda: PromptTemplate(instruction=VIDEOLLAMA3_INSTRUCTION, answer_prefix="", system_prompt=None,
                                                       spans_take_newline=True),
    "free-form": PromptTemplate.free_form,
}


@dataclass
class VideoPrompt:
    """A prepared prompt: model inputs, token map and the option letters' token ids.

    Attributes:
        inputs: keyword arguments for the model (input_ids (1, N), pixel_values_videos, ...).
        token_map: roles, frames and spans of every position.
        str_tokens: the N token strings.
        option_token_ids: vocabulary id of each option's letter as the next token.
        answer: index of the true option (or None).
        text: the rendered prompt before placeholder expansion.
        frames: the (T, H, W, 3) uint8 frames given to the processor.
        template: the PromptTemplate it was written with.
        fps, processor_kwargs, frame_times: the frame rate, processor settings and frame
            times it was built with.
    """

    inputs: dict
    token_map: TokenMap
    str_tokens: list[str]
    option_token_ids: list[int] = field(default_factory=list)
    answer: int | None = None
    question: str = ""
    options: list[str] = field(default_factory=list)
    text: str = ""
    frames: object = None
    template: PromptTemplate | None = None
    fps: float | None = None
    processor_kwargs: dict | None = None
    frame_times: list[float] | None = None

    @property
    def input_ids(self) -> torch.Tensor:
        return self.inputs["input_ids"]

    @property
    def n_positions(self) -> int:
        return self.input_ids.shape[-1]

    @property
    def shape(self) -> torch.Size:
        """``input_ids``' shape (1, N): lets ``transformer_lens.patching`` take a VideoPrompt where
        it expects tokens."""
        return self.input_ids.shape

    @property
    def answer_token_id(self) -> int:
        if self.answer is None:
            raise AttributeError("this prompt has no answer: pass answer=... to prepare()")
        return self.option_token_ids[self.answer]

    def extend(self, token_ids, tokenizer, num_open_tokens: int = 0) -> "VideoPrompt":
        """This prompt followed by ``token_ids`` (e.g. a generated answer, teacher-forced); the
        token map marks them as "response" and the final one as "last" (``TokenMap.extended``)."""
        token_ids = [int(t) for t in token_ids]
        if not token_ids:
            return self
        return replace(
            self, inputs=extend_inputs(self.inputs, token_ids),
            token_map=self.token_map.extended(len(token_ids), num_open_tokens),
            str_tokens=self.str_tokens + tokenizer.convert_ids_to_tokens(token_ids),
            text=self.text + tokenizer.decode(token_ids),
        )  # fmt: skip

    def to(self, device) -> "VideoPrompt":
        """The prompt with its input tensors on ``device``."""
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.inputs.items()}
        return replace(self, inputs=moved)

    def __repr__(self) -> str:
        return f"VideoPrompt(N={self.n_positions}, options={len(self.options)}, answer={self.answer}, {self.token_map!r})"


def extend_inputs(inputs: dict, token_ids: list[int]) -> dict:
    """Model inputs with ``token_ids`` appended as text: per-token tensors of the prompt's length
    grow (ids appended, masks with ones, token-type ids with zeros); the rest is unchanged."""
    ids = inputs["input_ids"]
    n, new = ids.shape[-1], torch.tensor([token_ids], dtype=ids.dtype, device=ids.device)
    extended = {}
    for key, value in inputs.items():
        if not isinstance(value, torch.Tensor) or value.ndim != 2 or value.shape[-1] != n or value.shape[0] != 1:
            extended[key] = value
        elif key == "input_ids":
            extended[key] = torch.cat([value, new], dim=-1)
        else:
            fill = torch.ones_like(new) if "mask" in key else torch.zeros_like(new)
            extended[key] = torch.cat([value, fill.to(value.dtype)], dim=-1)
    return extended


def char_span_to_tokens(offsets: list[tuple[int, int]], start: int, stop: int) -> tuple[int, int]:
    """Minimal token span [first, last + 1) whose characters cover [start, stop)."""
    hits = [i for i, (a, b) in enumerate(offsets) if b > a and a < stop and b > start]
    if not hits:
        raise PromptLayoutError(f"no token covers characters {start}..{stop} of the prompt.")
    return hits[0], hits[-1] + 1


@dataclass(frozen=True)
class TextAlignment:
    """How the prompt text's own tokens sit in the processor's expanded ids.

    The processor replaces a few tokens of the plain tokenization (the video placeholder, and any
    markers around it that it rewrites, e.g. an outer ``<|vision_start|>`` / ``<|vision_end|>``)
    by the video's region; every other token is kept, in order.

    Attributes:
        offsets: character offsets of the unexpanded tokens.
        replaced: [start, stop) of the unexpanded tokens the processor replaced (placeholder included).
        region: [start, stop) of what the processor wrote in their place, in expanded positions
            (placeholders, and any frame text and markers it adds).
    """

    offsets: list[tuple[int, int]]
    replaced: tuple[int, int]
    region: tuple[int, int]

    def position(self, token: int) -> int:
        """The expanded position of unexpanded token ``token`` (one the processor kept)."""
        if token < self.replaced[0]:
            return token
        if token >= self.replaced[1]:
            return token + (self.region[1] - self.region[0]) - (self.replaced[1] - self.replaced[0])
        raise PromptLayoutError(
            f"prompt token {token} was rewritten by the processor together with the video placeholder; "
            "keep the question and options apart from the video placeholder in the prompt text."
        )


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    n = 0
    while n < limit and n < len(b) and a[n] == b[n]:
        n += 1
    return n


def replaced_region(ids: list[int], expanded: list[int], placeholder: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The unexpanded tokens [a, b) that hold ``ids[placeholder]`` and the expanded span [a, c)
    that replaced them: the longest common prefix before the placeholder and the longest common
    suffix after it are kept text; whatever lies between is the processor's video region."""
    a = _common_prefix(ids, expanded, placeholder)
    tail, expanded_tail = ids[placeholder + 1 :][::-1], expanded[a:][::-1]
    s = _common_prefix(tail, expanded_tail, len(tail))
    return (a, len(ids) - s), (a, len(expanded) - s)


def _marker_ids(tokenizer) -> set[int]:
    """Special tokens: the only tokens a processor may rewrite beside the placeholder."""
    ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids.update(int(i) for i, token in added.items() if getattr(token, "special", False))
    return ids


def align_text(tokenizer, text: str, expanded_ids: list[int], placeholder_id: int) -> TextAlignment:
    """Tokenize ``text`` with offsets and align it with the processor's ``expanded_ids``.

    The processor must keep every token of ``text`` except the one video placeholder and marker
    tokens next to it (special tokens such as ``<|vision_start|>``), which it replaces by
    the video's region: the longest common prefix and suffix of the two sequences are the kept
    text. How the processor lays out the video inside the region (per-frame markers, timestamps,
    text before the first frame) does not matter here; ``VideoFamily.layout`` reads it.
    """
    markers = _marker_ids(tokenizer)
    problem = "the prompt text does not hold the video placeholder exactly once"
    for add_special in (True, False):
        encoded = tokenizer(text, return_offsets_mapping=True, add_special_tokens=add_special)
        ids = encoded["input_ids"]
        if ids.count(placeholder_id) != 1:
            continue
        k = ids.index(placeholder_id)
        replaced, region = replaced_region(ids, expanded_ids, k)
        rewritten = [t for t in ids[replaced[0] : replaced[1]] if t != placeholder_id]
        if region[1] <= region[0]:
            problem = "the processor wrote nothing for the video"
        elif any(t not in markers for t in rewritten):
            problem = (f"the processor changed text tokens {tokenizer.convert_ids_to_tokens(rewritten)} around the video "
                       "placeholder, not only the placeholder and its markers")  # fmt: skip
        else:
            return TextAlignment([tuple(o) for o in encoded["offset_mapping"]], replaced, region)
    raise PromptLayoutError(
        f"the processor's token ids do not match a plain tokenization of the prompt text: {problem}, so "
        "question and option spans cannot be located; is the tokenizer a fast tokenizer, and does the prompt "
        "hold the video placeholder exactly once?"
    )


def expanded_spans(alignment: TextAlignment, char_spans: dict, base: int) -> TextSpans:
    """Token spans of the question block, question and options, in expanded positions."""

    def tokens(a: int, b: int) -> tuple[int, int]:
        first, stop = char_span_to_tokens(alignment.offsets, base + a, base + b)
        return alignment.position(first), alignment.position(stop - 1) + 1

    question = tokens(*char_spans["question"]) if char_spans["question"][1] > char_spans["question"][0] else None
    options = tuple(tokens(a, b) for a, b in char_spans["options"])
    block = tokens(char_spans["block_start"], char_spans["block_stop"]) if options else question
    return TextSpans(question_block=block, question_text=question, options=options)


def letter_token_ids(tokenizer, text: str, n_options: int) -> list[int]:
    """The exact id of each option letter as the token that follows `text`.

    Tokenizes ``text + letter`` and requires it to extend ``text``'s tokens by one token; where
    a tokenizer merges the letter with the preceding characters, falls back to the bare
    vocabulary piece of the letter, and fails if there is none.
    """
    base = tokenizer(text, add_special_tokens=False)["input_ids"]
    vocab = tokenizer.get_vocab()
    ids = []
    for letter in LETTERS[:n_options]:
        extended = tokenizer(text + letter, add_special_tokens=False)["input_ids"]
        if extended[: len(base)] == base and len(extended) == len(base) + 1:
            ids.append(extended[-1])
        elif letter in vocab:
            ids.append(vocab[letter])
        else:
            raise PromptLayoutError(
                f"cannot find one token for option letter {letter!r} after the answer prefix."
            )
    unknown = getattr(tokenizer, "unk_token_id", None)
    for letter, token in zip(LETTERS, ids):
        if unknown is not None and token == unknown:
            raise PromptLayoutError(f"option letter {letter!r} is not in the tokenizer's vocabulary (it becomes "
                                    f"{tokenizer.unk_token!r}); use at most {ids.index(token)} options with this model")  # fmt: skip
    if len(set(ids)) < len(ids):
        raise PromptLayoutError(f"two option letters share one token id ({ids}); the options cannot be told apart")
    return ids
