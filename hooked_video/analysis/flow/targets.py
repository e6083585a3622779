"""The knockout targets of the paper: each a set of conditions, each condition an edge set built
from a prompt's token map ("A -/-> B": B's queries may not read A's keys)."""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

from hooked_video.analysis import knockout as ko
from hooked_video.model.tokens import TokenMap

Condition = Callable[[TokenMap], ko.EdgeSet]

#: The paper's four targets: name -> {condition name -> edges to block}. "question" is the
#: question block with its options; "question-text" the question without options.
TARGETS: dict[str, dict[str, Condition]] = {
    "cross-frame": {"cross-frame": ko.cross_frame},
    "vql-to-ql": {
        "video->question": lambda tm: ko.between(tm.video_group, tm.question, tm),
        "video->last": lambda tm: ko.between(tm.video_group, tm.last, tm),
        "question->last": lambda tm: ko.between(tm.question, tm.last, tm),
        "last->last": lambda tm: ko.self_edges(tm.last, tm),
    },
    "question-and-options-to-last": {
        "question-text->last": lambda tm: ko.between(tm.question_without_options, tm.last, tm),
        "true-option->last": lambda tm: ko.between(tm.true_option, tm.last, tm),
        "false-options->last": lambda tm: ko.between(tm.false_options, tm.last, tm),
    },
    "vq-to-true-opt": {
        "video->question-text": lambda tm: ko.between(tm.video_group, tm.question_without_options, tm),
        "question-text->true-option": lambda tm: ko.between(tm.question_without_options, tm.true_option, tm),
        "video->true-option": lambda tm: ko.between(tm.video_group, tm.true_option, tm),
    },
}

#: Targets of the open-ended variant (a generated response teacher-forced up to an anchor):
#: "response" is the generated text before the last position.
OPEN_ENDED_TARGETS: dict[str, dict[str, Condition]] = {
    "cross-frame": TARGETS["cross-frame"],
    "vqrl-to-qrl": {
        "video->question": lambda tm: ko.between(tm.video_group, tm.question, tm),
        "video->response": lambda tm: ko.between(tm.video_group, tm.response, tm),
        "video->last": lambda tm: ko.between(tm.video_group, tm.last, tm),
        "question->last": lambda tm: ko.between(tm.question, tm.last, tm),
        "response->last": lambda tm: ko.between(tm.response, tm.last, tm),
    },
}


def resolve_targets(targets, known: Mapping[str, dict] = TARGETS) -> dict[str, dict[str, Condition]]:
    """Target names and/or ``{target: {condition: fn}}`` dicts -> one ordered mapping."""
    if isinstance(targets, (str, Mapping)):
        targets = [targets]
    if not isinstance(targets, Sequence) or not targets:
        raise ValueError(f"targets must be a non-empty list of names among {sorted(known)} or {{name: {{condition: fn}}}} dicts")
    resolved: dict[str, dict[str, Condition]] = {}
    for target in targets:
        if isinstance(target, Mapping):
            resolved.update({name: dict(conds) for name, conds in target.items()})
        elif isinstance(target, str) and target in known:
            resolved[target] = known[target]
        else:
            raise KeyError(f"unknown target {target!r}; known: {sorted(known)}, or pass {{name: {{condition: fn}}}}")
    return resolved
