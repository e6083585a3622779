"""toy-planted, measured with the project's own engine: accuracy, pathway faithfulness (everything
outside the planted pathway knocked out together; each of its flows cut alone), and a window
sweep's rows inside and outside the pathway. Writes the JSON results and the model card.

    python benchmarks/toy_planted.py --per-task 64 --out benchmarks/results/toy_planted.json --card
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hooked_video import HookedVideoLLM, flow  # noqa: E402
from hooked_video.analysis import pathways  # noqa: E402
from hooked_video.data import TVBench, synthetic  # noqa: E402
from hooked_video.zoo import MODELS_DIR, planted  # noqa: E402

def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-task", type=int, default=64)
    parser.add_argument("--out", default=None)
    parser.add_argument("--card", action="store_true", help="rewrite the bundled model card from these numbers")
    args = parser.parse_args()
    root = synthetic.generate(Path(tempfile.mkdtemp()) / "synthetic", tasks=list(synthetic.TEMPORAL_TASKS),
                              per_task=args.per_task, seed=0, progress=False)  # fmt: skip
    data = TVBench(root)
    model = HookedVideoLLM.from_pretrained("toy-planted")
    spec = pathways.PathwaySpec.preset("toy-planted")
    start = time.perf_counter()
    df = pathways.faithfulness(model, data, spec, progress=False)
    faithful = time.perf_counter() - start
    by_setting = df.groupby("setting")[["rel_change", "flipped", "correct"]].mean()
    full = df.drop_duplicates("sample_id").groupby("task").full_correct.mean()
    start = time.perf_counter()
    sweep = flow.sweep(model, data, targets=["cross-frame", "vql-to-ql"], window=3, progress=False)
    swept = time.perf_counter() - start
    single = flow.sweep(model, data, targets=["cross-frame", "vql-to-ql"], window=1, progress=False)
    per_layer = single[single.condition.isin(["cross-frame", "video->question", "question->last"])]
    measured = {
        "per_task": args.per_task, "samples": int(df.sample_id.nunique()),
        "accuracy": {task: float(v) for task, v in full.items()},
        "faithfulness": {name: {k: float(v) for k, v in row.items()} for name, row in by_setting.iterrows()},
        "faithfulness_by_task": {f"{t}|{s}": float(v) for (t, s), v in df.groupby(["task", "setting"]).rel_change.mean().items()},
        "sweep": planted.window_rows(sweep, spec, 3),
        "single_layers": planted.window_rows(single, spec, 1),
        "single_layer_means": {f"{c}@{l}": float(v) for (c, l), v in per_layer.groupby(["condition", "layer"]).rel_change.mean().items()},
        "from_sweep_threshold_20": str(pathways.PathwaySpec.from_sweep(sweep, threshold=20)),
        "seconds": {"faithfulness": round(faithful, 1), "sweep": round(swept, 1)},
        "machine": "2 CPU cores (development machine)",
    }  # fmt: skip
    print(json.dumps(measured, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(measured, indent=1))
    if args.card:
        log = json.loads((Path(__file__).parent / "results" / "toy_planted_training_log.json").read_text())
        (MODELS_DIR / "toy-planted" / "README.md").write_text(planted.model_card(log, measured))


if __name__ == "__main__":
    main()
