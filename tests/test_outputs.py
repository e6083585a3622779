"""No command replaces a user's file: reports, summaries and figures are written only where nothing
is, or where hooked-video wrote the file before and nobody changed it since (``app.outputs``)."""

import json

import pytest

from hooked_video.app import outputs
from hooked_video.app.cli import main
from hooked_video.app.outputs import OutputExistsError


def test_a_users_file_is_refused_and_kept(tmp_path):
    mine = tmp_path / "index.html"
    mine.write_text("<p>my notes</p>")
    with pytest.raises(OutputExistsError, match=f"{mine} exists and was not written by hooked-video.*--overwrite"):
        outputs.write_text(mine, "report")
    assert mine.read_text() == "<p>my notes</p>"
    outputs.write_text(mine, "report", overwrite=True)
    assert mine.read_text() == "report"


def test_our_file_is_replaced_on_a_rerun_unless_someone_changed_it(tmp_path):
    ours = outputs.write_text(tmp_path / "summary.json", "{}")
    outputs.write_text(ours, '{"again": 1}')  # a rerun
    ours.write_text('{"edited": "by hand"}')
    with pytest.raises(OutputExistsError, match="was changed after hooked-video wrote it"):
        outputs.write_text(ours, "{}")
    assert json.loads(ours.read_text()) == {"edited": "by hand"}


def test_summaries_of_0_2_count_as_ours_and_folders_are_refused(tmp_path):
    old = tmp_path / "summary.json"
    old.write_text(json.dumps({"written_by": "hooked-video", "rows": 3}))
    outputs.write_text(old, "{}")
    (tmp_path / "figure.png").mkdir()
    with pytest.raises(OutputExistsError, match="is a folder"):
        outputs.check_writable(tmp_path / "figure.png")


@pytest.mark.parametrize("command, name", [
    (["demo", "--samples", "1"], "index.html"),
    (["demo", "--samples", "1"], "summary.json"),
    (["reproduce", "--model", "toy-video-ft", "--data", "{data}"], "index.html"),
    (["reproduce", "--model", "toy-video-ft", "--data", "{data}"], "summary.json"),
    (["flow", "--model", "toy-video-ft", "--data", "{data}"], "summary.json"),
])  # fmt: skip
def test_commands_refuse_before_any_work(tmp_path, capsys, command, name):
    """The check comes before loading a model or generating data: nothing else appears in the folder."""
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_text("mine")
    data = tmp_path / "data.json"
    data.write_text("[]")
    argv = [a.replace("{data}", str(data)) for a in command] + ["--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{out / name} exists and was not written by hooked-video" in err[0], err
    assert (out / name).read_text() == "mine" and sorted(p.name for p in out.iterdir()) == [name]


@pytest.mark.parametrize("layout", ["results.sqlite", "video_flow/results.sqlite", "results/video_flow/results.sqlite"])
def test_reports_of_0_1_beside_their_results_count_as_ours(tmp_path, layout):
    """0.1 and 0.2 wrote summaries and report pages without a manifest, next to their results
    (flow: the folder; reproduce: a subfolder per analysis; demo: ``results/<analysis>``)."""
    (tmp_path / layout).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / layout).write_bytes(b"")
    (tmp_path / "summary.json").write_text(json.dumps({"n_samples": 3, "rule": "paper"}))
    (tmp_path / "index.html").write_text("<!DOCTYPE html><html><title>hooked-video</title></html>")
    outputs.write_text(tmp_path / "summary.json", "{}")
    outputs.write_text(tmp_path / "index.html", "<!DOCTYPE html>")
    (tmp_path / "finding2_frames.png").write_bytes(b"png")  # a figure: 0.1's, or the user's own; not guessed
    with pytest.raises(OutputExistsError, match="written by you or by a hooked-video before 0.3"):
        outputs.check_writable(tmp_path / "finding2_frames.png")


def test_a_users_summary_without_results_beside_it_is_still_refused(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"my": "notes"}))
    (tmp_path / "index.html").write_text("<!DOCTYPE html><p>my page</p>")
    for name in ("summary.json", "index.html"):
        with pytest.raises(OutputExistsError, match="was not written by hooked-video"):
            outputs.check_writable(tmp_path / name)
