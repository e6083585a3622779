"""Information-flow analysis by attention knockout: targets, sweeps, summaries.

    df = flow.sweep(model, samples, targets=["cross-frame", "vql-to-ql"], window=9, out="runs/a")
    flow.summarize(df)                 # per task: mean relative change + bootstrap 95% CI per layer
    flow.accuracy_under_knockout(df)   # per task, over all samples
    flow.attribute(model, samples)     # the same rows estimated from gradients (``attribution``)
"""

from hooked_video.analysis.flow.open_ended import anchor_positions, sweep_open_ended
from hooked_video.analysis.flow.records import SELECTIONS, baseline_record, knockout_record, last_position_probs
from hooked_video.analysis.flow.summary import accuracy_under_knockout, bootstrap_ci, summarize
from hooked_video.analysis.flow.sweep import ENGINES, ROW_KEY, Pass, load, plan_passes, sweep
from hooked_video.analysis.flow.targets import OPEN_ENDED_TARGETS, TARGETS, resolve_targets

__all__ = [
    "ENGINES", "OPEN_ENDED_TARGETS", "Pass", "anchor_positions", "sweep_open_ended", "ROW_KEY", "SELECTIONS", "TARGETS", "accuracy_under_knockout", "baseline_record",
    "bootstrap_ci", "knockout_record", "last_position_probs", "load", "plan_passes", "resolve_targets", "summarize",
    "sweep",
]  # fmt: skip


def __getattr__(name: str):
    if name == "attribute":  # loaded on use: the attribution package builds on this one
        from hooked_video.analysis.attribution import attribute

        return attribute
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
