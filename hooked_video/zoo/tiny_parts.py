"""What every tiny-model builder shares: sizes, the word-level tokenizer, chat templates in each
family's style, the words of the prompts and the language model's config fields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from tokenizers import AddedToken, Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Punctuation, Sequence as PreSequence, WhitespaceSplit
from transformers import PreTrainedTokenizerFast

#: Words of the multiple-choice template and common test questions.
BASE_WORDS = (
    "Question Options Only give the best option Best Answer A B C D E F G H "
    "( ) : . , ? ! which way does ball move left right up down what is in this video a an "
    "cat dog red green blue circle square first then before after grows shrinks count how many "
    "USER ASSISTANT SYSTEM system user assistant Carefully watch and pay attention to cause "
    "sequence of events detail movement objects action pose persons Based on your observations "
    "select that accurately addresses question happens cup falls moves nothing"
).split()


LLAVA_SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "<video>"]


QWEN_SPECIALS = [
    "<pad>", "<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
]  # fmt: skip


# Chat templates in the style of each family (Vicuna for LLaVA-NeXT-Video, ChatML otherwise).
VICUNA_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] if m['content'] is string "
    "else m['content'][0]['text'] }}{{ ' ' }}{% else %}{{ m['role'].upper() + ': ' }}"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'video' %}{{ '<video>\n' }}{% elif c['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}{{ ' ' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def chatml_template(video: str) -> str:
    """A ChatML template whose video item renders as `video` (the family's placeholder)."""
    return (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' }}"
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
        "{% if c['type'] == 'video' %}{{ '" + video + "' }}"
        "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
        "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|im_start|>assistant\n' }}{% endif %}"
    )


@dataclass(frozen=True)
class TinySizes:
    """Sizes of a tiny model; the defaults make a model of a few hundred kB."""

    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    d_mlp: int = 128
    vision_width: int = 32
    vision_layers: int = 2
    image_size: int = 32
    patch_size: int = 8
    max_positions: int = 2048


def word_level_tokenizer(
    words: Sequence[str], specials: Sequence[str], **named: str
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer (whitespace and punctuation split) over `specials` + `words`."""
    vocab: dict[str, int] = {}
    for token in [*specials, *words]:
        vocab.setdefault(token, len(vocab))
    core = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = PreSequence([WhitespaceSplit(), Punctuation()])
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", **named)


def text_config(s: TinySizes, vocab: int, ids: dict, **extra) -> dict:
    return dict(
        vocab_size=vocab, hidden_size=s.d_model, intermediate_size=s.d_mlp,
        num_hidden_layers=s.n_layers, num_attention_heads=s.n_heads,
        num_key_value_heads=s.n_kv_heads, max_position_embeddings=s.max_positions, **ids, **extra,
    )  # fmt: skip
