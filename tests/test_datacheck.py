import json
import subprocess
import sys

import pytest

from ds_videocap.cli import main


@pytest.fixture
def dataset(tmp_path, make_video):
    videos = tmp_path / "videos"
    good = make_video("videos/good.mp4", frames=12)
    make_video("videos/other.avi", frames=5, codec="mpeg4")
    data = good.read_bytes()
    (videos / "trunc.mp4").write_bytes(data[: len(data) // 2])
    (videos / "zero.mp4").write_bytes(b"")
    (videos / "text.mp4").write_text("this is not a video\n")
    records = [
        {"video": "good.mp4", "caption": "a grey square", "image_id": "good"},
        {"video": "good.mp4", "caption": "A grey square.", "image_id": "good"},  # duplicate after normalising
        {"video": "other", "caption": "another clip", "image_id": "other"},  # extension found: .avi
        {"video": "trunc.mp4", "caption": "cut short", "image_id": "trunc"},
        {"video": "zero.mp4", "caption": "nothing", "image_id": "zero"},
        {"video": "text.mp4", "caption": "text", "image_id": "text"},
        {"video": "missing.mp4", "caption": "gone", "image_id": "missing"},
        {"video": "other.avi", "caption": "?!", "image_id": "other"},  # empty once punctuation goes
    ]
    ann = tmp_path / "cap_train.json"
    ann.write_text(json.dumps(records))
    return ann, videos


def run_json(capsys, *argv):
    code = main(["data", "check", *map(str, argv), "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_counts_every_kind_of_problem(dataset, capsys):
    ann, videos = dataset
    code, report = run_json(capsys, ann, "--videos", videos, "--frames", "4")
    assert code == 1
    assert report["clips"] == 6 and report["captions"] == 8
    assert report["captions_per_split"] == {"train": 8}
    assert report["missing_videos"] == 1 and report["bad_videos"] == 3
    assert report["empty_captions"] == 1 and report["duplicates"] == 1
    reasons = {(p["file"].rsplit("/", 1)[-1], p["reason"].split(":")[0]) for p in report["problems"]}
    assert {("missing.mp4", "missing"), ("trunc.mp4", "bad video"), ("zero.mp4", "bad video"),
            ("text.mp4", "bad video")} <= reasons


def test_clean_set_exits_zero_with_both_backends(tmp_path, make_video, capsys):
    make_video("v/a.mp4", frames=3)
    make_video("v/b.mkv", frames=20)
    ann = tmp_path / "custom.jsonl"
    ann.write_text('{"video": "a", "captions": ["one", "two"]}\n{"video": "b", "caption": "three"}\n')
    for backend in ("decord", "pyav"):
        code, report = run_json(capsys, ann, "--videos", tmp_path / "v", "--backend", backend, "--frames", "8")
        assert code == 0 and report["clips"] == 2 and report["captions"] == 3 and report["problems"] == []
    assert main(["data", "check", str(ann), "--videos", str(tmp_path / "v")]) == 0
    human = capsys.readouterr().out
    assert "OK: every record is usable" in human and "clips" in human


def test_unreadable_annotations_exit_2_with_one_line(tmp_path):
    bad = tmp_path / "cap_val.json"
    bad.write_text('[{"video": "a.mp4", "caption": "x"},\n{"video": ]')
    proc = subprocess.run([sys.executable, "-m", "ds_videocap.cli", "data", "check", str(bad), "--json"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cap_val.json: line 2" in lines[0] and "Traceback" not in proc.stderr
