"""A video's identity is its path (or the id its format gives), never its file stem: two videos named
x.mp4 in different folders, or clip.avi beside clip.webm, are four clips with their own captions, in
every reader, in `data check`, and through decoding and scoring (results' image_id)."""
import json

import pytest

from ds_videocap.annotations import AnnotationError, read_annotations
from ds_videocap.cli import main

CAPTIONS = {"a/x.mp4": "a red circle", "b/x.mp4": "a blue square", "clip.avi": "a green triangle",
            "clip.webm": "a white circle"}


@pytest.fixture
def four_videos(tmp_path, make_video):
    make_video("videos/a/x.mp4", frames=6, width=32, height=32)
    make_video("videos/b/x.mp4", frames=9, width=32, height=32)
    make_video("videos/clip.avi", frames=6, width=32, height=32, codec="mpeg4")
    make_video("videos/clip.webm", frames=6, width=32, height=32, codec="libvpx-vp9")
    lavis = tmp_path / "cap_test.json"
    lavis.write_text(json.dumps([{"video": v, "caption": c} for v, c in CAPTIONS.items()]))
    jsonl = tmp_path / "test.jsonl"
    jsonl.write_text("".join(json.dumps({"video": v, "caption": c}) + "\n" for v, c in CAPTIONS.items()))
    return tmp_path / "videos", lavis, jsonl


@pytest.mark.parametrize("which", ["lavis", "jsonl"])
def test_same_stem_videos_stay_apart(four_videos, which):
    videos, lavis, jsonl = four_videos
    clips = read_annotations(lavis if which == "lavis" else jsonl, videos)
    assert {c.video_id: c.captions for c in clips} == {v: [c] for v, c in CAPTIONS.items()}
    assert {c.video_id: c.video for c in clips} == {v: str(videos / v) for v in CAPTIONS}


def test_data_check_counts_four_usable_clips(four_videos, capsys):
    videos, lavis, _ = four_videos
    code = main(["data", "check", str(lavis), "--videos", str(videos), "--frames", "4", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["clips"] == 4 and report["captions"] == 4 and report["problems"] == []


def test_one_explicit_id_for_two_videos_is_refused(tmp_path):
    ann = tmp_path / "cap_train.json"
    ann.write_text(json.dumps([{"video": "a/x.mp4", "caption": "one", "image_id": "x"},
                               {"video": "b/x.mp4", "caption": "two", "image_id": "x"}]))
    with pytest.raises(AnnotationError, match=r"cap_train.json: record 1: id 'x' already names video '.*a/x.mp4'"):
        read_annotations(ann, tmp_path)
    same = tmp_path / "test.jsonl"  # the train form: one record per caption of the same video is fine
    same.write_text('{"video": "a/x.mp4", "caption": "one"}\n{"video": "a/x.mp4", "caption": "two"}\n')
    assert [c.captions for c in read_annotations(same, tmp_path)] == [["one", "two"]]


def test_decoded_and_scored_per_video(four_videos, tiny_folders, tmp_path):
    """Every one of the four videos gets its own caption and is scored against its own reference."""
    from dataclasses import replace

    from tiny_models import load

    from ds_videocap.config import DataCfg, EvalCfg
    from ds_videocap.evaluate import decode_clips, decode_kwargs, plain_context, score_split
    from ds_videocap.metrics import read_results, write_results

    videos, lavis, _ = four_videos
    clips = read_annotations(lavis, videos)
    model = load(tiny_folders["opt"])
    data_cfg = replace(DataCfg(), frames=2, image_size=32, num_workers=0, backend="pyav")
    captions, skipped = decode_clips(plain_context(model), clips, data_cfg,
                                     decode_kwargs(EvalCfg(num_beams=1, max_new_tokens=6, min_new_tokens=1)), 3)
    assert skipped == [] and sorted(captions) == sorted(CAPTIONS)
    written = read_results(write_results(captions, tmp_path / "results.json"))
    assert sorted(written) == sorted(CAPTIONS)  # results' image_id: one per video
    scores = score_split(captions, clips)
    assert scores["clips"] == scores["decoded"] == 4


def test_data_check_names_an_unused_namesake(tmp_path, make_video, capsys):
    """MSR-VTT-style ids carry no extension: with clip.avi and clip.webm on disk the reader takes
    clip.avi; data check says that clip.webm, used by no record, has the same name."""
    make_video("videos/clip.avi", frames=6, width=32, height=32, codec="mpeg4")
    make_video("videos/clip.webm", frames=6, width=32, height=32, codec="libvpx-vp9")
    ann = tmp_path / "AllVideoDescriptions.txt"
    ann.write_text("clip a grey square\n")
    code = main(["data", "check", str(ann), "--videos", str(tmp_path / "videos"), "--frames", "2", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["clips"] == 1
    assert [p["file"] for p in report["problems"]] == [str(tmp_path / "videos" / "clip.avi")]
    assert "clip.webm" in report["problems"][0]["reason"]
