"""The hooked-video command, run as a user runs it."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from hooked_video import save_video
from hooked_video.runtime.store import load_results


def run(*args):
    return subprocess.run([sys.executable, "-m", "hooked_video.app.cli", *args], capture_output=True, text=True)


def test_build_info_tokens(tmp_path):
    model = tmp_path / "tiny"
    assert run("build-tiny", "llava_next_video", str(model)).returncode == 0
    info = run("info", str(model))
    assert info.returncode == 0 and "LlavaNextVideoForConditionalGeneration" in info.stdout
    assert "hook_video_embeds" in info.stdout
    video = save_video(np.zeros((16, 32, 32, 3), np.uint8), tmp_path / "clip.mp4")
    out = run("tokens", str(model), str(video), "-q", "which way ?", "-o", "left", "-o", "right", "--frames", "4")
    assert out.returncode == 0, out.stderr
    assert "video: 16 tokens = 4 frames x 2 x 2" in out.stdout
    assert out.stdout.count(" frame ") == 4


def test_errors_are_one_line(tmp_path):
    model = tmp_path / "tiny"
    run("build-tiny", "qwen2_vl", str(model))
    out = run("tokens", str(model), str(tmp_path / "missing.mp4"), "-q", "which way ?")
    assert out.returncode == 2
    assert "hooked-video: error: video file not found" in out.stderr and "Traceback" not in out.stderr


def write_dataset(tmp_path, n=2):
    rng = np.random.default_rng(0)
    entries = []
    for i in range(n):
        save_video(rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), tmp_path / f"v{i}.mp4")
        entries.append({"id": f"clip{i}", "video": f"v{i}.mp4", "question": "which way does the ball move ?",
                        "candidates": ["left", "right"], "answer": "right", "task": "direction"})  # fmt: skip
    path = tmp_path / "data.json"
    path.write_text(json.dumps(entries))
    return path


def test_flow_and_lens_commands(tmp_path):
    model = tmp_path / "tiny"
    run("build-tiny", "llava_next_video", str(model))
    data = write_dataset(tmp_path)
    args = ["flow", "--model", str(model), "--data", str(data), "--target", "cross-frame", "--target", "vql-to-ql",
            "--window", "1", "--select", "all", "--frames", "4", "--out", str(tmp_path / "flow")]  # fmt: skip
    out = run(*args)
    assert out.returncode == 0, out.stderr
    rows = load_results(tmp_path / "flow").to_dict("records")
    assert len(rows) == 2 * 5 * 2  # samples x conditions x layers
    summary = json.loads((tmp_path / "flow" / "summary.json").read_text())
    assert summary["n_samples"] == 2 and len(summary["rel_change"]) == 5 * 2
    again = run(*args)  # resumes: nothing to add
    assert again.returncode == 0, again.stderr
    assert len(load_results(tmp_path / "flow")) == len(rows)
    hooks = run(*args[:-1], str(tmp_path / "flow_hooks"), "--engine", "hooks")
    assert hooks.returncode == 0, hooks.stderr
    by_key = {(r["sample_id"], r["condition"], r["layer"]): r["p_knockout"] for r in rows}
    assert load_results(tmp_path / "flow_hooks").attrs["settings"]["engine"] == "hooks"
    for r in load_results(tmp_path / "flow_hooks").to_dict("records"):  # the reference path, the same numbers
        assert abs(r["p_knockout"] - by_key[(r["sample_id"], r["condition"], r["layer"])]) < 1e-5

    prune = run("prune", "--model", str(model), "--data", str(data), "--from-sweep", str(tmp_path / "flow"),
                "--threshold", "-1000", "--frames", "4", "--out", str(tmp_path / "prune"))  # fmt: skip
    assert prune.returncode == 0, prune.stderr
    summary = json.loads((tmp_path / "prune" / "summary.json").read_text())
    assert summary["spec"]["inter"] == [0, 1] and summary["n_samples"] == 2  # every layer "hurts" at -1000%
    assert set(summary["accuracy"]["overall"]) == {"full", "pathways", "random"}
    mismatch = run("prune", "--model", str(model), "--data", str(data), "--preset", "llava-next-7b-video-ft",
                   "--frames", "64", "--short-windows", "repeat", "--out", str(tmp_path / "prune7b"))  # fmt: skip
    assert mismatch.returncode == 0, mismatch.stderr
    assert "measured on byminji/LLaVA-NeXT-7B-Video-FT (32 layers)" in mismatch.stderr
    rows = load_results(tmp_path / "prune7b").to_dict("records")
    assert {r["random_fraction"] for r in rows} == {0.58}  # the preset's r, as the released 7B script
    own = run("prune", "--model", str(model), "--data", str(data), "--from-sweep", str(tmp_path / "flow"),
              "--threshold", "-1000", "--frames", "4", "--random-fraction", "sample", "--out", str(tmp_path / "own"))  # fmt: skip
    assert own.returncode == 0, own.stderr
    rows = load_results(tmp_path / "own").to_dict("records")
    for r in rows:  # each sample's own pruned share
        assert r["random_fraction"] == 1 - r["pathways_retained"] / r["pathways_baseline"]
    help_text = run("prune", "--help").stdout
    assert "0.58" in help_text and "'sample'" in help_text

    keywords = tmp_path / "keywords.json"
    keywords.write_text(json.dumps({"spatial": ["ball", "red"], "temporal": ["before", "after"]}))
    out = run("lens", "--model", str(model), "--data", str(data), "--variant", "embed", "--norm", "released", "--frames", "4",
              "--select", "all", "--keywords", str(keywords), "--min-count", "0", "--out", str(tmp_path / "lens"))  # fmt: skip
    assert out.returncode == 0, out.stderr
    lens_rows = load_results(tmp_path / "lens", "lens").to_dict("records")
    assert len(lens_rows) == 2 * 2  # samples x lens entries
    summary = json.loads((tmp_path / "lens" / "summary.json").read_text())
    assert set(summary["keywords"]) == {"spatial", "temporal"}
    assert len(summary["answer_probability"]) == 2 * 2  # layers x true/false (one task)
    assert summary["norm"] == "released" and summary["n_selected"] == 2


def test_flow_command_reports_bad_data(tmp_path):
    data = tmp_path / "bad.json"
    data.write_text(json.dumps([{"video": "nope.mp4", "question": "q ?", "candidates": ["a", "b"], "answer": "c"}]))
    out = run("flow", "--model", str(tmp_path), "--data", str(data), "--out", str(tmp_path / "o"))
    assert out.returncode == 2 and "entry 0" in out.stderr and "Traceback" not in out.stderr


def test_reduced_demo_end_to_end(tmp_path):
    out = run("demo", "--samples", "2", "--data", str(tmp_path / "syn"), "--out", str(tmp_path / "report"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "report:" in out.stdout
    page = (tmp_path / "report" / "index.html").read_text()
    for figure in ("knockout", "cross_frame", "blueprint", "answer_probability"):
        assert f'src="results/{figure}.png"' in page and (tmp_path / "report" / "results" / f"{figure}.png").stat().st_size > 5000
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert set(summary["accuracy"]["overall"]) == {"toy16-image", "toy16-video-ft"}
    assert "Too little evidence" in page  # two questions per task cannot carry a finding
    assert "numbered from 1" in page and "<style>" in page
    for n in range(1, 5):  # one verdict, in the same words in the terminal, summary.json and the page
        verdict = summary[f"finding{n}"]["verdict"]
        assert verdict in ("reproduces", "does not reproduce", "too little evidence")
        assert f"finding{n}: {verdict}\n" in out.stdout
        said = {"reproduces": f"Finding {n} reproduces", "does not reproduce": f"Finding {n} does not reproduce",
                "too little evidence": f"Finding {n}: too little evidence"}[verdict]  # fmt: skip
        assert said in page and summary[f"finding{n}"]["reproduces"] == {"reproduces": True, "does not reproduce": False,
                                                                         "too little evidence": None}[verdict]  # fmt: skip
    assert (tmp_path / "report" / "results" / "video_flow" / "results.sqlite").exists()


def test_reproduce_command(tmp_path):
    """The paper's pipeline on a PLLaVA-format model and a llava-v1.6 image model (loaded on the
    pooled video path), from a TVBench folder."""
    from hooked_video.data import synthetic
    from hooked_video.zoo.tiny import BASE_WORDS, build_tiny

    words = list(BASE_WORDS) + synthetic.vocabulary()
    video = build_tiny("pllava", tmp_path / "video", words=words)
    image = build_tiny("llava_next_image", tmp_path / "image", words=words)
    data = synthetic.generate(tmp_path / "tvbench", tasks=["moving_direction", "action_sequence"], per_task=2, progress=False)
    out = run("reproduce", "--model", str(video), "--image-model", str(image), "--data", str(data), "--out",
              str(tmp_path / "paper"))  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "paper" / "summary.json").read_text())
    assert set(summary["accuracy"]["overall"]) == {"video", "image"}
    assert "derived" in summary["spec"]["source"] or "no correctly" in summary["spec"]["source"]
    page = (tmp_path / "paper" / "index.html").read_text()
    assert "Effective pathways" in page and "Accuracy per task" in page
    # the released settings, and the report says which it used
    settings = summary["settings"]
    assert settings["keyword lens"] == "embed" and settings["keyword min count"] == 100
    assert settings["keyword bins"] == "disjoint" and settings["prompt template"] == "map-the-flow"
    assert "Settings: prompt template map-the-flow" in page
    assert load_results(tmp_path / "paper" / "lens", "baseline").attrs["settings"]["variant"] == "embed"
    # the pathway search on every question (4, under the default 32), beside the ranges used
    assert summary["discovery"]["samples"] == 4 and "ranges above" in summary["discovery"]["compared"]
    assert "Discovered pathway vs the ranges above" in page and (tmp_path / "paper" / "discovery.png").exists()
    # and the curve over every edge on the same questions, the ranges above at their own size
    drawn = summary["size_curve"]
    assert {"ranked, the ranges' size", "ranges above"} <= set(drawn["compared"]) and summary["size_curve_note"] is None
    assert "Every attention edge: ranked pathways vs the ranges above" in page and (tmp_path / "paper" / "size_curve.png").exists()


def test_open_ended_flow_command(tmp_path):
    model = tmp_path / "tiny"
    run("build-tiny", "llava_next_video", str(model))
    rng = np.random.default_rng(0)
    save_video(rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), tmp_path / "v.mp4")
    (tmp_path / "open.json").write_text(json.dumps([{"video": "v.mp4", "question": "what happens first ?"}]))
    out = run("flow", "--model", str(model), "--data", str(tmp_path / "open.json"), "--open-ended", "--anchor", "2",
              "--max-new-tokens", "6", "--window", "1", "--frames", "4", "--out", str(tmp_path / "oe"))  # fmt: skip
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "oe" / "summary.json").read_text())
    assert summary["anchor"] == 2 and summary["n_samples"] == 1
    baseline = load_results(tmp_path / "oe", "baseline").to_dict("records")
    rows = load_results(tmp_path / "oe").to_dict("records") if summary["n_traced"] else []
    assert len(rows) == summary["n_traced"] * 5 * 2  # conditions x layers
    assert "answer" in baseline[0]


def test_the_command_lists_equal_the_library_names():
    """The CLI keeps its own copies so that --help imports no torch."""
    from hooked_video import flow
    from hooked_video.app import cli
    from hooked_video.zoo.tiny import BUILDERS

    assert cli.TINY_ARCHITECTURES == sorted(BUILDERS)
    assert cli.ENGINES == list(flow.ENGINES)
    assert cli.TARGET_NAMES == sorted(flow.TARGETS) and cli.OPEN_ENDED_TARGET_NAMES == sorted(flow.OPEN_ENDED_TARGETS)
    from hooked_video.analysis.pathways import PRESETS
    from hooked_video.app.precheck import PRESET_NAMES

    assert PRESET_NAMES == sorted(PRESETS)


def test_every_option_has_help_and_every_command_examples():
    import argparse

    from hooked_video.app.cli import build_parser

    top = build_parser()
    commands = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert "examples:" in top.epilog
    for name, parser in commands.items():
        assert parser.epilog and "hooked-video " + name in parser.epilog, name
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest}: no help"
        text = parser.format_help()
        for action in parser._actions:
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                assert f"default: {action.default}" in " ".join(text.split()) or "default" in action.help, (name, action.dest)
    version = subprocess.run([sys.executable, "-m", "hooked_video", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("hooked-video 0."), version


@pytest.mark.parametrize("argv, message", [
    (["flow", "--model", "toy-vdeo-ft", "--data", "d.json", "--out", "o"], "did you mean 'toy-video-ft'"),
    (["flow", "--model", "toy-video-ft", "--data", "d.json", "--target", "bogus", "--out", "o"], "unknown target(s) ['bogus']"),
    (["flow", "--open-ended", "--model", "toy-video-ft", "--data", "d.json", "--target", "vql-to-ql", "--out", "o"],
     "known: ['cross-frame', 'vqrl-to-qrl']"),
    (["flow", "--model", "toy-video-ft", "--data", "missing", "--out", "o"], "missing does not exist: give a TVBench"),
    (["flow", "--model", "toy-video-ft", "--data", ".", "--out", "o"], "is a folder but neither a TVBench folder"),
    (["flow", "--model", "toy-video-ft", "--data", "tv", "--task", "Action Count", "--out", "o"],
     "no annotation file for task(s) ['action_count']"),
    (["lens", "--model", "toy-video-ft", "--data", "d.json", "--task", "nope", "--variant", "embed", "--norm", "final",
      "--out", "o"], "no sample has task ['nope']; tasks in the file: ['spin']"),
    (["lens", "--model", "toy-video-ft", "--data", "bad.json", "--task", "x", "--variant", "embed", "--norm", "final",
      "--out", "o"], "bad.json: not valid JSON"),
    (["lens", "--model", "toy-video-ft", "--data", "d.json", "--variant", "embed", "--norm", "final", "--keywords", "k.json",
      "--out", "o"], "--keywords file k.json does not exist"),
    (["flow", "--model", "toy-video-ft", "--data", "d.json", "--out", "d.json"], "the results folder d.json is a file"),
    (["flow", "--model", "toy-video-ft", "--data", "d.json", "--out", "mine"], "mine/summary.json exists and was not written"),
    (["prune", "--model", "toy-video-ft", "--data", "d.json", "--preset", "llava-7b", "--out", "o"], "unknown preset 'llava-7b'"),
    (["prune", "--model", "toy-video-ft", "--data", "d.json", "--out", "o"], "exactly one of --preset NAME or --from-sweep"),
    (["prune", "--model", "toy-video-ft", "--data", "d.json", "--from-sweep", "nothing", "--out", "o"], "--from-sweep nothing is not a folder"),
    (["reproduce", "--model", "toy-video-ft", "--data", "tv", "--tomato", "tv", "--out", "o"], "--tomato tv is not a TOMATO folder"),
    (["reproduce", "--model", "toy-video-ft", "--data", "tv", "--out", "mine"], "mine/summary.json exists"),
    (["demo", "--out", "mine"], "mine/summary.json exists and was not written"),
    (["tokens", "toy-video-ft", "clip.mp4", "-q", "which way ?"], "video file not found: clip.mp4"),
])  # fmt: skip
def test_bad_arguments_fail_before_anything_heavy_loads(tmp_path, argv, message):
    """A mistyped name, target or preset, data that is not there or not a benchmark, a task it lacks,
    an output folder holding a user's file: each fails at once, without importing torch."""
    (tmp_path / "d.json").write_text('[{"video": "a.mp4", "question": "q", "options": ["x", "y"], "answer": 0, "task": "spin"}]')
    (tmp_path / "bad.json").write_text("[{")
    (tmp_path / "tv" / "json").mkdir(parents=True)
    (tmp_path / "tv" / "json" / "action_antonym.json").write_text("[]")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "summary.json").write_text("{}")
    script = ("import sys; from hooked_video.app.cli import main; code = main(sys.argv[1:]); "
              "assert 'torch' not in sys.modules; sys.exit(code)")  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and message in done.stderr, done.stderr[-1500:]
    assert time.perf_counter() - start < 5  # about 0.1 s idle; loading torch alone takes longer


def test_doctor_times_the_toy_and_suggests_threads(capsys):
    from hooked_video.app.cli import main
    from hooked_video.runtime.distributed import usable_cores

    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "transformers" in out and "tested window" in out
    timed = [line for line in out.splitlines() if "thread(s):" in line]
    assert len(timed) == len({1, max(1, usable_cores() // 2), usable_cores()})
    assert all(float(line.split(":")[1].split()[0]) > 0 for line in timed)
    assert "suggested: --threads " in out and "Hugging Face hub cache" in out


def test_attribute_command_writes_rows_and_a_summary(tmp_path):
    from hooked_video.app.cli import main
    from hooked_video.data import synthetic

    root = synthetic.generate(tmp_path / "syn", tasks=["moving_direction"], per_task=2, seed=0, progress=False)
    out = tmp_path / "atp"
    argv = ["attribute", "--model", "toy-video-ft", "--data", str(root), "--window", "3", "--select", "all", "--out", str(out)]
    assert main(argv) == 0
    rows = load_results(out)
    assert len(rows) == 2 * 11 * 12 and rows.condition.nunique() == 11  # conditions x layers per sample
    assert rows.estimate.between(-100, 1e6).all() and (rows.estimate == rows.rel_change).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["estimated_samples"] == 2 and summary["method"] == "atp"
    assert main(argv) == 0 and len(load_results(out)) == len(rows)  # resumed, nothing duplicated
