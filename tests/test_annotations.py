import json

import pytest

from ds_videocap.annotations import AnnotationError, detect_format, read_annotations, resolve_video
from ds_videocap.errors import UserError


def write_json(path, obj):
    path.write_text(json.dumps(obj))
    return path


def test_lavis_train_groups_captions_and_keeps_attributes(tmp_path):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "v0.mp4").write_bytes(b"x")
    ann = write_json(tmp_path / "cap_train.json", [
        {"video": "v0.mp4", "caption": "A dog runs.", "image_id": "v0", "attributes": {"colors": ["red"]}},
        {"video": "v1.mp4", "caption": "a cat", "image_id": "v1"},
        {"video": "v0.mp4", "caption": "a dog running", "image_id": "v0"},
    ])
    assert detect_format(ann) == "lavis"
    clips = read_annotations(ann, tmp_path / "videos")
    assert [c.video_id for c in clips] == ["v0", "v1"]
    assert clips[0].captions == ["A dog runs.", "a dog running"]
    assert clips[0].attributes == {"colors": ["red"]} and clips[1].attributes is None
    assert clips[0].video == str(tmp_path / "videos" / "v0.mp4")
    assert clips[0].split == "train"  # from the file name


def test_lavis_eval_list_and_coco_ground_truth(tmp_path):
    ann = write_json(tmp_path / "cap_test.json", [{"video": "v2.mp4", "caption": ["one", "two"], "image_id": "v2"}])
    assert read_annotations(ann)[0].captions == ["one", "two"]
    gt = write_json(tmp_path / "test_gt.json", {"annotations": [
        {"image_id": "v2", "caption": "one", "id": 0}, {"image_id": "v2", "caption": "two", "id": 1},
        {"image_id": "v3", "caption": "three", "id": 2}], "images": [{"id": "v2"}, {"id": "v3"}]})
    clips = read_annotations(gt)
    assert [(c.video_id, c.captions, c.split) for c in clips] == [("v2", ["one", "two"], "test"),
                                                                   ("v3", ["three"], "test")]


def test_msrvtt_official_splits(tmp_path):
    (tmp_path / "video0.mp4").write_bytes(b"x")
    ann = write_json(tmp_path / "train_val_videodatainfo.json", {
        "videos": [{"video_id": "video0", "split": "train"}, {"video_id": "video1", "split": "validate"},
                   {"video_id": "video2", "split": "test"}],
        "sentences": [{"video_id": "video0", "caption": "a", "sen_id": 0}, {"video_id": "video1", "caption": "b"},
                      {"video_id": "video0", "caption": "c"}]})
    assert detect_format(ann) == "msrvtt"
    clips = read_annotations(ann, tmp_path)
    assert [(c.video_id, c.split, c.captions) for c in clips] == [
        ("video0", "train", ["a", "c"]), ("video1", "val", ["b"]), ("video2", "test", [])]
    assert clips[0].video == str(tmp_path / "video0.mp4")  # extension found on disk
    assert [c.video_id for c in read_annotations(ann, tmp_path, split="validate")] == ["video1"]
    assert [c.video_id for c in read_annotations(ann, tmp_path, fmt="msrvtt", split="test")] == ["video2"]


def test_msvd_text_and_csv(tmp_path):
    (tmp_path / "-4wsuPCjDBc_5_15.avi").write_bytes(b"x")
    txt = tmp_path / "AllVideoDescriptions.txt"
    txt.write_text("# MSVD descriptions\n# clip caption\n-4wsuPCjDBc_5_15 a squirrel is eating a peanut\n"
                   "-4wsuPCjDBc_5_15 A squirrel eats.\n\nabc_1_2 a man sings\n")
    assert detect_format(txt) == "msvd"
    clips = read_annotations(txt, tmp_path)
    assert [(c.video_id, len(c.captions)) for c in clips] == [("-4wsuPCjDBc_5_15", 2), ("abc_1_2", 1)]
    assert clips[0].video.endswith("-4wsuPCjDBc_5_15.avi")
    csv = tmp_path / "corpus.csv"
    csv.write_text("VideoID,Start,End,WorkerID,Source,AnnotationTime,Language,Description\n"
                   "abc,1,2,7,clean,10,English,a man sings\nabc,1,2,8,clean,10,German,ein mann singt\n")
    assert [c.captions for c in read_annotations(csv)] == [["a man sings"]]


def test_vatex(tmp_path):
    ann = write_json(tmp_path / "vatex_validation_v1.0.json",
                     [{"videoID": "Ptf_2VRj-V0_000122_000132", "enCap": ["a", "b"], "chCap": ["x"]}])
    assert detect_format(ann) == "vatex"
    (clip,) = read_annotations(ann, tmp_path)
    assert clip.captions == ["a", "b"] and clip.split == "val"
    assert clip.video == str(tmp_path / "Ptf_2VRj-V0_000122_000132")  # not on disk: left as named


def test_jsonl_both_forms(tmp_path):
    ann = tmp_path / "custom.jsonl"
    ann.write_text('{"video": "a.webm", "captions": ["x", "y"], "split": "train"}\n\n'
                   '{"video": "b", "caption": "z", "attributes": {"motions": ["left"]}}\n')
    (tmp_path / "b.mkv").write_bytes(b"x")
    clips = read_annotations(ann, tmp_path)
    assert [(c.video_id, c.captions) for c in clips] == [("a.webm", ["x", "y"]), ("b", ["z"])]  # ids: paths
    assert clips[1].video.endswith("b.mkv") and clips[1].attributes == {"motions": ["left"]}
    # JSON lines in a .json file are recognised too.
    other = tmp_path / "custom.json"
    other.write_text(ann.read_text())
    assert detect_format(other) == "jsonl" and len(read_annotations(other)) == 2


def test_resolve_video_tries_extensions_in_order(tmp_path):
    (tmp_path / "c.avi").write_bytes(b"x")
    (tmp_path / "c.webm").write_bytes(b"x")
    assert resolve_video("c", tmp_path) == str(tmp_path / "c.avi")
    assert resolve_video("c.mp4", tmp_path) == str(tmp_path / "c.mp4")
    assert resolve_video(str(tmp_path / "c"), "/elsewhere") == str(tmp_path / "c.avi")


@pytest.mark.parametrize("name,content,fmt,expected", [
    ("bad.json", '[{"video": "a.mp4", "caption": "x"},\n {"video": "b.mp4" "caption": "y"}]', "auto",
     r"bad.json: line 2 column .*not valid JSON"),
    ("cap.json", '[{"video": "a.mp4", "caption": "x"}, {"caption": "y"}]', "lavis",
     r"cap.json: record 1: missing field 'video'"),
    ("cap.json", '[{"video": "a.mp4", "caption": 3}]', "lavis", r"record 0: field 'caption' must be"),
    ("cap.json", '[{"video": "a.mp4", "caption": ["x", 3]}]', "lavis", r"record 0: field 'caption'"),
    ("msr.json", '{"videos": [{"video_id": "v"}], "sentences": []}', "auto", r"videos\[0\]: missing field 'split'"),
    ("msr.json", '{"videos": [], "sentences": [{"video_id": "v", "caption": "c"}]}', "auto",
     r"sentences\[0\]: field 'video_id' 'v' is not listed"),
    ("vx.json", '[{"videoID": "v", "enCap": "not a list"}]', "vatex", r"record 0: field 'enCap' must be a list"),
    ("c.jsonl", '{"video": "a", "caption": "x"}\n{"video": "b", "caption": }\n', "auto", r"c.jsonl: line 2 column"),
    ("c.jsonl", '{"video": "a", "captions": "x"}\n', "auto", r"line 1: field 'captions' must be a list"),
    ("d.txt", "# comment\nclip_only_no_caption\n", "auto", r"d.txt: line 2: expected 'clipname caption'"),
    ("odd.json", '{"something": 1}', "auto", r"odd.json: unknown annotation format"),
    ("cap.json", '[{"video": "a.mp4", "caption": "x", "attributes": [1]}]', "auto", r"field 'attributes'"),
])
def test_malformed_files_name_file_record_and_field(tmp_path, name, content, fmt, expected):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(AnnotationError, match=expected) as info:
        read_annotations(path, fmt=fmt)
    assert isinstance(info.value, UserError)
    err = info.value  # no json traceback chained to the user's error
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(AnnotationError, match="not found"):
        read_annotations(tmp_path / "nope.json")
    (tmp_path / "a.json").write_text("[]")
    with pytest.raises(AnnotationError, match="unknown format 'csv'"):
        read_annotations(tmp_path / "a.json", fmt="csv")


def test_a_video_field_without_a_file_name_is_an_annotation_error(tmp_path):
    """Found by tests/test_fuzz.py: {"video": "/"} raised pathlib's ValueError from the extension search."""
    assert resolve_video("/", tmp_path) == "/"
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps([{"video": "a.mp4", "caption": "a red ball"}, {"video": "/", "caption": "a box"}]))
    with pytest.raises(AnnotationError, match=r"ann\.json: record 1: the video '/' names no file"):
        read_annotations(ann, tmp_path / "videos")
